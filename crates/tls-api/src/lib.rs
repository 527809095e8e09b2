//! Serving a Plexus daemon's HTTP API on TCP with mutual TLS, for CLIs, relays and browsers
//! behind a proxy on other hosts: the agent's API (port 9965) and the apiserver's (relay and
//! web view) use the same listener and the same rule of who may write.
//!
//! [`TlsListener`] accepts TCP connections and runs each TLS handshake on a task of its own (a
//! slow or hostile client never holds up the others); a client without a certificate of the
//! cluster's CA is refused during the handshake. Each connection carries its [`Peer`] (address
//! and certificate common name) as axum's `ConnectInfo`, and [`authorized`] wraps the router so
//! that only the cluster's admin identity (`admin-<cluster>`) may write: other clients of the
//! CA get `GET`/`HEAD`, and a write is answered with the error kind `forbidden`. A unix socket
//! is served without this layer: it is local and fully privileged.
//!
//! Certificates renewed on disk are used without a restart: a listener made from files
//! ([`TlsListener::from_files`], [`start`]) compares them, at most once a second as
//! connections arrive, with those it loaded ([`ReloadingConfig`]), and new handshakes use the
//! new certificate and CA bundle; connections already established keep theirs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use plexus_agent_api::ErrorKind;
use plexus_agent_api::tls::Access;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use plexus_agent_api::ErrorBody;

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the TCP API, as its handshake proved it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The common name of its (verified) certificate.
    pub common_name: Option<String>,
}

/// How often, at most, [`ReloadingConfig`] compares the files with those loaded.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A TLS configuration (server or client) made from files, made again when they change.
pub struct ReloadingConfig<T = rustls::ServerConfig> {
    files: plexus_agent_api::tls::TlsFiles,
    build: Build<T>,
    state: std::sync::Mutex<Reload<T>>,
}

type Build<T> =
    fn(&plexus_agent_api::tls::TlsFiles) -> Result<Arc<T>, plexus_agent_api::tls::TlsError>;

struct Reload<T> {
    config: Arc<T>,
    /// The CA, certificate and key the configuration was made from (or last refused).
    seen: [Vec<u8>; 3],
    checked: std::time::Instant,
}

fn client_config(
    files: &plexus_agent_api::tls::TlsFiles,
) -> Result<Arc<rustls::ClientConfig>, plexus_agent_api::tls::TlsError> {
    plexus_agent_api::tls::client_config(&files.ca, Some((&files.cert, &files.key)))
}

impl ReloadingConfig<rustls::ServerConfig> {
    /// A server configuration from `files`; an unusable set is an error naming them.
    pub fn new(files: &plexus_agent_api::tls::TlsFiles) -> anyhow::Result<Self> {
        Self::with(files, plexus_agent_api::tls::server_config)
    }
}

impl ReloadingConfig<rustls::ClientConfig> {
    /// A client configuration (trusting `files.ca`, presenting `files.cert`) from `files`.
    pub fn client(files: &plexus_agent_api::tls::TlsFiles) -> anyhow::Result<Self> {
        Self::with(files, client_config)
    }
}

impl<T> ReloadingConfig<T> {
    fn with(files: &plexus_agent_api::tls::TlsFiles, build: Build<T>) -> anyhow::Result<Self> {
        let seen = Self::read(files)?;
        let config = build(files)?;
        Ok(Self {
            files: files.clone(),
            build,
            state: std::sync::Mutex::new(Reload {
                config,
                seen,
                checked: std::time::Instant::now(),
            }),
        })
    }

    fn read(files: &plexus_agent_api::tls::TlsFiles) -> anyhow::Result<[Vec<u8>; 3]> {
        use anyhow::Context as _;
        let read =
            |p: &std::path::Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
        Ok([read(&files.ca)?, read(&files.cert)?, read(&files.key)?])
    }

    /// The configuration for a new connection: made again if the files changed. Files that
    /// cannot be used (a certificate whose key is not written yet) are logged once and the
    /// previous configuration stays.
    pub fn current(&self) -> Arc<T> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.checked.elapsed() < RELOAD_CHECK {
            return state.config.clone();
        }
        state.checked = std::time::Instant::now();
        let Ok(seen) = Self::read(&self.files) else {
            return state.config.clone();
        };
        if seen == state.seen {
            return state.config.clone();
        }
        match (self.build)(&self.files) {
            Ok(config) => {
                tracing::info!(cert = %self.files.cert.display(), "certificate files changed: new connections use them");
                state.config = config;
            }
            Err(err) => {
                tracing::warn!(error = %err, "changed certificate files not used");
            }
        }
        state.seen = seen;
        state.config.clone()
    }
}

