//! The flow decoder over the real lookup: a snapshot of a core that knows a local endpoint of
//! c1, a remote cluster c2 with its identities, pods and a global service, and policies. A
//! policy-denied drop names the policy's deny rule, or default deny with the policies that
//! select the endpoint; pods, labels and clusters come from the core's state.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::Utc;
use common::*;
use plexus_agent::core::{Input, LocalEndpoint, NodeCore};
use plexus_agent::flows::{FlowLookup, PolicyQuery, SnapshotBuilder, SnapshotCell, decode_event};
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::{Direction, DropReason, EventKind, MonitorEvent, RoutingMode, TraceState};
use plexus_flow::{PolicyDeny, TrafficDirection};
use plexus_loadbalancer::cluster_service::Backends;
use plexus_loadbalancer::service::Service;
use plexus_model::cluster::MaxConnectedClusters;

const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rebel-base-ingress
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: rebel-base
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: x-wing
        io.cilium.k8s.policy.cluster: c2
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
  ingressDeny:
  - fromEndpoints:
    - matchLabels:
        app: tie-fighter
        io.cilium.k8s.policy.cluster: c2
"#;

const REBEL_BASE: u32 = 65_536 + 300;
const X_WING: u32 = 131_073;
const TIE_FIGHTER: u32 = 131_074;

fn policy_input() -> Input {
    let value: serde_json::Value = serde_norway::from_str(POLICIES).unwrap();
    let policy = plexus_policy::parse_value(&value, 1, "default").unwrap();
    Input::PolicyUpsert {
        key: "plexus/objects/v1/policies/CiliumNetworkPolicy/default/rebel-base-ingress".into(),
        policy: Box::new(policy),
        object: value,
    }
}

fn service() -> Service {
    serde_json::from_str(
        r#"{"metadata":{"name":"rebel-base","namespace":"default","annotations":{"service.cilium.io/global":"true"}},
            "spec":{"selector":{"app":"rebel-base"},"ports":[{"name":"http","port":80}],"clusterIP":"10.11.0.5"}}"#,
    )
    .unwrap()
}

fn backends(ip: &str) -> Backends {
    serde_json::from_str(&format!(
        r#"{{"{ip}":{{"http":{{"Protocol":"TCP","Port":80}}}}}}"#
    ))
    .unwrap()
}

/// A core of c1/n1 with endpoint 7 (rebel-base-1, 10.1.1.5) and c2's x-wing (10.2.1.5) and
/// tie-fighter (10.2.1.6), whose pods c2's kvstore names.
fn core_with_mesh() -> NodeCore {
    let mut core = core(RoutingMode::Tunnel);
    let ns = "k8s:io.kubernetes.pod.namespace=default";
    core.step_all([
        policy_input(),
        Input::PoliciesSynced,
        Input::IdentityUpsert {
            id: REBEL_BASE,
            labels: labels(&format!(
                "k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=c1;{ns}"
            )),
        },
        Input::EndpointUpsert(LocalEndpoint {
            namespace: "default".into(),
            pod_name: "rebel-base-1".into(),
            ..endpoint(7, "10.1.1.5", REBEL_BASE)
        }),
        remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
        // The node that owns c2's addresses (the guard passes on only what it owns).
        remote(
            "c2",
            RemoteEvent::NodeUpsert(node("c2", 2, "m1", "192.168.2.1", "10.2.1.0")),
        ),
        remote(
            "c2",
            remote_identity(
                X_WING,
                &format!("k8s:app=x-wing;k8s:io.cilium.k8s.policy.cluster=c2;{ns}"),
            ),
        ),
        remote(
            "c2",
            remote_identity(
                TIE_FIGHTER,
                &format!("k8s:app=tie-fighter;k8s:io.cilium.k8s.policy.cluster=c2;{ns}"),
            ),
        ),
        remote(
            "c2",
            RemoteEvent::IpUpsert(pair("10.2.1.5", "192.168.2.1", X_WING).into()),
        ),
        remote(
            "c2",
            RemoteEvent::IpUpsert(pair("10.2.1.6", "192.168.2.1", TIE_FIGHTER).into()),
        ),
        remote(
            "c2",
            RemoteEvent::IpUpsert(pair("10.2.1.9", "192.168.2.1", X_WING).into()),
        ),
        Input::ServiceUpsert {
            key: "default/rebel-base".into(),
            service: Box::new(service()),
        },
        Input::BackendsUpsert {
            key: "default/rebel-base".into(),
            backends: backends("10.1.1.5"),
        },
        remote(
            "c2",
            RemoteEvent::ServiceUpsert(cluster_service("c2", "rebel-base", true, &["10.2.1.9"])),
        ),
        Input::ServicesSynced,
        Input::BackendsSynced,
        Input::MeshStatus {
            reachable: BTreeSet::from(["c2".to_string()]),
            all_ready: true,
        },
    ]);
    core
}

