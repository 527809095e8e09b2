#![allow(clippy::unwrap_used)]
//! The programs run on synthetic packets with `BPF_PROG_TEST_RUN`, against live maps in a
//! private bpffs. Nothing is attached to any device.

mod common;

use std::{net::Ipv4Addr, time::Duration};

use plexus_datapath::{
    Datapath, Direction, DropReason, EbpfDatapath, Encryption, Endpoint, EventKind, IDENTITY_WORLD,
    IpcacheValue, MonitorEvent, NodeConfig, ObservationPoint, Prefix, RoutingMode,
    ebpf::verdict,
    object::{PROG_FROM_CONTAINER, PROG_FROM_OVERLAY, PROG_TO_CONTAINER},
};
use tokio::sync::broadcast;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 1);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 7);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 9);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 60, 2, 9);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const A_POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x07];
const A_HOST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 1, 0x07];
const B_POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x09];
const B_HOST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 1, 0x09];
/// Source endpoints sit on ifindex 1: test runs see packets arrive on loopback.
const LO: u32 = 1;
const B_IFINDEX: u32 = 4242;
const MARK_MAGIC: u32 = 0xA500_0000;

struct Fixture {
    dp: EbpfDatapath,
    events: broadcast::Receiver<MonitorEvent>,
    _fs: common::Bpffs,
}

fn fixture(routing: RoutingMode) -> Fixture {
    fixture_with(routing, Encryption::DISABLED)
}

fn fixture_with(routing: RoutingMode, encryption: Encryption) -> Fixture {
    let fs = common::Bpffs::new();
    let config = NodeConfig {
        node_ip: Ipv4Addr::new(192, 168, 77, 1),
        routing,
        gateway_ip: GATEWAY,
        cluster_id: 1,
        tunnel_ifname: "unused".into(),
        pin_dir: fs.path().join("node"),
        encryption,
    };
    let dp = EbpfDatapath::load_unattached(config, 77).unwrap();
    dp.upsert_endpoint(&Endpoint {
        id: 3833,
        ipv4: POD_A,
        host_ifname: "lo".into(),
        host_ifindex: LO,
        pod_mac: A_POD_MAC,
        host_mac: A_HOST_MAC,
        identity: 38354,
    })
    .unwrap();
    dp.upsert_endpoint(&Endpoint {
        id: 201,
        ipv4: POD_B,
        host_ifname: "lxcb".into(),
        host_ifindex: B_IFINDEX,
        pod_mac: B_POD_MAC,
        host_mac: B_HOST_MAC,
        identity: 6587,
    })
    .unwrap();
    dp.upsert_ipcache(
        "10.60.2.0/24".parse().unwrap(),
        IpcacheValue {
            identity: 6_587_186,
            tunnel_endpoint: Some(REMOTE_NODE),
            cluster_id: 2,
        },
    )
    .unwrap();
    let events = dp.subscribe();
    Fixture {
        dp,
        events,
        _fs: fs,
    }
}

