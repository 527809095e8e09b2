//! The service controller on the in-memory kvstore: explicit ClusterIPs are honored when they
//! are in the service CIDR and free, refused (and the service not published) otherwise, and
//! allocation skips the addresses taken explicitly.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use plexus_apiserver::services::ServiceController;
use plexus_kvstore::{KvBackend, MemoryBackend};
use plexus_loadbalancer::service::Service;
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};

const SERVICES: &str = "plexus/objects/v1/services/";
const BACKENDS: &str = "plexus/state/backends/v1/";

async fn put_service(kv: &MemoryBackend, ns: &str, name: &str, ip: Option<&str>) {
    let ip = ip
        .map(|ip| format!(r#","clusterIP":"{ip}""#))
        .unwrap_or_default();
    kv.put(
        &format!("{SERVICES}{ns}/{name}"),
        format!(r#"{{"metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{"selector":{{"app":"{name}"}},"ports":[{{"port":53,"protocol":"UDP"}}]{ip}}}}}"#).into_bytes(),
        None,
    )
    .await
    .unwrap();
}

async fn cluster_ip(kv: &MemoryBackend, key: &str) -> Option<String> {
    let kv = kv.get(&format!("{SERVICES}{key}")).await.unwrap()?;
    let svc: Service = serde_json::from_slice(&kv.value).unwrap();
    svc.spec.cluster_ip
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test]
async fn explicit_cluster_ips_are_honored_when_in_the_cidr_and_free() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let kv = Arc::new(MemoryBackend::new());
        let lease = kv.lease_grant(Duration::from_secs(60)).await.unwrap();
        let (_lease_tx, lease_rx) = tokio::sync::watch::channel(lease);
        // kube-dns asks for .10 before the controller starts; others come after.
        put_service(&kv, "kube-system", "kube-dns", Some("10.11.0.10")).await;
        for i in 0..10 {
            put_service(&kv, "default", &format!("auto{i}"), None).await;
        }
        let cluster = ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap();
        let controller = ServiceController::spawn(
            kv.clone(),
            lease_rx,
            cluster,
            Some("10.11.0.0/16".parse().unwrap()),
        );
        wait_for("kube-dns published", || async {
            kv.get(&format!("{BACKENDS}kube-system/kube-dns"))
                .await
                .unwrap()
                .is_some()
        })
        .await;
        assert_eq!(
            cluster_ip(&kv, "kube-system/kube-dns").await.as_deref(),
            Some("10.11.0.10"),
            "the explicit address is kept"
        );
        // Ten services without an address get .1-.9 and .11: .10 is skipped.
        wait_for("addresses allocated", || async {
            let mut ips = Vec::new();
            for i in 0..10 {
                ips.extend(cluster_ip(&kv, &format!("default/auto{i}")).await);
            }
            ips.sort();
            let mut want: Vec<String> = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
                .iter()
                .map(|n| format!("10.11.0.{n}"))
                .collect();
            want.sort();
            ips == want
        })
        .await;

        // A taken address, one outside the CIDR: refused, not published.
        put_service(&kv, "default", "thief", Some("10.11.0.10")).await;
        put_service(&kv, "default", "outside", Some("192.168.0.10")).await;
        put_service(&kv, "default", "fine", Some("10.11.7.7")).await;
        wait_for("fine published", || async {
            kv.get(&format!("{BACKENDS}default/fine"))
                .await
                .unwrap()
                .is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for refused in ["default/thief", "default/outside"] {
            assert!(
                kv.get(&format!("{BACKENDS}{refused}"))
                    .await
                    .unwrap()
                    .is_none(),
                "{refused} must not be published"
            );
        }
        assert_eq!(
            cluster_ip(&kv, "default/thief").await.as_deref(),
            Some("10.11.0.10"),
            "a refused service's object is left as written"
        );
        // The holder goes: the newcomer gets the address and is published.
        kv.delete(&format!("{SERVICES}kube-system/kube-dns"))
            .await
            .unwrap();
        wait_for("thief published", || async {
            kv.get(&format!("{BACKENDS}default/thief"))
                .await
                .unwrap()
                .is_some()
        })
        .await;
        drop(controller);
    })
    .await
    .expect("test timed out");
}
