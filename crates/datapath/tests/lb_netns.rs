#![allow(clippy::unwrap_used)]
//! Real sockets through a ClusterIP service: a client pod and two backend pods on one node
//! (network namespaces joined by veth pairs, the programs attached by `EbpfDatapath`). The
//! client reaches both backends through the service address over TCP and UDP, sees the service
//! as its peer, and a pod reaches itself through its own service (hairpin). Then a backend on
//! another node, reached through the VXLAN tunnel and by native routing.
//!
//! Namespaces are named `plxlb-<random>-*` and deleted by guards, also when the test fails.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use common::pods::{self, GATEWAY, Netns, NsThread, endpoint, ip, mac_str, make_pod};
use plexus_datapath::{
    Datapath, EbpfDatapath, Frontend, L4Proto, LbService, NodeConfig, RoutingMode,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A second service whose only backend is the client itself.
const SELF_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);
const TIMEOUT: Duration = Duration::from_secs(3);

/// A TCP and a UDP echo-like server in one pod: each answers "<name> <peer>" and stops on drop.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &NsThread, name: &'static str, tcp_port: u16, udp_port: u16) -> Self {
        // Sockets are created in the pod's namespace and served from plain threads.
        let (listener, udp) = ns.run(move || {
            let l = TcpListener::bind(("0.0.0.0", tcp_port)).unwrap();
            l.set_nonblocking(true).unwrap();
            let u = UdpSocket::bind(("0.0.0.0", udp_port)).unwrap();
            u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            (l, u)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let tcp = {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, peer)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(format!("{name} {peer}").as_bytes());
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        let udp = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(format!("{name} {peer}").as_bytes(), peer);
                    }
                }
            })
        };
        Self {
            stop,
            threads: vec![tcp, udp],
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from the client's namespace to `to`; the answer, the socket's peer and local
/// addresses.
fn tcp_request(client: &NsThread, to: SocketAddrV4) -> (String, SocketAddr, SocketAddr) {
    client.run(move || {
        let mut s = TcpStream::connect_timeout(&to.into(), TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("reading from {to}: {e}"));
        (answer, s.peer_addr().unwrap(), s.local_addr().unwrap())
    })
}

/// One datagram from the client to `to` on a connected socket (which only accepts datagrams
/// from `to`): the answer and the local address.
fn udp_request(client: &NsThread, to: SocketAddrV4) -> (String, SocketAddr) {
    client.run(move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.connect(to).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 512];
        // A lost first datagram (neighbour resolution) is sent again.
        for _ in 0..6 {
            u.send(b"question").unwrap();
            if let Ok(n) = u.recv(&mut buf) {
                return (
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                    u.local_addr().unwrap(),
                );
            }
        }
        panic!("no UDP answer through {to}");
    })
}

fn service(addr: Ipv4Addr, port: u16, proto: L4Proto, active: Vec<SocketAddrV4>) -> LbService {
    LbService {
        frontend: Frontend { addr, port, proto },
        active,
        inactive: Vec::new(),
    }
}

