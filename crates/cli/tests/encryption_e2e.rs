//! WireGuard encryption end to end, as root: the global-services walkthrough's lab (2 clusters
//! x 2 nodes) with `encryption: wireguard`, once with VXLAN tunnels (brought up with `--mesh`)
//! and once with native routing (connected by the walkthrough's own `clustermesh connect`).
//! One lab per mode carries every check, so CI builds two labs, not one per check:
//! - `plexus status` shows the encryption line; each node's device runs beside its agent;
//! - pods reach pods on the other node and on both nodes of the other cluster: ping, HTTP,
//!   and the largest `ping -M do` (pod MTU = underlay 1500 - 60 WireGuard - 50 VXLAN in
//!   tunnel mode) while one byte more fails at once with "message too long";
//! - a capture on the underlay (every port of its bridge, in the underlay namespace) while a
//!   pod sends a marker string across clusters (HTTP and ping pattern): the marker is never in
//!   it, nor a VXLAN packet (udp 8472), and every IPv4 packet is either WireGuard (udp
//!   51871 <-> 51871 between node addresses) or the control plane's TLS (etcd 2379, the
//!   agents' API 9965); a pod address only appears in the latter (the cluster DNS pod talks to
//!   its etcd);
//! - a live TCP stream across clusters keeps every second non-empty through
//!   `plexus encryption rotate-key`, and through agent restarts (the device, its own process,
//!   keeps running with its pid);
//! - the global-services walkthrough's checks pass (crates/test-support's walkthrough module,
//!   stopping and starting cluster2 included, which restarts its devices);
//! - tunnel mode also: strict mode (a peer whose key is withheld gets no traffic, the drop
//!   shows in `monitor --type drop`, nothing leaves in the clear, and traffic flows again once
//!   the key is back), and `clustermesh connect` refusing an unencrypted cluster (a second,
//!   one-node lab sharing the contexts file);
//! - `lab down` leaves no device process behind.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use plexus_test_support::lab::{Lab, LabCli, eventually, run_lab};
use plexus_test_support::walkthrough::{example, global_services};
use serde_json::Value;

/// What a pod sends across clusters during the capture; never to be seen on the underlay.
const MARKER: &str = "PLEXUS-CLEARTEXT-MARKER-4f1d";
/// The same, as `ping -p` fills a packet (up to 16 bytes of hex).
const PING_PATTERN: &str = "504c455855532d4d41524b45522d3466"; // "PLEXUS-MARKER-4f"
const PING_MARKER: &str = "PLEXUS-MARKER-4f";

/// The walkthrough's lab file with `routing: MODE` and `encryption: wireguard`.
fn lab_file(lab: &Lab, mode: &str) -> PathBuf {
    let text = std::fs::read_to_string(example("lab.yaml")).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("routing:"))
        .map(|l| format!("{l}\n"))
        .collect();
    lab.write(
        "lab.yaml",
        &format!("{text}routing: {mode}\nencryption: wireguard\n"),
    )
}

/// A client on cluster1-node1, a web pod (the built-in server) pinned on every node, an iperf3
/// server on the first node of each cluster.
fn pods(ctx: &str) -> String {
    let mut out = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  nodeName: {ctx}-node1
  containers:
  - {{name: client, image: busybox, command: [sleep, '3600']}}
---
apiVersion: v1
kind: Pod
metadata: {{name: iperf, labels: {{app: iperf}}}}
spec:
  nodeName: {ctx}-node1
  containers:
  - {{name: iperf, image: iperf3, command: [iperf3, -s]}}
"
    );
    for n in 1..=2 {
        out.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: web{n}, labels: {{app: web}}}}
spec:
  nodeName: {ctx}-node{n}
  containers:
  - name: web
    image: nginx
    ports:
    - {{containerPort: 80}}
"
        ));
    }
    out
}

