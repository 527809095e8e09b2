#![allow(clippy::unwrap_used)]
//! Real packets: two pods on one node, each a network namespace joined to the node's
//! namespace by a veth pair, ping each other through from_container/to_container. The agent
//! is then "restarted" (datapath dropped and loaded again): traffic keeps flowing and the
//! pinned links are updated in place, not duplicated.
//!
//! Everything created here is named `plexus-dp-test-<random>-*` and deleted by guards, also
//! when the test fails.

mod common;

use common::pods::{self, GATEWAY, Netns, NsThread, Pod, endpoint, ip};

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use plexus_datapath::{
    Datapath, EbpfDatapath, Endpoint, EventKind, MonitorEvent, NodeConfig, ObservationPoint,
    RoutingMode,
};
use tokio::sync::broadcast;

fn make_pod_at(nets: &mut Netns, node: &str, prefix: &str, n: u8, pod_ip: Ipv4Addr) -> Pod {
    pods::make_pod(nets, node, prefix, n, pod_ip)
}

fn make_pod(nets: &mut Netns, node: &str, prefix: &str, n: u8) -> Pod {
    make_pod_at(nets, node, prefix, n, Ipv4Addr::new(10, 60, 1, 10 + n))
}

/// Pings from `from`'s namespace (entered with `nsenter --net` only, as everywhere here).
fn ping(from: &Pod, to: &Pod) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", from.ns))
        .args(["ping", "-c", "2", "-i", "0.2", "-W", "2"])
        .arg(to.ip.to_string())
        .output()
        .unwrap()
        .status
        .success()
}

