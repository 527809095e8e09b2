//! The datapath: what moves packets between pods, nodes and clusters.
//!
//! The agent drives it through the narrow [`Datapath`] trait: local endpoints, the ipcache
//! (prefix to identity and tunnel endpoint), service load balancing ([`LbService`]: a frontend
//! and its active and inactive backends), per-endpoint policy and a stream of
//! [`MonitorEvent`]s. Two
//! implementations live here:
//!
//! - [`EbpfDatapath`]: the C programs under `bpf/` (built by `build.rs` into one object,
//!   embedded in this crate) loaded with aya, maps and tc links pinned under bpffs so that a
//!   restarted agent keeps traffic flowing;
//! - [`FakeDatapath`]: in-memory maps for control-plane tests that need no kernel.
//!
//! Load balancing happens where a pod's packet enters the datapath, like Cilium's: a packet to a
//! frontend is translated to a backend chosen at random among the active ones and kept for the
//! connection in a conntrack map, the replies get the service address back before they enter
//! the pod, and a pod reaching itself through its service is hairpinned (its source becomes
//! 169.254.42.1). TCP and UDP; everything else to a service address passes untouched.
//!
//! Policy ([`policy`]): per endpoint and direction a default-deny flag and allow/deny entries
//! keyed by peer identity, protocol and port, in one longest-prefix map, plus the prefixes that
//! CIDR rules name (a peer's address in one is looked up with its CIDR identity too, whoever
//! owns it); egress is checked in
//! `from_container` after service translation, ingress in `to_container`; every flow is tracked
//! so replies of allowed connections pass. IPv4 only for now.
//!
//! Encryption ([`Encryption`] in [`NodeConfig`]): with WireGuard in strict mode, a pod's packet
//! to a pod behind another node is dropped ([`DropReason::Unencrypted`]) unless that node is
//! one of [`Datapath::encrypted_nodes`] (a WireGuard peer is configured for it). The routing
//! into the WireGuard device itself is the agent's (policy routing, routes).

pub mod bpffs;
pub mod capacity;
pub mod ebpf;
pub mod event;
pub mod fake;
pub mod lb;
pub mod object;
pub mod policy;
pub mod proxy;
pub mod types;

mod abi;

use std::{net::Ipv4Addr, path::PathBuf};

pub use capacity::{MapSizes, MapUsage};
pub use ebpf::EbpfDatapath;
pub use event::{DropReason, EventKind, MonitorEvent, ObservationPoint, PolicyMatch, TraceState};
pub use fake::FakeDatapath;
pub use lb::{Frontend, L4Proto, LbService};
pub use types::{
    Direction, Encryption, Endpoint, IDENTITY_HOST, IDENTITY_LOCAL_BASE, IDENTITY_LOCAL_MAX,
    IDENTITY_MAX, IDENTITY_UNKNOWN, IDENTITY_WORLD, IpcacheValue, Metric, NodeConfig, Prefix,
    RoutingMode,
};

/// Capacity of the event broadcast channel; slow subscribers see `Lagged` and lose events,
/// never block the datapath.
pub const EVENT_CHANNEL_CAPACITY: usize = 4096;

/// Errors of [`Datapath`] operations.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A value the datapath cannot represent.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid (e.g. "endpoint 10.0.0.5").
        what: String,
        /// Why.
        reason: String,
    },
    /// Loading the BPF object failed.
    #[error("loading the BPF object (maps pinned under {pin_dir}): {source}")]
    Load {
        /// The pin directory used.
        pin_dir: PathBuf,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program is missing from the object or failed to load into the kernel.
    #[error("program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map is missing from the object, has the wrong type, or an operation on it failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The map is full (the kernel refused a new entry with `E2BIG` or `ENOSPC`): the entry
    /// was not written and what the map held is unchanged (see [`capacity`]).
    #[error("map {map} is full: entry not written (raise its size in the agent's options)")]
    MapFull {
        /// Map name.
        map: &'static str,
    },
    /// Attaching a program to a device failed.
    #[error("attaching {program} to {device}: {reason}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Device name.
        device: String,
        /// What went wrong.
        reason: String,
    },
    /// Creating or inspecting a network device failed.
    #[error("network device {device}: {reason}")]
    Netdev {
        /// Device name.
        device: String,
        /// What went wrong.
        reason: String,
    },
    /// A request to the kernel's network configuration failed (the error names the device).
    #[error(transparent)]
    Netlink(#[from] plexus_netlink::NetlinkError),
    /// The pin directory is unusable.
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    /// A file system operation under the pin directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl DatapathError {
    /// The map that was full, when this error is [`DatapathError::MapFull`].
    pub fn full_map(&self) -> Option<&'static str> {
        match self {
            Self::MapFull { map } => Some(map),
            _ => None,
        }
    }
}

