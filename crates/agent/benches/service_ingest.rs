//! A remote global service with 10,000 backends, end to end: from its put in the remote
//! cluster's etcd to the eBPF load-balancer maps holding all its backends, through the code the
//! agent runs (the cluster mesh's watch, decoding and validation, the guard, the core's
//! backend selection, the reconciler, the eBPF datapath's batched writes). Beside it, in the
//! same run and interleaved, the bare etcd put -> watch -> JSON decode of the same value.
//!
//! Every run puts a new version in which every backend changed (another port), so the whole
//! frontend is re-programmed: 10,000 backends written, slots rewritten, the old ones deleted.
//! Figures: medians of PLEXUS_BENCH_RUNS (default 9), PLEXUS_BENCH_SERVICE_BACKENDS backends
//! (default 10,000); "event" is when the ClusterService event leaves the cluster mesh, "LB
//! maps" when the reconciler has applied it.
//!
//! Run as root: `cargo bench -p plexus-agent --bench service_ingest`.
#![allow(clippy::unwrap_used)]

#[path = "../../datapath/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use plexus_agent::core::{CoreConfig, Input, NodeCore};
use plexus_agent::shell::CoreHandle;
use plexus_agent::shell::reconciler::{NoRoutes, Reconciler};
use plexus_agent::shell::sources;
use plexus_clustermesh::mesh::ClusterMesh;
use plexus_clustermesh::publish::{PublisherConfig, SelfPublisher};
use plexus_clustermesh::remote::Timing;
use plexus_clustermesh::remote_cluster::{DriverTiming, MeshEvent, RemoteEvent};
use plexus_datapath::{Datapath, EbpfDatapath, NodeConfig, RoutingMode};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, LeaseManager};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::keys::{self, StateKind};
use plexus_model::service::{ClusterService, PortConfig};
use plexus_test_support::EtcdProcess;
use tokio::sync::mpsc;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 11, 0, 1);
const WAIT: Duration = Duration::from_secs(60);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `i`-th backend: 10.20.0.1 and up, in the pod CIDR of c2's node.
fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, (i / 250) as u8, (1 + i % 250) as u8)
}

/// The backends' port in version `v`: every version changes every backend.
fn port(v: usize) -> u16 {
    8000 + v as u16
}

