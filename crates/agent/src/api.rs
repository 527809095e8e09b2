//! The agent's API on its unix socket (HTTP/1.1, JSON), for the CLI and the CNI plugin.
//! Paths and types: `plexus_agent_api`'s crate documentation.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use plexus_agent_api::{
    ClusterMeshReport, Empty, EndpointRequest, EndpointResponse, IpamRequest, IpamResponse,
    MeshReport,
};
use plexus_datapath::EventKind;
use serde::{Deserialize, Serialize};

use crate::Agent;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn internal(err: anyhow::Error) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
}

/// The router.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/healthz", get(|| async { axum::Json("ok") }))
        .route("/v1/status", get(status))
        .route("/v1/clustermesh", get(clustermesh))
        .route("/v1/remote-nodes", get(remote_nodes))
        .route("/v1/nodes", get(nodes))
        .route("/v1/identities", get(identities))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/endpoints/{id}", get(endpoint_detail))
        .route("/v1/policy", get(policy_get))
        .route("/v1/bpf/ipcache", get(bpf_ipcache))
        .route("/v1/bpf/lb", get(bpf_lb))
        .route("/v1/services", get(services))
        .route("/v1/monitor", get(monitor))
        .route("/v1/ipam", post(ipam))
        .route("/v1/endpoint", put(endpoint_put))
        .route(
            "/v1/endpoint/{id}",
            get(endpoint_get).delete(endpoint_delete),
        )
        .route("/metrics", get(metrics))
        .with_state(agent)
}

/// What `status` shows.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentStatus {
    /// Cluster.
    pub cluster: String,
    /// Cluster id.
    pub cluster_id: u32,
    /// Node.
    pub node: String,
    /// Underlay address.
    pub node_ip: String,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// `tunnel` or `native`.
    pub routing: String,
    /// `ebpf` or `fake`.
    pub datapath: String,
    /// Local endpoints.
    pub endpoints: usize,
    /// Remote clusters: configured / ready.
    pub remote_clusters: (usize, usize),
}

async fn status(State(agent): State<Arc<Agent>>) -> axum::Json<AgentStatus> {
    let mesh = agent.mesh.status();
    axum::Json(AgentStatus {
        cluster: agent.cluster.name.clone(),
        cluster_id: agent.cluster.id,
        node: agent.node.clone(),
        node_ip: agent.node_ip.to_string(),
        pod_cidr: agent.pod_cidr.clone(),
        routing: agent.routing.clone(),
        datapath: agent.datapath_kind.clone(),
        endpoints: agent.endpoints.list().await.len(),
        remote_clusters: (
            mesh.remotes.len(),
            mesh.remotes.values().filter(|r| r.protocol.ready).count(),
        ),
    })
}

async fn clustermesh(State(agent): State<Arc<Agent>>) -> axum::Json<ClusterMeshReport> {
    axum::Json(ClusterMeshReport {
        node: agent.node.clone(),
        cluster: agent.cluster.name.clone(),
        mesh: MeshReport::from(&agent.mesh.status()),
    })
}

async fn remote_nodes(
    State(agent): State<Arc<Agent>>,
) -> axum::Json<std::collections::BTreeMap<String, Vec<String>>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for n in agent.core.read(crate::reports::nodes) {
        if n.cluster != agent.cluster.name {
            out.entry(n.cluster).or_default().push(n.name);
        }
    }
    axum::Json(out)
}

async fn nodes(State(agent): State<Arc<Agent>>) -> axum::Json<Vec<crate::reports::NodeInfo>> {
    axum::Json(agent.core.read(crate::reports::nodes))
}

async fn identities(
    State(agent): State<Arc<Agent>>,
) -> axum::Json<Vec<crate::reports::IdentityInfo>> {
    axum::Json(agent.core.read(crate::reports::identities))
}

async fn services(
    State(agent): State<Arc<Agent>>,
) -> axum::Json<Vec<crate::reports::ServiceReport>> {
    axum::Json(agent.core.read(crate::reports::services))
}

async fn endpoints(
    State(agent): State<Arc<Agent>>,
) -> axum::Json<Vec<crate::endpoints::EndpointState>> {
    axum::Json(agent.endpoints.list().await)
}

/// What `endpoint get` shows.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointDetail {
    /// The endpoint.
    pub endpoint: crate::endpoints::EndpointState,
    /// Its identity's labels.
    pub identity_labels: Option<String>,
    /// Its resolved policy.
    pub policy: crate::reports::EndpointPolicyReport,
}

