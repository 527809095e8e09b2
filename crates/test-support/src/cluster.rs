//! A real etcd cluster of several members on loopback, for tests of member loss.
//!
//! [`EtcdCluster`] starts `n` members of one new cluster (each an [`EtcdProcess`] with its own
//! ports and data directory), plain or with TLS and `--client-cert-auth` under one CA. It
//! promises what [`EtcdProcess`] promises for each member (killed and removed on drop, dies
//! with the test), and that a member killed with [`EtcdCluster::kill`] comes back with its data
//! through [`EtcdCluster::restart`] and rejoins the cluster.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_pki::Ca;

use crate::{ClientCert, EtcdProcess, Membership, Result, TestSupportError, free_port, io};

/// Several etcd members forming one cluster on loopback.
pub struct EtcdCluster {
    members: Vec<EtcdProcess>,
    /// Certificates shared by the members (TLS mode); also where client certificates go.
    dir: tempfile::TempDir,
    ca: Option<Arc<Ca>>,
    issued: std::sync::atomic::AtomicU32,
}

impl EtcdCluster {
    /// Starts a plain-HTTP cluster of `n` members.
    pub fn start(n: usize) -> Result<Self> {
        Self::start_inner(n, false)
    }

    /// Starts a cluster of `n` members with TLS and `--client-cert-auth`: clients need a
    /// certificate from [`EtcdCluster::issue_client`].
    pub fn start_tls(n: usize) -> Result<Self> {
        Self::start_inner(n, true)
    }

    fn start_inner(n: usize, tls: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("plexus-etcd-cluster-")
            .tempdir()
            .map_err(io("create etcd cluster temp dir"))?;
        let tls = if tls {
            Some(EtcdProcess::make_tls(dir.path())?)
        } else {
            None
        };
        let ports = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<Vec<(u16, u16)>>>()?;
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::with_capacity(n);
        for (i, (client_port, peer_port)) in ports.into_iter().enumerate() {
            let member_dir = tempfile::Builder::new()
                .prefix("plexus-etcd-member-")
                .tempdir()
                .map_err(io("create etcd member temp dir"))?;
            members.push(EtcdProcess {
                child: None,
                dir: member_dir,
                client_port,
                peer_port,
                tls: tls.clone(),
                issued: std::sync::atomic::AtomicU32::new(0),
                membership: Some(Membership {
                    name: format!("m{i}"),
                    initial_cluster: initial_cluster.clone(),
                }),
            });
        }
        // All members first: none answers before a quorum runs.
        for member in &mut members {
            member.launch()?;
        }
        for member in &mut members {
            member.wait_ready(Duration::from_secs(30))?;
        }
        Ok(Self {
            members,
            dir,
            ca: tls.and_then(|t| t.ca),
            issued: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdProcess::endpoint).collect()
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &EtcdProcess {
        &self.members[i]
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never: [`EtcdCluster::start`] makes at least one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kills member `i` at once (SIGKILL), as a crash would. Its data directory stays.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its ports and data directory and waits until it answers
    /// (it rejoins the cluster and catches up from the leader).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.members[i].restart()
    }

    /// The index of the member the running members name as leader, waiting up to `limit` for
    /// one (an election follows the loss of the leader).
    pub fn leader(&self, limit: Duration) -> Result<usize> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            for member in self.members.iter().filter(|m| m.pid().is_some()) {
                match member.etcdctl(&["endpoint", "status", "-w", "json"]) {
                    Ok(out) => {
                        if let Some(i) = self.leader_in(&out) {
                            return Ok(i);
                        }
                        last = out;
                    }
                    Err(err) => last = err.to_string(),
                }
            }
            if start.elapsed() > limit {
                return Err(TestSupportError::Io {
                    what: "find the etcd leader".into(),
                    source: std::io::Error::other(format!(
                        "no leader after {limit:?}; last answer: {last}"
                    )),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The member index of the leader named in `etcdctl endpoint status -w json` output.
    fn leader_in(&self, out: &str) -> Option<usize> {
        let status: serde_json::Value = serde_json::from_str(out).ok()?;
        let leader = status.get(0)?.get("Status")?.get("leader")?.as_u64()?;
        if leader == 0 {
            return None;
        }
        // Ask every running member its own id.
        self.members.iter().position(|m| {
            m.pid().is_some()
                && m.etcdctl(&["endpoint", "status", "-w", "json"])
                    .ok()
                    .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
                    .and_then(|v| {
                        v.get(0)?
                            .get("Status")?
                            .get("header")?
                            .get("member_id")?
                            .as_u64()
                    })
                    == Some(leader)
        })
    }

    /// Issues a client certificate with common name `cn` (the etcd user). TLS mode only.
    pub fn issue_client(&self, cn: &str) -> Result<ClientCert> {
        let (ca, ca_file) = match (&self.ca, self.members[0].ca_file()) {
            (Some(ca), Some(file)) => (ca, file.to_path_buf()),
            _ => {
                return Err(TestSupportError::Io {
                    what: "issue a client certificate".into(),
                    source: std::io::Error::other("the etcd cluster runs without TLS"),
                });
            }
        };
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let (cert_file, key_file) = ca
            .issue_client(cn)?
            .write_to(self.dir.path(), &format!("client-{n}-{cn}"))?;
        Ok(ClientCert {
            ca_file,
            cert_file,
            key_file,
        })
    }

    /// The directory holding the shared certificates.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
