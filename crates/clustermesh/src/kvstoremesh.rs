//! KVStoreMesh: mirror every remote cluster into the local etcd, so agents read one kvstore.
//!
//! The reflector follows the remotes of a configuration directory with a [`ClusterMesh`] (so
//! everything it mirrors has been validated) and writes, per remote `r`, under its own lease:
//! - the entries under `cilium/cache/{nodes,services,identities,ip}/v1/<r>/...` (identities as
//!   `.../<r>/id/<id>`), one SyncStore per kind;
//! - each kind's canary `cilium/synced/<r>/cilium/cache/<kind>/v1` once the remote has synced;
//! - `cilium/cluster-config/<r>` with the remote's id and `"cached": true`, which tells agents
//!   to read the cache prefixes;
//! - `cilium/cache/.heartbeat/<r>` ([`keys::cache_heartbeat_key`]), the current time, rewritten
//!   every heartbeat interval while the reflector is connected to `r` and deleted as soon as it
//!   is not: agents reading the cache check it instead of `cilium/.heartbeat`, so they mark `r`
//!   unreachable (and fail over from its service backends) as readers of `r` itself do.
//!
//! Losing a remote keeps its cache (nothing is deleted while it is away); removing its
//! configuration drains the cache, the canaries and the config.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use plexus_kvstore::{KvBackend, LeaseId, LeaseManager, QueueGauge, SyncStore, SyncStoreConfig};
use plexus_model::cluster::ClusterInfo;
use plexus_model::config::CiliumClusterConfig;
use plexus_model::keys::{self, StateKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::mesh::{ClusterMesh, MeshHandle, MeshStatus};
use crate::remote_cluster::{DriverTiming, MeshEvent, RemoteEvent};

const KINDS: [StateKind; 4] = [
    StateKind::Nodes,
    StateKind::Services,
    StateKind::Identities,
    StateKind::Ip,
];

/// The running reflector. Dropping it stops mirroring; the cache stays until the lease ends.
pub struct KvStoreMesh {
    mesh: ClusterMesh,
    queues: SyncQueues,
    task: JoinHandle<()>,
    heartbeats: JoinHandle<()>,
}

impl KvStoreMesh {
    /// Mirrors the remotes configured in `dir` into `local_backend`, under the leases of `leases`.
    pub fn spawn(
        dir: impl Into<std::path::PathBuf>,
        local: ClusterInfo,
        local_backend: Arc<dyn KvBackend>,
        leases: &LeaseManager,
        timing: DriverTiming,
        scan_interval: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let heartbeat_interval = timing.protocol.heartbeat_interval;
        let mesh = ClusterMesh::spawn(dir, local.clone(), tx, timing, scan_interval);
        let heartbeat_store = SyncStore::start_with_lease(
            local_backend.clone(),
            leases.subscribe(),
            SyncStoreConfig {
                prefix: format!("{}/", keys::CACHE_HEARTBEAT),
                canary: None,
            },
        );
        let heartbeats = tokio::spawn(heartbeats(
            mesh.handle(),
            heartbeat_store,
            heartbeat_interval,
        ));
        let configs = SyncStore::start_with_lease(
            local_backend.clone(),
            leases.subscribe(),
            SyncStoreConfig {
                prefix: format!("{}/", keys::CLUSTER_CONFIG),
                canary: None,
            },
        );
        let queues = SyncQueues::default();
        let reflector = Reflector {
            queues: queues.clone(),
            local,
            backend: local_backend,
            lease_rx: leases.subscribe(),
            configs,
            cluster_ids: BTreeMap::new(),
            remotes: BTreeMap::new(),
        };
        let task = tokio::spawn(reflector.run(rx));
        Self {
            mesh,
            queues,
            task,
            heartbeats,
        }
    }

    /// The sync queue sizes of the cache writers, per remote.
    pub fn queues(&self) -> SyncQueues {
        self.queues.clone()
    }

    /// The upstream remotes' status.
    pub fn status(&self) -> MeshStatus {
        self.mesh.status()
    }

    /// A handle that reads the upstream remotes' status from elsewhere.
    pub fn handle(&self) -> MeshHandle {
        self.mesh.handle()
    }
}

impl Drop for KvStoreMesh {
    fn drop(&mut self) {
        self.task.abort();
        self.heartbeats.abort();
    }
}

/// Keeps `cilium/cache/.heartbeat/<r>` written for every remote `r` the mesh is connected to:
/// a new time every `interval` (readers call a value unchanged for two intervals stale) and at
/// once when `r` connects; deleted at once when `r` is lost or removed.
async fn heartbeats(mesh: MeshHandle, store: SyncStore, interval: Duration) {
    let mut changes = mesh.changes();
    let mut tick = tokio::time::interval(interval);
    let mut connected = BTreeSet::new();
    loop {
        let rewrite = tokio::select! {
            _ = tick.tick() => true,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
        };
        let now: BTreeSet<String> = mesh
            .status()
            .remotes
            .into_iter()
            .filter(|(_, r)| r.protocol.connected)
            .map(|(name, _)| name)
            .collect();
        let stamp = plexus_model::time::format_rfc3339(chrono::Utc::now());
        for name in &now {
            if rewrite || !connected.contains(name) {
                store.upsert(name.clone(), stamp.clone().into_bytes());
            }
        }
        for gone in connected.difference(&now) {
            store.delete(gone.clone());
        }
        connected = now;
    }
}

struct Cache {
    stores: BTreeMap<StateKind, SyncStore>,
}

/// The cache writers' sync queues, per remote (a cheap, shared handle).
#[derive(Clone, Default)]
pub struct SyncQueues(Arc<std::sync::Mutex<BTreeMap<String, Vec<QueueGauge>>>>);

impl SyncQueues {
    /// Keys waiting to be written into the cache, per remote.
    pub fn sizes(&self) -> BTreeMap<String, usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, gauges)| (r.clone(), gauges.iter().map(QueueGauge::get).sum()))
            .collect()
    }
}