#[test]
fn a_client_pod_reaches_two_backends_and_itself_through_services() {
    let fs = common::Bpffs::new();
    let prefix = format!("plxlb-{:08x}", rand::random::<u32>());
    let mut nets = Netns::default();
    let node_ns = nets.add(format!("{prefix}-node"));
    ip(&["-n", &node_ns, "link", "set", "lo", "up"]);
    let client = make_pod(
        &mut nets,
        &node_ns,
        &prefix,
        1,
        Ipv4Addr::new(10, 60, 1, 11),
    );
    let b1 = make_pod(
        &mut nets,
        &node_ns,
        &prefix,
        2,
        Ipv4Addr::new(10, 60, 1, 12),
    );
    let b2 = make_pod(
        &mut nets,
        &node_ns,
        &prefix,
        3,
        Ipv4Addr::new(10, 60, 1, 13),
    );

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
    let eps = [
        endpoint(&client, 11, 5001),
        endpoint(&b1, 12, 5002),
        endpoint(&b2, 13, 5002),
    ];
    let services = vec![
        service(
            VIP,
            80,
            L4Proto::Tcp,
            vec![
                SocketAddrV4::new(b1.ip, 8080),
                SocketAddrV4::new(b2.ip, 8080),
            ],
        ),
        service(
            VIP,
            53,
            L4Proto::Udp,
            vec![
                SocketAddrV4::new(b1.ip, 5353),
                SocketAddrV4::new(b2.ip, 5353),
            ],
        ),
        service(
            SELF_VIP,
            80,
            L4Proto::Tcp,
            vec![SocketAddrV4::new(client.ip, 8080)],
        ),
    ];
    let dp = node.run({
        let services = services.clone();
        move || {
            let dp = EbpfDatapath::load(config).unwrap();
            for ep in &eps {
                dp.upsert_endpoint(ep).unwrap();
            }
            for s in &services {
                dp.upsert_service(s).unwrap();
            }
            Arc::new(dp)
        }
    });

    let client_ns = NsThread::enter(&client.ns);
    let (b1_ns, b2_ns) = (NsThread::enter(&b1.ns), NsThread::enter(&b2.ns));
    let servers = [
        Servers::start(&b1_ns, "b1", 8080, 5353),
        Servers::start(&b2_ns, "b2", 8080, 5353),
        Servers::start(&client_ns, "self", 8080, 5353),
    ];

    // TCP: many connections, both backends answer; the client's peer is the service, the
    // backend's peer is the client itself (no source translation).
    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        let (answer, peer, local) = tcp_request(&client_ns, SocketAddrV4::new(VIP, 80));
        assert_eq!(peer, SocketAddr::from((VIP, 80)));
        let (name, backend_peer) = answer.split_once(' ').unwrap();
        assert_eq!(
            backend_peer,
            local.to_string(),
            "the backend sees the client"
        );
        seen.insert(name.to_owned());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["b1".to_owned(), "b2".to_owned()]),
        "both backends answer"
    );

    // UDP: answers come back from the service address (the socket is connected to it).
    let mut seen = BTreeSet::new();
    for _ in 0..16 {
        let (answer, local) = udp_request(&client_ns, SocketAddrV4::new(VIP, 53));
        let (name, backend_peer) = answer.split_once(' ').unwrap();
        assert_eq!(backend_peer, local.to_string());
        seen.insert(name.to_owned());
    }
    assert_eq!(seen, BTreeSet::from(["b1".to_owned(), "b2".to_owned()]));

    // Hairpin: the client reaches its own server through a service; the server sees the
    // hairpin address, the client sees the service.
    for _ in 0..3 {
        let (answer, peer, local) = tcp_request(&client_ns, SocketAddrV4::new(SELF_VIP, 80));
        assert_eq!(peer, SocketAddr::from((SELF_VIP, 80)));
        let (name, server_peer) = answer.split_once(' ').unwrap();
        assert_eq!(name, "self");
        assert_eq!(
            server_peer,
            SocketAddr::from((HAIRPIN, local.port())).to_string(),
            "the pod sees itself from the hairpin address"
        );
    }

    // What the maps hold reads back as what was written.
    let mut read_back = node.run({
        let dp = dp.clone();
        move || dp.services().unwrap()
    });
    read_back.sort_by_key(|s| s.frontend);
    let mut expected = services;
    expected.sort_by_key(|s| s.frontend);
    assert_eq!(read_back, expected);

    drop(servers);
    drop((client_ns, b1_ns, b2_ns));
    drop(dp);
    EbpfDatapath::uninstall(&fs.path().join("node")).unwrap();
    drop(node);
    drop(nets);
    drop(fs);
}

/// Runs `sysctl -w` in a namespace (entered with nsenter, which leaves /sys alone).
fn sysctl(netns: &str, setting: &str) {
    let status = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["sysctl", "-qw", setting])
        .status()
        .unwrap();
    assert!(status.success(), "sysctl {setting} in {netns}");
}

