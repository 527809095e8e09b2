//! The `plexus-wireguard` device for real: two network namespaces joined by a veth, a device in
//! each (or wireguard-go on one side), configured through the UAPI socket (our client, or
//! Debian's `wg`), traffic through the tunnel, a capture of the underlay, restarts.
//!
//! Every test creates its own namespaces (unique names) and removes them on drop, also when an
//! assertion fails; every wait is bounded and every external command runs under `timeout`.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use plexus_wireguard::NodeKey;
use plexus_wireguard::uapi::{SetDevice, SetPeer, UapiClient};

const DEVICE: &str = env!("CARGO_BIN_EXE_plexus-wireguard");
const PORT: u16 = 51871;
const MTU: u32 = 1420;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command under `timeout 60`, returns its output.
fn run(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!(
            "pwg{}-{}-{}",
            tag,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ok(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The command line that runs `args` inside this namespace (network namespace only).
    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<String> {
        let mut v = vec!["nsenter".to_string(), format!("--net={}", self.path())];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    fn run(&self, args: &[&str]) -> Output {
        let argv = self.argv(args);
        run(&argv.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn ok(&self, args: &[&str]) -> String {
        let argv = self.argv(args);
        ok(&argv.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Runs `f` on a thread that entered this namespace (setns affects only that thread).
    fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = fs::File::open(self.path()).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A process that is sent SIGTERM and reaped on drop.
struct Proc {
    child: Option<Child>,
    name: String,
}

impl Proc {
    fn spawn(name: &str, argv: &[String], envs: &[(&str, &str)], log: &Path) -> Proc {
        let log = fs::File::create(log).unwrap();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        Proc {
            child: Some(child),
            name: name.into(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit after {sig:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it returns true; panics with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One side of the tunnel: its namespace, underlay and tunnel addresses, key and socket.
struct Side {
    /// First, so the process is stopped before its namespace is deleted (fields drop in order).
    proc: Option<Proc>,
    ns: Netns,
    underlay: &'static str,
    tunnel: &'static str,
    key: NodeKey,
    socket: PathBuf,
    log: PathBuf,
}

impl Side {
    fn uapi(&self) -> UapiClient {
        UapiClient::new(&self.socket).with_timeout(Duration::from_secs(10))
    }

    /// Starts `plexus-wireguard` in the namespace and waits for its socket.
    fn start_device(&mut self, extra: &[&str]) {
        let sock = self.socket.to_str().unwrap().to_string();
        let mut args = vec![DEVICE, "--interface", "wg0", "--socket", &sock];
        args.extend_from_slice(extra);
        let argv = self.ns.argv(&args);
        self.proc = Some(Proc::spawn(
            "plexus-wireguard",
            &argv,
            &[("RUST_LOG", "debug")],
            &self.log,
        ));
        let client = self.uapi();
        let log = self.log.clone();
        wait_for("the device's uapi socket", Duration::from_secs(20), || {
            client.get().is_ok()
        });
        let _ = log;
    }

    /// Starts Debian's wireguard-go in the namespace, in a private mount namespace where
    /// `<dir>/run` is mounted over /run (so its socket is `<dir>/run/wireguard/wg0.sock`).
    fn start_wireguard_go(&mut self, dir: &Path) {
        let run_dir = dir.join("run");
        fs::create_dir_all(&run_dir).unwrap();
        self.socket = run_dir.join("wireguard").join("wg0.sock");
        let script = format!(
            "mount --bind {} /run && exec wireguard-go -f wg0",
            run_dir.display()
        );
        let argv = self.ns.argv(&[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]);
        self.proc = Some(Proc::spawn(
            "wireguard-go",
            &argv,
            &[
                ("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1"),
                ("LOG_LEVEL", "debug"),
            ],
            &self.log,
        ));
        let client = self.uapi();
        wait_for(
            "wireguard-go's uapi socket",
            Duration::from_secs(20),
            || client.get().is_ok(),
        );
    }

    /// Addresses the tunnel link (MTU 1420) and brings it up.
    fn address_tunnel(&self) {
        self.ns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.tunnel),
            "dev",
            "wg0",
        ]);
        self.ns
            .ok(&["ip", "link", "set", "wg0", "mtu", &MTU.to_string(), "up"]);
    }

    /// Gives the device its key and port and `peer` as its one peer.
    fn configure(&self, peer: &Side) {
        self.uapi()
            .set(&SetDevice {
                private_key: Some(self.key.private_key()),
                listen_port: Some(PORT),
                replace_peers: true,
                peers: vec![SetPeer {
                    endpoint: Some(SocketAddr::new(peer.underlay.parse().unwrap(), PORT)),
                    replace_allowed_ips: true,
                    allowed_ips: vec![format!("{}/32", peer.tunnel).parse().unwrap()],
                    ..SetPeer::new(peer.key.public_key())
                }],
            })
            .unwrap();
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Two namespaces joined by a veth (`va` 192.168.77.1 in a, `vb` 192.168.77.2 in b, IPv6 off
/// on them so the capture has only our traffic and ARP).
struct Pair {
    a: Side,
    b: Side,
    dir: tempfile::TempDir,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let side = |ns: Netns, underlay, tunnel, name: &str| Side {
            ns,
            underlay,
            tunnel,
            key: NodeKey::load_or_create(&dir.path().join(format!("{name}.key"))).unwrap(),
            socket: dir.path().join(format!("{name}.sock")),
            proc: None,
            log: dir.path().join(format!("{name}.log")),
        };
        let a = side(
            Netns::new(&format!("{tag}a")),
            "192.168.77.1",
            "10.77.0.1",
            "a",
        );
        let b = side(
            Netns::new(&format!("{tag}b")),
            "192.168.77.2",
            "10.77.0.2",
            "b",
        );
        a.ns.ok(&[
            "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.ns.name,
        ]);
        for (s, dev) in [(&a, "va"), (&b, "vb")] {
            s.ns.ok(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
            ]);
            s.ns.ok(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", s.underlay),
                "dev",
                dev,
            ]);
            s.ns.ok(&["ip", "link", "set", dev, "up"]);
        }
        Pair { a, b, dir }
    }

    /// Both sides as plexus-wireguard devices, configured through our UAPI client.
    fn both_devices(tag: &str) -> Pair {
        let mut p = Pair::new(tag);
        p.a.start_device(&[]);
        p.b.start_device(&[]);
        p.a.address_tunnel();
        p.b.address_tunnel();
        p.a.configure(&p.b);
        p.b.configure(&p.a);
        p
    }

    fn logs(&self) -> String {
        format!("--- a ---\n{}\n--- b ---\n{}", self.a.log(), self.b.log())
    }
}

/// Pings `to` from `from` with full-size packets that may not be fragmented (1420 - 28 bytes of
/// ICMP payload); retries while the first handshake runs.
fn ping_full_size(from: &Side, to: &Side, pair: &Pair) {
    let size = (MTU - 28).to_string();
    let mut last = None;
    for _ in 0..10 {
        let out = from.ns.run(&[
            "ping", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", &size, to.tunnel,
        ]);
        if out.status.success() {
            return;
        }
        last = Some(out);
    }
    panic!("ping {} failed: {last:?}\n{}", to.tunnel, pair.logs());
}

/// Accepts one connection, or panics after `limit` (a plain `accept` could wait forever if the
/// client failed).
fn accept_within(listener: &TcpListener, limit: Duration) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                return conn;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection within {limit:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Sends 8 MiB over TCP from `from` to `to` through the tunnel and checks they arrive intact.
fn tcp_transfer(from: &Side, to: &Side) {
    tcp_transfer_to(from, to, to.tunnel)
}

/// [`tcp_transfer`] to the address `addr` of `to`.
fn tcp_transfer_to(from: &Side, to: &Side, addr: &str) {
    let data: Vec<u8> = (0..8 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let listener = to.ns.within(|| TcpListener::bind((addr, 5201)).unwrap());
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let mut conn = accept_within(&listener, Duration::from_secs(20));
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            got
        });
        let mut conn = from.ns.within(|| {
            TcpStream::connect_timeout(
                &SocketAddr::new(addr.parse().unwrap(), 5201),
                Duration::from_secs(20),
            )
            .unwrap()
        });
        conn.set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn.write_all(&data).unwrap();
        drop(conn);
        let got = server.join().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "data corrupted through the tunnel");
    });
}

/// A packet capture on an interface of a namespace, stopped by `finish`.
struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &Netns, dev: &str, file: PathBuf, log: &Path) -> Capture {
        let f = file.to_str().unwrap().to_string();
        let argv = ns.argv(&["tcpdump", "-i", dev, "-n", "-U", "-w", &f]);
        let proc = Proc::spawn("tcpdump", &argv, &[], log);
        // tcpdump writes the file's header once it listens.
        wait_for("tcpdump to start", Duration::from_secs(20), || {
            fs::metadata(&file).is_ok_and(|m| m.len() > 0)
        });
        Capture { proc, file }
    }

    /// Stops the capture; returns the packets matching `filter`, one line each.
    fn finish(mut self, filters: &[&str]) -> Vec<String> {
        self.proc.signal(nix::sys::signal::Signal::SIGINT);
        filters
            .iter()
            .flat_map(|f| {
                ok(&["tcpdump", "-r", self.file.to_str().unwrap(), "-n", f])
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[test]
fn tunnel_carries_ping_and_tcp_and_only_udp_is_on_the_wire() {
    let p = Pair::both_devices("t");
    let cap = Capture::start(
        &p.a.ns,
        "va",
        p.dir.path().join("va.pcap"),
        &p.dir.path().join("tcpdump.log"),
    );
    ping_full_size(&p.a, &p.b, &p);
    ping_full_size(&p.b, &p.a, &p);
    tcp_transfer(&p.a, &p.b);
    tcp_transfer(&p.b, &p.a);

    // Both devices report the handshake and the bytes.
    for (side, peer) in [(&p.a, &p.b), (&p.b, &p.a)] {
        let info = side.uapi().get().unwrap();
        assert_eq!(info.listen_port, PORT);
        assert_eq!(info.public_key, Some(side.key.public_key()));
        assert_eq!(info.peers.len(), 1, "{info:?}");
        let pi = &info.peers[0];
        assert_eq!(pi.public_key, peer.key.public_key());
        assert!(pi.last_handshake.is_some(), "{info:?}");
        assert!(pi.rx_bytes > 8 << 20 && pi.tx_bytes > 8 << 20, "{info:?}");
        assert_eq!(
            pi.endpoint,
            Some(SocketAddr::new(peer.underlay.parse().unwrap(), PORT))
        );
        assert_eq!(
            pi.allowed_ips,
            vec![format!("{}/32", peer.tunnel).parse().unwrap()]
        );
    }

    // On the underlay: WireGuard's UDP between the two ports, and nothing else but ARP.
    let wg = cap.finish(&["udp and src port 51871 and dst port 51871"]);
    assert!(wg.len() > 100, "{wg:?}");
    let cap = Capture::start(
        &p.a.ns,
        "va",
        p.dir.path().join("va2.pcap"),
        &p.dir.path().join("tcpdump2.log"),
    );
    ping_full_size(&p.a, &p.b, &p);
    tcp_transfer(&p.a, &p.b);
    let other = cap.finish(&["not arp and not (udp and src port 51871 and dst port 51871)"]);
    assert!(other.is_empty(), "cleartext on the underlay: {other:?}");
}

#[test]
fn udp_bursts_arrive_intact() {
    let p = Pair::both_devices("b");
    ping_full_size(&p.a, &p.b, &p);
    let rx =
        p.b.ns
            .within(|| std::net::UdpSocket::bind((p.b.tunnel, 7000)).unwrap());
    nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::RcvBuf, &(8 << 20)).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tx =
        p.a.ns
            .within(|| std::net::UdpSocket::bind((p.a.tunnel, 0)).unwrap());
    // Full-size datagrams in bursts (the receiving device coalesces each burst into one write),
    // a shorter one ending each burst.
    const N: u32 = 4000;
    let datagram = |i: u32| -> Vec<u8> {
        let len = if i % 50 == 49 {
            333
        } else {
            (MTU - 28) as usize
        };
        let mut d: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
        d[..4].copy_from_slice(&i.to_be_bytes());
        d
    };
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut seen = vec![false; N as usize];
            let mut buf = vec![0u8; 2000];
            while let Ok(n) = rx.recv(&mut buf) {
                let i = u32::from_be_bytes(buf[..4].try_into().unwrap());
                assert!(i < N, "unknown datagram {i}");
                assert_eq!(buf[..n], datagram(i)[..], "datagram {i} corrupted");
                seen[i as usize] = true;
            }
            seen.iter().filter(|s| **s).count()
        });
        for i in 0..N {
            tx.send_to(&datagram(i), (p.b.tunnel, 7000)).unwrap();
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let got = receiver.join().unwrap();
        // UDP may lose a datagram on a loaded machine; a coalescing or checksum fault would
        // lose whole bursts.
        assert!(
            got as u32 >= N * 99 / 100,
            "{got} of {N} arrived\n{}",
            p.logs()
        );
    });
    // The kernel took every coalesced frame (a refused one is logged, then split).
    assert!(!p.b.log().contains("writing the tun link"), "{}", p.b.log());
}

/// The lab's tunnel mode in small: a kernel VXLAN device between the two underlay addresses,
/// its outer packets (UDP 8472) steered into the WireGuard link by a policy rule, the peers'
/// allowed IPs being the underlay addresses. The overlay carries full-size pings and TCP, and
/// the underlay shows only WireGuard.
#[test]
fn vxlan_through_the_tunnel_as_in_tunnel_mode() {
    let p = Pair::both_devices("x");
    for (side, peer, overlay) in [(&p.a, &p.b, "10.200.0.1"), (&p.b, &p.a, "10.200.0.2")] {
        side.uapi()
            .set(&SetDevice {
                peers: vec![SetPeer {
                    allowed_ips: vec![format!("{}/32", peer.underlay).parse().unwrap()],
                    ..SetPeer::new(peer.key.public_key())
                }],
                ..SetDevice::default()
            })
            .unwrap();
        let ns = &side.ns;
        for key in ["all", "default", "wg0"] {
            ns.ok(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv4.conf.{key}.rp_filter=0"),
            ]);
        }
        ns.ok(&[
            "ip",
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            side.underlay,
            "remote",
            peer.underlay,
            "dstport",
            "8472",
        ]);
        ns.ok(&[
            "ip",
            "link",
            "set",
            "vx0",
            "mtu",
            &(MTU - 50).to_string(),
            "up",
        ]);
        ns.ok(&["ip", "addr", "add", &format!("{overlay}/24"), "dev", "vx0"]);
        ns.ok(&[
            "ip", "rule", "add", "ipproto", "udp", "dport", "8472", "lookup", "100",
        ]);
        ns.ok(&[
            "ip", "route", "add", "default", "dev", "wg0", "table", "100",
        ]);
    }
    let cap = Capture::start(
        &p.a.ns,
        "va",
        p.dir.path().join("vx.pcap"),
        &p.dir.path().join("tcpdump.log"),
    );
    let size = (MTU - 50 - 28).to_string();
    let mut last = None;
    for _ in 0..10 {
        let out = p.a.ns.run(&[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size,
            "10.200.0.2",
        ]);
        if out.status.success() {
            last = None;
            break;
        }
        last = Some(out);
    }
    assert!(last.is_none(), "overlay ping: {last:?}\n{}", p.logs());
    tcp_transfer_to(&p.a, &p.b, "10.200.0.2");
    tcp_transfer_to(&p.b, &p.a, "10.200.0.1");
    let other = cap.finish(&["not arp and not (udp and src port 51871 and dst port 51871)"]);
    assert!(other.is_empty(), "cleartext on the underlay: {other:?}");
    // The coalesced VXLAN datagrams were taken by the kernel as they were written.
    assert!(!p.logs().contains("writing the tun link"), "{}", p.logs());
}

/// A device with two peers (a in the middle, b and c on their own veths): each peer's traffic
/// goes to and comes from the right one, at the same time, and `get` reports both.
#[test]
fn two_peers_at_once() {
    let mut p = Pair::new("m");
    let mut c = Side {
        proc: None,
        ns: Netns::new("mc"),
        underlay: "192.168.79.2",
        tunnel: "10.77.0.3",
        key: NodeKey::load_or_create(&p.dir.path().join("c.key")).unwrap(),
        socket: p.dir.path().join("c.sock"),
        log: p.dir.path().join("c.log"),
    };
    p.a.ns.ok(&[
        "ip", "link", "add", "va2", "type", "veth", "peer", "name", "vc", "netns", &c.ns.name,
    ]);
    p.a.ns
        .ok(&["ip", "addr", "add", "192.168.79.1/24", "dev", "va2"]);
    p.a.ns.ok(&["ip", "link", "set", "va2", "up"]);
    c.ns.ok(&["ip", "addr", "add", "192.168.79.2/24", "dev", "vc"]);
    c.ns.ok(&["ip", "link", "set", "vc", "up"]);
    p.a.start_device(&[]);
    p.b.start_device(&[]);
    c.start_device(&[]);
    p.a.address_tunnel();
    p.b.address_tunnel();
    c.address_tunnel();
    p.b.configure(&p.a);
    // c reaches a by a's second address.
    c.uapi()
        .set(&SetDevice {
            private_key: Some(c.key.private_key()),
            listen_port: Some(PORT),
            peers: vec![SetPeer {
                endpoint: Some("192.168.79.1:51871".parse().unwrap()),
                allowed_ips: vec![format!("{}/32", p.a.tunnel).parse().unwrap()],
                ..SetPeer::new(p.a.key.public_key())
            }],
            ..SetDevice::default()
        })
        .unwrap();
    p.a.uapi()
        .set(&SetDevice {
            private_key: Some(p.a.key.private_key()),
            listen_port: Some(PORT),
            peers: [(&p.b, p.b.underlay), (&c, c.underlay)]
                .into_iter()
                .map(|(s, ip)| SetPeer {
                    endpoint: Some(SocketAddr::new(ip.parse().unwrap(), PORT)),
                    allowed_ips: vec![format!("{}/32", s.tunnel).parse().unwrap()],
                    ..SetPeer::new(s.key.public_key())
                })
                .collect(),
            ..SetDevice::default()
        })
        .unwrap();
    ping_full_size(&p.a, &p.b, &p);
    ping_full_size(&p.a, &c, &p);
    std::thread::scope(|s| {
        s.spawn(|| tcp_transfer(&p.a, &p.b));
        s.spawn(|| tcp_transfer(&c, &p.a));
    });
    let info = p.a.uapi().get().unwrap();
    assert_eq!(info.peers.len(), 2, "{info:?}");
    for peer in &info.peers {
        assert!(peer.last_handshake.is_some(), "{info:?}");
        assert!(peer.rx_bytes > 0 && peer.tx_bytes > 0, "{info:?}");
    }
    let of = |k| info.peers.iter().find(|x| x.public_key == k).unwrap();
    assert!(of(p.b.key.public_key()).tx_bytes > 8 << 20, "{info:?}");
    assert!(of(c.key.public_key()).rx_bytes > 8 << 20, "{info:?}");
    assert_eq!(
        of(c.key.public_key()).endpoint,
        Some("192.168.79.2:51871".parse().unwrap())
    );
}

#[test]
fn ipv6_inside_the_tunnel() {
    let p = Pair::both_devices("6");
    for (side, me, peer, peer_key) in [
        (&p.a, "fd77::1", "fd77::2", p.b.key.public_key()),
        (&p.b, "fd77::2", "fd77::1", p.a.key.public_key()),
    ] {
        side.ns.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{me}/64"),
            "dev",
            "wg0",
            "nodad",
        ]);
        side.uapi()
            .set(&SetDevice {
                peers: vec![SetPeer {
                    allowed_ips: vec![format!("{peer}/128").parse().unwrap()],
                    ..SetPeer::new(peer_key)
                }],
                ..SetDevice::default()
            })
            .unwrap();
    }
    // Full size: 1420 - 40 (IPv6) - 8 (ICMPv6).
    let size = (MTU - 48).to_string();
    let mut last = None;
    for _ in 0..10 {
        let out = p.a.ns.run(&[
            "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", &size, "fd77::2",
        ]);
        if out.status.success() {
            last = None;
            break;
        }
        last = Some(out);
    }
    assert!(last.is_none(), "ping -6: {last:?}\n{}", p.logs());
    tcp_transfer_to(&p.a, &p.b, "fd77::2");
    tcp_transfer_to(&p.b, &p.a, "fd77::1");
}

#[test]
fn ipv6_underlay() {
    let mut p = Pair::new("u");
    for (s, dev, addr) in [(&p.a, "va", "fd78::1"), (&p.b, "vb", "fd78::2")] {
        s.ns.ok(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{dev}.disable_ipv6=0"),
        ]);
        s.ns.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            dev,
            "nodad",
        ]);
    }
    p.a.underlay = "fd78::1";
    p.b.underlay = "fd78::2";
    p.a.start_device(&[]);
    p.b.start_device(&[]);
    p.a.address_tunnel();
    p.b.address_tunnel();
    p.a.configure(&p.b);
    p.b.configure(&p.a);
    ping_full_size(&p.a, &p.b, &p);
    tcp_transfer(&p.b, &p.a);
    let info = p.a.uapi().get().unwrap();
    assert_eq!(
        info.peers[0].endpoint,
        Some("[fd78::2]:51871".parse().unwrap()),
        "{info:?}"
    );
}

