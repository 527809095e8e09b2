//! WatchStore: mirrors a prefix into a local, typed cache.
//!
//! A [`WatchStore`] drives a [`Watcher`] and decodes each value with a caller-given function
//! that also validates it (a remote cluster's node must carry that cluster's name, and so on).
//! It promises:
//! - the cache holds exactly the valid entries of the prefix, keyed relative to the prefix;
//! - [`StoreEvent::Synced`] is emitted once, after the initial listing has been applied;
//! - after a re-list, entries that vanished meanwhile are deleted (stale drain), entries that
//!   stayed are not reported again;
//! - a value that fails to decode never reaches the cache: it is reported as
//!   [`StoreEvent::Rejected`] (and counted), and an earlier valid value under that key is
//!   deleted, because the remote no longer vouches for it;
//! - with an [`EntryBudget`], the cache never grows past the budget, shared by every store that
//!   holds it (one remote cluster's kinds): a new key beyond it is rejected with a reason that
//!   starts with `entry-limit:`; keys already held may still change.
//!
//! Like the watcher, it is pull-based: the caller loops on [`WatchStore::next`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::KvBackend;
use crate::watcher::{RelistPolicy, WatchEvent, Watcher};

/// A bound on how many entries several stores may hold together (a remote cluster's kinds).
#[derive(Clone, Debug)]
pub struct EntryBudget {
    used: Arc<AtomicUsize>,
    max: usize,
}

impl EntryBudget {
    /// A budget of `max` entries, none used.
    pub fn new(max: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many entries the stores sharing it hold.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// Decodes and validates one value: `(relative key, raw value) -> entry or reason`.
pub type DecodeFn<T> = Box<dyn Fn(&str, &[u8]) -> Result<T, String> + Send + Sync>;

/// What changed in a [`WatchStore`]'s cache.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreEvent<T> {
    /// An entry was added (`created`) or replaced.
    Upsert {
        /// Key relative to the prefix.
        key: String,
        /// The decoded entry.
        value: T,
        /// Whether the cache did not hold this key before.
        created: bool,
    },
    /// An entry was removed.
    Delete {
        /// Key relative to the prefix.
        key: String,
        /// The entry that was removed.
        old: T,
    },
    /// A value under `key` was refused; the cache does not hold it.
    Rejected {
        /// Key relative to the prefix.
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// The initial listing is in the cache. Emitted once.
    Synced,
}

/// A typed mirror of one prefix.
pub struct WatchStore<T> {
    watcher: Watcher,
    decode: DecodeFn<T>,
    cache: HashMap<String, T>,
    pending: VecDeque<StoreEvent<T>>,
    synced: bool,
    rejected: u64,
    budget: Option<EntryBudget>,
}

impl<T: Clone> WatchStore<T> {
    /// Creates a store mirroring `prefix` (which should end in `/`).
    pub fn new(
        backend: Arc<dyn KvBackend>,
        prefix: impl Into<String>,
        decode: DecodeFn<T>,
    ) -> Self {
        Self::bounded(backend, prefix, decode, RelistPolicy::default(), None)
    }

    /// A store whose re-lists follow `relist` and whose entries count against `budget`.
    pub fn bounded(
        backend: Arc<dyn KvBackend>,
        prefix: impl Into<String>,
        decode: DecodeFn<T>,
        relist: RelistPolicy,
        budget: Option<EntryBudget>,
    ) -> Self {
        Self {
            watcher: Watcher::with_relist(backend, prefix, relist),
            decode,
            cache: HashMap::new(),
            pending: VecDeque::new(),
            synced: false,
            rejected: 0,
            budget,
        }
    }

    fn forget(&mut self, key: &str) -> Option<T> {
        let old = self.cache.remove(key);
        if old.is_some()
            && let Some(b) = &self.budget
        {
            b.give_back(1);
        }
        old
    }

    /// Applies the next change to the cache and reports it. Never ends.
    pub async fn next(&mut self) -> StoreEvent<T> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            crate::watcher::shrink_spent(&mut self.pending);
            let event = self.watcher.next().await;
            self.apply(event);
        }
    }

    fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::ListDone => {
                self.synced = true;
                self.pending.push_back(StoreEvent::Synced);
            }
            WatchEvent::Upsert { kv, .. } => {
                let Some(key) = kv
                    .key
                    .strip_prefix(self.watcher.prefix())
                    .map(str::to_string)
                else {
                    return;
                };
                let decoded = (self.decode)(&key, &kv.value).and_then(|value| match &self.budget {
                    Some(b) if !self.cache.contains_key(&key) && !b.take() => {
                        Err(format!("entry-limit: {} entries held already", b.max()))
                    }
                    _ => Ok(value),
                });
                match decoded {
                    Ok(value) => {
                        let created = self.cache.insert(key.clone(), value.clone()).is_none();
                        self.pending.push_back(StoreEvent::Upsert {
                            key,
                            value,
                            created,
                        });
                    }
                    Err(reason) => {
                        self.rejected += 1;
                        tracing::warn!(key = %kv.key, %reason, "rejected kvstore entry");
                        if let Some(old) = self.forget(&key) {
                            self.pending.push_back(StoreEvent::Delete {
                                key: key.clone(),
                                old,
                            });
                        }
                        self.pending.push_back(StoreEvent::Rejected { key, reason });
                    }
                }
            }
            WatchEvent::Delete { key } => {
                let Some(key) = key.strip_prefix(self.watcher.prefix()).map(str::to_string) else {
                    return;
                };
                if let Some(old) = self.forget(&key) {
                    self.pending.push_back(StoreEvent::Delete { key, old });
                }
            }
        }
    }

    /// The cached entry under `key` (relative to the prefix).
    pub fn get(&self, key: &str) -> Option<&T> {
        self.cache.get(key)
    }

    /// Every cached entry.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
        self.cache.iter()
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Whether the initial listing has been applied.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// How many values were rejected so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The underlying watcher's counters.
    pub fn watcher_stats(&self) -> &crate::watcher::WatcherStats {
        self.watcher.stats()
    }
}

impl<T> Drop for WatchStore<T> {
    fn drop(&mut self) {
        // What this store held no longer counts: a new store lists it again.
        if let Some(b) = &self.budget {
            b.give_back(self.cache.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;
    use std::time::Duration;

    fn text() -> DecodeFn<String> {
        Box::new(|_, raw| Ok(String::from_utf8_lossy(raw).into_owned()))
    }

    async fn events<T: Clone>(store: &mut WatchStore<T>, n: usize) -> Vec<StoreEvent<T>> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                tokio::time::timeout(Duration::from_secs(10), store.next())
                    .await
                    .expect("store event"),
            );
        }
        out
    }

    #[tokio::test]
    async fn a_shared_budget_bounds_the_stores_and_is_given_back() {
        let backend: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        for k in ["a/1", "a/2", "b/1"] {
            backend.put(k, b"v".to_vec(), None).await.unwrap();
        }
        let budget = EntryBudget::new(2);
        let mut a = WatchStore::bounded(
            backend.clone(),
            "a/",
            text(),
            RelistPolicy::default(),
            Some(budget.clone()),
        );
        let mut b = WatchStore::bounded(
            backend.clone(),
            "b/",
            text(),
            RelistPolicy::default(),
            Some(budget.clone()),
        );
        assert_eq!(events(&mut a, 3).await.len(), 3, "two upserts and synced");
        assert_eq!(budget.used(), 2);
        let got = events(&mut b, 2).await;
        assert!(
            matches!(&got[0], StoreEvent::Rejected { key, reason } if key == "1" && reason.starts_with("entry-limit:")),
            "{got:?}"
        );
        assert!(b.is_empty());
        // A key already held may still change.
        backend.put("a/1", b"w".to_vec(), None).await.unwrap();
        assert!(matches!(
            &events(&mut a, 1).await[0],
            StoreEvent::Upsert { created: false, .. }
        ));
        // Deleting one gives room; dropping a store gives back all it held.
        backend.delete("a/2").await.unwrap();
        assert!(matches!(
            &events(&mut a, 1).await[0],
            StoreEvent::Delete { .. }
        ));
        assert_eq!(budget.used(), 1);
        backend.put("b/2", b"v".to_vec(), None).await.unwrap();
        assert!(matches!(
            &events(&mut b, 1).await[0],
            StoreEvent::Upsert { created: true, .. }
        ));
        assert_eq!(budget.used(), 2);
        drop(a);
        assert_eq!(budget.used(), 1);
    }
}
