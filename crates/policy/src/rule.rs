//! Validated policies: what a parsed policy object means, before identities are known.
//!
//! [`Policy`] is the checked form of one object: its key and its rules, each with a subject
//! selector and four sections (ingress, ingressDeny, egress, egressDeny) of [`PeerRule`]s.
//! Conversion from the API types applies Cilium's namespace defaulting here, because it only
//! depends on the object:
//! - a CiliumNetworkPolicy's `endpointSelector` always gets
//!   `k8s:io.kubernetes.pod.namespace=<ns>` (a different namespace written by the user is
//!   replaced, as Cilium does);
//! - a peer selector (`fromEndpoints`/`toEndpoints`) without a namespace requirement gets
//!   `k8s:io.kubernetes.pod.namespace=<ns>` in a CiliumNetworkPolicy (unless it selects on
//!   namespace labels, `io.cilium.k8s.namespace.labels.*`) and `k8s:io.kubernetes.pod.namespace`
//!   *exists* in a CiliumClusterwideNetworkPolicy (unless the rule applies to `reserved:init`
//!   endpoints); selectors on `reserved:` labels are left alone;
//! - NetworkPolicy peers are translated as Cilium translates them (see `docs/policy.md`).
//!
//! The cluster defaulting (`policy-default-local-cluster`) depends on agent configuration and is
//! applied when a policy enters the [`crate::repository::PolicyRepository`].

use std::fmt;

use plexus_model::cidr::Cidr;
use plexus_model::labels::{CLUSTER_LABEL, NAMESPACE_LABEL, SOURCE_K8S, SOURCE_RESERVED};

use crate::api;
use crate::entity::Entity;
use crate::error::{FieldError, field_err};
use crate::port::{PortRef, PortSpec, Proto};
use crate::prefix::{covers, parse_cidr};
use crate::selector::{LabelSelector, Operator, Requirement, Selector};

/// Prefix of the identity labels that carry a namespace's labels (`k8s:` source).
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The three policy kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `cilium.io/v2` CiliumNetworkPolicy (namespaced).
    CiliumNetworkPolicy,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy,
    /// `networking.k8s.io/v1` NetworkPolicy (namespaced).
    NetworkPolicy,
}

impl PolicyKind {
    /// The Kubernetes kind name.
    pub fn name(self) -> &'static str {
        match self {
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Self::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// The apiVersion the kind is read from.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "networking.k8s.io/v1",
            _ => "cilium.io/v2",
        }
    }

    /// Looks a kind up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::CiliumNetworkPolicy,
            Self::CiliumClusterwideNetworkPolicy,
            Self::NetworkPolicy,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        self != Self::CiliumClusterwideNetworkPolicy
    }
}

/// What identifies a policy in a repository.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// The kind.
    pub kind: PolicyKind,
    /// The namespace; empty for clusterwide policies.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.name(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
        }
    }
}

/// A checked policy object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Kind, namespace, name.
    pub key: PolicyKey,
    /// Its rules (one per `spec`/`specs` element; one for a NetworkPolicy).
    pub rules: Vec<Rule>,
}

/// One rule: the endpoints it applies to and what it allows and denies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The endpoints the rule applies to (namespace defaulting applied).
    pub subject: Selector,
    /// Allowed incoming traffic.
    pub ingress: Vec<PeerRule>,
    /// Denied incoming traffic.
    pub ingress_deny: Vec<PeerRule>,
    /// Allowed outgoing traffic.
    pub egress: Vec<PeerRule>,
    /// Denied outgoing traffic.
    pub egress_deny: Vec<PeerRule>,
    /// `enableDefaultDeny.ingress` (default true): whether the ingress sections put the
    /// endpoints in default deny.
    pub default_deny_ingress: bool,
    /// `enableDefaultDeny.egress` (default true).
    pub default_deny_egress: bool,
    /// `description`.
    pub description: Option<String>,
    /// `labels` of the rule, as `source:key=value`.
    pub labels: Vec<String>,
    /// Where the rule was written in its object: `spec`, or `specs[i]` for the i-th element of
    /// a Cilium policy's `specs` (for explanations naming the rule that decided a verdict).
    pub path: String,
}

