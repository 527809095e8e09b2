//! SyncStore: publishes the keys one owner owns, under the owner's lease.
//!
//! An owner (an agent publishing its node and endpoints, an apiserver publishing services)
//! states what it wants to exist with [`SyncStore::upsert`] and [`SyncStore::delete`]; a
//! background task writes the differences, retrying with backoff while the kvstore is away, and
//! skipping writes of values that did not change. Once the owner has stated its initial set and
//! called [`SyncStore::synced`], the task writes the sync canary (an RFC 3339 time under
//! `cilium/synced/<cluster>/<prefix>`) after every key of that set has been written, so readers
//! that wait for the canary never see a partial snapshot. When the [`LeaseManager`] replaces an
//! expired lease, every key (and the canary) is written again under the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::backend::{KvBackend, LeaseId, Op, Txn};

/// Keys written per transaction.
const BATCH: usize = 128;
use crate::lease::LeaseManager;

/// What a [`SyncStore`] publishes and where.
#[derive(Clone, Debug)]
pub struct SyncStoreConfig {
    /// Prefix of every key, ending in `/`, e.g. `cilium/state/nodes/v1/cluster1/`.
    pub prefix: String,
    /// Full key of the sync canary, e.g. `cilium/synced/cluster1/cilium/state/nodes/v1`;
    /// `None` writes no canary.
    pub canary: Option<String>,
}

enum Command {
    Upsert(String, Vec<u8>),
    Delete(String),
    Synced,
}

/// Reads a [`SyncStore`]'s queue length from elsewhere; it stays readable (and stops
/// changing) after the store is dropped.
#[derive(Clone, Debug)]
pub struct QueueGauge(Arc<AtomicUsize>);

impl QueueGauge {
    /// Keys waiting to be written.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Handle to a running SyncStore. Dropping it stops the writer (keys stay until the lease ends).
pub struct SyncStore {
    tx: mpsc::UnboundedSender<Command>,
    synced: watch::Receiver<bool>,
    queued: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SyncStore {
    /// Starts a SyncStore writing under the leases of `leases`.
    pub fn start(
        backend: Arc<dyn KvBackend>,
        leases: &LeaseManager,
        config: SyncStoreConfig,
    ) -> Self {
        Self::start_with_lease(backend, leases.subscribe(), config)
    }

    /// Starts a SyncStore writing under the lease `lease_rx` holds (see
    /// [`LeaseManager::subscribe`]).
    pub fn start_with_lease(
        backend: Arc<dyn KvBackend>,
        lease_rx: watch::Receiver<LeaseId>,
        config: SyncStoreConfig,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (synced_tx, synced) = watch::channel(false);
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            queued: queued.clone(),
            backend,
            config,
            lease_rx,
            desired: BTreeMap::new(),
            written: BTreeMap::new(),
            dirty: BTreeSet::new(),
            synced_requested: false,
            canary_written: false,
            synced_tx,
        };
        let task = tokio::spawn(writer.run(rx));
        Self {
            tx,
            synced,
            queued,
            task,
        }
    }

    /// Keys waiting to be written or deleted (the sync queue), as of the writer's last step.
    pub fn queue_len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// A handle that reads [`SyncStore::queue_len`] from elsewhere (metrics).
    pub fn queue_gauge(&self) -> QueueGauge {
        QueueGauge(self.queued.clone())
    }

    /// States that `key` (relative to the prefix) should exist with `value`.
    pub fn upsert(&self, key: impl Into<String>, value: Vec<u8>) {
        let _ = self.tx.send(Command::Upsert(key.into(), value));
    }

    /// States that `key` (relative to the prefix) should not exist.
    pub fn delete(&self, key: impl Into<String>) {
        let _ = self.tx.send(Command::Delete(key.into()));
    }

    /// States that the initial set is complete: the canary is written once it is published.
    pub fn synced(&self) {
        let _ = self.tx.send(Command::Synced);
    }

