//! The scale bench: N simulated remote clusters, each in its own real etcd, cached by the real
//! KVStoreMesh reflector into the local cluster's etcd and consumed by one real `plexus-agent`
//! with the eBPF datapath (see `plexus_lab::scale`). Prints, beside the bare list-and-decode
//! of the same data in the same run:
//! - the time to full sync (remote config files written -> every remote ready in the agent and
//!   every endpoint in its pinned ipcache map), beside listing and decoding every remote;
//! - the agent's resident memory before and after, and bytes per remote entry, beside the
//!   entries' size on the wire;
//! - map fill (the pinned ipcache map's entries against its size);
//! - under churn (a share of the endpoints changing identity per second), p50/p99 from the put
//!   in a remote's etcd to the new entry in the agent's pinned ipcache map, beside a bare watch
//!   of the same etcd for the same puts.
//!
//! Run (root): `cargo bench -p plexus-lab --bench scale -- --clusters 250 --nodes 100
//! --endpoints 1000 --identities 100 --churn-seconds 60` (those are the defaults; also
//! `--services`, `--backends`, `--churn-percent`). Needs the workspace's binaries
//! (`cargo build --bins`), etcd, and a kernel with TCX (>= 6.6).

#![allow(clippy::unwrap_used)] // bench code: a failed unwrap is a failed run

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use plexus_clustermesh::kvstoremesh::KvStoreMesh;
use plexus_clustermesh::remote_cluster::DriverTiming;
use plexus_datapath::ebpf::pinned::PinnedIpcache;
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, LeaseManager, RawEventKind};
use plexus_lab::scale::{self, ScaleAgent, ScaleSpec, SimCluster};
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::keys::StateKind;
use plexus_test_support::{EtcdFleet, workspace_bin};

struct Args {
    spec: ScaleSpec,
    churn_seconds: u64,
    churn_percent: f64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        spec: ScaleSpec::DEFAULT,
        churn_seconds: 60,
        churn_percent: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value =
            || -> Result<String> { it.next().with_context(|| format!("{flag} needs a value")) };
        match flag.as_str() {
            "--clusters" => a.spec.clusters = value()?.parse()?,
            "--nodes" => a.spec.nodes = value()?.parse()?,
            "--endpoints" => a.spec.endpoints = value()?.parse()?,
            "--identities" => a.spec.identities = value()?.parse()?,
            "--services" => a.spec.services = value()?.parse()?,
            "--backends" => a.spec.backends = value()?.parse()?,
            "--churn-seconds" => a.churn_seconds = value()?.parse()?,
            "--churn-percent" => a.churn_percent = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    a.spec.check()?;
    Ok(a)
}

async fn connect(endpoint: &str) -> Result<Arc<dyn KvBackend>> {
    Ok(Arc::new(
        EtcdBackend::connect(EtcdConfig::new(vec![endpoint.to_string()]))
            .await
            .with_context(|| format!("connect to {endpoint}"))?,
    ))
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / (1024.0 * 1024.0))
}

