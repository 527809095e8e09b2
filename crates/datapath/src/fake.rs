//! An in-memory [`Datapath`] for control-plane tests: the same maps, no kernel.
//!
//! It validates like the real datapath, answers longest-prefix lookups like the LPM trie, and
//! lets a test inject monitor events with [`FakeDatapath::emit`] and losses of events (a full
//! ring buffer) with [`FakeDatapath::lose_events`]. Its ipcache can be given a capacity
//! ([`FakeDatapath::with_ipcache_capacity`]): a new prefix beyond it is refused with
//! [`DatapathError::MapFull`], as the kernel refuses it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::broadcast;

use crate::{
    Datapath, DatapathError, EVENT_CHANNEL_CAPACITY, Encryption, Endpoint, Frontend, IpcacheValue,
    LbService, Metric, MonitorEvent, Prefix, validate_endpoint, validate_ipcache,
};

/// In-memory maps behind the [`Datapath`] trait.
#[derive(Debug)]
pub struct FakeDatapath {
    endpoints: Mutex<BTreeMap<Ipv4Addr, Endpoint>>,
    ipcache: Mutex<BTreeMap<Prefix, IpcacheValue>>,
    services: Mutex<BTreeMap<Frontend, LbService>>,
    policies: Mutex<crate::PolicyTables>,
    policy_cidrs: Mutex<BTreeMap<Prefix, u32>>,
    encrypted_nodes: Mutex<BTreeSet<Ipv4Addr>>,
    dns_redirects: Mutex<BTreeMap<u16, u16>>,
    connected: Mutex<std::collections::BTreeSet<Ipv4Addr>>,
    /// This node's address and its encryption, for [`FakeDatapath::strict_drop`].
    encryption: Mutex<(Ipv4Addr, Encryption)>,
    events: broadcast::Sender<MonitorEvent>,
    /// What [`Datapath::events_lost`] answers.
    events_lost: AtomicU64,
    /// The most prefixes the ipcache holds (`None`: unbounded).
    ipcache_capacity: Option<usize>,
}

impl Default for FakeDatapath {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeDatapath {
    /// Empty maps.
    pub fn new() -> Self {
        Self {
            endpoints: Mutex::new(BTreeMap::new()),
            ipcache: Mutex::new(BTreeMap::new()),
            services: Mutex::new(BTreeMap::new()),
            policies: Mutex::new(BTreeMap::new()),
            policy_cidrs: Mutex::new(BTreeMap::new()),
            encrypted_nodes: Mutex::new(BTreeSet::new()),
            dns_redirects: Mutex::new(BTreeMap::new()),
            connected: Mutex::new(std::collections::BTreeSet::new()),
            encryption: Mutex::new((Ipv4Addr::UNSPECIFIED, Encryption::DISABLED)),
            events: broadcast::channel(EVENT_CHANNEL_CAPACITY).0,
            events_lost: AtomicU64::new(0),
            ipcache_capacity: None,
        }
    }

    /// Empty maps, the ipcache holding at most `capacity` prefixes (like `PLEXUS_IPCACHE`
    /// sized with `bpf-ipcache-map-max`).
    pub fn with_ipcache_capacity(mut self, capacity: usize) -> Self {
        self.ipcache_capacity = Some(capacity);
        self
    }

    /// Empty maps of node `node_ip` with `encryption`, as [`crate::NodeConfig`] configures the
    /// real datapath.
    pub fn with_encryption(node_ip: Ipv4Addr, encryption: Encryption) -> Self {
        let dp = Self::new();
        *lock(&dp.encryption) = (node_ip, encryption);
        dp
    }

    /// Whether `from_container` would drop a pod's packet to `dst` as unencrypted (strict
    /// mode, the destination's node without a WireGuard peer): the programs' rule on these
    /// maps.
    pub fn strict_drop(&self, dst: Ipv4Addr) -> bool {
        let (node_ip, encryption) = *lock(&self.encryption);
        let node = self.lookup(dst).and_then(|(_, v)| v.tunnel_endpoint);
        let encrypted = lock(&self.encrypted_nodes);
        encryption.strict_drop(node_ip, node, |n| encrypted.contains(&n))
    }

