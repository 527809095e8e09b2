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
//! remote's initial listing are counted only if they still wait when it is complete. The guard holds each remote's nodes, entries and services
//! (as received) so that it can decide again when claims change; re-checking a remote's
//! entries only happens when what it owns changes, not on every node update.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

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

/// Whether `outer` holds every address of `inner`.
fn covers(outer: &Prefix, inner: &Prefix) -> bool {
    outer.len <= inner.len && outer.contains(inner.addr)
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

    fn owns_prefix(&self, p: &Prefix) -> bool {
        self.cidrs.iter().any(|c| covers(c, p)) || (p.len == 32 && self.addrs.contains(&p.addr))
    }

    fn owns_ip(&self, ip: Ipv4Addr) -> bool {
        self.owns_prefix(&Prefix::host(ip))
    }

    fn extend(&mut self, other: &Claims) {
        self.cidrs.extend(other.cidrs.iter().copied());
        self.addrs.extend(other.addrs.iter().copied());
    }
}

/// One remote's values as received, and what was decided.
#[derive(Debug, Default)]
struct Held {
    /// Nodes by name, and whether each is accepted.
    nodes: BTreeMap<String, (Node, bool)>,
    /// ipcache entries by key, and whether each is passed on.
    ips: BTreeMap<String, (IpIdentityPair, bool)>,
    /// Services by `<namespace>/<name>`: as received, and as passed on.
    services: BTreeMap<String, (ClusterService, ClusterService)>,
    /// Refusals by reason.
    refused: BTreeMap<RejectReason, u64>,
    /// Whether the remote's initial listing is complete.
    synced: bool,
}

impl Held {
    /// What the remote's accepted nodes claim.
    fn owned(&self) -> Claims {
        let mut out = Claims::default();
        for (node, accepted) in self.nodes.values() {
            if *accepted {
                out.extend(&Claims::of(node));
            }
        }
        out
    }

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
        let held = self.ips.values().filter(|(_, passed)| !passed).count() as u64;
        let dropped: usize = self
            .services
            .values()
            .map(|(received, sent)| received.backends.len() - sent.backends.len())
            .sum();
        self.count(RejectReason::AddressNotOwned, held);
        self.count(RejectReason::BackendNotOwned, dropped as u64);
    }
}

/// Whether `pair` is the remote's to publish, given what it owns.
fn owns_entry(owned: &Claims, pair: &IpIdentityPair) -> bool {
    let Some((prefix, value)) = from_pair(pair, 0) else {
        return true; // IPv6 (or unparsable, which the decoder refused): not programmed
    };
    owned.owns_prefix(&prefix)
        && value
            .tunnel_endpoint
            .is_none_or(|t| owned.addrs.contains(&t))
}

