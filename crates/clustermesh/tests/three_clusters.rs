//! Three clusters on loopback: c1 follows c2 and c3 (each its own etcd). c2 publishes 10,000
//! ipcache entries; c1 sees every one, tagged with its cluster, and its status counts match what
//! was published. A fourth cluster claiming c2's id is refused with a clear reason.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use plexus_clustermesh::mesh::ClusterMesh;
use plexus_clustermesh::publish::{PublisherConfig, SelfPublisher};
use plexus_clustermesh::remote_cluster::{DriverTiming, MeshEvent, RemoteEvent};
use plexus_kvstore::{
    EtcdBackend, EtcdConfig, KvBackend, LeaseManager, SyncStore, SyncStoreConfig,
};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::keys::StateKind;
use plexus_test_support::EtcdProcess;
use tokio::sync::mpsc;

struct Published {
    _leases: LeaseManager,
    _publisher: SelfPublisher,
    _stores: Vec<SyncStore>,
}

/// Publishes `nodes` nodes and `ips` ipcache entries for cluster `name` (id `id`) with canaries.
async fn publish(etcd: &EtcdProcess, name: &str, id: u32, nodes: usize, ips: usize) -> Published {
    let b: Arc<dyn KvBackend> = Arc::new(
        EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .unwrap(),
    );
    let leases = LeaseManager::start(b.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let info = ClusterInfo::new(name, id, MaxConnectedClusters::Max255).unwrap();
    let publisher = SelfPublisher::start(b.clone(), &leases, PublisherConfig::new(info))
        .await
        .unwrap();
    let store = |kind: StateKind| {
        SyncStore::start(
            b.clone(),
            &leases,
            SyncStoreConfig {
                prefix: kind.state_prefix(name),
                canary: Some(kind.canary(name)),
            },
        )
    };
    let node_store = store(StateKind::Nodes);
    for n in 0..nodes {
        node_store.upsert(
            format!("{name}-node-{n}"),
            format!(r#"{{"Name":"{name}-node-{n}","Cluster":"{name}","ClusterID":{id}}}"#)
                .into_bytes(),
        );
    }
    let ip_store = store(StateKind::Ip);
    let base = id << 16;
    for i in 0..ips {
        let ip = format!(
            "10.{}.{}.{}",
            id * 10 + (i / 62_500) as u32,
            (i / 250) % 250,
            i % 250 + 1
        );
        ip_store.upsert(ip.clone(), format!(r#"{{"IP":"{ip}","Mask":null,"HostIP":"192.168.{id}.1","ID":{},"Key":0,"Metadata":""}}"#, base + (i % 100) as u32).into_bytes());
    }
    let id_store = store(StateKind::Identities);
    id_store.upsert(
        base.to_string(),
        format!("k8s:app=x;k8s:io.cilium.k8s.policy.cluster={name};").into_bytes(),
    );
    let svc_store = store(StateKind::Services);
    let stores = vec![node_store, ip_store, id_store, svc_store];
    for s in &stores {
        s.synced();
    }
    for s in &stores {
        s.wait_synced().await;
    }
    Published {
        _leases: leases,
        _publisher: publisher,
        _stores: stores,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_sees_c2_and_c3_and_refuses_a_duplicate_id() {
    plexus_kvstore::install_crypto_provider();
    let etcd2 = EtcdProcess::start().unwrap();
    let etcd3 = EtcdProcess::start().unwrap();
    let etcd4 = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    tokio::time::timeout(Duration::from_secs(180), async {
        let _c2 = publish(&etcd2, "c2", 2, 2, 10_000).await;
        let _c3 = publish(&etcd3, "c3", 3, 3, 50).await;
        let _c4 = publish(&etcd4, "c4", 2, 1, 5).await; // claims c2's id
        for (name, etcd) in [("c2", &etcd2), ("c3", &etcd3)] {
            std::fs::write(
                dir.path().join(name),
                format!("endpoints:\n- {}\n", etcd.endpoint()),
            )
            .unwrap();
        }
        let (tx, mut rx) = mpsc::channel::<MeshEvent>(50_000);
        let c1 = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
        let mesh = ClusterMesh::spawn(
            dir.path(),
            c1,
            tx,
            DriverTiming::default(),
            Duration::from_millis(200),
        );
        let mut ips: BTreeMap<String, usize> = BTreeMap::new();
        let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
        let mut synced = 0;
        while synced < 2 {
            let e = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap()
                .unwrap();
            match e.event {
                RemoteEvent::IpUpsert(p) => {
                    assert!(
                        p.id >> 16 == if e.cluster == "c2" { 2 } else { 3 },
                        "entry tagged with its cluster"
                    );
                    *ips.entry(e.cluster).or_default() += 1;
                }
                RemoteEvent::NodeUpsert(_) => *nodes.entry(e.cluster).or_default() += 1,
                RemoteEvent::Synced => synced += 1,
                _ => {}
            }
        }
        assert_eq!(
            ips,
            BTreeMap::from([("c2".into(), 10_000), ("c3".into(), 50)])
        );
        assert_eq!(nodes, BTreeMap::from([("c2".into(), 2), ("c3".into(), 3)]));
        let status = mesh.status();
        let counts = |c: &str| {
            let s = &status.remotes[c];
            assert!(s.protocol.ready, "{s:?}");
            (s.nodes, s.endpoints, s.identities, s.services)
        };
        assert_eq!(counts("c2"), (2, 10_000, 1, 0));
        assert_eq!(counts("c3"), (3, 50, 1, 0));

        // c4 claims id 2, which c2 holds: refused, with the reason in its status.
        std::fs::write(
            dir.path().join("c4"),
            format!("endpoints:\n- {}\n", etcd4.endpoint()),
        )
        .unwrap();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(s) = mesh.status().remotes.get("c4")
                && let Some(reason) = &s.protocol.last_failure
            {
                assert_eq!(
                    reason,
                    "cluster \"c4\" has id 2, already used by cluster \"c2\""
                );
                assert!(!s.protocol.ready && s.endpoints == 0);
                break;
            }
        }
        assert!(
            mesh.status().remotes["c2"].protocol.ready,
            "c2 is unaffected"
        );
    })
    .await
    .expect("test timed out");
}
