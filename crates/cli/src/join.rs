//! `plexus node join`: everything a new host needs to run the agent of a cluster.
//!
//! It writes, into one directory that the operator copies to the host's `/etc/plexus`:
//!
//! ```text
//! <out>/agent.yaml            the agent's configuration file (keys = its long flag names)
//! <out>/pki/ca.crt            the cluster's CA (trusts its etcd; clients of the agent's API)
//! <out>/pki/etcd-client.crt   CN node-<cluster>-<node>: the node's own etcd user
//! <out>/pki/etcd-client.key
//! <out>/pki/api.crt           the agent's TCP API: a server certificate for the node's name/IP
//! <out>/pki/api.key
//! ```
//!
//! This is the one step of an install that copies secrets, so every file is 0600 and a
//! directory it creates 0700; nothing is overwritten silently (`--overwrite` rewrites the files
//! of the same node, never another node's). The node's etcd user has a role of its own
//! ([`plexus_clustermesh::access::grant_node`]): a stolen node key cannot rewrite other nodes,
//! the cluster config, services or policies. A node name already registered in the cluster, or
//! holding a pod CIDR claim, is refused. The remote-cluster configurations that
//! `clustermesh connect` writes into the context's `clustermesh-dir` are copied to the node's
//! `--clustermesh-config` directory (default `/etc/plexus/clustermesh`). The context then lists the node's agent (its TCP API),
//! so `status --node` and `clustermesh status` reach it.

use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use plexus_ipam::{Cidr4, NODE_CIDRS_PREFIX};
use plexus_kvstore::KvBackend;
use plexus_model::keys;
use serde::Serialize;

use crate::config::{AgentRef, CliConfig};

/// The TCP port of an agent's API.
pub const AGENT_API_PORT: u16 = 9965;

/// What `node join` is asked to do.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// The node's name (its etcd key, its certificate).
    pub node_name: String,
    /// The node's underlay address.
    pub node_ip: Ipv4Addr,
    /// The cluster's pod CIDR, carved into node CIDRs by the agents.
    pub pod_cidr: Cidr4,
    /// Where to write the files.
    pub out: PathBuf,
    /// Where the files will live on the node (the paths inside `agent.yaml`).
    pub install_dir: PathBuf,
    /// The agent's state directory on the node.
    pub state_dir: PathBuf,
    /// The agent's API socket on the node.
    pub api_socket: PathBuf,
    /// Where the agent reads remote-cluster configurations on the node.
    pub clustermesh_config: PathBuf,
    /// podman's state file on the node (where the agent reads containers' labels).
    pub podman_state: PathBuf,
    /// Rewrite files of the same node already in `out`.
    pub overwrite: bool,
}

/// What `node join` did (`-o json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct JoinReport {
    /// The cluster.
    pub cluster: String,
    /// The node.
    pub node: String,
    /// Its underlay address.
    pub node_ip: Ipv4Addr,
    /// The node's etcd user.
    pub etcd_user: String,
    /// Where the files were written.
    pub out: PathBuf,
    /// Where they belong on the node.
    pub install_dir: PathBuf,
    /// The files, relative to `out`.
    pub files: Vec<String>,
    /// The agent's API, as the context now lists it.
    pub agent_address: String,
}

/// The files of a join, relative to the output directory.
const AGENT_YAML: &str = "agent.yaml";
const PKI: &str = "pki";
const FILES: [&str; 5] = [
    "ca.crt",
    "etcd-client.crt",
    "etcd-client.key",
    "api.crt",
    "api.key",
];

/// A node name is an etcd key segment and a certificate name: DNS-label characters only.
fn validate_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if !ok {
        bail!(
            "--node-name {name:?}: a node name is 1 to 63 lower-case letters, digits, '-' or '.', starting and ending with a letter or digit"
        );
    }
    Ok(())
}

