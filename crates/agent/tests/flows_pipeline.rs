//! The flow pipeline end to end, with the fake datapath: events emitted by the datapath are
//! decoded by the flow task into the ring, and `GET /v1/flows` (served on a unix socket,
//! read with `plexus_agent_api::Client::flows`) answers history with filters, follows new
//! flows, reports losses as `lost_events` (the task's lag as OBSERVER_EVENTS_QUEUE, the
//! datapath's lost-event counter as PERF_EVENT_RING_BUFFER), counts the flow metrics, refuses a bad
//! filter naming the field, and says unavailable when flows are off.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use plexus_agent::flows::{EndpointMeta, FakeLookup, FlowTask, IdentityMeta, IpMeta};
use plexus_agent::metrics::FlowMetrics;
use plexus_agent_api::{Client, Endpoint, ErrorKind};
use plexus_datapath::{
    Datapath, DropReason, EventKind, FakeDatapath, MonitorEvent, ObservationPoint, TraceState,
};
use plexus_flow::{
    FlowFilter, FlowRequest, FlowResponse, FlowRing, LostEventSource, ResponseKind, Verdict,
};
use plexus_metrics::prometheus_client::registry::Registry;

const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {LIMIT:?}"))
}

const REBEL_BASE: u32 = 65_836;
const X_WING: u32 = 131_372;

/// c1/n1 with endpoint 42 (default/rebel-base-1, 10.1.0.5) and c2's x-wing (10.2.0.7).
fn lookup() -> FakeLookup {
    let mut l = FakeLookup::default();
    l.endpoints.insert(
        42,
        EndpointMeta {
            ip: Some("10.1.0.5".parse().unwrap()),
            identity: REBEL_BASE,
            namespace: "default".into(),
            pod_name: "rebel-base-1".into(),
        },
    );
    l.ips.insert(
        "10.2.0.7".parse().unwrap(),
        IpMeta {
            identity: X_WING,
            cluster: "c2".into(),
            namespace: "default".into(),
            pod_name: "x-wing".into(),
        },
    );
    for (id, app, cluster) in [(REBEL_BASE, "rebel-base", "c1"), (X_WING, "x-wing", "c2")] {
        l.identities.insert(
            id,
            IdentityMeta {
                labels: vec![
                    format!("k8s:app={app}"),
                    format!("k8s:io.cilium.k8s.policy.cluster={cluster}"),
                    "k8s:io.kubernetes.pod.namespace=default".into(),
                ],
                cluster: cluster.into(),
            },
        );
    }
    l
}

fn event(kind: EventKind, saddr: &str, daddr: &str, dport: u16) -> MonitorEvent {
    let (src, dst) = if saddr == "10.2.0.7" {
        (X_WING, REBEL_BASE)
    } else {
        (REBEL_BASE, X_WING)
    };
    MonitorEvent {
        endpoint_id: 42,
        src_identity: src,
        dst_identity: dst,
        saddr: saddr.parse().unwrap(),
        daddr: daddr.parse().unwrap(),
        sport: 41234,
        dport,
        protocol: 6,
        tcp_flags: 0x02,
        // As the datapath reports them: drops without a connection state.
        state: if matches!(kind, EventKind::Drop(_)) {
            TraceState::Unknown
        } else {
            TraceState::New
        },
        direction: None,
        ifindex: 0,
        len: 74,
        flow: 0,
        ktime_ns: 0,
        kind,
    }
}

/// x-wing's SYN to rebel-base:80, dropped by policy at endpoint 42.
fn denied() -> MonitorEvent {
    event(
        EventKind::Drop(DropReason::PolicyDenied),
        "10.2.0.7",
        "10.1.0.5",
        80,
    )
}

/// rebel-base's SYN to x-wing:`dport`, leaving the endpoint.
fn outgoing(dport: u16) -> MonitorEvent {
    event(
        EventKind::Trace(ObservationPoint::FromEndpoint),
        "10.1.0.5",
        "10.2.0.7",
        dport,
    )
}

struct Pipeline {
    datapath: Arc<FakeDatapath>,
    ring: Arc<FlowRing>,
    client: Client,
    metrics: Registry,
    _dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The flow task over the fake datapath and `/v1/flows` on a unix socket (`None`: flows off).
async fn pipeline(flows_on: bool) -> Pipeline {
    let datapath = Arc::new(FakeDatapath::new());
    let ring = Arc::new(FlowRing::new(8192, "c1/n1"));
    let lookup = Arc::new(lookup());
    let flow_metrics = FlowMetrics::default();
    let mut metrics = Registry::default();
    flow_metrics.register(&mut metrics);
    let task = FlowTask {
        events: datapath.subscribe(),
        datapath: datapath.clone(),
        ring: ring.clone(),
        node_name: "c1/n1".into(),
        counter: Some(Arc::new(flow_metrics.clone())),
        lost_poll: Duration::from_millis(20),
    };
    let mut tasks = vec![tokio::spawn(task.run_with(move || lookup.clone()))];
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let app = plexus_agent::flows::api::router(flows_on.then(|| ring.clone()));
    tasks.push(tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    }));
    Pipeline {
        datapath,
        ring,
        client: Client::new(Endpoint::Unix(socket)).with_timeout(LIMIT),
        metrics,
        _dir: dir,
        tasks,
    }
}

