//! `plexus clustermesh enable | connect | disconnect | status`.
//!
//! - `enable` gives a cluster its CA (a new one with `--create-ca`, or another context's with
//!   `--ca-from-context`, as Cilium users copy the `cilium-ca` secret), issues the etcd server,
//!   admin and local certificates, and creates the users and roles of the wire format in the
//!   cluster's etcd. KVStoreMesh is on by default, as in Cilium since 1.16
//!   (`--enable-kvstoremesh=false` turns it off; it is kept in the context).
//! - `connect A B` makes each cluster read the other: it issues `remote-<A>` in B's CA, creates
//!   that read-only user in B's etcd, and writes B's configuration file (endpoints, B's CA, the
//!   client certificate) where A's KVStoreMesh (when on and A runs one), else A's agents, read
//!   remote configurations; then the same the other way. Files are written through a rename,
//!   so readers never see half.
//! - `disconnect` removes both files and both users.
//! - `status` gathers the apiserver's and every agent's view into one report: access, per remote
//!   cluster how many nodes have it configured and connected with its counts, and every error
//!   with a hint. It also reads every certificate of the cluster (its PKI directory, and the
//!   CA and client certificates of the remote configurations) and warns about those that
//!   expire within `--expiry-warning` (30 days by default) or have expired.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use plexus_agent_api::{ApiError, ClusterMeshReport, RemoteClusterReport};
use plexus_apiserver::ApiServerStatus;
use plexus_clustermesh::failure::FailureKind;
use plexus_kvstore::{ErrorKind, EtcdBackend, EtcdConfig, Retry, TlsFiles, TlsReason, TlsSide};
use plexus_pki::Ca;
use serde::{Deserialize, Serialize};

use crate::config::{CliConfig, Context, write_atomic};

const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the context's etcd as `admin-<cluster>`, retrying for up to `limit` (etcd may be
/// restarting to present new certificates).
pub async fn admin_etcd(ctx: &Context, limit: Duration) -> Result<EtcdBackend> {
    let admin = ctx.pki().admin();
    let config = EtcdConfig::new(ctx.etcd_endpoints.clone()).with_tls(TlsFiles {
        ca_file: admin.ca,
        cert_file: admin.cert,
        key_file: admin.key,
    });
    plexus_kvstore::connect_with_retry(
        &config,
        &Retry::for_at_most(limit),
        &format!("the etcd of cluster {}", ctx.name),
    )
    .await
    .with_context(|| {
        format!(
            "cannot reach the etcd of cluster {} at {:?} as admin-{}",
            ctx.name, ctx.etcd_endpoints, ctx.name
        )
    })
}

fn endpoint_hosts(endpoints: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for e in endpoints {
        let rest = e.split("://").nth(1).unwrap_or(e);
        let hostport = rest.split('/').next().unwrap_or(rest);
        let host = match hostport.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => hostport,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(host.to_string()),
        }
    }
    (dns, ips)
}

/// Certificate lifetimes `clustermesh enable` issues with.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// Leaf certificates; `None`: one year for new ones, existing ones keep theirs.
    pub leaf: Option<Duration>,
    /// A CA created by `--create-ca`.
    pub ca: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            leaf: None,
            ca: plexus_pki::Validity::default().ca,
        }
    }
}

/// Turns KVStoreMesh on or off for the context named `name` (kept in the CLI configuration):
/// whether `connect` makes its agents read remote clusters through it.
fn set_kvstoremesh(config: &mut CliConfig, path: &Path, name: &str, on: bool) -> Result<()> {
    let Some(ctx) = config.contexts.iter_mut().find(|c| c.name == name) else {
        bail!("context {name:?} not found in {}", path.display());
    };
    let changed = ctx.kvstoremesh != on;
    ctx.kvstoremesh = on;
    let ctx = ctx.clone();
    if changed {
        config.save(path)?;
    }
    match (&ctx.kvstoremesh_dir, on) {
        (Some(dir), true) => println!(
            "✅ KVStoreMesh enabled for {}: its apiserver mirrors the remote clusters configured in {} into its etcd, where the agents read them",
            ctx.name,
            dir.display()
        ),
        (None, true) => println!(
            "ℹ️  context {} names no kvstoremesh-dir (its apiserver's --kvstoremesh-config): its agents read remote clusters directly",
            ctx.name
        ),
        (_, false) => println!(
            "ℹ️  KVStoreMesh disabled for {}: its agents read remote clusters directly",
            ctx.name
        ),
    }
    if changed && !configured_remotes(&ctx).is_empty() {
        println!(
            "ℹ️  run plexus clustermesh connect again for the clusters {} reads already, so that they are read {}",
            ctx.name,
            if on {
                "through KVStoreMesh"
            } else {
                "directly"
            }
        );
    }
    Ok(())
}

