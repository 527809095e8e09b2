//! `plexus-apiserver`: the daemon of one cluster. It composes `plexus_apiserver::ApiServer`:
//! parse flags, start, run until SIGINT or SIGTERM, stop cleanly.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use plexus_apiserver::{ApiServer, ApiServerConfig, EtcdSource};
use plexus_kvstore::TlsFiles;
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};

/// The apiserver of one Plexus cluster: its etcd, access rules, cluster config, heartbeat,
/// identity GC, KVStoreMesh, health and metrics.
#[derive(Parser, Debug)]
#[command(name = "plexus-apiserver", version)]
struct Args {
    /// Cluster name.
    #[arg(long)]
    cluster_name: String,
    /// Cluster id (1..=255, or 1..=511 with --max-connected-clusters 511).
    #[arg(long)]
    cluster_id: u32,
    /// 255 or 511.
    #[arg(long, default_value_t = 255)]
    max_connected_clusters: u32,
    /// Certificates (pki/), etcd data (etcd/) and logs.
    #[arg(long)]
    state_dir: PathBuf,
    /// Use this etcd instead of starting one (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Client identity for --etcd-endpoints: CA file.
    #[arg(long, requires = "etcd_endpoints")]
    etcd_ca: Option<PathBuf>,
    /// Client identity for --etcd-endpoints: certificate (CN admin-<cluster> or root).
    #[arg(long, requires = "etcd_endpoints")]
    etcd_cert: Option<PathBuf>,
    /// Client identity for --etcd-endpoints: key.
    #[arg(long, requires = "etcd_endpoints")]
    etcd_key: Option<PathBuf>,
    /// Local etcd: client port address.
    #[arg(long, default_value = "127.0.0.1:2379")]
    etcd_listen: SocketAddr,
    /// Local etcd: peer port address.
    #[arg(long, default_value = "127.0.0.1:2380")]
    etcd_peer_listen: SocketAddr,
    /// Local etcd: address peers reach it by (advertised, and in its certificate).
    #[arg(long)]
    etcd_advertise: Vec<IpAddr>,
    /// Health, readiness and metrics.
    #[arg(long, default_value = "127.0.0.1:9963")]
    http_listen: SocketAddr,
    /// KVStoreMesh: mirror the remote clusters configured in this directory.
    #[arg(long)]
    kvstoremesh_config: Option<PathBuf>,
    /// Allocate service addresses from this CIDR.
    #[arg(long)]
    service_cidr: Option<plexus_ipam::Cidr4>,
    /// Heartbeat period.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
}

fn etcd_source(args: &Args) -> Result<EtcdSource> {
    if args.etcd_endpoints.is_empty() {
        return Ok(EtcdSource::Local {
            client_listen: args.etcd_listen,
            peer_listen: args.etcd_peer_listen,
            advertise: args.etcd_advertise.clone(),
        });
    }
    let tls = TlsFiles::from_parts(
        args.etcd_ca.as_ref(),
        args.etcd_cert.as_ref(),
        args.etcd_key.as_ref(),
    )
    .context("--etcd-ca, --etcd-cert and --etcd-key")?;
    Ok(EtcdSource::External {
        endpoints: args.etcd_endpoints.clone(),
        tls,
    })
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
    let args = Args::parse();
    let max = MaxConnectedClusters::from_u32(args.max_connected_clusters)
        .context("--max-connected-clusters")?;
    let cluster = ClusterInfo::new(args.cluster_name.clone(), args.cluster_id, max)
        .context("--cluster-name/--cluster-id")?;
    let mut config = ApiServerConfig::new(
        cluster,
        args.state_dir.clone(),
        etcd_source(&args)?,
        args.http_listen,
    );
    config.kvstoremesh_dir = args.kvstoremesh_config.clone();
    config.heartbeat_interval = args.heartbeat_interval;
    config.service_cidr = args.service_cidr;
    let server = ApiServer::start(config).await?;
    println!("plexus-apiserver: serving on http://{}", server.http_addr());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}