#[test]
fn garbage_from_the_network_is_dropped_and_the_tunnel_lives_on() {
    let p = Pair::both_devices("f");
    ping_full_size(&p.a, &p.b, &p);
    // Datagrams of every WireGuard message type and of the sizes the parser tells apart, with
    // random content, from b's side to a's port.
    p.b.ns.within(|| {
        let sock = std::net::UdpSocket::bind(("192.168.77.2", 0)).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for &len in &[
            0usize, 1, 3, 4, 15, 16, 31, 32, 33, 64, 92, 147, 148, 149, 200, 1452,
        ] {
            for kind in 0u8..6 {
                for _ in 0..50 {
                    let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    if let Some(first) = d.first_mut() {
                        *first = kind;
                    }
                    if len >= 4 {
                        d[1..4].copy_from_slice(&[0, 0, 0]);
                    }
                    let _ = sock.send_to(&d, ("192.168.77.1", PORT));
                }
            }
        }
    });
    // Both devices still answer, and the tunnel still carries traffic.
    p.a.uapi().get().unwrap();
    ping_full_size(&p.a, &p.b, &p);
    ping_full_size(&p.b, &p.a, &p);
    assert!(!p.a.log().contains("panicked"), "{}", p.a.log());
}

#[test]
fn source_outside_allowed_ips_is_dropped_and_lpm_picks_the_peer() {
    let p = Pair::both_devices("s");
    ping_full_size(&p.a, &p.b, &p);
    // b sends from an address a does not allow for it: a extra address on b's link, and a
    // route on b through the tunnel to a. a must drop these packets.
    p.b.ns
        .ok(&["ip", "addr", "add", "10.77.0.99/32", "dev", "wg0"]);
    let out =
        p.b.ns
            .run(&["ping", "-c", "2", "-W", "1", "-I", "10.77.0.99", p.a.tunnel]);
    assert!(
        !out.status.success(),
        "a accepted a source outside b's allowed ips"
    );
    wait_for(
        "a to log the dropped source",
        Duration::from_secs(10),
        || p.a.log().contains("source not in the peer's allowed ips"),
    );
    // Allowing it (a /24 plus the existing /32: the /32 still matches first) lets it through.
    p.a.uapi()
        .set(&SetDevice {
            peers: vec![SetPeer {
                allowed_ips: vec!["10.77.0.0/24".parse().unwrap()],
                ..SetPeer::new(p.b.key.public_key())
            }],
            ..SetDevice::default()
        })
        .unwrap();
    // b must also route the reply's source: it allows a's /32 only, and the reply goes to .99.
    let out =
        p.b.ns
            .run(&["ping", "-c", "2", "-W", "2", "-I", "10.77.0.99", p.a.tunnel]);
    assert!(out.status.success(), "{out:?}\n{}", p.logs());
    let info = p.a.uapi().get().unwrap();
    assert_eq!(info.peers[0].allowed_ips.len(), 2, "{info:?}");
}

