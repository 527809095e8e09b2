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
//! the object), and an explicit `spec.clusterIP` is honored when it lies in the CIDR (not its
//! network or broadcast address) and no other service holds it: a service keeps its address
//! while it exists, so a newcomer asking for a taken one is refused (among services seen
//! together, the first in `<namespace>/<name>` order wins). A service whose address is refused
//! ([`AddressError`]) or that has a bad annotation is skipped with a warning naming it; the
//! others go on.
//! Changes are coalesced: one recomputation per burst of events.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
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

/// Why a service's explicit `spec.clusterIP` is refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    /// Not an IPv4 address (nor `None`, a headless service).
    #[error("service {service}: clusterIP {ip:?} is not an IPv4 address")]
    NotIpv4 {
        /// `<namespace>/<name>`.
        service: String,
        /// The value given.
        ip: String,
    },
    /// Outside the service CIDR, or its network or broadcast address.
    #[error("service {service}: clusterIP {ip} is not a usable address of the service CIDR {cidr}")]
    OutsideCidr {
        /// `<namespace>/<name>`.
        service: String,
        /// The address given.
        ip: Ipv4Addr,
        /// The service CIDR.
        cidr: String,
    },
    /// Another service holds it.
    #[error("service {service}: clusterIP {ip} is already taken by service {owner}")]
    Taken {
        /// `<namespace>/<name>`.
        service: String,
        /// The address given.
        ip: Ipv4Addr,
        /// The service that holds it.
        owner: String,
    },
}

/// The addresses of the service CIDR held by services, kept across recomputations so that a
/// service keeps its address while it exists.
#[derive(Debug, Default)]
pub struct AddressBook {
    owners: BTreeMap<Ipv4Addr, String>,
}

