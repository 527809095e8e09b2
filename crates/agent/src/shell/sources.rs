//! The tasks that feed the core: each follows one source and turns what it sees into
//! [`Input`]s.
//!
//! - [`follow_local`]: this cluster's nodes, ip -> identity entries and identities;
//! - [`follow_services`]: the cluster's Service objects and the backends the apiserver
//!   selected for them;
//! - [`follow_policies`]: the cluster's policy objects (a stored object the policy crate
//!   refuses is logged and left out, never half-applied);
//! - [`follow_remotes`]: the remote clusters' merged events, several per step when they come
//!   in bursts (a remote's initial listing);
//! - [`follow_mesh_status`]: the remote clusters' reachability, on every change the
//!   remote-cluster manager reports;
//! - [`service_grace`]: tells the core when a restarted agent stops waiting for its remotes
//!   before programming services;
//! - [`follow_objects`]: the cluster's Namespace and Pod objects, whose labels are the local
//!   endpoints' identity labels; not the core's input but the endpoint manager's, which
//!   relabels the endpoints a change concerns.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use plexus_clustermesh::mesh::MeshHandle;
use plexus_clustermesh::remote_cluster::MeshEvent;
use plexus_clustermesh::validate::{identity_decoder, ipcache_decoder, node_decoder};
use plexus_kvstore::{KvBackend, StoreEvent, WatchStore};
use plexus_loadbalancer::cluster_service::Backends;
use plexus_loadbalancer::service::Service;
use plexus_loadbalancer::{BACKENDS_PREFIX, SERVICES_PREFIX};
use plexus_model::cluster::ClusterInfo;
use plexus_model::keys::StateKind;
use plexus_model::objects::{NAMESPACES_PREFIX, NamespaceObject, PODS_PREFIX, PodObject};
use plexus_policy::Policy;
use tokio::sync::mpsc;

use super::CoreHandle;
use crate::core::Input;
use crate::endpoints::Endpoints;
use crate::labels::SharedObjects;

/// Most events folded in one step when they come in a burst.
const BATCH: usize = 512;

