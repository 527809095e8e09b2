//! Why one packet passes or is dropped at one endpoint (`plexus policy trace`).
//!
//! [`explain`] takes an endpoint's resolved policy and its [`PolicySources`] (both from one
//! [`crate::PolicyRepository::resolve_with_sources`] pass) and a packet, and says:
//! - the verdict, computed by [`PolicyMap::verdict`], the lookups the datapath makes, so the
//!   explanation never disagrees with what the datapath does with the same policy;
//! - whether the direction is enforced (default deny) and by which policies;
//! - what decided: no policy selects the endpoint, none enforces the direction, the allow
//!   entries that pass the packet, the deny entries that drop it, or default deny; each rule
//!   named by its policy, where it was written (`egress[0]`, `specs[1].ingressDeny[2]`), the
//!   resolved entry and the kind of match the datapath reports for it (Cilium's `L3-L4` ...).
//!
//! Which entries cover the packet is [`PolicyEntry::covers`], the meaning the map's verdict is
//! checked against, so when that meaning changes both sides change together.

use std::fmt;
use std::net::IpAddr;

use plexus_model::identity::NumericIdentity;

use crate::port::Proto;
use crate::repository::{EntryOrigin, PolicySources};
use crate::resolved::{Direction, EndpointPolicy, Peer, PolicyEntry, Verdict};
use crate::rule::PolicyKey;

/// The packet to explain, seen from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Ingress (the peer sends) or egress (the endpoint sends).
    pub direction: Direction,
    /// The peer's identity as the datapath sees it.
    pub peer: NumericIdentity,
    /// The peer's address (for CIDR entries).
    pub peer_ip: Option<IpAddr>,
    /// The protocol.
    pub proto: Proto,
    /// The destination port.
    pub port: u16,
}

/// The kind of match a policy verdict reports (Cilium's names): whether the entry names the
/// peer (an identity or a prefix: L3) and how much of protocol and port it fixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MatchKind {
    /// The peer, any protocol and port.
    L3Only,
    /// The peer, one protocol, some ports.
    L3L4,
    /// Any peer, one protocol, some ports.
    L4Only,
    /// Any peer, protocol and port.
    All,
    /// The peer, one protocol, every port.
    L3Proto,
    /// Any peer, one protocol, every port.
    ProtoOnly,
}

impl MatchKind {
    /// The kind of match of an entry, as the datapath's compiled key of that entry reports it:
    /// an entry with ports but no protocol becomes one key per protocol, and every port of a
    /// protocol is a protocol-only key.
    pub fn of(entry: &PolicyEntry) -> Self {
        let l3 = !matches!(entry.peer, Peer::Any);
        let every_port = entry.ports.is_none_or(|r| r == (0, u16::MAX));
        match (
            l3,
            entry.proto.is_none() && entry.ports.is_none(),
            every_port,
        ) {
            (true, true, _) => Self::L3Only,
            (false, true, _) => Self::All,
            (true, false, true) => Self::L3Proto,
            (false, false, true) => Self::ProtoOnly,
            (true, false, false) => Self::L3L4,
            (false, false, false) => Self::L4Only,
        }
    }

    /// How specific the datapath's key is: the peer's identity is looked up before the
    /// wildcard, and within one identity the longest (protocol, port) prefix wins.
    fn specificity(entry: &PolicyEntry) -> (bool, u8, std::cmp::Reverse<u32>) {
        let l3 = !matches!(entry.peer, Peer::Any);
        let width = entry
            .ports
            .map_or(1 << 16, |(lo, hi)| u32::from(hi) - u32::from(lo) + 1);
        let l4 = match Self::of(entry) {
            Self::L3Only | Self::All => 0,
            Self::L3Proto | Self::ProtoOnly => 1,
            Self::L3L4 | Self::L4Only => 2,
        };
        (l3, l4, std::cmp::Reverse(width))
    }
}

impl fmt::Display for MatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::L3Only => "L3-Only",
            Self::L3L4 => "L3-L4",
            Self::L4Only => "L4-Only",
            Self::All => "all",
            Self::L3Proto => "L3-Proto",
            Self::ProtoOnly => "Proto-Only",
        })
    }
}

