//! The pod's veth pair, set up in the kernel over rtnetlink ([`plexus_netlink`]).
//!
//! [`KernelNetwork`] is the real [`Network`](crate::plugin::Network): the host side is created in
//! the namespace the plugin runs in (the node's), its peer directly inside the pod's namespace
//! under its final name (one atomic request naming the namespace by file descriptor, so no
//! temporary name can clash on the host); the pod side is configured from a thread inside the
//! pod's namespace ([`crate::netns`]), where the netlink socket is opened, so it belongs to the
//! pod's namespace. Every error names the device, address or route at fault.

use std::net::Ipv4Addr;
use std::path::Path;

use nix::net::if_::if_nametoindex;
use plexus_netlink::{Ipv4Cidr, NetlinkError, blocking};

use crate::netns::{self, NetnsError};
use crate::plugin::{Macs, Network};

/// Prefix of host-side veth names (Cilium's).
pub const HOST_PREFIX: &str = "lxc";

/// A device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A device operation failed (reported by [`Network`] implementations other than the kernel).
    #[error("device {device}: {reason}")]
    Device {
        /// The device.
        device: String,
        /// What failed.
        reason: String,
    },
    /// The pod's namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The kernel refused a request (the error names the device, address or route).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// The host-side veth name of a container: `lxc` and the first 11 hex digits of the 64-bit
/// FNV-1a hash of its id (14 characters, within the kernel's 15). FNV-1a is fixed by its
/// definition, so every build and every run names a container's veth the same, which DEL and
/// CHECK rely on.
pub fn host_ifname(container_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let hex = format!("{hash:016x}");
    format!("{HOST_PREFIX}{}", &hex[..11])
}

/// Whether a device exists in the calling thread's namespace.
pub fn exists(device: &str) -> bool {
    if_nametoindex(device).is_ok()
}

/// A device's MAC address.
pub fn mac(device: &str) -> Result<String, LinkError> {
    Ok(blocking(|nl| async move { nl.mac(device).await })?.to_string())
}

/// A device's IPv4 addresses in CIDR form.
pub fn ipv4_addresses(device: &str) -> Result<Vec<String>, LinkError> {
    let addrs = blocking(|nl| async move { nl.ipv4_addresses(device).await })?;
    Ok(addrs.iter().map(ToString::to_string).collect())
}

/// Brings a device up.
pub fn set_up(device: &str) -> Result<(), LinkError> {
    Ok(blocking(|nl| async move { nl.set_up(device).await })?)
}

/// Deletes a device; `Ok(false)` when it did not exist (or went away in between, with its
/// peer's namespace: what DEL wants).
pub fn delete(device: &str) -> Result<bool, LinkError> {
    Ok(blocking(|nl| async move { nl.delete_link(device).await })?)
}

/// Creates the veth pair `host` <-> `pod`, `pod` directly inside the namespace at `netns`, both
/// with `mtu`.
pub fn create_veth(host: &str, pod: &str, netns: &Path, mtu: u32) -> Result<(), LinkError> {
    Ok(blocking(|nl| async move {
        nl.create_veth(host, pod, mtu, netns).await
    })?)
}

/// Configures the pod side from inside its namespace (call it on a thread that has entered
/// it, see [`crate::netns`]): `ip`/32 on `ifname`, `ifname` and `lo` up, a link-scope route to
/// `gateway` and the default route through it. Returns the pod side's MAC address.
pub fn configure_pod(
    ifname: &str,
    ip_addr: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<String, LinkError> {
    let mac = blocking(|nl| async move {
        nl.add_address(ifname, Ipv4Cidr::host(ip_addr)).await?;
        nl.set_up(ifname).await?;
        nl.set_up("lo").await?;
        nl.route_add_dev(Ipv4Cidr::host(gateway), ifname).await?;
        nl.route_add_via_dev(Ipv4Cidr::DEFAULT, gateway, ifname)
            .await?;
        nl.mac(ifname).await
    })?;
    Ok(mac.to_string())
}

/// The kernel: veth pairs over rtnetlink, pod namespaces entered with `setns`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelNetwork;

impl Network for KernelNetwork {
    fn link_exists(&self, host: &str) -> Result<bool, LinkError> {
        Ok(exists(host))
    }

    fn create_veth(
        &self,
        host: &str,
        ifname: &str,
        netns: &Path,
        mtu: u32,
    ) -> Result<(), LinkError> {
        // Open the namespace first so a missing CNI_NETNS is reported as such.
        netns::run_in(netns, || ())?;
        create_veth(host, ifname, netns, mtu)
    }

    fn configure(
        &self,
        host: &str,
        ifname: &str,
        netns: &Path,
        ip_addr: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> Result<Macs, LinkError> {
        let pod = netns::run_in(netns, || configure_pod(ifname, ip_addr, gateway))??;
        set_up(host)?;
        Ok(Macs {
            host: mac(host)?,
            pod,
        })
    }

    fn delete_link(&self, host: &str) -> Result<bool, LinkError> {
        delete(host)
    }

    fn pod_addresses(&self, netns: &Path, ifname: &str) -> Result<Vec<String>, LinkError> {
        netns::run_in(netns, || ipv4_addresses(ifname))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_and_fit() {
        let a = host_ifname("0123456789abcdef");
        assert_eq!(a, host_ifname("0123456789abcdef"));
        assert_ne!(a, host_ifname("0123456789abcdeg"));
        assert!(a.starts_with("lxc"));
        assert_eq!(a.len(), 14);
        assert!(a.len() <= crate::conf::MAX_IFNAME_LEN);
        assert!(a[3..].chars().all(|c| c.is_ascii_hexdigit()));
        // FNV-1a of the empty string is its offset basis: pins the hash function.
        assert_eq!(host_ifname(""), "lxccbf29ce4842");
    }
}
