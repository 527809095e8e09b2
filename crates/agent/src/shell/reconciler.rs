//! Applies the core's output to the datapath and the kernel, on change.
//!
//! One task, the only writer of the datapath's ipcache, load-balancer and policy tables and of
//! the routes to other nodes. It sleeps until the core is stepped, then takes the output and
//! applies it in the order the core gives: ipcache entries (CIDR identities included) before
//! the policies that name them, routes, services, policies (policy prefixes no longer named
//! out first, then the endpoints' policies, then new prefixes in: an address never carries a
//! CIDR identity whose rules are not written yet). Services and policies are synced
//! as a difference against what is programmed (read back from the datapath at start, so a
//! restarted agent continues from its predecessor's tables); a part that fails is retried after
//! a pause with the latest desired state, without hammering a datapath that refuses. Ipcache
//! changes the datapath refused are kept per prefix (a later change of the prefix replaces
//! them) and retried after each round's new changes, which may have made room. A full map's
//! refusals are counted and reported ([`super::maps`]). Last, the
//! policy's DNS side goes to the node's DNS proxy ([`super::dns`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use plexus_datapath::policy as dp;
use plexus_datapath::{Datapath, Frontend, LbService, Prefix};
use plexus_ipcache::Change;

use super::CoreDriver;
use super::dns::DnsShell;
use super::maps::{MapHealth, Watched};
use super::wireguard::Wireguard;
use crate::core::RouteChange;
use crate::flows::SnapshotBuilder;

/// Where routes to other nodes' pod CIDRs go (native routing). The kernel's routing table in
/// the agent; a fake in tests.
pub trait Routes: Send + Sync {
    /// Routes `dst` through `via` (add or replace).
    fn replace(&self, dst: Prefix, via: Ipv4Addr) -> Result<(), String>;
    /// Routes `dst` into the WireGuard device `plexus_wg0` (add or replace).
    fn replace_encrypted(&self, dst: Prefix) -> Result<(), String>;
    /// Removes the route to `dst`; a missing route is fine.
    fn delete(&self, dst: Prefix);
}

/// A kernel routing table of the agent's network namespace: the main table (native routing),
/// or the table of the DNS proxy's forwarded queries
/// ([`plexus_datapath::proxy::PROXY_FORWARD_TABLE`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelRoutes {
    /// The table; `None` is the main table.
    pub table: Option<u32>,
}

impl Routes for KernelRoutes {
    fn replace(&self, dst: Prefix, via: Ipv4Addr) -> Result<(), String> {
        match self.table {
            None => crate::netcmd::route_via(&dst.to_string(), &via.to_string()),
            Some(t) => crate::netcmd::route_via_in_table(&dst.to_string(), &via.to_string(), t),
        }
        .map_err(|e| format!("{e:#}"))
    }

    fn replace_encrypted(&self, dst: Prefix) -> Result<(), String> {
        crate::netcmd::route_to_device(&dst.to_string(), crate::netcmd::WIREGUARD_DEVICE)
            .map_err(|e| format!("{e:#}"))
    }

    fn delete(&self, dst: Prefix) {
        match self.table {
            None => crate::netcmd::route_delete(&dst.to_string()),
            Some(t) => crate::netcmd::route_delete_in_table(&dst.to_string(), t),
        }
    }
}

/// No routes (the fake datapath has no kernel to route in).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRoutes;

impl Routes for NoRoutes {
    fn replace(&self, _: Prefix, _: Ipv4Addr) -> Result<(), String> {
        Ok(())
    }

    fn replace_encrypted(&self, _: Prefix) -> Result<(), String> {
        Ok(())
    }

    fn delete(&self, _: Prefix) {}
}

/// The prefix a change is about.
fn change_prefix(change: &Change) -> Prefix {
    match change {
        Change::Upsert(p, _) | Change::Delete(p) => *p,
    }
}

/// How long a failed part waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// The reconciler's state: what is programmed, and what still has to be.
pub struct Reconciler {
    driver: CoreDriver,
    datapath: Arc<dyn Datapath>,
    routes: Arc<dyn Routes>,
    services: BTreeMap<Frontend, LbService>,
    policies: BTreeMap<u16, dp::EndpointPolicy>,
    /// Desired states whose programming failed, retried on the next round.
    retry_services: Option<BTreeMap<Frontend, LbService>>,
    retry_policies: Option<BTreeMap<u16, dp::EndpointPolicy>>,
    /// The policy prefixes programmed, and a desired set whose programming failed.
    policy_cidrs: BTreeMap<Prefix, u32>,
    retry_policy_cidrs: Option<BTreeMap<Prefix, u32>>,
    /// With WireGuard on: where the desired peers go.
    wireguard: Option<Arc<Wireguard>>,
    /// With flows on: the snapshot of the core the flow decoder reads, rebuilt after a round.
    flows: Option<SnapshotBuilder>,
    /// With the eBPF datapath: the node's DNS proxy, given the policy's DNS side.
    dns: Option<Arc<DnsShell>>,
    /// Ipcache changes the datapath refused, by prefix, retried on the next rounds.
    retry_ipcache: BTreeMap<Prefix, Change>,
    /// Where full maps' refusals are noted, ended with each round.
    health: Option<Arc<MapHealth>>,
    /// Where the DNS proxy's forward routes go.
    proxy_routes: Arc<dyn Routes>,
}

