//! A remote cluster that reconnects with changed content: its watches list again and drain
//! what vanished. Stale entries are removed, changed ones replaced in place, and unchanged
//! ones never withdrawn (not even for a moment) nor written again.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::RoutingMode;

fn initial() -> Vec<plexus_agent::core::Input> {
    vec![
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
            "c2",
            RemoteEvent::IpUpsert(pair("10.2.1.6", "192.168.2.1", 131_074).into()),
        ),
        remote(
            "c2",
            RemoteEvent::IpUpsert(pair("10.2.1.7", "192.168.2.1", 131_075).into()),
        ),
        remote("c2", RemoteEvent::Synced),
    ]
}

#[test]
fn a_reconnect_removes_stale_entries_and_never_withdraws_unchanged_ones() {
    let mut core = core(RoutingMode::Tunnel);
    let first = run(&mut core, initial());
    assert_eq!(
        first.ipcache.len(),
        5,
        "node address, pod CIDR and three pods"
    );

    // The connection drops: nothing changes while the remote is away.
    let lost = run(
        &mut core,
        [plexus_agent::core::Input::MeshStatus {
            reachable: Default::default(),
            all_ready: false,
        }],
    );
    assert!(
        lost.ipcache.is_empty(),
        "state is kept while a remote is unreachable"
    );

    // It comes back and lists again: .5 unchanged, .6 changed identity, .8 new; then the
    // watch drains .7, which vanished while we were away.
    let back = run(
        &mut core,
        [
            remote(
                "c2",
                RemoteEvent::NodeUpsert(node("c2", 2, "m1", "192.168.2.1", "10.2.1.0")),
            ),
            remote(
                "c2",
                RemoteEvent::IpUpsert(pair("10.2.1.5", "192.168.2.1", 131_073).into()),
            ),
            remote(
                "c2",
                RemoteEvent::IpUpsert(pair("10.2.1.6", "192.168.2.1", 131_099).into()),
            ),
            remote(
                "c2",
                RemoteEvent::IpUpsert(pair("10.2.1.8", "192.168.2.1", 131_076).into()),
            ),
            remote("c2", RemoteEvent::IpDelete("10.2.1.7".into())),
            remote("c2", RemoteEvent::Synced),
        ],
    );
    assert_eq!(
        ipcache_changes(&back),
        vec![
            (
                "10.2.1.6/32".to_string(),
                Some(value(131_099, Some("192.168.2.1"), 2))
            ),
            (
                "10.2.1.8/32".to_string(),
                Some(value(131_076, Some("192.168.2.1"), 2))
            ),
            ("10.2.1.7/32".to_string(), None),
        ],
        "only what changed reaches the datapath"
    );
    let desired = core.desired_ipcache();
    assert_eq!(
        desired.get(&prefix("10.2.1.5/32")),
        Some(&value(131_073, Some("192.168.2.1"), 2))
    );
    assert!(!desired.contains_key(&prefix("10.2.1.7/32")));
}

#[test]
fn a_remote_pod_moving_to_another_node_is_replaced_in_place() {
    let mut core = core(RoutingMode::Tunnel);
    run(&mut core, initial());
    let moved = run(
        &mut core,
        [
            remote(
                "c2",
                RemoteEvent::NodeUpsert(node("c2", 2, "m2", "192.168.2.2", "10.2.2.0")),
            ),
            remote(
                "c2",
                RemoteEvent::IpUpsert(pair("10.2.1.5", "192.168.2.2", 131_073).into()),
            ),
        ],
    );
    assert!(
        !ipcache_changes(&moved)
            .iter()
            .any(|(p, v)| p == "10.2.1.5/32" && v.is_none()),
        "never withdrawn on the way"
    );
    assert_eq!(
        core.desired_ipcache().get(&prefix("10.2.1.5/32")),
        Some(&value(131_073, Some("192.168.2.2"), 2))
    );
}

#[test]
fn a_drained_remote_leaves_nothing_behind() {
    let mut core = core(RoutingMode::Native);
    run(&mut core, initial());
    run(
        &mut core,
        [remote(
            "c2",
            remote_identity(131_073, "k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c2"),
        )],
    );
    let drained = run(&mut core, [remote("c2", RemoteEvent::Drained)]);
    assert_eq!(
        drained.ipcache.len(),
        5,
        "every entry it contributed is deleted"
    );
    assert!(
        drained
            .ipcache
            .iter()
            .all(|c| matches!(c, plexus_ipcache::Change::Delete(_)))
    );
    assert_eq!(
        drained.routes,
        vec![plexus_agent::core::RouteChange::Delete(prefix(
            "10.2.1.0/24"
        ))]
    );
    assert!(core.desired_ipcache().is_empty());
    assert!(core.policy().identities().is_empty());
    assert!(core.remotes().is_empty());
    assert!(core.ipcache().nodes().is_empty());
}

#[test]
fn a_drained_remote_leaves_nothing_held() {
    let mut core = core(RoutingMode::Tunnel);
    let before = core.desired_ipcache();
    let mut inputs = initial();
    // Pods of two namespaces: the names are held once each, and only while an entry names them.
    for (i, ns) in ["shop", "shop", "blog"].into_iter().enumerate() {
        let mut p = pair(&format!("10.2.1.{}", 20 + i), "192.168.2.1", 131_080);
        p.k8s_namespace = ns.into();
        p.k8s_pod_name = format!("web-{i}");
        inputs.push(remote("c2", RemoteEvent::IpUpsert(p.into())));
    }
    run(&mut core, inputs);
    assert_eq!(
        core.ipcache().keyed_len(),
        (6, 3),
        "six entries, three namespaces (default, shop, blog)"
    );
    assert_eq!(core.ipcache().pods().count(), 6);

    run(&mut core, [remote("c2", RemoteEvent::Drained)]);
    assert_eq!(core.ipcache().keyed_len(), (0, 0));
    assert_eq!(core.ipcache().pods().count(), 0);
    assert!(core.ipcache().node_names("c2").is_empty());
    assert!(core.remotes().is_empty());
    assert_eq!(core.desired_ipcache(), before);
}
