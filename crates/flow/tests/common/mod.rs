//! Sample flows shared by the tests: a policy-denied drop, a forwarded trace, a translation.

#![allow(dead_code, clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use plexus_flow::{
    DropReasonInfo, Endpoint, Flow, Policy, PolicyDeny, TraceObservationPoint, TrafficDirection,
};

/// Parses an RFC 3339 time.
pub fn t(s: &str) -> DateTime<Utc> {
    plexus_flow::flow::timestamp::parse(s).unwrap()
}

pub fn x_wing() -> Endpoint {
    Endpoint {
        id: 0,
        identity: 38354,
        cluster_name: "c1".into(),
        namespace: "default".into(),
        labels: vec![
            "k8s:app=x-wing".into(),
            "k8s:class=fighter".into(),
            "k8s:io.kubernetes.pod.namespace=default".into(),
        ],
        pod_name: "x-wing".into(),
    }
}

pub fn rebel_base() -> Endpoint {
    Endpoint {
        id: 3833,
        identity: 6587186,
        cluster_name: "c2".into(),
        namespace: "default".into(),
        labels: vec!["k8s:app=rebel-base".into()],
        pod_name: "rebel-base-1".into(),
    }
}

/// x-wing -> rebel-base-1:80 TCP SYN, denied by an ingress deny rule on c2/n1.
pub fn denied() -> Flow {
    let mut f = Flow::drop(
        t("2026-12-07T12:00:01.123456789Z"),
        "c2/n1",
        DropReasonInfo::from_plexus(6),
    )
    .with_packet(
        "10.60.1.7".parse().unwrap(),
        "10.60.2.9".parse().unwrap(),
        6,
        41234,
        80,
        0x02,
    );
    f.source = x_wing();
    f.destination = rebel_base();
    f.traffic_direction = TrafficDirection::Ingress;
    f.is_reply = Some(false);
    f.ingress_denied_by = vec![Policy {
        name: "deny-x-wing".into(),
        namespace: "default".into(),
        labels: vec!["k8s:io.cilium.k8s.policy.name=deny-x-wing".into()],
        revision: 7,
        kind: "CiliumNetworkPolicy".into(),
    }];
    f.policy_deny = Some(PolicyDeny::DenyRule);
    f
}

/// x-wing -> rebel-base-1:80 TCP SYN delivered at the endpoint (to-endpoint).
pub fn forwarded() -> Flow {
    let mut f = Flow::trace(
        t("2026-12-07T12:00:01.123Z"),
        "c2/n1",
        TraceObservationPoint::ToEndpoint,
    )
    .with_packet(
        "10.60.1.7".parse().unwrap(),
        "10.60.2.9".parse().unwrap(),
        6,
        41234,
        80,
        0x02,
    );
    f.source = x_wing();
    f.destination = rebel_base();
    f.is_reply = Some(false);
    f
}

/// The load balancer on c1/n1 sends x-wing's connection to 10.96.0.10:80 to a backend in c2.
pub fn translated() -> Flow {
    let mut f = Flow::translation(
        t("2026-12-07T12:00:01Z"),
        "c1/n1",
        "10.96.0.10:80".parse().unwrap(),
        "10.60.2.9:8080".parse().unwrap(),
        "c2",
    )
    .with_packet(
        "10.60.1.7".parse().unwrap(),
        "10.60.2.9".parse().unwrap(),
        6,
        41234,
        8080,
        0x02,
    );
    f.source = x_wing();
    f.destination = rebel_base();
    f.destination_service = Some(plexus_flow::Service {
        name: "rebel-base".into(),
        namespace: "default".into(),
    });
    f.is_reply = Some(false);
    f
}

/// A trace at `time` (RFC 3339) from `src` to `dst` (addresses), UDP 53.
pub fn udp_at(time: &str, src: &str, dst: &str) -> Flow {
    Flow::trace(t(time), "c1/n1", TraceObservationPoint::ToStack).with_packet(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        17,
        5353,
        53,
        0,
    )
}
