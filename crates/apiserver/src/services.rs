//! The service controller of kvstore mode.
//!
//! It mirrors the Service objects (`plexus/objects/v1/services/`) and the endpoint records
//! agents publish (`plexus/endpoints/v1/`), and keeps two things published under the
//! apiserver's lease:
//! - every service's backends, selected by its selector from the ready endpoints of its
//!   namespace, under `plexus/state/backends/v1/<namespace>/<name>` (what the agents' load
//!   balancers read);
//! - the `ClusterService` of every global service under
//!   `cilium/state/services/v1/<cluster>/<namespace>/<name>` (what other clusters read), and the
//!   services sync canary once both mirrors have synced and the first set is written.
//!
//! With a service CIDR, a service without an address gets the lowest free one (written back to
//! the object). A service with a bad annotation is skipped with a warning naming it; the others go on.
//! Changes are coalesced: one recomputation per burst of events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use plexus_ipam::Cidr4;
use plexus_kvstore::{
    KvBackend, LeaseId, QueueGauge, StoreEvent, SyncStore, SyncStoreConfig, WatchStore,
};
use plexus_loadbalancer::cluster_service::{backends, cluster_service};
use plexus_loadbalancer::endpoint::EndpointRecord;
use plexus_loadbalancer::service::Service;
use plexus_loadbalancer::{BACKENDS_PREFIX, ENDPOINTS_PREFIX, SERVICES_PREFIX};
use plexus_model::cluster::ClusterInfo;
use plexus_model::keys::StateKind;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The running controller. Dropping it stops it (what it published stays until the lease ends).
pub struct ServiceController {
    task: JoinHandle<()>,
    synced: watch::Receiver<bool>,
    queues: Vec<QueueGauge>,
}

impl ServiceController {
    /// Starts the controller of cluster `cluster`, publishing under the lease `lease_rx` holds.
    pub fn spawn(
        backend: Arc<dyn KvBackend>,
        lease_rx: watch::Receiver<LeaseId>,
        cluster: ClusterInfo,
        service_cidr: Option<Cidr4>,
    ) -> Self {
        let (synced_tx, synced) = watch::channel(false);
        let backends_store = SyncStore::start_with_lease(
            backend.clone(),
            lease_rx.clone(),
            SyncStoreConfig {
                prefix: BACKENDS_PREFIX.to_string(),
                canary: None,
            },
        );
        let services_store = SyncStore::start_with_lease(
            backend.clone(),
            lease_rx,
            SyncStoreConfig {
                prefix: StateKind::Services.state_prefix(&cluster.name),
                canary: Some(StateKind::Services.canary(&cluster.name)),
            },
        );
        let queues = vec![backends_store.queue_gauge(), services_store.queue_gauge()];
        let task = tokio::spawn(run(
            backend,
            backends_store,
            services_store,
            cluster,
            service_cidr,
            synced_tx,
        ));
        Self {
            task,
            synced,
            queues,
        }
    }

    /// Its stores' sync queues (for metrics).
    pub fn queue_gauges(&self) -> Vec<QueueGauge> {
        self.queues.clone()
    }

    /// Becomes true once the first set of ClusterServices is published.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }
}

impl Drop for ServiceController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str) -> plexus_kvstore::DecodeFn<T> {
    Box::new(move |key, raw| serde_json::from_slice(raw).map_err(|e| format!("{what} {key}: {e}")))
}

struct State {
    cluster: ClusterInfo,
    services: BTreeMap<String, Service>,
    endpoints: BTreeMap<String, EndpointRecord>,
    published_backends: BTreeMap<String, Vec<u8>>,
    published_services: BTreeMap<String, Vec<u8>>,
}

impl State {
    fn apply<T>(map: &mut BTreeMap<String, T>, event: StoreEvent<T>) -> bool {
        match event {
            StoreEvent::Upsert { key, value, .. } => {
                map.insert(key, value);
                true
            }
            StoreEvent::Delete { key, .. } => map.remove(&key).is_some(),
            StoreEvent::Rejected { key, reason } => {
                tracing::warn!(%key, %reason, "object refused");
                map.remove(&key).is_some()
            }
            StoreEvent::Synced => false,
        }
    }

