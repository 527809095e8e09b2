//! The IO side of one remote cluster: runs a [`RemoteMachine`] against the remote's etcd.
//!
//! [`RemoteCluster::spawn`] starts one task that owns the machine and executes its actions:
//! connecting (mTLS from the remote's configuration file), reading the cluster config, waiting
//! for canaries, running one validating `WatchStore` per kind, and checking health (the heartbeat
//! key is read every [`DriverTiming::health_interval`] with a short timeout, so a dead remote is
//! noticed within seconds). Everything it learns is sent as [`MeshEvent`]s tagged with the
//! remote's name; entries are only ever sent after validation. Its status (the machine's plus
//! entry counts and rejected values) is published on a watch channel.
//!
//! The remote's cluster id reaches consumers as one [`RemoteEvent::ClusterConfig`], sent once the
//! remote's cluster config was accepted and before any of its entries; it holds until the
//! remote's `Drained` (a changed configuration file drains the remote and starts it anew, with a
//! new `ClusterConfig`). We send it once rather than carrying the id on every event: the id is a
//! property of the remote, not of each entry, and consumers that fold per remote (the agent's
//! view, the KVStoreMesh reflector) keep it beside the remote's other state.
//!
//! Time comes from tokio's clock ([`tokio::time::Instant`]): the driver steps the machine with
//! the current time and sleeps until [`RemoteMachine::next_deadline`] (or the next message)
//! rather than ticking, and every other wait (reconnect backoff, health checks, canary polls) is
//! a tokio sleep too, so under paused time a test drives heartbeat staleness, the service cache
//! TTL and the backoff exactly, without waiting.
//!
//! Each change of the connection state is logged once (see [`ChangeLog`]): connected, lost
//! with its cause, failing with a new cause; a failure that repeats on every retry is not
//! logged again.
//!
//! A remote is bounded by [`Limits`]: values larger than `max_value_size` are refused before
//! they are parsed, the remote's stores together hold at most `max_entries` entries (new keys
//! beyond are refused), and forced re-lists (a remote that compacts its store breaks our
//! watches) are rate-limited. Every refusal is counted by reason ([`RejectReason`]) in the
//! status.
//!
//! While the remote is unreachable nothing is deleted: the watches keep retrying and, when the
//! remote is back, re-list and drain what vanished in between. [`RemoteCluster::remove`] drains
//! everything the remote contributed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_kvstore::{
    DecodeFn, EntryBudget, EtcdBackend, EtcdConfig, KvBackend, RelistPolicy, StoreEvent, TlsFiles,
    WatchStore,
};
use plexus_model::cluster::ClusterInfo;
use plexus_model::config::CiliumClusterConfig;
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::keys::{self, StateKind};
use plexus_model::node::Node;
use plexus_model::service::ClusterService;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::RemoteClusterConfig;
use crate::failure::{ChangeLog, FailureKind, RemoteFailure};
use crate::remote::{Action, Input, RemoteMachine, RemoteStatus, Timing};
use crate::validate::{
    ClusterIds, RejectReason, RemoteIdentity, bounded, identity_decoder, ipcache_decoder,
    node_decoder, service_decoder,
};

/// What a remote cluster contributes, as it changes.
///
/// The many events (ipcache entries, services) share their decoded value (`Arc`); a node is
/// held inline: nodes are few per cluster, and at most 256 events wait between a remote's
/// stores and its driver, so the enum's size costs little.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteEvent {
    /// The remote's cluster config was accepted: its entries belong to cluster `cluster_id`.
    /// Sent once, before any entry of the remote; it holds until `Drained` (a changed
    /// configuration file drains the remote, then connects anew and sends it again).
    ClusterConfig {
        /// The remote's cluster id, from its `cilium/cluster-config/<remote>`.
        cluster_id: u32,
    },
    /// A node was added or changed.
    NodeUpsert(Node),
    /// A node (by name) is gone.
    NodeDelete(String),
    /// An ipcache entry was added or changed. Shared with the remote's store (and whoever
    /// keeps it, such as the agent's guard) rather than copied: a remote may have hundreds of
    /// thousands.
    IpUpsert(Arc<IpIdentityPair>),
    /// An ipcache entry (by key, `<ip>` or `<ip>/<len>`) is gone.
    IpDelete(String),
    /// An identity was added or changed.
    IdentityUpsert(RemoteIdentity),
    /// An identity is gone.
    IdentityDelete(u32),
    /// A shared global service was added or changed. Shared, not copied: a service may have
    /// tens of thousands of backends, and the store, the driver and the consumer hold it.
    ServiceUpsert(Arc<ClusterService>),
    /// A service (by `<namespace>/<name>`) is gone or no longer shared.
    ServiceDelete(String),
    /// Every kind delivered its initial listing: the remote's state is complete.
    Synced,
    /// Everything the remote contributed has been deleted (its configuration was removed).
    Drained,
}

