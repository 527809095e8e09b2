//! The per-node identity allocator.
//!
//! Allocation is a loop over three transactions, each guarded so that a concurrent allocator or
//! the garbage collector can only make it fail (and retry), never make it wrong:
//! 1. **Join**: some node already references the labels (`value/<labels>/` is not empty) with id
//!    `X` and `id/X` holds these labels: write our value key, on condition that `id/X` and the
//!    value key we followed are unchanged. While that value key exists, `value/<labels>/` is not
//!    empty, so neither another allocator (create, reuse) nor GC can act on these labels.
//! 2. **Reuse**: no node references the labels but a master `id/X` with these labels survives
//!    (it waits for GC): write our value key, on condition that `id/X` is unchanged and
//!    `value/<labels>/` is still empty.
//! 3. **Create**: pick a random free id `N` in the cluster's range and write `id/N` and our value
//!    key, on condition that `id/N` does not exist and `value/<labels>/` is still empty, so two
//!    allocators cannot create two ids for the same labels.
//!
//! [`plan`] decides which transaction to try from what was read; it is pure and unit-tested.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use plexus_kvstore::{Compare, KeyValue, KvBackend, LeaseId, Op, Txn};
use plexus_model::cluster::ClusterInfo;
use plexus_model::identity::{
    LOCAL_IDENTITY_FLAG, MIN_ALLOCATABLE, NumericIdentity, identity_range,
};
use plexus_model::keys;
use plexus_model::labels::Labels;
use rand::Rng;
use tokio::sync::{Mutex, watch};

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    /// The kvstore failed.
    #[error("identity allocation for {labels:?}: {source}")]
    Kvstore {
        /// The labels being allocated.
        labels: String,
        /// The kvstore error.
        source: plexus_kvstore::Error,
    },
    /// Every id of the range is taken.
    #[error("identity allocation for {labels:?}: no free identity left in {range}")]
    Exhausted {
        /// The labels being allocated.
        labels: String,
        /// The cluster's range.
        range: String,
    },
    /// The store holds contradicting keys for these labels.
    #[error("identity allocation for {labels:?}: {reason}")]
    Conflict {
        /// The labels being allocated.
        labels: String,
        /// What contradicts.
        reason: String,
    },
    /// Too many transactions lost races in a row.
    #[error("identity allocation for {labels:?}: gave up after {attempts} contended attempts")]
    Contended {
        /// The labels being allocated.
        labels: String,
        /// How many attempts were made.
        attempts: u32,
    },
}

/// What the store says about one label set, as read by the allocator.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The value keys under `value/<labels>/`.
    pub values: Vec<KeyValue>,
    /// The master key of the id those value keys name, if they name one and it exists.
    pub referenced_master: Option<KeyValue>,
    /// A master with these labels known from the allocator's cache (for reuse).
    pub cached_master: Option<(u32, i64)>,
}

/// The transaction to try next, and the id it gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Try this transaction; on success the labels have `id` (`created`: a new master).
    Try {
        /// The transaction.
        txn: Txn,
        /// The id it yields.
        id: u32,
        /// Whether it creates a new master key.
        created: bool,
    },
    /// The store is inconsistent for these labels.
    Conflict(String),
}

