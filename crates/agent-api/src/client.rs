//! The one HTTP client of Plexus's APIs: the agent's (unix socket, or TCP) and the apiserver's
//! (TCP).
//!
//! A [`Client`] opens one HTTP/1.1 connection per call (hyper), bounds the whole exchange by
//! its timeout, and returns errors that name the endpoint and the path. Its typed methods
//! ([`Client::status`], [`Client::services`], ...) pair each agent path with its answer type,
//! so neither can drift from the other. [`Client::monitor`] and [`Client::lines`] stream;
//! [`Client::forward`] hands a proxy the raw answer as it streams. Synchronous callers (the CNI
//! plugin, the lab) use [`block_on`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{ErrorBody, ErrorKind};
use crate::{
    AgentStatus, ClusterMeshReport, Empty, EndpointDetail, EndpointInfo, EndpointRequest,
    EndpointResponse, IdentityInfo, IpamRequest, IpamResponse, IpcacheRow, LbRow, MonitorFilter,
    MonitorMessage, NodeInfo, PolicyInfo, ServiceInfo,
};

pub use hyper::Method;

/// How long a call may take unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an API is served.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A unix socket (the agent, locally).
    Unix(PathBuf),
    /// A TCP address, `host:port`, plain HTTP (the apiserver).
    Tcp(String),
    /// A TCP address, `host:port`, with TLS (the agent from another host): the server's
    /// certificate must be valid for `host`.
    Tls {
        /// `host:port`.
        addr: String,
        /// The client's TLS configuration ([`crate::tls::client_config`]).
        config: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "http://{a}"),
            Self::Tls { addr, .. } => write!(f, "https://{addr}"),
        }
    }
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// What went wrong calling an API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The endpoint could not be reached, or the exchange broke or timed out.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable {
        /// Where.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{endpoint}{path}: {status} {kind}: {message}")]
    Server {
        /// Where.
        endpoint: String,
        /// The path asked for.
        path: String,
        /// The HTTP status.
        status: u16,
        /// What kind of failure the server reports.
        kind: ErrorKind,
        /// The server's message.
        message: String,
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
    /// The client's own runtime could not start (see [`block_on`]).
    #[error("cannot start the API client's runtime: {0}")]
    Runtime(std::io::Error),
}

impl ApiError {
    /// The kind of failure the server reported; `None` when no answer came (unreachable,
    /// broken exchange, timeout) or it could not be decoded.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Server { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Aborts the connection task when dropped, so no call leaves a task behind.
struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client of one API endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
}

