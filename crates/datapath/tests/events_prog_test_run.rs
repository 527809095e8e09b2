#![allow(clippy::unwrap_used)]
//! The datapath's events on synthetic packets (`BPF_PROG_TEST_RUN`), against live maps in a
//! private bpffs: one translation per new service connection, one policy verdict per new
//! connection and enforcing direction with its kind of match, the connection state of traces,
//! and the count of events lost to a full ring buffer.
//!
//! "No event" is asserted with [`common::events_so_far`]: a marker event follows everything the
//! programs emitted before it.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use aya::maps::{Map, MapData, lpm_trie::LpmTrie};
use common::{events_so_far, l4_frame};
use plexus_datapath::{
    Datapath, Direction, DropReason, EbpfDatapath, Endpoint, EventKind, Frontend, IpcacheValue,
    L4Proto, LbService, MonitorEvent, NodeConfig, ObservationPoint, PolicyMatch, RoutingMode,
    TraceState,
    ebpf::verdict,
    object::{PROG_FROM_CONTAINER, PROG_FROM_OVERLAY, PROG_TO_CONTAINER},
    policy::{EndpointPolicy, PolicyRule},
};
use tokio::sync::broadcast;

/// The client, on ifindex 1: test runs see packets arrive on loopback.
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 7);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 9);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 60, 2, 9);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const A_EP: u16 = 3833;
const B_EP: u16 = 201;
const A_ID: u32 = 38354;
const B_ID: u32 = 6587;
const REMOTE_ID: u32 = 6_587_186;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;

struct Fixture {
    dp: EbpfDatapath,
    events: broadcast::Receiver<MonitorEvent>,
    fs: common::Bpffs,
}

fn config(fs: &common::Bpffs) -> NodeConfig {
    NodeConfig {
        node_ip: Ipv4Addr::new(192, 168, 77, 1),
        routing: RoutingMode::Tunnel,
        gateway_ip: Ipv4Addr::new(10, 60, 1, 1),
        cluster_id: 1,
        tunnel_ifname: "unused".into(),
        pin_dir: fs.path().join("node"),
        encryption: Default::default(),
    }
}

fn fixture() -> Fixture {
    let fs = common::Bpffs::new();
    let dp = EbpfDatapath::load_unattached(config(&fs), 77).unwrap();
    dp.upsert_endpoint(&Endpoint {
        id: A_EP,
        ipv4: POD_A,
        host_ifname: "lo".into(),
        host_ifindex: 1,
        pod_mac: [0x0a, 0, 0, 0, 0, 0x07],
        host_mac: [0x0e, 0, 0, 0, 1, 0x07],
        identity: A_ID,
    })
    .unwrap();
    dp.upsert_endpoint(&Endpoint {
        id: B_EP,
        ipv4: POD_B,
        host_ifname: "lxcb".into(),
        host_ifindex: 4242,
        pod_mac: [0x0a, 0, 0, 0, 0, 0x09],
        host_mac: [0x0e, 0, 0, 0, 1, 0x09],
        identity: B_ID,
    })
    .unwrap();
    dp.upsert_ipcache(
        "10.60.2.0/24".parse().unwrap(),
        IpcacheValue {
            identity: REMOTE_ID,
            tunnel_endpoint: Some(Ipv4Addr::new(192, 168, 77, 2)),
            cluster_id: 2,
        },
    )
    .unwrap();
    let events = dp.subscribe();
    Fixture { dp, events, fs }
}

/// Runs `frame` through `program` with `mark`, expecting `expected`; the frame and mark after.
fn run(
    f: &Fixture,
    program: &'static str,
    frame: &[u8],
    mark: u32,
    expected: u32,
) -> (Vec<u8>, u32) {
    let out = f.dp.test_run(program, frame, mark).unwrap();
    assert_eq!(out.verdict, expected, "{program} verdict");
    (out.frame, out.mark)
}