/// The narrow interface the agent drives. Implementations are shared between tasks.
///
/// For [`EbpfDatapath`], calls that touch devices (`upsert_endpoint`, `remove_endpoint`,
/// `endpoints`' name lookups) resolve interface names in the calling thread's network
/// namespace: call them from the node's namespace, as [`EbpfDatapath::load`].
pub trait Datapath: Send + Sync {
    /// Adds or replaces a local endpoint and makes its host-side veth run the datapath.
    fn upsert_endpoint(&self, endpoint: &Endpoint) -> Result<(), DatapathError>;
    /// Forgets the local endpoint with this address (and detaches from its veth; the kernel
    /// releases the links asynchronously, within milliseconds). Removing an unknown endpoint is
    /// not an error.
    fn remove_endpoint(&self, ipv4: Ipv4Addr) -> Result<(), DatapathError>;
    /// The local endpoints, in address order.
    fn endpoints(&self) -> Result<Vec<Endpoint>, DatapathError>;
    /// Adds or replaces an ipcache entry.
    fn upsert_ipcache(&self, prefix: Prefix, value: IpcacheValue) -> Result<(), DatapathError>;
    /// Removes an ipcache entry; removing an absent one is not an error.
    fn remove_ipcache(&self, prefix: Prefix) -> Result<(), DatapathError>;
    /// The ipcache, in prefix order.
    fn ipcache(&self) -> Result<Vec<(Prefix, IpcacheValue)>, DatapathError>;
    /// Forwarded and dropped packet counters.
    fn metrics(&self) -> Result<Vec<Metric>, DatapathError>;
    /// A new subscription to the datapath's events (traces, drops, translations, policy
    /// verdicts), from now on. A subscriber that falls behind by more than
    /// [`EVENT_CHANNEL_CAPACITY`] events gets `Lagged` with the count it missed.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MonitorEvent>;
    /// How many events the programs lost since the event counter was created (with the pinned
    /// maps: it survives agent restarts) because the ring buffer was full: a running total,
    /// summed over CPUs. Events lost between the ring buffer and a subscriber are the
    /// subscriber's `Lagged` instead.
    fn events_lost(&self) -> Result<u64, DatapathError>;
    /// Adds or replaces the load balancing of one frontend (see [`LbService`]). Connections
    /// established to a backend that stays (active or inactive) keep it.
    fn upsert_service(&self, service: &LbService) -> Result<(), DatapathError>;
    /// Stops load balancing a frontend; removing an unknown one is not an error.
    fn remove_service(&self, frontend: Frontend) -> Result<(), DatapathError>;
    /// Every frontend with its backends, in frontend order.
    fn services(&self) -> Result<Vec<LbService>, DatapathError>;
    /// Replaces the policy of local endpoint `endpoint_id`. New entries are written before the
    /// enforcement flags and stale entries removed last, so a connection allowed before and
    /// after never sees a gap.
    fn set_policy(
        &self,
        endpoint_id: u16,
        policy: &policy::EndpointPolicy,
    ) -> Result<(), DatapathError>;
    /// Forgets the policy of an endpoint (gone, or selected by no rule any more).
    fn remove_policy(&self, endpoint_id: u16) -> Result<(), DatapathError>;
    /// The endpoints with a policy and its compiled map entries (key -> deny).
    fn policies(&self) -> Result<PolicyTables, DatapathError>;
    /// Adds or replaces a prefix that policies name, with its node-local CIDR identity: a
    /// peer whose address lies in it (the most specific such prefix) is also looked up with
    /// that identity, whoever owns the address (see [`policy`]).
    fn upsert_policy_cidr(&self, prefix: Prefix, identity: u32) -> Result<(), DatapathError>;
    /// Forgets a policy prefix; removing an absent one is not an error.
    fn remove_policy_cidr(&self, prefix: Prefix) -> Result<(), DatapathError>;
    /// The policy prefixes and their CIDR identities.
    fn policy_cidrs(&self) -> Result<std::collections::BTreeMap<Prefix, u32>, DatapathError>;
    /// Marks the node at underlay address `node` as having a configured WireGuard peer: in
    /// strict mode, pod traffic to it passes from now on. Call it after the device accepted
    /// the peer.
    fn upsert_encrypted_node(&self, node: Ipv4Addr) -> Result<(), DatapathError>;
    /// Forgets `node` (its peer is about to go): in strict mode, pod traffic to it is dropped.
    /// Removing an unknown node is not an error.
    fn remove_encrypted_node(&self, node: Ipv4Addr) -> Result<(), DatapathError>;
    /// The nodes marked with [`Datapath::upsert_encrypted_node`], in address order.
    fn encrypted_nodes(&self) -> Result<std::collections::BTreeSet<Ipv4Addr>, DatapathError>;
    /// Sends the DNS queries (UDP and TCP to port 53) that egress policy allows endpoint
    /// `endpoint_id` to the node's DNS proxy listening on 127.0.0.1:`proxy_port`, or, with
    /// `None`, straight to their servers again. While no proxy socket is there, queries go to
    /// their servers (see [`proxy`]).
    fn set_dns_redirect(
        &self,
        endpoint_id: u16,
        proxy_port: Option<u16>,
    ) -> Result<(), DatapathError>;
    /// The endpoints whose DNS queries go to the proxy, with the proxy's port.
    fn dns_redirects(&self) -> Result<std::collections::BTreeMap<u16, u16>, DatapathError>;
    /// The peer addresses that local endpoints have live connections to, as policy's
    /// conntrack records them (connections the endpoints opened, allowed on their way out; a
    /// TCP connection the endpoint is closing does not count): an address a `toFQDNs` rule
    /// allowed stays allowed while one of them uses it.
    fn connected_peers(&self) -> Result<std::collections::BTreeSet<Ipv4Addr>, DatapathError>;
    /// How full the sized maps are ([`capacity`]): entries and capacity of each. Counting walks
    /// the maps' keys (one system call per entry with the eBPF datapath). A datapath without
    /// sized maps answers none.
    fn map_usage(&self) -> Result<Vec<MapUsage>, DatapathError> {
        Ok(Vec::new())
    }
}