impl Reconciler {
    /// A reconciler that continues from what `datapath` holds now.
    pub fn new(driver: CoreDriver, datapath: Arc<dyn Datapath>, routes: Arc<dyn Routes>) -> Self {
        let services = match datapath.services() {
            Ok(list) => list.into_iter().map(|s| (s.frontend, s)).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "reading the datapath's services");
                BTreeMap::new()
            }
        };
        // The compiled entries cannot be turned back into rules: mark every endpoint with a
        // policy as holding an unknown one, so the first desired state replaces or removes it.
        let policies = datapath
            .policies()
            .map(|t| {
                t.keys()
                    .map(|id| (*id, dp::EndpointPolicy::default()))
                    .collect()
            })
            .unwrap_or_default();
        let policy_cidrs = datapath.policy_cidrs().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "reading the datapath's policy prefixes");
            BTreeMap::new()
        });
        Self {
            driver,
            datapath,
            routes,
            services,
            policies,
            retry_services: None,
            retry_policies: None,
            policy_cidrs,
            retry_policy_cidrs: None,
            wireguard: None,
            flows: None,
            dns: None,
            retry_ipcache: BTreeMap::new(),
            health: None,
            proxy_routes: Arc::new(NoRoutes),
        }
    }

    /// Puts the DNS proxy's forward routes in `routes` (by default nowhere).
    pub fn with_proxy_routes(mut self, routes: Arc<dyn Routes>) -> Self {
        self.proxy_routes = routes;
        self
    }

    /// Notes the writes that full maps refuse in `health` (one round's refusals are the
    /// maps' state until the next round).
    pub fn with_map_health(mut self, health: Arc<MapHealth>) -> Self {
        self.datapath = Arc::new(Watched::new(self.datapath, health.clone()));
        self.health = Some(health);
        self
    }

    /// Hands the policy's DNS side (rules, `toFQDNs` patterns, which endpoints to redirect)
    /// to the node's DNS proxy after each resolution.
    pub fn with_dns(mut self, dns: Arc<DnsShell>) -> Self {
        self.dns = Some(dns);
        self
    }

    /// After each round, copies what the flow decoder needs from the core into a snapshot
    /// (`builder` swaps it in), so decoding never takes the core's lock.
    pub fn with_flows(mut self, builder: SnapshotBuilder) -> Self {
        self.flows = Some(builder);
        self
    }

    /// Hands the core's WireGuard peers to `wireguard` (its thread syncs the device).
    pub fn with_wireguard(mut self, wireguard: Arc<Wireguard>) -> Self {
        self.wireguard = Some(wireguard);
        self
    }

    /// Applies changes until the task is dropped.
    pub async fn run(mut self) {
        loop {
            let retrying = self.retry_services.is_some()
                || !self.retry_ipcache.is_empty()
                || self.retry_policies.is_some()
                || self.retry_policy_cidrs.is_some();
            if retrying {
                tokio::select! {
                    _ = self.driver.notify.notified() => {}
                    _ = tokio::time::sleep(RETRY) => {}
                }
            } else {
                self.driver.notify.notified().await;
            }
            self.round();
        }
    }

    /// Takes the core's output and applies it; reports the inputs it covers as applied.
    pub fn round(&mut self) {
        let (output, seq, wireguard) = {
            let mut core = self.driver.core.lock().unwrap_or_else(|e| e.into_inner());
            let mut output = core.take_output();
            // Only a round whose peers changed reads the rest of WireGuard's desired state.
            let wireguard = output.wireguard_peers.take().map(|peers| {
                let routes = core.ipcache().encrypted_routes();
                (peers, routes, core.settled_clusters())
            });
            if let Some(flows) = &mut self.flows {
                flows.update(&core, &output);
            }
            (output, core.seq(), wireguard)
        };
        self.apply_ipcache(&output.ipcache);
        apply_routes(self.routes.as_ref(), &output.routes);
        apply_routes(self.proxy_routes.as_ref(), &output.proxy_routes);
        if let (Some(wg), Some((peers, routes, settled))) = (&self.wireguard, wireguard) {
            wg.set_desired(peers, routes, settled);
        }
        if let Some(desired) = output.services.or_else(|| self.retry_services.take())
            && !sync_services(self.datapath.as_ref(), &mut self.services, &desired)
        {
            self.retry_services = Some(desired);
        }
        let cidrs = output
            .policy_cidrs
            .or_else(|| self.retry_policy_cidrs.take());
        if let Some(desired) = &cidrs
            && !remove_policy_cidrs(self.datapath.as_ref(), &mut self.policy_cidrs, desired)
        {
            self.retry_policy_cidrs = cidrs.clone();
        }
        if let Some(desired) = output.policies.or_else(|| self.retry_policies.take())
            && !sync_policies(self.datapath.as_ref(), &mut self.policies, &desired)
        {
            self.retry_policies = Some(desired);
        }
        if let Some(desired) = &cidrs
            && !add_policy_cidrs(self.datapath.as_ref(), &mut self.policy_cidrs, desired)
        {
            self.retry_policy_cidrs = cidrs.clone();
        }
        // After the policies: an endpoint's queries reach the proxy only once its rules are
        // programmed (the proxy forwards what they allow).
        if let (Some(dns), Some(desired)) = (&self.dns, &output.dns) {
            dns.update(desired);
        }
        if let Some(health) = &self.health {
            health.round_done();
        }
        self.driver.applied.send_replace(seq);
    }

    /// How many ipcache changes the datapath refused wait for a retry.
    pub fn ipcache_pending(&self) -> usize {
        self.retry_ipcache.len()
    }

    fn apply_ipcache(&mut self, changes: &[Change]) {
        // Earlier refusals go after this round's changes: a change of the same prefix
        // replaces its refused one, and deletions may make room.
        let mut older = std::mem::take(&mut self.retry_ipcache);
        let mut failed = 0usize;
        let mut first_error = None;
        for change in changes {
            let prefix = change_prefix(change);
            older.remove(&prefix);
            if let Err(err) = self.apply_ipcache_change(change) {
                failed += 1;
                first_error.get_or_insert(err);
                self.retry_ipcache.insert(prefix, change.clone());
            }
        }
        for (prefix, change) in older {
            if let Err(err) = self.apply_ipcache_change(&change) {
                failed += 1;
                first_error.get_or_insert(err);
                self.retry_ipcache.insert(prefix, change);
            }
        }
        // One line a round, not one per entry: a full map refuses thousands at once.
        if let Some(err) = first_error {
            tracing::warn!(
                failed,
                pending = self.retry_ipcache.len(),
                error = %err,
                "ipcache updates not applied to the datapath; retrying"
            );
        }
    }

    fn apply_ipcache_change(&self, change: &Change) -> Result<(), plexus_datapath::DatapathError> {
        match change {
            Change::Upsert(p, v) => self.datapath.upsert_ipcache(*p, *v),
            Change::Delete(p) => self.datapath.remove_ipcache(*p),
        }
    }
}

