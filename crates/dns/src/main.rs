//! `plexus-dns`: the cluster DNS server of one Plexus cluster (what runs as the `kube-dns` pod).
//!
//! It connects to the cluster's etcd with the same flags as the other daemons
//! (`--etcd-endpoints`, and `--etcd-ca`/`--etcd-cert`/`--etcd-key` for mTLS), mirrors the
//! Service objects, and answers `<service>.<namespace>.svc.<domain>` on UDP and TCP `--listen`
//! (default `0.0.0.0:53`) until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use clap::Parser;
use plexus_dns::{ClusterDns, DnsServer, ServiceRecords, spawn_follow_services};
use plexus_kvstore::{EtcdConfig, KvBackend, Retry, TlsFiles};

/// The Plexus cluster DNS server.
#[derive(Parser, Debug)]
#[command(name = "plexus-dns", version)]
struct Args {
    /// The cluster's etcd (comma-separated URLs).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd_endpoints: Vec<String>,
    /// Client identity for the cluster's etcd: CA.
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    /// Client identity: certificate.
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    /// Client identity: key.
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    /// UDP and TCP address to answer on.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = plexus_dns::DEFAULT_DOMAIN)]
    domain: String,
    /// TTL of answers, in seconds.
    #[arg(long, default_value_t = plexus_dns::DEFAULT_TTL)]
    ttl: u32,
}

async fn connect_etcd(args: &Args) -> Result<Arc<dyn KvBackend>> {
    let mut config = EtcdConfig::new(args.etcd_endpoints.clone());
    let tls = TlsFiles::from_parts(
        args.etcd_ca.as_ref(),
        args.etcd_cert.as_ref(),
        args.etcd_key.as_ref(),
    )
    .context("--etcd-ca, --etcd-cert and --etcd-key")?;
    if let Some(tls) = tls {
        config = config.with_tls(tls);
    }
    // A pod is not restarted when it exits: keep trying (queries get SERVFAIL meanwhile).
    let etcd = plexus_kvstore::connect_with_retry(&config, &Retry::forever(), "the cluster's etcd")
        .await?;
    Ok(Arc::new(etcd))
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // hickory logs every query at info.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .init();
    // The etcd client speaks TLS through rustls, which needs its provider chosen explicitly.
    plexus_kvstore::install_crypto_provider();
    let args = Args::parse();
    let records = Arc::new(RwLock::new(
        ServiceRecords::new(&args.domain).context("--domain")?,
    ));
    let handler = ClusterDns::new(records.clone(), args.ttl).context("--domain")?;
    // Listen first: until the services have synced, queries get SERVFAIL rather than silence.
    let mut server = DnsServer::bind(args.listen, handler)
        .await
        .context("start the DNS server")?;
    let etcd = connect_etcd(&args).await?;
    let follow = spawn_follow_services(etcd, records);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    tokio::select! {
        r = server.wait() => r.context("DNS server")?,
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    follow.abort();
    server.shutdown().await.context("stop the DNS server")?;
    Ok(())
}
