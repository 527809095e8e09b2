//! The ipcache: which identity an address has, and which node it sits behind.
//!
//! Several sources contribute entries for the same prefixes: this node's own endpoints, the
//! cluster's kvstore (the other nodes' endpoints), each remote cluster, and the nodes
//! themselves (their pod CIDRs behind their underlay address, their own addresses as
//! `remote-node`). [`IpCache`] keeps every source's view and exposes one effective entry per
//! prefix, chosen by source precedence (local endpoint > cluster > node > remote clusters, then
//! by name so the choice is stable). Every call returns the change to the effective view, if
//! any, which the agent applies to the datapath: the cache is a pure state machine.
//!
//! [`from_pair`] and [`from_node`] turn wire values (`IPIdentityPair`, `Node`) into entries.
//!
//! Memory: a prefix holds its sources' entries in a small sorted vector (nearly every prefix
//! has one source, so one small allocation, not a tree node per prefix), and a node's or a
//! remote cluster's name is shared ([`Arc<str>`]) by every entry it contributes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use plexus_datapath::{IDENTITY_HOST, IDENTITY_WORLD, IpcacheValue, Prefix};
use plexus_model::identity::ReservedIdentity;
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::node::{Node, NodeAddressType};

/// Who contributed an entry. The order is the precedence: earlier wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// An endpoint of this node.
    LocalEndpoint,
    /// The cluster's own kvstore (other nodes' endpoints).
    Cluster,
    /// A node (its pod CIDR, its address), by `<cluster>/<node>`.
    Node(Arc<str>),
    /// A remote cluster, by name.
    Remote(Arc<str>),
    /// An address a DNS proxy learned for `toFQDNs` (a host prefix), with the node-local
    /// identity of its selector set. Under every source that knows the address as part of the
    /// mesh, above the prefixes policies name.
    Fqdn,
    /// A prefix a network policy names (`toCIDR` and friends), with its node-local CIDR
    /// identity. Weakest: any other source's entry for the same prefix wins.
    PolicyCidr,
}

/// A change to the effective view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The prefix now maps to this value.
    Upsert(Prefix, IpcacheValue),
    /// The prefix is gone.
    Delete(Prefix),
}

/// The entries of one prefix, sorted by source (strongest first), at most one per source.
type Contributions = Vec<(Source, IpcacheValue)>;

/// Every source's entries and the effective view.
#[derive(Clone, Debug, Default)]
pub struct IpCache {
    entries: BTreeMap<Prefix, Contributions>,
}

fn find(c: &Contributions, source: &Source) -> Result<usize, usize> {
    c.binary_search_by(|(s, _)| s.cmp(source))
}

