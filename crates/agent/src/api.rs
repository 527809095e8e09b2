//! The agent's API on its unix socket (HTTP/1.1, JSON), for the CLI and the CNI plugin.
//! Paths and types: `plexus_agent_api`'s crate documentation.
//!
//! The handlers answer with `plexus_agent_api`'s types only; the conversions from the agent's
//! own structures live at the bottom of this module, so the agent's internals can change
//! without changing what its clients read.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use plexus_agent_api::{
    AgentStatus, ClusterMeshReport, DnsProxyStats, DnsProxyStatus, Empty, EncryptionMode,
    EncryptionReport, EncryptionSummary, EndpointDetail, EndpointInfo, EndpointRequest,
    EndpointResponse, ErrorBody, ErrorKind, FqdnCacheEntry, IdentityInfo, IpamRequest,
    IpamResponse, IpcacheRow, LbRow, MeshReport, MonitorFilter, MonitorMessage, NodeInfo,
    PolicyInfo, PolicyTrace, RotateKeyReport, ServiceInfo, TraceQuery, monitor,
};
use plexus_metrics::Format;
use serde::Deserialize;

use crate::Agent;

/// A failed call, answered as `plexus_agent_api`'s [`ErrorBody`].
pub struct ApiError(ErrorBody);

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(ErrorBody::new(kind, message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.0)).into_response()
    }
}

fn internal(err: anyhow::Error) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("{err:#}"))
}

/// A request body that is not the expected JSON.
fn invalid(rejection: JsonRejection) -> ApiError {
    ApiError::new(ErrorKind::Invalid, rejection.body_text())
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
        .route("/v1/policy/trace", get(policy_trace))
        .route("/v1/fqdn/cache", get(fqdn_cache))
        .route("/v1/bpf/ipcache", get(bpf_ipcache))
        .route("/v1/bpf/lb", get(bpf_lb))
        .route("/v1/services", get(services))
        .route("/v1/monitor", get(monitor))
        .route("/v1/flows", get(flows))
        .route("/v1/encryption", get(encryption))
        .route("/v1/encryption/rotate-key", post(rotate_key))
        .route("/v1/ipam", post(ipam))
        .route("/v1/endpoint", put(endpoint_put))
        .route(
            "/v1/endpoint/{id}",
            get(endpoint_get).delete(endpoint_delete),
        )
        .route("/metrics", get(metrics))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::new(ErrorKind::NotFound, format!("no API path {uri}"))
        })
        .with_state(agent)
}

async fn status(State(agent): State<Arc<Agent>>) -> axum::Json<AgentStatus> {
    let mesh = agent.mesh_status();
    // The fill is read (a walk of the maps' keys) only when a map is full, to name it.
    let warnings = if agent.maps.full().is_empty() {
        Vec::new()
    } else {
        let datapath = agent.datapath.clone();
        let usage = tokio::task::spawn_blocking(move || datapath.map_usage())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        agent.maps.warnings(&usage)
    };
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
        encryption: match &agent.wireguard {
            None => EncryptionSummary::default(),
            Some(wg) => {
                let status = wg.status();
                EncryptionSummary {
                    mode: EncryptionMode::Wireguard,
                    peers: status.peers,
                    device_reachable: status.reachable,
                }
            }
        },
        warnings,
        dns_proxy: agent.dns.as_ref().map(|dns| dns_proxy_status(dns.status())),
    })
}

/// `GET /v1/fqdn/cache`: what the node's DNS proxy learned for `toFQDNs` policy.
async fn fqdn_cache(
    State(agent): State<Arc<Agent>>,
) -> Result<axum::Json<Vec<FqdnCacheEntry>>, ApiError> {
    let Some(dns) = &agent.dns else {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            format!(
                "node {} has no DNS proxy (datapath {}: toFQDNs policy needs the eBPF datapath)",
                agent.node, agent.datapath_kind
            ),
        ));
    };
    Ok(axum::Json(
        dns.cache().into_iter().map(fqdn_cache_entry).collect(),
    ))
}

