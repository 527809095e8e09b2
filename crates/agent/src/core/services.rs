//! Services as this node load-balances them: backends across clusters, affinity and its
//! fallback, unreachable clusters.
//!
//! Inputs: the cluster's Service objects and the backends the apiserver selected for them,
//! the remote clusters' shared global services (ClusterServices), and which remote clusters
//! are reachable. [`ServiceState::selections`] applies the global-service semantics of
//! [`plexus_loadbalancer::select`]:
//! - a global service also balances over the backends of every remote whose same-named service
//!   is global and shared;
//! - affinity `local` (`remote`) uses this cluster's (the others') backends while it has any,
//!   the rest standing by as the fallback that takes over when the preferred side has none;
//! - backends of an unreachable cluster take no new connection while a reachable one exists.
//!
//! [`ServiceState::desired`] turns that into the load balancer's table: one frontend per
//! service port (typed port and protocol, never parsed back from display text), its active
//! backends taking new connections, the standby and unreachable ones keeping the connections
//! already established to them.
//!
//! The table is computed only once the cluster's services and backends are listed and the
//! remote clusters synced (or the grace time passed), so that a restarted agent never
//! withdraws frontends its predecessor programmed before it knows the whole picture.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use plexus_datapath::{Frontend, L4Proto, LbService};
use plexus_loadbalancer::cluster_service::Backends;
use plexus_loadbalancer::select::{BackendState, Selection, select};
use plexus_loadbalancer::service::{GlobalConfig, Service};
use plexus_model::service::ClusterService;

/// One local service with its selected backends.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSelection<'a> {
    /// The object.
    pub service: &'a Service,
    /// Its global-service settings (the defaults when an annotation is bad).
    pub config: GlobalConfig,
    /// A bad annotation, if any.
    pub error: Option<String>,
    /// Every candidate backend with its state.
    pub selection: Selection<'a>,
}

/// The node's services.
#[derive(Debug)]
pub struct ServiceState {
    cluster: String,
    services: BTreeMap<String, Service>,
    backends: BTreeMap<String, Backends>,
    /// Remote clusters' ClusterServices by (`<namespace>/<name>`, cluster).
    remote: BTreeMap<String, BTreeMap<String, Arc<ClusterService>>>,
    reachable: BTreeSet<String>,
    services_synced: bool,
    backends_synced: bool,
    remotes_ready: bool,
    grace_expired: bool,
    /// Every service must be computed again (sync, reachability).
    dirty_all: bool,
    /// The services (by key) whose inputs changed since the last desired table.
    dirty: BTreeSet<String>,
    /// Each service's frontends as last computed, by key: a change recomputes only its own
    /// service, not every service of the cluster.
    frontends: BTreeMap<String, Vec<LbService>>,
}