/// Waits until the task pushed `n` flows in all.
async fn pushed(ring: &FlowRing, n: u64) {
    within("flows pushed into the ring", async {
        while ring.total_pushed() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

async fn history(client: &Client, request: &FlowRequest) -> Vec<FlowResponse> {
    within("flow history", async {
        let mut lines = client.flows(request).await.unwrap();
        let mut out = Vec::new();
        while let Some(line) = lines.next().await {
            out.push(line.unwrap());
        }
        out
    })
    .await
}

fn filter(f: impl FnOnce(&mut FlowFilter)) -> FlowFilter {
    let mut out = FlowFilter::default();
    f(&mut out);
    out
}

#[tokio::test]
async fn history_with_filters_reads_the_decoded_flows() {
    let p = pipeline(true).await;
    p.datapath.emit(outgoing(80));
    p.datapath.emit(denied());
    p.datapath.emit(outgoing(443));
    pushed(&p.ring, 3).await;

    let all = history(&p.client, &FlowRequest::default()).await;
    assert_eq!(all.len(), 3);
    // The task counted them into the flow metrics.
    let text = plexus_metrics::encode(&p.metrics, plexus_metrics::Format::Text).unwrap();
    for line in [
        r#"plexus_flows_processed_total{type="Trace",verdict="FORWARDED"} 2"#,
        r#"plexus_drop_total{reason="POLICY_DENIED",direction="INGRESS",source_cluster="c2",destination_cluster="c1"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }

    // Drops from cluster c2: the one policy drop, as a full JSON line.
    let drops = history(
        &p.client,
        &FlowRequest {
            whitelist: vec![filter(|f| {
                f.verdict = vec![Verdict::Dropped];
                f.source_cluster_name = vec!["c2".into()];
            })],
            ..FlowRequest::default()
        },
    )
    .await;
    assert_eq!(drops.len(), 1);
    // The time is the wall clock of the event: checked, then fixed for the literal line.
    let mut line: serde_json::Value = serde_json::from_str(&drops[0].to_json_line()).unwrap();
    let time = line["time"].as_str().unwrap().to_string();
    assert_eq!(line["flow"]["time"].as_str().unwrap(), time);
    assert!(plexus_flow::flow::timestamp::parse(&time).is_ok(), "{time}");
    line["time"] = "2026-12-07T12:00:01.123456789Z".into();
    line["flow"]["time"] = "2026-12-07T12:00:01.123456789Z".into();
    let expected: serde_json::Value = serde_json::from_str(concat!(
        r#"{"flow":{"time":"2026-12-07T12:00:01.123456789Z","verdict":"DROPPED","drop_reason":133,"#,
        r#""IP":{"source":"10.2.0.7","destination":"10.1.0.5","ipVersion":"IPv4"},"#,
        r#""l4":{"TCP":{"source_port":41234,"destination_port":80,"flags":{"SYN":true}}},"#,
        r#""source":{"identity":131372,"cluster_name":"c2","namespace":"default","#,
        r#""labels":["k8s:app=x-wing","k8s:io.cilium.k8s.policy.cluster=c2","k8s:io.kubernetes.pod.namespace=default"],"pod_name":"x-wing"},"#,
        r#""destination":{"ID":42,"identity":65836,"cluster_name":"c1","namespace":"default","#,
        r#""labels":["k8s:app=rebel-base","k8s:io.cilium.k8s.policy.cluster=c1","k8s:io.kubernetes.pod.namespace=default"],"pod_name":"rebel-base-1"},"#,
        r#""Type":"L3_L4","node_name":"c1/n1","event_type":{"type":1,"sub_type":133},"#,
        r#""traffic_direction":"INGRESS","drop_reason_desc":"POLICY_DENIED","#,
        r#""Summary":"TCP Flags: SYN","drop_reason_text":"Policy denied"},"#,
        r#""node_name":"c1/n1","time":"2026-12-07T12:00:01.123456789Z"}"#,
    ))
    .unwrap();
    assert_eq!(line, expected);

    // Last 1 of the traces to port 443, by pod and destination port.
    let last = history(
        &p.client,
        &FlowRequest {
            whitelist: vec![filter(|f| {
                f.source_pod = vec!["default/rebel-base".into()];
                f.destination_port = vec!["443".into()];
            })],
            number: Some(1),
            ..FlowRequest::default()
        },
    )
    .await;
    let flow = last[0].as_flow().unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(flow.l4.as_ref().unwrap().ports(), Some((41234, 443)));

    // The blacklist takes the drop away.
    let forwarded = history(
        &p.client,
        &FlowRequest {
            blacklist: vec![filter(|f| f.verdict = vec![Verdict::Dropped])],
            ..FlowRequest::default()
        },
    )
    .await;
    assert_eq!(forwarded.len(), 2);
}

#[tokio::test]
async fn follow_streams_new_flows_and_reports_the_tasks_losses() {
    let p = pipeline(true).await;
    p.datapath.emit(outgoing(80));
    pushed(&p.ring, 1).await;

    let request = FlowRequest {
        whitelist: vec![filter(|f| f.verdict = vec![Verdict::Forwarded])],
        follow: true,
        ..FlowRequest::default()
    };
    let mut lines = within("follow", p.client.flows(&request)).await.unwrap();
    // Following without number or since: no history; what comes next is new.
    within("the follower subscribed", async {
        while p.ring.followers() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    p.datapath.emit(denied());
    p.datapath.emit(outgoing(8080));
    let next = within("a followed flow", lines.next())
        .await
        .unwrap()
        .unwrap();
    let flow = next.as_flow().expect("a flow line");
    assert_eq!(flow.l4.as_ref().unwrap().ports(), Some((41234, 8080)));
    pushed(&p.ring, 3).await;

    // Flood the datapath's channel (4096 events) while the task cannot run (one thread, no
    // await): it lags by what the channel could not hold (the flood and the last trace, less
    // 4096), and the followers hear how many events it lost before the flows that follow.
    let flood = plexus_datapath::EVENT_CHANNEL_CAPACITY + 904;
    for _ in 0..flood {
        p.datapath.emit(denied());
    }
    p.datapath.emit(outgoing(9090));
    let lost = within("the lost events line", lines.next())
        .await
        .unwrap()
        .unwrap();
    match &lost.kind {
        ResponseKind::LostEvents(l) => {
            assert_eq!(l.source, LostEventSource::ObserverEventsQueue);
            assert_eq!(l.num_events_lost, 905);
        }
        other => panic!("expected lost events, got {other:?}"),
    }
    assert_eq!(lost.node_name, "c1/n1");
    let next = within("the flow after the loss", lines.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next.as_flow().unwrap().l4.as_ref().unwrap().ports(),
        Some((41234, 9090))
    );

    // The BPF programs lose 7 events to a full ring buffer: the datapath's counter says so.
    p.datapath.lose_events(7);
    let lost = within("the ring buffer's lost events", lines.next())
        .await
        .unwrap()
        .unwrap();
    match &lost.kind {
        ResponseKind::LostEvents(l) => {
            assert_eq!(l.source, LostEventSource::PerfEventRingBuffer);
            assert_eq!(l.num_events_lost, 7);
        }
        other => panic!("expected lost events, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_filter_is_invalid_naming_the_field_and_flows_off_is_unavailable() {
    let p = pipeline(true).await;
    let bad = FlowRequest {
        whitelist: vec![
            FlowFilter::default(),
            filter(|f| f.source_ip = vec!["10.0.0.0/33".into()]),
        ],
        ..FlowRequest::default()
    };
    let err = within("a bad request", p.client.flows(&bad))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), Some(ErrorKind::Invalid));
    assert!(err.to_string().contains("whitelist[1].source_ip"), "{err}");
    let not_json = within(
        "a request that is not JSON",
        p.client.lines::<FlowResponse>("/v1/flows?request=%7Bnope"),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(not_json.kind(), Some(ErrorKind::Invalid));
    assert!(not_json.to_string().contains("request"), "{not_json}");

    let off = pipeline(false).await;
    let err = within("flows off", off.client.flows(&FlowRequest::default()))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), Some(ErrorKind::Unavailable));
    assert!(err.to_string().contains("enable-flows"), "{err}");
}

#[tokio::test]
async fn the_tls_api_serves_flows_to_a_read_only_certificate() {
    within("flows over mutual TLS", async {
        let p = pipeline(true).await;
        p.datapath.emit(denied());
        pushed(&p.ring, 1).await;

        plexus_kvstore::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = plexus_pki::Ca::generate("plexus-ca").unwrap();
        ca.pem().write_to(d, "ca").unwrap();
        let (cert, key) = ca
            .issue_server("agent-n1", &[], &["127.0.0.1".parse().unwrap()])
            .unwrap()
            .write_to(d, "server")
            .unwrap();
        // The relay's certificate: of the cluster's CA, not its admin, so read-only.
        let (rcert, rkey) = ca
            .issue_client("apiserver-c1")
            .unwrap()
            .write_to(d, "relay")
            .unwrap();
        let config = plexus_agent_api::tls::server_config(&plexus_agent_api::tls::TlsFiles {
            ca: d.join("ca.crt"),
            cert,
            key,
        })
        .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap().to_string();
        let listener = plexus_tls_api::TlsListener::new(tcp, config).unwrap();
        let router = plexus_agent::flows::api::router(Some(p.ring.clone()));
        let server = tokio::spawn(plexus_tls_api::serve(listener, router, "c1"));

        let config =
            plexus_agent_api::tls::client_config(&d.join("ca.crt"), Some((&rcert, &rkey))).unwrap();
        let client = Client::new(Endpoint::Tls { addr, config }).with_timeout(LIMIT);
        let lines = history(&client, &FlowRequest::default()).await;
        server.abort();
        assert_eq!(lines.len(), 1);
        let flow = lines[0].as_flow().unwrap();
        assert_eq!(flow.source.pod_name, "x-wing");
        assert_eq!(flow.verdict, Verdict::Dropped);
    })
    .await;
}
