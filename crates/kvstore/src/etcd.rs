//! The etcd v3 backend.
//!
//! [`EtcdBackend`] speaks etcd's gRPC API through etcd-client, optionally over TLS with a client
//! certificate (etcd with `--client-cert-auth` takes the certificate's CN as the user). It
//! promises the [`KvBackend`] contract on etcd 3.4 and later:
//! - listings are paginated at one fixed revision, so a prefix of any size is read consistently
//!   without hitting gRPC message limits;
//! - unary requests time out after [`EtcdConfig::request_timeout`]; HTTP/2 keep-alives (no more
//!   often than etcd tolerates) notice a dead server under an open watch;
//! - permission errors become [`Error::PermissionDenied`], transport failures
//!   [`Error::Unavailable`] classified from their cause chain (see [`crate::error`]), a
//!   compacted watch start [`Error::Compacted`];
//! - when `get` or `status` (what connection probes and health checks use) fail over TLS
//!   without a reason the transport saw, the server is asked why with a fresh handshake
//!   ([`crate::diagnose`]): with TLS 1.3 a refused client certificate otherwise shows only as
//!   a broken pipe;
//! - certificates renewed on disk are used without a restart: at most once a second an
//!   operation compares the TLS files with those the client was made from, and when they
//!   changed (and the new certificate and key belong together) it makes a new client with them
//!   ([`TlsReloader`]). New requests use it, hence new TLS connections present the new
//!   certificate and trust the new CA bundle; watches and lease keep-alives already open stay on
//!   their connection until they end, so renewing never breaks a connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn as EtcdTxn, TxnOp, WatchOptions,
};
use futures::StreamExt;

use crate::backend::{
    BoxWatchStream, Compare, KeyValue, KvBackend, LeaseId, ListResult, Op, RawEvent, RawEventKind,
    Revision, Status, Txn,
};
use crate::error::{ErrorKind, Failure};
use crate::{Error, Result};

/// Files of a TLS client identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate that signed the server's certificate (PEM).
    pub ca_file: PathBuf,
    /// Client certificate (PEM); its CN is the etcd user.
    pub cert_file: PathBuf,
    /// Client private key (PEM).
    pub key_file: PathBuf,
}

/// Only some of a CA, a client certificate and its key were given.
#[derive(Debug, thiserror::Error)]
#[error("the CA, the client certificate and its key go together: give all three or none")]
pub struct IncompleteTls;

impl TlsFiles {
    /// The files given as three optional parts (as command-line flags are): all three make a
    /// TLS configuration, none makes plain TCP, anything else is an error.
    pub fn from_parts(
        ca: Option<&PathBuf>,
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
    ) -> std::result::Result<Option<Self>, IncompleteTls> {
        match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(Self {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => Err(IncompleteTls),
        }
    }
}

/// How to reach an etcd cluster.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `https://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// TLS client identity; required for `https://` endpoints.
    pub tls: Option<TlsFiles>,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Limit on each unary request.
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive ping interval.
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may stay unanswered before the connection is dropped.
    pub keep_alive_timeout: Duration,
}

impl EtcdConfig {
    /// A configuration with default timeouts: connect 5 s, requests 10 s, HTTP/2 keep-alive
    /// pings after 10 s without traffic with a 5 s timeout.
    ///
    /// etcd's gRPC server treats pings more frequent than its `--grpc-keepalive-min-time`
    /// (5 s by default), or pings on a connection without streams, as abuse and closes the
    /// connection ("too_many_pings"), which would break every quiet watch: keep the interval
    /// above 5 s. Fast failure detection belongs to request timeouts and health checks.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the TLS client identity.
    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// How often, at most, the TLS files are compared with those in use.
const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The current etcd clients (one per endpoint, in the order given), made again from the TLS
/// files when they change on disk.
struct TlsReloader {
    current: std::sync::RwLock<Members>,
    state: tokio::sync::Mutex<ReloadState>,
}

struct ReloadState {
    /// Contents of the CA, certificate and key files the current client was made from.
    loaded: Option<[Vec<u8>; 3]>,
    /// When the files were last compared.
    checked: std::time::Instant,
    /// Contents last refused (a certificate without its key yet), not to log them again.
    refused: Option<[Vec<u8>; 3]>,
}

/// One client per endpoint: each talks to its member only, so that a request can be sent to
/// another member when this one fails (etcd-client balances one channel over all endpoints and
/// keeps sending to a dead one, failing those requests).
type Members = Arc<[Client]>;

impl TlsReloader {
    fn new(clients: Members, loaded: Option<[Vec<u8>; 3]>) -> Self {
        Self {
            current: std::sync::RwLock::new(clients),
            state: tokio::sync::Mutex::new(ReloadState {
                loaded,
                checked: std::time::Instant::now(),
                refused: None,
            }),
        }
    }

