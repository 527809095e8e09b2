//! Service backends across clusters: global and shared services, affinity with its fallback
//! when the preferred side has no backend, and clusters that become unreachable.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use plexus_agent::core::{Input, NodeCore};
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::{Frontend, L4Proto, LbService, RoutingMode};
use plexus_loadbalancer::cluster_service::Backends;
use plexus_loadbalancer::service::Service;

fn service(affinity: Option<&str>) -> Service {
    let affinity = affinity
        .map(|a| format!(r#","service.cilium.io/affinity":"{a}""#))
        .unwrap_or_default();
    serde_json::from_str(&format!(
        r#"{{"metadata":{{"name":"rebel-base","namespace":"default","annotations":{{"service.cilium.io/global":"true"{affinity}}}}},
            "spec":{{"selector":{{"app":"rebel-base"}},"ports":[{{"name":"http","port":80}}],"clusterIP":"10.11.0.5"}}}}"#
    ))
    .unwrap()
}

fn backends(ips: &[&str]) -> Backends {
    serde_json::from_str(&format!(
        "{{{}}}",
        ips.iter()
            .map(|ip| format!(r#""{ip}":{{"http":{{"Protocol":"TCP","Port":80}}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    ))
    .unwrap()
}

fn mesh(reachable: &[&str]) -> Input {
    Input::MeshStatus {
        reachable: reachable
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        all_ready: true,
    }
}

fn frontend() -> Frontend {
    Frontend {
        addr: "10.11.0.5".parse().unwrap(),
        port: 80,
        proto: L4Proto::Tcp,
    }
}

fn table(core: &mut NodeCore, inputs: impl IntoIterator<Item = Input>) -> Option<LbService> {
    run(core, inputs).services.map(|t| {
        t.get(&frontend()).cloned().unwrap_or(LbService {
            frontend: frontend(),
            active: vec![],
            inactive: vec![],
        })
    })
}

fn addrs(list: &[std::net::SocketAddrV4]) -> Vec<String> {
    list.iter().map(|a| a.ip().to_string()).collect()
}

/// A core with the global service in c1 (local backend .5) and c2 (backend .6), both synced.
fn setup(affinity: Option<&str>) -> NodeCore {
    let mut core = core(RoutingMode::Tunnel);
    let t = table(
        &mut core,
        [
            Input::ServiceUpsert {
                key: "default/rebel-base".into(),
                service: Box::new(service(affinity)),
            },
            Input::BackendsUpsert {
                key: "default/rebel-base".into(),
                backends: backends(&["10.1.1.5"]),
            },
            remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
            // The node that owns c2's addresses (the guard passes on only what it owns).
            remote(
                "c2",
                RemoteEvent::NodeUpsert(node("c2", 2, "m1", "192.168.2.1", "10.2.1.0")),
            ),
            remote(
                "c2",
                RemoteEvent::ServiceUpsert(cluster_service(
                    "c2",
                    "rebel-base",
                    true,
                    &["10.2.1.6"],
                )),
            ),
        ],
    );
    assert_eq!(
        t, None,
        "nothing is programmed before the services are listed"
    );
    core.step_all([Input::ServicesSynced, Input::BackendsSynced, mesh(&["c2"])]);
    core
}

#[test]
fn a_global_service_balances_over_every_cluster() {
    let mut core = setup(None);
    let t = core.take_output().services.unwrap()[&frontend()].clone();
    assert_eq!(addrs(&t.active), ["10.1.1.5", "10.2.1.6"]);
    assert!(t.inactive.is_empty());
}

#[test]
fn affinity_local_falls_back_to_remote_backends_and_back() {
    let mut core = setup(Some("local"));
    let t = core.take_output().services.unwrap()[&frontend()].clone();
    assert_eq!(addrs(&t.active), ["10.1.1.5"]);
    assert_eq!(addrs(&t.inactive), ["10.2.1.6"], "the remote one stands by");

    // The local deployment goes: the remote backend takes over.
    let t = table(
        &mut core,
        [Input::BackendsUpsert {
            key: "default/rebel-base".into(),
            backends: backends(&[]),
        }],
    )
    .unwrap();
    assert_eq!(addrs(&t.active), ["10.2.1.6"]);
    // It comes back: preferred again.
    let t = table(
        &mut core,
        [Input::BackendsUpsert {
            key: "default/rebel-base".into(),
            backends: backends(&["10.1.1.7"]),
        }],
    )
    .unwrap();
    assert_eq!(addrs(&t.active), ["10.1.1.7"]);
    assert_eq!(addrs(&t.inactive), ["10.2.1.6"]);
}

#[test]
fn affinity_remote_prefers_the_other_clusters() {
    let mut core = setup(Some("remote"));
    let t = core.take_output().services.unwrap()[&frontend()].clone();
    assert_eq!(addrs(&t.active), ["10.2.1.6"]);
    assert_eq!(addrs(&t.inactive), ["10.1.1.5"]);
    // c2 withdraws its service: local backends take over.
    let t = table(
        &mut core,
        [remote(
            "c2",
            RemoteEvent::ServiceDelete("default/rebel-base".into()),
        )],
    )
    .unwrap();
    assert_eq!(addrs(&t.active), ["10.1.1.5"]);
}

#[test]
fn an_unreachable_cluster_takes_no_new_connections_and_returns() {
    let mut core = setup(Some("remote"));
    core.take_output();
    // c2 dies: its backend keeps its connections only, the local one takes new ones even
    // though the affinity prefers c2.
    let t = table(&mut core, [mesh(&[])]).unwrap();
    assert_eq!(addrs(&t.active), ["10.1.1.5"]);
    assert_eq!(addrs(&t.inactive), ["10.2.1.6"]);
    let t = table(&mut core, [mesh(&["c2"])]).unwrap();
    assert_eq!(addrs(&t.active), ["10.2.1.6"], "back when c2 is");
}

#[test]
fn unshared_remote_services_are_not_used() {
    let mut core = setup(None);
    core.take_output();
    let t = table(
        &mut core,
        [remote(
            "c2",
            RemoteEvent::ServiceUpsert(cluster_service("c2", "rebel-base", false, &["10.2.1.6"])),
        )],
    )
    .unwrap();
    assert_eq!(addrs(&t.active), ["10.1.1.5"]);
    assert!(t.inactive.is_empty());
}

#[test]
fn a_restarted_agent_waits_for_its_remotes_or_the_grace_time() {
    let mut core = core(RoutingMode::Tunnel);
    core.step_all([
        Input::ServicesSynced,
        Input::BackendsSynced,
        Input::MeshStatus {
            reachable: BTreeSet::new(),
            all_ready: false,
        },
    ]);
    assert_eq!(core.take_output().services, None, "remotes not synced yet");
    core.step(Input::ServiceGraceExpired);
    assert!(core.take_output().services.is_some());
    // Nothing changed since: nothing to program again.
    core.step(Input::ServiceGraceExpired);
    assert_eq!(core.take_output().services, None);
}

#[test]
fn recomputing_only_the_changed_services_gives_the_full_table() {
    let mut core = setup(Some("local"));
    let mut other = service(None);
    other.metadata.name = "other".into();
    other.spec.cluster_ip = Some("10.11.0.6".into());
    let steps = vec![
        vec![Input::ServiceUpsert {
            key: "default/other".into(),
            service: Box::new(other),
        }],
        vec![Input::BackendsUpsert {
            key: "default/other".into(),
            backends: backends(&["10.1.1.9"]),
        }],
        vec![remote(
            "c2",
            RemoteEvent::ServiceUpsert(cluster_service("c2", "other", true, &["10.2.1.9"])),
        )],
        vec![mesh(&[])],
        vec![Input::BackendsDelete("default/rebel-base".into())],
        vec![Input::ServiceDelete("default/other".into())],
        vec![mesh(&["c2"])],
    ];
    for inputs in steps {
        let incremental = run(&mut core, inputs).services.unwrap();
        assert_eq!(incremental, core.services().desired());
    }
}
