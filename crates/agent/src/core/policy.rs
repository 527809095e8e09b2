//! Network policy on this node: policy objects, the identities of every cluster in a selector
//! cache, and per local endpoint the resolved policy in the datapath's form.
//!
//! Identities may arrive before or after the policies that select them, from this cluster or a
//! remote one: each change marks the policy dirty, and the next [`PolicyState::take_desired`]
//! applies the identity changes to the selector cache in one batch and resolves every local
//! endpoint again, so a policy whose peer identities arrive later gains their entries then.
//!
//! Named ports of ingress rules resolve against the endpoint's own container ports. Each IPv4
//! prefix a policy names gets a node-local CIDR identity (from
//! [`plexus_datapath::IDENTITY_LOCAL_BASE`]); the core installs those prefixes in the ipcache
//! under every other source, and a CIDR rule applies to the identities of the named prefixes
//! within it. Nothing is programmed before the policy objects are listed, so a restarted agent
//! never opens what its predecessor enforced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use plexus_datapath::Prefix;
use plexus_datapath::policy as dp;
use plexus_model::cidr::Cidr;
use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_policy::{
    Direction, EndpointInfo, EndpointPolicy, IdentityChange, NamedPort, Peer, Policy, PolicyConfig,
    PolicyKey, PolicyRepository, PolicySources,
};

use super::LocalEndpoint;

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
    dirty: bool,
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

    /// Every identity of `cluster` is gone (it was drained).
    pub fn remove_cluster(&mut self, cluster: &str) {
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
        let mut resolved = BTreeMap::new();
        let mut sources = BTreeMap::new();
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
                continue;
            };
            let named_ports = ep
                .named_ports
                .iter()
                .map(|(name, p)| (name.clone(), BTreeSet::from([*p])))
                .collect();
            let (policy, from) = self.repo.resolve_with_sources(&EndpointInfo {
                labels: entry.labels.clone(),
                named_ports,
            });
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
                self.next_cidr_id = if id >= plexus_datapath::IDENTITY_LOCAL_MAX {
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
        (out, cidrs)
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
    use plexus_policy::{PolicyEntry, Proto};

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
}
