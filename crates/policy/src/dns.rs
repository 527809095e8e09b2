//! The DNS rules of one endpoint (`toPorts[].rules.dns`), resolved for the DNS proxy.
//!
//! [`DnsPolicy`] lists, per egress peer and port the endpoint may reach, which names it may look
//! up there: the patterns of the `rules.dns` that allow the peer on that port, or every name
//! when an allow without DNS rules covers it too (Cilium's L7 wildcarding). The datapath
//! enforces the L4 part of the same rules as ordinary allow entries; the DNS proxy uses this
//! form to answer REFUSED to the names no rule allows. Built by
//! [`crate::PolicyRepository::resolve_dns`].

use std::collections::BTreeSet;
use std::net::IpAddr;

use plexus_model::identity::NumericIdentity;

use crate::port::Proto;
use crate::resolved::{Direction, Peer, PolicyEntry};

/// One peer and port range with the names the endpoint may look up there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsEntry {
    /// The DNS server side: an identity, a prefix or any peer.
    pub peer: Peer,
    /// Protocol; `None` is any.
    pub proto: Option<Proto>,
    /// Inclusive port range; `None` is every port.
    pub ports: Option<(u16, u16)>,
    /// `matchName`/`matchPattern` values (normalized, see [`crate::fqdn`]); `None` is every
    /// name (an allow without DNS rules).
    pub patterns: Option<BTreeSet<String>>,
}

impl DnsEntry {
    /// Whether the entry covers a query sent to `server` (its identity and address) on
    /// `proto`/`port`, with the same peer semantics as [`PolicyEntry::covers`].
    pub fn covers(
        &self,
        server: NumericIdentity,
        server_ip: Option<IpAddr>,
        proto: Proto,
        port: u16,
    ) -> bool {
        PolicyEntry {
            direction: Direction::Egress,
            peer: self.peer,
            proto: self.proto,
            ports: self.ports,
            deny: false,
        }
        .covers(Direction::Egress, server, server_ip, proto, port)
    }

    /// Whether the entry allows looking up the normalized `name`.
    pub fn allows_name(&self, name: &str) -> bool {
        self.patterns
            .as_ref()
            .is_none_or(|p| p.iter().any(|p| crate::fqdn::matches(p, name)))
    }
}

/// The DNS rules of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsPolicy {
    /// Whether the endpoint's egress is default-deny.
    pub egress_enforced: bool,
    /// Entries, sorted and deduplicated.
    pub entries: Vec<DnsEntry>,
}

impl DnsPolicy {
    /// Whether some entry with DNS rules covers queries to this server and port: then the
    /// datapath sends them to the proxy, which checks the names.
    pub fn has_dns_rules(
        &self,
        server: NumericIdentity,
        server_ip: Option<IpAddr>,
        proto: Proto,
        port: u16,
    ) -> bool {
        self.entries
            .iter()
            .any(|e| e.patterns.is_some() && e.covers(server, server_ip, proto, port))
    }

    /// Whether an entry covering this server and port allows the normalized `name`.
    pub fn allows(
        &self,
        server: NumericIdentity,
        server_ip: Option<IpAddr>,
        proto: Proto,
        port: u16,
        name: &str,
    ) -> bool {
        self.entries
            .iter()
            .any(|e| e.covers(server, server_ip, proto, port) && e.allows_name(name))
    }
}
