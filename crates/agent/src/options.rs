//! The agent's options: its flags and its configuration file (`--config FILE`).
//!
//! Both share one schema, [`plexus_config::AgentConfig`], whose keys are the flag names: the
//! command line ([`CommandLine`]) is `--config` plus every option as a flag. [`Options`] is
//! what the daemon runs with: the flags laid over the file (a flag wins), defaults filled in,
//! and every required value present, or an error naming the flag and the file.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use plexus_config::{AgentConfig, ConfigError, invalid, required};
use plexus_datapath::MapSizes;
use plexus_ipam::Cidr4;
use plexus_kvstore::EtcdConfig;

pub use plexus_config::agent::{DatapathKind, Routing};

/// The Plexus node agent's command line.
#[derive(Parser, Debug)]
#[command(name = "plexus-agent", version, about = "The Plexus node agent.")]
pub struct CommandLine {
    /// Read the options from this YAML file (its keys are the flag names without `--`); a flag
    /// given on the command line overrides the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Every option, as a flag.
    #[command(flatten)]
    pub flags: AgentConfig,
}

/// The options the agent runs with (see [`AgentConfig`] for what each one means).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Cluster name.
    pub cluster_name: String,
    /// Cluster id.
    pub cluster_id: u32,
    /// 255 or 511.
    pub max_connected_clusters: u32,
    /// This node's name.
    pub node_name: String,
    /// This node's underlay address (its tunnel endpoint).
    pub node_ip: Ipv4Addr,
    /// The cluster's pod CIDR, carved into node CIDRs.
    pub pod_cidr: Cidr4,
    /// Prefix length of each node's CIDR.
    pub node_cidr_size: u8,
    /// How packets reach other nodes.
    pub routing: Routing,
    /// The datapath.
    pub datapath: DatapathKind,
    /// Pod MTU (default: 1450 in tunnel mode, 1500 in native mode).
    pub mtu: Option<u32>,
    /// Endpoint state, bpffs and cgroup2 mounts.
    pub state_dir: PathBuf,
    /// The cluster's etcd (comma-separated URLs).
    pub etcd_endpoints: Vec<String>,
    /// Client identity for the cluster's etcd: CA.
    pub etcd_ca: Option<PathBuf>,
    /// Client identity: certificate.
    pub etcd_cert: Option<PathBuf>,
    /// Client identity: key.
    pub etcd_key: Option<PathBuf>,
    /// Remote-cluster configuration directory (one file per remote).
    pub clustermesh_config: PathBuf,
    /// The API socket (local, fully privileged).
    pub api_socket: PathBuf,
    /// Also serve the API on this TCP address with mutual TLS (clients need a certificate of
    /// `--api-tls-ca`; only `admin-<cluster>` may write).
    pub api_listen: Option<std::net::SocketAddr>,
    /// The TCP API's server certificate.
    pub api_tls_cert: Option<PathBuf>,
    /// The TCP API's server key.
    pub api_tls_key: Option<PathBuf>,
    /// The CA that client certificates of the TCP API must chain to (the cluster's).
    pub api_tls_ca: Option<PathBuf>,
    /// Withdraw an unreachable remote cluster's service backends after this long (default:
    /// keep them until it returns; its backends are skipped meanwhile anyway).
    pub clustermesh_service_cache_ttl: Option<Duration>,
    /// What one remote cluster may make the agent hold (`clustermesh-max-entries-per-remote`,
    /// `clustermesh-max-value-size`, `clustermesh-max-relist-interval`).
    pub clustermesh_limits: plexus_clustermesh::remote_cluster::Limits,
    /// `policy-default-local-cluster`: peer endpoint selectors without the cluster label select
    /// only this cluster's endpoints (as current Cilium releases do); `false` gives the older
    /// any-cluster behaviour.
    pub policy_default_local_cluster: bool,
    /// Also serve `/metrics` (Prometheus) on this TCP address.
    pub prometheus_listen: Option<std::net::SocketAddr>,
    /// podman's state file (`<graphroot>/libpod/bolt_state.db`), where the identity of a
    /// container registered by a CNI network with `"runtime": "podman"` is read.
    pub podman_state: PathBuf,
    /// `enable-wireguard`: pod traffic to other nodes goes through the node's WireGuard device.
    pub enable_wireguard: bool,
    /// `encryption-strict-mode`: with WireGuard, pod traffic to a node without a configured
    /// peer is dropped (default true; without WireGuard it has no effect).
    pub encryption_strict_mode: bool,
    /// The WireGuard device's UAPI socket.
    pub wireguard_socket: PathBuf,
    /// `enable-flows`: decode datapath events into flows for `/v1/flows` (default true).
    pub enable_flows: bool,
    /// `flow-ring-size`: how many flows the node keeps (default 4095, at least 1).
    pub flow_ring_size: usize,
    /// `identity-change-grace-period`: how long a pod whose identity labels changed keeps its
    /// old identity after the new one is allocated (default 500ms).
    pub identity_change_grace_period: Duration,
    /// `tofqdns-proxy-port`: the DNS proxy's port on 127.0.0.1 (default 10053).
    pub tofqdns_proxy_port: u16,
    /// `tofqdns-min-ttl`: the shortest life of a learned address (default 0: the TTLs).
    pub tofqdns_min_ttl: Duration,
    /// `tofqdns-proxy-response-max-delay`: the longest an answer is held (default 100ms).
    pub tofqdns_proxy_response_max_delay: Duration,
    /// `bpf-ipcache-map-max`, `bpf-lb-map-max`, `bpf-ct-global-max`, `bpf-policy-map-max`:
    /// the sizes of the datapath's maps (defaults: [`MapSizes::default`], each at least 1).
    pub map_sizes: MapSizes,
}