    /// Whether the canary has been written (or, without a canary, the initial set published).
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until [`SyncStore::is_synced`].
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

impl Drop for SyncStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Writer {
    backend: Arc<dyn KvBackend>,
    config: SyncStoreConfig,
    lease_rx: watch::Receiver<LeaseId>,
    /// What the owner wants.
    desired: BTreeMap<String, Vec<u8>>,
    /// What we last wrote successfully.
    written: BTreeMap<String, Vec<u8>>,
    /// Keys whose stored state may differ from `desired`.
    dirty: BTreeSet<String>,
    synced_requested: bool,
    canary_written: bool,
    synced_tx: watch::Sender<bool>,
    queued: Arc<AtomicUsize>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut backoff = Duration::from_millis(50);
        let mut lease_changed = false;
        loop {
            // Take every queued command before writing, so bursts coalesce.
            while let Ok(cmd) = rx.try_recv() {
                self.command(cmd);
            }
            self.queued.store(self.dirty.len(), Ordering::Relaxed);
            if lease_changed || self.lease_rx.has_changed().unwrap_or(false) {
                lease_changed = false;
                self.lease_rx.borrow_and_update();
                self.written.clear();
                self.dirty.extend(self.desired.keys().cloned());
                self.canary_written = false;
            }
            let work = !self.dirty.is_empty() || (self.synced_requested && !self.canary_written);
            if work {
                if self.flush().await {
                    backoff = Duration::from_millis(50);
                } else {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                continue;
            }
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => return,
                },
                changed = self.lease_rx.changed() => match changed {
                    Ok(()) => lease_changed = true,
                    Err(_) => return,
                },
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Upsert(key, value) => {
                self.desired.insert(key.clone(), value);
                self.dirty.insert(key);
            }
            Command::Delete(key) => {
                self.desired.remove(&key);
                self.dirty.insert(key);
            }
            Command::Synced => self.synced_requested = true,
        }
    }

    /// Writes every dirty key, then the canary. Returns false when a write failed.
    ///
    /// Keys go out in transactions of up to [`BATCH`] operations (etcd's default
    /// `--max-txn-ops` is 128), so a large initial set costs one round trip per batch.
    async fn flush(&mut self) -> bool {
        let lease = *self.lease_rx.borrow();
        let keys: Vec<String> = self.dirty.iter().cloned().collect();
        for chunk in keys.chunks(BATCH) {
            let mut ops = Vec::with_capacity(chunk.len());
            let mut done = Vec::with_capacity(chunk.len());
            for key in chunk {
                let full = format!("{}{}", self.config.prefix, key);
                match self.desired.get(key) {
                    Some(value) if self.written.get(key) == Some(value) => {}
                    Some(value) => ops.push(Op::Put {
                        key: full,
                        value: value.clone(),
                        lease: Some(lease),
                    }),
                    None => ops.push(Op::Delete(full)),
                }
                done.push(key.clone());
            }
            if !ops.is_empty() {
                let txn = Txn {
                    compares: Vec::new(),
                    ops,
                };
                if let Err(err) = self.backend.txn(txn).await {
                    tracing::warn!(prefix = %self.config.prefix, keys = chunk.len(), error = %err, "cannot publish keys, retrying");
                    return false;
                }
            }
            for key in done {
                match self.desired.get(&key) {
                    Some(value) => {
                        self.written.insert(key.clone(), value.clone());
                    }
                    None => {
                        self.written.remove(&key);
                    }
                }
                self.dirty.remove(&key);
            }
            self.queued.store(self.dirty.len(), Ordering::Relaxed);
        }
        if self.synced_requested && !self.canary_written {
            if let Some(canary) = &self.config.canary {
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                if let Err(err) = self
                    .backend
                    .put(canary, now.into_bytes(), Some(lease))
                    .await
                {
                    tracing::warn!(key = %canary, error = %err, "cannot write sync canary, retrying");
                    return false;
                }
            }
            self.canary_written = true;
            let _ = self.synced_tx.send(true);
        }
        true
    }
}
