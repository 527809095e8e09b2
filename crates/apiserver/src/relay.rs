//! The flow relay: one flow stream for a whole cluster, and for the clusters it is connected
//! to, served on the apiserver's API (mutual TLS), as Hubble Relay does for Cilium.
//!
//! - `GET /v1/flows?request=<url-encoded JSON FlowRequest>[&scope=cluster]`: asks every node of
//!   the cluster (the nodes of its etcd, `cilium/state/nodes/v1/<cluster>/`, at their
//!   InternalIP and [`RelayConfig::agent_port`]) for `GET /v1/flows` and, unless
//!   `scope=cluster`, every connected cluster's relay (the files of
//!   [`RelayConfig::kvstoremesh_dir`], then those of [`RelayConfig::clustermesh_dir`] naming
//!   other clusters: with KVStoreMesh the agents' files name the local etcd), at the host of the remote's first etcd endpoint and
//!   [`RelayConfig::peer_port`]) with `scope=cluster`, so a relay never asks back. The
//!   apiserver's own API certificate is the client certificate (every cluster of a mesh shares
//!   the CA, so agents and other relays accept it, read-only).
//! - The answers are merged by time ([`plexus_flow::merge`]): exactly for history (the relay
//!   waits for the next line of every node), with a reorder window when following. `number`
//!   (last N) applies to the merged result: each node sends its last N, the relay keeps the
//!   newest N of them all. When following, lines not newer than the request's arrival are the
//!   history the last N is taken from.
//! - `node_status` lines (sent as they happen, outside the time order): `NODE_CONNECTED` with
//!   the nodes reached, `NODE_UNAVAILABLE` naming each node (`cluster/node`) or connected
//!   cluster that could not be reached or whose stream broke, with the reason, `NODE_ERROR` for
//!   a node that answered with an error. The other streams go on. While following, a node that
//!   was lost is asked again every [`RelayConfig::retry_interval`] (from the last flow it sent,
//!   or from the request's arrival) and announced `NODE_CONNECTED` when it answers. A connected
//!   cluster's relay sends its own `node_status` lines; they are passed on.
//! - `GET /v1/relay/nodes[?scope=cluster]`: every node the relay reads, with whether its agent
//!   answers a health probe, and the connected clusters' nodes as their relays report them.
//!
//! Memory per client is bounded: the merge holds at most [`plexus_flow::merge::MAX_HELD`]
//! lines, the last-N buffer at most [`MAX_NUMBER`], and the channels between the nodes' streams
//! and the client are bounded, so a slow client slows its node streams down (TCP back pressure)
//! instead of growing queues.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use plexus_agent_api::{ApiError, Client, Endpoint, ErrorBody, ErrorKind, JsonLines, RelayNode};
use plexus_clustermesh::config::{ConfigChange, ConfigDir, ConfigError};
use plexus_flow::{FlowRequest, FlowResponse, NodeState, ResponseKind};
use plexus_kvstore::{KvBackend, StoreEvent, WatchStore};
use plexus_model::cluster::ClusterInfo;
use plexus_model::keys::StateKind;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The agents' API port the relay asks on each node's InternalIP (the agent's default).
pub const DEFAULT_AGENT_PORT: u16 = 9965;

/// The port of the connected clusters' relays (their apiserver's API; Hubble Relay's port).
pub const DEFAULT_PEER_PORT: u16 = 4245;

/// The largest `number` (last N) the relay buffers; a larger one is cut to this.
pub const MAX_NUMBER: u64 = 65_536;

/// Lines in flight between the nodes' streams and the merge, and between the merge and the
/// client.
const CHANNEL: usize = 256;

/// How the relay finds and reaches what it reads.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The agents' API port, on each node's InternalIP.
    pub agent_port: u16,
    /// The connected clusters' relays' port, on the host of each remote's first etcd endpoint.
    pub peer_port: u16,
    /// The connected clusters' configuration directory (one file per remote cluster), if any.
    pub clustermesh_dir: Option<PathBuf>,
    /// KVStoreMesh's configuration directory, if it runs: its files name the remotes' own
    /// etcds, so a remote configured there is taken from there.
    pub kvstoremesh_dir: Option<PathBuf>,
    /// How long connecting and the answer's head may take, per node; also how long a node's
    /// history may pause between two lines (three times that for a connected cluster's relay,
    /// which waits for its own nodes) before the relay gives up on it.
    pub connect_timeout: Duration,
    /// While following, how often a lost node is asked again.
    pub retry_interval: Duration,
    /// While following, how long a line is held to order it among the other nodes' lines.
    pub follow_window: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            agent_port: DEFAULT_AGENT_PORT,
            peer_port: DEFAULT_PEER_PORT,
            clustermesh_dir: None,
            kvstoremesh_dir: None,
            connect_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_secs(5),
            follow_window: Duration::from_secs(1),
        }
    }
}

