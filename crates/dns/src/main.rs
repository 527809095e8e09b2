//! `plexus-dns`: the cluster DNS server of one Plexus cluster (what runs as the `kube-dns` pod).
//!
//! It connects to the cluster's etcd with the same flags as the other daemons
//! (`--etcd-endpoints`, and `--etcd-ca`/`--etcd-cert`/`--etcd-key` for mTLS), mirrors the
//! Service objects, and answers `<service>.<namespace>.svc.<domain>` on UDP and TCP `--listen`
//! (default `0.0.0.0:53`) until SIGTERM or SIGINT. Its options can also come from
//! `--config FILE` (YAML, keys are the flag names; flags override the file).
//!
//! With `--zone-file FILE --domain ZONE` it serves that zone file instead, authoritatively and
//! without etcd, re-reading the file when it changes ([`plexus_dns::ZoneDns`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use clap::Parser;
use plexus_config::{ConfigError, DnsConfig, required};
use plexus_dns::{ClusterDns, DnsServer, ServiceRecords, spawn_follow_services};
use plexus_kvstore::{EtcdConfig, KvBackend, Retry};

/// The Plexus cluster DNS server.
#[derive(Parser, Debug)]
#[command(name = "plexus-dns", version)]
struct CommandLine {
    /// Read the options from this YAML file (its keys are the flag names without `--`); a flag
    /// given on the command line overrides the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: DnsConfig,
}

/// What `plexus-dns` runs with: the flags laid over the file, defaults filled in.
struct Options {
    /// The cluster's services from etcd, or a zone file.
    source: Source,
    listen: SocketAddr,
    domain: String,
    ttl: u32,
}

enum Source {
    Etcd(EtcdConfig),
    ZoneFile(PathBuf),
}

fn resolve(file: Option<&Path>, flags: DnsConfig) -> Result<Options, ConfigError> {
    let c = plexus_config::layer(file, flags)?;
    let source = match c.zone_file {
        Some(zone) => {
            // A zone file names its own zone: no default domain then.
            required(c.domain.clone(), "domain", file)?;
            Source::ZoneFile(zone)
        }
        None => Source::Etcd(plexus_config::etcd_config(
            &required(c.etcd_endpoints, "etcd-endpoints", file)?,
            c.etcd_ca.as_ref(),
            c.etcd_cert.as_ref(),
            c.etcd_key.as_ref(),
            file,
        )?),
    };
    Ok(Options {
        source,
        listen: c.listen.unwrap_or(([0, 0, 0, 0], 53).into()),
        domain: c
            .domain
            .unwrap_or_else(|| plexus_dns::DEFAULT_DOMAIN.to_string()),
        ttl: c.ttl.unwrap_or(plexus_dns::DEFAULT_TTL),
    })
}

async fn connect_etcd(config: &EtcdConfig) -> Result<Arc<dyn KvBackend>> {
    // A pod is not restarted when it exits: keep trying (queries get SERVFAIL meanwhile).
    let etcd =
        plexus_kvstore::connect_with_retry(config, &Retry::forever(), "the cluster's etcd").await?;
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
    let cli = CommandLine::parse();
    let args = resolve(cli.config.as_deref(), cli.flags)?;
    let etcd_config = match args.source {
        Source::Etcd(config) => config,
        Source::ZoneFile(path) => return serve_zone(&path, &args.domain, args.listen).await,
    };
    let records = Arc::new(RwLock::new(
        ServiceRecords::new(&args.domain).context("--domain")?,
    ));
    let handler = ClusterDns::new(records.clone(), args.ttl).context("--domain")?;
    // Listen first: until the services have synced, queries get SERVFAIL rather than silence.
    let mut server = DnsServer::bind(args.listen, handler)
        .await
        .context("start the DNS server")?;
    let etcd = connect_etcd(&etcd_config).await?;
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

/// Serves a zone file until SIGTERM or SIGINT.
async fn serve_zone(path: &Path, domain: &str, listen: SocketAddr) -> Result<()> {
    let handler = plexus_dns::ZoneDns::load(path, domain)?;
    let mut server = DnsServer::bind(listen, handler)
        .await
        .context("start the DNS server")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    tokio::select! {
        r = server.wait() => r.context("DNS server")?,
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    server.shutdown().await.context("stop the DNS server")?;
    Ok(())
}
