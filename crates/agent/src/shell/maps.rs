//! Full datapath maps: counted, reported, retried, never a silent loss.
//!
//! The reconciler writes the datapath through [`Watched`], which notes every write a full map
//! refused ([`plexus_datapath::DatapathError::MapFull`]) in the node's [`MapHealth`]. What a
//! full map refused stays in the reconciler's desired state and is tried again on its next
//! rounds (every [`super::reconciler`] retry pause), while the map keeps serving what it holds;
//! once room is made (entries removed, or the map created larger), the entries go in.
//!
//! [`MapHealth`] answers two questions: how many writes each map refused since the agent
//! started (`plexus_bpf_map_full_total{map}`), and which maps refused a write in the last
//! round, i.e. are full now with entries waiting (the warning lines of `plexus status`). A
//! round in which a map refused nothing clears its warning.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use plexus_datapath::policy::EndpointPolicy;
use plexus_datapath::{
    Datapath, DatapathError, Endpoint, Frontend, IpcacheValue, LbService, MapUsage, Metric,
    MonitorEvent, PolicyTables, Prefix,
};

/// What full maps refused, per map name.
#[derive(Debug, Default)]
pub struct MapHealth {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Writes refused since the agent started.
    refused_total: BTreeMap<&'static str, u64>,
    /// Writes refused in the round under way.
    this_round: BTreeMap<&'static str, u64>,
    /// Writes refused in the last finished round: the maps full now.
    full: BTreeMap<&'static str, u64>,
}

impl MapHealth {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes `err` when it is a full map's refusal.
    pub fn record(&self, err: &DatapathError) {
        if let Some(map) = err.full_map() {
            let mut inner = self.lock();
            *inner.refused_total.entry(map).or_default() += 1;
            *inner.this_round.entry(map).or_default() += 1;
        }
    }

    /// Ends a reconciler round: the maps that refused a write in it are the full ones.
    pub fn round_done(&self) {
        let mut inner = self.lock();
        inner.full = std::mem::take(&mut inner.this_round);
    }

    /// Writes refused since the agent started, per map.
    pub fn refused_total(&self) -> BTreeMap<&'static str, u64> {
        self.lock().refused_total.clone()
    }

    /// The maps that refused writes in the last round, with how many.
    pub fn full(&self) -> BTreeMap<&'static str, u64> {
        self.lock().full.clone()
    }

    /// One line per full map, for `plexus status`, with its fill when `usage` has it.
    pub fn warnings(&self, usage: &[MapUsage]) -> Vec<String> {
        self.full()
            .into_iter()
            .map(|(map, refused)| {
                let fill = usage
                    .iter()
                    .find(|u| u.map == map)
                    .map(|u| format!(" ({}/{} entries)", u.entries, u.capacity))
                    .unwrap_or_default();
                format!(
                    "map {map} is full{fill}: {refused} update{} not applied, retrying; \
                     raise its size in the agent's options",
                    if refused == 1 { "" } else { "s" }
                )
            })
            .collect()
    }
}

/// A datapath whose refused writes are noted in a [`MapHealth`]; everything else passes.
pub struct Watched {
    inner: Arc<dyn Datapath>,
    health: Arc<MapHealth>,
}

impl Watched {
    /// `inner`, noting its full maps in `health`.
    pub fn new(inner: Arc<dyn Datapath>, health: Arc<MapHealth>) -> Self {
        Self { inner, health }
    }

    fn note<T>(&self, r: Result<T, DatapathError>) -> Result<T, DatapathError> {
        if let Err(e) = &r {
            self.health.record(e);
        }
        r
    }
}