impl IpCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn effective(&self, prefix: &Prefix) -> Option<&IpcacheValue> {
        self.entries
            .get(prefix)
            .and_then(|c| c.first())
            .map(|(_, v)| v)
    }

    /// Sets `source`'s entry for `prefix`.
    pub fn upsert(
        &mut self,
        prefix: Prefix,
        source: Source,
        value: IpcacheValue,
    ) -> Option<Change> {
        let before = self.effective(&prefix).cloned();
        let c = self.entries.entry(prefix).or_default();
        match find(c, &source) {
            Ok(i) => c[i].1 = value,
            Err(i) => {
                // Room for exactly one more: most prefixes only ever have one source.
                c.reserve_exact(1);
                c.insert(i, (source, value));
            }
        }
        let after = self.effective(&prefix).cloned();
        (before != after).then(|| Change::Upsert(prefix, after.unwrap_or(value)))
    }

    /// Removes `source`'s entry for `prefix`.
    pub fn delete(&mut self, prefix: Prefix, source: &Source) -> Option<Change> {
        let before = self.effective(&prefix).cloned();
        let c = self.entries.get_mut(&prefix)?;
        let i = find(c, source).ok()?;
        c.remove(i);
        if c.is_empty() {
            self.entries.remove(&prefix);
        } else {
            c.shrink_to_fit();
        }
        let after = self.effective(&prefix).cloned();
        match (before, after) {
            (b, a) if b == a => None,
            (_, Some(a)) => Some(Change::Upsert(prefix, a)),
            (_, None) => Some(Change::Delete(prefix)),
        }
    }

    /// Removes everything `source` contributed (a remote cluster drained).
    pub fn remove_source(&mut self, source: &Source) -> Vec<Change> {
        self.prefixes_of(source)
            .into_iter()
            .filter_map(|p| self.delete(p, source))
            .collect()
    }

    /// The effective entry of `prefix`.
    pub fn get(&self, prefix: &Prefix) -> Option<IpcacheValue> {
        self.effective(prefix).cloned()
    }

    /// Every effective entry with the source that won.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, &Source, IpcacheValue)> + '_ {
        self.entries
            .iter()
            .filter_map(|(p, c)| c.first().map(|(s, v)| (*p, s, *v)))
    }

    /// `source`'s own entry for `prefix`, whether it wins or not.
    pub fn value_of(&self, prefix: Prefix, source: &Source) -> Option<IpcacheValue> {
        let c = self.entries.get(&prefix)?;
        find(c, source).ok().map(|i| c[i].1)
    }

    /// The prefixes `source` contributes to (a scan: for rare events such as a remote's
    /// cluster id becoming known).
    pub fn prefixes_of(&self, source: &Source) -> Vec<Prefix> {
        self.entries
            .iter()
            .filter(|(_, c)| find(c, source).is_ok())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Number of effective entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

/// An ipcache entry from the wire (`IPIdentityPair`) of cluster `cluster_id`; `None` for IPv6.
/// Identities from remote clusters arrive normalized (a remote `host` is a `remote-node`).
pub fn from_pair(pair: &IpIdentityPair, cluster_id: u16) -> Option<(Prefix, IpcacheValue)> {
    let ip = v4(pair.ip)?;
    let len = match &pair.mask {
        None => 32,
        Some(mask) => plexus_model::cidr::prefix_len_from_mask(pair.ip, mask).ok()?,
    };
    let prefix = Prefix::new(ip, len).ok()?;
    let tunnel_endpoint = pair
        .host_ip
        .parse::<Ipv4Addr>()
        .ok()
        .filter(|ip| !ip.is_unspecified());
    Some((
        prefix,
        IpcacheValue {
            identity: pair.id,
            tunnel_endpoint,
            cluster_id,
        },
    ))
}

/// The entries a node contributes: its pod CIDR behind its underlay address (identity
/// `world` until a pod's own entry says better), and its underlay address as `remote-node`
/// (`host` when `is_self`).
pub fn from_node(node: &Node, cluster_id: u16, is_self: bool) -> Vec<(Prefix, IpcacheValue)> {
    let underlay = node
        .ip_addresses
        .iter()
        .find(|a| a.kind == NodeAddressType::InternalIp)
        .and_then(|a| v4(a.ip));
    let mut out = Vec::new();
    if let Some(ip) = underlay {
        let identity = if is_self {
            IDENTITY_HOST
        } else {
            ReservedIdentity::RemoteNode.id().0
        };
        if let Ok(p) = Prefix::new(ip, 32) {
            out.push((
                p,
                IpcacheValue {
                    identity,
                    tunnel_endpoint: None,
                    cluster_id,
                },
            ));
        }
    }
    if let Some(cidr) = &node.ipv4_alloc_cidr
        && let Some(addr) = v4(cidr.addr)
        && let Ok(p) = Prefix::new(addr, cidr.prefix_len)
        && !is_self
    {
        out.push((
            p,
            IpcacheValue {
                identity: IDENTITY_WORLD,
                tunnel_endpoint: underlay,
                cluster_id,
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(identity: u32, tunnel: Option<&str>) -> IpcacheValue {
        IpcacheValue {
            identity,
            tunnel_endpoint: tunnel.map(|t| t.parse().unwrap()),
            cluster_id: 1,
        }
    }

    #[test]
    fn precedence_and_changes() {
        let mut c = IpCache::new();
        let p: Prefix = "10.1.0.5/32".parse().unwrap();
        let remote = Source::Remote("c2".into());
        assert_eq!(
            c.upsert(p, remote.clone(), v(70000, Some("192.168.0.2"))),
            Some(Change::Upsert(p, v(70000, Some("192.168.0.2"))))
        );
        // A local endpoint wins; the remote's entry stays underneath.
        assert_eq!(
            c.upsert(p, Source::LocalEndpoint, v(300, None)),
            Some(Change::Upsert(p, v(300, None)))
        );
        assert_eq!(
            c.upsert(p, remote.clone(), v(70001, Some("192.168.0.2"))),
            None
        );
        assert_eq!(
            c.delete(p, &Source::LocalEndpoint),
            Some(Change::Upsert(p, v(70001, Some("192.168.0.2"))))
        );
        assert_eq!(c.remove_source(&remote), vec![Change::Delete(p)]);
        assert!(c.is_empty());
        assert_eq!(c.delete(p, &remote), None);
    }

    #[test]
    fn wire_values_become_entries() {
        let pair: IpIdentityPair = serde_json::from_str(
            r#"{"IP":"10.2.1.7","Mask":null,"HostIP":"192.168.2.1","ID":131328,"Key":0,"Metadata":""}"#,
        )
        .unwrap();
        let (p, val) = from_pair(&pair, 2).unwrap();
        assert_eq!(p.to_string(), "10.2.1.7/32");
        assert_eq!(val.tunnel_endpoint, Some("192.168.2.1".parse().unwrap()));
        let node: Node = serde_json::from_str(
            r#"{"Name":"n1","Cluster":"c2","IPAddresses":[{"Type":"InternalIP","IP":"192.168.2.1"}],"IPv4AllocCIDR":{"IP":"10.2.1.0","Mask":"////AA=="},"ClusterID":2}"#,
        )
        .unwrap();
        let entries = from_node(&node, 2, false);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1.identity, 6, "remote-node");
        assert_eq!(entries[1].0.to_string(), "10.2.1.0/24");
        assert_eq!(
            entries[1].1.tunnel_endpoint,
            Some("192.168.2.1".parse().unwrap())
        );
        let own = from_node(&node, 2, true);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].1.identity, 1, "host");
    }
}
