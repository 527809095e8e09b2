//! The few kernel settings the agent makes, in the node's network namespace: routes to local
//! pods and, in native routing mode, to other nodes' pod CIDRs, over rtnetlink
//! ([`plexus_netlink`]); IPv4 forwarding through procfs; with WireGuard, the set-up of its
//! device ([`wireguard_setup`]). Errors name the route, neighbour or device at fault.
//!
//! WireGuard's device `plexus_wg0` belongs to its own process (it creates the TUN); the agent
//! only configures the kernel around it, idempotently, so a restarted agent (or a device that
//! came back) converges to the same state:
//! - the device: MTU = underlay MTU - 60 (WireGuard's IPv4 overhead), up, `rp_filter` 0 (what
//!   it delivers comes from other nodes' addresses, which the main table routes elsewhere);
//! - tunnel mode: the VXLAN device's outer packets (UDP to port 8472) are routed by table
//!   [`WIREGUARD_TABLE`] (rule priority [`WIREGUARD_RULE_PRIORITY`]), whose `default dev
//!   plexus_wg0 src <node ip>` sends them into WireGuard, and whose `unreachable default` at a
//!   worse metric refuses them should the device vanish: nothing falls back to the clear;
//! - native mode: other nodes' pod CIDRs are routed `dev plexus_wg0` (see
//!   [`crate::core::RouteChange::Encrypted`]).

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use plexus_netlink::{Ipv4Cidr, MacAddr, NetlinkError, blocking};

/// The WireGuard device's name.
pub const WIREGUARD_DEVICE: &str = "plexus_wg0";
/// The routing table that sends tunnel mode's VXLAN packets into WireGuard.
pub const WIREGUARD_TABLE: u32 = 201;
/// The priority of the rule that selects [`WIREGUARD_TABLE`] (after `local`, before `main`).
pub const WIREGUARD_RULE_PRIORITY: u32 = 100;
/// The metric of the table's `unreachable default` (worse than the device's route, 0).
pub const WIREGUARD_UNREACHABLE_METRIC: u32 = 4096;
/// The VXLAN device's UDP port (Linux's default, as the datapath creates it).
pub const VXLAN_PORT: u16 = 8472;
/// WireGuard's overhead on an IPv4 underlay: outer IPv4 (20) + UDP (8) + WireGuard data
/// header (16) + authentication tag (16).
pub const WIREGUARD_OVERHEAD: u32 = 60;
/// VXLAN's overhead: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The MTU of the device holding `node_ip` (the underlay); 1500 when no device holds it (the
/// agent then runs where its address is not configured, as with the fake datapath).
pub fn underlay_mtu(node_ip: Ipv4Addr) -> Result<u32> {
    let link = blocking(|nl| async move { nl.link_with_address(node_ip).await })
        .with_context(|| format!("find the device of the node's address {node_ip}"))?;
    Ok(link.and_then(|l| l.mtu).unwrap_or(1500))
}

/// Undoes tunnel mode's policy routing into WireGuard (the rule and table
/// [`WIREGUARD_TABLE`]), for an agent started with WireGuard off: a device stopped after
/// encryption was turned off leaves its link, and the rule would keep routing VXLAN into it.
/// Native mode's routes into the device are replaced by the agent's own routes anyway.
pub fn wireguard_teardown() -> Result<()> {
    let (rules, routes) = blocking(|nl| async move {
        let rules = nl
            .delete_rules_udp_dport(VXLAN_PORT, WIREGUARD_TABLE)
            .await?;
        // The table is ours only if our rule pointed at it: leave another owner's alone.
        let routes = if rules > 0 {
            nl.flush_table(WIREGUARD_TABLE).await?
        } else {
            0
        };
        Ok((rules, routes))
    })
    .context("remove WireGuard's policy routing")?;
    if rules + routes > 0 {
        tracing::info!(rules, routes, "WireGuard off: its policy routing removed");
    }
    Ok(())
}

