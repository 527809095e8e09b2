//! A resilient prefix watcher: list, then watch, and start over when the watch breaks.
//!
//! [`Watcher`] promises its consumer a stream of [`WatchEvent`]s that, applied in order, always
//! converge to the store's content under the prefix:
//! - first an upsert per key of the initial listing, then one [`WatchEvent::ListDone`];
//! - then every change, from the listing's revision + 1 on;
//! - when the watch breaks (the etcd member it was on died, the connection dropped), a new
//!   watch resumes right after the last revision delivered, on whichever member answers: no
//!   change is lost or repeated and nothing is listed again;
//! - when that revision was compacted away, or the store is not where the watch left it (an
//!   etcd rebuilt from scratch, whose revisions start anew), the prefix is listed again and reconciled against what the consumer already knows: keys that changed
//!   are upserted, keys that vanished in between are deleted ("stale drain"), unchanged keys
//!   are not repeated. `ListDone` is never sent twice.
//!
//! The reconciliation is a pure function ([`reconcile`]), tested without IO; the watcher itself
//! is pull-based (`next().await`) so a slow consumer slows the watch instead of buffering it.
//!
//! Re-listing is rate-limited by a [`RelistLimiter`]: a re-list costs a full read of the prefix,
//! and whoever can compact the store (in etcd 3.4 even a read-only user can) can break every
//! watch at will. The delay before a re-list doubles with each break and only falls back to
//! the minimum once a watch has stayed up for a while, so events flowing between forced
//! breaks do not reset it; forced re-lists are held to one per [`RelistPolicy::max`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::Error;
use crate::backend::{BoxWatchStream, KeyValue, KvBackend, RawEventKind, Revision};

/// One change seen by a [`Watcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created (`created: true`) or modified.
    Upsert {
        /// The key and its new value.
        kv: KeyValue,
        /// Whether the consumer has not seen this key before.
        created: bool,
    },
    /// A key was deleted, or vanished while the watch was broken.
    Delete {
        /// The full key.
        key: String,
    },
    /// The initial listing has been delivered in full. Sent once.
    ListDone,
}

/// Counters a watcher keeps about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatcherStats {
    /// How many listings were made (1 after the initial one).
    pub lists: u64,
    /// How many of those were caused by a compacted start revision.
    pub compactions: u64,
    /// How many broken watches were resumed from the last revision without a listing.
    pub resumes: u64,
    /// The last error that broke the watch or a listing.
    pub last_error: Option<String>,
}

/// Computes the events that bring a consumer who knows `known` (key -> mod revision) to the
/// content of a fresh listing, and updates `known` accordingly.
///
/// Keys listed with a mod revision the consumer already has produce nothing; new or changed
/// keys produce an upsert; known keys missing from the listing produce a delete.
pub fn reconcile(known: &mut HashMap<String, Revision>, listed: Vec<KeyValue>) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    let mut seen = HashMap::with_capacity(listed.len());
    for kv in listed {
        seen.insert(kv.key.clone(), kv.mod_revision);
        match known.get(&kv.key) {
            Some(rev) if *rev == kv.mod_revision => {}
            Some(_) => events.push(WatchEvent::Upsert { kv, created: false }),
            None => events.push(WatchEvent::Upsert { kv, created: true }),
        }
    }
    let mut vanished: Vec<String> = known
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .cloned()
        .collect();
    vanished.sort();
    events.extend(vanished.into_iter().map(|key| WatchEvent::Delete { key }));
    *known = seen;
    events
}

/// Gives back the room of an empty queue that a burst (a listing) made large.
pub(crate) fn shrink_spent<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > 64 {
        queue.shrink_to_fit();
    }
}

/// How fast a watcher may list again after its watch broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelistPolicy {
    /// The delay before the first re-list after a healthy period.
    pub min: Duration,
    /// The longest delay: at most one re-list per `max` while breaks keep coming.
    pub max: Duration,
    /// How long a watch must have stayed up for the delay to fall back to `min`.
    pub healthy_after: Duration,
}

impl Default for RelistPolicy {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(50),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// The delays between listings, as a pure function of when they happen (see the module doc).
#[derive(Clone, Debug)]
pub struct RelistLimiter {
    policy: RelistPolicy,
    delay: Duration,
    /// When the last listing succeeded (the watch has been up since).
    listed_at: Option<tokio::time::Instant>,
}

impl RelistLimiter {
    /// A limiter that waits `policy.min` before the first re-list.
    pub fn new(policy: RelistPolicy) -> Self {
        Self {
            policy,
            delay: policy.min,
            listed_at: None,
        }
    }

    /// A listing succeeded and the watch is up at `now`.
    pub fn listed(&mut self, now: tokio::time::Instant) {
        self.listed_at = Some(now);
    }

