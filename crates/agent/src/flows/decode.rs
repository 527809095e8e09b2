//! The decoder: one datapath [`MonitorEvent`] to one [`Flow`], given what the agent knows
//! through the narrow [`FlowLookup`] trait.
//!
//! Pure: no IO, no clock (the caller passes the event's wall-clock time), no lock. The real
//! lookup is an immutable [`super::Snapshot`] of the core's state; the tests use
//! [`super::FakeLookup`].
//!
//! What each side of a flow gets: its address (the packet's), its identity (the event's, or
//! the ipcache's for the address when the event has none), the local endpoint id when it is
//! the endpoint the event names, its pod (the local endpoint's, or the one the ipcache entry
//! names), the identity's labels as Cilium prints them (`k8s:app=x`, `reserved:world`) and its
//! cluster (the identity's, or the ipcache entry's). A destination that is a service frontend
//! names the service (`destination_service`). A policy drop names the policies that denied it
//! (`ingress_denied_by` / `egress_denied_by`) and why (`policy_deny`: a deny rule, or default
//! deny where policy selects the endpoint in that direction and nothing allowed the packet).

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use chrono::{DateTime, Utc};
use plexus_datapath::{Direction, DropReason, EventKind, MonitorEvent, ObservationPoint};
use plexus_flow::{
    DropReasonInfo, Endpoint, Flow, NetworkInterface, Policy, PolicyDeny, Service,
    TraceObservationPoint, TrafficDirection,
};

/// A local endpoint as flows show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Its address.
    pub ip: Option<Ipv4Addr>,
    /// Its security identity.
    pub identity: u32,
    /// Its pod's namespace.
    pub namespace: String,
    /// Its pod's name.
    pub pod_name: String,
}

/// What the ipcache (and the pods it names) says about an address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpMeta {
    /// The identity of the most specific prefix holding the address.
    pub identity: u32,
    /// The cluster the entry belongs to (empty when not known).
    pub cluster: String,
    /// The pod's namespace, when the entry is a pod's.
    pub namespace: String,
    /// The pod's name.
    pub pod_name: String,
}

/// An identity as flows show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityMeta {
    /// Its labels as Cilium prints them (`k8s:app=x`, `reserved:world`), sorted.
    pub labels: Vec<String>,
    /// The cluster that allocated it (empty for reserved and node-local identities).
    pub cluster: String,
}

/// A packet as a policy lookup sees it, from the point of view of a local endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyQuery {
    /// The local endpoint whose policy was checked.
    pub endpoint: u16,
    /// Ingress (into the endpoint) or egress (out of it).
    pub direction: TrafficDirection,
    /// The other side's identity.
    pub peer_identity: u32,
    /// The other side's address.
    pub peer_ip: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// The destination port (what policies name), 0 without ports.
    pub port: u16,
}

/// Which policies denied a packet, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// A deny rule, or default deny.
    pub kind: PolicyDeny,
    /// The policies with the deny rule, or (default deny) those that select the endpoint in
    /// that direction.
    pub policies: Vec<Policy>,
}

/// What the decoder needs to know, as narrow as it can be. Implemented by the core's
/// [`super::Snapshot`] and by [`super::FakeLookup`].
pub trait FlowLookup {
    /// The local endpoint with this id.
    fn endpoint(&self, id: u16) -> Option<EndpointMeta>;
    /// The ipcache's knowledge of an address (most specific prefix).
    fn ip(&self, ip: Ipv4Addr) -> Option<IpMeta>;
    /// An identity's labels and cluster.
    fn identity(&self, id: u32) -> Option<IdentityMeta>;
    /// The service whose frontend this is (`protocol` is the IP protocol number).
    fn service(&self, frontend: SocketAddrV4, protocol: u8) -> Option<Service>;
    /// The cluster of a service backend's address.
    fn backend_cluster(&self, backend: Ipv4Addr) -> Option<String>;
    /// Which policies denied this packet; `None` when the endpoint's policy says nothing
    /// about it (not known, or it would have been allowed).
    fn denied_by(&self, query: &PolicyQuery) -> Option<Denial>;
    /// Which policies allowed this packet (empty when none did, or none applies).
    fn allowed_by(&self, query: &PolicyQuery) -> Vec<Policy>;
}