/// `svc` without the backends outside what the remote owns, and how many were dropped.
fn filter_backends(owned: &Claims, svc: &ClusterService) -> (ClusterService, u64) {
    let mut out = svc.clone();
    let before = out.backends.len();
    out.backends.retain(|addr, _| match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => owned.owns_ip(ip),
        Ok(IpAddr::V6(_)) => true,
        Err(_) => false,
    });
    let kept = &out.backends;
    out.hostnames.retain(|a, _| kept.contains_key(a));
    out.zones.retain(|a, _| kept.contains_key(a));
    let dropped = (before - out.backends.len()) as u64;
    (out, dropped)
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
        self.local.insert(node.name.clone(), claims);
        self.settle()
    }

    /// A node of this cluster is gone: returns the remote events to apply now.
    pub fn local_node_delete(&mut self, name: &str) -> Vec<MeshEvent> {
        if self.local.remove(name).is_none() {
            return Vec::new();
        }
        self.settle()
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
                match held.nodes.remove(&name) {
                    Some((_, true)) => {
                        let mut out = vec![tag(RemoteEvent::NodeDelete(name))];
                        out.extend(self.settle_from(Some(&cluster)));
                        out
                    }
                    _ => Vec::new(),
                }
            }
            RemoteEvent::IpUpsert(pair) => {
                let held = self.remotes.entry(cluster.clone()).or_default();
                let key = ip_key(&pair);
                let ok = owns_entry(&held.owned(), &pair);
                let was = held.ips.insert(key.clone(), (pair.clone(), ok));
                if ok {
                    return vec![tag(RemoteEvent::IpUpsert(pair))];
                }
                held.count(RejectReason::AddressNotOwned, 1);
                tracing::warn!(remote = %cluster, entry = %key, "refused an ipcache entry for an address the remote does not own");
                match was {
                    Some((_, true)) => vec![tag(RemoteEvent::IpDelete(key))],
                    _ => Vec::new(),
                }
            }
            RemoteEvent::IpDelete(key) => {
                let held = self.remotes.entry(cluster.clone()).or_default();
                match held.ips.remove(&key) {
                    Some((_, true)) => vec![tag(RemoteEvent::IpDelete(key))],
                    _ => Vec::new(),
                }
            }
            RemoteEvent::ServiceUpsert(svc) => {
                let held = self.remotes.entry(cluster.clone()).or_default();
                let (sent, dropped) = filter_backends(&held.owned(), &svc);
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
                    .is_some_and(|h| h.nodes.values().any(|(_, a)| *a));
                let mut out = vec![tag(RemoteEvent::Drained)];
                if had_nodes {
                    out.extend(self.settle());
                }
                out
            }
            other => vec![tag(other)],
        }
    }

    fn remote_node_upsert(&mut self, cluster: &str, node: Node) -> Vec<MeshEvent> {
        let claims = Claims::of(&node);
        let held = self.remotes.entry(cluster.to_string()).or_default();
        let name = node.name.clone();
        let same_claims = held
            .nodes
            .get(&name)
            .is_some_and(|(old, _)| Claims::of(old) == claims);
        if same_claims {
            // Nothing claimed changed: keep the decision, pass the new value on if accepted.
            let Some(slot) = held.nodes.get_mut(&name) else {
                return Vec::new();
            };
            slot.0 = node.clone();
            return if slot.1 {
                vec![MeshEvent {
                    cluster: cluster.to_string(),
                    event: RemoteEvent::NodeUpsert(node),
                }]
            } else {
                Vec::new()
            };
        }
        let was_accepted = held.nodes.get(&name).is_some_and(|(_, a)| *a);
        // Decide on the new claims as if the node were new.
        held.nodes.insert(name.clone(), (node.clone(), false));
        let free = !claims.is_empty() && self.is_free(cluster, &claims);
        let mut out = Vec::new();
        let held = self.remotes.entry(cluster.to_string()).or_default();
        if free {
            if let Some(slot) = held.nodes.get_mut(&name) {
                slot.1 = true;
            }
            out.push(MeshEvent {
                cluster: cluster.to_string(),
                event: RemoteEvent::NodeUpsert(node),
            });
        } else {
            held.count(RejectReason::CidrConflict, 1);
            tracing::warn!(remote = %cluster, node = %name, "refused a remote node whose addresses are this cluster's or another remote's");
            if was_accepted {
                out.push(MeshEvent {
                    cluster: cluster.to_string(),
                    event: RemoteEvent::NodeDelete(name),
                });
            }
        }
        out.extend(self.settle_from(Some(cluster)));
        out
    }

    /// Whether `claims` (of a node of remote `cluster`) are free: none of ours, none of
    /// another remote's accepted nodes'.
    fn is_free(&self, cluster: &str, claims: &Claims) -> bool {
        if self.local.values().any(|c| c.conflicts(claims)) {
            return false;
        }
        self.remotes.iter().all(|(other, held)| {
            held.nodes.values().all(|(node, accepted)| {
                // A remote's own nodes may overlap each other (its own business).
                !*accepted || other == cluster || !Claims::of(node).conflicts(claims)
            })
        })
    }

    fn settle(&mut self) -> Vec<MeshEvent> {
        self.settle_from(None)
    }

    /// Revokes remote nodes that conflict with ours, accepts held ones that are free now, then
    /// re-checks the entries and services of every remote whose owned space changed (and of
    /// `changed`, whose owned space may have changed before this call).
    fn settle_from(&mut self, changed: Option<&str>) -> Vec<MeshEvent> {
        let before: BTreeMap<String, Claims> = self
            .remotes
            .iter()
            .map(|(n, h)| (n.clone(), h.owned()))
            .collect();
        let mut out = Vec::new();
        // Ours always win.
        let local: Vec<Claims> = self.local.values().cloned().collect();
        for (cluster, held) in &mut self.remotes {
            let mut revoked = 0;
            for (name, (node, accepted)) in &mut held.nodes {
                if *accepted && local.iter().any(|c| c.conflicts(&Claims::of(node))) {
                    *accepted = false;
                    revoked += 1;
                    out.push(MeshEvent {
                        cluster: cluster.clone(),
                        event: RemoteEvent::NodeDelete(name.clone()),
                    });
                }
            }
            held.count(RejectReason::CidrConflict, revoked);
        }
        // Held nodes that are free now.
        let waiting: Vec<(String, String)> = self
            .remotes
            .iter()
            .flat_map(|(c, h)| {
                h.nodes
                    .iter()
                    .filter(|(_, (_, a))| !*a)
                    .map(move |(n, _)| (c.clone(), n.clone()))
            })
            .collect();
        for (cluster, name) in waiting {
            let Some(node) = self
                .remotes
                .get(&cluster)
                .and_then(|h| h.nodes.get(&name))
                .map(|(n, _)| n.clone())
            else {
                continue;
            };
            let claims = Claims::of(&node);
            if claims.is_empty() || !self.is_free(&cluster, &claims) {
                continue;
            }
            if let Some(slot) = self
                .remotes
                .get_mut(&cluster)
                .and_then(|h| h.nodes.get_mut(&name))
            {
                slot.1 = true;
            }
            out.push(MeshEvent {
                cluster,
                event: RemoteEvent::NodeUpsert(node),
            });
        }
        // Entries and services of remotes whose owned space changed.
        let names: Vec<String> = self.remotes.keys().cloned().collect();
        for cluster in names {
            let Some(held) = self.remotes.get_mut(&cluster) else {
                continue;
            };
            let owned = held.owned();
            if before.get(&cluster) == Some(&owned) && changed != Some(cluster.as_str()) {
                continue;
            }
            let tag = |event| MeshEvent {
                cluster: cluster.clone(),
                event,
            };
            let mut newly_refused = 0;
            for (key, (pair, passed)) in &mut held.ips {
                let ok = owns_entry(&owned, pair);
                if ok == *passed {
                    continue;
                }
                *passed = ok;
                if ok {
                    out.push(tag(RemoteEvent::IpUpsert(pair.clone())));
                } else {
                    newly_refused += 1;
                    out.push(tag(RemoteEvent::IpDelete(key.clone())));
                }
            }
            held.count(RejectReason::AddressNotOwned, newly_refused);
            let mut dropped_more = 0;
            for (received, sent) in held.services.values_mut() {
                let (now, dropped) = filter_backends(&owned, received);
                if now != *sent {
                    dropped_more += dropped
                        .saturating_sub((received.backends.len() - sent.backends.len()) as u64);
                    *sent = now.clone();
                    out.push(tag(RemoteEvent::ServiceUpsert(now)));
                }
            }
            held.count(RejectReason::BackendNotOwned, dropped_more);
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
                RemoteEvent::IpUpsert(pair("10.2.0.5", "192.168.2.1"))
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
            RemoteEvent::IpUpsert(pair("10.2.0.6", "192.168.2.1")),
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
                g.remote(ev("c2", RemoteEvent::IpUpsert(pair(ip, host))))
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
                RemoteEvent::IpUpsert(pair("10.2.0.9", "192.168.1.1"))
            ))
            .is_empty()
        );
        assert_eq!(refused(&g, "c2", "address-not-owned"), 4);
        // c3 never lost anything.
        assert!(g.refused().get("c3").is_none());
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
            RemoteEvent::IpUpsert(pair("10.1.0.5", "192.168.2.1")),
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
        let out = g.remote(ev("c2", RemoteEvent::ServiceUpsert(svc)));
        assert_eq!(kinds(&out), ["c2 svc+ 10.2.0.5,192.168.2.1"]);
        assert_eq!(refused(&g, "c2", "backend-not-owned"), 2);
        // The node goes: its backends go too.
        let out = g.remote(ev("c2", RemoteEvent::NodeDelete("n1".into())));
        assert_eq!(kinds(&out), ["c2 node- n1", "c2 svc+ "]);
        assert_eq!(refused(&g, "c2", "backend-not-owned"), 4);
    }
}