#[test]
fn reconfiguring_keeps_sessions_and_removal_drops_the_peer() {
    let p = Pair::both_devices("r");
    ping_full_size(&p.a, &p.b, &p);
    let before = p.a.uapi().get().unwrap().peers[0].last_handshake;
    assert!(before.is_some());
    // Same private key again, and the peer's allowed IPs changed: the session stays.
    p.a.configure(&p.b);
    p.a.uapi()
        .set(&SetDevice {
            private_key: Some(p.a.key.private_key()),
            peers: vec![SetPeer {
                replace_allowed_ips: true,
                allowed_ips: vec![
                    "10.77.0.2/32".parse().unwrap(),
                    "10.99.0.0/16".parse().unwrap(),
                ],
                ..SetPeer::new(p.b.key.public_key())
            }],
            ..SetDevice::default()
        })
        .unwrap();
    let after = p.a.uapi().get().unwrap();
    assert_eq!(
        after.peers[0].last_handshake, before,
        "session was reset: {after:?}"
    );
    assert!(
        after.peers[0].rx_bytes > 0,
        "counters were reset: {after:?}"
    );
    ping_full_size(&p.a, &p.b, &p);
    assert_eq!(p.a.uapi().get().unwrap().peers[0].last_handshake, before);

    // A request that cannot be applied (its port is taken) is refused with the errno and
    // changes nothing, not even the parts before the bad one.
    let blocker =
        p.a.ns
            .within(|| std::net::UdpSocket::bind(("::", 0)).unwrap());
    let taken = blocker.local_addr().unwrap().port();
    let err =
        p.a.uapi()
            .set(&SetDevice {
                listen_port: Some(taken),
                peers: vec![SetPeer {
                    remove: true,
                    ..SetPeer::new(p.b.key.public_key())
                }],
                ..SetDevice::default()
            })
            .unwrap_err();
    assert!(
        matches!(err, plexus_wireguard::UapiError::Errno { errno: 98, .. }),
        "{err:?}"
    );
    let info = p.a.uapi().get().unwrap();
    assert_eq!((info.listen_port, info.peers.len()), (PORT, 1), "{info:?}");
    drop(blocker);

    // Removing the peer: gone from get, and traffic stops.
    p.a.uapi()
        .set(&SetDevice {
            peers: vec![SetPeer {
                remove: true,
                ..SetPeer::new(p.b.key.public_key())
            }],
            ..SetDevice::default()
        })
        .unwrap();
    assert!(p.a.uapi().get().unwrap().peers.is_empty());
    let out = p.a.ns.run(&["ping", "-c", "1", "-W", "1", p.b.tunnel]);
    assert!(!out.status.success());
}

