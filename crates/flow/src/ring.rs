//! [`FlowRing`]: the node's recent flows, bounded (Hubble's ring buffer), with followers.
//!
//! The ring keeps the newest `capacity` flows (default [`DEFAULT_CAPACITY`], 4095 as Hubble's
//! default); pushing into a full ring drops the oldest. A query ([`FlowRing::query`]) reads the
//! history a [`FlowRequest`] asks for and, when it follows, subscribes in the same critical
//! section, so the follower continues exactly after the history: no flow is missed or
//! repeated in between.
//!
//! Followers read from a tokio broadcast channel that holds `capacity` flows (tokio rounds it
//! up to a power of two). A follower that falls further behind loses the oldest unread flows
//! and reports them as one `lost_events` line (source `HUBBLE_RING_BUFFER`, the count, the time
//! of the first flow after the gap) before the next flow, as Hubble does. Losses upstream of
//! the ring (the BPF ring buffer, the agent's event reader) are handed to the followers with
//! [`FlowRing::push_lost`]; they are not kept in the history. Lost-event lines are never
//! filtered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::broadcast;

use crate::filter::{FilterError, FlowMatcher, FlowRequest};
use crate::flow::Flow;
use crate::response::{FlowResponse, LostEventSource};

/// What the ring hands its followers.
#[derive(Clone, Debug)]
enum RingEvent {
    Flow(Arc<Flow>),
    Lost(FlowResponse),
}

/// Hubble's default ring capacity.
pub const DEFAULT_CAPACITY: usize = 4095;

struct RingState {
    flows: VecDeque<Arc<Flow>>,
    pushed: u64,
}

/// The bounded ring of a node's flows.
pub struct FlowRing {
    capacity: usize,
    node_name: String,
    state: Mutex<RingState>,
    tx: broadcast::Sender<RingEvent>,
}

impl FlowRing {
    /// A ring of `capacity` flows (at least 1) on node `node_name` (`cluster/node`, used for
    /// the lost-event lines of its followers).
    pub fn new(capacity: usize, node_name: &str) -> Self {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Self {
            capacity,
            node_name: node_name.into(),
            state: Mutex::new(RingState {
                flows: VecDeque::with_capacity(capacity),
                pushed: 0,
            }),
            tx,
        }
    }

