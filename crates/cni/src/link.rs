//! The pod's veth pair, set up in the kernel with the `ip` command (iproute2).
//!
//! [`KernelNetwork`] is the real [`Network`](crate::plugin::Network): the host side is created in
//! the namespace the plugin runs in (the node's), its peer directly inside the pod's namespace
//! under its final name (one atomic `ip link add`, so no temporary name can clash on the host);
//! the pod side is configured from a thread inside the pod's namespace ([`crate::netns`]).
//! Every error names the device and the command that failed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::net::if_::if_nametoindex;

use crate::netns::{self, NetnsError};
use crate::plugin::{Macs, Network};

/// Prefix of host-side veth names (Cilium's).
pub const HOST_PREFIX: &str = "lxc";

/// A device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A command on a device failed.
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
}

fn device_err(device: &str, reason: impl Into<String>) -> LinkError {
    LinkError::Device {
        device: device.to_string(),
        reason: reason.into(),
    }
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

/// The `ip` binary: from `PATH` when it has one, else the usual locations (runtimes may run
/// plugins with a bare environment).
fn ip_binary() -> &'static Path {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    IP.get_or_init(|| {
        let in_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("ip"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        in_path
            .into_iter()
            .chain(["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].map(PathBuf::from))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("ip"))
    })
}

/// Runs `ip ARGS` in the calling thread's network namespace.
fn ip(device: &str, args: &[&str]) -> Result<String, LinkError> {
    let out = Command::new(ip_binary())
        .args(args)
        .output()
        .map_err(|e| device_err(device, format!("running `ip {}`: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(device_err(
            device,
            format!(
                "`ip {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a device exists in the calling thread's namespace.
pub fn exists(device: &str) -> bool {
    if_nametoindex(device).is_ok()
}

fn show_json(device: &str, what: &str) -> Result<serde_json::Value, LinkError> {
    let out = ip(device, &["-j", what, "show", "dev", device])?;
    let parsed: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| device_err(device, format!("parsing `ip -j {what} show`: {e}")))?;
    Ok(parsed[0].clone())
}

/// A device's MAC address.
pub fn mac(device: &str) -> Result<String, LinkError> {
    show_json(device, "link")?["address"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| device_err(device, "has no MAC address"))
}

/// A device's IPv4 addresses in CIDR form.
pub fn ipv4_addresses(device: &str) -> Result<Vec<String>, LinkError> {
    let info = show_json(device, "addr")?;
    Ok(info["addr_info"]
        .as_array()
        .map(|addrs| {
            addrs
                .iter()
                .filter(|a| a["family"] == "inet")
                .filter_map(|a| {
                    Some(format!(
                        "{}/{}",
                        a["local"].as_str()?,
                        a["prefixlen"].as_u64()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Brings a device up.
pub fn set_up(device: &str) -> Result<(), LinkError> {
    ip(device, &["link", "set", "dev", device, "up"]).map(drop)
}

/// Deletes a device; `Ok(false)` when it did not exist.
pub fn delete(device: &str) -> Result<bool, LinkError> {
    if !exists(device) {
        return Ok(false);
    }
    match ip(device, &["link", "del", "dev", device]) {
        Ok(_) => Ok(true),
        // Gone in between (its peer's namespace was deleted): what DEL wants.
        Err(_) if !exists(device) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates the veth pair `host` <-> `pod`, `pod` directly inside the namespace at `netns`.
pub fn create_veth(host: &str, pod: &str, netns: &Path, mtu: u32) -> Result<(), LinkError> {
    let mtu = mtu.to_string();
    let netns = netns.to_string_lossy();
    ip(
        host,
        &[
            "link", "add", host, "mtu", &mtu, "type", "veth", "peer", "name", pod, "mtu", &mtu,
            "netns", &netns,
        ],
    )
    .map(drop)
}

/// Configures the pod side from inside its namespace: `ip`/32 on `ifname`, `ifname` and `lo` up,
/// a link-scope route to `gateway` and the default route through it.
pub fn configure_pod(ifname: &str, ip_addr: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), LinkError> {
    let addr = format!("{ip_addr}/32");
    let gw = gateway.to_string();
    ip(ifname, &["addr", "add", &addr, "dev", ifname])?;
    ip(ifname, &["link", "set", "dev", ifname, "up"])?;
    ip("lo", &["link", "set", "dev", "lo", "up"])?;
    ip(
        ifname,
        &[
            "route",
            "add",
            &format!("{gw}/32"),
            "dev",
            ifname,
            "scope",
            "link",
        ],
    )?;
    ip(
        ifname,
        &["route", "add", "default", "via", &gw, "dev", ifname],
    )?;
    Ok(())
}

/// The kernel: veth pairs through `ip`, pod namespaces entered with `setns`.
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
        let pod = netns::run_in(netns, || -> Result<String, LinkError> {
            configure_pod(ifname, ip_addr, gateway)?;
            mac(ifname)
        })??;
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
