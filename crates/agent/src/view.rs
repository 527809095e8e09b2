//! What this node knows about the mesh, and how it reaches the datapath.
//!
//! [`NodeView`] folds three inputs into the ipcache ([`plexus_ipcache::IpCache`]) and, in native
//! routing mode, the kernel's routes: this node's endpoints, its own cluster's kvstore (nodes,
//! ip -> identity entries, identities) and the remote clusters' merged events. Every change to
//! the effective ipcache goes to the datapath at once. It also keeps what the CLI lists: nodes
//! and identities of every cluster, and the remote clusters' global services.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use plexus_clustermesh::remote_cluster::{MeshEvent, RemoteEvent};
use plexus_datapath::{Datapath, IpcacheValue, Prefix, RoutingMode};
use plexus_ipcache::{Change, IpCache, Source, from_node, from_pair};
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::node::{Node, NodeAddressType};
use plexus_model::service::ClusterService;
use serde::{Deserialize, Serialize};

/// A node as `node list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeInfo {
    /// Cluster.
    pub cluster: String,
    /// Name.
    pub name: String,
    /// Underlay address.
    pub ip: Option<String>,
    /// Pod CIDR.
    pub pod_cidr: Option<String>,
    /// Whether it is this node.
    pub local: bool,
}

/// An identity as `identity list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IdentityInfo {
    /// Number.
    pub id: u32,
    /// Cluster that allocated it.
    pub cluster: String,
    /// Labels, `source:key=value;...`.
    pub labels: String,
}

#[derive(Default)]
struct Inner {
    ipcache: IpCache,
    /// Prefix of each (source, key) for deletions by key.
    keys: BTreeMap<(Source, String), Prefix>,
    nodes: BTreeMap<(String, String), Node>,
    identities: BTreeMap<u32, IdentityInfo>,
    routes: BTreeMap<String, String>,
    /// Remote clusters' shared global services by (cluster, `<ns>/<name>`).
    remote_services: BTreeMap<(String, String), ClusterService>,
    /// Bumped on every change of `remote_services`.
    services_generation: u64,
    /// Bumped on every change of `identities`.
    identities_generation: u64,
    /// The prefixes policies name, with their node-local CIDR identities.
    policy_cidrs: BTreeMap<Prefix, u32>,
}

/// The node's view. Cheap to share.
pub struct NodeView {
    /// Whether a kernel datapath is driven (routes are installed only then).
    pub real_kernel: bool,
    routing: RoutingMode,
    cluster: String,
    cluster_id: u16,
    node_name: String,
    node_ip: Ipv4Addr,
    datapath: Arc<dyn Datapath>,
    inner: Mutex<Inner>,
}

fn underlay(node: &Node) -> Option<Ipv4Addr> {
    node.ip_addresses
        .iter()
        .find(|a| a.kind == NodeAddressType::InternalIp)
        .and_then(|a| match a.ip {
            std::net::IpAddr::V4(v) => Some(v),
            std::net::IpAddr::V6(_) => None,
        })
}

impl NodeView {
    /// A view for node `node_name` of `cluster`.
    pub fn new(
        real_kernel: bool,
        routing: RoutingMode,
        cluster: &str,
        cluster_id: u16,
        node_name: &str,
        node_ip: Ipv4Addr,
        datapath: Arc<dyn Datapath>,
    ) -> Self {
        Self {
            real_kernel,
            routing,
            cluster: cluster.to_string(),
            cluster_id,
            node_name: node_name.to_string(),
            node_ip,
            datapath,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            let result = match change {
                Change::Upsert(p, v) => self.datapath.upsert_ipcache(p, v),
                Change::Delete(p) => self.datapath.remove_ipcache(p),
            };
            if let Err(err) = result {
                tracing::warn!(error = %err, "ipcache update not applied to the datapath");
            }
        }
    }

    /// Sets the prefixes network policies name, each with its node-local CIDR identity: they
    /// enter the ipcache under every other source, so that traffic from and to addresses outside
    /// the mesh carries the identity of the most specific prefix a policy names.
    pub fn set_policy_cidrs(&self, cidrs: BTreeMap<Prefix, u32>) {
        let changes = {
            let mut inner = self.lock();
            let mut changes = Vec::new();
            let gone: Vec<Prefix> = inner
                .policy_cidrs
                .keys()
                .filter(|p| !cidrs.contains_key(p))
                .copied()
                .collect();
            for p in gone {
                changes.extend(inner.ipcache.delete(p, &Source::PolicyCidr));
            }
            for (p, id) in &cidrs {
                if inner.policy_cidrs.get(p) != Some(id) {
                    let value = IpcacheValue {
                        identity: *id,
                        tunnel_endpoint: None,
                        cluster_id: 0,
                    };
                    changes.extend(inner.ipcache.upsert(*p, Source::PolicyCidr, value));
                }
            }
            inner.policy_cidrs = cidrs;
            changes
        };
        self.apply(changes);
    }

