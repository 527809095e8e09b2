//! Where ipcache entries come from, which one wins, and the routes that follow nodes.
//!
//! Sources, strongest first (see [`plexus_ipcache::Source`]): this node's endpoints, this
//! cluster's kvstore (other nodes' endpoints), nodes (their pod CIDR behind their underlay
//! address, their address as `remote-node`), remote clusters, the addresses the DNS proxy
//! learned for `toFQDNs`, and last the CIDRs policies name. Every source's entries are kept; the effective entry of a prefix is the strongest
//! source's, so withdrawing a strong entry uncovers the next one without a gap.
//!
//! In native routing mode every other node's pod CIDR is routed through its underlay address,
//! or, with WireGuard on, into the WireGuard device (nodes that publish a key; every node in
//! strict mode); [`RouteChange`]s say what to add, change or remove. In every mode, the DNS
//! proxy's forward routes (every other node's pod CIDR via its underlay address) are output
//! apart: the shell installs them in a table that only the proxy's forwarded queries look up,
//! since in tunnel mode the node has no route of its own to other nodes' pods, and with
//! WireGuard the receiving node would drop the node's own address coming out of the tunnel.
//!
//! Memory: a keyed source (the cluster's kvstore, each remote) may hold hundreds of thousands
//! of entries, so each is held once and compactly: per source, key -> prefix and pod, the key
//! as a number when it is an IPv4 address (as Cilium writes them), the source's name and the
//! pods' namespaces shared ([`Arc<str>`]) rather than copied per entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use plexus_datapath::{IpcacheValue, Prefix, RoutingMode};
use plexus_ipcache::{Change, IpCache, Source, from_node, from_pair};
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::node::{Node, NodeAddressType};

use super::CoreConfig;

/// A change to the routes towards other nodes' pod CIDRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteChange {
    /// Route `dst` through `via` (add or replace).
    Upsert {
        /// The node's pod CIDR.
        dst: Prefix,
        /// The node's underlay address.
        via: Ipv4Addr,
    },
    /// Route `dst` into the WireGuard device (add or replace): with WireGuard on, the pod
    /// CIDR of a node that publishes a key (or of every node, in strict mode, so that nothing
    /// reaches a node in the clear before its key is known).
    Encrypted {
        /// The node's pod CIDR.
        dst: Prefix,
    },
    /// Remove the route to `dst`.
    Delete(Prefix),
}

/// Where a route to a node's pod CIDR leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NextHop {
    /// The node's underlay address.
    Via(Ipv4Addr),
    /// The WireGuard device.
    Wireguard,
}

/// A node's underlay (InternalIP) IPv4 address.
pub fn underlay(node: &Node) -> Option<Ipv4Addr> {
    node.ip_addresses
        .iter()
        .find(|a| a.kind == NodeAddressType::InternalIp)
        .and_then(|a| match a.ip {
            std::net::IpAddr::V4(v) => Some(v),
            std::net::IpAddr::V6(_) => None,
        })
}

/// The key of an entry of a keyed source, relative to its prefix: `<ip>` or `<ip>/<len>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum EntryKey {
    /// An IPv4 address exactly as it prints (nearly every key).
    V4(u32),
    /// Anything else, as it is.
    Text(Box<str>),
}

impl EntryKey {
    fn of(key: &str) -> Self {
        match key.parse::<Ipv4Addr>() {
            Ok(ip) if ip.to_string() == key => Self::V4(u32::from(ip)),
            _ => Self::Text(key.into()),
        }
    }
}

/// What one entry of a keyed source contributes.
#[derive(Clone, Debug)]
struct Keyed {
    prefix: Prefix,
    /// The pod (namespace, name) the entry names, for flows.
    pod: Option<(Arc<str>, Arc<str>)>,
}

/// The ipcache's sources, the nodes known, and the desired routes.
#[derive(Debug)]
pub struct IpcacheState {
    cluster: String,
    cluster_id: u16,
    node_name: String,
    node_ip: Ipv4Addr,
    routing: RoutingMode,
    cache: IpCache,
    /// The entries of each keyed source by key: their prefix (for deletions by key) and pod.
    keyed: HashMap<Source, HashMap<EntryKey, Keyed>>,
    /// The pods' namespaces, each held once.
    namespaces: HashSet<Arc<str>>,
    /// Nodes by (cluster, name).
    nodes: BTreeMap<(String, String), Node>,
    /// Desired routes: node pod CIDR -> next hop, by (cluster, node).
    routes: BTreeMap<(String, String), (Prefix, NextHop)>,
    /// WireGuard and its strict mode.
    encryption: plexus_datapath::Encryption,
    /// The prefixes policies name, with their node-local identities.
    policy_cidrs: BTreeMap<Prefix, u32>,
    pending: Vec<Change>,
    pending_routes: Vec<RouteChange>,
    /// The DNS proxy's forward routes (every other node's pod CIDR via its underlay address,
    /// in every mode), by (cluster, node).
    proxy_routes: BTreeMap<(String, String), (Prefix, NextHop)>,
    pending_proxy_routes: Vec<RouteChange>,
}

