//! The apiserver of one cluster: owns its etcd and what the cluster publishes to its peers.
//!
//! [`ApiServer::start`]:
//! 1. uses the etcd endpoints it is given, or starts and supervises a local member
//!    ([`crate::local_etcd`]) with TLS and client-certificate auth, its certificates in
//!    `<state-dir>/pki` (a CA of the cluster's own is created when none was installed);
//! 2. creates the users and roles of the wire format's access control and enables auth
//!    ([`plexus_clustermesh::access`]);
//! 3. keeps the cluster config, the heartbeat and the sync canaries published under its lease
//!    ([`plexus_clustermesh::publish`]) and garbage-collects unused identities;
//! 4. runs the service controller of kvstore mode ([`crate::services`]): backends by selector
//!    and the ClusterService of every global service;
//! 5. optionally (a KVStoreMesh configuration directory given) mirrors the remote clusters into
//!    the local etcd ([`plexus_clustermesh::kvstoremesh`]);
//! 6. serves `/healthz`, `/readyz`, `/metrics` and `/v1/status` ([`crate::http`]), and, with
//!    an API address, its API on TCP with mutual TLS ([`crate::api`]), the flow relay
//!    ([`crate::relay`]) among it.
//!
//! With the CA key in `<state-dir>/pki` (a local etcd, or an API certificate it issued), it
//! renews the certificates it issued before they expire ([`renewal_loop`]): the etcd server,
//! `admin` and `local` certificates and the API's, each once a third of its lifetime remains,
//! with the lifetime it had. etcd reads its server certificate at every new connection, and
//! the apiserver's etcd client and API listener reload theirs, so renewal breaks no
//! connection.
//!
//! It is ready once etcd answers, the access rules are in place, the cluster config is
//! published and, with KVStoreMesh, every configured remote has synced once.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use plexus_clustermesh::kvstoremesh::KvStoreMesh;
use plexus_clustermesh::mesh::MeshHandle;
use plexus_clustermesh::publish::{PublisherConfig, SelfPublisher};
use plexus_clustermesh::remote_cluster::DriverTiming;
use plexus_kvstore::{
    EtcdBackend, EtcdConfig, KvBackend, KvMetrics, LeaseManager, MeteredBackend, SyncStore,
    SyncStoreConfig, TlsFiles,
};
use plexus_model::cluster::ClusterInfo;
use plexus_model::keys::StateKind;
use plexus_pki::Ca;
use plexus_pki::cluster::ClusterPki;
use serde::{Deserialize, Serialize};

use crate::local_etcd::{LocalEtcd, LocalEtcdConfig};

/// Where the cluster's etcd comes from.
#[derive(Clone, Debug)]
pub enum EtcdSource {
    /// Start and supervise a local member.
    Local {
        /// Client port address, e.g. `127.0.0.1:2379`.
        client_listen: SocketAddr,
        /// Peer port address.
        peer_listen: SocketAddr,
        /// Extra addresses clients reach it by (for the server certificate).
        advertise: Vec<IpAddr>,
    },
    /// Use an existing etcd.
    External {
        /// Its client URLs.
        endpoints: Vec<String>,
        /// Our client identity (CN `admin-<cluster>` or `root`).
        tls: Option<TlsFiles>,
    },
}

/// Everything the apiserver needs.
#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// The cluster.
    pub cluster: ClusterInfo,
    /// Where certificates (`pki/`), etcd data (`etcd/`) and logs live.
    pub state_dir: PathBuf,
    /// The etcd to use.
    pub etcd: EtcdSource,
    /// Health and metrics listener.
    pub http_listen: SocketAddr,
    /// KVStoreMesh: the remote-cluster configuration directory to mirror, if any.
    pub kvstoremesh_dir: Option<PathBuf>,
    /// Heartbeat period (Cilium: one minute).
    pub heartbeat_interval: Duration,
    /// Lease time to live of what the apiserver publishes.
    pub lease_ttl: Duration,
    /// Identity GC period and grace time.
    pub identity_gc_interval: Duration,
    /// Where service addresses are allocated from.
    pub service_cidr: Option<plexus_ipam::Cidr4>,
    /// The API on TCP with mutual TLS, if served.
    pub api: Option<ApiListen>,
    /// The flow relay (served on the API).
    pub relay: crate::relay::RelayConfig,
}

