//! What a remote cluster may claim: addresses it owns, and nothing of ours or another's.
//!
//! A remote with valid credentials can publish anything under its prefixes. The decoders
//! already refuse what names another cluster (see `plexus_clustermesh::validate`); this guard
//! refuses what claims addresses that are not the remote's, before its events reach the
//! ipcache, the routes and the load balancer:
//! - a remote node is *accepted* only if its pod CIDRs and addresses overlap none of this
//!   cluster's nodes' and none of another remote's accepted nodes'. Claims are first come,
//!   first served among remotes, but ours always win: a remote node accepted before one of our
//!   nodes claiming the same space was known is revoked when ours appears;
//! - a remote ipcache entry is passed on only if its prefix lies in a pod CIDR of one of the
//!   remote's accepted nodes (or is one of their addresses), and its tunnel endpoint, when it
//!   has one, is one of their addresses. Otherwise it is held back, and passed on as soon as a
//!   node that owns it is accepted (nodes and entries arrive from separate watches, in any
//!   order);
//! - a remote service's backends outside what the remote owns are dropped from it.
//!
//! IPv6 entries and backends are passed on unchecked: the datapath programs IPv4 only, and
//! nodes publish no IPv6 pod CIDR we check against.
//!
//! Every refusal is counted per remote by reason (`cidr-conflict`, `address-not-owned`,
//! `backend-not-owned`): once per value refused, and once when an accepted one is revoked, not
//! again while it stays refused. Entries and backends that wait for their node during the
//! remote's initial listing are counted only if they still wait when it is complete.
//!
//! The guard holds each remote's nodes, entries and services (as received) so that it can
//! decide again when claims change. Costs stay proportional to what changed: what a remote
//! owns is indexed (one probe per prefix length in use per entry); a node accepted re-checks
//! only the entries held back, a node revoked or removed re-checks that remote's entries; a
//! node update that claims the same changes nothing; our node's new claims are checked against
//! the remotes' accepted nodes, not the other way round.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use plexus_clustermesh::remote_cluster::{MeshEvent, RemoteEvent};
use plexus_clustermesh::validate::RejectReason;
use plexus_datapath::Prefix;
use plexus_ipcache::from_pair;
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::node::Node;
use plexus_model::service::ClusterService;

/// The address space a node claims: its IPv4 pod CIDRs and IPv4 addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    cidrs: Vec<Prefix>,
    addrs: Vec<Ipv4Addr>,
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

fn overlaps(a: &Prefix, b: &Prefix) -> bool {
    a.contains(b.addr) || b.contains(a.addr)
}

impl Claims {
    /// What `node` claims.
    pub fn of(node: &Node) -> Self {
        let cidrs = node
            .ipv4_alloc_cidr
            .iter()
            .chain(&node.ipv4_secondary_alloc_cidrs)
            .filter_map(|c| Prefix::new(v4(c.addr)?, c.prefix_len).ok())
            .collect();
        let mut addrs: Vec<Ipv4Addr> = node
            .ip_addresses
            .iter()
            .filter_map(|a| v4(a.ip))
            .chain(
                [&node.ipv4_health_ip, &node.ipv4_ingress_ip]
                    .into_iter()
                    .filter_map(|s| s.parse().ok()),
            )
            .collect();
        addrs.sort();
        addrs.dedup();
        Self { cidrs, addrs }
    }

    fn is_empty(&self) -> bool {
        self.cidrs.is_empty() && self.addrs.is_empty()
    }

    /// Whether the two claim any address in common.
    pub fn conflicts(&self, other: &Claims) -> bool {
        let in_cidrs = |c: &Claims, ip: &Ipv4Addr| c.cidrs.iter().any(|p| p.contains(*ip));
        self.cidrs
            .iter()
            .any(|a| other.cidrs.iter().any(|b| overlaps(a, b)))
            || self.addrs.iter().any(|ip| other.addrs.contains(ip))
            || self.addrs.iter().any(|ip| in_cidrs(other, ip))
            || other.addrs.iter().any(|ip| in_cidrs(self, ip))
    }
}