    /// Sets (or, with `None`, removes) this node's own endpoint entry.
    pub fn ipcache_local(&self, prefix: Prefix, value: Option<IpcacheValue>) {
        let change = {
            let mut inner = self.lock();
            match value {
                Some(v) => inner.ipcache.upsert(prefix, Source::LocalEndpoint, v),
                None => inner.ipcache.delete(prefix, &Source::LocalEndpoint),
            }
        };
        self.apply(change);
    }

    fn ip_upsert(&self, source: Source, key: &str, pair: &IpIdentityPair, cluster_id: u16) {
        let Some((prefix, value)) = from_pair(pair, cluster_id) else {
            return;
        };
        let mut inner = self.lock();
        let old = inner.keys.insert((source.clone(), key.to_string()), prefix);
        let mut changes = Vec::new();
        if let Some(old) = old.filter(|o| *o != prefix) {
            changes.extend(inner.ipcache.delete(old, &source));
        }
        changes.extend(inner.ipcache.upsert(prefix, source, value));
        drop(inner);
        self.apply(changes);
    }

    fn ip_delete(&self, source: Source, key: &str) {
        let change = {
            let mut inner = self.lock();
            inner
                .keys
                .remove(&(source.clone(), key.to_string()))
                .and_then(|p| inner.ipcache.delete(p, &source))
        };
        self.apply(change);
    }

    /// An ip -> identity entry of this cluster (another node's endpoint).
    pub fn local_ip_upsert(&self, key: &str, pair: &IpIdentityPair) {
        if pair.host_ip == self.node_ip.to_string() {
            return; // our own endpoints are installed by the endpoint manager
        }
        self.ip_upsert(Source::Cluster, key, pair, self.cluster_id);
    }

    /// An ip -> identity entry of this cluster is gone.
    pub fn local_ip_delete(&self, key: &str) {
        self.ip_delete(Source::Cluster, key);
    }

    /// A node of `cluster` (this one or a remote) appeared or changed.
    pub fn node_upsert(&self, cluster: &str, node: &Node) {
        let is_self = cluster == self.cluster && node.name == self.node_name;
        let source = Source::Node(format!("{cluster}/{}", node.name));
        let cluster_id = u16::try_from(node.cluster_id).unwrap_or(0);
        let entries = from_node(node, cluster_id, is_self);
        let mut changes = Vec::new();
        let mut route = None;
        {
            let mut inner = self.lock();
            // Drop what the node's previous version contributed.
            let old: Vec<Prefix> = inner
                .ipcache
                .iter()
                .filter(|(_, s, _)| **s == source)
                .map(|(p, _, _)| p)
                .collect();
            for p in old {
                if !entries.iter().any(|(q, _)| *q == p) {
                    changes.extend(inner.ipcache.delete(p, &source));
                }
            }
            for (p, v) in entries {
                changes.extend(inner.ipcache.upsert(p, source.clone(), v));
            }
            inner
                .nodes
                .insert((cluster.to_string(), node.name.clone()), node.clone());
            if !is_self
                && self.routing == RoutingMode::Native
                && let (Some(cidr), Some(via)) = (&node.ipv4_alloc_cidr, underlay(node))
            {
                let dst = format!("{}/{}", cidr.addr, cidr.prefix_len);
                if inner.routes.get(&dst) != Some(&via.to_string()) {
                    inner.routes.insert(dst.clone(), via.to_string());
                    route = Some((dst, via.to_string()));
                }
            }
        }
        self.apply(changes);
        if let Some((dst, via)) = route
            && self.real_kernel
            && let Err(err) = crate::netcmd::route_via(&dst, &via)
        {
            tracing::warn!(error = %format!("{err:#}"), "cannot route to a node's pods");
        }
    }

    /// A node of `cluster` is gone.
    pub fn node_delete(&self, cluster: &str, name: &str) {
        let source = Source::Node(format!("{cluster}/{name}"));
        let (changes, route) = {
            let mut inner = self.lock();
            let changes = inner.ipcache.remove_source(&source);
            let node = inner.nodes.remove(&(cluster.to_string(), name.to_string()));
            let route = node
                .and_then(|n| n.ipv4_alloc_cidr)
                .map(|c| format!("{}/{}", c.addr, c.prefix_len))
                .filter(|dst| inner.routes.remove(dst).is_some());
            (changes, route)
        };
        self.apply(changes);
        if let Some(dst) = route
            && self.real_kernel
        {
            crate::netcmd::route_delete(&dst);
        }
    }

