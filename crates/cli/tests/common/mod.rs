//! What `plexus observe`'s and the web view's tests share: a cluster's certificates (a real
//! CA from `plexus_pki`), fake relay and agent servers on loopback with real mutual TLS
//! (`plexus_tls_api`) answering canned lines (`plexus_test_support::web_view`), the CLI's
//! configuration file, and running the `plexus` binary with a timeout.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use plexus_agent_api::tls::TlsFiles;
use plexus_flow::FlowRequest;
use plexus_pki::Ca;
use plexus_pki::cluster::ClusterPki;
use plexus_test_support::{free_port, web_view};

/// The requests a fake server received.
pub type Requests = Arc<Mutex<Vec<FlowRequest>>>;

/// A fake server; aborted on drop.
pub struct Server {
    /// `127.0.0.1:port`.
    pub addr: String,
    /// The flow requests it answered.
    pub requests: Requests,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Stops serving and waits until the port refuses connections (the TLS listener's
    /// acceptor ends a moment after the server task).
    pub async fn stop(self) {
        self.task.abort();
        let addr = self.addr.clone();
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The certificates of cluster1 under `<dir>/pki`: a CA, the admin and local identities.
pub fn cluster_pki(dir: &Path) -> ClusterPki {
    let pki = ClusterPki::new(dir.join("pki"), "cluster1");
    pki.install_ca(&Ca::generate("plexus-test-ca").unwrap())
        .unwrap();
    pki.ensure(&[], &[]).unwrap();
    pki
}

/// A server certificate of the cluster's CA for 127.0.0.1, named `name`.
pub fn server_files(pki: &ClusterPki, name: &str) -> TlsFiles {
    let (cert, key) = pki
        .ca()
        .unwrap()
        .issue_server(name, &[name], &["127.0.0.1".parse().unwrap()])
        .unwrap()
        .write_to(pki.dir(), name)
        .unwrap();
    TlsFiles {
        ca: pki.ca_cert(),
        cert,
        key,
    }
}

async fn flows(
    State(requests): State<Requests>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let req = match q.get("request").map(|j| FlowRequest::from_json(j)) {
        Some(Ok(r)) => r,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("request: {:?}", other.map(|r| r.map(drop))),
            )
                .into_response();
        }
    };
    let follow = req.follow;
    requests.lock().unwrap().push(req);
    let lines: Vec<Result<Bytes, Infallible>> = web_view::flow_lines()
        .into_iter()
        .map(|l| Ok(Bytes::from(l + "\n")))
        .collect();
    let stream = futures::stream::iter(lines);
    // A following reader gets the lines, then a stream that stays open, as a relay's does.
    let body = if follow {
        Body::from_stream(stream.chain(futures::stream::pending()))
    } else {
        Body::from_stream(stream)
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// The routes of a fake relay: `/v1/flows` (canned lines) and `/v1/relay/nodes`.
pub fn relay_routes(requests: Requests) -> axum::Router {
    axum::Router::new()
        .route("/v1/flows", get(flows))
        .route(
            "/v1/relay/nodes",
            get(|| async {
                axum::Json(serde_json::json!([
                    {"name": "cluster1/node1", "reachable": true},
                    {"name": "cluster1/node2", "reachable": true},
                    {"name": "cluster2/node1", "reachable": true},
                    {"name": "cluster2/node2", "reachable": false, "error": "connection refused"}
                ]))
            }),
        )
        .with_state(requests)
}

/// The routes of a fake agent: `/v1/clustermesh`, `/v1/nodes`, `/v1/services`, `/v1/flows`.
pub fn agent_routes(requests: Requests) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/clustermesh",
            get(|| async { axum::Json(web_view::clustermesh()) }),
        )
        .route("/v1/nodes", get(|| async { axum::Json(web_view::nodes()) }))
        .route(
            "/v1/services",
            get(|| async { axum::Json(web_view::services()) }),
        )
        .route("/v1/flows", get(flows))
        .with_state(requests)
}

/// Serves `router` on 127.0.0.1 (`port` 0: a free one) with mutual TLS under the cluster's
/// CA.
pub async fn serve(
    files: &TlsFiles,
    port: u16,
    router: axum::Router,
    requests: Requests,
) -> Server {
    let port = if port == 0 {
        free_port().unwrap()
    } else {
        port
    };
    let addr = format!("127.0.0.1:{port}");
    let task = plexus_tls_api::start(addr.parse().unwrap(), files, router, "cluster1")
        .await
        .unwrap();
    Server {
        addr,
        requests,
        task,
    }
}

/// Writes the CLI's configuration: context cluster1 with its certificates in `state_dir`, the
/// relay at `relay` and agents `(node, address)`.
pub fn write_config(path: &Path, state_dir: &Path, relay: &str, agents: &[(&str, &str)]) {
    let mut text = format!(
        "current-context: cluster1\ncontexts:\n- name: cluster1\n  cluster-id: 1\n  \
         state-dir: {}\n  etcd-endpoints: [https://127.0.0.1:1]\n  relay: {relay}\n  \
         clustermesh-dir: {}\n",
        state_dir.display(),
        state_dir.join("clustermesh").display()
    );
    if !agents.is_empty() {
        text.push_str("  agents:\n");
        for (node, addr) in agents {
            text.push_str(&format!("  - node: {node}\n    address: {addr}\n"));
        }
    }
    std::fs::write(path, text).unwrap();
}

/// What a run of `plexus` printed.
pub struct Run {
    /// Its exit code.
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

/// Runs `plexus --config <config> <args>` to its end (at most 30 s; killed after).
pub async fn plexus(config: &Path, args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
        .arg("--config")
        .arg(config)
        .args(args)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("plexus {args:?} did not end within 30s"))
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// The directory of test artifacts: `<target>/test-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
