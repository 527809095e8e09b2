//! `plexus-agent`'s flags and configuration file (`/etc/plexus/agent.yaml` on a host).
//!
//! ```yaml
//! cluster-name: cluster1
//! cluster-id: 1
//! node-name: node1
//! node-ip: 192.168.1.11
//! pod-cidr: 10.1.0.0/16
//! state-dir: /var/lib/plexus/agent
//! etcd-endpoints: [https://192.168.1.10:2379]
//! etcd-ca: /etc/plexus/pki/ca.crt
//! etcd-cert: /etc/plexus/pki/node1.crt
//! etcd-key: /etc/plexus/pki/node1.key
//! clustermesh-config: /etc/plexus/clustermesh
//! api-socket: /run/plexus/agent.sock
//! enable-wireguard: true                          # optional: encrypt node-to-node traffic
//! wireguard-socket: /run/wireguard/plexus_wg0.sock
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use plexus_ipam::Cidr4;
use serde::{Deserialize, Serialize};

/// How packets reach other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// VXLAN between nodes, the source identity in the VNI.
    Tunnel,
    /// Plain routes to other nodes' pod CIDRs.
    Native,
}

/// Which datapath the agent drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    /// eBPF programs in the kernel.
    Ebpf,
    /// In-memory maps (control-plane tests).
    Fake,
}