struct Reflector {
    queues: SyncQueues,
    local: ClusterInfo,
    backend: Arc<dyn KvBackend>,
    lease_rx: watch::Receiver<LeaseId>,
    /// The cached cluster configs, `cilium/cluster-config/<remote>`, re-written with the lease.
    configs: SyncStore,
    /// Each remote's cluster id, from its accepted cluster config (the `ClusterConfig` event).
    cluster_ids: BTreeMap<String, u32>,
    remotes: BTreeMap<String, Cache>,
}

impl Reflector {
    async fn run(mut self, mut rx: mpsc::Receiver<MeshEvent>) {
        while let Some(MeshEvent { cluster, event }) = rx.recv().await {
            self.apply(cluster, event).await;
        }
    }

    fn cache(&mut self, cluster: &str) -> &Cache {
        let backend = self.backend.clone();
        let lease_rx = self.lease_rx.clone();
        let queues = self.queues.clone();
        self.remotes.entry(cluster.to_string()).or_insert_with(|| {
            let cache = Cache {
                stores: KINDS
                    .into_iter()
                    .map(|kind| {
                        let config = SyncStoreConfig {
                            prefix: kind.cache_prefix(cluster),
                            canary: Some(kind.cache_canary(cluster)),
                        };
                        (
                            kind,
                            SyncStore::start_with_lease(backend.clone(), lease_rx.clone(), config),
                        )
                    })
                    .collect(),
            };
            queues.0.lock().unwrap_or_else(|e| e.into_inner()).insert(
                cluster.to_string(),
                cache.stores.values().map(SyncStore::queue_gauge).collect(),
            );
            cache
        })
    }

    async fn apply(&mut self, cluster: String, event: RemoteEvent) {
        match event {
            RemoteEvent::ClusterConfig { cluster_id } => {
                self.cluster_ids.insert(cluster, cluster_id);
            }
            RemoteEvent::NodeUpsert(n) => {
                let value = serde_json::to_vec(&n).unwrap_or_default();
                self.cache(&cluster).stores[&StateKind::Nodes].upsert(n.name, value);
            }
            RemoteEvent::NodeDelete(name) => {
                self.cache(&cluster).stores[&StateKind::Nodes].delete(name)
            }
            RemoteEvent::IpUpsert(p) => {
                let key = p.key_suffix().unwrap_or_else(|_| p.ip.to_string());
                let value = serde_json::to_vec(&*p).unwrap_or_default();
                self.cache(&cluster).stores[&StateKind::Ip].upsert(key, value);
            }
            RemoteEvent::IpDelete(key) => self.cache(&cluster).stores[&StateKind::Ip].delete(key),
            RemoteEvent::IdentityUpsert(i) => {
                let value = i.labels.to_kvstore_string().into_bytes();
                self.cache(&cluster).stores[&StateKind::Identities]
                    .upsert(i.id.0.to_string(), value);
            }
            RemoteEvent::IdentityDelete(id) => {
                self.cache(&cluster).stores[&StateKind::Identities].delete(id.to_string())
            }
            RemoteEvent::ServiceUpsert(s) => {
                let key = format!("{}/{}", s.namespace, s.name);
                let value = serde_json::to_vec(&*s).unwrap_or_default();
                self.cache(&cluster).stores[&StateKind::Services].upsert(key, value);
            }
            RemoteEvent::ServiceDelete(key) => {
                self.cache(&cluster).stores[&StateKind::Services].delete(key)
            }
            RemoteEvent::Synced => {
                for store in self.cache(&cluster).stores.values() {
                    store.synced();
                }
                for store in self.cache(&cluster).stores.values() {
                    store.wait_synced().await;
                }
                self.write_config(&cluster).await;
            }
            RemoteEvent::Drained => {
                // Stop this remote's SyncStores, then remove what is left of it.
                self.remotes.remove(&cluster);
                self.cluster_ids.remove(&cluster);
                self.queues
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&cluster);
                for kind in KINDS {
                    let _ = self
                        .backend
                        .delete_prefix(&kind.cache_prefix(&cluster))
                        .await;
                    let _ = self.backend.delete(&kind.cache_canary(&cluster)).await;
                }
                self.configs.delete(cluster);
            }
        }
    }

    async fn write_config(&self, cluster: &str) {
        let Some(&id) = self.cluster_ids.get(cluster) else {
            return;
        };
        let mut config = CiliumClusterConfig::new(id, self.local.max);
        config.capabilities.cached = true;
        // Serializing a struct of numbers and booleans cannot fail.
        self.configs
            .upsert(cluster, serde_json::to_vec(&config).unwrap_or_default());
    }
}