impl Default for Rule {
    fn default() -> Self {
        Self {
            subject: Selector::all(),
            ingress: Vec::new(),
            ingress_deny: Vec::new(),
            egress: Vec::new(),
            egress_deny: Vec::new(),
            default_deny_ingress: true,
            default_deny_egress: true,
            description: None,
            labels: Vec::new(),
            path: "spec".to_string(),
        }
    }
}

impl Rule {
    /// Whether the rule has an ingress policy: Cilium's test is a non-empty `ingress` or
    /// `ingressDeny` list (`ingress: []` has none, `ingress: [{}]` has one).
    pub fn has_ingress(&self) -> bool {
        !self.ingress.is_empty() || !self.ingress_deny.is_empty()
    }

    /// The same for egress.
    pub fn has_egress(&self) -> bool {
        !self.egress.is_empty() || !self.egress_deny.is_empty()
    }

    /// Whether the rule puts its endpoints in default deny for ingress: it has an ingress
    /// policy and `enableDefaultDeny.ingress` is not false.
    pub fn enforces_ingress(&self) -> bool {
        self.has_ingress() && self.default_deny_ingress
    }

    /// The same for egress.
    pub fn enforces_egress(&self) -> bool {
        self.has_egress() && self.default_deny_egress
    }
}

/// One element of an ingress/egress section: peers and ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerRule {
    /// The L3 peers; `None` when no L3 field was written. Then the rule selects every peer if
    /// it names ports, and nothing otherwise (`ingress: [{}]` allows nothing).
    pub peers: Option<Vec<PeerSpec>>,
    /// Ports; empty means every port.
    pub ports: Vec<PortSpec>,
    /// Whether L7 rules (`rules.dns`) were given; the datapath enforces them at L4 only, the
    /// DNS proxy ([`crate::dns`]) enforces the names.
    pub l7_ignored: bool,
    /// The `rules.dns` of each `toPorts` element that has a non-empty one, with that element's
    /// ports (an empty list of DNS rules is no L7 rule, as in Cilium).
    pub dns: Vec<DnsPortRule>,
}

/// The DNS rules of one `toPorts` element: which names the endpoint may look up through the
/// peers of its rule on these ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsPortRule {
    /// The element's ports (port 0 = every port when it listed none).
    pub ports: Vec<PortSpec>,
    /// `matchName`s and `matchPattern`s, normalized (see [`crate::fqdn`]); a name is a pattern
    /// without `*`.
    pub patterns: Vec<String>,
}

/// An L3 peer as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerSpec {
    /// Endpoints by labels (namespace defaulting applied).
    Endpoints(Selector),
    /// A named entity.
    Entity(Entity),
    /// A prefix minus exceptions.
    Cidr {
        /// The prefix.
        cidr: Cidr,
        /// Excluded sub-prefixes (each inside `cidr`).
        except: Vec<Cidr>,
    },
    /// A DNS name or pattern (`toFQDNs`, lower case, no trailing dot): selects the addresses
    /// learned for matching names, by the identities a DNS proxy gives them (see [`crate::fqdn`]).
    Fqdn(String),
    /// Every peer (a NetworkPolicy rule without `from`/`to`).
    Any,
}

impl PeerSpec {
    /// Whether the cluster defaulting of `policy-default-local-cluster` applies: an endpoint
    /// selector with no cluster requirement and no `reserved:` requirement.
    pub fn takes_cluster_default(&self) -> bool {
        match self {
            Self::Endpoints(s) => !s.has_key(CLUSTER_LABEL) && !s.has_source(SOURCE_RESERVED),
            _ => false,
        }
    }
}

fn is_namespace_requirement(r: &Requirement) -> bool {
    r.key == NAMESPACE_LABEL && r.source.as_deref().is_none_or(|s| s == SOURCE_K8S)
}

/// Where a Cilium rule lives: its namespace (`None` for clusterwide) and whether its subject
/// selects `reserved:init`.
struct Scope<'a> {
    namespace: Option<&'a str>,
    matches_init: bool,
}