fn snapshot(core: &mut NodeCore) -> Arc<plexus_agent::flows::Snapshot> {
    let cell = Arc::new(SnapshotCell::default());
    let mut builder = SnapshotBuilder::new(cell.clone(), MaxConnectedClusters::Max255);
    let out = core.take_output();
    builder.update(core, &out);
    cell.load()
}

/// A SYN from `saddr` (identity `src`) to rebel-base's port `dport`, dropped by policy at
/// endpoint 7.
fn denied_syn(saddr: &str, src: u32, dport: u16) -> MonitorEvent {
    MonitorEvent {
        kind: EventKind::Drop(DropReason::PolicyDenied),
        endpoint_id: 7,
        src_identity: src,
        dst_identity: REBEL_BASE,
        saddr: saddr.parse().unwrap(),
        daddr: "10.1.1.5".parse().unwrap(),
        sport: 40000,
        dport,
        protocol: 6,
        tcp_flags: 0x02,
        state: TraceState::New,
        direction: Some(Direction::Ingress),
        ifindex: 0,
        len: 74,
        flow: 0,
        ktime_ns: 0,
    }
}

#[test]
fn a_deny_rule_of_a_policy_is_named_with_both_sides_across_clusters() {
    let mut core = core_with_mesh();
    let snap = snapshot(&mut core);
    let flow = decode_event(
        &denied_syn("10.2.1.6", TIE_FIGHTER, 80),
        snap.as_ref(),
        "c1/n1",
        Utc::now(),
    );
    assert_eq!(flow.policy_deny, Some(PolicyDeny::DenyRule));
    assert_eq!(flow.traffic_direction, TrafficDirection::Ingress);
    let names: Vec<(&str, &str, &str)> = flow
        .ingress_denied_by
        .iter()
        .map(|p| (p.kind.as_str(), p.namespace.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [("CiliumNetworkPolicy", "default", "rebel-base-ingress")]
    );
    assert_eq!(
        flow.ingress_denied_by[0].labels,
        [
            "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy",
            "k8s:io.cilium.k8s.policy.name=rebel-base-ingress",
            "k8s:io.cilium.k8s.policy.namespace=default",
        ]
    );
    assert!(flow.ingress_denied_by[0].revision > 0);
    let src = &flow.source;
    assert_eq!(
        (
            src.identity,
            src.cluster_name.as_str(),
            src.namespace.as_str(),
            src.pod_name.as_str()
        ),
        (TIE_FIGHTER, "c2", "default", "pod-10.2.1.6")
    );
    assert_eq!(
        src.labels,
        [
            "k8s:app=tie-fighter",
            "k8s:io.cilium.k8s.policy.cluster=c2",
            "k8s:io.kubernetes.pod.namespace=default"
        ]
    );
    let dst = &flow.destination;
    assert_eq!(
        (
            dst.id,
            dst.identity,
            dst.cluster_name.as_str(),
            dst.pod_name.as_str()
        ),
        (7, REBEL_BASE, "c1", "rebel-base-1")
    );
}

#[test]
fn a_port_no_rule_allows_is_default_deny_by_the_policy_that_selects_the_endpoint() {
    let mut core = core_with_mesh();
    let snap = snapshot(&mut core);
    let flow = decode_event(
        &denied_syn("10.2.1.5", X_WING, 443),
        snap.as_ref(),
        "c1/n1",
        Utc::now(),
    );
    assert_eq!(flow.policy_deny, Some(PolicyDeny::DefaultDeny));
    assert_eq!(flow.ingress_denied_by.len(), 1);
    assert_eq!(flow.ingress_denied_by[0].name, "rebel-base-ingress");
    assert_eq!(flow.source.pod_name, "pod-10.2.1.5");

    // Port 80 from x-wing is what the policy allows.
    let query = PolicyQuery {
        endpoint: 7,
        direction: TrafficDirection::Ingress,
        peer_identity: X_WING,
        peer_ip: "10.2.1.5".parse().unwrap(),
        protocol: 6,
        port: 80,
    };
    assert_eq!(snap.denied_by(&query), None);
    let allowed = snap.allowed_by(&query);
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0].name, "rebel-base-ingress");
}

