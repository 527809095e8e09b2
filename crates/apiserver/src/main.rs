//! `plexus-apiserver`: the daemon of one cluster. It composes `plexus_apiserver::ApiServer`:
//! read its options (flags over `--config FILE`, the schema `plexus_config::ApiServerConfig`),
//! start, run until SIGINT or SIGTERM, stop cleanly.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Parser;
use plexus_apiserver::{ApiListen, ApiServer, ApiServerConfig, EtcdSource};
use plexus_config::{ConfigError, invalid, required};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};

/// The apiserver of one Plexus cluster: its etcd, access rules, cluster config, heartbeat,
/// identity GC, KVStoreMesh, health and metrics, and its API (mutual TLS) with the flow relay.
#[derive(Parser, Debug)]
#[command(name = "plexus-apiserver", version)]
struct CommandLine {
    /// Read the options from this YAML file (its keys are the flag names without `--`); a flag
    /// given on the command line overrides the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: plexus_config::ApiServerConfig,
}

/// The flags laid over the file `file`, defaults filled in and every required value present.
fn resolve(
    file: Option<&Path>,
    flags: plexus_config::ApiServerConfig,
) -> Result<ApiServerConfig, ConfigError> {
    let c = plexus_config::layer(file, flags)?;
    let cluster_name = required(c.cluster_name, "cluster-name", file)?;
    let cluster_id = required(c.cluster_id, "cluster-id", file)?;
    let max = MaxConnectedClusters::from_u32(c.max_connected_clusters.unwrap_or(255))
        .map_err(|e| invalid("max-connected-clusters", e, file))?;
    let cluster = ClusterInfo::new(cluster_name, cluster_id, max)
        .map_err(|e| invalid("cluster-name, cluster-id", e, file))?;
    let etcd = match c.etcd_endpoints.filter(|e| !e.is_empty()) {
        None => {
            if c.etcd_ca.is_some() || c.etcd_cert.is_some() || c.etcd_key.is_some() {
                return Err(invalid(
                    "etcd-ca, etcd-cert, etcd-key",
                    "they are the client identity for --etcd-endpoints, which is not given",
                    file,
                ));
            }
            EtcdSource::Local {
                client_listen: c.etcd_listen.unwrap_or(([127, 0, 0, 1], 2379).into()),
                peer_listen: c.etcd_peer_listen.unwrap_or(([127, 0, 0, 1], 2380).into()),
                advertise: c.etcd_advertise.unwrap_or_default(),
            }
        }
        Some(endpoints) => EtcdSource::External {
            tls: plexus_config::etcd_tls(
                c.etcd_ca.as_ref(),
                c.etcd_cert.as_ref(),
                c.etcd_key.as_ref(),
                file,
            )?,
            endpoints,
        },
    };
    let mut config = ApiServerConfig::new(
        cluster,
        required(c.state_dir, "state-dir", file)?,
        etcd,
        c.http_listen.unwrap_or(([127, 0, 0, 1], 9963).into()),
    );
    config.api = match (c.api_listen, c.api_tls_cert, c.api_tls_key, c.api_tls_ca) {
        (None, None, None, None) => None,
        (Some(addr), None, None, None) => Some(ApiListen { addr, tls: None }),
        (Some(addr), Some(cert), Some(key), Some(ca)) => Some(ApiListen {
            addr,
            tls: Some(plexus_agent_api::tls::TlsFiles { ca, cert, key }),
        }),
        (None, ..) => {
            return Err(invalid(
                "api-tls-cert, api-tls-key, api-tls-ca",
                "they configure the TLS API, which only --api-listen turns on",
                file,
            ));
        }
        (Some(_), ..) => {
            return Err(invalid(
                "api-tls-cert, api-tls-key, api-tls-ca",
                "give all three, or none to have the certificate issued from <state-dir>/pki",
                file,
            ));
        }
    };
    // With KVStoreMesh its directory names the remotes' own etcds (the agents' directory then
    // points at the local etcd), so the relay reads it first.
    config.relay.clustermesh_dir = c.clustermesh_config;
    config.relay.kvstoremesh_dir = c.kvstoremesh_config.clone();
    config.kvstoremesh_dir = c.kvstoremesh_config;
    if let Some(port) = c.relay_agent_port {
        config.relay.agent_port = port;
    }
    if let Some(port) = c.relay_peer_port {
        config.relay.peer_port = port;
    }
    if let Some(interval) = c.heartbeat_interval {
        config.heartbeat_interval = interval;
    }
    config.service_cidr = c.service_cidr;
    Ok(config)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    plexus_kvstore::install_crypto_provider();
    let cli = CommandLine::parse();
    // A bad flag, file or value ends the process here, naming the flag, the file and the key.
    let config = resolve(cli.config.as_deref(), cli.flags)?;
    let server = ApiServer::start(config).await?;
    println!("plexus-apiserver: serving on http://{}", server.http_addr());
    if let Some(addr) = server.api_addr() {
        println!("plexus-apiserver: API (mutual TLS) on https://{addr}");
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}
