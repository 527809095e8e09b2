//! [`Snapshot`]: the real [`FlowLookup`], an immutable copy of what the core knows, swapped
//! in after each reconciler round ([`SnapshotCell`]), so decoding never takes the core's lock.
//!
//! The [`SnapshotBuilder`] lives in the reconciler and runs under the core's lock right after
//! `take_output`: it copies only the parts the round may have changed (the ipcache when it
//! changed, identities when their revision moved, services and policies when the core output
//! them, endpoints when they differ), each an `Arc` shared with the previous snapshot. Nothing
//! is computed again: the copies are of what the core already holds, so a round costs at most
//! a copy of the parts it changed.
//!
//! Where each answer comes from:
//! - local endpoints: the core's endpoints (id, address, identity, pod);
//! - addresses: the core's effective ipcache (longest prefix match), the cluster by the entry's
//!   cluster id (this cluster's or a remote's), the pod the entry's kvstore record names;
//! - identities: the core's identities (labels and the cluster that allocated them), reserved
//!   identities as `reserved:<name>`, else the cluster from the identity's cluster-id bits;
//! - services: the frontends the core last computed (frontend -> service name); a backend's
//!   cluster is its address's (ipcache);
//! - policies: the resolved policy's sources per endpoint ([`plexus_policy::PolicySources`]):
//!   deny entries covering the packet name the deny rule's policies; otherwise, when the
//!   direction is enforced, default deny with the policies that enforce it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, PoisonError, RwLock};

use plexus_datapath::{IpcacheValue, Prefix};
use plexus_flow::{Policy, PolicyDeny, Service, TrafficDirection};
use plexus_ipcache::Change;
use plexus_model::cluster::MaxConnectedClusters;
use plexus_model::identity::{NumericIdentity, ReservedIdentity};
use plexus_policy::{Direction, PolicyKey, PolicySources, Proto};

use super::decode::{
    Denial, EndpointMeta, FlowLookup, IdentityMeta, IpMeta, PolicyQuery, label_string,
};
use crate::core::{LocalEndpoint, NodeCore, Output};

#[derive(Debug, Default)]
struct IpTable {
    entries: HashMap<Prefix, IpcacheValue>,
    /// The prefix lengths present, longest first (a lookup tries only those).
    lengths: Vec<u8>,
    /// Namespace and name, shared with the core (a copy is a count, not the text).
    pods: HashMap<Ipv4Addr, (Arc<str>, Arc<str>)>,
}

#[derive(Debug, Default)]
struct Endpoints {
    by_id: BTreeMap<u16, LocalEndpoint>,
    by_ip: HashMap<Ipv4Addr, u16>,
}

#[derive(Debug, Default)]
struct Services {
    frontends: HashMap<(SocketAddrV4, u8), Service>,
}

#[derive(Debug, Default)]
struct Policies {
    sources: BTreeMap<u16, Arc<PolicySources>>,
    revision: u64,
}

/// What the agent knew after a reconciler round. See the module documentation.
#[derive(Debug, Default)]
pub struct Snapshot {
    cluster: String,
    max: MaxConnectedClusters,
    cluster_names: Arc<HashMap<u16, String>>,
    endpoints: Arc<Endpoints>,
    ips: Arc<IpTable>,
    identities: Arc<HashMap<u32, IdentityMeta>>,
    services: Arc<Services>,
    policies: Arc<Policies>,
}

/// Holds the latest [`Snapshot`]; readers take an `Arc` of it, the builder swaps in the next.
#[derive(Debug, Default)]
pub struct SnapshotCell(RwLock<Arc<Snapshot>>);

impl SnapshotCell {
    /// The latest snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        // The lock only guards a pointer swap: a panic cannot leave it half-written.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the snapshot.
    pub fn store(&self, snapshot: Arc<Snapshot>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }
}

/// Builds snapshots from the core after each round (see the module documentation).
#[derive(Debug)]
pub struct SnapshotBuilder {
    cell: Arc<SnapshotCell>,
    current: Snapshot,
    identity_revision: Option<u64>,
    first: bool,
}

fn cluster_names(core: &NodeCore) -> HashMap<u16, String> {
    let mut out: HashMap<u16, String> = core
        .remotes()
        .iter()
        .filter_map(|(name, r)| r.cluster_id.map(|id| (id, name.clone())))
        .collect();
    out.insert(core.config().cluster_id, core.config().cluster.clone());
    out
}