#[test]
fn key_rotation_keeps_the_old_session_until_the_peer_has_the_new_key() {
    let p = Pair::both_devices("k");
    ping_full_size(&p.a, &p.b, &p);
    let old_public = p.a.key.public_key();
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let listener =
        p.b.ns
            .within(|| TcpListener::bind((p.b.tunnel, 5202)).unwrap());
    std::thread::scope(|s| {
        // A TCP stream runs through the whole rotation, paced so it lasts a few seconds.
        let server = s.spawn(|| {
            let mut conn = accept_within(&listener, Duration::from_secs(20));
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            got
        });
        let client = s.spawn(|| {
            let mut conn = p.a.ns.within(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::new(p.b.tunnel.parse().unwrap(), 5202),
                    Duration::from_secs(20),
                )
                .unwrap()
            });
            conn.set_write_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            for chunk in data.chunks(256 << 10) {
                conn.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        });

        // a rotates its key: the new one is in effect at once.
        std::thread::sleep(Duration::from_millis(500));
        let new_key = NodeKey::rotate(&p.dir.path().join("a.key")).unwrap();
        p.a.uapi()
            .set(&SetDevice {
                private_key: Some(new_key.private_key()),
                ..SetDevice::default()
            })
            .unwrap();
        assert_eq!(
            p.a.uapi().get().unwrap().public_key,
            Some(new_key.public_key())
        );
        // b still knows a by its old key: the old session carries traffic both ways.
        for (from, to) in [(&p.a, &p.b), (&p.b, &p.a)] {
            let out = from
                .ns
                .run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", to.tunnel]);
            assert!(out.status.success(), "{out:?}\n{}", p.logs());
        }
        // b learns a's new key (what its agent does when a's Node changes).
        std::thread::sleep(Duration::from_millis(500));
        p.b.uapi()
            .set(&SetDevice {
                peers: vec![
                    SetPeer {
                        remove: true,
                        ..SetPeer::new(old_public)
                    },
                    SetPeer {
                        endpoint: Some(SocketAddr::new(p.a.underlay.parse().unwrap(), PORT)),
                        allowed_ips: vec![format!("{}/32", p.a.tunnel).parse().unwrap()],
                        ..SetPeer::new(new_key.public_key())
                    },
                ],
                ..SetDevice::default()
            })
            .unwrap();
        client.join().unwrap();
        let got = server.join().unwrap();
        assert!(got == data, "stream corrupted or cut through the rotation");
        // The new key's handshake happened: b's peer is a's new key, with a session.
        let info = p.b.uapi().get().unwrap();
        assert_eq!(info.peers.len(), 1);
        assert_eq!(info.peers[0].public_key, new_key.public_key());
        assert!(
            info.peers[0].last_handshake.is_some(),
            "{info:?}\n{}",
            p.logs()
        );
    });
    ping_full_size(&p.a, &p.b, &p);
}

