//! ClusterMesh benchmarks on real etcd processes on loopback. Prints the figures of BENCHMARKS.md.
//!
//! - propagation latency, put in c2's etcd -> event in c1's merged view, p50/p99, directly and
//!   through c1's KVStoreMesh, beside a bare etcd watch on the same etcd in the same run;
//! - full resync of 100,000 ipcache entries (connect, canaries, list, validate, deliver), beside
//!   a bare paged listing plus JSON decoding of the same entries;
//! - resident memory the consumer grows by per remote ipcache entry, beside the entry's JSON size;
//! - ingest of one remote global service with 10,000 backends: put in c2's etcd -> the
//!   ClusterService event in c1's merged view, then the backend selection over it, beside a bare
//!   etcd put -> watch -> JSON decode of the same value.
//!
//! Run: `cargo bench -p plexus-clustermesh --bench clustermesh` (sizes: PLEXUS_BENCH_UPDATES,
//! PLEXUS_BENCH_RESYNC).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use plexus_clustermesh::kvstoremesh::KvStoreMesh;
use plexus_clustermesh::mesh::ClusterMesh;
use plexus_clustermesh::publish::{PublisherConfig, SelfPublisher};
use plexus_clustermesh::remote::Timing;
use plexus_clustermesh::remote_cluster::{DriverTiming, MeshEvent, RemoteEvent};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, LeaseManager, Op, Txn};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::keys::{self, StateKind};
use plexus_model::service::{ClusterService, PortConfig};
use plexus_test_support::EtcdProcess;
use tokio::sync::mpsc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn pct(sorted: &[Duration], p: f64) -> String {
    let d = sorted[((sorted.len() as f64 - 1.0) * p).round() as usize];
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", 20 + i / 64_000, (i / 250) % 256, i % 250 + 1)
}

fn entry(i: usize, version: usize) -> Vec<u8> {
    format!(
        r#"{{"IP":"{}","Mask":null,"HostIP":"192.168.0.2","ID":{},"Key":0,"Metadata":"v{version}","K8sNamespace":"default","K8sPodName":"pod-{i}"}}"#,
        ip(i),
        131072 + i % 1000
    )
    .into_bytes()
}

fn timing() -> DriverTiming {
    let mut timing = DriverTiming {
        protocol: Timing {
            heartbeat_interval: Duration::from_secs(60),
            ..Timing::default()
        },
        canary_poll: Duration::from_millis(50),
        ..DriverTiming::default()
    };
    // 10,000 backends are 530 KiB of JSON, above the default bound of one value (256 KiB),
    // as an agent raises it with its clustermesh limits option.
    timing.limits.max_value_size = 4 << 20;
    timing
}

async fn connect(etcd: &EtcdProcess) -> Arc<dyn KvBackend> {
    Arc::new(
        EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .expect("connect"),
    )
}

/// Publishes c2's config, heartbeat and canaries (entries are written by the caller).
async fn publish_c2(b: &Arc<dyn KvBackend>) -> (LeaseManager, SelfPublisher) {
    let leases = LeaseManager::start(b.clone(), Duration::from_secs(30))
        .await
        .expect("lease");
    let c2 = ClusterInfo::new("c2", 2, MaxConnectedClusters::Max255).expect("c2");
    let publisher = SelfPublisher::start(b.clone(), &leases, PublisherConfig::new(c2))
        .await
        .expect("publish");
    for kind in StateKind::ALL {
        b.put(&kind.canary("c2"), b"2026-11-22T12:00:00Z".to_vec(), None)
            .await
            .expect("canary");
    }
    (leases, publisher)
}

async fn wait_synced(rx: &mut mpsc::Receiver<MeshEvent>) -> usize {
    let mut entries = 0;
    loop {
        match rx.recv().await.expect("events").event {
            RemoteEvent::IpUpsert(_) => entries += 1,
            RemoteEvent::Synced => return entries,
            _ => {}
        }
    }
}

