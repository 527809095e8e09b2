#![allow(clippy::unwrap_used)]
//! Policy enforcement on synthetic packets (`BPF_PROG_TEST_RUN`) against live maps: default
//! deny per direction, allow by identity and port, deny over allow, replies of allowed
//! connections, established connections across policy changes, the drop event.

mod common;

use std::{net::Ipv4Addr, time::Duration};

use common::l4_frame;
use plexus_datapath::Direction;
use plexus_datapath::{
    Datapath, DropReason, EbpfDatapath, Endpoint, EventKind, IpcacheValue, MonitorEvent,
    NodeConfig, RoutingMode,
    ebpf::verdict,
    object::{PROG_FROM_CONTAINER, PROG_TO_CONTAINER},
    policy::{EndpointPolicy, PolicyRule},
};
use tokio::sync::broadcast;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 1);
/// The local pod (protected), on ifindex 1: test runs see packets arrive on loopback.
const DB: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 7);
const EMPLOYEE: Ipv4Addr = Ipv4Addr::new(10, 60, 2, 9);
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 60, 2, 10);
const DB_ID: u32 = 6587;
const EMPLOYEE_ID: u32 = 38354;
const STRANGER_ID: u32 = 38355;
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

fn fixture() -> Fixture {
    let fs = common::Bpffs::new();
    let dp = EbpfDatapath::load_unattached(
        NodeConfig {
            node_ip: Ipv4Addr::new(192, 168, 77, 1),
            routing: RoutingMode::Native,
            gateway_ip: GATEWAY,
            cluster_id: 1,
            tunnel_ifname: "unused".into(),
            pin_dir: fs.path().join("node"),
            encryption: Default::default(),
        },
        78,
    )
    .unwrap();
    dp.upsert_endpoint(&Endpoint {
        id: 3833,
        ipv4: DB,
        host_ifname: "lo".into(),
        host_ifindex: 1,
        pod_mac: [0x0a, 0, 0, 0, 0, 0x07],
        host_mac: [0x0e, 0, 0, 0, 1, 0x07],
        identity: DB_ID,
    })
    .unwrap();
    for (ip, id) in [(EMPLOYEE, EMPLOYEE_ID), (STRANGER, STRANGER_ID)] {
        dp.upsert_ipcache(
            format!("{ip}/32").parse().unwrap(),
            IpcacheValue {
                identity: id,
                tunnel_endpoint: None,
                cluster_id: 2,
            },
        )
        .unwrap();
    }
    let events = dp.subscribe();
    Fixture {
        dp,
        events,
        _fs: fs,
    }
}

fn rule(direction: Direction, identity: u32, proto: u8, port: u16, deny: bool) -> PolicyRule {
    PolicyRule {
        direction,
        identity,
        proto,
        port_lo: port,
        port_hi: if proto == 0 { 65535 } else { port },
        deny,
    }
}

/// The protected-db policy: ingress from employee on TCP 6379 only.
fn db_policy() -> EndpointPolicy {
    EndpointPolicy {
        ingress_enforced: true,
        egress_enforced: false,
        rules: vec![rule(Direction::Ingress, EMPLOYEE_ID, TCP, 6379, false)],
    }
}

fn verdict_of(f: &Fixture, program: &'static str, frame: &[u8]) -> u32 {
    f.dp.test_run(program, frame, 0).unwrap().verdict
}

async fn next_drop(rx: &mut broadcast::Receiver<MonitorEvent>) -> MonitorEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no event within 5 s")
            .unwrap();
        if matches!(e.kind, EventKind::Drop(_)) {
            return e;
        }
    }
}

