#![allow(clippy::unwrap_used)]
//! The DNS proxy redirect with real packets: pod a queries pod b (its DNS server) on port 53,
//! over UDP and TCP. Without a redirect entry b answers; with one, the query reaches a
//! transparent proxy socket on the node's 127.0.0.1, which sees the original destination and
//! answers from it (the pod sees b answer, from port 53); with the entry but no proxy socket
//! (an agent restarting), b answers again: lookups never fail for want of a proxy.
//!
//! Everything created here is named `plexus-dp-dns-<random>-*` and deleted by guards, also
//! when the test fails.

mod common;

use common::pods::{self, GATEWAY, Netns, NsThread, endpoint, ip, route_to};

use std::io::{IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn, bind, recvmsg,
    setsockopt, socket, sockopt,
};
use plexus_datapath::{Datapath, EbpfDatapath, NodeConfig, RoutingMode};

const PROXY_PORT: u16 = 10053;
const TIMEOUT: Duration = Duration::from_secs(2);

/// A socket of `ty` with IP_TRANSPARENT (and SO_REUSEADDR), bound to `addr`.
fn transparent(ty: SockType, addr: SocketAddrV4) -> OwnedFd {
    let fd = socket(AddressFamily::Inet, ty, SockFlag::empty(), None).unwrap();
    setsockopt(&fd, sockopt::IpTransparent, &true).unwrap();
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).unwrap();
    fd
}

/// The node's DNS proxy stand-in: answers `proxy <proto> <original destination> <query>` over
/// UDP and TCP on 127.0.0.1:PROXY_PORT until stopped; its sockets close when it stops.
struct Proxy {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(node: &NsThread, node_ns: &str) -> Self {
        let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PROXY_PORT);
        let (udp, tcp) = node.run(move || {
            let udp = transparent(SockType::Datagram, listen);
            setsockopt(&udp, sockopt::Ipv4OrigDstAddr, &true).unwrap();
            let tcp = transparent(SockType::Stream, listen);
            nix::sys::socket::listen(&tcp, nix::sys::socket::Backlog::new(16).unwrap()).unwrap();
            (UdpSocket::from(udp), TcpListener::from(tcp))
        });
        let stop = Arc::new(AtomicBool::new(false));
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp_thread = thread::spawn({
            let stop = stop.clone();
            let netns = format!("/run/netns/{node_ns}");
            move || {
                // The answers' sockets are made here: in the node's namespace, never the host's.
                let file = std::fs::File::open(netns).unwrap();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let mut buf = [0u8; 512];
                    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in);
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    let Ok(msg) = recvmsg::<SockaddrIn>(
                        udp.as_raw_fd(),
                        &mut iov,
                        Some(&mut cmsg),
                        MsgFlags::empty(),
                    ) else {
                        continue;
                    };
                    let client = msg.address.unwrap();
                    let orig = msg
                        .cmsgs()
                        .unwrap()
                        .find_map(|c| match c {
                            ControlMessageOwned::Ipv4OrigDstAddr(a) => Some(SockaddrIn::from(a)),
                            _ => None,
                        })
                        .expect("the query's original destination");
                    let n = msg.bytes;
                    let orig = SocketAddrV4::new(orig.ip(), orig.port());
                    let answer = format!("proxy udp {orig} {}", String::from_utf8_lossy(&buf[..n]));
                    // The answer leaves from the original destination, port 53 included.
                    let from = UdpSocket::from(transparent(SockType::Datagram, orig));
                    from.send_to(
                        answer.as_bytes(),
                        SocketAddrV4::new(client.ip(), client.port()),
                    )
                    .unwrap();
                }
            }
        });
        let tcp_thread = thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((mut conn, _)) => {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                            let orig = conn.local_addr().unwrap();
                            let mut buf = [0u8; 512];
                            let n = conn.read(&mut buf).unwrap_or(0);
                            let answer =
                                format!("proxy tcp {orig} {}", String::from_utf8_lossy(&buf[..n]));
                            let _ = conn.write_all(answer.as_bytes());
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        });
        Self {
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// Stops serving and closes the sockets.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

/// Pod b's DNS server stand-in on port 53: answers `server <proto> <query>`.
fn start_server(pod: &NsThread) {
    let (udp, tcp) = pod.run(|| {
        (
            UdpSocket::bind("0.0.0.0:53").unwrap(),
            TcpListener::bind("0.0.0.0:53").unwrap(),
        )
    });
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let answer = format!("server udp {}", String::from_utf8_lossy(&buf[..n]));
            let _ = udp.send_to(answer.as_bytes(), from);
        }
    });
    thread::spawn(move || {
        for mut conn in tcp.incoming().flatten() {
            conn.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut buf = [0u8; 512];
            let n = conn.read(&mut buf).unwrap_or(0);
            let answer = format!("server tcp {}", String::from_utf8_lossy(&buf[..n]));
            let _ = conn.write_all(answer.as_bytes());
        }
    });
}

