//! `plexus observe` flags to a [`FlowRequest`], with Hubble's rules and without clap: the CLI
//! feeds the flags in the order the user gave them (`--not` applies to the next filter flag).
//!
//! Filter flags come in three forms, as in `hubble observe`:
//! - both sides (`--pod`, `--ip`, `--label`, `--identity`, `--service`, `--cluster`, `--port`):
//!   the request gets two whitelist filters, one with the value on the source side and one with
//!   it on the destination side (flows from *or* to it); other flags apply to both filters;
//! - one side (`--from-pod`, `--to-ip`, ...): that side in every filter;
//! - neither (`--verdict`, `--type`, `--protocol`, `--node-name`, `--traffic-direction`).
//!
//! `-n/--namespace X` restricts the source side of the first filter and the destination side
//! of the second to namespace X (and is prepended to `--pod`/`--service` values without a
//! namespace); `--from-namespace`/`--to-namespace` restrict one side. When the two filters end
//! up equal only one is sent. Flags Hubble refuses to combine are refused here too (for example
//! `--ip` with `--pod`, `--label` with `--from-label`).
//!
//! `--not` negates the next filter flag: that flag builds the blacklist instead, by the same
//! rules. Each negated flag needs its own `--not`.
//!
//! Other flags: `--last N`, `--all` (the whole ring), `--follow`/`-f`, `--since` (RFC 3339 or
//! a duration before now: `5m`, `1h30m`). Without `--last`, `--all`, `--since` or `--follow`
//! the request asks for the last 20 flows, as Hubble does.

use chrono::{DateTime, Utc};
use plexus_model::identity::ReservedIdentity;

use crate::filter::{EventTypeFilter, FlowFilter, FlowRequest, LabelSelector, parse_ip_filter};
use crate::flow::{TraceObservationPoint, TrafficDirection, Verdict, message_type, timestamp};

/// How many flows a plain `plexus observe` prints.
pub const DEFAULT_LAST: u64 = 20;

/// A flag that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// A value that does not parse.
    #[error("--{flag} {value:?}: {reason}")]
    Invalid {
        /// The flag (without dashes).
        flag: String,
        /// The value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A flag this builder does not know.
    #[error("--{0}: unknown observe flag")]
    Unknown(String),
    /// Two flags that cannot be combined.
    #[error("filters --{0} and --{1} cannot be combined")]
    Conflict(String, String),
    /// `--not --not`.
    #[error("--not: consecutive --not")]
    ConsecutiveNot,
    /// `--not` not followed by a filter flag.
    #[error("--not must be followed by a filter flag, got {0}")]
    DanglingNot(String),
}

