//! A cluster's etcd as a cluster of several members (`etcd: {members: 3}` in the lab file).
//!
//! By default the apiserver starts and supervises one etcd member of its own. With
//! `etcd.members` of 3 or 5 the lab runs the members itself in the cluster's control-plane
//! namespace, as a platform team runs an external etcd cluster beside Cilium's
//! clustermesh-apiserver, and gives the apiserver their endpoints:
//! - member `k` (0-based) is `<cluster>-etcd<k>` at 172.31.i.(2+k): clients on port 2379 (TLS,
//!   `--client-cert-auth` with the cluster's CA, the certificate's CN being the etcd user, as
//!   with the apiserver's own etcd), peers on port 2380 (plain, inside the namespace's network);
//! - its data in `<dir>/<cluster>/etcd/<member>/`, its log beside it (`<member>.log`);
//! - the apiserver, the agents, the cluster DNS and every other cluster's remote configuration
//!   get every member's endpoint ([`crate::lab::ClusterState::etcd_endpoints`]); the apiserver
//!   creates the users and roles on the cluster as on its own etcd.
//!
//! [`kill_member`] and [`start_member`] take one member down as a crash would and bring it
//! back with its data (it rejoins and catches up from the leader): what the member-loss test
//! does under traffic.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::lab::{ClusterState, LabState};
use crate::sys;

/// One member of a cluster's etcd cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EtcdMember {
    /// Member name, `<cluster>-etcd<k>`.
    pub name: String,
    /// Its address in the control-plane namespace.
    pub ip: Ipv4Addr,
    /// Its pid while it runs.
    pub pid: Option<u32>,
}

impl EtcdMember {
    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("https://{}:2379", self.ip)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:2380", self.ip)
    }
}

/// The members of cluster number `i` (1-based) named `cluster`, not started.
pub fn plan(cluster: &str, i: u8, members: u8) -> Vec<EtcdMember> {
    if members <= 1 {
        return Vec::new();
    }
    (0..members)
        .map(|k| EtcdMember {
            name: format!("{cluster}-etcd{k}"),
            ip: Ipv4Addr::new(172, 31, i, 2 + k),
            pid: None,
        })
        .collect()
}

fn dir(lab: &LabState, c: &ClusterState) -> PathBuf {
    lab.dir.join(&c.name).join("etcd")
}

/// Adds the members' addresses to the control-plane namespace's interface.
pub fn add_addresses(c: &ClusterState) -> Result<()> {
    for m in &c.etcd_members {
        sys::ip(&[
            "-n",
            &c.netns,
            "addr",
            "add",
            &format!("{}/16", m.ip),
            "dev",
            "eth0",
        ])?;
    }
    Ok(())
}

/// Starts member `k` of cluster `c` (it answers once a quorum of members runs).
pub fn spawn(lab: &LabState, c: &ClusterState, k: usize) -> Result<u32> {
    let m = c
        .etcd_members
        .get(k)
        .with_context(|| format!("cluster {} has no etcd member {k}", c.name))?;
    let dir = dir(lab, c);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let pki = plexus_pki::cluster::ClusterPki::new(c.state_dir.join("pki"), &c.name);
    let (cert, key) = pki.etcd_server();
    let initial_cluster = c
        .etcd_members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let args = vec![
        format!("--name={}", m.name),
        format!("--data-dir={}", dir.join(&m.name).display()),
        format!("--listen-client-urls={}", m.endpoint()),
        format!("--advertise-client-urls={}", m.endpoint()),
        format!("--listen-peer-urls={}", m.peer_url()),
        format!("--initial-advertise-peer-urls={}", m.peer_url()),
        format!("--initial-cluster={initial_cluster}"),
        format!("--initial-cluster-token=plexus-{}", c.name),
        // A member restarted with its data directory ignores this.
        "--initial-cluster-state=new".to_string(),
        format!("--cert-file={}", cert.display()),
        format!("--key-file={}", key.display()),
        format!("--trusted-ca-file={}", pki.ca_cert().display()),
        "--client-cert-auth".to_string(),
        "--logger=zap".to_string(),
        "--log-outputs=stderr".to_string(),
    ];
    let bin = std::env::var_os("PLEXUS_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/etcd".into());
    sys::spawn_in(&c.netns, &bin, &args, &dir.join(format!("{}.log", m.name)))
}

/// Starts every member of cluster `c` and records their pids.
pub fn start_all(lab: &mut LabState, cluster: usize) -> Result<()> {
    let c = lab.clusters[cluster].clone();
    for k in 0..c.etcd_members.len() {
        let pid = spawn(lab, &c, k)?;
        lab.clusters[cluster].etcd_members[k].pid = Some(pid);
    }
    lab.save()
}

/// Stops every member of cluster `c` (SIGTERM, then SIGKILL).
pub fn stop_all(c: &ClusterState) {
    for m in &c.etcd_members {
        if let Some(pid) = m.pid {
            sys::stop(pid, Duration::from_secs(5));
        }
    }
}

/// Kills member `member` (its name) of cluster `cluster` at once (SIGKILL), as a crash would.
pub fn kill_member(dir: &std::path::Path, cluster: &str, member: &str) -> Result<()> {
    let mut lab = LabState::load(dir)?;
    let (i, k) = find(&lab, cluster, member)?;
    if let Some(pid) = lab.clusters[i].etcd_members[k].pid.take() {
        sys::kill(pid);
    }
    lab.save()
}

/// Starts member `member` of cluster `cluster` again with its data, and waits until it answers
/// as part of the cluster.
pub fn start_member(dir: &std::path::Path, cluster: &str, member: &str) -> Result<()> {
    let mut lab = LabState::load(dir)?;
    let (i, k) = find(&lab, cluster, member)?;
    let c = lab.clusters[i].clone();
    if c.etcd_members[k].pid.is_some() {
        anyhow::bail!("etcd member {member} of cluster {cluster} runs already");
    }
    let pid = spawn(&lab, &c, k)?;
    lab.clusters[i].etcd_members[k].pid = Some(pid);
    lab.save()?;
    let endpoint = c.etcd_members[k].endpoint();
    sys::wait_until(
        &format!(
            "etcd member {member} of {cluster} answering (log: {})",
            self::dir(&lab, &c).join(format!("{member}.log")).display()
        ),
        Duration::from_secs(30),
        || crate::kv::status_of(&c, &endpoint).is_ok(),
    )
}

fn find(lab: &LabState, cluster: &str, member: &str) -> Result<(usize, usize)> {
    let i = lab
        .clusters
        .iter()
        .position(|c| c.name == cluster)
        .with_context(|| format!("no cluster {cluster} in the lab"))?;
    let k = lab.clusters[i]
        .etcd_members
        .iter()
        .position(|m| m.name == member)
        .with_context(|| {
            format!(
                "cluster {cluster} has no etcd member {member} (members: {})",
                lab.clusters[i]
                    .etcd_members
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    Ok((i, k))
}
