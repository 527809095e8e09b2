//! Flow pipeline cost: agent CPU per datapath event, stage by stage, over a realistic snapshot.
//!
//! The snapshot is a real one built from a core of c1/n1: 8 local endpoints (pods), 300 pods of
//! cluster c2 in the ipcache with their identities (5 labels each), a policy selecting the
//! local endpoints with an allow and a deny rule, and a global service. The events are what a
//! UDP stream between local pods and c2's pods gives (per-packet traces at both endpoints and
//! the overlay), with a policy drop and a policy verdict now and then.
//!
//! Stages, each over `PLEXUS_BENCH_N` events (default 200,000), in ns per event:
//! - decode (snapshot loaded from its cell per event, as the task does);
//! - decode + flow metrics;
//! - decode + flow metrics + ring push (4095 flows, no follower);
//! - the whole `FlowTask`: events sent on a broadcast channel (the datapath's capacity) in
//!   bursts of 256, the task decoding, counting and pushing them.
//!
//! Run: `cargo bench -p plexus-agent --bench flows` (no root needed).
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use plexus_agent::core::{Input, LocalEndpoint, NodeCore};
use plexus_agent::flows::{FlowCounter, FlowTask, SnapshotBuilder, SnapshotCell, decode_event};
use plexus_agent::metrics::FlowMetrics;
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::{
    Direction, DropReason, EventKind, FakeDatapath, MonitorEvent, ObservationPoint, PolicyMatch,
    RoutingMode, TraceState,
};
use plexus_flow::FlowRing;
use plexus_loadbalancer::cluster_service::Backends;
use plexus_loadbalancer::service::Service;
use plexus_metrics::prometheus_client::registry::Registry;
use plexus_model::cluster::MaxConnectedClusters;

const LOCAL_PODS: u16 = 8;
const REMOTE_PODS: u32 = 300;
const LOCAL_IDENTITY: u32 = 65_536 + 300;
const REMOTE_IDENTITY: u32 = 131_073;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: iperf-server
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: iperf-server
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: iperf-client
    toPorts:
    - ports:
      - port: "5201"
        protocol: UDP
  ingressDeny:
  - fromEndpoints:
    - matchLabels:
        app: intruder
"#;

fn local_ip(i: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 1, 10 + i as u8)
}

fn remote_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 2, 1, 0)) + 10 + i)
}

fn pod_labels(app: &str, cluster: &str, i: u32) -> String {
    format!(
        "k8s:app={app};k8s:io.cilium.k8s.policy.cluster={cluster};\
         k8s:io.kubernetes.pod.namespace=default;k8s:version=v{};k8s:team=t{}",
        i % 3,
        i % 7
    )
}

fn core_with_mesh() -> NodeCore {
    let mut core = core(RoutingMode::Tunnel);
    let value: serde_json::Value = serde_norway::from_str(POLICY).unwrap();
    let policy = plexus_policy::parse_value(&value, 1, "default").unwrap();
    let mut inputs = vec![
        Input::PolicyUpsert {
            key: "plexus/objects/v1/policies/CiliumNetworkPolicy/default/iperf-server".into(),
            policy: Box::new(policy),
            object: value,
        },
        Input::PoliciesSynced,
        Input::IdentityUpsert {
            id: LOCAL_IDENTITY,
            labels: labels(&pod_labels("iperf-server", "c1", 0)),
        },
        remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
    ];
    for i in 0..LOCAL_PODS {
        inputs.push(Input::EndpointUpsert(LocalEndpoint {
            namespace: "default".into(),
            pod_name: format!("iperf-server-{i}"),
            ..endpoint(i + 1, &local_ip(i).to_string(), LOCAL_IDENTITY)
        }));
    }
    // 30 identities over the 300 pods, as deployments share them.
    for k in 0..30 {
        let app = if k == 0 { "intruder" } else { "iperf-client" };
        inputs.push(remote(
            "c2",
            remote_identity(REMOTE_IDENTITY + k, &pod_labels(app, "c2", k)),
        ));
    }
    for i in 0..REMOTE_PODS {
        inputs.push(remote(
            "c2",
            RemoteEvent::IpUpsert(
                pair(
                    &remote_ip(i).to_string(),
                    "192.168.2.1",
                    REMOTE_IDENTITY + i % 30,
                )
                .into(),
            ),
        ));
    }
    let service: Service = serde_json::from_str(
        r#"{"metadata":{"name":"iperf-server","namespace":"default","annotations":{"service.cilium.io/global":"true"}},
            "spec":{"selector":{"app":"iperf-server"},"ports":[{"name":"iperf","port":5201,"protocol":"UDP"}],"clusterIP":"10.11.0.5"}}"#,
    )
    .unwrap();
    let backends: Backends = serde_json::from_str(&format!(
        r#"{{"{}":{{"iperf":{{"Protocol":"UDP","Port":5201}}}}}}"#,
        local_ip(0)
    ))
    .unwrap();
    inputs.extend([
        Input::ServiceUpsert {
            key: "default/iperf-server".into(),
            service: Box::new(service),
        },
        Input::BackendsUpsert {
            key: "default/iperf-server".into(),
            backends,
        },
        Input::ServicesSynced,
        Input::BackendsSynced,
        Input::MeshStatus {
            reachable: BTreeSet::from(["c2".to_string()]),
            all_ready: true,
        },
    ]);
    core.step_all(inputs);
    core
}