    /// Sends an event to the subscribers, as the ring-buffer reader would.
    pub fn emit(&self, event: MonitorEvent) {
        // No subscriber is not an error: events are best effort.
        let _ = self.events.send(event);
    }

    /// Counts `n` events as lost by the programs (a full ring buffer): the running total of
    /// [`Datapath::events_lost`] grows by `n`.
    pub fn lose_events(&self, n: u64) {
        self.events_lost.fetch_add(n, Ordering::Relaxed);
    }

    /// Longest-prefix match, as the BPF programs look up the ipcache.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<(Prefix, IpcacheValue)> {
        lock(&self.ipcache)
            .iter()
            .filter(|(p, _)| p.contains(ip))
            .max_by_key(|(p, _)| p.len)
            .map(|(p, v)| (*p, *v))
    }

    /// Whether endpoint `endpoint_id`'s policy passes a new connection in `direction` with a
    /// peer of identity `peer` at address `peer_ip`: the programs' decision on these maps (the
    /// peer's identity, and the CIDR identity of the most specific policy prefix holding its
    /// address; deny wins, then any allow, then the direction's default).
    pub fn policy_allows(
        &self,
        endpoint_id: u16,
        direction: crate::Direction,
        peer: u32,
        peer_ip: Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> bool {
        let cidr_identity = lock(&self.policy_cidrs)
            .iter()
            .filter(|(p, _)| p.contains(peer_ip))
            .max_by_key(|(p, _)| p.len)
            .map(|(_, id)| *id);
        let policies = lock(&self.policies);
        let Some(((ingress, egress), entries)) = policies.get(&endpoint_id) else {
            return true;
        };
        let enforced = match direction {
            crate::Direction::Ingress => *ingress,
            crate::Direction::Egress => *egress,
        };
        crate::policy::allows(
            entries,
            enforced,
            direction,
            peer,
            cidr_identity,
            proto,
            port,
        )
    }

    /// The endpoint with this address.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<Endpoint> {
        lock(&self.endpoints).get(&ip).cloned()
    }
}

impl Datapath for FakeDatapath {
    fn upsert_endpoint(&self, endpoint: &Endpoint) -> Result<(), DatapathError> {
        validate_endpoint(endpoint)?;
        lock(&self.endpoints).insert(endpoint.ipv4, endpoint.clone());
        Ok(())
    }