/// What a remote's accepted nodes claim, indexed so that a lookup costs one probe per prefix
/// length in use (entries are checked one by one, a remote may have hundreds of thousands).
#[derive(Debug, Default)]
struct Owned {
    /// (length, network) -> how many accepted nodes claim it.
    cidrs: HashMap<(u8, Ipv4Addr), usize>,
    /// Prefix lengths in use -> how many claims have it.
    lens: BTreeMap<u8, usize>,
    /// Addresses -> how many accepted nodes claim it.
    addrs: HashMap<Ipv4Addr, usize>,
}

impl Owned {
    fn add(&mut self, c: &Claims) {
        for p in &c.cidrs {
            *self.cidrs.entry((p.len, p.addr)).or_default() += 1;
            *self.lens.entry(p.len).or_default() += 1;
        }
        for a in &c.addrs {
            *self.addrs.entry(*a).or_default() += 1;
        }
    }

    fn remove(&mut self, c: &Claims) {
        fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: K) {
            if let Some(n) = m.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&k);
                }
            }
        }
        for p in &c.cidrs {
            dec(&mut self.cidrs, (p.len, p.addr));
            if let Some(n) = self.lens.get_mut(&p.len) {
                *n -= 1;
                if *n == 0 {
                    self.lens.remove(&p.len);
                }
            }
        }
        for a in &c.addrs {
            dec(&mut self.addrs, *a);
        }
    }

    fn owns_prefix(&self, p: &Prefix) -> bool {
        self.lens.range(..=p.len).any(|(len, _)| {
            Prefix::new(p.addr, *len).is_ok_and(|q| self.cidrs.contains_key(&(*len, q.addr)))
        }) || (p.len == 32 && self.addrs.contains_key(&p.addr))
    }

    fn owns_addr(&self, ip: Ipv4Addr) -> bool {
        self.addrs.contains_key(&ip)
    }
}

/// A remote node as received, what it claims, and whether it is accepted.
#[derive(Debug)]
struct HeldNode {
    node: Node,
    claims: Claims,
    accepted: bool,
}

/// One remote's values as received, and what was decided.
#[derive(Debug, Default)]
struct Held {
    nodes: BTreeMap<String, HeldNode>,
    /// What its accepted nodes claim.
    owned: Owned,
    /// ipcache entries by key, and whether each is passed on (each shared with the remote's
    /// store, not copied).
    ips: BTreeMap<String, (Arc<IpIdentityPair>, bool)>,
    /// The keys of the entries held back.
    waiting: BTreeSet<String>,
    /// Services by `<namespace>/<name>`: as received, and as passed on.
    services: BTreeMap<String, (Arc<ClusterService>, Arc<ClusterService>)>,
    /// Refusals by reason.
    refused: BTreeMap<RejectReason, u64>,
    /// Whether the remote's initial listing is complete.
    synced: bool,
}

impl Held {
    fn count(&mut self, reason: RejectReason, n: u64) {
        // During the initial listing, entries and backends wait for their nodes (the kinds
        // are listed by separate watches, in any order): what still waits once the remote
        // synced is counted then.
        let waits = matches!(
            reason,
            RejectReason::AddressNotOwned | RejectReason::BackendNotOwned
        );
        if n > 0 && (self.synced || !waits) {
            *self.refused.entry(reason).or_default() += n;
        }
    }

    /// The initial listing is complete: count what still waits.
    fn synced(&mut self) {
        if self.synced {
            return;
        }
        self.synced = true;
        let held = self.waiting.len() as u64;
        let dropped: usize = self
            .services
            .values()
            .map(|(received, sent)| received.backends.len() - sent.backends.len())
            .sum();
        self.count(RejectReason::AddressNotOwned, held);
        self.count(RejectReason::BackendNotOwned, dropped as u64);
    }