/// What decided a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No policy selects the endpoint: everything passes.
    NoPolicy,
    /// Policies select the endpoint, but none enforces this direction: everything passes.
    NotEnforced,
    /// The direction is enforced and allow entries pass the packet.
    Allowed,
    /// Deny entries drop the packet (deny wins over any allow).
    DenyRule,
    /// The direction is enforced and nothing allows the packet.
    DefaultDeny,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoPolicy => "no policy selects the endpoint",
            Self::NotEnforced => "not enforced",
            Self::Allowed => "allowed",
            Self::DenyRule => "deny rule",
            Self::DefaultDeny => "default deny",
        })
    }
}

/// One rule that decided a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecidingRule {
    /// Its policy.
    pub policy: PolicyKey,
    /// Where it is written in the policy.
    pub origin: EntryOrigin,
    /// The resolved entry that covers the packet.
    pub entry: PolicyEntry,
    /// The kind of match of that entry.
    pub match_kind: MatchKind,
}

/// Why a packet passes or is dropped at an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The datapath's verdict.
    pub verdict: Verdict,
    /// Whether the direction is enforced (default deny).
    pub enforced: bool,
    /// What decided.
    pub decision: Decision,
    /// The deciding rules: the covering deny entries ([`Decision::DenyRule`]) or the covering
    /// allow entries ([`Decision::Allowed`], the most specific first: the one whose kind of
    /// match the datapath reports); empty otherwise.
    pub rules: Vec<DecidingRule>,
    /// The policies that enforce the direction on the endpoint.
    pub enforcing: Vec<PolicyKey>,
    /// Every policy selecting the endpoint.
    pub selecting: Vec<PolicyKey>,
}

impl Explanation {
    /// The kind of match the datapath reports for an allowed packet (`None` unless
    /// [`Decision::Allowed`]).
    pub fn match_kind(&self) -> Option<MatchKind> {
        match self.decision {
            Decision::Allowed => self.rules.first().map(|r| r.match_kind),
            _ => None,
        }
    }
}

/// The entries of `deny` kind covering the packet, with their policy and origin.
fn covering(sources: &PolicySources, packet: &Packet, deny: bool) -> Vec<DecidingRule> {
    sources
        .entries
        .iter()
        .zip(&sources.origins)
        .filter(|((entry, _), _)| {
            entry.deny == deny
                && entry.covers(
                    packet.direction,
                    packet.peer,
                    packet.peer_ip,
                    packet.proto,
                    packet.port,
                )
        })
        .filter_map(|((entry, index), origin)| {
            Some(DecidingRule {
                policy: sources.policies.get(*index)?.key.clone(),
                origin: origin.clone(),
                entry: *entry,
                match_kind: MatchKind::of(entry),
            })
        })
        .collect()
}

/// Explains the verdict for `packet` at an endpoint whose resolved policy is `policy`, with
/// `sources` from the same resolution (see the module documentation).
pub fn explain(policy: &EndpointPolicy, sources: &PolicySources, packet: &Packet) -> Explanation {
    let verdict = policy.to_map().verdict(
        packet.direction,
        packet.peer,
        packet.peer_ip,
        packet.proto,
        packet.port,
    );
    let enforced = policy.enforced(packet.direction);
    let enforcing: Vec<PolicyKey> = sources
        .enforcing(packet.direction)
        .into_iter()
        .cloned()
        .collect();
    let selecting: Vec<PolicyKey> = sources.policies.iter().map(|p| p.key.clone()).collect();
    let (decision, rules) = match verdict {
        Verdict::Deny => {
            let denies = covering(sources, packet, true);
            if denies.is_empty() {
                (Decision::DefaultDeny, denies)
            } else {
                (Decision::DenyRule, denies)
            }
        }
        Verdict::Allow if enforced => {
            let mut allows = covering(sources, packet, false);
            // Stable: equally specific entries stay in policy order.
            allows.sort_by_key(|r| std::cmp::Reverse(MatchKind::specificity(&r.entry)));
            (Decision::Allowed, allows)
        }
        Verdict::Allow if selecting.is_empty() => (Decision::NoPolicy, Vec::new()),
        Verdict::Allow => (Decision::NotEnforced, Vec::new()),
    };
    Explanation {
        verdict,
        enforced,
        decision,
        rules,
        enforcing,
        selecting,
    }
}