    fn remove_endpoint(&self, ipv4: Ipv4Addr) -> Result<(), DatapathError> {
        lock(&self.endpoints).remove(&ipv4);
        Ok(())
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>, DatapathError> {
        Ok(lock(&self.endpoints).values().cloned().collect())
    }

    fn upsert_ipcache(&self, prefix: Prefix, value: IpcacheValue) -> Result<(), DatapathError> {
        validate_ipcache(prefix, &value)?;
        // Normalise like the LPM trie, which ignores host bits.
        let prefix = Prefix::new(prefix.addr, prefix.len).map_err(|e| DatapathError::Invalid {
            what: "ipcache prefix".into(),
            reason: e.to_string(),
        })?;
        let mut ipcache = lock(&self.ipcache);
        if let Some(cap) = self.ipcache_capacity
            && ipcache.len() >= cap
            && !ipcache.contains_key(&prefix)
        {
            return Err(DatapathError::MapFull {
                map: crate::object::MAP_IPCACHE,
            });
        }
        ipcache.insert(prefix, value);
        Ok(())
    }

    fn remove_ipcache(&self, prefix: Prefix) -> Result<(), DatapathError> {
        if let Ok(prefix) = Prefix::new(prefix.addr, prefix.len) {
            lock(&self.ipcache).remove(&prefix);
        }
        Ok(())
    }

    fn ipcache(&self) -> Result<Vec<(Prefix, IpcacheValue)>, DatapathError> {
        Ok(lock(&self.ipcache).iter().map(|(p, v)| (*p, *v)).collect())
    }

    fn metrics(&self) -> Result<Vec<Metric>, DatapathError> {
        Ok(Vec::new())
    }

    fn subscribe(&self) -> broadcast::Receiver<MonitorEvent> {
        self.events.subscribe()
    }

    fn events_lost(&self) -> Result<u64, DatapathError> {
        Ok(self.events_lost.load(Ordering::Relaxed))
    }

    fn upsert_encrypted_node(&self, node: Ipv4Addr) -> Result<(), DatapathError> {
        lock(&self.encrypted_nodes).insert(node);
        Ok(())
    }

    fn remove_encrypted_node(&self, node: Ipv4Addr) -> Result<(), DatapathError> {
        lock(&self.encrypted_nodes).remove(&node);
        Ok(())
    }

    fn encrypted_nodes(&self) -> Result<BTreeSet<Ipv4Addr>, DatapathError> {
        Ok(lock(&self.encrypted_nodes).clone())
    }

    fn upsert_service(&self, service: &LbService) -> Result<(), DatapathError> {
        service.validate()?;
        lock(&self.services).insert(service.frontend, service.clone());
        Ok(())
    }

    fn remove_service(&self, frontend: Frontend) -> Result<(), DatapathError> {
        lock(&self.services).remove(&frontend);
        Ok(())
    }

    fn services(&self) -> Result<Vec<LbService>, DatapathError> {
        Ok(lock(&self.services).values().cloned().collect())
    }

    fn set_policy(
        &self,
        endpoint_id: u16,
        policy: &crate::policy::EndpointPolicy,
    ) -> Result<(), DatapathError> {
        lock(&self.policies).insert(
            endpoint_id,
            (
                (policy.ingress_enforced, policy.egress_enforced),
                crate::policy::compile(&policy.rules),
            ),
        );
        Ok(())
    }

    fn remove_policy(&self, endpoint_id: u16) -> Result<(), DatapathError> {
        lock(&self.policies).remove(&endpoint_id);
        Ok(())
    }

    fn policies(&self) -> Result<crate::PolicyTables, DatapathError> {
        Ok(lock(&self.policies).clone())
    }

    fn upsert_policy_cidr(&self, prefix: Prefix, identity: u32) -> Result<(), DatapathError> {
        crate::validate_policy_cidr(prefix, identity)?;
        let prefix = Prefix::new(prefix.addr, prefix.len).map_err(|e| DatapathError::Invalid {
            what: "policy prefix".into(),
            reason: e.to_string(),
        })?;
        lock(&self.policy_cidrs).insert(prefix, identity);
        Ok(())
    }

    fn remove_policy_cidr(&self, prefix: Prefix) -> Result<(), DatapathError> {
        if let Ok(prefix) = Prefix::new(prefix.addr, prefix.len) {
            lock(&self.policy_cidrs).remove(&prefix);
        }
        Ok(())
    }

    fn policy_cidrs(&self) -> Result<BTreeMap<Prefix, u32>, DatapathError> {
        Ok(lock(&self.policy_cidrs).clone())
    }

    fn set_dns_redirect(
        &self,
        endpoint_id: u16,
        proxy_port: Option<u16>,
    ) -> Result<(), DatapathError> {
        let mut redirects = lock(&self.dns_redirects);
        match proxy_port {
            Some(port) => redirects.insert(endpoint_id, port),
            None => redirects.remove(&endpoint_id),
        };
        Ok(())
    }

    fn dns_redirects(&self) -> Result<BTreeMap<u16, u16>, DatapathError> {
        Ok(lock(&self.dns_redirects).clone())
    }

    fn connected_peers(&self) -> Result<std::collections::BTreeSet<Ipv4Addr>, DatapathError> {
        Ok(lock(&self.connected).clone())
    }

    fn map_usage(&self) -> Result<Vec<crate::MapUsage>, DatapathError> {
        Ok(match self.ipcache_capacity {
            None => Vec::new(),
            Some(cap) => vec![crate::MapUsage {
                map: crate::object::MAP_IPCACHE,
                entries: lock(&self.ipcache).len() as u64,
                capacity: cap as u64,
            }],
        })
    }
}

impl FakeDatapath {
    /// Sets what [`Datapath::connected_peers`] reports (the connections tests pretend exist).
    pub fn set_connected_peers(&self, peers: impl IntoIterator<Item = Ipv4Addr>) {
        *lock(&self.connected) = peers.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{EventKind, ObservationPoint};

    fn ep(last: u8) -> Endpoint {
        Endpoint {
            id: u16::from(last),
            ipv4: Ipv4Addr::new(10, 0, 0, last),
            host_ifname: format!("lxc{last}"),
            host_ifindex: 0,
            pod_mac: [2, 0, 0, 0, 0, last],
            host_mac: [2, 0, 0, 0, 1, last],
            identity: 1000 + u32::from(last),
        }
    }

    #[test]
    fn endpoints_upsert_replace_remove() {
        let dp = FakeDatapath::new();
        dp.upsert_endpoint(&ep(2)).unwrap();
        dp.upsert_endpoint(&ep(1)).unwrap();
        let mut changed = ep(2);
        changed.identity = 7;
        dp.upsert_endpoint(&changed).unwrap();
        let all = dp.endpoints().unwrap();
        assert_eq!(all, vec![ep(1), changed]);
        dp.remove_endpoint(ep(1).ipv4).unwrap();
        dp.remove_endpoint(ep(9).ipv4).unwrap();
        assert_eq!(dp.endpoints().unwrap().len(), 1);
    }

    #[test]
    fn invalid_values_are_refused() {
        let dp = FakeDatapath::new();
        let mut bad = ep(1);
        bad.identity = 1 << 24;
        assert!(matches!(
            dp.upsert_endpoint(&bad),
            Err(DatapathError::Invalid { .. })
        ));
        let mut nameless = ep(1);
        nameless.host_ifname.clear();
        assert!(dp.upsert_endpoint(&nameless).is_err());
        let v = IpcacheValue {
            identity: u32::MAX,
            tunnel_endpoint: None,
            cluster_id: 1,
        };
        assert!(dp.upsert_ipcache("10.0.0.0/8".parse().unwrap(), v).is_err());
        assert!(dp.ipcache().unwrap().is_empty());
    }

    #[test]
    fn policy_decisions_look_at_the_peer_address_too() {
        use crate::Direction::Ingress;
        use crate::policy::{EndpointPolicy, PolicyRule};
        let dp = FakeDatapath::new();
        let cidr = crate::IDENTITY_LOCAL_BASE;
        dp.upsert_policy_cidr("10.1.0.0/16".parse().unwrap(), cidr)
            .unwrap();
        assert!(
            dp.upsert_policy_cidr("10.2.0.0/16".parse().unwrap(), 7)
                .is_err()
        );
        let rule = |identity, deny| PolicyRule {
            direction: Ingress,
            identity,
            proto: 6,
            port_lo: 80,
            port_hi: 80,
            deny,
        };
        let pod = Ipv4Addr::new(10, 1, 0, 5);
        let other = Ipv4Addr::new(10, 3, 0, 5);
        assert!(dp.policy_allows(9, Ingress, 500, other, 6, 80), "no policy");
        let set = |rules| {
            dp.set_policy(
                9,
                &EndpointPolicy {
                    ingress_enforced: true,
                    egress_enforced: false,
                    rules,
                },
            )
            .unwrap()
        };
        set(vec![rule(cidr, false)]);
        assert!(dp.policy_allows(9, Ingress, 500, pod, 6, 80), "pod in CIDR");
        assert!(!dp.policy_allows(9, Ingress, 500, other, 6, 80));
        assert!(!dp.policy_allows(9, Ingress, 500, pod, 6, 81));
        set(vec![rule(cidr, false), rule(500, true)]);
        assert!(
            !dp.policy_allows(9, Ingress, 500, pod, 6, 80),
            "identity deny"
        );
        set(vec![rule(cidr, true), rule(500, false)]);
        assert!(!dp.policy_allows(9, Ingress, 500, pod, 6, 80), "CIDR deny");
        assert!(dp.policy_allows(9, Ingress, 500, other, 6, 80));
        dp.remove_policy_cidr("10.1.0.0/16".parse().unwrap())
            .unwrap();
        assert!(dp.policy_allows(9, Ingress, 500, pod, 6, 80));
        assert!(dp.policy_cidrs().unwrap().is_empty());
    }

    #[test]
    fn ipcache_longest_prefix_wins() {
        let dp = FakeDatapath::new();
        let v = |identity| IpcacheValue {
            identity,
            tunnel_endpoint: Some(Ipv4Addr::new(192, 168, 0, 1)),
            cluster_id: 1,
        };
        dp.upsert_ipcache("10.0.0.0/8".parse().unwrap(), v(10))
            .unwrap();
        dp.upsert_ipcache("10.1.0.0/16".parse().unwrap(), v(11))
            .unwrap();
        dp.upsert_ipcache("10.1.2.3/32".parse().unwrap(), v(12))
            .unwrap();
        let id = |ip: &str| dp.lookup(ip.parse().unwrap()).map(|(_, v)| v.identity);
        assert_eq!(id("10.1.2.3"), Some(12));
        assert_eq!(id("10.1.2.4"), Some(11));
        assert_eq!(id("10.2.0.1"), Some(10));
        assert_eq!(id("11.0.0.1"), None);
        // Host bits are ignored, as in the trie.
        dp.remove_ipcache("10.1.9.9/16".parse().unwrap()).unwrap();
        assert_eq!(id("10.1.2.4"), Some(10));
        assert_eq!(dp.ipcache().unwrap().len(), 2);
    }

    /// The fake applies the programs' strict-mode rule to its maps (the kernel side is
    /// `tests/prog_test_run.rs`).
    #[test]
    fn strict_mode_drops_until_the_node_has_a_peer() {
        let this = Ipv4Addr::new(192, 168, 0, 1);
        let other = Ipv4Addr::new(192, 168, 0, 2);
        let behind = |node| IpcacheValue {
            identity: 5000,
            tunnel_endpoint: Some(node),
            cluster_id: 1,
        };
        for (encryption, drops) in [
            (
                Encryption {
                    enabled: true,
                    strict: true,
                },
                true,
            ),
            (
                Encryption {
                    enabled: true,
                    strict: false,
                },
                false,
            ),
            (Encryption::DISABLED, false),
        ] {
            let dp = FakeDatapath::with_encryption(this, encryption);
            dp.upsert_ipcache("10.2.0.0/24".parse().unwrap(), behind(other))
                .unwrap();
            dp.upsert_ipcache("10.1.0.0/24".parse().unwrap(), behind(this))
                .unwrap();
            let remote_pod = Ipv4Addr::new(10, 2, 0, 7);
            assert_eq!(dp.strict_drop(remote_pod), drops, "{encryption:?}");
            assert!(!dp.strict_drop(Ipv4Addr::new(10, 1, 0, 7)), "this node");
            assert!(!dp.strict_drop(Ipv4Addr::new(8, 8, 8, 8)), "no node");
            dp.upsert_encrypted_node(other).unwrap();
            assert!(!dp.strict_drop(remote_pod));
            assert_eq!(dp.encrypted_nodes().unwrap(), BTreeSet::from([other]));
            dp.remove_encrypted_node(other).unwrap();
            assert_eq!(dp.strict_drop(remote_pod), drops);
        }
    }

    #[tokio::test]
    async fn subscribers_receive_emitted_events() {
        let dp = FakeDatapath::new();
        let mut rx = dp.subscribe();
        let ev = MonitorEvent {
            kind: EventKind::Trace(ObservationPoint::FromEndpoint),
            endpoint_id: 1,
            src_identity: 1001,
            dst_identity: 1002,
            saddr: Ipv4Addr::new(10, 0, 0, 1),
            daddr: Ipv4Addr::new(10, 0, 0, 2),
            sport: 0,
            dport: 0,
            protocol: 1,
            tcp_flags: 0,
            state: crate::TraceState::New,
            direction: Some(crate::Direction::Egress),
            ifindex: 0,
            len: 84,
            flow: 0,
            ktime_ns: 0,
        };
        dp.emit(ev);
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, ev);
    }

    #[test]
    fn lost_events_add_up() {
        let dp = FakeDatapath::new();
        assert_eq!(dp.events_lost().unwrap(), 0);
        dp.lose_events(3);
        dp.lose_events(4);
        assert_eq!(dp.events_lost().unwrap(), 7);
    }
}