/// Percent-encodes one path segment (an endpoint id may be `namespace/pod`).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of `endpoint`, each call bounded by [`DEFAULT_TIMEOUT`].
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another bound on each call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where it calls.
    pub fn target(&self) -> &Endpoint {
        &self.endpoint
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> ApiError {
        ApiError::Unreachable {
            endpoint: self.endpoint.to_string(),
            reason: reason.to_string(),
        }
    }

    fn decode_error(&self, path: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError::Decode {
            endpoint: self.endpoint.to_string(),
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    async fn handshake<S>(
        &self,
        stream: S,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            Connection,
        ),
        ApiError,
    >
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        let task = tokio::spawn(async move {
            // The connection ends with the exchange; its error, if any, reaches the sender.
            let _ = conn.await;
        });
        Ok((sender, Connection(task)))
    }

    /// Connects and sends one request; returns the response head (the body still streams).
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(hyper::Response<Incoming>, Connection), ApiError> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "plexus")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.unreachable(e))?;
        let (mut sender, conn) = match &self.endpoint {
            Endpoint::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|e| self.unreachable(e))?;
                self.handshake(stream).await?
            }
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| self.unreachable(e))?;
                self.handshake(stream).await?
            }
            Endpoint::Tls { addr, config } => {
                let name = rustls::pki_types::ServerName::try_from(host_of(addr).to_string())
                    .map_err(|e| self.unreachable(format!("server name of {addr}: {e}")))?;
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| self.unreachable(format!("TLS handshake: {e}")))?;
                self.handshake(stream).await?
            }
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok((response, conn))
    }

    /// One whole exchange within the timeout: the status and the body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), ApiError> {
        let exchange = async {
            let (response, _conn) = self.exchange(method, path, body).await?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.unreachable(e))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.unreachable(format!("no answer within {:?}", self.timeout)))?
    }

    fn check(&self, path: &str, status: u16, bytes: &Bytes) -> Result<(), ApiError> {
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(self.status_error(path, status, bytes))
    }

    /// The error for a non-2xx answer.
    fn status_error(&self, path: &str, status: u16, bytes: &Bytes) -> ApiError {
        let body = ErrorBody::decode(status, bytes);
        ApiError::Server {
            endpoint: self.endpoint.to_string(),
            path: path.to_string(),
            status,
            kind: body.kind,
            message: body.message,
        }
    }

    /// `GET path`: the status code and the body as text, whatever the status (for probes such
    /// as the apiserver's `/readyz`).
    pub async fn get_text(&self, path: &str) -> Result<(u16, String), ApiError> {
        let (status, bytes) = self.call(Method::GET, path, None).await?;
        Ok((status, String::from_utf8_lossy(&bytes).to_string()))
    }

    /// `GET path`, decoding the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let (status, bytes) = self.call(Method::GET, path, None).await?;
        self.check(path, status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| self.decode_error(path, e))
    }

    /// `method path` with a JSON body, decoding the JSON answer.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let body = serde_json::to_vec(body).map_err(|e| self.decode_error(path, e))?;
        let (status, bytes) = self.call(method, path, Some(body)).await?;
        self.check(path, status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| self.decode_error(path, e))
    }

    /// `method path` (a `GET` or `HEAD` without a body) as it is, for a proxy (`plexus ui`):
    /// the answer's head whatever its status, and its body as it streams. Only the connection
    /// and the head are bounded by the timeout; the connection lasts as long as the body.
    pub async fn forward(
        &self,
        method: Method,
        path: &str,
    ) -> Result<hyper::Response<StreamingBody>, ApiError> {
        let (response, conn) =
            tokio::time::timeout(self.timeout, self.exchange(method, path, None))
                .await
                .map_err(|_| self.unreachable(format!("no answer within {:?}", self.timeout)))??;
        Ok(response.map(|body| StreamingBody { body, _conn: conn }))
    }

    /// `GET path` answered by a stream of JSON lines. Only the connection and the response
    /// head are bounded by the timeout; the stream lasts until the server ends it or the
    /// returned [`JsonLines`] is dropped.
    pub async fn lines<T: DeserializeOwned>(&self, path: &str) -> Result<JsonLines<T>, ApiError> {
        let (response, conn) =
            tokio::time::timeout(self.timeout, self.exchange(Method::GET, path, None))
                .await
                .map_err(|_| self.unreachable(format!("no answer within {:?}", self.timeout)))??;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = tokio::time::timeout(self.timeout, response.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(self.status_error(path, status, &bytes));
        }
        Ok(JsonLines {
            client: self.clone(),
            path: path.to_string(),
            body: response.into_body(),
            buf: Vec::new(),
            _conn: conn,
            _type: std::marker::PhantomData,
        })
    }

    // The apiserver's endpoints.

    /// `GET /v1/relay/nodes` of an apiserver: the nodes its flow relay reads.
    pub async fn relay_nodes(&self) -> Result<Vec<crate::RelayNode>, ApiError> {
        self.get("/v1/relay/nodes").await
    }

    // The agent's endpoints.

    /// `GET /v1/healthz`.
    pub async fn healthz(&self) -> Result<String, ApiError> {
        self.get("/v1/healthz").await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<AgentStatus, ApiError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/clustermesh`.
    pub async fn clustermesh(&self) -> Result<ClusterMeshReport, ApiError> {
        self.get("/v1/clustermesh").await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ApiError> {
        self.get("/v1/nodes").await
    }

    /// `GET /v1/identities`.
    pub async fn identities(&self) -> Result<Vec<IdentityInfo>, ApiError> {
        self.get("/v1/identities").await
    }

    /// `GET /v1/endpoints`.
    pub async fn endpoints(&self) -> Result<Vec<EndpointInfo>, ApiError> {
        self.get("/v1/endpoints").await
    }

    /// `GET /v1/endpoints/<id>`: by endpoint id, pod name or `namespace/pod`.
    pub async fn endpoint(&self, id: &str) -> Result<EndpointDetail, ApiError> {
        self.get(&format!("/v1/endpoints/{}", segment(id))).await
    }

    /// `GET /v1/policy/trace?...`: why a packet between a local endpoint and a peer passes or
    /// is dropped there. Errors: kind `not-found` when the node has no such endpoint,
    /// `invalid` for a bad query, `unavailable` while the endpoint's policy is not resolved.
    pub async fn policy_trace(
        &self,
        query: &crate::TraceQuery,
    ) -> Result<crate::PolicyTrace, ApiError> {
        self.get(&format!("/v1/policy/trace?{}", query.to_query_string()))
            .await
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceInfo>, ApiError> {
        self.get("/v1/services").await
    }

    /// `GET /v1/policy`.
    pub async fn policy(&self) -> Result<Vec<PolicyInfo>, ApiError> {
        self.get("/v1/policy").await
    }

    /// `GET /v1/fqdn/cache`: what the node's DNS proxy learned. Errors: kind `unavailable`
    /// when the node has no DNS proxy.
    pub async fn fqdn_cache(&self) -> Result<Vec<crate::FqdnCacheEntry>, ApiError> {
        self.get("/v1/fqdn/cache").await
    }

    /// `GET /v1/bpf/ipcache`.
    pub async fn ipcache(&self) -> Result<Vec<IpcacheRow>, ApiError> {
        self.get("/v1/bpf/ipcache").await
    }

    /// `GET /v1/bpf/lb`.
    pub async fn lb(&self) -> Result<Vec<LbRow>, ApiError> {
        self.get("/v1/bpf/lb").await
    }

    /// `GET /v1/monitor[?type=...]`: the events, as they come.
    pub async fn monitor(
        &self,
        filter: Option<MonitorFilter>,
    ) -> Result<JsonLines<MonitorMessage>, ApiError> {
        let query = filter
            .map(|f| format!("?type={}", f.as_str()))
            .unwrap_or_default();
        self.lines(&format!("/v1/monitor{query}")).await
    }

    /// `GET /v1/flows?request=...`: the node's flows as `request` asks (history, then new
    /// ones when it follows), with `lost_events` lines. Errors: kind `invalid` for a filter
    /// value the agent refuses (the message names the field), `unavailable` when the node's
    /// flows are off.
    pub async fn flows(
        &self,
        request: &plexus_flow::FlowRequest,
    ) -> Result<JsonLines<plexus_flow::FlowResponse>, ApiError> {
        self.lines(&format!("/v1/flows?request={}", request.to_query_value()))
            .await
    }

    /// `GET /v1/encryption`.
    pub async fn encryption(&self) -> Result<crate::EncryptionReport, ApiError> {
        self.get("/v1/encryption").await
    }

    /// `POST /v1/encryption/rotate-key`.
    pub async fn rotate_key(&self) -> Result<crate::RotateKeyReport, ApiError> {
        self.send(Method::POST, "/v1/encryption/rotate-key", &crate::Empty {})
            .await
    }

    /// `POST /v1/ipam`.
    pub async fn ipam(&self, req: &IpamRequest) -> Result<IpamResponse, ApiError> {
        self.send(Method::POST, "/v1/ipam", req).await
    }

    /// `PUT /v1/endpoint`.
    pub async fn put_endpoint(&self, req: &EndpointRequest) -> Result<EndpointResponse, ApiError> {
        self.send(Method::PUT, "/v1/endpoint", req).await
    }

    /// `GET /v1/endpoint/<container-id>`.
    pub async fn get_endpoint(&self, container_id: &str) -> Result<EndpointResponse, ApiError> {
        self.get(&format!("/v1/endpoint/{}", segment(container_id)))
            .await
    }

    /// `DELETE /v1/endpoint/<container-id>`.
    pub async fn delete_endpoint(&self, container_id: &str) -> Result<(), ApiError> {
        let path = format!("/v1/endpoint/{}", segment(container_id));
        self.send::<_, Empty>(Method::DELETE, &path, &Empty {})
            .await
            .map(drop)
    }
}

/// The body of a [`Client::forward`] answer; it keeps its connection open until dropped.
pub struct StreamingBody {
    body: Incoming,
    _conn: Connection,
}

impl hyper::body::Body for StreamingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A stream of JSON lines, each decoded as `T`.
pub struct JsonLines<T> {
    client: Client,
    path: String,
    body: Incoming,
    buf: Vec<u8>,
    _conn: Connection,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonLines<T> {
    /// The next item; `None` once the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<T, ApiError>> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(self.decode(line));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Some(Err(self.client.unreachable(e))),
                None => {
                    let rest = std::mem::take(&mut self.buf);
                    if rest.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    return Some(self.decode(&rest));
                }
            }
        }
    }

    fn decode(&self, line: &[u8]) -> Result<T, ApiError> {
        serde_json::from_slice(line).map_err(|e| {
            self.client.decode_error(
                &self.path,
                format!("{e} in line {:?}", String::from_utf8_lossy(line)),
            )
        })
    }
}

/// Runs `call` to completion for synchronous code (the CNI plugin, the lab): on a thread of
/// its own with a runtime of its own, so it works whether or not the caller is inside a tokio
/// runtime. The thread inherits the caller's network namespace.
pub fn block_on<T, F>(call: F) -> Result<T, ApiError>
where
    F: Future<Output = Result<T, ApiError>> + Send,
    T: Send,
{
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ApiError::Runtime)?
                .block_on(call)
        });
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("172.31.1.11:9965"), "172.31.1.11");
        assert_eq!(host_of("[::1]:9965"), "::1");
        assert_eq!(host_of("agent.c1"), "agent.c1");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("default/db-0"), "default%2Fdb-0");
        assert_eq!(segment("a b%"), "a%20b%25");
        assert_eq!(segment("3833"), "3833");
    }
}