/// Cilium's label form: `source:key=value`, or `source:key` for an empty value
/// (`reserved:world`), as `cilium identity list` and Hubble print them.
pub fn label_string(label: &plexus_model::labels::Label) -> String {
    if label.value.is_empty() {
        format!("{}:{}", label.source, label.key)
    } else {
        format!("{}:{}={}", label.source, label.key, label.value)
    }
}

/// Hubble's point for a datapath observation point.
pub fn observation_point(p: ObservationPoint) -> TraceObservationPoint {
    match p {
        ObservationPoint::FromEndpoint => TraceObservationPoint::FromEndpoint,
        ObservationPoint::ToEndpoint => TraceObservationPoint::ToEndpoint,
        ObservationPoint::FromOverlay => TraceObservationPoint::FromOverlay,
        ObservationPoint::ToOverlay => TraceObservationPoint::ToOverlay,
        ObservationPoint::ToStack => TraceObservationPoint::ToStack,
        ObservationPoint::Other(_) => TraceObservationPoint::Unknown,
    }
}

/// The packet's direction seen from the local endpoint: the event's own when it says, else
/// from `meta`'s address (egress when it sent the packet, ingress when it receives it).
fn direction_of(ev: &MonitorEvent, meta: Option<&EndpointMeta>) -> TrafficDirection {
    match ev.direction {
        Some(Direction::Ingress) => return TrafficDirection::Ingress,
        Some(Direction::Egress) => return TrafficDirection::Egress,
        None => {}
    }
    match meta.and_then(|m| m.ip) {
        Some(ip) if ip == ev.saddr => TrafficDirection::Egress,
        Some(ip) if ip == ev.daddr => TrafficDirection::Ingress,
        _ => match ev.kind {
            EventKind::Trace(ObservationPoint::FromEndpoint) => TrafficDirection::Egress,
            EventKind::Trace(ObservationPoint::ToEndpoint) => TrafficDirection::Ingress,
            _ => TrafficDirection::Unknown,
        },
    }
}

/// One side of the flow.
fn endpoint(
    lookup: &dyn FlowLookup,
    ip: Ipv4Addr,
    event_identity: u32,
    local: Option<(u16, &EndpointMeta)>,
) -> Endpoint {
    let ip_meta = if ip.is_unspecified() {
        None
    } else {
        lookup.ip(ip)
    };
    let mut out = Endpoint::default();
    if let Some((id, meta)) = local {
        out.id = u32::from(id);
        out.identity = meta.identity;
        out.namespace = meta.namespace.clone();
        out.pod_name = meta.pod_name.clone();
    }
    if event_identity != 0 {
        out.identity = event_identity;
    }
    // The ipcache's answer is ours: its strings are moved, not copied.
    let mut ip_cluster = None;
    if let Some(m) = ip_meta {
        if out.identity == 0 {
            out.identity = m.identity;
        }
        if out.pod_name.is_empty() && !m.pod_name.is_empty() {
            out.namespace = m.namespace;
            out.pod_name = m.pod_name;
        }
        ip_cluster = Some(m.cluster);
    }
    if out.identity != 0
        && let Some(id) = lookup.identity(out.identity)
    {
        out.labels = id.labels;
        out.cluster_name = id.cluster;
    }
    if out.cluster_name.is_empty()
        && let Some(cluster) = ip_cluster
    {
        out.cluster_name = cluster;
    }
    if out.namespace.is_empty() {
        const NS: &str = "k8s:io.kubernetes.pod.namespace=";
        if let Some(ns) = out.labels.iter().find_map(|l| l.strip_prefix(NS)) {
            out.namespace = ns.to_string();
        }
    }
    out
}