/// Waits up to 5 s for an event matching `pred`.
fn wait_event(
    rx: &mut broadcast::Receiver<MonitorEvent>,
    pred: impl Fn(&MonitorEvent) -> bool,
) -> MonitorEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rx.try_recv() {
            Ok(ev) if pred(&ev) => return ev,
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => {
                assert!(Instant::now() < deadline, "expected event not seen in 5 s");
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn tcx_programs(node: &NsThread, ifname: &str, attach: TcAttachType) -> usize {
    let ifname = ifname.to_owned();
    node.run(move || SchedClassifier::query_tcx(&ifname, attach).unwrap().1.len())
}

/// Waits up to 5 s for `expected` TCX programs: a link whose last pin is removed is released
/// by the kernel asynchronously (RCU and a workqueue).
fn wait_tcx(node: &NsThread, ifname: &str, attach: TcAttachType, expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = tcx_programs(node, ifname, attach);
        if n == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ifname} {attach:?}: {n} TCX programs, expected {expected}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_pods_ping_through_the_datapath_and_survive_a_restart() {
    let fs = common::Bpffs::new();
    let prefix = format!("plexus-dp-test-{:08x}", rand::random::<u32>());
    let mut nets = Netns::default();
    let node_ns = nets.add(format!("{prefix}-node"));
    ip(&["-n", &node_ns, "link", "set", "lo", "up"]);
    let a = make_pod(&mut nets, &node_ns, &prefix, 1);
    let b = make_pod(&mut nets, &node_ns, &prefix, 2);

    let node = NsThread::enter(&node_ns);
    let config = NodeConfig {
        node_ip: Ipv4Addr::new(192, 168, 77, 1),
        routing: RoutingMode::Tunnel,
        gateway_ip: GATEWAY,
        cluster_id: 1,
        tunnel_ifname: "plexus_vxlan".into(),
        pin_dir: fs.path().join("node"),
        encryption: Default::default(),
    };
    let (ep_a, ep_b) = (endpoint(&a, 101, 5001), endpoint(&b, 102, 5002));

    let load = {
        let (config, ep_a, ep_b) = (config.clone(), ep_a.clone(), ep_b.clone());
        move || {
            let dp = EbpfDatapath::load(config).unwrap();
            dp.upsert_endpoint(&ep_a).unwrap();
            dp.upsert_endpoint(&ep_b).unwrap();
            Arc::new(dp)
        }
    };
    let dp = node.run(load.clone());
    let mut events = dp.subscribe();
    assert_eq!(
        node.run({
            let dp = dp.clone();
            move || dp.endpoints().unwrap()
        })
        .iter()
        .map(|e| e.host_ifname.as_str())
        .collect::<Vec<_>>(),
        vec!["lxc1", "lxc2"]
    );

    assert!(ping(&a, &b), "pod a cannot ping pod b through the datapath");
    let out = wait_event(&mut events, |e| {
        e.kind == EventKind::Trace(ObservationPoint::FromEndpoint) && e.protocol == 1
    });
    assert_eq!(
        (out.endpoint_id, out.src_identity, out.dst_identity),
        (101, 5001, 5002)
    );
    assert_eq!((out.saddr, out.daddr), (a.ip, b.ip));
    let delivered = wait_event(&mut events, |e| {
        e.kind == EventKind::Trace(ObservationPoint::ToEndpoint) && e.protocol == 1
    });
    assert_eq!(delivered.endpoint_id, 102);
    assert_eq!(delivered.src_identity, 5001, "identity carried in the mark");
    let reply = wait_event(&mut events, |e| {
        e.kind == EventKind::Trace(ObservationPoint::ToEndpoint) && e.daddr == a.ip
    });
    assert_eq!((reply.src_identity, reply.dst_identity), (5002, 5001));
    assert!(reply.to_string().contains("EchoReply"), "{reply}");

    // The agent goes away: pinned links and maps keep traffic flowing.
    drop(events);
    drop(dp);
    assert!(ping(&b, &a), "traffic stopped when the agent exited");

    // A new agent takes over the pinned links in place.
    let dp = node.run(load);
    assert_eq!(tcx_programs(&node, "lxc1", TcAttachType::Ingress), 1);
    assert_eq!(tcx_programs(&node, "lxc1", TcAttachType::Egress), 1);
    assert_eq!(
        tcx_programs(&node, "plexus_vxlan", TcAttachType::Ingress),
        1
    );
    let mut events = dp.subscribe();
    assert!(ping(&a, &b), "traffic broken after the restart");
    wait_event(&mut events, |e| {
        e.kind == EventKind::Trace(ObservationPoint::ToEndpoint) && e.daddr == b.ip
    });

    // Removing an endpoint detaches its programs; its pod is unknown from then on.
    node.run({
        let dp = dp.clone();
        let ip = a.ip;
        move || dp.remove_endpoint(ip).unwrap()
    });
    wait_tcx(&node, "lxc1", TcAttachType::Ingress, 0);
    wait_tcx(&node, "lxc1", TcAttachType::Egress, 0);
    assert_eq!(tcx_programs(&node, "lxc2", TcAttachType::Ingress), 1);
    assert!(!ping(&b, &a), "a removed endpoint still receives traffic");

    drop(events);
    drop(dp);
    EbpfDatapath::uninstall(&fs.path().join("node")).unwrap();
    wait_tcx(&node, "lxc2", TcAttachType::Ingress, 0);
    wait_tcx(&node, "plexus_vxlan", TcAttachType::Ingress, 0);
    drop(node);
    drop(nets);
    drop(fs);
}

fn node_config(fs: &common::Bpffs, name: &str, node_ip: Ipv4Addr) -> NodeConfig {
    NodeConfig {
        node_ip,
        routing: RoutingMode::Tunnel,
        gateway_ip: GATEWAY,
        cluster_id: 1,
        tunnel_ifname: "plexus_vxlan".into(),
        pin_dir: fs.path().join(name),
        encryption: Default::default(),
    }
}

#[test]
fn pods_on_two_nodes_ping_through_the_vxlan_tunnel_with_identity_in_the_vni() {
    let fs = common::Bpffs::new();
    let prefix = format!("plexus-dp-test-{:08x}", rand::random::<u32>());
    let mut nets = Netns::default();
    // The underlay: one veth pair between the nodes.
    let ((n1, ip1), (n2, ip2)) = pods::two_nodes(&mut nets, &prefix);
    let a = make_pod_at(&mut nets, &n1, &prefix, 1, Ipv4Addr::new(10, 60, 1, 11));
    let b = make_pod_at(&mut nets, &n2, &prefix, 2, Ipv4Addr::new(10, 60, 2, 12));

    let node1 = NsThread::enter(&n1);
    let node2 = NsThread::enter(&n2);
    let setup = |cfg: NodeConfig, ep: Endpoint, remote: &str, identity: u32, tunnel: Ipv4Addr| {
        let remote: plexus_datapath::Prefix = remote.parse().unwrap();
        move || {
            let dp = EbpfDatapath::load(cfg).unwrap();
            dp.upsert_endpoint(&ep).unwrap();
            dp.upsert_ipcache(
                remote,
                plexus_datapath::IpcacheValue {
                    identity,
                    tunnel_endpoint: Some(tunnel),
                    cluster_id: 1,
                },
            )
            .unwrap();
            Arc::new(dp)
        }
    };
    let dp1 = node1.run(setup(
        node_config(&fs, "n1", ip1),
        endpoint(&a, 11, 5001),
        "10.60.2.0/24",
        5002,
        ip2,
    ));
    let dp2 = node2.run(setup(
        node_config(&fs, "n2", ip2),
        endpoint(&b, 12, 5002),
        "10.60.1.0/24",
        5001,
        ip1,
    ));
    let mut ev1 = dp1.subscribe();
    let mut ev2 = dp2.subscribe();

    assert!(ping(&a, &b), "pod a cannot ping pod b across the tunnel");
    let decap = wait_event(&mut ev2, |e| {
        e.kind == EventKind::Trace(ObservationPoint::FromOverlay) && e.protocol == 1
    });
    assert_eq!((decap.src_identity, decap.dst_identity), (5001, 5002));
    let delivered = wait_event(&mut ev2, |e| {
        e.kind == EventKind::Trace(ObservationPoint::ToEndpoint) && e.daddr == b.ip
    });
    assert_eq!(delivered.src_identity, 5001, "identity carried in the VNI");
    let reply = wait_event(&mut ev1, |e| {
        e.kind == EventKind::Trace(ObservationPoint::ToEndpoint) && e.daddr == a.ip
    });
    assert_eq!((reply.src_identity, reply.dst_identity), (5002, 5001));

    // Without its ipcache entry, node 1 hands the packet to its stack, which has no route.
    node1.run({
        let dp = dp1.clone();
        move || dp.remove_ipcache("10.60.2.0/24".parse().unwrap()).unwrap()
    });
    assert!(!ping(&a, &b));

    drop((ev1, ev2, dp1, dp2));
    for name in ["n1", "n2"] {
        EbpfDatapath::uninstall(&fs.path().join(name)).unwrap();
    }
    drop((node1, node2));
    drop(nets);
    drop(fs);
}