/// Sequential updates of one key each; the latency of each from put to merged-view event.
async fn propagation(
    writer: &Arc<dyn KvBackend>,
    rx: &mut mpsc::Receiver<MeshEvent>,
    n: usize,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for u in 0..n {
        let i = u % 1000;
        let start = Instant::now();
        writer
            .put(&keys::ip_key(&ip(i)), entry(i, u + 1), None)
            .await
            .expect("put");
        loop {
            if let RemoteEvent::IpUpsert(p) = rx.recv().await.expect("events").event
                && p.metadata == format!("v{}", u + 1)
            {
                break;
            }
        }
        out.push(start.elapsed());
    }
    out.sort();
    out
}

async fn bare_watch(writer: &Arc<dyn KvBackend>, n: usize) -> Vec<Duration> {
    let mut stream = writer.watch("bench/bare/", 0).await.expect("watch");
    let mut out = Vec::with_capacity(n);
    for u in 0..n {
        let start = Instant::now();
        writer
            .put(
                &format!("bench/bare/{}", u % 1000),
                entry(u % 1000, u),
                None,
            )
            .await
            .expect("put");
        stream.next().await.expect("open").expect("event");
        out.push(start.elapsed());
    }
    out.sort();
    out
}

/// c2's rebel-base with `n` backends; `version` changes the target port so every put differs.
fn big_service(n: usize, version: usize) -> Vec<u8> {
    let ports = |port| {
        std::collections::BTreeMap::from([(
            "http".to_string(),
            PortConfig {
                protocol: "TCP".into(),
                port,
            },
        )])
    };
    let svc = ClusterService {
        cluster: "c2".into(),
        namespace: "default".into(),
        name: "rebel-base".into(),
        frontends: std::collections::BTreeMap::from([("10.21.0.1".to_string(), ports(80))]),
        backends: (0..n)
            .map(|i| {
                (
                    format!("10.20.{}.{}", i / 250, 1 + i % 250),
                    ports(8000 + version as u16),
                )
            })
            .collect(),
        hostnames: Default::default(),
        zones: Default::default(),
        labels: Default::default(),
        selector: Default::default(),
        include_external: false,
        shared: true,
        cluster_id: 2,
    };
    serde_json::to_vec(&svc).expect("json")
}

/// One put of a service with `n` backends -> its event; then `select` over it. Median of runs.
async fn service_ingest(
    writer: &Arc<dyn KvBackend>,
    rx: &mut mpsc::Receiver<MeshEvent>,
    n: usize,
    runs: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    use plexus_loadbalancer::select::select;
    use plexus_loadbalancer::service::{Affinity, GlobalConfig};
    let key = keys::service_key("c2", "default", "rebel-base");
    let (mut ingest, mut selection) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let value = big_service(n, run + 1);
        let start = Instant::now();
        writer.put(&key, value, None).await.expect("put");
        let svc = loop {
            if let RemoteEvent::ServiceUpsert(s) = rx.recv().await.expect("events").event
                && s.backends
                    .values()
                    .next()
                    .is_some_and(|p| p["http"].port == 8001 + run as u16)
            {
                break s;
            }
        };
        ingest.push(start.elapsed());
        assert_eq!(svc.backends.len(), n);
        let start = Instant::now();
        let config = GlobalConfig {
            global: true,
            shared: true,
            affinity: Affinity::None,
        };
        let no_local = std::collections::BTreeMap::new();
        let s = select("c1", config, &no_local, [&*svc], &|_| true);
        selection.push(start.elapsed());
        assert_eq!(s.active().count(), n);
    }
    ingest.sort();
    selection.sort();
    (ingest, selection)
}

