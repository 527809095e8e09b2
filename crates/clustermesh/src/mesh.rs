//! The remote-cluster manager: one [`RemoteCluster`] per file of the configuration directory.
//!
//! [`ClusterMesh::spawn`] scans the directory every `scan_interval` and follows its changes: a
//! new file connects a remote, a changed file reconnects it (its state is drained and listed
//! again), a removed file disconnects and drains it. Every remote's events arrive, tagged with
//! the remote's name, on the one channel given to `spawn`: the merged view the agent's ipcache,
//! identity, service and policy layers consume. [`ClusterMesh::status`] reports every remote and
//! the configuration files that could not be used.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_model::cluster::ClusterInfo;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{ConfigChange, ConfigDir};
use crate::remote_cluster::{
    Connector, DriverTiming, EtcdConnector, MeshEvent, RemoteCluster, RemoteClusterStatus,
};
use crate::validate::ClusterIds;

/// A snapshot of the mesh as this cluster sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshStatus {
    /// Every configured remote.
    pub remotes: BTreeMap<String, RemoteClusterStatus>,
    /// Configuration files that could not be used, with the reason.
    pub config_errors: Vec<String>,
}

impl MeshStatus {
    /// Adds refusals made past the remote-cluster manager (the agent's guard of addresses:
    /// remote -> reason -> count) to each configured remote's counts.
    pub fn add_refused(&mut self, refused: &BTreeMap<String, BTreeMap<String, u64>>) {
        for (remote, reasons) in refused {
            let Some(status) = self.remotes.get_mut(remote) else {
                continue; // no longer configured
            };
            for (reason, n) in reasons {
                status.rejected += n;
                *status.rejected_by.entry(reason.clone()).or_default() += n;
            }
        }
    }
}

struct Shared {
    remotes: BTreeMap<String, watch::Receiver<RemoteClusterStatus>>,
    config_errors: Vec<String>,
    /// Bumped whenever a remote's status or the set of remotes changes.
    changes: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            remotes: BTreeMap::new(),
            config_errors: Vec::new(),
            changes: watch::Sender::new(0),
        }
    }
}

/// The running manager. Dropping it stops every remote without draining.
pub struct ClusterMesh {
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl ClusterMesh {
    /// Follows the remote-cluster configurations in `dir` for cluster `local`, over etcd.
    pub fn spawn(
        dir: impl Into<PathBuf>,
        local: ClusterInfo,
        events: mpsc::Sender<MeshEvent>,
        timing: DriverTiming,
        scan_interval: Duration,
    ) -> Self {
        Self::spawn_with(
            Arc::new(EtcdConnector),
            dir,
            local,
            events,
            timing,
            scan_interval,
        )
    }

    /// Like [`ClusterMesh::spawn`], connecting to remotes with `connector`.
    pub fn spawn_with(
        connector: Arc<dyn Connector>,
        dir: impl Into<PathBuf>,
        local: ClusterInfo,
        events: mpsc::Sender<MeshEvent>,
        timing: DriverTiming,
        scan_interval: Duration,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(run(
            connector,
            ConfigDir::new(dir),
            local,
            events,
            timing,
            scan_interval,
            shared.clone(),
        ));
        Self { shared, task }
    }

    /// Every remote's status and the unusable configuration files.
    pub fn status(&self) -> MeshStatus {
        self.handle().status()
    }

    /// A cheap handle that reads the status from elsewhere.
    pub fn handle(&self) -> MeshHandle {
        MeshHandle {
            shared: self.shared.clone(),
        }
    }
}

/// Reads a [`ClusterMesh`]'s status.
#[derive(Clone)]
pub struct MeshHandle {
    shared: Arc<Mutex<Shared>>,
}

impl MeshHandle {
    /// Every remote's status and the unusable configuration files.
    pub fn status(&self) -> MeshStatus {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        MeshStatus {
            remotes: shared
                .remotes
                .iter()
                .map(|(k, v)| (k.clone(), v.borrow().clone()))
                .collect(),
            config_errors: shared.config_errors.clone(),
        }
    }

    /// A receiver that is marked changed whenever a remote's status changes, a remote is added
    /// or removed, or the configuration errors change: read [`MeshHandle::status`] then. Changes
    /// coalesce, so a slow reader sees the latest state, never a backlog.
    pub fn changes(&self) -> watch::Receiver<u64> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.changes.subscribe()
    }
}

impl Drop for ClusterMesh {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    connector: Arc<dyn Connector>,
    mut dir: ConfigDir,
    local: ClusterInfo,
    events: mpsc::Sender<MeshEvent>,
    timing: DriverTiming,
    scan_interval: Duration,
    shared: Arc<Mutex<Shared>>,
) {
    let ids = Arc::new(Mutex::new(ClusterIds::new(&local)));
    let mut remotes: BTreeMap<String, RemoteCluster> = BTreeMap::new();
    // One task per remote passes its status changes on to the mesh's change counter.
    let mut forwarders: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    let changes = {
        let guard = shared.lock().unwrap_or_else(|e| e.into_inner());
        guard.changes.clone()
    };
    loop {
        match dir.scan() {
            Ok(scan) => {
                for change in scan.changes {
                    let config = match change {
                        ConfigChange::Removed(name) => {
                            if let Some(remote) = remotes.remove(&name) {
                                remote.remove().await;
                            }
                            continue;
                        }
                        ConfigChange::Changed(config) => {
                            if let Some(remote) = remotes.remove(&config.name) {
                                remote.remove().await;
                            }
                            config
                        }
                        ConfigChange::Added(config) => config,
                    };
                    let remote = RemoteCluster::spawn(
                        connector.clone(),
                        config.clone(),
                        local.clone(),
                        ids.clone(),
                        events.clone(),
                        timing.clone(),
                    );
                    remotes.insert(config.name, remote);
                }
                forwarders.retain(|name, task| {
                    let keep = remotes.contains_key(name) && !task.is_finished();
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for (name, remote) in &remotes {
                    if !forwarders.contains_key(name) {
                        let mut rx = remote.subscribe();
                        let changes = changes.clone();
                        forwarders.insert(
                            name.clone(),
                            tokio::spawn(async move {
                                while rx.changed().await.is_ok() {
                                    changes.send_modify(|n| *n += 1);
                                }
                            }),
                        );
                    }
                }
                let errors: Vec<String> = scan.errors.iter().map(ToString::to_string).collect();
                let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                let names_changed = !guard.remotes.keys().eq(remotes.keys());
                let errors_changed = guard.config_errors != errors;
                guard.config_errors = errors;
                guard.remotes = remotes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.subscribe()))
                    .collect();
                if names_changed || errors_changed {
                    guard.changes.send_modify(|n| *n += 1);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the clustermesh configuration directory");
                let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                let errors = vec![err.to_string()];
                if guard.config_errors != errors {
                    guard.config_errors = errors;
                    guard.changes.send_modify(|n| *n += 1);
                }
            }
        }
        tokio::time::sleep(scan_interval).await;
    }
}
