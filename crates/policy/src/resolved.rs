//! The resolved policy of one endpoint, and its compact form for an eBPF policy map.
//!
//! [`EndpointPolicy`] lists allow and deny entries (direction, peer, protocol, port range) in a
//! deterministic order, plus whether each direction is enforced (default deny). The verdict it
//! stands for ([`EndpointPolicy::verdict`]) is Cilium's: a direction that no rule enforces
//! allows everything; otherwise a matching deny entry drops, else a matching allow entry
//! passes, else the packet is dropped.
//!
//! Prefix peers (`fromCIDR`, `toCIDRSet` ...) match only peers outside the mesh: traffic whose
//! source/destination identity is `world` (2, 9, 10) or a node-local CIDR identity, as in
//! Cilium, where a pod's IP inside a `toCIDR` prefix still carries the pod's identity.
//!
//! [`PolicyMap`] is the compact form: identity entries keyed
//! `(direction, identity, proto, port, port_prefix_len)` with identity 0 and proto 0 as
//! wildcards and port ranges split into aligned blocks (an LPM on the port, as Cilium's policy
//! map), and prefix entries keyed the same way with a prefix instead of an identity (an LPM on
//! the address). When an allow and a deny land on the same key, deny is kept.

use std::collections::BTreeMap;
use std::net::IpAddr;

use plexus_model::cidr::Cidr;
use plexus_model::identity::{NumericIdentity, ReservedIdentity};

use crate::port::{Proto, masked_ports};

/// Traffic direction, seen from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Towards the endpoint.
    Ingress,
    /// From the endpoint.
    Egress,
}

/// The other side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Any peer (identity 0 in the datapath).
    Any,
    /// One security identity.
    Identity(NumericIdentity),
    /// Addresses outside the mesh inside this prefix.
    Prefix(Cidr),
}

/// One allow or deny entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    /// Direction.
    pub direction: Direction,
    /// The peer.
    pub peer: Peer,
    /// Protocol; `None` is any.
    pub proto: Option<Proto>,
    /// Inclusive port range; `None` is every port.
    pub ports: Option<(u16, u16)>,
    /// Whether this entry denies.
    pub deny: bool,
}

/// A verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Pass.
    Allow,
    /// Drop.
    Deny,
}

/// The resolved policy of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Whether ingress is default-deny.
    pub ingress_enforced: bool,
    /// Whether egress is default-deny.
    pub egress_enforced: bool,
    /// Entries, sorted and deduplicated.
    pub entries: Vec<PolicyEntry>,
}

fn is_outside(id: NumericIdentity) -> bool {
    id.is_local()
        || [
            ReservedIdentity::World,
            ReservedIdentity::WorldIpv4,
            ReservedIdentity::WorldIpv6,
        ]
        .iter()
        .any(|r| r.id() == id)
}

impl PolicyEntry {
    /// Whether this entry covers a packet with the given peer, protocol and port.
    pub fn covers(
        &self,
        direction: Direction,
        peer: NumericIdentity,
        peer_ip: Option<IpAddr>,
        proto: Proto,
        port: u16,
    ) -> bool {
        let peer_ok = match self.peer {
            Peer::Any => true,
            Peer::Identity(id) => id == peer,
            Peer::Prefix(p) => is_outside(peer) && peer_ip.is_some_and(|ip| p.contains(ip)),
        };
        self.direction == direction
            && peer_ok
            && self.proto.is_none_or(|p| p == proto)
            && self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
    }
}

impl EndpointPolicy {
    /// Whether `direction` is enforced.
    pub fn enforced(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_enforced,
            Direction::Egress => self.egress_enforced,
        }
    }

    /// The verdict for one packet: deny entries first, then allow entries, then the default of
    /// the direction. `peer_ip` is needed only for prefix entries.
    pub fn verdict(
        &self,
        direction: Direction,
        peer: NumericIdentity,
        peer_ip: Option<IpAddr>,
        proto: Proto,
        port: u16,
    ) -> Verdict {
        let hits = |deny: bool| {
            self.entries
                .iter()
                .any(|e| e.deny == deny && e.covers(direction, peer, peer_ip, proto, port))
        };
        if hits(true) {
            Verdict::Deny
        } else if !self.enforced(direction) || hits(false) {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// The compact map form.
    pub fn to_map(&self) -> PolicyMap {
        let mut map = PolicyMap {
            ingress_enforced: self.ingress_enforced,
            egress_enforced: self.egress_enforced,
            ..PolicyMap::default()
        };
        for e in &self.entries {
            let proto = e.proto.map_or(0, Proto::number);
            let blocks = match e.ports {
                None => vec![(0, 0)],
                Some((lo, hi)) => masked_ports(lo, hi),
            };
            for (port, port_prefix_len) in blocks {
                match e.peer {
                    Peer::Prefix(prefix) => put(
                        &mut map.prefixes,
                        PrefixMapKey {
                            direction: e.direction,
                            prefix,
                            proto,
                            port,
                            port_prefix_len,
                        },
                        e.deny,
                    ),
                    Peer::Any | Peer::Identity(_) => put(
                        &mut map.identities,
                        MapKey {
                            direction: e.direction,
                            identity: match e.peer {
                                Peer::Identity(id) => id.0,
                                _ => 0,
                            },
                            proto,
                            port,
                            port_prefix_len,
                        },
                        e.deny,
                    ),
                }
            }
        }
        map
    }
}

fn put<K: Ord>(m: &mut BTreeMap<K, Verdict>, key: K, deny: bool) {
    let v = if deny { Verdict::Deny } else { Verdict::Allow };
    let slot = m.entry(key).or_insert(v);
    if deny {
        *slot = Verdict::Deny;
    }
}

/// Key of an identity entry of the compact map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapKey {
    /// Direction.
    pub direction: Direction,
    /// Peer identity; 0 is any.
    pub identity: u32,
    /// IP protocol number; 0 is any.
    pub proto: u8,
    /// First port of the block (0 with `port_prefix_len` 0: every port).
    pub port: u16,
    /// Number of leading port bits that must match (16: exactly `port`).
    pub port_prefix_len: u8,
}

/// Key of a prefix entry of the compact map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrefixMapKey {
    /// Direction.
    pub direction: Direction,
    /// Peer prefix (applies to peers outside the mesh only).
    pub prefix: Cidr,
    /// IP protocol number; 0 is any.
    pub proto: u8,
    /// First port of the block.
    pub port: u16,
    /// Number of leading port bits that must match.
    pub port_prefix_len: u8,
}

/// The compact form of an [`EndpointPolicy`] for eBPF maps. A lookup checks every key that
/// covers the packet (its identity and 0; its protocol and 0; the port blocks containing its
/// port) and applies deny before allow, as [`EndpointPolicy::verdict`] does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyMap {
    /// Whether ingress is default-deny.
    pub ingress_enforced: bool,
    /// Whether egress is default-deny.
    pub egress_enforced: bool,
    /// Identity entries.
    pub identities: BTreeMap<MapKey, Verdict>,
    /// Prefix entries.
    pub prefixes: BTreeMap<PrefixMapKey, Verdict>,
}