fn policy_of(key: &PolicyKey, revision: u64) -> Policy {
    let mut labels = vec![
        format!("k8s:io.cilium.k8s.policy.derived-from={}", key.kind.name()),
        format!("k8s:io.cilium.k8s.policy.name={}", key.name),
    ];
    if !key.namespace.is_empty() {
        labels.push(format!(
            "k8s:io.cilium.k8s.policy.namespace={}",
            key.namespace
        ));
    }
    Policy {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        labels,
        revision,
        kind: key.kind.name().to_string(),
    }
}

impl SnapshotBuilder {
    /// A builder that stores into `cell`, for a cluster with `max` connected clusters (how
    /// identities carry their cluster id).
    pub fn new(cell: Arc<SnapshotCell>, max: MaxConnectedClusters) -> Self {
        Self {
            cell,
            current: Snapshot {
                max,
                ..Snapshot::default()
            },
            identity_revision: None,
            first: true,
        }
    }

    /// Copies what `output` (the round's, already taken from `core`) may have changed, and
    /// swaps the new snapshot in when anything did. Call under the core's lock.
    pub fn update(&mut self, core: &NodeCore, output: &Output) {
        let first = std::mem::take(&mut self.first);
        let s = &mut self.current;
        let mut changed = first;
        if first {
            s.cluster = core.config().cluster.clone();
        }
        if first || !output.ipcache.is_empty() {
            // The effective ipcache: the previous snapshot's moved by the round's changes (the
            // whole view is read from the core only once). Readers may still hold the previous
            // one, so this is a copy; it is the only one kept.
            let mut entries: HashMap<Prefix, IpcacheValue> = if first {
                core.desired_ipcache().into_iter().collect()
            } else {
                let mut entries = s.ips.entries.clone();
                for change in &output.ipcache {
                    match change {
                        Change::Upsert(p, v) => {
                            entries.insert(*p, *v);
                        }
                        Change::Delete(p) => {
                            entries.remove(p);
                        }
                    }
                }
                entries
            };
            entries.shrink_to_fit();
            let lengths: BTreeSet<u8> = entries.keys().map(|p| p.len).collect();
            let pods = core
                .ipcache()
                .shared_pods()
                .filter(|(p, _, _)| p.len == 32)
                .map(|(p, ns, pod)| (p.addr, (ns.clone(), pod.clone())))
                .collect();
            s.ips = Arc::new(IpTable {
                entries,
                lengths: lengths.into_iter().rev().collect(),
                pods,
            });
            s.cluster_names = Arc::new(cluster_names(core));
            changed = true;
        }
        if &s.endpoints.by_id != core.endpoints() {
            let by_id = core.endpoints().clone();
            let by_ip = by_id.values().map(|e| (e.ip, e.id)).collect();
            s.endpoints = Arc::new(Endpoints { by_id, by_ip });
            changed = true;
        }
        let revision = core.policy().identity_revision();
        if self.identity_revision != Some(revision) {
            self.identity_revision = Some(revision);
            s.identities = Arc::new(
                core.policy()
                    .identities()
                    .iter()
                    .map(|(id, e)| {
                        let mut labels: Vec<String> = e.labels.iter().map(label_string).collect();
                        labels.sort();
                        (
                            *id,
                            IdentityMeta {
                                labels,
                                cluster: e.cluster.clone(),
                            },
                        )
                    })
                    .collect(),
            );
            changed = true;
        }
        if first || output.services.is_some() {
            // The frontends as the core last computed them: nothing is selected again here.
            let frontends = core
                .services()
                .frontends_by_service()
                .map(|(key, lb)| {
                    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
                    let f = lb.frontend;
                    (
                        (SocketAddrV4::new(f.addr, f.port), f.proto.number()),
                        Service {
                            name: name.to_string(),
                            namespace: namespace.to_string(),
                        },
                    )
                })
                .collect();
            s.services = Arc::new(Services { frontends });
            changed = true;
        }
        if first || output.policies.is_some() {
            s.policies = Arc::new(Policies {
                sources: core.policy().sources().clone(),
                revision: core.policy().revision(),
            });
            changed = true;
        }
        if changed {
            self.cell.store(Arc::new(Snapshot {
                cluster: s.cluster.clone(),
                max: s.max,
                cluster_names: s.cluster_names.clone(),
                endpoints: s.endpoints.clone(),
                ips: s.ips.clone(),
                identities: s.identities.clone(),
                services: s.services.clone(),
                policies: s.policies.clone(),
            }));
        }
    }
}

impl Snapshot {
    fn entry(&self, ip: Ipv4Addr) -> Option<IpcacheValue> {
        self.ips.lengths.iter().find_map(|len| {
            let p = Prefix::new(ip, *len).ok()?;
            self.ips.entries.get(&p).copied()
        })
    }