fn pct(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let d = sorted[((sorted.len() as f64 - 1.0) * p).round() as usize];
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Rows of the pinned ipcache map: (remote pods, remote nodes and their pod CIDRs, all).
fn map_counts(map: &PinnedIpcache) -> Result<(usize, usize, usize)> {
    let all = map.entries()?;
    let pods = all
        .iter()
        .filter(|(p, _)| p.len == 32 && scale::is_remote_pod(p.addr))
        .count();
    let nodes = all
        .iter()
        .filter(|(p, _)| {
            scale::is_remote_node(p.addr.into()) || (p.len < 32 && scale::is_remote_pod(p.addr))
        })
        .count();
    Ok((pods, nodes, all.len()))
}

fn rss_of_self() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn main() -> Result<()> {
    let a = args()?;
    // Everything below (etcd, the agent, the runtime's threads) lives in a namespace of its
    // own, which ends with the run.
    scale::enter_private_netns()?;
    plexus_kvstore::install_crypto_provider();
    let spec = a.spec;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "scale: {} remotes x {} nodes x {} endpoints x {} identities x {} services ({} backends), {:?}; churn {}%/s for {} s; load average {}",
        spec.clusters,
        spec.nodes,
        spec.endpoints,
        spec.identities,
        spec.services,
        spec.backends,
        spec.max(),
        a.churn_percent,
        a.churn_seconds,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let t = Instant::now();
    let n = spec.clusters + 1;
    let fleet = EtcdFleet::start(n, 8, |done| {
        if done % 50 == 0 || done == n {
            println!(
                "  ⌛ {done}/{n} etcd processes up ({:.1} s)",
                t.elapsed().as_secs_f64()
            );
        }
    })?;
    println!(
        "etcd: {} processes started in {:.1} s",
        spec.clusters + 1,
        t.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&a, &fleet));
    drop(rt);
    drop(fleet);
    result
}