    /// An identity of `cluster`.
    pub fn identity_upsert(&self, cluster: &str, id: u32, labels: String) {
        let mut inner = self.lock();
        inner.identities.insert(
            id,
            IdentityInfo {
                id,
                cluster: cluster.to_string(),
                labels,
            },
        );
        inner.identities_generation += 1;
    }

    /// An identity is gone.
    pub fn identity_delete(&self, id: u32) {
        let mut inner = self.lock();
        inner.identities.remove(&id);
        inner.identities_generation += 1;
    }

    /// Folds one remote cluster's event in.
    pub fn remote_event(&self, event: &MeshEvent) {
        let cluster = event.cluster.as_str();
        let source = Source::Remote(cluster.to_string());
        match &event.event {
            RemoteEvent::NodeUpsert(n) => self.node_upsert(cluster, n),
            RemoteEvent::NodeDelete(name) => self.node_delete(cluster, name),
            RemoteEvent::IpUpsert(p) => {
                let key = p.key_suffix().unwrap_or_else(|_| p.ip.to_string());
                let cluster_id = self
                    .lock()
                    .nodes
                    .iter()
                    .find(|((c, _), _)| c == cluster)
                    .map(|(_, n)| u16::try_from(n.cluster_id).unwrap_or(0))
                    .unwrap_or(0);
                self.ip_upsert(source, &key, p, cluster_id);
            }
            RemoteEvent::IpDelete(key) => self.ip_delete(source, key),
            RemoteEvent::IdentityUpsert(i) => {
                self.identity_upsert(cluster, i.id.0, i.labels.to_kvstore_string())
            }
            RemoteEvent::IdentityDelete(id) => self.identity_delete(*id),
            RemoteEvent::ServiceUpsert(svc) => {
                let key = format!("{}/{}", svc.namespace, svc.name);
                let mut inner = self.lock();
                inner
                    .remote_services
                    .insert((cluster.to_string(), key), svc.clone());
                inner.services_generation += 1;
            }
            RemoteEvent::ServiceDelete(key) => {
                let mut inner = self.lock();
                inner
                    .remote_services
                    .remove(&(cluster.to_string(), key.clone()));
                inner.services_generation += 1;
            }
            RemoteEvent::ClusterConfig { .. } => {}
            RemoteEvent::Synced => tracing::info!(%cluster, "remote cluster synced"),
            RemoteEvent::Drained => {
                let names: Vec<String> = self
                    .lock()
                    .nodes
                    .keys()
                    .filter(|(c, _)| c == cluster)
                    .map(|(_, n)| n.clone())
                    .collect();
                for n in names {
                    self.node_delete(cluster, &n);
                }
                let changes = {
                    let mut inner = self.lock();
                    inner.keys.retain(|(s, _), _| *s != source);
                    inner.identities.retain(|_, i| i.cluster != cluster);
                    inner.identities_generation += 1;
                    inner.remote_services.retain(|(c, _), _| c != cluster);
                    inner.services_generation += 1;
                    inner.ipcache.remove_source(&source)
                };
                self.apply(changes);
                tracing::info!(%cluster, "remote cluster drained");
            }
        }
    }

    /// A number that changes whenever an identity comes, changes or goes.
    pub fn identities_generation(&self) -> u64 {
        self.lock().identities_generation
    }

    /// The labels (kvstore form) of every identity known, by id.
    pub fn identity_labels(&self) -> BTreeMap<u32, String> {
        self.lock()
            .identities
            .iter()
            .map(|(id, i)| (*id, i.labels.clone()))
            .collect()
    }

    /// A number that changes whenever a remote cluster's services change.
    pub fn services_generation(&self) -> u64 {
        self.lock().services_generation
    }

    /// Every node known, this cluster's first.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let inner = self.lock();
        let mut out: Vec<NodeInfo> = inner
            .nodes
            .iter()
            .map(|((cluster, name), n)| NodeInfo {
                cluster: cluster.clone(),
                name: name.clone(),
                ip: underlay(n).map(|ip| ip.to_string()),
                pod_cidr: n
                    .ipv4_alloc_cidr
                    .as_ref()
                    .map(|c| format!("{}/{}", c.addr, c.prefix_len)),
                local: *cluster == self.cluster && *name == self.node_name,
            })
            .collect();
        out.sort_by_key(|n| (n.cluster != self.cluster, n.cluster.clone(), n.name.clone()));
        out
    }

    /// The remote clusters' ClusterServices named `key` (`<ns>/<name>`).
    pub fn remote_services(&self, key: &str) -> Vec<ClusterService> {
        self.lock()
            .remote_services
            .iter()
            .filter(|((_, k), _)| k == key)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Every identity known.
    pub fn identities(&self) -> Vec<IdentityInfo> {
        self.lock().identities.values().cloned().collect()
    }
}