/// One thing the relay reads: a node's agent or a connected cluster's relay.
#[derive(Clone, Debug)]
struct Target {
    /// `cluster/node`, or the connected cluster's name.
    name: String,
    /// The cluster.
    cluster: String,
    /// `host:port`, or why there is none.
    addr: Result<String, String>,
    /// A connected cluster's relay (asked with `scope=cluster`).
    remote: bool,
}

/// The flow relay of one cluster.
pub struct Relay {
    cluster: ClusterInfo,
    config: RelayConfig,
    tls: plexus_tls_api::ClientTls,
    /// The cluster's nodes: node name -> the agent's address, or why there is none.
    nodes: Mutex<BTreeMap<String, Result<String, String>>>,
}

impl Relay {
    /// A relay of `cluster` presenting the client identity of `tls` to agents and relays.
    /// It knows no node until [`Relay::watch_nodes`] runs.
    pub fn new(
        cluster: ClusterInfo,
        config: RelayConfig,
        tls: impl Into<plexus_tls_api::ClientTls>,
    ) -> Self {
        let tls = tls.into();
        Self {
            cluster,
            config,
            tls,
            nodes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Follows the cluster's nodes in its etcd (`backend`) for ever; run it as a task.
    pub async fn watch_nodes(self: Arc<Self>, backend: Arc<dyn KvBackend>) {
        let mut store = WatchStore::new(
            backend,
            StateKind::Nodes.state_prefix(&self.cluster.name),
            plexus_clustermesh::validate::node_decoder(self.cluster.clone()),
        );
        loop {
            match store.next().await {
                StoreEvent::Upsert { value, .. } => {
                    let addr = value
                        .internal_ip()
                        .map(|ip| std::net::SocketAddr::new(ip, self.config.agent_port).to_string())
                        .ok_or_else(|| "the node publishes no InternalIP".to_string());
                    self.lock_nodes().insert(value.name, addr);
                }
                StoreEvent::Delete { old, .. } => {
                    self.lock_nodes().remove(&old.name);
                }
                StoreEvent::Rejected { key, reason } => {
                    tracing::warn!(%key, %reason, "relay: node refused");
                }
                StoreEvent::Synced => {}
            }
        }
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Result<String, String>>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster's nodes and, unless `scope_cluster`, the connected clusters' relays.
    fn targets(&self, scope_cluster: bool) -> Vec<Target> {
        let cluster = &self.cluster.name;
        let mut out: Vec<Target> = self
            .lock_nodes()
            .iter()
            .map(|(node, addr)| Target {
                name: format!("{cluster}/{node}"),
                cluster: cluster.clone(),
                addr: addr.clone(),
                remote: false,
            })
            .collect();
        if !scope_cluster {
            out.extend(self.remotes());
        }
        out
    }

    /// The connected clusters' relays, from the configuration directories as they are now
    /// (KVStoreMesh's first; a cluster configured in both is taken from there).
    fn remotes(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let dirs = [&self.config.kvstoremesh_dir, &self.config.clustermesh_dir];
        for dir in dirs.into_iter().flatten() {
            let mut more = self.remotes_in(dir);
            more.retain(|t| !out.iter().any(|o: &Target| o.cluster == t.cluster));
            out.extend(more);
        }
        out
    }

    /// The connected clusters' relays configured in `dir`.
    fn remotes_in(&self, dir: &std::path::Path) -> Vec<Target> {
        let scan = match ConfigDir::new(dir).scan() {
            Ok(scan) => scan,
            Err(err) => {
                return vec![Target {
                    name: dir.display().to_string(),
                    cluster: String::new(),
                    addr: Err(err.to_string()),
                    remote: true,
                }];
            }
        };
        let mut out = Vec::new();
        for err in scan.errors {
            let path = match &err {
                ConfigError::Io { path, .. } | ConfigError::Invalid { path, .. } => path,
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            out.push(Target {
                cluster: name.clone(),
                name,
                addr: Err(err.to_string()),
                remote: true,
            });
        }
        for change in scan.changes {
            let (ConfigChange::Added(remote) | ConfigChange::Changed(remote)) = change else {
                continue;
            };
            // A file named after this cluster would make the relay ask itself.
            if remote.name == self.cluster.name {
                continue;
            }
            let addr = remote
                .endpoints
                .first()
                .and_then(|e| endpoint_host(e))
                .map(|host| format!("{host}:{}", self.config.peer_port))
                .ok_or_else(|| {
                    format!(
                        "{}: no host in the first etcd endpoint {:?}",
                        dir.join(&remote.name).display(),
                        remote.endpoints.first()
                    )
                });
            out.push(Target {
                name: remote.name.clone(),
                cluster: remote.name,
                addr,
                remote: true,
            });
        }
        out
    }

    fn client(&self, addr: &str) -> Client {
        Client::new(Endpoint::Tls {
            addr: addr.to_string(),
            config: self.tls.current(),
        })
        .with_timeout(self.config.connect_timeout)
    }

    /// Opens `target`'s flow stream for `request`.
    async fn open(
        &self,
        target: &Target,
        request: &FlowRequest,
    ) -> Result<JsonLines<FlowResponse>, Failure> {
        let addr = target.addr.as_ref().map_err(|e| Failure::Unreachable {
            message: e.clone(),
            permanent: true,
        })?;
        let mut path = format!("/v1/flows?request={}", request.to_query_value());
        if target.remote {
            path.push_str("&scope=cluster");
        }
        self.client(addr)
            .lines::<FlowResponse>(&path)
            .await
            .map_err(Failure::from)
    }

    /// Every node the relay reads, probed now (`GET /v1/healthz` of each agent; the
    /// connected clusters' relays answer for their nodes).
    pub async fn nodes(&self, scope_cluster: bool) -> Vec<RelayNode> {
        let probes = self.targets(scope_cluster).into_iter().map(|t| async move {
            let addr = match &t.addr {
                Ok(addr) => addr.clone(),
                Err(err) => return vec![entry(&t, String::new(), Some(err.clone()))],
            };
            let client = self.client(&addr);
            if t.remote {
                match client
                    .get::<Vec<RelayNode>>("/v1/relay/nodes?scope=cluster")
                    .await
                {
                    Ok(nodes) => nodes,
                    Err(err) => vec![entry(&t, addr, Some(err.to_string()))],
                }
            } else {
                match client.healthz().await {
                    Ok(_) => vec![entry(&t, addr, None)],
                    Err(err) => vec![entry(&t, addr, Some(err.to_string()))],
                }
            }
        });
        let mut out: Vec<RelayNode> = futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Answers `request`: the lines go to the returned receiver; the work stops when it is
    /// dropped.
    pub fn flows(
        self: &Arc<Self>,
        request: FlowRequest,
        scope_cluster: bool,
    ) -> mpsc::Receiver<FlowResponse> {
        let (out, rx) = mpsc::channel(CHANNEL);
        let relay = self.clone();
        tokio::spawn(async move {
            let closed = out.clone();
            tokio::select! {
                // The client left: stop reading the nodes.
                _ = closed.closed() => {}
                _ = relay.run(request, scope_cluster, out) => {}
            }
        });
        rx
    }

    async fn run(
        self: Arc<Self>,
        request: FlowRequest,
        scope_cluster: bool,
        out: mpsc::Sender<FlowResponse>,
    ) {
        let start = Utc::now();
        let targets = self.targets(scope_cluster);
        let attempts = targets.into_iter().map(|t| {
            let relay = &self;
            let request = &request;
            async move {
                let result = relay.open(&t, request).await;
                (t, result)
            }
        });
        let mut opened = Vec::new();
        let mut lost = Vec::new();
        let mut connected = Vec::new();
        let mut failures = Vec::new();
        for (target, result) in futures::future::join_all(attempts).await {
            match result {
                Ok(lines) => {
                    // A connected cluster's relay names its own nodes.
                    if !target.remote {
                        connected.push(target.name.clone());
                    }
                    opened.push((target, lines));
                }
                Err(failure) => {
                    failures.push(failure.line(&target.name));
                    if !failure.permanent() {
                        lost.push(target);
                    }
                }
            }
        }
        if !connected.is_empty() {
            let line = FlowResponse::node_status(NodeState::Connected, connected, "", Utc::now());
            if out.send(line).await.is_err() {
                return;
            }
        }
        for line in failures {
            if out.send(line).await.is_err() {
                return;
            }
        }
        let number = request.number.map(|n| n.min(MAX_NUMBER) as usize);
        if !request.follow {
            let inputs: Vec<_> = opened
                .into_iter()
                .map(|(t, lines)| {
                    // A connected cluster's relay may itself wait that long for its nodes.
                    let idle = self.config.connect_timeout * if t.remote { 3 } else { 1 };
                    history_stream(t.name, lines, out.clone(), idle)
                })
                .collect();
            let merged = plexus_flow::merge_history(inputs);
            forward(Box::pin(merged), &out, number, None).await;
            return;
        }
        // A connected cluster's relay holds each line for its own window before it sends it:
        // its lines come that much later than the nodes', so the window doubles.
        let remotes = opened.iter().any(|(t, _)| t.remote) || lost.iter().any(|t| t.remote);
        let window = if remotes {
            self.config.follow_window * 2
        } else {
            self.config.follow_window
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let mut tasks = tokio::task::JoinSet::new();
        for (target, lines) in opened {
            tasks.spawn(self.clone().follow(
                target,
                Some(lines),
                request.clone(),
                start,
                tx.clone(),
                out.clone(),
            ));
        }
        for target in lost {
            tasks.spawn(self.clone().follow(
                target,
                None,
                request.clone(),
                start,
                tx.clone(),
                out.clone(),
            ));
        }
        drop(tx);
        let input = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|line| (line, rx))
        });
        let merged = plexus_flow::merge_follow(vec![Box::pin(input)], window);
        // The histories arrive right after connecting and leave the merge a window later.
        let tail_until = (Instant::now() + window * 2, start);
        forward(Box::pin(merged), &out, number, Some(tail_until)).await;
        // Dropping `tasks` stops the node streams.
    }

    /// Follows one target: forwards its lines to `tx` (status lines straight to `out`); when
    /// its stream breaks or it cannot be reached, says so and asks again every retry interval.
    async fn follow(
        self: Arc<Self>,
        target: Target,
        mut lines: Option<JsonLines<FlowResponse>>,
        request: FlowRequest,
        start: DateTime<Utc>,
        tx: mpsc::Sender<FlowResponse>,
        out: mpsc::Sender<FlowResponse>,
    ) {
        let mut last: Option<DateTime<Utc>> = None;
        let mut resumed = false;
        loop {
            if let Some(mut stream) = lines.take() {
                let reason = loop {
                    match stream.next().await {
                        Some(Ok(line)) => {
                            if matches!(line.kind, ResponseKind::NodeStatus(_)) {
                                if out.send(line).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            // After a reconnection the stream starts at the last line seen.
                            if resumed && last.is_some_and(|t| line.time <= t) {
                                continue;
                            }
                            last = Some(last.map_or(line.time, |t| t.max(line.time)));
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(err)) => break err.to_string(),
                        None => break "the stream ended".to_string(),
                    }
                };
                let line = FlowResponse::node_status(
                    NodeState::Unavailable,
                    vec![target.name.clone()],
                    &reason,
                    Utc::now(),
                );
                if out.send(line).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(self.config.retry_interval).await;
            let again = FlowRequest {
                number: None,
                since: Some(last.unwrap_or(start)),
                follow: true,
                ..request.clone()
            };
            match self.open(&target, &again).await {
                Ok(stream) => {
                    // A connected cluster's relay announces its own nodes.
                    if !target.remote {
                        let line = FlowResponse::node_status(
                            NodeState::Connected,
                            vec![target.name.clone()],
                            "",
                            Utc::now(),
                        );
                        if out.send(line).await.is_err() {
                            return;
                        }
                    }
                    resumed = last.is_some();
                    lines = Some(stream);
                }
                Err(failure) if failure.permanent() => return,
                // Still unreachable: said already, try again later.
                Err(_) => {}
            }
        }
    }
}

/// A `/v1/relay/nodes` entry of `target`.
fn entry(target: &Target, address: String, error: Option<String>) -> RelayNode {
    RelayNode {
        name: target.name.clone(),
        cluster: target.cluster.clone(),
        address,
        reachable: error.is_none(),
        error,
    }
}

/// Why a target's stream could not be opened.
enum Failure {
    /// No answer (or no address at all: `permanent`, not worth asking again).
    Unreachable { message: String, permanent: bool },
    /// It answered with an error.
    Answered(String),
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::Server { .. } => Self::Answered(err.to_string()),
            _ => Self::Unreachable {
                message: err.to_string(),
                permanent: false,
            },
        }
    }
}

impl Failure {
    fn permanent(&self) -> bool {
        matches!(
            self,
            Self::Unreachable {
                permanent: true,
                ..
            }
        )
    }

    /// The status line naming `name`.
    fn line(&self, name: &str) -> FlowResponse {
        let (state, message) = match self {
            Self::Unreachable { message, .. } => (NodeState::Unavailable, message),
            Self::Answered(message) => (NodeState::Error, message),
        };
        FlowResponse::node_status(state, vec![name.to_string()], message, Utc::now())
    }
}

type LineStream = Pin<Box<dyn Stream<Item = FlowResponse> + Send>>;

/// One node's history as a stream of its flows and lost events; its status lines, and a
/// `NODE_UNAVAILABLE` line if it breaks or sends nothing for `idle`, go straight to `out`.
/// (The merge waits for every node's next line: a node that hangs must not hold it for ever.)
fn history_stream(
    name: String,
    lines: JsonLines<FlowResponse>,
    out: mpsc::Sender<FlowResponse>,
    idle: Duration,
) -> LineStream {
    Box::pin(futures::stream::unfold(
        Some((name, lines, out)),
        move |state| async move {
            let (name, mut lines, out) = state?;
            loop {
                let reason = match tokio::time::timeout(idle, lines.next()).await {
                    Ok(Some(Ok(line))) if matches!(line.kind, ResponseKind::NodeStatus(_)) => {
                        if out.send(line).await.is_err() {
                            return None;
                        }
                        continue;
                    }
                    Ok(Some(Ok(line))) => return Some((line, Some((name, lines, out)))),
                    Ok(Some(Err(err))) => err.to_string(),
                    Ok(None) => return None,
                    Err(_) => format!("no line within {idle:?}"),
                };
                let line = FlowResponse::node_status(
                    NodeState::Unavailable,
                    vec![name],
                    &reason,
                    Utc::now(),
                );
                let _ = out.send(line).await;
                return None;
            }
        },
    ))
}

/// The newest `n` flows of a history (with the lost-events lines among them).
struct Tail {
    n: usize,
    lines: VecDeque<FlowResponse>,
    flows: usize,
}

impl Tail {
    fn new(n: usize) -> Self {
        Self {
            n,
            lines: VecDeque::new(),
            flows: 0,
        }
    }

    fn push(&mut self, line: FlowResponse) {
        if line.as_flow().is_some() {
            self.flows += 1;
        }
        self.lines.push_back(line);
        if self.flows <= self.n {
            return;
        }
        while self.flows > self.n {
            match self.lines.pop_front() {
                Some(old) if old.as_flow().is_some() => self.flows -= 1,
                Some(_) => {}
                None => break,
            }
        }
        // Losses older than the oldest flow kept go with the flows before them.
        while self.lines.front().is_some_and(|l| l.as_flow().is_none()) {
            self.lines.pop_front();
        }
    }
}

/// Sends the merged lines to the client; with `number`, only the newest `number` flows of the
/// history: all of it when not following, else the lines not newer than the request's arrival
/// (`tail_until.1`) until the first newer line or the deadline `tail_until.0`.
async fn forward(
    mut merged: LineStream,
    out: &mpsc::Sender<FlowResponse>,
    number: Option<usize>,
    tail_until: Option<(Instant, DateTime<Utc>)>,
) {
    let mut tail = number.map(Tail::new);
    loop {
        let next = match (&tail, tail_until) {
            (Some(_), Some((deadline, _))) => {
                tokio::select! {
                    line = merged.next() => line,
                    _ = tokio::time::sleep_until(deadline) => {
                        if flush(tail.take(), out).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            _ => merged.next().await,
        };
        let Some(line) = next else { break };
        if let Some(t) = tail.as_mut() {
            match tail_until {
                Some((_, start)) if line.time > start => {
                    if flush(tail.take(), out).await.is_err() {
                        return;
                    }
                }
                _ => {
                    t.push(line);
                    continue;
                }
            }
        }
        if out.send(line).await.is_err() {
            return;
        }
    }
    let _ = flush(tail, out).await;
}

async fn flush(tail: Option<Tail>, out: &mpsc::Sender<FlowResponse>) -> Result<(), ()> {
    for line in tail.map(|t| t.lines).unwrap_or_default() {
        out.send(line).await.map_err(drop)?;
    }
    Ok(())
}

/// The host of an etcd endpoint URL (`https://host:port/...`), IPv6 in brackets.
fn endpoint_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(host, _)| format!("[{host}]"));
    }
    let host = authority.split(':').next()?;
    (!host.is_empty()).then(|| host.to_string())
}

/// The query of the relay's endpoints.
#[derive(Deserialize)]
struct RelayQuery {
    /// The JSON of a [`FlowRequest`] (percent-decoded already).
    #[serde(default)]
    request: Option<String>,
    /// `cluster`: this cluster's nodes only (what relays ask each other).
    #[serde(default)]
    scope: Option<String>,
}

impl RelayQuery {
    fn scope_cluster(&self) -> Result<bool, Invalid> {
        match self.scope.as_deref() {
            None => Ok(false),
            Some("cluster") => Ok(true),
            Some(other) => Err(Invalid(format!(
                "scope: {other:?} is not a scope (only \"cluster\")"
            ))),
        }
    }
}

/// A request the relay cannot read: 400 with the API's error body.
struct Invalid(String);

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(ErrorBody::new(ErrorKind::Invalid, self.0)),
        )
            .into_response()
    }
}