/// Sets the route of node `key` in `routes` (none: removes it) and records the change.
fn set_route(
    routes: &mut BTreeMap<(String, String), (Prefix, NextHop)>,
    pending: &mut Vec<RouteChange>,
    key: (String, String),
    route: Option<(Prefix, NextHop)>,
) {
    let old = match route {
        Some(r) => routes.insert(key, r),
        None => routes.remove(&key),
    };
    if old == route {
        return;
    }
    if let Some((old_dst, _)) = old
        && route.is_none_or(|(dst, _)| dst != old_dst)
        && !routes.values().any(|(dst, _)| *dst == old_dst)
    {
        pending.push(RouteChange::Delete(old_dst));
    }
    match route {
        Some((dst, NextHop::Via(via))) => pending.push(RouteChange::Upsert { dst, via }),
        Some((dst, NextHop::Wireguard)) => pending.push(RouteChange::Encrypted { dst }),
        None => {}
    }
}

impl IpcacheState {
    /// Nothing known yet.
    pub fn new(config: &CoreConfig) -> Self {
        Self {
            cluster: config.cluster.clone(),
            cluster_id: config.cluster_id,
            node_name: config.node_name.clone(),
            node_ip: config.node_ip,
            routing: config.routing,
            cache: IpCache::new(),
            keyed: HashMap::new(),
            namespaces: HashSet::new(),
            nodes: BTreeMap::new(),
            routes: BTreeMap::new(),
            encryption: config.encryption,
            policy_cidrs: BTreeMap::new(),
            pending: Vec::new(),
            pending_routes: Vec::new(),
            proxy_routes: BTreeMap::new(),
            pending_proxy_routes: Vec::new(),
        }
    }

    fn push(&mut self, change: Option<Change>) {
        self.pending.extend(change);
    }