/// Follows this cluster's own nodes, ip -> identity entries and identities.
pub async fn follow_local(backend: Arc<dyn KvBackend>, cluster: ClusterInfo, core: CoreHandle) {
    let mut nodes = WatchStore::new(
        backend.clone(),
        StateKind::Nodes.state_prefix(&cluster.name),
        node_decoder(cluster.clone()),
    );
    let mut ips = WatchStore::new(
        backend.clone(),
        StateKind::Ip.state_prefix(&cluster.name),
        ipcache_decoder(cluster.clone()),
    );
    let mut ids = WatchStore::new(
        backend,
        StateKind::Identities.state_prefix(&cluster.name),
        identity_decoder(cluster.clone()),
    );
    loop {
        let input = tokio::select! {
            e = nodes.next() => match e {
                StoreEvent::Upsert { value, .. } => Some(Input::NodeUpsert(value)),
                StoreEvent::Delete { old, .. } => Some(Input::NodeDelete(old.name)),
                StoreEvent::Rejected { key, reason } => {
                    tracing::warn!(%key, %reason, "node refused");
                    None
                }
                StoreEvent::Synced => Some(Input::NodesSynced),
            },
            e = ips.next() => match e {
                StoreEvent::Upsert { key, value, .. } => Some(Input::IpUpsert { key, pair: value }),
                StoreEvent::Delete { key, .. } => Some(Input::IpDelete(key)),
                StoreEvent::Rejected { key, reason } => {
                    tracing::warn!(%key, %reason, "ipcache entry refused");
                    None
                }
                StoreEvent::Synced => None,
            },
            e = ids.next() => match e {
                StoreEvent::Upsert { value, .. } => Some(Input::IdentityUpsert {
                    id: value.id.0,
                    labels: value.labels,
                }),
                StoreEvent::Delete { old, .. } => Some(Input::IdentityDelete(old.id.0)),
                StoreEvent::Rejected { key, reason } => {
                    tracing::warn!(%key, %reason, "identity refused");
                    None
                }
                StoreEvent::Synced => None,
            },
        };
        if let Some(input) = input {
            core.step(input);
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str) -> plexus_kvstore::DecodeFn<T> {
    Box::new(move |key, raw| serde_json::from_slice(raw).map_err(|e| format!("{what} {key}: {e}")))
}

/// Follows the cluster's Service objects and computed backends.
pub async fn follow_services(backend: Arc<dyn KvBackend>, core: CoreHandle) {
    let mut services: WatchStore<Service> =
        WatchStore::new(backend.clone(), SERVICES_PREFIX, decode("service"));
    let mut backends: WatchStore<Backends> =
        WatchStore::new(backend, BACKENDS_PREFIX, decode("backends"));
    loop {
        let input = tokio::select! {
            e = services.next() => match e {
                StoreEvent::Upsert { key, value, .. } => Input::ServiceUpsert { key, service: Box::new(value) },
                StoreEvent::Delete { key, .. } => Input::ServiceDelete(key),
                StoreEvent::Rejected { key, reason } => {
                    tracing::warn!(%key, %reason, "service object refused");
                    Input::ServiceDelete(key)
                }
                StoreEvent::Synced => Input::ServicesSynced,
            },
            e = backends.next() => match e {
                StoreEvent::Upsert { key, value, .. } => Input::BackendsUpsert { key, backends: value },
                StoreEvent::Delete { key, .. } => Input::BackendsDelete(key),
                StoreEvent::Rejected { key, reason } => {
                    tracing::warn!(%key, %reason, "service backends refused");
                    Input::BackendsDelete(key)
                }
                StoreEvent::Synced => Input::BackendsSynced,
            },
        };
        core.step(input);
    }
}

fn policy_decoder() -> plexus_kvstore::DecodeFn<(Policy, serde_json::Value)> {
    Box::new(|key, raw| {
        let value: serde_json::Value =
            serde_json::from_slice(raw).map_err(|e| format!("policy {key}: {e}"))?;
        let policy =
            plexus_policy::parse_value(&value, 1, "default").map_err(|e| format!("{key}: {e}"))?;
        Ok((policy, value))
    })
}

/// Follows the cluster's policy objects.
pub async fn follow_policies(backend: Arc<dyn KvBackend>, core: CoreHandle) {
    let mut store = WatchStore::new(backend, plexus_policy::POLICIES_PREFIX, policy_decoder());
    loop {
        let input = match store.next().await {
            StoreEvent::Upsert {
                key,
                value: (policy, object),
                ..
            } => Input::PolicyUpsert {
                key,
                policy: Box::new(policy),
                object,
            },
            StoreEvent::Delete { key, .. } => Input::PolicyDelete(key),
            StoreEvent::Rejected { key, reason } => {
                tracing::warn!(%key, %reason, "policy object refused");
                Input::PolicyDelete(key)
            }
            StoreEvent::Synced => Input::PoliciesSynced,
        };
        core.step(input);
    }
}

/// Folds the remote clusters' events in, a burst at a time. After a remote synced or was
/// drained (bulk changes), asks `trimmer` to give freed memory back.
pub async fn follow_remotes(
    mut rx: mpsc::Receiver<MeshEvent>,
    core: CoreHandle,
    trimmer: super::memory::Trimmer,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut bulk = false;
        for event in &batch {
            match &event.event {
                plexus_clustermesh::remote_cluster::RemoteEvent::Synced => {
                    tracing::info!(cluster = %event.cluster, "remote cluster synced");
                    bulk = true;
                }
                plexus_clustermesh::remote_cluster::RemoteEvent::Drained => {
                    tracing::info!(cluster = %event.cluster, "remote cluster drained");
                    bulk = true;
                }
                _ => {}
            }
        }
        core.step_all(batch.drain(..).map(Input::Remote));
        if bulk {
            trimmer.request();
        }
    }
}

/// Tells the core which remotes are reachable and whether all have synced, whenever that
/// changes.
pub async fn follow_mesh_status(mesh: MeshHandle, core: CoreHandle) {
    let mut changes = mesh.changes();
    let mut last: Option<(BTreeSet<String>, bool)> = None;
    loop {
        let status = mesh.status();
        let reachable: BTreeSet<String> = status
            .remotes
            .iter()
            .filter(|(_, r)| r.protocol.connected)
            .map(|(c, _)| c.clone())
            .collect();
        let all_ready = status.remotes.values().all(|r| r.protocol.ready);
        let now = (reachable, all_ready);
        if last.as_ref() != Some(&now) {
            core.step(Input::MeshStatus {
                reachable: now.0.clone(),
                all_ready: now.1,
            });
            last = Some(now);
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// After `grace`, tells the core to program services even if some remote has not synced.
pub async fn service_grace(grace: Duration, core: CoreHandle) {
    tokio::time::sleep(grace).await;
    core.step(Input::ServiceGraceExpired);
}

/// One change of the objects' mirror.
enum ObjectEvent {
    Namespace(StoreEvent<NamespaceObject>),
    Pod(StoreEvent<PodObject>),
}

/// Folds one event into the mirror; whether the endpoints may need relabelling.
fn fold_object(objects: &SharedObjects, event: ObjectEvent) -> bool {
    let mut o = objects.lock();
    match event {
        ObjectEvent::Namespace(e) => match e {
            StoreEvent::Upsert { value, .. } => o.namespace_upsert(value),
            StoreEvent::Delete { key, .. } => o.namespace_delete(&key),
            StoreEvent::Rejected { key, reason } => {
                tracing::warn!(key = %format!("{NAMESPACES_PREFIX}{key}"), %reason, "namespace object refused; its namespace has no labels");
                o.namespace_delete(&key)
            }
            StoreEvent::Synced => {
                o.namespaces_synced();
                true
            }
        },
        ObjectEvent::Pod(e) => match e {
            StoreEvent::Upsert { value, .. } => o.pod_upsert(value),
            StoreEvent::Delete { old, .. } => {
                o.pod_delete(&old.metadata.namespace, &old.metadata.name)
            }
            StoreEvent::Rejected { key, reason } => {
                tracing::warn!(key = %format!("{PODS_PREFIX}{key}"), %reason, "pod object refused; its pod has the labels it was registered with");
                match key.split_once('/') {
                    Some((ns, name)) => o.pod_delete(ns, name),
                    None => false,
                }
            }
            StoreEvent::Synced => {
                o.pods_synced();
                true
            }
        },
    }
}

/// Follows the cluster's Namespace and Pod objects into `objects`; after each change (a burst
/// of changes at once) that may concern them, and when a failed relabel asks for it, the
/// endpoints are relabelled.
pub async fn follow_objects(
    backend: Arc<dyn KvBackend>,
    objects: SharedObjects,
    endpoints: Arc<Endpoints>,
) {
    use futures::FutureExt;
    let mut namespaces = WatchStore::new(
        backend.clone(),
        NAMESPACES_PREFIX,
        Box::new(|key: &str, raw: &[u8]| {
            NamespaceObject::from_kv(&format!("{NAMESPACES_PREFIX}{key}"), raw)
                .map_err(|e| e.to_string())
        }),
    );
    let mut pods = WatchStore::new(
        backend,
        PODS_PREFIX,
        Box::new(|key: &str, raw: &[u8]| {
            PodObject::from_kv(&format!("{PODS_PREFIX}{key}"), raw).map_err(|e| e.to_string())
        }),
    );
    loop {
        let first = tokio::select! {
            e = namespaces.next() => ObjectEvent::Namespace(e),
            e = pods.next() => ObjectEvent::Pod(e),
            () = endpoints.retry_wanted() => {
                endpoints.relabel().await;
                continue;
            }
        };
        let mut changed = fold_object(&objects, first);
        // What else is already there joins this change (one relabel, one grace period).
        for _ in 0..BATCH {
            let next = if let Some(e) = namespaces.next().now_or_never() {
                ObjectEvent::Namespace(e)
            } else if let Some(e) = pods.next().now_or_never() {
                ObjectEvent::Pod(e)
            } else {
                break;
            };
            changed |= fold_object(&objects, next);
        }
        objects.publish_synced();
        if changed {
            endpoints.relabel().await;
        }
    }
}