fn apply_pods(lab: &Lab) {
    for ctx in ["cluster1", "cluster2"] {
        let file = lab.write(&format!("pods-{ctx}.yaml"), &pods(ctx));
        lab.ok(&["--context", ctx, "apply", "-f", file.to_str().unwrap()]);
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The lab's state file (pids of agents and devices).
fn state(lab: &Lab) -> Value {
    serde_json::from_slice(&std::fs::read(lab.dir().join("lab.json")).unwrap()).unwrap()
}

/// The WireGuard device pid of every node, by node name.
fn device_pids(lab: &Lab) -> BTreeMap<String, u64> {
    let mut pids = BTreeMap::new();
    for c in state(lab)["clusters"].as_array().unwrap() {
        for n in c["nodes"].as_array().unwrap() {
            let pid = n["wireguard-pid"]
                .as_u64()
                .unwrap_or_else(|| panic!("no WireGuard device pid for {}", n["name"]));
            pids.insert(n["name"].as_str().unwrap().to_string(), pid);
        }
    }
    pids
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim()
            .starts_with('Z')
    })
}

/// Pods reach pods: ping, the largest unfragmented ping and one byte more, HTTP.
fn reach(lab: &Lab, mode: &str, mtu: u32) {
    let targets = [
        ("cluster1 node2", lab.pod_ip("cluster1", "web2"), "cluster1"),
        ("cluster2 node1", lab.pod_ip("cluster2", "web1"), "cluster2"),
        ("cluster2 node2", lab.pod_ip("cluster2", "web2"), "cluster2"),
    ];
    for (what, ip, cluster) in &targets {
        eventually(
            Duration::from_secs(30),
            &format!("{mode}: ping {what}"),
            || {
                let out = lab.exec("cluster1", "client", &["ping", "-c", "1", "-W", "2", ip]);
                out.status.success().then_some(()).ok_or(text(&out))
            },
        );
        // 20 bytes of IPv4 and 8 of ICMP around the payload.
        let largest = (mtu - 28).to_string();
        let out = lab.exec(
            "cluster1",
            "client",
            &["ping", "-M", "do", "-s", &largest, "-c", "1", "-W", "2", ip],
        );
        assert!(
            out.status.success(),
            "{mode}: ping -M do -s {largest} {what} {ip}: {}",
            text(&out)
        );
        let too_big = (mtu - 27).to_string();
        let out = lab.exec(
            "cluster1",
            "client",
            &["ping", "-M", "do", "-s", &too_big, "-c", "1", "-W", "2", ip],
        );
        let said = text(&out);
        assert!(
            !out.status.success() && said.contains("too long"),
            "{mode}: ping -M do -s {too_big} {what} {ip} must fail at once: {said}"
        );
        let out = lab.exec(
            "cluster1",
            "client",
            &["curl", "-s", "--max-time", "5", &format!("http://{ip}/")],
        );
        let answer: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{mode}: curl {what} {ip}: {e}: {}", text(&out)));
        assert_eq!(answer["cluster"], *cluster, "{mode}: {what}");
    }
}

