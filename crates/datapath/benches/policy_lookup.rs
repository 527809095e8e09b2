//! Per-packet cost of policy enforcement in the BPF programs, measured by the kernel itself
//! (`BPF_PROG_TEST_RUN` with a repeat count) on `to_container`, the ingress of a pod: a TCP
//! segment from an allowed peer, with 10 or 10,000 peer identities in the ipcache and the
//! policy map, and 1 or 1,000 rules selecting the endpoint, beside the same packet with the
//! endpoint's ingress not enforced (connection tracking still runs) in the same run.
//!
//! The rules: rule i allows TCP port 1000+i from its share of the identities (all of them with
//! one rule; identity i mod N with more rules than identities). The packet comes from the last
//! identity to the last rule's port, so the lookup cannot stop early.
//!
//! Run as root: `cargo bench -p plexus-datapath --bench policy_lookup` (PLEXUS_BENCH_REPEAT,
//! default 1,000,000 runs per figure).
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;

use plexus_datapath::{
    Datapath, Direction, EbpfDatapath, Endpoint, IpcacheValue, NodeConfig, RoutingMode,
    object::PROG_TO_CONTAINER,
    policy::{EndpointPolicy, PolicyRule},
};

const POD: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 7);
const EP_ID: u16 = 3833;
const FIRST_IDENTITY: u32 = 70_000;

fn peer_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 70, 0, 0)) + i)
}

fn main() {
    let repeat: u32 = std::env::var("PLEXUS_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("policy lookup per packet (BPF_PROG_TEST_RUN, to_container, {repeat} runs each)");
    println!(
        "  {:>10} {:>7} {:>9} {:>14} {:>14} {:>10}",
        "identities", "rules", "entries", "enforced", "not enforced", "policy"
    );
    for identities in [10u32, 10_000] {
        for rules in [1u32, 1000] {
            let fs = common::Bpffs::new();
            let dp = EbpfDatapath::load_unattached(
                NodeConfig {
                    node_ip: Ipv4Addr::new(192, 168, 77, 1),
                    routing: RoutingMode::Native,
                    gateway_ip: Ipv4Addr::new(10, 60, 1, 1),
                    cluster_id: 1,
                    tunnel_ifname: "unused".into(),
                    pin_dir: fs.path().join("node"),
                    encryption: Default::default(),
                },
                79,
            )
            .unwrap();
            dp.upsert_endpoint(&Endpoint {
                id: EP_ID,
                ipv4: POD,
                host_ifname: "lo".into(),
                host_ifindex: 1,
                pod_mac: [0x0a, 0, 0, 0, 0, 0x07],
                host_mac: [0x0e, 0, 0, 0, 1, 0x07],
                identity: 6587,
            })
            .unwrap();
            for i in 0..identities {
                dp.upsert_ipcache(
                    format!("{}/32", peer_ip(i)).parse().unwrap(),
                    IpcacheValue {
                        identity: FIRST_IDENTITY + i,
                        tunnel_endpoint: None,
                        cluster_id: 2,
                    },
                )
                .unwrap();
            }
            let mut policy = EndpointPolicy {
                ingress_enforced: true,
                egress_enforced: false,
                rules: Vec::new(),
            };
            for r in 0..rules {
                let port = 1000 + r as u16;
                let ids: Vec<u32> = if rules == 1 {
                    (0..identities).collect()
                } else if rules >= identities {
                    vec![r % identities]
                } else {
                    (0..identities).filter(|i| i % rules == r).collect()
                };
                for i in ids {
                    policy.rules.push(PolicyRule {
                        direction: Direction::Ingress,
                        identity: FIRST_IDENTITY + i,
                        proto: 6,
                        port_lo: port,
                        port_hi: port,
                        deny: false,
                    });
                }
            }
            dp.set_policy(EP_ID, &policy).unwrap();
            let entries: usize = dp.policies().unwrap()[&EP_ID].1.len();
            // The last identity, to the port of a rule that allows it.
            let last = identities - 1;
            let rule = if rules == 1 {
                0
            } else if rules >= identities {
                // The last rule whose identity is `last`.
                (0..rules).rev().find(|r| r % identities == last).unwrap()
            } else {
                last % rules
            };
            let frame = common::l4_frame(
                6,
                peer_ip(last),
                POD,
                40000,
                1000 + rule as u16,
                0x10,
                b"payload",
                false,
            );
            let (verdict, enforced) = dp
                .test_run_repeat(PROG_TO_CONTAINER, &frame, repeat)
                .unwrap();
            assert_eq!(verdict, 0, "the packet is allowed");
            let mut open = policy.clone();
            open.ingress_enforced = false;
            dp.set_policy(EP_ID, &open).unwrap();
            let (_, not_enforced) = dp
                .test_run_repeat(PROG_TO_CONTAINER, &frame, repeat)
                .unwrap();
            let ns = |d: std::time::Duration| d.as_nanos() as f64;
            println!(
                "  {:>10} {:>7} {:>9} {:>11.0} ns {:>11.0} ns {:>+7.0} ns",
                identities,
                rules,
                entries,
                ns(enforced),
                ns(not_enforced),
                ns(enforced) - ns(not_enforced)
            );
        }
    }
}
