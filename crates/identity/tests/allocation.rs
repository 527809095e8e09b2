//! Identity allocation on the in-memory store and on real etcd.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use plexus_identity::{IdentityAllocator, IdentityGc};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, LeaseManager, MemoryBackend};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::identity::identity_range;
use plexus_model::keys;
use plexus_model::labels::{Label, Labels};
use plexus_test_support::EtcdProcess;
use tokio::sync::watch;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

fn labels(app: &str) -> Labels {
    [
        Label::k8s("app", app),
        Label::k8s("io.kubernetes.pod.namespace", "default"),
    ]
    .into_iter()
    .collect()
}

fn allocator(
    b: &Arc<dyn KvBackend>,
    cluster: &ClusterInfo,
    node: &str,
    lease: i64,
) -> IdentityAllocator {
    IdentityAllocator::new(b.clone(), cluster.clone(), node, watch::channel(lease).1)
}

#[tokio::test]
async fn same_labels_same_id_refcounts_and_release() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let b: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        let lease = b.lease_grant(Duration::from_secs(60)).await.unwrap();
        let cluster = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
        let n1 = allocator(&b, &cluster, "10.0.0.1", lease);
        let n2 = allocator(&b, &cluster, "10.0.0.2", lease);
        let (id, created) = n1.allocate(&labels("web")).await.unwrap();
        assert!(created);
        assert!(identity_range(1, MaxConnectedClusters::Max255).contains(&id.0));
        assert_eq!(n1.allocate(&labels("web")).await.unwrap(), (id, false), "second reference");
        assert_eq!(n2.allocate(&labels("web")).await.unwrap(), (id, false), "another node joins");
        let (other, _) = n1.allocate(&labels("db")).await.unwrap();
        assert_ne!(other, id);

        let master = b.get(&keys::identity_id_key(id.0)).await.unwrap().unwrap();
        let expected = "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default;";
        assert_eq!(String::from_utf8(master.value).unwrap(), expected);
        assert_eq!(master.lease, None, "masters carry no lease");
        let value = b.get(&keys::identity_value_key(expected, "10.0.0.1")).await.unwrap().unwrap();
        assert_eq!(value.value, id.0.to_string().into_bytes());
        assert_eq!(value.lease, Some(lease));
        assert_eq!(n1.lookup_by_id(id).await.unwrap().unwrap().to_kvstore_string(), expected);

        assert!(!n1.release(&labels("web")).await.unwrap(), "one reference left");
        assert!(n1.release(&labels("web")).await.unwrap());
        assert!(b.get(&keys::identity_value_key(expected, "10.0.0.1")).await.unwrap().is_none());
        assert!(b.get(&keys::identity_value_key(expected, "10.0.0.2")).await.unwrap().is_some());
        // Back again on n1: the same id, as n2 still uses it.
        assert_eq!(n1.allocate(&labels("web")).await.unwrap().0, id);
    })
    .await
    .unwrap();
}