    fn accept(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name)
            && !n.accepted
        {
            n.accepted = true;
            self.owned.add(&n.claims);
        }
    }

    fn revoke(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name)
            && n.accepted
        {
            n.accepted = false;
            self.owned.remove(&n.claims);
        }
    }

    /// Re-decides the entries and services after the owned space changed: only the waiting
    /// entries when it only grew, every entry when it shrank.
    fn recheck(&mut self, cluster: &str, shrank: bool, out: &mut Vec<MeshEvent>) {
        let tag = |event| MeshEvent {
            cluster: cluster.to_string(),
            event,
        };
        let keys: Vec<String> = if shrank {
            self.ips.keys().cloned().collect()
        } else {
            self.waiting.iter().cloned().collect()
        };
        let mut newly_refused = 0;
        for key in keys {
            let Some((pair, passed)) = self.ips.get_mut(&key) else {
                continue;
            };
            let ok = owns_entry(&self.owned, pair);
            if ok == *passed {
                continue;
            }
            *passed = ok;
            if ok {
                self.waiting.remove(&key);
                out.push(tag(RemoteEvent::IpUpsert(pair.clone())));
            } else {
                self.waiting.insert(key.clone());
                newly_refused += 1;
                out.push(tag(RemoteEvent::IpDelete(key)));
            }
        }
        self.count(RejectReason::AddressNotOwned, newly_refused);
        let mut dropped_more = 0;
        for (received, sent) in self.services.values_mut() {
            let (now, dropped) = filter_backends(&self.owned, received);
            if now != *sent {
                let before = (received.backends.len() - sent.backends.len()) as u64;
                dropped_more += dropped.saturating_sub(before);
                *sent = now.clone();
                out.push(tag(RemoteEvent::ServiceUpsert(now)));
            }
        }
        self.count(RejectReason::BackendNotOwned, dropped_more);
    }
}

/// Whether `pair` is the remote's to publish, given what it owns.
fn owns_entry(owned: &Owned, pair: &IpIdentityPair) -> bool {
    let Some((prefix, value)) = from_pair(pair, 0) else {
        return true; // IPv6 (or unparsable, which the decoder refused): not programmed
    };
    owned.owns_prefix(&prefix) && value.tunnel_endpoint.is_none_or(|t| owned.owns_addr(t))
}

/// `svc` without the backends outside what the remote owns, and how many were dropped.
fn filter_backends(owned: &Owned, svc: &Arc<ClusterService>) -> (Arc<ClusterService>, u64) {
    let owns = |addr: &str| match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => owned.owns_prefix(&Prefix::host(ip)),
        Ok(IpAddr::V6(_)) => true,
        Err(_) => false,
    };
    // The usual case, every backend the remote's (and nothing about other addresses): passed
    // on as received, not copied.
    if svc.backends.keys().all(|addr| owns(addr))
        && svc.hostnames.keys().all(|a| svc.backends.contains_key(a))
        && svc.zones.keys().all(|a| svc.backends.contains_key(a))
    {
        return (svc.clone(), 0);
    }
    let mut out = ClusterService::clone(svc);
    let before = out.backends.len();
    out.backends.retain(|addr, _| owns(addr));
    let kept = &out.backends;
    out.hostnames.retain(|a, _| kept.contains_key(a));
    out.zones.retain(|a, _| kept.contains_key(a));
    let dropped = (before - out.backends.len()) as u64;
    (Arc::new(out), dropped)
}

fn ip_key(pair: &IpIdentityPair) -> String {
    pair.key_suffix().unwrap_or_else(|_| pair.ip.to_string())
}

/// The guard between the remote-cluster manager and the core (see the module doc).
#[derive(Debug, Default)]
pub struct Guard {
    /// This cluster's nodes' claims, by node name.
    local: BTreeMap<String, Claims>,
    remotes: BTreeMap<String, Held>,
}

impl Guard {
    /// Nothing known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refusals so far of each remote, by reason label.
    pub fn refused(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.remotes
            .iter()
            .filter(|(_, h)| !h.refused.is_empty())
            .map(|(name, h)| {
                let counts = h
                    .refused
                    .iter()
                    .map(|(r, n)| (r.as_str().to_string(), *n))
                    .collect();
                (name.clone(), counts)
            })
            .collect()
    }