/// A [`RemoteEvent`] tagged with the remote cluster it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshEvent {
    /// The remote cluster's name.
    pub cluster: String,
    /// What happened.
    pub event: RemoteEvent,
}

/// Status of a remote cluster with entry counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteClusterStatus {
    /// The protocol's view.
    pub protocol: RemoteStatus,
    /// Nodes held.
    pub nodes: usize,
    /// ipcache entries (endpoints) held.
    pub endpoints: usize,
    /// Identities held.
    pub identities: usize,
    /// Shared services held.
    pub services: usize,
    /// Values refused by validation so far.
    pub rejected: u64,
    /// Refusals by reason ([`RejectReason::as_str`]); they add up to `rejected`.
    pub rejected_by: BTreeMap<String, u64>,
}

/// What one remote may make us hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries (nodes, ipcache entries, identities, services together) held per remote.
    pub max_entries: usize,
    /// Bytes of one value.
    pub max_value_size: usize,
    /// How fast a watch of the remote may list again after it broke.
    pub relist: RelistPolicy,
}

impl Default for Limits {
    /// 250,000 entries: above what one Kubernetes cluster at its documented limits publishes
    /// (150,000 pods, 5,000 nodes, 65,535 cluster-scoped identities, services); 256 KiB per
    /// value: a service with a few thousand backends.
    fn default() -> Self {
        Self {
            max_entries: 250_000,
            max_value_size: 256 * 1024,
            relist: RelistPolicy::default(),
        }
    }
}

/// Timing of the driver beside the protocol's.
#[derive(Clone, Debug)]
pub struct DriverTiming {
    /// The protocol's timing.
    pub protocol: Timing,
    /// How often the heartbeat key is read.
    pub health_interval: Duration,
    /// How long a health check may take.
    pub health_timeout: Duration,
    /// How often a missing canary is looked for again.
    pub canary_poll: Duration,
    /// What one remote may make us hold.
    pub limits: Limits,
}

impl Default for DriverTiming {
    fn default() -> Self {
        Self {
            protocol: Timing::default(),
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(3),
            canary_poll: Duration::from_millis(500),
            limits: Limits::default(),
        }
    }
}

/// Opens a connection to a remote cluster's kvstore: the narrow edge the driver needs.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + 'static {
    /// Connects to the kvstore `config` describes, within `timeout`.
    async fn connect(
        &self,
        config: &RemoteClusterConfig,
        timeout: Duration,
    ) -> plexus_kvstore::Result<Arc<dyn KvBackend>>;
}

/// Connects to etcd with the configuration file's endpoints and TLS identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdConnector;

#[async_trait::async_trait]
impl Connector for EtcdConnector {
    async fn connect(
        &self,
        config: &RemoteClusterConfig,
        timeout: Duration,
    ) -> plexus_kvstore::Result<Arc<dyn KvBackend>> {
        let mut etcd = EtcdConfig::new(config.endpoints.clone());
        etcd.connect_timeout = timeout;
        etcd.request_timeout = timeout;
        if let (Some(ca), Some(cert), Some(key)) =
            (&config.trusted_ca_file, &config.cert_file, &config.key_file)
        {
            etcd = etcd.with_tls(TlsFiles {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
            });
        }
        Ok(Arc::new(EtcdBackend::connect(etcd).await?))
    }
}

/// Connects like [`EtcdConnector`], except that a remote whose configuration points at the
/// local kvstore (the same endpoints: a KVStoreMesh cache of this cluster) reuses the local
/// connection, so an agent reading through KVStoreMesh holds exactly one etcd connection.
pub struct SharedConnector {
    local_endpoints: Vec<String>,
    local: Arc<dyn KvBackend>,
}

impl SharedConnector {
    /// Reuses `local` for remotes configured with `local_endpoints`.
    pub fn new(local_endpoints: Vec<String>, local: Arc<dyn KvBackend>) -> Self {
        Self {
            local_endpoints: normalize(&local_endpoints),
            local,
        }
    }
}