fn apply_routes(routes: &dyn Routes, changes: &[RouteChange]) {
    for change in changes {
        match change {
            RouteChange::Upsert { dst, via } => {
                if let Err(err) = routes.replace(*dst, *via) {
                    tracing::warn!(%dst, %via, error = %err, "cannot route to a node's pods");
                }
            }
            RouteChange::Encrypted { dst } => {
                if let Err(err) = routes.replace_encrypted(*dst) {
                    tracing::warn!(%dst, error = %err, "cannot route a node's pods into WireGuard");
                }
            }
            RouteChange::Delete(dst) => routes.delete(*dst),
        }
    }
}

/// Applies the difference between what is programmed and what is desired; false when some
/// change failed (it is left for the next attempt).
pub fn sync_services(
    datapath: &dyn Datapath,
    programmed: &mut BTreeMap<Frontend, LbService>,
    desired: &BTreeMap<Frontend, LbService>,
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
        if programmed.get(frontend) == Some(svc) {
            continue;
        }
        match datapath.upsert_service(svc) {
            Ok(()) => {
                tracing::debug!(%frontend, active = svc.active.len(), inactive = svc.inactive.len(), "service frontend programmed");
                programmed.insert(*frontend, svc.clone());
            }
            Err(err) => {
                ok = false;
                tracing::warn!(%frontend, error = %err, "programming a service frontend");
            }
        }
    }
    ok
}

