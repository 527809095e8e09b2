//! Connection set-up latency to a ClusterIP service: the eBPF load balancer beside kube-proxy's
//! iptables DNAT, in the same run. Prints the figures of BENCHMARKS.md.
//!
//! Two node network namespaces, each with a client pod and a server pod (veth pairs, the
//! harness of `tests/common/pods.rs`):
//!
//! - **eBPF**: `EbpfDatapath` loaded in its node, both pods upserted as endpoints (the programs
//!   on their host veths), N services upserted, each a ClusterIP with one backend;
//! - **iptables**: no program anywhere; the node routes between the pods (`ip_forward`, a /32
//!   route per pod, the pods' gateway address on the node's `lo`) and holds the nat table
//!   kube-proxy would build for the same N services (KUBE-SERVICES jumped to from PREROUTING,
//!   one KUBE-SVC and one KUBE-SEP chain per service), loaded with one `iptables-restore`.
//!
//! The target service is the one installed last, which puts its rule last in KUBE-SERVICES:
//! kube-proxy's chain is matched linearly, so this is its worst case. Each figure is the time
//! of `connect()` (SYN, SYN-ACK, connect returns) from the client pod; the client then waits
//! for the server to close before the next connect, so connections never overlap. The eBPF and
//! iptables measurements alternate in rounds so that both see the same machine.
//!
//! Also: the time to install the N services (upserts vs one `iptables-restore`), and to program
//! one service with 10,000 backends and re-program it when one backend changes (an upsert vs
//! the `iptables-restore --noflush` of the chains kube-proxy's partial sync rewrites).
//!
//! Run as root: `cargo bench -p plexus-datapath --bench lb_connect`. Sizes:
//! PLEXUS_BENCH_SERVICES (default `100,10000,30000`; `0`: the direct row only),
//! PLEXUS_BENCH_CONNECTS (per figure, default 2000), PLEXUS_BENCH_ROUNDS (rounds each figure
//! alternates in, default 4), PLEXUS_BENCH_BACKENDS (default 10000), PLEXUS_BENCH_IPTABLES (the
//! restore command, default `iptables-restore`; `iptables-legacy-restore` for the legacy
//! backend).
//! Everything (namespaces, the bpffs under /run/plexus-bench-<pid>, pins) is removed by guards,
//! also on panic; the iptables rules live in the node namespace and go with it.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/pods.rs"]
#[allow(dead_code)]
mod pods;

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::mount::{MntFlags, umount2};
use plexus_datapath::{
    Datapath, EbpfDatapath, Frontend, L4Proto, LbService, NodeConfig, RoutingMode,
};
use pods::{GATEWAY, Netns, NsThread, Pod, endpoint, ip, make_pod};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 11);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 12);
const SERVER_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const TIMEOUT: Duration = Duration::from_secs(3);
/// Rounds each figure is split into, alternating eBPF and iptables (`PLEXUS_BENCH_ROUNDS`).
const ROUNDS: usize = 4;
/// Connects before each figure's first round.
const WARMUP: usize = 200;
/// Pause after installing rules or services, for the kernel's deferred work (freeing a
/// replaced ruleset) to finish before measuring.
const SETTLE: Duration = Duration::from_secs(2);
/// Times the big service is re-programmed (each `iptables-restore` of it takes seconds).
const REPROGRAMS: usize = 3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `PLEXUS_BENCH_SERVICES`; `0` (or empty): only the direct row, nothing installed.
fn env_sizes() -> Vec<usize> {
    std::env::var("PLEXUS_BENCH_SERVICES")
        .unwrap_or_else(|_| "100,10000,30000".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().expect("PLEXUS_BENCH_SERVICES: numbers"))
        .filter(|&n| n > 0)
        .collect()
}

/// A bpffs on /run/plexus-bench-<pid>, unmounted and removed on drop.
struct BenchBpffs {
    dir: PathBuf,
}

