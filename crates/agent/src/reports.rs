//! What the API lists, read from the core: nodes, identities, services with their backends,
//! policies and an endpoint's resolved policy.

use std::collections::BTreeMap;

use plexus_loadbalancer::select::Selection;
use plexus_loadbalancer::service::Affinity;
use plexus_policy::{Direction, Peer};
use serde::{Deserialize, Serialize};

use crate::core::NodeCore;
use crate::core::ipcache::underlay;

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

/// One policy as `policy get` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    /// Kind.
    pub kind: String,
    /// Namespace (empty for clusterwide).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The object as applied.
    pub object: serde_json::Value,
}

/// One resolved entry, as `endpoint get` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EntryReport {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `allow` or `deny`.
    pub verdict: String,
    /// The peer: an identity number, `any`, or a CIDR.
    pub peer: String,
    /// The peer identity's labels, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_labels: Option<String>,
    /// `ANY`, `TCP`, `UDP`, `SCTP`.
    pub protocol: String,
    /// `80`, `8000-8080`, or `any`.
    pub ports: String,
}

/// An endpoint's resolved policy, as `endpoint get` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointPolicyReport {
    /// Ingress is default-deny.
    pub ingress_enforced: bool,
    /// Egress is default-deny.
    pub egress_enforced: bool,
    /// The entries.
    pub entries: Vec<EntryReport>,
}

/// Every node known, this cluster's first.
pub fn nodes(core: &NodeCore) -> Vec<NodeInfo> {
    let own = &core.config().cluster;
    let ipcache = core.ipcache();
    let mut out: Vec<NodeInfo> = ipcache
        .nodes()
        .iter()
        .map(|((cluster, name), n)| NodeInfo {
            cluster: cluster.clone(),
            name: name.clone(),
            ip: underlay(n).map(|ip| ip.to_string()),
            pod_cidr: n
                .ipv4_alloc_cidr
                .as_ref()
                .map(|c| format!("{}/{}", c.addr, c.prefix_len)),
            local: ipcache.is_self(cluster, name),
        })
        .collect();
    out.sort_by_key(|n| (n.cluster != *own, n.cluster.clone(), n.name.clone()));
    out
}

/// Every identity known.
pub fn identities(core: &NodeCore) -> Vec<IdentityInfo> {
    core.policy()
        .identities()
        .iter()
        .map(|(id, e)| IdentityInfo {
            id: *id,
            cluster: e.cluster.clone(),
            labels: e.labels.to_kvstore_string(),
        })
        .collect()
}

/// The labels (kvstore form) of identity `id`, when known.
pub fn identity_labels(core: &NodeCore, id: u32) -> Option<String> {
    core.policy()
        .identities()
        .get(&id)
        .map(|e| e.labels.to_kvstore_string())
}

/// Every local service with its selected backends.
pub fn services(core: &NodeCore) -> Vec<ServiceReport> {
    core.services()
        .selections()
        .into_iter()
        .map(|s| ServiceReport {
            namespace: s.service.metadata.namespace.clone(),
            name: s.service.metadata.name.clone(),
            cluster_ip: s.service.spec.cluster_ip.clone(),
            ports: s
                .service
                .spec
                .ports
                .iter()
                .map(|p| (p.name.clone(), format!("{}/{}", p.port, p.protocol)))
                .collect(),
            global: s.config.global,
            shared: s.config.shared,
            affinity: s.config.affinity,
            backends: s.selection,
            error: s.error,
        })
        .collect()
}

/// Every policy, in key order.
pub fn policies(core: &NodeCore) -> Vec<PolicyReport> {
    core.policy()
        .objects()
        .iter()
        .map(|(k, v)| PolicyReport {
            kind: k.kind.name().to_string(),
            namespace: k.namespace.clone(),
            name: k.name.clone(),
            object: v.clone(),
        })
        .collect()
}

/// The resolved policy of endpoint `id`.
pub fn endpoint_policy(core: &NodeCore, id: u16) -> EndpointPolicyReport {
    let Some(p) = core.policy().resolved(id) else {
        return EndpointPolicyReport::default();
    };
    EndpointPolicyReport {
        ingress_enforced: p.ingress_enforced,
        egress_enforced: p.egress_enforced,
        entries: p
            .entries
            .iter()
            .map(|e| {
                let (peer, peer_labels) = match e.peer {
                    Peer::Any => ("any".to_string(), None),
                    Peer::Identity(id) => (id.0.to_string(), identity_labels(core, id.0)),
                    Peer::Prefix(c) => (c.to_string(), None),
                };
                EntryReport {
                    direction: match e.direction {
                        Direction::Ingress => "ingress",
                        Direction::Egress => "egress",
                    }
                    .into(),
                    verdict: if e.deny { "deny" } else { "allow" }.into(),
                    peer,
                    peer_labels,
                    protocol: e
                        .proto
                        .map(|p| format!("{p:?}").to_uppercase())
                        .unwrap_or_else(|| "ANY".into()),
                    ports: match e.ports {
                        None => "any".into(),
                        Some((lo, hi)) if lo == hi => lo.to_string(),
                        Some((lo, hi)) => format!("{lo}-{hi}"),
                    },
                }
            })
            .collect(),
    }
}
