//! Which flows a reader wants: [`FlowFilter`] (Hubble's `flow.FlowFilter` field names and
//! semantics), [`FlowRequest`] (white- and blacklist, last N, since, follow) and the compiled
//! [`FlowMatcher`] that checks flows against a request.
//!
//! Semantics, as Hubble's:
//! - Inside one field the values are alternatives (OR); the fields set in one filter must all
//!   match (AND); an empty field does not constrain.
//! - A flow passes a request when it matches at least one whitelist filter (or the whitelist is
//!   empty) and no blacklist filter.
//! - `source_ip`/`destination_ip`: an address (exact) or a CIDR (`10.0.0.0/8`).
//! - `source_pod`/`destination_pod`: `namespace/pod-name-prefix`; `namespace/` matches the whole
//!   namespace; a value without `/` is a pod-name prefix in the namespace `default`.
//!   `source_service`/`destination_service`: the same on the flow's service.
//! - `source_label`/`destination_label`: a label selector, comma-separated terms ANDed: `key`,
//!   `!key`, `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`. A key
//!   may name the label source (`k8s:app=x`); without one (or with `any:`) any source matches.
//! - `source_identity`/`destination_identity`, `source_cluster_name`/`destination_cluster_name`
//!   (the JSON names `source_cluster`/`destination_cluster` are accepted too): exact.
//! - `verdict`, `traffic_direction`: exact.
//! - `event_type`: the monitor message type, and the sub-type when `match_sub_type` is set. A
//!   policy-verdict filter (type 5) also matches drops whose reason is a policy denial (Plexus
//!   reports denials as drops only).
//! - `protocol`: `tcp`, `udp`, `sctp`, `icmp` (v4 or v6), `icmpv4`, `icmpv6`, any case.
//! - `source_port`/`destination_port`: decimal port numbers, matching TCP, UDP and SCTP flows.
//! - `node_name`: `cluster/node` glob patterns where `*` matches within one part: `c1/n*`;
//!   `c1/` matches every node of `c1`; a pattern without `/` matches node names in any cluster.
//!
//! Invalid values are refused by [`FlowRequest::matcher`] with a [`FilterError`] naming the
//! filter and field (`whitelist[0].source_ip`).

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use plexus_model::cidr::Cidr;
use serde::{Deserialize, Serialize};

use crate::flow::{Endpoint, Flow, Layer4, Service, TrafficDirection, Verdict, message_type};

/// A value of a filter that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flow filter {field}: {value:?}: {reason}")]
pub struct FilterError {
    /// Where: `whitelist[0].source_ip`.
    pub field: String,
    /// The value at fault.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Hubble's `EventTypeFilter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct EventTypeFilter {
    /// The monitor message type ([`message_type`]).
    #[serde(rename = "type")]
    pub r#type: i32,
    /// Whether `sub_type` must match too (0 is a valid sub-type).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub match_sub_type: bool,
    /// The sub-type.
    #[serde(skip_serializing_if = "crate::flow::is_default")]
    pub sub_type: i32,
}

impl EventTypeFilter {
    /// Any event of a message type.
    pub fn of_type(r#type: i32) -> Self {
        Self {
            r#type,
            match_sub_type: false,
            sub_type: 0,
        }
    }
}