/// A UDP query from pod `client` to `server`:53: the answer and where it came from.
fn query_udp(client: &NsThread, server: Ipv4Addr, query: &str) -> (String, SocketAddr) {
    let socket = client.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket
        .send_to(query.as_bytes(), SocketAddrV4::new(server, 53))
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no answer to {query}: {e}"));
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

/// A TCP query from pod `client` to `server`:53: the answer.
fn query_tcp(client: &NsThread, server: Ipv4Addr, query: &str) -> String {
    let addr = SocketAddr::V4(SocketAddrV4::new(server, 53));
    let mut conn = client.run(move || TcpStream::connect_timeout(&addr, TIMEOUT).unwrap());
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    conn.write_all(query.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn dns_queries_go_to_the_proxy_and_to_their_server_when_it_is_gone() {
    let fs = common::Bpffs::new();
    let prefix = format!("plexus-dp-dns-{:08x}", rand::random::<u32>());
    let mut nets = Netns::default();
    let node_ns = nets.add(format!("{prefix}-node"));
    ip(&["-n", &node_ns, "link", "set", "lo", "up"]);
    let a = pods::make_pod(
        &mut nets,
        &node_ns,
        &prefix,
        1,
        Ipv4Addr::new(10, 60, 1, 11),
    );
    let b = pods::make_pod(
        &mut nets,
        &node_ns,
        &prefix,
        2,
        Ipv4Addr::new(10, 60, 1, 12),
    );
    route_to(&node_ns, &a);

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
    let dp = node.run(move || {
        let dp = EbpfDatapath::load(config).unwrap();
        dp.upsert_endpoint(&ep_a).unwrap();
        dp.upsert_endpoint(&ep_b).unwrap();
        Arc::new(dp)
    });
    let (client, server) = (NsThread::enter(&a.ns), NsThread::enter(&b.ns));
    start_server(&server);

    // Loading the datapath installed the proxy's routing in the node.
    let rules = std::process::Command::new("ip")
        .args(["-n", &node_ns, "rule", "show"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("9:\tfrom all fwmark 0x200/0xf00 lookup 2004"),
        "{rules}"
    );

    // No redirect: the server answers.
    assert_eq!(query_udp(&client, b.ip, "q1").0, "server udp q1");
    assert_eq!(query_tcp(&client, b.ip, "q2"), "server tcp q2");

    // Redirected to the proxy, which answers as the server, from port 53.
    let proxy = Proxy::start(&node, &node_ns);
    node.run({
        let dp = dp.clone();
        move || dp.set_dns_redirect(101, Some(PROXY_PORT)).unwrap()
    });
    assert_eq!(
        dp.dns_redirects().unwrap(),
        [(101, PROXY_PORT)].into_iter().collect()
    );
    let (answer, from) = query_udp(&client, b.ip, "q3");
    assert_eq!(answer, format!("proxy udp {}:53 q3", b.ip));
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(b.ip, 53)));
    assert_eq!(
        query_tcp(&client, b.ip, "q4"),
        format!("proxy tcp {}:53 q4", b.ip)
    );

    // The proxy is gone (its agent restarts): queries go to their server.
    proxy.stop();
    assert_eq!(query_udp(&client, b.ip, "q6").0, "server udp q6");
    assert_eq!(query_tcp(&client, b.ip, "q7"), "server tcp q7");

    // Back with the proxy, then the entry removed: the server answers again.
    let proxy = Proxy::start(&node, &node_ns);
    assert_eq!(
        query_udp(&client, b.ip, "q8").0,
        format!("proxy udp {}:53 q8", b.ip)
    );
    dp.set_dns_redirect(101, None).unwrap();
    assert!(dp.dns_redirects().unwrap().is_empty());
    assert_eq!(query_udp(&client, b.ip, "q9").0, "server udp q9");
    proxy.stop();

    drop(client);
    drop(server);
    drop(dp);
    EbpfDatapath::uninstall(&fs.path().join("node")).unwrap();
    drop(node);
    drop(nets);
    drop(fs);
}