/// Sets up the kernel around the WireGuard device (see the module documentation); returns the
/// device's interface index. Fails, naming it, when the device does not exist yet.
pub fn wireguard_setup(tunnel: bool, node_ip: Ipv4Addr, mtu: u32) -> Result<u32> {
    let dev = WIREGUARD_DEVICE;
    let index = blocking(|nl| async move {
        let link = match nl.link(dev).await {
            Err(NetlinkError::NoSuchDevice { .. }) => return Ok(None),
            other => other?,
        };
        if link.mtu != Some(mtu) {
            nl.set_mtu(dev, mtu).await?;
        }
        if !link.up {
            nl.set_up(dev).await?;
        }
        if tunnel {
            let default = Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).ok_or(NetlinkError::Parse {
                what: "IPv4 prefix",
                value: "0.0.0.0/0".into(),
                reason: "invalid".into(),
            })?;
            nl.route_replace_unreachable_in_table(
                default,
                WIREGUARD_TABLE,
                WIREGUARD_UNREACHABLE_METRIC,
            )
            .await?;
            nl.route_replace_dev_in_table(default, dev, Some(node_ip), WIREGUARD_TABLE, 0)
                .await?;
            nl.ensure_rule_udp_dport(VXLAN_PORT, WIREGUARD_TABLE, WIREGUARD_RULE_PRIORITY)
                .await?;
        }
        Ok(Some(link.index))
    })?;
    let Some(index) = index else {
        anyhow::bail!("device {dev} does not exist: is plexus-wireguard running on this node?");
    };
    let rp = format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter");
    std::fs::write(&rp, "0").with_context(|| format!("write 0 to {rp}"))?;
    Ok(index)
}

/// `ip route replace <dst> dev <dev> scope link` (a local pod behind its host veth).
pub fn route_to_device(dst: &str, dev: &str) -> Result<()> {
    let dst: Ipv4Cidr = dst.parse()?;
    blocking(|nl| async move { nl.route_replace_dev(dst, dev).await })?;
    Ok(())
}

/// `ip route replace <dst> via <gw>` (another node's pod CIDR, native routing).
pub fn route_via(dst: &str, gw: &str) -> Result<()> {
    let dst: Ipv4Cidr = dst.parse()?;
    let gw = gw
        .parse()
        .with_context(|| format!("route {dst}: gateway {gw:?}"))?;
    blocking(|nl| async move { nl.route_replace_via(dst, gw).await })?;
    Ok(())
}

/// `ip route replace <dst> via <gw> table <table>`.
pub fn route_via_in_table(dst: &str, gw: &str, table: u32) -> Result<()> {
    let dst: Ipv4Cidr = dst.parse()?;
    let gw = gw
        .parse()
        .with_context(|| format!("route {dst}: gateway {gw:?}"))?;
    blocking(|nl| async move { nl.route_replace_via_in_table(dst, gw, table).await })?;
    Ok(())
}

/// `ip route del <dst> table <table>`; a missing route is fine.
pub fn route_delete_in_table(dst: &str, table: u32) {
    let res = dst.parse::<Ipv4Cidr>().and_then(|dst| {
        blocking(|nl| async move { nl.route_delete_in_table(dst, Some(table)).await })
    });
    if let Err(err) = res {
        tracing::warn!(error = %err, "cannot remove a route");
    }
}

/// A permanent neighbour entry: the kernel never ARPs for a local pod (the datapath answers
/// only the pods' own questions for their gateway).
pub fn neigh_permanent(addr: &str, mac: &str, dev: &str) -> Result<()> {
    let ip = addr
        .parse()
        .with_context(|| format!("neighbour {addr:?} on {dev}"))?;
    let mac: MacAddr = mac.parse()?;
    blocking(|nl| async move { nl.neigh_replace_permanent(ip, mac, dev).await })?;
    Ok(())
}

/// Removes the route to `dst`; a missing route is fine, other failures are logged.
pub fn route_delete(dst: &str) {
    let res = dst
        .parse::<Ipv4Cidr>()
        .and_then(|dst| blocking(|nl| async move { nl.route_delete(dst).await }));
    if let Err(err) = res {
        tracing::warn!(error = %err, "cannot remove a route");
    }
}

/// Turns IPv4 forwarding on in this network namespace.
pub fn enable_forwarding() -> Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enable IPv4 forwarding")?;
    // Replies to pods leave through the veth they did not come in by, from the kernel's view.
    for f in ["all", "default"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{f}/rp_filter"), "0");
    }
    Ok(())
}
