//! The merged view: what every remote cluster contributes, in one place, tagged by cluster.
//!
//! [`MergedView::apply`] folds the [`MeshEvent`]s of a [`crate::mesh::ClusterMesh`] into maps
//! per remote (its cluster id, nodes by name, ipcache entries by key, identities by id, services by
//! `<namespace>/<name>`) and remembers which remotes have synced. The agent keeps one for its
//! listings (`node list`, `identity list`) and forwards the same events to its ipcache,
//! identity, service and policy layers. `Drained` removes the remote altogether.

use std::collections::{BTreeMap, BTreeSet};

use plexus_model::ipcache::IpIdentityPair;
use plexus_model::node::Node;
use plexus_model::service::ClusterService;

use crate::remote_cluster::{MeshEvent, RemoteEvent};
use crate::validate::RemoteIdentity;

/// One remote's contribution.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RemoteView {
    /// The remote's cluster id, from its cluster config (`None` until it was accepted).
    pub cluster_id: Option<u32>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// ipcache entries by key (`<ip>` or `<ip>/<len>`).
    pub ips: BTreeMap<String, IpIdentityPair>,
    /// Identities by number.
    pub identities: BTreeMap<u32, RemoteIdentity>,
    /// Shared global services by `<namespace>/<name>`.
    pub services: BTreeMap<String, ClusterService>,
    /// Whether the remote's initial state is complete.
    pub synced: bool,
}

/// Every remote's contribution.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergedView {
    remotes: BTreeMap<String, RemoteView>,
}

impl MergedView {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one event in.
    pub fn apply(&mut self, event: &MeshEvent) {
        if matches!(event.event, RemoteEvent::Drained) {
            self.remotes.remove(&event.cluster);
            return;
        }
        let r = self.remotes.entry(event.cluster.clone()).or_default();
        match &event.event {
            RemoteEvent::ClusterConfig { cluster_id } => r.cluster_id = Some(*cluster_id),
            RemoteEvent::NodeUpsert(n) => {
                r.nodes.insert(n.name.clone(), n.clone());
            }
            RemoteEvent::NodeDelete(name) => {
                r.nodes.remove(name);
            }
            RemoteEvent::IpUpsert(p) => {
                let key = p.key_suffix().unwrap_or_else(|_| p.ip.to_string());
                r.ips.insert(key, p.clone());
            }
            RemoteEvent::IpDelete(key) => {
                r.ips.remove(key);
            }
            RemoteEvent::IdentityUpsert(id) => {
                r.identities.insert(id.id.0, id.clone());
            }
            RemoteEvent::IdentityDelete(id) => {
                r.identities.remove(id);
            }
            RemoteEvent::ServiceUpsert(s) => {
                r.services
                    .insert(format!("{}/{}", s.namespace, s.name), s.clone());
            }
            RemoteEvent::ServiceDelete(key) => {
                r.services.remove(key);
            }
            RemoteEvent::Synced => r.synced = true,
            RemoteEvent::Drained => {}
        }
    }

    /// One remote's contribution.
    pub fn remote(&self, cluster: &str) -> Option<&RemoteView> {
        self.remotes.get(cluster)
    }

    /// Every remote, by name.
    pub fn remotes(&self) -> &BTreeMap<String, RemoteView> {
        &self.remotes
    }

    /// The remotes whose state is complete.
    pub fn synced(&self) -> BTreeSet<&str> {
        self.remotes
            .iter()
            .filter(|(_, r)| r.synced)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(cluster: &str, event: RemoteEvent) -> MeshEvent {
        MeshEvent {
            cluster: cluster.into(),
            event,
        }
    }

    #[test]
    fn events_fold_per_cluster_and_drain_removes_the_remote() {
        let mut view = MergedView::new();
        let pair: IpIdentityPair = serde_json::from_str(
            r#"{"IP":"10.2.0.5","Mask":null,"HostIP":"192.168.0.2","ID":131077,"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"x"}"#,
        )
        .unwrap();
        view.apply(&ev("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }));
        view.apply(&ev("c2", RemoteEvent::IpUpsert(pair.clone())));
        view.apply(&ev("c3", RemoteEvent::IpUpsert(pair)));
        view.apply(&ev("c2", RemoteEvent::Synced));
        assert_eq!(view.remote("c2").unwrap().ips.len(), 1);
        assert_eq!(view.remote("c2").unwrap().cluster_id, Some(2));
        assert_eq!(view.remote("c3").unwrap().cluster_id, None);
        assert_eq!(view.synced(), BTreeSet::from(["c2"]));
        view.apply(&ev("c2", RemoteEvent::IpDelete("10.2.0.5".into())));
        assert!(view.remote("c2").unwrap().ips.is_empty());
        assert_eq!(view.remote("c3").unwrap().ips.len(), 1, "c3 untouched");
        view.apply(&ev("c3", RemoteEvent::Drained));
        assert!(view.remote("c3").is_none());
    }
}