/// Hubble's `FlowFilter` (the fields Plexus supports). See the module doc for the semantics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowFilter {
    /// Source addresses or CIDRs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_ip: Vec<String>,
    /// Source pods: `ns/prefix`, `ns/`, or `prefix` (namespace `default`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_pod: Vec<String>,
    /// Source label selectors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_label: Vec<String>,
    /// Source services, as `source_pod`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_service: Vec<String>,
    /// Source security identities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_identity: Vec<u32>,
    /// Source clusters.
    #[serde(alias = "source_cluster", skip_serializing_if = "Vec::is_empty")]
    pub source_cluster_name: Vec<String>,
    /// Destination addresses or CIDRs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ip: Vec<String>,
    /// Destination pods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_pod: Vec<String>,
    /// Destination label selectors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_label: Vec<String>,
    /// Destination services.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_service: Vec<String>,
    /// Destination security identities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_identity: Vec<u32>,
    /// Destination clusters.
    #[serde(alias = "destination_cluster", skip_serializing_if = "Vec::is_empty")]
    pub destination_cluster_name: Vec<String>,
    /// Traffic directions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic_direction: Vec<TrafficDirection>,
    /// Verdicts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verdict: Vec<Verdict>,
    /// Event types.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub event_type: Vec<EventTypeFilter>,
    /// L4 protocols.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protocol: Vec<String>,
    /// Source ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_port: Vec<String>,
    /// Destination ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_port: Vec<String>,
    /// Node name patterns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_name: Vec<String>,
}

/// What a reader asks for (the body of `GET /v1/flows?request=<url-encoded JSON>`).
///
/// History: the flows of the ring that pass the filters and are not older than `since`; of
/// those the newest `number` when `number` is set; all of them when neither `number` nor
/// `since` is set and `follow` is off; none when neither is set and `follow` is on. With
/// `follow`, new flows that pass the filters follow the history, without gap or repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowRequest {
    /// A flow must match one of these (any flow when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub whitelist: Vec<FlowFilter>,
    /// A flow must match none of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blacklist: Vec<FlowFilter>,
    /// At most this many flows of history (the newest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// Keep streaming new flows.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// No flows older than this.
    #[serde(
        with = "crate::flow::timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<DateTime<Utc>>,
}

impl FlowRequest {
    /// Checks every value and compiles the filters.
    pub fn matcher(&self) -> Result<FlowMatcher, FilterError> {
        let compile = |list: &[FlowFilter], name: &str| {
            list.iter()
                .enumerate()
                .map(|(i, f)| CompiledFilter::new(f, &format!("{name}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(FlowMatcher {
            whitelist: compile(&self.whitelist, "whitelist")?,
            blacklist: compile(&self.blacklist, "blacklist")?,
        })
    }

    /// The request as the value of the `request` query parameter: its JSON, percent-encoded.
    pub fn to_query_value(&self) -> String {
        // Plain data with string keys: serializing cannot fail.
        percent_encode(&serde_json::to_string(self).unwrap_or_default())
    }

    /// Reads the (already percent-decoded) JSON of a request.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as a space, as in query strings). `None` when an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A compiled [`FlowRequest`]'s filters.
#[derive(Clone, Debug, Default)]
pub struct FlowMatcher {
    whitelist: Vec<CompiledFilter>,
    blacklist: Vec<CompiledFilter>,
}

impl FlowMatcher {
    /// A matcher that lets every flow pass.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether `flow` passes: it matches a whitelist filter (or there is none) and no
    /// blacklist filter.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|f| f.matches(flow)))
            && !self.blacklist.iter().any(|f| f.matches(flow))
    }
}

/// Parses a filter's address: a CIDR (`10.0.0.0/8`) or one address (a host prefix).
pub fn parse_ip_filter(s: &str) -> Result<Cidr, String> {
    if s.contains('/') {
        return s.parse::<Cidr>().map_err(|e| e.to_string());
    }
    s.parse::<IpAddr>()
        .map(Cidr::host)
        .map_err(|_| "not an IP address or CIDR".to_string())
}

/// `namespace/name-prefix`, Hubble's pod and service filter.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NameFilter {
    namespace: String,
    prefix: String,
}

impl NameFilter {
    fn parse(s: &str) -> Result<Self, String> {
        let (namespace, prefix) = match s.split_once('/') {
            Some((ns, p)) => (ns, p),
            None => ("default", s),
        };
        if namespace.is_empty() && prefix.is_empty() || s.is_empty() {
            return Err("expected [namespace/][name-prefix]".into());
        }
        Ok(Self {
            namespace: namespace.into(),
            prefix: prefix.into(),
        })
    }

