//! What the agent's read endpoints answer: the listings of the CLI.
//!
//! The JSON field names are kebab-case and are the CLI's `-o json` output, so they are part of
//! the contract: renaming a field here changes what both sides compile against, never silently
//! what one side prints.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// `GET /v1/status`: the node at a glance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentStatus {
    /// The local cluster.
    pub cluster: String,
    /// Its id.
    pub cluster_id: u32,
    /// This node.
    pub node: String,
    /// Its underlay address.
    pub node_ip: String,
    /// The pod CIDR this node allocates from.
    pub pod_cidr: String,
    /// `tunnel` or `native`.
    pub routing: String,
    /// `ebpf` or `fake`.
    pub datapath: String,
    /// How many local endpoints.
    pub endpoints: usize,
    /// Remote clusters: `[configured, ready]` (a pair, as `-o json` has always shown it).
    pub remote_clusters: (usize, usize),
    /// Transparent encryption (absent from agents that predate it: disabled).
    #[serde(default)]
    pub encryption: crate::EncryptionSummary,
    /// What needs the operator's attention, one line each (e.g. a full datapath map, named);
    /// absent when nothing does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The node's DNS proxy (`None`: the node has none, or its agent predates it).
    #[serde(default)]
    pub dns_proxy: Option<crate::DnsProxyStatus>,
}

/// One node of `GET /v1/nodes`, of any cluster this node knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeInfo {
    /// Its cluster.
    pub cluster: String,
    /// Its name.
    pub name: String,
    /// Its underlay address, when published.
    pub ip: Option<String>,
    /// Its pod CIDR, when published.
    pub pod_cidr: Option<String>,
    /// Whether it is the node answering.
    pub local: bool,
}

/// One identity of `GET /v1/identities`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IdentityInfo {
    /// The numeric identity.
    pub id: u32,
    /// The cluster that allocated it.
    pub cluster: String,
    /// Its labels, `source:key=value;...`.
    pub labels: String,
}

/// A named container port of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// One local endpoint (pod) of `GET /v1/endpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointInfo {
    /// The container id (CNI_CONTAINERID).
    pub container_id: String,
    /// The endpoint id on this node.
    pub id: u16,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The host-side veth.
    pub host_ifname: String,
    /// The host-side veth's MAC.
    pub host_mac: String,
    /// The pod interface's MAC.
    pub pod_mac: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's labels: its Pod object's (`plexus/objects/v1/pods/<ns>/<pod>`) when one is
    /// stored, else those its registration carried.
    pub labels: BTreeMap<String, String>,
    /// The labels of the pod's namespace in its identity (from the Namespace object; empty
    /// when none is stored). Absent in the state of an agent older than namespace labels: its
    /// identity was the pod's labels and namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_labels: Option<BTreeMap<String, String>>,
    /// The labels the registration carried (CNI arguments, podman), when the Pod object's
    /// replaced them in `labels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_labels: Option<BTreeMap<String, String>>,
    /// Its security identity.
    pub identity: u32,
    /// Its named container ports.
    #[serde(default)]
    pub ports: BTreeMap<String, ContainerPort>,
}

/// `GET /v1/endpoints/<id | pod | namespace/pod>`: one endpoint with its resolved policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointDetail {
    /// The endpoint.
    pub endpoint: EndpointInfo,
    /// Its identity's labels, when known.
    pub identity_labels: Option<String>,
    /// Its resolved policy.
    pub policy: EndpointPolicy,
}

/// An endpoint's resolved policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointPolicy {
    /// Ingress is default-deny (some policy selects the endpoint for ingress).
    pub ingress_enforced: bool,
    /// Egress is default-deny.
    pub egress_enforced: bool,
    /// The resolved entries.
    pub entries: Vec<PolicyEntry>,
}

/// The direction of a policy entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Traffic to the endpoint.
    Ingress,
    /// Traffic from the endpoint.
    Egress,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// What a policy entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Lets the traffic through.
    Allow,
    /// Drops it (wins over any allow).
    Deny,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// One resolved policy entry of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyEntry {
    /// Ingress or egress.
    pub direction: Direction,
    /// Allow or deny.
    pub verdict: Verdict,
    /// The peer: an identity number, `any`, or a CIDR.
    pub peer: String,
    /// The peer identity's labels, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_labels: Option<String>,
    /// `ANY`, `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// `80`, `8000-8080`, or `any`.
    pub ports: String,
}