    /// The watch broke (or a listing failed) at `now`: how long to wait before listing again.
    pub fn broken(&mut self, now: tokio::time::Instant) -> Duration {
        if self
            .listed_at
            .is_some_and(|at| now.saturating_duration_since(at) >= self.policy.healthy_after)
        {
            self.delay = self.policy.min;
        }
        self.listed_at = None;
        let delay = self.delay.min(self.policy.max);
        self.delay = (self.delay * 2).min(self.policy.max);
        delay
    }
}

/// How long a resuming watcher waits for the store to reach the revision it left off at
/// before it lists again instead.
const BEHIND_LIMIT: Duration = Duration::from_secs(1);

/// Watches a prefix of a [`KvBackend`] with list-then-watch and automatic re-listing.
pub struct Watcher {
    backend: Arc<dyn KvBackend>,
    prefix: String,
    known: HashMap<String, Revision>,
    pending: VecDeque<WatchEvent>,
    stream: Option<BoxWatchStream>,
    /// The revision everything up to which has been delivered (the listing's, then each
    /// event's); a broken watch resumes after it. `None`: list (first, or after compaction).
    revision: Option<Revision>,
    /// The cluster id of the store the listing came from (`None`: it would not say).
    cluster: Option<u64>,
    list_done_sent: bool,
    relist: RelistLimiter,
    stats: WatcherStats,
}

impl Watcher {
    /// Creates a watcher of `prefix`. Nothing happens until [`Watcher::next`] is called.
    ///
    /// Pass a prefix ending in `/` so that `c1` does not also match `c10`.
    pub fn new(backend: Arc<dyn KvBackend>, prefix: impl Into<String>) -> Self {
        Self::with_relist(backend, prefix, RelistPolicy::default())
    }

    /// Like [`Watcher::new`], with a given re-list rate limit.
    pub fn with_relist(
        backend: Arc<dyn KvBackend>,
        prefix: impl Into<String>,
        policy: RelistPolicy,
    ) -> Self {
        Self {
            backend,
            prefix: prefix.into(),
            known: HashMap::new(),
            pending: VecDeque::new(),
            stream: None,
            revision: None,
            cluster: None,
            list_done_sent: false,
            relist: RelistLimiter::new(policy),
            stats: WatcherStats::default(),
        }
    }

    /// The watched prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the initial listing has been delivered.
    pub fn synced(&self) -> bool {
        self.list_done_sent
    }

    /// Counters about listings and errors.
    pub fn stats(&self) -> &WatcherStats {
        &self.stats
    }

    /// Returns the next event. Errors are handled inside (logged, counted, retried with
    /// backoff), so this waits until there is something to report; it never ends.
    pub async fn next(&mut self) -> WatchEvent {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            // A listing's burst is over: do not keep room for it.
            shrink_spent(&mut self.pending);
            match self.stream.as_mut() {
                None => match self.revision {
                    Some(revision) => self.resume(revision).await,
                    None => self.list_and_watch().await,
                },
                Some(stream) => match stream.next().await {
                    Some(Ok(events)) => {
                        for event in events {
                            // A delete's mod revision is the deletion's revision.
                            let revision = event.kv.mod_revision;
                            self.apply_raw(event.kind, event.kv);
                            self.revision = self.revision.max(Some(revision));
                        }
                    }
                    Some(Err(err)) => self.broken(err).await,
                    None => {
                        self.broken(Error::WatchBroken("watch stream ended".into()))
                            .await
                    }
                },
            }
        }
    }

    fn apply_raw(&mut self, kind: RawEventKind, kv: KeyValue) {
        match kind {
            RawEventKind::Put => {
                let created = self.known.insert(kv.key.clone(), kv.mod_revision).is_none();
                self.pending.push_back(WatchEvent::Upsert { kv, created });
            }
            RawEventKind::Delete => {
                if self.known.remove(&kv.key).is_some() {
                    self.pending.push_back(WatchEvent::Delete { key: kv.key });
                }
            }
        }
    }

    async fn broken(&mut self, err: Error) {
        if matches!(err, Error::Compacted { .. }) {
            self.stats.compactions += 1;
            self.revision = None;
        }
        tracing::debug!(prefix = %self.prefix, error = %err, "watch broken, watching again");
        self.stats.last_error = Some(err.to_string());
        self.stream = None;
        self.sleep_backoff().await;
    }

    async fn sleep_backoff(&mut self) {
        let delay = self.relist.broken(tokio::time::Instant::now());
        tokio::time::sleep(delay).await;
    }