#[tokio::test]
async fn ingress_is_default_deny_with_allowed_peers_and_replies_passing() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut f = fixture();
        let syn = |src, sport, dport| l4_frame(TCP, src, DB, sport, dport, SYN, b"", false);
        // No policy: everything enters.
        assert_eq!(
            verdict_of(&f, PROG_TO_CONTAINER, &syn(STRANGER, 40000, 6379)),
            verdict::OK
        );

        f.dp.set_policy(3833, &db_policy()).unwrap();
        assert_eq!(
            verdict_of(&f, PROG_TO_CONTAINER, &syn(EMPLOYEE, 40001, 6379)),
            verdict::OK
        );
        assert_eq!(
            verdict_of(&f, PROG_TO_CONTAINER, &syn(EMPLOYEE, 40002, 6380)),
            verdict::SHOT,
            "another port"
        );
        assert_eq!(
            verdict_of(&f, PROG_TO_CONTAINER, &syn(STRANGER, 40003, 6379)),
            verdict::SHOT
        );
        let drop = next_drop(&mut f.events).await;
        assert!(
            drop.to_string()
                .contains("10.60.2.9:40002 -> 10.60.1.7:6380"),
            "{drop}"
        );
        let drop = next_drop(&mut f.events).await;
        assert!(matches!(
            drop.kind,
            EventKind::Drop(DropReason::PolicyDenied)
        ));
        let line = drop.to_string();
        assert!(
            line.starts_with("xx drop (Policy denied)")
                && line.contains("to endpoint 3833")
                && line.contains(&format!("identity {STRANGER_ID}->{DB_ID}"))
                && line.contains("10.60.2.10:40003 -> 10.60.1.7:6379 tcp SYN"),
            "{line}"
        );

        // The db's replies to the employee leave (egress is not enforced here anyway).
        let reply = l4_frame(TCP, DB, EMPLOYEE, 6379, 40001, SYN_ACK, b"", false);
        assert_eq!(verdict_of(&f, PROG_FROM_CONTAINER, &reply), verdict::OK);

        // The db's own connections out: their replies enter although ingress is enforced.
        let out = l4_frame(UDP, DB, STRANGER, 5353, 53, 0, b"q", false);
        assert_eq!(verdict_of(&f, PROG_FROM_CONTAINER, &out), verdict::OK);
        let answer = l4_frame(UDP, STRANGER, DB, 53, 5353, 0, b"a", false);
        assert_eq!(
            verdict_of(&f, PROG_TO_CONTAINER, &answer),
            verdict::OK,
            "a reply"
        );
        let unsolicited = l4_frame(UDP, STRANGER, DB, 53, 5354, 0, b"a", false);
        assert_eq!(
            verdict_of(&f, PROG_TO_CONTAINER, &unsolicited),
            verdict::SHOT
        );

        // Removing the policy opens the door again.
        f.dp.remove_policy(3833).unwrap();
        assert_eq!(
            verdict_of(&f, PROG_TO_CONTAINER, &syn(STRANGER, 40004, 6379)),
            verdict::OK
        );
        assert!(f.dp.policies().unwrap().is_empty());
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn deny_wins_and_egress_is_enforced_at_the_source() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        f.dp.set_policy(
            3833,
            &EndpointPolicy {
                ingress_enforced: false,
                egress_enforced: true,
                rules: vec![
                    rule(Direction::Egress, 0, 0, 0, false),
                    rule(Direction::Egress, STRANGER_ID, 0, 0, true),
                    rule(Direction::Egress, 0, TCP, 22, true),
                ],
            },
        )
        .unwrap();
        let to = |dst, dport| l4_frame(TCP, DB, dst, 41000, dport, SYN, b"", false);
        assert_eq!(
            verdict_of(&f, PROG_FROM_CONTAINER, &to(EMPLOYEE, 80)),
            verdict::OK
        );
        assert_eq!(
            verdict_of(&f, PROG_FROM_CONTAINER, &to(EMPLOYEE, 22)),
            verdict::SHOT
        );
        assert_eq!(
            verdict_of(&f, PROG_FROM_CONTAINER, &to(STRANGER, 80)),
            verdict::SHOT
        );
        let tables = f.dp.policies().unwrap();
        assert_eq!(tables[&3833].0, (false, true));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn established_connections_survive_policy_changes() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        f.dp.set_policy(3833, &db_policy()).unwrap();
        let seg = |flags| l4_frame(TCP, EMPLOYEE, DB, 40010, 6379, flags, b"x", false);
        assert_eq!(verdict_of(&f, PROG_TO_CONTAINER, &seg(SYN)), verdict::OK);
        // The policy changes to one that still allows the connection, in another shape:
        // every packet of the connection passes at every step.
        let mut wider = db_policy();
        wider.rules = vec![rule(Direction::Ingress, EMPLOYEE_ID, 0, 0, false)];
        f.dp.set_policy(3833, &wider).unwrap();
        assert_eq!(verdict_of(&f, PROG_TO_CONTAINER, &seg(ACK)), verdict::OK);
        f.dp.set_policy(3833, &db_policy()).unwrap();
        assert_eq!(verdict_of(&f, PROG_TO_CONTAINER, &seg(ACK)), verdict::OK);
        let compiled = f.dp.policies().unwrap();
        assert_eq!(compiled[&3833].1.len(), 1, "stale entries removed");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn cidr_identities_let_egress_policy_name_addresses_outside_the_mesh() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        // The agent gives a prefix a policy names a node-local identity in the ipcache.
        let cidr_identity = plexus_datapath::IDENTITY_LOCAL_BASE + 7;
        f.dp.upsert_ipcache(
            "203.0.113.0/24".parse().unwrap(),
            IpcacheValue {
                identity: cidr_identity,
                tunnel_endpoint: None,
                cluster_id: 0,
            },
        )
        .unwrap();
        f.dp.set_policy(
            3833,
            &EndpointPolicy {
                ingress_enforced: false,
                egress_enforced: true,
                rules: vec![rule(Direction::Egress, cidr_identity, TCP, 443, false)],
            },
        )
        .unwrap();
        let to = |dst: Ipv4Addr, dport| l4_frame(TCP, DB, dst, 42000, dport, SYN, b"", false);
        let inside = Ipv4Addr::new(203, 0, 113, 9);
        assert_eq!(
            verdict_of(&f, PROG_FROM_CONTAINER, &to(inside, 443)),
            verdict::OK
        );
        assert_eq!(
            verdict_of(&f, PROG_FROM_CONTAINER, &to(inside, 80)),
            verdict::SHOT
        );
        let outside = Ipv4Addr::new(198, 51, 100, 1);
        assert_eq!(
            verdict_of(&f, PROG_FROM_CONTAINER, &to(outside, 443)),
            verdict::SHOT
        );
        // An identity beyond the node-local range is refused by the ipcache.
        assert!(
            f.dp.upsert_ipcache(
                "203.0.114.0/24".parse().unwrap(),
                IpcacheValue {
                    identity: plexus_datapath::IDENTITY_LOCAL_MAX + 1,
                    tunnel_endpoint: None,
                    cluster_id: 0,
                },
            )
            .is_err()
        );
    })
    .await
    .unwrap();
}

