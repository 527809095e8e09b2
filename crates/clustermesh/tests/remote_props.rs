//! Property test of the remote-cluster driver over an in-memory remote: whatever happens to the
//! remote (writes, deletes, invalid values, outages, restarts with new content), the view built
//! from its events ends equal to the remote's valid truth; removing the configuration drains it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use plexus_clustermesh::config::RemoteClusterConfig;
use plexus_clustermesh::remote::Timing;
use plexus_clustermesh::remote_cluster::{
    Connector, DriverTiming, MeshEvent, RemoteCluster, RemoteEvent,
};
use plexus_clustermesh::validate::ClusterIds;
use plexus_kvstore::{
    BoxWatchStream, Error, KeyValue, KvBackend, LeaseId, ListResult, MemoryBackend, Result,
    Revision, Status, Txn,
};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::config::CiliumClusterConfig;
use plexus_model::keys::{self, StateKind};
use proptest::prelude::*;
use tokio::sync::mpsc;

/// The remote's etcd, which can be taken down.
#[derive(Clone)]
struct Remote {
    store: MemoryBackend,
    up: Arc<AtomicBool>,
}

impl Remote {
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
        self.check()?;
        Ok(Arc::new(self.clone()))
    }
}

#[derive(Clone, Debug)]
enum Step {
    Put { node: u8, version: u8, valid: bool },
    Delete(u8),
    Outage,
    Restart(Vec<(u8, u8)>),
    Settle(u8),
    Compact,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..8, any::<u8>(), prop::bool::weighted(0.85)).prop_map(|(node, version, valid)| Step::Put { node, version, valid }),
        3 => (0u8..8).prop_map(Step::Delete),
        1 => Just(Step::Outage),
        1 => prop::collection::vec((0u8..8, any::<u8>()), 0..6).prop_map(Step::Restart),
        3 => (1u8..20).prop_map(Step::Settle),
        1 => Just(Step::Compact),
    ]
}