    /// Takes the changes made since the last call.
    pub fn take_changes(&mut self) -> (Vec<Change>, Vec<RouteChange>) {
        (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.pending_routes),
        )
    }

    /// Sets (or, with `None`, removes) this node's endpoint entry for `ip`.
    pub fn local_endpoint(&mut self, ip: Ipv4Addr, identity: Option<u32>) {
        let Ok(prefix) = Prefix::new(ip, 32) else {
            return;
        };
        let change = match identity {
            Some(identity) => self.cache.upsert(
                prefix,
                Source::LocalEndpoint,
                IpcacheValue {
                    identity,
                    tunnel_endpoint: None,
                    cluster_id: self.cluster_id,
                },
            ),
            None => self.cache.delete(prefix, &Source::LocalEndpoint),
        };
        self.push(change);
    }

    /// An entry of `source` under `key` (an ip -> identity entry of the cluster or a remote).
    pub(crate) fn keyed_upsert(
        &mut self,
        source: Source,
        key: &str,
        pair: &IpIdentityPair,
        cluster_id: u16,
    ) {
        let Some((prefix, value)) = from_pair(pair, cluster_id) else {
            return;
        };
        // The source as held already, so that its entries share its name.
        let source = match self.keyed.get_key_value(&source) {
            Some((held, _)) => held.clone(),
            None => source,
        };
        let key = EntryKey::of(key);
        let entries = self.keyed.entry(source.clone()).or_default();
        let old = entries.get(&key);
        let pod = match (
            &old.and_then(|o| o.pod.as_ref()),
            pair.k8s_pod_name.is_empty(),
        ) {
            (_, true) => None,
            // Unchanged (a re-list): keep what is held rather than allocate it again.
            (Some((ns, name)), false)
                if **ns == *pair.k8s_namespace && **name == *pair.k8s_pod_name =>
            {
                Some((ns.clone(), name.clone()))
            }
            (_, false) => {
                let ns = match self.namespaces.get(pair.k8s_namespace.as_str()) {
                    Some(ns) => ns.clone(),
                    None => {
                        let ns: Arc<str> = pair.k8s_namespace.as_str().into();
                        self.namespaces.insert(ns.clone());
                        ns
                    }
                };
                Some((ns, pair.k8s_pod_name.as_str().into()))
            }
        };
        let old = entries.insert(key, Keyed { prefix, pod });
        if let Some(old) = old.filter(|o| o.prefix != prefix) {
            let change = self.cache.delete(old.prefix, &source);
            self.push(change);
        }
        let change = self.cache.upsert(prefix, source, value);
        self.push(change);
    }

    /// The entry of `source` under `key` is gone.
    pub(crate) fn keyed_delete(&mut self, source: &Source, key: &str) {
        let Some(entries) = self.keyed.get_mut(source) else {
            return;
        };
        let Some(old) = entries.remove(&EntryKey::of(key)) else {
            return;
        };
        if entries.is_empty() {
            self.keyed.remove(source);
            self.forget_unused_namespaces();
        }
        let change = self.cache.delete(old.prefix, source);
        self.push(change);
    }

    fn forget_unused_namespaces(&mut self) {
        self.namespaces.retain(|ns| Arc::strong_count(ns) > 1);
    }

    /// An ip -> identity entry of this cluster (another node's endpoint; this node's own are
    /// installed from the endpoint manager).
    pub fn cluster_ip_upsert(&mut self, key: &str, pair: &IpIdentityPair) {
        if pair.host_ip == self.node_ip.to_string() {
            return;
        }
        self.keyed_upsert(Source::Cluster, key, pair, self.cluster_id);
    }

    /// An ip -> identity entry of this cluster is gone.
    pub fn cluster_ip_delete(&mut self, key: &str) {
        self.keyed_delete(&Source::Cluster, key);
    }

    /// A node of `cluster` (this one or a remote, whose id is `cluster_id`) appeared or
    /// changed.
    pub fn node_upsert(&mut self, cluster: &str, cluster_id: u16, node: &Node) {
        let is_self = cluster == self.cluster && node.name == self.node_name;
        let source = Source::Node(format!("{cluster}/{}", node.name).into());
        let entries = from_node(node, cluster_id, is_self);
        let key = (cluster.to_string(), node.name.clone());
        // What the node's previous version contributed (derived, not scanned for).
        let before: Vec<Prefix> = self
            .nodes
            .get(&key)
            .map(|old| {
                from_node(old, cluster_id, is_self)
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect()
            })
            .unwrap_or_default();
        for p in before {
            if !entries.iter().any(|(q, _)| *q == p) {
                let change = self.cache.delete(p, &source);
                self.push(change);
            }
        }
        for (p, v) in entries {
            let change = self.cache.upsert(p, source.clone(), v);
            self.push(change);
        }
        self.nodes.insert(key.clone(), node.clone());
        let native = self.routing == RoutingMode::Native;
        let target = (!is_self)
            .then(|| {
                let cidr = node.ipv4_alloc_cidr.as_ref()?;
                let std::net::IpAddr::V4(addr) = cidr.addr else {
                    return None;
                };
                let dst = Prefix::new(addr, cidr.prefix_len).ok()?;
                let via = underlay(node)?;
                Some((dst, via))
            })
            .flatten();
        let encrypted = self.encryption.enabled
            && (self.encryption.strict || super::encryption::public_key(node).is_some());
        let route = target.filter(|_| native).map(|(dst, via)| {
            let hop = if encrypted {
                NextHop::Wireguard
            } else {
                NextHop::Via(via)
            };
            (dst, hop)
        });
        set_route(
            &mut self.routes,
            &mut self.pending_routes,
            key.clone(),
            route,
        );
        let proxy = target.map(|(dst, via)| (dst, NextHop::Via(via)));
        set_route(
            &mut self.proxy_routes,
            &mut self.pending_proxy_routes,
            key,
            proxy,
        );
    }

    /// A node of `cluster` is gone.
    pub fn node_delete(&mut self, cluster: &str, name: &str) {
        let source = Source::Node(format!("{cluster}/{name}").into());
        let changes = self.cache.remove_source(&source);
        self.pending.extend(changes);
        let key = (cluster.to_string(), name.to_string());
        self.nodes.remove(&key);
        set_route(
            &mut self.routes,
            &mut self.pending_routes,
            key.clone(),
            None,
        );
        set_route(
            &mut self.proxy_routes,
            &mut self.pending_proxy_routes,
            key,
            None,
        );
    }

    /// Takes the changes to the DNS proxy's forward routes made since the last call.
    pub fn take_proxy_routes(&mut self) -> Vec<RouteChange> {
        std::mem::take(&mut self.pending_proxy_routes)
    }

    /// Names of the nodes of `cluster`.
    pub fn node_names(&self, cluster: &str) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|(c, _)| c == cluster)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Stamps every entry `source` contributes with `cluster_id` (a remote's id became known
    /// after some of its entries).
    pub(crate) fn restamp(&mut self, source: &Source, cluster_id: u16) {
        for p in self.cache.prefixes_of(source) {
            if let Some(mut v) = self.cache.value_of(p, source)
                && v.cluster_id != cluster_id
            {
                v.cluster_id = cluster_id;
                let change = self.cache.upsert(p, source.clone(), v);
                self.push(change);
            }
        }
    }

    /// Removes everything `source` contributed, and forgets its keys.
    pub(crate) fn remove_source(&mut self, source: &Source) {
        self.keyed.remove(source);
        self.forget_unused_namespaces();
        let changes = self.cache.remove_source(source);
        self.pending.extend(changes);
    }

    /// Sets the prefixes network policies name, each with its node-local CIDR identity: the
    /// weakest source, so that only addresses outside the mesh carry them.
    pub fn set_policy_cidrs(&mut self, cidrs: BTreeMap<Prefix, u32>) {
        let gone: Vec<Prefix> = self
            .policy_cidrs
            .keys()
            .filter(|p| !cidrs.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            let change = self.cache.delete(p, &Source::PolicyCidr);
            self.push(change);
        }
        for (p, id) in &cidrs {
            if self.policy_cidrs.get(p) != Some(id) {
                let value = IpcacheValue {
                    identity: *id,
                    tunnel_endpoint: None,
                    cluster_id: 0,
                };
                let change = self.cache.upsert(*p, Source::PolicyCidr, value);
                self.push(change);
            }
        }
        self.policy_cidrs = cidrs;
    }

    /// An address a DNS proxy learned gets (`Some`) or loses (`None`) the identity of its
    /// `toFQDNs` selector set (IPv6 addresses are not programmed: the datapath is IPv4).
    pub fn fqdn_address(&mut self, ip: std::net::IpAddr, identity: Option<u32>) {
        let std::net::IpAddr::V4(v4) = ip else {
            return;
        };
        let Ok(prefix) = Prefix::new(v4, 32) else {
            return;
        };
        let change = match identity {
            Some(identity) => self.cache.upsert(
                prefix,
                Source::Fqdn,
                IpcacheValue {
                    identity,
                    tunnel_endpoint: None,
                    cluster_id: 0,
                },
            ),
            None => self.cache.delete(prefix, &Source::Fqdn),
        };
        self.push(change);
    }

    /// The effective entry of the longest prefix holding `ip`, as the datapath's LPM lookup
    /// finds it.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<IpcacheValue> {
        (0..=32u8)
            .rev()
            .find_map(|len| self.cache.get(&Prefix::new(ip, len).ok()?))
    }

    /// The effective entries.
    pub fn effective(&self) -> BTreeMap<Prefix, IpcacheValue> {
        self.cache.iter().map(|(p, _, v)| (p, v)).collect()
    }

    /// The pods the entries of this cluster's and remote clusters' kvstores name: prefix,
    /// namespace, pod name (this node's own pods are the core's endpoints).
    pub fn pods(&self) -> impl Iterator<Item = (Prefix, &str, &str)> + '_ {
        self.shared_pods().map(|(p, ns, pod)| (p, &**ns, &**pod))
    }

    /// Like [`IpcacheState::pods`], with the names as held (a copy shares them).
    pub fn shared_pods(&self) -> impl Iterator<Item = (Prefix, &Arc<str>, &Arc<str>)> + '_ {
        self.keyed
            .values()
            .flat_map(HashMap::values)
            .filter_map(|k| k.pod.as_ref().map(|(ns, pod)| (k.prefix, ns, pod)))
    }

    /// How many entries the keyed sources (the cluster's kvstore, remotes) hold, and how many
    /// distinct pod namespaces they share: what a drained remote must leave nothing of.
    pub fn keyed_len(&self) -> (usize, usize) {
        (
            self.keyed.values().map(HashMap::len).sum(),
            self.namespaces.len(),
        )
    }

    /// Every node known, by (cluster, name).
    pub fn nodes(&self) -> &BTreeMap<(String, String), Node> {
        &self.nodes
    }

    /// The desired routes through an underlay address: pod CIDR -> underlay address.
    pub fn routes(&self) -> BTreeMap<Prefix, Ipv4Addr> {
        self.routes
            .values()
            .filter_map(|(dst, hop)| match hop {
                NextHop::Via(via) => Some((*dst, *via)),
                NextHop::Wireguard => None,
            })
            .collect()
    }

    /// The desired routes into the WireGuard device (pod CIDRs).
    pub fn encrypted_routes(&self) -> Vec<Prefix> {
        self.routes
            .values()
            .filter(|(_, hop)| *hop == NextHop::Wireguard)
            .map(|(dst, _)| *dst)
            .collect()
    }

    /// Whether `(cluster, name)` is this node.
    pub fn is_self(&self, cluster: &str, name: &str) -> bool {
        cluster == self.cluster && name == self.node_name
    }
}