#[test]
fn restarted_device_reattaches_and_a_dead_one_fails_closed() {
    let mut p = Pair::both_devices("d");
    ping_full_size(&p.a, &p.b, &p);

    // Killed hard: the link stays with its address, and nothing gets through it.
    p.a.proc
        .as_mut()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGKILL);
    let link = p.a.ns.ok(&["ip", "-o", "addr", "show", "dev", "wg0"]);
    assert!(link.contains("10.77.0.1/24"), "{link}");
    let out = p.a.ns.run(&["ping", "-c", "1", "-W", "1", p.b.tunnel]);
    assert!(!out.status.success(), "traffic passed without a device");

    // The stale socket is replaced, the link re-attached (address and routes kept).
    p.a.start_device(&[]);
    p.a.configure(&p.b);
    ping_full_size(&p.a, &p.b, &p);
    tcp_transfer(&p.a, &p.b);

    // SIGTERM: the device exits 0, the socket goes, the link stays.
    let st =
        p.a.proc
            .as_mut()
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGTERM);
    assert!(st.success(), "{st:?}\n{}", p.a.log());
    assert!(!p.a.socket.exists());
    p.a.ns.ok(&["ip", "link", "show", "wg0"]);

    // `delete` removes the link; with --delete-on-exit the link goes with the device.
    let sock = p.a.socket.to_str().unwrap().to_string();
    p.a.ns
        .ok(&[DEVICE, "--interface", "wg0", "--socket", &sock, "delete"]);
    assert!(!p.a.ns.run(&["ip", "link", "show", "wg0"]).status.success());
    p.a.start_device(&["--delete-on-exit"]);
    p.a.ns.ok(&["ip", "link", "show", "wg0"]);
    let st =
        p.a.proc
            .as_mut()
            .unwrap()
            .signal(nix::sys::signal::Signal::SIGTERM);
    assert!(st.success());
    assert!(!p.a.ns.run(&["ip", "link", "show", "wg0"]).status.success());
}