    /// A node of this cluster appeared or changed: returns the remote events to apply now.
    pub fn local_node_upsert(&mut self, node: &Node) -> Vec<MeshEvent> {
        let claims = Claims::of(node);
        if self.local.get(&node.name) == Some(&claims) {
            return Vec::new();
        }
        let old = self.local.insert(node.name.clone(), claims.clone());
        let mut out = Vec::new();
        // Ours always win: revoke the remote nodes the new claims conflict with.
        let mut shrank = BTreeSet::new();
        for (cluster, held) in &mut self.remotes {
            let hit: Vec<String> = held
                .nodes
                .iter()
                .filter(|(_, n)| n.accepted && n.claims.conflicts(&claims))
                .map(|(name, _)| name.clone())
                .collect();
            for name in hit {
                held.revoke(&name);
                held.count(RejectReason::CidrConflict, 1);
                out.push(MeshEvent {
                    cluster: cluster.clone(),
                    event: RemoteEvent::NodeDelete(name),
                });
                shrank.insert(cluster.clone());
            }
        }
        // What the old claims held back may be free now.
        let freed = old.is_some_and(|o| !o.is_empty());
        out.extend(self.settle(shrank, freed));
        out
    }

    /// A node of this cluster is gone: returns the remote events to apply now.
    pub fn local_node_delete(&mut self, name: &str) -> Vec<MeshEvent> {
        if self.local.remove(name).is_none() {
            return Vec::new();
        }
        self.settle(BTreeSet::new(), true)
    }

    /// One event of a remote: returns what of it (and of what it unblocks) to apply.
    pub fn remote(&mut self, event: MeshEvent) -> Vec<MeshEvent> {
        let cluster = event.cluster;
        let tag = |event| MeshEvent {
            cluster: cluster.clone(),
            event,
        };
        match event.event {
            RemoteEvent::NodeUpsert(node) => self.remote_node_upsert(&cluster, node),
            RemoteEvent::NodeDelete(name) => {
                let held = self.remotes.entry(cluster.clone()).or_default();
                let was_accepted = held.nodes.get(&name).is_some_and(|n| n.accepted);
                held.revoke(&name);
                held.nodes.remove(&name);
                if !was_accepted {
                    return Vec::new();
                }
                let mut out = vec![tag(RemoteEvent::NodeDelete(name))];
                out.extend(self.settle(BTreeSet::from([cluster.clone()]), true));
                out
            }
            RemoteEvent::IpUpsert(pair) => {
                let held = self.remotes.entry(cluster.clone()).or_default();
                let key = ip_key(&pair);
                let ok = owns_entry(&held.owned, &pair);
                let was = held.ips.insert(key.clone(), (pair.clone(), ok));
                if ok {
                    held.waiting.remove(&key);
                    return vec![tag(RemoteEvent::IpUpsert(pair))];
                }
                held.waiting.insert(key.clone());
                held.count(RejectReason::AddressNotOwned, 1);
                if held.synced {
                    tracing::warn!(remote = %cluster, entry = %key, "refused an ipcache entry for an address the remote does not own");
                }
                match was {
                    Some((_, true)) => vec![tag(RemoteEvent::IpDelete(key))],
                    _ => Vec::new(),
                }
            }
            RemoteEvent::IpDelete(key) => {
                let held = self.remotes.entry(cluster.clone()).or_default();
                held.waiting.remove(&key);
                match held.ips.remove(&key) {
                    Some((_, true)) => vec![tag(RemoteEvent::IpDelete(key))],
                    _ => Vec::new(),
                }
            }
            RemoteEvent::ServiceUpsert(svc) => {
                let held = self.remotes.entry(cluster.clone()).or_default();
                let (sent, dropped) = filter_backends(&held.owned, &svc);
                held.count(RejectReason::BackendNotOwned, dropped);
                let key = format!("{}/{}", svc.namespace, svc.name);
                held.services.insert(key, (svc, sent.clone()));
                vec![tag(RemoteEvent::ServiceUpsert(sent))]
            }
            RemoteEvent::ServiceDelete(key) => {
                if let Some(held) = self.remotes.get_mut(&cluster) {
                    held.services.remove(&key);
                }
                vec![tag(RemoteEvent::ServiceDelete(key))]
            }
            RemoteEvent::Synced => {
                self.remotes.entry(cluster.clone()).or_default().synced();
                vec![tag(RemoteEvent::Synced)]
            }
            RemoteEvent::Drained => {
                let had_nodes = self
                    .remotes
                    .remove(&cluster)
                    .is_some_and(|h| h.nodes.values().any(|n| n.accepted));
                let mut out = vec![tag(RemoteEvent::Drained)];
                if had_nodes {
                    out.extend(self.settle(BTreeSet::new(), true));
                }
                out
            }
            other => vec![tag(other)],
        }
    }

