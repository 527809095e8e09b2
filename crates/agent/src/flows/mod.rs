//! Flows: the node's datapath events as Hubble-shaped [`plexus_flow::Flow`]s, kept in a
//! bounded [`FlowRing`] and served on `GET /v1/flows`.
//!
//! ```text
//!  Datapath::subscribe ──► run (one task) ──decode──► FlowRing ──► /v1/flows (history, follow)
//!                             ▲        │                 └──────► followers (broadcast)
//!       SnapshotCell::load ───┘        └──► flow metrics (FlowCounter: the agent's FlowMetrics)
//!  (swapped in by the reconciler after each round: SnapshotBuilder)
//! ```
//!
//! - [`decode`]: the pure decoder, an event and a [`FlowLookup`] in, a flow out.
//! - [`snapshot`]: the real lookup, an immutable copy of the core's state swapped in after
//!   each reconciler round, so decoding never takes the core's lock.
//! - [`fake`]: a lookup of plain maps for tests.
//! - [`api`]: the `/v1/flows` handler.
//!
//! Losses are reported to followers as `lost_events` lines: events the BPF programs could not
//! write to their full ring buffer (the datapath's counter, read every [`LOST_POLL`]) as
//! `PERF_EVENT_RING_BUFFER`; events the task missed because it fell behind the datapath's
//! broadcast channel as `OBSERVER_EVENTS_QUEUE` (Hubble's name for the observer's own queue);
//! a follower that falls behind the ring gets `HUBBLE_RING_BUFFER`
//! lines from the ring itself. With `enable-flows` off there is no task and no ring, and
//! `/v1/flows` answers `unavailable`.

pub mod api;
pub mod decode;
pub mod fake;
pub mod snapshot;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use std::time::Duration;

use plexus_datapath::{Datapath, MonitorEvent};
use plexus_flow::{FlowRing, LostEventSource};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

pub use decode::{
    Denial, EndpointMeta, FlowLookup, IdentityMeta, IpMeta, PolicyQuery, decode as decode_event,
};
pub use fake::FakeLookup;
pub use snapshot::{Snapshot, SnapshotBuilder, SnapshotCell};

/// Counts flows as they pass (the agent's flow metrics, when the metrics registry has them).
pub trait FlowCounter: Send + Sync {
    /// One flow went into the ring.
    fn count(&self, flow: &plexus_flow::Flow);
}

/// The agent's flow metrics count every flow by type and verdict, and drops by reason,
/// direction and both clusters (Hubble's `hubble_flows_processed_total` and
/// `hubble_drop_total` with the `plexus_` prefix).
impl FlowCounter for crate::metrics::FlowMetrics {
    fn count(&self, flow: &plexus_flow::Flow) {
        use plexus_flow::flow::message_type;
        let kind = match flow.message_type() {
            message_type::TRACE => "Trace",
            message_type::DROP => "Drop",
            message_type::POLICY_VERDICT => "PolicyVerdict",
            message_type::TRACE_SOCK => "Translation",
            _ => "Unknown",
        };
        self.flow_processed(kind, flow.verdict.as_str());
        if flow.verdict == plexus_flow::Verdict::Dropped {
            // A known reason is a static name; only an unknown code is formatted.
            let reason: std::borrow::Cow<'_, str> = match flow.drop_reason_desc.name() {
                Some(name) => name.into(),
                None => flow.drop_reason_desc.to_string().into(),
            };
            self.flow_dropped(
                &reason,
                flow.traffic_direction.as_str(),
                &flow.source.cluster_name,
                &flow.destination.cluster_name,
            );
        }
    }
}

/// The wall-clock time of an event: its `bpf_ktime_get_ns` (CLOCK_MONOTONIC) placed on the
/// wall clock by the current distance between both clocks; now when the event has no time.
pub fn event_time(ev: &MonitorEvent) -> DateTime<Utc> {
    let now = Utc::now();
    if ev.ktime_ns == 0 {
        return now;
    }
    let Ok(mono) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return now;
    };
    let mono_ns = i128::from(mono.tv_sec()) * 1_000_000_000 + i128::from(mono.tv_nsec());
    let age = mono_ns - i128::from(ev.ktime_ns);
    match i64::try_from(age) {
        // An event from the future (clock oddities) is stamped now.
        Ok(age) if age >= 0 => now - chrono::Duration::nanoseconds(age),
        _ => now,
    }
}

/// At most this many queued events are handled per wake-up of the task (so the lost-event
/// poll still gets its turn under a steady stream).
const BATCH: usize = 1024;

/// After a batch the task waits this long before it looks again, so a steady stream of
/// events (UDP traced packet by packet) wakes it at most about a thousand times a second and
/// each wake-up handles what arrived meanwhile: a wake-up across threads costs more than
/// decoding a flow. Flows are at most this much later in the ring; the datapath's channel
/// ([`plexus_datapath::EVENT_CHANNEL_CAPACITY`]) holds far more than a millisecond of events.
const PACE: Duration = Duration::from_millis(1);