impl BenchBpffs {
    fn new() -> Self {
        let dir = PathBuf::from(format!("/run/plexus-bench-{}", std::process::id()));
        plexus_datapath::bpffs::ensure_bpffs(&dir).unwrap();
        Self { dir }
    }
}

impl Drop for BenchBpffs {
    fn drop(&mut self) {
        let _ = EbpfDatapath::uninstall(&self.dir.join("node"));
        // Unmounting drops what is still pinned: links detach, maps go.
        if let Err(e) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            eprintln!("unmounting {}: {e}", self.dir.display());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP server in a pod: accepts and closes each connection at once; stops on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    wake: Option<NsThread>,
}

impl Server {
    fn start(ns: NsThread) -> Self {
        let listener = ns.run(|| TcpListener::bind(("0.0.0.0", SERVER_PORT)).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Dropping the stream closes it: the client's read sees EOF.
                    let _ = listener.accept();
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
            wake: Some(ns),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ns) = self.wake.take() {
            // Wakes the blocking accept.
            ns.run(|| {
                TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, SERVER_PORT).into(), TIMEOUT)
            })
            .ok();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One node namespace with a client and a server pod.
struct Node {
    ns: String,
    client: NsThread,
    _server: Server,
}

fn pods(nets: &mut Netns, prefix: &str) -> (String, Pod, Pod) {
    let node = nets.add(format!("{prefix}-node"));
    ip(&["-n", &node, "link", "set", "lo", "up"]);
    let client = make_pod(nets, &node, prefix, 1, CLIENT_IP);
    let server = make_pod(nets, &node, prefix, 2, SERVER_IP);
    (node, client, server)
}

/// Runs a command in a namespace (entered with nsenter, which leaves /sys alone), optionally
/// with `stdin`; fails on error.
fn nsenter(netns: &str, args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} in {netns}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ebpf_node(nets: &mut Netns, prefix: &str, pin_dir: &Path) -> (Node, Arc<EbpfDatapath>) {
    let (ns, client, server) = pods(nets, &format!("{prefix}-e"));
    let node = NsThread::enter(&ns);
    let config = NodeConfig {
        node_ip: Ipv4Addr::new(192, 168, 77, 1),
        routing: RoutingMode::Tunnel,
        gateway_ip: GATEWAY,
        cluster_id: 1,
        tunnel_ifname: "plexus_vxlan".into(),
        pin_dir: pin_dir.to_owned(),
        encryption: Default::default(),
    };
    let eps = [endpoint(&client, 11, 5001), endpoint(&server, 12, 5002)];
    let dp = node.run(move || {
        let dp = EbpfDatapath::load(config).unwrap();
        for ep in &eps {
            dp.upsert_endpoint(ep).unwrap();
        }
        Arc::new(dp)
    });
    let node = Node {
        ns,
        client: NsThread::enter(&client.ns),
        _server: Server::start(NsThread::enter(&server.ns)),
    };
    (node, dp)
}

fn kernel_node(nets: &mut Netns, prefix: &str) -> Node {
    let (ns, client, server) = pods(nets, &format!("{prefix}-k"));
    // The pods' gateway is a local address of the node: the node answers its ARP requests.
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{GATEWAY}/32"),
        "dev",
        "lo",
    ]);
    for pod in [&client, &server] {
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            &format!("{}/32", pod.ip),
            "dev",
            &pod.host_if,
        ]);
    }
    nsenter(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"], None);
    Node {
        ns,
        client: NsThread::enter(&client.ns),
        _server: Server::start(NsThread::enter(&server.ns)),
    }
}

/// `n` sequential connects from the client pod to `to`: the duration of each `connect()`.
fn connects(client: &NsThread, to: SocketAddrV4, n: usize) -> Vec<Duration> {
    client.run(move || {
        let mut out = Vec::with_capacity(n);
        let mut buf = [0u8; 16];
        for _ in 0..n {
            let start = Instant::now();
            let mut s = TcpStream::connect_timeout(&to.into(), TIMEOUT)
                .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
            out.push(start.elapsed());
            // Waits for the server's close, so that connections never overlap.
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            let _ = s.read(&mut buf);
        }
        out
    })
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32)
}