fn peer_selector(
    scope: &Scope<'_>,
    api: &LabelSelector,
    field: &str,
) -> Result<Selector, FieldError> {
    let mut sel = Selector::from_api(api, field)?;
    if sel.has_source(SOURCE_RESERVED) {
        return Ok(sel);
    }
    if !sel.requirements().iter().any(is_namespace_requirement) {
        match scope.namespace {
            None if !scope.matches_init => {
                sel.add(Requirement::exists(&format!(
                    "{SOURCE_K8S}:{NAMESPACE_LABEL}"
                )));
            }
            None => {}
            Some(ns) if !sel.has_key_prefix(NAMESPACE_LABELS_PREFIX) => {
                sel.add(Requirement::equals(
                    &format!("{SOURCE_K8S}:{NAMESPACE_LABEL}"),
                    ns,
                ));
            }
            Some(_) => {}
        }
    }
    Ok(sel)
}

fn subject_selector(
    ns: Option<&str>,
    api: &LabelSelector,
    field: &str,
) -> Result<Selector, FieldError> {
    let sel = Selector::from_api(api, field)?;
    let Some(ns) = ns else { return Ok(sel) };
    // The subject always lives in the policy's namespace: an equality on another namespace is
    // replaced, as Cilium's AddMatch does.
    let kept = sel
        .requirements()
        .iter()
        .filter(|r| !(is_namespace_requirement(r) && r.op == Operator::In && r.values.len() == 1))
        .cloned()
        .chain([Requirement::equals(
            &format!("{SOURCE_K8S}:{NAMESPACE_LABEL}"),
            ns,
        )]);
    Ok(Selector::new(kept))
}

/// One `toPorts` element: its ports and L7 rules.
type RawPorts<'a> = (Option<&'a [api::PortProtocol]>, Option<&'a api::L7Rules>);

/// The L3 and L4 fields of one Cilium ingress/egress element, whichever struct it came from.
struct RawPeerRule<'a> {
    endpoints: Option<&'a [LabelSelector]>,
    entities: Option<&'a [String]>,
    cidrs: Option<&'a [String]>,
    cidr_sets: Option<&'a [api::CidrRule]>,
    fqdns: Option<&'a [api::FqdnSelector]>,
    ports: Option<Vec<RawPorts<'a>>>,
}

fn fqdn(sel: &api::FqdnSelector, field: &str) -> Result<String, FieldError> {
    let (text, at, pattern) = match (&sel.match_name, &sel.match_pattern) {
        (Some(n), None) if !n.is_empty() => (n, format!("{field}.matchName"), false),
        (None, Some(p)) if !p.is_empty() => (p, format!("{field}.matchPattern"), true),
        _ => {
            return Err(field_err(
                field,
                "exactly one of matchName or matchPattern is required",
            ));
        }
    };
    let valid = text.bytes().all(|b| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || (pattern && b == b'*')
    });
    if !valid {
        let what = if pattern {
            "DNS name pattern"
        } else {
            "DNS name"
        };
        return Err(field_err(at, format!("{text:?} is not a {what}")));
    }
    Ok(crate::fqdn::normalize(text))
}

fn cidr_peer(cidr: &str, except: &[String], field: &str) -> Result<PeerSpec, FieldError> {
    let cidr = parse_cidr(cidr, &format!("{field}.cidr"))?;
    let mut out = Vec::new();
    for (i, e) in except.iter().enumerate() {
        let at = format!("{field}.except[{i}]");
        let e = parse_cidr(e, &at)?;
        if !covers(&cidr, &e) {
            return Err(field_err(at, format!("{e} is not inside {cidr}")));
        }
        out.push(e);
    }
    Ok(PeerSpec::Cidr { cidr, except: out })
}