/// Per endpoint: ingress and egress enforcement, and the compiled entries (key -> deny).
pub type PolicyTables = std::collections::BTreeMap<
    u16,
    (
        (bool, bool),
        std::collections::BTreeMap<policy::PolicyKey, bool>,
    ),
>;

/// Checks what both implementations refuse.
pub(crate) fn validate_endpoint(ep: &Endpoint) -> Result<(), DatapathError> {
    let invalid = |reason: String| DatapathError::Invalid {
        what: format!("endpoint {} ({})", ep.ipv4, ep.id),
        reason,
    };
    if ep.identity > IDENTITY_MAX {
        return Err(invalid(format!(
            "identity {} does not fit in 24 bits",
            ep.identity
        )));
    }
    if ep.host_ifname.is_empty() && ep.host_ifindex == 0 {
        return Err(invalid("no host interface name or index".into()));
    }
    Ok(())
}

/// Checks a policy prefix's identity: node-local CIDR identities only.
pub(crate) fn validate_policy_cidr(prefix: Prefix, identity: u32) -> Result<(), DatapathError> {
    if !(IDENTITY_LOCAL_BASE..=IDENTITY_LOCAL_MAX).contains(&identity) {
        return Err(DatapathError::Invalid {
            what: format!("policy prefix {prefix}"),
            reason: format!("identity {identity} is not a node-local CIDR identity"),
        });
    }
    if prefix.len > 32 {
        return Err(DatapathError::Invalid {
            what: format!("policy prefix {prefix}"),
            reason: "prefix longer than 32 bits".into(),
        });
    }
    Ok(())
}

/// Checks an ipcache value.
pub(crate) fn validate_ipcache(prefix: Prefix, v: &IpcacheValue) -> Result<(), DatapathError> {
    if v.identity > IDENTITY_MAX
        && !(IDENTITY_LOCAL_BASE..=IDENTITY_LOCAL_MAX).contains(&v.identity)
    {
        return Err(DatapathError::Invalid {
            what: format!("ipcache entry {prefix}"),
            reason: format!(
                "identity {} is neither a 24-bit identity nor a node-local one",
                v.identity
            ),
        });
    }
    if prefix.len > 32 {
        return Err(DatapathError::Invalid {
            what: format!("ipcache entry {prefix}"),
            reason: "prefix longer than 32 bits".into(),
        });
    }
    Ok(())
}
