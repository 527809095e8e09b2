#![allow(clippy::unwrap_used)]
//! The DNS proxy server with real packets: pod a's queries to its DNS server (pod b, serving
//! `example.test` with `plexus-dns`) are redirected by the eBPF datapath to the server on the
//! node's 127.0.0.1, which answers REFUSED for names the client's CiliumNetworkPolicy does not
//! allow, forwards the others to b, learns from the answers (applying before the client sees
//! them, at most `hold_max`), and answers as b, from b's address and port 53. After shutdown
//! the queries go to b directly.
//!
//! Every namespace, link, mount and thread is named `plexus-dnsproxy-<random>-*` and deleted
//! by guards, also when the test fails.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{FakeHost, Lab, addresses, lookup_tcp, lookup_udp};
use std::io::{Read, Write};

use hickory_proto::op::{Message, ResponseCode};
use plexus_dnsproxy::{Change, IdentityChange};

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

#[test]
fn the_proxy_answers_as_the_server_refuses_denied_names_and_learns_before_answering() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lab = Lab::new("plexus-dnsproxy");
    let server_53 = SocketAddr::V4(SocketAddrV4::new(lab.b.ip, 53));
    let udp = lab.client_udp();

    // Without a redirect the zone server answers every name of its zone.
    let (m, from) = lookup_udp(&udp, lab.b.ip, 1, DENIED.0);
    assert_eq!((addresses(&m), from), (vec![DENIED.1], server_53));

    let host = Arc::new(FakeHost::new(lab.a.ip, lab.b.ip));
    let server = lab.start_proxy(runtime.handle(), common::dns_proxy(), host.clone());
    lab.redirect(true);

    // An allowed name over UDP: forwarded, learned, answered from the server's address.
    let (m, from) = lookup_udp(&udp, lab.b.ip, 2, ALLOWED.0);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!((addresses(&m), from), (vec![ALLOWED.1], server_53));
    // The ipcache had the address before the client had the answer.
    assert!(
        upserted(&host, ALLOWED.1),
        "{:?}",
        host.applied.lock().unwrap()
    );
    let stats = server.stats();
    assert_eq!(
        (stats.queries, stats.forwarded, stats.held),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.hold_expired, 0, "{stats:?}");

    // Again: nothing new to learn, delivered at once.
    let (m, _) = lookup_udp(&udp, lab.b.ip, 3, ALLOWED.0);
    assert_eq!(addresses(&m), vec![ALLOWED.1]);
    assert_eq!(server.stats().delivered, 1);

    // A denied name over UDP: REFUSED by the proxy, as the server.
    let (m, from) = lookup_udp(&udp, lab.b.ip, 4, DENIED.0);
    assert_eq!(
        (m.metadata.response_code, from),
        (ResponseCode::Refused, server_53)
    );
    assert!(addresses(&m).is_empty());
    assert_eq!(server.stats().refused, 1);

    // Over TCP, two queries on one connection: an allowed one, a denied one.
    let mut tcp = lab.client_tcp();
    let m = lookup_tcp(&mut tcp, 5, ALLOWED_TCP.0);
    assert_eq!(addresses(&m), vec![ALLOWED_TCP.1]);
    assert!(upserted(&host, ALLOWED_TCP.1));
    let m = lookup_tcp(&mut tcp, 6, DENIED.0);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    drop(tcp);
    let stats = server.stats();
    assert_eq!(
        (
            stats.tcp_connections,
            stats.forwarded,
            stats.refused,
            stats.held
        ),
        (1, 3, 2, 2),
        "{stats:?}"
    );

    // Junk is counted and dropped; a client that closes its sending side after its query
    // still gets the answer.
    udp.send_to(b"junk", server_53).unwrap();
    let mut tcp = lab.client_tcp();
    let q = common::query(10, ALLOWED.0);
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    tcp.write_all(&frame).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).unwrap();
    let m = Message::from_vec(&answer[2..]).unwrap();
    assert_eq!((m.metadata.id, addresses(&m)), (10, vec![ALLOWED.1]));
    let (m, _) = lookup_udp(&udp, lab.b.ip, 11, ALLOWED.0);
    assert_eq!(addresses(&m), vec![ALLOWED.1]);
    assert_eq!(server.stats().malformed, 1);

    // Applying never finishes: the answer goes out anyway after hold_max.
    host.hang.store(true, Ordering::SeqCst);
    let (m, from) = lookup_udp(&udp, lab.b.ip, 7, HELD.0);
    assert_eq!((addresses(&m), from), (vec![HELD.1], server_53));
    let stats = server.stats();
    assert_eq!((stats.held, stats.hold_expired), (3, 1), "{stats:?}");
    assert_eq!(
        (
            stats.malformed,
            stats.no_endpoint,
            stats.responses_dropped,
            stats.forward_errors
        ),
        (1, 0, 0, 0),
        "{stats:?}"
    );

    // Shut down: the redirect stays, the server answers directly (the denied name too).
    runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(10), server.shutdown())
            .await
            .expect("shutdown within 10 s")
    });
    let (m, from) = lookup_udp(&udp, lab.b.ip, 8, DENIED.0);
    assert_eq!((addresses(&m), from), (vec![DENIED.1], server_53));
    let mut tcp = lab.client_tcp();
    assert_eq!(
        addresses(&lookup_tcp(&mut tcp, 9, DENIED.0)),
        vec![DENIED.1]
    );
    drop(tcp);

    drop(udp);
    drop(lab);
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
}
