//! Remote clusters' contributions: their cluster id, stale entries after a reconnect, drain.
//!
//! A remote's events arrive from the remote-cluster manager in order:
//! - `ClusterConfig` first, with the id the remote's accepted cluster config gives. Every
//!   entry of the remote (its nodes' and endpoints' ipcache entries) carries that id, never an
//!   id guessed from whichever of its nodes happens to be known. Should entries come before the
//!   id (they do not, by the protocol), they are stamped again when it comes.
//! - entries (nodes, ipcache entries, identities, global services), then `Synced`.
//! - After a reconnect the remote's watches list again and drain what vanished meanwhile: an
//!   entry listed again with the same value changes nothing (no datapath write, never a
//!   withdrawal), a changed one is replaced in place, and only the stale ones are deleted.
//! - `Drained` (the remote's configuration was removed): everything it contributed goes.

use std::collections::BTreeMap;

use plexus_clustermesh::remote_cluster::{MeshEvent, RemoteEvent};
use plexus_ipcache::Source;

use super::ipcache::IpcacheState;
use super::policy::PolicyState;
use super::services::ServiceState;

/// What the core knows of one remote cluster beside its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteState {
    /// Its id, from its cluster config.
    pub cluster_id: Option<u16>,
    /// Whether its initial state is complete.
    pub synced: bool,
}

/// Folds one remote event into the parts of the core it touches.
pub(super) fn fold(
    remotes: &mut BTreeMap<String, RemoteState>,
    ipcache: &mut IpcacheState,
    services: &mut ServiceState,
    policy: &mut PolicyState,
    event: MeshEvent,
) {
    let cluster = event.cluster;
    let source = Source::Remote(cluster.as_str().into());
    if matches!(event.event, RemoteEvent::Drained) {
        for name in ipcache.node_names(&cluster) {
            ipcache.node_delete(&cluster, &name);
        }
        ipcache.remove_source(&source);
        policy.remove_cluster(&cluster);
        services.remote_cluster_gone(&cluster);
        remotes.remove(&cluster);
        return;
    }
    let remote = remotes.entry(cluster.clone()).or_default();
    match event.event {
        RemoteEvent::ClusterConfig { cluster_id } => {
            // An id the datapath cannot carry was refused by validation already; 0 is never
            // a valid remote id, so it marks "unknown" in the datapath at worst.
            let id = u16::try_from(cluster_id).unwrap_or(0);
            if remote.cluster_id != Some(id) {
                remote.cluster_id = Some(id);
                ipcache.restamp(&source, id);
                for name in ipcache.node_names(&cluster) {
                    if let Some(node) = ipcache.nodes().get(&(cluster.clone(), name)).cloned() {
                        ipcache.node_upsert(&cluster, id, &node);
                    }
                }
            }
        }
        RemoteEvent::NodeUpsert(node) => {
            let id = remote.cluster_id.unwrap_or(0);
            ipcache.node_upsert(&cluster, id, &node);
        }
        RemoteEvent::NodeDelete(name) => ipcache.node_delete(&cluster, &name),
        RemoteEvent::IpUpsert(pair) => {
            let key = pair.key_suffix().unwrap_or_else(|_| pair.ip.to_string());
            let id = remote.cluster_id.unwrap_or(0);
            policy.ip_ports_upsert(&cluster, &key, pair.id, &pair.named_ports);
            ipcache.keyed_upsert(source, &key, &pair, id);
        }
        RemoteEvent::IpDelete(key) => {
            policy.ip_ports_delete(&cluster, &key);
            ipcache.keyed_delete(&source, &key);
        }
        RemoteEvent::IdentityUpsert(identity) => {
            policy.identity_upsert(identity.id.0, &cluster, identity.labels)
        }
        RemoteEvent::IdentityDelete(id) => policy.identity_delete(id),
        RemoteEvent::ServiceUpsert(svc) => services.remote_upsert(&cluster, svc),
        RemoteEvent::ServiceDelete(key) => services.remote_delete(&cluster, &key),
        RemoteEvent::Synced => remote.synced = true,
        RemoteEvent::Drained => {}
    }
}
