//! Which source wins an ipcache prefix: this node's endpoint > this cluster's kvstore > a
//! node's pod CIDR > a remote cluster > a CIDR a policy names. Withdrawing the winner uncovers
//! the next one without a gap.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plexus_agent::core::Input;
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::RoutingMode;

#[test]
fn the_strongest_source_wins_and_withdrawing_it_uncovers_the_next() {
    let mut core = core(RoutingMode::Tunnel);
    let p = "10.1.2.5/32";
    run(
        &mut core,
        [
            remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
            // The remote node that owns the address (no node of ours claims its CIDR).
            remote(
                "c2",
                RemoteEvent::NodeUpsert(node("c2", 2, "m1", "192.168.2.1", "10.1.2.0")),
            ),
            remote(
                "c2",
                RemoteEvent::IpUpsert(pair("10.1.2.5", "192.168.2.1", 131_073).into()),
            ),
        ],
    );
    assert_eq!(core.desired_ipcache()[&prefix(p)].identity, 131_073);

    // Another node of our cluster announces the same address: ours wins over the remote's.
    let out = run(
        &mut core,
        [Input::IpUpsert {
            key: "10.1.2.5".into(),
            pair: pair("10.1.2.5", "192.168.1.2", 300),
        }],
    );
    assert_eq!(
        ipcache_changes(&out),
        vec![(p.to_string(), Some(value(300, Some("192.168.1.2"), 1)))]
    );

    // This node's own endpoint wins over both.
    let out = run(
        &mut core,
        [Input::EndpointUpsert(endpoint(7, "10.1.2.5", 301))],
    );
    assert_eq!(
        ipcache_changes(&out),
        vec![(p.to_string(), Some(value(301, None, 1)))]
    );
    // A weaker source changing underneath changes nothing in the datapath.
    let out = run(
        &mut core,
        [remote(
            "c2",
            RemoteEvent::IpUpsert(pair("10.1.2.5", "192.168.2.1", 131_074).into()),
        )],
    );
    assert!(out.ipcache.is_empty());

    // Withdrawn one by one, each uncovers the next.
    let out = run(&mut core, [Input::EndpointDelete(7)]);
    assert_eq!(
        ipcache_changes(&out),
        vec![(p.to_string(), Some(value(300, Some("192.168.1.2"), 1)))]
    );
    let out = run(&mut core, [Input::IpDelete("10.1.2.5".into())]);
    assert_eq!(
        ipcache_changes(&out),
        vec![(p.to_string(), Some(value(131_074, Some("192.168.2.1"), 2)))]
    );
    let out = run(
        &mut core,
        [remote("c2", RemoteEvent::IpDelete("10.1.2.5".into()))],
    );
    assert_eq!(ipcache_changes(&out), vec![(p.to_string(), None)]);
}

#[test]
fn this_nodes_own_entries_from_the_kvstore_are_left_to_the_endpoint_manager() {
    let mut core = core(RoutingMode::Tunnel);
    let out = run(
        &mut core,
        [Input::IpUpsert {
            key: "10.1.1.5".into(),
            pair: pair("10.1.1.5", "192.168.1.1", 300),
        }],
    );
    assert!(
        out.ipcache.is_empty(),
        "installed by the endpoint manager, not twice"
    );
}

#[test]
fn nodes_contribute_their_address_and_pod_cidr_under_their_pods() {
    let mut core = core(RoutingMode::Tunnel);
    run(
        &mut core,
        [
            Input::NodeUpsert(node("c1", 1, "n1", "192.168.1.1", "10.1.1.0")),
            Input::NodeUpsert(node("c1", 1, "n2", "192.168.1.2", "10.1.2.0")),
            Input::IpUpsert {
                key: "10.1.2.5".into(),
                pair: pair("10.1.2.5", "192.168.1.2", 300),
            },
        ],
    );
    let d = core.desired_ipcache();
    assert_eq!(
        d[&prefix("192.168.1.1/32")].identity,
        1,
        "this node is host"
    );
    assert_eq!(
        d[&prefix("192.168.1.2/32")].identity,
        6,
        "another node is remote-node"
    );
    assert_eq!(
        d[&prefix("10.1.2.0/24")],
        value(2, Some("192.168.1.2"), 1),
        "the pod CIDR is world behind its node"
    );
    assert_eq!(
        d[&prefix("10.1.2.5/32")].identity,
        300,
        "the pod's own entry is more specific"
    );
    assert!(
        !d.contains_key(&prefix("10.1.1.0/24")),
        "no entry for our own pod CIDR"
    );
}