/// CIDR rules match the peer's address whoever owns it (here pods of another cluster with
/// their own identities): the agent names the prefixes in the policy prefix map and writes the
/// rules for their CIDR identities; the programs look a packet up with the peer's identity and
/// its address's CIDR identity, deny winning.
#[tokio::test]
async fn cidr_rules_match_pod_addresses_and_deny_wins_either_way() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        // `fromCIDRSet: [{cidr: 10.60.2.8/30, except: [10.60.2.10/32]}]` resolves to
        // 10.60.2.8/31 and 10.60.2.11/32: the employee (.9) is inside, the stranger (.10) is
        // carved out.
        let pair = plexus_datapath::IDENTITY_LOCAL_BASE + 1;
        let eleven = plexus_datapath::IDENTITY_LOCAL_BASE + 2;
        f.dp.upsert_policy_cidr("10.60.2.8/31".parse().unwrap(), pair)
            .unwrap();
        f.dp.upsert_policy_cidr("10.60.2.11/32".parse().unwrap(), eleven)
            .unwrap();
        assert_eq!(f.dp.policy_cidrs().unwrap().len(), 2);
        let set = |rules: Vec<PolicyRule>| {
            f.dp.set_policy(
                3833,
                &EndpointPolicy {
                    ingress_enforced: true,
                    egress_enforced: true,
                    rules,
                },
            )
            .unwrap()
        };
        let mut sport = 41000;
        let mut syn_in = |src: Ipv4Addr, dport: u16| {
            sport += 1;
            verdict_of(
                &f,
                PROG_TO_CONTAINER,
                &l4_frame(TCP, src, DB, sport, dport, SYN, b"", false),
            )
        };

        // A pod inside the allowed CIDR passes; the excepted one and other ports do not.
        set(vec![
            rule(Direction::Ingress, pair, TCP, 6379, false),
            rule(Direction::Ingress, eleven, TCP, 6379, false),
            rule(Direction::Egress, pair, TCP, 443, false),
        ]);
        assert_eq!(syn_in(EMPLOYEE, 6379), verdict::OK, "pod inside the CIDR");
        assert_eq!(syn_in(EMPLOYEE, 6380), verdict::SHOT, "another port");
        assert_eq!(
            syn_in(STRANGER, 6379),
            verdict::SHOT,
            "except carves it out"
        );
        // Egress: the destination's address decides.
        let out = |dst: Ipv4Addr, sport: u16| {
            verdict_of(
                &f,
                PROG_FROM_CONTAINER,
                &l4_frame(TCP, DB, dst, sport, 443, SYN, b"", false),
            )
        };
        assert_eq!(out(EMPLOYEE, 42001), verdict::OK);
        assert_eq!(out(STRANGER, 42002), verdict::SHOT);

        // A CIDR deny beats an allow of the pod's identity.
        set(vec![
            rule(Direction::Ingress, EMPLOYEE_ID, 0, 0, false),
            rule(Direction::Ingress, pair, TCP, 6379, true),
        ]);
        assert_eq!(syn_in(EMPLOYEE, 6379), verdict::SHOT, "CIDR deny wins");
        assert_eq!(
            syn_in(EMPLOYEE, 6380),
            verdict::OK,
            "identity allow elsewhere"
        );

        // An identity deny beats a CIDR allow.
        set(vec![
            rule(Direction::Ingress, pair, 0, 0, false),
            rule(Direction::Ingress, EMPLOYEE_ID, TCP, 6379, true),
        ]);
        assert_eq!(syn_in(EMPLOYEE, 6379), verdict::SHOT, "identity deny wins");
        assert_eq!(syn_in(EMPLOYEE, 6380), verdict::OK, "CIDR allow elsewhere");

        // A wildcard deny applies whichever identity is looked up.
        set(vec![
            rule(Direction::Ingress, pair, 0, 0, false),
            rule(Direction::Ingress, 0, TCP, 22, true),
        ]);
        assert_eq!(syn_in(EMPLOYEE, 22), verdict::SHOT);
        assert_eq!(syn_in(EMPLOYEE, 23), verdict::OK);

        // A direction that is not enforced still applies its deny entries (a rule with
        // `enableDefaultDeny: false`): by identity and by address.
        f.dp.set_policy(
            3833,
            &EndpointPolicy {
                ingress_enforced: false,
                egress_enforced: false,
                rules: vec![
                    rule(Direction::Ingress, pair, TCP, 6379, true),
                    rule(Direction::Ingress, STRANGER_ID, TCP, 6380, true),
                ],
            },
        )
        .unwrap();
        assert_eq!(
            syn_in(EMPLOYEE, 6379),
            verdict::SHOT,
            "CIDR deny, not enforced"
        );
        assert_eq!(syn_in(EMPLOYEE, 6380), verdict::OK, "default allow");
        assert_eq!(
            syn_in(STRANGER, 6380),
            verdict::SHOT,
            "identity deny, not enforced"
        );
        assert_eq!(syn_in(STRANGER, 6379), verdict::OK);
        set(vec![
            rule(Direction::Ingress, pair, 0, 0, false),
            rule(Direction::Ingress, 0, TCP, 22, true),
        ]);

        // Without the prefix in the map the address no longer counts.
        f.dp.remove_policy_cidr("10.60.2.8/31".parse().unwrap())
            .unwrap();
        assert_eq!(syn_in(EMPLOYEE, 23), verdict::SHOT);
        // Only node-local CIDR identities go into the prefix map.
        assert!(
            f.dp.upsert_policy_cidr("10.60.3.0/24".parse().unwrap(), EMPLOYEE_ID)
                .is_err()
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn connected_peers_are_the_live_connections_endpoints_opened() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let f = fixture();
        f.dp.set_policy(
            3833,
            &EndpointPolicy {
                ingress_enforced: false,
                egress_enforced: true,
                rules: vec![rule(Direction::Egress, 0, 0, 0, false)],
            },
        )
        .unwrap();
        assert!(f.dp.connected_peers().unwrap().is_empty());
        let out = |dst, flags| l4_frame(TCP, DB, dst, 41000, 80, flags, b"", false);
        // The db opens a connection to the employee and sends on it.
        assert_eq!(
            verdict_of(&f, PROG_FROM_CONTAINER, &out(EMPLOYEE, SYN)),
            verdict::OK
        );
        assert_eq!(
            verdict_of(&f, PROG_FROM_CONTAINER, &out(EMPLOYEE, ACK)),
            verdict::OK
        );
        // A connection the stranger opened to the db does not count: it is the stranger's.
        let inbound = l4_frame(TCP, STRANGER, DB, 42000, 6379, SYN, b"", false);
        assert_eq!(verdict_of(&f, PROG_TO_CONTAINER, &inbound), verdict::OK);
        // UDP counts too.
        let udp = l4_frame(
            UDP,
            DB,
            Ipv4Addr::new(10, 60, 3, 3),
            5353,
            53,
            0,
            b"q",
            true,
        );
        assert_eq!(verdict_of(&f, PROG_FROM_CONTAINER, &udp), verdict::OK);
        assert_eq!(
            f.dp.connected_peers().unwrap(),
            [EMPLOYEE, Ipv4Addr::new(10, 60, 3, 3)].into()
        );
        // The db closes its connection: the employee's address is no longer needed.
        const FIN_ACK: u8 = 0x11;
        assert_eq!(
            verdict_of(&f, PROG_FROM_CONTAINER, &out(EMPLOYEE, FIN_ACK)),
            verdict::OK
        );
        assert_eq!(
            f.dp.connected_peers().unwrap(),
            [Ipv4Addr::new(10, 60, 3, 3)].into()
        );
    })
    .await
    .unwrap();
}
