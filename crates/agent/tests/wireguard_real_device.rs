//! The agent's WireGuard side against the real device, as root: two node namespaces joined by a
//! veth, `plexus-wireguard` running in each, and the agent's sync (UAPI client, kernel set-up)
//! run from inside each namespace as the agent runs it. Then:
//! - the device holds the node's key, port 51871 and the other node as its peer;
//! - the kernel is set up for tunnel mode: `plexus_wg0` up with MTU 1440 (1500 - 60),
//!   `ipproto udp dport 8472 lookup 201`, table 201 with `default dev plexus_wg0 src <node>`
//!   and an `unreachable default` behind it;
//! - a UDP packet to the other node's port 8472 (what VXLAN sends) arrives there through
//!   WireGuard (the devices count its bytes and a handshake);
//! - a second set-up (a restarted agent) changes nothing and adds no second rule;
//! - native mode routes a node's pod CIDR `dev plexus_wg0`;
//! - with the device's link gone, the packet is refused (unreachable), never sent in the clear;
//! - an agent started with WireGuard off removes the policy routing.
//!
//! Every namespace is named `pwga<pid>-*` and deleted on drop, also when an assertion fails;
//! devices are stopped on drop; every wait is bounded.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use plexus_agent::core::{WireguardPeer, WireguardPeers};
use plexus_agent::shell::wireguard::{KernelSetup, WireguardKernel, WireguardSync};
use plexus_datapath::{FakeDatapath, Prefix};
use plexus_wireguard::NodeKey;
use plexus_wireguard::uapi::UapiClient;