/// Removes the programmed policy prefixes that `desired` lacks (or gives another identity);
/// false when a removal failed.
pub fn remove_policy_cidrs(
    datapath: &dyn Datapath,
    programmed: &mut BTreeMap<Prefix, u32>,
    desired: &BTreeMap<Prefix, u32>,
) -> bool {
    let mut ok = true;
    let stale: Vec<Prefix> = programmed
        .iter()
        .filter(|(p, id)| desired.get(p) != Some(id))
        .map(|(p, _)| *p)
        .collect();
    for prefix in stale {
        match datapath.remove_policy_cidr(prefix) {
            Ok(()) => {
                programmed.remove(&prefix);
            }
            Err(err) => {
                ok = false;
                tracing::warn!(%prefix, error = %err, "removing a policy prefix");
            }
        }
    }
    ok
}

/// Programs the policy prefixes of `desired` not programmed yet; false when one failed.
pub fn add_policy_cidrs(
    datapath: &dyn Datapath,
    programmed: &mut BTreeMap<Prefix, u32>,
    desired: &BTreeMap<Prefix, u32>,
) -> bool {
    let mut ok = true;
    for (prefix, id) in desired {
        if programmed.get(prefix) == Some(id) {
            continue;
        }
        match datapath.upsert_policy_cidr(*prefix, *id) {
            Ok(()) => {
                programmed.insert(*prefix, *id);
            }
            Err(err) => {
                ok = false;
                tracing::warn!(%prefix, identity = id, error = %err, "programming a policy prefix");
            }
        }
    }
    ok
}

fn is_empty(p: &dp::EndpointPolicy) -> bool {
    !p.ingress_enforced && !p.egress_enforced && p.rules.is_empty()
}

/// Programs the policies that changed and removes those no longer needed; false when something
/// failed (left for the next attempt).
pub fn sync_policies(
    datapath: &dyn Datapath,
    programmed: &mut BTreeMap<u16, dp::EndpointPolicy>,
    desired: &BTreeMap<u16, dp::EndpointPolicy>,
) -> bool {
    let mut ok = true;
    for (id, policy) in desired {
        if is_empty(policy) || programmed.get(id) == Some(policy) {
            continue;
        }
        match datapath.set_policy(*id, policy) {
            Ok(()) => {
                tracing::info!(
                    endpoint = id,
                    rules = policy.rules.len(),
                    ingress = policy.ingress_enforced,
                    egress = policy.egress_enforced,
                    "policy programmed"
                );
                programmed.insert(*id, policy.clone());
            }
            Err(e) => {
                ok = false;
                tracing::warn!(endpoint = id, error = %e, "programming a policy");
            }
        }
    }
    let stale: Vec<u16> = programmed
        .keys()
        .filter(|id| desired.get(id).is_none_or(is_empty))
        .copied()
        .collect();
    for id in stale {
        match datapath.remove_policy(id) {
            Ok(()) => {
                programmed.remove(&id);
            }
            Err(e) => {
                ok = false;
                tracing::warn!(endpoint = id, error = %e, "removing a policy");
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use plexus_datapath::{FakeDatapath, L4Proto};

    fn lb(active: &[&str], inactive: &[&str]) -> LbService {
        LbService {
            frontend: Frontend {
                addr: "10.11.0.5".parse().unwrap(),
                port: 80,
                proto: L4Proto::Tcp,
            },
            active: active.iter().map(|a| a.parse().unwrap()).collect(),
            inactive: inactive.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_datapath_follows_service_changes_and_removals() {
        let dp = FakeDatapath::new();
        let mut programmed = BTreeMap::new();
        let one = lb(&["10.10.0.5:80"], &[]);
        let desired = BTreeMap::from([(one.frontend, one.clone())]);
        assert!(sync_services(&dp, &mut programmed, &desired));
        assert_eq!(dp.services().unwrap(), vec![one.clone()]);
        let standby = lb(&[], &["10.10.0.5:80"]);
        assert!(sync_services(
            &dp,
            &mut programmed,
            &BTreeMap::from([(standby.frontend, standby.clone())])
        ));
        assert_eq!(dp.services().unwrap(), vec![standby]);
        assert!(sync_services(&dp, &mut programmed, &BTreeMap::new()));
        assert!(dp.services().unwrap().is_empty());
        assert!(programmed.is_empty());
    }

    #[test]
    fn endpoints_without_policy_are_cleared() {
        let dp_ = FakeDatapath::new();
        let mut programmed = BTreeMap::new();
        let enforced = dp::EndpointPolicy {
            ingress_enforced: true,
            egress_enforced: false,
            rules: vec![],
        };
        assert!(sync_policies(
            &dp_,
            &mut programmed,
            &BTreeMap::from([(7, enforced.clone())])
        ));
        assert_eq!(dp_.policies().unwrap()[&7].0, (true, false));
        assert!(sync_policies(
            &dp_,
            &mut programmed,
            &BTreeMap::from([(7, dp::EndpointPolicy::default())])
        ));
        assert!(dp_.policies().unwrap().is_empty());
        assert!(programmed.is_empty());
    }
}
