//! A full datapath map, end to end in a running agent: the agent (its fake datapath, whose
//! ipcache holds `bpf-ipcache-map-max` prefixes like the real map) follows its cluster's etcd
//! (a real etcd on loopback) holding more ipcache entries than fit. It keeps serving the
//! entries it holds, `/v1/status` warns naming the map, `/metrics` counts the refusals and
//! shows the map's fill; once entries are removed, the refused ones are retried and go in, and
//! the warning clears.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use plexus_agent::Options;
use plexus_agent_api::{AgentStatus, Client, Endpoint};
use plexus_test_support::EtcdProcess;

const CAPACITY: usize = 30;
const KEPT: u8 = 20;
const REMOVED: u8 = 20;

fn options(dir: &Path, etcd: &str) -> Options {
    let mesh = dir.join("clustermesh");
    std::fs::create_dir_all(&mesh).unwrap();
    let yaml = format!(
        "cluster-name: cluster1\ncluster-id: 1\nnode-name: node-1\nnode-ip: 192.168.1.1\n\
         pod-cidr: 10.1.0.0/16\nstate-dir: {}\netcd-endpoints: {etcd}\n\
         clustermesh-config: {}\napi-socket: {}\ndatapath: fake\n\
         bpf-ipcache-map-max: {CAPACITY}\n",
        dir.join("state").display(),
        mesh.display(),
        dir.join("agent.sock").display(),
    );
    let file = dir.join("agent.yaml");
    Options::resolve(plexus_config::from_yaml(&yaml, &file).unwrap(), Some(&file)).unwrap()
}

/// Another node's pod in cluster1's etcd, as Cilium writes it.
fn put_entry(etcd: &EtcdProcess, ip: &str, id: u32) {
    let key = format!("cilium/state/ip/v1/default/{ip}");
    let value = format!(r#"{{"IP":"{ip}","HostIP":"192.168.1.2","ID":{id},"Key":0}}"#);
    etcd.etcdctl(&["put", &key, &value]).unwrap();
}

fn kept(i: u8) -> String {
    format!("10.1.200.{i}")
}

fn removed(i: u8) -> String {
    format!("10.1.201.{i}")
}

/// Asks `ask` until `done` holds of its answer (the agent applies in the background).
async fn until<T: std::fmt::Debug>(
    what: &str,
    mut ask: impl AsyncFnMut() -> Option<T>,
    done: impl Fn(&T) -> bool,
) -> T {
    let mut last = None;
    let wait = async {
        loop {
            if let Some(v) = ask().await {
                if done(&v) {
                    return v;
                }
                last = Some(v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(60), wait).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not reached; last answer {last:?}"),
    }
}

async fn get_status(client: &Client) -> Option<AgentStatus> {
    client.status().await.ok()
}

async fn ipcache(client: &Client) -> Option<Vec<String>> {
    let rows = client.ipcache().await.ok()?;
    Some(rows.into_iter().map(|r| r.prefix).collect())
}

async fn metrics(client: &Client) -> Option<Vec<String>> {
    let (code, text) = client.get_text("/metrics").await.ok()?;
    (code == 200).then(|| text.lines().map(str::to_string).collect())
}

/// The value of `plexus_bpf_map_full_total{map="PLEXUS_IPCACHE"}`.
fn full_total(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("plexus_bpf_map_full_total{map=\"PLEXUS_IPCACHE\"} "))?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ipcache_is_reported_keeps_serving_and_takes_the_rest_once_room_is_made() {
    tokio::time::timeout(Duration::from_secs(180), run())
        .await
        .unwrap();
}

async fn run() {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path(), &etcd.endpoint());
    let client = Client::new(Endpoint::Unix(options.api_socket.clone()));
    for i in 1..=KEPT {
        put_entry(&etcd, &kept(i), 70_000 + u32::from(i));
    }
    for i in 1..=REMOVED {
        put_entry(&etcd, &removed(i), 80_000 + u32::from(i));
    }
    let agent = tokio::spawn(plexus_agent::run(options));

    // Full: it holds exactly its capacity, and says so.
    let held = until(
        "a full ipcache",
        async || ipcache(&client).await,
        |p| p.len() == CAPACITY,
    )
    .await;
    let status = until(
        "a warning",
        async || get_status(&client).await,
        |s| !s.warnings.is_empty(),
    )
    .await;
    assert_eq!(status.warnings.len(), 1, "{:?}", status.warnings);
    let warning = &status.warnings[0];
    assert!(
        warning.starts_with(&format!(
            "map PLEXUS_IPCACHE is full ({CAPACITY}/{CAPACITY} entries): "
        )),
        "{warning}"
    );
    let lines = until(
        "the map metrics",
        async || metrics(&client).await,
        |l| l.iter().any(|l| l.starts_with("plexus_bpf_map_full_total")),
    )
    .await;
    let refused = full_total(&lines).unwrap();
    assert!(refused >= 1, "{lines:#?}");
    for line in [
        format!("plexus_bpf_map_entries{{map=\"PLEXUS_IPCACHE\"}} {CAPACITY}"),
        format!("plexus_bpf_map_capacity{{map=\"PLEXUS_IPCACHE\"}} {CAPACITY}"),
    ] {
        assert!(lines.contains(&line), "{line} in {lines:#?}");
    }
    // Still serving what it holds: nothing it held went.
    let again = ipcache(&client).await.unwrap();
    for p in &held {
        assert!(again.contains(p), "{p} gone from {again:?}");
    }

    // Room made: the entries refused before go in, and the warning clears.
    etcd.etcdctl(&["del", "--prefix", "cilium/state/ip/v1/default/10.1.201."])
        .unwrap();
    let all_kept = |p: &Vec<String>| {
        (1..=KEPT).all(|i| p.contains(&format!("{}/32", kept(i))))
            && !p.iter().any(|p| p.starts_with("10.1.201."))
    };
    until(
        "the refused entries in",
        async || ipcache(&client).await,
        all_kept,
    )
    .await;
    until(
        "no warning",
        async || get_status(&client).await,
        |s| s.warnings.is_empty(),
    )
    .await;
    // The count is a running total: it never goes back.
    let lines = metrics(&client).await.unwrap();
    let after: u64 = full_total(&lines).unwrap();
    assert!(after >= refused, "{after} < {refused}");
    agent.abort();
}