/// `clustermesh enable`. `kvstoremesh`: whether its agents read remote clusters through the
/// cluster's KVStoreMesh (`--enable-kvstoremesh`, on by default).
pub async fn enable(
    config: &mut CliConfig,
    path: &Path,
    context: Option<&str>,
    create_ca: bool,
    ca_from: Option<&str>,
    lifetimes: Lifetimes,
    kvstoremesh: bool,
) -> Result<()> {
    let name = config.context(context, path)?.name.clone();
    set_kvstoremesh(config, path, &name, kvstoremesh)?;
    let config = &*config;
    let ctx = config.context(Some(&name), path)?;
    let mut pki = ctx.pki();
    if let Some(leaf) = lifetimes.leaf {
        pki = pki.with_leaf_validity(leaf);
    }
    let mut ca_changed = false;
    if let Some(from) = ca_from {
        let src = config.context(Some(from), path)?;
        let ca = src.pki().ca().with_context(|| {
            format!(
                "context {from} has no CA in {}: run plexus clustermesh enable --context {from} --create-ca first",
                src.pki().dir().display()
            )
        })?;
        ca_changed = pki.install_ca(&ca)?;
        println!("✅ CA of {from} installed for {}", ctx.name);
    } else if pki.has_ca() {
        if create_ca {
            println!(
                "ℹ️  {} already has a CA in {}: kept",
                ctx.name,
                pki.dir().display()
            );
        }
    } else if create_ca {
        let ca = Ca::generate_with(
            "plexus-ca",
            plexus_pki::Validity {
                ca: lifetimes.ca,
                leaf: lifetimes
                    .leaf
                    .unwrap_or(plexus_pki::Validity::default().leaf),
            },
        )?;
        pki.install_ca(&ca)?;
        println!(
            "✅ CA created in {} (valid for {})",
            pki.dir().display(),
            span(i64::try_from(lifetimes.ca.as_secs()).unwrap_or(i64::MAX))
        );
    } else {
        bail!(
            "cluster {} has no CA in {}: pass --create-ca, or --ca-from-context OTHER to share another cluster's CA",
            ctx.name,
            pki.dir().display()
        );
    }
    let mut endpoints = ctx.etcd_endpoints.clone();
    endpoints.extend(ctx.mesh_endpoints().iter().cloned());
    let (dns, ips) = endpoint_hosts(&endpoints);
    let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
    if pki.ensure(&dns, &ips)? {
        let lifetime = std::fs::read_to_string(pki.admin().cert)
            .ok()
            .and_then(|pem| plexus_pki::inspect(&pem).ok())
            .map(|i| span(i64::try_from(i.lifetime().as_secs()).unwrap_or(i64::MAX)))
            .unwrap_or_default();
        println!(
            "✅ certificates issued in {} (valid for {lifetime})",
            pki.dir().display()
        );
    }
    if ca_changed {
        println!(
            "ℹ️  the CA changed: the apiserver restarts etcd to present the new certificate; restart the cluster's agents so they use theirs"
        );
    }
    let apiserver_up = match ctx.apiserver_client() {
        Some(client) => client
            .with_timeout(Duration::from_secs(2))
            .get_text("/healthz")
            .await
            .is_ok(),
        None => true,
    };
    if apiserver_up {
        println!(
            "⌛ setting up users and roles in the etcd of {}...",
            ctx.name
        );
        let etcd = admin_etcd(ctx, Duration::from_secs(30)).await?;
        plexus_clustermesh::access::apply(&etcd, &ctx.name)
            .await
            .with_context(|| format!("set up the users and roles of cluster {}", ctx.name))?;
    } else {
        println!(
            "ℹ️  the apiserver of {} is not running: it creates the etcd users and roles when it starts",
            ctx.name
        );
    }
    println!(
        "✅ ClusterMesh enabled for cluster {} (id {}), reachable at {}",
        ctx.name,
        ctx.cluster_id,
        ctx.mesh_endpoints().join(", ")
    );
    Ok(())
}

fn two<'a>(
    config: &'a CliConfig,
    path: &Path,
    a: Option<&str>,
    b: &str,
) -> Result<(&'a Context, &'a Context)> {
    let a = config.context(a, path)?;
    let b = config.context(Some(b), path)?;
    if a.name == b.name {
        bail!("a cluster cannot be connected to itself ({})", a.name);
    }
    Ok((a, b))
}

/// `clustermesh connect`: both directions.
pub async fn connect(config: &CliConfig, path: &Path, a: Option<&str>, b: &str) -> Result<()> {
    let (a, b) = two(config, path, a, b)?;
    same_encryption(a, b)?;
    for c in [a, b] {
        if !c.pki().has_ca() {
            bail!(
                "cluster {} is not enabled: run plexus clustermesh enable --context {}",
                c.name,
                c.name
            );
        }
    }
    if a.cluster_id == b.cluster_id {
        bail!(
            "clusters {} and {} both have id {}: cluster ids must be unique in a mesh",
            a.name,
            b.name,
            a.cluster_id
        );
    }
    if a.max_connected_clusters != b.max_connected_clusters {
        bail!(
            "cluster {} has max-connected-clusters {} and {} has {}: they must match",
            a.name,
            a.max_connected_clusters,
            b.name,
            b.max_connected_clusters
        );
    }
    for peer in config.contexts.iter() {
        for c in [a, b] {
            if peer.name != c.name
                && peer.cluster_id == c.cluster_id
                && remote_configured(peer, a.name.as_str())
                    | remote_configured(peer, b.name.as_str())
            {
                bail!(
                    "cluster {} has id {}, already used by cluster {} in this mesh",
                    c.name,
                    c.cluster_id,
                    peer.name
                );
            }
        }
    }
    link(a, b).await?;
    link(b, a).await?;
    println!("✅ Connected cluster {} and cluster {}!", a.name, b.name);
    Ok(())
}

/// Refuses to mesh an encrypted cluster with an unencrypted one: pod traffic between them would
/// either leave in the clear or (strict mode) be dropped. Cilium refuses the mix too. Checked
/// first, before anything is written: no enabling makes the pair connectable.
fn same_encryption(a: &Context, b: &Context) -> Result<()> {
    if a.encryption != b.encryption {
        bail!(
            "cluster {} has encryption {} and cluster {} has encryption {}: clusters of a mesh \
             must all encrypt pod traffic the same way (enable-wireguard on the agents of \
             both, or of neither)",
            a.name,
            a.encryption.as_str(),
            b.name,
            b.encryption.as_str()
        );
    }
    Ok(())
}

fn remote_configured(ctx: &Context, remote: &str) -> bool {
    ctx.clustermesh_dir.join(remote).exists()
        || ctx
            .kvstoremesh_dir
            .as_ref()
            .is_some_and(|d| d.join(remote).exists())
}

fn copy_identity(
    dir: &Path,
    remote: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let ca_dst = dir.join(format!("{remote}.etcd-client-ca.crt"));
    let cert_dst = dir.join(format!("{remote}.etcd-client.crt"));
    let key_dst = dir.join(format!("{remote}.etcd-client.key"));
    write_atomic(&ca_dst, &read(ca)?, 0o644)?;
    write_atomic(&cert_dst, &read(cert)?, 0o644)?;
    write_atomic(&key_dst, &read(key)?, 0o600)?;
    Ok((ca_dst, cert_dst, key_dst))
}

fn write_remote_config(
    dir: &Path,
    remote: &str,
    endpoints: &[String],
    files: &(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf),
) -> Result<()> {
    let mut text = String::from("endpoints:\n");
    for e in endpoints {
        text.push_str(&format!("- {e}\n"));
    }
    // File names only: the agents resolve them against the directory, so the directory can be
    // copied to the cluster's nodes wherever they keep it (/etc/plexus/clustermesh).
    let name = |p: &std::path::Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    text.push_str(&format!(
        "trusted-ca-file: {}\ncert-file: {}\nkey-file: {}\n",
        name(&files.0),
        name(&files.1),
        name(&files.2)
    ));
    write_atomic(&dir.join(remote), text.as_bytes(), 0o644)
}

