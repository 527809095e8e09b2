#![allow(clippy::unwrap_used)]
//! Service load balancing on synthetic packets (`BPF_PROG_TEST_RUN`), against live maps in a
//! private bpffs: translation with valid checksums, reverse translation of replies, backend
//! choice and stickiness, inactive backends, several ports per service, hairpin.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use common::{Tuple, ipv4_csum_ok, l4_csum_field, l4_csum_ok, l4_frame, tuple};
use plexus_datapath::{
    Datapath, DropReason, EbpfDatapath, Endpoint, EventKind, Frontend, IpcacheValue, L4Proto,
    LbService, MonitorEvent, NodeConfig, RoutingMode,
    ebpf::verdict,
    object::{PROG_FROM_CONTAINER, PROG_TO_CONTAINER},
};
use tokio::sync::broadcast;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 1);
/// The client, on ifindex 1: test runs see packets arrive on loopback.
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 7);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 9);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 60, 2, 9);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);
const B_POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x09];
const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;

struct Fixture {
    dp: EbpfDatapath,
    events: broadcast::Receiver<MonitorEvent>,
    _fs: common::Bpffs,
}

fn config(fs: &common::Bpffs) -> NodeConfig {
    NodeConfig {
        node_ip: Ipv4Addr::new(192, 168, 77, 1),
        routing: RoutingMode::Tunnel,
        gateway_ip: GATEWAY,
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
        id: 3833,
        ipv4: POD_A,
        host_ifname: "lo".into(),
        host_ifindex: 1,
        pod_mac: [0x0a, 0, 0, 0, 0, 0x07],
        host_mac: [0x0e, 0, 0, 0, 1, 0x07],
        identity: 38354,
    })
    .unwrap();
    dp.upsert_endpoint(&Endpoint {
        id: 201,
        ipv4: POD_B,
        host_ifname: "lxcb".into(),
        host_ifindex: 4242,
        pod_mac: B_POD_MAC,
        host_mac: [0x0e, 0, 0, 0, 1, 0x09],
        identity: 6587,
    })
    .unwrap();
    dp.upsert_ipcache(
        "10.60.2.0/24".parse().unwrap(),
        IpcacheValue {
            identity: 6_587_186,
            tunnel_endpoint: Some(Ipv4Addr::new(192, 168, 77, 2)),
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

fn frontend(port: u16, proto: L4Proto) -> Frontend {
    Frontend {
        addr: VIP,
        port,
        proto,
    }
}

fn service(fe: Frontend, active: &[SocketAddrV4], inactive: &[SocketAddrV4]) -> LbService {
    LbService {
        frontend: fe,
        active: active.to_vec(),
        inactive: inactive.to_vec(),
    }
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Runs `frame` through `program`, expecting `expected` as verdict; the frame it leaves.
fn run(f: &Fixture, program: &'static str, frame: &[u8], expected: u32) -> Vec<u8> {
    let out = f.dp.test_run(program, frame, 0).unwrap();
    assert_eq!(out.verdict, expected, "{program} verdict");
    out.frame
}

fn t(saddr: Ipv4Addr, sport: u16, daddr: Ipv4Addr, dport: u16) -> Tuple {
    Tuple {
        saddr,
        daddr,
        sport,
        dport,
    }
}

#[tokio::test]
async fn tcp_to_a_frontend_is_translated_to_the_backend_and_the_reply_back() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        let fe = frontend(80, L4Proto::Tcp);
        f.dp.upsert_service(&service(fe, &[sa(POD_B, 8080)], &[]))
            .unwrap();

        let syn = l4_frame(TCP, POD_A, VIP, 40000, 80, SYN, b"", false);
        assert!(
            ipv4_csum_ok(&syn) && l4_csum_ok(&syn),
            "the test's own frame"
        );
        let out = run(&f, PROG_FROM_CONTAINER, &syn, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(POD_A, 40000, POD_B, 8080));
        assert_eq!(&out[0..6], &B_POD_MAC, "delivered to the backend pod");
        assert!(ipv4_csum_ok(&out), "IPv4 header checksum after DNAT");
        assert!(l4_csum_ok(&out), "TCP checksum after DNAT");
        let mut stale = syn.clone();
        stale[30..34].copy_from_slice(&POD_B.octets());
        assert!(
            !ipv4_csum_ok(&stale) && !l4_csum_ok(&stale),
            "the checks notice an address rewritten without checksum update"
        );

        // Data with a payload, same connection: same backend, valid checksums.
        let data = l4_frame(
            TCP,
            POD_A,
            VIP,
            40000,
            80,
            ACK,
            b"GET / HTTP/1.0\r\n\r\n",
            false,
        );
        let out = run(&f, PROG_FROM_CONTAINER, &data, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(POD_A, 40000, POD_B, 8080));
        assert!(ipv4_csum_ok(&out) && l4_csum_ok(&out));

        // The backend's reply enters the client with the service as its source.
        let reply = l4_frame(TCP, POD_B, POD_A, 8080, 40000, SYN_ACK, b"hello", false);
        let out = run(&f, PROG_TO_CONTAINER, &reply, verdict::OK);
        assert_eq!(tuple(&out), t(VIP, 80, POD_A, 40000));
        assert!(ipv4_csum_ok(&out), "IPv4 header checksum after reverse NAT");
        assert!(l4_csum_ok(&out), "TCP checksum after reverse NAT");

        assert_eq!(
            f.dp.conntrack_entries().unwrap(),
            3,
            "one connection: its service entries (forward, reply) and policy's record of it"
        );

        // Traffic that is no reply is left alone.
        let other = l4_frame(TCP, POD_B, POD_A, 8080, 40001, SYN_ACK, b"", false);
        assert_eq!(run(&f, PROG_TO_CONTAINER, &other, verdict::OK), other);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn udp_checksums_none_stays_none_and_a_real_one_stays_valid() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        let fe = frontend(53, L4Proto::Udp);
        f.dp.upsert_service(&service(fe, &[sa(POD_B, 5353)], &[]))
            .unwrap();

        let none = l4_frame(UDP, POD_A, VIP, 33000, 53, 0, b"query", false);
        let out = run(&f, PROG_FROM_CONTAINER, &none, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(POD_A, 33000, POD_B, 5353));
        assert!(ipv4_csum_ok(&out));
        assert_eq!(l4_csum_field(&out), 0, "no UDP checksum stays none");

        let with = l4_frame(UDP, POD_A, VIP, 33001, 53, 0, b"query", true);
        let out = run(&f, PROG_FROM_CONTAINER, &with, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(POD_A, 33001, POD_B, 5353));
        assert!(
            ipv4_csum_ok(&out) && l4_csum_ok(&out),
            "UDP checksum after DNAT"
        );

        for (sport, csum) in [(33000, false), (33001, true)] {
            let reply = l4_frame(UDP, POD_B, POD_A, 5353, sport, 0, b"answer", csum);
            let out = run(&f, PROG_TO_CONTAINER, &reply, verdict::OK);
            assert_eq!(tuple(&out), t(VIP, 53, POD_A, sport));
            assert!(ipv4_csum_ok(&out));
            if csum {
                assert!(l4_csum_ok(&out), "UDP checksum after reverse NAT");
            } else {
                assert_eq!(l4_csum_field(&out), 0);
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_frontend_without_active_backend_drops_with_its_reason() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture();
        let fe = frontend(80, L4Proto::Tcp);
        f.dp.upsert_service(&service(fe, &[], &[sa(POD_B, 8080)]))
            .unwrap();
        let syn = l4_frame(TCP, POD_A, VIP, 40000, 80, SYN, b"", false);
        run(&f, PROG_FROM_CONTAINER, &syn, verdict::SHOT);
        let ev = common::next_event(&mut f.events).await;
        assert_eq!(ev.kind, EventKind::Drop(DropReason::NoServiceBackend));
        assert_eq!((ev.saddr, ev.daddr, ev.dport), (POD_A, VIP, 80));
        assert!(
            ev.to_string()
                .starts_with("xx drop (Service backend not found)"),
            "{ev}"
        );
        let m = f.dp.metrics().unwrap();
        assert!(
            m.iter()
                .any(|m| m.drop_reason == Some(DropReason::NoServiceBackend) && m.packets == 1)
        );

        // Another port of the same address, and ICMP, are no frontend: they pass untouched.
        let other_port = l4_frame(TCP, POD_A, VIP, 40000, 81, SYN, b"", false);
        assert_eq!(
            run(&f, PROG_FROM_CONTAINER, &other_port, verdict::OK),
            other_port
        );
        let mut icmp = l4_frame(UDP, POD_A, VIP, 0x0800, 0, 0, b"ping", false);
        icmp[23] = 1;
        assert_eq!(run(&f, PROG_FROM_CONTAINER, &icmp, verdict::OK), icmp);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_inactive_backend_keeps_its_connections_but_takes_no_new_one() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        let fe = frontend(80, L4Proto::Tcp);
        let (b1, b2) = (sa(POD_B, 8080), sa(REMOTE_POD, 8080));
        f.dp.upsert_service(&service(fe, &[b1], &[])).unwrap();
        let syn = l4_frame(TCP, POD_A, VIP, 40000, 80, SYN, b"", false);
        let out = run(&f, PROG_FROM_CONTAINER, &syn, verdict::REDIRECT);
        assert_eq!(tuple(&out).daddr, POD_B);

        f.dp.upsert_service(&service(fe, &[b2], &[b1])).unwrap();
        assert_eq!(
            f.dp.services().unwrap(),
            vec![service(fe, &[b2], &[b1])],
            "read back from the maps"
        );
        // The established connection stays on b1 (local: redirected to its veth).
        let ack = l4_frame(TCP, POD_A, VIP, 40000, 80, ACK, b"more", false);
        let out = run(&f, PROG_FROM_CONTAINER, &ack, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(POD_A, 40000, POD_B, 8080));
        // A new connection goes to b2 (remote: into the tunnel, also a redirect).
        let syn2 = l4_frame(TCP, POD_A, VIP, 40001, 80, SYN, b"", false);
        let out = run(&f, PROG_FROM_CONTAINER, &syn2, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(POD_A, 40001, REMOTE_POD, 8080));
        assert!(ipv4_csum_ok(&out) && l4_csum_ok(&out));
        // A retransmitted SYN of the first connection avoids the inactive backend.
        let out = run(&f, PROG_FROM_CONTAINER, &syn, verdict::REDIRECT);
        assert_eq!(tuple(&out).daddr, REMOTE_POD);
        // ... and sticks to its new backend.
        let out = run(&f, PROG_FROM_CONTAINER, &ack, verdict::REDIRECT);
        assert_eq!(tuple(&out).daddr, REMOTE_POD);

        // A backend removed altogether loses its connections: they pick again.
        f.dp.upsert_service(&service(fe, &[b1], &[])).unwrap();
        let out = run(&f, PROG_FROM_CONTAINER, &ack, verdict::REDIRECT);
        assert_eq!(tuple(&out).daddr, POD_B);

        // A removed service is no frontend any more.
        f.dp.remove_service(fe).unwrap();
        f.dp.remove_service(fe).unwrap();
        assert!(f.dp.services().unwrap().is_empty());
        assert_eq!(run(&f, PROG_FROM_CONTAINER, &ack, verdict::OK), ack);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn new_connections_spread_over_the_backends_and_each_sticks_to_its_own() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let f = fixture();
        let fe = frontend(80, L4Proto::Tcp);
        f.dp.upsert_service(&service(fe, &[sa(POD_B, 8080), sa(REMOTE_POD, 9090)], &[]))
            .unwrap();
        let mut chosen = BTreeMap::new();
        let mut per_backend: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
        for sport in 20000..20200 {
            let syn = l4_frame(TCP, POD_A, VIP, sport, 80, SYN, b"", false);
            let out = run(&f, PROG_FROM_CONTAINER, &syn, verdict::REDIRECT);
            let to = tuple(&out);
            assert!(
                (to.daddr, to.dport) == (POD_B, 8080) || (to.daddr, to.dport) == (REMOTE_POD, 9090),
                "{to:?}"
            );
            *per_backend.entry(to.daddr).or_default() += 1;
            chosen.insert(sport, to.daddr);
        }
        for (backend, n) in &per_backend {
            assert!((60..=140).contains(n), "{backend} got {n} of 200 flows");
        }
        assert_eq!(per_backend.len(), 2);
        for sport in (20000..20200).step_by(7) {
            let ack = l4_frame(TCP, POD_A, VIP, sport, 80, ACK, b"x", false);
            let out = run(&f, PROG_FROM_CONTAINER, &ack, verdict::REDIRECT);
            assert_eq!(tuple(&out).daddr, chosen[&sport], "flow {sport} moved");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn each_port_and_protocol_of_a_service_is_its_own_frontend() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        let http = service(frontend(80, L4Proto::Tcp), &[sa(POD_B, 8080)], &[]);
        let https = service(frontend(443, L4Proto::Tcp), &[sa(POD_B, 8443)], &[]);
        let dns = service(frontend(80, L4Proto::Udp), &[sa(REMOTE_POD, 5353)], &[]);
        for s in [&http, &https, &dns] {
            f.dp.upsert_service(s).unwrap();
        }
        let cases = [
            (TCP, 80, POD_B, 8080),
            (TCP, 443, POD_B, 8443),
            (UDP, 80, REMOTE_POD, 5353),
        ];
        for (proto, port, backend, backend_port) in cases {
            let pkt = l4_frame(proto, POD_A, VIP, 41000, port, SYN, b"", true);
            let out = run(&f, PROG_FROM_CONTAINER, &pkt, verdict::REDIRECT);
            assert_eq!(tuple(&out), t(POD_A, 41000, backend, backend_port));
            assert!(ipv4_csum_ok(&out) && l4_csum_ok(&out));
        }
        let mut all = f.dp.services().unwrap();
        all.sort_by_key(|s| s.frontend);
        let mut expected = vec![http.clone(), https.clone(), dns.clone()];
        expected.sort_by_key(|s| s.frontend);
        assert_eq!(all, expected);
        // Removing one frontend leaves the others.
        f.dp.remove_service(https.frontend).unwrap();
        let pkt = l4_frame(TCP, POD_A, VIP, 41001, 443, SYN, b"", true);
        assert_eq!(run(&f, PROG_FROM_CONTAINER, &pkt, verdict::OK), pkt);
        let pkt = l4_frame(TCP, POD_A, VIP, 41001, 80, SYN, b"", true);
        let out = run(&f, PROG_FROM_CONTAINER, &pkt, verdict::REDIRECT);
        assert_eq!(tuple(&out).dport, 8080);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_pod_reaching_itself_through_its_service_is_hairpinned() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        let fe = frontend(80, L4Proto::Tcp);
        f.dp.upsert_service(&service(fe, &[sa(POD_A, 8080)], &[]))
            .unwrap();

        // Out of the pod: to itself, from the hairpin address, delivered back to its veth.
        let syn = l4_frame(TCP, POD_A, VIP, 42000, 80, SYN, b"", false);
        let out = run(&f, PROG_FROM_CONTAINER, &syn, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(HAIRPIN, 42000, POD_A, 8080));
        assert!(ipv4_csum_ok(&out) && l4_csum_ok(&out));
        // Into the pod: no reply entry matches, left as is.
        assert_eq!(run(&f, PROG_TO_CONTAINER, &out, verdict::OK), out);

        // The pod answers the hairpin address; from_container restores the service.
        let reply = l4_frame(TCP, POD_A, HAIRPIN, 8080, 42000, SYN_ACK, b"hi", false);
        let out = run(&f, PROG_FROM_CONTAINER, &reply, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(VIP, 80, POD_A, 42000));
        assert!(ipv4_csum_ok(&out) && l4_csum_ok(&out));
        assert_eq!(run(&f, PROG_TO_CONTAINER, &out, verdict::OK), out);

        // Same for UDP without checksum.
        f.dp.upsert_service(&service(
            frontend(53, L4Proto::Udp),
            &[sa(POD_A, 5353)],
            &[],
        ))
        .unwrap();
        let q = l4_frame(UDP, POD_A, VIP, 42001, 53, 0, b"q", false);
        let out = run(&f, PROG_FROM_CONTAINER, &q, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(HAIRPIN, 42001, POD_A, 5353));
        assert_eq!(l4_csum_field(&out), 0);
        let a = l4_frame(UDP, POD_A, HAIRPIN, 5353, 42001, 0, b"a", false);
        let out = run(&f, PROG_FROM_CONTAINER, &a, verdict::REDIRECT);
        assert_eq!(tuple(&out), t(VIP, 53, POD_A, 42001));
        assert!(ipv4_csum_ok(&out));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restarted_agent_keeps_services_ids_and_connections() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        let fe = frontend(80, L4Proto::Tcp);
        let two = service(fe, &[sa(POD_B, 8080), sa(REMOTE_POD, 8080)], &[]);
        f.dp.upsert_service(&two).unwrap();
        let mut chosen = BTreeMap::new();
        for sport in 30000..30020 {
            let syn = l4_frame(TCP, POD_A, VIP, sport, 80, SYN, b"", false);
            let out = run(&f, PROG_FROM_CONTAINER, &syn, verdict::REDIRECT);
            chosen.insert(sport, tuple(&out).daddr);
        }
        let Fixture { dp, events, _fs } = f;
        drop(events);
        drop(dp);

        let dp = EbpfDatapath::load_unattached(config(&_fs), 77).unwrap();
        let f = Fixture {
            events: dp.subscribe(),
            dp,
            _fs,
        };
        assert_eq!(f.dp.services().unwrap(), vec![two.clone()]);
        // The same service again, after the restart: the connections keep their backends.
        f.dp.upsert_service(&two).unwrap();
        for (sport, backend) in &chosen {
            let ack = l4_frame(TCP, POD_A, VIP, *sport, 80, ACK, b"", false);
            let out = run(&f, PROG_FROM_CONTAINER, &ack, verdict::REDIRECT);
            assert_eq!(tuple(&out).daddr, *backend, "flow {sport} moved");
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_maps_hold_thirty_thousand_services_and_one_with_ten_thousand_backends() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let f = fixture();
        let mut expected = Vec::new();
        for i in 0..30_000u32 {
            let [_, _, hi, lo] = i.to_be_bytes();
            let fe = Frontend {
                addr: Ipv4Addr::new(10, 97, hi, lo),
                port: 80,
                proto: L4Proto::Tcp,
            };
            let s = service(fe, &[sa(Ipv4Addr::new(10, 61, hi, lo), 8080)], &[]);
            f.dp.upsert_service(&s).unwrap();
            expected.push(s);
        }
        let big_fe = frontend(80, L4Proto::Tcp);
        let backends: Vec<SocketAddrV4> = (0..10_000u32)
            .map(|i| {
                let [_, _, hi, lo] = i.to_be_bytes();
                sa(Ipv4Addr::new(10, 62, hi, lo), 8080)
            })
            .collect();
        let big = service(big_fe, &backends[..9_000], &backends[9_000..]);
        f.dp.upsert_service(&big).unwrap();
        expected.push(big);
        expected.sort_by_key(|s| s.frontend);
        assert_eq!(f.dp.services().unwrap(), expected);

        for sport in 50000..50020 {
            let syn = l4_frame(TCP, POD_A, VIP, sport, 80, SYN, b"", false);
            let out = run(&f, PROG_FROM_CONTAINER, &syn, verdict::OK);
            let to = tuple(&out);
            assert!(
                backends[..9_000].contains(&sa(to.daddr, to.dport)),
                "{to:?}"
            );
        }
    })
    .await
    .unwrap();
}
