//! Per-endpoint policy as the datapath enforces it: what the control plane resolved (allow and
//! deny rules by peer identity, protocol and port range, per direction) compiled into the
//! entries of a longest-prefix-match map.
//!
//! The BPF programs look a packet up twice in the endpoint's space of the map: first with the
//! peer's identity, then, if nothing matched, with identity 0 (any peer). Within one identity
//! the key ends with the protocol and the destination port, so a rule's protocol wildcard and
//! port range become prefix lengths (a range is split into aligned blocks). [`compile`] makes the
//! longest match carry the right verdict: deny wins over allow wherever both apply, including a
//! wildcard deny over an identity's allow, which is copied into that identity's space.
//!
//! CIDR rules are written as entries for node-local CIDR identities, one per prefix a policy
//! names (the control plane writes a rule on a prefix for every named prefix inside it). The
//! prefixes and their identities are in a second LPM map: when a peer's address lies in one and
//! its identity differs from the peer's, the programs look the packet up with both identities
//! and combine the two answers ([`allows`]): a deny drops, else an allow passes, else the
//! direction's default. So a pod of any cluster whose address is inside an allowed CIDR passes,
//! an `except` carves it out again, and a deny on either its identity or its address wins.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Direction, PolicyMatch};

/// Peer identity meaning "any peer".
pub const ANY_IDENTITY: u32 = 0;

/// One rule of an endpoint's resolved policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRule {
    /// Ingress (peer is the source) or egress (peer is the destination).
    pub direction: Direction,
    /// The peer's identity, [`ANY_IDENTITY`] for any.
    pub identity: u32,
    /// IP protocol number, 0 for any.
    pub proto: u8,
    /// First destination port (0 with `port_hi` 65535, or proto 0: any).
    pub port_lo: u16,
    /// Last destination port, inclusive.
    pub port_hi: u16,
    /// A deny rule.
    pub deny: bool,
}

/// An endpoint's resolved policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EndpointPolicy {
    /// Ingress is default-deny (some rule selects the endpoint for ingress).
    pub ingress_enforced: bool,
    /// Egress is default-deny.
    pub egress_enforced: bool,
    /// The rules.
    pub rules: Vec<PolicyRule>,
}

/// One key of the policy map, for one endpoint: what follows the endpoint id and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// Direction.
    pub direction: Direction,
    /// Peer identity, 0 for any.
    pub identity: u32,
    /// Bits of (protocol, port) that must match: 0 (any protocol), 8 (any port of `proto`), up
    /// to 24 (exactly `port`).
    pub l4_bits: u8,
    /// Protocol (meaningful when `l4_bits >= 8`).
    pub proto: u8,
    /// Port, its low `24 - l4_bits` bits cleared.
    pub port: u16,
}

/// Splits an inclusive port range into aligned blocks `(start, bits)`: `bits` leading bits of
/// the 16-bit port are fixed.
pub fn port_blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if lo > hi {
        return out;
    }
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros() as u8;
        out.push((lo as u16, bits));
        lo += size;
    }
    out
}

/// The (protocol, port) prefixes of a rule, as (l4_bits, proto, port).
fn l4_prefixes(rule: &PolicyRule) -> Vec<(u8, u8, u16)> {
    if rule.proto == 0 {
        return vec![(0, 0, 0)];
    }
    port_blocks(rule.port_lo, rule.port_hi)
        .into_iter()
        .map(|(start, bits)| (8 + bits, rule.proto, start))
        .collect()
}

/// Whether prefix `outer` contains prefix `inner` (both as (l4_bits, proto, port)).
fn contains(outer: (u8, u8, u16), inner: (u8, u8, u16)) -> bool {
    let (ob, op, oport) = outer;
    let (ib, ip, iport) = inner;
    if ob > ib {
        return false;
    }
    if ob == 0 {
        return true;
    }
    if op != ip {
        return false;
    }
    let port_bits = ob - 8;
    if port_bits == 0 {
        return true;
    }
    let mask = u16::MAX << (16 - port_bits);
    oport & mask == iport & mask
}

