//! `plexus-dns`'s flags and configuration file.
//!
//! ```yaml
//! etcd-endpoints: [https://192.168.1.10:2379]
//! etcd-ca: /etc/plexus/pki/ca.crt
//! etcd-cert: /etc/plexus/pki/dns.crt
//! etcd-key: /etc/plexus/pki/dns.key
//! listen: 0.0.0.0:53
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Every option of `plexus-dns`: its flags and the keys of its file at once. Every value is
/// optional here; the daemon fills defaults and requires what it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DnsConfig {
    /// The cluster's etcd (comma-separated URLs; required unless `zone-file` is given).
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
    /// UDP and TCP address to answer on [default: 0.0.0.0:53].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The cluster domain [default: cluster.local].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// TTL of answers, in seconds [default: 5].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// Serve this zone file (an RFC 1035 master file for the zone `domain`, re-read when it
    /// changes) instead of the cluster's services; no etcd then. The lab's "outside" DNS.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_file: Option<PathBuf>,
}

crate::file_methods!(DnsConfig);
