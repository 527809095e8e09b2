//! The web view, served on the apiserver's API (mutual TLS; browsers reach it through
//! `plexus ui`, a local proxy with the context's admin certificate).
//!
//! - `GET /ui`: one static page; `GET /ui/app.js`, `GET /ui/app.css`: its script and style
//!   (files under `crates/apiserver/ui/`, compiled in with `include_str!`; no build step, no
//!   external URL; the page's content security policy allows its own origin only);
//! - `GET /ui/api/mesh`: [`MeshView`], the clusters of the mesh as one agent of this cluster
//!   sees them (its `/v1/clustermesh` and `/v1/nodes`);
//! - `GET /ui/api/services`: [`ServicesView`], the services with their backends by cluster and
//!   state, as that agent balances them (its `/v1/services`);
//! - `GET /ui/api/request?flags=<JSON [[flag, value], ...]>`: the `FlowRequest` that
//!   `plexus observe` builds from those flags ([`plexus_flow::ObserveBuilder`]), so the page's
//!   filters mean what the CLI's mean; a bad flag is a 400 naming it.
//!
//! The page reads flows from the relay's `GET /v1/flows?request=...` (streaming) and its node
//! list from `GET /v1/relay/nodes`, on the same API.
//!
//! The agent asked is the first of the cluster's nodes (from the cluster's etcd,
//! `cilium/state/nodes/v1/<cluster>/`, at their `InternalIP` and the agents' API port) whose
//! agent answers; the apiserver presents its API certificate, which agents accept for reads.
//! When none answers, the endpoint answers 503 with every node's error, and the page says the
//! part is unavailable.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use plexus_agent_api::{
    ApiError, Client, ClusterMeshReport, Endpoint, ErrorBody, ErrorKind, NodeInfo, ServiceInfo,
};
use plexus_kvstore::KvBackend;
use plexus_model::keys::StateKind;
use plexus_model::node::Node;
use serde::{Deserialize, Serialize};

/// The page.
const INDEX_HTML: &str = include_str!("../ui/index.html");
/// Its script.
const APP_JS: &str = include_str!("../ui/app.js");
/// Its style.
const APP_CSS: &str = include_str!("../ui/app.css");

/// How long one agent may take to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the web view's endpoints need.
#[derive(Clone)]
pub struct UiState {
    cluster: String,
    kv: Arc<dyn KvBackend>,
    agent_port: u16,
    tls: plexus_tls_api::ClientTls,
}

impl UiState {
    /// The web view of `cluster`: its nodes listed from `kv`, their agents asked on
    /// `agent_port` with `tls` (the apiserver's API certificate as a client).
    pub fn new(
        cluster: &str,
        kv: Arc<dyn KvBackend>,
        agent_port: u16,
        tls: impl Into<plexus_tls_api::ClientTls>,
    ) -> Self {
        Self {
            cluster: cluster.to_string(),
            kv,
            agent_port,
            tls: tls.into(),
        }
    }
}

/// The web view's routes (merged into the API's router).
pub fn router(state: UiState) -> Router {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/ui/api/mesh", get(mesh))
        .route("/ui/api/services", get(services))
        .route("/ui/api/request", get(request))
        .with_state(Arc::new(state))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, kind: ErrorKind, message: String) -> Response {
    (status, axum::Json(ErrorBody::new(kind, message))).into_response()
}

/// The mesh as one agent of the cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MeshView {
    /// This cluster.
    pub cluster: String,
    /// The node whose agent answered.
    pub agent: String,
    /// Its view of the remote clusters: connection status and counts.
    pub clustermesh: ClusterMeshReport,
    /// Every node of every cluster it knows.
    pub nodes: Vec<NodeInfo>,
    /// Agents asked before it that did not answer, `node (address): error`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// The services as one agent of the cluster balances them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServicesView {
    /// This cluster.
    pub cluster: String,
    /// The node whose agent answered.
    pub agent: String,
    /// The services with their backends by cluster and state.
    pub services: Vec<ServiceInfo>,
    /// Agents asked before it that did not answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// The cluster's agents, `(node, address)`, by node name, from the cluster's etcd.