/// A packet capture of every port of the underlay's bridge (`tcpdump -i any` in the underlay
/// namespace: frames forwarded between the bridge's ports never show on `br0` itself). Killed
/// on drop.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(lab: &Lab, what: &str) -> Self {
        let file = lab.scratch().join(format!("{what}.pcap"));
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/plx-{}-u", lab.name()))
            // --immediate-mode: each packet as it comes (else the kernel hands them over in
            // blocks, and the last of them would still wait there when the capture stops).
            .args([
                "--",
                "tcpdump",
                "--immediate-mode",
                "-i",
                "any",
                "-y",
                "LINUX_SLL2",
                "-n",
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (package tcpdump)");
        // tcpdump says "listening on" once it captures; then its stderr is drained so it never
        // blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("tcpdump listening on the underlay");
        Self { child, file }
    }

    /// Stops the capture (SIGINT: tcpdump writes out what it has); the packets, as Linux's
    /// cooked capture v2 gives them (link-layer protocol, then the network-layer packet).
    fn finish(mut self) -> Vec<(u16, Vec<u8>)> {
        // The last packets reach the capture a moment after the command that sent them ended.
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let bytes = std::fs::read(&self.file).unwrap();
        parse_pcap(&bytes)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The packets of a pcap file of link type LINUX_SLL2 (`tcpdump -i any -y LINUX_SLL2`):
/// (protocol, packet after the 20-byte cooked header, which starts with the protocol).
fn parse_pcap(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    assert!(bytes.len() >= 24, "a pcap file of {} bytes", bytes.len());
    assert_eq!(
        &bytes[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "a little-endian pcap file"
    );
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(bytes, 20), 276, "link type LINUX_SLL2");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32_at(bytes, at + 8) as usize;
        let data = &bytes[at + 16..(at + 16 + len).min(bytes.len())];
        at += 16 + len;
        if data.len() >= 20 {
            let proto = u16::from_be_bytes([data[0], data[1]]);
            out.push((proto, data[20..].to_vec()));
        }
    }
    out
}

/// Whether `addr` is a node's underlay address (172.31.<cluster>.<10 + node>).
fn is_node(addr: [u8; 4]) -> bool {
    addr[0] == 172 && addr[1] == 31 && addr[2] != 255 && addr[3] > 10
}

/// Whether `addr` is in one of the lab's pod CIDRs (10.10.0.0/16, 10.20.0.0/16).
fn is_pod(addr: [u8; 4]) -> bool {
    addr[0] == 10 && (addr[1] == 10 || addr[1] == 20)
}

/// Ports of the control plane's TLS: etcd, the agents' API.
const TLS_PORTS: [u16; 2] = [2379, 9965];
const WIREGUARD_PORT: u16 = 51871;

/// What the capture holds, or the first packets that break the rules.
#[derive(Debug, Default)]
struct Verdict {
    wireguard: usize,
    tls: usize,
    /// WireGuard packets by (source, destination) address.
    flows: BTreeMap<(String, String), usize>,
    bad: Vec<String>,
}

fn judge(packets: &[(u16, Vec<u8>)], marker: &[&str]) -> Verdict {
    let mut v = Verdict::default();
    let ip = |a: [u8; 4]| format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]);
    for (i, (proto, p)) in packets.iter().enumerate() {
        for m in marker {
            if p.windows(m.len()).any(|w| w == m.as_bytes()) {
                v.bad.push(format!("packet {i} carries the marker {m:?}"));
            }
        }
        match proto {
            // ARP, and IPv6's own neighbour discovery on the links (no IPv6 pod traffic).
            0x0806 => {}
            0x86dd => {
                if p.len() < 40 || !(p[6] == 58 || p[6] == 0) {
                    v.bad
                        .push(format!("packet {i}: IPv6 next header {:?}", p.get(6)));
                }
            }
            0x0800 if p.len() >= 20 => {
                let ihl = usize::from(p[0] & 0x0f) * 4;
                let l4 = p[9];
                let src: [u8; 4] = p[12..16].try_into().unwrap();
                let dst: [u8; 4] = p[16..20].try_into().unwrap();
                let ports = (p.len() >= ihl + 4).then(|| {
                    (
                        u16::from_be_bytes([p[ihl], p[ihl + 1]]),
                        u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]),
                    )
                });
                let what = format!(
                    "packet {i}: {} -> {} proto {l4} ports {ports:?}",
                    ip(src),
                    ip(dst)
                );
                match (l4, ports) {
                    (17, Some((WIREGUARD_PORT, WIREGUARD_PORT)))
                        if is_node(src) && is_node(dst) =>
                    {
                        v.wireguard += 1;
                        *v.flows.entry((ip(src), ip(dst))).or_default() += 1;
                    }
                    (6, Some((s, d))) if TLS_PORTS.contains(&s) || TLS_PORTS.contains(&d) => {
                        v.tls += 1;
                    }
                    (17, Some((s, d))) if s == 8472 || d == 8472 => {
                        v.bad.push(format!("{what}: a VXLAN packet in the clear"));
                    }
                    _ if is_pod(src) || is_pod(dst) => {
                        v.bad.push(format!("{what}: a pod address in the clear"));
                    }
                    _ => v.bad.push(format!("{what}: neither WireGuard nor TLS")),
                }
            }
            other => v.bad.push(format!("packet {i}: protocol {other:#06x}")),
        }
    }
    v
}

