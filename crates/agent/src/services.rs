//! The cluster's services as this node sees them: its own Service objects and the backends the
//! apiserver selected for them, merged with the remote clusters' ClusterServices through the
//! global-service semantics of `plexus_loadbalancer::select` (reachability from the
//! remote-cluster manager). `service list` shows the result, and [`Services::program`] keeps
//! the datapath's load-balancing tables equal to it: one frontend per service port, the active
//! backends taking new connections, the standby and unreachable ones keeping the connections
//! already established to them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_datapath::{Datapath, Frontend, L4Proto, LbService};

use plexus_clustermesh::mesh::MeshHandle;
use plexus_kvstore::{KvBackend, StoreEvent, WatchStore};
use plexus_loadbalancer::cluster_service::Backends;
use plexus_loadbalancer::select::{BackendState, Selection, select};
use plexus_loadbalancer::service::{Affinity, Service};
use plexus_loadbalancer::{BACKENDS_PREFIX, SERVICES_PREFIX};
use serde::{Deserialize, Serialize};

use crate::view::NodeView;

/// One service as `service list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServiceReport {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its address.
    pub cluster_ip: Option<String>,
    /// Its ports, `port/PROTO` by name.
    pub ports: BTreeMap<String, String>,
    /// Global.
    pub global: bool,
    /// Shared with the other clusters.
    pub shared: bool,
    /// Affinity.
    pub affinity: Affinity,
    /// Backends with their cluster and state.
    pub backends: Selection,
    /// A bad annotation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
struct Local {
    services: BTreeMap<String, Service>,
    backends: BTreeMap<String, Backends>,
    /// Bumped on every change.
    generation: u64,
    services_synced: bool,
    backends_synced: bool,
}

/// The node's services.
#[derive(Clone, Default)]
pub struct Services {
    local: Arc<Mutex<Local>>,
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str) -> plexus_kvstore::DecodeFn<T> {
    Box::new(move |key, raw| serde_json::from_slice(raw).map_err(|e| format!("{what} {key}: {e}")))
}

/// Folds one event in; true when it was the initial listing's end.
fn fold<T>(map: &mut BTreeMap<String, T>, event: StoreEvent<T>) -> bool {
    match event {
        StoreEvent::Upsert { key, value, .. } => {
            map.insert(key, value);
        }
        StoreEvent::Delete { key, .. } => {
            map.remove(&key);
        }
        StoreEvent::Rejected { key, reason } => {
            tracing::warn!(%key, %reason, "service object refused");
            map.remove(&key);
        }
        StoreEvent::Synced => return true,
    }
    false
}

