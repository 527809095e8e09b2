//! Garbage collection of identities no node references any more.
//!
//! [`GcPlanner`] is the pure core: fed a listing of master keys, the set of label strings that
//! still have value keys, and the time, it returns the masters to delete: those seen
//! unreferenced and unchanged for at least the grace period. [`IdentityGc`] runs it against a
//! kvstore and deletes each master with a transaction that requires it unchanged and its
//! `value/<labels>/` prefix empty, so an allocator that joins meanwhile always wins.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_kvstore::{Compare, KvBackend, Op, Txn};
use plexus_model::keys;

/// A master key as listed: id, labels, mod revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master {
    /// Numeric id.
    pub id: u32,
    /// Label string.
    pub labels: String,
    /// Modification revision.
    pub mod_revision: i64,
}

/// Remembers since when each master has been unreferenced.
#[derive(Debug)]
pub struct GcPlanner {
    grace: Duration,
    unreferenced_since: HashMap<u32, (i64, Instant)>,
}

impl GcPlanner {
    /// A planner that deletes masters unreferenced for `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            unreferenced_since: HashMap::new(),
        }
    }

    /// The masters to delete now.
    pub fn plan(
        &mut self,
        masters: &[Master],
        referenced: &HashSet<String>,
        now: Instant,
    ) -> Vec<Master> {
        let mut delete = Vec::new();
        let mut still = HashMap::new();
        for m in masters {
            if referenced.contains(&m.labels) {
                continue;
            }
            let since = match self.unreferenced_since.get(&m.id) {
                Some((rev, since)) if *rev == m.mod_revision => *since,
                _ => now,
            };
            if now.duration_since(since) >= self.grace {
                delete.push(m.clone());
            } else {
                still.insert(m.id, (m.mod_revision, since));
            }
        }
        self.unreferenced_since = still;
        delete
    }

    /// How many masters are waiting out their grace period.
    pub fn pending(&self) -> usize {
        self.unreferenced_since.len()
    }
}

/// Runs identity GC against a kvstore (the apiserver runs one).
pub struct IdentityGc {
    backend: Arc<dyn KvBackend>,
    planner: GcPlanner,
}

impl IdentityGc {
    /// A collector with the given grace period.
    pub fn new(backend: Arc<dyn KvBackend>, grace: Duration) -> Self {
        Self {
            backend,
            planner: GcPlanner::new(grace),
        }
    }

    /// One pass: lists masters and value keys, deletes what is due. Returns the deleted ids.
    pub async fn run_once(&mut self, now: Instant) -> Result<Vec<u32>, plexus_kvstore::Error> {
        let masters: Vec<Master> = self
            .backend
            .list_prefix(&keys::identity_id_prefix())
            .await?
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let id = keys::parse_identity_id_key(kv.key.rsplit('/').next()?).ok()?;
                Some(Master {
                    id,
                    labels: String::from_utf8(kv.value).ok()?,
                    mod_revision: kv.mod_revision,
                })
            })
            .collect();
        let root = keys::identity_value_root();
        let referenced: HashSet<String> = self
            .backend
            .list_prefix(&root)
            .await?
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let relative = kv.key.strip_prefix(&root)?;
                keys::parse_identity_value_key(relative)
                    .ok()
                    .map(|(labels, _)| labels.to_string())
            })
            .collect();
        let mut deleted = Vec::new();
        for m in self.planner.plan(&masters, &referenced, now) {
            let key = keys::identity_id_key(m.id);
            let txn = Txn {
                compares: vec![
                    Compare::ModRevision(key.clone(), m.mod_revision),
                    Compare::PrefixEmpty(keys::identity_value_prefix(&m.labels)),
                ],
                ops: vec![Op::Delete(key)],
            };
            if self.backend.txn(txn).await? {
                tracing::info!(id = m.id, labels = %m.labels, "identity garbage-collected");
                deleted.push(m.id);
            }
        }
        Ok(deleted)
    }

    /// Runs a pass every `interval` until the task is dropped.
    pub async fn run(mut self, interval: Duration) {
        loop {
            if let Err(err) = self.run_once(Instant::now()).await {
                tracing::warn!(error = %err, "identity GC pass failed");
            }
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u32, labels: &str, rev: i64) -> Master {
        Master {
            id,
            labels: labels.into(),
            mod_revision: rev,
        }
    }

    #[test]
    fn deletes_only_after_the_grace_period_and_never_referenced_ids() {
        let t0 = Instant::now();
        let mut p = GcPlanner::new(Duration::from_secs(60));
        let masters = [m(70000, "a;", 1), m(70001, "b;", 2)];
        let referenced: HashSet<String> = ["a;".to_string()].into();
        assert!(p.plan(&masters, &referenced, t0).is_empty());
        assert_eq!(p.pending(), 1);
        assert!(
            p.plan(&masters, &referenced, t0 + Duration::from_secs(59))
                .is_empty()
        );
        assert_eq!(
            p.plan(&masters, &referenced, t0 + Duration::from_secs(60)),
            vec![m(70001, "b;", 2)]
        );
    }

    #[test]
    fn a_reference_or_a_change_restarts_the_clock() {
        let t0 = Instant::now();
        let mut p = GcPlanner::new(Duration::from_secs(60));
        let none = HashSet::new();
        p.plan(&[m(1000, "a;", 1)], &none, t0);
        let referenced: HashSet<String> = ["a;".to_string()].into();
        p.plan(
            &[m(1000, "a;", 1)],
            &referenced,
            t0 + Duration::from_secs(30),
        );
        assert!(
            p.plan(&[m(1000, "a;", 1)], &none, t0 + Duration::from_secs(70))
                .is_empty()
        );
        assert!(
            p.plan(&[m(1000, "a;", 5)], &none, t0 + Duration::from_secs(140))
                .is_empty(),
            "rewritten master"
        );
        assert_eq!(
            p.plan(&[m(1000, "a;", 5)], &none, t0 + Duration::from_secs(200))
                .len(),
            1
        );
    }
}
