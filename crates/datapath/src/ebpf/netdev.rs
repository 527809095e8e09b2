//! Network devices the datapath needs: the VXLAN device in collect-metadata mode, and
//! interface name/index lookups. Uses the `ip` command (iproute2) in the calling thread's
//! network namespace; errors name the device.

use std::process::Command;

use nix::net::if_::{if_indextoname, if_nametoindex};

use crate::DatapathError;

/// VXLAN UDP port (Linux's historical default, the one Cilium uses).
pub const VXLAN_PORT: u16 = 8472;
/// MTU of the VXLAN device: a 1500-byte underlay less 50 bytes of VXLAN overhead.
pub const VXLAN_MTU: u32 = 1450;

fn netdev_err(device: &str, reason: impl Into<String>) -> DatapathError {
    DatapathError::Netdev {
        device: device.to_owned(),
        reason: reason.into(),
    }
}

fn ip(device: &str, args: &[&str]) -> Result<String, DatapathError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| netdev_err(device, format!("running ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(netdev_err(
            device,
            format!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The index of a device in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32, DatapathError> {
    if_nametoindex(name).map_err(|e| netdev_err(name, format!("no such device: {e}")))
}

/// The name of a device, or an empty string when it is gone.
pub fn ifname(index: u32) -> String {
    if_indextoname(index)
        .ok()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default()
}

/// Creates the VXLAN device in collect-metadata (`external`) mode if it is missing, checks it
/// otherwise, brings it up and returns its index.
pub fn ensure_vxlan(name: &str) -> Result<u32, DatapathError> {
    if if_nametoindex(name).is_err() {
        let port = VXLAN_PORT.to_string();
        let mtu = VXLAN_MTU.to_string();
        ip(
            name,
            &[
                "link", "add", name, "mtu", &mtu, "type", "vxlan", "external", "dstport", &port,
            ],
        )?;
    } else {
        let json = ip(name, &["-d", "-j", "link", "show", "dev", name])?;
        let parsed: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| netdev_err(name, format!("parsing `ip -j link show`: {e}")))?;
        let info = &parsed[0]["linkinfo"];
        if info["info_kind"] != "vxlan" || info["info_data"]["external"] != true {
            return Err(netdev_err(
                name,
                "exists but is not a VXLAN device in collect-metadata (external) mode",
            ));
        }
    }
    ip(name, &["link", "set", "dev", name, "up"])?;
    ifindex(name)
}
