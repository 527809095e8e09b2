//! Network policy on this node: policy objects, the identities of every cluster in a selector
//! cache, and per local endpoint the resolved policy in the datapath's form.
//!
//! Identities may arrive before or after the policies that select them, from this cluster or a
//! remote one: each change marks the policy dirty, and the next [`PolicyState::take_desired`]
//! applies the identity changes to the selector cache in one batch and resolves every local
//! endpoint again, so a policy whose peer identities arrive later gains their entries then.
//!
//! Named ports of ingress rules resolve against the endpoint's own container ports; those of
//! egress rules against the peer identity's ports, known from the `NamedPorts` of the ipcache
//! entries of every cluster and of this node's endpoints (the union over an identity's
//! endpoints), or the node-wide union for peers without known ports; a change of those re-resolves.
//!
//! The endpoints whose egress policy has DNS rules (`toPorts[].rules.dns`) get their L4 and DNS
//! rules handed to the node's DNS proxy ([`DnsDesired`]), with every `toFQDNs` pattern; the
//! identities the proxy gives learned addresses (labels `fqdn:<pattern>`) enter the selector
//! cache like any other, so `toFQDNs` peers select them.
//!
//! Each IPv4 prefix a policy names gets a node-local CIDR identity (from
//! [`plexus_datapath::IDENTITY_LOCAL_BASE`]); the core installs those prefixes in the ipcache
//! under every other source (addresses outside the mesh carry them) and in the datapath's policy
//! prefix map (so a CIDR rule matches a pod's address too, whatever its cluster), and a CIDR rule
//! applies to the identities of the named prefixes within it. Nothing is programmed before the
//! policy objects are listed, so a restarted agent never opens what its predecessor enforced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use plexus_datapath::Prefix;
use plexus_datapath::policy as dp;
use plexus_model::cidr::Cidr;
use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_policy::{
    Direction, DnsPolicy, EndpointInfo, EndpointPolicy, IdentityChange, NamedPort, NamedPorts,
    Peer, Policy, PolicyConfig, PolicyKey, PolicyRepository, PolicySources, Proto,
};

use super::LocalEndpoint;

/// The last node-local CIDR identity: CIDR identities take the lower half of the node-local
/// space, the DNS proxy's selector-set identities ([`FQDN_IDENTITIES`]) the upper half.
pub const CIDR_IDENTITY_MAX: u32 = plexus_datapath::IDENTITY_LOCAL_BASE + (1 << 23) - 1;

/// The node-local identities of `toFQDNs` selector sets (the DNS proxy allocates them).
pub const FQDN_IDENTITIES: std::ops::RangeInclusive<u32> =
    CIDR_IDENTITY_MAX + 1..=plexus_datapath::IDENTITY_LOCAL_MAX;

/// A named container port (number and protocol).
pub type PortSpec = NamedPort;

/// An identity as the node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityEntry {
    /// The cluster that allocated it.
    pub cluster: String,
    /// Its labels.
    pub labels: Labels,
}

/// Policies, identities and what they resolve to.
#[derive(Debug)]
pub struct PolicyState {
    repo: PolicyRepository,
    /// Policy key of each stored object key.
    keys: BTreeMap<String, PolicyKey>,
    /// The objects as applied, by policy key.
    objects: BTreeMap<PolicyKey, serde_json::Value>,
    synced: bool,
    /// Every identity known, by number.
    identities: BTreeMap<u32, IdentityEntry>,
    /// Identity changes not yet in the selector cache.
    pending: Vec<IdentityChange>,
    /// Resolved policy per endpoint id.
    resolved: BTreeMap<u16, EndpointPolicy>,
    /// Which policy each resolved entry comes from, per endpoint id (for flows).
    sources: BTreeMap<u16, Arc<PolicySources>>,
    /// Bumped on every identity change (flows rebuild their identity table on it).
    identity_revision: u64,
    /// Node-local CIDR identity of each prefix the resolved policies name.
    cidr_ids: BTreeMap<Cidr, u32>,
    next_cidr_id: u32,
    /// Named ports of the ipcache entries that carry some, by (cluster, key): the identity and
    /// its endpoint's ports.
    entry_ports: BTreeMap<(String, String), (u32, NamedPorts)>,
    /// The named ports last given to the repository, per identity (this node's endpoints
    /// included).
    fed_identity_ports: BTreeMap<u32, NamedPorts>,
    /// What the DNS proxy needs, as of the last resolution.
    dns: DnsDesired,
    dirty: bool,
}

