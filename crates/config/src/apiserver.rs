//! `plexus-apiserver`'s flags and configuration file (`/etc/plexus/apiserver.yaml` on a host).
//!
//! ```yaml
//! cluster-name: cluster1
//! cluster-id: 1
//! state-dir: /var/lib/plexus/apiserver
//! etcd-listen: 192.168.1.10:2379
//! etcd-advertise: [192.168.1.10]
//! http-listen: 192.168.1.10:9963
//! service-cidr: 10.96.0.0/16
//! api-listen: 192.168.1.10:4245
//! clustermesh-config: /var/lib/plexus/clustermesh
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use plexus_ipam::Cidr4;
use serde::{Deserialize, Serialize};

/// Every option of `plexus-apiserver`: its flags and the keys of its file at once (the file
/// layer of the apiserver's own `ApiServerConfig`). Every value is optional here; the daemon
/// fills defaults and requires what it needs after laying the flags over the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApiServerConfig {
    /// Cluster name (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// Cluster id: 1..=255, or 1..=511 with max-connected-clusters 511 (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<u32>,
    /// 255 or 511 [default: 255].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connected_clusters: Option<u32>,
    /// Certificates (pki/), etcd data (etcd/) and logs (required).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Use this etcd instead of starting one (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::list"
    )]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Client identity for etcd-endpoints: CA file.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<PathBuf>,
    /// Client identity for etcd-endpoints: certificate (CN admin-<cluster> or root).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_cert: Option<PathBuf>,
    /// Client identity for etcd-endpoints: key.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_key: Option<PathBuf>,
    /// Local etcd: client port address [default: 127.0.0.1:2379].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_listen: Option<SocketAddr>,
    /// Local etcd: peer port address [default: 127.0.0.1:2380].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_peer_listen: Option<SocketAddr>,
    /// Local etcd: address peers reach it by, advertised and in its certificate (repeat).
    #[arg(long)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::list"
    )]
    pub etcd_advertise: Option<Vec<IpAddr>>,
    /// Health, readiness and metrics [default: 127.0.0.1:9963].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// Also serve the apiserver's API (status, flow relay, web view) on this TCP address with
    /// mutual TLS: clients need a certificate of the cluster's CA (of `--api-tls-ca`).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<SocketAddr>,
    /// The API's server certificate [default: issued from the CA in `<state-dir>/pki`].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls_cert: Option<PathBuf>,
    /// The API's server key (with `--api-tls-cert`).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls_key: Option<PathBuf>,
    /// The CA client certificates must chain to (with `--api-tls-cert`).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls_ca: Option<PathBuf>,
    /// The flow relay: the connected clusters' configuration directory (one file per remote
    /// cluster, as the agents read it); each remote's relay is asked at the host of its first
    /// etcd endpoint and `--relay-peer-port`. `--kvstoremesh-config`'s directory, whose files
    /// name the remotes' own etcds, is read first [without either, only this cluster].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustermesh_config: Option<PathBuf>,
    /// The flow relay: the port of the agents' API (mutual TLS) on each node's InternalIP
    /// [default: 9965].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_agent_port: Option<u16>,
    /// The flow relay: the port of the connected clusters' relays (their apiserver's
    /// `--api-listen` port) [default: 4245].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_peer_port: Option<u16>,
    /// KVStoreMesh: mirror the remote clusters configured in this directory.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvstoremesh_config: Option<PathBuf>,
    /// Allocate service addresses from this CIDR.
    #[arg(long)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::text"
    )]
    pub service_cidr: Option<Cidr4>,
    /// Heartbeat period [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::value::duration"
    )]
    pub heartbeat_interval: Option<Duration>,
}

crate::file_methods!(ApiServerConfig);
