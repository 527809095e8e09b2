//! The flow relay of two real apiservers (each with its own supervised etcd, one shared CA)
//! against small fake agents: real mutual TLS on loopback addresses, certificates of the
//! shared CA, `/v1/flows` answering canned lines. Cluster 1 has five nodes: two that answer,
//! one whose address nobody listens on, one whose stream breaks after its first line, one that
//! answers and then falls silent. Cluster 2 has one node, and its relay's configuration names
//! cluster 1 back (a loop, if relays asked each other without `scope=cluster`); cluster 3 is
//! configured but nobody listens.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use plexus_agent_api::{Client, Endpoint, RelayNode};
use plexus_apiserver::{ApiListen, ApiServer, ApiServerConfig, EtcdSource, RelayConfig};
use plexus_flow::{Flow, FlowRequest, FlowResponse, NodeState, ResponseKind};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, TlsFiles};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_pki::Ca;
use plexus_pki::cluster::ClusterPki;
use plexus_test_support::free_port;

/// The flows' times: `BASE` plus a number of milliseconds.
fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_796_644_800, 0).unwrap() + chrono::Duration::milliseconds(ms)
}

/// How a fake agent answers.
#[derive(Clone)]
struct FakeAgent {
    node: String,
    /// Its history: flows at these millisecond offsets.
    flows: Vec<i64>,
    /// Its stream breaks after its first line, unless the request resumes (`since` set).
    breaks: bool,
    /// It answers the head, then never a line.
    hangs: bool,
    /// `/v1/flows` calls received.
    calls: Arc<AtomicUsize>,
}

#[derive(serde::Deserialize)]
struct FlowsQuery {
    request: String,
}

fn flow_line(node: &str, ms: i64) -> FlowResponse {
    FlowResponse::flow(Flow {
        time: at(ms),
        node_name: node.to_string(),
        ..Flow::default()
    })
}

async fn fake_flows(State(agent): State<FakeAgent>, Query(q): Query<FlowsQuery>) -> Response {
    agent.calls.fetch_add(1, Ordering::SeqCst);
    if agent.hangs {
        return Response::new(Body::from_stream(futures::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >()));
    }
    let request = FlowRequest::from_json(&q.request).unwrap();
    let mut lines: Vec<FlowResponse> = agent
        .flows
        .iter()
        .map(|ms| flow_line(&agent.node, *ms))
        .collect();
    if let Some(n) = request.number {
        lines = lines.split_off(lines.len().saturating_sub(n as usize));
    }
    let resumed = request.since.is_some();
    if resumed {
        // A reconnection: what happened since the break.
        lines = vec![flow_line(&agent.node, 10)];
    }
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = lines
        .iter()
        .map(|l| Ok(format!("{}\n", l.to_json_line()).into_bytes()))
        .collect();
    let history = futures::stream::iter(chunks);
    if agent.breaks && !resumed {
        // The first line goes out (the server flushes while the body waits), then the
        // connection breaks.
        let broken = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::other("the fake agent breaks"))
        });
        return Response::new(Body::from_stream(history.take(1).chain(broken)));
    }
    if request.follow {
        return Response::new(Body::from_stream(history.chain(futures::stream::pending())));
    }
    Response::new(Body::from_stream(history))
}

