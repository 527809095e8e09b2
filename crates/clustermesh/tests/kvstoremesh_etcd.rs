//! KVStoreMesh on real etcd: c1's reflector mirrors c2 into c1's etcd; an agent of c1 that only
//! talks to its own etcd sees c2's state through the cache, keeps it while c2 is down (seeing c2
//! unreachable through the cache's heartbeat of c2), and loses it when the reflector stops
//! following c2.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use plexus_clustermesh::failure::FailureKind;
use plexus_clustermesh::kvstoremesh::KvStoreMesh;
use plexus_clustermesh::mesh::ClusterMesh;
use plexus_clustermesh::publish::{PublisherConfig, SelfPublisher};
use plexus_clustermesh::remote::Timing;
use plexus_clustermesh::remote_cluster::{DriverTiming, MeshEvent, RemoteEvent};
use plexus_kvstore::{
    EtcdBackend, EtcdConfig, KvBackend, LeaseManager, SyncStore, SyncStoreConfig,
};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::keys::{self, StateKind};
use plexus_test_support::EtcdProcess;
use tokio::sync::mpsc;

fn timing() -> DriverTiming {
    DriverTiming {
        protocol: Timing {
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            ..Timing::default()
        },
        health_interval: Duration::from_millis(500),
        health_timeout: Duration::from_secs(1),
        canary_poll: Duration::from_millis(100),
        ..DriverTiming::default()
    }
}

async fn connect(etcd: &EtcdProcess) -> Arc<dyn KvBackend> {
    Arc::new(
        EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .unwrap(),
    )
}

async fn next(rx: &mut mpsc::Receiver<MeshEvent>) -> RemoteEvent {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("an event")
        .unwrap()
        .event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_read_remote_state_from_the_local_cache() {
    plexus_kvstore::install_crypto_provider();
    let mut etcd2 = EtcdProcess::start().unwrap();
    let etcd1 = EtcdProcess::start().unwrap();
    let km_dir = tempfile::tempdir().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        let c1 = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
        let c2 = ClusterInfo::new("c2", 2, MaxConnectedClusters::Max255).unwrap();
        let fast = |c: ClusterInfo| PublisherConfig { heartbeat_interval: Duration::from_millis(500), ..PublisherConfig::new(c) };

        // c2 publishes.
        let b2 = connect(&etcd2).await;
        let leases2 = LeaseManager::start(b2.clone(), Duration::from_secs(5)).await.unwrap();
        let _pub2 = SelfPublisher::start(b2.clone(), &leases2, fast(c2)).await.unwrap();
        let store = |kind: StateKind| {
            SyncStore::start(b2.clone(), &leases2, SyncStoreConfig { prefix: kind.state_prefix("c2"), canary: Some(kind.canary("c2")) })
        };
        let nodes = store(StateKind::Nodes);
        nodes.upsert("node-1", br#"{"Name":"node-1","Cluster":"c2","ClusterID":2}"#.to_vec());
        nodes.synced();
        let ips = store(StateKind::Ip);
        for i in 1..=100 {
            ips.upsert(format!("10.20.0.{i}"), format!(r#"{{"IP":"10.20.0.{i}","Mask":null,"HostIP":"","ID":131072,"Key":0,"Metadata":""}}"#).into_bytes());
        }
        ips.synced();
        let identities = store(StateKind::Identities);
        identities.upsert("131072", b"k8s:app=a;k8s:io.cilium.k8s.policy.cluster=c2;".to_vec());
        identities.synced();
        let services = store(StateKind::Services);
        services.synced();

        // c1 runs its apiserver's publisher and KVStoreMesh, following c2.
        let b1 = connect(&etcd1).await;
        let leases1 = LeaseManager::start(b1.clone(), Duration::from_secs(5)).await.unwrap();
        let _pub1 = SelfPublisher::start(b1.clone(), &leases1, fast(c1.clone())).await.unwrap();
        std::fs::write(km_dir.path().join("c2"), format!("endpoints:\n- {}\n", etcd2.endpoint())).unwrap();
        let km = KvStoreMesh::spawn(km_dir.path(), c1.clone(), b1.clone(), &leases1, timing(), Duration::from_millis(200));

        // An agent of c1 reads c2 from c1's own etcd.
        std::fs::write(agent_dir.path().join("c2"), format!("endpoints:\n- {}\n", etcd1.endpoint())).unwrap();
        let (tx, mut rx) = mpsc::channel(4096);
        let agent = ClusterMesh::spawn(agent_dir.path(), c1, tx, timing(), Duration::from_millis(200));
        // The cached config's id reaches the agent before any entry.
        assert_eq!(next(&mut rx).await, RemoteEvent::ClusterConfig { cluster_id: 2 });
        let (mut nodes_seen, mut ips_seen, mut ids_seen) = (0, 0, 0);
        loop {
            match next(&mut rx).await {
                RemoteEvent::NodeUpsert(_) => nodes_seen += 1,
                RemoteEvent::IpUpsert(_) => ips_seen += 1,
                RemoteEvent::IdentityUpsert(i) => {
                    assert_eq!(i.labels.cluster(), Some("c2"));
                    ids_seen += 1
                }
                RemoteEvent::Synced => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((nodes_seen, ips_seen, ids_seen), (1, 100, 1));
        let status = agent.status().remotes["c2"].clone();
        assert!(status.protocol.cached && status.protocol.ready, "{status:?}");
        let config = b1.get("cilium/cluster-config/c2").await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8(config.value).unwrap(),
            r#"{"id":2,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}"#
        );
        assert!(b1.get("cilium/synced/c2/cilium/cache/ip/v1").await.unwrap().is_some());
        assert!(b1.get("cilium/cache/identities/v1/c2/id/131072").await.unwrap().is_some());

        // While KVStoreMesh is connected to c2, the cache holds its heartbeat of c2.
        assert!(b1.get(&keys::cache_heartbeat_key("c2")).await.unwrap().is_some());

        // Losing the upstream keeps the cache, and the agent keeps its entries; it sees c2
        // unreachable (the cache's heartbeat of c2 is gone), as a reader of c2 itself would.
        etcd2.kill();
        let t0 = tokio::time::Instant::now();
        while km.status().remotes["c2"].protocol.connected {
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        while agent.status().remotes["c2"].protocol.connected {
            assert!(t0.elapsed() < Duration::from_secs(20), "the agent still sees c2 connected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(b1.get(&keys::cache_heartbeat_key("c2")).await.unwrap().is_none());
        let status = agent.status().remotes["c2"].clone();
        assert_eq!(
            status.protocol.last_failure_kind,
            Some(FailureKind::KvstoremeshDisconnected),
            "{status:?}"
        );
        assert_eq!(b1.list_prefix("cilium/cache/ip/v1/c2/").await.unwrap().kvs.len(), 100);
        assert!(rx.try_recv().is_err(), "the agent kept its entries");

        // KVStoreMesh stops following c2: the cache drains, and so does the agent's view.
        std::fs::remove_file(km_dir.path().join("c2")).unwrap();
        let mut ip_deletes = 0;
        while ip_deletes < 100 {
            if let RemoteEvent::IpDelete(_) = next(&mut rx).await {
                ip_deletes += 1;
            }
        }
        assert!(b1.list_prefix("cilium/cache/").await.unwrap().kvs.is_empty());
    })
    .await
    .expect("test timed out");
}