/// Refuses an output directory that holds another node's files, or this node's without
/// `--overwrite`.
fn check_out_dir(req: &JoinRequest) -> Result<()> {
    let yaml = req.out.join(AGENT_YAML);
    match std::fs::read_to_string(&yaml) {
        Ok(text) => {
            let node = serde_norway::from_str::<serde_norway::Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("node-name")
                        .and_then(|n| n.as_str().map(String::from))
                });
            match node {
                Some(n) if n == req.node_name => {
                    if !req.overwrite {
                        bail!(
                            "{} already holds the files of node {n}: pass --overwrite to write them again",
                            req.out.display()
                        );
                    }
                }
                Some(n) => bail!(
                    "{} holds the files of another node ({n}, in {}): choose another --out",
                    req.out.display(),
                    yaml.display()
                ),
                None => bail!(
                    "{} exists and is not an agent configuration with a node-name: choose another --out",
                    yaml.display()
                ),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Certificates without their agent.yaml: of an unknown node, never ours to replace.
            for f in FILES {
                let p = req.out.join(PKI).join(f);
                if p.exists() {
                    bail!(
                        "{} exists without {}: it may belong to another node; choose another --out",
                        p.display(),
                        yaml.display()
                    );
                }
            }
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", yaml.display())),
    }
    Ok(())
}