/// One policy object of `GET /v1/policy`, as the node holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyInfo {
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy` or `NetworkPolicy`.
    pub kind: String,
    /// Its namespace (empty for clusterwide policies).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The object as applied.
    pub object: PolicyObject,
}

/// A policy object as the user wrote it. Only what the CLI shows is typed; the rules stay the
/// user's document (their typed form is `plexus_policy`'s), and every other field is kept as is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyObject {
    /// The rules of a policy with one spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
    /// The rules of a Cilium policy with several specs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<serde_json::Value>>,
    /// Everything else (apiVersion, kind, metadata, ...).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Which backends of a global service take new connections first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// No preference.
    #[default]
    None,
    /// This cluster's backends while any is healthy.
    Local,
    /// Other clusters' backends while any is healthy.
    Remote,
}

/// One service of `GET /v1/services`, with its backends as this node selects them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServiceInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its address (the frontend), once allocated.
    pub cluster_ip: Option<String>,
    /// Its ports, `port/PROTO` by port name.
    pub ports: BTreeMap<String, String>,
    /// Load-balanced over every cluster's backends.
    pub global: bool,
    /// Its backends are offered to the other clusters.
    pub shared: bool,
    /// Its affinity.
    pub affinity: Affinity,
    /// Its backends.
    pub backends: ServiceBackends,
    /// A bad annotation, if any (the service is then balanced as a local one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The backends of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBackends {
    /// Every candidate, local first, then by cluster and address.
    pub candidates: Vec<Backend>,
}

/// Why a backend does or does not take new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    /// Takes new connections.
    Active,
    /// A fallback: the affinity prefers the other side, which has backends.
    Standby,
    /// Its cluster is unreachable and reachable backends exist.
    Unreachable,
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Standby => "standby",
            Self::Unreachable => "unreachable",
        })
    }
}

/// A port of a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BackendPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Port number.
    pub port: u16,
}

/// One candidate backend of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Backend {
    /// The cluster it runs in.
    pub cluster: String,
    /// Its address.
    pub ip: String,
    /// Its ports by port name.
    pub ports: BTreeMap<String, BackendPort>,
    /// Whether it is this cluster's.
    pub local: bool,
    /// Its state.
    pub state: BackendState,
}

/// One entry of `GET /v1/bpf/ipcache`: the datapath's ipcache map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IpcacheRow {
    /// The prefix, `a.b.c.d/len`.
    pub prefix: String,
    /// Its security identity.
    pub identity: u32,
    /// The node to tunnel to, if any.
    pub tunnel_endpoint: Option<String>,
    /// The cluster id of the entry.
    pub cluster_id: u16,
}

/// One frontend of `GET /v1/bpf/lb`: the datapath's load-balancing maps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LbRow {
    /// `address:port/PROTO`.
    pub frontend: String,
    /// Backends taking new connections, in slot order.
    pub active: Vec<String>,
    /// Backends keeping their established connections only.
    pub inactive: Vec<String>,
}

/// One node a flow relay reads: an answer of the apiserver's `GET /v1/relay/nodes` (for
/// `plexus observe` and the web view). The relay's own cluster's nodes come with the result of
/// a health probe of their agent; a connected cluster's nodes as its relay reported them, or one
/// entry named after the cluster when its relay could not be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RelayNode {
    /// `cluster/node`, or the cluster alone for a connected cluster whose relay did not answer.
    pub name: String,
    /// The node's cluster.
    pub cluster: String,
    /// Where the relay asks for its flows, `host:port` (the agent's API, or the connected
    /// cluster's relay); empty when the node publishes no address.
    pub address: String,
    /// The agent (or relay) answered.
    pub reachable: bool,
    /// Why it is not reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_object_keeps_every_field() {
        let doc = serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"endpointSelector": {}},
        });
        let object: PolicyObject = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(
            object.spec,
            Some(serde_json::json!({"endpointSelector": {}}))
        );
        assert_eq!(object.specs, None);
        assert_eq!(serde_json::to_value(&object).unwrap(), doc);
    }

    #[test]
    fn json_names_are_the_cli_contract() {
        let status = AgentStatus {
            cluster: "c1".into(),
            cluster_id: 1,
            node: "n1".into(),
            node_ip: "10.0.0.1".into(),
            pod_cidr: "10.1.0.0/24".into(),
            routing: "tunnel".into(),
            datapath: "ebpf".into(),
            endpoints: 2,
            remote_clusters: (2, 1),
            encryption: crate::EncryptionSummary {
                mode: crate::EncryptionMode::Wireguard,
                peers: 3,
                device_reachable: true,
            },
            warnings: Vec::new(),
            dns_proxy: Some(crate::DnsProxyStatus {
                port: Some(10053),
                redirected_endpoints: Some(1),
                learned_names: 2,
                learned_addresses: 1,
                stats: crate::DnsProxyStats {
                    queries: 4,
                    refused: 1,
                    ..Default::default()
                },
            }),
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cluster": "c1", "cluster-id": 1, "node": "n1", "node-ip": "10.0.0.1",
                "pod-cidr": "10.1.0.0/24", "routing": "tunnel", "datapath": "ebpf",
                "endpoints": 2, "remote-clusters": [2, 1],
                "encryption": {"mode": "wireguard", "peers": 3, "device-reachable": true},
                "dns-proxy": {
                    "port": 10053, "redirected-endpoints": 1, "learned-names": 2,
                    "learned-addresses": 1,
                    "stats": {
                        "queries": 4, "forwarded": 0, "refused": 1, "malformed": 0,
                        "no-endpoint": 0, "overloaded": 0, "delivered": 0, "held": 0,
                        "hold-expired": 0, "responses-dropped": 0, "forward-errors": 0,
                        "forward-timeouts": 0, "send-errors": 0, "tcp-connections": 0
                    }
                },
            })
        );
        // An agent without a DNS proxy (or one that predates it): no section.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("dns-proxy");
        let back: AgentStatus = serde_json::from_value(old).unwrap();
        assert_eq!(back.dns_proxy, None);
        // Warnings, when there are any, are a list of lines; none, the key is absent.
        assert!(back.warnings.is_empty());
        let warned = AgentStatus {
            warnings: vec!["map PLEXUS_IPCACHE is full".into()],
            ..back
        };
        assert_eq!(
            serde_json::to_value(&warned).unwrap()["warnings"],
            serde_json::json!(["map PLEXUS_IPCACHE is full"])
        );
        let backend = Backend {
            cluster: "c2".into(),
            ip: "10.2.0.5".into(),
            ports: [(
                "http".to_string(),
                BackendPort {
                    protocol: "TCP".into(),
                    port: 80,
                },
            )]
            .into(),
            local: false,
            state: BackendState::Standby,
        };
        assert_eq!(
            serde_json::to_value(&backend).unwrap(),
            serde_json::json!({
                "cluster": "c2", "ip": "10.2.0.5", "local": false, "state": "standby",
                "ports": {"http": {"protocol": "TCP", "port": 80}},
            })
        );
    }
}
