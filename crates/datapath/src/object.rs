//! The compiled BPF object and the names in it.
//!
//! `build.rs` compiles `bpf/plexus.c` with clang; the object is embedded here, aligned for
//! aya's ELF parser.

/// The `plexus.bpf.o` object, built from `bpf/`.
pub static PLEXUS_BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/plexus.bpf.o"));

/// tc ingress of a pod's host-side veth: packets leaving the pod.
pub const PROG_FROM_CONTAINER: &str = "from_container";
/// tc egress of a pod's host-side veth: packets entering the pod.
pub const PROG_TO_CONTAINER: &str = "to_container";
/// tc ingress of the VXLAN device: decapsulated packets.
pub const PROG_FROM_OVERLAY: &str = "from_overlay";
/// All programs in the object.
pub const PROGRAMS: [&str; 3] = [PROG_FROM_CONTAINER, PROG_TO_CONTAINER, PROG_FROM_OVERLAY];

/// LPM trie: prefix to identity, tunnel endpoint and cluster.
pub const MAP_IPCACHE: &str = "PLEXUS_IPCACHE";
/// Hash: local endpoint address to its veth, MACs and identity.
pub const MAP_ENDPOINTS: &str = "PLEXUS_ENDPOINTS";
/// Array of one node configuration.
pub const MAP_CONFIG: &str = "PLEXUS_CONFIG";
/// Per-CPU hash: (reason, direction) to packets and bytes.
pub const MAP_METRICS: &str = "PLEXUS_METRICS";
/// Ring buffer of events (trace, drop, translation, policy verdict).
pub const MAP_EVENTS: &str = "PLEXUS_EVENTS";
/// Per-CPU array of one counter: events lost because the ring buffer was full.
pub const MAP_EVENTS_LOST: &str = "PLEXUS_EVENTS_LOST";
/// LPM trie: (endpoint, direction, peer identity, protocol, port) to allow or deny.
pub const MAP_POLICY: &str = "PLEXUS_POLICY";
/// Hash: endpoint id to whether its ingress and egress are default-deny.
pub const MAP_POLICY_ENFORCE: &str = "PLEXUS_POLICY_ENFORCE";
/// LPM trie: IPv4 prefix a policy names to its node-local CIDR identity (CIDR rules match a
/// peer's address whoever owns it).
pub const MAP_POLICY_CIDR: &str = "PLEXUS_POLICY_CIDR";
/// Hash: per frontend, a master entry (slot 0: active backend count, service id) and one
/// entry per active backend slot (backend id).
pub const MAP_LB_SERVICES: &str = "PLEXUS_LB_SERVICES";
/// Hash: backend id to the backend's address, port, protocol and state.
pub const MAP_LB_BACKENDS: &str = "PLEXUS_LB_BACKENDS";
/// LRU hash: connection tracking (the backend of each service connection, reverse NAT).
pub const MAP_CT: &str = "PLEXUS_CT";
/// Hash: underlay addresses of the nodes with a configured WireGuard peer (strict mode).
pub const MAP_WG_PEERS: &str = "PLEXUS_WG_PEERS";
/// Hash: endpoint id to the port of the node's DNS proxy its DNS queries go to.
pub const MAP_DNS_REDIRECT: &str = "PLEXUS_DNS_REDIRECT";
/// All maps in the object; all are pinned by name.
pub const MAPS: [&str; 14] = [
    MAP_IPCACHE,
    MAP_ENDPOINTS,
    MAP_CONFIG,
    MAP_METRICS,
    MAP_EVENTS,
    MAP_EVENTS_LOST,
    MAP_POLICY,
    MAP_POLICY_ENFORCE,
    MAP_POLICY_CIDR,
    MAP_LB_SERVICES,
    MAP_LB_BACKENDS,
    MAP_CT,
    MAP_WG_PEERS,
    MAP_DNS_REDIRECT,
];
