//! Lookup latency through the node's DNS proxy against the same lookup sent directly, with
//! real packets: pod a asks its DNS server (pod b, `plexus-dns` serving a zone) for an allowed
//! name, N times in sequence over UDP (one socket per block) and over TCP (a connection per
//! lookup, its set-up included), alternating
//! blocks with the datapath's redirect entry off (direct) and on (through the proxy), in one
//! run. The name was learned before the measurement, so answers are passed on without a hold
//! (the steady state); the figures include the client's own socket calls.
//!
//! Run as root: `cargo bench -p plexus-dnsproxy --bench lookup` (PLEXUS_BENCH_LOOKUPS,
//! default 2,000 lookups per mode and protocol).
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeHost, Lab, addresses, lookup_tcp, lookup_udp};

const NAME: &str = "www.example.test.";
const BLOCK: usize = 100;

struct Figures {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn figures(mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| us(samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]);
    Figures {
        p50: at(0.50),
        p99: at(0.99),
        mean: samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64,
    }
}

/// `count` lookups in sequence from the calling thread's namespace: UDP on one socket, or TCP
/// with a connection each.
fn block(tcp: bool, server: Ipv4Addr, count: usize) -> Vec<Duration> {
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let addr = SocketAddr::V4(SocketAddrV4::new(server, 53));
    (0..count)
        .map(|i| {
            let id = i as u16;
            let start = Instant::now();
            let m = if tcp {
                let mut conn = TcpStream::connect_timeout(&addr, common::TIMEOUT).unwrap();
                conn.set_read_timeout(Some(common::TIMEOUT)).unwrap();
                lookup_tcp(&mut conn, id, NAME)
            } else {
                lookup_udp(&udp, server, id, NAME).0
            };
            let took = start.elapsed();
            assert_eq!(addresses(&m).len(), 1);
            took
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("PLEXUS_BENCH_LOOKUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lab = Lab::new("plexus-dnsproxy-bench");
    let host = Arc::new(FakeHost::new(lab.a.ip, lab.b.ip));
    let server = lab.start_proxy(runtime.handle(), common::dns_proxy(), host);
    // Learn the name once (a held answer), so the runs below measure the steady state.
    lab.redirect(true);
    let udp = lab.client_udp();
    let (m, _) = lookup_udp(&udp, lab.b.ip, 1, NAME);
    assert_eq!(addresses(&m).len(), 1);
    drop(udp);

    println!("DNS lookup of an allowed name from a pod, {n} sequential lookups per row");
    println!(
        "  {:<40} {:>9} {:>9} {:>9}",
        "", "p50 µs", "p99 µs", "mean µs"
    );
    let server_ip = lab.b.ip;
    for tcp in [false, true] {
        let mut direct = Vec::with_capacity(n);
        let mut proxied = Vec::with_capacity(n);
        while direct.len() < n || proxied.len() < n {
            for (mode, samples) in [(false, &mut direct), (true, &mut proxied)] {
                lab.redirect(mode);
                let count = BLOCK.min(n - samples.len());
                // The block runs in the pod's namespace, where its sockets must be made.
                samples.extend(lab.client.run(move || block(tcp, server_ip, count)));
            }
        }
        let (proto, what) = if tcp {
            ("TCP", "connect + query")
        } else {
            ("UDP", "query")
        };
        let (d, p) = (figures(direct), figures(proxied));
        for (label, f) in [("direct", &d), ("through the proxy", &p)] {
            println!(
                "  {:<40} {:>9.1} {:>9.1} {:>9.1}",
                format!("{proto} {what}, {label}"),
                f.p50,
                f.p99,
                f.mean
            );
        }
        println!(
            "  {:<40} {:>8.2}x {:>8.2}x {:>8.2}x",
            format!("{proto} proxy / direct"),
            p.p50 / d.p50,
            p.p99 / d.p99,
            p.mean / d.mean
        );
    }
    let stats = server.stats();
    println!(
        "  proxy: {} queries, {} forwarded, {} delivered, {} held, {} refused, {} dropped",
        stats.queries,
        stats.forwarded,
        stats.delivered,
        stats.held,
        stats.refused,
        stats.responses_dropped
    );
    runtime.block_on(server.shutdown());
    drop(lab);
    runtime.shutdown_timeout(Duration::from_secs(5));
}