fn convert_peer_rule(
    scope: &Scope<'_>,
    raw: RawPeerRule<'_>,
    dir: &str,
    field: &str,
) -> Result<PeerRule, FieldError> {
    let mut given = false;
    let mut peers = Vec::new();
    if let Some(list) = raw.endpoints {
        given = true;
        for (i, s) in list.iter().enumerate() {
            let at = format!("{field}.{dir}Endpoints[{i}]");
            peers.push(PeerSpec::Endpoints(peer_selector(scope, s, &at)?));
        }
    }
    if let Some(list) = raw.entities {
        given = true;
        for (i, name) in list.iter().enumerate() {
            let entity = Entity::from_name(name).ok_or_else(|| {
                field_err(
                    format!("{field}.{dir}Entities[{i}]"),
                    format!(
                        "unknown entity {name:?} (one of {})",
                        Entity::names().join(", ")
                    ),
                )
            })?;
            peers.push(PeerSpec::Entity(entity));
        }
    }
    if let Some(list) = raw.cidrs {
        given = true;
        for (i, c) in list.iter().enumerate() {
            let cidr = parse_cidr(c, &format!("{field}.{dir}CIDR[{i}]"))?;
            peers.push(PeerSpec::Cidr {
                cidr,
                except: Vec::new(),
            });
        }
    }
    if let Some(list) = raw.cidr_sets {
        given = true;
        for (i, c) in list.iter().enumerate() {
            peers.push(cidr_peer(
                &c.cidr,
                &c.except,
                &format!("{field}.{dir}CIDRSet[{i}]"),
            )?);
        }
    }
    if let Some(list) = raw.fqdns {
        given = true;
        for (i, s) in list.iter().enumerate() {
            peers.push(PeerSpec::Fqdn(fqdn(s, &format!("{field}.toFQDNs[{i}]"))?));
        }
    }
    let mut ports = Vec::new();
    let mut l7_ignored = false;
    let mut dns = Vec::new();
    if let Some(port_rules) = raw.ports {
        for (i, (list, rules)) in port_rules.into_iter().enumerate() {
            let at = format!("{field}.toPorts[{i}]");
            let mut patterns = Vec::new();
            if let Some(rules) = rules {
                for (j, d) in rules.dns.iter().flatten().enumerate() {
                    patterns.push(fqdn(d, &format!("{at}.rules.dns[{j}]"))?);
                }
                l7_ignored = true;
            }
            let first_port = ports.len();
            match list {
                Some(list) if !list.is_empty() => {
                    for (j, p) in list.iter().enumerate() {
                        let pat = format!("{at}.ports[{j}]");
                        let proto = match &p.protocol {
                            None => None,
                            Some(text) => Proto::parse_any(text, &format!("{pat}.protocol"))?,
                        };
                        ports.push(PortSpec::parse(p.port.as_ref(), p.end_port, proto, &pat)?);
                    }
                }
                _ => ports.push(PortSpec {
                    proto: None,
                    port: PortRef::Number(0),
                    end_port: None,
                }),
            }
            if !patterns.is_empty() {
                dns.push(DnsPortRule {
                    ports: ports[first_port..].to_vec(),
                    patterns,
                });
            }
        }
    }
    Ok(PeerRule {
        peers: given.then_some(peers),
        ports,
        l7_ignored,
        dns,
    })
}

fn port_rules(list: &Option<Vec<api::PortRule>>) -> Option<Vec<RawPorts<'_>>> {
    list.as_ref().map(|l| {
        l.iter()
            .map(|p| (p.ports.as_deref(), p.rules.as_ref()))
            .collect()
    })
}

fn port_deny_rules(list: &Option<Vec<api::PortDenyRule>>) -> Option<Vec<RawPorts<'_>>> {
    list.as_ref()
        .map(|l| l.iter().map(|p| (p.ports.as_deref(), None)).collect())
}

