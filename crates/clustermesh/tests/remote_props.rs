//! Property test of the remote-cluster driver over an in-memory remote: whatever happens to the
//! remote (writes, deletes, invalid values, outages, restarts with new content), the view built
//! from its events ends equal to the remote's valid truth; removing the configuration drains it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::{Remote, publish_c2, spawn_c2};
use plexus_clustermesh::remote::Timing;
use plexus_clustermesh::remote_cluster::{DriverTiming, MeshEvent, RemoteCluster, RemoteEvent};
use plexus_clustermesh::validate::ClusterIds;
use plexus_kvstore::KvBackend;
use plexus_model::keys::StateKind;
use proptest::prelude::*;
use tokio::sync::mpsc;

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
    publish_c2(&remote.store, 2).await;
    let timing = DriverTiming {
        protocol,
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_millis(100),
        canary_poll: Duration::from_millis(50),
        ..DriverTiming::default()
    };
    spawn_c2(remote, timing)
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
    let remote = Remote::new();
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