/// The default of `tofqdns-proxy-port`.
pub const DEFAULT_DNS_PROXY_PORT: u16 = 10053;

/// The default of `identity-change-grace-period`: long enough for every node of every
/// connected cluster to learn a new identity through its watches (milliseconds), short enough
/// that a label change takes effect at once to a person (Cilium's default is 5s).
pub const DEFAULT_IDENTITY_CHANGE_GRACE: Duration = Duration::from_millis(500);

/// Where the WireGuard device listens by default (as `wireguard-go plexus_wg0` would).
pub const DEFAULT_WIREGUARD_SOCKET: &str = "/run/wireguard/plexus_wg0.sock";

impl Options {
    /// The options of this process: its command line (clap prints the usage and exits on a
    /// bad flag) laid over `--config FILE`.
    pub fn from_command_line() -> Result<Self, ConfigError> {
        let cli = CommandLine::parse();
        Self::from_layers(cli.config.as_deref(), cli.flags)
    }

    /// `flags` laid over the configuration file `file` (if any), resolved.
    pub fn from_layers(file: Option<&Path>, flags: AgentConfig) -> Result<Self, ConfigError> {
        Self::resolve(plexus_config::layer(file, flags)?, file)
    }

    /// Fills the defaults of `c` and checks that it has every value the agent needs; `file`
    /// is where `c` came from (with the flags), named in errors.
    pub fn resolve(c: AgentConfig, file: Option<&Path>) -> Result<Self, ConfigError> {
        let api_tls = [&c.api_tls_cert, &c.api_tls_key, &c.api_tls_ca];
        match (c.api_listen, api_tls.iter().all(|p| p.is_some())) {
            (Some(_), false) => {
                return Err(invalid(
                    "api-listen",
                    "the TCP API needs --api-tls-cert, --api-tls-key and --api-tls-ca",
                    file,
                ));
            }
            (None, _) if api_tls.iter().any(|p| p.is_some()) => {
                return Err(invalid(
                    "api-tls-cert, api-tls-key, api-tls-ca",
                    "they configure the TCP API, which only --api-listen turns on",
                    file,
                ));
            }
            _ => {}
        }
        let map_sizes = map_sizes(&c, file)?;
        let options = Self {
            cluster_name: required(c.cluster_name, "cluster-name", file)?,
            cluster_id: required(c.cluster_id, "cluster-id", file)?,
            max_connected_clusters: c.max_connected_clusters.unwrap_or(255),
            node_name: required(c.node_name, "node-name", file)?,
            node_ip: required(c.node_ip, "node-ip", file)?,
            pod_cidr: required(c.pod_cidr, "pod-cidr", file)?,
            node_cidr_size: c.node_cidr_size.unwrap_or(24),
            routing: c.routing.unwrap_or(Routing::Tunnel),
            datapath: c.datapath.unwrap_or(DatapathKind::Ebpf),
            mtu: c.mtu,
            state_dir: required(c.state_dir, "state-dir", file)?,
            etcd_endpoints: required(c.etcd_endpoints, "etcd-endpoints", file)?,
            etcd_ca: c.etcd_ca,
            etcd_cert: c.etcd_cert,
            etcd_key: c.etcd_key,
            clustermesh_config: required(c.clustermesh_config, "clustermesh-config", file)?,
            api_socket: required(c.api_socket, "api-socket", file)?,
            api_listen: c.api_listen,
            api_tls_cert: c.api_tls_cert,
            api_tls_key: c.api_tls_key,
            api_tls_ca: c.api_tls_ca,
            clustermesh_service_cache_ttl: c.clustermesh_service_cache_ttl,
            clustermesh_limits: {
                let mut limits = plexus_clustermesh::remote_cluster::Limits::default();
                match c.clustermesh_max_entries_per_remote {
                    Some(0) => {
                        return Err(invalid(
                            "clustermesh-max-entries-per-remote",
                            "a remote must be allowed at least one entry",
                            file,
                        ));
                    }
                    Some(n) => limits.max_entries = n,
                    None => {}
                }
                match c.clustermesh_max_value_size {
                    Some(0) => {
                        return Err(invalid(
                            "clustermesh-max-value-size",
                            "a remote's values need at least one byte",
                            file,
                        ));
                    }
                    Some(n) => limits.max_value_size = n,
                    None => {}
                }
                if let Some(max) = c.clustermesh_max_relist_interval {
                    if max < limits.relist.min {
                        return Err(invalid(
                            "clustermesh-max-relist-interval",
                            "must be at least 50ms",
                            file,
                        ));
                    }
                    limits.relist.max = max;
                    limits.relist.healthy_after = limits.relist.healthy_after.max(max * 2);
                }
                limits
            },
            policy_default_local_cluster: c.policy_default_local_cluster.unwrap_or(true),
            prometheus_listen: c.prometheus_listen,
            podman_state: c
                .podman_state
                .unwrap_or_else(|| PathBuf::from(plexus_podman::DEFAULT_STATE_PATH)),
            enable_wireguard: c.enable_wireguard.unwrap_or(false),
            encryption_strict_mode: c.encryption_strict_mode.unwrap_or(true),
            wireguard_socket: c
                .wireguard_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_WIREGUARD_SOCKET)),
            enable_flows: c.enable_flows.unwrap_or(true),
            flow_ring_size: match c.flow_ring_size {
                None => plexus_flow::DEFAULT_CAPACITY,
                Some(0) => {
                    return Err(invalid(
                        "flow-ring-size",
                        "the flow ring must hold at least one flow",
                        file,
                    ));
                }
                Some(n) => n,
            },
            identity_change_grace_period: c
                .identity_change_grace_period
                .unwrap_or(DEFAULT_IDENTITY_CHANGE_GRACE),
            tofqdns_proxy_port: match c.tofqdns_proxy_port {
                Some(0) => {
                    return Err(invalid(
                        "tofqdns-proxy-port",
                        "the DNS proxy needs a port other than 0",
                        file,
                    ));
                }
                p => p.unwrap_or(DEFAULT_DNS_PROXY_PORT),
            },
            tofqdns_min_ttl: c.tofqdns_min_ttl.unwrap_or(Duration::ZERO),
            tofqdns_proxy_response_max_delay: c
                .tofqdns_proxy_response_max_delay
                .unwrap_or(Duration::from_millis(100)),
            map_sizes,
        };
        // Refuse a half-given etcd identity now, naming the file, not at connect time.
        plexus_config::etcd_config(
            &options.etcd_endpoints,
            options.etcd_ca.as_ref(),
            options.etcd_cert.as_ref(),
            options.etcd_key.as_ref(),
            file,
        )?;
        Ok(options)
    }

    /// How to reach the cluster's etcd.
    pub fn etcd_config(&self) -> Result<EtcdConfig, ConfigError> {
        plexus_config::etcd_config(
            &self.etcd_endpoints,
            self.etcd_ca.as_ref(),
            self.etcd_cert.as_ref(),
            self.etcd_key.as_ref(),
            None,
        )
    }
}

