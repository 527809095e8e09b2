//! Network devices the datapath needs: the VXLAN device in collect-metadata mode (over
//! rtnetlink, [`plexus_netlink`]), and interface name/index lookups, in the calling thread's
//! network namespace; errors name the device.

use nix::net::if_::{if_indextoname, if_nametoindex};

use crate::DatapathError;

/// VXLAN UDP port (Linux's historical default, the one Cilium uses).
pub const VXLAN_PORT: u16 = 8472;
/// MTU of the VXLAN device: a 1500-byte underlay less 50 bytes of VXLAN overhead.
pub const VXLAN_MTU: u32 = 1450;

/// The index of a device in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32, DatapathError> {
    if_nametoindex(name).map_err(|e| DatapathError::Netdev {
        device: name.to_owned(),
        reason: format!("no such device: {e}"),
    })
}

/// The name of a device, or an empty string when it is gone.
pub fn ifname(index: u32) -> String {
    if_indextoname(index)
        .ok()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default()
}

/// Creates the VXLAN device in collect-metadata (`external`) mode with UDP port
/// [`VXLAN_PORT`] and MTU [`VXLAN_MTU`] if it is missing; refuses a device of that name that is
/// not VXLAN in external mode; brings it up and returns its index.
pub fn ensure_vxlan(name: &str) -> Result<u32, DatapathError> {
    Ok(plexus_netlink::blocking(|nl| async move {
        nl.ensure_vxlan_external(name, VXLAN_PORT, VXLAN_MTU).await
    })?)
}
