//! The few kernel settings the agent makes through iproute2 and procfs, in the node's network
//! namespace: routes to local pods and, in native routing mode, to other nodes' pod CIDRs;
//! IPv4 forwarding. Errors name the command and the device.

use std::process::Command;

use anyhow::{Context, Result, bail};

fn ip(args: &[&str]) -> Result<()> {
    let bin = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("ip");
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip route replace <dst> dev <dev>` (a local pod behind its host veth).
pub fn route_to_device(dst: &str, dev: &str) -> Result<()> {
    ip(&["route", "replace", dst, "dev", dev, "scope", "link"])
}

/// `ip route replace <dst> via <gw>` (another node's pod CIDR, native routing).
pub fn route_via(dst: &str, gw: &str) -> Result<()> {
    ip(&["route", "replace", dst, "via", gw])
}

/// A permanent neighbour entry: the kernel never ARPs for a local pod (the datapath answers
/// only the pods' own questions for their gateway).
pub fn neigh_permanent(addr: &str, mac: &str, dev: &str) -> Result<()> {
    ip(&[
        "neigh",
        "replace",
        addr,
        "lladdr",
        mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
}

/// Removes the route to `dst`; a missing route is fine.
pub fn route_delete(dst: &str) {
    let _ = ip(&["route", "del", dst]);
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
