//! Memory of the running agent process per remote ipcache entry, and after the remote is drained.
//!
//! Runs the real `plexus-agent` binary (its own process, `datapath: fake`: the fake's ipcache
//! stands in for the BPF map and holds one `Prefix -> IpcacheValue` per entry, which the eBPF
//! datapath keeps in kernel memory instead) against two real etcd processes on loopback: its
//! cluster's (c1) and a Cilium-format remote (c2: cluster config, heartbeat, canaries,
//! `PLEXUS_BENCH_NODES` nodes with `PLEXUS_BENCH_PODS` endpoints each, every endpoint with a
//! namespace and pod name). The resident set is read from `/proc/<pid>/status` (`VmRSS`):
//! - before: the agent settled with no remote configured;
//! - held: the remote's configuration file written and every entry in the datapath;
//! - drained: the file removed and every entry of the remote gone from the datapath;
//! - the same again for a second cycle (what does not come back after a drain accumulates).
//!
//! Run: `cargo bench -p plexus-agent --bench memory`. Prints the figures of BENCHMARKS.md.
//! To see where the memory goes, run the agent under a heap profiler:
//! `PLEXUS_BENCH_AGENT_WRAPPER="heaptrack -o /tmp/agent"` (the figures then include the
//! profiler's own).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_agent_api::{Client, Endpoint};
use plexus_clustermesh::publish::{PublisherConfig, SelfPublisher};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, LeaseManager, Op, Txn};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::keys::{self, StateKind};
use plexus_test_support::EtcdProcess;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The agent process (`pid`; under a wrapper, `child` is the wrapper); killed when dropped.
struct Agent {
    child: Child,
    pid: u32,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.pid == self.child.id() {
            let _ = self.child.kill();
        } else {
            // The wrapper ends with the agent.
            let _ = Command::new("kill").arg(self.pid.to_string()).status();
        }
        let _ = self.child.wait();
    }
}

/// The `plexus-agent` process among `pid` and its descendants.
fn agent_pid(pid: u32) -> Option<u32> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "plexus-agent" {
        return Some(pid);
    }
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find_map(agent_pid)
}