#[test]
fn socket_is_private_and_a_second_device_is_refused() {
    let mut p = Pair::new("p");
    p.a.socket = p.dir.path().join("sub").join("dir").join("wg0.sock");
    p.a.start_device(&[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&p.a.socket), 0o600);
    assert_eq!(mode(p.a.socket.parent().unwrap()), 0o700);
    // A second device on the same socket refuses to start (the link is busy too).
    let sock = p.a.socket.to_str().unwrap().to_string();
    let out =
        p.a.ns
            .run(&[DEVICE, "--interface", "wg1", "--socket", &sock]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another device"),
        "{out:?}"
    );
    // Garbage on the socket gets errno=-22 and the device lives on.
    let mut s = std::os::unix::net::UnixStream::connect(&p.a.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"set=1\nlisten_port=banana\n\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "errno=-22\n\n");
    let mut s = std::os::unix::net::UnixStream::connect(&p.a.socket).unwrap();
    s.write_all(&[0xff; 4000]).unwrap();
    drop(s);
    p.a.uapi().get().unwrap();
    let _ = p.a.proc.as_ref().unwrap().pid();
}

/// The command that runs Debian's `wg ARGS` in a private mount namespace where `run_dir` is
/// mounted over /run, so `/var/run/wireguard/wg0.sock` is the test's socket.
fn wg_argv(run_dir: &Path, args: &[&str]) -> Vec<String> {
    let mut script = format!("mount --bind {} /run && exec wg", run_dir.display());
    for a in args {
        script.push_str(&format!(" '{a}'"));
    }
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]
    .map(String::from)
    .to_vec()
}

