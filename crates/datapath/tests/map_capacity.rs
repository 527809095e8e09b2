#![allow(clippy::unwrap_used)]
//! Maps sized from configuration, against the kernel: a tiny ipcache refuses the entries
//! beyond its size with a typed error naming the map and keeps serving what it holds; a tiny
//! load-balancing map refuses a service that does not fit and keeps the ones it has, and so
//! does a tiny policy map with a policy; a pinned
//! map keeps its size when the next load asks for another. The programs keep looking up what
//! a full map holds (`BPF_PROG_TEST_RUN`). Each test loads the datapath in a
//! network namespace of its own, with maps pinned in a private bpffs.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::pods::{Netns, NsThread};
use plexus_datapath::{
    Datapath, DatapathError, Direction, EbpfDatapath, Endpoint, Frontend, IpcacheValue, L4Proto,
    LbService, MapSizes, NodeConfig, Prefix, RoutingMode,
    ebpf::verdict,
    object::{MAP_IPCACHE, MAP_LB_BACKENDS, MAP_LB_SERVICES, MAP_POLICY, PROG_FROM_CONTAINER},
    policy::{EndpointPolicy, PolicyRule},
};

/// A local pod, on ifindex 1: test runs see packets arrive on loopback.
const POD: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 7);
const POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x07];
const HOST_MAC: [u8; 6] = [0x0e, 0, 0, 0, 1, 0x07];

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

/// A namespace of this test run and a thread inside it.
fn netns(tag: &str) -> (Netns, NsThread) {
    let mut ns = Netns::default();
    let name = ns.add(format!("plx-maps-{tag}-{}", std::process::id()));
    let thread = NsThread::enter(&name);
    (ns, thread)
}

fn host(i: u8) -> Prefix {
    Prefix::new(Ipv4Addr::new(10, 70, 0, i), 32).unwrap()
}

fn value(i: u8) -> IpcacheValue {
    IpcacheValue {
        identity: 1000 + u32::from(i),
        tunnel_endpoint: Some(Ipv4Addr::new(192, 168, 77, 2)),
        cluster_id: 1,
    }
}

fn usage(dp: &EbpfDatapath, map: &str) -> (u64, u64) {
    let u = dp
        .map_usage()
        .unwrap()
        .into_iter()
        .find(|u| u.map == map)
        .unwrap();
    (u.entries, u.capacity)
}

#[test]
fn a_full_ipcache_refuses_new_prefixes_and_keeps_serving_its_entries() {
    let (_ns, thread) = netns("ipc");
    thread.run(|| {
        let fs = common::Bpffs::new();
        let sizes = MapSizes {
            ipcache: 8,
            ..MapSizes::default()
        };
        let dp = EbpfDatapath::load_unattached_with(config(&fs), 77, sizes).unwrap();
        let mut refused = Vec::new();
        for i in 1..=10 {
            match dp.upsert_ipcache(host(i), value(i)) {
                Ok(()) => {}
                Err(e) => refused.push((i, e)),
            }
        }
        assert_eq!(refused.len(), 2, "{refused:?}");
        for (i, err) in &refused {
            assert!((9..=10).contains(i), "{refused:?}");
            assert!(
                matches!(err, DatapathError::MapFull { map } if *map == MAP_IPCACHE),
                "{err:?}"
            );
            assert_eq!(err.full_map(), Some(MAP_IPCACHE));
            assert!(err.to_string().contains("PLEXUS_IPCACHE is full"), "{err}");
        }
        // The first 8 are there, with their values; the refused ones are not.
        let held = dp.ipcache().unwrap();
        let expected: Vec<_> = (1..=8).map(|i| (host(i), value(i))).collect();
        assert_eq!(held, expected);
        assert_eq!(usage(&dp, MAP_IPCACHE), (8, 8));
        // The programs look the held entries up: a pod's packet to one is tunnelled to its
        // node; to a refused one it is world's, handed to the stack.
        dp.upsert_endpoint(&Endpoint {
            id: 3833,
            ipv4: POD,
            host_ifname: "lo".into(),
            host_ifindex: 1,
            pod_mac: POD_MAC,
            host_mac: HOST_MAC,
            identity: 38354,
        })
        .unwrap();
        let to = |dst| common::tcp_frame(POD_MAC, HOST_MAC, POD, dst, 42728, 80, 0x02);
        for i in 1..=8 {
            let out = dp
                .test_run(PROG_FROM_CONTAINER, &to(host(i).addr), 0)
                .unwrap();
            assert_eq!(out.verdict, verdict::REDIRECT, "to {}", host(i));
        }
        let out = dp
            .test_run(PROG_FROM_CONTAINER, &to(host(9).addr), 0)
            .unwrap();
        assert_eq!(out.verdict, verdict::OK);
        // A full map still takes new values for the prefixes it holds.
        dp.upsert_ipcache(host(3), value(42)).unwrap();
        assert!(dp.ipcache().unwrap().contains(&(host(3), value(42))));
        // Room made, a refused prefix goes in.
        dp.remove_ipcache(host(1)).unwrap();
        dp.upsert_ipcache(host(9), value(9)).unwrap();
        assert_eq!(usage(&dp, MAP_IPCACHE), (8, 8));
        let err = dp.upsert_ipcache(host(10), value(10)).unwrap_err();
        assert_eq!(err.full_map(), Some(MAP_IPCACHE));
    });
}