/// Compiles rules into map entries: key -> deny. See the module documentation.
pub fn compile(rules: &[PolicyRule]) -> BTreeMap<PolicyKey, bool> {
    let mut out = BTreeMap::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        // Prefixes per identity, each with whether some rule there denies it.
        let mut by_identity: BTreeMap<u32, BTreeMap<(u8, u8, u16), bool>> = BTreeMap::new();
        for r in rules.iter().filter(|r| r.direction == direction) {
            let slot = by_identity.entry(r.identity).or_default();
            for p in l4_prefixes(r) {
                *slot.entry(p).or_default() |= r.deny;
            }
        }
        let wildcard = by_identity.get(&ANY_IDENTITY).cloned().unwrap_or_default();
        for (&identity, own) in &by_identity {
            let mut prefixes: BTreeSet<(u8, u8, u16)> = own.keys().copied().collect();
            if identity != ANY_IDENTITY {
                // Wildcard prefixes inside this identity's prefixes must be seen here too.
                for w in wildcard.keys() {
                    if own.keys().any(|p| contains(*p, *w)) {
                        prefixes.insert(*w);
                    }
                }
            }
            for p in prefixes {
                let covering_deny = own
                    .iter()
                    .chain(
                        if identity == ANY_IDENTITY {
                            None
                        } else {
                            Some(wildcard.iter())
                        }
                        .into_iter()
                        .flatten(),
                    )
                    .any(|(q, deny)| *deny && contains(*q, p));
                out.insert(
                    PolicyKey {
                        direction,
                        identity,
                        l4_bits: p.0,
                        proto: p.1,
                        port: p.2,
                    },
                    covering_deny,
                );
            }
        }
    }
    out
}

/// The verdict the BPF lookup reaches for a packet, computed from compiled entries the way the
/// programs do (for tests and for `endpoint get`): `Some(deny)` on a match, `None` when nothing
/// matches (then the direction's default applies).
pub fn lookup(
    entries: &BTreeMap<PolicyKey, bool>,
    direction: Direction,
    identity: u32,
    proto: u8,
    port: u16,
) -> Option<bool> {
    let longest = |id: u32| {
        entries
            .iter()
            .filter(|(k, _)| {
                k.direction == direction
                    && k.identity == id
                    && contains((k.l4_bits, k.proto, k.port), (24, proto, port))
            })
            .max_by_key(|(k, _)| k.l4_bits)
            .map(|(_, deny)| *deny)
    };
    longest(identity).or_else(|| longest(ANY_IDENTITY))
}

/// Whether the programs pass a new connection of an endpoint with compiled `entries` (whose
/// `direction` is `enforced` or not: deny entries apply either way) with a peer of identity `identity` whose address lies in
/// a policy prefix of CIDR identity `cidr_identity` (`None`: in none): `policy_decide` of
/// `bpf/lib/policy.h`.
pub fn allows(
    entries: &BTreeMap<PolicyKey, bool>,
    enforced: bool,
    direction: Direction,
    identity: u32,
    cidr_identity: Option<u32>,
    proto: u8,
    port: u16,
) -> bool {
    let by_identity = lookup(entries, direction, identity, proto, port);
    let by_address = cidr_identity
        .filter(|c| *c != identity)
        .and_then(|c| lookup(entries, direction, c, proto, port));
    match (by_identity, by_address) {
        (Some(true), _) | (_, Some(true)) => false,
        (Some(false), _) | (_, Some(false)) => true,
        (None, None) => !enforced,
    }
}

/// The `struct policy_enforce` bytes (ingress, egress) for an endpoint whose directions are
/// `enforced` as given, with compiled `entries`: 1 default deny; 2 not enforced but with deny
/// entries, which apply (a rule with `enableDefaultDeny: false`); 0 nothing to look up.
pub fn enforce_modes(enforced: (bool, bool), entries: &BTreeMap<PolicyKey, bool>) -> (u8, u8) {
    let mode = |enforced: bool, direction: Direction| {
        if enforced {
            1
        } else if entries
            .iter()
            .any(|(k, deny)| *deny && k.direction == direction)
        {
            2
        } else {
            0
        }
    };
    (
        mode(enforced.0, Direction::Ingress),
        mode(enforced.1, Direction::Egress),
    )
}