/// What the node's DNS proxy needs from policy: the rules of every endpoint whose egress
/// policy has DNS rules (those endpoints' DNS queries are redirected to the proxy), and every
/// `toFQDNs` pattern (the names to learn addresses for).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsDesired {
    /// Per endpoint id with DNS rules: its L4 policy and its DNS rules.
    pub endpoints: BTreeMap<u16, (EndpointPolicy, DnsPolicy)>,
    /// The `toFQDNs` patterns of every policy.
    pub selectors: BTreeSet<String>,
}

/// The typed named ports of an ipcache entry (a protocol other than TCP, UDP or SCTP names no
/// port a policy can use).
fn typed_ports(ports: &[plexus_model::ipcache::NamedPort]) -> NamedPorts {
    let mut out = NamedPorts::new();
    for p in ports {
        let Ok(Some(proto)) = Proto::parse_any(&p.protocol, "Protocol") else {
            continue;
        };
        if p.name.is_empty() {
            continue;
        }
        out.entry(p.name.clone()).or_default().insert(NamedPort {
            port: p.port,
            proto,
        });
    }
    out
}

impl PolicyState {
    /// No policy yet, for cluster `cluster` with `policy-default-local-cluster` as given.
    pub fn new(cluster: &str, default_local_cluster: bool) -> Self {
        let mut config = PolicyConfig::new(cluster);
        config.default_local_cluster = default_local_cluster;
        Self {
            repo: PolicyRepository::new(config),
            keys: BTreeMap::new(),
            objects: BTreeMap::new(),
            synced: false,
            identities: BTreeMap::new(),
            pending: Vec::new(),
            resolved: BTreeMap::new(),
            sources: BTreeMap::new(),
            identity_revision: 0,
            cidr_ids: BTreeMap::new(),
            next_cidr_id: plexus_datapath::IDENTITY_LOCAL_BASE,
            entry_ports: BTreeMap::new(),
            fed_identity_ports: BTreeMap::new(),
            dns: DnsDesired::default(),
            dirty: true,
        }
    }

    /// Something policy depends on changed (an endpoint came, went or changed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// A policy object (stored under `key`).
    pub fn policy_upsert(&mut self, key: String, policy: Policy, object: serde_json::Value) {
        let pkey = policy.key.clone();
        if let Some(old) = self.keys.insert(key, pkey.clone())
            && old != pkey
        {
            self.repo.delete(&old);
            self.objects.remove(&old);
        }
        self.repo.upsert(policy);
        self.objects.insert(pkey, object);
        self.dirty = true;
    }

    /// A policy object is gone.
    pub fn policy_delete(&mut self, key: &str) {
        if let Some(pkey) = self.keys.remove(key) {
            self.repo.delete(&pkey);
            self.objects.remove(&pkey);
            self.dirty = true;
        }
    }

    /// The policy objects are listed.
    pub fn policies_synced(&mut self) {
        self.synced = true;
        self.dirty = true;
    }

    /// An identity of `cluster`.
    pub fn identity_upsert(&mut self, id: u32, cluster: &str, labels: Labels) {
        let entry = IdentityEntry {
            cluster: cluster.to_string(),
            labels,
        };
        if self.identities.get(&id) == Some(&entry) {
            return;
        }
        self.pending.push(IdentityChange::Upsert(
            NumericIdentity(id),
            entry.labels.clone(),
        ));
        self.identities.insert(id, entry);
        self.identity_revision += 1;
        self.dirty = true;
    }

    /// An identity is gone.
    pub fn identity_delete(&mut self, id: u32) {
        if self.identities.remove(&id).is_some() {
            self.identity_revision += 1;
            self.pending
                .push(IdentityChange::Remove(NumericIdentity(id)));
            self.dirty = true;
        }
    }

    /// The ipcache entry `key` of `cluster` (this one or a remote): its identity's named ports
    /// count for egress named ports from now on.
    pub fn ip_ports_upsert(
        &mut self,
        cluster: &str,
        key: &str,
        identity: u32,
        ports: &[plexus_model::ipcache::NamedPort],
    ) {
        let slot = (cluster.to_string(), key.to_string());
        let ports = typed_ports(ports);
        if ports.is_empty() {
            self.ip_ports_delete(cluster, key);
        } else if self.entry_ports.get(&slot) != Some(&(identity, ports.clone())) {
            self.entry_ports.insert(slot, (identity, ports));
            self.dirty = true;
        }
    }

