//! The node's endpoints: what the CNI plugin registers, the agent makes real.
//!
//! For each pod: an address from the node's CIDR ([`plexus_ipam::PodIpam`]), an identity for its
//! labels (with the namespace and cluster labels), the datapath's endpoint entry and programs on
//! its veth, a route to it, and two published records under the agent's lease: its ip ->
//! identity entry (`cilium/state/ip/v1/default/<ip>`, for every cluster) and its endpoint record
//! (`plexus/endpoints/v1/<ns>/<pod>`, for the service controller). The state is persisted in
//! `<state-dir>/endpoints.json` (written through a rename), so a restarted agent restores every
//! endpoint: same address, same id, programs re-attached to the pinned maps, records
//! re-published.
//!
//! A registration names its workload's source ([`WorkloadSource`]): the lab's CNI arguments
//! carry the pod's name, namespace and labels in the request; a podman network sends only the
//! container id, and the agent reads the container's (or its pod's) name and labels from
//! podman's state file ([`plexus_podman::PodmanState`]) before anything is allocated, so an
//! invalid label or an unreadable state refuses the registration with nothing created.
//!
//! An endpoint's identity labels are its pod labels (the Pod object's when one is stored, else
//! the registration's) and its namespace's labels ([`crate::labels`]). When they change for a
//! running endpoint, [`Endpoints::relabel`] moves it to the new identity make-before-break:
//!
//! 1. the new identity is allocated (every node of every cluster learns it through its watches
//!    and puts it into its selector cache and policy maps);
//! 2. the endpoint keeps its old identity for `identity-change-grace-period`, so that peers
//!    know the new one before packets carry it; all endpoints of one change (a namespace
//!    relabel) share one grace period, and a newer change of an endpoint during the grace
//!    supersedes the older one (its new identity is released unused);
//! 3. the switch: the datapath's endpoint entry, the core's endpoint (its own policy resolved
//!    again; the datapath writes new policy entries before it removes stale ones), the ip ->
//!    identity entry and endpoint record, `endpoints.json` (with the labels it now has);
//! 4. the old identity is released.
//!
//! Since the datapath checks policy on every forward packet with the peer's identity from the
//! VNI or the ipcache, a connection that stays allowed under the new identity never sees a
//! packet dropped. A restarted agent restores each endpoint with the labels it persisted and
//! relabels, once the objects are listed, those that changed while it was down.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use plexus_agent_api::{EndpointRequest, EndpointResponse, IpamResponse, WorkloadSource};
use plexus_datapath::{Datapath, Endpoint as DpEndpoint};
use plexus_identity::allocator::IdentityAllocator;
use plexus_kvstore::SyncStore;
use plexus_loadbalancer::endpoint::EndpointRecord;
use plexus_model::ipcache::IpIdentityPair;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::core::{Input, LocalEndpoint};
use crate::labels::{PodLabels, SharedObjects, endpoint_identity_labels, registered_labels};
use crate::shell::CoreHandle;

/// One endpoint as persisted in `endpoints.json`: the same value the API lists (so the file
/// and `endpoint list -o json` read alike).
pub type EndpointState = plexus_agent_api::EndpointInfo;

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    /// Addresses reserved by IPAM but not (yet) registered, by owner.
    reserved: BTreeMap<String, Ipv4Addr>,
    endpoints: BTreeMap<String, EndpointState>,
}

/// Manages the node's endpoints.
pub struct Endpoints {
    inner: Mutex<Inner>,
    /// Held by whatever changes an endpoint's identity or existence (registration, removal, a
    /// relabel's scan and switch), so a relabel never races them: a registration that read
    /// the objects before a change is in the state when the change's scan runs.
    ops: Mutex<()>,
    objects: SharedObjects,
    grace: Duration,
    generation: AtomicU64,
    /// Wakes [`Endpoints::retry_wanted`] when a relabel failed and should be tried again.
    retry: Arc<tokio::sync::Notify>,
    datapath: Arc<dyn Datapath>,
    identities: Arc<IdentityAllocator>,
    ip_store: SyncStore,
    record_store: SyncStore,
    node_name: String,
    node_ip: Ipv4Addr,
    mtu: u32,
    state_file: PathBuf,
    core: CoreHandle,
    real_kernel: bool,
    podman_state: PathBuf,
    encrypt_key: u8,
}

/// How long a registration waits for its ipcache entry to reach the datapath.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// How long a relabel's switch waits for the node's core to know the new identity (it learns
/// it through the same watch as every other node, normally within the grace period).
const IDENTITY_WAIT: Duration = Duration::from_secs(5);