/// Makes `from` read `to`.
async fn link(from: &Context, to: &Context) -> Result<()> {
    let issued = to.pki().issue_remote(&from.name)?;
    let etcd = admin_etcd(to, Duration::from_secs(10)).await?;
    plexus_clustermesh::access::grant_peer(&etcd, &from.name)
        .await
        .with_context(|| format!("create user remote-{} in cluster {}", from.name, to.name))?;
    match from.kvstoremesh() {
        Some(kvstoremesh) => {
            // KVStoreMesh reads the remote; the agents read KVStoreMesh's cache in their own
            // cluster's etcd as local-<from>.
            let files =
                copy_identity(kvstoremesh, &to.name, &issued.ca, &issued.cert, &issued.key)?;
            write_remote_config(kvstoremesh, &to.name, to.mesh_endpoints(), &files)?;
            let local = from.pki().local();
            let files = copy_identity(
                &from.clustermesh_dir,
                &to.name,
                &local.ca,
                &local.cert,
                &local.key,
            )?;
            write_remote_config(
                &from.clustermesh_dir,
                &to.name,
                from.mesh_endpoints(),
                &files,
            )?;
        }
        None => {
            let files = copy_identity(
                &from.clustermesh_dir,
                &to.name,
                &issued.ca,
                &issued.cert,
                &issued.key,
            )?;
            write_remote_config(&from.clustermesh_dir, &to.name, to.mesh_endpoints(), &files)?;
            // KVStoreMesh turned off since an earlier connect: it stops mirroring `to` (the
            // configuration first: it drains on its removal).
            if let Some(dir) = &from.kvstoremesh_dir {
                remove_remote_files(dir, &to.name)?;
            }
        }
    }
    println!(
        "✅ {} now reads {} ({})",
        from.name,
        to.name,
        to.mesh_endpoints().join(", ")
    );
    Ok(())
}

/// The contexts whose cluster issues from the same CA as `ctx`'s (the mesh sharing it).
fn sharing_ca<'a>(config: &'a CliConfig, ctx: &Context) -> Result<Vec<&'a Context>> {
    let id = ctx
        .pki()
        .ca()
        .with_context(|| {
            format!(
                "cluster {} has no CA: run plexus clustermesh enable",
                ctx.name
            )
        })?
        .key_id();
    Ok(config
        .contexts
        .iter()
        .filter(|c| c.pki().ca().is_ok_and(|ca| ca.key_id() == id))
        .collect())
}

/// Writes `bundle` as the CA file of every configuration in which `ctx` reads a cluster of
/// `members`: the agents' (for KVStoreMesh, their file names `ctx`'s own bundle) and
/// KVStoreMesh's. Only files that exist are rewritten.
fn refresh_ca_copies(ctx: &Context, members: &[&Context], bundle: &str) -> Result<()> {
    for remote in configured_remotes(ctx) {
        if !members.iter().any(|m| m.name == remote) {
            continue;
        }
        let file = format!("{remote}.etcd-client-ca.crt");
        let mut dirs = vec![ctx.clustermesh_dir.clone()];
        dirs.extend(ctx.kvstoremesh_dir.clone());
        for dir in dirs {
            let path = dir.join(&file);
            if path.exists() {
                write_atomic(&path, bundle.as_bytes(), 0o644)?;
            }
        }
    }
    Ok(())
}