/// Sends the marker from cluster1's client to every web pod (HTTP, and ping's pattern) while
/// the underlay is captured; judges the capture.
fn capture_check(lab: &Lab, mode: &str) {
    let capture = Capture::start(lab, &format!("marker-{mode}"));
    for (ctx, pod) in [
        ("cluster1", "web2"),
        ("cluster2", "web1"),
        ("cluster2", "web2"),
    ] {
        let ip = lab.pod_ip(ctx, pod);
        let out = lab.exec(
            "cluster1",
            "client",
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "-H",
                &format!("X-Marker: {MARKER}"),
                &format!("http://{ip}/{MARKER}"),
            ],
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(ctx),
            "{mode}: the marker request to {ctx}/{pod} is answered: {}",
            text(&out)
        );
        let out = lab.exec(
            "cluster1",
            "client",
            &["ping", "-c", "3", "-i", "0.2", "-p", PING_PATTERN, &ip],
        );
        assert!(out.status.success(), "{mode}: ping {ip}: {}", text(&out));
    }
    let packets = capture.finish();
    let v = judge(&packets, &[MARKER, PING_MARKER]);
    assert!(
        v.bad.is_empty(),
        "{mode}: {} of {} packets on the underlay break the rules, first: {:#?}",
        v.bad.len(),
        packets.len(),
        &v.bad[..v.bad.len().min(20)]
    );
    // The marker traffic went through WireGuard, both ways between cluster1-node1 and each
    // node it reached.
    for peer in ["172.31.1.12", "172.31.2.11", "172.31.2.12"] {
        for flow in [
            ("172.31.1.11".to_string(), peer.to_string()),
            (peer.to_string(), "172.31.1.11".to_string()),
        ] {
            assert!(
                v.flows.get(&flow).copied().unwrap_or(0) > 0,
                "{mode}: no WireGuard packet {flow:?} in the capture: {:?}",
                v.flows
            );
        }
    }
    eprintln!(
        "{mode}: capture: {} packets, {} WireGuard, {} control-plane TLS",
        packets.len(),
        v.wireguard,
        v.tls
    );
}

/// iperf3 for `secs` seconds from cluster1's client to cluster2's iperf pod, on another thread;
/// join it for its per-second report.
fn stream(cli: LabCli, server: String, secs: u32) -> std::thread::JoinHandle<Value> {
    std::thread::spawn(move || {
        let out = cli
            .command(&[
                "--context",
                "cluster1",
                "exec",
                "client",
                "--",
                "iperf3",
                "-c",
                &server,
                "-t",
                &secs.to_string(),
                "-J",
            ])
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("iperf3: {e}: {}", text(&out)));
        assert!(out.status.success(), "the stream broke: {report:#}");
        report
    })
}

fn no_empty_second(report: &Value, what: &str) {
    let intervals = report["intervals"].as_array().unwrap();
    assert!(!intervals.is_empty(), "{what}: no intervals: {report:#}");
    let bytes: Vec<u64> = intervals
        .iter()
        .map(|i| i["sum"]["bytes"].as_u64().unwrap())
        .collect();
    assert!(
        bytes.iter().all(|b| *b > 0),
        "{what}: a second without data; bytes per second: {bytes:?}"
    );
}

/// The public key of `node` as `plexus encryption status` shows it.
fn public_key(lab: &Lab, ctx: &str, node: &str) -> String {
    let v = lab.json(&[
        "--context",
        ctx,
        "encryption",
        "status",
        "--node",
        node,
        "-o",
        "json",
    ]);
    find_key(&v, "public-key")
        .unwrap_or_else(|| panic!("no public-key in encryption status of {node}: {v:#}"))
}