/// The node's encryption: its key, its device's live state and peers (one UAPI `get`).
async fn encryption(
    State(agent): State<Arc<Agent>>,
) -> Result<axum::Json<EncryptionReport>, ApiError> {
    let base = EncryptionReport {
        node: agent.node.clone(),
        cluster: agent.cluster.name.clone(),
        node_ip: agent.node_ip.to_string(),
        mode: EncryptionMode::Disabled,
        strict: false,
        public_key: None,
        port: None,
        socket: None,
        device_reachable: false,
        device_error: None,
        last_synced: None,
        peers: Vec::new(),
    };
    let Some(wg) = agent.wireguard.clone() else {
        return Ok(axum::Json(base));
    };
    let live = {
        let wg = wg.clone();
        tokio::task::spawn_blocking(move || wg.device_info())
            .await
            .map_err(|e| internal(e.into()))?
    };
    Ok(axum::Json(crate::reports::encryption(base, &wg, live)))
}

/// A new WireGuard key for this node: set on the device, then published.
async fn rotate_key(
    State(agent): State<Arc<Agent>>,
) -> Result<axum::Json<RotateKeyReport>, ApiError> {
    let Some(wg) = agent.wireguard.clone() else {
        return Err(ApiError::new(
            ErrorKind::Invalid,
            format!(
                "encryption is disabled on node {} (enable-wireguard is off)",
                agent.node
            ),
        ));
    };
    let old = wg.public_key();
    let rotated = {
        let wg = wg.clone();
        tokio::task::spawn_blocking(move || wg.rotate_key(ROTATE_WAIT))
            .await
            .map_err(|e| internal(e.into()))?
    };
    let (device_updated, device_error) = match &rotated {
        Ok(_) => (true, None),
        Err(e) => (false, Some(e.clone())),
    };
    if wg.public_key() == old {
        // The key file could not be replaced: nothing changed.
        return Err(ApiError::new(
            ErrorKind::Internal,
            device_error.unwrap_or_else(|| "the key did not change".into()),
        ));
    }
    Ok(axum::Json(RotateKeyReport {
        node: agent.node.clone(),
        old_public_key: old.to_string(),
        public_key: wg.public_key().to_string(),
        device_updated,
        device_error,
    }))
}

/// How long a key rotation waits for the device to take the new key.
const ROTATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn clustermesh(State(agent): State<Arc<Agent>>) -> axum::Json<ClusterMeshReport> {
    axum::Json(ClusterMeshReport {
        node: agent.node.clone(),
        cluster: agent.cluster.name.clone(),
        mesh: MeshReport::from(&agent.mesh_status()),
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

async fn nodes(State(agent): State<Arc<Agent>>) -> axum::Json<Vec<NodeInfo>> {
    axum::Json(agent.core.read(crate::reports::nodes))
}

async fn identities(State(agent): State<Arc<Agent>>) -> axum::Json<Vec<IdentityInfo>> {
    axum::Json(agent.core.read(crate::reports::identities))
}

async fn services(State(agent): State<Arc<Agent>>) -> axum::Json<Vec<ServiceInfo>> {
    axum::Json(agent.core.read(crate::reports::services))
}

async fn endpoints(State(agent): State<Arc<Agent>>) -> axum::Json<Vec<EndpointInfo>> {
    axum::Json(agent.endpoints.list().await)
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
        return Err(ApiError::new(
            ErrorKind::NotFound,
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

async fn policy_get(State(agent): State<Arc<Agent>>) -> axum::Json<Vec<PolicyInfo>> {
    axum::Json(agent.core.read(crate::reports::policies))
}

/// `GET /v1/policy/trace`: why a packet between a local endpoint and a peer passes or is
/// dropped at the endpoint ([`crate::reports::policy_trace`]).
async fn policy_trace(
    State(agent): State<Arc<Agent>>,
    q: Result<Query<TraceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<PolicyTrace>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::new(ErrorKind::Invalid, e.body_text()))?;
    let proto = match q.proto.to_ascii_lowercase().as_str() {
        "tcp" => plexus_policy::Proto::Tcp,
        "udp" => plexus_policy::Proto::Udp,
        "sctp" => plexus_policy::Proto::Sctp,
        other => {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                format!("proto: {other:?} is not tcp, udp or sctp"),
            ));
        }
    };
    let all = agent.endpoints.list().await;
    let Some(endpoint) = all.into_iter().find(|e| {
        e.id.to_string() == q.endpoint
            || e.pod == q.endpoint
            || format!("{}/{}", e.namespace, e.pod) == q.endpoint
    }) else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no endpoint {} on node {}", q.endpoint, agent.node),
        ));
    };
    agent
        .core
        .read(|core| crate::reports::policy_trace(core, &endpoint, &q, proto))
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unavailable,
                format!(
                    "the policy of endpoint {}/{} (identity {}) on node {} is not resolved yet \
                     (the policies are not listed yet, or the identity is not known yet)",
                    endpoint.namespace, endpoint.pod, endpoint.identity, agent.node
                ),
            )
        })
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
    kind: Option<MonitorFilter>,
}

