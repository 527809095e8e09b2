//! Programming the load balancer: how long `upsert_service` takes to write one frontend with
//! 10,000 backends into the eBPF maps (batched writes, one batch per ordering step), to
//! re-program it when one backend changes, and to remove it; beside the same 20,001 entries
//! written one `BPF_MAP_UPDATE_ELEM` each (how the datapath wrote them before), in the same
//! run. The runs interleave the two and the figures are medians, for a machine shared with
//! builds.
//!
//! Each figure is given as wall-clock time and as the CPU time of the calling thread (user and
//! kernel, `CLOCK_THREAD_CPUTIME_ID`): on a loaded machine the wall clock also counts the time
//! other processes held the CPU, the CPU time does not.
//!
//! The datapath is the real one (maps and programs loaded, nothing attached) in a private
//! bpffs. Run as root: `cargo bench -p plexus-datapath --bench lb_program`
//! (PLEXUS_BENCH_BACKENDS, default 10,000; PLEXUS_BENCH_RUNS, default 15).
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use plexus_datapath::{
    Datapath, EbpfDatapath, Frontend, L4Proto, LbService, NodeConfig, RoutingMode,
    object::{MAP_LB_BACKENDS, MAP_LB_SERVICES},
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn frontend(addr: Ipv4Addr) -> Frontend {
    Frontend {
        addr,
        port: 80,
        proto: L4Proto::Tcp,
    }
}

fn backend(i: usize) -> SocketAddrV4 {
    let a = u32::from(Ipv4Addr::new(10, 208, 0, 0)) + 1 + i as u32;
    SocketAddrV4::new(Ipv4Addr::from(a), 8080)
}

/// `struct lb_service_key` and `struct lb_service_value` / `struct lb_backend` (common.h).
fn slot_key(fe: Frontend, slot: u16) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[0..4].copy_from_slice(&fe.addr.octets());
    k[4..6].copy_from_slice(&fe.port.to_be_bytes());
    k[6] = 6;
    k[8..10].copy_from_slice(&slot.to_ne_bytes());
    k
}

fn slot_value(backend_id: u32, service_id: u32, count: u16) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&backend_id.to_ne_bytes());
    v[4..8].copy_from_slice(&service_id.to_ne_bytes());
    v[8..10].copy_from_slice(&count.to_ne_bytes());
    v
}

fn backend_value(b: SocketAddrV4, service_id: u32) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&b.ip().octets());
    v[4..6].copy_from_slice(&b.port().to_be_bytes());
    v[6] = 6;
    v[8..12].copy_from_slice(&service_id.to_ne_bytes());
    v
}

/// The writes of programming `n` backends, one syscall per entry, in the same order (backends,
/// slots, master), then their removal; ids far above the datapath's own.
fn per_entry(
    services: &mut HashMap<MapData, [u8; 12], [u8; 12]>,
    backends: &mut HashMap<MapData, u32, [u8; 12]>,
    n: usize,
) -> ((Duration, Duration), (Duration, Duration)) {
    let fe = frontend(Ipv4Addr::new(10, 113, 0, 1));
    let (sid, base) = (3_000_000u32, 3_000_000u32);
    let (start, cpu) = (Instant::now(), thread_cpu());
    for i in 0..n {
        backends
            .insert(base + i as u32, backend_value(backend(i), sid), 0)
            .unwrap();
    }
    for i in 0..n {
        services
            .insert(
                slot_key(fe, i as u16 + 1),
                slot_value(base + i as u32, sid, 0),
                0,
            )
            .unwrap();
    }
    services
        .insert(slot_key(fe, 0), slot_value(0, sid, n as u16), 0)
        .unwrap();
    let program = (start.elapsed(), thread_cpu() - cpu);
    let (start, cpu) = (Instant::now(), thread_cpu());
    for s in 0..=n {
        services.remove(&slot_key(fe, s as u16)).unwrap();
    }
    for i in 0..n {
        backends.remove(&(base + i as u32)).unwrap();
    }
    (program, (start.elapsed(), thread_cpu() - cpu))
}

/// Wall-clock and thread CPU time of one measured call.
#[derive(Default)]
struct Times {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::from(t)
}

impl Times {
    fn measure<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let out = f();
        self.cpu.push(thread_cpu() - cpu);
        self.wall.push(wall.elapsed());
        out
    }

    fn push(&mut self, (wall, cpu): (Duration, Duration)) {
        self.wall.push(wall);
        self.cpu.push(cpu);
    }

    fn print(mut self, what: &str) {
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            format!("{:.2} ms", v[v.len() / 2].as_secs_f64() * 1e3)
        };
        println!(
            "  {what:<54} {:>10} {:>10}",
            median(&mut self.wall),
            median(&mut self.cpu)
        );
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

fn main() {
    let n = env_usize("PLEXUS_BENCH_BACKENDS", 10_000).min(65_535);
    let runs = env_usize("PLEXUS_BENCH_RUNS", 15).max(1);
    let fs = common::Bpffs::new();
    let pin_dir = fs.path().join("node");
    let dp = EbpfDatapath::load_unattached(
        NodeConfig {
            node_ip: Ipv4Addr::new(192, 168, 79, 1),
            routing: RoutingMode::Tunnel,
            gateway_ip: Ipv4Addr::new(10, 62, 1, 1),
            cluster_id: 1,
            tunnel_ifname: "unused".into(),
            pin_dir: pin_dir.clone(),
            encryption: Default::default(),
        },
        79,
    )
    .unwrap();
    let data = |name: &str| MapData::from_pin(pin_dir.join(name)).unwrap();
    let mut services: HashMap<MapData, [u8; 12], [u8; 12]> =
        Map::HashMap(data(MAP_LB_SERVICES)).try_into().unwrap();
    let mut backends: HashMap<MapData, u32, [u8; 12]> =
        Map::HashMap(data(MAP_LB_BACKENDS)).try_into().unwrap();

    let fe = frontend(Ipv4Addr::new(10, 112, 0, 1));
    let all: Vec<SocketAddrV4> = (0..n).map(backend).collect();
    let svc = LbService {
        frontend: fe,
        active: all.clone(),
        inactive: Vec::new(),
    };
    let (mut program, mut reprogram, mut remove) =
        (Times::default(), Times::default(), Times::default());
    let (mut base_program, mut base_remove) = (Times::default(), Times::default());
    for run in 0..runs {
        program.measure(|| dp.upsert_service(&svc).unwrap());
        let mut changed = svc.clone();
        changed.active[n / 2] = SocketAddrV4::new(Ipv4Addr::new(10, 224, 0, 1 + run as u8), 8080);
        reprogram.measure(|| dp.upsert_service(&changed).unwrap());
        remove.measure(|| dp.remove_service(fe).unwrap());

        let (p, r) = per_entry(&mut services, &mut backends, n);
        base_program.push(p);
        base_remove.push(r);
    }
    assert!(dp.services().unwrap().is_empty());

    println!(
        "programming one frontend with {n} backends into the eBPF maps, median of {runs} \
         (interleaved; load average {})",
        load_average()
    );
    println!("  {:<54} {:>10} {:>10}", "", "wall", "thread CPU");
    program.print("program (upsert_service, batched)");
    reprogram.print("re-program, one backend changed");
    remove.print("remove (remove_service)");
    base_program.print(&format!(
        "the same {} entries, one syscall each (before)",
        2 * n + 1
    ));
    base_remove.print("their removal, one syscall each");
}