fn node_value(node: u8, version: u8, cluster: &str) -> Vec<u8> {
    format!(r#"{{"Name":"n{node}","Cluster":"{cluster}","ClusterID":2,"BootID":"{version}"}}"#)
        .into_bytes()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap()
}

/// Publishes c2's cluster config and canaries in `remote` and follows it from c1.
async fn follow(
    remote: &Remote,
    protocol: Timing,
) -> (
    RemoteCluster,
    mpsc::Receiver<MeshEvent>,
    Arc<Mutex<ClusterIds>>,
) {
    let b = remote.store.clone();
    let config =
        serde_json::to_vec(&CiliumClusterConfig::new(2, MaxConnectedClusters::Max255)).unwrap();
    b.put(&keys::cluster_config_key("c2"), config, None)
        .await
        .unwrap();
    for kind in StateKind::ALL {
        b.put(&kind.canary("c2"), b"2026-11-22T12:00:00Z".to_vec(), None)
            .await
            .unwrap();
    }
    let local = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
    let ids = Arc::new(Mutex::new(ClusterIds::new(&local)));
    let (tx, rx) = mpsc::channel(100_000);
    let timing = DriverTiming {
        protocol,
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(100),
        canary_poll: Duration::from_millis(50),
    };
    let file = RemoteClusterConfig {
        name: "c2".into(),
        endpoints: vec!["http://remote".into()],
        trusted_ca_file: None,
        cert_file: None,
        key_file: None,
        content_hash: 0,
    };
    let cluster = RemoteCluster::spawn(
        Arc::new(remote.clone()),
        file,
        local,
        ids.clone(),
        tx,
        timing,
    );
    (cluster, rx, ids)
}

fn fast_timing() -> Timing {
    Timing {
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
        heartbeat_interval: Duration::from_secs(3600),
        ..Timing::default()
    }
}

async fn run(steps: Vec<Step>) -> std::result::Result<(), TestCaseError> {
    let remote = Remote {
        store: MemoryBackend::new(),
        up: Arc::new(AtomicBool::new(true)),
    };
    let b = remote.store.clone();
    let prefix = StateKind::Nodes.state_prefix("c2");
    let (cluster, mut rx, ids) = follow(&remote, fast_timing()).await;
    let view: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let apply = |e: MeshEvent| match e.event {
        RemoteEvent::NodeUpsert(n) => {
            lock(&view).insert(n.name, n.boot_id);
        }
        RemoteEvent::NodeDelete(n) => {
            lock(&view).remove(&n);
        }
        _ => {}
    };
    for step in steps {
        match step {
            Step::Put {
                node,
                version,
                valid,
            } => {
                let cluster = if valid { "c2" } else { "c9" };
                b.put(
                    &format!("{prefix}n{node}"),
                    node_value(node, version, cluster),
                    None,
                )
                .await
                .unwrap();
            }
            Step::Delete(node) => {
                b.delete(&format!("{prefix}n{node}")).await.unwrap();
            }
            Step::Outage => {
                remote.up.store(false, Ordering::SeqCst);
                b.break_watches();
                tokio::time::sleep(Duration::from_millis(300)).await;
                remote.up.store(true, Ordering::SeqCst);
            }
            Step::Restart(nodes) => {
                remote.up.store(false, Ordering::SeqCst);
                b.break_watches();
                b.delete_prefix(&prefix).await.unwrap();
                for (node, version) in nodes {
                    b.put(
                        &format!("{prefix}n{node}"),
                        node_value(node, version, "c2"),
                        None,
                    )
                    .await
                    .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                remote.up.store(true, Ordering::SeqCst);
            }
            Step::Settle(n) => {
                let until = tokio::time::Instant::now() + Duration::from_millis(u64::from(n) * 10);
                while let Ok(Some(e)) = tokio::time::timeout_at(until, rx.recv()).await {
                    apply(e);
                }
            }
            Step::Compact => {
                let rev = b.status().await.unwrap().revision;
                b.compact(rev).await.unwrap();
            }
        }
    }
    // The valid truth: what a correct consumer must end with.
    let truth: BTreeMap<String, String> = b
        .list_prefix(&prefix)
        .await
        .unwrap()
        .kvs
        .into_iter()
        .filter_map(|kv| {
            let n: plexus_model::node::Node = serde_json::from_slice(&kv.value).ok()?;
            (n.cluster == "c2").then_some((n.name, n.boot_id))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while *lock(&view) != truth || !cluster.status().protocol.ready {
        if tokio::time::Instant::now() > deadline {
            return Err(TestCaseError::fail(format!(
                "no convergence: {:?} vs {truth:?}",
                lock(&view)
            )));
        }
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            apply(e);
        }
    }
    // Nothing still in flight may move the view away from the truth.
    let settle = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(e)) = tokio::time::timeout_at(settle, rx.recv()).await {
        apply(e);
    }
    prop_assert_eq!(&*lock(&view), &truth);
    // Removing the remote drains everything it contributed and frees its id.
    let remove = tokio::spawn(cluster.remove());
    loop {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap();
        let drained = e.event == RemoteEvent::Drained;
        apply(e);
        if drained {
            break;
        }
    }
    remove.await.unwrap();
    prop_assert!(lock(&view).is_empty());
    prop_assert!(lock(&ids).reserve("c3", 2).is_ok());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn the_view_converges_to_the_remote_truth(steps in prop::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(run(steps))?;
    }
}

/// With a service cache TTL, an unreachable remote's services are withdrawn after the TTL (its
/// other state stays) and handed back when it returns.
#[tokio::test(flavor = "current_thread")]
async fn the_service_cache_ttl_withdraws_services_and_hands_them_back() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let remote = Remote {
            store: MemoryBackend::new(),
            up: Arc::new(AtomicBool::new(true)),
        };
        let b = remote.store.clone();
        b.put(
            &format!("{}web", StateKind::Nodes.state_prefix("c2")),
            node_value(1, 1, "c2"),
            None,
        )
        .await
        .unwrap();
        b.put(
            &format!("{}default/web", StateKind::Services.state_prefix("c2")),
            br#"{"cluster":"c2","namespace":"default","name":"web","frontends":{},"backends":{"10.2.0.5":{"http":{"Protocol":"TCP","Port":80}}},"labels":{},"selector":{},"includeExternal":true,"shared":true,"clusterID":2}"#.to_vec(),
            None,
        )
        .await
        .unwrap();
        let timing = Timing {
            service_cache_ttl: Some(Duration::from_secs(2)),
            ..fast_timing()
        };
        let (_cluster, mut rx, _ids) = follow(&remote, timing).await;
        let mut next = async || rx.recv().await.unwrap().event;
        loop {
            if next().await == RemoteEvent::Synced {
                break;
            }
        }
        remote.up.store(false, Ordering::SeqCst);
        b.break_watches();
        // Only the service goes, after the TTL.
        assert_eq!(next().await, RemoteEvent::ServiceDelete("default/web".into()));
        remote.up.store(true, Ordering::SeqCst);
        match next().await {
            RemoteEvent::ServiceUpsert(s) => assert_eq!(s.name, "web"),
            other => panic!("expected the service back, got {other:?}"),
        }
    })
    .await
    .unwrap();
}