fn service(port: u16, backends: u8) -> LbService {
    LbService {
        frontend: Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port,
            proto: L4Proto::Tcp,
        },
        active: (1..=backends)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 70, 1, i), 8080))
            .collect(),
        inactive: Vec::new(),
    }
}

#[test]
fn a_full_load_balancing_map_refuses_a_service_and_keeps_the_others() {
    let (_ns, thread) = netns("lb");
    thread.run(|| {
        let fs = common::Bpffs::new();
        let sizes = MapSizes {
            lb: 6,
            ..MapSizes::default()
        };
        let dp = EbpfDatapath::load_unattached_with(config(&fs), 77, sizes).unwrap();
        // A master entry and 3 slots in services, 3 backends.
        let first = service(80, 3);
        dp.upsert_service(&first).unwrap();
        let err = dp.upsert_service(&service(443, 4)).unwrap_err();
        let map = err.full_map();
        assert!(
            map == Some(MAP_LB_SERVICES) || map == Some(MAP_LB_BACKENDS),
            "{err:?}"
        );
        assert_eq!(dp.services().unwrap(), vec![first.clone()]);
        // What the refused update wrote is gone: the maps hold the first service only.
        let lb_usage = (usage(&dp, MAP_LB_SERVICES).0, usage(&dp, MAP_LB_BACKENDS).0);
        assert_eq!(lb_usage, (4, 3));
        // Room made (the first service gone), the refused one fits.
        dp.remove_service(first.frontend).unwrap();
        dp.upsert_service(&service(443, 4)).unwrap();
        assert_eq!(dp.services().unwrap(), vec![service(443, 4)]);
    });
}

fn allow(identities: std::ops::RangeInclusive<u32>) -> EndpointPolicy {
    EndpointPolicy {
        ingress_enforced: true,
        egress_enforced: false,
        rules: identities
            .map(|identity| PolicyRule {
                direction: Direction::Ingress,
                identity,
                proto: 6,
                port_lo: 80,
                port_hi: 80,
                deny: false,
            })
            .collect(),
    }
}

#[test]
fn a_full_policy_map_refuses_a_policy_and_keeps_the_others() {
    let (_ns, thread) = netns("pol");
    thread.run(|| {
        let fs = common::Bpffs::new();
        let sizes = MapSizes {
            policy: 4,
            ..MapSizes::default()
        };
        let dp = EbpfDatapath::load_unattached_with(config(&fs), 77, sizes).unwrap();
        dp.set_policy(7, &allow(100..=103)).unwrap();
        assert_eq!(usage(&dp, MAP_POLICY), (4, 4));
        let err = dp.set_policy(8, &allow(200..=201)).unwrap_err();
        assert_eq!(err.full_map(), Some(MAP_POLICY), "{err:?}");
        let held = dp.policies().unwrap();
        assert_eq!(held.keys().copied().collect::<Vec<_>>(), [7]);
        assert_eq!(held[&7].1.len(), 4);
        // Room made, the refused policy goes in.
        dp.remove_policy(7).unwrap();
        dp.set_policy(8, &allow(200..=201)).unwrap();
        assert_eq!(
            dp.policies().unwrap().keys().copied().collect::<Vec<_>>(),
            [8]
        );
    });
}

#[test]
fn a_pinned_map_keeps_its_size_across_a_load_asking_for_another() {
    let (_ns, thread) = netns("pin");
    thread.run(|| {
        let fs = common::Bpffs::new();
        let tiny = MapSizes {
            ipcache: 8,
            ..MapSizes::default()
        };
        let dp = EbpfDatapath::load_unattached_with(config(&fs), 77, tiny).unwrap();
        for i in 1..=8 {
            dp.upsert_ipcache(host(i), value(i)).unwrap();
        }
        drop(dp);
        // The next agent asks for the default size: the pinned map, entries and size, stays.
        let dp = EbpfDatapath::load_unattached_with(config(&fs), 77, MapSizes::default()).unwrap();
        assert_eq!(usage(&dp, MAP_IPCACHE), (8, 8));
        assert_eq!(dp.ipcache().unwrap().len(), 8);
        let err = dp.upsert_ipcache(host(9), value(9)).unwrap_err();
        assert_eq!(err.full_map(), Some(MAP_IPCACHE));
        drop(dp);
        // Created again (uninstalled), the map takes the configured size.
        EbpfDatapath::uninstall(&config(&fs).pin_dir).unwrap();
        let dp = EbpfDatapath::load_unattached_with(config(&fs), 77, MapSizes::default()).unwrap();
        assert_eq!(
            usage(&dp, MAP_IPCACHE),
            (0, u64::from(MapSizes::default().ipcache))
        );
    });
}

#[test]
fn a_size_of_zero_is_refused() {
    let fs = common::Bpffs::new();
    let sizes = MapSizes {
        policy: 0,
        ..MapSizes::default()
    };
    let err = EbpfDatapath::load_unattached_with(config(&fs), 77, sizes).unwrap_err();
    assert!(err.to_string().contains("PLEXUS_POLICY"), "{err}");
}