/// Where and how the apiserver's API (mutual TLS) is served.
#[derive(Clone, Debug)]
pub struct ApiListen {
    /// The TCP address.
    pub addr: SocketAddr,
    /// The server certificate, key and the CA of clients; `None`: issued from the cluster's CA
    /// in `<state-dir>/pki` (`apiserver.crt`, CN `apiserver-<cluster>`, for the listen address
    /// and the etcd's advertised addresses).
    pub tls: Option<plexus_agent_api::tls::TlsFiles>,
}

impl ApiServerConfig {
    /// Defaults: heartbeat every minute, 15 s lease, identity GC every 5 minutes.
    pub fn new(
        cluster: ClusterInfo,
        state_dir: PathBuf,
        etcd: EtcdSource,
        http_listen: SocketAddr,
    ) -> Self {
        Self {
            cluster,
            state_dir,
            etcd,
            http_listen,
            kvstoremesh_dir: None,
            heartbeat_interval: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(15),
            identity_gc_interval: Duration::from_secs(300),
            service_cidr: None,
            api: None,
            relay: crate::relay::RelayConfig::default(),
        }
    }
}

/// What `/v1/status` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApiServerStatus {
    /// Cluster name.
    pub cluster: String,
    /// Cluster id.
    pub cluster_id: u32,
    /// The etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// Ready to serve.
    pub ready: bool,
    /// Why not ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<String>,
    /// KVStoreMesh's remotes, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvstoremesh: Option<plexus_clustermesh::report::MeshReport>,
}

/// State shared with the HTTP handlers.
pub(crate) struct Shared {
    pub(crate) cluster: ClusterInfo,
    pub(crate) endpoints: Vec<String>,
    pub(crate) kv: KvMetrics,
    pub(crate) etcd_ok: Mutex<Option<String>>,
    pub(crate) kvstoremesh: Option<MeshHandle>,
    /// Remotes that have been ready at least once: losing one later keeps the cache, and
    /// the apiserver ready.
    pub(crate) synced_once: Mutex<std::collections::BTreeSet<String>>,
    /// The service controller published its first set.
    pub(crate) services_synced: tokio::sync::watch::Receiver<bool>,
    /// The apiserver's own sync queues (canaries, services, backends).
    pub(crate) queues: Vec<plexus_kvstore::QueueGauge>,
    /// KVStoreMesh's cache writers' queues.
    pub(crate) kvstoremesh_queues: Option<plexus_clustermesh::kvstoremesh::SyncQueues>,
}

impl Shared {
    /// Keys waiting to be written, by scope.
    pub(crate) fn queue_sizes(&self) -> Vec<(String, Option<String>, usize)> {
        let mut out = vec![(
            "apiserver".to_string(),
            None,
            self.queues
                .iter()
                .map(plexus_kvstore::QueueGauge::get)
                .sum::<usize>(),
        )];
        if let Some(q) = &self.kvstoremesh_queues {
            for (remote, n) in q.sizes() {
                out.push(("kvstoremesh".to_string(), Some(remote), n));
            }
        }
        out
    }

    pub(crate) fn status(&self) -> ApiServerStatus {
        let mut not_ready = Vec::new();
        if !*self.services_synced.borrow() {
            not_ready.push("services: the first set is not published yet".to_string());
        }
        if let Some(err) = self
            .etcd_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            not_ready.push(format!("etcd: {err}"));
        }
        let kvstoremesh = self.kvstoremesh.as_ref().map(|m| {
            let status = m.status();
            let mut once = self.synced_once.lock().unwrap_or_else(|e| e.into_inner());
            for (name, r) in &status.remotes {
                if r.protocol.ready {
                    once.insert(name.clone());
                }
                if !once.contains(name) {
                    not_ready.push(format!(
                        "kvstoremesh: remote cluster {name} has not synced yet"
                    ));
                }
            }
            plexus_clustermesh::report::MeshReport::from(&status)
        });
        ApiServerStatus {
            cluster: self.cluster.name.clone(),
            cluster_id: self.cluster.id,
            etcd_endpoints: self.endpoints.clone(),
            ready: not_ready.is_empty(),
            not_ready,
            kvstoremesh,
        }
    }
}

