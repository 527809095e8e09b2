//! The configuration files as the daemons read them: literal examples of each schema, the
//! errors a person gets for a bad file, and flags laid over a file.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use plexus_config::agent::{DatapathKind, Routing};
use plexus_config::{AgentConfig, ApiServerConfig, ConfigError, DnsConfig};

const AGENT: &str = "/etc/plexus/agent.yaml";

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    plexus_config::from_yaml(text, Path::new(AGENT))
}

fn error<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> String {
    parse::<T>(text).unwrap_err().to_string()
}

#[test]
fn agent_file_parses() {
    let c: AgentConfig = parse(
        r#"
# a comment
cluster-name: cluster1
cluster-id: 3
max-connected-clusters: 511
node-name: node1
node-ip: 192.168.1.11
pod-cidr: 10.1.0.0/16
node-cidr-size: 26
routing: native
datapath: fake
mtu: 1400
state-dir: /var/lib/plexus/agent
etcd-endpoints: [https://192.168.1.10:2379, https://192.168.1.20:2379]
etcd-ca: /etc/plexus/pki/ca.crt
etcd-cert: /etc/plexus/pki/node1.crt
etcd-key: /etc/plexus/pki/node1.key
clustermesh-config: /etc/plexus/clustermesh
api-socket: /run/plexus/agent.sock
api-listen: 192.168.1.11:9965
api-tls-cert: /etc/plexus/pki/api.crt
api-tls-key: /etc/plexus/pki/api.key
api-tls-ca: /etc/plexus/pki/ca.crt
clustermesh-service-cache-ttl: 1m 30s
clustermesh-max-entries-per-remote: 100000
clustermesh-max-value-size: 65536
clustermesh-max-relist-interval: 1m
policy-default-local-cluster: false
prometheus-listen: 0.0.0.0:9962
podman-state: /var/lib/containers/storage/libpod/bolt_state.db
enable-wireguard: true
encryption-strict-mode: false
wireguard-socket: /run/wireguard/plexus_wg0.sock
enable-flows: false
flow-ring-size: 8191
identity-change-grace-period: 2s
tofqdns-proxy-port: 10054
tofqdns-min-ttl: 30s
tofqdns-proxy-response-max-delay: 250ms
bpf-ipcache-map-max: 1024000
bpf-lb-map-max: 65536
bpf-ct-global-max: 524288
bpf-policy-map-max: 16384
"#,
    )
    .unwrap();
    let p = |s: &str| Some(PathBuf::from(s));
    assert_eq!(
        c,
        AgentConfig {
            cluster_name: Some("cluster1".into()),
            cluster_id: Some(3),
            max_connected_clusters: Some(511),
            node_name: Some("node1".into()),
            node_ip: Some(Ipv4Addr::new(192, 168, 1, 11)),
            pod_cidr: Some("10.1.0.0/16".parse().unwrap()),
            node_cidr_size: Some(26),
            routing: Some(Routing::Native),
            datapath: Some(DatapathKind::Fake),
            mtu: Some(1400),
            state_dir: p("/var/lib/plexus/agent"),
            etcd_endpoints: Some(vec![
                "https://192.168.1.10:2379".into(),
                "https://192.168.1.20:2379".into()
            ]),
            etcd_ca: p("/etc/plexus/pki/ca.crt"),
            etcd_cert: p("/etc/plexus/pki/node1.crt"),
            etcd_key: p("/etc/plexus/pki/node1.key"),
            clustermesh_config: p("/etc/plexus/clustermesh"),
            api_socket: p("/run/plexus/agent.sock"),
            api_listen: Some("192.168.1.11:9965".parse().unwrap()),
            api_tls_cert: p("/etc/plexus/pki/api.crt"),
            api_tls_key: p("/etc/plexus/pki/api.key"),
            api_tls_ca: p("/etc/plexus/pki/ca.crt"),
            clustermesh_service_cache_ttl: Some(Duration::from_secs(90)),
            clustermesh_max_entries_per_remote: Some(100_000),
            clustermesh_max_value_size: Some(65_536),
            clustermesh_max_relist_interval: Some(Duration::from_secs(60)),
            policy_default_local_cluster: Some(false),
            prometheus_listen: Some("0.0.0.0:9962".parse().unwrap()),
            podman_state: p("/var/lib/containers/storage/libpod/bolt_state.db"),
            enable_wireguard: Some(true),
            encryption_strict_mode: Some(false),
            wireguard_socket: p("/run/wireguard/plexus_wg0.sock"),
            enable_flows: Some(false),
            flow_ring_size: Some(8191),
            identity_change_grace_period: Some(Duration::from_secs(2)),
            tofqdns_proxy_port: Some(10054),
            tofqdns_min_ttl: Some(Duration::from_secs(30)),
            tofqdns_proxy_response_max_delay: Some(Duration::from_millis(250)),
            bpf_ipcache_map_max: Some(1_024_000),
            bpf_lb_map_max: Some(65_536),
            bpf_ct_global_max: Some(524_288),
            bpf_policy_map_max: Some(16_384),
        }
    );
    // What it writes reads back the same (the form `plexus node join` writes).
    let again: AgentConfig = parse(&c.to_yaml().unwrap()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn apiserver_file_parses() {
    let c: ApiServerConfig = parse(
        "cluster-name: cluster1\n\
         cluster-id: 1\n\
         state-dir: /var/lib/plexus/apiserver\n\
         etcd-listen: 192.168.1.10:2379\n\
         etcd-peer-listen: 127.0.0.1:2380\n\
         etcd-advertise: [192.168.1.10]\n\
         http-listen: 192.168.1.10:9963\n\
         kvstoremesh-config: /etc/plexus/clustermesh\n\
         service-cidr: 10.96.0.0/16\n\
         heartbeat-interval: 30s\n\
         api-listen: 192.168.1.10:4245\n\
         clustermesh-config: /var/lib/plexus/clustermesh\n\
         relay-agent-port: 9975\n\
         relay-peer-port: 4345\n",
    )
    .unwrap();
    assert_eq!(
        c,
        ApiServerConfig {
            cluster_name: Some("cluster1".into()),
            cluster_id: Some(1),
            state_dir: Some("/var/lib/plexus/apiserver".into()),
            etcd_listen: Some("192.168.1.10:2379".parse().unwrap()),
            etcd_peer_listen: Some("127.0.0.1:2380".parse().unwrap()),
            etcd_advertise: Some(vec![IpAddr::from([192, 168, 1, 10])]),
            http_listen: Some("192.168.1.10:9963".parse().unwrap()),
            kvstoremesh_config: Some("/etc/plexus/clustermesh".into()),
            service_cidr: Some("10.96.0.0/16".parse().unwrap()),
            heartbeat_interval: Some(Duration::from_secs(30)),
            api_listen: Some("192.168.1.10:4245".parse().unwrap()),
            clustermesh_config: Some("/var/lib/plexus/clustermesh".into()),
            relay_agent_port: Some(9975),
            relay_peer_port: Some(4345),
            ..Default::default()
        }
    );
    let again: ApiServerConfig = parse(&c.to_yaml().unwrap()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn dns_file_parses_with_a_comma_separated_list() {
    let c: DnsConfig = parse(
        "etcd-endpoints: https://10.0.0.1:2379,https://10.0.0.2:2379\n\
         listen: 0.0.0.0:5353\ndomain: example.local\nttl: 30\n",
    )
    .unwrap();
    assert_eq!(
        c.etcd_endpoints,
        Some(vec![
            "https://10.0.0.1:2379".to_string(),
            "https://10.0.0.2:2379".to_string()
        ])
    );
    assert_eq!(c.listen, Some(SocketAddr::from(([0, 0, 0, 0], 5353))));
    assert_eq!(c.ttl, Some(30));
}

#[test]
fn an_empty_file_sets_nothing() {
    assert_eq!(parse::<AgentConfig>("").unwrap(), AgentConfig::default());
    assert_eq!(
        parse::<AgentConfig>("# nothing yet\n").unwrap(),
        AgentConfig::default()
    );
    assert_eq!(AgentConfig::default().to_yaml().unwrap().trim(), "{}");
}

#[test]
fn an_unknown_key_is_refused_naming_the_file_and_the_key() {
    let e = error::<AgentConfig>("cluster-id: 1\nclsuter-name: c1\n");
    assert!(
        e.starts_with(&format!(
            "{AGENT}: unknown field `clsuter-name`, expected one of"
        )),
        "{e}"
    );
    assert!(e.contains("`cluster-name`"), "{e}");
    // A key of another daemon is unknown here too.
    let e = error::<AgentConfig>("heartbeat-interval: 30s\n");
    assert!(e.contains("unknown field `heartbeat-interval`"), "{e}");
    let e = error::<ApiServerConfig>("node-name: n1\n");
    assert!(e.contains("unknown field `node-name`"), "{e}");
}

#[test]
fn a_bad_value_is_refused_naming_the_file_and_the_key() {
    let e = error::<AgentConfig>("cluster-id: x\n");
    assert!(
        e.starts_with(&format!(
            "{AGENT}: cluster-id: invalid type: string \"x\", expected u32"
        )),
        "{e}"
    );
    // Values are checked as the flags check them.
    let e = error::<AgentConfig>("pod-cidr: 10.1.0.1/16\n");
    assert!(
        e.starts_with(&format!("{AGENT}: pod-cidr: \"10.1.0.1/16\":")),
        "{e}"
    );
    assert!(e.contains("host bits"), "{e}");
    let e = error::<AgentConfig>("node-ip: 10.1.0\n");
    assert!(e.starts_with(&format!("{AGENT}: node-ip: ")), "{e}");
    let e = error::<AgentConfig>("routing: vxlan\n");
    assert!(
        e.starts_with(&format!("{AGENT}: routing: unknown variant `vxlan`")),
        "{e}"
    );
    let e = error::<AgentConfig>("clustermesh-service-cache-ttl: soon\n");
    assert!(
        e.starts_with(&format!("{AGENT}: clustermesh-service-cache-ttl: \"soon\"")),
        "{e}"
    );
    let e = error::<ApiServerConfig>("etcd-advertise: [10.0.0.1, ten]\n");
    assert!(
        e.starts_with(&format!("{AGENT}: etcd-advertise: \"ten\"")),
        "{e}"
    );
    let e = error::<AgentConfig>("policy-default-local-cluster: maybe\n");
    assert!(
        e.starts_with(&format!("{AGENT}: policy-default-local-cluster: ")),
        "{e}"
    );
}

#[test]
fn a_file_that_is_not_there_is_named() {
    let e = plexus_config::load::<AgentConfig>(Path::new("/nonexistent/agent.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/agent.yaml: "), "{e}");
}

/// The agent's command line, as `plexus-agent` declares it.
#[derive(Parser)]
struct Cli {
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: AgentConfig,
}

#[test]
fn a_flag_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(
        &file,
        "cluster-name: from-file\ncluster-id: 1\nnode-name: n1\n\
         etcd-endpoints: [https://10.0.0.1:2379]\npolicy-default-local-cluster: true\n",
    )
    .unwrap();
    let cli = Cli::try_parse_from([
        "plexus-agent",
        "--config",
        file.to_str().unwrap(),
        "--cluster-name=from-flag",
        "--etcd-endpoints=https://10.0.0.2:2379,https://10.0.0.3:2379",
        "--policy-default-local-cluster=false",
        "--mtu=1400",
    ])
    .unwrap();
    let c = plexus_config::layer(cli.config.as_deref(), cli.flags).unwrap();
    assert_eq!(c.cluster_name.as_deref(), Some("from-flag"));
    assert_eq!(
        c.etcd_endpoints,
        Some(vec![
            "https://10.0.0.2:2379".to_string(),
            "https://10.0.0.3:2379".to_string()
        ])
    );
    assert_eq!(c.policy_default_local_cluster, Some(false));
    // What only the file gives stays, what only a flag gives is added.
    assert_eq!(c.cluster_id, Some(1));
    assert_eq!(c.node_name.as_deref(), Some("n1"));
    assert_eq!(c.mtu, Some(1400));
    assert_eq!(c.node_ip, None);
}

#[test]
fn flags_alone_need_no_file() {
    let cli = Cli::try_parse_from(["plexus-agent", "--cluster-id=7"]).unwrap();
    let c = plexus_config::layer(cli.config.as_deref(), cli.flags).unwrap();
    assert_eq!(c.cluster_id, Some(7));
}

#[test]
fn a_bad_file_is_refused_even_with_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(&file, "cluster-id: x\n").unwrap();
    let cli = Cli::try_parse_from([
        "plexus-agent",
        "--config",
        file.to_str().unwrap(),
        "--cluster-id=1",
    ])
    .unwrap();
    let e = plexus_config::layer(cli.config.as_deref(), cli.flags)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{}: cluster-id: ", file.display())),
        "{e}"
    );
}

#[test]
fn a_missing_value_names_the_flag_and_the_file() {
    let e = plexus_config::required::<u32>(None, "cluster-id", Some(Path::new(AGENT)))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("--cluster-id is required: give the flag or `cluster-id:` in {AGENT}")
    );
    let e = plexus_config::required::<u32>(None, "cluster-id", None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--cluster-id is required: give the flag or `cluster-id:` in a --config file"
    );
}

#[test]
fn etcd_keys_become_one_etcd_config() {
    let ca = PathBuf::from("/p/ca.crt");
    let cert = PathBuf::from("/p/a.crt");
    let key = PathBuf::from("/p/a.key");
    let endpoints = vec!["https://10.0.0.1:2379".to_string()];
    let c =
        plexus_config::etcd_config(&endpoints, Some(&ca), Some(&cert), Some(&key), None).unwrap();
    assert_eq!(c.endpoints, endpoints);
    assert_eq!(c.tls.unwrap().key_file, key);
    let plain = plexus_config::etcd_config(&endpoints, None, None, None, None).unwrap();
    assert!(plain.tls.is_none());
    let e = plexus_config::etcd_config(&endpoints, Some(&ca), None, None, Some(Path::new(AGENT)))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "etcd-ca, etcd-cert, etcd-key in the flags and {AGENT}: "
        )),
        "{e}"
    );
}