#[test]
fn services_backends_and_identities_come_from_the_core() {
    let mut core = core_with_mesh();
    let snap = snapshot(&mut core);
    let svc = snap.service("10.11.0.5:80".parse().unwrap(), 6).unwrap();
    assert_eq!(
        (svc.namespace.as_str(), svc.name.as_str()),
        ("default", "rebel-base")
    );
    assert_eq!(snap.service("10.11.0.5:80".parse().unwrap(), 17), None);
    assert_eq!(
        snap.backend_cluster("10.2.1.9".parse().unwrap()).as_deref(),
        Some("c2")
    );
    assert_eq!(
        snap.backend_cluster("10.1.1.5".parse().unwrap()).as_deref(),
        Some("c1")
    );
    // A reserved identity prints as Cilium does; an unknown one of c2 by its cluster bits.
    assert_eq!(snap.identity(2).unwrap().labels, ["reserved:world"]);
    let unknown = snap.identity(131_999).unwrap();
    assert_eq!((unknown.cluster.as_str(), unknown.labels.len()), ("c2", 0));
    // The local endpoint's address is c1's, with its pod.
    let ip = snap.ip("10.1.1.5".parse().unwrap()).unwrap();
    assert_eq!(
        (ip.identity, ip.cluster.as_str(), ip.pod_name.as_str()),
        (REBEL_BASE, "c1", "rebel-base-1")
    );
}

#[test]
fn the_snapshot_follows_the_core_after_a_round() {
    let mut core = core_with_mesh();
    let cell = Arc::new(SnapshotCell::default());
    let mut builder = SnapshotBuilder::new(cell.clone(), MaxConnectedClusters::Max255);
    let out = core.take_output();
    builder.update(&core, &out);
    let before = cell.load();
    // Before, the address is only in c2's node's pod CIDR: no pod.
    let no_pod = |s: &plexus_agent::flows::Snapshot| {
        s.ip("10.2.1.7".parse().unwrap())
            .is_none_or(|ip| ip.pod_name.is_empty())
    };
    assert!(no_pod(&before));
    core.step(remote(
        "c2",
        RemoteEvent::IpUpsert(pair("10.2.1.7", "192.168.2.1", X_WING).into()),
    ));
    let out = core.take_output();
    builder.update(&core, &out);
    let after = cell.load();
    assert_eq!(
        after.ip("10.2.1.7".parse().unwrap()).unwrap().pod_name,
        "pod-10.2.1.7"
    );
    assert!(
        no_pod(&before),
        "a reader's snapshot never changes under it"
    );

    // The entry goes: the next snapshot no longer has it, the one before still does.
    core.step(remote("c2", RemoteEvent::IpDelete("10.2.1.7".into())));
    let out = core.take_output();
    assert!(!out.ipcache.is_empty());
    builder.update(&core, &out);
    assert!(no_pod(&cell.load()));
    assert!(after.ip("10.2.1.7".parse().unwrap()).is_some());
}
