//! Flows: the node's datapath events as Hubble-shaped [`plexus_flow::Flow`]s, kept in a
//! bounded [`FlowRing`] and served on `GET /v1/flows`.
//!
//! ```text
//!  Datapath::subscribe ──► run (one task) ──decode──► FlowRing ──► /v1/flows (history, follow)
//!                             ▲        │                 └──────► followers (broadcast)
//!       SnapshotCell::load ───┘        └──► flow metrics (when given)
//!  (swapped in by the reconciler after each round: SnapshotBuilder)
//! ```
//!
//! - [`decode`]: the pure decoder, an event and a [`FlowLookup`] in, a flow out.
//! - [`snapshot`]: the real lookup, an immutable copy of the core's state swapped in after
//!   each reconciler round, so decoding never takes the core's lock.
//! - [`fake`]: a lookup of plain maps for tests.
//! - [`api`]: the `/v1/flows` handler.
//!
//! Losses are reported to followers as `lost_events` lines: events the task missed because it
//! fell behind the datapath's broadcast channel as `OBSERVER_EVENTS_QUEUE` (Hubble's name for
//! the observer's own queue); a follower that falls behind the ring gets `HUBBLE_RING_BUFFER`
//! lines from the ring itself. With `enable-flows` off there is no task and no ring, and
//! `/v1/flows` answers `unavailable`.

pub mod api;
pub mod decode;
pub mod fake;
pub mod snapshot;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use plexus_datapath::MonitorEvent;
use plexus_flow::{FlowRing, LostEventSource};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

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

/// The flow pipeline of one node: the datapath's events (`events`, from
/// [`plexus_datapath::Datapath::subscribe`], taken before the task starts so nothing emitted meanwhile is
/// missed) in, flows into `ring`, until the datapath's channel closes. `node_name` is
/// `cluster/node`; `lookup` is the snapshot cell the reconciler keeps.
pub async fn run(
    events: broadcast::Receiver<MonitorEvent>,
    lookup: Arc<SnapshotCell>,
    ring: Arc<FlowRing>,
    node_name: String,
    counter: Option<Arc<dyn FlowCounter>>,
) {
    run_with(events, move || lookup.load(), ring, node_name, counter).await
}

/// [`run`] with any lookup: `lookup` gives the one to use for the next event.
pub async fn run_with<L: FlowLookup>(
    mut events: broadcast::Receiver<MonitorEvent>,
    lookup: impl Fn() -> Arc<L>,
    ring: Arc<FlowRing>,
    node_name: String,
    counter: Option<Arc<dyn FlowCounter>>,
) {
    loop {
        match events.recv().await {
            Ok(ev) => {
                let flow = decode::decode(&ev, lookup().as_ref(), &node_name, event_time(&ev));
                if let Some(c) = &counter {
                    c.count(&flow);
                }
                ring.push(flow);
            }
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(lost = n, "flow pipeline fell behind the datapath's events");
                ring.push_lost(LostEventSource::ObserverEventsQueue, n, Utc::now());
            }
            Err(RecvError::Closed) => return,
        }
    }
}