/// Serves `agent` on `addr` with a certificate of `ca` for that address.
async fn start_fake_agent(
    ca: &Ca,
    ca_file: &Path,
    dir: &Path,
    addr: SocketAddr,
    agent: FakeAgent,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let name = agent.node.replace('/', "-");
    let (cert, key) = ca
        .issue_server(&name, &[&name], &[addr.ip()])
        .unwrap()
        .write_to(dir, &name)
        .unwrap();
    let files = plexus_agent_api::tls::TlsFiles {
        ca: ca_file.to_path_buf(),
        cert,
        key,
    };
    let router = Router::new()
        .route("/v1/healthz", get(|| async { axum::Json("ok") }))
        .route("/v1/flows", get(fake_flows))
        .with_state(agent);
    plexus_tls_api::start(addr, &files, router, "fake")
        .await
        .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Starts an apiserver of `name`/`id` with its API on `host:peer_port` (its etcd on
/// 127.0.0.1: the etcd certificate covers no other loopback address; the relay only takes the
/// host of a remote's etcd endpoint, which the clustermesh files give as `host`).
async fn start_apiserver(
    dir: &Path,
    ca: &Ca,
    name: &str,
    id: u32,
    host: &str,
    relay: RelayConfig,
    peer_port: u16,
) -> (ApiServer, Arc<dyn KvBackend>) {
    let state = dir.join(name);
    ClusterPki::new(state.join("pki"), name)
        .install_ca(ca)
        .unwrap();
    let etcd_port = free_port().unwrap();
    let cluster = ClusterInfo::new(name, id, MaxConnectedClusters::Max255).unwrap();
    let mut config = ApiServerConfig::new(
        cluster,
        state.clone(),
        EtcdSource::Local {
            client_listen: SocketAddr::new(ip("127.0.0.1"), etcd_port),
            peer_listen: SocketAddr::new(ip("127.0.0.1"), free_port().unwrap()),
            advertise: vec![],
        },
        SocketAddr::new(ip("127.0.0.1"), 0),
    );
    config.api = Some(ApiListen {
        addr: SocketAddr::new(ip(host), peer_port),
        tls: None,
    });
    config.relay = relay;
    let server = ApiServer::start(config).await.unwrap();
    let pki = state.join("pki");
    let admin: Arc<dyn KvBackend> = Arc::new(
        EtcdBackend::connect(
            EtcdConfig::new(vec![format!("https://127.0.0.1:{etcd_port}")]).with_tls(TlsFiles {
                ca_file: pki.join("ca.crt"),
                cert_file: pki.join("admin.crt"),
                key_file: pki.join("admin.key"),
            }),
        )
        .await
        .unwrap(),
    );
    (server, admin)
}

/// Publishes node `node` of `cluster` (id `id`) at `internal_ip`, as its agent would.
async fn publish_node(etcd: &Arc<dyn KvBackend>, cluster: &str, id: u32, node: &str, ip: &str) {
    let json = serde_json::json!({
        "Name": node, "Cluster": cluster, "ClusterID": id,
        "IPAddresses": [{"Type": "InternalIP", "IP": ip}],
    });
    etcd.put(
        &format!("cilium/state/nodes/v1/{cluster}/{node}"),
        serde_json::to_vec(&json).unwrap(),
        None,
    )
    .await
    .unwrap();
}

/// A clustermesh configuration file for `remote`, its etcd at `endpoint`.
fn mesh_file(dir: &Path, remote: &str, endpoint: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(remote),
        format!(
            "endpoints:\n- {endpoint}\ntrusted-ca-file: ca.crt\ncert-file: c.crt\nkey-file: c.key\n"
        ),
    )
    .unwrap();
}

/// Everything a relay answered, split in flows (`node@ms`) and status lines.
#[derive(Debug, Default)]
struct Answer {
    flows: Vec<String>,
    status: Vec<(NodeState, Vec<String>, String)>,
}

impl Answer {
    fn add(&mut self, line: FlowResponse) {
        match &line.kind {
            ResponseKind::Flow(f) => {
                let ms = (f.time - at(0)).num_milliseconds();
                self.flows.push(format!("{}@{ms}", f.node_name));
            }
            ResponseKind::NodeStatus(s) => {
                self.status
                    .push((s.state_change, s.node_names.clone(), s.message.clone()))
            }
            ResponseKind::LostEvents(_) => {}
        }
    }

    fn names(&self, state: NodeState) -> Vec<String> {
        let mut names: Vec<String> = self
            .status
            .iter()
            .filter(|(s, _, _)| *s == state)
            .flat_map(|(_, n, _)| n.clone())
            .collect();
        names.sort();
        names
    }
}

async fn read_all(client: &Client, request: &FlowRequest) -> Answer {
    let mut lines = client
        .lines::<FlowResponse>(&format!("/v1/flows?request={}", request.to_query_value()))
        .await
        .unwrap();
    let mut answer = Answer::default();
    while let Some(line) = lines.next().await {
        answer.add(line.unwrap());
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_merges_nodes_and_clusters_by_time_and_names_what_it_cannot_reach() {
    plexus_kvstore::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::generate("mesh-ca").unwrap();
    let certs = dir.path().join("fakes");
    std::fs::create_dir_all(&certs).unwrap();
    let agent_port = free_port().unwrap();
    let peer_port = free_port().unwrap();
    let relay_config = |mesh: &Path| RelayConfig {
        agent_port,
        peer_port,
        clustermesh_dir: Some(mesh.to_path_buf()),
        kvstoremesh_dir: None,
        connect_timeout: Duration::from_secs(2),
        retry_interval: Duration::from_millis(200),
        // Generous: in the follow test, cluster 2's history (held for its relay's window) must
        // reach cluster 1's merge within its (doubled) window to come out in order.
        follow_window: Duration::from_secs(1),
    };

    tokio::time::timeout(Duration::from_secs(150), async {
        let mesh1 = dir.path().join("mesh1");
        let mesh2 = dir.path().join("mesh2");
        let (c1, etcd1) = start_apiserver(
            dir.path(),
            &ca,
            "cluster1",
            1,
            "127.0.0.10",
            relay_config(&mesh1),
            peer_port,
        )
        .await;
        let (c2, etcd2) = start_apiserver(
            dir.path(),
            &ca,
            "cluster2",
            2,
            "127.0.0.20",
            relay_config(&mesh2),
            peer_port,
        )
        .await;
        mesh_file(&mesh1, "cluster2", "https://127.0.0.20:2379");
        mesh_file(&mesh1, "cluster3", "https://127.0.0.30:2379");
        // Cluster 2 names cluster 1 back: without scope=cluster the relays would ask each
        // other for ever.
        mesh_file(&mesh2, "cluster1", "https://127.0.0.10:2379");

        let ca_file = dir.path().join("cluster1/pki/ca.crt");
        let fake = |node: &str, flows: &[i64], breaks: bool| FakeAgent {
            node: node.to_string(),
            flows: flows.to_vec(),
            breaks,
            hangs: false,
            calls: Arc::new(AtomicUsize::new(0)),
        };
        let n1 = fake("cluster1/n1", &[1, 4, 7], false);
        let n2 = fake("cluster1/n2", &[2, 5, 8], false);
        let n4 = fake("cluster1/n4", &[3, 11], true);
        let n5 = FakeAgent {
            hangs: true,
            ..fake("cluster1/n5", &[], false)
        };
        let m1 = fake("cluster2/m1", &[6, 9], false);
        let mut servers = Vec::new();
        for (agent, host) in [
            (n1.clone(), "127.0.0.11"),
            (n2.clone(), "127.0.0.12"),
            (n4.clone(), "127.0.0.14"),
            (n5.clone(), "127.0.0.15"),
            (m1.clone(), "127.0.0.21"),
        ] {
            let addr = SocketAddr::new(ip(host), agent_port);
            servers.push(start_fake_agent(&ca, &ca_file, &certs, addr, agent).await);
        }
        publish_node(&etcd1, "cluster1", 1, "n1", "127.0.0.11").await;
        publish_node(&etcd1, "cluster1", 1, "n2", "127.0.0.12").await;
        // Nobody listens at n3's address.
        publish_node(&etcd1, "cluster1", 1, "n3", "127.0.0.13").await;
        publish_node(&etcd1, "cluster1", 1, "n4", "127.0.0.14").await;
        // n5 answers, then sends nothing: the history does not wait for it for ever.
        publish_node(&etcd1, "cluster1", 1, "n5", "127.0.0.15").await;
        publish_node(&etcd2, "cluster2", 2, "m1", "127.0.0.21").await;

        // A reader of the mesh's CA, as `plexus observe` is.
        let pki = dir.path().join("cluster1/pki");
        let config = plexus_agent_api::tls::client_config(
            &pki.join("ca.crt"),
            Some((&pki.join("local.crt"), &pki.join("local.key"))),
        )
        .unwrap();
        let relay = Client::new(Endpoint::Tls {
            addr: c1.api_addr().unwrap().to_string(),
            config,
        })
        .with_timeout(Duration::from_secs(10));

        // The node list: every node of both clusters once the relays' watches have them.
        let nodes = loop {
            let nodes: Vec<RelayNode> = relay.relay_nodes().await.unwrap();
            if nodes.len() == 7 {
                break nodes;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let summary: Vec<(String, String, bool)> = nodes
            .iter()
            .map(|n| (n.name.clone(), n.address.clone(), n.reachable))
            .collect();
        let a = |host: &str, port: u16| format!("{host}:{port}");
        assert_eq!(
            summary,
            vec![
                ("cluster1/n1".into(), a("127.0.0.11", agent_port), true),
                ("cluster1/n2".into(), a("127.0.0.12", agent_port), true),
                ("cluster1/n3".into(), a("127.0.0.13", agent_port), false),
                ("cluster1/n4".into(), a("127.0.0.14", agent_port), true),
                ("cluster1/n5".into(), a("127.0.0.15", agent_port), true),
                ("cluster2/m1".into(), a("127.0.0.21", agent_port), true),
                ("cluster3".into(), a("127.0.0.30", peer_port), false),
            ]
        );
        assert!(
            nodes[2].error.as_deref().unwrap().contains("127.0.0.13"),
            "{:?}",
            nodes[2]
        );

        // History: every flow once, in time order across nodes and clusters.
        let answer = read_all(&relay, &FlowRequest::default()).await;
        assert_eq!(
            answer.flows,
            [
                "cluster1/n1@1",
                "cluster1/n2@2",
                "cluster1/n4@3",
                "cluster1/n1@4",
                "cluster1/n2@5",
                "cluster2/m1@6",
                "cluster1/n1@7",
                "cluster1/n2@8",
                "cluster2/m1@9",
            ]
        );
        assert_eq!(
            answer.names(NodeState::Connected),
            [
                "cluster1/n1",
                "cluster1/n2",
                "cluster1/n4",
                "cluster1/n5",
                "cluster2/m1"
            ]
        );
        // n3 never answered, n4 broke mid-way, n5 fell silent, cluster 3's relay is not there.
        assert_eq!(
            answer.names(NodeState::Unavailable),
            ["cluster1/n3", "cluster1/n4", "cluster1/n5", "cluster3"]
        );
        for (state, names, message) in &answer.status {
            if *state == NodeState::Unavailable {
                assert!(!message.is_empty(), "{names:?} without a reason");
            }
        }
        // Cluster 2's relay was asked for its own cluster only: no node was asked twice.
        assert_eq!(n1.calls.load(Ordering::SeqCst), 1);
        assert_eq!(m1.calls.load(Ordering::SeqCst), 1);

        // The last N applies to the merged flows, not to each node.
        let last = FlowRequest {
            number: Some(4),
            ..FlowRequest::default()
        };
        let answer = read_all(&relay, &last).await;
        assert_eq!(
            answer.flows,
            [
                "cluster2/m1@6",
                "cluster1/n1@7",
                "cluster1/n2@8",
                "cluster2/m1@9"
            ]
        );

        // Following: the history, then the broken node is asked again and comes back.
        let follow = FlowRequest {
            follow: true,
            ..FlowRequest::default()
        };
        let mut lines = relay
            .lines::<FlowResponse>(&format!("/v1/flows?request={}", follow.to_query_value()))
            .await
            .unwrap();
        let mut answer = Answer::default();
        while !answer.flows.iter().any(|f| f == "cluster1/n4@10") {
            answer.add(lines.next().await.unwrap().unwrap());
        }
        assert_eq!(
            answer.flows,
            [
                "cluster1/n1@1",
                "cluster1/n2@2",
                "cluster1/n4@3",
                "cluster1/n1@4",
                "cluster1/n2@5",
                "cluster2/m1@6",
                "cluster1/n1@7",
                "cluster1/n2@8",
                "cluster2/m1@9",
                "cluster1/n4@10",
            ]
        );
        let connected: Vec<&(NodeState, Vec<String>, String)> = answer
            .status
            .iter()
            .filter(|(s, _, _)| *s == NodeState::Connected)
            .collect();
        assert_eq!(
            connected.last().unwrap().1,
            ["cluster1/n4"],
            "{:?}",
            answer.status
        );
        assert!(n4.calls.load(Ordering::SeqCst) >= 4);
        drop(lines);

        // A request the relay cannot read is refused once, naming the field.
        let err = relay
            .get_text("/v1/flows?request=%7B%22number%22%3A%22x%22%7D")
            .await
            .unwrap();
        assert_eq!(err.0, 400, "{}", err.1);
        assert!(err.1.contains("request"), "{}", err.1);

        for s in servers {
            s.abort();
        }
        c2.shutdown().await;
        c1.shutdown().await;
    })
    .await
    .unwrap();
}