/// A packet from pod A to pod B through both programs: from_container (A's egress), then
/// to_container (B's ingress) with the mark from_container left.
fn a_to_b(f: &Fixture, proto: u8, sport: u16, dport: u16, flags: u8) {
    let frame = l4_frame(proto, POD_A, POD_B, sport, dport, flags, b"", false);
    let (frame, mark) = run(f, PROG_FROM_CONTAINER, &frame, 0, verdict::REDIRECT);
    run(f, PROG_TO_CONTAINER, &frame, mark, verdict::OK);
}

fn of_kind(events: &[MonitorEvent], want: fn(&EventKind) -> bool) -> Vec<MonitorEvent> {
    events.iter().filter(|e| want(&e.kind)).copied().collect()
}

fn is_translation(k: &EventKind) -> bool {
    matches!(k, EventKind::Translation { .. })
}

fn is_verdict(k: &EventKind) -> bool {
    matches!(k, EventKind::PolicyVerdict(_))
}

fn rule(direction: Direction, identity: u32, proto: u8, lo: u16, hi: u16) -> PolicyRule {
    PolicyRule {
        direction,
        identity,
        proto,
        port_lo: lo,
        port_hi: hi,
        deny: false,
    }
}

#[tokio::test]
async fn a_new_service_connection_yields_one_translation_with_frontend_and_backend() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture();
        let fe = Frontend {
            addr: VIP,
            port: 80,
            proto: L4Proto::Tcp,
        };
        f.dp.upsert_service(&LbService {
            frontend: fe,
            active: vec![SocketAddrV4::new(POD_B, 8080)],
            inactive: vec![],
        })
        .unwrap();

        let syn = l4_frame(TCP, POD_A, VIP, 40000, 80, SYN, b"", false);
        run(&f, PROG_FROM_CONTAINER, &syn, 0, verdict::REDIRECT);
        let events = events_so_far(&f.dp, &mut f.events).await;
        let xlate = of_kind(&events, is_translation);
        assert_eq!(xlate.len(), 1, "{events:#?}");
        let ev = xlate[0];
        assert_eq!(
            ev.kind,
            EventKind::Translation {
                frontend: SocketAddrV4::new(VIP, 80)
            }
        );
        assert_eq!(
            (ev.saddr, ev.sport, ev.daddr, ev.dport, ev.protocol),
            (POD_A, 40000, POD_B, 8080, TCP),
            "the client as it sent, the backend it reaches"
        );
        assert_eq!(
            (ev.endpoint_id, ev.src_identity, ev.dst_identity),
            (A_EP, A_ID, B_ID)
        );
        assert_eq!(ev.direction, Some(Direction::Egress));
        assert_eq!(ev.state, TraceState::New);
        assert_eq!(ev.tcp_flags, SYN);
        assert!(
            ev.to_string()
                .starts_with("xlate service 10.96.0.10:80 -> backend 10.60.1.9:8080 "),
            "{ev}"
        );
        // The trace that follows sees the translated packet.
        let trace = events.last().unwrap();
        assert_eq!(trace.kind, EventKind::Trace(ObservationPoint::FromEndpoint));
        assert_eq!((trace.daddr, trace.dport), (POD_B, 8080));

        // The connection's next packets: no translation event.
        for flags in [ACK, ACK | 0x08, ACK | 0x01] {
            let next = l4_frame(TCP, POD_A, VIP, 40000, 80, flags, b"data", false);
            run(&f, PROG_FROM_CONTAINER, &next, 0, verdict::REDIRECT);
        }
        let events = events_so_far(&f.dp, &mut f.events).await;
        assert!(of_kind(&events, is_translation).is_empty(), "{events:#?}");

        // Another connection (another source port) is new: one more.
        let other = l4_frame(TCP, POD_A, VIP, 40001, 80, SYN, b"", false);
        run(&f, PROG_FROM_CONTAINER, &other, 0, verdict::REDIRECT);
        let events = events_so_far(&f.dp, &mut f.events).await;
        let xlate = of_kind(&events, is_translation);
        assert_eq!(xlate.len(), 1, "{events:#?}");
        assert_eq!(xlate[0].sport, 40001);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn udp_service_flows_are_translated_once_and_non_frontends_never() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture();
        f.dp.upsert_service(&LbService {
            frontend: Frontend {
                addr: VIP,
                port: 53,
                proto: L4Proto::Udp,
            },
            active: vec![SocketAddrV4::new(REMOTE_POD, 5353)],
            inactive: vec![],
        })
        .unwrap();
        for _ in 0..3 {
            let q = l4_frame(UDP, POD_A, VIP, 33000, 53, 0, b"query", false);
            run(&f, PROG_FROM_CONTAINER, &q, 0, verdict::REDIRECT);
        }
        // Not a frontend: no translation.
        let plain = l4_frame(UDP, POD_A, REMOTE_POD, 33001, 53, 0, b"query", false);
        run(&f, PROG_FROM_CONTAINER, &plain, 0, verdict::REDIRECT);
        let events = events_so_far(&f.dp, &mut f.events).await;
        let xlate = of_kind(&events, is_translation);
        assert_eq!(xlate.len(), 1, "{events:#?}");
        assert_eq!(
            (xlate[0].daddr, xlate[0].dport, xlate[0].dst_identity),
            (REMOTE_POD, 5353, REMOTE_ID),
            "a remote backend, with the identity the ipcache gives it"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_allowed_new_connection_yields_one_verdict_per_enforcing_direction() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture();
        // No policy anywhere: connections pass without verdicts.
        a_to_b(&f, TCP, 40000, 6379, SYN);
        let events = events_so_far(&f.dp, &mut f.events).await;
        assert!(of_kind(&events, is_verdict).is_empty(), "{events:#?}");

        // A's egress allows everything to anyone; B's ingress allows A on TCP 6379.
        f.dp.set_policy(
            A_EP,
            &EndpointPolicy {
                ingress_enforced: false,
                egress_enforced: true,
                rules: vec![rule(Direction::Egress, 0, 0, 0, 65535)],
            },
        )
        .unwrap();
        f.dp.set_policy(
            B_EP,
            &EndpointPolicy {
                ingress_enforced: true,
                egress_enforced: false,
                rules: vec![rule(Direction::Ingress, A_ID, TCP, 6379, 6379)],
            },
        )
        .unwrap();

        a_to_b(&f, TCP, 40001, 6379, SYN);
        let events = events_so_far(&f.dp, &mut f.events).await;
        let verdicts = of_kind(&events, is_verdict);
        assert_eq!(verdicts.len(), 2, "{events:#?}");
        let (egress, ingress) = (verdicts[0], verdicts[1]);
        assert_eq!(egress.kind, EventKind::PolicyVerdict(PolicyMatch::All));
        assert_eq!(egress.direction, Some(Direction::Egress));
        assert_eq!(
            (egress.endpoint_id, egress.src_identity, egress.dst_identity),
            (A_EP, A_ID, B_ID)
        );
        assert_eq!(ingress.kind, EventKind::PolicyVerdict(PolicyMatch::L3L4));
        assert_eq!(ingress.direction, Some(Direction::Ingress));
        assert_eq!(
            (
                ingress.endpoint_id,
                ingress.src_identity,
                ingress.dst_identity
            ),
            (B_EP, A_ID, B_ID)
        );
        for v in [egress, ingress] {
            assert_eq!(v.state, TraceState::New);
            assert_eq!(
                (v.saddr, v.sport, v.daddr, v.dport, v.protocol, v.tcp_flags),
                (POD_A, 40001, POD_B, 6379, TCP, SYN)
            );
        }
        assert!(
            ingress.to_string().starts_with(&format!(
                "Policy verdict log: flow {:#x} local EP ID 201, remote ID 38354, proto 6, \
                 ingress, action allow, match L3-L4, ",
                ingress.flow
            )),
            "{ingress}"
        );

        // The established connection: no verdict, in either direction, for data or its end.
        a_to_b(&f, TCP, 40001, 6379, ACK);
        a_to_b(&f, TCP, 40001, 6379, ACK | 0x08);
        a_to_b(&f, TCP, 40001, 6379, ACK | 0x01);
        // Nor for B's replies entering A (A's ingress has no policy, and they are replies).
        let reply = l4_frame(TCP, POD_B, POD_A, 6379, 40001, SYN_ACK, b"", false);
        run(
            &f,
            PROG_TO_CONTAINER,
            &reply,
            0xA500_0000 | B_ID,
            verdict::OK,
        );
        let events = events_so_far(&f.dp, &mut f.events).await;
        assert!(of_kind(&events, is_verdict).is_empty(), "{events:#?}");

        // A denied connection is a drop, with no verdict event.
        let denied = l4_frame(TCP, POD_A, POD_B, 40002, 6380, SYN, b"", false);
        let (frame, mark) = run(&f, PROG_FROM_CONTAINER, &denied, 0, verdict::REDIRECT);
        run(&f, PROG_TO_CONTAINER, &frame, mark, verdict::SHOT);
        let events = events_so_far(&f.dp, &mut f.events).await;
        let verdicts = of_kind(&events, is_verdict);
        assert_eq!(verdicts.len(), 1, "only A's egress allowed it: {events:#?}");
        assert_eq!(verdicts[0].direction, Some(Direction::Egress));
        let drop = events.last().unwrap();
        assert_eq!(drop.kind, EventKind::Drop(DropReason::PolicyDenied));
        assert_eq!(drop.direction, Some(Direction::Ingress));
        assert_eq!(drop.state, TraceState::Unknown);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_verdict_names_the_kind_of_entry_that_allowed() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture();
        let cases = [
            (
                rule(Direction::Ingress, A_ID, 0, 0, 65535),
                PolicyMatch::L3Only,
            ),
            (
                rule(Direction::Ingress, A_ID, TCP, 6379, 6379),
                PolicyMatch::L3L4,
            ),
            (
                rule(Direction::Ingress, 0, TCP, 6000, 6999),
                PolicyMatch::L4Only,
            ),
            (rule(Direction::Ingress, 0, 0, 0, 65535), PolicyMatch::All),
            (
                rule(Direction::Ingress, A_ID, TCP, 0, 65535),
                PolicyMatch::L3Proto,
            ),
            (
                rule(Direction::Ingress, 0, TCP, 0, 65535),
                PolicyMatch::ProtoOnly,
            ),
        ];
        for (sport, (r, expected)) in (41000..).zip(cases) {
            f.dp.set_policy(
                B_EP,
                &EndpointPolicy {
                    ingress_enforced: true,
                    egress_enforced: false,
                    rules: vec![r],
                },
            )
            .unwrap();
            a_to_b(&f, TCP, sport, 6379, SYN);
            let events = events_so_far(&f.dp, &mut f.events).await;
            let verdicts = of_kind(&events, is_verdict);
            assert_eq!(verdicts.len(), 1, "{r:?}: {events:#?}");
            assert_eq!(
                verdicts[0].kind,
                EventKind::PolicyVerdict(expected),
                "{r:?}"
            );
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn traces_carry_the_connection_state() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture();
        let traces = |events: Vec<MonitorEvent>| -> Vec<(ObservationPoint, TraceState)> {
            events
                .into_iter()
                .filter_map(|e| match e.kind {
                    EventKind::Trace(p) => Some((p, e.state)),
                    _ => None,
                })
                .collect()
        };

        // UDP is traced packet by packet: the first is new, the next established, on both
        // sides.
        a_to_b(&f, UDP, 5000, 53, 0);
        a_to_b(&f, UDP, 5000, 53, 0);
        let events = events_so_far(&f.dp, &mut f.events).await;
        assert_eq!(
            traces(events),
            [
                (ObservationPoint::FromEndpoint, TraceState::New),
                (ObservationPoint::ToEndpoint, TraceState::New),
                (ObservationPoint::FromEndpoint, TraceState::Established),
                (ObservationPoint::ToEndpoint, TraceState::Established),
            ]
        );

        // B's answer entering A is a reply, and marked so.
        let answer = l4_frame(UDP, POD_B, POD_A, 53, 5000, 0, b"a", false);
        run(
            &f,
            PROG_TO_CONTAINER,
            &answer,
            0xA500_0000 | B_ID,
            verdict::OK,
        );
        let events = events_so_far(&f.dp, &mut f.events).await;
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(
            events[0].kind,
            EventKind::Trace(ObservationPoint::ToEndpoint)
        );
        assert_eq!(events[0].state, TraceState::Reply);
        assert_eq!(events[0].is_reply(), Some(true));
        assert_eq!(events[0].direction, Some(Direction::Ingress));
        assert!(
            events[0].to_string().contains("state reply:"),
            "{}",
            events[0]
        );

        // Through the tunnel: new, then established; a remote reply entering A is a reply.
        for _ in 0..2 {
            let out = l4_frame(UDP, POD_A, REMOTE_POD, 5001, 53, 0, b"q", false);
            run(&f, PROG_FROM_CONTAINER, &out, 0, verdict::REDIRECT);
        }
        let back = l4_frame(UDP, REMOTE_POD, POD_A, 53, 5001, 0, b"a", false);
        run(&f, PROG_TO_CONTAINER, &back, 0, verdict::OK);
        let events = events_so_far(&f.dp, &mut f.events).await;
        assert_eq!(
            traces(events),
            [
                (ObservationPoint::FromEndpoint, TraceState::New),
                (ObservationPoint::FromEndpoint, TraceState::Established),
                (ObservationPoint::ToEndpoint, TraceState::Reply),
            ]
        );

        // TCP: the SYN is new, the SYN-ACK entering A a reply.
        let syn = l4_frame(TCP, POD_A, REMOTE_POD, 40000, 80, SYN, b"", false);
        run(&f, PROG_FROM_CONTAINER, &syn, 0, verdict::REDIRECT);
        let synack = l4_frame(TCP, REMOTE_POD, POD_A, 80, 40000, SYN_ACK, b"", false);
        run(&f, PROG_TO_CONTAINER, &synack, 0, verdict::OK);
        let events = events_so_far(&f.dp, &mut f.events).await;
        let states: Vec<_> = events.iter().map(|e| (e.direction, e.state)).collect();
        assert_eq!(
            states,
            [
                (Some(Direction::Egress), TraceState::New),
                (Some(Direction::Ingress), TraceState::Reply),
            ]
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn paths_without_a_conntrack_lookup_say_unknown() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture();
        // from_overlay: the connection is looked up on the way into the pod, not here. Without
        // a tunnel key the program drops; BPF_PROG_TEST_RUN cannot give one, so the drop is
        // what this path reports, with no state.
        let frame = l4_frame(UDP, REMOTE_POD, POD_A, 53, 5000, 0, b"a", false);
        run(&f, PROG_FROM_OVERLAY, &frame, 0, verdict::SHOT);
        let events = events_so_far(&f.dp, &mut f.events).await;
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(events[0].kind, EventKind::Drop(DropReason::NoTunnelKey));
        assert_eq!(events[0].state, TraceState::Unknown);
        assert_eq!(events[0].is_reply(), None);
        assert_eq!(events[0].direction, Some(Direction::Ingress));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_full_ring_buffer_counts_the_events_it_loses() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut f = fixture();
        assert_eq!(f.dp.events_lost().unwrap(), 0);
        // Each run drops the packet (its source is no endpoint) with one event. The ring buffer
        // (1 MiB) holds about 16k records of 64 bytes (56 and the header): more runs than that,
        // with nobody reading, lose events.
        const RUNS: u32 = 20_000;
        let stranger = l4_frame(
            UDP,
            Ipv4Addr::new(10, 60, 1, 66),
            POD_B,
            1,
            2,
            0,
            b"",
            false,
        );
        f.dp.pause_events();
        let (v, _) =
            f.dp.test_run_repeat(PROG_FROM_CONTAINER, &stranger, RUNS)
                .unwrap();
        assert_eq!(v, verdict::SHOT);
        let lost = f.dp.events_lost().unwrap();
        assert!(lost > 0, "nothing lost");
        assert!(lost < u64::from(RUNS), "the buffer held some");

        // What was not lost arrives once reading resumes: every run is either.
        f.dp.resume_events();
        let mut delivered = 0u64;
        while delivered + lost < u64::from(RUNS) {
            match f.events.recv().await {
                Ok(ev) => {
                    assert_eq!(ev.kind, EventKind::Drop(DropReason::UnknownSource));
                    delivered += 1;
                }
                // The subscriber is slower than the reader: skipped, yet delivered to the
                // channel.
                Err(broadcast::error::RecvError::Lagged(n)) => delivered += n,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(delivered + lost, u64::from(RUNS));
        assert_eq!(f.dp.events_lost().unwrap(), lost, "a running total");
        let events = events_so_far(&f.dp, &mut f.events).await;
        assert!(events.is_empty(), "{} more events than runs", events.len());
    })
    .await
    .unwrap();
}

/// The pinned policy map's values (the verdict byte, the match-kind byte, two reserved).
fn pinned_policy_values(fs: &common::Bpffs) -> Vec<[u8; 4]> {
    let trie = pinned_policy(fs);
    trie.iter().map(|item| item.unwrap().1).collect()
}

fn pinned_policy(fs: &common::Bpffs) -> LpmTrie<MapData, [u8; 12], [u8; 4]> {
    let data = MapData::from_pin(config(fs).pin_dir.join("PLEXUS_POLICY")).unwrap();
    LpmTrie::try_from(Map::LpmTrie(data)).unwrap()
}

/// Policy entries written by an earlier agent have no match kind: a new agent writes it at
/// load, and its verdicts name the kind.
#[tokio::test]
async fn policy_entries_of_an_earlier_agent_get_their_match_kind_at_load() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        f.dp.set_policy(
            B_EP,
            &EndpointPolicy {
                ingress_enforced: true,
                egress_enforced: false,
                rules: vec![rule(Direction::Ingress, A_ID, TCP, 6379, 6379)],
            },
        )
        .unwrap();
        assert_eq!(
            pinned_policy_values(&f.fs),
            [[0, PolicyMatch::L3L4.as_raw(), 0, 0]]
        );
        // As an earlier agent left it: the verdict only.
        let mut trie = pinned_policy(&f.fs);
        let keys: Vec<_> = trie.iter().map(|item| item.unwrap().0).collect();
        for key in &keys {
            trie.insert(key, [0, 0, 0, 0], 0).unwrap();
        }
        drop(trie);

        let Fixture { dp, fs, .. } = f;
        drop(dp);
        let dp = EbpfDatapath::load_unattached(config(&fs), 77).unwrap();
        assert_eq!(
            pinned_policy_values(&fs),
            [[0, PolicyMatch::L3L4.as_raw(), 0, 0]]
        );
        let mut f = Fixture {
            events: dp.subscribe(),
            dp,
            fs,
        };
        a_to_b(&f, TCP, 42000, 6379, SYN);
        let events = events_so_far(&f.dp, &mut f.events).await;
        let verdicts = of_kind(&events, is_verdict);
        assert_eq!(verdicts.len(), 1, "{events:#?}");
        assert_eq!(
            verdicts[0].kind,
            EventKind::PolicyVerdict(PolicyMatch::L3L4)
        );
    })
    .await
    .unwrap();
}