impl ServiceState {
    /// No service yet.
    pub fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_string(),
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            remote: BTreeMap::new(),
            reachable: BTreeSet::new(),
            services_synced: false,
            backends_synced: false,
            remotes_ready: false,
            grace_expired: false,
            dirty_all: true,
            dirty: BTreeSet::new(),
            frontends: BTreeMap::new(),
        }
    }

    /// A Service object.
    pub fn service_upsert(&mut self, key: String, service: Service) {
        if self.services.get(&key) != Some(&service) {
            self.dirty.insert(key.clone());
            self.services.insert(key, service);
        }
    }

    /// A Service object is gone.
    pub fn service_delete(&mut self, key: &str) {
        if self.services.remove(key).is_some() {
            self.dirty.insert(key.to_string());
        }
    }

    /// The Service objects are listed.
    pub fn services_synced(&mut self) {
        self.services_synced = true;
        self.dirty_all = true;
    }

    /// A service's backends.
    pub fn backends_upsert(&mut self, key: String, backends: Backends) {
        if self.backends.get(&key) != Some(&backends) {
            self.dirty.insert(key.clone());
            self.backends.insert(key, backends);
        }
    }

    /// A service's backends are gone.
    pub fn backends_delete(&mut self, key: &str) {
        if self.backends.remove(key).is_some() {
            self.dirty.insert(key.to_string());
        }
    }

    /// The backends are listed.
    pub fn backends_synced(&mut self) {
        self.backends_synced = true;
        self.dirty_all = true;
    }

    /// A remote cluster's shared global service.
    pub fn remote_upsert(&mut self, cluster: &str, svc: Arc<ClusterService>) {
        let key = format!("{}/{}", svc.namespace, svc.name);
        let slot = self.remote.entry(key.clone()).or_default();
        if slot.get(cluster) != Some(&svc) {
            slot.insert(cluster.to_string(), svc);
            self.dirty.insert(key);
        }
    }

    /// A remote cluster's service is gone (or no longer shared, or withdrawn after the cache
    /// TTL).
    pub fn remote_delete(&mut self, cluster: &str, key: &str) {
        if let Some(slot) = self.remote.get_mut(key) {
            if slot.remove(cluster).is_some() {
                self.dirty.insert(key.to_string());
            }
            if slot.is_empty() {
                self.remote.remove(key);
            }
        }
    }

    /// A remote cluster was drained: its services go.
    pub fn remote_cluster_gone(&mut self, cluster: &str) {
        for (key, slot) in &mut self.remote {
            if slot.remove(cluster).is_some() {
                self.dirty.insert(key.clone());
            }
        }
        self.remote.retain(|_, slot| !slot.is_empty());
        self.reachable.remove(cluster);
    }

    /// Which remotes are reachable, and whether all have synced.
    pub fn set_mesh_status(&mut self, reachable: BTreeSet<String>, all_ready: bool) {
        if reachable != self.reachable {
            self.reachable = reachable;
            self.dirty_all = true;
        }
        if all_ready && !self.remotes_ready {
            self.remotes_ready = true;
            self.dirty_all = true;
        }
    }

    /// The grace time for remotes to sync passed.
    pub fn grace_expired(&mut self) {
        if !self.grace_expired {
            self.grace_expired = true;
            self.dirty_all = true;
        }
    }

    /// Whether the load balancer may be programmed: the local objects are listed and the
    /// remotes synced or waited for long enough.
    pub fn ready(&self) -> bool {
        self.services_synced && self.backends_synced && (self.remotes_ready || self.grace_expired)
    }

    fn selection<'a>(&'a self, key: &str, service: &'a Service) -> ServiceSelection<'a> {
        static EMPTY: Backends = Backends::new();
        let reachable = |c: &str| self.reachable.contains(c);
        let (config, error) = match service.global_config() {
            Ok(c) => (c, None),
            Err(e) => (GlobalConfig::default(), Some(e.to_string())),
        };
        let local = self.backends.get(key).unwrap_or(&EMPTY);
        let remote = self
            .remote
            .get(key)
            .into_iter()
            .flat_map(|m| m.values().map(|s| &**s));
        ServiceSelection {
            service,
            config,
            error,
            selection: select(&self.cluster, config, local, remote, &reachable),
        }
    }

    /// Every local service with its backends, in key order.
    pub fn selections(&self) -> Vec<ServiceSelection<'_>> {
        self.services
            .iter()
            .map(|(key, service)| self.selection(key, service))
            .collect()
    }

    /// The load balancer's desired table, computed from scratch.
    pub fn desired(&self) -> BTreeMap<Frontend, LbService> {
        desired_frontends(&self.selections())
    }

    /// Each frontend of the last desired table with its service's key (`<namespace>/<name>`),
    /// as computed then (nothing is computed again).
    pub fn frontends_by_service(&self) -> impl Iterator<Item = (&str, &LbService)> + '_ {
        self.frontends
            .iter()
            .flat_map(|(key, list)| list.iter().map(move |lb| (key.as_str(), lb)))
    }

    /// The desired table if it may have changed since the last call and may be programmed.
    /// Only the services whose inputs changed are computed again.
    pub fn take_desired(&mut self) -> Option<BTreeMap<Frontend, LbService>> {
        let changed = self.dirty_all || !self.dirty.is_empty();
        if !changed || !self.ready() {
            return None;
        }
        let keys: Vec<String> = if std::mem::take(&mut self.dirty_all) {
            self.frontends.clear();
            self.dirty.clear();
            self.services.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        for key in keys {
            let computed = self
                .services
                .get(&key)
                .map(|service| frontends_of(&self.selection(&key, service)));
            match computed {
                Some(list) => self.frontends.insert(key, list),
                None => self.frontends.remove(&key),
            };
        }
        Some(
            self.frontends
                .values()
                .flatten()
                .map(|lb| (lb.frontend, lb.clone()))
                .collect(),
        )
    }
}

/// The frontends of `services`: one per service port with an address and a protocol the load
/// balancer handles (TCP, UDP), its active backends taking new connections, the others (standby,
/// unreachable) keeping theirs. A backend without the port is left out; a service with a bad
/// annotation is still balanced over its local backends, as `select` computed with the defaults.
pub fn desired_frontends(services: &[ServiceSelection<'_>]) -> BTreeMap<Frontend, LbService> {
    services
        .iter()
        .flat_map(frontends_of)
        .map(|lb| (lb.frontend, lb))
        .collect()
}

/// The frontends of one service (see [`desired_frontends`]).
pub fn frontends_of(svc: &ServiceSelection<'_>) -> Vec<LbService> {
    let mut out = Vec::new();
    let Some(addr) = svc
        .service
        .spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    else {
        return out;
    };
    for port in &svc.service.spec.ports {
        let Ok(proto) = port.protocol.parse::<L4Proto>() else {
            continue;
        };
        let frontend = Frontend {
            addr,
            port: port.port,
            proto,
        };
        let mut lb = LbService {
            frontend,
            active: Vec::new(),
            inactive: Vec::new(),
        };
        // A backend listed twice (two clusters naming the same address) is balanced once; a
        // set, not a scan of the lists, so that 10,000 backends cost 10,000 probes.
        let mut seen = HashSet::with_capacity(svc.selection.candidates.len());
        for c in &svc.selection.candidates {
            let Some(target) = c.ports.get(&port.name) else {
                continue;
            };
            if target.protocol.parse::<L4Proto>().ok() != Some(proto) {
                continue;
            }
            let Ok(ip) = c.ip.parse::<Ipv4Addr>() else {
                continue;
            };
            let backend = SocketAddrV4::new(ip, target.port);
            if !seen.insert(backend) {
                continue;
            }
            match c.state {
                BackendState::Active => lb.active.push(backend),
                BackendState::Standby | BackendState::Unreachable => lb.inactive.push(backend),
            }
        }
        out.push(lb);
    }
    out
}
