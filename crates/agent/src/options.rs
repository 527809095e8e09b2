//! The agent's options: flags (and, later, its configuration file).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use plexus_ipam::Cidr4;

/// How packets reach other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Routing {
    /// VXLAN between nodes, the source identity in the VNI.
    Tunnel,
    /// Plain routes to other nodes' pod CIDRs.
    Native,
}

/// Which datapath the agent drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatapathKind {
    /// eBPF programs in the kernel.
    Ebpf,
    /// In-memory maps (control-plane tests).
    Fake,
}

/// The Plexus node agent.
#[derive(Parser, Debug)]
#[command(name = "plexus-agent", version)]
pub struct Options {
    /// Cluster name.
    #[arg(long)]
    pub cluster_name: String,
    /// Cluster id.
    #[arg(long)]
    pub cluster_id: u32,
    /// 255 or 511.
    #[arg(long, default_value_t = 255)]
    pub max_connected_clusters: u32,
    /// This node's name.
    #[arg(long)]
    pub node_name: String,
    /// This node's underlay address (its tunnel endpoint).
    #[arg(long)]
    pub node_ip: Ipv4Addr,
    /// The cluster's pod CIDR, carved into node CIDRs.
    #[arg(long)]
    pub pod_cidr: Cidr4,
    /// Prefix length of each node's CIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_size: u8,
    /// How packets reach other nodes.
    #[arg(long, value_enum, default_value = "tunnel")]
    pub routing: Routing,
    /// The datapath.
    #[arg(long, value_enum, default_value = "ebpf")]
    pub datapath: DatapathKind,
    /// Pod MTU (default: 1450 in tunnel mode, 1500 in native mode).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Endpoint state, bpffs and cgroup2 mounts.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The cluster's etcd (comma-separated URLs).
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd_endpoints: Vec<String>,
    /// Client identity for the cluster's etcd: CA.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client identity: certificate.
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// Client identity: key.
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// Remote-cluster configuration directory (one file per remote).
    #[arg(long)]
    pub clustermesh_config: PathBuf,
    /// The API socket (local, fully privileged).
    #[arg(long)]
    pub api_socket: PathBuf,
    /// Also serve the API on this TCP address with mutual TLS (clients need a certificate of
    /// `--api-tls-ca`; only `admin-<cluster>` may write).
    #[arg(long, requires_all = ["api_tls_cert", "api_tls_key", "api_tls_ca"])]
    pub api_listen: Option<std::net::SocketAddr>,
    /// The TCP API's server certificate.
    #[arg(long, requires = "api_listen")]
    pub api_tls_cert: Option<PathBuf>,
    /// The TCP API's server key.
    #[arg(long, requires = "api_listen")]
    pub api_tls_key: Option<PathBuf>,
    /// The CA that client certificates of the TCP API must chain to (the cluster's).
    #[arg(long, requires = "api_listen")]
    pub api_tls_ca: Option<PathBuf>,
    /// Withdraw an unreachable remote cluster's service backends after this long (default:
    /// keep them until it returns; its backends are skipped meanwhile anyway).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub clustermesh_service_cache_ttl: Option<Duration>,
    /// `policy-default-local-cluster`: peer endpoint selectors without the cluster label select
    /// only this cluster's endpoints (as current Cilium releases do); `false` gives the older
    /// any-cluster behaviour.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub policy_default_local_cluster: bool,
    /// Also serve `/metrics` (Prometheus) on this TCP address.
    #[arg(long)]
    pub prometheus_listen: Option<std::net::SocketAddr>,
    /// podman's state file (`<graphroot>/libpod/bolt_state.db`), where the identity of a
    /// container registered by a CNI network with `"runtime": "podman"` is read.
    #[arg(
        long,
        default_value = "/var/lib/containers/storage/libpod/bolt_state.db"
    )]
    pub podman_state: PathBuf,
}