/// The client side of a TCP API connection (the relay asking agents and other relays): a
/// fixed configuration, or one made from files and reloaded when they change.
#[derive(Clone)]
pub enum ClientTls {
    /// Always this configuration.
    Fixed(Arc<rustls::ClientConfig>),
    /// Made from files, made again when they change.
    Files(Arc<ReloadingConfig<rustls::ClientConfig>>),
}

impl ClientTls {
    /// Presents `files.cert` and trusts `files.ca`, reloading them when they change.
    pub fn from_files(files: &plexus_agent_api::tls::TlsFiles) -> anyhow::Result<Self> {
        Ok(Self::Files(Arc::new(ReloadingConfig::client(files)?)))
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<rustls::ClientConfig> {
        match self {
            Self::Fixed(config) => config.clone(),
            Self::Files(reloading) => reloading.current(),
        }
    }
}

impl From<Arc<rustls::ClientConfig>> for ClientTls {
    fn from(config: Arc<rustls::ClientConfig>) -> Self {
        Self::Fixed(config)
    }
}

/// Where a listener takes the configuration of each handshake.
#[derive(Clone)]
enum ServerTls {
    Fixed(Arc<rustls::ServerConfig>),
    Files(Arc<ReloadingConfig>),
}

impl ServerTls {
    fn current(&self) -> Arc<rustls::ServerConfig> {
        match self {
            Self::Fixed(config) => config.clone(),
            Self::Files(reloading) => reloading.current(),
        }
    }
}

/// TLS connections whose handshake succeeded, for `axum::serve`.
pub struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl TlsListener {
    /// Accepts on `tcp` with the server configuration `config`
    /// (`plexus_agent_api::tls::server_config`).
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        Self::with(tcp, ServerTls::Fixed(config))
    }

    /// Accepts on `tcp` with the certificate, key and CA of `files`, reloaded when they change
    /// (see [`ReloadingConfig`]).
    pub fn from_files(
        tcp: TcpListener,
        files: &plexus_agent_api::tls::TlsFiles,
    ) -> anyhow::Result<Self> {
        let config = ReloadingConfig::new(files)?;
        Ok(Self::with(tcp, ServerTls::Files(Arc::new(config)))?)
    }

    fn with(tcp: TcpListener, source: ServerTls) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(16);
        let acceptor = tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(conn) => conn,
                    Err(err) => {
                        // Out of file descriptors and the like: back off, then go on.
                        tracing::warn!(error = %err, "API accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let tls = tokio_rustls::TlsAcceptor::from(source.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let common_name = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(plexus_agent_api::tls::common_name);
                            let _ = tx.send((stream, Peer { addr, common_name })).await;
                        }
                        Ok(Err(err)) => {
                            tracing::info!(peer = %addr, error = %err, "API client refused at the TLS handshake");
                        }
                        Err(_) => {
                            tracing::info!(peer = %addr, "API client did not complete its TLS handshake in time");
                        }
                    }
                });
            }
        });
        Ok(Self {
            local,
            ready,
            acceptor,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor task only ends when aborted, with the listener: wait forever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            common_name: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Refuses writes from clients other than the admin of `cluster`.
async fn authorize(State(cluster): State<Arc<str>>, request: Request, next: Next) -> Response {
    // No peer means the router was served without TLS: refuse rather than assume.
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<Peer>>().cloned() else {
        return forbidden("no client identity".into());
    };
    let access = Access::of(peer.common_name.as_deref(), &cluster);
    if access.allows(request.method()) {
        return next.run(request).await;
    }
    tracing::info!(peer = %peer.addr, client = ?peer.common_name, method = %request.method(), path = request.uri().path(), "API write refused");
    forbidden(format!(
        "{} {}: client {} may only read; writes need admin-{cluster}",
        request.method(),
        request.uri().path(),
        peer.common_name
            .as_deref()
            .unwrap_or("without a common name"),
    ))
}

/// The API's error answer for a refused request.
fn forbidden(message: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(ErrorBody::new(ErrorKind::Forbidden, message)),
    )
        .into_response()
}

/// `router` with the TCP API's authorization for an agent of `cluster`.
pub fn authorized(router: Router, cluster: &str) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        Arc::<str>::from(cluster),
        authorize,
    ))
}