    fn policy_direction(d: TrafficDirection) -> Option<Direction> {
        match d {
            TrafficDirection::Ingress => Some(Direction::Ingress),
            TrafficDirection::Egress => Some(Direction::Egress),
            TrafficDirection::Unknown => None,
        }
    }

    fn covering(&self, q: &PolicyQuery, deny: bool) -> Option<(Vec<Policy>, &PolicySources)> {
        let sources = self.policies.sources.get(&q.endpoint)?;
        let direction = Self::policy_direction(q.direction)?;
        let proto = match q.protocol {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        };
        let found = sources
            .covering(
                deny,
                direction,
                NumericIdentity(q.peer_identity),
                Some(IpAddr::V4(q.peer_ip)),
                proto,
                q.port,
            )
            .into_iter()
            .map(|k| policy_of(k, self.policies.revision))
            .collect();
        Some((found, sources))
    }
}

impl FlowLookup for Snapshot {
    fn endpoint(&self, id: u16) -> Option<EndpointMeta> {
        self.endpoints.by_id.get(&id).map(|e| EndpointMeta {
            ip: Some(e.ip),
            identity: e.identity,
            namespace: e.namespace.clone(),
            pod_name: e.pod_name.clone(),
        })
    }

    fn ip(&self, ip: Ipv4Addr) -> Option<IpMeta> {
        let local = self
            .endpoints
            .by_ip
            .get(&ip)
            .and_then(|id| self.endpoints.by_id.get(id));
        let entry = self.entry(ip);
        if local.is_none() && entry.is_none() {
            return None;
        }
        let (namespace, pod_name) = match local {
            Some(e) => (e.namespace.clone(), e.pod_name.clone()),
            None => self
                .ips
                .pods
                .get(&ip)
                .map(|(ns, pod)| (ns.to_string(), pod.to_string()))
                .unwrap_or_default(),
        };
        Some(IpMeta {
            identity: entry.map_or_else(|| local.map_or(0, |e| e.identity), |v| v.identity),
            cluster: match entry {
                Some(v) => self
                    .cluster_names
                    .get(&v.cluster_id)
                    .cloned()
                    .unwrap_or_default(),
                // A local endpoint whose entry is not in the ipcache yet.
                None => self.cluster.clone(),
            },
            namespace,
            pod_name,
        })
    }

    fn identity(&self, id: u32) -> Option<IdentityMeta> {
        if let Some(meta) = self.identities.get(&id) {
            return Some(meta.clone());
        }
        if let Some(r) = ReservedIdentity::from_id(id) {
            return Some(IdentityMeta {
                labels: vec![format!("reserved:{}", r.name())],
                cluster: String::new(),
            });
        }
        let nid = NumericIdentity(id);
        // A node-local identity is a CIDR a policy names: an address outside the mesh, which
        // Cilium labels `reserved:world` (besides its `cidr:` labels, which Plexus does not
        // keep).
        if nid.is_local() {
            return Some(IdentityMeta {
                labels: vec!["reserved:world".into()],
                cluster: String::new(),
            });
        }
        let cluster = u16::try_from(nid.cluster_id(self.max))
            .ok()
            .and_then(|c| self.cluster_names.get(&c).cloned())?;
        Some(IdentityMeta {
            labels: Vec::new(),
            cluster,
        })
    }

    fn service(&self, frontend: SocketAddrV4, protocol: u8) -> Option<Service> {
        self.services.frontends.get(&(frontend, protocol)).cloned()
    }

    fn backend_cluster(&self, backend: Ipv4Addr) -> Option<String> {
        // A backend is a pod: its ipcache entry carries its cluster's id.
        self.ip(backend)
            .map(|m| m.cluster)
            .filter(|c| !c.is_empty())
    }

    fn denied_by(&self, query: &PolicyQuery) -> Option<Denial> {
        let (deny_rules, sources) = self.covering(query, true)?;
        if !deny_rules.is_empty() {
            return Some(Denial {
                kind: PolicyDeny::DenyRule,
                policies: deny_rules,
            });
        }
        let direction = Self::policy_direction(query.direction)?;
        let enforcing = sources.enforcing(direction);
        if enforcing.is_empty() {
            return None;
        }
        // Default deny only when nothing allowed it (otherwise the policy changed meanwhile).
        let (allowed, _) = self.covering(query, false)?;
        allowed.is_empty().then(|| Denial {
            kind: PolicyDeny::DefaultDeny,
            policies: enforcing
                .into_iter()
                .map(|k| policy_of(k, self.policies.revision))
                .collect(),
        })
    }

    fn allowed_by(&self, query: &PolicyQuery) -> Vec<Policy> {
        self.covering(query, false)
            .map(|(p, _)| p)
            .unwrap_or_default()
    }
}