/// The first string value of `key` anywhere in `v`.
fn find_key(v: &Value, key: &str) -> Option<String> {
    match v {
        Value::Object(m) => m
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// A live TCP stream across clusters through a key rotation and through agent restarts.
fn rotation_and_restarts(lab: &Lab, mode: &str) {
    let server = lab.pod_ip("cluster2", "iperf");
    let before = public_key(lab, "cluster1", "cluster1-node1");
    let running = stream(lab.cli(), server.clone(), 8);
    std::thread::sleep(Duration::from_secs(2));
    lab.ok(&[
        "--context",
        "cluster1",
        "encryption",
        "rotate-key",
        "--node",
        "cluster1-node1",
    ]);
    no_empty_second(&running.join().unwrap(), &format!("{mode}: rotate-key"));
    let after = public_key(lab, "cluster1", "cluster1-node1");
    assert_ne!(before, after, "{mode}: rotate-key made a new key");
    // The peers use the new key: the other cluster's node shows it as its peer.
    eventually(
        Duration::from_secs(30),
        &format!("{mode}: cluster2-node1 has the new key as a peer"),
        || {
            let v = lab.json(&[
                "--context",
                "cluster2",
                "encryption",
                "status",
                "--node",
                "cluster2-node1",
                "-o",
                "json",
            ]);
            let t = v.to_string();
            (t.contains(&after) && !t.contains(&before))
                .then_some(())
                .ok_or(t)
        },
    );

    let devices = device_pids(lab);
    let running = stream(lab.cli(), server, 8);
    std::thread::sleep(Duration::from_secs(2));
    lab.ok(&["lab", "restart-agent", "cluster1", "cluster1-node1"]);
    lab.ok(&["lab", "restart-agent", "cluster2", "cluster2-node1"]);
    no_empty_second(&running.join().unwrap(), &format!("{mode}: agent restarts"));
    assert_eq!(
        device_pids(lab),
        devices,
        "{mode}: the devices outlive agent restarts"
    );
    assert_eq!(
        public_key(lab, "cluster1", "cluster1-node1"),
        after,
        "{mode}: the key survives the agent's restart"
    );
}

/// Strict mode: with cluster2-node2's key withheld (its agent without `enable-wireguard`),
/// cluster1-node1 sends its pods' traffic there nowhere: dropped with its own reason, nothing
/// in the clear on the underlay. With the key back, traffic flows again.
fn strict_mode(lab: &Lab) {
    let node2 = lab.dir().join("cluster2/cluster2-node2/agent.yaml");
    let original = std::fs::read_to_string(&node2).unwrap();
    assert!(original.contains("enable-wireguard: true"), "{original}");
    std::fs::write(
        &node2,
        original.replace("enable-wireguard: true", "enable-wireguard: false"),
    )
    .unwrap();
    lab.ok(&["lab", "restart-agent", "cluster2", "cluster2-node2"]);
    let target = lab.pod_ip("cluster2", "web2");
    // cluster1-node1 lets go of the peer once cluster2-node2's Node has no key.
    eventually(
        Duration::from_secs(60),
        "cluster1-node1 drops cluster2-node2 as a peer",
        || {
            let v = lab.json(&[
                "--context",
                "cluster1",
                "encryption",
                "status",
                "--node",
                "cluster1-node1",
                "-o",
                "json",
            ]);
            let t = v.to_string();
            (!t.contains("172.31.2.12")).then_some(()).ok_or(t)
        },
    );
    let monitor = lab.spawn_monitor("cluster1", "cluster1-node1", "drop");
    let capture = Capture::start(lab, "strict");
    let out = lab.exec(
        "cluster1",
        "client",
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.3",
            "-W",
            "1",
            "-p",
            PING_PATTERN,
            &target,
        ],
    );
    assert!(
        !out.status.success(),
        "strict mode: a pod without the peer's key is not reached: {}",
        text(&out)
    );
    let out = lab.exec(
        "cluster1",
        "client",
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            &format!("http://{target}/{MARKER}"),
        ],
    );
    assert!(!out.status.success(), "strict mode: HTTP: {}", text(&out));
    let packets = capture.finish();
    let drops = monitor.finish();
    // From cluster1-node1 nothing went in the clear (cluster2-node2, unencrypted now, may send
    // its own traffic in the clear: only what leaves cluster1-node1 is judged).
    let from_node1: Vec<(u16, Vec<u8>)> = packets
        .into_iter()
        .filter(|(proto, p)| *proto == 0x0800 && p.len() >= 20 && p[12..16] == [172, 31, 1, 11])
        .collect();
    let v = judge(&from_node1, &[MARKER, PING_MARKER]);
    assert!(v.bad.is_empty(), "strict mode: in the clear: {:#?}", v.bad);
    let line = drops
        .lines()
        .find(|l| l.to_lowercase().contains("unencrypted") && l.contains(&target))
        .unwrap_or_else(|| panic!("no drop of unencrypted traffic to {target} in:\n{drops}"));
    eprintln!("strict mode: {line}");

    std::fs::write(&node2, &original).unwrap();
    lab.ok(&["lab", "restart-agent", "cluster2", "cluster2-node2"]);
    eventually(
        Duration::from_secs(60),
        "traffic flows with the key back",
        || {
            let out = lab.exec(
                "cluster1",
                "client",
                &["ping", "-c", "1", "-W", "2", &target],
            );
            out.status.success().then_some(()).ok_or(text(&out))
        },
    );
}

