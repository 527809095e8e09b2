//! An in-memory remote cluster for the driver's tests: a `MemoryBackend` that can be taken
//! down, the `Connector` to it, and helpers to publish a remote `c2` and follow it from `c1`.

// Each test file uses a part of this module.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use plexus_clustermesh::config::RemoteClusterConfig;
use plexus_clustermesh::remote_cluster::{Connector, DriverTiming, MeshEvent, RemoteCluster};
use plexus_clustermesh::validate::ClusterIds;
use plexus_kvstore::{
    BoxWatchStream, Error, KeyValue, KvBackend, LeaseId, ListResult, MemoryBackend, Result,
    Revision, Status, Txn,
};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::config::CiliumClusterConfig;
use plexus_model::keys::{self, StateKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The remote's etcd, which can be taken down.
#[derive(Clone)]
pub struct Remote {
    /// What the remote holds.
    pub store: MemoryBackend,
    /// Whether it answers.
    pub up: Arc<AtomicBool>,
    /// When each connection attempt was made.
    pub connects: Arc<Mutex<Vec<Instant>>>,
}

impl Remote {
    /// An empty remote that is up.
    pub fn new() -> Self {
        Self {
            store: MemoryBackend::new(),
            up: Arc::new(AtomicBool::new(true)),
            connects: Arc::default(),
        }
    }

    /// Takes the remote down (breaking its watches) or brings it back.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.store.break_watches();
        }
    }

    /// The times of the connection attempts so far.
    pub fn connects(&self) -> Vec<Instant> {
        self.connects.lock().unwrap().clone()
    }

    fn check(&self) -> Result<()> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::Unavailable("remote is down".into()))
        }
    }
}

#[async_trait]
impl KvBackend for Remote {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.check()?;
        self.store.get(key).await
    }
    async fn list_prefix(&self, prefix: &str) -> Result<ListResult> {
        self.check()?;
        self.store.list_prefix(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.check()?;
        self.store.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.check()?;
        self.store.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.check()?;
        self.store.delete_prefix(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<bool> {
        self.check()?;
        self.store.txn(txn).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<BoxWatchStream> {
        self.check()?;
        self.store.watch(prefix, from).await
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.check()?;
        self.store.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.check()?;
        self.store.lease_keep_alive(lease).await
    }
    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        self.check()?;
        self.store.lease_revoke(lease).await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.check()?;
        self.store.compact(revision).await
    }
    async fn status(&self) -> Result<Status> {
        self.check()?;
        self.store.status().await
    }
}

#[async_trait]
impl Connector for Remote {
    async fn connect(&self, _: &RemoteClusterConfig, _: Duration) -> Result<Arc<dyn KvBackend>> {
        self.connects.lock().unwrap().push(Instant::now());
        self.check()?;
        Ok(Arc::new(self.clone()))
    }
}

/// Cluster c1, the one that follows c2.
pub fn c1() -> ClusterInfo {
    ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap()
}

/// c2's configuration file as c1 holds it (the fake connector ignores its contents).
pub fn c2_file() -> RemoteClusterConfig {
    RemoteClusterConfig {
        name: "c2".into(),
        endpoints: vec!["http://remote".into()],
        trusted_ca_file: None,
        cert_file: None,
        key_file: None,
        content_hash: 0,
    }
}

/// Publishes c2's cluster config with `cluster_id` and every kind's canary in `b`.
pub async fn publish_c2(b: &MemoryBackend, cluster_id: u32) {
    let config = serde_json::to_vec(&CiliumClusterConfig::new(
        cluster_id,
        MaxConnectedClusters::Max255,
    ))
    .unwrap();
    b.put(&keys::cluster_config_key("c2"), config, None)
        .await
        .unwrap();
    for kind in StateKind::ALL {
        b.put(&kind.canary("c2"), b"2026-11-22T12:00:00Z".to_vec(), None)
            .await
            .unwrap();
    }
}

/// Follows c2 in `remote` from c1 with a driver of its own.
pub fn spawn_c2(
    remote: &Remote,
    timing: DriverTiming,
) -> (
    RemoteCluster,
    mpsc::Receiver<MeshEvent>,
    Arc<Mutex<ClusterIds>>,
) {
    let local = c1();
    let ids = Arc::new(Mutex::new(ClusterIds::new(&local)));
    let (tx, rx) = mpsc::channel(100_000);
    let cluster = RemoteCluster::spawn(
        Arc::new(remote.clone()),
        c2_file(),
        local,
        ids.clone(),
        tx,
        timing,
    );
    (cluster, rx, ids)
}