impl Services {
    /// Follows the cluster's Service objects and computed backends until the task is dropped.
    pub async fn follow(self, backend: Arc<dyn KvBackend>) {
        let mut services: WatchStore<Service> =
            WatchStore::new(backend.clone(), SERVICES_PREFIX, decode("service"));
        let mut backends: WatchStore<Backends> =
            WatchStore::new(backend, BACKENDS_PREFIX, decode("backends"));
        loop {
            tokio::select! {
                e = services.next() => {
                    let mut l = self.lock();
                    l.services_synced |= fold(&mut l.services, e);
                    l.generation += 1;
                }
                e = backends.next() => {
                    let mut l = self.lock();
                    l.backends_synced |= fold(&mut l.backends, e);
                    l.generation += 1;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every local service with its selected backends.
    pub fn report(&self, cluster: &str, view: &NodeView, mesh: &MeshHandle) -> Vec<ServiceReport> {
        let status = mesh.status();
        let reachable: BTreeSet<String> = status
            .remotes
            .iter()
            .filter(|(_, r)| r.protocol.connected)
            .map(|(c, _)| c.clone())
            .collect();
        self.report_with(cluster, view, &reachable)
    }

    fn report_with(
        &self,
        cluster: &str,
        view: &NodeView,
        reachable: &BTreeSet<String>,
    ) -> Vec<ServiceReport> {
        let reachable = |c: &str| reachable.contains(c);
        let l = self.lock();
        l.services
            .iter()
            .map(|(key, svc)| {
                let (config, error) = match svc.global_config() {
                    Ok(c) => (c, None),
                    Err(e) => (Default::default(), Some(e.to_string())),
                };
                let empty = Backends::new();
                let local = l.backends.get(key).unwrap_or(&empty);
                let remote = view.remote_services(key);
                ServiceReport {
                    namespace: svc.metadata.namespace.clone(),
                    name: svc.metadata.name.clone(),
                    cluster_ip: svc.spec.cluster_ip.clone(),
                    ports: svc
                        .spec
                        .ports
                        .iter()
                        .map(|p| (p.name.clone(), format!("{}/{}", p.port, p.protocol)))
                        .collect(),
                    global: config.global,
                    shared: config.shared,
                    affinity: config.affinity,
                    backends: select(cluster, config, local, &remote, &reachable),
                    error,
                }
            })
            .collect()
    }

    /// Keeps the datapath's load-balancing tables equal to [`Services::report`] until the task
    /// is dropped. It starts once the cluster's services are listed (and the remote clusters
    /// synced, or `remote_grace` passed), so that a restarted agent does not drop the
    /// frontends its predecessor programmed; then it reprograms what changed whenever the
    /// services, the remote clusters' services or their reachability change.
    pub async fn program(
        self,
        cluster: String,
        view: Arc<NodeView>,
        mesh: MeshHandle,
        datapath: Arc<dyn Datapath>,
        remote_grace: Duration,
    ) {
        let tick = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        loop {
            let local_synced = {
                let l = self.lock();
                l.services_synced && l.backends_synced
            };
            let remotes_ready = mesh.status().remotes.values().all(|r| r.protocol.ready);
            if local_synced && (remotes_ready || started.elapsed() >= remote_grace) {
                break;
            }
            tokio::time::sleep(tick).await;
        }
        let mut programmed: BTreeMap<Frontend, LbService> = match datapath.services() {
            Ok(list) => list.into_iter().map(|s| (s.frontend, s)).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "reading the datapath's services");
                BTreeMap::new()
            }
        };
        let mut last: Option<(u64, u64, BTreeSet<String>)> = None;
        loop {
            let reachable: BTreeSet<String> = mesh
                .status()
                .remotes
                .iter()
                .filter(|(_, r)| r.protocol.connected)
                .map(|(c, _)| c.clone())
                .collect();
            let fingerprint = (
                self.lock().generation,
                view.services_generation(),
                reachable,
            );
            if last.as_ref() != Some(&fingerprint) {
                let report = self.report_with(&cluster, &view, &fingerprint.2);
                let desired = desired_frontends(&report);
                if sync_datapath(datapath.as_ref(), &mut programmed, desired) {
                    last = Some(fingerprint);
                } else {
                    // Try again, without hammering a datapath that refuses.
                    last = None;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            tokio::time::sleep(tick).await;
        }
    }
}

/// The frontends of the services in `report`: one per service port with an address, its
/// active backends taking new connections, the others (standby, unreachable) keeping theirs.
/// What cannot be represented (no address yet, an unsupported protocol, a backend without the
/// port) is left out; a service with a bad annotation is still balanced over its local
/// backends, as `select` computed with the default settings.
pub fn desired_frontends(report: &[ServiceReport]) -> BTreeMap<Frontend, LbService> {
    let mut out = BTreeMap::new();
    for svc in report {
        let Some(addr) = svc
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        for (port_name, spec) in &svc.ports {
            let Some((port, proto)) = spec.split_once('/') else {
                continue;
            };
            let (Ok(port), Ok(proto)) = (port.parse::<u16>(), proto.parse::<L4Proto>()) else {
                continue;
            };
            let frontend = Frontend { addr, port, proto };
            let mut lb = LbService {
                frontend,
                active: Vec::new(),
                inactive: Vec::new(),
            };
            for c in &svc.backends.candidates {
                let Some(target) = c.ports.get(port_name) else {
                    continue;
                };
                if target.protocol.parse::<L4Proto>().ok() != Some(proto) {
                    continue;
                }
                let Ok(ip) = c.ip.parse::<Ipv4Addr>() else {
                    continue;
                };
                let backend = SocketAddrV4::new(ip, target.port);
                if lb.active.contains(&backend) || lb.inactive.contains(&backend) {
                    continue;
                }
                match c.state {
                    BackendState::Active => lb.active.push(backend),
                    BackendState::Standby | BackendState::Unreachable => lb.inactive.push(backend),
                }
            }
            out.insert(frontend, lb);
        }
    }
    out
}

/// Applies the difference between what is programmed and what is desired; false when some
/// change failed (and is left for the next attempt).
fn sync_datapath(
    datapath: &dyn Datapath,
    programmed: &mut BTreeMap<Frontend, LbService>,
    desired: BTreeMap<Frontend, LbService>,
) -> bool {
    let mut ok = true;
    let gone: Vec<Frontend> = programmed
        .keys()
        .filter(|f| !desired.contains_key(f))
        .copied()
        .collect();
    for frontend in gone {
        match datapath.remove_service(frontend) {
            Ok(()) => {
                programmed.remove(&frontend);
                tracing::debug!(%frontend, "service frontend removed");
            }
            Err(err) => {
                ok = false;
                tracing::warn!(%frontend, error = %err, "removing a service frontend");
            }
        }
    }
    for (frontend, svc) in desired {
        if programmed.get(&frontend) == Some(&svc) {
            continue;
        }
        match datapath.upsert_service(&svc) {
            Ok(()) => {
                tracing::debug!(%frontend, active = svc.active.len(), inactive = svc.inactive.len(), "service frontend programmed");
                programmed.insert(frontend, svc);
            }
            Err(err) => {
                ok = false;
                tracing::warn!(%frontend, error = %err, "programming a service frontend");
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use plexus_datapath::FakeDatapath;
    use plexus_loadbalancer::select::Candidate;
    use plexus_model::service::PortConfig;

    fn candidate(
        cluster: &str,
        ip: &str,
        ports: &[(&str, &str, u16)],
        state: BackendState,
    ) -> Candidate {
        Candidate {
            cluster: cluster.into(),
            ip: ip.into(),
            ports: ports
                .iter()
                .map(|(name, proto, port)| {
                    (
                        name.to_string(),
                        PortConfig {
                            protocol: proto.to_string(),
                            port: *port,
                        },
                    )
                })
                .collect(),
            local: cluster == "c1",
            state,
        }
    }

    fn report(
        ip: Option<&str>,
        ports: &[(&str, &str)],
        candidates: Vec<Candidate>,
    ) -> ServiceReport {
        ServiceReport {
            namespace: "default".into(),
            name: "rebel-base".into(),
            cluster_ip: ip.map(str::to_string),
            ports: ports
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_string()))
                .collect(),
            global: true,
            shared: true,
            affinity: Affinity::None,
            backends: Selection { candidates },
            error: None,
        }
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn one_frontend_per_port_with_active_and_inactive_backends() {
        let r = report(
            Some("10.11.0.5"),
            &[("http", "80/TCP"), ("dns", "53/UDP")],
            vec![
                candidate(
                    "c1",
                    "10.10.0.5",
                    &[("http", "TCP", 8080), ("dns", "UDP", 5353)],
                    BackendState::Active,
                ),
                candidate(
                    "c2",
                    "10.20.0.5",
                    &[("http", "TCP", 8080)],
                    BackendState::Unreachable,
                ),
                candidate(
                    "c2",
                    "10.20.0.6",
                    &[("http", "TCP", 8080)],
                    BackendState::Standby,
                ),
                candidate(
                    "c2",
                    "not-an-ip",
                    &[("http", "TCP", 8080)],
                    BackendState::Active,
                ),
                candidate(
                    "c2",
                    "10.20.0.7",
                    &[("http", "UDP", 8080)],
                    BackendState::Active,
                ),
            ],
        );
        let d = desired_frontends(&[r]);
        assert_eq!(d.len(), 2);
        let http = &d[&Frontend {
            addr: "10.11.0.5".parse().unwrap(),
            port: 80,
            proto: L4Proto::Tcp,
        }];
        assert_eq!(http.active, vec![addr("10.10.0.5:8080")]);
        assert_eq!(
            http.inactive,
            vec![addr("10.20.0.5:8080"), addr("10.20.0.6:8080")]
        );
        let dns = &d[&Frontend {
            addr: "10.11.0.5".parse().unwrap(),
            port: 53,
            proto: L4Proto::Udp,
        }];
        assert_eq!(dns.active, vec![addr("10.10.0.5:5353")]);
        assert!(dns.inactive.is_empty());
    }

    #[test]
    fn services_without_address_or_with_unknown_protocols_are_skipped() {
        let c = vec![candidate(
            "c1",
            "10.10.0.5",
            &[("", "TCP", 80)],
            BackendState::Active,
        )];
        assert!(desired_frontends(&[report(None, &[("", "80/TCP")], c.clone())]).is_empty());
        assert!(desired_frontends(&[report(Some("10.11.0.5"), &[("", "80/SCTP")], c)]).is_empty());
    }

    #[test]
    fn the_datapath_follows_changes_and_removals() {
        let dp = FakeDatapath::new();
        let mut programmed = BTreeMap::new();
        let c = |state| vec![candidate("c1", "10.10.0.5", &[("", "TCP", 80)], state)];
        let one = desired_frontends(&[report(
            Some("10.11.0.5"),
            &[("", "80/TCP")],
            c(BackendState::Active),
        )]);
        assert!(sync_datapath(&dp, &mut programmed, one.clone()));
        assert_eq!(
            dp.services().unwrap(),
            one.values().cloned().collect::<Vec<_>>()
        );
        let standby = desired_frontends(&[report(
            Some("10.11.0.5"),
            &[("", "80/TCP")],
            c(BackendState::Standby),
        )]);
        assert!(sync_datapath(&dp, &mut programmed, standby));
        let now = dp.services().unwrap();
        assert!(now[0].active.is_empty());
        assert_eq!(now[0].inactive, vec![addr("10.10.0.5:80")]);
        assert!(sync_datapath(&dp, &mut programmed, BTreeMap::new()));
        assert!(dp.services().unwrap().is_empty());
        assert!(programmed.is_empty());
    }
}