/// Converts one Cilium rule; `namespace` is `None` for a clusterwide policy, `field` the path of
/// the rule (`spec` or `specs[i]`).
pub(crate) fn from_cilium_rule(
    namespace: Option<&str>,
    rule: &api::CiliumRule,
    field: &str,
) -> Result<Rule, FieldError> {
    let Some(subject_api) = &rule.endpoint_selector else {
        return Err(field_err(
            format!("{field}.endpointSelector"),
            "is required",
        ));
    };
    let subject = subject_selector(namespace, subject_api, &format!("{field}.endpointSelector"))?;
    let matches_init = subject
        .requirements()
        .iter()
        .any(|r| r.key == "init" && r.source.as_deref() == Some(SOURCE_RESERVED));
    let scope = Scope {
        namespace,
        matches_init,
    };
    let mut out = Rule {
        subject,
        path: field.to_string(),
        default_deny_ingress: rule
            .enable_default_deny
            .as_ref()
            .and_then(|d| d.ingress)
            .unwrap_or(true),
        default_deny_egress: rule
            .enable_default_deny
            .as_ref()
            .and_then(|d| d.egress)
            .unwrap_or(true),
        description: rule.description.clone(),
        labels: rule
            .labels
            .iter()
            .flatten()
            .map(|l| {
                let source = if l.source.is_empty() {
                    "unspec"
                } else {
                    &l.source
                };
                format!("{source}:{}={}", l.key, l.value)
            })
            .collect(),
        ..Rule::default()
    };
    for (i, r) in rule.ingress.iter().flatten().enumerate() {
        let raw = RawPeerRule {
            endpoints: r.from_endpoints.as_deref(),
            entities: r.from_entities.as_deref(),
            cidrs: r.from_cidr.as_deref(),
            cidr_sets: r.from_cidr_set.as_deref(),
            fqdns: None,
            ports: port_rules(&r.to_ports),
        };
        out.ingress.push(convert_peer_rule(
            &scope,
            raw,
            "from",
            &format!("{field}.ingress[{i}]"),
        )?);
    }
    for (i, r) in rule.ingress_deny.iter().flatten().enumerate() {
        let raw = RawPeerRule {
            endpoints: r.from_endpoints.as_deref(),
            entities: r.from_entities.as_deref(),
            cidrs: r.from_cidr.as_deref(),
            cidr_sets: r.from_cidr_set.as_deref(),
            fqdns: None,
            ports: port_deny_rules(&r.to_ports),
        };
        out.ingress_deny.push(convert_peer_rule(
            &scope,
            raw,
            "from",
            &format!("{field}.ingressDeny[{i}]"),
        )?);
    }
    for (i, r) in rule.egress.iter().flatten().enumerate() {
        let raw = RawPeerRule {
            endpoints: r.to_endpoints.as_deref(),
            entities: r.to_entities.as_deref(),
            cidrs: r.to_cidr.as_deref(),
            cidr_sets: r.to_cidr_set.as_deref(),
            fqdns: r.to_fqdns.as_deref(),
            ports: port_rules(&r.to_ports),
        };
        out.egress.push(convert_peer_rule(
            &scope,
            raw,
            "to",
            &format!("{field}.egress[{i}]"),
        )?);
    }
    for (i, r) in rule.egress_deny.iter().flatten().enumerate() {
        let raw = RawPeerRule {
            endpoints: r.to_endpoints.as_deref(),
            entities: r.to_entities.as_deref(),
            cidrs: r.to_cidr.as_deref(),
            cidr_sets: r.to_cidr_set.as_deref(),
            fqdns: None,
            ports: port_deny_rules(&r.to_ports),
        };
        out.egress_deny.push(convert_peer_rule(
            &scope,
            raw,
            "to",
            &format!("{field}.egressDeny[{i}]"),
        )?);
    }
    Ok(out)
}

/// Gives every key without a source the `k8s:` source (NetworkPolicy selectors are on
/// Kubernetes labels only).
fn k8s_sourced(sel: Selector) -> Selector {
    Selector::new(sel.requirements().iter().cloned().map(|mut r| {
        if r.source.is_none() {
            r.source = Some(SOURCE_K8S.to_string());
        }
        r
    }))
}

fn np_peer(ns: &str, peer: &api::NetworkPolicyPeer, field: &str) -> Result<PeerSpec, FieldError> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err(field_err(
                format!("{field}.ipBlock"),
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ));
        }
        return cidr_peer(&block.cidr, &block.except, &format!("{field}.ipBlock"));
    }
    let mut requirements = Vec::new();
    if let Some(pods) = &peer.pod_selector {
        let sel = k8s_sourced(Selector::from_api(pods, &format!("{field}.podSelector"))?);
        requirements.extend(sel.requirements().iter().cloned());
    }
    match &peer.namespace_selector {
        None if peer.pod_selector.is_none() => {
            return Err(field_err(
                field,
                "a peer needs podSelector, namespaceSelector or ipBlock",
            ));
        }
        None => requirements.push(Requirement::equals(
            &format!("{SOURCE_K8S}:{NAMESPACE_LABEL}"),
            ns,
        )),
        Some(nss) => {
            let sel = Selector::from_api(nss, &format!("{field}.namespaceSelector"))?;
            if sel.requirements().is_empty() {
                requirements.push(Requirement::exists(&format!(
                    "{SOURCE_K8S}:{NAMESPACE_LABEL}"
                )));
            }
            for mut r in sel.requirements().iter().cloned() {
                // The namespace's own name label is the pod's namespace label.
                r.key = if r.key == "kubernetes.io/metadata.name" {
                    NAMESPACE_LABEL.to_string()
                } else {
                    format!("{NAMESPACE_LABELS_PREFIX}{}", r.key)
                };
                r.source = Some(SOURCE_K8S.to_string());
                requirements.push(r);
            }
        }
    }
    Ok(PeerSpec::Endpoints(Selector::new(requirements)))
}