/// Refuses a node name the cluster already knows: registered (an agent runs or ran within its
/// lease) or holding a pod CIDR claim (an agent ran under that name). Also refuses a pod CIDR
/// that the cluster's existing claims do not lie in.
async fn check_cluster(etcd: &dyn KvBackend, cluster: &str, req: &JoinRequest) -> Result<()> {
    let key = keys::node_key(cluster, &req.node_name);
    if etcd
        .get(&key)
        .await
        .with_context(|| format!("read {key} in the etcd of cluster {cluster}"))?
        .is_some()
    {
        bail!(
            "node name {} is already taken in cluster {cluster}: a node of that name is registered ({key}); choose another --node-name",
            req.node_name
        );
    }
    let claims = etcd
        .list_prefix(NODE_CIDRS_PREFIX)
        .await
        .with_context(|| format!("list {NODE_CIDRS_PREFIX} in the etcd of cluster {cluster}"))?;
    for kv in &claims.kvs {
        let cidr = kv.key.strip_prefix(NODE_CIDRS_PREFIX).unwrap_or(&kv.key);
        if kv.value == req.node_name.as_bytes() {
            bail!(
                "node name {} is already taken in cluster {cluster}: it holds the pod CIDR {} ({}); choose another --node-name",
                req.node_name,
                cidr.replace('-', "/"),
                kv.key
            );
        }
        if let Some(addr) = cidr
            .split_once('-')
            .and_then(|(a, _)| a.parse::<Ipv4Addr>().ok())
            && !req.pod_cidr.contains(addr)
        {
            bail!(
                "--pod-cidr {}: the nodes of cluster {cluster} already hold {} outside it: use the cluster's pod CIDR",
                req.pod_cidr,
                cidr.replace('-', "/")
            );
        }
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    // The umask may have taken bits away; set exactly 0700.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))
}

/// `node join`.
pub async fn join(
    cfg: &mut CliConfig,
    path: &Path,
    context: Option<&str>,
    req: &JoinRequest,
) -> Result<JoinReport> {
    validate_node_name(&req.node_name)?;
    let ctx = cfg.context(context, path)?.clone();
    if let Some(other) = ctx.agents.iter().find(|a| {
        a.node != req.node_name
            && a.address.as_deref() == Some(&format!("{}:{AGENT_API_PORT}", req.node_ip))
    }) {
        bail!(
            "--node-ip {}: node {} of context {} already has that address",
            req.node_ip,
            other.node,
            ctx.name
        );
    }
    check_out_dir(req)?;
    let pki = ctx.pki();
    let ca = pki.ca().with_context(|| {
        format!(
            "context {} has no CA in {}: run plexus clustermesh enable --context {} (or point its state-dir at the apiserver's)",
            ctx.name,
            pki.dir().display(),
            ctx.name
        )
    })?
    // The node's certificates live as long as the cluster's.
    .with_leaf_validity(pki.leaf_lifetime());

    let etcd = crate::clustermesh::admin_etcd(&ctx, Duration::from_secs(10)).await?;
    check_cluster(&etcd, &ctx.name, req).await?;

    let user = plexus_clustermesh::access::node_user(&ctx.name, &req.node_name);
    let client = ca.issue_client(&user)?;
    let api = ca.issue_server(
        &format!("agent-{}", req.node_name),
        &[req.node_name.as_str()],
        &[req.node_ip.into()],
    )?;
    plexus_clustermesh::access::grant_node(&etcd, &ctx.name, &req.node_name)
        .await
        .with_context(|| format!("create etcd user {user} in cluster {}", ctx.name))?;

    let on_node = |f: &str| req.install_dir.join(PKI).join(f);
    let agent = plexus_config::AgentConfig {
        cluster_name: Some(ctx.name.clone()),
        cluster_id: Some(ctx.cluster_id),
        max_connected_clusters: Some(ctx.max_connected_clusters),
        node_name: Some(req.node_name.clone()),
        node_ip: Some(req.node_ip),
        pod_cidr: Some(req.pod_cidr),
        state_dir: Some(req.state_dir.clone()),
        etcd_endpoints: Some(ctx.mesh_endpoints().to_vec()),
        etcd_ca: Some(on_node("ca.crt")),
        etcd_cert: Some(on_node("etcd-client.crt")),
        etcd_key: Some(on_node("etcd-client.key")),
        clustermesh_config: Some(req.clustermesh_config.clone()),
        api_socket: Some(req.api_socket.clone()),
        api_listen: Some((req.node_ip, AGENT_API_PORT).into()),
        api_tls_cert: Some(on_node("api.crt")),
        api_tls_key: Some(on_node("api.key")),
        api_tls_ca: Some(on_node("ca.crt")),
        podman_state: Some(req.podman_state.clone()),
        // A cluster whose context says it encrypts gets agents that do (docs/encryption.md).
        enable_wireguard: (!ctx.encryption.is_none()).then_some(true),
        ..Default::default()
    };
    let yaml = format!(
        "# plexus-agent of node {} in cluster {} (written by plexus node join)\n{}",
        req.node_name,
        ctx.name,
        agent.to_yaml()?
    );

    create_private_dir(&req.out)?;
    let pki_dir = req.out.join(PKI);
    create_private_dir(&pki_dir)?;
    let write = |rel: &str, contents: &str| {
        crate::config::write_atomic(&req.out.join(rel), contents.as_bytes(), 0o600)
    };
    write(&format!("{PKI}/ca.crt"), ca.cert_pem())?;
    write(&format!("{PKI}/etcd-client.crt"), &client.cert_pem)?;
    write(&format!("{PKI}/etcd-client.key"), &client.key_pem)?;
    write(&format!("{PKI}/api.crt"), &api.cert_pem)?;
    write(&format!("{PKI}/api.key"), &api.key_pem)?;
    // Last: its presence marks the directory as this node's.
    write(AGENT_YAML, &yaml)?;

    let address = format!("{}:{AGENT_API_PORT}", req.node_ip);
    let mut updated = ctx.clone();
    match updated.agents.iter_mut().find(|a| a.node == req.node_name) {
        Some(a) => {
            a.address = Some(address.clone());
        }
        None => updated.agents.push(AgentRef {
            node: req.node_name.clone(),
            address: Some(address.clone()),
            socket: None,
        }),
    }
    cfg.upsert(updated);
    cfg.save(path)?;

    let mut files = vec![AGENT_YAML.to_string()];
    files.extend(FILES.iter().map(|f| format!("{PKI}/{f}")));
    Ok(JoinReport {
        cluster: ctx.name,
        node: req.node_name.clone(),
        node_ip: req.node_ip,
        etcd_user: user,
        out: req.out.clone(),
        install_dir: req.install_dir.clone(),
        files,
        agent_address: address,
    })
}

/// Prints a join for people.
pub fn print(report: &JoinReport) {
    println!(
        "✅ node {} may join cluster {}: files in {}",
        report.node,
        report.cluster,
        report.out.display()
    );
    for f in &report.files {
        println!("   {:<20} -> {}", f, report.install_dir.join(f).display());
    }
    println!(
        "   etcd user {} (writes only its own node key and what agents allocate)",
        report.etcd_user
    );
    println!(
        "   agent API {} added to context {}",
        report.agent_address, report.cluster
    );
    println!(
        "next: copy {}/ to {} on the node (the files are secrets, keep them 0600), then start plexus-agent",
        report.out.display(),
        report.install_dir.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(out: &Path, node: &str, overwrite: bool) -> JoinRequest {
        JoinRequest {
            node_name: node.into(),
            node_ip: Ipv4Addr::new(10, 0, 0, 2),
            pod_cidr: "10.1.0.0/16".parse().unwrap(),
            out: out.to_path_buf(),
            install_dir: "/etc/plexus".into(),
            state_dir: "/var/lib/plexus/agent".into(),
            api_socket: "/run/plexus/agent.sock".into(),
            clustermesh_config: "/etc/plexus/clustermesh".into(),
            podman_state: "/var/lib/containers/storage/libpod/bolt_state.db".into(),
            overwrite,
        }
    }

    #[test]
    fn node_names_must_be_dns_labels() {
        for ok in ["host1", "c1-host2", "a.b"] {
            validate_node_name(ok).unwrap();
        }
        for bad in ["", "Host1", "-h", "h-", "a/b", "a b", &"x".repeat(64)] {
            let err = validate_node_name(bad).unwrap_err().to_string();
            assert!(err.contains("--node-name"), "{err}");
        }
    }

    #[test]
    fn an_out_dir_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_out_dir(&req(dir.path(), "h1", false)).unwrap();
        std::fs::write(dir.path().join(AGENT_YAML), "node-name: h1\n").unwrap();
        let err = check_out_dir(&req(dir.path(), "h2", true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("another node (h1"), "{err}");
        let err = check_out_dir(&req(dir.path(), "h1", false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--overwrite"), "{err}");
        check_out_dir(&req(dir.path(), "h1", true)).unwrap();

        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir(other.path().join(PKI)).unwrap();
        std::fs::write(other.path().join(PKI).join("api.key"), "x").unwrap();
        let err = check_out_dir(&req(other.path(), "h1", true))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api.key") && err.contains("another node"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_registered_or_claiming_name_is_taken() {
        let kv = plexus_kvstore::MemoryBackend::new();
        let r = req(Path::new("/nonexistent"), "h1", false);
        tokio::time::timeout(Duration::from_secs(5), async {
            check_cluster(&kv, "c1", &r).await.unwrap();
            kv.put("plexus/ipam/v1/nodes/10.1.0.0-24", b"h0".to_vec(), None)
                .await
                .unwrap();
            check_cluster(&kv, "c1", &r).await.unwrap();
            let mut wrong = r.clone();
            wrong.pod_cidr = "10.9.0.0/16".parse().unwrap();
            let err = check_cluster(&kv, "c1", &wrong)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("10.1.0.0/24") && err.contains("--pod-cidr"),
                "{err}"
            );

            kv.put("plexus/ipam/v1/nodes/10.1.1.0-24", b"h1".to_vec(), None)
                .await
                .unwrap();
            let err = check_cluster(&kv, "c1", &r).await.unwrap_err().to_string();
            assert!(
                err.contains("already taken") && err.contains("10.1.1.0/24"),
                "{err}"
            );

            let r2 = req(Path::new("/nonexistent"), "h2", false);
            kv.put("cilium/state/nodes/v1/c1/h2", b"{}".to_vec(), None)
                .await
                .unwrap();
            let err = check_cluster(&kv, "c1", &r2).await.unwrap_err().to_string();
            assert!(
                err.contains("already taken") && err.contains("cilium/state/nodes/v1/c1/h2"),
                "{err}"
            );
        })
        .await
        .unwrap();
    }
}
