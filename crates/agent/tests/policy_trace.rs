//! `GET /v1/policy/trace` as the core answers it (`reports::policy_trace`): the verdict agrees
//! with the datapath's own lookup of the endpoint's compiled policy, the deciding rules name
//! their policy, section and index, and the peer identity comes from the query or, for an
//! address, from the node's ipcache as the datapath looks it up (world when it has none).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plexus_agent::core::{Input, NodeCore};
use plexus_agent::reports::policy_trace;
use plexus_agent_api::types::{Direction, Verdict};
use plexus_agent_api::{EndpointInfo, PeerIdentitySource, PolicyTrace, TraceDecision, TraceQuery};
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::RoutingMode;
use plexus_policy::Proto;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rebel-base, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: rebel-base}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: x-wing, io.cilium.k8s.policy.cluster: c2}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {app: tie-fighter, io.cilium.k8s.policy.cluster: c2}
  egress:
  - toCIDR: [203.0.113.0/24]
"#;

const REBEL_BASE: u32 = 65_536 + 300;
const X_WING: u32 = 131_073;
const TIE: u32 = 131_074;

fn setup() -> NodeCore {
    setup_with(RoutingMode::Tunnel)
}

/// A local x-wing of c1 beside rebel-base (endpoint 8).
const LOCAL_X_WING: u32 = 65_536 + 301;

fn setup_with(routing: RoutingMode) -> NodeCore {
    let value: serde_json::Value = serde_norway::from_str(POLICY).unwrap();
    let policy = plexus_policy::parse_value(&value, 1, "default").unwrap();
    let mut core = core(routing);
    let mut local = endpoint(8, "10.1.1.6", LOCAL_X_WING);
    local.namespace = "default".into();
    local.pod_name = "x-wing-0".into();
    let mut ep = endpoint(7, "10.1.1.5", REBEL_BASE);
    ep.namespace = "default".into();
    ep.pod_name = "rebel-base-0".into();
    run(
        &mut core,
        [
            Input::PolicyUpsert {
                key: "plexus/objects/v1/policies/CiliumNetworkPolicy/default/rebel-base".into(),
                policy: Box::new(policy),
                object: value,
            },
            Input::PoliciesSynced,
            Input::IdentityUpsert {
                id: REBEL_BASE,
                labels: labels(
                    "k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
                ),
            },
            Input::EndpointUpsert(ep),
            Input::IdentityUpsert {
                id: LOCAL_X_WING,
                labels: labels(
                    "k8s:app=x-wing;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
                ),
            },
            Input::EndpointUpsert(local),
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
                    "k8s:app=x-wing;k8s:io.cilium.k8s.policy.cluster=c2;k8s:io.kubernetes.pod.namespace=default",
                ),
            ),
            remote(
                "c2",
                remote_identity(
                    TIE,
                    "k8s:app=tie-fighter;k8s:io.cilium.k8s.policy.cluster=c2;k8s:io.kubernetes.pod.namespace=default",
                ),
            ),
            remote(
                "c2",
                RemoteEvent::IpUpsert(pair("10.2.1.5", "192.168.2.1", X_WING).into()),
            ),
        ],
    );
    core
}

fn api_endpoint() -> EndpointInfo {
    EndpointInfo {
        container_id: "c7".into(),
        id: 7,
        ip: "10.1.1.5".parse().unwrap(),
        host_ifname: "lxc7".into(),
        host_mac: String::new(),
        pod_mac: String::new(),
        namespace: "default".into(),
        pod: "rebel-base-0".into(),
        labels: Default::default(),
        namespace_labels: None,
        registered_labels: None,
        identity: REBEL_BASE,
        ports: Default::default(),
    }
}

fn trace(
    core: &NodeCore,
    direction: Direction,
    peer_identity: Option<u32>,
    peer_ip: Option<&str>,
    dport: u16,
) -> PolicyTrace {
    let query = TraceQuery {
        endpoint: "default/rebel-base-0".into(),
        direction,
        peer_identity,
        peer_ip: peer_ip.map(|ip| ip.parse().unwrap()),
        proto: "tcp".into(),
        dport,
    };
    policy_trace(core, &api_endpoint(), &query, Proto::Tcp).unwrap()
}