/// How long after a failed allocation a relabel is tried again.
const RELABEL_RETRY: Duration = Duration::from_secs(2);

/// How long a registration waits for the Namespace and Pod objects to be listed.
const OBJECTS_WAIT: Duration = Duration::from_secs(5);

struct Inner {
    ipam: plexus_ipam::PodIpam,
    persisted: Persisted,
    /// Relabels under way, by container id: the latest one's generation and target.
    relabels: BTreeMap<String, (u64, PodLabels)>,
}

/// One endpoint of a relabel: its container, the relabel's generation, the target labels.
struct Move {
    container_id: String,
    generation: u64,
    target: PodLabels,
}

fn parse_mac(text: &str, what: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("{what} {text:?} is not a MAC address");
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).with_context(|| format!("{what} {text:?}"))?;
    }
    Ok(mac)
}

/// The core's view of an endpoint: its named ports typed (a protocol other than TCP, UDP or
/// SCTP names no port a policy can use).
pub fn local_endpoint(ep: &EndpointState) -> LocalEndpoint {
    LocalEndpoint {
        id: ep.id,
        ip: ep.ip,
        identity: ep.identity,
        named_ports: ep
            .ports
            .iter()
            .filter_map(|(name, p)| {
                let proto = plexus_policy::Proto::parse_any(&p.protocol, "protocol").ok()??;
                Some((
                    name.clone(),
                    plexus_policy::NamedPort {
                        port: p.port,
                        proto,
                    },
                ))
            })
            .collect(),
        namespace: ep.namespace.clone(),
        pod_name: ep.pod.clone(),
    }
}

/// The first 12 characters of a container id, as podman prints it.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// What [`Endpoints::new`] needs.
pub struct EndpointsConfig {
    /// The datapath.
    pub datapath: Arc<dyn Datapath>,
    /// Identity allocation.
    pub identities: Arc<IdentityAllocator>,
    /// Publishes `cilium/state/ip/v1/default/<ip>`.
    pub ip_store: SyncStore,
    /// Publishes `plexus/endpoints/v1/<ns>/<pod>`.
    pub record_store: SyncStore,
    /// This node.
    pub node_name: String,
    /// Its underlay address.
    pub node_ip: Ipv4Addr,
    /// The pods' MTU.
    pub mtu: u32,
    /// The node's pod addresses.
    pub ipam: plexus_ipam::PodIpam,
    /// Where the state is persisted.
    pub state_file: PathBuf,
    /// The node's core (the endpoint's ipcache entry, policy).
    pub core: CoreHandle,
    /// Whether the kernel is configured (routes and neighbours to pods); false with the
    /// fake datapath.
    pub real_kernel: bool,
    /// podman's state file, read for registrations from podman networks.
    pub podman_state: PathBuf,
    /// The `Key` of the endpoints' ip -> identity entries: Cilium's encryption key index of
    /// this node's endpoints (255, `StaticEncryptKey`, with WireGuard; 0 without).
    pub encrypt_key: u8,
    /// The cluster's Namespace and Pod objects (their labels).
    pub objects: SharedObjects,
    /// `identity-change-grace-period`.
    pub identity_change_grace: Duration,
}

impl Endpoints {
    /// Loads the persisted state and restores every endpoint (datapath, identity, records).
    pub async fn new(config: EndpointsConfig) -> Result<Self> {
        let persisted: Persisted = match std::fs::read(&config.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{}: not a valid endpoint state",
                    config.state_file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => {
                return Err(e).with_context(|| format!("read {}", config.state_file.display()));
            }
        };
        let mut ipam = config.ipam;
        for (owner, ip) in &persisted.reserved {
            ipam.restore(*ip, owner);
        }
        for ep in persisted.endpoints.values() {
            ipam.restore(ep.ip, &ep.container_id);
        }
        let this = Self {
            inner: Mutex::new(Inner {
                ipam,
                persisted,
                relabels: BTreeMap::new(),
            }),
            ops: Mutex::new(()),
            objects: config.objects,
            grace: config.identity_change_grace,
            generation: AtomicU64::new(0),
            retry: Arc::new(tokio::sync::Notify::new()),
            datapath: config.datapath,
            identities: config.identities,
            ip_store: config.ip_store,
            record_store: config.record_store,
            node_name: config.node_name,
            node_ip: config.node_ip,
            mtu: config.mtu,
            state_file: config.state_file,
            core: config.core,
            real_kernel: config.real_kernel,
            podman_state: config.podman_state,
            encrypt_key: config.encrypt_key,
        };
        let restored: Vec<EndpointState> = {
            let inner = this.inner.lock().await;
            inner.persisted.endpoints.values().cloned().collect()
        };
        for ep in restored {
            // The labels it persisted: a change while the agent was down is a relabel, once
            // the objects are listed.
            let labels = endpoint_identity_labels(&ep);
            let (id, _) = this.identities.allocate(&labels).await.with_context(|| {
                format!("identity of restored endpoint {}/{}", ep.namespace, ep.pod)
            })?;
            let mut ep = ep;
            ep.identity = id.0;
            if let Err(err) = this.install(&ep) {
                tracing::warn!(pod = %ep.pod, error = %format!("{err:#}"), "cannot restore endpoint (its veth may be gone)");
                continue;
            }
            this.publish(&ep);
            this.inner
                .lock()
                .await
                .persisted
                .endpoints
                .insert(ep.container_id.clone(), ep);
        }
        this.ip_store.synced();
        this.record_store.synced();
        this.save().await?;
        Ok(this)
    }

