//! The IO shell around the pure core: inputs pumped in, the desired state applied.
//!
//! ```text
//!  etcd (own cluster) ──┐  sources.rs: WatchStores -> Input
//!  remote clusters  ────┤  (MeshEvents, mesh status changes)
//!  endpoint manager ────┤
//!                       ▼
//!               CoreHandle::step ──► NodeCore (pure fold) ──notify──► Reconciler
//!                                                                       │ take_output()
//!                       datapath (ipcache, LB, policy), kernel routes ◄─┘
//! ```
//!
//! [`CoreHandle`] shares the core between the tasks that feed it and the API that reads it;
//! every step wakes the [`reconciler`], which takes the core's output and applies it. Nothing
//! polls: a change is applied as soon as the reconciler runs after it, and changes that arrive
//! while it works are applied together on its next round. [`CoreHandle::wait_applied`] lets a
//! caller (the endpoint manager, a benchmark) wait until its own input reached the datapath.
//! With WireGuard on, the reconciler hands the desired peers to [`wireguard`], whose own thread
//! syncs the device (a separate process) and strict mode's map. With the eBPF datapath, the
//! reconciler hands the policy's DNS side to the node's DNS proxy ([`dns`]), which feeds what
//! it learns back into the core.

pub mod dns;
pub mod maps;
pub mod memory;
pub mod reconciler;
pub mod sources;
pub mod wireguard;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::core::{Input, NodeCore};

/// The core, shared. Cheap to clone.
#[derive(Clone)]
pub struct CoreHandle {
    core: Arc<Mutex<NodeCore>>,
    notify: Arc<Notify>,
    applied: watch::Receiver<u64>,
}

/// The reconciler's side of a [`CoreHandle`]: how it is woken and reports progress.
pub struct CoreDriver {
    pub(crate) core: Arc<Mutex<NodeCore>>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) applied: watch::Sender<u64>,
}

impl CoreHandle {
    /// Shares `core`; the driver goes to the reconciler.
    pub fn new(core: NodeCore) -> (Self, CoreDriver) {
        let core = Arc::new(Mutex::new(core));
        let notify = Arc::new(Notify::new());
        let (tx, rx) = watch::channel(0);
        (
            Self {
                core: core.clone(),
                notify: notify.clone(),
                applied: rx,
            },
            CoreDriver {
                core,
                notify,
                applied: tx,
            },
        )
    }

    fn lock(&self) -> MutexGuard<'_, NodeCore> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds `input` in and wakes the reconciler; returns the input's sequence number.
    pub fn step(&self, input: Input) -> u64 {
        self.step_all([input])
    }

    /// Folds several inputs in under one lock and wakes the reconciler once.
    pub fn step_all(&self, inputs: impl IntoIterator<Item = Input>) -> u64 {
        let seq = {
            let mut core = self.lock();
            core.step_all(inputs);
            core.seq()
        };
        self.notify.notify_one();
        seq
    }

    /// Reads the core.
    pub fn read<R>(&self, f: impl FnOnce(&NodeCore) -> R) -> R {
        f(&self.lock())
    }

    /// Waits until `pred` holds on the core, at most `limit`; whether it does. The core is
    /// checked again after every round of the reconciler (each follows inputs), so nothing
    /// polls.
    pub async fn wait_until(&self, pred: impl Fn(&NodeCore) -> bool, limit: Duration) -> bool {
        let mut rx = self.applied.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            rx.borrow_and_update();
            if self.read(&pred) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.read(&pred),
            }
        }
    }

    /// Waits until the reconciler has applied everything up to input `seq`, at most `limit`;
    /// false when it has not by then (the change is still applied later).
    pub async fn wait_applied(&self, seq: u64, limit: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(limit, rx.wait_for(|applied| *applied >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