/// The events of UDP streams from c2's pods to the local pods (port 5201): per packet a trace
/// from the overlay and one to the endpoint, and the replies' traces; every 64th event a policy
/// verdict, every 256th a policy drop (of the intruder).
fn events(n: usize) -> Vec<MonitorEvent> {
    (0..n)
        .map(|k| {
            let remote_i = (k / 4) as u32 % REMOTE_PODS;
            let local_i = (k / 4) as u16 % LOCAL_PODS;
            let base = MonitorEvent {
                kind: EventKind::Trace(ObservationPoint::ToEndpoint),
                endpoint_id: local_i + 1,
                src_identity: REMOTE_IDENTITY + remote_i % 30,
                dst_identity: LOCAL_IDENTITY,
                saddr: remote_ip(remote_i),
                daddr: local_ip(local_i),
                sport: 40000 + (remote_i as u16),
                dport: 5201,
                protocol: 17,
                tcp_flags: 0,
                state: TraceState::Established,
                direction: None,
                ifindex: 9,
                len: 1470,
                flow: 0,
                ktime_ns: 0,
            };
            if k % 256 == 255 {
                return MonitorEvent {
                    kind: EventKind::Drop(DropReason::PolicyDenied),
                    src_identity: REMOTE_IDENTITY,
                    saddr: remote_ip(0),
                    direction: Some(Direction::Ingress),
                    state: TraceState::New,
                    ..base
                };
            }
            if k % 64 == 63 {
                return MonitorEvent {
                    kind: EventKind::PolicyVerdict(PolicyMatch::from_raw(2)),
                    direction: Some(Direction::Ingress),
                    state: TraceState::New,
                    ..base
                };
            }
            match k % 4 {
                0 => MonitorEvent {
                    kind: EventKind::Trace(ObservationPoint::FromOverlay),
                    endpoint_id: 0,
                    ..base
                },
                1 => base,
                2 => MonitorEvent {
                    kind: EventKind::Trace(ObservationPoint::FromEndpoint),
                    src_identity: LOCAL_IDENTITY,
                    dst_identity: base.src_identity,
                    saddr: base.daddr,
                    daddr: base.saddr,
                    sport: base.dport,
                    dport: base.sport,
                    state: TraceState::Reply,
                    ..base
                },
                _ => MonitorEvent {
                    kind: EventKind::Trace(ObservationPoint::ToOverlay),
                    endpoint_id: 0,
                    src_identity: LOCAL_IDENTITY,
                    dst_identity: base.src_identity,
                    saddr: base.daddr,
                    daddr: base.saddr,
                    sport: base.dport,
                    dport: base.sport,
                    state: TraceState::Reply,
                    ..base
                },
            }
        })
        .collect()
}

fn per_event(elapsed: Duration, n: usize) -> String {
    format!("{:.0} ns", elapsed.as_nanos() as f64 / n as f64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("PLEXUS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut core = core_with_mesh();
    let cell = Arc::new(SnapshotCell::default());
    let mut builder = SnapshotBuilder::new(cell.clone(), MaxConnectedClusters::Max255);
    let out = core.take_output();
    builder.update(&core, &out);
    let evs = events(n);
    let metrics = FlowMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let counter: Arc<dyn FlowCounter> = Arc::new(metrics.clone());
    let node = "c1/n1".to_string();

    println!(
        "flow pipeline per event ({n} events; {LOCAL_PODS} local pods, {REMOTE_PODS} remote pods, 5 labels each, a policy, a service)"
    );
    // Warm up (and check the snapshot answers: the flows name both pods).
    let sample = decode_event(&evs[1], cell.load().as_ref(), &node, Utc::now());
    assert!(!sample.source.pod_name.is_empty(), "{sample:?}");
    assert!(!sample.destination.pod_name.is_empty(), "{sample:?}");
    assert_eq!(sample.source.labels.len(), 5, "{sample:?}");

    let t0 = Instant::now();
    for ev in &evs {
        black_box(decode_event(ev, cell.load().as_ref(), &node, Utc::now()));
    }
    println!("  {:<48} {:>10}", "decode", per_event(t0.elapsed(), n));

    let t0 = Instant::now();
    for ev in &evs {
        let flow = decode_event(ev, cell.load().as_ref(), &node, Utc::now());
        counter.count(&flow);
        black_box(flow);
    }
    println!(
        "  {:<48} {:>10}",
        "decode + metrics",
        per_event(t0.elapsed(), n)
    );

    let ring = FlowRing::with_default_capacity(&node);
    let t0 = Instant::now();
    for ev in &evs {
        let flow = decode_event(ev, cell.load().as_ref(), &node, Utc::now());
        counter.count(&flow);
        ring.push(flow);
    }
    println!(
        "  {:<48} {:>10}",
        "decode + metrics + ring push",
        per_event(t0.elapsed(), n)
    );

    let datapath = Arc::new(FakeDatapath::new());
    let ring = Arc::new(FlowRing::with_default_capacity(&node));
    let task = FlowTask {
        events: plexus_datapath::Datapath::subscribe(datapath.as_ref()),
        datapath: datapath.clone(),
        ring: ring.clone(),
        node_name: node.clone(),
        counter: Some(counter.clone()),
        lost_poll: Duration::from_secs(1),
    };
    let task_cell = cell.clone();
    let handle = tokio::spawn(task.run(task_cell));
    const BURST: usize = 256;
    let t0 = Instant::now();
    for chunk in evs.chunks(BURST) {
        let target = ring.total_pushed() + chunk.len() as u64;
        for ev in chunk {
            datapath.emit(*ev);
        }
        while ring.total_pushed() < target {
            tokio::task::yield_now().await;
        }
    }
    println!(
        "  {:<48} {:>10}",
        format!("whole FlowTask (broadcast, bursts of {BURST})"),
        per_event(t0.elapsed(), n)
    );
    handle.abort();
    let text = plexus_metrics::encode(&registry, plexus_metrics::Format::Text).unwrap();
    assert!(text.contains("plexus_flows_processed_total"), "{text}");
}