/// A running apiserver. Dropping it stops everything (the local etcd too).
pub struct ApiServer {
    http_addr: SocketAddr,
    api_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _publisher: SelfPublisher,
    _canaries: Vec<SyncStore>,
    _services: crate::services::ServiceController,
    _kvstoremesh: Option<KvStoreMesh>,
    leases: Option<LeaseManager>,
    etcd: Option<LocalEtcd>,
}

impl ApiServer {
    /// Starts every part; returns once the cluster config is published and HTTP is served.
    pub async fn start(config: ApiServerConfig) -> Result<Self> {
        plexus_kvstore::install_crypto_provider();
        let cluster = config.cluster.clone();
        // What the renewal loop keeps valid: the etcd certificates for these addresses.
        let mut renew_etcd: Option<Vec<IpAddr>> = None;
        let (etcd, endpoints, tls) = match &config.etcd {
            EtcdSource::Local {
                client_listen,
                peer_listen,
                advertise,
            } => {
                let pki = ClusterPki::new(config.state_dir.join("pki"), &cluster.name);
                if !pki.has_ca() {
                    tracing::info!(dir = %pki.dir().display(), "no CA installed: creating one for this cluster");
                    let ca = Ca::generate(&format!("plexus-{}-ca", cluster.name))?;
                    pki.install_ca(&ca)?;
                }
                let mut ips = advertise.clone();
                if !client_listen.ip().is_unspecified() {
                    ips.push(client_listen.ip());
                }
                pki.ensure(&[], &ips)
                    .with_context(|| format!("issue certificates in {}", pki.dir().display()))?;
                renew_etcd = Some(ips.clone());
                let host = advertise.first().copied().unwrap_or(client_listen.ip());
                let endpoint = format!("https://{}", SocketAddr::new(host, client_listen.port()));
                let (server_cert, server_key) = pki.etcd_server();
                let local = LocalEtcd::start(LocalEtcdConfig {
                    bin: std::env::var_os("PLEXUS_ETCD_BIN")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| "/usr/bin/etcd".into()),
                    name: cluster.name.clone(),
                    data_dir: config.state_dir.join("etcd"),
                    client_listen: client_listen.to_string(),
                    client_advertise: endpoint.clone(),
                    peer_listen: peer_listen.to_string(),
                    server_cert,
                    server_key,
                    trusted_ca: pki.ca_cert(),
                    log_file: config.state_dir.join("etcd.log"),
                })
                .await?;
                let admin = pki.admin();
                let tls = TlsFiles {
                    ca_file: admin.ca,
                    cert_file: admin.cert,
                    key_file: admin.key,
                };
                (Some(local), vec![endpoint], Some(tls))
            }
            EtcdSource::External { endpoints, tls } => (None, endpoints.clone(), tls.clone()),
        };
        let mut etcd_config = EtcdConfig::new(endpoints.clone());
        if let Some(tls) = tls {
            etcd_config = etcd_config.with_tls(tls);
        }
        let raw = connect_with_retry(etcd_config, Duration::from_secs(30)).await?;
        plexus_clustermesh::access::apply(&raw, &cluster.name)
            .await
            .with_context(|| format!("set up the users and roles of {endpoints:?}"))?;
        tracing::info!(cluster = %cluster.name, "etcd users and roles in place, auth enabled");

        let (metered, kv) = MeteredBackend::new(Arc::new(raw));
        let backend: Arc<dyn KvBackend> = Arc::new(metered);
        let leases = LeaseManager::start(backend.clone(), config.lease_ttl)
            .await
            .context("grant the apiserver's lease")?;
        let mut publisher = PublisherConfig::new(cluster.clone());
        publisher.heartbeat_interval = config.heartbeat_interval;
        let publisher = SelfPublisher::start(backend.clone(), &leases, publisher)
            .await
            .context("publish the cluster config and heartbeat")?;