/// Waits until the etcd of `ctx` accepts a client certificate of `ca` while trusting only
/// `trust` (PEM): proof that it trusts `ca` (after its restart) and, with `trust` holding only
/// the new CA, that it presents a certificate of it.
async fn wait_etcd_trusts(ctx: &Context, ca: &Ca, trust: &str, limit: Duration) -> Result<()> {
    let dir = tempfile_dir(&ctx.pki().dir().join(".rotate-probe"))?;
    let (cert, key) = ca
        .issue_client_for(&format!("admin-{}", ctx.name), Duration::from_secs(600))?
        .write_to(&dir, "probe")?;
    let ca_file = dir.join("trust.crt");
    plexus_pki::write_file(&ca_file, trust, 0o644)?;
    let config = EtcdConfig::new(ctx.etcd_endpoints.clone()).with_tls(TlsFiles {
        ca_file,
        cert_file: cert,
        key_file: key,
    });
    let start = Instant::now();
    let result = loop {
        let attempt = async {
            let etcd = EtcdBackend::connect(config.clone()).await?;
            plexus_kvstore::KvBackend::get(&etcd, "cilium/.heartbeat").await
        };
        match attempt.await {
            Ok(_) => break Ok(()),
            Err(err) if start.elapsed() >= limit => {
                break Err(anyhow::anyhow!(
                    "the etcd of cluster {} at {:?} did not accept the new CA within {limit:?}: {err}",
                    ctx.name,
                    ctx.etcd_endpoints
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir(dir: &Path) -> Result<std::path::PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// `clustermesh rotate-ca`: replaces the CA shared by the context's cluster and every cluster
/// of the configuration issuing from it, without breaking their connections:
/// 1. every cluster trusts the old and the new CA (`ca.crt` becomes a bundle, and so do the
///    CA files of the remote configurations); each etcd restarts to trust it, every client
///    reloads it;
/// 2. every cluster issues from the new CA: its certificates are re-issued (etcd presents its
///    new one at the next connection, clients reload theirs), and the remote configurations'
///    client certificates too (as `connect` does);
/// 3. the old CA is dropped from every bundle.
///
/// Between the steps it waits until each etcd shows the step done, then `grace` for clients
/// that reload their files at their next request. The new CA is kept in `.ca-next.crt/.key` of
/// the context's PKI directory until the end, so that an interrupted rotation resumes with it.
pub async fn rotate_ca(
    config: &CliConfig,
    path: &Path,
    context: Option<&str>,
    ca_validity: Duration,
    grace: Duration,
) -> Result<()> {
    let ctx = config.context(context, path)?;
    let pki = ctx.pki();
    let old = pki.ca()?;
    let members = sharing_ca(config, ctx)?;
    let next = (
        pki.dir().join(".ca-next.crt"),
        pki.dir().join(".ca-next.key"),
    );
    let new = match (
        std::fs::read_to_string(&next.0),
        std::fs::read_to_string(&next.1),
    ) {
        (Ok(cert), Ok(key)) => {
            println!(
                "ℹ️  resuming the rotation to the CA in {}",
                next.0.display()
            );
            Ca::from_pem(&cert, &key)?
        }
        _ => {
            // A name of its own: chain building looks CAs up by name first.
            let ca = Ca::generate_with(
                &format!("plexus-ca-{}", plexus_pki::unix_now()),
                plexus_pki::Validity {
                    ca: ca_validity,
                    leaf: plexus_pki::Validity::default().leaf,
                },
            )?;
            plexus_pki::write_file(&next.1, &ca.pem().key_pem, 0o600)?;
            plexus_pki::write_file(&next.0, ca.cert_pem(), 0o644)?;
            ca
        }
    };
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    println!(
        "🔄 rotating the CA of {} (key {} to {})",
        names.join(", "),
        &old.key_id()[..8.min(old.key_id().len())],
        &new.key_id()[..8.min(new.key_id().len())]
    );

    // 1. Trust both.
    let both = format!("{}{}", old.cert_pem(), new.cert_pem());
    for m in &members {
        m.pki().trust(&both)?;
        refresh_ca_copies(m, &members, &both)?;
    }
    for m in &members {
        wait_etcd_trusts(m, &new, &both, Duration::from_secs(90)).await?;
    }
    tokio::time::sleep(grace).await;
    println!("✅ 1/3 every cluster trusts the old and the new CA");

    // 2. Issue from the new CA.
    for m in &members {
        let p = m.pki();
        p.switch_issuer(&new)?;
        let redone = p.reissue_foreign()?;
        println!("   {}: re-issued {}", m.name, redone.join(", "));
    }
    for a in &members {
        for remote in configured_remotes(a) {
            if let Some(b) = members.iter().find(|m| m.name == remote) {
                link(a, b).await?;
            }
        }
    }
    for m in &members {
        wait_etcd_trusts(m, &new, new.cert_pem(), Duration::from_secs(90)).await?;
    }
    tokio::time::sleep(grace).await;
    println!("✅ 2/3 every certificate is issued by the new CA");

    // 3. Drop the old CA.
    for m in &members {
        m.pki().trust(new.cert_pem())?;
        refresh_ca_copies(m, &members, new.cert_pem())?;
    }
    for m in &members {
        wait_etcd_trusts(m, &new, new.cert_pem(), Duration::from_secs(90)).await?;
    }
    let _ = std::fs::remove_file(&next.0);
    let _ = std::fs::remove_file(&next.1);
    println!(
        "✅ 3/3 the old CA is no longer trusted: CA rotated for {}",
        names.join(", ")
    );
    Ok(())
}

/// Removes the configuration of `remote` from `dir`, then its certificate files (the
/// configuration first: the manager drains on its removal). Files already gone are fine.
fn remove_remote_files(dir: &Path, remote: &str) -> Result<()> {
    for name in [
        remote.to_string(),
        format!("{remote}.etcd-client-ca.crt"),
        format!("{remote}.etcd-client.crt"),
        format!("{remote}.etcd-client.key"),
    ] {
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("remove {}", dir.join(&name).display()));
            }
        }
    }
    Ok(())
}

/// `clustermesh disconnect`: both directions.
pub async fn disconnect(config: &CliConfig, path: &Path, a: Option<&str>, b: &str) -> Result<()> {
    let (a, b) = two(config, path, a, b)?;
    for (from, to) in [(a, b), (b, a)] {
        let mut dirs = vec![from.clustermesh_dir.clone()];
        dirs.extend(from.kvstoremesh_dir.clone());
        for dir in dirs {
            remove_remote_files(&dir, &to.name)?;
        }
        match admin_etcd(to, Duration::from_secs(5)).await {
            Ok(etcd) => {
                plexus_clustermesh::access::revoke_peer(&etcd, &from.name).await?;
            }
            Err(err) => eprintln!(
                "⚠️  could not remove user remote-{} from cluster {}: {err:#}",
                from.name, to.name
            ),
        }
        println!("✅ {} no longer reads {}", from.name, to.name);
    }
    Ok(())
}

/// One agent's view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentStatus {
    /// Node name.
    pub node: String,
    /// Whether its API answered.
    pub reachable: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its remote clusters.
    pub remote_clusters: Vec<RemoteClusterReport>,
}

/// One remote cluster across the nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Connection {
    /// Remote cluster.
    pub cluster: String,
    /// Nodes with it configured.
    pub configured: usize,
    /// Nodes connected to it.
    pub connected: usize,
    /// Nodes synced with it.
    pub ready: usize,
    /// Nodes asked.
    pub total: usize,
    /// Its nodes (largest count any node holds).
    pub nodes: usize,
    /// Its endpoints (ipcache entries).
    pub endpoints: usize,
    /// Its identities.
    pub identities: usize,
    /// Its shared services.
    pub services: usize,
    /// Entries refused by validation.
    pub rejected: u64,
    /// Refusals by reason (largest count any node reports).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// KVStoreMesh's view, when it runs: connected and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvstoremesh: Option<RemoteClusterReport>,
}

/// ` (foreign-cluster 3, value-too-large 1)`, or nothing without reasons.
fn by_reason(reasons: &BTreeMap<String, u64>) -> String {
    if reasons.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
    format!(" ({})", parts.join(", "))
}

/// A problem, with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Where (a node, `apiserver`, `kvstoremesh`).
    pub scope: String,
    /// What.
    pub message: String,
    /// What to try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// What `clustermesh status` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusReport {
    /// The cluster.
    pub cluster: String,
    /// Its id.
    pub cluster_id: u32,
    /// Whether ClusterMesh is enabled (a CA and certificates exist).
    pub enabled: bool,
    /// How other clusters reach it.
    pub access_endpoints: Vec<String>,
    /// The apiserver's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<ApiServerStatus>,
    /// Whether KVStoreMesh is on.
    pub kvstoremesh: bool,
    /// Remote clusters configured.
    pub configured: Vec<String>,
    /// Per node.
    pub agents: Vec<AgentStatus>,
    /// Per remote cluster.
    pub connections: Vec<Connection>,
    /// Everything wrong.
    pub errors: Vec<Problem>,
    /// Every certificate of the cluster and of its remote configurations.
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
    /// What will go wrong: certificates that expire soon (or did).
    #[serde(default)]
    pub warnings: Vec<Problem>,
    /// Everything connected and synced.
    pub ready: bool,
}

/// How long before a certificate's expiry `clustermesh status` warns, by default.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Where a certificate is used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertScope {
    /// The cluster's own PKI directory (its CA, etcd, admin, local, remote-<peer>, API).
    Cluster,
    /// The agents' configuration of a remote cluster (its CA, our client certificate).
    Remote(String),
    /// KVStoreMesh's configuration of a remote cluster.
    Kvstoremesh(String),
}

/// Whether a certificate is still good.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertState {
    /// Valid beyond the warning window.
    Valid,
    /// Expires within the warning window.
    Expiring,
    /// Expired.
    Expired,
}

/// One certificate (a CA bundle gives one per CA in it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CertificateStatus {
    /// Its file.
    pub file: String,
    /// Where it is used.
    pub scope: CertScope,
    /// Its subject's common name.
    pub common_name: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Seconds left (negative once expired).
    pub expires_in_seconds: i64,
    /// Valid, expiring or expired.
    pub state: CertState,
}