/// The map sizes of `c`, defaults filled in; a size of 0 is refused, naming its option.
fn map_sizes(c: &AgentConfig, file: Option<&Path>) -> Result<MapSizes, ConfigError> {
    let d = MapSizes::default();
    let size = |v: Option<u32>, default: u32, name: &str| match v {
        Some(0) => Err(invalid(
            name,
            "a map needs room for at least one entry",
            file,
        )),
        v => Ok(v.unwrap_or(default)),
    };
    Ok(MapSizes {
        ipcache: size(c.bpf_ipcache_map_max, d.ipcache, "bpf-ipcache-map-max")?,
        lb: size(c.bpf_lb_map_max, d.lb, "bpf-lb-map-max")?,
        ct: size(c.bpf_ct_global_max, d.ct, "bpf-ct-global-max")?,
        policy: size(c.bpf_policy_map_max, d.policy, "bpf-policy-map-max")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/plexus/agent.yaml";

    fn complete() -> AgentConfig {
        plexus_config::from_yaml(
            "cluster-name: c1\ncluster-id: 1\nnode-name: n1\nnode-ip: 10.0.0.1\n\
             pod-cidr: 10.1.0.0/16\nstate-dir: /var/lib/plexus/agent\n\
             etcd-endpoints: https://10.0.0.10:2379\nclustermesh-config: /etc/plexus/clustermesh\n\
             api-socket: /run/plexus/agent.sock\n",
            Path::new(FILE),
        )
        .unwrap()
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let o = Options::resolve(complete(), Some(Path::new(FILE))).unwrap();
        assert_eq!(o.max_connected_clusters, 255);
        assert_eq!(o.node_cidr_size, 24);
        assert_eq!(o.routing, Routing::Tunnel);
        assert_eq!(o.datapath, DatapathKind::Ebpf);
        assert!(o.policy_default_local_cluster);
        assert_eq!(o.mtu, None);
        assert!(o.etcd_config().unwrap().tls.is_none());
        assert!(!o.enable_wireguard);
        assert!(
            o.encryption_strict_mode,
            "strict by default once WireGuard is on"
        );
        assert_eq!(
            o.wireguard_socket,
            PathBuf::from("/run/wireguard/plexus_wg0.sock")
        );
        assert!(o.enable_flows);
        assert_eq!(o.flow_ring_size, 4095);
        assert_eq!(o.identity_change_grace_period, Duration::from_millis(500));
    }

    #[test]
    fn map_sizes_default_to_the_datapath_s_and_are_configurable() {
        let o = Options::resolve(complete(), None).unwrap();
        assert_eq!(o.map_sizes, MapSizes::default());
        let c = AgentConfig {
            bpf_ipcache_map_max: Some(8),
            bpf_lb_map_max: Some(16),
            bpf_ct_global_max: Some(32),
            bpf_policy_map_max: Some(64),
            ..complete()
        };
        let o = Options::resolve(c, None).unwrap();
        assert_eq!(
            o.map_sizes,
            MapSizes {
                ipcache: 8,
                lb: 16,
                ct: 32,
                policy: 64
            }
        );
        let c = AgentConfig {
            bpf_lb_map_max: Some(0),
            ..complete()
        };
        let e = Options::resolve(c, Some(Path::new(FILE))).unwrap_err();
        assert!(e.to_string().contains("bpf-lb-map-max"), "{e}");
    }

    #[test]
    fn an_empty_flow_ring_is_refused() {
        let c = AgentConfig {
            flow_ring_size: Some(0),
            ..complete()
        };
        let e = Options::resolve(c, Some(Path::new(FILE))).unwrap_err();
        assert!(e.to_string().contains("flow-ring-size"), "{e}");
    }

    #[test]
    fn remote_limits_default_and_are_set_or_refused() {
        let o = Options::resolve(complete(), None).unwrap();
        assert_eq!(
            o.clustermesh_limits,
            plexus_clustermesh::remote_cluster::Limits::default()
        );
        assert_eq!(o.clustermesh_limits.max_entries, 250_000);
        let c = AgentConfig {
            clustermesh_max_entries_per_remote: Some(1000),
            clustermesh_max_value_size: Some(4096),
            clustermesh_max_relist_interval: Some(Duration::from_secs(120)),
            ..complete()
        };
        let l = Options::resolve(c, None).unwrap().clustermesh_limits;
        assert_eq!((l.max_entries, l.max_value_size), (1000, 4096));
        assert_eq!(l.relist.max, Duration::from_secs(120));
        assert_eq!(
            l.relist.healthy_after,
            Duration::from_secs(240),
            "a watch must outlast two waits to count as healthy"
        );
        for c in [
            AgentConfig {
                clustermesh_max_entries_per_remote: Some(0),
                ..complete()
            },
            AgentConfig {
                clustermesh_max_value_size: Some(0),
                ..complete()
            },
            AgentConfig {
                clustermesh_max_relist_interval: Some(Duration::from_millis(1)),
                ..complete()
            },
        ] {
            let e = Options::resolve(c, Some(Path::new(FILE))).unwrap_err();
            assert!(e.to_string().contains("clustermesh-max-"), "{e}");
        }
    }

    #[test]
    fn a_missing_value_names_the_flag_and_the_file() {
        let c = AgentConfig {
            node_ip: None,
            ..complete()
        };
        let e = Options::resolve(c, Some(Path::new(FILE))).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("--node-ip is required: give the flag or `node-ip:` in {FILE}")
        );
    }

    #[test]
    fn each_required_value_is_named_by_its_own_key() {
        let serde_norway::Value::Mapping(all) = serde_norway::to_value(complete()).unwrap() else {
            panic!("a configuration is a mapping");
        };
        assert_eq!(all.len(), 9, "{all:?}");
        for key in all.keys() {
            let mut without = all.clone();
            without.remove(key);
            let c: AgentConfig = serde_norway::from_value(without.into()).unwrap();
            let e = Options::resolve(c, Some(Path::new(FILE))).unwrap_err();
            let key = key.as_str().unwrap();
            assert!(
                e.to_string().starts_with(&format!("--{key} is required")),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn the_tcp_api_needs_its_certificates() {
        let c = AgentConfig {
            api_listen: Some("10.0.0.1:9965".parse().unwrap()),
            api_tls_cert: Some("/p/api.crt".into()),
            ..complete()
        };
        let e = Options::resolve(c, Some(Path::new(FILE))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("api-listen in the flags and {FILE}: ")),
            "{e}"
        );
        let c = AgentConfig {
            api_tls_ca: Some("/p/ca.crt".into()),
            ..complete()
        };
        assert!(Options::resolve(c, None).is_err());
    }

    #[test]
    fn a_half_given_etcd_identity_is_refused() {
        let c = AgentConfig {
            etcd_ca: Some("/p/ca.crt".into()),
            ..complete()
        };
        let e = Options::resolve(c, Some(Path::new(FILE))).unwrap_err();
        assert!(
            e.to_string().contains("etcd-ca, etcd-cert, etcd-key"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, complete().to_yaml().unwrap()).unwrap();
        let cli = CommandLine::try_parse_from([
            "plexus-agent",
            "--config",
            file.to_str().unwrap(),
            "--node-name=n2",
            "--routing=native",
        ])
        .unwrap();
        let o = Options::from_layers(cli.config.as_deref(), cli.flags).unwrap();
        assert_eq!(o.node_name, "n2");
        assert_eq!(o.routing, Routing::Native);
        assert_eq!(o.cluster_name, "c1");
    }

    #[test]
    fn flags_alone_still_work() {
        let cli = CommandLine::try_parse_from([
            "plexus-agent",
            "--cluster-name=c1",
            "--cluster-id=1",
            "--node-name=n1",
            "--node-ip=10.0.0.1",
            "--pod-cidr=10.1.0.0/16",
            "--state-dir=/s",
            "--etcd-endpoints=http://10.0.0.10:2379",
            "--clustermesh-config=/m",
            "--api-socket=/a.sock",
            "--policy-default-local-cluster=false",
            "--enable-wireguard=true",
            "--encryption-strict-mode=false",
            "--wireguard-socket=/w.sock",
            "--enable-flows=false",
            "--flow-ring-size=16",
            "--identity-change-grace-period=2s",
        ])
        .unwrap();
        let o = Options::from_layers(cli.config.as_deref(), cli.flags).unwrap();
        assert!(!o.policy_default_local_cluster);
        assert!(o.enable_wireguard);
        assert!(!o.encryption_strict_mode);
        assert_eq!(o.wireguard_socket, PathBuf::from("/w.sock"));
        assert!(!o.enable_flows);
        assert_eq!(o.flow_ring_size, 16);
        assert_eq!(o.identity_change_grace_period, Duration::from_secs(2));
    }
}