/// Listens on `addr` with mutual TLS from `files` (reloaded when they change) and serves
/// `router` (authorized for `cluster`) until the returned task is dropped or aborted.
pub async fn start(
    addr: SocketAddr,
    files: &plexus_agent_api::tls::TlsFiles,
    router: Router,
    cluster: &str,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    use anyhow::Context as _;
    let tcp = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr}"))?;
    let listener =
        TlsListener::from_files(tcp, files).with_context(|| format!("listen on {addr}"))?;
    let cluster = cluster.to_string();
    Ok(tokio::spawn(async move {
        serve(listener, router, &cluster).await
    }))
}

/// Serves `router` (authorized for `cluster`) on `listener` until the task is dropped.
pub async fn serve(listener: TlsListener, router: Router, cluster: &str) -> std::io::Result<()> {
    axum::serve(
        listener,
        authorized(router, cluster).into_make_service_with_connect_info::<Peer>(),
    )
    .await
}

#[cfg(test)]
mod tests {
    //! Real mutual TLS on loopback: certificates from a real CA (`plexus_pki`), the real client
    //! of `plexus_agent_api`, the server of this module.

    use super::*;
    use axum::routing::get;
    use plexus_agent_api::{ApiError as ClientError, Client, Endpoint, Method};
    use std::path::Path;

    fn write(
        dir: &Path,
        name: &str,
        issued: &plexus_pki::Issued,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        issued.write_to(dir, name).unwrap()
    }

    struct Setup {
        dir: tempfile::TempDir,
        addr: String,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Drop for Setup {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    impl Setup {
        fn client(&self, ca: &str, identity: Option<&str>) -> Client {
            let d = self.dir.path();
            let files = identity.map(|n| (d.join(format!("{n}.crt")), d.join(format!("{n}.key"))));
            let config = plexus_agent_api::tls::client_config(
                &d.join(format!("{ca}.crt")),
                files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )
            .unwrap();
            Client::new(Endpoint::Tls {
                addr: self.addr.clone(),
                config,
            })
            .with_timeout(Duration::from_secs(5))
        }
    }

    async fn setup() -> Setup {
        plexus_kvstore::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = plexus_pki::Ca::generate("plexus-ca").unwrap();
        ca.pem().write_to(d, "ca").unwrap();
        let other = plexus_pki::Ca::generate("other-ca").unwrap();
        other.pem().write_to(d, "other-ca").unwrap();
        let server_cert = ca
            .issue_server("agent-n1", &[], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let (cert, key) = write(d, "server", &server_cert);
        write(d, "admin", &ca.issue_client("admin-c1").unwrap());
        write(d, "reader", &ca.issue_client("remote-c2").unwrap());
        write(d, "other-admin", &ca.issue_client("admin-c2").unwrap());
        write(d, "stranger", &other.issue_client("admin-c1").unwrap());
        let config = plexus_agent_api::tls::server_config(&plexus_agent_api::tls::TlsFiles {
            ca: d.join("ca.crt"),
            cert,
            key,
        })
        .unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap().to_string();
        let listener = TlsListener::new(tcp, config).unwrap();
        let router = Router::new()
            .route("/v1/healthz", get(|| async { axum::Json("ok") }))
            .route(
                "/v1/endpoint/{id}",
                get(|| async { axum::Json(plexus_agent_api::Empty {}) })
                    .delete(|| async { axum::Json(plexus_agent_api::Empty {}) }),
            );
        let server = tokio::spawn(async move { serve(listener, router, "c1").await });
        Setup { dir, addr, server }
    }

    async fn delete(client: &Client) -> Result<plexus_agent_api::Empty, ClientError> {
        client
            .send(
                Method::DELETE,
                "/v1/endpoint/x",
                &plexus_agent_api::Empty {},
            )
            .await
    }

    #[tokio::test]
    async fn mtls_reads_for_the_ca_writes_for_the_admin_and_refuses_strangers() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let s = setup().await;

            // Any certificate of the cluster's CA reads.
            for who in ["admin", "reader", "other-admin"] {
                let c = s.client("ca", Some(who));
                assert_eq!(c.healthz().await.unwrap(), "ok", "{who}");
            }
            // Only the cluster's admin writes; the others are refused with kind forbidden.
            delete(&s.client("ca", Some("admin"))).await.unwrap();
            for who in ["reader", "other-admin"] {
                let err = delete(&s.client("ca", Some(who))).await.unwrap_err();
                assert_eq!(err.kind(), Some(ErrorKind::Forbidden), "{who}: {err}");
                assert!(err.to_string().contains("admin-c1"), "{err}");
            }

            // A certificate of another CA, or none, is refused at the handshake: no answer.
            for who in [Some("stranger"), None] {
                let err = s.client("ca", who).healthz().await.unwrap_err();
                assert!(
                    matches!(err, ClientError::Unreachable { .. }),
                    "{who:?}: {err}"
                );
            }
            // A client that does not trust the server's CA refuses it too.
            let err = s
                .client("other-ca", Some("stranger"))
                .healthz()
                .await
                .unwrap_err();
            assert!(
                matches!(&err, ClientError::Unreachable { reason, .. } if reason.contains("TLS handshake")),
                "{err}"
            );

            // Refused handshakes do not stop the listener.
            assert_eq!(s.client("ca", Some("reader")).healthz().await.unwrap(), "ok");
        })
        .await
        .expect("the mTLS test timed out");
    }