async fn bare_service(writer: &Arc<dyn KvBackend>, n: usize, runs: usize) -> Vec<Duration> {
    let mut stream = writer.watch("bench/svc/", 0).await.expect("watch");
    let mut out = Vec::new();
    for run in 0..runs {
        let start = Instant::now();
        writer
            .put("bench/svc/rebel-base", big_service(n, run + 1), None)
            .await
            .expect("put");
        let events = stream.next().await.expect("open").expect("event");
        let svc: ClusterService = serde_json::from_slice(&events[0].kv.value).expect("decode");
        assert_eq!(svc.backends.len(), n);
        out.push(start.elapsed());
    }
    out.sort();
    out
}

fn main() {
    plexus_kvstore::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let updates = env_usize("PLEXUS_BENCH_UPDATES", 10_000);
        let resync = env_usize("PLEXUS_BENCH_RESYNC", 100_000);
        let c1 = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).expect("c1");
        eprintln!("starting etcd for c1 and c2 ...");
        let etcd2 = EtcdProcess::start().expect("etcd c2");
        let etcd1 = EtcdProcess::start().expect("etcd c1");
        let b2 = connect(&etcd2).await;
        let b1 = connect(&etcd1).await;
        let (_l2, _p2) = publish_c2(&b2).await;
        for i in 0..1000 {
            b2.put(&keys::ip_key(&ip(i)), entry(i, 0), None).await.expect("seed");
        }
        println!("clustermesh benchmarks: etcd 3.4 on loopback, 2 cores");
        println!();

        // Direct: c1 follows c2's etcd.
        let direct_dir = tempfile::tempdir().expect("dir");
        std::fs::write(direct_dir.path().join("c2"), format!("endpoints:\n- {}\n", etcd2.endpoint())).expect("cfg");
        let (tx, mut rx) = mpsc::channel(200_000);
        let direct = ClusterMesh::spawn(direct_dir.path(), c1.clone(), tx, timing(), Duration::from_millis(200));
        wait_synced(&mut rx).await;
        eprintln!("propagation, {updates} updates, direct ...");
        let lat_direct = propagation(&b2, &mut rx, updates).await;
        drop(direct);

        // Through KVStoreMesh: c1's reflector mirrors c2 into c1's etcd; the agent reads c1's etcd.
        let l1 = LeaseManager::start(b1.clone(), Duration::from_secs(30)).await.expect("lease");
        let _p1 = SelfPublisher::start(b1.clone(), &l1, PublisherConfig::new(c1.clone())).await.expect("publish c1");
        let km_dir = tempfile::tempdir().expect("dir");
        std::fs::write(km_dir.path().join("c2"), format!("endpoints:\n- {}\n", etcd2.endpoint())).expect("cfg");
        let _km = KvStoreMesh::spawn(km_dir.path(), c1.clone(), b1.clone(), &l1, timing(), Duration::from_millis(200));
        let agent_dir = tempfile::tempdir().expect("dir");
        std::fs::write(agent_dir.path().join("c2"), format!("endpoints:\n- {}\n", etcd1.endpoint())).expect("cfg");
        let (tx, mut rx) = mpsc::channel(200_000);
        let agent = ClusterMesh::spawn(agent_dir.path(), c1.clone(), tx, timing(), Duration::from_millis(200));
        wait_synced(&mut rx).await;
        eprintln!("propagation, {updates} updates, through KVStoreMesh ...");
        let lat_km = propagation(&b2, &mut rx, updates).await;
        drop(agent);
        drop(_km);

        eprintln!("bare watch baseline ...");
        let lat_bare = bare_watch(&b2, updates).await;

        println!("propagation latency, put in c2's etcd -> event in c1's merged view ({updates} sequential updates)");
        println!("  {:<40} {:>10} {:>10}", "", "p50", "p99");
        println!("  {:<40} {:>10} {:>10}", "direct (agent -> c2's etcd)", pct(&lat_direct, 0.5), pct(&lat_direct, 0.99));
        println!("  {:<40} {:>10} {:>10}", "through KVStoreMesh (c2 -> c1's etcd)", pct(&lat_km, 0.5), pct(&lat_km, 0.99));
        println!("  {:<40} {:>10} {:>10}", "bare etcd put -> watch (baseline)", pct(&lat_bare, 0.5), pct(&lat_bare, 0.99));
        println!();

        // One remote global service with many backends.
        let backends = env_usize("PLEXUS_BENCH_SERVICE_BACKENDS", 10_000);
        let runs = 9;
        let svc_dir = tempfile::tempdir().expect("dir");
        std::fs::write(svc_dir.path().join("c2"), format!("endpoints:\n- {}\n", etcd2.endpoint())).expect("cfg");
        let (tx, mut rx) = mpsc::channel(200_000);
        let svc_mesh = ClusterMesh::spawn(svc_dir.path(), c1.clone(), tx, timing(), Duration::from_millis(200));
        wait_synced(&mut rx).await;
        eprintln!("one global service with {backends} backends, {runs} runs ...");
        let (ingest, selection) = service_ingest(&b2, &mut rx, backends, runs).await;
        drop(svc_mesh);
        let bare_svc = bare_service(&b2, backends, runs).await;
        let json_len = big_service(backends, 1).len();
        println!("ingest of one remote global service with {backends} backends ({} KiB of JSON), median of {runs}", json_len / 1024);
        println!("  {:<48} {:>9}", "put in c2 -> ClusterService event in c1", pct(&ingest, 0.5));
        println!("  {:<48} {:>9}", "backend selection (select) over it", pct(&selection, 0.5));
        println!("  {:<48} {:>9}", "bare put -> watch -> JSON decode (baseline)", pct(&bare_svc, 0.5));
        println!();

        // Full resync of `resync` entries, and memory per entry.
        eprintln!("publishing {resync} ipcache entries in c2 ...");
        b2.delete_prefix(&StateKind::Ip.state_prefix("c2")).await.expect("clear");
        for chunk in (0..resync).collect::<Vec<_>>().chunks(100) {
            let ops = chunk.iter().map(|i| Op::Put { key: keys::ip_key(&ip(*i)), value: entry(*i, 0), lease: None }).collect();
            assert!(b2.txn(Txn { compares: vec![], ops }).await.expect("txn"));
        }
        let start = Instant::now();
        let listed = b2.list_prefix(&StateKind::Ip.state_prefix("c2")).await.expect("list");
        let decoded = listed
            .kvs
            .iter()
            .filter(|kv| serde_json::from_slice::<IpIdentityPair>(&kv.value).is_ok())
            .count();
        let bare = start.elapsed();
        assert_eq!(decoded, resync);
        let json_bytes: usize = listed.kvs.iter().map(|kv| kv.value.len() + kv.key.len()).sum();
        drop(listed);

        let rss_before = rss_bytes();
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("c2"), format!("endpoints:\n- {}\n", etcd2.endpoint())).expect("cfg");
        let (tx, mut rx) = mpsc::channel(resync + 1000);
        let start = Instant::now();
        let mesh = ClusterMesh::spawn(dir.path(), c1.clone(), tx, timing(), Duration::from_millis(200));
        let got = wait_synced(&mut rx).await;
        let full = start.elapsed();
        assert_eq!(got, resync);
        // The events were consumed (dropped); what stays is the driver's and the store's state.
        let rss_after = rss_bytes();
        let per_entry = rss_after.saturating_sub(rss_before) as f64 / resync as f64;
        assert_eq!(mesh.status().remotes["c2"].endpoints, resync);

        println!("full resync of {resync} ipcache entries");
        println!("  {:<48} {:>9.0} ms", "connect + canaries + list + validate + deliver", full.as_secs_f64() * 1e3);
        println!("  {:<48} {:>9.0} ms", "bare paged listing + JSON decode (baseline)", bare.as_secs_f64() * 1e3);
        println!();
        println!("memory held by the consumer per remote ipcache entry");
        println!("  {:<48} {:>9.0} B", "resident set growth / entries", per_entry);
        println!("  {:<48} {:>9.0} B", "key + JSON value in etcd (baseline)", json_bytes as f64 / resync as f64);
    });
}