impl Datapath for Watched {
    fn upsert_endpoint(&self, endpoint: &Endpoint) -> Result<(), DatapathError> {
        self.note(self.inner.upsert_endpoint(endpoint))
    }
    fn remove_endpoint(&self, ipv4: Ipv4Addr) -> Result<(), DatapathError> {
        self.inner.remove_endpoint(ipv4)
    }
    fn endpoints(&self) -> Result<Vec<Endpoint>, DatapathError> {
        self.inner.endpoints()
    }
    fn upsert_ipcache(&self, prefix: Prefix, value: IpcacheValue) -> Result<(), DatapathError> {
        self.note(self.inner.upsert_ipcache(prefix, value))
    }
    fn remove_ipcache(&self, prefix: Prefix) -> Result<(), DatapathError> {
        self.inner.remove_ipcache(prefix)
    }
    fn ipcache(&self) -> Result<Vec<(Prefix, IpcacheValue)>, DatapathError> {
        self.inner.ipcache()
    }
    fn metrics(&self) -> Result<Vec<Metric>, DatapathError> {
        self.inner.metrics()
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MonitorEvent> {
        self.inner.subscribe()
    }
    fn events_lost(&self) -> Result<u64, DatapathError> {
        self.inner.events_lost()
    }
    fn upsert_service(&self, service: &LbService) -> Result<(), DatapathError> {
        self.note(self.inner.upsert_service(service))
    }
    fn remove_service(&self, frontend: Frontend) -> Result<(), DatapathError> {
        // Removing rewrites nothing new, but an interrupted update's repair may.
        self.note(self.inner.remove_service(frontend))
    }
    fn services(&self) -> Result<Vec<LbService>, DatapathError> {
        self.inner.services()
    }
    fn set_policy(&self, endpoint_id: u16, policy: &EndpointPolicy) -> Result<(), DatapathError> {
        self.note(self.inner.set_policy(endpoint_id, policy))
    }
    fn remove_policy(&self, endpoint_id: u16) -> Result<(), DatapathError> {
        self.inner.remove_policy(endpoint_id)
    }
    fn policies(&self) -> Result<PolicyTables, DatapathError> {
        self.inner.policies()
    }
    fn upsert_policy_cidr(&self, prefix: Prefix, identity: u32) -> Result<(), DatapathError> {
        self.note(self.inner.upsert_policy_cidr(prefix, identity))
    }
    fn remove_policy_cidr(&self, prefix: Prefix) -> Result<(), DatapathError> {
        self.inner.remove_policy_cidr(prefix)
    }
    fn policy_cidrs(&self) -> Result<BTreeMap<Prefix, u32>, DatapathError> {
        self.inner.policy_cidrs()
    }
    fn upsert_encrypted_node(&self, node: Ipv4Addr) -> Result<(), DatapathError> {
        self.note(self.inner.upsert_encrypted_node(node))
    }
    fn remove_encrypted_node(&self, node: Ipv4Addr) -> Result<(), DatapathError> {
        self.inner.remove_encrypted_node(node)
    }
    fn encrypted_nodes(&self) -> Result<BTreeSet<Ipv4Addr>, DatapathError> {
        self.inner.encrypted_nodes()
    }
    fn set_dns_redirect(
        &self,
        endpoint_id: u16,
        proxy_port: Option<u16>,
    ) -> Result<(), DatapathError> {
        self.note(self.inner.set_dns_redirect(endpoint_id, proxy_port))
    }
    fn dns_redirects(&self) -> Result<BTreeMap<u16, u16>, DatapathError> {
        self.inner.dns_redirects()
    }
    fn connected_peers(&self) -> Result<BTreeSet<Ipv4Addr>, DatapathError> {
        self.inner.connected_peers()
    }
    fn map_usage(&self) -> Result<Vec<MapUsage>, DatapathError> {
        self.inner.map_usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_without_refusals_clears_the_warning_but_not_the_count() {
        let health = MapHealth::default();
        let full = DatapathError::MapFull {
            map: "PLEXUS_IPCACHE",
        };
        health.record(&full);
        health.record(&full);
        health.record(&DatapathError::Invalid {
            what: "x".into(),
            reason: "y".into(),
        });
        assert!(health.full().is_empty(), "not before the round ends");
        health.round_done();
        assert_eq!(health.full(), BTreeMap::from([("PLEXUS_IPCACHE", 2)]));
        let usage = [MapUsage {
            map: "PLEXUS_IPCACHE",
            entries: 8,
            capacity: 8,
        }];
        assert_eq!(
            health.warnings(&usage),
            [
                "map PLEXUS_IPCACHE is full (8/8 entries): 2 updates not applied, retrying; \
              raise its size in the agent's options"
            ]
        );
        health.round_done();
        assert!(health.full().is_empty());
        assert!(health.warnings(&usage).is_empty());
        assert_eq!(
            health.refused_total(),
            BTreeMap::from([("PLEXUS_IPCACHE", 2)])
        );
    }
}
