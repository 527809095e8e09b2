//! One cluster follows a remote cluster's real etcd (mTLS, read-only user): it sees the remote's
//! validated state, keeps it while the remote is down, converges to its new truth when it is back,
//! and drains it when the configuration is removed.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use plexus_clustermesh::mesh::ClusterMesh;
use plexus_clustermesh::publish::{PublisherConfig, SelfPublisher};
use plexus_clustermesh::remote::Timing;
use plexus_clustermesh::remote_cluster::{DriverTiming, MeshEvent, RemoteEvent};
use plexus_kvstore::{
    EtcdBackend, EtcdConfig, KvBackend, LeaseManager, SyncStore, SyncStoreConfig, TlsFiles,
};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::keys::StateKind;
use plexus_test_support::EtcdProcess;
use tokio::sync::mpsc;

#[derive(Default, Debug)]
struct View {
    /// The id from the remote's cluster config, announced before its entries.
    cluster_id: Option<u32>,
    nodes: BTreeSet<String>,
    ips: BTreeSet<String>,
    identities: BTreeSet<u32>,
    services: BTreeSet<String>,
    synced: bool,
    drained: bool,
    deletes: usize,
}

impl View {
    fn apply(&mut self, e: MeshEvent) {
        assert_eq!(e.cluster, "c2");
        let entry = !matches!(
            e.event,
            RemoteEvent::ClusterConfig { .. } | RemoteEvent::Synced | RemoteEvent::Drained
        );
        assert!(
            !entry || self.cluster_id.is_some(),
            "an entry before the cluster config: {e:?}"
        );
        match e.event {
            RemoteEvent::ClusterConfig { cluster_id } => self.cluster_id = Some(cluster_id),
            RemoteEvent::NodeUpsert(n) => {
                self.nodes.insert(n.name);
            }
            RemoteEvent::NodeDelete(n) => {
                self.deletes += 1;
                self.nodes.remove(&n);
            }
            RemoteEvent::IpUpsert(p) => {
                self.ips.insert(p.key_suffix().unwrap());
            }
            RemoteEvent::IpDelete(k) => {
                self.deletes += 1;
                self.ips.remove(&k);
            }
            RemoteEvent::IdentityUpsert(i) => {
                self.identities.insert(i.id.0);
            }
            RemoteEvent::IdentityDelete(i) => {
                self.deletes += 1;
                self.identities.remove(&i);
            }
            RemoteEvent::ServiceUpsert(s) => {
                self.services.insert(format!("{}/{}", s.namespace, s.name));
            }
            RemoteEvent::ServiceDelete(k) => {
                self.deletes += 1;
                self.services.remove(&k);
            }
            RemoteEvent::Synced => self.synced = true,
            RemoteEvent::Drained => self.drained = true,
        }
    }
}

async fn until(
    rx: &mut mpsc::Receiver<MeshEvent>,
    view: &mut View,
    what: &str,
    done: impl Fn(&View) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(view) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => view.apply(e),
            Ok(None) => panic!("event channel closed waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}: {view:?}"),
        }
    }
}

