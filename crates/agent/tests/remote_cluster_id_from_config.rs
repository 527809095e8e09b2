//! The cluster id of a remote's entries comes from that remote's cluster config, never from
//! the order in which its entries and nodes arrive.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::RoutingMode;

#[test]
fn ipcache_entries_before_any_node_carry_the_configured_cluster_id() {
    let mut core = core(RoutingMode::Tunnel);
    // A remote in Cilium's format whose ipcache entries arrive before its nodes.
    let out = run(
        &mut core,
        [
            remote("c7", RemoteEvent::ClusterConfig { cluster_id: 7 }),
            remote(
                "c7",
                RemoteEvent::IpUpsert(pair("10.7.1.5", "192.168.7.1", 458_753).into()),
            ),
            remote(
                "c7",
                RemoteEvent::IpUpsert(pair("10.7.1.6", "192.168.7.1", 458_754).into()),
            ),
            remote(
                "c7",
                RemoteEvent::NodeUpsert(node("c7", 7, "m1", "192.168.7.1", "10.7.1.0")),
            ),
        ],
    );
    let changes = ipcache_changes(&out);
    assert_eq!(changes.len(), 4);
    assert!(
        changes.iter().all(|(_, v)| v.unwrap().cluster_id == 7),
        "every entry carries id 7: {changes:?}"
    );
}

#[test]
fn entries_that_came_before_the_config_are_stamped_when_it_comes() {
    let mut core = core(RoutingMode::Tunnel);
    run(
        &mut core,
        [
            // The entry's owner (the guard passes on only entries a remote node owns).
            remote(
                "c7",
                RemoteEvent::NodeUpsert(node("c7", 7, "m1", "192.168.7.1", "10.7.1.0")),
            ),
            remote(
                "c7",
                RemoteEvent::IpUpsert(pair("10.7.1.5", "192.168.7.1", 458_753).into()),
            ),
        ],
    );
    let out = run(
        &mut core,
        [remote("c7", RemoteEvent::ClusterConfig { cluster_id: 7 })],
    );
    let changes = ipcache_changes(&out);
    assert!(
        changes.contains(&(
            "10.7.1.5/32".to_string(),
            Some(value(458_753, Some("192.168.7.1"), 7))
        )),
        "{changes:?}"
    );
    assert!(
        changes.iter().all(|(_, v)| v.unwrap().cluster_id == 7),
        "{changes:?}"
    );
    assert_eq!(core.remotes()["c7"].cluster_id, Some(7));
}

#[test]
fn two_remotes_keep_their_own_ids_whatever_the_order() {
    let mut core = core(RoutingMode::Tunnel);
    run(
        &mut core,
        [
            remote("c3", RemoteEvent::ClusterConfig { cluster_id: 3 }),
            remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
            remote(
                "c2",
                RemoteEvent::NodeUpsert(node("c2", 2, "m1", "192.168.2.1", "10.2.1.0")),
            ),
            remote(
                "c2",
                RemoteEvent::IpUpsert(pair("10.2.1.5", "192.168.2.1", 131_073).into()),
            ),
            remote(
                "c3",
                RemoteEvent::IpUpsert(pair("10.3.1.5", "192.168.3.1", 196_609).into()),
            ),
            remote(
                "c3",
                RemoteEvent::NodeUpsert(node("c3", 3, "m1", "192.168.3.1", "10.3.1.0")),
            ),
        ],
    );
    let desired = core.desired_ipcache();
    assert_eq!(desired[&prefix("10.2.1.5/32")].cluster_id, 2);
    assert_eq!(desired[&prefix("10.3.1.5/32")].cluster_id, 3);
    assert_eq!(desired[&prefix("10.3.1.0/24")].cluster_id, 3);
}
