//! The crate's error: every variant names the device, route, address or namespace at fault.

use std::io;
use std::path::PathBuf;

/// A kernel network configuration request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened, or the runtime that drives it built.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// No device of this name in the namespace the socket belongs to.
    #[error("device {device}: no such device")]
    NoSuchDevice {
        /// The device name.
        device: String,
    },
    /// A request on a device (create, set up, delete, read) failed.
    #[error("device {device}: {op}: {source}")]
    Device {
        /// The device name.
        device: String,
        /// What was asked, e.g. `create veth (peer pod0)`.
        op: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A device exists but is not what the caller needs (e.g. a VXLAN device not in
    /// collect-metadata mode).
    #[error("device {device}: {reason}")]
    Unsuitable {
        /// The device name.
        device: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Adding or reading an address failed.
    #[error("address {address} on {device}: {source}")]
    Address {
        /// The address (CIDR) or `*` when reading all.
        address: String,
        /// The device name.
        device: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Adding, replacing, deleting or listing a route failed.
    #[error("route {route}: {op}: {source}")]
    Route {
        /// The route, as `ip route` would print it (`10.0.1.0/24 via 192.168.0.2`).
        route: String,
        /// `add`, `replace`, `delete` or `list`.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Adding or listing a policy-routing rule failed.
    #[error("rule {rule}: {op}: {source}")]
    Rule {
        /// The rule, as `ip rule` would print it (`ipproto udp dport 8472 lookup 201`).
        rule: String,
        /// `add` or `list`.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Replacing or listing a neighbour entry failed.
    #[error("neighbour {address} on {device}: {source}")]
    Neighbour {
        /// The IP address of the entry (or `*`).
        address: String,
        /// The device name.
        device: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A network namespace could not be opened or entered.
    #[error("network namespace {}: {source}", path.display())]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A value handed in could not be parsed.
    #[error("{what} {value:?}: {reason}")]
    Parse {
        /// What was expected (`IPv4 prefix`, `MAC address`).
        what: &'static str,
        /// The text at fault.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// The thread running the requests panicked.
    #[error("the thread running netlink requests panicked")]
    Panicked,
}

impl NetlinkError {
    /// The errno the kernel answered with, if this error carries one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Socket(e)
            | Self::Device { source: e, .. }
            | Self::Address { source: e, .. }
            | Self::Route { source: e, .. }
            | Self::Rule { source: e, .. }
            | Self::Neighbour { source: e, .. }
            | Self::Netns { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }
}

/// The kernel's errno as an `io::Error` (so it prints as "File exists (os error 17)"); other
/// protocol failures keep rtnetlink's description.
pub(crate) fn kernel(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) if msg.code.is_some() => msg.to_io(),
        other => io::Error::other(other.to_string()),
    }
}
