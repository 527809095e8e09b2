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
//!   deleted, because the remote no longer vouches for it.
//!
//! Like the watcher, it is pull-based: the caller loops on [`WatchStore::next`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::backend::KvBackend;
use crate::watcher::{WatchEvent, Watcher};

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
}

impl<T: Clone> WatchStore<T> {
    /// Creates a store mirroring `prefix` (which should end in `/`).
    pub fn new(
        backend: Arc<dyn KvBackend>,
        prefix: impl Into<String>,
        decode: DecodeFn<T>,
    ) -> Self {
        Self {
            watcher: Watcher::new(backend, prefix),
            decode,
            cache: HashMap::new(),
            pending: VecDeque::new(),
            synced: false,
            rejected: 0,
        }
    }

    /// Applies the next change to the cache and reports it. Never ends.
    pub async fn next(&mut self) -> StoreEvent<T> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
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
                match (self.decode)(&key, &kv.value) {
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
                        if let Some(old) = self.cache.remove(&key) {
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
                if let Some(old) = self.cache.remove(&key) {
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