    fn matches(&self, namespace: &str, name: &str) -> bool {
        if namespace.is_empty() && name.is_empty() {
            return false;
        }
        self.namespace == namespace && name.starts_with(&self.prefix)
    }
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelOp {
    Exists,
    NotExists,
    In(Vec<String>),
    NotIn(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    /// The label source the key must have (`k8s`); `None` for any.
    source: Option<String>,
    key: String,
    op: LabelOp,
}

/// A label selector: requirements ANDed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

fn split_key(key: &str) -> Result<(Option<String>, String), String> {
    let key = key.trim();
    let (source, key) = match key.split_once(':') {
        Some((src, k)) => (if src == "any" { None } else { Some(src) }, k),
        None => (None, key),
    };
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok((source.map(str::to_string), key.to_string()))
}

impl LabelSelector {
    /// Parses `app=x,k8s:tier!=db,!debug,env in (a,b)`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in s.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    terms.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        terms.push(&s[start..]);
        let reqs = terms
            .into_iter()
            .map(|t| Self::requirement(t.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(reqs))
    }

    fn requirement(t: &str) -> Result<Requirement, String> {
        if t.is_empty() {
            return Err("empty selector term".into());
        }
        if let Some(open) = t.find('(') {
            let close = t
                .rfind(')')
                .filter(|c| *c == t.len() - 1)
                .ok_or_else(|| format!("{t:?}: missing closing parenthesis"))?;
            let mut head = t[..open].split_whitespace();
            let (key, op) = match (head.next(), head.next(), head.next()) {
                (Some(k), Some(op), None) => (k, op),
                _ => {
                    return Err(format!(
                        "{t:?}: expected `key in (a,b)` or `key notin (a,b)`"
                    ));
                }
            };
            let values: Vec<String> = t[open + 1..close]
                .split(',')
                .map(|v| v.trim().to_string())
                .collect();
            let (source, key) = split_key(key)?;
            let op = match op {
                "in" => LabelOp::In(values),
                "notin" => LabelOp::NotIn(values),
                other => return Err(format!("{t:?}: unknown operator {other:?}")),
            };
            return Ok(Requirement { source, key, op });
        }
        if let Some(key) = t.strip_prefix('!') {
            let (source, key) = split_key(key)?;
            return Ok(Requirement {
                source,
                key,
                op: LabelOp::NotExists,
            });
        }
        let (key, op) = if let Some((k, v)) = t.split_once("!=") {
            (k, LabelOp::NotIn(vec![v.trim().to_string()]))
        } else if let Some((k, v)) = t.split_once("==") {
            (k, LabelOp::In(vec![v.trim().to_string()]))
        } else if let Some((k, v)) = t.split_once('=') {
            (k, LabelOp::In(vec![v.trim().to_string()]))
        } else {
            (t, LabelOp::Exists)
        };
        let (source, key) = split_key(key)?;
        Ok(Requirement { source, key, op })
    }

    /// Whether labels in Cilium's `source:key=value` form satisfy every requirement.
    pub fn matches(&self, labels: &[String]) -> bool {
        let parsed: Vec<(&str, &str, &str)> = labels
            .iter()
            .map(|l| {
                let (src, rest) = l.split_once(':').unwrap_or(("", l));
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                (src, k, v)
            })
            .collect();
        self.0.iter().all(|r| {
            let mut values = parsed.iter().filter(|(src, k, _)| {
                *k == r.key && r.source.as_deref().is_none_or(|want| want == *src)
            });
            match &r.op {
                LabelOp::Exists => values.next().is_some(),
                LabelOp::NotExists => values.next().is_none(),
                LabelOp::In(set) => values.any(|(_, _, v)| set.iter().any(|s| s == v)),
                LabelOp::NotIn(set) => !values.any(|(_, _, v)| set.iter().any(|s| s == v)),
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    IcmpV4,
    IcmpV6,
}

impl Protocol {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "sctp" => Self::Sctp,
            "icmp" => Self::Icmp,
            "icmpv4" => Self::IcmpV4,
            "icmpv6" => Self::IcmpV6,
            _ => return Err("expected tcp, udp, sctp, icmp, icmpv4 or icmpv6".into()),
        })
    }

    fn matches(self, l4: &Layer4) -> bool {
        matches!(
            (self, l4),
            (Self::Tcp, Layer4::Tcp(_))
                | (Self::Udp, Layer4::Udp(_))
                | (Self::Sctp, Layer4::Sctp(_))
                | (Self::Icmp | Self::IcmpV4, Layer4::IcmpV4(_))
                | (Self::Icmp | Self::IcmpV6, Layer4::IcmpV6(_))
        )
    }
}

/// A `cluster/node` glob pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodePattern {
    cluster: String,
    node: String,
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            let Some(s) = s.strip_prefix(head) else {
                return false;
            };
            (0..=s.len())
                .filter(|i| s.is_char_boundary(*i))
                .any(|i| glob(rest, &s[i..]))
        }
    }
}

impl NodePattern {
    fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty node name pattern".into());
        }
        let (cluster, node) = match s.split_once('/') {
            Some((c, n)) => (c, n),
            None => ("*", s),
        };
        if node.contains('/') {
            return Err("expected [cluster/]node".into());
        }
        Ok(Self {
            cluster: if cluster.is_empty() { "*" } else { cluster }.into(),
            node: if node.is_empty() { "*" } else { node }.into(),
        })
    }

    fn matches(&self, node_name: &str) -> bool {
        let (cluster, node) = node_name.split_once('/').unwrap_or(("", node_name));
        glob(&self.cluster, cluster) && glob(&self.node, node)
    }
}