/// The kind of match an allowing entry reports in policy verdict events: whether it names the
/// peer's identity, and how much of protocol and port it fixes.
pub fn match_kind(key: &PolicyKey) -> PolicyMatch {
    let l3 = key.identity != ANY_IDENTITY;
    match (l3, key.l4_bits) {
        (true, 0) => PolicyMatch::L3Only,
        (false, 0) => PolicyMatch::All,
        (true, 8) => PolicyMatch::L3Proto,
        (false, 8) => PolicyMatch::ProtoOnly,
        (true, _) => PolicyMatch::L3L4,
        (false, _) => PolicyMatch::L4Only,
    }
}

/// A `struct policy_value`: the verdict and the kind of match of the entry `key`.
pub(crate) fn encode_value(key: &PolicyKey, deny: bool) -> [u8; 4] {
    [u8::from(deny), match_kind(key).as_raw(), 0, 0]
}

/// Bytes of a `struct policy_key` after its prefix length (see `bpf/lib/policy.h`).
pub(crate) type PolicyKeyData = [u8; 12];

/// The key data and prefix length of one compiled entry of endpoint `ep_id`.
pub(crate) fn encode_key(ep_id: u16, key: &PolicyKey) -> (u32, PolicyKeyData) {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&ep_id.to_ne_bytes());
    b[2] = match key.direction {
        Direction::Ingress => 1,
        Direction::Egress => 2,
    };
    b[4..8].copy_from_slice(&key.identity.to_ne_bytes());
    b[8] = key.proto;
    b[10..12].copy_from_slice(&key.port.to_be_bytes());
    // ep_id, dir, pad and identity always match (64 bits); the protocol brings its pad byte.
    let prefix_len = if key.l4_bits == 0 {
        64
    } else {
        72 + u32::from(key.l4_bits)
    };
    (prefix_len, b)
}