fn invalid(flag: &str, value: &str, reason: impl Into<String>) -> FlagError {
    FlagError::Invalid {
        flag: flag.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Flags that cannot be combined, as Hubble's `observe` refuses them (plus `--cluster`).
const CONFLICTS: &[&[&str]] = &[
    &["from-ip", "ip", "from-namespace", "namespace"],
    &["from-ip", "ip", "from-pod", "pod"],
    &["to-ip", "ip", "to-namespace", "namespace"],
    &["to-ip", "ip", "to-pod", "pod"],
    &["to-pod", "namespace"],
    &["from-pod", "namespace"],
    &["to-service", "namespace"],
    &["from-service", "namespace"],
    &["label", "from-label"],
    &["label", "to-label"],
    &["service", "from-service"],
    &["service", "to-service"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["identity", "to-identity"],
    &["identity", "from-identity"],
    &["cluster", "from-cluster"],
    &["cluster", "to-cluster"],
];

/// Which filters a flag writes to.
enum Side {
    /// Source side of the left filter, destination side of the right one.
    Both,
    /// Both filters.
    All,
}

/// One list's pair of filters (Hubble's `filterTracker`): the result is `left OR right`.
#[derive(Default)]
struct Tracker {
    left: Option<FlowFilter>,
    right: Option<FlowFilter>,
    ns: Vec<String>,
    src_ns: Vec<String>,
    dst_ns: Vec<String>,
    changed: Vec<String>,
}

fn with_namespaces(values: &mut Vec<String>, ns: &[String]) {
    if ns.is_empty() || values.is_empty() {
        return;
    }
    let mut out = Vec::new();
    for v in values.drain(..) {
        if v.contains('/') {
            out.push(v);
        } else {
            out.extend(ns.iter().map(|n| format!("{n}/{v}")));
        }
    }
    *values = out;
}

fn apply_src_ns(f: &mut FlowFilter, ns: &[String]) {
    if f.source_pod.is_empty() && f.source_service.is_empty() {
        f.source_pod = vec![String::new()];
    }
    with_namespaces(&mut f.source_pod, ns);
    with_namespaces(&mut f.source_service, ns);
}

fn apply_dst_ns(f: &mut FlowFilter, ns: &[String]) {
    if f.destination_pod.is_empty() && f.destination_service.is_empty() {
        f.destination_pod = vec![String::new()];
    }
    with_namespaces(&mut f.destination_pod, ns);
    with_namespaces(&mut f.destination_service, ns);
}

impl Tracker {
    fn apply(&mut self, side: Side, src: impl Fn(&mut FlowFilter), dst: impl Fn(&mut FlowFilter)) {
        let left = self.left.get_or_insert_with(FlowFilter::default);
        let right = self.right.get_or_insert_with(FlowFilter::default);
        match side {
            Side::Both => {
                src(left);
                dst(right);
            }
            Side::All => {
                src(left);
                src(right);
            }
        }
    }

    fn all(&mut self, f: impl Fn(&mut FlowFilter)) {
        self.apply(Side::All, &f, &f);
    }

    fn filters(mut self) -> Vec<FlowFilter> {
        if self.left.is_none()
            && self.right.is_none()
            && self.ns.is_empty()
            && self.src_ns.is_empty()
            && self.dst_ns.is_empty()
        {
            return Vec::new();
        }
        let mut left = self.left.take().unwrap_or_default();
        let mut right = self.right.take().unwrap_or_default();
        if !self.dst_ns.is_empty() {
            apply_dst_ns(&mut left, &self.dst_ns);
            apply_dst_ns(&mut right, &self.dst_ns);
        }
        if !self.src_ns.is_empty() {
            apply_src_ns(&mut left, &self.src_ns);
            apply_src_ns(&mut right, &self.src_ns);
        }
        if !self.ns.is_empty() {
            apply_src_ns(&mut left, &self.ns);
            apply_dst_ns(&mut right, &self.ns);
        }
        if left == right {
            vec![left]
        } else {
            vec![left, right]
        }
    }
}

/// Builds a [`FlowRequest`] from `plexus observe` flags given in order.
pub struct ObserveBuilder {
    now: DateTime<Utc>,
    whitelist: Tracker,
    blacklist: Tracker,
    blacklisting: bool,
    number: Option<u64>,
    all: bool,
    follow: bool,
    since: Option<DateTime<Utc>>,
}

/// Every flag [`ObserveBuilder::flag`] knows (without dashes; `n`, `t`, `f` are short names).
pub const FLAGS: &[&str] = &[
    "not",
    "pod",
    "from-pod",
    "to-pod",
    "namespace",
    "from-namespace",
    "to-namespace",
    "ip",
    "from-ip",
    "to-ip",
    "label",
    "from-label",
    "to-label",
    "service",
    "from-service",
    "to-service",
    "identity",
    "from-identity",
    "to-identity",
    "cluster",
    "from-cluster",
    "to-cluster",
    "port",
    "from-port",
    "to-port",
    "verdict",
    "type",
    "protocol",
    "node-name",
    "traffic-direction",
    "last",
    "all",
    "follow",
    "since",
];

/// Whether a flag takes a value (`--pod X`) or is a switch (`--not`, `--all`, `--follow`).
/// Short names are accepted (`-f`).
pub fn takes_value(flag: &str) -> bool {
    !matches!(flag.trim_start_matches('-'), "not" | "all" | "follow" | "f")
}

fn parse_identity(flag: &str, v: &str) -> Result<u32, FlagError> {
    if let Ok(id) = v.parse::<u32>() {
        return Ok(id);
    }
    ReservedIdentity::from_name(v)
        .map(|r| r.id().0)
        .ok_or_else(|| {
            invalid(
                flag,
                v,
                "expected a numeric identity or a reserved name (world, host, remote-node, ...)",
            )
        })
}

/// Parses a `--type` value: `drop`, `trace`, `trace:<point>` (`trace:to-endpoint`),
/// `policy-verdict`, `translation` (also `trace-sock`), or `<type>[:<sub-type>]` in numbers.
pub fn parse_event_type(v: &str) -> Result<EventTypeFilter, String> {
    let (ty, sub) = match v.split_once(':') {
        Some((t, s)) => (t, Some(s)),
        None => (v, None),
    };
    let r#type = match ty {
        "drop" => message_type::DROP,
        "trace" => message_type::TRACE,
        "policy-verdict" => message_type::POLICY_VERDICT,
        "translation" | "trace-sock" => message_type::TRACE_SOCK,
        n => n.parse::<i32>().map_err(|_| {
            format!(
                "unknown type {n:?}: expected drop, trace, policy-verdict, translation or a number"
            )
        })?,
    };
    let Some(sub) = sub else {
        return Ok(EventTypeFilter::of_type(r#type));
    };
    let named = (r#type == message_type::TRACE)
        .then(|| {
            TraceObservationPoint::KNOWN
                .into_iter()
                .find(|p| p.short_name() == sub)
                .and_then(TraceObservationPoint::monitor_sub_type)
        })
        .flatten();
    let sub_type = match named {
        Some(s) => s,
        None => sub
            .parse::<i32>()
            .map_err(|_| format!("unknown sub-type {sub:?} of {ty}"))?,
    };
    Ok(EventTypeFilter {
        r#type,
        match_sub_type: true,
        sub_type,
    })
}

/// Parses a `--since` value: RFC 3339 (`2026-12-07T12:00:00Z`) or a duration before `now`
/// (`5m`, `1h30m`, `90s`).
pub fn parse_since(v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = timestamp::parse(v) {
        return Ok(t);
    }
    let d = humantime::parse_duration(v)
        .map_err(|_| "expected an RFC 3339 time or a duration such as 5m or 1h30m".to_string())?;
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| "duration too long".to_string())
}

impl ObserveBuilder {
    /// A builder; `now` resolves relative `--since` values.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            now,
            whitelist: Tracker::default(),
            blacklist: Tracker::default(),
            blacklisting: false,
            number: None,
            all: false,
            follow: false,
            since: None,
        }
    }

    /// Builds a request from `(flag, value)` pairs in order (flags without a value, such as
    /// `not` and `follow`, take `""`).
    pub fn from_pairs<'a>(
        now: DateTime<Utc>,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<FlowRequest, FlagError> {
        let mut b = Self::new(now);
        for (flag, value) in pairs {
            b.flag(flag, value)?;
        }
        b.build()
    }

    /// Negates the next filter flag (`--not`).
    pub fn not(&mut self) -> Result<&mut Self, FlagError> {
        self.flag("not", "")
    }

    /// Applies one flag. `name` may carry its dashes (`--from-ip`, `-n`) or not.
    pub fn flag(&mut self, name: &str, value: &str) -> Result<&mut Self, FlagError> {
        let name = name.trim_start_matches('-');
        let name = match name {
            "n" => "namespace",
            "t" => "type",
            "f" => "follow",
            other => other,
        };
        if !FLAGS.contains(&name) {
            return Err(FlagError::Unknown(name.into()));
        }
        match name {
            "not" => {
                if self.blacklisting {
                    return Err(FlagError::ConsecutiveNot);
                }
                self.blacklisting = true;
                return Ok(self);
            }
            "last" | "all" | "follow" | "since" => {
                if self.blacklisting {
                    return Err(FlagError::DanglingNot(format!("--{name}")));
                }
                match name {
                    "last" => {
                        self.number = Some(
                            value
                                .parse()
                                .map_err(|_| invalid(name, value, "expected a count"))?,
                        )
                    }
                    "all" => self.all = true,
                    "follow" => {
                        self.follow = match value {
                            "" | "true" => true,
                            "false" => false,
                            _ => return Err(invalid(name, value, "expected true or false")),
                        }
                    }
                    _ => {
                        self.since = Some(
                            parse_since(value, self.now).map_err(|r| invalid(name, value, r))?,
                        )
                    }
                }
                return Ok(self);
            }
            _ => {}
        }
        let tracker = if std::mem::take(&mut self.blacklisting) {
            &mut self.blacklist
        } else {
            &mut self.whitelist
        };
        if !tracker.changed.iter().any(|c| c == name) {
            tracker.changed.push(name.into());
        }
        for group in CONFLICTS {
            if !group.contains(&name) {
                continue;
            }
            if let Some(other) = group
                .iter()
                .find(|g| **g != name && tracker.changed.iter().any(|c| c == *g))
            {
                return Err(FlagError::Conflict((*other).into(), name.into()));
            }
        }
        set(tracker, name, value)?;
        Ok(self)
    }

    /// The request. Fails when `--not` was the last flag.
    pub fn build(self) -> Result<FlowRequest, FlagError> {
        if self.blacklisting {
            return Err(FlagError::DanglingNot("nothing".into()));
        }
        let number = if self.all {
            Some(u64::MAX)
        } else if self.number.is_none() && self.since.is_none() && !self.follow {
            Some(DEFAULT_LAST)
        } else {
            self.number
        };
        Ok(FlowRequest {
            whitelist: self.whitelist.filters(),
            blacklist: self.blacklist.filters(),
            number,
            follow: self.follow,
            since: self.since,
        })
    }
}

fn set(t: &mut Tracker, name: &str, value: &str) -> Result<(), FlagError> {
    let v = value.to_string();
    let text = |f: fn(&mut FlowFilter) -> &mut Vec<String>| {
        let v = v.clone();
        move |ff: &mut FlowFilter| f(ff).push(v.clone())
    };
    let non_empty = || {
        if value.is_empty() {
            Err(invalid(name, value, "empty value"))
        } else {
            Ok(())
        }
    };
    match name {
        "pod" | "from-pod" | "to-pod" | "service" | "from-service" | "to-service" => {
            non_empty()?;
            if value == "/" {
                return Err(invalid(name, value, "expected [namespace/][name-prefix]"));
            }
        }
        "ip" | "from-ip" | "to-ip" => {
            parse_ip_filter(value).map_err(|r| invalid(name, value, r))?;
        }
        "label" | "from-label" | "to-label" => {
            LabelSelector::parse(value).map_err(|r| invalid(name, value, r))?;
        }
        "port" | "from-port" | "to-port" => {
            value
                .parse::<u16>()
                .map_err(|_| invalid(name, value, "expected a port number (0-65535)"))?;
        }
        "cluster" | "from-cluster" | "to-cluster" | "namespace" | "from-namespace"
        | "to-namespace" | "node-name" => non_empty()?,
        _ => {}
    }
    match name {
        "pod" => t.apply(
            Side::Both,
            text(|f| &mut f.source_pod),
            text(|f| &mut f.destination_pod),
        ),
        "from-pod" => t.all(text(|f| &mut f.source_pod)),
        "to-pod" => t.all(text(|f| &mut f.destination_pod)),
        "service" => t.apply(
            Side::Both,
            text(|f| &mut f.source_service),
            text(|f| &mut f.destination_service),
        ),
        "from-service" => t.all(text(|f| &mut f.source_service)),
        "to-service" => t.all(text(|f| &mut f.destination_service)),
        "ip" => t.apply(
            Side::Both,
            text(|f| &mut f.source_ip),
            text(|f| &mut f.destination_ip),
        ),
        "from-ip" => t.all(text(|f| &mut f.source_ip)),
        "to-ip" => t.all(text(|f| &mut f.destination_ip)),
        "label" => t.apply(
            Side::Both,
            text(|f| &mut f.source_label),
            text(|f| &mut f.destination_label),
        ),
        "from-label" => t.all(text(|f| &mut f.source_label)),
        "to-label" => t.all(text(|f| &mut f.destination_label)),
        "cluster" => t.apply(
            Side::Both,
            text(|f| &mut f.source_cluster_name),
            text(|f| &mut f.destination_cluster_name),
        ),
        "from-cluster" => t.all(text(|f| &mut f.source_cluster_name)),
        "to-cluster" => t.all(text(|f| &mut f.destination_cluster_name)),
        "port" => t.apply(
            Side::Both,
            text(|f| &mut f.source_port),
            text(|f| &mut f.destination_port),
        ),
        "from-port" => t.all(text(|f| &mut f.source_port)),
        "to-port" => t.all(text(|f| &mut f.destination_port)),
        "protocol" => {
            let p = value.to_ascii_lowercase();
            if !["tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6"].contains(&p.as_str()) {
                return Err(invalid(
                    name,
                    value,
                    "expected tcp, udp, sctp, icmp, icmpv4 or icmpv6",
                ));
            }
            t.all(|f| f.protocol.push(p.clone()))
        }
        "node-name" => t.all(text(|f| &mut f.node_name)),
        "namespace" => t.ns.push(v),
        "from-namespace" => t.src_ns.push(v),
        "to-namespace" => t.dst_ns.push(v),
        "identity" | "from-identity" | "to-identity" => {
            let id = parse_identity(name, value)?;
            match name {
                "identity" => t.apply(
                    Side::Both,
                    |f| f.source_identity.push(id),
                    |f| f.destination_identity.push(id),
                ),
                "from-identity" => t.all(|f| f.source_identity.push(id)),
                _ => t.all(|f| f.destination_identity.push(id)),
            }
        }
        "verdict" => {
            let verdict = Verdict::from_name(value).ok_or_else(|| {
                invalid(
                    name,
                    value,
                    "expected FORWARDED, DROPPED, TRANSLATED, AUDIT, REDIRECTED, TRACED or ERROR",
                )
            })?;
            t.all(|f| f.verdict.push(verdict))
        }
        "type" => {
            let ty = parse_event_type(value).map_err(|r| invalid(name, value, r))?;
            t.all(|f| f.event_type.push(ty))
        }
        "traffic-direction" => {
            let d = match value.to_ascii_lowercase().as_str() {
                "ingress" => TrafficDirection::Ingress,
                "egress" => TrafficDirection::Egress,
                _ => return Err(invalid(name, value, "expected ingress or egress")),
            };
            t.all(|f| f.traffic_direction.push(d))
        }
        other => return Err(FlagError::Unknown(other.into())),
    }
    Ok(())
}
