//! Reconciliation latency: how long from an input reaching the agent's core to the eBPF maps
//! holding its consequence, with the reconciler woken on change (how the agent runs) beside
//! the reconciler driven by a 200 ms tick (how it ran before, polling), in the same run.
//!
//! Two latencies, each over `PLEXUS_BENCH_N` changes (default 200):
//! - **service**: a remote cluster's ClusterService of a global service changes one backend ->
//!   the load-balancer maps hold the new backend;
//! - **identity**: a new identity of a remote cluster, selected by a policy of a local
//!   endpoint, arrives -> the endpoint's policy map holds its entry.
//!
//! Background state so the recomputation is not trivially small: 1,000 local global services,
//! 1,000 remote identities, 10 local endpoints under the policy. The datapath is the real one
//! (maps and programs loaded, nothing attached), in a private bpffs.
//!
//! Run as root: `cargo bench -p plexus-agent --bench reconcile`.
#![allow(clippy::unwrap_used)]

#[path = "../../datapath/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_agent::core::{CoreConfig, Input, LocalEndpoint, NodeCore};
use plexus_agent::shell::CoreHandle;
use plexus_agent::shell::reconciler::{NoRoutes, Reconciler};
use plexus_clustermesh::remote_cluster::{MeshEvent, RemoteEvent};
use plexus_clustermesh::validate::RemoteIdentity;
use plexus_datapath::{Datapath, EbpfDatapath, NodeConfig, RoutingMode};
use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_model::service::ClusterService;

const SERVICES: u32 = 1000;
const IDENTITIES: u32 = 1000;
const ENDPOINTS: u16 = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    OnChange,
    Tick200ms,
}

fn remote(event: RemoteEvent) -> Input {
    Input::Remote(MeshEvent {
        cluster: "c2".into(),
        event,
    })
}

fn service(i: u32) -> Input {
    let service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc{i}"), "namespace": "default",
                     "annotations": {"service.cilium.io/global": "true"}},
        "spec": {"ports": [{"name": "http", "port": 80}],
                 "clusterIP": Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 11, 0, 0)) + i).to_string()}
    }))
    .unwrap();
    Input::ServiceUpsert {
        key: format!("default/svc{i}"),
        service: Box::new(service),
    }
}

fn cluster_service(i: u32, backend: Ipv4Addr) -> Input {
    let cs: ClusterService = serde_json::from_value(serde_json::json!({
        "cluster": "c2", "namespace": "default", "name": format!("svc{i}"),
        "frontends": {}, "backends": {backend.to_string(): {"http": {"Protocol": "TCP", "Port": 80}}},
        "labels": {}, "selector": {}, "includeExternal": false, "shared": true, "clusterID": 2
    }))
    .unwrap();
    remote(RemoteEvent::ServiceUpsert(cs.into()))
}

fn labels(app: &str, cluster: &str) -> Labels {
    Labels::parse(&format!(
        "k8s:app={app};k8s:io.cilium.k8s.policy.cluster={cluster};k8s:io.kubernetes.pod.namespace=default;"
    ))
    .unwrap()
}

fn identity(id: u32, app: &str) -> Input {
    remote(RemoteEvent::IdentityUpsert(RemoteIdentity {
        id: NumericIdentity(id),
        labels: labels(app, "c2"),
    }))
}

fn policy() -> Input {
    let value = serde_json::json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "from-x-wing", "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "rebel-base"}},
                 "ingress": [{"fromEndpoints": [{"matchLabels": {
                     "app": "x-wing", "io.cilium.k8s.policy.cluster": "c2"}}],
                     "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}
    });
    let policy = plexus_policy::parse_value(&value, 1, "default").unwrap();
    Input::PolicyUpsert {
        key: "bench/from-x-wing".into(),
        policy: Box::new(policy),
        object: value,
    }
}