/// Backend of service `i` of `n`: the server pod for the last (the target), else an address
/// no connection goes to.
fn backend(i: usize, n: usize) -> SocketAddrV4 {
    if i + 1 == n {
        SocketAddrV4::new(SERVER_IP, SERVER_PORT)
    } else {
        let a = u32::from(Ipv4Addr::new(10, 200, 0, 0)) + 1 + i as u32;
        SocketAddrV4::new(Ipv4Addr::from(a), SERVER_PORT)
    }
}

fn service(addr: Ipv4Addr, active: Vec<SocketAddrV4>) -> LbService {
    LbService {
        frontend: Frontend {
            addr,
            port: SERVICE_PORT,
            proto: L4Proto::Tcp,
        },
        active,
        inactive: Vec::new(),
    }
}

/// A name that looks like kube-proxy's (a hash of the service or endpoint, 16 characters).
fn chain(kind: &str, x: u64) -> String {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("KUBE-{kind}-{:016X}", z ^ (z >> 31))
}

/// kube-proxy's per-service rules in KUBE-SERVICES.
fn kube_services_rule(out: &mut String, name: &str, vip: Ipv4Addr, svc_chain: &str) {
    writeln!(
        out,
        "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" \
         -m tcp --dport {SERVICE_PORT} -j {svc_chain}"
    )
    .unwrap();
}

/// kube-proxy's endpoint chain: masquerade hairpin traffic, DNAT to the backend.
fn kube_sep(out: &mut String, name: &str, sep: &str, b: SocketAddrV4) {
    writeln!(
        out,
        "-A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ",
        b.ip()
    )
    .unwrap();
    writeln!(
        out,
        "-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {b}"
    )
    .unwrap();
}

/// The nat table kube-proxy (iptables mode) builds for `n` services of one backend each, the
/// target (service `n - 1`) last in KUBE-SERVICES.
fn kube_proxy_nat(n: usize) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for i in 0..n {
        let (name, svc, sep) = (
            format!("bench/svc-{i}:http"),
            chain("SVC", i as u64),
            chain("SEP", i as u64 | 1 << 40),
        );
        writeln!(chains, ":{svc} - [0:0]\n:{sep} - [0:0]").unwrap();
        kube_services_rule(&mut rules, &name, vip(i), &svc);
        writeln!(
            rules,
            "-A {svc} ! -s 10.60.0.0/16 -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" \
             -m tcp --dport {SERVICE_PORT} -j KUBE-MARK-MASQ",
            vip(i)
        )
        .unwrap();
        writeln!(
            rules,
            "-A {svc} -m comment --comment \"{name} -> {}\" -j {sep}",
            backend(i, n)
        )
        .unwrap();
        kube_sep(&mut rules, &name, &sep, backend(i, n));
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
         :KUBE-MARK-MASQ - [0:0]\n{chains}\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully\n{rules}COMMIT\n"
    )
}