/// The task missed `n` events: it fell behind the datapath's channel.
fn lagged(ring: &FlowRing, n: u64) {
    tracing::debug!(lost = n, "flow task fell behind the datapath's events");
    ring.push_lost(LostEventSource::ObserverEventsQueue, n, Utc::now());
}

/// How often the task reads the datapath's lost-event counter.
pub const LOST_POLL: Duration = Duration::from_secs(1);

/// The flow pipeline of one node: the datapath's events in, flows into the ring, until the
/// datapath's channel closes. See the module documentation.
pub struct FlowTask {
    /// The datapath's events, from [`Datapath::subscribe`], taken before the task starts so
    /// nothing emitted meanwhile is missed.
    pub events: broadcast::Receiver<MonitorEvent>,
    /// The datapath, for its lost-event counter ([`Datapath::events_lost`]).
    pub datapath: Arc<dyn Datapath>,
    /// Where the flows go.
    pub ring: Arc<FlowRing>,
    /// This node, `cluster/node`.
    pub node_name: String,
    /// Counts the flows (the agent's flow metrics), when given.
    pub counter: Option<Arc<dyn FlowCounter>>,
    /// How often the lost-event counter is read ([`LOST_POLL`]).
    pub lost_poll: Duration,
}

impl FlowTask {
    /// Runs with the core's snapshots (`cell`, kept by the reconciler).
    pub async fn run(self, cell: Arc<SnapshotCell>) {
        self.run_with(move || cell.load()).await
    }

    /// Runs with any lookup: `lookup` gives the one to use for the next batch of events (the
    /// events already queued when the task wakes up).
    pub async fn run_with<L: FlowLookup>(self, lookup: impl Fn() -> Arc<L>) {
        let Self {
            mut events,
            datapath,
            ring,
            node_name,
            counter,
            lost_poll,
        } = self;
        // Losses before this task started are not this stream's.
        let mut lost_seen = datapath.events_lost().unwrap_or(0);
        let mut poll = tokio::time::interval(lost_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                next = events.recv() => match next {
                    Ok(ev) => {
                        // One wake-up handles what is already queued (up to BATCH), with one
                        // snapshot: a burst costs one wake-up and one snapshot load.
                        let current = lookup();
                        let mut ev = ev;
                        let mut handled = 0;
                        loop {
                            let flow = decode::decode(
                                &ev,
                                current.as_ref(),
                                &node_name,
                                event_time(&ev),
                            );
                            if let Some(c) = &counter {
                                c.count(&flow);
                            }
                            ring.push(flow);
                            handled += 1;
                            if handled == BATCH {
                                break;
                            }
                            match events.try_recv() {
                                Ok(next) => ev = next,
                                Err(TryRecvError::Lagged(n)) => {
                                    lagged(&ring, n);
                                    break;
                                }
                                Err(TryRecvError::Closed) => return,
                                Err(TryRecvError::Empty) => break,
                            }
                        }
                        tokio::time::sleep(PACE).await;
                    }
                    Err(RecvError::Lagged(n)) => lagged(&ring, n),
                    Err(RecvError::Closed) => return,
                },
                _ = poll.tick() => match datapath.events_lost() {
                    Ok(total) if total > lost_seen => {
                        ring.push_lost(
                            LostEventSource::PerfEventRingBuffer,
                            total - lost_seen,
                            Utc::now(),
                        );
                        lost_seen = total;
                    }
                    // A counter that went back (maps recreated) starts over.
                    Ok(total) => lost_seen = total,
                    Err(err) => {
                        tracing::debug!(error = %err, "reading the datapath's lost events");
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use plexus_flow::{DropReasonInfo, Flow, TraceObservationPoint, TrafficDirection};
    use plexus_metrics::Format;
    use plexus_metrics::prometheus_client::registry::Registry;

    #[test]
    fn flow_metrics_count_flows_by_type_and_drops_by_clusters() {
        let metrics = crate::metrics::FlowMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let counter: Arc<dyn FlowCounter> = Arc::new(metrics.clone());
        let now = Utc::now();
        let mut drop = Flow::drop(now, "c1/n1", DropReasonInfo::POLICY_DENIED);
        drop.traffic_direction = TrafficDirection::Ingress;
        drop.source.cluster_name = "c2".into();
        drop.destination.cluster_name = "c1".into();
        counter.count(&drop);
        counter.count(&drop);
        counter.count(&Flow::trace(
            now,
            "c1/n1",
            TraceObservationPoint::ToEndpoint,
        ));
        counter.count(&Flow::translation(
            now,
            "c1/n1",
            "10.96.0.10:80".parse().unwrap(),
            "10.2.0.9:8080".parse().unwrap(),
            "c2",
        ));
        let text = plexus_metrics::encode(&registry, Format::Text).unwrap();
        for line in [
            r#"plexus_flows_processed_total{type="Drop",verdict="DROPPED"} 2"#,
            r#"plexus_flows_processed_total{type="Trace",verdict="FORWARDED"} 1"#,
            r#"plexus_flows_processed_total{type="Translation",verdict="TRANSLATED"} 1"#,
            r#"plexus_drop_total{reason="POLICY_DENIED",direction="INGRESS",source_cluster="c2",destination_cluster="c1"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