/// A joins the id another node uses; before A's transaction lands, that node releases it and a
/// third node with a stale cache creates a new id for the same labels. A's join must fail, or the
/// labels would have two ids.
#[tokio::test]
async fn a_join_fails_when_the_followed_reference_vanished_meanwhile() {
    use plexus_identity::allocator::{Observed, Plan, plan};
    tokio::time::timeout(TEST_TIMEOUT, async {
        let b: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        let lease = b.lease_grant(Duration::from_secs(60)).await.unwrap();
        let cluster = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
        allocator(&b, &cluster, "nD", lease)
            .allocate(&labels("seed"))
            .await
            .unwrap();
        let stale = allocator(&b, &cluster, "nB", lease);
        stale.allocate(&labels("other")).await.unwrap(); // its cache: seed and other only
        let c = allocator(&b, &cluster, "nC", lease);
        let (x, _) = c.allocate(&labels("web")).await.unwrap();

        let l = stale.scoped(&labels("web")).to_kvstore_string();
        let values = b
            .list_prefix(&keys::identity_value_prefix(&l))
            .await
            .unwrap()
            .kvs;
        let master = b.get(&keys::identity_id_key(x.0)).await.unwrap();
        c.release(&labels("web")).await.unwrap();
        let (y, created) = stale.allocate(&labels("web")).await.unwrap();
        assert!(created && y != x, "the stale node created a second master");

        let observed = Observed {
            values,
            referenced_master: master,
            cached_master: None,
        };
        let Plan::Try { txn, id, .. } = plan(&l, "nA", lease, &observed, 1) else {
            panic!("expected a join")
        };
        assert_eq!(id, x.0);
        assert!(!b.txn(txn).await.unwrap(), "the stale join must fail");
        let refs = b
            .list_prefix(&keys::identity_value_prefix(&l))
            .await
            .unwrap()
            .kvs;
        assert!(
            refs.iter()
                .all(|kv| kv.value == y.0.to_string().into_bytes())
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn ranges_in_255_and_511_modes_never_reserved() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        for (cluster_id, max) in [
            (1, MaxConnectedClusters::Max255),
            (255, MaxConnectedClusters::Max255),
            (3, MaxConnectedClusters::Max511),
            (511, MaxConnectedClusters::Max511),
        ] {
            let b: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
            let lease = b.lease_grant(Duration::from_secs(60)).await.unwrap();
            let cluster = ClusterInfo::new("c", cluster_id, max).unwrap();
            let a = allocator(&b, &cluster, "n", lease);
            let range = identity_range(cluster_id, max);
            for i in 0..50 {
                let (id, _) = a.allocate(&labels(&format!("app{i}"))).await.unwrap();
                assert!(range.contains(&id.0) && id.0 >= 256, "{id} in {range:?}");
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn gc_waits_for_the_grace_period_and_spares_referenced_ids() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let b: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
        let cluster = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
        let node_lease = b.lease_grant(Duration::from_secs(60)).await.unwrap();
        let other_lease = b.lease_grant(Duration::from_secs(60)).await.unwrap();
        let n1 = allocator(&b, &cluster, "n1", node_lease);
        let n2 = allocator(&b, &cluster, "n2", other_lease);
        let (kept, _) = n1.allocate(&labels("kept")).await.unwrap();
        let (released, _) = n1.allocate(&labels("released")).await.unwrap();
        let (lost, _) = n2.allocate(&labels("lost")).await.unwrap();
        n1.release(&labels("released")).await.unwrap();
        // n2 dies: its lease ends and its value keys go with it.
        b.lease_revoke(other_lease).await.unwrap();

        let mut gc = IdentityGc::new(b.clone(), Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(
            gc.run_once(t0).await.unwrap().is_empty(),
            "grace period not over"
        );
        assert!(
            gc.run_once(t0 + Duration::from_secs(29))
                .await
                .unwrap()
                .is_empty()
        );
        let mut deleted = gc.run_once(t0 + Duration::from_secs(31)).await.unwrap();
        deleted.sort();
        let mut expected = vec![released.0, lost.0];
        expected.sort();
        assert_eq!(deleted, expected);
        assert!(
            b.get(&keys::identity_id_key(kept.0))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            b.get(&keys::identity_id_key(lost.0))
                .await
                .unwrap()
                .is_none()
        );
    })
    .await
    .unwrap();
}

/// 4 agents, each with its own etcd connection and lease, allocate identities for an
/// overlapping three quarters of 2,000 label sets, concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_allocators_on_etcd_agree_and_gc_cleans_up() {
    plexus_kvstore::install_crypto_provider();
    let etcd = EtcdProcess::start().unwrap();
    tokio::time::timeout(Duration::from_secs(300), async {
        let cluster = ClusterInfo::new("cluster1", 1, MaxConnectedClusters::Max255).unwrap();
        let sets: Vec<Labels> = (0..2000).map(|i| labels(&format!("app-{i}"))).collect();
        let mut tasks = Vec::new();
        for node in 0..4usize {
            let endpoint = etcd.endpoint();
            let cluster = cluster.clone();
            // Node k takes every set except those with index % 4 == k.
            let mut mine: Vec<(usize, Labels)> = sets
                .iter()
                .cloned()
                .enumerate()
                .filter(|(i, _)| i % 4 != node)
                .collect();
            mine.rotate_left((node % 2) * 373); // nodes 0 and 2 (1 and 3) race on the same order
            tasks.push(tokio::spawn(async move {
                let b: Arc<dyn KvBackend> = Arc::new(
                    EtcdBackend::connect(EtcdConfig::new(vec![endpoint]))
                        .await
                        .unwrap(),
                );
                let leases = LeaseManager::start(b.clone(), Duration::from_secs(30))
                    .await
                    .unwrap();
                let alloc = Arc::new(IdentityAllocator::new(
                    b.clone(),
                    cluster,
                    format!("10.0.0.{node}"),
                    leases.subscribe(),
                ));
                let results: Vec<(usize, u32)> = futures::stream::iter(mine)
                    .map(|(i, l)| {
                        let alloc = alloc.clone();
                        async move { (i, alloc.allocate(&l).await.unwrap().0.0) }
                    })
                    .buffer_unordered(4)
                    .collect()
                    .await;
                (results, alloc, leases)
            }));
        }
        let mut by_set: BTreeMap<usize, HashSet<u32>> = BTreeMap::new();
        let mut holders = Vec::new();
        for task in tasks {
            let (results, alloc, leases) = task.await.unwrap();
            for (i, id) in results {
                by_set.entry(i).or_default().insert(id);
            }
            holders.push((alloc, leases));
        }
        assert_eq!(by_set.len(), 2000, "every label set allocated");
        let range = identity_range(1, MaxConnectedClusters::Max255);
        let mut owner: HashMap<u32, usize> = HashMap::new();
        for (i, ids) in &by_set {
            assert_eq!(ids.len(), 1, "label set {i} got several ids: {ids:?}");
            let id = *ids.iter().next().unwrap();
            assert!(range.contains(&id));
            if let Some(prev) = owner.insert(id, *i) {
                panic!("id {id} serves label sets {prev} and {i}");
            }
        }

        // The store agrees: one master per label set, each value key naming its set's id.
        let b: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
                .await
                .unwrap(),
        );
        let masters = b
            .list_prefix(&keys::identity_id_prefix())
            .await
            .unwrap()
            .kvs;
        assert_eq!(masters.len(), 2000);
        let mut master_labels = HashSet::new();
        for kv in &masters {
            let id: u32 = kv.key.rsplit('/').next().unwrap().parse().unwrap();
            let labels = String::from_utf8(kv.value.clone()).unwrap();
            let set: usize = labels
                .split("app=app-")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(owner[&id], set);
            assert!(master_labels.insert(labels), "one master per label set");
        }
        let values = b
            .list_prefix(&keys::identity_value_root())
            .await
            .unwrap()
            .kvs;
        assert_eq!(values.len(), 4 * 1500);

        // Every node goes away; GC removes every master after the grace period.
        for (_, leases) in holders {
            leases.revoke().await.unwrap();
        }
        let mut gc = IdentityGc::new(b.clone(), Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(gc.run_once(t0).await.unwrap().is_empty());
        assert_eq!(
            gc.run_once(t0 + Duration::from_secs(10))
                .await
                .unwrap()
                .len(),
            2000
        );
        assert!(
            b.list_prefix(&keys::identity_id_prefix())
                .await
                .unwrap()
                .kvs
                .is_empty()
        );
    })
    .await
    .expect("test timed out");
}
