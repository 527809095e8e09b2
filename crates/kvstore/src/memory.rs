//! An in-memory kvstore with etcd's semantics, for fast unit tests.
//!
//! It keeps what consumers of [`KvBackend`] rely on: one revision per write transaction,
//! create and modification revisions per key, prefix listings with their revision, watches that
//! replay history from a revision and fail with [`Error::Compacted`] before the compaction point,
//! and leases that expire on tokio time (so tests may pause and advance the clock) and delete
//! their keys with delete events. It also lets a test break every open watch, the way a lost
//! connection does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::backend::{
    BoxWatchStream, Compare, KeyValue, KvBackend, LeaseId, ListResult, Op, RawEvent, RawEventKind,
    Revision, Status, Txn,
};
use crate::{Error, Result};

/// The in-memory backend. Cheap to clone: clones share one store.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    revision: Revision,
    compacted: Revision,
    kvs: BTreeMap<String, KeyValue>,
    /// Every change after the compaction point, in revision order.
    history: Vec<RawEvent>,
    leases: HashMap<LeaseId, LeaseState>,
    next_lease: LeaseId,
    watchers: Vec<WatcherSlot>,
}

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct WatcherSlot {
    prefix: String,
    tx: mpsc::UnboundedSender<Result<Vec<RawEvent>>>,
}

impl MemoryBackend {
    /// Creates an empty store; like a fresh etcd, it starts at revision 1.
    pub fn new() -> Self {
        let backend = Self::default();
        backend.lock().revision = 1;
        backend
    }

    /// Breaks every open watch with [`Error::WatchBroken`], as a lost connection would.
    pub fn break_watches(&self) {
        let mut state = self.lock();
        for slot in state.watchers.drain(..) {
            let _ = slot
                .tx
                .send(Err(Error::WatchBroken("connection lost (test)".into())));
        }
    }

    /// Number of watches currently open.
    pub fn watch_count(&self) -> usize {
        let mut state = self.lock();
        state.watchers.retain(|w| !w.tx.is_closed());
        state.watchers.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the map consistent (every mutation is applied
        // before anything can panic), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_expiry(&self, lease: LeaseId) {
        let state = Arc::downgrade(&self.state);
        tokio::spawn(async move {
            loop {
                let deadline = {
                    let Some(state) = state.upgrade() else { return };
                    let guard = state.lock().unwrap_or_else(|e| e.into_inner());
                    match guard.leases.get(&lease) {
                        Some(l) => l.deadline,
                        None => return,
                    }
                };
                tokio::time::sleep_until(deadline).await;
                let Some(state) = state.upgrade() else { return };
                let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
                let expired = match guard.leases.get(&lease) {
                    Some(l) => Instant::now() >= l.deadline,
                    None => return,
                };
                if expired {
                    guard.end_lease(lease);
                    return;
                }
            }
        });
    }
}

impl State {
    fn matches(&self, compare: &Compare) -> bool {
        match compare {
            Compare::Absent(key) => !self.kvs.contains_key(key),
            Compare::PrefixEmpty(prefix) => self.range(prefix).next().is_none(),
            Compare::ModRevision(key, rev) => {
                self.kvs.get(key).is_some_and(|kv| kv.mod_revision == *rev)
            }
            Compare::Value(key, value) => self.kvs.get(key).is_some_and(|kv| kv.value == *value),
        }
    }

    fn range<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.kvs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv)
    }

    /// Applies operations as one write transaction (one new revision), if any changes.
    fn apply(&mut self, ops: Vec<Op>) -> Result<Revision> {
        for op in &ops {
            if let Op::Put {
                lease: Some(lease), ..
            } = op
                && !self.leases.contains_key(lease)
            {
                return Err(Error::LeaseNotFound(*lease));
            }
        }
        let rev = self.revision + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create_revision = match self.kvs.get(&key) {
                        Some(old) => {
                            if let Some(old_lease) = old.lease
                                && Some(old_lease) != lease
                                && let Some(l) = self.leases.get_mut(&old_lease)
                            {
                                l.keys.remove(&key);
                            }
                            old.create_revision
                        }
                        None => rev,
                    };
                    if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
                        l.keys.insert(key.clone());
                    }
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: rev,
                        lease,
                    };
                    self.kvs.insert(key, kv.clone());
                    events.push(RawEvent {
                        kind: RawEventKind::Put,
                        kv,
                    });
                }
                Op::Delete(key) => {
                    if let Some(old) = self.kvs.remove(&key) {
                        if let Some(l) = old.lease.and_then(|id| self.leases.get_mut(&id)) {
                            l.keys.remove(&key);
                        }
                        events.push(delete_event(key, rev));
                    }
                }
            }
        }
        if events.is_empty() {
            return Ok(self.revision);
        }
        self.revision = rev;
        self.publish(events);
        Ok(rev)
    }

    fn publish(&mut self, events: Vec<RawEvent>) {
        self.watchers.retain(|slot| {
            let batch: Vec<RawEvent> = events
                .iter()
                .filter(|e| e.kv.key.starts_with(&slot.prefix))
                .cloned()
                .collect();
            batch.is_empty() || slot.tx.send(Ok(batch)).is_ok()
        });
        self.history.extend(events);
    }

    fn end_lease(&mut self, lease: LeaseId) {
        if let Some(l) = self.leases.remove(&lease) {
            let ops = l.keys.into_iter().map(Op::Delete).collect();
            // Deletes only: cannot fail on a missing lease.
            let _ = self.apply(ops);
        }
    }
}

fn delete_event(key: String, rev: Revision) -> RawEvent {
    RawEvent {
        kind: RawEventKind::Delete,
        kv: KeyValue {
            key,
            value: Vec::new(),
            create_revision: 0,
            mod_revision: rev,
            lease: None,
        },
    }
}