impl Agent {
    fn start(config: &Path, log: std::fs::File) -> Self {
        let bin = env!("CARGO_BIN_EXE_plexus-agent");
        let wrapper = std::env::var("PLEXUS_BENCH_AGENT_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(first) => {
                let mut cmd = Command::new(first);
                cmd.args(words).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start plexus-agent");
        let start = Instant::now();
        let pid = loop {
            if let Some(pid) = agent_pid(child.id()) {
                break pid;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no plexus-agent process"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, pid }
    }

    fn rss_bytes(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("the agent's /proc status");
        let kb: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

fn node_json(n: usize) -> Vec<u8> {
    format!(
        r#"{{"Name":"node-{n}","Cluster":"c2","IPAddresses":[{{"Type":"InternalIP","IP":"192.168.{}.{}"}}],"IPv4AllocCIDR":{{"IP":"10.{}.{}.0","Mask":"////AA=="}},"ClusterID":2}}"#,
        2 + n / 250,
        1 + n % 250,
        20 + n / 256,
        n % 256
    )
    .into_bytes()
}

fn ip(n: usize, p: usize) -> String {
    format!("10.{}.{}.{}", 20 + n / 256, n % 256, 1 + p)
}

fn entry_json(n: usize, p: usize) -> Vec<u8> {
    format!(
        r#"{{"IP":"{}","Mask":null,"HostIP":"192.168.{}.{}","ID":{},"Key":0,"Metadata":"","K8sNamespace":"team-{}","K8sPodName":"web-{n}-{p}"}}"#,
        ip(n, p),
        2 + n / 250,
        1 + n % 250,
        131_072 + (n * 7 + p) % 500,
        p % 20
    )
    .into_bytes()
}

async fn put_all(b: &Arc<dyn KvBackend>, kvs: Vec<(String, Vec<u8>)>) {
    for chunk in kvs.chunks(100) {
        let ops = chunk
            .iter()
            .map(|(key, value)| Op::Put {
                key: key.clone(),
                value: value.clone(),
                lease: None,
            })
            .collect();
        assert!(
            b.txn(Txn {
                compares: vec![],
                ops
            })
            .await
            .expect("txn")
        );
    }
}

/// `plexus_bpf_map_entries{map="PLEXUS_IPCACHE"}`: the entries in the (fake) datapath.
async fn map_entries(client: &Client) -> Option<usize> {
    let (code, text) = client.get_text("/metrics").await.ok()?;
    if code != 200 {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("plexus_bpf_map_entries{map=\"PLEXUS_IPCACHE\"} "))?
        .trim()
        .parse()
        .ok()
}

/// Waits (3 minutes at most) until the datapath holds `want` ipcache entries.
async fn until_entries(client: &Client, want: usize, what: &str) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(180) {
        last = map_entries(client).await;
        if last == Some(want) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: the datapath holds {last:?} ipcache entries, not {want}");
}

/// Lets the agent's background work (flow snapshot, metrics) settle, then reads its RSS.
async fn settled_rss(agent: &Agent) -> usize {
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.rss_bytes()
}

fn agent_config(dir: &Path, etcd: &str, mesh: &Path) -> PathBuf {
    let yaml = format!(
        "cluster-name: c1\ncluster-id: 1\nnode-name: node-1\nnode-ip: 192.168.1.1\n\
         pod-cidr: 10.1.0.0/16\nstate-dir: {}\netcd-endpoints: {etcd}\n\
         clustermesh-config: {}\napi-socket: {}\ndatapath: fake\n\
         bpf-ipcache-map-max: 1000000\n",
        dir.join("state").display(),
        mesh.display(),
        dir.join("agent.sock").display(),
    );
    let file = dir.join("agent.yaml");
    std::fs::write(&file, yaml).expect("agent.yaml");
    file
}

fn mib(b: usize) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn main() {
    plexus_kvstore::install_crypto_provider();
    let nodes = env_usize("PLEXUS_BENCH_NODES", 100);
    let pods = env_usize("PLEXUS_BENCH_PODS", 200).min(250);
    let entries = nodes * pods;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        eprintln!("starting etcd for c1 and c2 ...");
        let etcd1 = EtcdProcess::start().expect("etcd c1");
        let etcd2 = EtcdProcess::start().expect("etcd c2");
        let b2: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(EtcdConfig::new(vec![etcd2.endpoint()]))
                .await
                .expect("connect c2"),
        );
        let leases = LeaseManager::start(b2.clone(), Duration::from_secs(30))
            .await
            .expect("lease");
        let c2 = ClusterInfo::new("c2", 2, MaxConnectedClusters::Max255).expect("c2");
        let _publisher = SelfPublisher::start(b2.clone(), &leases, PublisherConfig::new(c2))
            .await
            .expect("publish c2");
        eprintln!("publishing {nodes} nodes and {entries} ipcache entries in c2 ...");
        let mut kvs: Vec<(String, Vec<u8>)> = (0..nodes)
            .map(|n| (keys::node_key("c2", &format!("node-{n}")), node_json(n)))
            .collect();
        for n in 0..nodes {
            for p in 0..pods {
                kvs.push((keys::ip_key(&ip(n, p)), entry_json(n, p)));
            }
        }
        let json_bytes: usize = kvs.iter().map(|(k, v)| k.len() + v.len()).sum();
        put_all(&b2, kvs).await;
        for kind in StateKind::ALL {
            b2.put(&kind.canary("c2"), b"2026-12-07T12:00:00Z".to_vec(), None)
                .await
                .expect("canary");
        }

        let dir = tempfile::tempdir().expect("dir");
        let mesh = dir.path().join("clustermesh");
        std::fs::create_dir_all(&mesh).expect("clustermesh dir");
        let config = agent_config(dir.path(), &etcd1.endpoint(), &mesh);
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
        let agent = Agent::start(&config, log);
        let client = Client::new(Endpoint::Unix(dir.path().join("agent.sock")));
        let start = Instant::now();
        let base = loop {
            if let Some(n) = map_entries(&client).await
                && n > 0
            {
                break n;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the agent did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Each remote node adds its address and its pod CIDR.
        let full = base + entries + 2 * nodes;
        let before = settled_rss(&agent).await;
        let mut cycles = Vec::new();
        for cycle in 1..=2 {
            eprintln!("cycle {cycle}: connecting c2 ...");
            std::fs::write(
                mesh.join("c2"),
                format!("endpoints:\n- {}\n", etcd2.endpoint()),
            )
            .expect("c2's config");
            let sync = until_entries(&client, full, "c2 synced").await;
            let held = settled_rss(&agent).await;
            eprintln!("cycle {cycle}: removing c2 ...");
            std::fs::remove_file(mesh.join("c2")).expect("remove c2's config");
            until_entries(&client, base, "c2 drained").await;
            let drained = settled_rss(&agent).await;
            cycles.push((sync, held, drained));
        }

        println!("agent process memory, remote c2 with {nodes} nodes x {pods} endpoints = {entries} ipcache entries (datapath: fake)");
        println!("  {:<52} {:>10}", "resident set before (no remote)", mib(before));
        for (i, (sync, held, drained)) in cycles.iter().enumerate() {
            let cycle = i + 1;
            let per_entry = held.saturating_sub(before) as f64 / entries as f64;
            let back = (*drained as f64 - before as f64) / before as f64 * 100.0;
            println!("  cycle {cycle}: {:<43} {:>7.1} s", "connect -> every entry in the datapath", sync.as_secs_f64());
            println!("  cycle {cycle}: {:<43} {:>10}", "resident set with c2's entries", mib(*held));
            println!("  cycle {cycle}: {:<43} {:>8.0} B", "growth per remote ipcache entry", per_entry);
            println!("  cycle {cycle}: {:<43} {:>10} ({back:+.0}% of before)", "resident set after c2 is drained", mib(*drained));
        }
        println!("  {:<52} {:>8.0} B", "key + JSON value in etcd (baseline)", json_bytes as f64 / (entries + nodes) as f64);
        drop(agent);
    });
}
