//! The agent's API, as the agent, the CLI and the CNI plugin see it.
//!
//! The request and response types of every agent endpoint live here: the agent serializes
//! them and its clients deserialize them, so renaming a field breaks the build, not the output.
//! The agent serves HTTP/1.1 with JSON bodies on a unix socket (like Cilium's agent API); the
//! apiserver serves the same kind of API on TCP. [`get_json`] and [`send_json`] are the one
//! small client both use: a request per connection, a timeout on the whole exchange, and errors
//! that name the socket or address and the path.
//!
//! Paths served by the agent:
//! - `GET /v1/healthz`: `"ok"`;
//! - `GET /v1/status`: [`AgentStatus`];
//! - `GET /v1/clustermesh`: [`ClusterMeshReport`], the remote clusters as this node sees them;
//! - `GET /v1/remote-nodes`: remote node names by cluster, from the merged view;
//! - `GET /v1/nodes`: [`NodeInfo`]s; `GET /v1/identities`: [`IdentityInfo`]s;
//! - `GET /v1/endpoints`: [`EndpointInfo`]s; `GET /v1/endpoints/<id | pod | namespace/pod>`:
//!   [`EndpointDetail`], with the endpoint's resolved policy;
//! - `GET /v1/services`: [`ServiceInfo`]s; `GET /v1/policy`: [`PolicyInfo`]s;
//! - `GET /v1/bpf/ipcache`: [`IpcacheRow`]s; `GET /v1/bpf/lb`: [`LbRow`]s;
//! - `GET /v1/monitor[?type=drop|trace]`: [`MonitorMessage`]s, a JSON line each, streamed;
//! - `POST /v1/ipam` ([`IpamRequest`] -> [`IpamResponse`]): an address for a pod;
//! - `PUT /v1/endpoint` ([`EndpointRequest`] -> [`EndpointResponse`]): register a configured pod;
//! - `GET /v1/endpoint/<container-id>` -> [`EndpointResponse`] (CNI CHECK);
//! - `DELETE /v1/endpoint/<container-id>` -> [`Empty`]: forget the pod and release its address
//!   (deleting an unknown endpoint succeeds, as CNI DEL must).
//!
//! Errors are non-2xx statuses with a JSON body `{"error": "..."}` or plain text.

pub mod cni;
pub mod monitor;
pub mod types;

pub use cni::{Empty, EndpointRequest, EndpointResponse, IpamRequest, IpamResponse};
pub use monitor::{MonitorEvent, MonitorFilter, MonitorMessage};
pub use types::{
    AgentStatus, ContainerPort, EndpointDetail, EndpointInfo, EndpointPolicy, IdentityInfo,
    IpcacheRow, LbRow, NodeInfo, PolicyEntry, PolicyInfo, ServiceInfo,
};

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use plexus_clustermesh::report::{MeshReport, RemoteClusterReport};

/// Where an API is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (the agent).
    Unix(PathBuf),
    /// A TCP address, `host:port` (the apiserver).
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

/// What went wrong calling an API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The endpoint could not be reached.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable {
        /// Where.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{endpoint}{path}: {status}: {body}")]
    Status {
        /// Where.
        endpoint: String,
        /// The path asked for.
        path: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        body: String,
    },
    /// The answer is not what was expected.
    #[error("{endpoint}{path}: unexpected answer: {reason}")]
    Decode {
        /// Where.
        endpoint: String,
        /// The path asked for.
        path: String,
        /// Why it could not be decoded.
        reason: String,
    },
}

/// The remote clusters as one node's agent sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterMeshReport {
    /// The node.
    pub node: String,
    /// The local cluster.
    pub cluster: String,
    /// The remotes.
    #[serde(flatten)]
    pub mesh: MeshReport,
}

async fn exchange(
    endpoint: &Endpoint,
    method: hyper::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Bytes), ApiError> {
    let unreachable = |reason: String| ApiError::Unreachable {
        endpoint: endpoint.to_string(),
        reason,
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "plexus")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| unreachable(e.to_string()))?;
    macro_rules! send {
        ($stream:expr) => {{
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let conn = tokio::spawn(conn);
            let resp = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            conn.abort();
            Ok((status, bytes))
        }};
    }
    match endpoint {
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            send!(stream)
        }
        Endpoint::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            send!(stream)
        }
    }
}

async fn call<T: DeserializeOwned>(
    endpoint: &Endpoint,
    method: hyper::Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<T, ApiError> {
    let (status, bytes) = tokio::time::timeout(timeout, exchange(endpoint, method, path, body))
        .await
        .map_err(|_| ApiError::Unreachable {
            endpoint: endpoint.to_string(),
            reason: format!("no answer within {timeout:?}"),
        })??;
    if !(200..300).contains(&status) {
        return Err(ApiError::Status {
            endpoint: endpoint.to_string(),
            path: path.to_string(),
            status,
            body: String::from_utf8_lossy(&bytes).trim().to_string(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
        endpoint: endpoint.to_string(),
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// `GET path`, decoding the JSON answer.
pub async fn get_json<T: DeserializeOwned>(
    endpoint: &Endpoint,
    path: &str,
    timeout: Duration,
) -> Result<T, ApiError> {
    call(endpoint, hyper::Method::GET, path, None, timeout).await
}

/// `method path` with a JSON body, decoding the JSON answer.
pub async fn send_json<B: Serialize, T: DeserializeOwned>(
    endpoint: &Endpoint,
    method: hyper::Method,
    path: &str,
    body: &B,
    timeout: Duration,
) -> Result<T, ApiError> {
    let body = serde_json::to_vec(body).map_err(|e| ApiError::Decode {
        endpoint: endpoint.to_string(),
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    call(endpoint, method, path, Some(body), timeout).await
}

pub use hyper::Method;