/// Decides the next transaction for `labels` (kvstore string) on `node` under `lease`, given
/// what was read and a random free `candidate` id for the create path.
pub fn plan(labels: &str, node: &str, lease: LeaseId, observed: &Observed, candidate: u32) -> Plan {
    let value_prefix = keys::identity_value_prefix(labels);
    let own_key = keys::identity_value_key(labels, node);
    let put_own = |id: u32| Op::Put {
        key: own_key.clone(),
        value: id.to_string().into_bytes(),
        lease: Some(lease),
    };
    if let Some(first) = observed.values.first() {
        let Some(id) = std::str::from_utf8(&first.value)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            return Plan::Conflict(format!(
                "value key {} holds {:?}, not an id",
                first.key,
                String::from_utf8_lossy(&first.value)
            ));
        };
        let master_key = keys::identity_id_key(id);
        // The value key we follow must still be there: while it exists, `value/<labels>/` is
        // not empty, so nobody can create or reuse another id for these labels meanwhile.
        let followed = Compare::ModRevision(first.key.clone(), first.mod_revision);
        return match &observed.referenced_master {
            Some(master) if master.value == labels.as_bytes() => Plan::Try {
                txn: Txn {
                    compares: vec![
                        Compare::ModRevision(master_key, master.mod_revision),
                        followed.clone(),
                    ],
                    ops: vec![put_own(id)],
                },
                id,
                created: false,
            },
            Some(master) => Plan::Conflict(format!(
                "value keys name id {id}, but {master_key} holds {:?}",
                String::from_utf8_lossy(&master.value)
            )),
            // The master vanished while nodes still reference it: write it again.
            None => Plan::Try {
                txn: Txn {
                    compares: vec![Compare::Absent(master_key.clone()), followed.clone()],
                    ops: vec![
                        Op::Put {
                            key: master_key,
                            value: labels.as_bytes().to_vec(),
                            lease: None,
                        },
                        put_own(id),
                    ],
                },
                id,
                created: true,
            },
        };
    }
    if let Some((id, rev)) = observed.cached_master {
        return Plan::Try {
            txn: Txn {
                compares: vec![
                    Compare::ModRevision(keys::identity_id_key(id), rev),
                    Compare::PrefixEmpty(value_prefix),
                ],
                ops: vec![put_own(id)],
            },
            id,
            created: false,
        };
    }
    let master_key = keys::identity_id_key(candidate);
    Plan::Try {
        txn: Txn {
            compares: vec![
                Compare::Absent(master_key.clone()),
                Compare::PrefixEmpty(value_prefix),
            ],
            ops: vec![
                Op::Put {
                    key: master_key,
                    value: labels.as_bytes().to_vec(),
                    lease: None,
                },
                put_own(candidate),
            ],
        },
        id: candidate,
        created: true,
    }
}

#[derive(Default)]
struct Local {
    /// labels string -> (id, references on this node).
    held: HashMap<String, (u32, usize)>,
    /// Masters known from the last listing: labels -> (id, mod revision), and the ids in use.
    masters: HashMap<String, (u32, i64)>,
    used: HashSet<u32>,
}

/// Allocates identities for the endpoints of one node.
pub struct IdentityAllocator {
    backend: Arc<dyn KvBackend>,
    cluster: ClusterInfo,
    node: String,
    lease: watch::Receiver<LeaseId>,
    local: Mutex<Local>,
}

const MAX_ATTEMPTS: u32 = 64;

impl IdentityAllocator {
    /// An allocator for `node` (its name or IP: the last segment of its value keys) writing
    /// value keys under the lease `lease` currently holds (e.g. `LeaseManager::subscribe`).
    pub fn new(
        backend: Arc<dyn KvBackend>,
        cluster: ClusterInfo,
        node: impl Into<String>,
        lease: watch::Receiver<LeaseId>,
    ) -> Self {
        Self {
            backend,
            cluster,
            node: node.into(),
            lease,
            local: Mutex::new(Local::default()),
        }
    }

    /// The cluster's workload labels: `labels` with the cluster label set.
    pub fn scoped(&self, labels: &Labels) -> Labels {
        labels.clone().with_cluster(&self.cluster.name)
    }

    /// Allocates (or takes another reference to) the identity of `labels`; the cluster label is
    /// added. Returns the id and whether a new master key was created.
    pub async fn allocate(
        &self,
        labels: &Labels,
    ) -> Result<(NumericIdentity, bool), AllocatorError> {
        let labels = self.scoped(labels).to_kvstore_string();
        let mut local = self.local.lock().await;
        if let Some((id, refs)) = local.held.get_mut(&labels) {
            *refs += 1;
            return Ok((NumericIdentity(*id), false));
        }
        let (id, created) = self.allocate_in_store(&mut local, &labels).await?;
        local.held.insert(labels, (id, 1));
        Ok((NumericIdentity(id), created))
    }

