//! The apiserver in-process against its own supervised etcd: access rules, cluster config,
//! canaries, the service controller, health and metrics.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use plexus_apiserver::{ApiServer, ApiServerConfig, EtcdSource};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, TlsFiles};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_test_support::free_port;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_sets_up_etcd_publishes_and_runs_the_service_controller() {
    plexus_kvstore::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterInfo::new("cluster1", 7, MaxConnectedClusters::Max255).unwrap();
    let etcd_port = free_port().unwrap();
    let config = ApiServerConfig::new(
        cluster,
        dir.path().to_path_buf(),
        EtcdSource::Local {
            client_listen: format!("127.0.0.1:{etcd_port}").parse().unwrap(),
            peer_listen: format!("127.0.0.1:{}", free_port().unwrap())
                .parse()
                .unwrap(),
            advertise: vec![],
        },
        "127.0.0.1:0".parse().unwrap(),
    );
    let mut config = config;
    config.service_cidr = Some("10.11.0.0/16".parse().unwrap());
    tokio::time::timeout(Duration::from_secs(90), async {
        let server = ApiServer::start(config).await.unwrap();
        let addr = server.http_addr();
        let pki = dir.path().join("pki");
        let admin: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(
                EtcdConfig::new(vec![format!("https://127.0.0.1:{etcd_port}")]).with_tls(TlsFiles {
                    ca_file: pki.join("ca.crt"),
                    cert_file: pki.join("admin.crt"),
                    key_file: pki.join("admin.key"),
                }),
            )
            .await
            .unwrap(),
        );

        // Cluster config (Cilium's JSON) and every canary.
        let cfg = admin.get("cilium/cluster-config/cluster1").await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8(cfg.value).unwrap(),
            r#"{"id":7,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}"#
        );
        wait_for("ready", || async { http_get(addr, "/readyz").await.0 == 200 }).await;
        for kind in ["nodes", "identities", "ip", "services"] {
            let key = format!("cilium/synced/cluster1/cilium/state/{kind}/v1");
            assert!(admin.get(&key).await.unwrap().is_some(), "{key}");
        }

        // Users and roles; the local user can read the cache but not write.
        let users = plexus_kvstore::EtcdBackend::connect(
            EtcdConfig::new(vec![format!("https://127.0.0.1:{etcd_port}")]).with_tls(TlsFiles {
                ca_file: pki.join("ca.crt"),
                cert_file: pki.join("admin.crt"),
                key_file: pki.join("admin.key"),
            }),
        )
        .await
        .unwrap()
        .users()
        .await
        .unwrap();
        assert_eq!(users, vec!["admin-cluster1", "local-cluster1", "remote", "root"]);
        let local = EtcdBackend::connect(
            EtcdConfig::new(vec![format!("https://127.0.0.1:{etcd_port}")]).with_tls(TlsFiles {
                ca_file: pki.join("ca.crt"),
                cert_file: pki.join("local.crt"),
                key_file: pki.join("local.key"),
            }),
        )
        .await
        .unwrap();
        assert!(local.get("cilium/cluster-config/cluster1").await.is_ok());
        assert!(matches!(
            local.put("cilium/cache/x", b"y".to_vec(), None).await,
            Err(plexus_kvstore::Error::PermissionDenied(_))
        ));

        // The service controller: a global service, three endpoint records.
        admin
            .put(
                "plexus/objects/v1/services/default/rebel-base",
                br#"{"metadata":{"name":"rebel-base","namespace":"default","annotations":{"service.cilium.io/global":"true"}},"spec":{"clusterIP":"10.11.0.10","selector":{"app":"rebel-base"},"ports":[{"name":"http","port":80}]}}"#.to_vec(),
                None,
            )
            .await
            .unwrap();
        for (pod, ip, app) in [("a", "10.10.0.5", "rebel-base"), ("b", "10.10.1.6", "rebel-base"), ("c", "10.10.1.7", "x-wing")] {
            admin
                .put(
                    &format!("plexus/endpoints/v1/default/{pod}"),
                    format!(r#"{{"namespace":"default","pod":"{pod}","ip":"{ip}","node":"n1","labels":{{"app":"{app}"}}}}"#).into_bytes(),
                    None,
                )
                .await
                .unwrap();
        }
        let key = "cilium/state/services/v1/cluster1/default/rebel-base";
        let expected = r#"{"cluster":"cluster1","namespace":"default","name":"rebel-base","frontends":{"10.11.0.10":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.10.0.5":{"http":{"Protocol":"TCP","Port":80}},"10.10.1.6":{"http":{"Protocol":"TCP","Port":80}}},"labels":{},"selector":{"app":"rebel-base"},"includeExternal":true,"shared":true,"clusterID":7}"#;
        wait_for("ClusterService with two backends", || async {
            admin.get(key).await.unwrap().is_some_and(|kv| kv.value == expected.as_bytes())
        })
        .await;
        assert!(
            admin.get(key).await.unwrap().unwrap().lease.is_some(),
            "published under the apiserver's lease"
        );
        admin.delete("plexus/endpoints/v1/default/b").await.unwrap();
        wait_for("backend b removed", || async {
            let kv = admin.get("plexus/state/backends/v1/default/rebel-base").await.unwrap();
            kv.is_some_and(|kv| {
                let v = String::from_utf8(kv.value).unwrap();
                v.contains("10.10.0.5") && !v.contains("10.10.1.6")
            })
        })
        .await;
        admin.delete("plexus/objects/v1/services/default/rebel-base").await.unwrap();
        wait_for("ClusterService withdrawn", || async { admin.get(key).await.unwrap().is_none() }).await;

        // A service without an address gets the lowest free one of the service CIDR.
        admin
            .put(
                "plexus/objects/v1/services/default/db",
                br#"{"metadata":{"name":"db","namespace":"default"},"spec":{"selector":{"app":"db"},"ports":[{"port":5432}]}}"#.to_vec(),
                None,
            )
            .await
            .unwrap();
        wait_for("service address allocated", || async {
            admin
                .get("plexus/objects/v1/services/default/db")
                .await
                .unwrap()
                .is_some_and(|kv| String::from_utf8(kv.value).unwrap().contains(r#""clusterIP":"10.11.0.1""#))
        })
        .await;

        // Metrics count kvstore operations.
        let (code, metrics) = http_get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(metrics.contains("plexus_apiserver_ready{cluster=\"cluster1\"} 1"), "{metrics}");
        assert!(metrics.contains("plexus_kvstore_operations_total{scope=\"local\",operation=\"txn\"}"), "{metrics}");
        assert!(metrics.contains("plexus_kvstore_sync_queue_size{scope=\"apiserver\"} 0"), "{metrics}");

        // Shutdown revokes the lease: the cluster config goes.
        server.shutdown().await;
    })
    .await
    .unwrap();
    // The supervised etcd stopped with the apiserver.
    assert!(std::net::TcpStream::connect(("127.0.0.1", etcd_port)).is_err());
}
