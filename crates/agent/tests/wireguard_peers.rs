//! WireGuard peers from the nodes the core knows: every other node with a key, of this cluster
//! and of remote ones; the node's /32 in tunnel mode, its pod CIDR in native mode; a remote's
//! peers stay across a reconnect and go only once it has synced again (or is drained); native
//! routes go into the device for nodes with a key (every node in strict mode).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plexus_agent::core::{Input, RouteChange, WireguardPeers};
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::{Encryption, RoutingMode};

// Keys as `wg genkey | wg pubkey` prints them (any 32 bytes in base64 will do).
const K_N1: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
const K_N2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const K_M1: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
const K_M2: &str = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=";

const WIREGUARD: Encryption = Encryption {
    enabled: true,
    strict: true,
};

/// The peers as `(key, cluster/node, endpoint, allowed IPs)`.
fn summary(peers: &WireguardPeers) -> Vec<(String, String, String, Vec<String>)> {
    peers
        .values()
        .map(|p| {
            (
                p.public_key.to_string(),
                format!("{}/{}", p.cluster, p.node),
                p.endpoint.to_string(),
                p.allowed_ips.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

fn peer(key: &str, node: &str, ip: &str, allowed: &str) -> (String, String, String, Vec<String>) {
    (
        key.into(),
        node.into(),
        format!("{ip}:51871"),
        vec![allowed.into()],
    )
}

fn mesh_inputs() -> Vec<Input> {
    vec![
        Input::NodeUpsert(with_key(
            node("c1", 1, "n1", "192.168.1.1", "10.1.1.0"),
            K_N1,
        )),
        Input::NodeUpsert(with_key(
            node("c1", 1, "n2", "192.168.1.2", "10.1.2.0"),
            K_N2,
        )),
        // A node of this cluster without a key (yet): no peer.
        Input::NodeUpsert(node("c1", 1, "n3", "192.168.1.3", "10.1.3.0")),
        remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
        remote(
            "c2",
            RemoteEvent::NodeUpsert(with_key(
                node("c2", 2, "m1", "192.168.2.1", "10.2.1.0"),
                K_M1,
            )),
        ),
        remote(
            "c2",
            RemoteEvent::NodeUpsert(with_key(
                node("c2", 2, "m2", "192.168.2.2", "10.2.2.0"),
                K_M2,
            )),
        ),
        remote("c2", RemoteEvent::Synced),
    ]
}

#[test]
fn every_other_node_with_a_key_is_a_peer_by_its_underlay_address_in_tunnel_mode() {
    let mut core = core_with(RoutingMode::Tunnel, WIREGUARD);
    let out = run(&mut core, mesh_inputs());
    let peers = out.wireguard_peers.expect("the peers are output");
    let mut want = vec![
        peer(K_N2, "c1/n2", "192.168.1.2", "192.168.1.2/32"),
        peer(K_M1, "c2/m1", "192.168.2.1", "192.168.2.1/32"),
        peer(K_M2, "c2/m2", "192.168.2.2", "192.168.2.2/32"),
    ];
    want.sort();
    assert_eq!(summary(&peers), want, "not n1 (this node), not n3 (no key)");
    assert!(out.routes.is_empty(), "tunnel mode routes nothing");
    // The DNS proxy's forward routes go via underlay addresses, never into WireGuard.
    assert!(
        !out.proxy_routes.is_empty()
            && out
                .proxy_routes
                .iter()
                .all(|r| matches!(r, plexus_agent::core::RouteChange::Upsert { .. })),
        "{:?}",
        out.proxy_routes
    );
    // Nothing about nodes changed: no peer output.
    let out = run(&mut core, [Input::ServicesSynced]);
    assert_eq!(out.wireguard_peers, None);
}

#[test]
fn native_mode_peers_carry_the_nodes_pod_cidrs_and_routes_go_into_the_device() {
    let mut core = core_with(RoutingMode::Native, WIREGUARD);
    let out = run(&mut core, mesh_inputs());
    let mut want = vec![
        peer(K_N2, "c1/n2", "192.168.1.2", "10.1.2.0/24"),
        peer(K_M1, "c2/m1", "192.168.2.1", "10.2.1.0/24"),
        peer(K_M2, "c2/m2", "192.168.2.2", "10.2.2.0/24"),
    ];
    want.sort();
    assert_eq!(summary(&out.wireguard_peers.unwrap()), want);
    // Strict mode: every node's pod CIDR goes into the device, n3's too (it has no peer, so
    // nothing reaches it in the clear before its key is known).
    let encrypted = |p: &str| RouteChange::Encrypted { dst: prefix(p) };
    assert_eq!(
        out.routes,
        vec![
            encrypted("10.1.2.0/24"),
            encrypted("10.1.3.0/24"),
            encrypted("10.2.1.0/24"),
            encrypted("10.2.2.0/24"),
        ]
    );
    // The DNS proxy's forwarded queries leave the node as its own traffic, via the underlay:
    // the other node's WireGuard would drop this node's address coming out of the tunnel.
    assert_eq!(out.proxy_routes.len(), 4, "{:?}", out.proxy_routes);
    assert!(
        out.proxy_routes
            .iter()
            .all(|r| matches!(r, RouteChange::Upsert { .. }))
    );
}

#[test]
fn without_strict_mode_a_node_without_a_key_is_routed_in_the_clear_until_it_has_one() {
    let mut core = core_with(
        RoutingMode::Native,
        Encryption {
            enabled: true,
            strict: false,
        },
    );
    let out = run(
        &mut core,
        [
            Input::NodeUpsert(with_key(
                node("c1", 1, "n1", "192.168.1.1", "10.1.1.0"),
                K_N1,
            )),
            Input::NodeUpsert(node("c1", 1, "n3", "192.168.1.3", "10.1.3.0")),
        ],
    );
    assert_eq!(
        out.routes,
        vec![RouteChange::Upsert {
            dst: prefix("10.1.3.0/24"),
            via: "192.168.1.3".parse().unwrap()
        }]
    );
    assert!(out.wireguard_peers.unwrap().is_empty());
    // n3 publishes its key: its CIDR moves into the device and it becomes a peer.
    let out = run(
        &mut core,
        [Input::NodeUpsert(with_key(
            node("c1", 1, "n3", "192.168.1.3", "10.1.3.0"),
            K_N2,
        ))],
    );
    assert_eq!(
        out.routes,
        vec![RouteChange::Encrypted {
            dst: prefix("10.1.3.0/24")
        }]
    );
    assert_eq!(
        summary(&out.wireguard_peers.unwrap()),
        vec![peer(K_N2, "c1/n3", "192.168.1.3", "10.1.3.0/24")]
    );
}

#[test]
fn without_wireguard_there_are_no_peers_and_routes_go_via_the_nodes() {
    let mut core = core(RoutingMode::Native);
    let out = run(&mut core, mesh_inputs());
    assert_eq!(out.wireguard_peers, None);
    assert!(
        out.routes
            .iter()
            .all(|r| matches!(r, RouteChange::Upsert { .. }))
    );
}

#[test]
fn a_remote_keeps_its_peers_across_a_reconnect_until_it_synced_again() {
    let mut core = core_with(RoutingMode::Tunnel, WIREGUARD);
    let first = run(&mut core, mesh_inputs()).wireguard_peers.unwrap();
    assert_eq!(first.len(), 3);

    // c2 becomes unreachable: nothing is withdrawn.
    let out = run(
        &mut core,
        [Input::MeshStatus {
            reachable: Default::default(),
            all_ready: false,
        }],
    );
    assert_eq!(out.wireguard_peers, None);
    assert_eq!(core.wireguard_peers(), first);

    // It is back and lists again: m1 unchanged (nothing to do), m2 gone meanwhile is drained
    // once the listing is complete, and only then does its peer go.
    let out = run(
        &mut core,
        [
            Input::MeshStatus {
                reachable: ["c2".to_string()].into(),
                all_ready: false,
            },
            remote(
                "c2",
                RemoteEvent::NodeUpsert(with_key(
                    node("c2", 2, "m1", "192.168.2.1", "10.2.1.0"),
                    K_M1,
                )),
            ),
        ],
    );
    assert_eq!(
        out.wireguard_peers.as_ref(),
        Some(&first),
        "the same peers: no change to the device"
    );
    let out = run(
        &mut core,
        [remote("c2", RemoteEvent::NodeDelete("m2".into()))],
    );
    let mut want = vec![
        peer(K_N2, "c1/n2", "192.168.1.2", "192.168.1.2/32"),
        peer(K_M1, "c2/m1", "192.168.2.1", "192.168.2.1/32"),
    ];
    want.sort();
    assert_eq!(summary(&out.wireguard_peers.unwrap()), want);

    // The remote's configuration is removed: all its peers go.
    let out = run(&mut core, [remote("c2", RemoteEvent::Drained)]);
    assert_eq!(
        summary(&out.wireguard_peers.unwrap()),
        vec![peer(K_N2, "c1/n2", "192.168.1.2", "192.168.1.2/32")]
    );
}

#[test]
fn a_rotated_key_replaces_the_peer_and_bad_or_shared_keys_make_no_second_peer() {
    let mut core = core_with(RoutingMode::Tunnel, WIREGUARD);
    run(&mut core, mesh_inputs());
    let out = run(
        &mut core,
        [
            // n2 rotated its key.
            Input::NodeUpsert(with_key(
                node("c1", 1, "n2", "192.168.1.2", "10.1.2.0"),
                "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=",
            )),
            // m2 publishes something that is not a key: no peer.
            remote(
                "c2",
                RemoteEvent::NodeUpsert(with_key(
                    node("c2", 2, "m2", "192.168.2.2", "10.2.2.0"),
                    "not-a-key",
                )),
            ),
            // n3 publishes m1's key: m1 (first by cluster, node) keeps it.
            Input::NodeUpsert(with_key(
                node("c1", 1, "n3", "192.168.1.3", "10.1.3.0"),
                K_M1,
            )),
        ],
    );
    let mut want = vec![
        peer(
            "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28=",
            "c1/n2",
            "192.168.1.2",
            "192.168.1.2/32",
        ),
        peer(K_M1, "c1/n3", "192.168.1.3", "192.168.1.3/32"),
    ];
    want.sort();
    // (c1, n3) sorts before (c2, m1): the key goes to n3.
    assert_eq!(summary(&out.wireguard_peers.unwrap()), want);
}

/// Which clusters' peers may go when not wanted: a restarted agent's device keeps the peers of
/// a cluster until the core has listed that cluster's nodes (or the remote was drained).
#[test]
fn clusters_settle_once_their_nodes_are_listed_or_they_are_drained() {
    let mut core = core_with(RoutingMode::Tunnel, WIREGUARD);
    let settled = |core: &plexus_agent::core::NodeCore| -> Vec<String> {
        core.settled_clusters().into_iter().collect()
    };
    // At start the core knows only this node: nothing is settled, yet the peers are output
    // (empty), and must not be taken as "remove everything".
    let out = run(
        &mut core,
        [Input::NodeUpsert(with_key(
            node("c1", 1, "n1", "192.168.1.1", "10.1.1.0"),
            K_N1,
        ))],
    );
    assert_eq!(out.wireguard_peers, Some(Default::default()));
    assert!(settled(&core).is_empty());
    let out = run(&mut core, [Input::NodesSynced]);
    assert!(
        out.wireguard_peers.is_some(),
        "settling is news for the device"
    );
    assert_eq!(settled(&core), vec!["c1"]);
    run(
        &mut core,
        [
            remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
            remote("c3", RemoteEvent::ClusterConfig { cluster_id: 3 }),
        ],
    );
    assert_eq!(settled(&core), vec!["c1"]);
    let out = run(&mut core, [remote("c2", RemoteEvent::Synced)]);
    assert!(out.wireguard_peers.is_some());
    assert_eq!(settled(&core), vec!["c1", "c2"]);
    run(&mut core, [remote("c3", RemoteEvent::Drained)]);
    assert_eq!(settled(&core), vec!["c1", "c2", "c3"]);
    // Configured again: c3 settles once it has synced.
    run(
        &mut core,
        [remote("c3", RemoteEvent::ClusterConfig { cluster_id: 3 })],
    );
    assert_eq!(settled(&core), vec!["c1", "c2"]);
}