/// What kube-proxy's partial sync writes (`--noflush`) when the big service (frontend `big`,
/// `backends`) changes: KUBE-SERVICES in full (the `n` services and the big one), the big
/// service's chain in full, the endpoint chains in `new_seps`, and deletes `stale_seps`.
fn kube_proxy_big(
    n: usize,
    big: Ipv4Addr,
    backends: &[SocketAddrV4],
    new_seps: &[usize],
    stale_seps: &[(usize, SocketAddrV4)],
) -> String {
    let name = "bench/big:http";
    let svc = chain("SVC", 1 << 41);
    let sep = |b: SocketAddrV4| chain("SEP", u64::from(u32::from(*b.ip())) | 1 << 42);
    let mut chains = format!(":KUBE-SERVICES - [0:0]\n:{svc} - [0:0]\n");
    let mut rules = String::new();
    for i in 0..n {
        let name = format!("bench/svc-{i}:http");
        kube_services_rule(&mut rules, &name, vip(i), &chain("SVC", i as u64));
    }
    kube_services_rule(&mut rules, name, big, &svc);
    writeln!(
        rules,
        "-A {svc} ! -s 10.60.0.0/16 -d {big}/32 -p tcp -m comment --comment \"{name} cluster IP\" \
         -m tcp --dport {SERVICE_PORT} -j KUBE-MARK-MASQ"
    )
    .unwrap();
    let count = backends.len();
    for (k, b) in backends.iter().enumerate() {
        let left = count - k;
        if left > 1 {
            writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {b}\" -m statistic --mode random \
                 --probability {:.10} -j {}",
                1.0 / left as f64,
                sep(*b)
            )
            .unwrap();
        } else {
            writeln!(
                rules,
                "-A {svc} -m comment --comment \"{name} -> {b}\" -j {}",
                sep(*b)
            )
            .unwrap();
        }
    }
    for &k in new_seps {
        let b = backends[k];
        writeln!(chains, ":{} - [0:0]", sep(b)).unwrap();
        kube_sep(&mut rules, name, &sep(b), b);
    }
    for &(_, b) in stale_seps {
        writeln!(chains, ":{} - [0:0]", sep(b)).unwrap();
        writeln!(rules, "-X {}", sep(b)).unwrap();
    }
    format!("*nat\n{chains}{rules}COMMIT\n")
}

fn restore(cmd: &str, netns: &str, rules: &str, noflush: bool) -> Duration {
    let start = Instant::now();
    let mut args = vec![cmd];
    if noflush {
        args.push("--noflush");
    }
    nsenter(netns, &args, Some(rules));
    start.elapsed()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    us(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize])
}