    /// Opens a new watch right after `revision`; a compacted start makes the next round list.
    ///
    /// Only on the store the revision came from, and once it has reached that revision: an
    /// etcd rebuilt from scratch counts revisions anew (with the same configuration even under
    /// the same cluster id), and a watch from `revision + 1` there would wait for revisions
    /// that mean something else. So the prefix is listed again when the store has another
    /// cluster id, stays behind `revision` for [`BEHIND_LIMIT`] (a member that lags by a few
    /// entries catches up within milliseconds), or will not say (a user without the
    /// permission).
    async fn resume(&mut self, revision: Revision) {
        let asked = tokio::time::Instant::now();
        loop {
            match self.backend.status().await {
                Ok(status)
                    if Some(status.cluster_id) == self.cluster && status.revision >= revision =>
                {
                    break;
                }
                Ok(status)
                    if Some(status.cluster_id) == self.cluster
                        && asked.elapsed() < BEHIND_LIMIT =>
                {
                    tokio::time::sleep(BEHIND_LIMIT / 10).await;
                }
                Ok(status) => {
                    tracing::info!(prefix = %self.prefix, revision, now = status.revision, cluster_id = status.cluster_id, "the store is not where the watch left it, listing again");
                    self.revision = None;
                    return;
                }
                Err(Error::PermissionDenied(_)) => {
                    self.revision = None;
                    return;
                }
                Err(err) => return self.broken(err).await,
            }
        }
        match self.backend.watch(&self.prefix, revision + 1).await {
            Ok(stream) => {
                self.stats.resumes += 1;
                self.relist.listed(tokio::time::Instant::now());
                self.stream = Some(stream);
            }
            Err(err) => self.broken(err).await,
        }
    }

    async fn list_and_watch(&mut self) {
        // Which store this is, asked before listing: if it is rebuilt in between, the next
        // resume sees another id and lists again.
        self.cluster = self.backend.status().await.ok().map(|s| s.cluster_id);
        let listed = match self.backend.list_prefix(&self.prefix).await {
            Ok(listed) => listed,
            Err(err) => {
                tracing::debug!(prefix = %self.prefix, error = %err, "listing failed");
                self.stats.last_error = Some(err.to_string());
                self.sleep_backoff().await;
                return;
            }
        };
        // Open the watch before reporting the listing: if it cannot be opened, the next
        // attempt lists again and nothing was half-delivered.
        let stream = match self.backend.watch(&self.prefix, listed.revision + 1).await {
            Ok(stream) => stream,
            Err(err) => {
                self.stats.last_error = Some(err.to_string());
                self.sleep_backoff().await;
                return;
            }
        };
        self.stats.lists += 1;
        self.revision = Some(listed.revision);
        self.relist.listed(tokio::time::Instant::now());
        self.pending.extend(reconcile(&mut self.known, listed.kvs));
        if !self.list_done_sent {
            self.list_done_sent = true;
            self.pending.push_back(WatchEvent::ListDone);
        }
        self.stream = Some(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, rev: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease: None,
        }
    }

    #[test]
    fn reconcile_reports_new_changed_and_vanished_keys_only() {
        let mut known: HashMap<String, Revision> = [
            ("a".to_string(), 2),
            ("b".to_string(), 3),
            ("c".to_string(), 4),
        ]
        .into();
        let events = reconcile(&mut known, vec![kv("a", 2), kv("b", 7), kv("d", 8)]);
        assert_eq!(
            events,
            vec![
                WatchEvent::Upsert {
                    kv: kv("b", 7),
                    created: false
                },
                WatchEvent::Upsert {
                    kv: kv("d", 8),
                    created: true
                },
                WatchEvent::Delete { key: "c".into() },
            ]
        );
        assert_eq!(
            known,
            [
                ("a".to_string(), 2),
                ("b".to_string(), 7),
                ("d".to_string(), 8)
            ]
            .into()
        );
    }

    #[test]
    fn forced_relists_are_held_to_one_per_max_until_the_watch_stays_up() {
        let policy = RelistPolicy {
            min: Duration::from_millis(50),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
        };
        let mut limiter = RelistLimiter::new(policy);
        let mut now = tokio::time::Instant::now();
        let mut delays = Vec::new();
        // A remote that compacts right after every listing: the delay doubles up to the cap
        // and stays there (events between breaks do not reset it).
        for _ in 0..12 {
            let d = limiter.broken(now);
            delays.push(d.as_millis());
            now += d;
            limiter.listed(now);
            now += Duration::from_secs(1);
        }
        assert_eq!(
            delays,
            [
                50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        // A watch that stayed up for `healthy_after` starts over from the minimum.
        now += Duration::from_secs(60);
        assert_eq!(limiter.broken(now), Duration::from_millis(50));
        // A listing that fails (no `listed`) keeps doubling.
        assert_eq!(limiter.broken(now), Duration::from_millis(100));
    }

    #[test]
    fn reconcile_of_an_empty_listing_drains_everything() {
        let mut known: HashMap<String, Revision> = [("x".to_string(), 1)].into();
        assert_eq!(
            reconcile(&mut known, vec![]),
            vec![WatchEvent::Delete { key: "x".into() }]
        );
        assert!(known.is_empty());
    }
}
