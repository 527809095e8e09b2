//! Which backends a service load-balances new connections to: the global-service semantics.
//!
//! [`select`] is a pure function of the local service, its local backends, the remote
//! clusters' ClusterServices of the same name and which remote clusters are reachable:
//! - a service that is not global uses its own cluster's backends only;
//! - a global service also uses the backends of every remote cluster whose same-named service
//!   is global and shared (a remote's `shared: false` keeps its backends at home; whether this
//!   cluster shares its own does not change what it uses);
//! - backends of a remote cluster that is not reachable (connection lost, heartbeat stale) take
//!   no new connection while any reachable backend exists; their state is kept, so they return
//!   as soon as the cluster does;
//! - affinity `local` uses this cluster's backends while it has any and the others only then;
//!   `remote` the reverse; `none` all of them.
//!
//! Every candidate is returned with its state, so `service list` can show what is used, what
//! waits as a fallback and what is unreachable. Candidates borrow their cluster, address and
//! ports from the inputs: a remote service with 10,000 backends is selected without copying
//! them.

use std::collections::BTreeMap;

use plexus_model::service::{ClusterService, PortConfiguration};
use serde::{Deserialize, Serialize};

use crate::service::{Affinity, GlobalConfig};

/// Why a backend is or is not used for new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    /// Takes new connections.
    Active,
    /// A fallback: the affinity prefers the other side, which has backends.
    Standby,
    /// Its cluster is unreachable and reachable backends exist.
    Unreachable,
}

/// One candidate backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Candidate<'a> {
    /// The cluster it runs in.
    pub cluster: &'a str,
    /// Its address.
    pub ip: &'a str,
    /// Its ports by port name.
    pub ports: &'a PortConfiguration,
    /// Whether it is this cluster's.
    pub local: bool,
    /// Its state.
    pub state: BackendState,
}

/// The backends of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Selection<'a> {
    /// Every candidate, local first, then by cluster and address.
    pub candidates: Vec<Candidate<'a>>,
}

impl<'a> Selection<'a> {
    /// The backends that take new connections.
    pub fn active(&self) -> impl Iterator<Item = &Candidate<'a>> {
        self.candidates
            .iter()
            .filter(|c| c.state == BackendState::Active)
    }
}

