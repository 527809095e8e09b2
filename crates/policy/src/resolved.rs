//! The resolved policy of one endpoint, and its compact form for an eBPF policy map.
//!
//! [`EndpointPolicy`] lists allow and deny entries (direction, peer, protocol, port range) in a
//! deterministic order, plus whether each direction is enforced (default deny). The verdict it
//! stands for ([`EndpointPolicy::verdict`]) is Cilium's: a direction that no rule enforces
//! allows everything; otherwise a matching deny entry drops, else a matching allow entry
//! passes, else the packet is dropped.
//!
//! Prefix peers (`fromCIDR`, `toCIDRSet` ...) match by address, whoever owns it: a pod of any
//! cluster, a node or an address outside the mesh. A packet is allowed when an allow entry
//! matches its peer's identity *or* its peer's address and no deny entry matches either.
//!
//! [`PolicyMap`] is the compact form: identity entries keyed
//! `(direction, identity, proto, port, port_prefix_len)` with identity 0 and proto 0 as
//! wildcards and port ranges split into aligned blocks (an LPM on the port, as Cilium's policy
//! map), and prefix entries keyed the same way with a prefix instead of an identity (an LPM on
//! the address). When an allow and a deny land on the same key, deny is kept.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use plexus_model::cidr::Cidr;
use plexus_model::identity::NumericIdentity;

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
    /// Every address inside this prefix, whoever owns it.
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
            Peer::Prefix(p) => peer_ip.is_some_and(|ip| p.contains(ip)),
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
    /// Peer prefix (matches the peer's address).
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

impl PolicyMap {
    /// Whether `direction` is enforced.
    pub fn enforced(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_enforced,
            Direction::Egress => self.egress_enforced,
        }
    }

    /// The verdict for one packet, by the lookups a datapath makes: for the peer identity and
    /// identity 0, the protocol and protocol 0, and every port prefix length 0..=16, the key
    /// with the port masked to that length; prefix entries containing the peer's address. Deny
    /// before allow, then the direction's default. Agrees with [`EndpointPolicy::verdict`].
    pub fn verdict(
        &self,
        direction: Direction,
        peer: NumericIdentity,
        peer_ip: Option<IpAddr>,
        proto: Proto,
        port: u16,
    ) -> Verdict {
        let mut allow = false;
        let mut deny = false;
        let mut note = |v: &Verdict| match v {
            Verdict::Allow => allow = true,
            Verdict::Deny => deny = true,
        };
        for identity in [peer.0, 0] {
            for proto in [proto.number(), 0] {
                for port_prefix_len in 0..=16u8 {
                    let mask = if port_prefix_len == 0 {
                        0
                    } else {
                        u16::MAX << (16 - port_prefix_len)
                    };
                    let key = MapKey {
                        direction,
                        identity,
                        proto,
                        port: port & mask,
                        port_prefix_len,
                    };
                    if let Some(v) = self.identities.get(&key) {
                        note(v);
                    }
                }
            }
        }
        if let Some(ip) = peer_ip {
            for (k, v) in &self.prefixes {
                let mask = if k.port_prefix_len == 0 {
                    0
                } else {
                    u16::MAX << (16 - k.port_prefix_len)
                };
                if k.direction == direction
                    && k.prefix.contains(ip)
                    && (k.proto == 0 || k.proto == proto.number())
                    && port & mask == k.port
                {
                    note(v);
                }
            }
        }
        if deny {
            Verdict::Deny
        } else if allow || !self.enforced(direction) {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Identity(id) => write!(f, "identity {id}"),
            Self::Prefix(p) => write!(f, "prefix {p}"),
        }
    }
}

impl fmt::Display for PolicyEntry {
    /// `ingress allow identity 65538 TCP 6379`, `egress deny any any 8000-8003`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.deny { "deny" } else { "allow" };
        let proto = self.proto.map_or("any".to_string(), |p| p.to_string());
        let ports = match self.ports {
            None => "all".to_string(),
            Some((lo, hi)) if lo == hi => lo.to_string(),
            Some((lo, hi)) => format!("{lo}-{hi}"),
        };
        write!(
            f,
            "{} {verdict} {} {proto} {ports}",
            self.direction, self.peer
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = PolicyEntry> {
        let peer = prop_oneof![
            Just(Peer::Any),
            (1u32..4).prop_map(|i| Peer::Identity(NumericIdentity(i))),
            (0u8..3).prop_map(|i| Peer::Prefix(format!("10.{i}.0.0/16").parse().unwrap())),
            Just(Peer::Prefix("10.0.0.0/8".parse().unwrap())),
        ];
        let proto = prop_oneof![Just(None), Just(Some(Proto::Tcp)), Just(Some(Proto::Udp))];
        let ports = prop_oneof![
            Just(None),
            (0u16..40, 0u16..40).prop_map(|(a, b)| Some((a.min(b), a.max(b)))),
            Just(Some((65_000, 65_535))),
        ];
        (
            prop_oneof![Just(Direction::Ingress), Just(Direction::Egress)],
            peer,
            proto,
            ports,
            any::<bool>(),
        )
            .prop_map(|(direction, peer, proto, ports, deny)| PolicyEntry {
                direction,
                peer,
                proto,
                ports,
                deny,
            })
    }

    proptest! {
        #[test]
        fn compact_map_agrees_with_entries(
            entries in prop::collection::vec(entry(), 0..12),
            ingress_enforced in any::<bool>(),
            egress_enforced in any::<bool>(),
            packets in prop::collection::vec(
                (any::<bool>(), 0u32..5, 0u8..4, any::<bool>(), 0u16..50),
                1..40,
            ),
        ) {
            let policy = EndpointPolicy { ingress_enforced, egress_enforced, entries };
            let map = policy.to_map();
            for (ingress, peer, octet, udp, port) in packets {
                let direction = if ingress { Direction::Ingress } else { Direction::Egress };
                let ip: IpAddr = format!("10.{octet}.1.1").parse().unwrap();
                let proto = if udp { Proto::Udp } else { Proto::Tcp };
                let port = if port >= 45 { 65_000 + port } else { port };
                let peer = NumericIdentity(peer);
                prop_assert_eq!(
                    map.verdict(direction, peer, Some(ip), proto, port),
                    policy.verdict(direction, peer, Some(ip), proto, port),
                    "{:?} {} {} {:?} {}", direction, peer, ip, proto, port
                );
            }
        }
    }

    #[test]
    fn entries_display() {
        let e = PolicyEntry {
            direction: Direction::Ingress,
            peer: Peer::Identity(NumericIdentity(65538)),
            proto: Some(Proto::Tcp),
            ports: Some((6379, 6379)),
            deny: false,
        };
        assert_eq!(e.to_string(), "ingress allow identity 65538 TCP 6379");
        let e = PolicyEntry {
            peer: Peer::Any,
            proto: None,
            ports: Some((8000, 8003)),
            deny: true,
            ..e
        };
        assert_eq!(e.to_string(), "ingress deny any any 8000-8003");
    }
}