/// A pause before the k-th change, spread evenly over 0..200 ms (37 and 200 are coprime), so
/// that changes land at every phase of the tick instead of locking onto it.
fn spread(k: u32) -> Duration {
    Duration::from_millis(u64::from(k * 37 % 200))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn fmt(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{} µs", d.as_micros())
    }
}

async fn measure(mode: Mode, n: u32) -> (Vec<Duration>, Vec<Duration>) {
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
            79,
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
    let mut reconciler = Reconciler::new(driver, datapath.clone(), Arc::new(NoRoutes));
    let task = match mode {
        Mode::OnChange => tokio::spawn(reconciler.run()),
        // The agent before: every 200 ms, look for changes and program them.
        Mode::Tick200ms => tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                reconciler.round();
            }
        }),
    };

    // Background state.
    let mut inputs = vec![
        remote(RemoteEvent::ClusterConfig { cluster_id: 2 }),
        Input::ServicesSynced,
        Input::BackendsSynced,
        Input::MeshStatus {
            reachable: BTreeSet::from(["c2".to_string()]),
            all_ready: true,
        },
        policy(),
        Input::PoliciesSynced,
        Input::IdentityUpsert {
            id: 300,
            labels: labels("rebel-base", "c1"),
        },
    ];
    for i in 0..SERVICES {
        inputs.push(service(i));
    }
    for i in 0..IDENTITIES {
        inputs.push(identity(131_072 + i, &format!("app{i}")));
    }
    for id in 1..=ENDPOINTS {
        inputs.push(Input::EndpointUpsert(LocalEndpoint {
            id,
            ip: Ipv4Addr::new(10, 1, 1, 10 + id as u8),
            identity: 300,
            named_ports: Default::default(),
            namespace: String::new(),
            pod_name: String::new(),
        }));
    }
    let seq = core.step_all(inputs);
    assert!(core.wait_applied(seq, Duration::from_secs(60)).await);

    let mut services = Vec::new();
    for k in 0..n {
        let backend = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 2, 0, 0)) + k);
        // Spread the starts over the tick, as real events are.
        tokio::time::sleep(spread(k)).await;
        let t0 = Instant::now();
        let seq = core.step(cluster_service(k % SERVICES, backend));
        assert!(core.wait_applied(seq, Duration::from_secs(5)).await);
        services.push(t0.elapsed());
        let lb = datapath.services().unwrap();
        assert!(
            lb.iter()
                .any(|s| s.active.iter().any(|b| *b.ip() == backend)),
            "the LB maps hold the new backend"
        );
    }
    let mut identities = Vec::new();
    for k in 0..n {
        let id = 131_072 + IDENTITIES + k;
        tokio::time::sleep(spread(k)).await;
        let t0 = Instant::now();
        let seq = core.step(identity(id, "x-wing"));
        assert!(core.wait_applied(seq, Duration::from_secs(5)).await);
        identities.push(t0.elapsed());
        let tables = datapath.policies().unwrap();
        assert!(
            tables[&1].1.keys().any(|key| key.identity == id),
            "the policy map holds the new identity"
        );
    }
    task.abort();
    services.sort();
    identities.sort();
    (services, identities)
}

#[tokio::main]
async fn main() {
    let n: u32 = std::env::var("PLEXUS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    println!(
        "reconciliation latency ({n} changes each; {SERVICES} services, {IDENTITIES} remote identities, {ENDPOINTS} endpoints; eBPF maps)"
    );
    println!("  {:<58} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
    for (mode, name) in [
        (Mode::OnChange, "on change"),
        (Mode::Tick200ms, "200 ms tick (before)"),
    ] {
        let (svc, ids) = measure(mode, n).await;
        for (what, v) in [
            ("ClusterService event -> LB maps", &svc),
            ("remote identity -> policy map entry", &ids),
        ] {
            println!(
                "  {:<58} {:>10} {:>10} {:>10}",
                format!("{what}, {name}"),
                fmt(percentile(v, 0.5)),
                fmt(percentile(v, 0.99)),
                fmt(*v.last().unwrap())
            );
        }
    }
}