/// "12 days", "5 hours", "40 minutes", "30 seconds".
fn span(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// Checks the certificates read from disk (`(scope, file, what inspecting it gave)`) at `now`
/// (Unix seconds): their status, and a warning for each that expires within `warning`, with
/// what to do about it.
pub fn check_certificates(
    cluster: &str,
    files: Vec<CertFile>,
    now: i64,
    warning: Duration,
) -> (Vec<CertificateStatus>, Vec<Problem>) {
    let window = i64::try_from(warning.as_secs()).unwrap_or(i64::MAX);
    let mut certs = Vec::new();
    let mut warnings = Vec::new();
    for (scope, file, infos) in files {
        let infos = match infos {
            Ok(infos) => infos,
            Err(reason) => {
                warnings.push(Problem {
                    scope: "certificates".into(),
                    message: format!("{}: {reason}", file.display()),
                    hint: None,
                });
                continue;
            }
        };
        for info in infos {
            let left = info.expires_in(now);
            let state = if left <= 0 {
                CertState::Expired
            } else if left <= window {
                CertState::Expiring
            } else {
                CertState::Valid
            };
            let not_after = chrono::DateTime::from_timestamp(info.not_after, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            if state != CertState::Valid {
                let is_ca = file.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n == "ca.crt" || n.ends_with("-ca.crt")
                });
                let when = if state == CertState::Expired {
                    format!("expired {} ago ({not_after})", span(left))
                } else {
                    format!("expires in {} ({not_after})", span(left))
                };
                let hint = match (&scope, is_ca) {
                    (_, true) => format!(
                        "replace the mesh's CA before it expires: plexus clustermesh rotate-ca --context {cluster}"
                    ),
                    (CertScope::Cluster, false) => format!(
                        "the apiserver of {cluster} renews the certificates it issued before they expire; is it running? plexus clustermesh enable --context {cluster} re-issues them too"
                    ),
                    (CertScope::Remote(r) | CertScope::Kvstoremesh(r), false) => format!(
                        "re-issue it: plexus clustermesh connect --context {cluster} --destination-context {r} (the agents reload it)"
                    ),
                };
                warnings.push(Problem {
                    scope: "certificates".into(),
                    message: format!("{} (CN {}) {when}", file.display(), info.common_name),
                    hint: Some(hint),
                });
            }
            certs.push(CertificateStatus {
                file: file.display().to_string(),
                scope: scope.clone(),
                common_name: info.common_name,
                not_after,
                expires_in_seconds: left,
                state,
            });
        }
    }
    (certs, warnings)
}

/// How a directory's certificates are scoped, from the remote named by the file.
type ScopeOf = fn(String) -> CertScope;

/// A certificate file read from disk: where it is used, its path, what inspecting it gave.
pub type CertFile = (
    CertScope,
    std::path::PathBuf,
    Result<Vec<plexus_pki::CertInfo>, String>,
);

/// Every certificate file (`*.crt`) of the cluster's PKI directory and of its agents' and
/// KVStoreMesh's remote configurations, inspected.
fn read_certificates(ctx: &Context) -> Vec<CertFile> {
    let mut out = Vec::new();
    let mut dirs: Vec<(std::path::PathBuf, ScopeOf)> = vec![
        (ctx.pki().dir().to_path_buf(), |_| CertScope::Cluster),
        (ctx.clustermesh_dir.clone(), CertScope::Remote),
    ];
    if let Some(k) = &ctx.kvstoremesh_dir {
        dirs.push((k.clone(), CertScope::Kvstoremesh));
    }
    for (dir, scope) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    !n.starts_with('.') && n.ends_with(".crt")
                })
            })
            .collect();
        files.sort();
        for file in files {
            // <remote>.etcd-client.crt: the remote is the name before the first dot.
            let remote = file
                .file_name()
                .map(|n| {
                    n.to_string_lossy()
                        .split('.')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap_or_default();
            let infos = std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|pem| plexus_pki::inspect_bundle(&pem).map_err(|e| e.to_string()));
            out.push((scope(remote), file, infos));
        }
    }
    out
}

/// What to try about a remote's failure, from its kind (never from its wording).
fn hint_for(kind: &FailureKind, remote: &str) -> Option<String> {
    let recertify = format!(
        "re-issue the server certificate of {remote}'s etcd (plexus clustermesh enable --context {remote} issues a valid one)"
    );
    Some(match kind {
        FailureKind::ClusterIdInUse => {
            "cluster ids must be unique in a mesh: give one of the clusters another id".to_string()
        }
        FailureKind::ClusterConfigInvalid => {
            "every cluster of a mesh needs the same max-connected-clusters and an id in its range"
                .to_string()
        }
        FailureKind::ClusterConfigMissing => {
            format!("is the apiserver of {remote} running? it publishes the cluster config")
        }
        FailureKind::HeartbeatStale => format!(
            "the heartbeat of {remote} stopped: is the apiserver (or KVStoreMesh) of {remote} running?"
        ),
        FailureKind::KvstoremeshDisconnected => format!(
            "this cluster's KVStoreMesh cannot reach {remote} (its status shows why): is the apiserver of {remote} running? the cached state of {remote} is kept meanwhile"
        ),
        FailureKind::Kvstore(ErrorKind::Tls { side, reason }) => match (side, reason) {
            (_, TlsReason::Handshake(_)) => format!(
                "the TLS handshake with the etcd of {remote} failed: is the endpoint in the configuration an https etcd endpoint?"
            ),
            (TlsSide::ServerRefused, _) => format!(
                "the etcd of {remote} refuses our client certificate: run plexus clustermesh connect again to re-issue it from {remote}'s CA"
            ),
            (TlsSide::WeRefused, TlsReason::UnknownIssuer) => format!(
                "the etcd of {remote} presents a certificate from a CA this cluster does not trust: the configuration of {remote} must name {remote}'s CA (run plexus clustermesh connect again)"
            ),
            (TlsSide::WeRefused, TlsReason::NameMismatch { .. }) => format!(
                "the certificate of {remote}'s etcd does not name the host in the configuration's endpoints: {recertify} with that name or address"
            ),
            (TlsSide::WeRefused, TlsReason::Expired | TlsReason::NotYetValid) => {
                format!("check the clocks, then {recertify}")
            }
            (TlsSide::WeRefused, TlsReason::UnsupportedVersion) => format!(
                "{recertify}; with openssl, add extensions (openssl x509 -req ... -extfile with subjectAltName, keyUsage and extendedKeyUsage = serverAuth, clientAuth), which makes an X.509 v3 certificate"
            ),
            (TlsSide::WeRefused, TlsReason::UnsupportedKeyUsage) => format!(
                "the certificate of {remote}'s etcd must allow extendedKeyUsage serverAuth: {recertify}"
            ),
            (TlsSide::WeRefused, _) => recertify,
        },
        FailureKind::Kvstore(ErrorKind::Unauthenticated | ErrorKind::PermissionDenied) => format!(
            "the credentials for {remote} are not accepted: run plexus clustermesh connect again to re-issue them"
        ),
        FailureKind::Kvstore(ErrorKind::Refused) => format!(
            "nothing listens at the etcd endpoint of {remote}: is its etcd running, and is the endpoint in the configuration right?"
        ),
        FailureKind::Kvstore(ErrorKind::Timeout) => format!(
            "the etcd of {remote} does not answer: is it reachable from this node (routes, firewalls)?"
        ),
        FailureKind::Kvstore(ErrorKind::Config) => format!(
            "the configuration of {remote} names files this node cannot use: run plexus clustermesh connect again to rewrite it"
        ),
        FailureKind::Kvstore(ErrorKind::Other) => format!(
            "is the etcd of {remote} running and reachable? see plexus clustermesh status --context {remote}"
        ),
        FailureKind::Other => return None,
    })
}

