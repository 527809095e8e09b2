//! The lab's "outside": a network namespace on the underlay that no cluster owns, standing for
//! the internet that pods look names up in and connect to (what `toFQDNs` and `rules.dns`
//! policies are about).
//!
//! With `outside: {zone: example.test, servers: 4}` in the lab file, `lab up` creates:
//! - the namespace `plx-<lab>-outside`, joined to the underlay by the veth `uo` (its `eth0`) at
//!   [`DNS_IP`] (172.31.254.1), with the servers' addresses 172.31.254.11, .12, ... on the same
//!   link;
//! - an authoritative DNS server for the zone on `DNS_IP:53` (UDP and TCP): `plexus-dns
//!   --zone-file`, serving `<lab dir>/outside/<zone>.zone`, which it re-reads when the file
//!   changes, so a test rewrites it to move names ([`zone_file`] writes the first one:
//!   `s1`..`sN` at the servers' addresses, `www` a CNAME of `s1`, `ns` at `DNS_IP`);
//! - per address an HTTP server (the lab's built-in server, port 80) that answers
//!   `{"pod":"s<i>","namespace":"<zone>","node":"outside","cluster":"outside"}`, so a client
//!   sees which address answered;
//! - routes from the namespace to every node's pod CIDR through the node (set when the node's
//!   agent starts, as for the control planes): pods reach the outside through their node, as
//!   they reach their control plane, and the answers find their way back. Nothing links to the
//!   host's network.
//!
//! `lab down` stops the servers and removes the namespace with the lab's others.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::lab::{Bins, LabState};
use crate::spec::OutsideSpec;
use crate::sys;

/// The outside's own address: its DNS server.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 254, 1);

/// The underlay-side veth of the outside.
const UPLINK: &str = "uo";

/// The HTTP servers' port.
pub const HTTP_PORT: u16 = 80;

/// The outside of a running lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OutsideState {
    /// Its namespace.
    pub netns: String,
    /// The zone its DNS server is authoritative for.
    pub zone: String,
    /// The zone file (rewrite it to change the answers).
    pub zone_file: PathBuf,
    /// The DNS server's address.
    pub dns_ip: Ipv4Addr,
    /// The HTTP servers' addresses: `s1.<zone>` is the first.
    pub servers: Vec<Ipv4Addr>,
    /// The DNS server's pid.
    pub dns_pid: Option<u32>,
    /// The HTTP servers' pids.
    #[serde(default)]
    pub server_pids: Vec<u32>,
}

impl OutsideState {
    /// The outside of lab `name` in `dir` as `spec` asks.
    pub fn plan(name: &str, dir: &std::path::Path, spec: &OutsideSpec) -> Self {
        let zone = spec.zone.trim_end_matches('.').to_ascii_lowercase();
        Self {
            netns: format!("plx-{name}-outside"),
            zone_file: dir.join("outside").join(format!("{zone}.zone")),
            zone,
            dns_ip: DNS_IP,
            servers: (1..=spec.servers)
                .map(|i| Ipv4Addr::new(172, 31, 254, 10 + i))
                .collect(),
            dns_pid: None,
            server_pids: Vec::new(),
        }
    }

    /// The name of the `i`-th server (1-based) in the zone: `s<i>`.
    pub fn server_name(i: usize) -> String {
        format!("s{i}")
    }
}

/// The first zone file: the servers by name, `www` an alias of the first.
pub fn zone_file(o: &OutsideState) -> String {
    let mut text = format!(
        "; The lab's outside zone, written by `plexus lab up`. Rewrite it at will: the DNS server\n\
         ; re-reads it at the next query after it changes.\n\
         $ORIGIN {zone}.\n\
         $TTL 30\n\
         @    IN SOA ns hostmaster 1 7200 1800 86400 30\n\
         @    IN NS  ns\n\
         ns   IN A   {dns}\n",
        zone = o.zone,
        dns = o.dns_ip,
    );
    for (i, ip) in o.servers.iter().enumerate() {
        text.push_str(&format!(
            "{:<4} IN A   {ip}\n",
            OutsideState::server_name(i + 1)
        ));
    }
    if !o.servers.is_empty() {
        text.push_str(&format!("www  IN CNAME {}\n", OutsideState::server_name(1)));
    }
    text
}