#[tokio::test]
async fn arp_for_the_gateway_is_answered_with_the_host_mac() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture(RoutingMode::Tunnel);
        let req = common::arp_request(A_POD_MAC, POD_A, GATEWAY);
        let out = f.dp.test_run(PROG_FROM_CONTAINER, &req, 0).unwrap();
        assert_eq!(out.verdict, verdict::REDIRECT);
        let r = &out.frame;
        assert_eq!(&r[0..6], &A_POD_MAC, "ethernet destination = requester");
        assert_eq!(&r[6..12], &A_HOST_MAC, "ethernet source = host veth");
        assert_eq!(&r[12..14], &[0x08, 0x06]);
        assert_eq!(&r[20..22], &[0, 2], "opcode reply");
        assert_eq!(&r[22..28], &A_HOST_MAC, "sender MAC = host MAC");
        assert_eq!(&r[28..32], &GATEWAY.octets(), "sender IP = gateway");
        assert_eq!(&r[32..38], &A_POD_MAC, "target MAC = requester");
        assert_eq!(&r[38..42], &POD_A.octets(), "target IP = requester");

        // Anything but the gateway is not answered.
        let other = common::arp_request(A_POD_MAC, POD_A, Ipv4Addr::new(10, 60, 1, 99));
        let out = f.dp.test_run(PROG_FROM_CONTAINER, &other, 0).unwrap();
        assert_eq!(out.verdict, verdict::SHOT);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn local_delivery_redirects_with_rewritten_macs_and_identity_mark() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture(RoutingMode::Tunnel);
        let pkt = common::tcp_frame(A_POD_MAC, A_HOST_MAC, POD_A, POD_B, 42728, 6379, 0x02);
        let out = f.dp.test_run(PROG_FROM_CONTAINER, &pkt, 0).unwrap();
        assert_eq!(out.verdict, verdict::REDIRECT);
        assert_eq!(&out.frame[0..6], &B_POD_MAC);
        assert_eq!(&out.frame[6..12], &B_HOST_MAC);
        assert_eq!(&out.frame[12..], &pkt[12..], "only the MACs change");
        assert_eq!(out.mark, MARK_MAGIC | 38354);

        let ev = common::next_event(&mut f.events).await;
        assert_eq!(ev.kind, EventKind::Trace(ObservationPoint::FromEndpoint));
        assert_eq!(
            (ev.endpoint_id, ev.src_identity, ev.dst_identity),
            (3833, 38354, 6587)
        );
        assert_ne!(ev.flow, 0, "the flow hash of the packet");
        assert_eq!(
            ev.to_string(),
            format!(
                "<- endpoint 3833 flow {:#x} , identity 38354->6587 state new: \
                 10.60.1.7:42728 -> 10.60.1.9:6379 tcp SYN",
                ev.flow
            )
        );

        // to_container takes the identity from the mark and clears it.
        let out =
            f.dp.test_run(PROG_TO_CONTAINER, &out.frame, out.mark)
                .unwrap();
        assert_eq!(out.verdict, verdict::OK);
        assert_eq!(out.mark, 0);
        let ev = common::next_event(&mut f.events).await;
        assert_eq!(ev.kind, EventKind::Trace(ObservationPoint::ToEndpoint));
        assert_eq!(
            (ev.endpoint_id, ev.src_identity, ev.dst_identity),
            (201, 38354, 6587)
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn to_container_without_mark_uses_ipcache_then_world() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture(RoutingMode::Native);
        // A bare ACK passes without a trace (monitor aggregation); the SYN after it is traced,
        // so the first event that arrives is the SYN's.
        let ack = common::tcp_frame(A_HOST_MAC, B_POD_MAC, REMOTE_POD, POD_B, 5000, 80, 0x10);
        let out = f.dp.test_run(PROG_TO_CONTAINER, &ack, 0).unwrap();
        assert_eq!(out.verdict, verdict::OK);
        let syn = common::tcp_frame(A_HOST_MAC, B_POD_MAC, REMOTE_POD, POD_B, 5000, 80, 0x02);
        let out = f.dp.test_run(PROG_TO_CONTAINER, &syn, 0).unwrap();
        assert_eq!(out.verdict, verdict::OK);
        let ev = common::next_event(&mut f.events).await;
        assert_eq!(ev.src_identity, 6_587_186);
        assert!(ev.to_string().ends_with("tcp SYN"), "{ev}");

        let from_world = common::tcp_frame(
            A_HOST_MAC,
            B_POD_MAC,
            Ipv4Addr::new(1, 1, 1, 1),
            POD_B,
            5000,
            80,
            0x02,
        );
        f.dp.test_run(PROG_TO_CONTAINER, &from_world, 0).unwrap();
        assert_eq!(
            common::next_event(&mut f.events).await.src_identity,
            IDENTITY_WORLD
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn unknown_source_is_dropped_with_an_event_and_counted() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture(RoutingMode::Tunnel);
        let stranger = Ipv4Addr::new(10, 60, 1, 66);
        let pkt = common::tcp_frame(A_POD_MAC, A_HOST_MAC, stranger, POD_B, 1, 2, 0x02);
        let out = f.dp.test_run(PROG_FROM_CONTAINER, &pkt, 0).unwrap();
        assert_eq!(out.verdict, verdict::SHOT);
        let ev = common::next_event(&mut f.events).await;
        assert_eq!(ev.kind, EventKind::Drop(DropReason::UnknownSource));
        assert_eq!((ev.saddr, ev.daddr), (stranger, POD_B));
        assert!(
            ev.to_string().starts_with(&format!(
                "xx drop (Unknown source endpoint) flow {:#x} to endpoint 0",
                ev.flow
            )),
            "{ev}"
        );

        // A known address sent from another endpoint's device is refused too.
        let spoofed = common::tcp_frame(B_POD_MAC, B_HOST_MAC, POD_B, POD_A, 1, 2, 0x02);
        let out = f.dp.test_run(PROG_FROM_CONTAINER, &spoofed, 0).unwrap();
        assert_eq!(out.verdict, verdict::SHOT);
        assert_eq!(
            common::next_event(&mut f.events).await.drop_reason(),
            Some(DropReason::SourceMismatch)
        );

        let m = f.dp.metrics().unwrap();
        let dropped = m
            .iter()
            .find(|m| m.drop_reason == Some(DropReason::UnknownSource))
            .unwrap();
        assert_eq!(dropped.direction, Direction::Egress);
        assert_eq!(dropped.packets, 1);
        assert_eq!(dropped.bytes, pkt.len() as u64);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn remote_prefix_is_tunnelled_or_routed() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let pkt = common::tcp_frame(A_POD_MAC, A_HOST_MAC, POD_A, REMOTE_POD, 42728, 6379, 0x02);

        let mut tunnel = fixture(RoutingMode::Tunnel);
        let out = tunnel.dp.test_run(PROG_FROM_CONTAINER, &pkt, 0).unwrap();
        assert_eq!(out.verdict, verdict::REDIRECT);
        let ev = common::next_event(&mut tunnel.events).await;
        assert_eq!((ev.src_identity, ev.dst_identity), (38354, 6_587_186));
        // Outside every prefix: handed to the stack as world.
        let outside = common::tcp_frame(
            A_POD_MAC,
            A_HOST_MAC,
            POD_A,
            Ipv4Addr::new(8, 8, 8, 8),
            1,
            53,
            0x02,
        );
        let out = tunnel
            .dp
            .test_run(PROG_FROM_CONTAINER, &outside, 0)
            .unwrap();
        assert_eq!(out.verdict, verdict::OK);
        assert_eq!(
            common::next_event(&mut tunnel.events).await.dst_identity,
            IDENTITY_WORLD
        );
        let forwarded = tunnel
            .dp
            .metrics()
            .unwrap()
            .into_iter()
            .find(|m| m.drop_reason.is_none() && m.direction == Direction::Egress)
            .unwrap();
        assert_eq!(forwarded.packets, 2);
        drop(tunnel);

        let native = fixture(RoutingMode::Native);
        let out = native.dp.test_run(PROG_FROM_CONTAINER, &pkt, 0).unwrap();
        assert_eq!(
            out.verdict,
            verdict::OK,
            "native routing leaves it to the kernel"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn overlay_without_tunnel_metadata_is_dropped() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture(RoutingMode::Tunnel);
        let pkt = common::tcp_frame(A_POD_MAC, A_HOST_MAC, REMOTE_POD, POD_B, 1, 2, 0x02);
        let out = f.dp.test_run(PROG_FROM_OVERLAY, &pkt, 0).unwrap();
        assert_eq!(out.verdict, verdict::SHOT);
        assert_eq!(
            common::next_event(&mut f.events).await.drop_reason(),
            Some(DropReason::NoTunnelKey)
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn maps_survive_a_reload_from_the_same_pin_dir() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture(RoutingMode::Tunnel);
        let config = f.dp.config().clone();
        let before_ep = f.dp.endpoints().unwrap();
        let before_ipc = f.dp.ipcache().unwrap();
        assert_eq!(before_ep.len(), 2);
        assert_eq!(
            before_ipc,
            vec![(
                Prefix::new(Ipv4Addr::new(10, 60, 2, 0), 24).unwrap(),
                IpcacheValue {
                    identity: 6_587_186,
                    tunnel_endpoint: Some(REMOTE_NODE),
                    cluster_id: 2
                }
            )]
        );
        let Fixture { dp, events, _fs } = f;
        drop(events);
        drop(dp);
        let again = EbpfDatapath::load_unattached(config, 77).unwrap();
        let mut after_ep = again.endpoints().unwrap();
        // Names resolve from indexes, so only compare what the map holds.
        for (a, b) in after_ep.iter_mut().zip(&before_ep) {
            a.host_ifname = b.host_ifname.clone();
        }
        assert_eq!(after_ep, before_ep);
        assert_eq!(again.ipcache().unwrap(), before_ipc);
        again.remove_ipcache(before_ipc[0].0).unwrap();
        again.remove_ipcache(before_ipc[0].0).unwrap();
        again.remove_endpoint(POD_A).unwrap();
        again.remove_endpoint(POD_A).unwrap();
        assert!(again.ipcache().unwrap().is_empty());
        assert_eq!(again.endpoints().unwrap().len(), 1);
        drop(again);
        drop(_fs);
    })
    .await
    .unwrap();
}

#[test]
fn maps_pinned_with_another_layout_are_refused() {
    let fs = common::Bpffs::new();
    let pin_dir = fs.path().join("node");
    std::fs::create_dir(&pin_dir).unwrap();
    let status = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(pin_dir.join("PLEXUS_ENDPOINTS"))
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "PLEXUS_ENDPOINTS",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let config = NodeConfig {
        node_ip: Ipv4Addr::new(192, 168, 77, 1),
        routing: RoutingMode::Tunnel,
        gateway_ip: GATEWAY,
        cluster_id: 1,
        tunnel_ifname: "unused".into(),
        pin_dir,
        encryption: Default::default(),
    };
    let err = EbpfDatapath::load_unattached(config, 77).unwrap_err();
    assert!(
        err.to_string().contains("PLEXUS_ENDPOINTS") && err.to_string().contains("4/24"),
        "{err}"
    );
}

/// WireGuard strict mode: a pod's packet to a pod behind another node is dropped with its own
/// reason until that node has a peer (`PLEXUS_WG_PEERS`), in tunnel and native mode alike;
/// same-node traffic is never checked, and without strict mode nothing is dropped.
#[tokio::test]
async fn strict_mode_drops_traffic_to_a_node_without_a_wireguard_peer() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let strict = Encryption {
            enabled: true,
            strict: true,
        };
        let pkt = common::tcp_frame(A_POD_MAC, A_HOST_MAC, POD_A, REMOTE_POD, 42728, 6379, 0x02);
        for (routing, passes) in [
            (RoutingMode::Tunnel, verdict::REDIRECT),
            (RoutingMode::Native, verdict::OK),
        ] {
            let mut f = fixture_with(routing, strict);
            let out = f.dp.test_run(PROG_FROM_CONTAINER, &pkt, 0).unwrap();
            assert_eq!(out.verdict, verdict::SHOT, "{routing:?}");
            let ev = common::next_event(&mut f.events).await;
            assert_eq!(ev.drop_reason(), Some(DropReason::Unencrypted));
            assert_eq!(
                ev.to_string(),
                format!(
                    "xx drop (Traffic is unencrypted) flow {:#x} to endpoint 3833, \
                     identity 38354->6587186: 10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN",
                    ev.flow
                )
            );
            let dropped =
                f.dp.metrics()
                    .unwrap()
                    .into_iter()
                    .find(|m| m.drop_reason == Some(DropReason::Unencrypted))
                    .expect("a metric of the drop");
            assert_eq!((dropped.direction, dropped.packets), (Direction::Egress, 1));

            // Same node: not checked.
            let local = common::tcp_frame(A_POD_MAC, A_HOST_MAC, POD_A, POD_B, 42728, 80, 0x02);
            let out = f.dp.test_run(PROG_FROM_CONTAINER, &local, 0).unwrap();
            assert_eq!(out.verdict, verdict::REDIRECT);

            // The node's peer is configured: its traffic leaves (into the tunnel or the stack,
            // where the agent's routing sends it through WireGuard).
            f.dp.upsert_encrypted_node(REMOTE_NODE).unwrap();
            assert_eq!(
                f.dp.encrypted_nodes()
                    .unwrap()
                    .into_iter()
                    .collect::<Vec<_>>(),
                vec![REMOTE_NODE]
            );
            let out = f.dp.test_run(PROG_FROM_CONTAINER, &pkt, 0).unwrap();
            assert_eq!(out.verdict, passes, "{routing:?}");

            // And goes again.
            f.dp.remove_encrypted_node(REMOTE_NODE).unwrap();
            f.dp.remove_encrypted_node(REMOTE_NODE).unwrap();
            let out = f.dp.test_run(PROG_FROM_CONTAINER, &pkt, 0).unwrap();
            assert_eq!(out.verdict, verdict::SHOT);
        }

        // WireGuard without strict mode drops nothing.
        let f = fixture_with(
            RoutingMode::Tunnel,
            Encryption {
                enabled: true,
                strict: false,
            },
        );
        let out = f.dp.test_run(PROG_FROM_CONTAINER, &pkt, 0).unwrap();
        assert_eq!(out.verdict, verdict::REDIRECT);
    })
    .await
    .unwrap();
}