/// A client on node 1 and the only backend on node 2: the service traffic crosses the
/// underlay in VXLAN (tunnel) or plain (native routing), and the backend's replies, arriving
/// through from_overlay or the kernel's forwarding, get the service back in to_container.
fn service_backend_on_another_node(routing: RoutingMode) {
    let fs = common::Bpffs::new();
    let prefix = format!("plxlb-{:08x}", rand::random::<u32>());
    let mut nets = Netns::default();
    // The underlay: one veth pair between the nodes.
    let ((n1, ip1), (n2, ip2)) = pods::two_nodes(&mut nets, &prefix);
    let client = make_pod(&mut nets, &n1, &prefix, 1, Ipv4Addr::new(10, 60, 1, 11));
    let backend = make_pod(&mut nets, &n2, &prefix, 2, Ipv4Addr::new(10, 60, 2, 12));
    if routing == RoutingMode::Native {
        // What the agent's routing would install: pod routes, node routes, forwarding.
        for (ns, pod, remote_cidr, remote_node) in [
            (&n1, &client, "10.60.2.0/24", ip2),
            (&n2, &backend, "10.60.1.0/24", ip1),
        ] {
            sysctl(ns, "net.ipv4.ip_forward=1");
            let pod_ip = pod.ip.to_string();
            ip(&["-n", ns, "route", "add", &pod_ip, "dev", &pod.host_if]);
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                &pod_ip,
                "lladdr",
                &mac_str(pod.pod_mac),
                "dev",
                &pod.host_if,
            ]);
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                remote_cidr,
                "via",
                &remote_node.to_string(),
            ]);
        }
    }

    let config = |name: &str, node_ip| NodeConfig {
        node_ip,
        routing,
        gateway_ip: GATEWAY,
        cluster_id: 1,
        tunnel_ifname: "plexus_vxlan".into(),
        pin_dir: fs.path().join(name),
        encryption: Default::default(),
    };
    let setup = |cfg: NodeConfig,
                 ep: plexus_datapath::Endpoint,
                 remote: &str,
                 identity: u32,
                 tunnel: Ipv4Addr,
                 services: Vec<LbService>| {
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
            for s in &services {
                dp.upsert_service(s).unwrap();
            }
            Arc::new(dp)
        }
    };
    let services = vec![
        service(
            VIP,
            80,
            L4Proto::Tcp,
            vec![SocketAddrV4::new(backend.ip, 8080)],
        ),
        service(
            VIP,
            53,
            L4Proto::Udp,
            vec![SocketAddrV4::new(backend.ip, 5353)],
        ),
    ];
    let node1 = NsThread::enter(&n1);
    let node2 = NsThread::enter(&n2);
    let dp1 = node1.run(setup(
        config("n1", ip1),
        endpoint(&client, 11, 5001),
        "10.60.2.0/24",
        5002,
        ip2,
        services,
    ));
    let dp2 = node2.run(setup(
        config("n2", ip2),
        endpoint(&backend, 12, 5002),
        "10.60.1.0/24",
        5001,
        ip1,
        Vec::new(),
    ));

    let client_ns = NsThread::enter(&client.ns);
    let backend_ns = NsThread::enter(&backend.ns);
    let servers = Servers::start(&backend_ns, "remote", 8080, 5353);
    for _ in 0..3 {
        let (answer, peer, local) = tcp_request(&client_ns, SocketAddrV4::new(VIP, 80));
        assert_eq!(peer, SocketAddr::from((VIP, 80)));
        assert_eq!(answer, format!("remote {local}"));
    }
    let (answer, local) = udp_request(&client_ns, SocketAddrV4::new(VIP, 53));
    assert_eq!(answer, format!("remote {local}"));

    drop(servers);
    drop((client_ns, backend_ns, dp1, dp2));
    for name in ["n1", "n2"] {
        EbpfDatapath::uninstall(&fs.path().join(name)).unwrap();
    }
    drop((node1, node2));
    drop(nets);
    drop(fs);
}

#[test]
fn a_backend_on_another_node_is_reached_through_the_tunnel() {
    service_backend_on_another_node(RoutingMode::Tunnel);
}

#[test]
fn a_backend_on_another_node_is_reached_by_native_routing() {
    service_backend_on_another_node(RoutingMode::Native);
}