/// Creates the namespace, writes the zone file and starts the servers; records their pids in
/// `lab` (saved).
pub fn up(lab: &mut LabState, bins: &Bins) -> Result<()> {
    let Some(o) = lab.outside.clone() else {
        return Ok(());
    };
    sys::netns_add(&o.netns)?;
    sys::ip(&[
        "-n",
        &lab.underlay,
        "link",
        "add",
        UPLINK,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &o.netns,
    ])?;
    sys::ip(&[
        "-n",
        &lab.underlay,
        "link",
        "set",
        UPLINK,
        "master",
        "br0",
        "up",
    ])?;
    for ip in std::iter::once(&o.dns_ip).chain(&o.servers) {
        sys::ip(&[
            "-n",
            &o.netns,
            "addr",
            "add",
            &format!("{ip}/16"),
            "dev",
            "eth0",
        ])?;
    }
    sys::ip(&["-n", &o.netns, "link", "set", "eth0", "up"])?;
    sys::ip(&["-n", &o.netns, "link", "set", "lo", "up"])?;
    let dir = o
        .zone_file
        .parent()
        .context("the outside's directory")?
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(&o.zone_file, zone_file(&o))
        .with_context(|| format!("write {}", o.zone_file.display()))?;

    let log = dir.join("dns.log");
    let dns_pid = sys::spawn_in(
        &o.netns,
        &bins.dns,
        &[
            format!("--zone-file={}", o.zone_file.display()),
            format!("--domain={}", o.zone),
            format!("--listen={}:53", o.dns_ip),
        ],
        &log,
    )?;
    if let Some(state) = lab.outside.as_mut() {
        state.dns_pid = Some(dns_pid);
    }
    lab.save()?;
    let (netns, dns_ip, zone) = (o.netns.clone(), o.dns_ip, o.zone.clone());
    sys::wait_until(
        &format!("outside DNS server answers (log: {})", log.display()),
        Duration::from_secs(20),
        || {
            let (zone, netns) = (zone.clone(), netns.clone());
            sys::in_netns(&netns, move || Ok(answers(dns_ip, &zone))).unwrap_or(false)
        },
    )?;

    for (i, ip) in o.servers.iter().enumerate() {
        let name = OutsideState::server_name(i + 1);
        let pid = sys::spawn_in(
            &o.netns,
            &bins.plexus,
            &[
                "lab".into(),
                "serve".into(),
                format!("--pod={name}"),
                format!("--namespace={}", o.zone),
                "--node=outside".into(),
                "--cluster=outside".into(),
                format!("--port={HTTP_PORT}/tcp"),
                format!("--address={ip}"),
            ],
            &dir.join(format!("{name}.log")),
        )?;
        if let Some(state) = lab.outside.as_mut() {
            state.server_pids.push(pid);
        }
        lab.save()?;
        let (netns, ip) = (o.netns.clone(), *ip);
        sys::wait_until(
            &format!("outside HTTP server {name} ({ip}) listens"),
            Duration::from_secs(20),
            || {
                sys::in_netns(&netns, move || {
                    Ok(TcpStream::connect_timeout(
                        &SocketAddr::from((ip, HTTP_PORT)),
                        Duration::from_millis(200),
                    )
                    .is_ok())
                })
                .unwrap_or(false)
            },
        )?;
    }
    Ok(())
}

/// Whether the DNS server at `ip` answers for the zone's SOA.
fn answers(ip: Ipv4Addr, zone: &str) -> bool {
    // A hand-made query: id 1, RD, one question `<zone>. SOA IN`.
    let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in zone.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(300)));
    if sock.send_to(&q, (ip, 53)).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    // The answer to our id, with RCODE 0.
    matches!(sock.recv(&mut buf), Ok(n) if n >= 12 && buf[..2] == [0, 1] && buf[3] & 0x0f == 0)
}

/// Routes a node's pod CIDR from the outside through the node.
pub fn route_pods(lab: &LabState, pod_cidr: &str, node_ip: Ipv4Addr) -> Result<()> {
    let Some(o) = &lab.outside else {
        return Ok(());
    };
    sys::ip(&[
        "-n",
        &o.netns,
        "route",
        "replace",
        pod_cidr,
        "via",
        &node_ip.to_string(),
    ])
}

/// Stops the servers (the namespace goes with the lab's others).
pub fn down(lab: &LabState) {
    if let Some(o) = &lab.outside {
        for pid in o.server_pids.iter().chain(&o.dns_pid) {
            sys::stop(*pid, Duration::from_secs(5));
        }
    }
}

/// Status lines: each server and whether it runs.
pub fn status(lab: &LabState) -> Vec<(String, String, bool)> {
    let Some(o) = &lab.outside else {
        return Vec::new();
    };
    let mut out = vec![(
        "outside".to_string(),
        format!("dns {} {}", o.zone, o.dns_ip),
        o.dns_pid.is_some_and(sys::alive),
    )];
    for (i, ip) in o.servers.iter().enumerate() {
        out.push((
            "outside".to_string(),
            format!("http {}.{} {ip}", OutsideState::server_name(i + 1), o.zone),
            o.server_pids.get(i).copied().is_some_and(sys::alive),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_zone_names_every_server() {
        let o = OutsideState::plan(
            "t",
            std::path::Path::new("/run/plexus-lab"),
            &OutsideSpec {
                zone: "Example.Test.".into(),
                servers: 2,
            },
        );
        assert_eq!(o.netns, "plx-t-outside");
        assert_eq!(o.zone, "example.test");
        assert_eq!(
            o.zone_file,
            PathBuf::from("/run/plexus-lab/outside/example.test.zone")
        );
        assert_eq!(
            o.servers,
            [
                Ipv4Addr::new(172, 31, 254, 11),
                Ipv4Addr::new(172, 31, 254, 12)
            ]
        );
        let text = zone_file(&o);
        assert!(text.contains("$ORIGIN example.test.\n"), "{text}");
        assert!(text.contains("s2   IN A   172.31.254.12\n"), "{text}");
        assert!(text.contains("www  IN CNAME s1\n"), "{text}");
        assert!(text.contains("ns   IN A   172.31.254.1\n"), "{text}");
    }
}