    /// Recomputes everything and writes the differences.
    fn publish(&mut self, backends_store: &SyncStore, services_store: &SyncStore) {
        let mut want_backends = BTreeMap::new();
        let mut want_services = BTreeMap::new();
        for (key, svc) in &self.services {
            let b = backends(svc, self.endpoints.values());
            want_backends.insert(key.clone(), serde_json::to_vec(&b).unwrap_or_default());
            match cluster_service(
                &self.cluster.name,
                self.cluster.id,
                svc,
                self.endpoints.values(),
            ) {
                Ok(Some(cs)) => {
                    want_services.insert(key.clone(), serde_json::to_vec(&cs).unwrap_or_default());
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "service not published"),
            }
        }
        diff(&mut self.published_backends, want_backends, backends_store);
        diff(&mut self.published_services, want_services, services_store);
    }
}

fn diff(
    published: &mut BTreeMap<String, Vec<u8>>,
    want: BTreeMap<String, Vec<u8>>,
    store: &SyncStore,
) {
    for key in published.keys() {
        if !want.contains_key(key) {
            store.delete(key.clone());
        }
    }
    for (key, value) in &want {
        if published.get(key) != Some(value) {
            store.upsert(key.clone(), value.clone());
        }
    }
    *published = want;
}

/// Gives every service without an address the lowest free one of `cidr` (written back to the
/// object, whose update comes back through the watch). The network address is skipped.
async fn allocate_addresses(
    backend: &dyn KvBackend,
    cidr: Cidr4,
    services: &BTreeMap<String, Service>,
) {
    let used: std::collections::BTreeSet<String> = services
        .values()
        .filter_map(|s| s.spec.cluster_ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    let mut next = 1u64;
    for (key, svc) in services {
        if svc
            .spec
            .cluster_ip
            .as_deref()
            .is_some_and(|ip| !ip.is_empty())
        {
            continue;
        }
        let ip = loop {
            match cidr.nth(next) {
                Some(ip) if used.contains(&ip.to_string()) => next += 1,
                Some(ip) => break Some(ip),
                None => break None,
            }
        };
        let Some(ip) = ip else {
            tracing::warn!(service = %key, %cidr, "service CIDR exhausted: service has no address");
            continue;
        };
        next += 1;
        let mut svc = svc.clone();
        svc.spec.cluster_ip = Some(ip.to_string());
        let value = serde_json::to_vec(&svc).unwrap_or_default();
        match backend
            .put(&format!("{SERVICES_PREFIX}{key}"), value, None)
            .await
        {
            Ok(_) => tracing::info!(service = %key, %ip, "service address allocated"),
            Err(err) => {
                tracing::warn!(service = %key, error = %err, "cannot store the service address")
            }
        }
    }
}

async fn run(
    backend: Arc<dyn KvBackend>,
    backends_store: SyncStore,
    services_store: SyncStore,
    cluster: ClusterInfo,
    service_cidr: Option<Cidr4>,
    synced_tx: watch::Sender<bool>,
) {
    let mut services: WatchStore<Service> =
        WatchStore::new(backend.clone(), SERVICES_PREFIX, decode("service"));
    let mut endpoints: WatchStore<EndpointRecord> =
        WatchStore::new(backend.clone(), ENDPOINTS_PREFIX, decode("endpoint"));
    let mut state = State {
        cluster,
        services: BTreeMap::new(),
        endpoints: BTreeMap::new(),
        published_backends: BTreeMap::new(),
        published_services: BTreeMap::new(),
    };
    let (mut services_synced, mut endpoints_synced, mut announced) = (false, false, false);
    let mut dirty = false;
    loop {
        // Coalesce: wait for an event, or after a quiet 50 ms publish what changed.
        let quiet = tokio::time::sleep(Duration::from_millis(50));
        tokio::select! {
            e = services.next() => {
                services_synced |= matches!(e, StoreEvent::Synced);
                dirty |= State::apply(&mut state.services, e);
            }
            e = endpoints.next() => {
                endpoints_synced |= matches!(e, StoreEvent::Synced);
                dirty |= State::apply(&mut state.endpoints, e);
            }
            _ = quiet, if dirty || (services_synced && endpoints_synced && !announced) => {
                if let Some(cidr) = service_cidr {
                    allocate_addresses(backend.as_ref(), cidr, &state.services).await;
                }
                state.publish(&backends_store, &services_store);
                dirty = false;
                if services_synced && endpoints_synced && !announced {
                    services_store.synced();
                    services_store.wait_synced().await;
                    announced = true;
                    let _ = synced_tx.send(true);
                }
            }
        }
    }
}
