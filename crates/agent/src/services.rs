//! The cluster's services as this node sees them: its own Service objects and the backends the
//! apiserver selected for them, merged with the remote clusters' ClusterServices through the
//! global-service semantics of `plexus_loadbalancer::select` (reachability from the
//! remote-cluster manager). `service list` shows the result; the datapath's load-balancing
//! tables come with the services issue.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use plexus_clustermesh::mesh::MeshHandle;
use plexus_kvstore::{KvBackend, StoreEvent, WatchStore};
use plexus_loadbalancer::cluster_service::Backends;
use plexus_loadbalancer::select::{Selection, select};
use plexus_loadbalancer::service::{Affinity, Service};
use plexus_loadbalancer::{BACKENDS_PREFIX, SERVICES_PREFIX};
use serde::{Deserialize, Serialize};

use crate::view::NodeView;

/// One service as `service list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServiceReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its address.
    pub cluster_ip: Option<String>,
    /// Its ports, `port/PROTO` by name.
    pub ports: BTreeMap<String, String>,
    /// Global.
    pub global: bool,
    /// Shared with the other clusters.
    pub shared: bool,
    /// Affinity.
    pub affinity: Affinity,
    /// Backends with their cluster and state.
    pub backends: Selection,
    /// A bad annotation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
struct Local {
    services: BTreeMap<String, Service>,
    backends: BTreeMap<String, Backends>,
}

/// The node's services.
#[derive(Clone, Default)]
pub struct Services {
    local: Arc<Mutex<Local>>,
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str) -> plexus_kvstore::DecodeFn<T> {
    Box::new(move |key, raw| serde_json::from_slice(raw).map_err(|e| format!("{what} {key}: {e}")))
}

fn fold<T>(map: &mut BTreeMap<String, T>, event: StoreEvent<T>) {
    match event {
        StoreEvent::Upsert { key, value, .. } => {
            map.insert(key, value);
        }
        StoreEvent::Delete { key, .. } => {
            map.remove(&key);
        }
        StoreEvent::Rejected { key, reason } => {
            tracing::warn!(%key, %reason, "service object refused");
            map.remove(&key);
        }
        StoreEvent::Synced => {}
    }
}

impl Services {
    /// Follows the cluster's Service objects and computed backends until the task is dropped.
    pub async fn follow(self, backend: Arc<dyn KvBackend>) {
        let mut services: WatchStore<Service> =
            WatchStore::new(backend.clone(), SERVICES_PREFIX, decode("service"));
        let mut backends: WatchStore<Backends> =
            WatchStore::new(backend, BACKENDS_PREFIX, decode("backends"));
        loop {
            tokio::select! {
                e = services.next() => {
                    let mut l = self.local.lock().unwrap_or_else(|e| e.into_inner());
                    fold(&mut l.services, e);
                }
                e = backends.next() => {
                    let mut l = self.local.lock().unwrap_or_else(|e| e.into_inner());
                    fold(&mut l.backends, e);
                }
            }
        }
    }

    /// Every local service with its selected backends.
    pub fn report(&self, cluster: &str, view: &NodeView, mesh: &MeshHandle) -> Vec<ServiceReport> {
        let status = mesh.status();
        let reachable = |c: &str| status.remotes.get(c).is_some_and(|r| r.protocol.connected);
        let l = self.local.lock().unwrap_or_else(|e| e.into_inner());
        l.services
            .iter()
            .map(|(key, svc)| {
                let (config, error) = match svc.global_config() {
                    Ok(c) => (c, None),
                    Err(e) => (Default::default(), Some(e.to_string())),
                };
                let empty = Backends::new();
                let local = l.backends.get(key).unwrap_or(&empty);
                let remote = view.remote_services(key);
                ServiceReport {
                    namespace: svc.metadata.namespace.clone(),
                    name: svc.metadata.name.clone(),
                    cluster_ip: svc.spec.cluster_ip.clone(),
                    ports: svc
                        .spec
                        .ports
                        .iter()
                        .map(|p| (p.name.clone(), format!("{}/{}", p.port, p.protocol)))
                        .collect(),
                    global: config.global,
                    shared: config.shared,
                    affinity: config.affinity,
                    backends: select(cluster, config, local, &remote, &reachable),
                    error,
                }
            })
            .collect()
    }
}