async fn run(a: &Args, fleet: &EtcdFleet) -> Result<()> {
    let spec = a.spec;
    let sims: Vec<SimCluster> = spec.remotes().collect();
    let remote_endpoints = &fleet.endpoints()[1..];
    let local_endpoint = fleet.endpoints()[0].clone();
    let dir = tempfile::Builder::new().prefix("plexus-scale-").tempdir()?;

    // Publish every remote.
    let t = Instant::now();
    let published: Vec<scale::Published> = futures::stream::iter(sims.iter().enumerate())
        .map(|(i, sim)| {
            let endpoint = remote_endpoints[i].clone();
            async move {
                let backend = connect(&endpoint).await?;
                let p = scale::publish(backend, sim).await?;
                if (i + 1) % 50 == 0 {
                    println!("  ⌛ published {} remotes", i + 1);
                }
                anyhow::Ok(p)
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    let per_remote = spec.entries_per_remote();
    let total_entries = per_remote * spec.clusters;
    println!(
        "publish: {} entries into {} etcds in {:.1} s",
        total_entries,
        spec.clusters,
        t.elapsed().as_secs_f64()
    );

    // The baseline: bare list and decode of every remote.
    let rss0 = rss_of_self();
    let t = Instant::now();
    let listed: Vec<scale::Listed> = futures::stream::iter(sims.iter().zip(&published))
        .map(|(sim, p)| scale::list_and_decode(p.backend.as_ref(), sim))
        .buffered(16)
        .try_collect()
        .await?;
    let baseline_sync = t.elapsed();
    let listed_entries: usize = listed.iter().map(|l| l.entries).sum();
    let listed_bytes: usize = listed.iter().map(|l| l.bytes).sum();
    if listed_entries != total_entries {
        bail!("listed {listed_entries} entries, published {total_entries}");
    }
    println!(
        "baseline list-and-decode: {} entries ({}) in {:.2} s (bench process RSS {} -> {})",
        listed_entries,
        mib(listed_bytes as f64),
        baseline_sync.as_secs_f64(),
        mib(rss0 as f64),
        mib(rss_of_self() as f64)
    );

    // The local cluster: its etcd, KVStoreMesh, the agent.
    let local_backend = connect(&local_endpoint).await?;
    let local_leases = LeaseManager::start(local_backend.clone(), Duration::from_secs(60)).await?;
    let km_dir = dir.path().join("kvstoremesh");
    std::fs::create_dir_all(&km_dir)?;
    let km = KvStoreMesh::spawn(
        &km_dir,
        spec.local()?,
        local_backend.clone(),
        &local_leases,
        DriverTiming::default(),
        Duration::from_secs(1),
    );
    let agent_dir = dir.path().join("agent");
    let agent = ScaleAgent::start(
        &workspace_bin("plexus-agent"),
        &agent_dir,
        &local_endpoint,
        &spec,
    )
    .await?;
    let client = agent.client();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = agent.rss_bytes()?;
    let map = PinnedIpcache::open(&agent.pin_dir())?;
    let (_, _, local_rows) = map_counts(&map)?;
    println!(
        "agent: pid {}, RSS {} before any remote, {} local ipcache entries",
        agent.pid(),
        mib(rss_before as f64),
        local_rows
    );

    // Full sync: the remotes' files for KVStoreMesh and the agent, at once.
    let t = Instant::now();
    for (sim, endpoint) in sims.iter().zip(remote_endpoints) {
        scale::write_remote_config(&km_dir, &sim.name, endpoint)?;
        scale::write_remote_config(&agent.clustermesh_dir(), &sim.name, &local_endpoint)?;
    }
    let expected_pods = spec.clusters * spec.endpoints;
    let mut last_print = Instant::now();
    let mut cache_synced: Option<Duration> = None;
    let sync_time = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if cache_synced.is_none() {
            let km_ready = km
                .status()
                .remotes
                .values()
                .filter(|r| r.protocol.ready)
                .count();
            let cached = local_backend
                .list_prefix(&format!("{}/", plexus_model::keys::CLUSTER_CONFIG))
                .await?
                .kvs
                .len();
            if km_ready == spec.clusters && cached == spec.clusters {
                cache_synced = Some(t.elapsed());
                println!(
                    "  ✅ KVStoreMesh: every remote cached after {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            }
        }
        let report = client.clustermesh().await?;
        let ready = report
            .mesh
            .remote_clusters
            .iter()
            .filter(|r| r.ready)
            .count();
        let endpoints: usize = report
            .mesh
            .remote_clusters
            .iter()
            .map(|r| r.num_endpoints)
            .sum();
        let all_ready = ready == spec.clusters && endpoints == expected_pods;
        let pods = if all_ready { map_counts(&map)?.0 } else { 0 };
        if last_print.elapsed() > Duration::from_secs(5) || (all_ready && pods == expected_pods) {
            last_print = Instant::now();
            println!(
                "  ⌛ {:.0} s: agent has {ready}/{} remotes ready, {endpoints}/{expected_pods} endpoints{}; agent RSS {}",
                t.elapsed().as_secs_f64(),
                spec.clusters,
                if all_ready {
                    format!(", {pods} in the ipcache map")
                } else {
                    String::new()
                },
                mib(agent.rss_bytes()? as f64)
            );
        }
        if all_ready && pods == expected_pods {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(3600) {
            bail!(
                "no full sync within an hour (agent log {})",
                agent.log().display()
            );
        }
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = agent.rss_bytes()?;
    let (pods, nodes, rows) = map_counts(&map)?;
    let report = client.clustermesh().await?;
    let sum = |f: fn(&plexus_clustermesh::report::RemoteClusterReport) -> usize| -> usize {
        report.mesh.remote_clusters.iter().map(f).sum()
    };
    let ipcache_max = (spec.clusters * (spec.endpoints + 2 * spec.nodes) * 6 / 5).max(512_000);
    println!(
        "full sync: {:.1} s (KVStoreMesh cache complete at {:.1} s); baseline list-and-decode {:.2} s",
        sync_time.as_secs_f64(),
        cache_synced.unwrap_or_default().as_secs_f64(),
        baseline_sync.as_secs_f64()
    );
    println!(
        "agent listings: {} nodes, {} endpoints, {} identities, {} shared services (expected {}, {}, {}, {})",
        sum(|r| r.num_nodes),
        sum(|r| r.num_endpoints),
        sum(|r| r.num_identities),
        sum(|r| r.num_shared_services),
        spec.clusters * spec.nodes,
        spec.clusters * spec.endpoints,
        spec.clusters * spec.identities,
        spec.clusters * spec.services
    );
    println!(
        "map fill: ipcache {rows}/{ipcache_max} ({:.1}%): {pods} remote pods, {nodes} remote node addresses and pod CIDRs, {} local",
        rows as f64 * 100.0 / ipcache_max as f64,
        rows - pods - nodes
    );
    let grown = rss_after.saturating_sub(rss_before) as f64;
    println!(
        "agent memory: RSS {} -> {} (+{}), {:.0} bytes per remote entry ({} entries); baseline: {:.0} bytes per entry on the wire",
        mib(rss_before as f64),
        mib(rss_after as f64),
        mib(grown),
        grown / total_entries as f64,
        total_entries,
        listed_bytes as f64 / total_entries as f64
    );

    if a.churn_seconds > 0 {
        churn(a, &sims, &published, &agent.pin_dir()).await?;
    }
    drop(km);
    Ok(())
}

struct Write {
    expected: u32,
    at: Instant,
}

/// Changes `churn_percent` of the endpoints per second for `churn_seconds` and measures put ->
/// pinned map entry, and put -> bare watch event of the same etcd.
async fn churn(
    a: &Args,
    sims: &[SimCluster],
    published: &[scale::Published],
    pin_dir: &std::path::Path,
) -> Result<()> {
    let spec = a.spec;
    let total = spec.clusters * spec.endpoints;
    let per_tick = ((total as f64 * a.churn_percent / 100.0) / 10.0)
        .round()
        .max(1.0) as usize;
    // The bare watch of every remote's ipcache prefix, from now.
    let watched: Arc<Mutex<HashMap<String, Write>>> = Arc::default();
    let watch_lat: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut watchers = Vec::new();
    for p in published {
        let rev = p.backend.status().await?.revision;
        let mut stream = p
            .backend
            .watch(&StateKind::Ip.state_prefix(""), rev + 1)
            .await?;
        let watched = watched.clone();
        let lat = watch_lat.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(Ok(events)) = stream.next().await {
                let now = Instant::now();
                for ev in events {
                    if ev.kind != RawEventKind::Put {
                        continue;
                    }
                    let Ok(v) = serde_json::from_slice::<IpIdentityPair>(&ev.kv.value) else {
                        continue;
                    };
                    let mut w = watched.lock().unwrap();
                    if w.get(&ev.kv.key).is_some_and(|x| x.expected == v.id) {
                        let x = w.remove(&ev.kv.key).unwrap();
                        lat.lock().unwrap().push(now - x.at);
                    }
                }
            }
        }));
    }
    let pending: Arc<Mutex<HashMap<Ipv4Addr, Write>>> = Arc::default();
    // The poller: looks every pending write up in the pinned map, every millisecond, until
    // told to stop and nothing is pending (or a minute after the stop).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let map = PinnedIpcache::open(pin_dir)?;
        let pending = pending.clone();
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<Vec<Duration>> {
            let mut lat = Vec::new();
            let mut stopped: Option<Instant> = None;
            loop {
                poll(&map, &pending, &mut lat)?;
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let since = *stopped.get_or_insert_with(Instant::now);
                    if pending.lock().unwrap().is_empty()
                        || since.elapsed() > Duration::from_secs(60)
                    {
                        return Ok(lat);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let seen = |pending: &Mutex<HashMap<Ipv4Addr, Write>>| pending.lock().unwrap().len();
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next = 0usize; // walks the endpoints with a stride, so a key changes once per pass
    let stride = 7919; // a prime: visits every endpoint of every remote before repeating
    let mut written = 0usize;
    let mut last_print = Instant::now();
    let mut writers = Vec::new();
    while t.elapsed() < Duration::from_secs(a.churn_seconds) {
        tick.tick().await;
        let batch: Vec<(usize, usize)> = (0..per_tick)
            .map(|_| {
                next = (next + stride) % total;
                (next / spec.endpoints, next % spec.endpoints)
            })
            .collect();
        let version = 1 + written / total;
        // Each tick's writes run on their own, so that slow puts do not slow the rate.
        let batch: Vec<_> = batch
            .into_iter()
            .map(|(c, e)| {
                let sim = &sims[c];
                let p = &published[c];
                let entry = sim.ip_entry(e, version);
                (
                    sim.endpoint_ip(e),
                    sim.ip_key(e),
                    entry,
                    p.backend.clone(),
                    p.leases.lease(),
                )
            })
            .collect();
        let (pend, wat) = (pending.clone(), watched.clone());
        writers.push(tokio::spawn(async move {
            let mut puts = futures::stream::FuturesUnordered::new();
            for (ip, key, entry, backend, lease) in batch {
                puts.push(put_one(&pend, &wat, ip, key, entry, backend, lease));
                if puts.len() >= 64 {
                    puts.next().await.transpose()?;
                }
            }
            while let Some(r) = puts.next().await {
                r?;
            }
            anyhow::Ok(())
        }));
        written += per_tick;
        if last_print.elapsed() > Duration::from_secs(10) {
            last_print = Instant::now();
            println!(
                "  ⌛ churn {:.0} s: {written} writes ({:.0}/s), {} pending",
                t.elapsed().as_secs_f64(),
                written as f64 / t.elapsed().as_secs_f64(),
                seen(&pending)
            );
        }
    }
    for w in writers {
        w.await??;
    }
    let elapsed = t.elapsed();
    let rate = written as f64 / elapsed.as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut dp_lat = tokio::task::spawn_blocking(move || poller.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the poller panicked"))??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for w in watchers {
        w.abort();
    }
    let missing = seen(&pending);
    dp_lat.sort();
    let mut wl = watch_lat.lock().unwrap().clone();
    wl.sort();
    println!(
        "churn: {written} writes in {:.0} s ({rate:.0}/s = {:.2}% of {total} endpoints per second); put -> pinned ipcache entry p50 {} p99 {} max {} ({} seen, {missing} not within 60 s after, {} puts failed); baseline put -> bare watch p50 {} p99 {} ({} seen)",
        elapsed.as_secs_f64(),
        rate * 100.0 / total as f64,
        pct(&dp_lat, 0.5),
        pct(&dp_lat, 0.99),
        pct(&dp_lat, 1.0),
        dp_lat.len(),
        FAILED_PUTS.load(std::sync::atomic::Ordering::Relaxed),
        pct(&wl, 0.5),
        pct(&wl, 0.99),
        wl.len()
    );
    Ok(())
}

/// One churn write: noted as pending for the map and the watch, then put.
async fn put_one(
    pending: &Mutex<HashMap<Ipv4Addr, Write>>,
    watched: &Mutex<HashMap<String, Write>>,
    ip: Ipv4Addr,
    key: String,
    entry: IpIdentityPair,
    backend: Arc<dyn KvBackend>,
    lease: plexus_kvstore::LeaseId,
) -> Result<()> {
    let at = Instant::now();
    let expected = entry.id;
    pending.lock().unwrap().insert(ip, Write { expected, at });
    watched
        .lock()
        .unwrap()
        .insert(key.clone(), Write { expected, at });
    if let Err(e) = backend
        .put(&key, serde_json::to_vec(&entry)?, Some(lease))
        .await
    {
        // A put etcd did not acknowledge in time (an overloaded run) is counted, not awaited.
        pending.lock().unwrap().remove(&ip);
        watched.lock().unwrap().remove(&key);
        FAILED_PUTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        eprintln!("  ⚠ {e}");
    }
    Ok(())
}

/// Churn puts that failed.
static FAILED_PUTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Looks every pending write up in the pinned map; records those that arrived.
fn poll(
    map: &PinnedIpcache,
    pending: &Mutex<HashMap<Ipv4Addr, Write>>,
    lat: &mut Vec<Duration>,
) -> Result<()> {
    let mut p = pending.lock().unwrap();
    let mut done = Vec::new();
    for (ip, w) in p.iter() {
        if map.lookup(*ip)?.is_some_and(|v| v.identity == w.expected) {
            done.push(*ip);
            lat.push(w.at.elapsed());
        }
    }
    for ip in done {
        p.remove(&ip);
    }
    Ok(())
}