    async fn allocate_in_store(
        &self,
        local: &mut Local,
        labels: &str,
    ) -> Result<(u32, bool), AllocatorError> {
        let kv_err = |source| AllocatorError::Kvstore {
            labels: labels.to_string(),
            source,
        };
        if local.masters.is_empty() {
            self.refresh(local).await.map_err(kv_err)?;
        }
        for attempt in 0..MAX_ATTEMPTS {
            let values = self
                .backend
                .list_prefix(&keys::identity_value_prefix(labels))
                .await
                .map_err(kv_err)?
                .kvs;
            let referenced_master = match values.first().and_then(|v| {
                std::str::from_utf8(&v.value)
                    .ok()?
                    .trim()
                    .parse::<u32>()
                    .ok()
            }) {
                Some(id) => self
                    .backend
                    .get(&keys::identity_id_key(id))
                    .await
                    .map_err(kv_err)?,
                None => None,
            };
            let observed = Observed {
                values,
                referenced_master,
                cached_master: local.masters.get(labels).copied(),
            };
            let candidate = self.candidate(local, labels)?;
            let lease = *self.lease.borrow();
            match plan(labels, &self.node, lease, &observed, candidate) {
                Plan::Conflict(reason) => {
                    return Err(AllocatorError::Conflict {
                        labels: labels.to_string(),
                        reason,
                    });
                }
                Plan::Try { txn, id, created } => {
                    if self.backend.txn(txn).await.map_err(kv_err)? {
                        local.used.insert(id);
                        return Ok((id, created));
                    }
                    // Lost a race: learn what changed, then back off a little (jittered) so
                    // racing allocators do not retry in lockstep.
                    self.refresh(local).await.map_err(kv_err)?;
                    let jitter = rand::rng().random_range(0..(1u64 << attempt.min(6)));
                    tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                }
            }
        }
        Err(AllocatorError::Contended {
            labels: labels.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    fn candidate(&self, local: &Local, labels: &str) -> Result<u32, AllocatorError> {
        let range = identity_range(self.cluster.id, self.cluster.max);
        let free = |id: u32| {
            id >= MIN_ALLOCATABLE && id & LOCAL_IDENTITY_FLAG == 0 && !local.used.contains(&id)
        };
        let mut rng = rand::rng();
        for _ in 0..64 {
            let id = rng.random_range(range.clone());
            if free(id) {
                return Ok(id);
            }
        }
        range
            .clone()
            .find(|id| free(*id))
            .ok_or_else(|| AllocatorError::Exhausted {
                labels: labels.to_string(),
                range: format!("{}..={}", range.start(), range.end()),
            })
    }

    async fn refresh(&self, local: &mut Local) -> Result<(), plexus_kvstore::Error> {
        let listed = self
            .backend
            .list_prefix(&keys::identity_id_prefix())
            .await?;
        local.masters.clear();
        local.used.clear();
        for kv in listed.kvs {
            let Some(id) = kv
                .key
                .rsplit('/')
                .next()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            local.used.insert(id);
            if let Ok(labels) = String::from_utf8(kv.value) {
                local.masters.insert(labels, (id, kv.mod_revision));
            }
        }
        Ok(())
    }

    /// Drops one reference to `labels`; the last one deletes this node's value key.
    /// Returns whether the node stopped using the identity.
    pub async fn release(&self, labels: &Labels) -> Result<bool, AllocatorError> {
        let labels = self.scoped(labels).to_kvstore_string();
        let mut local = self.local.lock().await;
        let Some((_, refs)) = local.held.get_mut(&labels) else {
            return Ok(false);
        };
        *refs -= 1;
        if *refs > 0 {
            return Ok(false);
        }
        local.held.remove(&labels);
        self.backend
            .delete(&keys::identity_value_key(&labels, &self.node))
            .await
            .map_err(|source| AllocatorError::Kvstore {
                labels: labels.clone(),
                source,
            })?;
        Ok(true)
    }

    /// Writes this node's value keys again (after its lease was replaced, which deleted them).
    pub async fn republish(&self) -> Result<(), AllocatorError> {
        let mut local = self.local.lock().await;
        let held: Vec<(String, u32)> = local
            .held
            .iter()
            .map(|(l, (id, _))| (l.clone(), *id))
            .collect();
        for (labels, id) in held {
            let (new_id, _) = self.allocate_in_store(&mut local, &labels).await?;
            if new_id != id {
                tracing::warn!(%labels, old = id, new = new_id, "identity changed while the lease was lost");
                if let Some(entry) = local.held.get_mut(&labels) {
                    entry.0 = new_id;
                }
            }
        }
        Ok(())
    }

    /// The id this node holds for `labels` (cluster label added), if any.
    pub async fn lookup_by_labels(&self, labels: &Labels) -> Option<NumericIdentity> {
        let labels = self.scoped(labels).to_kvstore_string();
        self.local
            .lock()
            .await
            .held
            .get(&labels)
            .map(|(id, _)| NumericIdentity(*id))
    }

    /// The labels of identity `id`, read from its master key.
    pub async fn lookup_by_id(
        &self,
        id: NumericIdentity,
    ) -> Result<Option<Labels>, AllocatorError> {
        let key = keys::identity_id_key(id.0);
        let kv = self
            .backend
            .get(&key)
            .await
            .map_err(|source| AllocatorError::Kvstore {
                labels: String::new(),
                source,
            })?;
        Ok(kv.and_then(|kv| Labels::parse(std::str::from_utf8(&kv.value).ok()?).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease: None,
        }
    }

    const L: &str = "k8s:app=a;k8s:io.cilium.k8s.policy.cluster=c1;";

    #[test]
    fn joins_an_id_other_nodes_use() {
        let observed = Observed {
            values: vec![kv(&keys::identity_value_key(L, "n2"), "70000", 5)],
            referenced_master: Some(kv(&keys::identity_id_key(70000), L, 4)),
            cached_master: None,
        };
        let Plan::Try { txn, id, created } = plan(L, "n1", 9, &observed, 80000) else {
            panic!()
        };
        assert_eq!((id, created), (70000, false));
        assert_eq!(
            txn.compares,
            vec![
                Compare::ModRevision(keys::identity_id_key(70000), 4),
                Compare::ModRevision(keys::identity_value_key(L, "n2"), 5),
            ],
            "both the master and the followed value key must be unchanged"
        );
        assert_eq!(
            txn.ops,
            vec![Op::Put {
                key: keys::identity_value_key(L, "n1"),
                value: b"70000".to_vec(),
                lease: Some(9)
            }]
        );
    }

    #[test]
    fn creates_only_if_the_id_is_free_and_nobody_references_the_labels() {
        let Plan::Try { txn, id, created } = plan(L, "n1", 9, &Observed::default(), 80000) else {
            panic!()
        };
        assert_eq!((id, created), (80000, true));
        assert_eq!(
            txn.compares,
            vec![
                Compare::Absent(keys::identity_id_key(80000)),
                Compare::PrefixEmpty(keys::identity_value_prefix(L))
            ]
        );
        assert_eq!(txn.ops.len(), 2);
    }

    #[test]
    fn reuses_a_surviving_master_and_recreates_a_lost_one() {
        let observed = Observed {
            cached_master: Some((70001, 3)),
            ..Observed::default()
        };
        let Plan::Try { id, created, txn } = plan(L, "n1", 9, &observed, 80000) else {
            panic!()
        };
        assert_eq!((id, created), (70001, false));
        assert!(
            txn.compares
                .contains(&Compare::PrefixEmpty(keys::identity_value_prefix(L)))
        );
        let observed = Observed {
            values: vec![kv(&keys::identity_value_key(L, "n2"), "70002", 5)],
            ..Observed::default()
        };
        let Plan::Try { id, created, txn } = plan(L, "n1", 9, &observed, 80000) else {
            panic!()
        };
        assert_eq!((id, created), (70002, true));
        assert_eq!(
            txn.compares,
            vec![
                Compare::Absent(keys::identity_id_key(70002)),
                Compare::ModRevision(keys::identity_value_key(L, "n2"), 5),
            ]
        );
    }

    #[test]
    fn contradictions_are_reported() {
        let observed = Observed {
            values: vec![kv(&keys::identity_value_key(L, "n2"), "70000", 5)],
            referenced_master: Some(kv(&keys::identity_id_key(70000), "k8s:app=other;", 4)),
            cached_master: None,
        };
        assert!(
            matches!(plan(L, "n1", 9, &observed, 1), Plan::Conflict(r) if r.contains("k8s:app=other;"))
        );
        let observed = Observed {
            values: vec![kv(&keys::identity_value_key(L, "n2"), "zz", 5)],
            ..Observed::default()
        };
        assert!(matches!(plan(L, "n1", 9, &observed, 1), Plan::Conflict(_)));
    }
}
