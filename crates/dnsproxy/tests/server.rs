#![allow(clippy::unwrap_used)]
//! The DNS proxy server with real packets: pod a's queries to its DNS server (pod b, serving
//! `example.test` with `plexus-dns`) are redirected by the eBPF datapath to the server on the
//! node's 127.0.0.1, which answers REFUSED for names the client's CiliumNetworkPolicy does not
//! allow, forwards the others to b, learns from the answers (applying before the client sees
//! them, at most `hold_max`), and answers as b, from b's address and port 53. After shutdown
//! the queries go to b directly.
//!
//! Every namespace, link and mount is named `plexus-dnsproxy-<random>-*` and deleted by
//! guards, also when a test fails; client sockets time out after 5 s, so no test hangs.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{FakeHost, Lab, addresses, lookup_tcp, lookup_udp};
use hickory_proto::op::{Message, ResponseCode};
use plexus_dnsproxy::{Change, DnsProxyServer, IdentityChange};

const ALLOWED: (&str, Ipv4Addr) = ("www.example.test.", Ipv4Addr::new(192, 0, 2, 10));
const ALLOWED_TCP: (&str, Ipv4Addr) = ("api.example.test.", Ipv4Addr::new(192, 0, 2, 11));
const HELD: (&str, Ipv4Addr) = ("hold.example.test.", Ipv4Addr::new(192, 0, 2, 12));
/// In the zone, but `*` covers one label only: the policy denies it.
const DENIED: (&str, Ipv4Addr) = ("deep.www.example.test.", Ipv4Addr::new(192, 0, 2, 13));

/// Whether an ipcache upsert of `ip` was applied.
fn upserted(host: &FakeHost, ip: Ipv4Addr) -> bool {
    host.applied.lock().unwrap().iter().any(|c| {
        matches!(c, Change::Identity(IdentityChange::IpcacheUpsert { ip: i, .. }) if *i == IpAddr::V4(ip))
    })
}

/// One test's world, dropped in the order of its fields: the client socket, the server (its
/// tasks cancelled), the topology, the runtime.
struct Setup {
    udp: UdpSocket,
    server: Option<DnsProxyServer>,
    /// Pod b's port 53.
    server_53: SocketAddr,
    host: Arc<FakeHost>,
    lab: Lab,
    runtime: tokio::runtime::Runtime,
}

impl Setup {
    /// The topology, the proxy server started, the client's redirect on.
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let lab = Lab::new("plexus-dnsproxy");
        let host = Arc::new(FakeHost::new(lab.a.ip, lab.b.ip));
        let server = lab.start_proxy(runtime.handle(), common::dns_proxy(), host.clone());
        lab.redirect(true);
        let udp = lab.client_udp();
        let server_53 = SocketAddr::V4(SocketAddrV4::new(lab.b.ip, 53));
        Self {
            udp,
            server: Some(server),
            server_53,
            host,
            lab,
            runtime,
        }
    }

    fn server(&self) -> &DnsProxyServer {
        self.server.as_ref().unwrap()
    }

    fn lookup_udp(&self, id: u16, name: &str) -> (Message, SocketAddr) {
        lookup_udp(&self.udp, self.lab.b.ip, id, name)
    }
}

#[test]
fn allowed_names_are_answered_as_the_server_after_learning_over_udp_and_tcp() {
    let s = Setup::new();

    // UDP: forwarded, learned, answered from the server's address and port.
    let (m, from) = s.lookup_udp(1, ALLOWED.0);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!((addresses(&m), from), (vec![ALLOWED.1], s.server_53));
    // The ipcache had the address before the client had the answer.
    assert!(
        upserted(&s.host, ALLOWED.1),
        "{:?}",
        s.host.applied.lock().unwrap()
    );
    let stats = s.server().stats();
    assert_eq!(
        (
            stats.queries,
            stats.forwarded,
            stats.held,
            stats.hold_expired
        ),
        (1, 1, 1, 0),
        "{stats:?}"
    );

    // Again: nothing new to learn, delivered at once.
    let (m, _) = s.lookup_udp(2, ALLOWED.0);
    assert_eq!(addresses(&m), vec![ALLOWED.1]);
    assert_eq!(s.server().stats().delivered, 1);

    // TCP, two queries on one connection.
    let mut tcp = s.lab.client_tcp();
    let m = lookup_tcp(&mut tcp, 3, ALLOWED_TCP.0);
    assert_eq!(addresses(&m), vec![ALLOWED_TCP.1]);
    assert!(upserted(&s.host, ALLOWED_TCP.1));
    assert_eq!(
        addresses(&lookup_tcp(&mut tcp, 4, ALLOWED.0)),
        vec![ALLOWED.1]
    );
    drop(tcp);
    let stats = s.server().stats();
    assert_eq!(
        (
            stats.tcp_connections,
            stats.forwarded,
            stats.held,
            stats.delivered
        ),
        (1, 4, 2, 2),
        "{stats:?}"
    );
    assert_eq!(
        (
            stats.refused,
            stats.malformed,
            stats.no_endpoint,
            stats.responses_dropped,
            stats.forward_errors,
            stats.forward_timeouts
        ),
        (0, 0, 0, 0, 0, 0),
        "{stats:?}"
    );
}