    fn remote_node_upsert(&mut self, cluster: &str, node: Node) -> Vec<MeshEvent> {
        let claims = Claims::of(&node);
        let name = node.name.clone();
        let tag = |event| MeshEvent {
            cluster: cluster.to_string(),
            event,
        };
        let held = self.remotes.entry(cluster.to_string()).or_default();
        if let Some(slot) = held.nodes.get_mut(&name)
            && slot.claims == claims
        {
            // Nothing claimed changed: keep the decision, pass the new value on if accepted.
            slot.node = node.clone();
            return if slot.accepted {
                vec![tag(RemoteEvent::NodeUpsert(node))]
            } else {
                Vec::new()
            };
        }
        let was_accepted = held.nodes.get(&name).is_some_and(|n| n.accepted);
        held.revoke(&name);
        held.nodes.insert(
            name.clone(),
            HeldNode {
                node: node.clone(),
                claims: claims.clone(),
                accepted: false,
            },
        );
        let mut out = Vec::new();
        // A node that claims nothing conflicts with nothing (and owns nothing).
        let free = self.is_free(cluster, &claims);
        let held = self.remotes.entry(cluster.to_string()).or_default();
        if free {
            held.accept(&name);
            out.push(tag(RemoteEvent::NodeUpsert(node)));
        } else {
            held.count(RejectReason::CidrConflict, 1);
            tracing::warn!(remote = %cluster, node = %name, "refused a remote node whose addresses are this cluster's or another remote's");
            if was_accepted {
                out.push(tag(RemoteEvent::NodeDelete(name)));
            }
        }
        let mut changed = BTreeSet::new();
        if was_accepted {
            changed.insert(cluster.to_string());
        }
        // Its own owned space changed (grew, shrank, or both); a revoked claim may free
        // another remote's waiting node.
        out.extend(self.settle(changed, was_accepted));
        if free && !was_accepted {
            let held = self.remotes.entry(cluster.to_string()).or_default();
            held.recheck(cluster, false, &mut out);
        }
        out
    }

    /// Whether `claims` (of a node of remote `cluster`) are free: none of ours, none of
    /// another remote's accepted nodes'. A remote's own nodes may overlap each other.
    fn is_free(&self, cluster: &str, claims: &Claims) -> bool {
        !self.local.values().any(|c| c.conflicts(claims))
            && self
                .remotes
                .iter()
                .filter(|(other, _)| other.as_str() != cluster)
                .all(|(_, held)| {
                    held.nodes
                        .values()
                        .all(|n| !n.accepted || !n.claims.conflicts(claims))
                })
    }

