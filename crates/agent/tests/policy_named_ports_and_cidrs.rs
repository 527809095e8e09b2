//! Egress named ports from the ipcache entries' `NamedPorts` (remote clusters and this node's
//! endpoints), and CIDR rules that select pods of another cluster by address: what the core
//! wants, and what the datapath (its fake, with the programs' decision) does with it.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;

use common::*;
use plexus_agent::core::{Input, NodeCore};
use plexus_agent::shell::reconciler::{add_policy_cidrs, remove_policy_cidrs, sync_policies};
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::policy::EndpointPolicy;
use plexus_datapath::{Datapath, Direction, FakeDatapath, RoutingMode};
use plexus_model::ipcache::IpIdentityPair;

const CLIENT: u32 = 65_536 + 300;
const LOCAL_SERVER: u32 = 65_536 + 301;
const SERVER: u32 = 131_073;
const OTHER: u32 = 131_074;

fn policy_input(name: &str, yaml: &str) -> Input {
    let value: serde_json::Value = serde_norway::from_str(yaml).unwrap();
    let policy = plexus_policy::parse_value(&value, 1, "default").unwrap();
    Input::PolicyUpsert {
        key: format!("plexus/objects/v1/policies/CiliumNetworkPolicy/default/{name}"),
        policy: Box::new(policy),
        object: value,
    }
}

/// A remote pod's entry with named ports `ports` ((name, port) on TCP).
fn pair_with_ports(ip: &str, id: u32, ports: &[(&str, u16)]) -> IpIdentityPair {
    let mut p = pair(ip, "192.168.2.1", id);
    p.named_ports = ports
        .iter()
        .map(|(name, port)| plexus_model::ipcache::NamedPort {
            name: (*name).into(),
            port: *port,
            protocol: "TCP".into(),
        })
        .collect();
    p
}

fn setup(policy: Input) -> NodeCore {
    let mut core = core(RoutingMode::Tunnel);
    core.step_all([
        policy,
        Input::IdentityUpsert {
            id: CLIENT,
            labels: labels(
                "k8s:app=client;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
            ),
        },
        Input::EndpointUpsert(endpoint(7, "10.1.1.5", CLIENT)),
        remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
        // The node that owns c2's addresses (the guard passes on only what it owns).
        remote(
            "c2",
            RemoteEvent::NodeUpsert(node("c2", 2, "m1", "192.168.2.1", "10.2.0.0")),
        ),
        remote(
            "c2",
            remote_identity(
                SERVER,
                "k8s:app=server;k8s:io.cilium.k8s.policy.cluster=c2;k8s:io.kubernetes.pod.namespace=default",
            ),
        ),
        remote(
            "c2",
            remote_identity(
                OTHER,
                "k8s:app=other;k8s:io.cilium.k8s.policy.cluster=c2;k8s:io.kubernetes.pod.namespace=default",
            ),
        ),
        Input::PoliciesSynced,
    ]);
    core
}

/// The egress (identity, proto, port range) rules of endpoint 7.
fn egress(p: &EndpointPolicy) -> Vec<(u32, u8, u16, u16)> {
    p.rules
        .iter()
        .filter(|r| r.direction == Direction::Egress && !r.deny)
        .map(|r| (r.identity, r.proto, r.port_lo, r.port_hi))
        .collect()
}

const TO_SERVER_HTTP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-server, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {app: server, io.cilium.k8s.policy.cluster: c2}
    toPorts:
    - ports: [{port: http, protocol: TCP}]
  - toPorts:
    - ports: [{port: metrics, protocol: TCP}]
"#;

#[test]
fn egress_named_ports_follow_the_ipcache_entries_of_every_cluster() {
    let mut core = setup(policy_input("to-server", TO_SERVER_HTTP));
    let out = core.take_output().policies.unwrap();
    assert!(out[&7].egress_enforced);
    assert!(egress(&out[&7]).is_empty(), "no port named yet");

    // The remote pod's entry names its ports: the rule towards its identity resolves.
    let out = run(
        &mut core,
        [remote(
            "c2",
            RemoteEvent::IpUpsert(pair_with_ports("10.2.0.5", SERVER, &[("http", 8080)]).into()),
        )],
    )
    .policies
    .unwrap();
    assert_eq!(egress(&out[&7]), vec![(SERVER, 6, 8080, 8080)]);

    // Another pod of the identity with another port: the union.
    let out = run(
        &mut core,
        [remote(
            "c2",
            RemoteEvent::IpUpsert(pair_with_ports("10.2.0.6", SERVER, &[("http", 8081)]).into()),
        )],
    )
    .policies
    .unwrap();
    assert_eq!(
        egress(&out[&7]),
        vec![(SERVER, 6, 8080, 8080), (SERVER, 6, 8081, 8081)]
    );

    // A port named on another identity only: the any-peer rule resolves through the node-wide
    // index (local endpoints count too), the identity rule does not take it.
    let mut server = endpoint(8, "10.1.1.6", LOCAL_SERVER);
    server.named_ports.insert(
        "metrics".into(),
        plexus_policy::NamedPort {
            port: 9100,
            proto: plexus_policy::Proto::Tcp,
        },
    );
    let out = run(
        &mut core,
        [
            Input::IdentityUpsert {
                id: LOCAL_SERVER,
                labels: labels(
                    "k8s:app=local-server;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
                ),
            },
            Input::EndpointUpsert(server),
            remote(
                "c2",
                RemoteEvent::IpUpsert(pair_with_ports("10.2.0.7", OTHER, &[("metrics", 9200)]).into()),
            ),
        ],
    )
    .policies
    .unwrap();
    assert_eq!(
        egress(&out[&7]),
        vec![
            (0, 6, 9100, 9100),
            (0, 6, 9200, 9200),
            (SERVER, 6, 8080, 8080),
            (SERVER, 6, 8081, 8081)
        ]
    );

    // Entries going (one deleted, a cluster drained) take their ports with them.
    let out = run(
        &mut core,
        [remote("c2", RemoteEvent::IpDelete("10.2.0.6".into()))],
    )
    .policies
    .unwrap();
    assert!(!egress(&out[&7]).contains(&(SERVER, 6, 8081, 8081)));
    let out = run(&mut core, [remote("c2", RemoteEvent::Drained)])
        .policies
        .unwrap();
    assert_eq!(egress(&out[&7]), vec![(0, 6, 9100, 9100)]);

    // An unchanged entry listed again does not re-resolve.
    let mut core = setup(policy_input("to-server", TO_SERVER_HTTP));
    let entry = pair_with_ports("10.2.0.5", SERVER, &[("http", 8080)]);
    run(
        &mut core,
        [remote("c2", RemoteEvent::IpUpsert(entry.clone().into()))],
    );
    assert!(
        run(
            &mut core,
            [remote("c2", RemoteEvent::IpUpsert(entry.into()))]
        )
        .policies
        .is_none()
    );
}