/// Streams one [`MonitorMessage`] per line, as JSON (`?type=drop|trace|translation|policy-verdict`
/// filters).
async fn monitor(State(agent): State<Arc<Agent>>, Query(q): Query<MonitorQuery>) -> Response {
    let rx = agent.datapath.subscribe();
    let stream = futures::stream::unfold((rx, q.kind), |(mut rx, filter)| async move {
        loop {
            let message = match rx.recv().await {
                Ok(ev) => {
                    let ev = monitor::MonitorEvent::from(&ev);
                    if filter.is_some_and(|f| !f.keeps(&ev)) {
                        continue;
                    }
                    MonitorMessage::Event(ev)
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    MonitorMessage::Lost { count: n }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            let mut line = serde_json::to_vec(&message).unwrap_or_default();
            line.push(b'\n');
            return Some((Ok::<_, std::io::Error>(line), (rx, filter)));
        }
    });
    Response::new(Body::from_stream(stream))
}

/// `GET /v1/flows?request=...`: see [`crate::flows::api`].
async fn flows(
    State(agent): State<Arc<Agent>>,
    q: Result<Query<crate::flows::api::FlowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    crate::flows::api::serve(agent.flows.as_ref(), crate::flows::api::query(q)?)
}

async fn ipam(
    State(agent): State<Arc<Agent>>,
    req: Result<axum::Json<IpamRequest>, JsonRejection>,
) -> Result<axum::Json<IpamResponse>, ApiError> {
    let axum::Json(req) = req.map_err(invalid)?;
    agent
        .endpoints
        .ipam(&req.owner)
        .await
        .map(axum::Json)
        .map_err(internal)
}

async fn endpoint_put(
    State(agent): State<Arc<Agent>>,
    req: Result<axum::Json<EndpointRequest>, JsonRejection>,
) -> Result<axum::Json<EndpointResponse>, ApiError> {
    let axum::Json(req) = req.map_err(invalid)?;
    agent
        .endpoints
        .put(req)
        .await
        .map(axum::Json)
        .map_err(registration_error)
}

/// A failed registration: a workload whose labels are invalid is the request's fault; an
/// unreadable podman state may pass (podman holding its lock, a state not written yet).
fn registration_error(err: anyhow::Error) -> ApiError {
    use plexus_podman::PodmanError;
    let kind = match err.chain().find_map(|e| e.downcast_ref::<PodmanError>()) {
        Some(PodmanError::Label { .. } | PodmanError::Config { .. }) => ErrorKind::Invalid,
        Some(_) => ErrorKind::Unavailable,
        None => ErrorKind::Internal,
    };
    ApiError::new(kind, format!("{err:#}"))
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
        None => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("endpoint {id} not found on node {}", agent.node),
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

/// `/metrics`: the agent's registry ([`crate::metrics`]), OpenMetrics for Prometheus (which
/// asks for it), the Prometheus text format 0.0.4 otherwise.
pub async fn metrics(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(
        headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    match agent.metrics.encode(format) {
        Ok(body) => (
            [(axum::http::header::CONTENT_TYPE, format.content_type())],
            body,
        )
            .into_response(),
        Err(err) => {
            ApiError::new(ErrorKind::Internal, format!("encode metrics: {err}")).into_response()
        }
    }
}

// Conversions from the agent's own structures to the API's types (the lists read from the
// core are built in `crate::reports`).

fn fqdn_cache_entry(row: crate::shell::dns::CacheRow) -> FqdnCacheEntry {
    FqdnCacheEntry {
        name: row.name,
        address: row.address,
        identity: row.identity,
        selectors: row.selectors.into_iter().collect(),
        ttl: row.ttl,
    }
}

fn dns_proxy_status(s: crate::shell::dns::DnsStatus) -> DnsProxyStatus {
    let c = s.stats;
    DnsProxyStatus {
        port: s.port,
        redirected_endpoints: s.redirected,
        learned_names: s.names,
        learned_addresses: s.addresses,
        stats: DnsProxyStats {
            queries: c.queries,
            forwarded: c.forwarded,
            refused: c.refused,
            malformed: c.malformed,
            no_endpoint: c.no_endpoint,
            overloaded: c.overloaded,
            delivered: c.delivered,
            held: c.held,
            hold_expired: c.hold_expired,
            responses_dropped: c.responses_dropped,
            forward_errors: c.forward_errors,
            forward_timeouts: c.forward_timeouts,
            send_errors: c.send_errors,
            tcp_connections: c.tcp_connections,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_datapath::{
        Direction, DropReason, EventKind, ObservationPoint, PolicyMatch, TraceState,
    };
    use std::net::Ipv4Addr;

    /// What the client sends to `/v1/policy/trace` is what the handler reads.
    #[test]
    fn trace_queries_survive_the_url() {
        let q = TraceQuery {
            endpoint: "x/a b".into(),
            direction: plexus_agent_api::types::Direction::Egress,
            peer_identity: Some(131_073),
            peer_ip: Some(Ipv4Addr::new(10, 2, 0, 7)),
            proto: "udp".into(),
            dport: 53,
        };
        let uri: axum::http::Uri = format!("/v1/policy/trace?{}", q.to_query_string())
            .parse()
            .unwrap();
        let Query(back) = Query::<TraceQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(back, q);
        let uri: axum::http::Uri = "/v1/policy/trace?endpoint=7&direction=ingress&dport=80"
            .parse()
            .unwrap();
        let Query(q) = Query::<TraceQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(
            (q.proto.as_str(), q.peer_identity, q.peer_ip),
            ("tcp", None, None)
        );
    }

    /// The CLI prints the events it reads from the JSON stream: every kind of event survives
    /// the stream (serialized, read back) and still reads as the datapath prints it.
    #[test]
    fn every_kind_of_monitor_event_survives_the_json_stream() {
        let base = plexus_datapath::MonitorEvent {
            kind: EventKind::Trace(ObservationPoint::ToEndpoint),
            endpoint_id: 3833,
            src_identity: 38354,
            dst_identity: 6587186,
            saddr: Ipv4Addr::new(10, 60, 1, 7),
            daddr: Ipv4Addr::new(10, 60, 2, 9),
            sport: 42728,
            dport: 6379,
            protocol: 6,
            tcp_flags: 0x12,
            state: TraceState::New,
            direction: Some(Direction::Ingress),
            ifindex: 7,
            len: 74,
            flow: 0x28c6_44b8,
            ktime_ns: 99,
        };
        let mut cases = Vec::new();
        for raw in 0..=13u8 {
            cases.push(plexus_datapath::MonitorEvent {
                kind: EventKind::Drop(DropReason::from_raw(raw)),
                ..base
            });
        }
        for raw in 0..=6u8 {
            cases.push(plexus_datapath::MonitorEvent {
                kind: EventKind::Trace(ObservationPoint::from_raw(raw)),
                state: TraceState::from_raw(raw),
                ..base
            });
        }
        for direction in [None, Some(Direction::Egress), Some(Direction::Ingress)] {
            cases.push(plexus_datapath::MonitorEvent {
                kind: EventKind::Translation {
                    frontend: "10.96.0.10:80".parse().unwrap(),
                },
                direction,
                ..base
            });
            for raw in 0..=7u8 {
                cases.push(plexus_datapath::MonitorEvent {
                    kind: EventKind::PolicyVerdict(PolicyMatch::from_raw(raw)),
                    direction,
                    ..base
                });
            }
        }
        for (protocol, sport, dport) in [
            (17, 53, 53),
            (1, 8, 0),
            (1, 0, 0),
            (1, 3, 1),
            (1, 11, 0),
            (1, 5, 2),
            (47, 0, 0),
            (0, 0, 0),
        ] {
            cases.push(plexus_datapath::MonitorEvent {
                protocol,
                sport,
                dport,
                ..base
            });
        }
        cases.push(plexus_datapath::MonitorEvent {
            saddr: Ipv4Addr::UNSPECIFIED,
            daddr: Ipv4Addr::UNSPECIFIED,
            protocol: 0,
            ..base
        });
        for tcp_flags in [0, 0x01, 0x04, 0x17] {
            cases.push(plexus_datapath::MonitorEvent { tcp_flags, ..base });
        }
        for ev in cases {
            let api = MonitorMessage::Event(monitor::MonitorEvent::from(&ev));
            let line = serde_json::to_string(&api).unwrap();
            let back: MonitorMessage = serde_json::from_str(&line).unwrap();
            assert_eq!(back.to_string(), ev.to_string());
        }
    }
}