fn normalize(endpoints: &[String]) -> Vec<String> {
    let mut out: Vec<String> = endpoints
        .iter()
        .map(|e| e.trim_end_matches('/').to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[async_trait::async_trait]
impl Connector for SharedConnector {
    async fn connect(
        &self,
        config: &RemoteClusterConfig,
        timeout: Duration,
    ) -> plexus_kvstore::Result<Arc<dyn KvBackend>> {
        if normalize(&config.endpoints) == self.local_endpoints {
            return Ok(self.local.clone());
        }
        EtcdConnector.connect(config, timeout).await
    }
}

enum Msg {
    Input(Input),
    Backend(Arc<dyn KvBackend>),
    /// An entry (by key relative to its kind's prefix) was added or changed. The permit is
    /// the store's room in flight, given back once the driver passed the entry on.
    Upsert(StateKind, String, Box<RemoteEvent>, OwnedSemaphorePermit),
    /// An entry is gone.
    Delete(StateKind, String, OwnedSemaphorePermit),
    /// A value was refused, for this reason.
    Rejected(String),
}

/// A running remote cluster.
pub struct RemoteCluster {
    name: String,
    status: watch::Receiver<RemoteClusterStatus>,
    remove: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RemoteCluster {
    /// Starts following remote `config.name` for cluster `local`, connecting with `connector`.
    pub fn spawn(
        connector: Arc<dyn Connector>,
        config: RemoteClusterConfig,
        local: ClusterInfo,
        ids: Arc<Mutex<ClusterIds>>,
        events: mpsc::Sender<MeshEvent>,
        timing: DriverTiming,
    ) -> Self {
        let (machine, first) =
            RemoteMachine::new(config.name.clone(), local.clone(), timing.protocol.clone());
        let (status_tx, status) = watch::channel(RemoteClusterStatus {
            protocol: machine.status(),
            nodes: 0,
            endpoints: 0,
            identities: 0,
            services: 0,
            rejected: 0,
            rejected_by: BTreeMap::new(),
        });
        let (remove_tx, remove_rx) = oneshot::channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let name = config.name.clone();
        let driver = Driver {
            connector,
            config,
            local,
            machine,
            ids,
            events,
            timing,
            tx,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            backend: None,
            tasks: Vec::new(),
            known: BTreeMap::new(),
            services: BTreeMap::new(),
            services_revoked: false,
            rejected: 0,
            rejected_by: BTreeMap::new(),
            budget: EntryBudget::new(0),
            status_tx,
            changes: ChangeLog::new(),
            cached: Arc::new(AtomicBool::new(false)),
        };
        let task = tokio::spawn(driver.run(first, rx, remove_rx));
        Self {
            name,
            status,
            remove: Some(remove_tx),
            task,
        }
    }

    /// The remote's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The latest status.
    pub fn status(&self) -> RemoteClusterStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn subscribe(&self) -> watch::Receiver<RemoteClusterStatus> {
        self.status.clone()
    }

    /// Disconnects, drains everything the remote contributed (a `Drained` event ends it) and
    /// releases its cluster id.
    pub async fn remove(mut self) {
        if let Some(tx) = self.remove.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RemoteCluster {
    fn drop(&mut self) {
        if self.remove.is_some() {
            // Dropped without `remove`: stop without draining.
            self.task.abort();
        }
    }
}

struct Driver {
    connector: Arc<dyn Connector>,
    config: RemoteClusterConfig,
    local: ClusterInfo,
    machine: RemoteMachine,
    ids: Arc<Mutex<ClusterIds>>,
    events: mpsc::Sender<MeshEvent>,
    timing: DriverTiming,
    tx: mpsc::UnboundedSender<Msg>,
    /// Room for entries between the stores and the driver ([`IN_FLIGHT`]).
    in_flight: Arc<Semaphore>,
    backend: Option<Arc<dyn KvBackend>>,
    tasks: Vec<JoinHandle<()>>,
    /// Keys held per kind, so a removal can drain them.
    known: BTreeMap<StateKind, BTreeSet<String>>,
    /// The services held, so that services withdrawn after the cache TTL can be handed back.
    services: BTreeMap<String, Arc<ClusterService>>,
    /// Services are withdrawn (the remote stayed away longer than the cache TTL).
    services_revoked: bool,
    rejected: u64,
    rejected_by: BTreeMap<String, u64>,
    /// The entries this connection's stores hold (a new one per connection, so that stores
    /// of a dropped connection that are still winding down do not count).
    budget: EntryBudget,
    status_tx: watch::Sender<RemoteClusterStatus>,
    /// What of the connection state was last logged (each change is logged once).
    changes: ChangeLog,
    /// The remote's cluster config says it is a KVStoreMesh cache: health checks read the
    /// cache's heartbeat of the remote, which the KVStoreMesh deletes when it loses the remote.
    cached: Arc<AtomicBool>,
}

impl Driver {
    async fn run(
        mut self,
        first: Vec<Action>,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut remove: oneshot::Receiver<()>,
    ) {
        self.execute(first).await;
        loop {
            // Sleep until the machine's next deadline; with none, only a message can wake us.
            let deadline = self.machine.next_deadline();
            let input = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Input(input)) => input,
                    Some(Msg::Backend(backend)) => {
                        self.backend = Some(backend);
                        continue;
                    }
                    Some(Msg::Upsert(kind, key, event, _permit)) => {
                        self.upsert(kind, key, *event).await;
                        continue;
                    }
                    Some(Msg::Delete(kind, key, _permit)) => {
                        self.delete(kind, key).await;
                        continue;
                    }
                    Some(Msg::Rejected(reason)) => {
                        self.rejected += 1;
                        *self
                            .rejected_by
                            .entry(RejectReason::of(&reason).as_str().to_string())
                            .or_default() += 1;
                        self.publish_status();
                        continue;
                    }
                    None => return,
                },
                _ = sleep_until(deadline) => Input::Tick,
                _ = &mut remove => Input::Removed,
            };
            let removed = input == Input::Removed;
            let actions = {
                let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
                self.machine.step(input, Instant::now(), &mut ids)
            };
            // Publish the new status before acting, so that whoever receives an event the
            // actions emit (such as `Synced`) already reads a status that agrees with it.
            self.publish_status();
            self.execute(actions).await;
            self.publish_status();
            if removed {
                return;
            }
        }
    }

    fn publish_status(&mut self) {
        let protocol = self.machine.status();
        if let Some(change) = self.changes.observe(
            protocol.connected,
            protocol.failures,
            self.machine.last_failure(),
        ) {
            change.log(&self.config.name);
        }
        let count = |k: StateKind| self.known.get(&k).map_or(0, BTreeSet::len);
        self.status_tx.send_replace(RemoteClusterStatus {
            protocol,
            nodes: count(StateKind::Nodes),
            endpoints: count(StateKind::Ip),
            identities: count(StateKind::Identities),
            services: count(StateKind::Services),
            rejected: self.rejected,
            rejected_by: self.rejected_by.clone(),
        });
    }

    async fn emit(&self, event: RemoteEvent) {
        let _ = self
            .events
            .send(MeshEvent {
                cluster: self.config.name.clone(),
                event,
            })
            .await;
    }

    /// Records that the remote holds `key` and passes the event on. A service that is not
    /// shared is, for us, not there.
    async fn upsert(&mut self, kind: StateKind, key: String, event: RemoteEvent) {
        if matches!(&event, RemoteEvent::ServiceUpsert(s) if !s.shared) {
            return self.delete(kind, key).await;
        }
        self.known.entry(kind).or_default().insert(key.clone());
        if let RemoteEvent::ServiceUpsert(s) = &event {
            self.services.insert(key, s.clone());
            if self.services_revoked {
                self.publish_status();
                return; // handed back with the others when the remote returns
            }
        }
        self.emit(event).await;
        self.publish_status();
    }

    /// Passes on the deletion of a key the remote held.
    async fn delete(&mut self, kind: StateKind, key: String) {
        if !self.known.entry(kind).or_default().remove(&key) {
            return;
        }
        if kind == StateKind::Services
            && self.services.remove(&key).is_some()
            && self.services_revoked
        {
            self.publish_status();
            return; // already withdrawn
        }
        if let Some(event) = delete_event(kind, key) {
            self.emit(event).await;
        }
        self.publish_status();
    }

    fn stop_tasks(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.backend = None;
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Connect(delay) => self.connect(delay),
                Action::FetchConfig(delay) => self.fetch_config(delay),
                Action::ConfigAccepted { cluster_id } => {
                    self.emit(RemoteEvent::ClusterConfig { cluster_id }).await
                }
                Action::WaitCanaries(canaries) => {
                    for (kind, key) in canaries {
                        self.wait_canary(kind, key);
                    }
                }
                Action::StartWatch { kind, prefix } => self.start_watch(kind, prefix),
                Action::ReportSynced => self.emit(RemoteEvent::Synced).await,
                Action::Disconnect => self.stop_tasks(),
                Action::RevokeServices => {
                    self.services_revoked = true;
                    let keys: Vec<String> = self.services.keys().cloned().collect();
                    for key in keys {
                        self.emit(RemoteEvent::ServiceDelete(key)).await;
                    }
                }
                Action::RestoreServices => {
                    self.services_revoked = false;
                    let services: Vec<Arc<ClusterService>> =
                        self.services.values().cloned().collect();
                    for svc in services {
                        self.emit(RemoteEvent::ServiceUpsert(svc)).await;
                    }
                }
                Action::Drain => {
                    let revoked = std::mem::take(&mut self.services_revoked);
                    self.services.clear();
                    let known = std::mem::take(&mut self.known);
                    for (kind, keys) in known {
                        if kind == StateKind::Services && revoked {
                            continue; // already withdrawn
                        }
                        for key in keys {
                            if let Some(event) = delete_event(kind, key) {
                                self.emit(event).await;
                            }
                        }
                    }
                    self.emit(RemoteEvent::Drained).await;
                }
            }
        }
    }

    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::spawn(task));
    }

    fn connect(&mut self, delay: Duration) {
        self.stop_tasks();
        self.budget = EntryBudget::new(self.timing.limits.max_entries);
        let connector = self.connector.clone();
        let config = self.config.clone();
        let tx = self.tx.clone();
        let timing = self.timing.clone();
        let cached = self.cached.clone();
        self.spawn(async move {
            tokio::time::sleep(delay).await;
            let backend = match connector.connect(&config, timing.health_timeout).await {
                Ok(b) => b,
                Err(err) => {
                    let _ = tx.send(Msg::Input(Input::ConnectFailed(err.into())));
                    return;
                }
            };
            // The connection is up once the heartbeat key could be read.
            if let Err(err) = backend.get(keys::HEARTBEAT).await {
                let _ = tx.send(Msg::Input(Input::ConnectFailed(err.into())));
                return;
            }
            let _ = tx.send(Msg::Backend(backend.clone()));
            let _ = tx.send(Msg::Input(Input::Connected));
            // From now on, check health periodically.
            let cache_heartbeat = keys::cache_heartbeat_key(&config.name);
            loop {
                tokio::time::sleep(timing.health_interval).await;
                let cached = cached.load(Ordering::Relaxed);
                let key = if cached {
                    cache_heartbeat.as_str()
                } else {
                    keys::HEARTBEAT
                };
                let input =
                    match tokio::time::timeout(timing.health_timeout, backend.get(key)).await {
                        // The KVStoreMesh of the cache deleted the remote's heartbeat: it lost
                        // the remote (or stopped).
                        Ok(Ok(None)) if cached => Input::HealthCheckFailed(RemoteFailure::new(
                            FailureKind::KvstoremeshDisconnected,
                            format!(
                                "the KVStoreMesh of this cluster is not connected to {} (no {key})",
                                config.name
                            ),
                        )),
                        Ok(Ok(kv)) => Input::Heartbeat(
                            kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                        ),
                        Ok(Err(err)) => Input::HealthCheckFailed(err.into()),
                        Err(_) => Input::HealthCheckFailed(RemoteFailure::new(
                            FailureKind::Kvstore(plexus_kvstore::ErrorKind::Timeout),
                            format!("no answer within {:?}", timing.health_timeout),
                        )),
                    };
                if tx.send(Msg::Input(input)).is_err() {
                    return;
                }
            }
        });
    }

    fn fetch_config(&mut self, delay: Duration) {
        let Some(backend) = self.backend.clone() else {
            return;
        };
        let tx = self.tx.clone();
        let name = self.config.name.clone();
        let cached = self.cached.clone();
        self.spawn(async move {
            tokio::time::sleep(delay).await;
            let input = match backend.get(&keys::cluster_config_key(&name)).await {
                Ok(None) => Input::ClusterConfig(None),
                Ok(Some(kv)) => match CiliumClusterConfig::from_json(&name, &kv.value) {
                    Ok(config) => {
                        cached.store(config.capabilities.cached, Ordering::Relaxed);
                        Input::ClusterConfig(Some(config))
                    }
                    Err(err) => Input::ConfigReadFailed(RemoteFailure::new(
                        FailureKind::ClusterConfigInvalid,
                        err.to_string(),
                    )),
                },
                Err(err) => Input::ConfigReadFailed(err.into()),
            };
            let _ = tx.send(Msg::Input(input));
        });
    }

    fn wait_canary(&mut self, kind: StateKind, key: String) {
        let Some(backend) = self.backend.clone() else {
            return;
        };
        let tx = self.tx.clone();
        let poll = self.timing.canary_poll;
        self.spawn(async move {
            loop {
                if let Ok(Some(_)) = backend.get(&key).await {
                    let _ = tx.send(Msg::Input(Input::Canary(kind)));
                    return;
                }
                tokio::time::sleep(poll).await;
            }
        });
    }

    fn start_watch(&mut self, kind: StateKind, prefix: String) {
        let Some(backend) = self.backend.clone() else {
            return;
        };
        let Some(remote) = self
            .machine
            .status()
            .cluster_id
            .and_then(|id| ClusterInfo::new(self.config.name.clone(), id, self.local.max).ok())
        else {
            return;
        };
        let tx = self.tx.clone();
        let bounds = Bounds {
            max_value_size: self.timing.limits.max_value_size,
            relist: self.timing.limits.relist,
            budget: self.budget.clone(),
            in_flight: self.in_flight.clone(),
        };
        match kind {
            StateKind::Nodes => self.spawn(pump(
                backend,
                prefix,
                bounds,
                node_decoder(remote),
                kind,
                tx,
                RemoteEvent::NodeUpsert,
            )),
            StateKind::Ip => self.spawn(pump(
                backend,
                prefix,
                bounds,
                shared(ipcache_decoder(remote)),
                kind,
                tx,
                RemoteEvent::IpUpsert,
            )),
            StateKind::Identities => self.spawn(pump(
                backend,
                prefix,
                bounds,
                identity_decoder(remote),
                kind,
                tx,
                RemoteEvent::IdentityUpsert,
            )),
            StateKind::Services => self.spawn(pump(
                backend,
                prefix,
                bounds,
                service_decoder(remote),
                kind,
                tx,
                RemoteEvent::ServiceUpsert,
            )),
            // Service exports are mirrored once MCS support exists; report them synced.
            StateKind::ServiceExports => {
                let _ = tx.send(Msg::Input(Input::Synced(kind)));
            }
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The event announcing that `key` (relative to `kind`'s prefix) is gone.
fn delete_event(kind: StateKind, key: String) -> Option<RemoteEvent> {
    match kind {
        StateKind::Nodes => Some(RemoteEvent::NodeDelete(key)),
        StateKind::Ip => Some(RemoteEvent::IpDelete(key)),
        StateKind::Identities => key.parse().ok().map(RemoteEvent::IdentityDelete),
        StateKind::Services => Some(RemoteEvent::ServiceDelete(key)),
        StateKind::ServiceExports => None,
    }
}

/// `decode`, its values shared: the store's cache and the event hold one value.
fn shared<T: Send + Sync + 'static>(decode: DecodeFn<T>) -> DecodeFn<Arc<T>> {
    Box::new(move |key, raw| decode(key, raw).map(Arc::new))
}

/// How many entries a remote's stores may have sent to the driver and not yet seen passed on:
/// a listing is decoded as fast as the consumer takes it, not buffered whole in between.
const IN_FLIGHT: usize = 256;

/// The limits one store of a remote runs under.
struct Bounds {
    max_value_size: usize,
    relist: RelistPolicy,
    budget: EntryBudget,
    /// Entries sent to the driver and not yet passed on (shared by the remote's stores).
    in_flight: Arc<Semaphore>,
}

async fn pump<T: Clone + Send + Sync + 'static>(
    backend: Arc<dyn KvBackend>,
    prefix: String,
    bounds: Bounds,
    decode: DecodeFn<T>,
    kind: StateKind,
    tx: mpsc::UnboundedSender<Msg>,
    upsert: fn(T) -> RemoteEvent,
) {
    let mut store = WatchStore::bounded(
        backend,
        prefix,
        bounded(decode, bounds.max_value_size),
        bounds.relist,
        Some(bounds.budget),
    );
    loop {
        let Ok(permit) = bounds.in_flight.clone().acquire_owned().await else {
            return;
        };
        let msg = match store.next().await {
            StoreEvent::Upsert { key, value, .. } => {
                Msg::Upsert(kind, key, Box::new(upsert(value)), permit)
            }
            StoreEvent::Delete { key, .. } => Msg::Delete(kind, key, permit),
            StoreEvent::Rejected { reason, .. } => Msg::Rejected(reason),
            StoreEvent::Synced => Msg::Input(Input::Synced(kind)),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}