/// `clustermesh connect` refuses cluster1 (WireGuard) and an unencrypted cluster of a second,
/// one-node lab whose context is written to the same contexts file.
fn refuses_a_mix(lab: &Lab) {
    let plain = Lab::new("encplain");
    let file = plain.write(
        "lab.yaml",
        "clusters:\n- {name: plain, id: 9, podCIDR: 10.90.0.0/16, serviceCIDR: 10.91.0.0/16, nodes: 1}\n",
    );
    let with_shared_contexts = |args: &[&str]| {
        let out = plain
            .command(args)
            .env("PLEXUS_CONFIG", lab.config())
            .output()
            .unwrap();
        (out.status.success(), text(&out))
    };
    let (ok, out) = with_shared_contexts(&[
        "lab",
        "up",
        "-f",
        file.to_str().unwrap(),
        "--name",
        plain.name(),
    ]);
    assert!(ok, "the unencrypted lab: {out}");
    for (a, b) in [("cluster1", "plain"), ("plain", "cluster2")] {
        let out = lab.plexus(&[
            "clustermesh",
            "connect",
            "--context",
            a,
            "--destination-context",
            b,
        ]);
        let said = text(&out);
        assert!(!out.status.success(), "connect {a} {b}: {said}");
        let (enc, none) = if a == "plain" { (b, a) } else { (a, b) };
        assert!(
            said.contains(&format!("cluster {enc} has encryption wireguard"))
                && said.contains(&format!("cluster {none} has encryption none")),
            "connect {a} {b}: {said}"
        );
    }
    // Nothing was written: the plain cluster's agents got no remote configuration.
    assert!(
        !plain.dir().join("plain/clustermesh/cluster1").exists(),
        "a refused connect writes nothing"
    );
    let (ok, out) = with_shared_contexts(&["lab", "down"]);
    assert!(ok, "the unencrypted lab down: {out}");
}