/// Selects the backends of a service of cluster `local_cluster` with settings `config`, local
/// backends `local_backends`, and the remote clusters' ClusterServices of the same name
/// (`remote`, by cluster), `reachable` telling which remote clusters are reachable.
pub fn select<'a>(
    local_cluster: &'a str,
    config: GlobalConfig,
    local_backends: &'a BTreeMap<String, PortConfiguration>,
    remote: impl IntoIterator<Item = &'a ClusterService>,
    reachable: &dyn Fn(&str) -> bool,
) -> Selection<'a> {
    let mut candidates: Vec<Candidate<'a>> = local_backends
        .iter()
        .map(|(ip, ports)| Candidate {
            cluster: local_cluster,
            ip,
            ports,
            local: true,
            state: BackendState::Active,
        })
        .collect();
    if config.global {
        let mut remote: Vec<&ClusterService> = remote
            .into_iter()
            .filter(|s| s.shared && s.cluster != local_cluster)
            .collect();
        remote.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        candidates.reserve(remote.iter().map(|s| s.backends.len()).sum());
        // Reachability is a property of the cluster: asked once per remote service.
        let mut any_reachable = !candidates.is_empty();
        for svc in remote {
            let state = if reachable(&svc.cluster) {
                any_reachable |= !svc.backends.is_empty();
                BackendState::Active
            } else {
                BackendState::Unreachable
            };
            candidates.extend(svc.backends.iter().map(|(ip, ports)| Candidate {
                cluster: &svc.cluster,
                ip,
                ports,
                local: false,
                state,
            }));
        }
        // Unreachable clusters take no new connection while a reachable backend exists.
        if !any_reachable {
            for c in &mut candidates {
                c.state = BackendState::Active;
            }
        }
    }
    // Affinity among what is left.
    let preferred_local = match config.affinity {
        Affinity::None => None,
        Affinity::Local => Some(true),
        Affinity::Remote => Some(false),
    };
    if let Some(local) = preferred_local {
        let side_has = candidates
            .iter()
            .any(|c| c.local == local && c.state == BackendState::Active);
        if side_has {
            for c in &mut candidates {
                if c.local != local && c.state == BackendState::Active {
                    c.state = BackendState::Standby;
                }
            }
        }
    }
    Selection { candidates }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_model::service::PortConfig;

    fn ports() -> PortConfiguration {
        BTreeMap::from([(
            "http".to_string(),
            PortConfig {
                protocol: "TCP".into(),
                port: 80,
            },
        )])
    }

    fn local(ips: &[&str]) -> BTreeMap<String, PortConfiguration> {
        ips.iter().map(|ip| (ip.to_string(), ports())).collect()
    }

    fn remote(cluster: &str, shared: bool, ips: &[&str]) -> ClusterService {
        ClusterService {
            cluster: cluster.into(),
            namespace: "default".into(),
            name: "rebel-base".into(),
            frontends: BTreeMap::new(),
            backends: local(ips),
            hostnames: BTreeMap::new(),
            zones: BTreeMap::new(),
            labels: BTreeMap::new(),
            selector: BTreeMap::new(),
            include_external: true,
            shared,
            cluster_id: 2,
        }
    }

    fn global(affinity: Affinity) -> GlobalConfig {
        GlobalConfig {
            global: true,
            shared: true,
            affinity,
        }
    }

    fn active<'a>(s: &Selection<'a>) -> Vec<&'a str> {
        s.active().map(|c| c.ip).collect()
    }

    const UP: &dyn Fn(&str) -> bool = &|_| true;

    #[test]
    fn global_uses_shared_remote_backends_and_local_only_without_global() {
        let l = local(&["10.1.0.5"]);
        let r = [
            remote("c2", true, &["10.2.0.5"]),
            remote("c3", false, &["10.3.0.5"]),
        ];
        let s = select("c1", global(Affinity::None), &l, &r, UP);
        assert_eq!(
            active(&s),
            vec!["10.1.0.5", "10.2.0.5"],
            "c3 does not share"
        );
        let not_global = GlobalConfig::default();
        let s = select("c1", not_global, &l, &r, UP);
        assert_eq!(active(&s), vec!["10.1.0.5"]);
        // Not sharing our own backends does not change what we use.
        let mut unshared = global(Affinity::None);
        unshared.shared = false;
        let s = select("c1", unshared, &l, &r, UP);
        assert_eq!(active(&s).len(), 2);
    }

    #[test]
    fn affinity_prefers_a_side_and_falls_back() {
        let l = local(&["10.1.0.5"]);
        let none = local(&[]);
        let r = [remote("c2", true, &["10.2.0.5", "10.2.0.6"])];
        let s = select("c1", global(Affinity::Local), &l, &r, UP);
        assert_eq!(active(&s), vec!["10.1.0.5"]);
        assert_eq!(
            s.candidates
                .iter()
                .filter(|c| c.state == BackendState::Standby)
                .count(),
            2
        );
        let s = select("c1", global(Affinity::Local), &none, &r, UP);
        assert_eq!(
            active(&s),
            vec!["10.2.0.5", "10.2.0.6"],
            "no local backend: remote ones"
        );
        let s = select("c1", global(Affinity::Remote), &l, &r, UP);
        assert_eq!(active(&s), vec!["10.2.0.5", "10.2.0.6"]);
        let s = select("c1", global(Affinity::Remote), &l, &[], UP);
        assert_eq!(
            active(&s),
            vec!["10.1.0.5"],
            "no remote backend: local ones"
        );
    }

    #[test]
    fn unreachable_clusters_take_no_new_connection_while_others_can() {
        let l = local(&["10.1.0.5"]);
        let none = local(&[]);
        let r = [
            remote("c2", true, &["10.2.0.5"]),
            remote("c3", true, &["10.3.0.5"]),
        ];
        let c2_down = |c: &str| c != "c2";
        let s = select("c1", global(Affinity::None), &l, &r, &c2_down);
        assert_eq!(active(&s), vec!["10.1.0.5", "10.3.0.5"]);
        assert_eq!(
            s.candidates[1].state,
            BackendState::Unreachable,
            "state kept, not used"
        );
        // Affinity remote with the only remote down: local backends serve.
        let r2 = [remote("c2", true, &["10.2.0.5"])];
        let s = select("c1", global(Affinity::Remote), &l, &r2, &c2_down);
        assert_eq!(active(&s), vec!["10.1.0.5"]);
        // Nothing reachable at all: better try the unreachable than fail for sure.
        let s = select("c1", global(Affinity::None), &none, &r2, &c2_down);
        assert_eq!(active(&s), vec!["10.2.0.5"]);
    }
}