/// [`wg`], returning the output whether it succeeded or not.
fn wg_run(side: &Side, run_dir: &Path, args: &[&str]) -> Output {
    let argv = wg_argv(run_dir, args);
    side.ns
        .run(&argv.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Runs Debian's `wg ARGS` (see [`wg_argv`]), asserted to succeed; its stdout.
fn wg(side: &Side, run_dir: &Path, args: &[&str]) -> String {
    let argv = wg_argv(run_dir, args);
    side.ns
        .ok(&argv.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn debian_wg_tool_configures_and_shows_the_device() {
    let mut p = Pair::new("w");
    let run_dir = p.dir.path().join("run");
    fs::create_dir_all(run_dir.join("wireguard")).unwrap();
    p.b.socket = run_dir.join("wireguard").join("wg0.sock");
    p.a.start_device(&[]);
    p.b.start_device(&[]);
    p.a.address_tunnel();
    p.b.address_tunnel();
    p.a.configure(&p.b);

    // b configured by `wg set` alone.
    let key_file = p.dir.path().join("b.key");
    wg(
        &p.b,
        &run_dir,
        &[
            "set",
            "wg0",
            "private-key",
            key_file.to_str().unwrap(),
            "listen-port",
            &PORT.to_string(),
            "peer",
            &p.a.key.public_base64(),
            "endpoint",
            &format!("{}:{PORT}", p.a.underlay),
            "allowed-ips",
            &format!("{}/32", p.a.tunnel),
        ],
    );
    ping_full_size(&p.a, &p.b, &p);
    let show = wg(&p.b, &run_dir, &["show", "wg0"]);
    assert!(
        show.contains(&format!("public key: {}", p.b.key.public_base64())),
        "{show}"
    );
    assert!(show.contains(&format!("listening port: {PORT}")), "{show}");
    assert!(
        show.contains(&format!("peer: {}", p.a.key.public_base64())),
        "{show}"
    );
    assert!(
        show.contains(&format!("endpoint: {}:{PORT}", p.a.underlay)),
        "{show}"
    );
    assert!(
        show.contains(&format!("allowed ips: {}/32", p.a.tunnel)),
        "{show}"
    );
    assert!(show.contains("latest handshake:"), "{show}");
    assert!(show.contains("transfer:"), "{show}");
    let dump = wg(&p.b, &run_dir, &["show", "wg0", "dump"]);
    let peer_line = dump.lines().nth(1).unwrap_or_default();
    let fields: Vec<&str> = peer_line.split('\t').collect();
    assert_eq!(fields.len(), 8, "{dump}");
    assert_ne!(fields[4], "0", "no handshake in {dump}");
    // `wg show interfaces` finds it by its socket.
    assert_eq!(wg(&p.b, &run_dir, &["show", "interfaces"]).trim(), "wg0");
    // A setting the device does not support is refused, and wg says so.
    let out = wg_run(&p.b, &run_dir, &["set", "wg0", "fwmark", "7"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
        "{out:?}"
    );
    // `wg set ... peer X remove`.
    wg(
        &p.b,
        &run_dir,
        &["set", "wg0", "peer", &p.a.key.public_base64(), "remove"],
    );
    assert!(p.b.uapi().get().unwrap().peers.is_empty());
    let _ = &mut p;
}

#[test]
fn interoperates_with_wireguard_go() {
    let mut p = Pair::new("g");
    p.a.start_device(&[]);
    let go_dir = p.dir.path().join("go");
    p.b.start_wireguard_go(&go_dir);
    p.a.address_tunnel();
    p.b.address_tunnel();
    // Both configured through our UAPI client: wireguard-go speaks the same protocol.
    p.a.configure(&p.b);
    p.b.configure(&p.a);
    // wireguard-go initiates the first handshake.
    ping_full_size(&p.b, &p.a, &p);
    // The peer is removed and re-created on our side: its session is gone, so the next
    // packets need a new handshake (ours, or wireguard-go's if its timers fire first: which
    // side starts it is a race, so no assertion on it here).
    let remove = SetDevice {
        peers: vec![SetPeer {
            remove: true,
            ..SetPeer::new(p.b.key.public_key())
        }],
        ..SetDevice::default()
    };
    p.a.uapi().set(&remove).unwrap();
    p.a.configure(&p.b);
    ping_full_size(&p.a, &p.b, &p);
    tcp_transfer(&p.a, &p.b);
    tcp_transfer(&p.b, &p.a);
    let go = p.b.uapi().get().unwrap();
    assert_eq!(go.listen_port, PORT);
    assert_eq!(go.peers.len(), 1, "{go:?}");
    assert!(go.peers[0].last_handshake.is_some(), "{go:?}");
    assert!(go.peers[0].rx_bytes > 8 << 20, "{go:?}");
    let ours = p.a.uapi().get().unwrap();
    assert!(ours.peers[0].last_handshake.is_some(), "{ours:?}");
    assert!(ours.peers[0].tx_bytes > 8 << 20, "{ours:?}");
}