    async fn save(&self) -> Result<()> {
        let bytes = {
            let inner = self.inner.lock().await;
            serde_json::to_vec_pretty(&inner.persisted)?
        };
        let tmp = self.state_file.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_file)
            .with_context(|| format!("write {}", self.state_file.display()))?;
        Ok(())
    }

    /// An address for `owner`.
    pub async fn ipam(&self, owner: &str) -> Result<IpamResponse> {
        let ip = {
            let mut inner = self.inner.lock().await;
            let ip = inner.ipam.allocate(owner)?;
            inner.persisted.reserved.insert(owner.to_string(), ip);
            ip
        };
        self.save().await?;
        let inner = self.inner.lock().await;
        Ok(IpamResponse {
            ip,
            gateway: inner.ipam.gateway(),
            mtu: self.mtu,
        })
    }

    /// Makes the endpoint real: datapath entry, route and neighbour, and the core's input;
    /// returns that input's sequence number (to wait until it is applied).
    fn install(&self, ep: &EndpointState) -> Result<u64> {
        self.datapath
            .upsert_endpoint(&DpEndpoint {
                id: ep.id,
                ipv4: ep.ip,
                host_ifname: ep.host_ifname.clone(),
                host_ifindex: 0,
                pod_mac: parse_mac(&ep.pod_mac, "pod-mac")?,
                host_mac: parse_mac(&ep.host_mac, "host-mac")?,
                identity: ep.identity,
            })
            .with_context(|| format!("datapath endpoint {} on {}", ep.ip, ep.host_ifname))?;
        if self.real_kernel {
            crate::netcmd::route_to_device(&format!("{}/32", ep.ip), &ep.host_ifname)?;
            crate::netcmd::neigh_permanent(&ep.ip.to_string(), &ep.pod_mac, &ep.host_ifname)?;
        }
        Ok(self.core.step(Input::EndpointUpsert(local_endpoint(ep))))
    }

    fn publish(&self, ep: &EndpointState) {
        let pair = IpIdentityPair {
            ip: ep.ip.into(),
            mask: None,
            host_ip: self.node_ip.to_string(),
            id: ep.identity,
            key: self.encrypt_key,
            metadata: String::new(),
            k8s_namespace: ep.namespace.clone(),
            k8s_pod_name: ep.pod.clone(),
            k8s_service_account: String::new(),
            named_ports: ep
                .ports
                .iter()
                .map(|(name, p)| plexus_model::ipcache::NamedPort {
                    name: name.clone(),
                    port: p.port,
                    protocol: p.protocol.clone(),
                })
                .collect(),
        };
        self.ip_store.upsert(
            ep.ip.to_string(),
            serde_json::to_vec(&pair).unwrap_or_default(),
        );
        let record = EndpointRecord {
            namespace: ep.namespace.clone(),
            pod: ep.pod.clone(),
            ip: ep.ip.into(),
            node: self.node_name.clone(),
            labels: ep.labels.clone(),
            ready: true,
            ports: ep
                .ports
                .iter()
                .map(|(name, p)| {
                    (
                        name.clone(),
                        plexus_loadbalancer::endpoint::ContainerPort {
                            port: p.port,
                            protocol: p.protocol.clone(),
                        },
                    )
                })
                .collect(),
        };
        self.record_store.upsert(
            record.key(),
            serde_json::to_vec(&record).unwrap_or_default(),
        );
    }

    /// The request with its workload's name, namespace and labels filled in from its source:
    /// for podman, read from podman's state (a [`plexus_podman::PodmanError`] in the chain
    /// when that fails).
    pub async fn resolve_workload(&self, mut req: EndpointRequest) -> Result<EndpointRequest> {
        match req.workload {
            WorkloadSource::Request => Ok(req),
            WorkloadSource::Podman => {
                let state = plexus_podman::PodmanState::open(self.podman_state.clone());
                let id = req.container_id.clone();
                // File I/O under a lock that podman may hold for a moment: off the runtime.
                let workload = tokio::task::spawn_blocking(move || state.workload(&id))
                    .await
                    .context("reading podman's state")?
                    .with_context(|| {
                        format!(
                            "workload of podman container {}",
                            short_id(&req.container_id)
                        )
                    })?;
                req.pod_name = workload.endpoint_name().to_string();
                req.namespace = workload.namespace;
                req.labels = workload.labels;
                Ok(req)
            }
        }
    }

    /// Registers a configured pod.
    pub async fn put(&self, req: EndpointRequest) -> Result<EndpointResponse> {
        let req = self.resolve_workload(req).await?;
        // The objects are listed within moments of the agent's start; a registration before
        // that gets the labels known so far, and is relabelled once they are listed.
        if !self.objects.wait_synced(OBJECTS_WAIT).await {
            tracing::warn!(pod = %format!("{}/{}", req.namespace, req.pod_name), "namespace and pod objects not listed yet; the pod may be relabelled once they are");
        }
        let _ops = self.ops.lock().await;
        {
            let inner = self.inner.lock().await;
            match inner.persisted.reserved.get(&req.container_id) {
                Some(ip) if *ip == req.ip => {}
                Some(ip) => bail!(
                    "endpoint {}: address {} was not reserved for it (it holds {ip})",
                    req.container_id,
                    req.ip
                ),
                None if inner.persisted.endpoints.contains_key(&req.container_id) => {}
                None => bail!(
                    "endpoint {}: no address reserved for it; POST /v1/ipam first",
                    req.container_id
                ),
            }
        }
        let pod_labels = self
            .objects
            .lock()
            .pod(&req.namespace, &req.pod_name, &req.labels);
        let labels = pod_labels.identity_labels(&req.namespace);
        let (identity, _) = self
            .identities
            .allocate(&labels)
            .await
            .with_context(|| format!("identity of {}/{}", req.namespace, req.pod_name))?;
        let id = {
            let inner = self.inner.lock().await;
            match inner.persisted.endpoints.get(&req.container_id) {
                Some(ep) => ep.id,
                None => (1..=u16::MAX)
                    .find(|i| !inner.persisted.endpoints.values().any(|e| e.id == *i))
                    .context("no free endpoint id")?,
            }
        };
        let mut ep = EndpointState {
            container_id: req.container_id.clone(),
            id,
            ip: req.ip,
            host_ifname: req.host_ifname.clone(),
            host_mac: req.host_mac.clone(),
            pod_mac: req.pod_mac.clone(),
            namespace: req.namespace.clone(),
            pod: req.pod_name.clone(),
            labels: BTreeMap::new(),
            namespace_labels: None,
            registered_labels: None,
            identity: identity.0,
            ports: req.ports.clone(),
        };
        pod_labels.store(&mut ep);
        let seq = match self.install(&ep) {
            Ok(seq) => seq,
            Err(err) => {
                let _ = self.identities.release(&labels).await;
                return Err(err);
            }
        };
        // The pod's ipcache entry is in the datapath before the CNI plugin returns.
        if !self.core.wait_applied(seq, APPLY_WAIT).await {
            tracing::warn!(pod = %req.pod_name, "endpoint's ipcache entry not applied yet");
        }
        self.publish(&ep);
        let replaced = {
            let mut inner = self.inner.lock().await;
            inner.persisted.reserved.remove(&req.container_id);
            // Registered again: a relabel under way is for the endpoint it replaces.
            inner.relabels.remove(&req.container_id);
            inner
                .persisted
                .endpoints
                .insert(req.container_id.clone(), ep.clone())
        };
        self.save().await?;
        // A registration again (the CNI plugin retried) holds one reference, not two.
        if let Some(old) = replaced {
            let _ = self
                .identities
                .release(&endpoint_identity_labels(&old))
                .await;
        }
        tracing::info!(pod = %format!("{}/{}", ep.namespace, ep.pod), ip = %ep.ip, id = ep.id, identity = ep.identity, "endpoint created");
        Ok(EndpointResponse {
            id: ep.id,
            identity: ep.identity,
            ip: ep.ip,
            host_ifname: ep.host_ifname,
        })
    }

    /// One endpoint.
    pub async fn get(&self, container_id: &str) -> Option<EndpointState> {
        self.inner
            .lock()
            .await
            .persisted
            .endpoints
            .get(container_id)
            .cloned()
    }

    /// Every endpoint, by address.
    pub async fn list(&self) -> Vec<EndpointState> {
        let mut v: Vec<EndpointState> = self
            .inner
            .lock()
            .await
            .persisted
            .endpoints
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|e| e.ip);
        v
    }

    /// Forgets an endpoint and releases its address; unknown ones are fine.
    pub async fn delete(&self, container_id: &str) -> Result<()> {
        let _ops = self.ops.lock().await;
        let (ep, released) = {
            let mut inner = self.inner.lock().await;
            // A relabel under way finds it gone and releases its new identity.
            inner.relabels.remove(container_id);
            let ep = inner.persisted.endpoints.remove(container_id);
            inner.persisted.reserved.remove(container_id);
            let released = inner.ipam.release(container_id);
            (ep, released)
        };
        if let Some(ep) = ep {
            if let Err(err) = self.datapath.remove_endpoint(ep.ip) {
                tracing::warn!(ip = %ep.ip, error = %err, "cannot remove endpoint from the datapath");
            }
            if self.real_kernel {
                crate::netcmd::route_delete(&format!("{}/32", ep.ip));
            }
            self.core.step(Input::EndpointDelete(ep.id));
            self.ip_store.delete(ep.ip.to_string());
            self.record_store
                .delete(format!("{}/{}", ep.namespace, ep.pod));
            let _ = self
                .identities
                .release(&endpoint_identity_labels(&ep))
                .await;
            tracing::info!(pod = %format!("{}/{}", ep.namespace, ep.pod), ip = %ep.ip, "endpoint deleted");
        } else if released.is_some() {
            tracing::info!(%container_id, "address released");
        }
        self.save().await
    }

    /// Compares every endpoint's labels with what the objects say now and starts moving those
    /// that differ to their new identity (see the module documentation): returns at once, the
    /// move runs in a task of its own. Does nothing before the objects are listed.
    pub async fn relabel(self: &Arc<Self>) {
        let _ops = self.ops.lock().await;
        let mut moves = Vec::new();
        let mut unchanged_labels = Vec::new();
        {
            let mut inner = self.inner.lock().await;
            let objects = self.objects.lock();
            if !objects.synced() {
                return;
            }
            let Inner {
                persisted,
                relabels,
                ..
            } = &mut *inner;
            for (container_id, ep) in &mut persisted.endpoints {
                let target = objects.pod(&ep.namespace, &ep.pod, registered_labels(ep));
                let current = PodLabels::of(ep);
                if current.as_ref() == Some(&target) {
                    // Back to what it has: a relabel under way is superseded.
                    relabels.remove(container_id);
                    continue;
                }
                if relabels.get(container_id).map(|(_, t)| t) == Some(&target) {
                    continue;
                }
                if target.identity_labels(&ep.namespace) == endpoint_identity_labels(ep) {
                    // Another spelling of the same identity (a namespace stating its
                    // `kubernetes.io/metadata.name`): only the stored labels change.
                    relabels.remove(container_id);
                    target.store(ep);
                    unchanged_labels.push(ep.clone());
                    continue;
                }
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                relabels.insert(container_id.clone(), (generation, target.clone()));
                moves.push(Move {
                    container_id: container_id.clone(),
                    generation,
                    target,
                });
            }
        }
        for ep in &unchanged_labels {
            self.publish(ep);
        }
        if !unchanged_labels.is_empty()
            && let Err(err) = self.save().await
        {
            tracing::warn!(error = %format!("{err:#}"), "persisting the endpoints' labels");
        }
        if !moves.is_empty() {
            tokio::spawn(self.clone().relabel_moves(moves));
        }
    }

    /// Returns when a relabel failed and [`Endpoints::relabel`] should run again (the task
    /// that follows the objects waits for it).
    pub async fn retry_wanted(&self) {
        self.retry.notified().await;
    }

    /// Steps 1-4 of a relabel for endpoints whose labels changed together.
    async fn relabel_moves(self: Arc<Self>, moves: Vec<Move>) {
        // 1. The new identities.
        let mut allocated = Vec::new();
        let mut failed = false;
        for m in moves {
            let Some(namespace) = self.get(&m.container_id).await.map(|ep| ep.namespace) else {
                continue;
            };
            let labels = m.target.identity_labels(&namespace);
            match self.identities.allocate(&labels).await {
                Ok((id, _)) => allocated.push((m, labels, id.0)),
                Err(err) => {
                    tracing::warn!(container = %m.container_id, error = %err, "cannot allocate the new identity of a relabelled endpoint; it keeps its identity for now");
                    let mut inner = self.inner.lock().await;
                    if inner.relabels.get(&m.container_id).map(|(g, _)| *g) == Some(m.generation) {
                        inner.relabels.remove(&m.container_id);
                        failed = true;
                    }
                }
            }
        }
        if failed {
            // Tried again after a pause (the kvstore may be back), unless a newer change
            // came meanwhile.
            let retry = self.retry.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RELABEL_RETRY).await;
                retry.notify_one();
            });
        }
        if allocated.is_empty() {
            return;
        }
        // 2. Peers learn them meanwhile.
        tokio::time::sleep(self.grace).await;
        // The node's own core must know the new identities' labels to resolve the endpoints'
        // policy under them; it learns them through the same watch as every other node.
        let ids: Vec<u32> = allocated.iter().map(|(_, _, id)| *id).collect();
        if !self
            .core
            .wait_until(
                |core| {
                    ids.iter()
                        .all(|id| core.policy().identities().contains_key(id))
                },
                IDENTITY_WAIT,
            )
            .await
        {
            tracing::warn!(identities = ?ids, "the node has not learnt the new identities yet; switching anyway (the endpoints keep their policy until it has)");
        }
        // 3. The switch, 4. the old identity released.
        let _ops = self.ops.lock().await;
        let mut switched = Vec::new();
        for (m, labels, identity) in allocated {
            let current = {
                let mut inner = self.inner.lock().await;
                let latest = inner.relabels.get(&m.container_id).map(|(g, _)| *g);
                if latest == Some(m.generation) {
                    inner.relabels.remove(&m.container_id);
                    inner.persisted.endpoints.get(&m.container_id).cloned()
                } else {
                    None
                }
            };
            let Some(old) = current else {
                // Superseded by a newer change, registered again or deleted meanwhile.
                let _ = self.identities.release(&labels).await;
                continue;
            };
            match self.switch(&old, &m.target, identity).await {
                Ok(()) => switched.push(old),
                Err(err) => {
                    tracing::warn!(pod = %format!("{}/{}", old.namespace, old.pod), error = %format!("{err:#}"), "cannot switch a relabelled endpoint to its new identity; it keeps its identity");
                    // Whatever part of the switch was made is undone before the new identity
                    // goes.
                    if let Err(err) = self.install(&old) {
                        tracing::warn!(pod = %format!("{}/{}", old.namespace, old.pod), error = %format!("{err:#}"), "cannot restore the endpoint's old identity in the datapath");
                    }
                    let _ = self.identities.release(&labels).await;
                }
            }
        }
        if switched.is_empty() {
            return;
        }
        // Persisted before the old identities go, so a restart never brings one back.
        if let Err(err) = self.save().await {
            tracing::warn!(error = %format!("{err:#}"), "persisting the relabelled endpoints");
        }
        for old in switched {
            let _ = self
                .identities
                .release(&endpoint_identity_labels(&old))
                .await;
        }
    }

    /// Step 3 for one endpoint: from `old` to `identity` with `target` labels.
    async fn switch(&self, old: &EndpointState, target: &PodLabels, identity: u32) -> Result<()> {
        let mut ep = old.clone();
        target.store(&mut ep);
        ep.identity = identity;
        let seq = self.install(&ep)?;
        if !self.core.wait_applied(seq, APPLY_WAIT).await {
            tracing::warn!(pod = %ep.pod, "relabelled endpoint's policy not applied yet");
        }
        self.publish(&ep);
        self.inner
            .lock()
            .await
            .persisted
            .endpoints
            .insert(ep.container_id.clone(), ep.clone());
        tracing::info!(pod = %format!("{}/{}", ep.namespace, ep.pod), old = old.identity, identity, labels = %target.identity_labels(&ep.namespace).to_kvstore_string(), "endpoint relabelled");
        Ok(())
    }
}