fn node(name: &str, cluster: &str, id: u32) -> Vec<u8> {
    format!(r#"{{"Name":"{name}","Cluster":"{cluster}","IPAddresses":[{{"Type":"InternalIP","IP":"192.168.0.{id}"}}],"ClusterID":{id}}}"#).into_bytes()
}

fn service(name: &str, shared: bool) -> Vec<u8> {
    format!(r#"{{"cluster":"c2","namespace":"default","name":"{name}","frontends":{{"10.21.0.1":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{"10.20.1.5":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"labels":{{}},"selector":{{}},"includeExternal":true,"shared":{shared},"clusterID":2}}"#).into_bytes()
}

fn store(b: &Arc<dyn KvBackend>, leases: &LeaseManager, kind: StateKind) -> SyncStore {
    SyncStore::start(
        b.clone(),
        leases,
        SyncStoreConfig {
            prefix: kind.state_prefix("c2"),
            canary: Some(kind.canary("c2")),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_remote_through_failure_and_removal() {
    plexus_kvstore::install_crypto_provider();
    let mut etcd = EtcdProcess::start_tls().unwrap();
    etcd.setup_auth(&[(
        "remote",
        &[
            "cilium/state/",
            "cilium/.heartbeat",
            "cilium/cluster-config/c2",
            "cilium/synced/c2/",
        ],
    )])
    .unwrap();
    let root = etcd.issue_client("root").unwrap();
    let remote_cert = etcd.issue_client("remote").unwrap();
    let dir = tempfile::tempdir().unwrap();

    tokio::time::timeout(Duration::from_secs(120), async {
        // Cluster c2 publishes its state.
        let tls = |c: &plexus_test_support::ClientCert| TlsFiles {
            ca_file: c.ca_file.clone(),
            cert_file: c.cert_file.clone(),
            key_file: c.key_file.clone(),
        };
        let b: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]).with_tls(tls(&root))).await.unwrap(),
        );
        let leases = LeaseManager::start(b.clone(), Duration::from_secs(5)).await.unwrap();
        let c2 = ClusterInfo::new("c2", 2, MaxConnectedClusters::Max255).unwrap();
        let _publisher = SelfPublisher::start(
            b.clone(),
            &leases,
            PublisherConfig { heartbeat_interval: Duration::from_millis(500), ..PublisherConfig::new(c2) },
        )
        .await
        .unwrap();
        let nodes = store(&b, &leases, StateKind::Nodes);
        nodes.upsert("node-1", node("node-1", "c2", 2));
        nodes.upsert("node-2", node("node-2", "c2", 2));
        nodes.upsert("evil", node("evil", "c1", 1)); // claims to be another cluster's node
        nodes.synced();
        let ips = store(&b, &leases, StateKind::Ip);
        for i in 0..1000u32 {
            let ip = format!("10.20.{}.{}", i / 250, i % 250 + 1);
            let value = format!(r#"{{"IP":"{ip}","Mask":null,"HostIP":"192.168.0.2","ID":{},"Key":0,"Metadata":""}}"#, 131072 + i % 2);
            ips.upsert(ip, value.into_bytes());
        }
        ips.synced();
        let identities = store(&b, &leases, StateKind::Identities);
        identities.upsert("131072", b"k8s:app=a;k8s:io.cilium.k8s.policy.cluster=c2;".to_vec());
        identities.upsert("131073", b"k8s:app=b;k8s:io.cilium.k8s.policy.cluster=c2;".to_vec());
        identities.upsert("65600", b"k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c2;".to_vec()); // c1's range
        identities.synced();
        let services = store(&b, &leases, StateKind::Services);
        services.upsert("default/rebel-base", service("rebel-base", true));
        services.upsert("default/private", service("private", false));
        services.synced();

        // Cluster c1 follows c2 with the read-only `remote` identity.
        let cfg = format!(
            "endpoints:\n- {}\ntrusted-ca-file: {}\ncert-file: {}\nkey-file: {}\n",
            etcd.endpoint(),
            remote_cert.ca_file.display(),
            remote_cert.cert_file.display(),
            remote_cert.key_file.display()
        );
        std::fs::write(dir.path().join("c2"), cfg).unwrap();
        let (tx, mut rx) = mpsc::channel(4096);
        let timing = DriverTiming {
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
        };
        let c1 = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
        let mesh = ClusterMesh::spawn(dir.path(), c1, tx, timing, Duration::from_millis(200));
        let mut view = View::default();
        until(&mut rx, &mut view, "initial sync", |v| v.synced).await;
        assert_eq!(view.cluster_id, Some(2));
        assert_eq!(view.nodes, BTreeSet::from(["node-1".into(), "node-2".into()]));
        assert_eq!(view.ips.len(), 1000);
        assert_eq!(view.identities, BTreeSet::from([131072, 131073]));
        assert_eq!(view.services, BTreeSet::from(["default/rebel-base".to_string()]));
        let status = mesh.status().remotes["c2"].clone();
        assert!(status.protocol.connected && status.protocol.ready, "{status:?}");
        assert_eq!((status.nodes, status.endpoints, status.identities, status.services), (2, 1000, 2, 1));
        assert_eq!(status.rejected, 2, "the foreign node and the out-of-range identity");

        // c2's etcd dies: c1 notices within seconds and keeps everything.
        etcd.kill();
        let t0 = tokio::time::Instant::now();
        while mesh.status().remotes["c2"].protocol.connected {
            assert!(t0.elapsed() < Duration::from_secs(10), "loss not noticed within 10 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        while let Ok(e) = rx.try_recv() {
            view.apply(e);
        }
        assert_eq!(view.deletes, 0, "nothing is deleted while the remote is away");
        assert_eq!(view.ips.len(), 1000);

        // It comes back with new content: c1 converges to exactly that.
        etcd.restart().unwrap();
        nodes.delete("node-2");
        nodes.upsert("node-3", node("node-3", "c2", 2));
        services.upsert("default/rebel-base", service("rebel-base", false)); // no longer shared
        until(&mut rx, &mut view, "resync", |v| {
            v.nodes == BTreeSet::from(["node-1".into(), "node-3".into()]) && v.services.is_empty()
        })
        .await;
        assert_eq!(view.ips.len(), 1000, "entries present before and after stayed");
        let t0 = tokio::time::Instant::now();
        while !mesh.status().remotes["c2"].protocol.connected {
            assert!(t0.elapsed() < Duration::from_secs(20), "not reconnected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The configuration is removed: everything from c2 drains.
        std::fs::remove_file(dir.path().join("c2")).unwrap();
        until(&mut rx, &mut view, "drain", |v| v.drained).await;
        assert!(view.nodes.is_empty() && view.ips.is_empty() && view.identities.is_empty());
        let t0 = tokio::time::Instant::now();
        while !mesh.status().remotes.is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("test timed out");
}