/// Decodes one event observed on node `node_name` (`cluster/node`) at `time`.
pub fn decode(
    ev: &MonitorEvent,
    lookup: &dyn FlowLookup,
    node_name: &str,
    time: DateTime<Utc>,
) -> Flow {
    let local = (ev.endpoint_id != 0)
        .then(|| lookup.endpoint(ev.endpoint_id))
        .flatten();
    let direction = direction_of(ev, local.as_ref());
    let mut flow = match ev.kind {
        EventKind::Trace(point) => {
            let mut f = Flow::trace(time, node_name, observation_point(point));
            f.traffic_direction = direction;
            f
        }
        EventKind::Drop(reason) => {
            let mut f = Flow::drop(
                time,
                node_name,
                DropReasonInfo::from_plexus(reason.as_raw()),
            );
            f.traffic_direction = direction;
            if reason == DropReason::PolicyDenied {
                deny_policies(&mut f, ev, lookup, direction);
            }
            f
        }
        EventKind::Translation { frontend } => {
            let backend = SocketAddrV4::new(ev.daddr, ev.dport);
            let cluster = lookup.backend_cluster(ev.daddr).unwrap_or_default();
            let mut f =
                Flow::translation(time, node_name, frontend.into(), backend.into(), &cluster);
            f.traffic_direction = direction;
            f.destination_service = lookup.service(frontend, ev.protocol);
            f
        }
        EventKind::PolicyVerdict(kind) => {
            let mut f = Flow::policy_verdict(time, node_name, direction, u32::from(kind.as_raw()));
            if let Some(q) = policy_query(ev, direction) {
                let allowed = lookup.allowed_by(&q);
                match direction {
                    TrafficDirection::Ingress => f.ingress_allowed_by = allowed,
                    TrafficDirection::Egress => f.egress_allowed_by = allowed,
                    TrafficDirection::Unknown => {}
                }
            }
            f
        }
    };
    flow.is_reply = ev.is_reply();
    flow = flow.with_packet(
        IpAddr::V4(ev.saddr),
        IpAddr::V4(ev.daddr),
        ev.protocol,
        ev.sport,
        ev.dport,
        ev.tcp_flags,
    );
    if ev.ifindex != 0 {
        flow.interface = Some(NetworkInterface {
            index: ev.ifindex,
            name: String::new(),
        });
    }
    // The local endpoint is the side whose address it holds; by direction when it has none.
    let local_ref = local.as_ref().map(|m| (ev.endpoint_id, m));
    let (src_local, dst_local) = match (local.as_ref().and_then(|m| m.ip), direction) {
        (Some(ip), _) if ip == ev.saddr => (local_ref, None),
        (Some(ip), _) if ip == ev.daddr => (None, local_ref),
        (None, TrafficDirection::Egress) => (local_ref, None),
        (None, TrafficDirection::Ingress) => (None, local_ref),
        _ => (None, None),
    };
    flow.source = endpoint(lookup, ev.saddr, ev.src_identity, src_local);
    flow.destination = endpoint(lookup, ev.daddr, ev.dst_identity, dst_local);
    if flow.destination_service.is_none() && matches!(ev.protocol, 6 | 17) {
        flow.destination_service =
            lookup.service(SocketAddrV4::new(ev.daddr, ev.dport), ev.protocol);
    }
    flow
}

/// The policy query of a packet at endpoint `ev.endpoint_id` in `direction`.
fn policy_query(ev: &MonitorEvent, direction: TrafficDirection) -> Option<PolicyQuery> {
    let (peer_identity, peer_ip) = match direction {
        TrafficDirection::Egress => (ev.dst_identity, ev.daddr),
        TrafficDirection::Ingress => (ev.src_identity, ev.saddr),
        TrafficDirection::Unknown => return None,
    };
    Some(PolicyQuery {
        endpoint: ev.endpoint_id,
        direction,
        peer_identity,
        peer_ip,
        protocol: ev.protocol,
        port: if matches!(ev.protocol, 6 | 17 | 132) {
            ev.dport
        } else {
            0
        },
    })
}