    /// The ipcache entry `key` of `cluster` is gone.
    pub fn ip_ports_delete(&mut self, cluster: &str, key: &str) {
        if self
            .entry_ports
            .remove(&(cluster.to_string(), key.to_string()))
            .is_some()
        {
            self.dirty = true;
        }
    }

    /// Takes over the CIDR identities a previous agent gave prefixes (those not named any
    /// more are dropped at the next resolution); later prefixes get identities after them.
    pub fn restore_cidr_ids(&mut self, cidrs: &BTreeMap<Prefix, u32>) {
        let range = plexus_datapath::IDENTITY_LOCAL_BASE..=CIDR_IDENTITY_MAX;
        let used: BTreeSet<u32> = self.cidr_ids.values().copied().collect();
        for (prefix, id) in cidrs {
            if !range.contains(id) || used.contains(id) {
                continue;
            }
            let Ok(cidr) = Cidr::new(std::net::IpAddr::V4(prefix.addr), prefix.len) else {
                continue;
            };
            if let std::collections::btree_map::Entry::Vacant(slot) = self.cidr_ids.entry(cidr) {
                slot.insert(*id);
                if *id >= self.next_cidr_id {
                    self.next_cidr_id = if *id >= CIDR_IDENTITY_MAX {
                        plexus_datapath::IDENTITY_LOCAL_BASE
                    } else {
                        id + 1
                    };
                }
            }
        }
    }

