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

#[derive(Default)]
struct Shared {
    remotes: BTreeMap<String, watch::Receiver<RemoteClusterStatus>>,
    config_errors: Vec<String>,
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
                let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                guard.config_errors = scan.errors.iter().map(ToString::to_string).collect();
                guard.remotes = remotes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.subscribe()))
                    .collect();
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the clustermesh configuration directory");
                let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                guard.config_errors = vec![err.to_string()];
            }
        }
        tokio::time::sleep(scan_interval).await;
    }
}