#[test]
fn denied_names_get_refused_over_udp_and_tcp() {
    let s = Setup::new();
    // The server itself answers the name (it is in its zone) ...
    s.lab.redirect(false);
    let (m, from) = s.lookup_udp(1, DENIED.0);
    assert_eq!((addresses(&m), from), (vec![DENIED.1], s.server_53));
    // ... the proxy refuses it, as the server.
    s.lab.redirect(true);
    let (m, from) = s.lookup_udp(2, DENIED.0);
    assert_eq!(
        (m.metadata.response_code, from),
        (ResponseCode::Refused, s.server_53)
    );
    assert!(addresses(&m).is_empty());
    let mut tcp = s.lab.client_tcp();
    let m = lookup_tcp(&mut tcp, 3, DENIED.0);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(m.metadata.id, 3);
    drop(tcp);
    let stats = s.server().stats();
    assert_eq!(
        (stats.queries, stats.refused, stats.forwarded),
        (2, 2, 0),
        "{stats:?}"
    );
    assert!(s.host.applied.lock().unwrap().is_empty());
}

#[test]
fn a_held_answer_goes_out_after_hold_max_when_applying_never_finishes() {
    let s = Setup::new();
    s.host.hang.store(true, Ordering::SeqCst);
    let (m, from) = s.lookup_udp(1, HELD.0);
    assert_eq!((addresses(&m), from), (vec![HELD.1], s.server_53));
    assert!(upserted(&s.host, HELD.1));
    let stats = s.server().stats();
    assert_eq!((stats.held, stats.hold_expired), (1, 1), "{stats:?}");
    // Over TCP too (another name: something to learn).
    let mut tcp = s.lab.client_tcp();
    assert_eq!(
        addresses(&lookup_tcp(&mut tcp, 2, ALLOWED_TCP.0)),
        vec![ALLOWED_TCP.1]
    );
    let stats = s.server().stats();
    assert_eq!((stats.held, stats.hold_expired), (2, 2), "{stats:?}");
}

#[test]
fn junk_is_dropped_and_a_half_closed_tcp_client_still_gets_its_answer() {
    let s = Setup::new();
    s.udp.send_to(b"junk", s.server_53).unwrap();
    // A client that closes its sending side after its query.
    let mut tcp = s.lab.client_tcp();
    let q = common::query(1, ALLOWED.0);
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    tcp.write_all(&frame).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).unwrap();
    let m = Message::from_vec(&answer[2..]).unwrap();
    assert_eq!((m.metadata.id, addresses(&m)), (1, vec![ALLOWED.1]));
    // A TCP frame that is no DNS message: dropped, the connection still serves.
    let mut tcp = s.lab.client_tcp();
    tcp.write_all(&[0, 3, 1, 2, 3]).unwrap();
    assert_eq!(
        addresses(&lookup_tcp(&mut tcp, 2, ALLOWED.0)),
        vec![ALLOWED.1]
    );
    // UDP still serves, after the junk datagram.
    let (m, _) = s.lookup_udp(3, ALLOWED.0);
    assert_eq!(addresses(&m), vec![ALLOWED.1]);
    let stats = s.server().stats();
    assert_eq!(
        (stats.queries, stats.malformed, stats.forwarded),
        (5, 2, 3),
        "{stats:?}"
    );
}

#[test]
fn after_shutdown_the_server_answers_directly() {
    let mut s = Setup::new();
    let (m, _) = s.lookup_udp(1, DENIED.0);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let server = s.server.take().unwrap();
    s.runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), server.shutdown())
            .await
            .expect("shutdown within 10 s")
    });
    // The redirect entry stays; with no proxy socket the queries go to b.
    let (m, from) = s.lookup_udp(2, DENIED.0);
    assert_eq!((addresses(&m), from), (vec![DENIED.1], s.server_53));
    let mut tcp = s.lab.client_tcp();
    assert_eq!(
        addresses(&lookup_tcp(&mut tcp, 3, DENIED.0)),
        vec![DENIED.1]
    );
}