/// Runs a command to completion under `timeout`, asserting success; its stdout.
fn sh(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("30")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `f` on a thread inside this namespace (network namespace only).
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A `plexus-wireguard` device running in a namespace, stopped on drop.
struct Device {
    child: Option<Child>,
    socket: PathBuf,
}

impl Device {
    fn start(ns: &Netns, dir: &Path, tag: &str) -> Self {
        let socket = dir.join(format!("{tag}.sock"));
        let log = File::create(dir.join(format!("{tag}.log"))).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.0))
            .arg(plexus_test_support::workspace_bin("plexus-wireguard"))
            .arg("--socket")
            .arg(&socket)
            .arg("--delete-on-exit")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let device = Self {
            child: Some(child),
            socket,
        };
        let client = device.client();
        wait("the device's socket", || client.get().is_ok());
        device
    }

    fn client(&self) -> UapiClient {
        UapiClient::new(self.socket.clone()).with_timeout(Duration::from_secs(5))
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `f` for up to 20 s.
fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn peer_of(key: &NodeKey, node: &str, ip: Ipv4Addr, allowed: Prefix) -> WireguardPeers {
    BTreeMap::from([(
        key.public_key(),
        WireguardPeer {
            public_key: key.public_key(),
            cluster: "c1".into(),
            node: node.into(),
            node_ip: ip,
            endpoint: SocketAddrV4::new(ip, 51871),
            allowed_ips: vec![allowed],
        },
    )])
}

/// Syncs `device` from inside `ns` as node `me` wanting `peer`: the agent's sync with the real
/// kernel set-up (tunnel mode, MTU 1440).
fn agent_sync(ns: &Netns, device: &Device, me: Ipv4Addr, mine: &NodeKey, peers: WireguardPeers) {
    let client = device.client();
    let private = mine.private_key();
    ns.run(move || {
        let kernel: Box<dyn WireguardKernel> = Box::new(KernelSetup::new(true, me, 1440));
        let mut sync = WireguardSync::new(Arc::new(client), Arc::new(FakeDatapath::new()), private)
            .with_kernel(kernel);
        sync.set_desired(peers, vec![], ["c1".to_string()].into());
        sync.sync()
    })
    .unwrap();
}

#[test]
fn the_agent_drives_the_real_device_and_vxlan_goes_through_it() {
    let tag = format!("pwga{}", std::process::id());
    let (a, b) = (
        Netns::new(format!("{tag}-a")),
        Netns::new(format!("{tag}-b")),
    );
    let (ip_a, ip_b) = (
        Ipv4Addr::new(192, 168, 91, 1),
        Ipv4Addr::new(192, 168, 91, 2),
    );
    a.ip(&[
        "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", &b.0,
    ]);
    a.ip(&["addr", "add", "192.168.91.1/24", "dev", "veth-a"]);
    b.ip(&["addr", "add", "192.168.91.2/24", "dev", "veth-b"]);
    a.ip(&["link", "set", "veth-a", "up"]);
    b.ip(&["link", "set", "veth-b", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let mut dev_a = Device::start(&a, dir.path(), "a");
    let dev_b = Device::start(&b, dir.path(), "b");
    let (key_a, key_b) = (
        NodeKey::from_private_bytes([1; 32]),
        NodeKey::from_private_bytes([2; 32]),
    );

    agent_sync(
        &a,
        &dev_a,
        ip_a,
        &key_a,
        peer_of(&key_b, "b", ip_b, Prefix::host(ip_b)),
    );
    agent_sync(
        &b,
        &dev_b,
        ip_b,
        &key_b,
        peer_of(&key_a, "a", ip_a, Prefix::host(ip_a)),
    );

    // The device as the agent left it.
    let info = dev_a.client().get().unwrap();
    assert_eq!(info.listen_port, 51871);
    assert_eq!(info.public_key, Some(key_a.public_key()));
    assert_eq!(info.peers.len(), 1);
    assert_eq!(info.peers[0].public_key, key_b.public_key());
    assert_eq!(
        info.peers[0].endpoint,
        Some("192.168.91.2:51871".parse().unwrap())
    );
    assert_eq!(
        info.peers[0]
            .allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["192.168.91.2/32"]
    );

    // The kernel as the agent left it.
    let link = a.ip(&["link", "show", "plexus_wg0"]);
    assert!(link.contains("mtu 1440"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let rule = "ipproto udp dport 8472 lookup 201";
    let rules = a.ip(&["rule"]);
    assert_eq!(rules.matches(rule).count(), 1, "{rules}");
    let table = a.ip(&["route", "show", "table", "201"]);
    let has = |words: &[&str]| table.lines().any(|l| words.iter().all(|w| l.contains(w)));
    assert!(
        has(&["default dev plexus_wg0", "scope link", "src 192.168.91.1"]),
        "{table}"
    );
    assert!(has(&["unreachable default", "metric 4096"]), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");

    // VXLAN's packets (UDP to port 8472) travel through WireGuard.
    let rx = b.run(|| {
        let s = UdpSocket::bind("0.0.0.0:8472").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    });
    let sent = a.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 64];
        // The first packet starts the handshake; send until one arrives.
        loop {
            s.send_to(b"plexus-marker", (ip_b, 8472)).unwrap();
            if let Ok((n, from)) = rx.recv_from(&mut buf) {
                return (buf[..n].to_vec(), from);
            }
            assert!(
                Instant::now() < deadline,
                "nothing arrived through WireGuard"
            );
        }
    });
    assert_eq!(sent.0, b"plexus-marker");
    assert_eq!(sent.1.ip(), std::net::IpAddr::V4(ip_a));
    let peer = &dev_a.client().get().unwrap().peers[0];
    assert!(
        peer.tx_bytes > 0 && peer.last_handshake.is_some(),
        "{peer:?}"
    );

    // A restarted agent sets up the same state: nothing more.
    agent_sync(
        &a,
        &dev_a,
        ip_a,
        &key_a,
        peer_of(&key_b, "b", ip_b, Prefix::host(ip_b)),
    );
    assert_eq!(a.ip(&["rule"]).matches(rule).count(), 1);
    assert_eq!(a.ip(&["route", "show", "table", "201"]), table);

    // Native mode: a node's pod CIDR goes into the device.
    let cidr: Prefix = "10.20.2.0/24".parse().unwrap();
    a.run(move || KernelSetup::new(false, ip_a, 1440).ensure(&[cidr]))
        .unwrap();
    let routes = a.ip(&["route"]);
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("10.20.2.0/24 dev plexus_wg0") && l.contains("scope link")),
        "{routes}"
    );

    // The device stops and its link goes: VXLAN's packets are refused, not sent in the clear.
    dev_a.stop();
    wait("the link to go", || !a.ip(&["link"]).contains("plexus_wg0"));
    let refused = a.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"plexus-marker", (ip_b, 8472))
    });
    let err = refused.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EHOSTUNREACH), "{err}");
}