/// The verdict of the datapath's own lookup in the endpoint's compiled policy, as the core
/// programs it (CIDR peers as node-local CIDR identities in the ipcache).
fn datapath_verdict(core: &NodeCore, direction: Direction, peer: u32, dport: u16) -> Verdict {
    let dp = plexus_agent::core::policy::to_datapath(core.policy().resolved(7).unwrap(), &{
        // The CIDR identities the core allocated, read back from its ipcache.
        let mut ids = std::collections::BTreeMap::new();
        for (p, v) in core.desired_ipcache() {
            if plexus_model::identity::NumericIdentity(v.identity).is_local() {
                ids.insert(format!("{}/{}", p.addr, p.len).parse().unwrap(), v.identity);
            }
        }
        ids
    });
    let direction = match direction {
        Direction::Ingress => plexus_datapath::Direction::Ingress,
        Direction::Egress => plexus_datapath::Direction::Egress,
    };
    let enforced = match direction {
        plexus_datapath::Direction::Ingress => dp.ingress_enforced,
        plexus_datapath::Direction::Egress => dp.egress_enforced,
    };
    let entries = plexus_datapath::policy::compile(&dp.rules);
    match plexus_datapath::policy::lookup(&entries, direction, peer, 6, dport) {
        Some(true) => Verdict::Deny,
        Some(false) => Verdict::Allow,
        None if enforced => Verdict::Deny,
        None => Verdict::Allow,
    }
}

fn rules(t: &PolicyTrace) -> Vec<String> {
    t.rules
        .iter()
        .map(|r| format!("{} {} {}", r.policy, r.location, r.match_kind))
        .collect()
}

#[test]
fn an_allowed_connection_names_the_rule_and_its_match() {
    let core = setup();
    let t = trace(
        &core,
        Direction::Ingress,
        Some(X_WING),
        Some("10.2.1.5"),
        80,
    );
    assert_eq!(t.verdict, Verdict::Allow);
    assert_eq!(t.decision, TraceDecision::Allowed);
    assert_eq!(
        rules(&t),
        ["CiliumNetworkPolicy default/rebel-base ingress[0] L3-L4"]
    );
    assert_eq!(t.match_kind.as_deref(), Some("L3-L4"));
    assert_eq!(t.peer_identity_source, PeerIdentitySource::Request);
    assert!(t.peer_labels.unwrap().contains("k8s:app=x-wing"));
    assert_eq!(t.ipcache_identity, Some(X_WING));
    assert_eq!((t.node.as_str(), t.cluster.as_str()), ("n1", "c1"));
    assert_eq!(t.endpoint.identity, REBEL_BASE);
    assert_eq!(t.rules[0].entry.peer, X_WING.to_string());
    assert_eq!(t.rules[0].entry.ports, "80");
}

#[test]
fn denials_name_the_deny_rule_or_the_enforcing_policy() {
    let core = setup();
    let t = trace(&core, Direction::Ingress, Some(TIE), None, 80);
    assert_eq!(t.verdict, Verdict::Deny);
    assert_eq!(t.decision, TraceDecision::DenyRule);
    assert_eq!(
        rules(&t),
        ["CiliumNetworkPolicy default/rebel-base ingressDeny[0] L3-Only"]
    );

    let t = trace(&core, Direction::Ingress, Some(X_WING), None, 81);
    assert_eq!(t.decision, TraceDecision::DefaultDeny);
    assert!(t.rules.is_empty());
    assert_eq!(
        t.enforcing
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["CiliumNetworkPolicy default/rebel-base"]
    );
}

