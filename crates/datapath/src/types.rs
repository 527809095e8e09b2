//! The datapath's vocabulary: node configuration, local endpoints and ipcache entries.
//!
//! These are the values the agent hands to a [`crate::Datapath`]; they carry no kernel state.

use std::{fmt, net::Ipv4Addr, path::PathBuf, str::FromStr};

/// Reserved identity of packets whose source is unknown.
pub const IDENTITY_UNKNOWN: u32 = 0;
/// Reserved identity of the node itself.
pub const IDENTITY_HOST: u32 = 1;
/// Reserved identity of everything outside the cluster mesh.
pub const IDENTITY_WORLD: u32 = 2;
/// Identities are 24 bits wide, like the VXLAN VNI that carries them between nodes.
pub const IDENTITY_MAX: u32 = 0x00FF_FFFF;
/// Node-local identities (CIDR identities of policy prefixes) start here, as Cilium's local
/// scope does; they live in this node's ipcache and policy only and never travel in a VNI.
pub const IDENTITY_LOCAL_BASE: u32 = 1 << 24;
/// The last node-local identity.
pub const IDENTITY_LOCAL_MAX: u32 = (1 << 25) - 1;

/// How packets to pods on other nodes leave this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RoutingMode {
    /// VXLAN encapsulation towards the remote node, the source identity in the VNI.
    #[default]
    Tunnel,
    /// Plain routing by the kernel; the agent installs the routes.
    Native,
}

impl RoutingMode {
    /// The value of `node_config.routing_mode` in the BPF programs.
    pub(crate) fn as_raw(self) -> u32 {
        match self {
            Self::Tunnel => 0,
            Self::Native => 1,
        }
    }
}

/// Transparent encryption of pod traffic between nodes (WireGuard), as the programs see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Encryption {
    /// Pod traffic to other nodes goes through the node's WireGuard device.
    pub enabled: bool,
    /// Strict mode: a pod's packet to a node whose WireGuard peer is not configured (not in
    /// [`crate::Datapath::encrypted_nodes`]) is dropped ([`crate::DropReason::Unencrypted`]),
    /// never sent in the clear. Only with `enabled`.
    pub strict: bool,
}

impl Encryption {
    /// No encryption.
    pub const DISABLED: Self = Self {
        enabled: false,
        strict: false,
    };

    /// The bits of `node_config.flags` in the BPF programs.
    pub(crate) fn as_raw_flags(self) -> u32 {
        let mut flags = 0;
        if self.enabled {
            flags |= 0x1;
            if self.strict {
                flags |= 0x2;
            }
        }
        flags
    }

    /// Whether a pod's packet to a destination behind `node` (not this node, `this_node`) is
    /// dropped when `encrypted` says which nodes have a peer: the programs' rule, for the fake
    /// datapath and for tests.
    pub fn strict_drop(
        self,
        this_node: Ipv4Addr,
        node: Option<Ipv4Addr>,
        encrypted: impl FnOnce(Ipv4Addr) -> bool,
    ) -> bool {
        let flags = self.as_raw_flags();
        if flags & 0x3 != 0x3 {
            return false;
        }
        match node {
            Some(n) if !n.is_unspecified() && n != this_node => !encrypted(n),
            _ => false,
        }
    }
}

/// What the datapath of one node needs to know about that node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's underlay address (the tunnel source).
    pub node_ip: Ipv4Addr,
    /// Tunnel or native routing to other nodes.
    pub routing: RoutingMode,
    /// The pods' gateway address; ARP requests for it are answered by the datapath.
    pub gateway_ip: Ipv4Addr,
    /// The cluster this node belongs to.
    pub cluster_id: u16,
    /// Name of the VXLAN device (collect-metadata mode), created if missing.
    pub tunnel_ifname: String,
    /// A directory on a bpffs where maps and links are pinned; reused across restarts.
    pub pin_dir: PathBuf,
    /// WireGuard encryption and its strict mode.
    pub encryption: Encryption,
}

/// A pod on this node, as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Endpoint id, unique on the node.
    pub id: u16,
    /// The pod's address.
    pub ipv4: Ipv4Addr,
    /// Name of the host-side veth. Empty when it cannot be resolved (device gone).
    pub host_ifname: String,
    /// Index of the host-side veth (0: resolve from `host_ifname`).
    pub host_ifindex: u32,
    /// MAC address of the pod's interface.
    pub pod_mac: [u8; 6],
    /// MAC address of the host-side veth; the pod's gateway resolves to it.
    pub host_mac: [u8; 6],
    /// The pod's security identity.
    pub identity: u32,
}

/// An IPv4 prefix, the ipcache's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// Network address; host bits are cleared by [`Prefix::new`].
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub len: u8,
}

/// An invalid prefix (length over 32, or unparsable text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 prefix {0:?}")]
pub struct PrefixError(pub String);

impl Prefix {
    /// A prefix with the host bits of `addr` cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, PrefixError> {
        if len > 32 {
            return Err(PrefixError(format!("{addr}/{len}")));
        }
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    /// The /32 prefix of one address.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, len: 32 }
    }

    /// Whether `ip` lies in this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let Ok(p) = Self::new(ip, self.len) else {
            return false;
        };
        p.addr == self.addr
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PrefixError(s.to_owned());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| err())?),
            None => (s, 32),
        };
        Self::new(addr.parse().map_err(|_| err())?, len).map_err(|_| err())
    }
}

/// What the ipcache knows about a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    /// Security identity of the addresses in the prefix.
    pub identity: u32,
    /// The node to tunnel to, if the prefix lives behind another node.
    pub tunnel_endpoint: Option<Ipv4Addr>,
    /// The cluster the prefix belongs to.
    pub cluster_id: u16,
}

/// One counter of the datapath's metrics map, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Metric {
    /// Direction of the traffic counted.
    pub direction: Direction,
    /// `None` for forwarded packets, the drop reason otherwise.
    pub drop_reason: Option<crate::event::DropReason>,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}

/// Traffic direction, seen from the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Towards a pod.
    Ingress,
    /// Leaving a pod.
    Egress,
}

impl Direction {
    /// The direction for a raw code of the BPF programs (`DIR_*`: 1 ingress, 2 egress).
    pub fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Self::Ingress),
            2 => Some(Self::Egress),
            _ => None,
        }
    }

    /// The raw code used by the BPF programs.
    pub fn as_raw(self) -> u8 {
        match self {
            Self::Ingress => 1,
            Self::Egress => 2,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_clears_host_bits_and_parses() {
        let p: Prefix = "10.60.1.7/16".parse().unwrap();
        assert_eq!(p, Prefix::new(Ipv4Addr::new(10, 60, 0, 0), 16).unwrap());
        assert_eq!(p.to_string(), "10.60.0.0/16");
        assert!(p.contains(Ipv4Addr::new(10, 60, 200, 1)));
        assert!(!p.contains(Ipv4Addr::new(10, 61, 0, 1)));
        assert_eq!("1.2.3.4".parse::<Prefix>().unwrap().len, 32);
        assert!("1.2.3.4/33".parse::<Prefix>().is_err());
        assert!("x/3".parse::<Prefix>().is_err());
        assert!(
            Prefix::new(Ipv4Addr::UNSPECIFIED, 0)
                .unwrap()
                .contains(Ipv4Addr::BROADCAST)
        );
    }
}