        // Sync canaries of every kind the cluster publishes. Agents write their nodes, ipcache
        // entries and identities themselves; the apiserver states that the cluster is up.
        // The services canary is the service controller's.
        let canaries: Vec<SyncStore> = [StateKind::Nodes, StateKind::Identities, StateKind::Ip]
            .into_iter()
            .map(|kind| {
                let store = SyncStore::start(
                    backend.clone(),
                    &leases,
                    SyncStoreConfig {
                        prefix: kind.state_prefix(&cluster.name),
                        canary: Some(kind.canary(&cluster.name)),
                    },
                );
                store.synced();
                store
            })
            .collect();

        let services = crate::services::ServiceController::spawn(
            backend.clone(),
            leases.subscribe(),
            cluster.clone(),
            config.service_cidr,
        );

        let kvstoremesh = config.kvstoremesh_dir.as_ref().map(|dir| {
            KvStoreMesh::spawn(
                dir.clone(),
                cluster.clone(),
                backend.clone(),
                &leases,
                DriverTiming::default(),
                Duration::from_secs(1),
            )
        });

        let shared = Arc::new(Shared {
            cluster: cluster.clone(),
            endpoints,
            kv,
            etcd_ok: Mutex::new(None),
            kvstoremesh: kvstoremesh.as_ref().map(KvStoreMesh::handle),
            synced_once: Mutex::new(Default::default()),
            services_synced: services.synced(),
            queues: canaries
                .iter()
                .map(SyncStore::queue_gauge)
                .chain(services.queue_gauges())
                .collect(),
            kvstoremesh_queues: kvstoremesh.as_ref().map(KvStoreMesh::queues),
        });
        let mut tasks = Vec::new();
        let gc = plexus_identity::gc::IdentityGc::new(backend.clone(), config.identity_gc_interval);
        tasks.push(tokio::spawn(gc.run(config.identity_gc_interval)));
        tasks.push(tokio::spawn(health_loop(backend.clone(), shared.clone())));

        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("listen on {}", config.http_listen))?;
        let http_addr = listener.local_addr()?;
        tasks.push(tokio::spawn(crate::http::serve(listener, shared.clone())));
        let mut renew_api = None;
        let api_addr = match &config.api {
            None => None,
            Some(api) => {
                let files = match &api.tls {
                    Some(files) => files.clone(),
                    None => {
                        let (files, request) = issue_api_certificate(&config, api.addr)?;
                        renew_api = Some(request);
                        files
                    }
                };
                let tcp = tokio::net::TcpListener::bind(api.addr)
                    .await
                    .with_context(|| format!("listen on {} (the API)", api.addr))?;
                let addr = tcp.local_addr()?;
                let listener = plexus_tls_api::TlsListener::from_files(tcp, &files)
                    .with_context(|| format!("listen on {addr} (the API)"))?;
                // The relay and the web view present the API's own certificate to agents and
                // other relays (read access).
                // Reloaded when renewed, like the listener's.
                let client_tls = plexus_tls_api::ClientTls::from_files(&files)
                    .context("the relay's client identity (the API's certificate)")?;
                let ui = crate::ui::UiState::new(
                    &cluster.name,
                    backend.clone(),
                    config.relay.agent_port,
                    client_tls.clone(),
                );
                let relay = Arc::new(crate::relay::Relay::new(
                    cluster.clone(),
                    config.relay.clone(),
                    client_tls,
                ));
                tasks.push(tokio::spawn(relay.clone().watch_nodes(backend.clone())));
                let router = crate::api::router(shared.clone(), relay).merge(crate::ui::router(ui));
                let name = cluster.name.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(err) = plexus_tls_api::serve(listener, router, &name).await {
                        tracing::error!(error = %err, "API server stopped");
                    }
                }));
                Some(addr)
            }
        };
        if renew_etcd.is_some() || renew_api.is_some() {
            let pki = ClusterPki::new(config.state_dir.join("pki"), &cluster.name);
            tasks.push(tokio::spawn(renewal_loop(pki, renew_etcd, renew_api)));
        }
        tracing::info!(cluster = %cluster.name, id = cluster.id, %http_addr, ?api_addr, "apiserver running");
        Ok(Self {
            http_addr,
            api_addr,
            shared,
            tasks,
            _publisher: publisher,
            _canaries: canaries,
            _services: services,
            _kvstoremesh: kvstoremesh,
            leases: Some(leases),
            etcd,
        })
    }

    /// Where `/healthz`, `/readyz`, `/metrics` and `/v1/status` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the API (mutual TLS) is served, if it is.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The current status.
    pub fn status(&self) -> ApiServerStatus {
        self.shared.status()
    }

    /// Stops cleanly: revokes the lease (the heartbeat and cluster config go with it) and
    /// stops the local etcd.
    pub async fn shutdown(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(leases) = self.leases.take()
            && let Err(err) = leases.revoke().await
        {
            tracing::warn!(error = %err, "cannot revoke the apiserver's lease");
        }
        if let Some(etcd) = self.etcd.take() {
            etcd.shutdown().await;
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the API's certificate is issued for: its common name and addresses.
type ApiCertRequest = (String, Vec<IpAddr>);

/// Renews, every [`ClusterPki::renewal_interval`], the certificates this apiserver issued from
/// the CA of `pki`: the etcd ones (for `etcd` addresses) and the API's (`api`), each once due.
/// Failures are logged and retried at the next round.
async fn renewal_loop(pki: ClusterPki, etcd: Option<Vec<IpAddr>>, api: Option<ApiCertRequest>) {
    loop {
        tokio::time::sleep(pki.renewal_interval()).await;
        if let Some(ips) = &etcd {
            match pki.ensure(&[], ips) {
                Ok(true) => {
                    tracing::info!(dir = %pki.dir().display(), "etcd, admin and local certificates renewed")
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(dir = %pki.dir().display(), error = %err, "cannot renew the certificates")
                }
            }
        }
        if let Some((name, ips)) = &api {
            match pki.ensure_server("apiserver", name, ips) {
                Ok((_, true)) => {
                    tracing::info!(dir = %pki.dir().display(), "API certificate renewed")
                }
                Ok((_, false)) => {}
                Err(err) => {
                    tracing::warn!(dir = %pki.dir().display(), error = %err, "cannot renew the API certificate")
                }
            }
        }
    }
}

/// The API's server certificate, issued from the cluster's CA in `<state-dir>/pki` for the
/// API's address, the etcd's advertised addresses and loopback (CN `apiserver-<cluster>`; it
/// also serves as the relay's client certificate towards agents and other relays). Kept when
/// still valid and due for no renewal.
fn issue_api_certificate(
    config: &ApiServerConfig,
    addr: SocketAddr,
) -> Result<(plexus_agent_api::tls::TlsFiles, ApiCertRequest)> {
    let pki = ClusterPki::new(config.state_dir.join("pki"), &config.cluster.name);
    if !pki.has_ca() {
        anyhow::bail!(
            "the API's certificate: no CA in {} to issue it from (give --api-tls-cert, \
             --api-tls-key and --api-tls-ca)",
            pki.dir().display()
        );
    }
    let mut ips: Vec<IpAddr> = vec![std::net::Ipv4Addr::LOCALHOST.into()];
    if !addr.ip().is_unspecified() {
        ips.push(addr.ip());
    }
    if let EtcdSource::Local { advertise, .. } = &config.etcd {
        ips.extend(advertise.iter().copied());
    }
    ips.sort();
    ips.dedup();
    let name = format!("apiserver-{}", config.cluster.name);
    let ((cert, key), _) = pki
        .ensure_server("apiserver", &name, &ips)
        .with_context(|| format!("issue the API's certificate in {}", pki.dir().display()))?;
    Ok((
        plexus_agent_api::tls::TlsFiles {
            ca: pki.ca_cert(),
            cert,
            key,
        },
        (name, ips),
    ))
}

async fn connect_with_retry(config: EtcdConfig, limit: Duration) -> Result<EtcdBackend> {
    plexus_kvstore::connect_with_retry(
        &config,
        &plexus_kvstore::Retry::for_at_most(limit),
        "the cluster's etcd",
    )
    .await
    .with_context(|| format!("connect to etcd {:?}", config.endpoints))
}

/// Checks every 2 s that etcd answers; what `/readyz` reports.
async fn health_loop(backend: Arc<dyn KvBackend>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let result = tokio::time::timeout(Duration::from_secs(3), backend.status()).await;
        let err = match result {
            Ok(Ok(_)) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(_) => Some("no answer within 3s".to_string()),
        };
        *shared.etcd_ok.lock().unwrap_or_else(|e| e.into_inner()) = err;
    }
}