fn np_ports(
    ports: &Option<Vec<api::NetworkPolicyPort>>,
    field: &str,
) -> Result<Vec<PortSpec>, FieldError> {
    let mut out = Vec::new();
    for (i, p) in ports.iter().flatten().enumerate() {
        let at = format!("{field}.ports[{i}]");
        let proto = match &p.protocol {
            None => Proto::Tcp,
            Some(text) => match Proto::parse_any(text, &format!("{at}.protocol"))? {
                Some(proto) => proto,
                None => {
                    return Err(field_err(
                        format!("{at}.protocol"),
                        "NetworkPolicy protocols are TCP, UDP or SCTP",
                    ));
                }
            },
        };
        out.push(PortSpec::parse(
            p.port.as_ref(),
            p.end_port,
            Some(proto),
            &at,
        )?);
    }
    Ok(out)
}

fn np_rule(
    ns: &str,
    peers: &Option<Vec<api::NetworkPolicyPeer>>,
    ports: &Option<Vec<api::NetworkPolicyPort>>,
    dir: &str,
    field: &str,
) -> Result<PeerRule, FieldError> {
    let peers = match peers.as_deref() {
        None | Some([]) => vec![PeerSpec::Any],
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, p)| np_peer(ns, p, &format!("{field}.{dir}[{i}]")))
            .collect::<Result<_, _>>()?,
    };
    Ok(PeerRule {
        peers: Some(peers),
        ports: np_ports(ports, field)?,
        l7_ignored: false,
        dns: Vec::new(),
    })
}

/// Converts a NetworkPolicy spec as Cilium does: the subject is `podSelector` in the policy's
/// namespace; a rule without peers allows every peer; a peer `podSelector` alone means the
/// policy's namespace; `namespaceSelector` labels become `io.cilium.k8s.namespace.labels.*`
/// requirements (`kubernetes.io/metadata.name` becomes the pod namespace label); a direction
/// listed in `policyTypes` (by default `Ingress`, and `Egress` when `egress` is written) with
/// no rules denies everything in that direction.
pub(crate) fn from_network_policy(
    ns: &str,
    spec: &api::NetworkPolicySpec,
) -> Result<Rule, FieldError> {
    let subject = subject_selector(Some(ns), &spec.pod_selector, "spec.podSelector")?;
    let subject = k8s_sourced(subject);
    let (mut ingress_type, mut egress_type) = (true, spec.egress.is_some());
    if let Some(types) = &spec.policy_types {
        ingress_type = false;
        egress_type = false;
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => ingress_type = true,
                "Egress" => egress_type = true,
                other => {
                    return Err(field_err(
                        format!("spec.policyTypes[{i}]"),
                        format!("{other:?} is not Ingress or Egress"),
                    ));
                }
            }
        }
    }
    let deny_all = PeerRule {
        peers: Some(Vec::new()),
        ports: Vec::new(),
        l7_ignored: false,
        dns: Vec::new(),
    };
    let mut rule = Rule {
        subject,
        ..Rule::default()
    };
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        let converted = np_rule(ns, &r.from, &r.ports, "from", &at)?;
        if ingress_type {
            rule.ingress.push(converted);
        }
    }
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        let converted = np_rule(ns, &r.to, &r.ports, "to", &at)?;
        if egress_type {
            rule.egress.push(converted);
        }
    }
    if ingress_type && rule.ingress.is_empty() {
        rule.ingress.push(deny_all.clone());
    }
    if egress_type && rule.egress.is_empty() {
        rule.egress.push(deny_all);
    }
    Ok(rule)
}