/// c2's `default/rebel-base` with `n` backends on the port of version `v`, as JSON.
fn cluster_service(n: usize, v: usize) -> Vec<u8> {
    let ports = |port| {
        BTreeMap::from([(
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
        frontends: BTreeMap::from([("10.21.0.1".to_string(), ports(80))]),
        backends: (0..n)
            .map(|i| (backend_ip(i).to_string(), ports(port(v))))
            .collect(),
        hostnames: Default::default(),
        zones: Default::default(),
        labels: Default::default(),
        selector: Default::default(),
        include_external: false,
        shared: true,
        cluster_id: 2,
    };
    serde_json::to_vec(&svc).unwrap()
}

fn local_service() -> Input {
    let service = serde_json::from_str(&format!(
        r#"{{"metadata":{{"name":"rebel-base","namespace":"default","annotations":{{"service.cilium.io/global":"true"}}}},
            "spec":{{"ports":[{{"name":"http","port":80}}],"clusterIP":"{VIP}"}}}}"#
    ))
    .unwrap();
    Input::ServiceUpsert {
        key: "default/rebel-base".into(),
        service: Box::new(service),
    }
}

async fn connect(etcd: &EtcdProcess) -> Arc<dyn KvBackend> {
    Arc::new(
        EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .unwrap(),
    )
}

/// c2's config, heartbeat, canaries, and one node whose pod CIDR (10.20.0.0/16) holds the
/// backends (the agent drops backends a remote does not own).
async fn publish_c2(b: &Arc<dyn KvBackend>) -> (LeaseManager, SelfPublisher) {
    let leases = LeaseManager::start(b.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    let c2 = ClusterInfo::new("c2", 2, MaxConnectedClusters::Max255).unwrap();
    let publisher = SelfPublisher::start(b.clone(), &leases, PublisherConfig::new(c2))
        .await
        .unwrap();
    let node = r#"{"Name":"n2","Cluster":"c2","IPAddresses":[{"Type":"InternalIP","IP":"192.168.2.1"}],"IPv4AllocCIDR":{"IP":"10.20.0.0","Mask":"//8AAA=="},"ClusterID":2}"#;
    b.put(&keys::node_key("c2", "n2"), node.as_bytes().to_vec(), None)
        .await
        .unwrap();
    for kind in StateKind::ALL {
        b.put(&kind.canary("c2"), b"2026-12-07T12:00:00Z".to_vec(), None)
            .await
            .unwrap();
    }
    (leases, publisher)
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

/// Whether the core's load-balancer table has the frontend with `n` backends on `port`.
fn has_version(core: &NodeCore, n: usize, port: u16) -> bool {
    core.services().frontends_by_service().any(|(key, lb)| {
        key == "default/rebel-base"
            && lb.active.len() == n
            && lb.active.iter().all(|b| b.port() == port)
    })
}

fn median(mut v: Vec<Duration>) -> String {
    v.sort();
    format!("{:.1} ms", v[v.len() / 2].as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    plexus_kvstore::install_crypto_provider();
    let n = env_usize("PLEXUS_BENCH_SERVICE_BACKENDS", 10_000);
    let runs = env_usize("PLEXUS_BENCH_RUNS", 9).max(1);

    let etcd2 = EtcdProcess::start().unwrap();
    let b2 = connect(&etcd2).await;
    let (_leases, _publisher) = publish_c2(&b2).await;

    let fs = common::Bpffs::new();
    let datapath: Arc<dyn Datapath> = Arc::new(
        EbpfDatapath::load_unattached(
            NodeConfig {
                node_ip: Ipv4Addr::new(192, 168, 1, 1),
                routing: RoutingMode::Tunnel,
                gateway_ip: Ipv4Addr::new(10, 1, 1, 1),
                cluster_id: 1,
                tunnel_ifname: "unused".into(),
                pin_dir: fs.path().join("node"),
                encryption: Default::default(),
            },
            80,
        )
        .unwrap(),
    );
    let (core, driver) = CoreHandle::new(NodeCore::new(CoreConfig {
        cluster: "c1".into(),
        cluster_id: 1,
        node_name: "n1".into(),
        node_ip: Ipv4Addr::new(192, 168, 1, 1),
        routing: RoutingMode::Tunnel,
        policy_default_local_cluster: true,
        encryption: Default::default(),
    }));
    let reconciler =
        tokio::spawn(Reconciler::new(driver, datapath.clone(), Arc::new(NoRoutes)).run());
    core.step_all([
        local_service(),
        Input::ServicesSynced,
        Input::BackendsSynced,
    ]);

    // The cluster mesh as the agent runs it; the events pass through a tap that notes when
    // the service's event leaves the mesh, then go to the core as `sources::follow_remotes`
    // sends them.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c2"),
        format!("endpoints:\n- {}\n", etcd2.endpoint()),
    )
    .unwrap();
    let c1 = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
    let (tx, mut rx) = mpsc::channel::<MeshEvent>(4096);
    let mesh = ClusterMesh::spawn(dir.path(), c1, tx, timing(), Duration::from_millis(200));
    let (fwd_tx, fwd_rx) = mpsc::channel(4096);
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let tap = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if matches!(ev.event, RemoteEvent::ServiceUpsert(_)) {
                    seen.lock().unwrap().push(Instant::now());
                }
                if fwd_tx.send(ev).await.is_err() {
                    return;
                }
            }
        })
    };
    let follow = tokio::spawn(sources::follow_remotes(
        fwd_rx,
        core.clone(),
        plexus_agent::shell::memory::Trimmer::new(),
    ));
    let status = tokio::spawn(sources::follow_mesh_status(mesh.handle(), core.clone()));
    assert!(
        core.wait_until(|c| c.services().ready(), WAIT).await,
        "the core is ready to program services (local lists, c2 synced)"
    );

    let key = keys::service_key("c2", "default", "rebel-base");
    let mut bare_stream = b2.watch("bench/svc/", 0).await.unwrap();
    let (mut to_event, mut to_maps, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    eprintln!("{runs} runs of a ClusterService with {n} backends ...");
    for run in 0..=runs {
        let v = run + 1;
        let value = cluster_service(n, v);
        seen.lock().unwrap().clear();
        let start = Instant::now();
        b2.put(&key, value.clone(), None).await.unwrap();
        if !core.wait_until(|c| has_version(c, n, port(v)), WAIT).await {
            let (table, refused) = core.read(|c| {
                let table: Vec<String> = c
                    .services()
                    .frontends_by_service()
                    .map(|(k, lb)| {
                        format!(
                            "{k}: {} active, first {:?}",
                            lb.active.len(),
                            lb.active.first()
                        )
                    })
                    .collect();
                (table, c.refused())
            });
            let events = seen.lock().unwrap().len();
            panic!(
                "the core did not select version {v}: {table:?}, refused {refused:?}, \
                 {events} service events out of the mesh, status {:?}",
                mesh.status()
            );
        }
        let seq = core.read(|c| c.seq());
        assert!(core.wait_applied(seq, WAIT).await, "version {v} applied");
        let maps = start.elapsed();
        let event = seen.lock().unwrap().first().copied().unwrap() - start;

        // The bare baseline, same value.
        let start = Instant::now();
        b2.put("bench/svc/rebel-base", value, None).await.unwrap();
        let events = bare_stream.next().await.unwrap().unwrap();
        let decoded: ClusterService = serde_json::from_slice(&events[0].kv.value).unwrap();
        let bare_time = start.elapsed();
        assert_eq!(decoded.backends.len(), n);

        // Outside the timing: the maps hold exactly the new version.
        let lb = datapath.services().unwrap();
        let programmed = lb.iter().find(|s| s.frontend.addr == VIP).unwrap();
        assert_eq!(programmed.active.len(), n);
        assert!(programmed.active.iter().all(|b| b.port() == port(v)));
        assert!(
            programmed
                .active
                .contains(&SocketAddrV4::new(backend_ip(n - 1), port(v)))
        );
        if run == 0 {
            continue; // warm-up: the first version programs a frontend that was empty
        }
        to_event.push(event);
        to_maps.push(maps);
        bare.push(bare_time);
    }

    let json_kib = cluster_service(n, 1).len() / 1024;
    println!(
        "remote global service with {n} backends ({json_kib} KiB of JSON), every backend changed, median of {runs}"
    );
    println!(
        "  {:<56} {:>10}",
        "put in c2 -> ClusterService event out of the mesh",
        median(to_event)
    );
    println!(
        "  {:<56} {:>10}",
        "put in c2 -> LB maps hold all backends (agent)",
        median(to_maps)
    );
    println!(
        "  {:<56} {:>10}",
        "bare put -> watch -> JSON decode (baseline)",
        median(bare)
    );

    for task in [reconciler, tap, follow, status] {
        task.abort();
    }
    drop(mesh);
}