fn run(mut lab: Lab, mode: &str, mtu: u32) {
    let file = lab_file(&lab, mode);
    // Tunnel mode comes up with `--mesh`; native mode is connected by the walkthrough.
    let tunnel = mode == "tunnel";
    if tunnel {
        let out = lab.up(&file, &["--mesh"]);
        assert!(
            out.contains("2/2 nodes are connected to all clusters"),
            "{out}"
        );
    } else {
        lab.up(&file, &[]);
    }
    let devices = device_pids(&lab);
    assert_eq!(devices.len(), 4, "a device per node: {devices:?}");
    for (node, pid) in &devices {
        assert!(alive(*pid), "{mode}: the device of {node} runs");
    }
    let status = lab.ok(&["lab", "status"]);
    assert!(status.contains("wireguard cluster1-node1"), "{status}");
    for ctx in ["cluster1", "cluster2"] {
        let agent = lab.dir().join(format!("{ctx}/{ctx}-node1/agent.yaml"));
        let yaml = std::fs::read_to_string(&agent).unwrap();
        assert!(
            yaml.contains("enable-wireguard: true") && yaml.contains("wireguard-socket:"),
            "{}: {yaml}",
            agent.display()
        );
    }
    if tunnel {
        refuses_a_mix(&lab);
    }
    // The walkthrough (native mode connects here), then the checks of encryption proper.
    global_services(&lab, tunnel);
    let out = lab.ok(&["--context", "cluster1", "status"]);
    assert!(
        out.contains("Encryption: WireGuard (userspace), 3 peers"),
        "{mode}: plexus status: {out}"
    );
    apply_pods(&lab);
    reach(&lab, mode, mtu);
    capture_check(&lab, mode);
    // Strict mode before the restarts: a restarted agent keeps its peers until their cluster
    // is listed again, and strict mode waits for cluster1-node1 to let a peer go.
    if tunnel {
        strict_mode(&lab);
    }
    rotation_and_restarts(&lab, mode);

    let devices = device_pids(&lab);
    let dir = lab.dir().to_path_buf();
    lab.down();
    for (node, pid) in devices {
        assert!(!alive(pid), "{mode}: the device of {node} still runs");
    }
    assert!(lab.netns().is_empty(), "namespaces left: {:?}", lab.netns());
    assert!(!Path::new(&dir).exists(), "lab directory left");
}

#[test]
fn tunnel_mode_encrypts_pod_traffic_between_nodes_and_clusters() {
    // Underlay 1500 - 60 (WireGuard over IPv4) - 50 (VXLAN).
    run_lab("enct", Duration::from_secs(900), |lab| {
        run(lab, "tunnel", 1390)
    });
}

#[test]
fn native_mode_encrypts_pod_traffic_between_nodes_and_clusters() {
    // Underlay 1500 - 60 (WireGuard over IPv4).
    run_lab("encn", Duration::from_secs(900), |lab| {
        run(lab, "native", 1440)
    });
}

/// The capture's judge, on packets made here: it flags what the e2e tests must never see.
#[test]
fn the_judge_flags_cleartext() {
    fn ipv4(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p.extend_from_slice(payload);
        p
    }
    let (n1, n2, cp) = ([172, 31, 1, 11], [172, 31, 2, 12], [172, 31, 1, 1]);
    let good = vec![
        (0x0800, ipv4(n1, n2, 17, 51871, 51871, b"ciphertext")),
        (0x0800, ipv4(n1, cp, 6, 40000, 2379, b"tls")),
        (0x0800, ipv4([10, 10, 0, 9], cp, 6, 40001, 2379, b"tls")),
        (0x0806, vec![0; 28]),
    ];
    let v = judge(&good, &[MARKER]);
    assert!(v.bad.is_empty(), "{:?}", v.bad);
    assert_eq!((v.wireguard, v.tls), (1, 2));
    let bad = [
        ipv4(n1, n2, 17, 40000, 8472, b"inner"),
        ipv4([10, 10, 0, 5], [10, 20, 1, 4], 1, 0, 0, b""),
        ipv4(n1, n2, 17, 51871, 51871, MARKER.as_bytes()),
        ipv4(n1, n2, 6, 40000, 80, b"GET /"),
        ipv4([10, 10, 0, 5], n2, 17, 51871, 51871, b""),
    ];
    for p in bad {
        let v = judge(&[(0x0800, p.clone())], &[MARKER]);
        assert_eq!(v.bad.len(), 1, "{p:?}: {:?}", v.bad);
    }
}
