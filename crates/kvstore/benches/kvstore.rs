//! kvstore benchmarks against a real etcd on loopback. Prints the figures of BENCHMARKS.md.
//!
//! - put -> watch event latency (p50/p99), beside the bare put round trip in the same run;
//! - ipcache entries per second that a WatchStore ingests from etcd (list, decode, validate,
//!   cache), beside plain JSON decoding of the same values in memory and the same WatchStore fed
//!   by the in-memory backend.
//!
//! Run: `cargo bench -p plexus-kvstore --bench kvstore` (sizes: PLEXUS_BENCH_LATENCY_N,
//! PLEXUS_BENCH_INGEST_N).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use plexus_kvstore::{
    DecodeFn, EtcdBackend, EtcdConfig, KvBackend, MemoryBackend, Op, StoreEvent, Txn, WatchStore,
};
use plexus_model::ipcache::IpIdentityPair;
use plexus_test_support::EtcdProcess;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn fmt_us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn ipcache_value(i: usize) -> (String, Vec<u8>) {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 20, 0, 0)) + i as u32);
    let value = format!(
        r#"{{"IP":"{ip}","Mask":null,"HostIP":"172.18.0.{}","ID":{},"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"pod-{i}"}}"#,
        i % 250 + 1,
        131072 + (i % 60000)
    );
    (
        format!("cilium/state/ip/v1/default/{ip}"),
        value.into_bytes(),
    )
}

fn decode() -> DecodeFn<IpIdentityPair> {
    Box::new(|key, raw| {
        let pair: IpIdentityPair = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        pair.validate_key(key).map_err(|e| e.to_string())?;
        Ok(pair)
    })
}

async fn latency(b: &Arc<dyn KvBackend>, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut stream = b.watch("bench/lat/", 0).await.expect("watch");
    let mut watch = Vec::with_capacity(n);
    let mut put = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        b.put(&format!("bench/lat/{}", i % 100), vec![b'x'; 200], None)
            .await
            .expect("put");
        put.push(start.elapsed());
        let events = stream
            .next()
            .await
            .expect("stream open")
            .expect("watch event");
        assert_eq!(events.len(), 1);
        watch.push(start.elapsed());
    }
    watch.sort();
    put.sort();
    (watch, put)
}

async fn publish(b: &Arc<dyn KvBackend>, n: usize) {
    let values: Vec<(String, Vec<u8>)> = (0..n).map(ipcache_value).collect();
    // etcd allows 128 operations per transaction by default.
    for chunk in values.chunks(100) {
        let ops = chunk
            .iter()
            .map(|(k, v)| Op::Put {
                key: k.clone(),
                value: v.clone(),
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

async fn ingest(b: &Arc<dyn KvBackend>, n: usize) -> Duration {
    let start = Instant::now();
    let mut store = WatchStore::new(b.clone(), "cilium/state/ip/v1/default/", decode());
    loop {
        if let StoreEvent::Synced = store.next().await {
            break;
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(store.len(), n, "every entry ingested");
    assert_eq!(store.rejected(), 0);
    elapsed
}

fn main() {
    plexus_kvstore::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let lat_n = env_usize("PLEXUS_BENCH_LATENCY_N", 5_000);
        let ingest_n = env_usize("PLEXUS_BENCH_INGEST_N", 50_000);

        eprintln!("starting etcd on loopback ...");
        let etcd = EtcdProcess::start().expect("start etcd");
        let b: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
                .await
                .expect("connect"),
        );
        let version = b.status().await.expect("status").version;
        println!(
            "kvstore benchmarks: etcd {version} on loopback, {} cores",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
        println!();

        eprintln!("put -> watch latency, {lat_n} puts ...");
        let (watch, put) = latency(&b, lat_n).await;
        println!("put -> watch event latency ({lat_n} sequential puts of 200 B)");
        println!("  {:<28} {:>10} {:>10}", "", "p50", "p99");
        println!(
            "  {:<28} {:>10} {:>10}",
            "put -> watch event (etcd)",
            fmt_us(percentile(&watch, 0.5)),
            fmt_us(percentile(&watch, 0.99))
        );
        println!(
            "  {:<28} {:>10} {:>10}",
            "put round trip (baseline)",
            fmt_us(percentile(&put, 0.5)),
            fmt_us(percentile(&put, 0.99))
        );
        println!();

        eprintln!("publishing {ingest_n} ipcache entries ...");
        publish(&b, ingest_n).await;
        let etcd_time = ingest(&b, ingest_n).await;

        let mem: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        publish(&mem, ingest_n).await;
        let mem_time = ingest(&mem, ingest_n).await;

        let raw: Vec<(String, Vec<u8>)> = (0..ingest_n).map(ipcache_value).collect();
        let start = Instant::now();
        let mut ok = 0usize;
        for (_, v) in &raw {
            let pair: IpIdentityPair = serde_json::from_slice(v).expect("decode");
            ok += usize::from(pair.id > 0);
        }
        let plain = start.elapsed();
        assert_eq!(ok, ingest_n);

        let rate = |d: Duration| format!("{:>10.0} entries/s", ingest_n as f64 / d.as_secs_f64());
        println!(
            "ipcache ingest ({ingest_n} IPIdentityPair entries, list + decode + validate + cache)"
        );
        println!(
            "  {:<38} {:>9.1} ms {}",
            "WatchStore from etcd",
            etcd_time.as_secs_f64() * 1e3,
            rate(etcd_time)
        );
        println!(
            "  {:<38} {:>9.1} ms {}",
            "WatchStore from in-memory backend",
            mem_time.as_secs_f64() * 1e3,
            rate(mem_time)
        );
        println!(
            "  {:<38} {:>9.1} ms {}",
            "plain JSON decoding (baseline)",
            plain.as_secs_f64() * 1e3,
            rate(plain)
        );
        drop(etcd);
    });
}