/// Every option of `plexus-agent`: its flags (`--cluster-name`) and the keys of its file
/// (`cluster-name:`) at once. Every value is optional here; the agent fills defaults and
/// requires what it needs after laying the flags over the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AgentConfig {
    /// Cluster name (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// Cluster id (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<u32>,
    /// 255 or 511 [default: 255].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connected_clusters: Option<u32>,
    /// This node's name (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// This node's underlay address, its tunnel endpoint (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<Ipv4Addr>,
    /// The cluster's pod CIDR, carved into node CIDRs (required).
    #[arg(long)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::text"
    )]
    pub pod_cidr: Option<Cidr4>,
    /// Prefix length of each node's CIDR [default: 24].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_cidr_size: Option<u8>,
    /// How packets reach other nodes [default: tunnel].
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
    /// The datapath [default: ebpf].
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathKind>,
    /// Pod MTU [default: 1450 in tunnel mode, 1500 in native mode].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Endpoint state, bpffs and cgroup2 mounts (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The cluster's etcd (comma-separated URLs; required).
    #[arg(long, value_delimiter = ',')]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::list"
    )]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Client identity for the cluster's etcd: CA.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,
    /// Client identity: certificate.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,
    /// Client identity: key.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,
    /// Remote-cluster configuration directory, one file per remote (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustermesh_config: Option<PathBuf>,
    /// The API socket, local and fully privileged (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    /// Also serve the API on this TCP address with mutual TLS (needs `--api-tls-cert`,
    /// `--api-tls-key` and `--api-tls-ca`; clients need a certificate of `--api-tls-ca`, and
    /// only `admin-<cluster>` may write).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<SocketAddr>,
    /// The TCP API's server certificate.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls_cert: Option<PathBuf>,
    /// The TCP API's server key.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls_key: Option<PathBuf>,
    /// The CA that client certificates of the TCP API must chain to (the cluster's).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls_ca: Option<PathBuf>,
    /// Withdraw an unreachable remote cluster's service backends after this long (default:
    /// keep them until it returns; its backends are skipped meanwhile anyway).
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::duration"
    )]
    pub clustermesh_service_cache_ttl: Option<Duration>,
    /// How many entries (nodes, ipcache entries, identities, services together) one remote
    /// cluster may make this agent hold; new keys beyond are refused and counted
    /// [default: 250000].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustermesh_max_entries_per_remote: Option<usize>,
    /// The largest value (bytes) read from a remote cluster; larger ones are refused before
    /// they are parsed, and counted [default: 262144].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustermesh_max_value_size: Option<usize>,
    /// The longest wait between forced re-lists of a remote cluster's prefixes (a remote that
    /// compacts its store breaks our watches): the wait doubles per break up to this
    /// [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::duration"
    )]
    pub clustermesh_max_relist_interval: Option<Duration>,
    /// `policy-default-local-cluster`: peer endpoint selectors without the cluster label select
    /// only this cluster's endpoints (as current Cilium releases do); `false` gives the older
    /// any-cluster behaviour [default: true].
    #[arg(long, action = clap::ArgAction::Set)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_default_local_cluster: Option<bool>,
    /// Also serve `/metrics` (Prometheus) on this TCP address.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_listen: Option<SocketAddr>,
    /// podman's state file (`<graphroot>/libpod/bolt_state.db`), where the identity of a
    /// container registered by a CNI network with `"runtime": "podman"` is read [default:
    /// /var/lib/containers/storage/libpod/bolt_state.db].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman_state: Option<PathBuf>,
    /// Encrypt pod traffic to other nodes (of this cluster and remote ones) with WireGuard, as
    /// Cilium's `enable-wireguard`: the agent drives the node's userspace device
    /// (`plexus-wireguard`, started beside the agent, never by it) [default: false].
    #[arg(long, action = clap::ArgAction::Set)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_wireguard: Option<bool>,
    /// With WireGuard on: drop pod traffic to another node whose WireGuard peer is not
    /// configured yet, rather than send it in the clear [default: true].
    #[arg(long, action = clap::ArgAction::Set)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_strict_mode: Option<bool>,
    /// The WireGuard device's UAPI socket [default: /run/wireguard/plexus_wg0.sock].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_socket: Option<PathBuf>,
    /// Decode the datapath's events into flows (Hubble's shape), kept in a ring and served on
    /// `GET /v1/flows` for `plexus observe` and the relay; off, there is no flow task and
    /// `/v1/flows` answers unavailable [default: true].
    #[arg(long, action = clap::ArgAction::Set)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_flows: Option<bool>,
    /// How many flows the node keeps for `/v1/flows` history (Hubble's ring buffer size)
    /// [default: 4095].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_ring_size: Option<usize>,
    /// When a running pod's identity labels change (its labels or its namespace's), how long
    /// the agent waits between allocating the new identity and switching the pod to it, so
    /// that every node of every cluster knows the new identity before packets carry it
    /// (Cilium's `identity-change-grace-period`) [default: 500ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::duration"
    )]
    pub identity_change_grace_period: Option<Duration>,
    /// The port of the node's DNS proxy on 127.0.0.1, where the datapath redirects the DNS
    /// queries of pods whose egress policy has DNS rules (Cilium's `tofqdns-proxy-port`)
    /// [default: 10053].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tofqdns_proxy_port: Option<u16>,
    /// The shortest time an address learned from a DNS answer stays allowed for `toFQDNs`,
    /// whatever the answer's TTL; 0 honours the TTLs (Cilium's `tofqdns-min-ttl`) [default: 0s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::duration"
    )]
    pub tofqdns_min_ttl: Option<Duration>,
    /// The longest the DNS proxy holds an answer until the datapath allows its new addresses
    /// (Cilium's `tofqdns-proxy-response-max-delay`) [default: 100ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::duration"
    )]
    pub tofqdns_proxy_response_max_delay: Option<Duration>,
    /// Entries of the datapath's ipcache map (prefixes of every endpoint, node and CIDR this
    /// node knows, of all clusters), as Cilium's `bpf-ipcache-map-max`; takes effect when the
    /// map is created, a pinned map keeping its size [default: 512000].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_ipcache_map_max: Option<u32>,
    /// Entries of each load-balancing map (services: one per frontend and one per active
    /// backend slot; backends: one per frontend and backend address), as Cilium's
    /// `bpf-lb-map-max` [default: 262144].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_lb_map_max: Option<u32>,
    /// Entries of the connection-tracking map (an LRU map: when full, the least recently used
    /// connections are forgotten), as Cilium's `bpf-ct-global-tcp-max` and `-any-max`
    /// together [default: 262144].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_ct_global_max: Option<u32>,
    /// Entries of the policy map, shared by all local endpoints (Cilium's `bpf-policy-map-max`
    /// is per endpoint) [default: 262144].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf_policy_map_max: Option<u32>,
}

crate::file_methods!(AgentConfig);