fn parse_port(s: &str) -> Result<u32, String> {
    s.parse::<u16>()
        .map(u32::from)
        .map_err(|_| "expected a port number (0-65535)".into())
}

/// One compiled [`FlowFilter`]; empty vectors do not constrain.
#[derive(Clone, Debug, Default)]
struct CompiledFilter {
    source_ip: Vec<Cidr>,
    source_pod: Vec<NameFilter>,
    source_label: Vec<LabelSelector>,
    source_service: Vec<NameFilter>,
    source_identity: Vec<u32>,
    source_cluster: Vec<String>,
    destination_ip: Vec<Cidr>,
    destination_pod: Vec<NameFilter>,
    destination_label: Vec<LabelSelector>,
    destination_service: Vec<NameFilter>,
    destination_identity: Vec<u32>,
    destination_cluster: Vec<String>,
    traffic_direction: Vec<TrafficDirection>,
    verdict: Vec<Verdict>,
    event_type: Vec<EventTypeFilter>,
    protocol: Vec<Protocol>,
    source_port: Vec<u32>,
    destination_port: Vec<u32>,
    node_name: Vec<NodePattern>,
}

fn compile<T>(
    values: &[String],
    path: &str,
    field: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, FilterError> {
    values
        .iter()
        .map(|v| {
            parse(v).map_err(|reason| FilterError {
                field: format!("{path}.{field}"),
                value: v.clone(),
                reason,
            })
        })
        .collect()
}

fn any_or_empty<T>(set: &[T], pred: impl Fn(&T) -> bool) -> bool {
    set.is_empty() || set.iter().any(pred)
}

fn name_matches(set: &[NameFilter], ep: &Endpoint) -> bool {
    any_or_empty(set, |f| f.matches(&ep.namespace, &ep.pod_name))
}

fn service_matches(set: &[NameFilter], svc: Option<&Service>) -> bool {
    set.is_empty() || svc.is_some_and(|s| set.iter().any(|f| f.matches(&s.namespace, &s.name)))
}

impl CompiledFilter {
    fn new(f: &FlowFilter, path: &str) -> Result<Self, FilterError> {
        Ok(Self {
            source_ip: compile(&f.source_ip, path, "source_ip", parse_ip_filter)?,
            source_pod: compile(&f.source_pod, path, "source_pod", NameFilter::parse)?,
            source_label: compile(&f.source_label, path, "source_label", LabelSelector::parse)?,
            source_service: compile(&f.source_service, path, "source_service", NameFilter::parse)?,
            source_identity: f.source_identity.clone(),
            source_cluster: f.source_cluster_name.clone(),
            destination_ip: compile(&f.destination_ip, path, "destination_ip", parse_ip_filter)?,
            destination_pod: compile(
                &f.destination_pod,
                path,
                "destination_pod",
                NameFilter::parse,
            )?,
            destination_label: compile(
                &f.destination_label,
                path,
                "destination_label",
                LabelSelector::parse,
            )?,
            destination_service: compile(
                &f.destination_service,
                path,
                "destination_service",
                NameFilter::parse,
            )?,
            destination_identity: f.destination_identity.clone(),
            destination_cluster: f.destination_cluster_name.clone(),
            traffic_direction: f.traffic_direction.clone(),
            verdict: f.verdict.clone(),
            event_type: f.event_type.clone(),
            protocol: compile(&f.protocol, path, "protocol", Protocol::parse)?,
            source_port: compile(&f.source_port, path, "source_port", parse_port)?,
            destination_port: compile(&f.destination_port, path, "destination_port", parse_port)?,
            node_name: compile(&f.node_name, path, "node_name", NodePattern::parse)?,
        })
    }

    fn matches(&self, flow: &Flow) -> bool {
        let ip_in = |set: &[Cidr], ip: Option<IpAddr>| {
            set.is_empty() || ip.is_some_and(|ip| set.iter().any(|c| c.contains(ip)))
        };
        let ports = flow.l4.as_ref().and_then(Layer4::ports);
        let port_in = |set: &[u32], port: Option<u32>| {
            set.is_empty() || port.is_some_and(|p| set.contains(&p))
        };
        ip_in(&self.source_ip, flow.source_ip())
            && ip_in(&self.destination_ip, flow.destination_ip())
            && name_matches(&self.source_pod, &flow.source)
            && name_matches(&self.destination_pod, &flow.destination)
            && any_or_empty(&self.source_label, |s| s.matches(&flow.source.labels))
            && any_or_empty(&self.destination_label, |s| {
                s.matches(&flow.destination.labels)
            })
            && service_matches(&self.source_service, flow.source_service.as_ref())
            && service_matches(&self.destination_service, flow.destination_service.as_ref())
            && any_or_empty(&self.source_identity, |i| *i == flow.source.identity)
            && any_or_empty(&self.destination_identity, |i| {
                *i == flow.destination.identity
            })
            && any_or_empty(&self.source_cluster, |c| *c == flow.source.cluster_name)
            && any_or_empty(&self.destination_cluster, |c| {
                *c == flow.destination.cluster_name
            })
            && any_or_empty(&self.traffic_direction, |d| *d == flow.traffic_direction)
            && any_or_empty(&self.verdict, |v| *v == flow.verdict)
            && any_or_empty(&self.event_type, |t| event_type_matches(t, flow))
            && any_or_empty(&self.protocol, |p| {
                flow.l4.as_ref().is_some_and(|l4| p.matches(l4))
            })
            && port_in(&self.source_port, ports.map(|p| p.0))
            && port_in(&self.destination_port, ports.map(|p| p.1))
            && any_or_empty(&self.node_name, |n| n.matches(&flow.node_name))
    }
}

fn event_type_matches(t: &EventTypeFilter, flow: &Flow) -> bool {
    let Some(ev) = flow.event_type else {
        return false;
    };
    if ev.r#type == t.r#type && (!t.match_sub_type || ev.sub_type == t.sub_type) {
        return true;
    }
    // Plexus reports policy denials as drops only: a policy-verdict filter takes them too.
    t.r#type == message_type::POLICY_VERDICT
        && !t.match_sub_type
        && ev.r#type == message_type::DROP
        && flow.drop_reason_desc.is_policy_denial()
}