fn deny_policies(
    flow: &mut Flow,
    ev: &MonitorEvent,
    lookup: &dyn FlowLookup,
    direction: TrafficDirection,
) {
    let Some(denial) = policy_query(ev, direction).and_then(|q| lookup.denied_by(&q)) else {
        return;
    };
    flow.policy_deny = Some(denial.kind);
    match direction {
        TrafficDirection::Ingress => flow.ingress_denied_by = denial.policies,
        TrafficDirection::Egress => flow.egress_denied_by = denial.policies,
        TrafficDirection::Unknown => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::flows::FakeLookup;
    use chrono::TimeZone;
    use plexus_datapath::{PolicyMatch, TraceState};

    fn time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 1).unwrap()
            + chrono::Duration::nanoseconds(123_456_789)
    }

    fn event(kind: EventKind) -> MonitorEvent {
        MonitorEvent {
            kind,
            endpoint_id: 0,
            src_identity: 0,
            dst_identity: 0,
            saddr: Ipv4Addr::UNSPECIFIED,
            daddr: Ipv4Addr::UNSPECIFIED,
            sport: 0,
            dport: 0,
            protocol: 0,
            tcp_flags: 0,
            state: TraceState::Unknown,
            direction: None,
            ifindex: 0,
            len: 0,
            flow: 0,
            ktime_ns: 0,
        }
    }

    /// c2's x-wing (10.2.0.7, identity 2<<16|300 = 131372) connects to c1's rebel-base
    /// (10.1.0.5, local endpoint 42, identity 65836) on port 80; c1's policy denies it.
    fn mesh() -> FakeLookup {
        let mut l = FakeLookup::default();
        l.endpoints.insert(
            42,
            EndpointMeta {
                ip: Some("10.1.0.5".parse().unwrap()),
                identity: 65836,
                namespace: "default".into(),
                pod_name: "rebel-base-1".into(),
            },
        );
        l.ips.insert(
            "10.2.0.7".parse().unwrap(),
            IpMeta {
                identity: 131_372,
                cluster: "c2".into(),
                namespace: "default".into(),
                pod_name: "x-wing".into(),
            },
        );
        l.ips.insert(
            "10.1.0.5".parse().unwrap(),
            IpMeta {
                identity: 65836,
                cluster: "c1".into(),
                ..IpMeta::default()
            },
        );
        l.identities.insert(
            131_372,
            IdentityMeta {
                labels: vec![
                    "k8s:app=x-wing".into(),
                    "k8s:io.cilium.k8s.policy.cluster=c2".into(),
                    "k8s:io.kubernetes.pod.namespace=default".into(),
                ],
                cluster: "c2".into(),
            },
        );
        l.identities.insert(
            65836,
            IdentityMeta {
                labels: vec![
                    "k8s:app=rebel-base".into(),
                    "k8s:io.cilium.k8s.policy.cluster=c1".into(),
                    "k8s:io.kubernetes.pod.namespace=default".into(),
                ],
                cluster: "c1".into(),
            },
        );
        l
    }

    fn deny_policy() -> Policy {
        Policy {
            name: "deny-x-wing".into(),
            namespace: "default".into(),
            labels: vec![
                "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy".into(),
                "k8s:io.cilium.k8s.policy.name=deny-x-wing".into(),
                "k8s:io.cilium.k8s.policy.namespace=default".into(),
            ],
            revision: 7,
            kind: "CiliumNetworkPolicy".into(),
        }
    }

    #[test]
    fn a_policy_denied_drop_across_clusters_names_both_sides_and_the_policy() {
        let mut lookup = mesh();
        lookup.denials.insert(
            (42, TrafficDirection::Ingress, 131_372, 80),
            Denial {
                kind: PolicyDeny::DenyRule,
                policies: vec![deny_policy()],
            },
        );
        let ev = MonitorEvent {
            endpoint_id: 42,
            src_identity: 131_372,
            dst_identity: 65836,
            saddr: "10.2.0.7".parse().unwrap(),
            daddr: "10.1.0.5".parse().unwrap(),
            sport: 41234,
            dport: 80,
            protocol: 6,
            tcp_flags: 0x02,
            ifindex: 9,
            ..event(EventKind::Drop(DropReason::PolicyDenied))
        };
        let flow = decode(&ev, &lookup, "c1/n1", time());
        assert_eq!(
            serde_json::to_string(&flow).unwrap(),
            concat!(
                r#"{"time":"2026-12-07T12:00:01.123456789Z","verdict":"DROPPED","drop_reason":133,"#,
                r#""IP":{"source":"10.2.0.7","destination":"10.1.0.5","ipVersion":"IPv4"},"#,
                r#""l4":{"TCP":{"source_port":41234,"destination_port":80,"flags":{"SYN":true}}},"#,
                r#""source":{"identity":131372,"cluster_name":"c2","namespace":"default","#,
                r#""labels":["k8s:app=x-wing","k8s:io.cilium.k8s.policy.cluster=c2","k8s:io.kubernetes.pod.namespace=default"],"#,
                r#""pod_name":"x-wing"},"#,
                r#""destination":{"ID":42,"identity":65836,"cluster_name":"c1","namespace":"default","#,
                r#""labels":["k8s:app=rebel-base","k8s:io.cilium.k8s.policy.cluster=c1","k8s:io.kubernetes.pod.namespace=default"],"#,
                r#""pod_name":"rebel-base-1"},"#,
                r#""Type":"L3_L4","node_name":"c1/n1","event_type":{"type":1,"sub_type":133},"#,
                r#""traffic_direction":"INGRESS","drop_reason_desc":"POLICY_DENIED","interface":{"index":9},"#,
                r#""ingress_denied_by":[{"name":"deny-x-wing","namespace":"default","labels":["k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy","k8s:io.cilium.k8s.policy.name=deny-x-wing","k8s:io.cilium.k8s.policy.namespace=default"],"revision":"7","kind":"CiliumNetworkPolicy"}],"#,
                r#""Summary":"TCP Flags: SYN","drop_reason_text":"Policy denied","policy_deny":"deny-rule"}"#,
            )
        );
    }

    #[test]
    fn a_default_deny_on_egress_is_told_apart_from_a_deny_rule() {
        let mut lookup = mesh();
        lookup.denials.insert(
            (42, TrafficDirection::Egress, 131_372, 80),
            Denial {
                kind: PolicyDeny::DefaultDeny,
                policies: vec![deny_policy()],
            },
        );
        // Endpoint 42 sends to c2's x-wing.
        let ev = MonitorEvent {
            endpoint_id: 42,
            src_identity: 65836,
            dst_identity: 131_372,
            saddr: "10.1.0.5".parse().unwrap(),
            daddr: "10.2.0.7".parse().unwrap(),
            sport: 5555,
            dport: 80,
            protocol: 6,
            tcp_flags: 0x02,
            ..event(EventKind::Drop(DropReason::PolicyDenied))
        };
        let flow = decode(&ev, &lookup, "c1/n1", time());
        assert_eq!(flow.traffic_direction, TrafficDirection::Egress);
        assert_eq!(flow.policy_deny, Some(PolicyDeny::DefaultDeny));
        assert_eq!(flow.egress_denied_by, vec![deny_policy()]);
        assert!(flow.ingress_denied_by.is_empty());
        assert_eq!(flow.source.id, 42);
        assert_eq!(flow.source.pod_name, "rebel-base-1");
        assert_eq!(flow.destination.cluster_name, "c2");
    }

    #[test]
    fn a_trace_to_a_service_frontend_names_the_service() {
        let mut lookup = mesh();
        lookup.services.insert(
            ("10.96.0.10:80".parse().unwrap(), 6),
            Service {
                name: "rebel-base".into(),
                namespace: "default".into(),
            },
        );
        let ev = MonitorEvent {
            endpoint_id: 42,
            src_identity: 65836,
            saddr: "10.1.0.5".parse().unwrap(),
            daddr: "10.96.0.10".parse().unwrap(),
            sport: 5555,
            dport: 80,
            protocol: 6,
            tcp_flags: 0x02,
            ..event(EventKind::Trace(ObservationPoint::FromEndpoint))
        };
        let flow = decode(&ev, &lookup, "c1/n1", time());
        assert_eq!(
            serde_json::to_string(&flow).unwrap(),
            concat!(
                r#"{"time":"2026-12-07T12:00:01.123456789Z","verdict":"FORWARDED","#,
                r#""IP":{"source":"10.1.0.5","destination":"10.96.0.10","ipVersion":"IPv4"},"#,
                r#""l4":{"TCP":{"source_port":5555,"destination_port":80,"flags":{"SYN":true}}},"#,
                r#""source":{"ID":42,"identity":65836,"cluster_name":"c1","namespace":"default","#,
                r#""labels":["k8s:app=rebel-base","k8s:io.cilium.k8s.policy.cluster=c1","k8s:io.kubernetes.pod.namespace=default"],"#,
                r#""pod_name":"rebel-base-1"},"#,
                r#""Type":"L3_L4","node_name":"c1/n1","event_type":{"type":4,"sub_type":5},"#,
                r#""destination_service":{"name":"rebel-base","namespace":"default"},"#,
                r#""traffic_direction":"EGRESS","trace_observation_point":"FROM_ENDPOINT","#,
                r#""Summary":"TCP Flags: SYN"}"#,
            )
        );
    }

    #[test]
    fn an_unknown_address_is_world_by_the_ipcache_and_labels_come_from_the_identity() {
        let mut lookup = mesh();
        // The fake has no longest-prefix match: the world entry is given for the address.
        lookup.ips.insert(
            "8.8.8.8".parse().unwrap(),
            IpMeta {
                identity: 2,
                ..IpMeta::default()
            },
        );
        lookup.identities.insert(
            2,
            IdentityMeta {
                labels: vec!["reserved:world".into()],
                cluster: String::new(),
            },
        );
        let ev = MonitorEvent {
            saddr: "10.1.0.5".parse().unwrap(),
            daddr: "8.8.8.8".parse().unwrap(),
            protocol: 1,
            sport: 8,
            ..event(EventKind::Drop(DropReason::NoEndpoint))
        };
        let flow = decode(&ev, &lookup, "c1/n1", time());
        assert_eq!(flow.destination.identity, 2);
        assert_eq!(flow.destination.labels, vec!["reserved:world".to_string()]);
        assert_eq!(flow.source.identity, 65836, "from the ipcache");
        assert_eq!(flow.source.cluster_name, "c1");
        assert_eq!(flow.summary, "ICMPv4 EchoRequest");
        assert_eq!(
            flow.drop_reason_desc.to_string(),
            "NO_MATCHING_LOCAL_CONTAINER_FOUND"
        );
        assert_eq!(flow.policy_deny, None);
    }

    fn rebel_base_service(lookup: &mut FakeLookup) {
        lookup.services.insert(
            ("10.96.0.10:80".parse().unwrap(), 6),
            Service {
                name: "rebel-base".into(),
                namespace: "default".into(),
            },
        );
    }

    #[test]
    fn a_translation_names_the_frontend_the_backend_and_its_cluster() {
        let mut lookup = mesh();
        rebel_base_service(&mut lookup);
        lookup
            .backends
            .insert("10.2.0.9".parse().unwrap(), "c2".into());
        // Endpoint 42's new connection to the service, sent to c2's backend 10.2.0.9:8080.
        let ev = MonitorEvent {
            endpoint_id: 42,
            src_identity: 65836,
            saddr: "10.1.0.5".parse().unwrap(),
            daddr: "10.2.0.9".parse().unwrap(),
            sport: 5555,
            dport: 8080,
            protocol: 6,
            tcp_flags: 0x02,
            state: TraceState::New,
            direction: Some(Direction::Egress),
            ..event(EventKind::Translation {
                frontend: "10.96.0.10:80".parse().unwrap(),
            })
        };
        let flow = decode(&ev, &lookup, "c1/n1", time());
        assert_eq!(
            serde_json::to_string(&flow).unwrap(),
            concat!(
                r#"{"time":"2026-12-07T12:00:01.123456789Z","verdict":"TRANSLATED","#,
                r#""IP":{"source":"10.1.0.5","destination":"10.2.0.9","ipVersion":"IPv4"},"#,
                r#""l4":{"TCP":{"source_port":5555,"destination_port":8080,"flags":{"SYN":true}}},"#,
                r#""source":{"ID":42,"identity":65836,"cluster_name":"c1","namespace":"default","#,
                r#""labels":["k8s:app=rebel-base","k8s:io.cilium.k8s.policy.cluster=c1","k8s:io.kubernetes.pod.namespace=default"],"#,
                r#""pod_name":"rebel-base-1"},"#,
                r#""Type":"SOCK","node_name":"c1/n1","event_type":{"type":7,"sub_type":2},"#,
                r#""destination_service":{"name":"rebel-base","namespace":"default"},"#,
                r#""traffic_direction":"EGRESS","is_reply":false,"#,
                r#""sock_xlate_point":"SOCK_XLATE_POINT_POST_DIRECTION_FWD","#,
                r#""Summary":"TCP 10.96.0.10:80 -> 10.2.0.9:8080 (cluster c2)","#,
                r#""translation":{"frontend":"10.96.0.10:80","backend":"10.2.0.9:8080","backend_cluster":"c2"}}"#,
            )
        );
    }

    #[test]
    fn a_policy_verdict_names_the_allowing_policy_and_a_reply_is_marked() {
        let mut lookup = mesh();
        let allow = Policy {
            name: "allow-x-wing".into(),
            ..deny_policy()
        };
        lookup.allows.insert(
            (42, TrafficDirection::Ingress, 131_372, 80),
            vec![allow.clone()],
        );
        let ev = MonitorEvent {
            endpoint_id: 42,
            src_identity: 131_372,
            dst_identity: 65836,
            saddr: "10.2.0.7".parse().unwrap(),
            daddr: "10.1.0.5".parse().unwrap(),
            sport: 41234,
            dport: 80,
            protocol: 6,
            tcp_flags: 0x02,
            state: TraceState::New,
            direction: Some(Direction::Ingress),
            ..event(EventKind::PolicyVerdict(PolicyMatch::L3L4))
        };
        let flow = decode(&ev, &lookup, "c1/n1", time());
        assert_eq!(flow.verdict, plexus_flow::Verdict::Forwarded);
        assert_eq!(
            flow.message_type(),
            plexus_flow::flow::message_type::POLICY_VERDICT
        );
        assert_eq!(
            flow.policy_match_type,
            plexus_flow::flow::policy_match::L3_L4
        );
        assert_eq!(flow.traffic_direction, TrafficDirection::Ingress);
        assert_eq!(flow.ingress_allowed_by, vec![allow]);
        assert!(flow.egress_allowed_by.is_empty());
        assert_eq!(flow.is_reply, Some(false));
        assert_eq!(flow.source.cluster_name, "c2");

        // rebel-base's reply, traced into c2's pod direction: a reply.
        let reply = MonitorEvent {
            endpoint_id: 42,
            src_identity: 65836,
            dst_identity: 131_372,
            saddr: "10.1.0.5".parse().unwrap(),
            daddr: "10.2.0.7".parse().unwrap(),
            sport: 80,
            dport: 41234,
            protocol: 6,
            tcp_flags: 0x12,
            state: TraceState::Reply,
            direction: Some(Direction::Egress),
            ..event(EventKind::Trace(ObservationPoint::FromEndpoint))
        };
        let flow = decode(&reply, &lookup, "c1/n1", time());
        assert_eq!(flow.is_reply, Some(true));
        assert_eq!(flow.summary, "TCP Flags: SYN, ACK");
    }

    /// A ring-buffer record of the datapath, with fields drawn mostly from addresses,
    /// endpoints and identities the lookup knows (so the lookups hit), sometimes anything.
    fn record() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let ip = prop_oneof![
            Just([10u8, 1, 0, 5]),
            Just([10u8, 2, 0, 7]),
            any::<[u8; 4]>()
        ];
        let identity = prop_oneof![Just(65836u32), Just(131_372u32), any::<u32>()];
        (
            (
                0u8..=5,
                any::<u8>(),
                prop_oneof![Just(42u16), Just(0u16), any::<u16>()],
            ),
            (identity.clone(), identity, ip.clone(), ip),
            (any::<[u8; 4]>(), any::<[u8; 4]>()),
            (any::<[u8; 20]>(), any::<[u8; 8]>()),
            prop_oneof![Just(48usize), Just(56usize), 0usize..80],
        )
            .prop_map(
                |((ty, sub, ep), (src, dst, sa, da), (ports, misc), (rest, frontend), len)| {
                    let mut b = Vec::with_capacity(80);
                    b.extend([ty, sub]);
                    b.extend(ep.to_ne_bytes());
                    b.extend(src.to_ne_bytes());
                    b.extend(dst.to_ne_bytes());
                    b.extend(sa);
                    b.extend(da);
                    b.extend(ports);
                    b.extend(misc);
                    b.extend(rest);
                    b.extend(frontend);
                    b.resize(len, 0xa5);
                    b
                },
            )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a record holds (the ring buffer is shared with the BPF programs, and a
        /// pinned one may hold records of another build), decoding it and turning it into a
        /// flow never panics, and the flow serializes.
        #[test]
        fn any_record_decodes_into_a_flow_without_panicking(raw in record()) {
            let mut lookup = mesh();
            lookup.denials.insert(
                (42, TrafficDirection::Ingress, 131_372, 80),
                Denial {
                    kind: PolicyDeny::DenyRule,
                    policies: vec![deny_policy()],
                },
            );
            if let Ok(ev) = MonitorEvent::decode(&raw) {
                let flow = decode(&ev, &lookup, "c1/n1", time());
                serde_json::to_string(&flow).unwrap();
            }
        }
    }
}
