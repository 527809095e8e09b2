//! The node's routing for the DNS proxy redirect (see `bpf/lib/proxy.h`).
//!
//! `from_container` hands an allowed DNS query of an endpoint listed in `PLEXUS_DNS_REDIRECT`
//! to the proxy's transparent socket with `bpf_sk_assign` and marks it [`MARK_TO_PROXY`]. The
//! packet keeps its destination (the DNS server), so the node must route it to itself: a rule
//! sends marked packets to table [`PROXY_TABLE`], whose only route is `local 0.0.0.0/0 dev lo`.
//! [`ensure_routing`] installs both in the calling thread's network namespace (the node's);
//! the datapath does it when it loads. Without them an assigned query would be forwarded to
//! its server instead.

use crate::DatapathError;

/// The mark `from_container` gives a packet assigned to a proxy socket (Cilium's
/// `MARK_MAGIC_TO_PROXY` value; outside the identity marks' magic byte).
pub const MARK_TO_PROXY: u32 = 0x200;
/// The bits of the mark the rule compares.
pub const MARK_TO_PROXY_MASK: u32 = 0xf00;
/// The routing table of marked packets (Cilium's `2004`).
pub const PROXY_TABLE: u32 = 2004;
/// The rule's priority: before the main table (32766).
pub const PROXY_RULE_PRIORITY: u32 = 9;

/// The mark of the DNS proxy's forwarded queries (`plexus_dnsproxy::server::FORWARD_MARK`).
pub const MARK_FROM_PROXY: u32 = 0x300;
/// The table marked forwarded queries look up first: in tunnel mode, other nodes' pod CIDRs
/// via their underlay addresses (the node has no other route to them). A miss falls through
/// to the main table.
pub const PROXY_FORWARD_TABLE: u32 = 2005;
/// The forward rule's priority.
pub const PROXY_FORWARD_RULE_PRIORITY: u32 = 10;

/// Installs the rule `fwmark 0x200/0xf00 lookup 2004` and the route `local 0.0.0.0/0 dev lo
/// table 2004`, and the rule `fwmark 0x300/0xf00 lookup 2005` of the proxy's forwarded queries,
/// in the current network namespace; installing them again changes nothing.
pub fn ensure_routing() -> Result<(), DatapathError> {
    plexus_netlink::blocking(|nl| async move {
        nl.route_replace_local_default_in_table(PROXY_TABLE).await?;
        nl.ensure_rule_fwmark(
            MARK_TO_PROXY,
            MARK_TO_PROXY_MASK,
            PROXY_TABLE,
            PROXY_RULE_PRIORITY,
        )
        .await?;
        nl.ensure_rule_fwmark(
            MARK_FROM_PROXY,
            MARK_TO_PROXY_MASK,
            PROXY_FORWARD_TABLE,
            PROXY_FORWARD_RULE_PRIORITY,
        )
        .await?;
        Ok(())
    })?;
    Ok(())
}