    fn get(&self) -> Members {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Whether `cert` (PEM) is a certificate whose public key belongs to `key` (PEM): a pair read
/// while only one of the two was replaced is not used.
fn pair_matches(cert: &[u8], key: &[u8]) -> std::result::Result<(), String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the certificate file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key: {e}"))?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| format!("key: {e}"))?;
    rustls::sign::CertifiedKey::new(certs, signing)
        .keys_match()
        .map_err(|e| format!("the certificate does not belong to the key: {e}"))
}

/// Whether a failed request may be sent again, to another member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replay {
    /// Reads, and writes whose repetition leaves the same state (a put of the same value, a
    /// delete, a lease grant whose unused twin expires): after any member failure.
    Always,
    /// Transactions with conditions: only when the request surely did not reach a member that
    /// could apply it (connection refused, no leader), since a compare-and-set applied twice
    /// answers "no". (A transaction without conditions is a batch of puts and deletes, sent
    /// again like them.)
    IfNotSent,
}

/// Whether `err` says the member we asked is gone or cannot serve right now (rather than that
/// the request itself was refused), so that another member should be asked.
fn member_failed(err: &etcd_client::Error, replay: Replay) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    let not_sent = || {
        let text = err.to_string();
        text.contains("no leader")
            || matches!(map_err("", clone_for_kind(err)).kind(), ErrorKind::Refused)
    };
    let maybe_sent = match err {
        E::GRpcStatus(s) => {
            matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
            ) && !s.message().contains("permission denied")
        }
        E::TransportError(_) | E::IoError(_) => true,
        _ => false,
    };
    maybe_sent && (replay == Replay::Always || not_sent())
}

/// A copy of `err` good enough to classify it (etcd-client's error is not `Clone`).
fn clone_for_kind(err: &etcd_client::Error) -> etcd_client::Error {
    use etcd_client::Error as E;
    match err {
        E::IoError(e) => E::IoError(std::io::Error::new(e.kind(), e.to_string())),
        E::GRpcStatus(s) => E::GRpcStatus(s.clone()),
        other => E::Internal(other.to_string()),
    }
}

/// A [`KvBackend`] on etcd v3.
#[derive(Clone)]
pub struct EtcdBackend {
    client: Arc<TlsReloader>,
    /// The member requests go to first; moves on to the next when that member fails.
    preferred: Arc<std::sync::atomic::AtomicUsize>,
    request_timeout: Duration,
    /// The endpoints, comma-separated, to name in errors.
    endpoints: Arc<str>,
    /// The endpoints and TLS files, to ask a server why it dropped us.
    config: Arc<EtcdConfig>,
}

/// Keys per page when listing a prefix.
const LIST_PAGE: i64 = 5_000;

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))
}

/// Turns an etcd-client error from `context` (the operation and where) into ours: auth and
/// argument errors by their gRPC code, everything else an [`Error::Unavailable`] classified
/// from its cause chain.
pub(crate) fn map_err(context: &str, err: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    let chain: Vec<&(dyn std::error::Error + 'static)> = match &err {
        E::GRpcStatus(status) => {
            let msg = status.message().to_string();
            match status.code() {
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                    return Error::PermissionDenied(msg);
                }
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                    return Error::Rejected(msg);
                }
                _ if msg.contains("permission denied") => return Error::PermissionDenied(msg),
                _ => {}
            }
            crate::error::chain_of(status)
        }
        E::TransportError(e) => crate::error::chain_of(e),
        E::IoError(e) => crate::error::chain_of(e),
        E::InvalidUri(e) => return Error::Config(format!("invalid endpoint: {e}")),
        E::InvalidArgs(e) => return Error::Config(e.clone()),
        _ => Vec::new(),
    };
    let (kind, causes) = if chain.is_empty() {
        (ErrorKind::Other, vec![err.to_string()])
    } else {
        let kind = match &err {
            E::GRpcStatus(status) if status.code() == tonic::Code::DeadlineExceeded => {
                ErrorKind::Timeout
            }
            _ => crate::error::classify(&chain),
        };
        (kind, crate::error::chain_messages(&chain))
    };
    Error::Unavailable(Box::new(Failure {
        context: context.to_string(),
        kind,
        causes,
    }))
}

fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    // etcd answers "requested lease not found" on writes and revokes; etcd-client reports a
    // keep-alive on an ended lease as "lease keep alive error: lease not found".
    match err {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = std::str::from_utf8(kv.key()).map_err(|_| Error::InvalidKey {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: "key is not UTF-8".into(),
    })?;
    Ok(KeyValue {
        key: key.to_string(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    })
}

/// The smallest key greater than every key with this prefix (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // empty prefix: every key
}

impl EtcdBackend {
    /// Connects to etcd. Installs the rustls crypto provider first.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        crate::install_crypto_provider();
        if config.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoints given".into()));
        }
        let mut options = Self::base_options(&config);
        let mut loaded = None;
        if let Some(tls) = &config.tls {
            let files = Self::read_tls(tls)?;
            options = Self::with_tls_files(options, &files);
            loaded = Some(files);
        } else if config.endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err(Error::Config(
                "https endpoints need TLS files (ca, cert, key)".into(),
            ));
        }
        let endpoints: Arc<str> = config.endpoints.join(",").into();
        let context = format!("connect to {endpoints}");
        let client = tokio::time::timeout(
            config.connect_timeout,
            Self::connect_members(&config.endpoints, options),
        )
        .await
        .map_err(|_| {
            Error::Unavailable(Box::new(Failure {
                context: context.clone(),
                kind: ErrorKind::Timeout,
                causes: vec![format!("no connection within {:?}", config.connect_timeout)],
            }))
        })?
        .map_err(|e| match (map_err(&context, e), &config.tls) {
            // Connecting touches no network (etcd-client connects on the first request), so a
            // certificate refused here is our own: rustls will not load it.
            (Error::Unavailable(f), Some(tls)) if matches!(f.kind, ErrorKind::Tls { .. }) => {
                let reason = match &f.kind {
                    ErrorKind::Tls { reason, .. } => reason.to_string(),
                    _ => f.chain(),
                };
                Error::Config(format!(
                    "cannot use the client certificate {}: {reason}",
                    tls.cert_file.display()
                ))
            }
            (err, _) => err,
        })?;
        Ok(Self {
            client: Arc::new(TlsReloader::new(client, loaded)),
            preferred: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            request_timeout: config.request_timeout,
            endpoints,
            config: Arc::new(config),
        })
    }

    /// One client per endpoint (connecting touches no network).
    async fn connect_members(
        endpoints: &[String],
        options: ConnectOptions,
    ) -> std::result::Result<Members, etcd_client::Error> {
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            clients.push(Client::connect([endpoint], Some(options.clone())).await?);
        }
        Ok(clients.into())
    }

    fn read_tls(tls: &TlsFiles) -> Result<[Vec<u8>; 3]> {
        Ok([
            read_file(&tls.ca_file, "CA file")?,
            read_file(&tls.cert_file, "certificate file")?,
            read_file(&tls.key_file, "key file")?,
        ])
    }

    fn with_tls_files(options: ConnectOptions, files: &[Vec<u8>; 3]) -> ConnectOptions {
        let [ca, cert, key] = files.clone();
        options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(cert, key)),
        )
    }

    /// The client for a new request: the current one, made again first if the TLS files
    /// changed on disk since it was made (checked at most once per [`TLS_CHECK_INTERVAL`]).
    async fn current(&self) -> Members {
        let Some(tls) = &self.config.tls else {
            return self.client.get();
        };
        // Another request is checking: use what is there.
        let Ok(mut state) = self.client.state.try_lock() else {
            return self.client.get();
        };
        if state.checked.elapsed() < TLS_CHECK_INTERVAL {
            return self.client.get();
        }
        state.checked = std::time::Instant::now();
        let files = match Self::read_tls(tls) {
            Ok(files) => files,
            Err(err) => {
                tracing::warn!(endpoints = %self.endpoints, error = %err, "cannot read the TLS files again; keeping the ones loaded");
                return self.client.get();
            }
        };
        if state.loaded.as_ref() == Some(&files) || state.refused.as_ref() == Some(&files) {
            return self.client.get();
        }
        if let Err(reason) = pair_matches(&files[1], &files[2]) {
            tracing::warn!(endpoints = %self.endpoints, cert = %tls.cert_file.display(), key = %tls.key_file.display(), %reason, "changed TLS files not used (yet)");
            state.refused = Some(files);
            return self.client.get();
        }
        let options = Self::with_tls_files(self.connect_options(), &files);
        match Self::connect_members(&self.config.endpoints, options).await {
            Ok(client) => {
                tracing::info!(endpoints = %self.endpoints, cert = %tls.cert_file.display(), "TLS files changed: new connections use them");
                match self.client.current.write() {
                    Ok(mut c) => *c = client,
                    Err(poisoned) => *poisoned.into_inner() = client,
                }
                state.loaded = Some(files);
                state.refused = None;
            }
            Err(err) => {
                tracing::warn!(endpoints = %self.endpoints, cert = %tls.cert_file.display(), error = %err, "changed TLS files not used");
                state.refused = Some(files);
            }
        }
        self.client.get()
    }

    fn connect_options(&self) -> ConnectOptions {
        Self::base_options(&self.config)
    }

    fn base_options(config: &EtcdConfig) -> ConnectOptions {
        ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(config.keep_alive_interval, config.keep_alive_timeout)
            // etcd refuses pings on a connection without streams.
            .with_keep_alive_while_idle(false)
    }

    /// The endpoints this backend talks to, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Refines a failure the transport could not classify (a TLS connection dropped without a
    /// reason it saw) by asking the server with a fresh handshake; see [`crate::diagnose`].
    async fn refine(&self, err: Error) -> Error {
        let Some(tls) = &self.config.tls else {
            return err;
        };
        let mut failure = match err {
            Error::Unavailable(f) if f.kind == ErrorKind::Other => f,
            other => return other,
        };
        for endpoint in &self.config.endpoints {
            if let Some(kind) = crate::diagnose::why_dropped(endpoint, tls).await {
                failure.causes.push(format!(
                    "a fresh handshake with {endpoint} tells why: {kind}"
                ));
                failure.kind = kind;
                break;
            }
        }
        Error::Unavailable(failure)
    }

    /// Maps an error of request `op` (naming the endpoints).
    fn err(&self, op: &str) -> impl FnOnce(etcd_client::Error) -> Error + '_ {
        let context = format!("{op} on {}", self.endpoints);
        move |e| map_err(&context, e)
    }

    /// The client of the preferred member (cheap to clone), for the auth helpers.
    pub(crate) async fn client(&self) -> Client {
        let members = self.current().await;
        let i = self.preferred.load(std::sync::atomic::Ordering::Relaxed) % members.len();
        members[i].clone()
    }

    /// Sends a request made by `request` to the preferred member and, when that member fails
    /// (see [`member_failed`]), to the next ones in turn, round after round with a short pause
    /// (an election after the loss of the leader takes about a second), until one answers or
    /// [`EtcdConfig::request_timeout`] has passed. The member that answered stays preferred.
    async fn call<T, F, Fut>(
        &self,
        what: &str,
        replay: Replay,
        mut request: F,
    ) -> std::result::Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        use std::sync::atomic::Ordering;
        let members = self.current().await;
        let n = members.len();
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut failures = 0usize;
        loop {
            let i = self.preferred.load(Ordering::Relaxed) % n;
            let err = match self.timed(what, request(members[i].clone())).await {
                Ok(answer) => return Ok(answer),
                Err(err) if n > 1 && member_failed(&err, replay) => err,
                Err(err) => return Err(err),
            };
            tracing::debug!(
                endpoint = %self.config.endpoints[i],
                error = %err,
                "{what}: member failed, asking the next one"
            );
            // Another request may have moved on already: then keep its choice.
            let _ = self.preferred.compare_exchange(
                i,
                (i + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            failures += 1;
            if failures.is_multiple_of(n) {
                // Every member failed once more: pause a little longer each round.
                let rounds = (failures / n).min(5) as u64;
                let pause = Duration::from_millis(100 * rounds);
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(err);
                }
                tokio::time::sleep(pause).await;
            }
        }
    }

    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> std::result::Result<T, etcd_client::Error> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{what}: no answer within {:?}", self.request_timeout),
            ))),
        }
    }

    fn convert_compare(compare: Compare) -> EtcdCompare {
        match compare {
            Compare::Absent(key) => EtcdCompare::create_revision(key, CompareOp::Equal, 0),
            Compare::PrefixEmpty(prefix) => {
                let end = prefix_end(&prefix);
                EtcdCompare::create_revision(prefix, CompareOp::Equal, 0).with_range(end)
            }
            Compare::ModRevision(key, rev) => EtcdCompare::mod_revision(key, CompareOp::Equal, rev),
            Compare::Value(key, value) => EtcdCompare::value(key, CompareOp::Equal, value),
        }
    }

    fn convert_op(op: Op) -> TxnOp {
        match op {
            Op::Put { key, value, lease } => {
                TxnOp::put(key, value, lease.map(|l| PutOptions::new().with_lease(l)))
            }
            Op::Delete(key) => TxnOp::delete(key, None),
        }
    }
}

