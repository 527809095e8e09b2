//! `GET /v1/policy/trace`: why a packet between a local endpoint and a peer passes or is
//! dropped at that endpoint (`plexus policy trace` asks the agents of both ends).
//!
//! The agent answers from the endpoint's resolved policy as it programs it into the
//! datapath: the verdict is the datapath's lookup, the rules are the entries that decide it
//! with the policy, section and index they were written in. Read-only, so also served to
//! read-only TCP clients.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::types::{Direction, PolicyEntry, Verdict};

/// The query of `GET /v1/policy/trace` (URL query parameters, snake_case:
/// `?endpoint=x/a&direction=egress&peer_ip=10.2.0.7&proto=tcp&dport=80`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceQuery {
    /// The local endpoint: its id, pod name or `namespace/pod`.
    pub endpoint: String,
    /// `ingress` (the peer sends to the endpoint) or `egress` (the endpoint sends).
    pub direction: Direction,
    /// The peer's identity: at ingress the sender's, which a tunnel's VNI carries (ignored for
    /// a peer that is a local endpoint and with native routing, where the datapath looks the
    /// address up); at egress an override of the datapath's lookup. Without it the agent looks
    /// `peer_ip` up as the datapath does: a local endpoint, else its ipcache (longest prefix),
    /// else `world` (2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<u32>,
    /// The peer's address (for CIDR rules and the ipcache lookup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<Ipv4Addr>,
    /// `tcp` (default), `udp` or `sctp`, any case.
    #[serde(default = "tcp")]
    pub proto: String,
    /// The destination port.
    pub dport: u16,
}

fn tcp() -> String {
    "tcp".to_string()
}

impl TraceQuery {
    /// The query string (without `?`), values percent-encoded.
    pub fn to_query_string(&self) -> String {
        let mut out = format!(
            "endpoint={}&direction={}",
            crate::client::segment(&self.endpoint),
            self.direction
        );
        if let Some(id) = self.peer_identity {
            out.push_str(&format!("&peer_identity={id}"));
        }
        if let Some(ip) = self.peer_ip {
            out.push_str(&format!("&peer_ip={ip}"));
        }
        out.push_str(&format!(
            "&proto={}&dport={}",
            crate::client::segment(&self.proto),
            self.dport
        ));
        out
    }
}

/// Where the peer identity of a trace comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerIdentitySource {
    /// Given in the query.
    Request,
    /// A local endpoint of this node has the address (the datapath's endpoint map).
    LocalEndpoint,
    /// This node's ipcache entry for the peer's address.
    Ipcache,
    /// No ipcache entry for the address: `world`.
    World,
}

/// What decided a traced verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceDecision {
    /// No policy selects the endpoint: everything passes.
    NoPolicy,
    /// Policies select the endpoint but none enforces the direction: everything passes.
    NotEnforced,
    /// The direction is enforced and allow rules pass the packet.
    Allowed,
    /// Deny rules drop it.
    DenyRule,
    /// The direction is enforced and no rule allows it.
    DefaultDeny,
}

/// A policy object, by kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyRef {
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy` or `NetworkPolicy`.
    pub kind: String,
    /// Its namespace (empty for clusterwide policies).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for PolicyRef {
    /// `CiliumNetworkPolicy x/allow-out`, `CiliumClusterwideNetworkPolicy all-out`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One rule that decides a traced verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TraceRule {
    /// Its policy.
    pub policy: PolicyRef,
    /// The rule in the object: `spec`, or `specs[i]`.
    pub rule: String,
    /// `ingress`, `ingressDeny`, `egress` or `egressDeny`.
    pub section: String,
    /// The element's index in the section.
    pub index: usize,
    /// `egress[0]`, or `specs[1].ingressDeny[2]` for a rule of `specs`.
    pub location: String,
    /// The resolved entry that covers the packet.
    pub entry: PolicyEntry,
    /// The kind of match the datapath reports for it: `L3-Only`, `L3-L4`, `L4-Only`, `all`,
    /// `L3-Proto`, `Proto-Only`.
    pub match_kind: String,
}

/// The local endpoint of a trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TraceEndpoint {
    /// Its id on the node.
    pub id: u16,
    /// Its namespace.
    pub namespace: String,
    /// Its pod.
    pub pod: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its identity.
    pub identity: u32,
}

/// The answer of `GET /v1/policy/trace`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyTrace {
    /// The node answering.
    pub node: String,
    /// Its cluster.
    pub cluster: String,
    /// The endpoint.
    pub endpoint: TraceEndpoint,
    /// The direction, seen from the endpoint.
    pub direction: Direction,
    /// The peer identity the verdict is for.
    pub peer_identity: u32,
    /// Where it comes from.
    pub peer_identity_source: PeerIdentitySource,
    /// Its labels, when this node knows the identity (an identity it does not know is
    /// selected by no selector here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_labels: Option<String>,
    /// The peer's address, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<Ipv4Addr>,
    /// This node's ipcache identity for the peer's address (what the datapath looks up at
    /// egress), when it has an entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipcache_identity: Option<u32>,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The destination port.
    pub dport: u16,
    /// The datapath's verdict.
    pub verdict: Verdict,
    /// Whether the direction is enforced (default deny).
    pub enforced: bool,
    /// What decided.
    pub decision: TraceDecision,
    /// The kind of match an allowed packet reports (Cilium's policy-verdict match types).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_kind: Option<String>,
    /// The deciding rules: the deny rules that drop the packet, or the allow rules that pass
    /// it (the one whose match the datapath reports first); empty otherwise.
    pub rules: Vec<TraceRule>,
    /// The policies that enforce the direction on the endpoint (for default deny: why).
    pub enforcing: Vec<PolicyRef>,
    /// Every policy that selects the endpoint.
    pub selecting: Vec<PolicyRef>,
}