#[test]
fn the_peer_identity_of_an_address_is_the_ipcaches_or_world() {
    let core = setup();
    // Egress to x-wing's address: the datapath finds x-wing's identity in the ipcache; the
    // egress section allows only the CIDR.
    let t = trace(&core, Direction::Egress, None, Some("10.2.1.5"), 80);
    assert_eq!(t.peer_identity, X_WING);
    assert_eq!(t.peer_identity_source, PeerIdentitySource::Ipcache);
    assert_eq!(t.decision, TraceDecision::DefaultDeny);

    // An outside address in the allowed CIDR: its node-local CIDR identity.
    let t = trace(&core, Direction::Egress, None, Some("203.0.113.9"), 443);
    assert_eq!(t.peer_identity_source, PeerIdentitySource::Ipcache);
    assert!(plexus_model::identity::NumericIdentity(t.peer_identity).is_local());
    assert_eq!(t.verdict, Verdict::Allow);
    assert_eq!(
        rules(&t),
        ["CiliumNetworkPolicy default/rebel-base egress[0] L3-Only"]
    );

    // Nothing in the ipcache (no default route entry in this core): world.
    let t = trace(&core, Direction::Egress, None, Some("198.51.100.1"), 443);
    assert_eq!(t.peer_identity_source, PeerIdentitySource::World);
    assert_eq!(t.peer_identity, 2);
    assert_eq!(t.peer_labels.as_deref(), Some("reserved:world"));
    assert_eq!(t.verdict, Verdict::Deny);
}

#[test]
fn the_peer_identity_is_the_one_the_datapath_uses() {
    // A local peer: the endpoint map (egress) and the mark of local delivery (ingress).
    let core = setup();
    let t = trace(&core, Direction::Egress, None, Some("10.1.1.6"), 80);
    assert_eq!(
        (t.peer_identity, t.peer_identity_source),
        (LOCAL_X_WING, PeerIdentitySource::LocalEndpoint)
    );
    let t = trace(
        &core,
        Direction::Ingress,
        Some(X_WING),
        Some("10.1.1.6"),
        80,
    );
    assert_eq!(
        (t.peer_identity, t.peer_identity_source),
        (LOCAL_X_WING, PeerIdentitySource::LocalEndpoint)
    );
    assert_eq!(
        t.decision,
        TraceDecision::DefaultDeny,
        "only c2's x-wing is allowed"
    );

    // From another node: the VNI carries the sender's identity over a tunnel...
    let t = trace(&core, Direction::Ingress, Some(TIE), Some("10.2.1.5"), 80);
    assert_eq!(
        (t.peer_identity, t.peer_identity_source),
        (TIE, PeerIdentitySource::Request)
    );
    assert_eq!(t.decision, TraceDecision::DenyRule);
    // ...natively routed packets carry nothing: the node's ipcache decides.
    let core = setup_with(RoutingMode::Native);
    let t = trace(&core, Direction::Ingress, Some(TIE), Some("10.2.1.5"), 80);
    assert_eq!(
        (t.peer_identity, t.peer_identity_source),
        (X_WING, PeerIdentitySource::Ipcache)
    );
    assert_eq!(t.decision, TraceDecision::Allowed);
}

#[test]
fn the_verdict_is_the_datapaths() {
    let core = setup();
    let addresses = ["10.2.1.5", "10.1.1.6", "203.0.113.9", "198.51.100.1"];
    for direction in [Direction::Ingress, Direction::Egress] {
        for peer in [X_WING, TIE, REBEL_BASE, LOCAL_X_WING, 2] {
            for dport in [22, 80, 443] {
                let t = trace(&core, direction, Some(peer), None, dport);
                assert_eq!(
                    t.verdict,
                    datapath_verdict(&core, direction, peer, dport),
                    "{direction} {peer} {dport}"
                );
            }
        }
        for ip in addresses {
            for dport in [22, 80, 443] {
                let t = trace(&core, direction, None, Some(ip), dport);
                assert_eq!(
                    t.verdict,
                    datapath_verdict(&core, direction, t.peer_identity, dport),
                    "{direction} {ip} {dport}"
                );
            }
        }
    }
}
