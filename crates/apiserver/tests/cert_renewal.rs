//! The apiserver renews the certificates it issued, with a real etcd and real TLS: every
//! certificate of the cluster lives 6 seconds; well past the first ones' expiry, a client
//! connected from the start has not failed once, the apiserver is ready (its etcd client, etcd's
//! server certificate), new clients connect to etcd and to the API with the renewed
//! certificates, and the renewed ones kept the 6-second lifetime.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use plexus_agent_api::{Client, Endpoint};
use plexus_apiserver::{ApiListen, ApiServer, ApiServerConfig, ApiServerStatus, EtcdSource};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, TlsFiles};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_pki::cluster::{ClientFiles, ClusterPki};
use plexus_test_support::free_port;

const LIFETIME: Duration = Duration::from_secs(6);

fn info(path: &std::path::Path) -> plexus_pki::CertInfo {
    plexus_pki::inspect(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn etcd_config(endpoint: &str, files: &ClientFiles) -> EtcdConfig {
    EtcdConfig::new(vec![endpoint.to_string()]).with_tls(TlsFiles {
        ca_file: files.ca.clone(),
        cert_file: files.cert.clone(),
        key_file: files.key.clone(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_renews_its_certificates_without_losing_a_connection() {
    plexus_kvstore::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let pki = ClusterPki::new(dir.path().join("pki"), "cluster1");
    pki.install_ca(&plexus_pki::Ca::generate("mesh").unwrap())
        .unwrap();
    pki.clone()
        .with_leaf_validity(LIFETIME)
        .ensure(&[], &[loopback])
        .unwrap();
    let client_port = free_port().unwrap();
    let cluster = ClusterInfo::new("cluster1", 3, MaxConnectedClusters::Max255).unwrap();
    let mut config = ApiServerConfig::new(
        cluster,
        dir.path().to_path_buf(),
        EtcdSource::Local {
            client_listen: format!("127.0.0.1:{client_port}").parse().unwrap(),
            peer_listen: format!("127.0.0.1:{}", free_port().unwrap())
                .parse()
                .unwrap(),
            advertise: vec![],
        },
        "127.0.0.1:0".parse().unwrap(),
    );
    config.api = Some(ApiListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
    });
    tokio::time::timeout(Duration::from_secs(120), async {
        let server = ApiServer::start(config).await.unwrap();
        let endpoint = format!("https://127.0.0.1:{client_port}");
        let files = [
            pki.etcd_server().0,
            pki.admin().cert,
            pki.local().cert,
            pki.dir().join("apiserver.crt"),
        ];
        let first: Vec<_> = files.iter().map(|f| info(f)).collect();
        for i in &first {
            assert_eq!(i.lifetime(), LIFETIME, "{}", i.common_name);
        }
        let first_expiry = first.iter().map(|i| i.not_after).max().unwrap();

        // A client connected from the start, writing all along.
        let steady = EtcdBackend::connect(etcd_config(&endpoint, &pki.admin()))
            .await
            .unwrap();
        let mut writes = 0;
        while plexus_pki::unix_now() <= first_expiry + 2 {
            steady
                .put("renewal/steady", writes.to_string().into_bytes(), None)
                .await
                .unwrap_or_else(|e| panic!("write {writes} failed: {e}"));
            writes += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("{writes} writes across the renewals, none failed");

        // Every certificate was renewed, with its lifetime, from the same CA.
        for (path, before) in files.iter().zip(&first) {
            let now = info(path);
            assert!(now.not_after > first_expiry, "{} renewed", path.display());
            assert_eq!(now.lifetime(), LIFETIME, "{}", path.display());
            assert_eq!(now.common_name, before.common_name);
            assert_eq!(now.issuer_key_id, before.issuer_key_id);
        }
        assert!(server.status().ready, "{:?}", server.status().not_ready);

        // New connections, to etcd (its server certificate as read now) and to the API, with
        // the renewed certificates.
        let fresh = EtcdBackend::connect(etcd_config(&endpoint, &pki.local()))
            .await
            .unwrap();
        assert!(fresh.get("cilium/.heartbeat").await.unwrap().is_some());
        let api = Client::new(Endpoint::Tls {
            addr: server.api_addr().unwrap().to_string(),
            config: plexus_agent_api::tls::client_config(
                &pki.ca_cert(),
                Some((&pki.local().cert, &pki.local().key)),
            )
            .unwrap(),
        })
        .with_timeout(Duration::from_secs(5));
        let status: ApiServerStatus = api.get("/v1/status").await.unwrap();
        assert!(status.ready);
        server.shutdown().await;
    })
    .await
    .unwrap();
}