    /// Every identity of `cluster` is gone (it was drained).
    pub fn remove_cluster(&mut self, cluster: &str) {
        let before = self.entry_ports.len();
        self.entry_ports.retain(|(c, _), _| c != cluster);
        if self.entry_ports.len() != before {
            self.dirty = true;
        }
        let gone: Vec<u32> = self
            .identities
            .iter()
            .filter(|(_, e)| e.cluster == cluster)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.identity_delete(id);
        }
    }

    /// Every identity known.
    pub fn identities(&self) -> &BTreeMap<u32, IdentityEntry> {
        &self.identities
    }

    /// The policy objects as applied, in key order.
    pub fn objects(&self) -> &BTreeMap<PolicyKey, serde_json::Value> {
        &self.objects
    }

    /// A number that changes whenever an identity comes, changes or goes.
    pub fn identity_revision(&self) -> u64 {
        self.identity_revision
    }

    /// The policy repository's revision (Hubble's `revision` of a flow's policies).
    pub fn revision(&self) -> u64 {
        self.repo.revision()
    }

    /// Which policy each entry of endpoint `id`'s resolved policy comes from, as last
    /// computed.
    pub fn sources(&self) -> &BTreeMap<u16, Arc<PolicySources>> {
        &self.sources
    }

    /// What the DNS proxy needs, as of the last resolution.
    pub fn dns(&self) -> &DnsDesired {
        &self.dns
    }

    /// The resolved policy of endpoint `id`, as last computed.
    pub fn resolved(&self, id: u16) -> Option<&EndpointPolicy> {
        self.resolved.get(&id)
    }

    /// Every endpoint's desired policy and the CIDR identities, if anything changed since the
    /// last call and the policies are listed.
    #[allow(clippy::type_complexity)]
    pub fn take_desired(
        &mut self,
        endpoints: &BTreeMap<u16, LocalEndpoint>,
    ) -> Option<(BTreeMap<u16, dp::EndpointPolicy>, BTreeMap<Prefix, u32>)> {
        if !self.dirty || !self.synced {
            return None;
        }
        self.dirty = false;
        Some(self.resolve_all(endpoints))
    }

    fn resolve_all(
        &mut self,
        endpoints: &BTreeMap<u16, LocalEndpoint>,
    ) -> (BTreeMap<u16, dp::EndpointPolicy>, BTreeMap<Prefix, u32>) {
        if !self.pending.is_empty() {
            self.repo
                .update_identities(std::mem::take(&mut self.pending));
        }
        self.feed_named_ports(endpoints);
        let mut resolved = BTreeMap::new();
        let mut sources = BTreeMap::new();
        let mut dns = DnsDesired {
            endpoints: BTreeMap::new(),
            selectors: self.repo.fqdn_patterns(),
        };
        for ep in endpoints.values() {
            let Some(entry) = self.identities.get(&ep.identity) else {
                // Its identity is not known yet: resolved once it is. Meanwhile an endpoint
                // that had a policy (one moved to a new identity) keeps it, never left open.
                if let (Some(policy), Some(from)) =
                    (self.resolved.get(&ep.id), self.sources.get(&ep.id))
                {
                    resolved.insert(ep.id, policy.clone());
                    sources.insert(ep.id, from.clone());
                }
                if let Some(rules) = self.dns.endpoints.get(&ep.id) {
                    dns.endpoints.insert(ep.id, rules.clone());
                }
                continue;
            };
            let named_ports = ep
                .named_ports
                .iter()
                .map(|(name, p)| (name.clone(), BTreeSet::from([*p])))
                .collect();
            let info = EndpointInfo {
                labels: entry.labels.clone(),
                named_ports,
            };
            let (policy, from) = self.repo.resolve_with_sources(&info);
            let rules = self.repo.resolve_dns(&info);
            if rules.egress_enforced && rules.entries.iter().any(|e| e.patterns.is_some()) {
                dns.endpoints.insert(ep.id, (policy.clone(), rules));
            }
            resolved.insert(ep.id, policy);
            sources.insert(ep.id, Arc::new(from));
        }
        // CIDR identities: one per IPv4 prefix a policy names, kept while it is named.
        let named: BTreeSet<Cidr> = resolved
            .values()
            .flat_map(|p: &EndpointPolicy| p.entries.iter())
            .filter_map(|e| match e.peer {
                Peer::Prefix(c) if c.addr.is_ipv4() => Some(c.network()),
                _ => None,
            })
            .collect();
        self.cidr_ids.retain(|c, _| named.contains(c));
        for c in &named {
            if !self.cidr_ids.contains_key(c) {
                let id = self.next_cidr_id;
                self.next_cidr_id = if id >= CIDR_IDENTITY_MAX {
                    plexus_datapath::IDENTITY_LOCAL_BASE
                } else {
                    id + 1
                };
                self.cidr_ids.insert(*c, id);
            }
        }
        let out = resolved
            .iter()
            .map(|(id, policy)| (*id, to_datapath(policy, &self.cidr_ids)))
            .collect();
        let cidrs = self
            .cidr_ids
            .iter()
            .filter_map(|(c, id)| match c.addr {
                std::net::IpAddr::V4(a) => Prefix::new(a, c.prefix_len).ok().map(|p| (p, *id)),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        self.resolved = resolved;
        self.sources = sources;
        self.dns = dns;
        (out, cidrs)
    }
}

impl PolicyState {
    /// Gives the repository the named ports of every identity (the union over its endpoints:
    /// ipcache entries of every cluster and this node's endpoints) and their node-wide union,
    /// for egress named ports.
    fn feed_named_ports(&mut self, endpoints: &BTreeMap<u16, LocalEndpoint>) {
        let mut by_identity: BTreeMap<u32, NamedPorts> = BTreeMap::new();
        let mut add = |id: u32, name: &str, port: NamedPort| {
            by_identity
                .entry(id)
                .or_default()
                .entry(name.to_string())
                .or_default()
                .insert(port);
        };
        for (id, ports) in self.entry_ports.values() {
            for (name, set) in ports {
                for p in set {
                    add(*id, name, *p);
                }
            }
        }
        for ep in endpoints.values() {
            for (name, p) in &ep.named_ports {
                add(ep.identity, name, *p);
            }
        }
        if by_identity == self.fed_identity_ports {
            return;
        }
        for id in self.fed_identity_ports.keys() {
            if !by_identity.contains_key(id) {
                self.repo
                    .set_identity_named_ports(NumericIdentity(*id), NamedPorts::new());
            }
        }
        let mut node_wide = NamedPorts::new();
        for (id, ports) in &by_identity {
            for (name, set) in ports {
                node_wide
                    .entry(name.clone())
                    .or_default()
                    .extend(set.iter().copied());
            }
            if self.fed_identity_ports.get(id) != Some(ports) {
                self.repo
                    .set_identity_named_ports(NumericIdentity(*id), ports.clone());
            }
        }
        self.repo.set_egress_named_ports(node_wide);
        self.fed_identity_ports = by_identity;
    }
}

/// Whether prefix `inner` lies within prefix `outer`.
fn within(inner: &Cidr, outer: &Cidr) -> bool {
    inner.prefix_len >= outer.prefix_len && outer.contains(inner.addr)
}

/// The datapath's form: identity entries; a protocol-less entry with ports becomes one per
/// protocol; a CIDR entry applies to the CIDR identity of every named prefix within it (an
/// address carries the identity of the most specific named prefix, so a rule on 10.0.0.0/8
/// must also match the identity of a named 10.1.0.0/16).
pub fn to_datapath(p: &EndpointPolicy, cidr_ids: &BTreeMap<Cidr, u32>) -> dp::EndpointPolicy {
    let mut rules = BTreeSet::new();
    for e in &p.entries {
        let identities: Vec<u32> = match e.peer {
            Peer::Any => vec![dp::ANY_IDENTITY],
            Peer::Identity(id) => vec![id.0],
            Peer::Prefix(c) => cidr_ids
                .iter()
                .filter(|(named, _)| within(named, &c.network()))
                .map(|(_, id)| *id)
                .collect(),
        };
        let direction = match e.direction {
            Direction::Ingress => plexus_datapath::Direction::Ingress,
            Direction::Egress => plexus_datapath::Direction::Egress,
        };
        let (lo, hi) = e.ports.unwrap_or((0, u16::MAX));
        let protos: Vec<u8> = match (e.proto, e.ports) {
            (Some(p), _) => vec![p.number()],
            (None, None) => vec![0],
            (None, Some(_)) => vec![6, 17, 132],
        };
        for identity in &identities {
            for proto in &protos {
                let proto = *proto;
                rules.insert(dp::PolicyRule {
                    direction,
                    identity: *identity,
                    proto,
                    port_lo: if proto == 0 { 0 } else { lo },
                    port_hi: if proto == 0 { u16::MAX } else { hi },
                    deny: e.deny,
                });
            }
        }
    }
    dp::EndpointPolicy {
        ingress_enforced: p.ingress_enforced,
        egress_enforced: p.egress_enforced,
        rules: rules.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use plexus_policy::PolicyEntry;
    use plexus_policy::resolved::Verdict;
    use proptest::prelude::*;

    fn entry(
        peer: Peer,
        proto: Option<Proto>,
        ports: Option<(u16, u16)>,
        deny: bool,
    ) -> PolicyEntry {
        PolicyEntry {
            direction: Direction::Ingress,
            peer,
            proto,
            ports,
            deny,
        }
    }

    #[test]
    fn entries_become_datapath_rules() {
        let p = EndpointPolicy {
            ingress_enforced: true,
            egress_enforced: false,
            entries: vec![
                entry(
                    Peer::Identity(NumericIdentity(300)),
                    Some(Proto::Tcp),
                    Some((6379, 6379)),
                    false,
                ),
                entry(Peer::Any, None, Some((53, 53)), false),
                entry(Peer::Any, None, None, true),
                entry(
                    Peer::Prefix("10.0.0.0/8".parse().unwrap()),
                    None,
                    None,
                    false,
                ),
            ],
        };
        let cidrs = BTreeMap::from([
            ("10.0.0.0/8".parse::<Cidr>().unwrap(), 16_777_216),
            ("10.1.0.0/16".parse::<Cidr>().unwrap(), 16_777_217),
            ("192.168.0.0/16".parse::<Cidr>().unwrap(), 16_777_218),
        ]);
        let d = to_datapath(&p, &cidrs);
        assert!(d.ingress_enforced && !d.egress_enforced);
        let rules: Vec<(u32, u8, u16, u16, bool)> = d
            .rules
            .iter()
            .map(|r| (r.identity, r.proto, r.port_lo, r.port_hi, r.deny))
            .collect();
        assert_eq!(
            rules,
            vec![
                (0, 0, 0, 65535, true),
                (0, 6, 53, 53, false),
                (0, 17, 53, 53, false),
                (0, 132, 53, 53, false),
                (300, 6, 6379, 6379, false),
                (16_777_216, 0, 0, 65535, false),
                (16_777_217, 0, 0, 65535, false),
            ],
            "10.0.0.0/8 applies to the named 10.1.0.0/16 too, not to 192.168.0.0/16"
        );
    }

    /// Prefixes for the property test: nested and disjoint, around the test's addresses.
    const PREFIXES: [&str; 6] = [
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.3/32",
        "10.2.0.0/16",
        "10.1.2.0/31",
    ];
    const ADDRESSES: [&str; 6] = [
        "10.1.2.3",
        "10.1.2.1",
        "10.1.9.9",
        "10.2.0.1",
        "10.9.0.1",
        "192.0.2.1",
    ];

    fn prop_entry() -> impl Strategy<Value = PolicyEntry> {
        let peer = prop_oneof![
            Just(Peer::Any),
            (100u32..103).prop_map(|i| Peer::Identity(NumericIdentity(i))),
            (0..PREFIXES.len()).prop_map(|i| Peer::Prefix(PREFIXES[i].parse().unwrap())),
        ];
        let proto = prop_oneof![Just(None), Just(Some(Proto::Tcp)), Just(Some(Proto::Udp))];
        let ports = prop_oneof![
            Just(None),
            (0u16..20, 0u16..20).prop_map(|(a, b)| Some((a.min(b), a.max(b)))),
        ];
        (any::<bool>(), peer, proto, ports, any::<bool>()).prop_map(
            |(ingress, peer, proto, ports, deny)| PolicyEntry {
                direction: if ingress {
                    Direction::Ingress
                } else {
                    Direction::Egress
                },
                peer,
                proto,
                ports,
                deny,
            },
        )
    }

    proptest! {
        /// What the datapath decides (the peer's identity, plus the CIDR identity of the most
        /// specific named prefix holding the peer's address, deny winning) is what the rules
        /// mean, for pods inside CIDRs as for addresses outside the mesh.
        #[test]
        fn datapath_decision_with_addresses_agrees_with_the_rules(
            entries in prop::collection::vec(prop_entry(), 0..10),
            ingress_enforced in any::<bool>(),
            egress_enforced in any::<bool>(),
            packets in prop::collection::vec(
                (any::<bool>(), 0u32..5, 0..ADDRESSES.len(), any::<bool>(), 0u16..22),
                1..40,
            ),
        ) {
            let mut entries = entries;
            entries.sort();
            entries.dedup();
            let policy = EndpointPolicy { ingress_enforced, egress_enforced, entries };
            // The named prefixes get CIDR identities as `resolve_all` gives them.
            let cidr_ids: BTreeMap<Cidr, u32> = policy
                .entries
                .iter()
                .filter_map(|e| match e.peer {
                    Peer::Prefix(c) => Some(c),
                    _ => None,
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .zip(plexus_datapath::IDENTITY_LOCAL_BASE..)
                .collect();
            let d = to_datapath(&policy, &cidr_ids);
            let compiled = dp::compile(&d.rules);
            for (ingress, peer, addr, udp, port) in packets {
                let ip: std::net::IpAddr = ADDRESSES[addr].parse().unwrap();
                let cidr_identity = cidr_ids
                    .iter()
                    .filter(|(c, _)| c.contains(ip))
                    .max_by_key(|(c, _)| c.prefix_len)
                    .map(|(_, id)| *id);
                // Pods (100..103), the world, or (outside the mesh) the ipcache's CIDR identity.
                let peer = match peer {
                    3 => 2,
                    4 => cidr_identity.unwrap_or(2),
                    p => 100 + p,
                };
                let (direction, dp_direction, enforced) = if ingress {
                    (Direction::Ingress, plexus_datapath::Direction::Ingress, ingress_enforced)
                } else {
                    (Direction::Egress, plexus_datapath::Direction::Egress, egress_enforced)
                };
                let proto = if udp { Proto::Udp } else { Proto::Tcp };
                let expected = policy.verdict(direction, NumericIdentity(peer), Some(ip), proto, port)
                    == Verdict::Allow;
                let got = dp::allows(
                    &compiled,
                    enforced,
                    dp_direction,
                    peer,
                    cidr_identity,
                    proto.number(),
                    port,
                );
                prop_assert_eq!(got, expected, "{:?} peer {} {} {:?} {}", direction, peer, ip, proto, port);
            }
        }
    }
}