fn triple(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "{:>5.0} {:>5.0} {:>6.0} µs",
        pct(&v, 0.5),
        pct(&v, 0.9),
        pct(&v, 0.99)
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Alternating rounds of `total` connects through both nodes; the eBPF and iptables samples.
fn measure(
    ebpf: &Node,
    kernel: &Node,
    e_to: SocketAddrV4,
    k_to: SocketAddrV4,
    total: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    connects(&ebpf.client, e_to, WARMUP);
    connects(&kernel.client, k_to, WARMUP);
    let (mut e, mut k) = (Vec::new(), Vec::new());
    let rounds = env_usize("PLEXUS_BENCH_ROUNDS", ROUNDS).max(1);
    let per_round = total.div_ceil(rounds);
    for _ in 0..rounds {
        e.extend(connects(&ebpf.client, e_to, per_round));
        k.extend(connects(&kernel.client, k_to, per_round));
    }
    (e, k)
}

fn iptables_version(cmd: &str) -> String {
    let bin = cmd.trim_end_matches("-restore");
    Command::new(bin)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{bin}: not found"))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn main() {
    let sizes = env_sizes();
    let total = env_usize("PLEXUS_BENCH_CONNECTS", 2000);
    let big_n = env_usize("PLEXUS_BENCH_BACKENDS", 10_000);
    let restore_cmd =
        std::env::var("PLEXUS_BENCH_IPTABLES").unwrap_or_else(|_| "iptables-restore".into());

    let fs = BenchBpffs::new();
    let prefix = format!("plxbench-{}", std::process::id());
    let mut nets = Netns::default();
    let (ebpf, dp) = ebpf_node(&mut nets, &prefix, &fs.dir.join("node"));
    let kernel = kernel_node(&mut nets, &prefix);

    println!(
        "lb_connect: connection set-up latency to a ClusterIP service, {total} sequential \
         connects per figure, {} cores, kernel {}, {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        kernel_release(),
        iptables_version(&restore_cmd)
    );
    println!(
        "client and backend pods on one node; the target service installed last (the last \
         rule of KUBE-SERVICES)\n"
    );
    println!("services installed          eBPF p50 p90 p99            iptables DNAT p50 p90 p99");
    let server = SocketAddrV4::new(SERVER_IP, SERVER_PORT);
    let (e, k) = measure(&ebpf, &kernel, server, server, total);
    println!("  0 (direct to the pod)   {}     {}", triple(e), triple(k));
    if sizes.is_empty() {
        drop(ebpf);
        drop(kernel);
        drop(dp);
        drop(nets);
        drop(fs);
        return;
    }

    let mut installs = Vec::new();
    let mut installed: Vec<Frontend> = Vec::new();
    for &n in &sizes {
        for f in installed.drain(..) {
            dp.remove_service(f).unwrap();
        }
        let services: Vec<_> = (0..n)
            .map(|i| service(vip(i), vec![backend(i, n)]))
            .collect();
        let start = Instant::now();
        for s in &services {
            dp.upsert_service(s).unwrap();
        }
        let e_install = start.elapsed();
        installed.extend(services.iter().map(|s| s.frontend));
        let k_install = restore(&restore_cmd, &kernel.ns, &kube_proxy_nat(n), false);
        installs.push((n, e_install, k_install));
        thread::sleep(SETTLE);

        let target = SocketAddrV4::new(vip(n - 1), SERVICE_PORT);
        let (e, k) = measure(&ebpf, &kernel, target, target, total);
        println!("  {n:<22}  {}     {}", triple(e), triple(k));
    }

    println!("\ninstalling the services              eBPF upserts      one {restore_cmd}");
    for (n, e, k) in installs {
        println!("  {n:<34} {:>12}      {:>12}", ms(e), ms(k));
    }

    // One service with many backends, beside the services installed last.
    let n = sizes.last().copied().unwrap_or(0);
    let big = Ipv4Addr::new(10, 112, 0, 1);
    let mut backends: Vec<SocketAddrV4> = (0..big_n)
        .map(|i| {
            let a = u32::from(Ipv4Addr::new(10, 208, 0, 0)) + 1 + i as u32;
            SocketAddrV4::new(Ipv4Addr::from(a), SERVER_PORT)
        })
        .collect();
    let start = Instant::now();
    dp.upsert_service(&service(big, backends.clone())).unwrap();
    let e_program = start.elapsed();
    let all: Vec<usize> = (0..big_n).collect();
    let k_program = restore(
        &restore_cmd,
        &kernel.ns,
        &kube_proxy_big(n, big, &backends, &all, &[]),
        true,
    );
    let (mut e_re, mut k_re) = (Vec::new(), Vec::new());
    for round in 0..REPROGRAMS as u8 {
        let k = big_n / 2;
        let old = backends[k];
        backends[k] = SocketAddrV4::new(Ipv4Addr::new(10, 224, 0, 1 + round), SERVER_PORT);
        let start = Instant::now();
        dp.upsert_service(&service(big, backends.clone())).unwrap();
        e_re.push(start.elapsed());
        k_re.push(restore(
            &restore_cmd,
            &kernel.ns,
            &kube_proxy_big(n, big, &backends, &[k], &[(k, old)]),
            true,
        ));
    }
    e_re.sort();
    k_re.sort();
    println!(
        "\none service with {big_n} backends ({n} others installed)   eBPF upsert   \
         {restore_cmd} --noflush"
    );
    println!(
        "  program                                  {:>12}      {:>12}",
        ms(e_program),
        ms(k_program)
    );
    println!(
        "  re-program, one backend changed (median of {REPROGRAMS}) {:>7}      {:>12}",
        ms(e_re[e_re.len() / 2]),
        ms(k_re[k_re.len() / 2])
    );

    drop(ebpf);
    drop(kernel);
    drop(dp);
    drop(nets);
    drop(fs);
}
