//! The user-facing policy objects exactly as written, for serde.
//!
//! These types mirror `cilium.io/v2` CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy and
//! `networking.k8s.io/v1` NetworkPolicy, limited to the supported fields. Every struct denies
//! unknown fields, so a typo or an unsupported feature (`icmps`, `toServices`, L7 `http`) is an
//! error naming the field rather than a silently wider policy. Values are checked later, in
//! [`crate::rule`], where errors get their field path.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::selector::LabelSelector;

/// Object metadata: only the name and namespace matter; other metadata fields are tolerated.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectMeta {
    /// The object's name.
    #[serde(default)]
    pub name: String,
    /// The namespace (namespaced kinds only).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Object labels (not used for enforcement).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (not used for enforcement).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy document.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumPolicyDoc {
    /// `cilium.io/v2`.
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// One rule.
    #[serde(default)]
    pub spec: Option<CiliumRule>,
    /// Several rules.
    #[serde(default)]
    pub specs: Option<Vec<CiliumRule>>,
    /// Status written by controllers; ignored.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// One Cilium rule (`spec` or an element of `specs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumRule {
    /// The endpoints the rule applies to.
    #[serde(default)]
    pub endpoint_selector: Option<LabelSelector>,
    /// Allowed incoming traffic.
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    /// Denied incoming traffic.
    #[serde(default)]
    pub ingress_deny: Option<Vec<IngressDenyRule>>,
    /// Allowed outgoing traffic.
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
    /// Denied outgoing traffic.
    #[serde(default)]
    pub egress_deny: Option<Vec<EgressDenyRule>>,
    /// Whether the rule's sections put its endpoints in default deny (both default to true).
    #[serde(default)]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Labels of the rule itself.
    #[serde(default)]
    pub labels: Option<Vec<RuleLabel>>,
}

/// `enableDefaultDeny`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    /// For ingress.
    #[serde(default)]
    pub ingress: Option<bool>,
    /// For egress.
    #[serde(default)]
    pub egress: Option<bool>,
}

/// A label attached to a rule (`spec.labels`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleLabel {
    /// Key.
    pub key: String,
    /// Value.
    #[serde(default)]
    pub value: String,
    /// Source.
    #[serde(default)]
    pub source: String,
}

/// An `ingress` element.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// Source endpoints.
    #[serde(default)]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Source entities.
    #[serde(default)]
    pub from_entities: Option<Vec<String>>,
    /// Source prefixes.
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    /// Source prefixes with exceptions.
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Destination ports on the selected endpoint.
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
}

/// An `ingressDeny` element: as [`IngressRule`] but ports carry no L7 rules.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressDenyRule {
    /// Source endpoints.
    #[serde(default)]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    /// Source entities.
    #[serde(default)]
    pub from_entities: Option<Vec<String>>,
    /// Source prefixes.
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    /// Source prefixes with exceptions.
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Destination ports.
    #[serde(default)]
    pub to_ports: Option<Vec<PortDenyRule>>,
}

/// An `egress` element.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    /// Destination endpoints.
    #[serde(default)]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Destination entities.
    #[serde(default)]
    pub to_entities: Option<Vec<String>>,
    /// Destination prefixes.
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    /// Destination prefixes with exceptions.
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Destination names (needs the DNS proxy; see the crate docs).
    #[serde(default, rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    /// Destination ports.
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
}

/// An `egressDeny` element.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressDenyRule {
    /// Destination endpoints.
    #[serde(default)]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    /// Destination entities.
    #[serde(default)]
    pub to_entities: Option<Vec<String>>,
    /// Destination prefixes.
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    /// Destination prefixes with exceptions.
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Destination ports.
    #[serde(default)]
    pub to_ports: Option<Vec<PortDenyRule>>,
}

/// A `fromCIDRSet`/`toCIDRSet` element.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRule {
    /// The prefix.
    pub cidr: String,
    /// Sub-prefixes excluded from it.
    #[serde(default)]
    pub except: Vec<String>,
}

/// A `toFQDNs` element or a `rules.dns` element.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSelector {
    /// An exact name.
    #[serde(default)]
    pub match_name: Option<String>,
    /// A pattern with `*`.
    #[serde(default)]
    pub match_pattern: Option<String>,
}

/// A `toPorts` element of an allow rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    /// Ports and protocols.
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
    /// L7 rules: only `dns` is accepted, and enforced at L4 only.
    #[serde(default)]
    pub rules: Option<L7Rules>,
}

/// A `toPorts` element of a deny rule (no L7 rules).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDenyRule {
    /// Ports and protocols.
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
}

/// `toPorts[].rules`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    /// DNS names the endpoint may look up.
    #[serde(default)]
    pub dns: Option<Vec<FqdnSelector>>,
}

/// `toPorts[].ports[]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    /// A number (as a string or an integer), `0` for all ports, or a named port.
    #[serde(default)]
    pub port: Option<serde_json::Value>,
    /// Last port of a range.
    #[serde(default)]
    pub end_port: Option<i64>,
    /// `TCP`, `UDP`, `SCTP` or `ANY` (the default).
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A `networking.k8s.io/v1` NetworkPolicy document.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyDoc {
    /// `networking.k8s.io/v1`.
    pub api_version: String,
    /// `NetworkPolicy`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: NetworkPolicySpec,
    /// Status; ignored.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// NetworkPolicy `spec`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to.
    pub pod_selector: LabelSelector,
    /// `Ingress`, `Egress`.
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
    /// Allowed incoming traffic.
    #[serde(default)]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    /// Allowed outgoing traffic.
    #[serde(default)]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
}

/// NetworkPolicy ingress rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    /// Sources; absent or empty means every source.
    #[serde(default)]
    pub from: Option<Vec<NetworkPolicyPeer>>,
    /// Ports; absent or empty means every port.
    #[serde(default)]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// NetworkPolicy egress rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    /// Destinations; absent or empty means every destination.
    #[serde(default)]
    pub to: Option<Vec<NetworkPolicyPeer>>,
    /// Ports; absent or empty means every port.
    #[serde(default)]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

/// NetworkPolicy peer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// Pods (in the policy's namespace unless `namespaceSelector` is given).
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by their labels.
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    /// A prefix with exceptions.
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

/// NetworkPolicy `ipBlock`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    /// The prefix.
    pub cidr: String,
    /// Sub-prefixes excluded.
    #[serde(default)]
    pub except: Vec<String>,
}

/// NetworkPolicy port.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// A number or a named port; absent means all ports.
    #[serde(default)]
    pub port: Option<serde_json::Value>,
    /// Last port of a range.
    #[serde(default)]
    pub end_port: Option<i64>,
}