/// The explicit address of a service: `None` when it has none or is headless (`None`).
fn explicit_address(svc: &Service) -> Option<&str> {
    svc.spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

impl AddressBook {
    /// Checks the explicit addresses of `services` against `cidr` and the current holders;
    /// returns the refused services. Services that are gone, or changed address, release theirs.
    pub fn check(
        &mut self,
        cidr: Cidr4,
        services: &BTreeMap<String, Service>,
    ) -> BTreeMap<String, AddressError> {
        self.owners.retain(|ip, key| {
            services
                .get(key)
                .and_then(explicit_address)
                .is_some_and(|text| text.parse::<Ipv4Addr>().ok() == Some(*ip))
        });
        let last = cidr.nth(cidr.size() - 1);
        let mut refused = BTreeMap::new();
        for (key, svc) in services {
            let Some(text) = explicit_address(svc) else {
                continue;
            };
            let Ok(ip) = text.parse::<Ipv4Addr>() else {
                refused.insert(
                    key.clone(),
                    AddressError::NotIpv4 {
                        service: key.clone(),
                        ip: text.to_string(),
                    },
                );
                continue;
            };
            let reserved = cidr.size() > 2 && (ip == cidr.network() || Some(ip) == last);
            if !cidr.contains(ip) || reserved {
                refused.insert(
                    key.clone(),
                    AddressError::OutsideCidr {
                        service: key.clone(),
                        ip,
                        cidr: cidr.to_string(),
                    },
                );
                continue;
            }
            match self.owners.get(&ip) {
                Some(owner) if owner != key => {
                    refused.insert(
                        key.clone(),
                        AddressError::Taken {
                            service: key.clone(),
                            ip,
                            owner: owner.clone(),
                        },
                    );
                }
                Some(_) => {}
                None => {
                    self.owners.insert(ip, key.clone());
                }
            }
        }
        refused
    }

    /// Whether `ip` is held by a service.
    pub fn is_taken(&self, ip: Ipv4Addr) -> bool {
        self.owners.contains_key(&ip)
    }
}

struct State {
    cluster: ClusterInfo,
    addresses: AddressBook,
    /// Services refused for their address (not published).
    refused: BTreeMap<String, AddressError>,
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
            if self.refused.contains_key(key) {
                continue;
            }
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

/// Checks the explicit addresses and warns once per new refusal (and when one is lifted).
fn check_addresses(state: &mut State, cidr: Cidr4) {
    let refused = state.addresses.check(cidr, &state.services);
    for (key, err) in &refused {
        if state.refused.get(key) != Some(err) {
            tracing::warn!(service = %key, error = %err, "service not published: its address is refused");
        }
    }
    for key in state.refused.keys() {
        if !refused.contains_key(key) && state.services.contains_key(key) {
            tracing::info!(service = %key, "service address accepted");
        }
    }
    state.refused = refused;
}

/// Gives every service without an address the lowest free one of `cidr` (written back to the
/// object, whose update comes back through the watch). The network address is skipped.
async fn allocate_addresses(
    backend: &dyn KvBackend,
    cidr: Cidr4,
    services: &BTreeMap<String, Service>,
    book: &AddressBook,
) {
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
            // The broadcast address is never given out (nor the network address: next >= 1).
            if cidr.size() > 2 && next >= cidr.size() - 1 {
                break None;
            }
            match cidr.nth(next) {
                Some(ip) if book.is_taken(ip) => next += 1,
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
        addresses: AddressBook::default(),
        refused: BTreeMap::new(),
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
                    check_addresses(&mut state, cidr);
                    allocate_addresses(backend.as_ref(), cidr, &state.services, &state.addresses).await;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use plexus_loadbalancer::service::{Metadata, ServiceSpec};

    use super::*;

    fn services(list: &[(&str, Option<&str>)]) -> BTreeMap<String, Service> {
        list.iter()
            .map(|(name, ip)| {
                let svc = Service {
                    metadata: Metadata {
                        name: name.to_string(),
                        namespace: "default".into(),
                        ..Default::default()
                    },
                    spec: ServiceSpec {
                        cluster_ip: ip.map(str::to_string),
                        ..Default::default()
                    },
                };
                (svc.key(), svc)
            })
            .collect()
    }

    #[test]
    fn explicit_addresses_in_the_cidr_are_honored_and_bad_ones_refused() {
        let cidr: Cidr4 = "10.11.0.0/16".parse().unwrap();
        let mut book = AddressBook::default();
        let refused = book.check(
            cidr,
            &services(&[
                ("dns", Some("10.11.0.10")),
                ("auto", None),
                ("headless", Some("None")),
                ("outside", Some("10.12.0.10")),
                ("network", Some("10.11.0.0")),
                ("broadcast", Some("10.11.255.255")),
                ("garbage", Some("ten")),
            ]),
        );
        assert!(book.is_taken("10.11.0.10".parse().unwrap()));
        let keys: Vec<&str> = refused.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "default/broadcast",
                "default/garbage",
                "default/network",
                "default/outside"
            ]
        );
        assert_eq!(
            refused["default/outside"].to_string(),
            "service default/outside: clusterIP 10.12.0.10 is not a usable address of the service CIDR 10.11.0.0/16"
        );
        assert_eq!(
            refused["default/garbage"].to_string(),
            "service default/garbage: clusterIP \"ten\" is not an IPv4 address"
        );
    }

    #[test]
    fn a_service_keeps_its_address_against_newcomers_until_it_is_gone() {
        let cidr: Cidr4 = "10.11.0.0/16".parse().unwrap();
        let mut book = AddressBook::default();
        assert!(
            book.check(cidr, &services(&[("z-dns", Some("10.11.0.10"))]))
                .is_empty()
        );
        // "a-thief" sorts first but comes later: the holder keeps the address.
        let both = services(&[
            ("z-dns", Some("10.11.0.10")),
            ("a-thief", Some("10.11.0.10")),
        ]);
        let refused = book.check(cidr, &both);
        assert_eq!(
            refused["default/a-thief"].to_string(),
            "service default/a-thief: clusterIP 10.11.0.10 is already taken by service default/z-dns"
        );
        assert!(!refused.contains_key("default/z-dns"));
        // The holder goes: the newcomer gets it.
        let refused = book.check(cidr, &services(&[("a-thief", Some("10.11.0.10"))]));
        assert!(refused.is_empty());
    }
}
