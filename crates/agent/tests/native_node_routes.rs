//! Native routing: every other node's pod CIDR, in this cluster and the remote ones, is routed
//! through that node's underlay address; routes follow the nodes as they come, change and go.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plexus_agent::core::{Input, RouteChange};
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::RoutingMode;

fn upsert(dst: &str, via: &str) -> RouteChange {
    RouteChange::Upsert {
        dst: prefix(dst),
        via: via.parse().unwrap(),
    }
}

#[test]
fn routes_follow_nodes_of_every_cluster() {
    let mut core = core(RoutingMode::Native);
    let out = run(
        &mut core,
        [
            Input::NodeUpsert(node("c1", 1, "n1", "192.168.1.1", "10.1.1.0")),
            Input::NodeUpsert(node("c1", 1, "n2", "192.168.1.2", "10.1.2.0")),
            remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
            remote(
                "c2",
                RemoteEvent::NodeUpsert(node("c2", 2, "m1", "192.168.2.1", "10.2.1.0")),
            ),
        ],
    );
    assert_eq!(
        out.routes,
        vec![
            upsert("10.1.2.0/24", "192.168.1.2"),
            upsert("10.2.1.0/24", "192.168.2.1")
        ],
        "none to our own pod CIDR"
    );
    // The same node again: nothing to do.
    let out = run(
        &mut core,
        [Input::NodeUpsert(node(
            "c1",
            1,
            "n2",
            "192.168.1.2",
            "10.1.2.0",
        ))],
    );
    assert!(out.routes.is_empty());
    // A node moves to another address, another gets a new CIDR.
    let out = run(
        &mut core,
        [
            Input::NodeUpsert(node("c1", 1, "n2", "192.168.1.9", "10.1.2.0")),
            remote(
                "c2",
                RemoteEvent::NodeUpsert(node("c2", 2, "m1", "192.168.2.1", "10.2.9.0")),
            ),
        ],
    );
    assert_eq!(
        out.routes,
        vec![
            upsert("10.1.2.0/24", "192.168.1.9"),
            RouteChange::Delete(prefix("10.2.1.0/24")),
            upsert("10.2.9.0/24", "192.168.2.1"),
        ]
    );
    let out = run(
        &mut core,
        [
            Input::NodeDelete("n2".into()),
            remote("c2", RemoteEvent::NodeDelete("m1".into())),
        ],
    );
    assert_eq!(
        out.routes,
        vec![
            RouteChange::Delete(prefix("10.1.2.0/24")),
            RouteChange::Delete(prefix("10.2.9.0/24"))
        ]
    );
    assert!(core.ipcache().routes().is_empty());
}

#[test]
fn tunnel_mode_routes_nothing() {
    let mut core = core(RoutingMode::Tunnel);
    let out = run(
        &mut core,
        [Input::NodeUpsert(node(
            "c1",
            1,
            "n2",
            "192.168.1.2",
            "10.1.2.0",
        ))],
    );
    assert!(out.routes.is_empty());
    assert!(!out.ipcache.is_empty());
    // The DNS proxy's forward routes exist in every mode: its queries from the node reach
    // other nodes' pods through their underlay addresses.
    assert_eq!(
        out.proxy_routes,
        vec![RouteChange::Upsert {
            dst: prefix("10.1.2.0/24"),
            via: "192.168.1.2".parse().unwrap()
        }]
    );
    let out = run(&mut core, [Input::NodeDelete("n2".into())]);
    assert_eq!(
        out.proxy_routes,
        vec![RouteChange::Delete(prefix("10.1.2.0/24"))]
    );
}