#[async_trait]
impl KvBackend for EtcdBackend {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = match self
            .call("get", Replay::Always, |mut c| async move {
                c.get(key, None).await
            })
            .await
        {
            Ok(resp) => resp,
            Err(err) => return Err(self.refine(self.err(&format!("get {key}"))(err)).await),
        };
        resp.kvs().first().map(convert_kv).transpose()
    }

    async fn list_prefix(&self, prefix: &str) -> Result<ListResult> {
        let end = prefix_end(prefix);
        let mut kvs = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            // Every page may come from another member: all of them are read at the
            // revision of the first, so the listing stays consistent.
            let resp = self
                .call("list", Replay::Always, |mut c| {
                    let (from, options) = (from.clone(), options.clone());
                    async move { c.get(from, Some(options)).await }
                })
                .await
                .map_err(self.err(&format!("list {prefix}")))?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            for kv in resp.kvs() {
                kvs.push(convert_kv(kv)?);
            }
            match (resp.more(), resp.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(ListResult { kvs, revision })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        let sent = self
            .call("put", Replay::Always, |mut c| {
                let (value, options) = (value.clone(), options.clone());
                async move { c.put(key, value, options).await }
            })
            .await;
        match sent {
            Ok(resp) => Ok(resp.header().map(|h| h.revision()).unwrap_or_default()),
            Err(err) if is_lease_not_found(&err) => Err(Error::LeaseNotFound(lease.unwrap_or(0))),
            Err(err) => Err(self.err(&format!("put {key}"))(err)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let resp = self
            .call("delete", Replay::Always, |mut c| async move {
                c.delete(key, None).await
            })
            .await
            .map_err(self.err(&format!("delete {key}")))?;
        Ok(resp.deleted() > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let options = etcd_client::DeleteOptions::new().with_range(prefix_end(prefix));
        let resp = self
            .call("delete prefix", Replay::Always, |mut c| {
                let options = options.clone();
                async move { c.delete(prefix, Some(options)).await }
            })
            .await
            .map_err(self.err(&format!("delete prefix {prefix}")))?;
        Ok(resp.deleted().max(0) as u64)
    }

    async fn txn(&self, txn: Txn) -> Result<bool> {
        let lease = txn.ops.iter().find_map(|op| match op {
            Op::Put { lease, .. } => *lease,
            Op::Delete(_) => None,
        });
        let replay = if txn.compares.is_empty() {
            Replay::Always
        } else {
            Replay::IfNotSent
        };
        let request = EtcdTxn::new()
            .when(
                txn.compares
                    .into_iter()
                    .map(Self::convert_compare)
                    .collect::<Vec<_>>(),
            )
            .and_then(
                txn.ops
                    .into_iter()
                    .map(Self::convert_op)
                    .collect::<Vec<_>>(),
            );
        let sent = self
            .call("txn", replay, |mut c| {
                let request = request.clone();
                async move { c.txn(request).await }
            })
            .await;
        match sent {
            Ok(resp) => Ok(resp.succeeded()),
            Err(err) if is_lease_not_found(&err) => Err(Error::LeaseNotFound(lease.unwrap_or(0))),
            Err(err) => Err(self.err("txn")(err)),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<BoxWatchStream> {
        let mut options = WatchOptions::new().with_range(prefix_end(prefix));
        if from > 0 {
            options = options.with_start_revision(from);
        }
        let stream = self
            .call("watch", Replay::Always, |mut c| {
                let options = options.clone();
                async move { c.watch(prefix, Some(options)).await }
            })
            .await
            .map_err(self.err(&format!("watch {prefix}")))?;
        let requested = from;
        let context = format!("watch {prefix} on {}", self.endpoints);
        let events = futures::stream::unfold(Some(stream), move |state| {
            let context = context.clone();
            async move {
                let mut stream = state?;
                loop {
                    let resp = match stream.message().await {
                        Ok(Some(resp)) => resp,
                        Ok(None) => {
                            return Some((
                                Err(Error::WatchBroken("watch stream ended".into())),
                                None,
                            ));
                        }
                        Err(err) => {
                            let err = match map_err(&context, err) {
                                Error::Unavailable(f) => Error::WatchBroken(f.to_string()),
                                other => other,
                            };
                            return Some((Err(err), None));
                        }
                    };
                    if resp.canceled() {
                        let err = if resp.compact_revision() > 0 {
                            Error::Compacted {
                                requested,
                                compact_revision: resp.compact_revision(),
                            }
                        } else {
                            Error::WatchBroken(format!("watch canceled: {}", resp.cancel_reason()))
                        };
                        return Some((Err(err), None));
                    }
                    if resp.events().is_empty() {
                        continue; // creation or progress notification
                    }
                    let mut batch = Vec::with_capacity(resp.events().len());
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        let kv = match convert_kv(kv) {
                            Ok(kv) => kv,
                            Err(err) => {
                                tracing::warn!(error = %err, "skipping a watch event");
                                continue;
                            }
                        };
                        let kind = match event.event_type() {
                            EventType::Put => RawEventKind::Put,
                            EventType::Delete => RawEventKind::Delete,
                        };
                        batch.push(RawEvent { kind, kv });
                    }
                    if !batch.is_empty() {
                        return Some((Ok(batch), Some(stream)));
                    }
                }
            }
        });
        Ok(events.boxed())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .call("lease grant", Replay::Always, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await
            .map_err(self.err("lease grant"))?;
        Ok(resp.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let once = self
            .call("lease keep-alive", Replay::Always, |mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
        match once {
            Ok(Some(resp)) if resp.ttl() > 0 => Ok(Duration::from_secs(resp.ttl() as u64)),
            Ok(Some(_)) => Err(Error::LeaseNotFound(lease)),
            Ok(None) => Err(Error::Unavailable("lease keep-alive stream closed".into())),
            Err(err) if is_lease_not_found(&err) => Err(Error::LeaseNotFound(lease)),
            Err(err) => Err(self.err("lease keep-alive")(err)),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        let sent = self
            .call("lease revoke", Replay::Always, |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(err) if is_lease_not_found(&err) => Err(Error::LeaseNotFound(lease)),
            Err(err) => Err(self.err("lease revoke")(err)),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let sent = self
            .call("compact", Replay::Always, |mut c| async move {
                c.compact(revision, None).await
            })
            .await;
        match sent {
            Ok(_) => Ok(()),
            // Already compacted at or past this revision: nothing to do.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("compacted") => Ok(()),
            Err(err) => Err(self.err("compact")(err)),
        }
    }

    async fn status(&self) -> Result<Status> {
        let resp = match self
            .call(
                "status",
                Replay::Always,
                |mut c| async move { c.status().await },
            )
            .await
        {
            Ok(resp) => resp,
            Err(err) => return Err(self.refine(self.err("status")(err)).await),
        };
        Ok(Status {
            version: resp.version().to_string(),
            revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
            db_size: resp.db_size(),
            leader: resp.leader(),
            cluster_id: resp.header().map(|h| h.cluster_id()).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{PathBuf, TlsFiles, prefix_end};

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("a/b/"), b"a/b0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn tls_parts_are_all_or_nothing() {
        let p = PathBuf::from("/x");
        assert!(matches!(TlsFiles::from_parts(None, None, None), Ok(None)));
        assert!(matches!(
            TlsFiles::from_parts(Some(&p), Some(&p), Some(&p)),
            Ok(Some(_))
        ));
        assert!(TlsFiles::from_parts(Some(&p), None, Some(&p)).is_err());
    }
}