    /// After claims changed: re-checks the entries of the remotes in `shrank` (some of their
    /// nodes were revoked or removed), then, if space may have been freed, accepts the waiting
    /// nodes that are free now and passes on what they own.
    fn settle(&mut self, shrank: BTreeSet<String>, freed: bool) -> Vec<MeshEvent> {
        let mut out = Vec::new();
        for cluster in &shrank {
            if let Some(held) = self.remotes.get_mut(cluster) {
                held.recheck(cluster, true, &mut out);
            }
        }
        if !freed {
            return out;
        }
        let waiting: Vec<(String, String)> = self
            .remotes
            .iter()
            .flat_map(|(c, h)| {
                h.nodes
                    .iter()
                    .filter(|(_, n)| !n.accepted && !n.claims.is_empty())
                    .map(move |(name, _)| (c.clone(), name.clone()))
            })
            .collect();
        let mut grew = BTreeSet::new();
        for (cluster, name) in waiting {
            let Some(claims) = self
                .remotes
                .get(&cluster)
                .and_then(|h| h.nodes.get(&name))
                .map(|n| n.claims.clone())
            else {
                continue;
            };
            if !self.is_free(&cluster, &claims) {
                continue;
            }
            let Some(held) = self.remotes.get_mut(&cluster) else {
                continue;
            };
            held.accept(&name);
            if let Some(n) = held.nodes.get(&name) {
                out.push(MeshEvent {
                    cluster: cluster.clone(),
                    event: RemoteEvent::NodeUpsert(n.node.clone()),
                });
            }
            grew.insert(cluster);
        }
        for cluster in grew {
            if let Some(held) = self.remotes.get_mut(&cluster) {
                held.recheck(&cluster, false, &mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_model::cidr::Cidr;
    use plexus_model::node::{NodeAddress, NodeAddressType};

    fn node(cluster: &str, name: &str, ip: &str, cidr: &str) -> Node {
        let (addr, len) = cidr.split_once('/').unwrap();
        Node {
            name: name.into(),
            cluster: cluster.into(),
            ip_addresses: vec![NodeAddress {
                kind: NodeAddressType::InternalIp,
                ip: ip.parse().unwrap(),
            }],
            ipv4_alloc_cidr: Some(Cidr {
                addr: addr.parse().unwrap(),
                prefix_len: len.parse().unwrap(),
            }),
            ..Node::default()
        }
    }

    fn pair(ip: &str, host: &str) -> IpIdentityPair {
        let raw = format!(
            r#"{{"IP":"{ip}","Mask":null,"HostIP":"{host}","ID":131073,"Key":0,"Metadata":""}}"#
        );
        IpIdentityPair::from_json(ip, raw.as_bytes()).unwrap()
    }

    fn ev(cluster: &str, event: RemoteEvent) -> MeshEvent {
        MeshEvent {
            cluster: cluster.into(),
            event,
        }
    }

    fn kinds(events: &[MeshEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let what = match &e.event {
                    RemoteEvent::NodeUpsert(n) => format!("node+ {}", n.name),
                    RemoteEvent::NodeDelete(n) => format!("node- {n}"),
                    RemoteEvent::IpUpsert(p) => format!("ip+ {}", p.ip),
                    RemoteEvent::IpDelete(k) => format!("ip- {k}"),
                    RemoteEvent::ServiceUpsert(s) => {
                        format!(
                            "svc+ {}",
                            s.backends.keys().cloned().collect::<Vec<_>>().join(",")
                        )
                    }
                    other => format!("{other:?}"),
                };
                format!("{} {what}", e.cluster)
            })
            .collect()
    }

    fn refused(g: &Guard, cluster: &str, reason: &str) -> u64 {
        g.refused()
            .get(cluster)
            .and_then(|m| m.get(reason))
            .copied()
            .unwrap_or(0)
    }

    #[test]
    fn entries_wait_for_the_node_that_owns_them() {
        let mut g = Guard::new();
        // The entry comes before its node: held back, then passed on when the node is accepted.
        assert!(
            g.remote(ev(
                "c2",
                RemoteEvent::IpUpsert(pair("10.2.0.5", "192.168.2.1").into())
            ))
            .is_empty()
        );
        assert_eq!(
            refused(&g, "c2", "address-not-owned"),
            0,
            "not before the listing is complete"
        );
        g.remote(ev("c2", RemoteEvent::Synced));
        assert_eq!(
            refused(&g, "c2", "address-not-owned"),
            1,
            "still waiting then"
        );
        let out = g.remote(ev(
            "c2",
            RemoteEvent::NodeUpsert(node("c2", "n1", "192.168.2.1", "10.2.0.0/24")),
        ));
        assert_eq!(kinds(&out), ["c2 node+ n1", "c2 ip+ 10.2.0.5"]);
        // Inside its CIDR: passed on at once.
        let out = g.remote(ev(
            "c2",
            RemoteEvent::IpUpsert(pair("10.2.0.6", "192.168.2.1").into()),
        ));
        assert_eq!(kinds(&out), ["c2 ip+ 10.2.0.6"]);
        // The node goes: so do its entries.
        let out = g.remote(ev("c2", RemoteEvent::NodeDelete("n1".into())));
        assert_eq!(
            kinds(&out),
            ["c2 node- n1", "c2 ip- 10.2.0.5", "c2 ip- 10.2.0.6"]
        );
        assert_eq!(refused(&g, "c2", "address-not-owned"), 3);
    }

    #[test]
    fn a_remote_cannot_claim_our_addresses_or_another_remotes() {
        let mut g = Guard::new();
        assert!(
            g.local_node_upsert(&node("c1", "me", "192.168.1.1", "10.1.0.0/24"))
                .is_empty()
        );
        g.remote(ev("c2", RemoteEvent::Synced));
        g.remote(ev(
            "c3",
            RemoteEvent::NodeUpsert(node("c3", "n1", "192.168.3.1", "10.3.0.0/24")),
        ));
        // Entries in our pod CIDR, at our node's address, in c3's pod CIDR: refused.
        for (ip, host) in [
            ("10.1.0.7", ""),
            ("192.168.1.1", ""),
            ("10.3.0.7", "192.168.3.1"),
        ] {
            assert!(
                g.remote(ev("c2", RemoteEvent::IpUpsert(pair(ip, host).into())))
                    .is_empty(),
                "{ip}"
            );
        }
        // A node of c2 claiming our pod CIDR, or c3's, or our address: refused.
        for (i, (ip, cidr)) in [
            ("192.168.2.1", "10.1.0.0/16"),
            ("192.168.2.2", "10.3.0.128/25"),
            ("192.168.1.1", "10.2.1.0/24"),
        ]
        .into_iter()
        .enumerate()
        {
            let n = node("c2", &format!("bad{i}"), ip, cidr);
            assert!(
                g.remote(ev("c2", RemoteEvent::NodeUpsert(n))).is_empty(),
                "{cidr}"
            );
        }
        assert_eq!(refused(&g, "c2", "address-not-owned"), 3);
        assert_eq!(refused(&g, "c2", "cidr-conflict"), 3);
        // A tunnel endpoint that is not one of c2's nodes: refused, even in c2's own CIDR.
        g.remote(ev(
            "c2",
            RemoteEvent::NodeUpsert(node("c2", "n1", "192.168.2.1", "10.2.0.0/24")),
        ));
        assert!(
            g.remote(ev(
                "c2",
                RemoteEvent::IpUpsert(pair("10.2.0.9", "192.168.1.1").into())
            ))
            .is_empty()
        );
        assert_eq!(refused(&g, "c2", "address-not-owned"), 4);
        // c3 never lost anything.
        assert!(!g.refused().contains_key("c3"));
    }

    #[test]
    fn ours_win_over_a_remote_accepted_first_and_a_freed_claim_is_accepted() {
        let mut g = Guard::new();
        g.remote(ev(
            "c2",
            RemoteEvent::NodeUpsert(node("c2", "n1", "192.168.2.1", "10.1.0.0/24")),
        ));
        g.remote(ev(
            "c2",
            RemoteEvent::IpUpsert(pair("10.1.0.5", "192.168.2.1").into()),
        ));
        // Another remote claiming the same space later: refused (first come).
        assert!(
            g.remote(ev(
                "c3",
                RemoteEvent::NodeUpsert(node("c3", "n1", "192.168.3.1", "10.1.0.0/24"))
            ))
            .is_empty()
        );
        // Our node with that CIDR appears: c2's node and its entries are revoked, c3 stays out.
        let out = g.local_node_upsert(&node("c1", "me", "192.168.1.1", "10.1.0.0/24"));
        assert_eq!(kinds(&out), ["c2 node- n1", "c2 ip- 10.1.0.5"]);
        assert_eq!(refused(&g, "c2", "cidr-conflict"), 1);
        // Our node moves away: the first waiting claim (by cluster name) gets it.
        let out = g.local_node_upsert(&node("c1", "me", "192.168.1.1", "10.9.0.0/24"));
        assert_eq!(kinds(&out), ["c2 node+ n1", "c2 ip+ 10.1.0.5"]);
        // c2 drained: c3's node is free.
        let out = g.remote(ev("c2", RemoteEvent::Drained));
        assert_eq!(kinds(&out), ["c2 Drained", "c3 node+ n1"]);
        // A node that claims no address is accepted (it owns nothing).
        let bare = Node {
            name: "bare".into(),
            cluster: "c3".into(),
            ..Node::default()
        };
        assert_eq!(
            kinds(&g.remote(ev("c3", RemoteEvent::NodeUpsert(bare)))),
            ["c3 node+ bare"]
        );
        assert_eq!(
            refused(&g, "c3", "cidr-conflict"),
            1,
            "only its first refused claim"
        );
        // A node update that claims the same keeps its decision and passes the new value on.
        let out = g.remote(ev(
            "c3",
            RemoteEvent::NodeUpsert(node("c3", "n1", "192.168.3.1", "10.1.0.0/24")),
        ));
        assert_eq!(kinds(&out), ["c3 node+ n1"]);
    }

    #[test]
    fn service_backends_outside_the_remote_are_dropped() {
        let mut g = Guard::new();
        g.local_node_upsert(&node("c1", "me", "192.168.1.1", "10.1.0.0/24"));
        g.remote(ev(
            "c2",
            RemoteEvent::NodeUpsert(node("c2", "n1", "192.168.2.1", "10.2.0.0/24")),
        ));
        g.remote(ev("c2", RemoteEvent::Synced));
        let mut svc = ClusterService::from_json(
            "default/web",
            br#"{"cluster":"c2","namespace":"default","name":"web","shared":true,"clusterID":2}"#,
        )
        .unwrap();
        for b in ["10.2.0.5", "10.1.0.5", "192.168.2.1", "8.8.8.8"] {
            svc.backends.insert(b.into(), Default::default());
        }
        let out = g.remote(ev("c2", RemoteEvent::ServiceUpsert(svc.into())));
        assert_eq!(kinds(&out), ["c2 svc+ 10.2.0.5,192.168.2.1"]);
        assert_eq!(refused(&g, "c2", "backend-not-owned"), 2);
        // The node goes: its backends go too.
        let out = g.remote(ev("c2", RemoteEvent::NodeDelete("n1".into())));
        assert_eq!(kinds(&out), ["c2 node- n1", "c2 svc+ "]);
        assert_eq!(refused(&g, "c2", "backend-not-owned"), 4);
    }

    #[test]
    fn a_service_whose_backends_are_all_owned_is_passed_on_without_a_copy() {
        let mut g = Guard::new();
        g.remote(ev(
            "c2",
            RemoteEvent::NodeUpsert(node("c2", "n1", "192.168.2.1", "10.2.0.0/24")),
        ));
        g.remote(ev("c2", RemoteEvent::Synced));
        let mut svc = ClusterService::from_json(
            "default/web",
            br#"{"cluster":"c2","namespace":"default","name":"web","shared":true,"clusterID":2}"#,
        )
        .unwrap();
        for i in 1..=200 {
            svc.backends
                .insert(format!("10.2.0.{i}"), Default::default());
        }
        let svc = Arc::new(svc);
        let out = g.remote(ev("c2", RemoteEvent::ServiceUpsert(svc.clone())));
        let [
            MeshEvent {
                event: RemoteEvent::ServiceUpsert(sent),
                ..
            },
        ] = out.as_slice()
        else {
            panic!("one service event: {out:?}");
        };
        assert!(Arc::ptr_eq(sent, &svc), "the received value, shared");
        assert_eq!(refused(&g, "c2", "backend-not-owned"), 0);
    }
}