    /// One HTTP/1.1 request on an established connection; returns the status line.
    async fn request_on(
        stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
        path: &str,
    ) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test]
    async fn a_renewed_server_certificate_serves_new_connections_and_old_ones_stay() {
        tokio::time::timeout(Duration::from_secs(60), async {
            plexus_kvstore::install_crypto_provider();
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let ca = plexus_pki::Ca::generate("plexus-ca").unwrap();
            ca.pem().write_to(d, "ca").unwrap();
            let ip = ["127.0.0.1".parse().unwrap()];
            let short = ca
                .issue_server_for("agent-n1", &[], &ip, Duration::from_secs(3))
                .unwrap();
            let (cert, key) = short.write_to(d, "server").unwrap();
            let first_expiry = plexus_pki::inspect(&short.cert_pem).unwrap().not_after;
            // The client's certificate is short-lived and renewed too (the relay's identity).
            let reader = ca
                .issue_client_for("remote-c2", Duration::from_secs(3))
                .unwrap();
            let (reader_cert, reader_key) = write(d, "reader", &reader);
            let first_expiry =
                first_expiry.max(plexus_pki::inspect(&reader.cert_pem).unwrap().not_after);
            let client_tls = ClientTls::from_files(&plexus_agent_api::tls::TlsFiles {
                ca: d.join("ca.crt"),
                cert: reader_cert,
                key: reader_key,
            })
            .unwrap();
            let files = plexus_agent_api::tls::TlsFiles {
                ca: d.join("ca.crt"),
                cert,
                key,
            };
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = tcp.local_addr().unwrap();
            let listener = TlsListener::from_files(tcp, &files).unwrap();
            let router = Router::new().route("/v1/healthz", get(|| async { axum::Json("ok") }));
            let server = tokio::spawn(async move { serve(listener, router, "c1").await });
            let connect = || async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                tokio_rustls::TlsConnector::from(client_tls.current())
                    .connect("127.0.0.1".try_into().unwrap(), tcp)
                    .await
            };

            // A connection established with the first certificate.
            let mut old = connect().await.unwrap();
            assert!(request_on(&mut old, "/v1/healthz").await.contains("200"));

            // Renewed on disk; then the first certificate expires.
            ca.issue_server_for("agent-n1", &[], &ip, Duration::from_secs(3600))
                .unwrap()
                .write_to(d, "server")
                .unwrap();
            ca.issue_client_for("remote-c2", Duration::from_secs(3600))
                .unwrap()
                .write_to(d, "reader")
                .unwrap();
            let left = first_expiry + 1 - plexus_pki::unix_now();
            if left > 0 {
                tokio::time::sleep(Duration::from_secs(left as u64)).await;
            }

            // New connections get the renewed certificate, the old one keeps working.
            let mut new = connect()
                .await
                .expect("the renewed certificate is accepted");
            let presented = new.get_ref().1.peer_certificates().unwrap()[0].clone();
            let renewed = {
                use rustls::pki_types::pem::PemObject as _;
                rustls::pki_types::CertificateDer::from_pem_file(d.join("server.crt")).unwrap()
            };
            assert_eq!(presented, renewed);
            assert!(request_on(&mut new, "/v1/healthz").await.contains("200"));
            assert!(request_on(&mut old, "/v1/healthz").await.contains("200"));
            server.abort();
        })
        .await
        .expect("the renewal test timed out");
    }
}
