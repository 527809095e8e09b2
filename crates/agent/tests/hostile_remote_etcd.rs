//! A hostile remote cluster with valid credentials, through real etcd (mTLS, a read-only user):
//! cluster c1 follows an honest remote c2 and then a hostile remote c3 that publishes
//! ipcache entries for our addresses and c2's, nodes claiming our and c2's pod CIDRs, a
//! node and identities of other clusters, an oversized value, service backends outside its
//! nodes, and more entries than its limit. Every one is refused and counted by reason in the
//! status, its JSON report and the metrics; our entries and c2's stay as they were; c3's own
//! entries are kept.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use plexus_agent::core::{Input, NodeCore};
use plexus_clustermesh::mesh::{ClusterMesh, MeshStatus};
use plexus_clustermesh::publish::{PublisherConfig, SelfPublisher};
use plexus_clustermesh::remote::Timing;
use plexus_clustermesh::remote_cluster::{DriverTiming, Limits, MeshEvent};
use plexus_clustermesh::report::MeshReport;
use plexus_datapath::RoutingMode;
use plexus_kvstore::{
    EtcdBackend, EtcdConfig, KvBackend, LeaseManager, SyncStore, SyncStoreConfig, TlsFiles,
};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::keys::StateKind;
use plexus_test_support::EtcdProcess;
use tokio::sync::mpsc;