const IP_BLOCK: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-block, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.2.0.0/16, except: [10.2.1.0/24]}
    ports: [{port: 80}]
"#;

#[test]
fn ip_blocks_select_remote_pods_by_address_with_except() {
    let mut core = setup(policy_input("to-block", IP_BLOCK));
    let out = core.take_output();
    let policies = out.policies.unwrap();
    let cidrs = out.policy_cidrs.unwrap();
    assert_eq!(cidrs.len(), 8, "10.2.0.0/16 minus 10.2.1.0/24: {cidrs:?}");
    assert!(
        cidrs
            .keys()
            .all(|p| !p.contains(Ipv4Addr::new(10, 2, 1, 5))),
        "{cidrs:?}"
    );

    let dp = FakeDatapath::new();
    let mut programmed_cidrs = Default::default();
    let mut programmed = Default::default();
    assert!(remove_policy_cidrs(&dp, &mut programmed_cidrs, &cidrs));
    assert!(sync_policies(&dp, &mut programmed, &policies));
    assert!(add_policy_cidrs(&dp, &mut programmed_cidrs, &cidrs));
    assert_eq!(dp.policy_cidrs().unwrap(), cidrs);

    let allows = |id: u32, ip: [u8; 4], port: u16| {
        dp.policy_allows(7, Direction::Egress, id, Ipv4Addr::from(ip), 6, port)
    };
    assert!(
        allows(SERVER, [10, 2, 0, 5], 80),
        "a remote pod in the block"
    );
    assert!(!allows(SERVER, [10, 2, 0, 5], 81), "another port");
    assert!(!allows(SERVER, [10, 2, 1, 5], 80), "except");
    assert!(!allows(SERVER, [10, 3, 0, 5], 80), "outside the block");
    // The ipcache still gives outside addresses the CIDR identities (flows show them); the
    // prefix that is c2's node's pod CIDR stays the node's.
    assert!(
        out.ipcache
            .iter()
            .any(|c| matches!(c, plexus_ipcache::Change::Upsert(p, v) if *p == prefix("10.2.2.0/23") && v.identity == cidrs[&prefix("10.2.2.0/23")]))
    );

    // The policy goes: the prefixes leave the datapath, and then nothing is enforced.
    core.step(Input::PolicyDelete(
        "plexus/objects/v1/policies/CiliumNetworkPolicy/default/to-block".into(),
    ));
    let out = core.take_output();
    let cidrs = out.policy_cidrs.unwrap();
    assert!(cidrs.is_empty());
    assert!(remove_policy_cidrs(&dp, &mut programmed_cidrs, &cidrs));
    assert!(sync_policies(&dp, &mut programmed, &out.policies.unwrap()));
    assert!(dp.policy_cidrs().unwrap().is_empty());
    assert!(allows(OTHER, [10, 9, 9, 9], 81));
}

#[test]
fn a_restarted_agent_keeps_the_cidr_identities_it_finds_in_the_datapath() {
    let base = plexus_datapath::IDENTITY_LOCAL_BASE;
    let mut core = core(RoutingMode::Tunnel);
    core.step(Input::PolicyCidrsInDatapath(
        [
            (prefix("10.2.0.0/24"), base + 40),
            (prefix("192.0.2.0/24"), base + 41),
        ]
        .into(),
    ));
    core.step_all([
        policy_input("to-block", IP_BLOCK),
        Input::IdentityUpsert {
            id: CLIENT,
            labels: labels(
                "k8s:app=client;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
            ),
        },
        Input::EndpointUpsert(endpoint(7, "10.1.1.5", CLIENT)),
        Input::PoliciesSynced,
    ]);
    let cidrs = core.take_output().policy_cidrs.unwrap();
    assert_eq!(cidrs.len(), 8);
    assert_eq!(cidrs[&prefix("10.2.0.0/24")], base + 40, "kept");
    assert!(
        !cidrs.contains_key(&prefix("192.0.2.0/24")),
        "not named any more"
    );
    let ids: std::collections::BTreeSet<u32> = cidrs.values().copied().collect();
    assert_eq!(ids.len(), 8, "no identity given twice: {cidrs:?}");
    assert!(ids.iter().all(|id| *id == base + 40 || *id > base + 41));
}