fn configured_remotes(ctx: &Context) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&ctx.clustermesh_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name.contains('.') {
                continue;
            }
            if std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("endpoints:")) {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// Folds what was gathered into the report (pure, so it is tested without daemons).
pub fn build_report(
    ctx: &Context,
    enabled: bool,
    configured: Vec<String>,
    apiserver: Option<Result<ApiServerStatus, String>>,
    agents: Vec<(String, Result<ClusterMeshReport, ApiError>)>,
) -> StatusReport {
    let mut errors = Vec::new();
    if !enabled {
        errors.push(Problem {
            scope: "cluster".into(),
            message: "ClusterMesh is not enabled".into(),
            hint: Some(format!(
                "run plexus clustermesh enable --context {}",
                ctx.name
            )),
        });
    }
    let apiserver = match apiserver {
        Some(Ok(s)) => {
            for reason in &s.not_ready {
                errors.push(Problem {
                    scope: "apiserver".into(),
                    message: reason.clone(),
                    hint: None,
                });
            }
            Some(s)
        }
        Some(Err(e)) => {
            errors.push(Problem {
                scope: "apiserver".into(),
                message: e,
                hint: Some(format!("is plexus-apiserver of {} running?", ctx.name)),
            });
            None
        }
        None => None,
    };
    let kvstoremesh_view: BTreeMap<String, RemoteClusterReport> = apiserver
        .as_ref()
        .and_then(|a| a.kvstoremesh.as_ref())
        .map(|m| {
            m.remote_clusters
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut statuses = Vec::new();
    let mut conns: BTreeMap<String, Connection> = BTreeMap::new();
    let total = agents.len();
    let connection = |name: &str| Connection {
        cluster: name.to_string(),
        configured: 0,
        connected: 0,
        ready: 0,
        total,
        nodes: 0,
        endpoints: 0,
        identities: 0,
        services: 0,
        rejected: 0,
        rejected_by_reason: BTreeMap::new(),
        kvstoremesh: kvstoremesh_view.get(name).cloned(),
    };
    for name in &configured {
        conns.insert(name.clone(), connection(name));
    }
    for (node, result) in agents {
        match result {
            Ok(report) => {
                for r in &report.mesh.remote_clusters {
                    let c = conns
                        .entry(r.name.clone())
                        .or_insert_with(|| connection(&r.name));
                    c.configured += 1;
                    c.connected += usize::from(r.connected);
                    c.ready += usize::from(r.ready);
                    c.nodes = c.nodes.max(r.num_nodes);
                    c.endpoints = c.endpoints.max(r.num_endpoints);
                    c.identities = c.identities.max(r.num_identities);
                    c.services = c.services.max(r.num_shared_services);
                    c.rejected = c.rejected.max(r.num_rejected);
                    for (reason, n) in &r.rejected_by_reason {
                        let slot = c.rejected_by_reason.entry(reason.clone()).or_default();
                        *slot = (*slot).max(*n);
                    }
                    if !r.ready {
                        let message = match (&r.last_failure, r.connected) {
                            (Some(f), false) => format!("{}: {f}", r.name),
                            _ => format!("{}: {}", r.name, r.status),
                        };
                        errors.push(Problem {
                            scope: node.clone(),
                            hint: r
                                .last_failure_kind
                                .as_ref()
                                .and_then(|k| hint_for(k, &r.name)),
                            message,
                        });
                    }
                    if r.num_rejected > 0 {
                        errors.push(Problem {
                            scope: node.clone(),
                            message: format!(
                                "{}: {} entries refused by validation{}",
                                r.name,
                                r.num_rejected,
                                by_reason(&r.rejected_by_reason)
                            ),
                            hint: Some(format!(
                                "cluster {} publishes entries that are not its own or malformed; see the agent's log",
                                r.name
                            )),
                        });
                    }
                }
                for e in &report.mesh.config_errors {
                    errors.push(Problem {
                        scope: node.clone(),
                        message: e.clone(),
                        hint: Some(
                            "fix or remove the file; plexus clustermesh connect writes valid ones"
                                .into(),
                        ),
                    });
                }
                statuses.push(AgentStatus {
                    node,
                    reachable: true,
                    error: None,
                    remote_clusters: report.mesh.remote_clusters,
                });
            }
            Err(e) => {
                errors.push(Problem {
                    scope: node.clone(),
                    message: e.to_string(),
                    hint: Some(crate::node::agent_hint(&e, &node)),
                });
                statuses.push(AgentStatus {
                    node,
                    reachable: false,
                    error: Some(e.to_string()),
                    remote_clusters: Vec::new(),
                });
            }
        }
    }
    for (name, r) in &kvstoremesh_view {
        if !r.ready {
            errors.push(Problem {
                scope: "kvstoremesh".into(),
                message: format!("{name}: {}", r.status),
                hint: r.last_failure_kind.as_ref().and_then(|k| hint_for(k, name)),
            });
        }
    }
    let connections: Vec<Connection> = conns.into_values().collect();
    // Refused entries are reported but do not make the mesh unready.
    let ready = enabled
        && statuses.iter().all(|a| a.reachable)
        && apiserver.as_ref().is_none_or(|a| a.ready)
        && kvstoremesh_view.values().all(|r| r.ready)
        && connections
            .iter()
            .all(|c| c.ready == c.total && c.configured == c.total);
    StatusReport {
        cluster: ctx.name.clone(),
        cluster_id: ctx.cluster_id,
        enabled,
        access_endpoints: ctx.mesh_endpoints().to_vec(),
        apiserver,
        kvstoremesh: ctx.kvstoremesh().is_some(),
        configured,
        agents: statuses,
        connections,
        errors,
        certificates: Vec::new(),
        warnings: Vec::new(),
        ready,
    }
}

/// Gathers the status of the context's cluster; certificates expiring within `warning` are
/// warned about.
pub async fn gather(ctx: &Context, warning: Duration) -> StatusReport {
    let apiserver = match ctx.apiserver_client() {
        Some(client) => Some(
            client
                .with_timeout(API_TIMEOUT)
                .get::<ApiServerStatus>("/v1/status")
                .await
                .map_err(|e| e.to_string()),
        ),
        None => None,
    };
    let mut agents = Vec::new();
    for a in &ctx.agents {
        let r = match ctx.agent_client(a) {
            Ok(client) => client.with_timeout(API_TIMEOUT).clustermesh().await,
            Err(e) => Err(ApiError::Unreachable {
                endpoint: format!("the agent of {}", a.node),
                reason: format!("{e:#}"),
            }),
        };
        agents.push((a.node.clone(), r));
    }
    let mut report = build_report(
        ctx,
        ctx.pki().has_ca(),
        configured_remotes(ctx),
        apiserver,
        agents,
    );
    (report.certificates, report.warnings) = check_certificates(
        &ctx.name,
        read_certificates(ctx),
        plexus_pki::unix_now(),
        warning,
    );
    report
}

/// Prints the report for people, in the shape of cilium-cli's.
pub fn print_text(r: &StatusReport) {
    let ok = |b: bool| if b { "✅" } else { "❌" };
    if r.enabled {
        println!("✅ Cluster access information is available:");
        for e in &r.access_endpoints {
            println!("  - {e}");
        }
    } else {
        println!("❌ ClusterMesh is not enabled for cluster {}", r.cluster);
    }
    if let Some(a) = &r.apiserver {
        println!(
            "{} Apiserver of {} (id {}) is {}",
            ok(a.ready),
            a.cluster,
            a.cluster_id,
            if a.ready { "ready" } else { "not ready" }
        );
    }
    println!(
        "ℹ️  KVStoreMesh is {}",
        if r.kvstoremesh { "enabled" } else { "disabled" }
    );
    println!();
    let total = r.agents.len();
    if !r.connections.is_empty() {
        let full = r
            .agents
            .iter()
            .filter(|a| {
                a.reachable
                    && r.connections.iter().all(|c| {
                        a.remote_clusters
                            .iter()
                            .any(|x| x.name == c.cluster && x.ready)
                    })
            })
            .count();
        println!(
            "{} {full}/{total} nodes are connected to all clusters",
            ok(full == total)
        );
        println!();
        println!("🔌 Cluster Connections:");
        for c in &r.connections {
            print!(
                "  - {}: {}/{} configured, {}/{} connected",
                c.cluster, c.configured, c.total, c.connected, c.total
            );
            if let Some(k) = &c.kvstoremesh {
                print!(
                    " - KVStoreMesh: {}",
                    if k.ready {
                        "connected"
                    } else {
                        "not connected"
                    }
                );
            }
            println!();
            println!(
                "      {} nodes, {} endpoints, {} identities, {} services{}",
                c.nodes,
                c.endpoints,
                c.identities,
                c.services,
                if c.rejected > 0 {
                    format!(
                        ", {} rejected{}",
                        c.rejected,
                        by_reason(&c.rejected_by_reason)
                    )
                } else {
                    String::new()
                }
            );
        }
    } else {
        println!("ℹ️  No remote cluster configured");
    }
    if !r.certificates.is_empty() {
        let soonest = r.certificates.iter().min_by_key(|c| c.expires_in_seconds);
        if let Some(c) = soonest.filter(|c| c.state == CertState::Valid) {
            println!();
            println!(
                "✅ {} certificates valid; the first expires in {} ({}, {})",
                r.certificates.len(),
                span(c.expires_in_seconds),
                c.common_name,
                c.not_after
            );
        }
    }
    if !r.warnings.is_empty() {
        println!();
        println!("⚠️  {} warnings:", r.warnings.len());
        for w in &r.warnings {
            println!("  ⚠️  {}: {}", w.scope, w.message);
            if let Some(h) = &w.hint {
                println!("     hint: {h}");
            }
        }
    }
    if !r.errors.is_empty() {
        println!();
        println!("❌ {} errors:", r.errors.len());
        for e in &r.errors {
            println!("  ❌ {}: {}", e.scope, e.message);
            if let Some(h) = &e.hint {
                println!("     hint: {h}");
            }
        }
    }
}

fn waiting_on(r: &StatusReport) -> String {
    r.errors
        .first()
        .map(|e| format!("{}: {}", e.scope, e.message))
        .or_else(|| {
            r.connections
                .iter()
                .find(|c| c.ready < c.total)
                .map(|c| format!("{}: {}/{} nodes synced", c.cluster, c.ready, c.total))
        })
        .unwrap_or_default()
}

/// `clustermesh status`.
pub async fn status(
    config: &CliConfig,
    path: &Path,
    context: Option<&str>,
    wait: Option<Duration>,
    expiry_warning: Duration,
    json: bool,
) -> Result<bool> {
    let ctx = config.context(context, path)?;
    let start = Instant::now();
    let mut report = gather(ctx, expiry_warning).await;
    if let Some(limit) = wait {
        let mut last_print = Instant::now();
        while !report.ready && start.elapsed() < limit {
            if !json && last_print.elapsed() >= Duration::from_secs(2) {
                eprintln!(
                    "⌛ Waiting ({}s) for ClusterMesh of {}: {}",
                    start.elapsed().as_secs(),
                    ctx.name,
                    waiting_on(&report)
                );
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            report = gather(ctx, expiry_warning).await;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    if wait.is_some() && !report.ready {
        bail!(
            "ClusterMesh of {} not ready after {:?}: {}",
            ctx.name,
            wait.unwrap_or_default(),
            waiting_on(&report)
        );
    }
    Ok(report.ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_agent_api::{ErrorKind as ApiErrorKind, MeshReport};

    fn ctx() -> Context {
        Context {
            name: "c1".into(),
            cluster_id: 1,
            max_connected_clusters: 255,
            encryption: Default::default(),
            state_dir: "/nonexistent".into(),
            etcd_endpoints: vec!["https://127.0.0.1:2379".into()],
            mesh_endpoints: vec![],
            apiserver: None,
            relay: None,
            clustermesh_dir: "/nonexistent/cm".into(),
            kvstoremesh_dir: None,
            kvstoremesh: true,
            agents: vec![],
            netns: None,
            lab_dir: None,
        }
    }

    fn remote(
        name: &str,
        ready: bool,
        failure: Option<(FailureKind, &str)>,
    ) -> RemoteClusterReport {
        RemoteClusterReport {
            name: name.into(),
            ready,
            connected: ready,
            status: if ready {
                "ready".into()
            } else {
                "not connected".into()
            },
            num_nodes: 2,
            num_endpoints: 10,
            num_identities: 3,
            num_shared_services: 1,
            num_rejected: 0,
            rejected_by_reason: BTreeMap::new(),
            num_failures: u64::from(failure.is_some()),
            last_failure: failure.as_ref().map(|(_, m)| m.to_string()),
            last_failure_kind: failure.map(|(k, _)| k),
            synced: Default::default(),
            config: Default::default(),
        }
    }

    #[test]
    fn report_counts_nodes_per_remote_and_hints_at_errors() {
        let agent = |node: &str, remotes| {
            (
                node.to_string(),
                Ok(ClusterMeshReport {
                    node: node.into(),
                    cluster: "c1".into(),
                    mesh: MeshReport {
                        remote_clusters: remotes,
                        config_errors: vec![],
                    },
                }),
            )
        };
        let r = build_report(
            &ctx(),
            true,
            vec!["c2".into(), "c3".into()],
            None,
            vec![
                agent(
                    "n1",
                    vec![remote("c2", true, None), remote("c3", true, None)],
                ),
                agent(
                    "n2",
                    vec![
                        remote("c2", true, None),
                        remote(
                            "c3",
                            false,
                            Some((
                                FailureKind::ClusterIdInUse,
                                "cluster \"c3\" has id 2, already used by cluster \"c2\"",
                            )),
                        ),
                    ],
                ),
                (
                    "n3".into(),
                    Err(ApiError::Unreachable {
                        endpoint: "unix:/x".into(),
                        reason: "connection refused".into(),
                    }),
                ),
                (
                    "n4".into(),
                    Err(ApiError::Server {
                        endpoint: "https://10.0.0.4:9965".into(),
                        path: "/v1/clustermesh".into(),
                        status: 403,
                        kind: ApiErrorKind::Forbidden,
                        message: "certificate of c9 may not read".into(),
                    }),
                ),
            ],
        );
        assert!(!r.ready);
        let c2 = &r.connections[0];
        assert_eq!(
            (c2.cluster.as_str(), c2.configured, c2.connected, c2.total),
            ("c2", 2, 2, 4)
        );
        assert_eq!(
            (c2.nodes, c2.endpoints, c2.identities, c2.services),
            (2, 10, 3, 1)
        );
        let c3 = &r.connections[1];
        assert_eq!((c3.configured, c3.connected), (2, 1));
        assert_eq!(r.errors.len(), 3);
        assert!(
            r.errors[0].hint.as_deref().unwrap().contains("unique"),
            "{:?}",
            r.errors
        );
        assert!(
            r.errors[1]
                .hint
                .as_deref()
                .unwrap()
                .contains("plexus-agent running on node n3")
        );
        // The hint comes from the kind of failure, not from the message.
        assert!(
            r.errors[2]
                .hint
                .as_deref()
                .unwrap()
                .contains("admin certificate"),
            "{:?}",
            r.errors[2]
        );
        // `-o json` round-trips into the same typed report.
        let json = serde_json::to_string(&r).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.connections[0].endpoints, 10);
        assert!(!back.agents[2].reachable);
    }

    #[test]
    fn an_encrypted_cluster_is_not_meshed_with_an_unencrypted_one() {
        use crate::config::Encryption;
        let plain = Context {
            name: "plain".into(),
            cluster_id: 2,
            ..ctx()
        };
        let wg = Context {
            encryption: Encryption::Wireguard,
            ..ctx()
        };
        let err = same_encryption(&wg, &plain).unwrap_err().to_string();
        assert!(
            err.contains("cluster c1 has encryption wireguard")
                && err.contains("cluster plain has encryption none"),
            "{err}"
        );
        let err = same_encryption(&plain, &wg).unwrap_err().to_string();
        assert!(
            err.starts_with("cluster plain has encryption none"),
            "{err}"
        );
        assert!(same_encryption(&ctx(), &plain).is_ok());
        let wg2 = Context {
            name: "c2".into(),
            ..wg.clone()
        };
        assert!(same_encryption(&wg, &wg2).is_ok());
    }

    #[test]
    fn hints_come_from_the_failure_kind() {
        let v1 = FailureKind::Kvstore(ErrorKind::Tls {
            side: TlsSide::WeRefused,
            reason: TlsReason::UnsupportedVersion,
        });
        let message = "connect: get cilium/.heartbeat on https://10.0.0.2:2379: tls: we refused \
                       the server's certificate: unsupported certificate version: X.509 v1 (the \
                       certificate was made without extensions)";
        let r = build_report(
            &ctx(),
            true,
            vec!["c2".into()],
            None,
            vec![(
                "n1".into(),
                Ok(ClusterMeshReport {
                    node: "n1".into(),
                    cluster: "c1".into(),
                    mesh: MeshReport {
                        remote_clusters: vec![remote("c2", false, Some((v1, message)))],
                        config_errors: vec![],
                    },
                }),
            )],
        );
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].message, format!("c2: {message}"));
        let hint = r.errors[0].hint.as_deref().unwrap();
        assert!(
            hint.contains("-extfile") && hint.contains("X.509 v3"),
            "{hint}"
        );

        let hint = |kind| hint_for(&FailureKind::Kvstore(kind), "c2").unwrap();
        assert!(hint(ErrorKind::Refused).contains("nothing listens"));
        assert!(hint(ErrorKind::Timeout).contains("does not answer"));
        assert!(
            hint(ErrorKind::Tls {
                side: TlsSide::ServerRefused,
                reason: TlsReason::UnknownIssuer,
            })
            .contains("refuses our client certificate")
        );
        assert!(
            hint(ErrorKind::Tls {
                side: TlsSide::WeRefused,
                reason: TlsReason::UnknownIssuer,
            })
            .contains("does not trust")
        );
        assert_eq!(hint_for(&FailureKind::Other, "c2"), None);
    }

    #[test]
    fn endpoint_hosts_split_names_and_addresses() {
        let (dns, ips) = endpoint_hosts(&[
            "https://10.0.0.1:2379".into(),
            "https://etcd.c1.local:2379".into(),
            "https://[::1]:2379".into(),
        ]);
        assert_eq!(dns, vec!["etcd.c1.local"]);
        assert_eq!(ips.len(), 2);
    }
}
