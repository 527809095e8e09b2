//! WireGuard peers: which nodes this node encrypts to, and how (issue 13).
//!
//! Every other node the core knows, of this cluster or of a remote one, that publishes a key in
//! its `WireguardPubKey` is a peer:
//! - endpoint: the node's `InternalIP` on [`WIREGUARD_PORT`];
//! - allowed IPs: in tunnel mode the node's underlay address /32 (the VXLAN packets to it are
//!   what goes through WireGuard, as Cilium does since 1.15); in native mode the node's pod
//!   CIDR (pod packets are routed into the device), never one /32 per pod. A native-mode node
//!   without a pod CIDR has nothing to route to and is no peer.
//!
//! The set is derived from the nodes the core holds, so peers follow the nodes' lifecycle:
//! a remote cluster that disconnects keeps its nodes (and so its peers) until it has synced
//! again and drained the nodes that vanished meanwhile; a node listed again with the same key
//! changes nothing; only the remote's `Drained` (its configuration removed) takes all its peers
//! away at once (see [`super::remotes`]). A key that does not decode to 32 bytes is no key. If
//! two nodes publish the same key, the first in (cluster, node) order is the peer: a WireGuard
//! device identifies peers by key, so the second cannot be one too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use plexus_datapath::{Prefix, RoutingMode};
use plexus_model::node::Node;
use plexus_wireguard::WIREGUARD_PORT;
use plexus_wireguard::uapi::Key;

use super::ipcache::underlay;

/// One WireGuard peer the node wants on its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireguardPeer {
    /// The peer's public key.
    pub public_key: Key,
    /// The node's cluster.
    pub cluster: String,
    /// The node's name.
    pub node: String,
    /// The node's underlay address.
    pub node_ip: Ipv4Addr,
    /// Where its WireGuard listens.
    pub endpoint: SocketAddrV4,
    /// What is routed to it and accepted from it.
    pub allowed_ips: Vec<Prefix>,
}

/// The peers by public key.
pub type WireguardPeers = BTreeMap<Key, WireguardPeer>;

/// The key a node publishes, if it publishes a valid one.
pub fn public_key(node: &Node) -> Option<Key> {
    if node.wireguard_pub_key.is_empty() {
        return None;
    }
    node.wireguard_pub_key
        .parse::<Key>()
        .ok()
        .filter(|k| !k.is_zero())
}

/// The peers this node wants, from every node it knows by (cluster, name); `is_self` says
/// which one is this node.
pub fn desired_peers(
    routing: RoutingMode,
    nodes: &BTreeMap<(String, String), Node>,
    is_self: impl Fn(&str, &str) -> bool,
) -> WireguardPeers {
    let mut out = WireguardPeers::new();
    for ((cluster, name), node) in nodes {
        if is_self(cluster, name) {
            continue;
        }
        let (Some(key), Some(node_ip)) = (public_key(node), underlay(node)) else {
            continue;
        };
        let allowed_ips = match routing {
            RoutingMode::Tunnel => vec![Prefix::host(node_ip)],
            RoutingMode::Native => {
                let Some(cidr) = pod_cidr(node) else {
                    continue;
                };
                vec![cidr]
            }
        };
        out.entry(key).or_insert_with(|| WireguardPeer {
            public_key: key,
            cluster: cluster.clone(),
            node: name.clone(),
            node_ip,
            endpoint: SocketAddrV4::new(node_ip, WIREGUARD_PORT),
            allowed_ips,
        });
    }
    out
}

/// A node's IPv4 pod CIDR.
fn pod_cidr(node: &Node) -> Option<Prefix> {
    let cidr = node.ipv4_alloc_cidr.as_ref()?;
    let IpAddr::V4(addr) = cidr.addr else {
        return None;
    };
    Prefix::new(addr, cidr.prefix_len).ok()
}