    /// A ring of [`DEFAULT_CAPACITY`].
    pub fn with_default_capacity(node_name: &str) -> Self {
        Self::new(DEFAULT_CAPACITY, node_name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RingState> {
        // The state is a plain queue: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many flows it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many flows it holds now.
    pub fn len(&self) -> usize {
        self.lock().flows.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many flows were ever pushed (Hubble's "seen flows").
    pub fn total_pushed(&self) -> u64 {
        self.lock().pushed
    }

    /// How many followers are subscribed.
    pub fn followers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Adds a flow (dropping the oldest when full) and hands it to the followers.
    pub fn push(&self, flow: impl Into<Arc<Flow>>) -> Arc<Flow> {
        let flow = flow.into();
        let mut state = self.lock();
        if state.flows.len() == self.capacity {
            state.flows.pop_front();
        }
        state.flows.push_back(flow.clone());
        state.pushed += 1;
        // Sent under the lock so that a query's history and subscription see the same cut.
        // An error only means there is no follower.
        let _ = self.tx.send(RingEvent::Flow(flow.clone()));
        flow
    }

    /// Tells the followers that `count` events were lost at `source` (upstream of the ring:
    /// `PERF_EVENT_RING_BUFFER`, `OBSERVER_EVENTS_QUEUE`), noticed at `time`. Not kept in the
    /// history.
    pub fn push_lost(&self, source: LostEventSource, count: u64, time: DateTime<Utc>) {
        let line = FlowResponse::lost(source, count, &self.node_name, time);
        let _guard = self.lock();
        // An error only means there is no follower.
        let _ = self.tx.send(RingEvent::Lost(line));
    }

    /// The history `request` asks for (see [`FlowRequest`]), oldest first.
    pub fn history(&self, request: &FlowRequest, matcher: &FlowMatcher) -> Vec<Arc<Flow>> {
        Self::select(&self.lock().flows, request, matcher)
    }

    fn select(
        flows: &VecDeque<Arc<Flow>>,
        request: &FlowRequest,
        matcher: &FlowMatcher,
    ) -> Vec<Arc<Flow>> {
        if request.number.is_none() && request.since.is_none() && request.follow {
            return Vec::new();
        }
        let mut out: Vec<Arc<Flow>> = flows
            .iter()
            .filter(|f| request.since.is_none_or(|since| f.time >= since))
            .filter(|f| matcher.matches(f))
            .cloned()
            .collect();
        if let Some(n) = request.number {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if out.len() > n {
                out.drain(..out.len() - n);
            }
        }
        out
    }

    /// Answers a request: its history and, when it follows, a follower that continues right
    /// after it. Fails when a filter value is invalid.
    pub fn query(&self, request: &FlowRequest) -> Result<FlowQuery, FilterError> {
        let matcher = request.matcher()?;
        let state = self.lock();
        let history = Self::select(&state.flows, request, &matcher);
        let follower = request.follow.then(|| FlowFollower {
            rx: self.tx.subscribe(),
            matcher: matcher.clone(),
            node_name: self.node_name.clone(),
            pending: None,
            pending_lost: None,
            last_time: history.last().map(|f| f.time),
        });
        drop(state);
        Ok(FlowQuery { history, follower })
    }
}

/// The answer to a request: history, then (when following) the follower.
pub struct FlowQuery {
    /// The flows of the history, oldest first.
    pub history: Vec<Arc<Flow>>,
    /// New flows, when the request follows.
    pub follower: Option<FlowFollower>,
}

impl FlowQuery {
    /// The whole answer as one stream of response lines: the history, then the follower's
    /// lines until the ring is dropped.
    pub fn into_stream(self) -> impl Stream<Item = FlowResponse> + Send + 'static {
        let history = futures::stream::iter(self.history.into_iter().map(FlowResponse::flow));
        let follow = futures::stream::unfold(self.follower, |follower| async move {
            let mut follower = follower?;
            let next = follower.next().await?;
            Some((next, Some(follower)))
        });
        futures::StreamExt::chain(history, follow)
    }
}

/// Follows a ring's new flows that pass a request's filters.
pub struct FlowFollower {
    rx: broadcast::Receiver<RingEvent>,
    matcher: FlowMatcher,
    node_name: String,
    pending: Option<Arc<Flow>>,
    pending_lost: Option<FlowResponse>,
    last_time: Option<DateTime<Utc>>,
}

impl FlowFollower {
    /// The next line: a matching flow, or a `lost_events` line when this follower fell behind.
    /// `None` once the ring is gone.
    pub async fn next(&mut self) -> Option<FlowResponse> {
        if let Some(line) = self.pending_lost.take() {
            return Some(line);
        }
        loop {
            let flow = match self.pending.take() {
                Some(f) => f,
                None => match self.rx.recv().await {
                    Ok(RingEvent::Flow(f)) => f,
                    Ok(RingEvent::Lost(line)) => return Some(line),
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(mut lost)) => {
                        // Stamp the loss with the first flow after the gap (or the last one
                        // before it if the ring closes), keeping the stream's times ordered.
                        let time = loop {
                            match self.rx.recv().await {
                                Ok(RingEvent::Flow(f)) => {
                                    let t = f.time;
                                    self.pending = Some(f);
                                    break t;
                                }
                                Ok(RingEvent::Lost(line)) => {
                                    self.pending_lost = Some(line);
                                    break self.last_time.unwrap_or_default();
                                }
                                Err(broadcast::error::RecvError::Lagged(more)) => lost += more,
                                Err(broadcast::error::RecvError::Closed) => {
                                    break self.last_time.unwrap_or_default();
                                }
                            }
                        };
                        return Some(FlowResponse::lost(
                            LostEventSource::HubbleRingBuffer,
                            lost,
                            &self.node_name,
                            time,
                        ));
                    }
                },
            };
            self.last_time = Some(flow.time);
            if self.matcher.matches(&flow) {
                return Some(FlowResponse::flow(flow));
            }
        }
    }
}