fn node_json(name: &str, cluster: &str, id: u32, ip: &str, cidr: &str) -> Vec<u8> {
    format!(r#"{{"Name":"{name}","Cluster":"{cluster}","IPAddresses":[{{"Type":"InternalIP","IP":"{ip}"}}],"IPv4AllocCIDR":{{"IP":"{cidr}","Mask":"////AA=="}},"ClusterID":{id}}}"#).into_bytes()
}

fn ip_json(ip: &str, host: &str, id: u32) -> Vec<u8> {
    format!(r#"{{"IP":"{ip}","Mask":null,"HostIP":"{host}","ID":{id},"Key":0,"Metadata":""}}"#)
        .into_bytes()
}

fn service_json(cluster: &str, id: u32, backends: &[&str]) -> Vec<u8> {
    let backends: Vec<String> = backends
        .iter()
        .map(|b| format!(r#""{b}":{{"http":{{"Protocol":"TCP","Port":80}}}}"#))
        .collect();
    format!(r#"{{"cluster":"{cluster}","namespace":"default","name":"web","frontends":{{}},"backends":{{{}}},"labels":{{}},"selector":{{}},"includeExternal":true,"shared":true,"clusterID":{id}}}"#, backends.join(",")).into_bytes()
}

fn store(
    b: &Arc<dyn KvBackend>,
    leases: &LeaseManager,
    cluster: &str,
    kind: StateKind,
) -> SyncStore {
    SyncStore::start(
        b.clone(),
        leases,
        SyncStoreConfig {
            prefix: kind.state_prefix(cluster),
            canary: Some(kind.canary(cluster)),
        },
    )
}

/// Feeds mesh events into the core until `done` holds (30 s at most).
async fn until(
    rx: &mut mpsc::Receiver<MeshEvent>,
    core: &mut NodeCore,
    what: &str,
    done: impl Fn(&NodeCore) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(core) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => core.step(Input::Remote(e)),
            Ok(None) => panic!("event channel closed waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}: {:?}", core.desired_ipcache()),
        }
    }
}

/// The mesh's status with the core's refusals, as the agent serves it.
fn status(mesh: &ClusterMesh, core: &NodeCore) -> MeshStatus {
    let mut s = mesh.status();
    s.add_refused(&core.refused());
    s
}

/// A remote cluster's own etcd (mTLS, a read-only `remote` user), its connection as root, its
/// leases and published cluster config, and the configuration file that reads it.
struct RemoteEtcd {
    _etcd: EtcdProcess,
    _publisher: SelfPublisher,
    backend: Arc<dyn KvBackend>,
    leases: LeaseManager,
    config: String,
}

async fn remote_etcd(name: &str, id: u32) -> RemoteEtcd {
    let etcd = EtcdProcess::start_tls().unwrap();
    etcd.setup_auth(&[(
        "remote",
        &[
            "cilium/state/",
            "cilium/.heartbeat",
            "cilium/cluster-config/",
            "cilium/synced/",
        ],
    )])
    .unwrap();
    let root = etcd.issue_client("root").unwrap();
    let remote = etcd.issue_client("remote").unwrap();
    let backend: Arc<dyn KvBackend> = Arc::new(
        EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]).with_tls(TlsFiles {
            ca_file: root.ca_file.clone(),
            cert_file: root.cert_file.clone(),
            key_file: root.key_file.clone(),
        }))
        .await
        .unwrap(),
    );
    let leases = LeaseManager::start(backend.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    let info = ClusterInfo::new(name, id, MaxConnectedClusters::Max255).unwrap();
    let publisher = SelfPublisher::start(
        backend.clone(),
        &leases,
        PublisherConfig {
            heartbeat_interval: Duration::from_millis(500),
            ..PublisherConfig::new(info)
        },
    )
    .await
    .unwrap();
    let config = format!(
        "endpoints:\n- {}\ntrusted-ca-file: {}\ncert-file: {}\nkey-file: {}\n",
        etcd.endpoint(),
        remote.ca_file.display(),
        remote.cert_file.display(),
        remote.key_file.display()
    );
    RemoteEtcd {
        _etcd: etcd,
        _publisher: publisher,
        backend,
        leases,
        config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_remote_is_refused_counted_and_displaces_nothing() {
    plexus_kvstore::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        let info = |name: &str, id| ClusterInfo::new(name, id, MaxConnectedClusters::Max255).unwrap();
        // Each cluster has its own etcd (ipcache entries and identities are not scoped by
        // cluster in the keys).
        let r2 = remote_etcd("c2", 2).await;
        let r3 = remote_etcd("c3", 3).await;
        let (b, leases) = (&r2.backend, &r2.leases);

        // c2, honest: node m1 (10.2.1.0/24), one pod, a service on it.
        let nodes2 = store(b, leases, "c2", StateKind::Nodes);
        nodes2.upsert("m1", node_json("m1", "c2", 2, "192.168.2.1", "10.2.1.0"));
        nodes2.synced();
        let ips2 = store(b, leases, "c2", StateKind::Ip);
        ips2.upsert("10.2.1.5", ip_json("10.2.1.5", "192.168.2.1", 131_073));
        ips2.synced();
        let ids2 = store(b, leases, "c2", StateKind::Identities);
        ids2.upsert("131073", b"k8s:app=a;k8s:io.cilium.k8s.policy.cluster=c2;".to_vec());
        ids2.synced();
        let svc2 = store(b, leases, "c2", StateKind::Services);
        svc2.upsert("default/web", service_json("c2", 2, &["10.2.1.5"]));
        svc2.synced();

        // c1: this node n1 (10.1.1.0/24) with a pod, and node n2 (10.1.2.0/24).
        let mut core = core(RoutingMode::Tunnel);
        core.step_all([
            Input::NodeUpsert(node("c1", 1, "n1", "192.168.1.1", "10.1.1.0")),
            Input::NodeUpsert(node("c1", 1, "n2", "192.168.1.2", "10.1.2.0")),
            Input::EndpointUpsert(endpoint(7, "10.1.1.5", 300)),
        ]);
        let ours = core.desired_ipcache();

        let limits = Limits {
            max_entries: 40,
            max_value_size: 64 * 1024,
            ..Limits::default()
        };
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
            limits,
        };
        std::fs::write(dir.path().join("c2"), &r2.config).unwrap();
        let (tx, mut rx) = mpsc::channel(4096);
        let mesh = ClusterMesh::spawn(dir.path(), info("c1", 1), tx, timing, Duration::from_millis(200));
        until(&mut rx, &mut core, "c2 synced", |c| {
            c.remotes().get("c2").is_some_and(|r| r.synced)
        })
        .await;
        let with_c2 = core.desired_ipcache();
        assert_eq!(with_c2[&prefix("10.2.1.5/32")].cluster_id, 2);
        assert_eq!(with_c2[&prefix("10.2.1.0/24")].cluster_id, 2);

        // c3, hostile, with valid credentials.
        let (b, leases) = (&r3.backend, &r3.leases);
        let nodes3 = store(b, leases, "c3", StateKind::Nodes);
        nodes3.upsert("m1", node_json("m1", "c3", 3, "192.168.3.1", "10.3.1.0"));
        nodes3.upsert("ours", node_json("ours", "c3", 3, "192.168.3.2", "10.1.2.0")); // our n2's CIDR
        nodes3.upsert("c2s", node_json("c2s", "c3", 3, "192.168.3.3", "10.2.1.0")); // c2's CIDR
        nodes3.upsert("spoof", node_json("spoof", "c2", 2, "192.168.3.4", "10.3.9.0")); // c2's name
        nodes3.synced();
        let ips3 = store(b, leases, "c3", StateKind::Ip);
        ips3.upsert("10.3.1.5", ip_json("10.3.1.5", "192.168.3.1", 196_609)); // its own
        for (ip, host) in [
            ("10.1.1.5", "192.168.3.1"),   // our pod
            ("10.1.2.77", "192.168.3.1"),  // a free address in our n2's CIDR
            ("192.168.1.2", ""),           // our node
            ("10.2.1.5", "192.168.3.1"),   // c2's pod
            ("10.3.1.9", "192.168.1.1"),   // its CIDR, tunnelled to our node
        ] {
            ips3.upsert(ip, ip_json(ip, host, 196_609));
        }
        ips3.synced();
        let ids3 = store(b, leases, "c3", StateKind::Identities);
        ids3.upsert("196609", b"k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c3;".to_vec());
        ids3.upsert("196610", b"k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c2;".to_vec()); // c2's label
        ids3.upsert("131080", b"k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c3;".to_vec()); // c2's range
        let huge = format!("k8s:app={};k8s:io.cilium.k8s.policy.cluster=c3;", "x".repeat(300 * 1024));
        ids3.upsert("196611", huge.into_bytes()); // 300 KiB, over the 64 KiB limit
        ids3.synced();
        let svc3 = store(b, leases, "c3", StateKind::Services);
        svc3.upsert("default/web", service_json("c3", 3, &["10.3.1.5", "10.1.1.5", "10.2.1.5"]));
        svc3.synced();

        std::fs::write(dir.path().join("c3"), &r3.config).unwrap();
        until(&mut rx, &mut core, "c3 synced", |c| {
            c.remotes().get("c3").is_some_and(|r| r.synced)
        })
        .await;
        // The guard decides as events come; let the last ones of c3 in.
        until(&mut rx, &mut core, "c3's service refused in part", |c| {
            c.refused().get("c3").and_then(|r| r.get("backend-not-owned")).is_some()
        })
        .await;

        let now = core.desired_ipcache();
        // Ours and c2's are exactly as before.
        for (p, v) in &with_c2 {
            assert_eq!(now.get(p), Some(v), "{p} changed");
        }
        for p in ["10.1.2.77/32", "10.3.1.9/32", "10.1.2.0/24"] {
            assert_eq!(now.get(&prefix(p)), with_c2.get(&prefix(p)), "{p}");
        }
        assert_eq!(ours[&prefix("10.1.2.0/24")], now[&prefix("10.1.2.0/24")]);
        // c3's own entries are in.
        assert_eq!(now[&prefix("10.3.1.5/32")].cluster_id, 3);
        assert_eq!(now[&prefix("10.3.1.0/24")].cluster_id, 3);
        assert_eq!(now.len(), with_c2.len() + 3, "c3's node (address, CIDR) and pod only");

        let s = status(&mesh, &core);
        let c3 = &s.remotes["c3"].rejected_by;
        let want: BTreeMap<String, u64> = [
            ("foreign-cluster", 3),  // the spoofed node, c2's label, c2's range
            ("value-too-large", 1),
            ("cidr-conflict", 2),    // nodes on our n2's and c2's CIDRs
            ("address-not-owned", 5),
            ("backend-not-owned", 2),
        ]
        .into_iter()
        .map(|(r, n)| (r.to_string(), n))
        .collect();
        assert_eq!(c3, &want);
        assert_eq!(s.remotes["c3"].rejected, 13);
        assert!(s.remotes["c2"].rejected_by.is_empty(), "{:?}", s.remotes["c2"]);

        // A flood of its own entries: bounded by the entry limit.
        for i in 0..100u32 {
            let ip = format!("10.3.1.{}", 100 + i);
            ips3.upsert(ip.clone(), ip_json(&ip, "192.168.3.1", 196_609));
        }
        let t0 = tokio::time::Instant::now();
        loop {
            while let Ok(e) = rx.try_recv() {
                core.step(Input::Remote(e));
            }
            let st = &mesh.status().remotes["c3"];
            let held = st.nodes + st.endpoints + st.identities + st.services;
            let refused = st.rejected_by.get("entry-limit").copied().unwrap_or(0);
            if held == 40 && held as u64 + refused == 3 + 106 + 1 + 1 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "flood not bounded: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (p, v) in &with_c2 {
            assert_eq!(core.desired_ipcache().get(p), Some(v), "{p} changed by the flood");
        }

        // The counts in the JSON report and the metrics.
        let s = status(&mesh, &core);
        let report = serde_json::to_value(MeshReport::from(&s)).unwrap();
        let c3 = report["remote-clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "c3")
            .unwrap();
        assert_eq!(c3["rejected-by-reason"]["cidr-conflict"], 2, "{c3}");
        assert!(c3["rejected-by-reason"]["entry-limit"].as_u64().unwrap() > 0, "{c3}");
        let mut registry = plexus_metrics::prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(plexus_clustermesh::metrics::collector("c1", move || s.clone())));
        let text = plexus_metrics::encode(&registry, plexus_metrics::Format::Text).unwrap();
        for line in [
            r#"plexus_clustermesh_remote_cluster_rejected_entries_by_reason_total{source_cluster="c1",target_cluster="c3",reason="address-not-owned"} 5"#,
            r#"plexus_clustermesh_remote_cluster_rejected_entries_by_reason_total{source_cluster="c1",target_cluster="c3",reason="value-too-large"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        drop(mesh);
    })
    .await
    .expect("the test took longer than 120 s");
}
