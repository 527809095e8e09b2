//! The few kernel settings the agent makes, in the node's network namespace: routes to local
//! pods and, in native routing mode, to other nodes' pod CIDRs, over rtnetlink
//! ([`plexus_netlink`]); IPv4 forwarding through procfs. Errors name the route, neighbour or
//! device at fault.

use anyhow::{Context, Result};
use plexus_netlink::{Ipv4Cidr, MacAddr, blocking};

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