/// An endpoint by id, pod name or `namespace/pod`.
async fn endpoint_detail(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<axum::Json<EndpointDetail>, ApiError> {
    let all = agent.endpoints.list().await;
    let found = all.into_iter().find(|e| {
        e.id.to_string() == id || e.pod == id || format!("{}/{}", e.namespace, e.pod) == id
    });
    let Some(endpoint) = found else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no endpoint {id} on node {}", agent.node),
        ));
    };
    let (identity_labels, policy) = agent.core.read(|core| {
        (
            crate::reports::identity_labels(core, endpoint.identity),
            crate::reports::endpoint_policy(core, endpoint.id),
        )
    });
    Ok(axum::Json(EndpointDetail {
        identity_labels,
        policy,
        endpoint,
    }))
}

async fn policy_get(
    State(agent): State<Arc<Agent>>,
) -> axum::Json<Vec<crate::reports::PolicyReport>> {
    axum::Json(agent.core.read(crate::reports::policies))
}

/// One row of `bpf ipcache list`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IpcacheRow {
    /// Prefix.
    pub prefix: String,
    /// Identity.
    pub identity: u32,
    /// Tunnel endpoint.
    pub tunnel_endpoint: Option<String>,
    /// Cluster id.
    pub cluster_id: u16,
}

async fn bpf_ipcache(
    State(agent): State<Arc<Agent>>,
) -> Result<axum::Json<Vec<IpcacheRow>>, ApiError> {
    let rows = agent
        .datapath
        .ipcache()
        .map_err(|e| internal(e.into()))?
        .into_iter()
        .map(|(p, v)| IpcacheRow {
            prefix: p.to_string(),
            identity: v.identity,
            tunnel_endpoint: v.tunnel_endpoint.map(|t| t.to_string()),
            cluster_id: v.cluster_id,
        })
        .collect();
    Ok(axum::Json(rows))
}

/// One frontend of `bpf lb list`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LbRow {
    /// `address:port/PROTO`.
    pub frontend: String,
    /// Backends taking new connections, in slot order.
    pub active: Vec<String>,
    /// Backends keeping their established connections only.
    pub inactive: Vec<String>,
}

async fn bpf_lb(State(agent): State<Arc<Agent>>) -> Result<axum::Json<Vec<LbRow>>, ApiError> {
    let rows = agent
        .datapath
        .services()
        .map_err(|e| internal(e.into()))?
        .into_iter()
        .map(|s| LbRow {
            frontend: s.frontend.to_string(),
            active: s.active.iter().map(ToString::to_string).collect(),
            inactive: s.inactive.iter().map(ToString::to_string).collect(),
        })
        .collect();
    Ok(axum::Json(rows))
}

#[derive(Deserialize)]
struct MonitorQuery {
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// Streams one line per event (`?type=drop|trace` filters).
async fn monitor(State(agent): State<Arc<Agent>>, Query(q): Query<MonitorQuery>) -> Response {
    let rx = agent.datapath.subscribe();
    let filter = q.kind.unwrap_or_default();
    let stream = futures::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let keep = match filter.as_str() {
                        "drop" => matches!(ev.kind, EventKind::Drop(_)),
                        "trace" => matches!(ev.kind, EventKind::Trace(_)),
                        _ => true,
                    };
                    if keep {
                        let line = format!("{ev}\n");
                        return Some((Ok::<_, std::io::Error>(line), (rx, filter)));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let line = format!("(lost {n} events)\n");
                    return Some((Ok(line), (rx, filter)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::new(Body::from_stream(stream))
}

async fn ipam(
    State(agent): State<Arc<Agent>>,
    axum::Json(req): axum::Json<IpamRequest>,
) -> Result<axum::Json<IpamResponse>, ApiError> {
    agent
        .endpoints
        .ipam(&req.owner)
        .await
        .map(axum::Json)
        .map_err(internal)
}

async fn endpoint_put(
    State(agent): State<Arc<Agent>>,
    axum::Json(req): axum::Json<EndpointRequest>,
) -> Result<axum::Json<EndpointResponse>, ApiError> {
    agent
        .endpoints
        .put(req)
        .await
        .map(axum::Json)
        .map_err(internal)
}

async fn endpoint_get(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<axum::Json<EndpointResponse>, ApiError> {
    match agent.endpoints.get(&id).await {
        Some(ep) => Ok(axum::Json(EndpointResponse {
            id: ep.id,
            identity: ep.identity,
            ip: ep.ip,
            host_ifname: ep.host_ifname,
        })),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("endpoint {id} not found"),
        )),
    }
}

async fn endpoint_delete(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Empty>, ApiError> {
    agent.endpoints.delete(&id).await.map_err(internal)?;
    Ok(axum::Json(Empty {}))
}

/// Prometheus text: the remote clusters and the kvstore operations of the local connection.
pub async fn metrics(State(agent): State<Arc<Agent>>) -> String {
    let mut out = plexus_clustermesh::metrics::render(&agent.cluster.name, &agent.mesh.status());
    out.push_str(&agent.kv.render("local"));
    out
}