async fn agents(state: &UiState) -> Result<Vec<(String, String)>, String> {
    let prefix = StateKind::Nodes.state_prefix(&state.cluster);
    let listing = state.kv.list_prefix(&prefix).await.map_err(|e| {
        format!(
            "list the nodes of cluster {} ({prefix}): {e}",
            state.cluster
        )
    })?;
    let mut out = Vec::new();
    for kv in listing.kvs {
        let name = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key);
        // A node that does not decode or has no InternalIP has no agent to ask; the others
        // still serve the page.
        let Ok(node) = Node::from_json(name, &kv.value) else {
            continue;
        };
        if let Some(ip) = node.internal_ip() {
            out.push((
                node.name.clone(),
                std::net::SocketAddr::new(ip, state.agent_port).to_string(),
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Asks the cluster's agents in turn until one answers `call`: `(node, answer, errors of the
/// agents before it)`, or the 503 to send.
async fn ask_any<T, F, Fut>(state: &UiState, call: F) -> Result<(String, T, Vec<String>), Response>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let agents = agents(state)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable, e))?;
    if agents.is_empty() {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unavailable,
            format!(
                "cluster {} has no nodes with an InternalIP in its etcd",
                state.cluster
            ),
        ));
    }
    let mut errors = Vec::new();
    for (node, addr) in agents {
        let client = Client::new(Endpoint::Tls {
            addr: addr.clone(),
            config: state.tls.current(),
        })
        .with_timeout(AGENT_TIMEOUT);
        match call(client).await {
            Ok(v) => return Ok((node, v, errors)),
            Err(e) => errors.push(format!("{node} ({addr}): {e}")),
        }
    }
    Err(error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Unavailable,
        format!(
            "no agent of cluster {} answered: {}",
            state.cluster,
            errors.join("; ")
        ),
    ))
}

async fn mesh(State(state): State<Arc<UiState>>) -> Response {
    let answer = ask_any(&state, |c| async move {
        let report = c.clustermesh().await?;
        let nodes = c.nodes().await?;
        Ok((report, nodes))
    })
    .await;
    match answer {
        Ok((agent, (clustermesh, nodes), unreachable)) => axum::Json(MeshView {
            cluster: state.cluster.clone(),
            agent,
            clustermesh,
            nodes,
            unreachable,
        })
        .into_response(),
        Err(resp) => resp,
    }
}

async fn services(State(state): State<Arc<UiState>>) -> Response {
    match ask_any(&state, |c| async move { c.services().await }).await {
        Ok((agent, services, unreachable)) => axum::Json(ServicesView {
            cluster: state.cluster.clone(),
            agent,
            services,
            unreachable,
        })
        .into_response(),
        Err(resp) => resp,
    }
}

/// `?flags=<JSON array of [flag, value]>`.
#[derive(Deserialize)]
struct FlagsQuery {
    #[serde(default)]
    flags: String,
}

async fn request(Query(q): Query<FlagsQuery>) -> Response {
    let pairs: Vec<(String, String)> = if q.flags.is_empty() {
        Vec::new()
    } else {
        match serde_json::from_str(&q.flags) {
            Ok(p) => p,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::Invalid,
                    format!("flags: expected a JSON array of [flag, value] pairs: {e}"),
                );
            }
        }
    };
    match plexus_flow::ObserveBuilder::from_pairs(
        chrono::Utc::now(),
        pairs.iter().map(|(f, v)| (f.as_str(), v.as_str())),
    ) {
        Ok(req) => axum::Json(req).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, ErrorKind::Invalid, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_page_refers_to_its_own_files_only() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(scheme), "{name} refers to {scheme}");
            }
        }
        assert!(INDEX_HTML.contains("/ui/app.js") && INDEX_HTML.contains("/ui/app.css"));
    }
}