#[async_trait]
impl KvBackend for MemoryBackend {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().kvs.get(key).cloned())
    }

    async fn list_prefix(&self, prefix: &str) -> Result<ListResult> {
        let state = self.lock();
        Ok(ListResult {
            kvs: state.range(prefix).cloned().collect(),
            revision: state.revision,
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        check_key(key)?;
        self.lock().apply(vec![Op::Put {
            key: key.to_string(),
            value,
            lease,
        }])
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut state = self.lock();
        let existed = state.kvs.contains_key(key);
        state.apply(vec![Op::Delete(key.to_string())])?;
        Ok(existed)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let mut state = self.lock();
        let keys: Vec<Op> = state
            .range(prefix)
            .map(|kv| Op::Delete(kv.key.clone()))
            .collect();
        let n = keys.len() as u64;
        state.apply(keys)?;
        Ok(n)
    }

    async fn txn(&self, txn: Txn) -> Result<bool> {
        for op in &txn.ops {
            if let Op::Put { key, .. } = op {
                check_key(key)?;
            }
        }
        let mut state = self.lock();
        if !txn.compares.iter().all(|c| state.matches(c)) {
            return Ok(false);
        }
        state.apply(txn.ops)?;
        Ok(true)
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<BoxWatchStream> {
        let mut state = self.lock();
        let (tx, rx) = mpsc::unbounded_channel();
        if from > 0 && from < state.compacted {
            let _ = tx.send(Err(Error::Compacted {
                requested: from,
                compact_revision: state.compacted,
            }));
            return Ok(UnboundedReceiverStream::new(rx).boxed());
        }
        if from > 0 {
            // Replay history grouped by revision, as etcd delivers one response per revision.
            let mut batch: Vec<RawEvent> = Vec::new();
            for event in state.history.iter().filter(|e| e.kv.mod_revision >= from) {
                if !event.kv.key.starts_with(prefix) {
                    continue;
                }
                if batch
                    .last()
                    .is_some_and(|last| last.kv.mod_revision != event.kv.mod_revision)
                {
                    let _ = tx.send(Ok(std::mem::take(&mut batch)));
                }
                batch.push(event.clone());
            }
            if !batch.is_empty() {
                let _ = tx.send(Ok(batch));
            }
        }
        state.watchers.push(WatcherSlot {
            prefix: prefix.to_string(),
            tx,
        });
        Ok(UnboundedReceiverStream::new(rx).boxed())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        let id = {
            let mut state = self.lock();
            state.next_lease += 1;
            // Make ids look like etcd's: large and distinct from small integers.
            let id = 0x7000_0000_0000 + state.next_lease;
            state.leases.insert(
                id,
                LeaseState {
                    ttl,
                    deadline: Instant::now() + ttl,
                    keys: BTreeSet::new(),
                },
            );
            id
        };
        self.spawn_expiry(id);
        Ok(id)
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let mut state = self.lock();
        let l = state
            .leases
            .get_mut(&lease)
            .ok_or(Error::LeaseNotFound(lease))?;
        if Instant::now() >= l.deadline {
            state.end_lease(lease);
            return Err(Error::LeaseNotFound(lease));
        }
        l.deadline = Instant::now() + l.ttl;
        Ok(l.ttl)
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.lock();
        if !state.leases.contains_key(&lease) {
            return Err(Error::LeaseNotFound(lease));
        }
        state.end_lease(lease);
        Ok(())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut state = self.lock();
        if revision > state.revision {
            return Err(Error::Unavailable(
                format!(
                    "cannot compact to future revision {revision} (current {})",
                    state.revision
                )
                .into(),
            ));
        }
        if revision > state.compacted {
            state.compacted = revision;
            state.history.retain(|e| e.kv.mod_revision >= revision);
        }
        Ok(())
    }

    async fn status(&self) -> Result<Status> {
        let state = self.lock();
        Ok(Status {
            version: "memory".into(),
            revision: state.revision,
            db_size: 0,
            leader: 0,
            cluster_id: 0,
        })
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            key: key.into(),
            reason: "key is empty".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leases_expire_on_tokio_time_and_renewals_push_the_deadline() {
        let b = MemoryBackend::new();
        let lease = b.lease_grant(Duration::from_secs(10)).await.unwrap();
        b.put("k", b"v".to_vec(), Some(lease)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        b.lease_keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            b.get("k").await.unwrap().is_some(),
            "renewed at 9 s, alive at 18 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(b.get("k").await.unwrap(), None, "expired at 19 s");
        assert!(matches!(
            b.lease_keep_alive(lease).await,
            Err(Error::LeaseNotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_key_moved_to_another_lease_survives_the_first() {
        let b = MemoryBackend::new();
        let l1 = b.lease_grant(Duration::from_secs(60)).await.unwrap();
        let l2 = b.lease_grant(Duration::from_secs(60)).await.unwrap();
        b.put("k", b"1".to_vec(), Some(l1)).await.unwrap();
        b.put("k", b"2".to_vec(), Some(l2)).await.unwrap();
        b.lease_revoke(l1).await.unwrap();
        assert_eq!(b.get("k").await.unwrap().map(|kv| kv.lease), Some(Some(l2)));
    }

    #[tokio::test]
    async fn broken_watches_report_an_error() {
        let b = MemoryBackend::new();
        let mut stream = b.watch("p/", 0).await.unwrap();
        assert_eq!(b.watch_count(), 1);
        b.break_watches();
        assert!(matches!(
            stream.next().await,
            Some(Err(Error::WatchBroken(_)))
        ));
        assert_eq!(b.watch_count(), 0);
    }
}