/// The relay's routes: `GET /v1/flows` and `GET /v1/relay/nodes`.
pub(crate) fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/v1/flows", get(flows))
        .route("/v1/relay/nodes", get(nodes))
        .with_state(relay)
}

async fn flows(
    State(relay): State<Arc<Relay>>,
    query: Result<Query<RelayQuery>, QueryRejection>,
) -> Result<Response, Invalid> {
    let Query(query) = query.map_err(|r| Invalid(r.body_text()))?;
    let scope_cluster = query.scope_cluster()?;
    let request = match query.request.as_deref() {
        None | Some("") => FlowRequest::default(),
        Some(json) => FlowRequest::from_json(json).map_err(|e| Invalid(format!("request: {e}")))?,
    };
    // Refuse a bad filter once here rather than once per node.
    request
        .matcher()
        .map_err(|e| Invalid(format!("request: {e}")))?;
    let rx = relay.flows(request, scope_cluster);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut bytes = line.to_json_line().into_bytes();
        bytes.push(b'\n');
        Some((Ok::<_, std::io::Error>(bytes), rx))
    });
    Ok(Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| Response::new(Body::empty())))
}

async fn nodes(
    State(relay): State<Arc<Relay>>,
    query: Result<Query<RelayQuery>, QueryRejection>,
) -> Result<axum::Json<Vec<RelayNode>>, Invalid> {
    let Query(query) = query.map_err(|r| Invalid(r.body_text()))?;
    let scope_cluster = query.scope_cluster()?;
    Ok(axum::Json(relay.nodes(scope_cluster).await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_etcd_endpoints() {
        assert_eq!(
            endpoint_host("https://172.31.0.2:2379").as_deref(),
            Some("172.31.0.2")
        );
        assert_eq!(
            endpoint_host("https://etcd.c2.mesh:2379/").as_deref(),
            Some("etcd.c2.mesh")
        );
        assert_eq!(
            endpoint_host("http://[fd00::2]:2379").as_deref(),
            Some("[fd00::2]")
        );
        assert_eq!(endpoint_host("https://").as_deref(), None);
    }

    fn flow_at(ms: i64) -> FlowResponse {
        FlowResponse::flow(plexus_flow::Flow {
            time: DateTime::from_timestamp_millis(ms).unwrap_or_default(),
            ..plexus_flow::Flow::default()
        })
    }

    async fn forwarded(
        lines: Vec<FlowResponse>,
        number: Option<usize>,
        tail_until: Option<(Instant, DateTime<Utc>)>,
    ) -> Vec<i64> {
        let (out, mut rx) = mpsc::channel(16);
        forward(
            Box::pin(futures::stream::iter(lines)),
            &out,
            number,
            tail_until,
        )
        .await;
        drop(out);
        let mut times = Vec::new();
        while let Some(line) = rx.recv().await {
            times.push(line.time.timestamp_millis());
        }
        times
    }

    #[tokio::test]
    async fn the_last_n_apply_to_the_history_and_a_live_line_ends_it() {
        let within = Duration::from_secs(60);
        tokio::time::timeout(within, async {
            let lines = || (1..=5).map(flow_at).collect::<Vec<_>>();
            // History: the newest 2 of all.
            assert_eq!(forwarded(lines(), Some(2), None).await, vec![4, 5]);
            assert_eq!(forwarded(lines(), None, None).await, vec![1, 2, 3, 4, 5]);
            // Following, the request came at 3: 1..=3 are history (newest 2 kept), 4 and 5 are
            // live and go out as they come.
            let far = Instant::now() + Duration::from_secs(3600);
            let start = DateTime::from_timestamp_millis(3).unwrap_or_default();
            assert_eq!(
                forwarded(lines(), Some(2), Some((far, start))).await,
                vec![2, 3, 4, 5]
            );
        })
        .await
        .unwrap_or_else(|_| panic!("not within {within:?}"));
    }

    #[test]
    fn the_tail_keeps_the_newest_flows_and_the_losses_among_them() {
        let mut tail = Tail::new(2);
        tail.push(flow_at(1));
        tail.push(FlowResponse::lost(
            plexus_flow::LostEventSource::HubbleRingBuffer,
            3,
            "c1/n1",
            DateTime::from_timestamp_millis(2).unwrap_or_default(),
        ));
        tail.push(flow_at(3));
        tail.push(flow_at(4));
        let times: Vec<i64> = tail
            .lines
            .iter()
            .map(|l| l.time.timestamp_millis())
            .collect();
        assert_eq!(times, vec![3, 4]);
        let mut tail = Tail::new(0);
        tail.push(flow_at(1));
        assert!(tail.lines.is_empty());
    }
}