/// The endpoint id and entry of a key read back from the map.
pub(crate) fn decode_key(prefix_len: u32, b: &PolicyKeyData) -> Option<(u16, PolicyKey)> {
    let direction = match b[2] {
        1 => Direction::Ingress,
        2 => Direction::Egress,
        _ => return None,
    };
    let l4_bits = match prefix_len {
        64 => 0,
        80..=96 => u8::try_from(prefix_len - 72).ok()?,
        _ => return None,
    };
    Some((
        u16::from_ne_bytes([b[0], b[1]]),
        PolicyKey {
            direction,
            identity: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            l4_bits,
            proto: if l4_bits == 0 { 0 } else { b[8] },
            port: if l4_bits <= 8 {
                0
            } else {
                u16::from_be_bytes([b[10], b[11]])
            },
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TCP: u8 = 6;
    const UDP: u8 = 17;

    fn rule(identity: u32, proto: u8, lo: u16, hi: u16, deny: bool) -> PolicyRule {
        PolicyRule {
            direction: Direction::Ingress,
            identity,
            proto,
            port_lo: lo,
            port_hi: hi,
            deny,
        }
    }

    /// What the rules mean, straight from their definition.
    fn reference(rules: &[PolicyRule], identity: u32, proto: u8, port: u16) -> Option<bool> {
        let matching: Vec<&PolicyRule> = rules
            .iter()
            .filter(|r| {
                (r.identity == ANY_IDENTITY || r.identity == identity)
                    && (r.proto == 0
                        || (r.proto == proto && (r.port_lo..=r.port_hi).contains(&port)))
            })
            .collect();
        if matching.is_empty() {
            None
        } else {
            Some(matching.iter().any(|r| r.deny))
        }
    }

    #[test]
    fn keys_round_trip_through_their_bytes() {
        let rules = [
            rule(100, TCP, 8000, 8003, false),
            rule(0, 0, 0, 0, true),
            rule(7, UDP, 0, 65535, false),
        ];
        for (k, _) in compile(&rules) {
            let (len, bytes) = encode_key(513, &k);
            assert_eq!(decode_key(len, &bytes), Some((513, k)));
        }
        let (len, bytes) = encode_key(
            1,
            &PolicyKey {
                direction: Direction::Egress,
                identity: 5,
                l4_bits: 24,
                proto: TCP,
                port: 6379,
            },
        );
        assert_eq!(len, 96);
        assert_eq!(&bytes[10..12], &6379u16.to_be_bytes());
    }

    #[test]
    fn port_ranges_split_into_aligned_blocks() {
        assert_eq!(port_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(port_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_blocks(8000, 8003), vec![(8000, 14)]);
        assert_eq!(
            port_blocks(8001, 8004),
            vec![(8001, 16), (8002, 15), (8004, 16)]
        );
        let blocks = port_blocks(1000, 2000);
        let covered: u32 = blocks.iter().map(|(_, b)| 1u32 << (16 - b)).sum();
        assert_eq!(covered, 1001);
        assert!(port_blocks(5, 4).is_empty());
    }

    #[test]
    fn deny_wins_over_allow_even_when_less_specific() {
        let rules = [
            rule(100, TCP, 80, 80, false),
            rule(100, 0, 0, 65535, true),
            rule(200, TCP, 0, 65535, false),
            rule(ANY_IDENTITY, TCP, 22, 22, true),
            rule(300, 0, 0, 0, false),
        ];
        let m = compile(&rules);
        assert_eq!(lookup(&m, Direction::Ingress, 100, TCP, 80), Some(true));
        assert_eq!(lookup(&m, Direction::Ingress, 200, TCP, 80), Some(false));
        assert_eq!(
            lookup(&m, Direction::Ingress, 200, TCP, 22),
            Some(true),
            "wildcard deny copied"
        );
        assert_eq!(lookup(&m, Direction::Ingress, 300, UDP, 22), Some(false));
        assert_eq!(lookup(&m, Direction::Ingress, 300, TCP, 22), Some(true));
        assert_eq!(lookup(&m, Direction::Ingress, 400, TCP, 22), Some(true));
        assert_eq!(lookup(&m, Direction::Ingress, 400, TCP, 80), None);
        assert_eq!(lookup(&m, Direction::Egress, 200, TCP, 80), None);
    }

    #[test]
    fn compiled_lookups_agree_with_the_rules_everywhere() {
        // A deterministic pseudo-random family of rule sets, checked at many points.
        let mut seed = 0x2545_f491_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let rules: Vec<PolicyRule> = (0..next(6) + 1)
                .map(|_| {
                    let identity = [0, 100, 200][next(3) as usize];
                    let proto = [0, TCP, UDP][next(3) as usize];
                    let lo = next(40) as u16;
                    let hi = lo + next(40) as u16;
                    rule(identity, proto, lo, hi, next(3) == 0)
                })
                .collect();
            let m = compile(&rules);
            for identity in [100, 200, 300] {
                for proto in [TCP, UDP] {
                    for port in 0..90 {
                        assert_eq!(
                            lookup(&m, Direction::Ingress, identity, proto, port),
                            reference(&rules, identity, proto, port),
                            "{rules:?} at {identity} {proto} {port}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn entries_carry_their_kind_of_match_for_policy_verdicts() {
        let key = |identity, l4_bits| PolicyKey {
            direction: Direction::Ingress,
            identity,
            l4_bits,
            proto: if l4_bits == 0 { 0 } else { TCP },
            port: 0,
        };
        for (k, kind) in [
            (key(7, 0), PolicyMatch::L3Only),
            (key(7, 24), PolicyMatch::L3L4),
            (key(7, 12), PolicyMatch::L3L4),
            (key(7, 8), PolicyMatch::L3Proto),
            (key(ANY_IDENTITY, 24), PolicyMatch::L4Only),
            (key(ANY_IDENTITY, 8), PolicyMatch::ProtoOnly),
            (key(ANY_IDENTITY, 0), PolicyMatch::All),
        ] {
            assert_eq!(match_kind(&k), kind, "{k:?}");
            assert_eq!(encode_value(&k, false), [0, kind.as_raw(), 0, 0]);
            assert_eq!(encode_value(&k, true)[0], 1);
        }
    }
}
