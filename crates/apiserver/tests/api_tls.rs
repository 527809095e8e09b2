//! The apiserver's API on TCP with mutual TLS: its certificate issued from the cluster's CA in
//! the state dir, a client of that CA reads `/v1/status`, a client without a certificate or
//! of another CA is refused at the handshake.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use plexus_agent_api::{Client, Endpoint};
use plexus_apiserver::{ApiListen, ApiServer, ApiServerConfig, ApiServerStatus, EtcdSource};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_test_support::free_port;

fn client(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    id: Option<(&std::path::Path, &std::path::Path)>,
) -> Client {
    let config = plexus_agent_api::tls::client_config(ca, id).unwrap();
    Client::new(Endpoint::Tls {
        addr: addr.to_string(),
        config,
    })
    .with_timeout(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_status_to_clients_of_the_cluster_ca_only() {
    plexus_kvstore::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterInfo::new("cluster1", 7, MaxConnectedClusters::Max255).unwrap();
    let mut config = ApiServerConfig::new(
        cluster,
        dir.path().to_path_buf(),
        EtcdSource::Local {
            client_listen: format!("127.0.0.1:{}", free_port().unwrap())
                .parse()
                .unwrap(),
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
    tokio::time::timeout(Duration::from_secs(90), async {
        let server = ApiServer::start(config).await.unwrap();
        let addr = server.api_addr().unwrap();
        let pki = dir.path().join("pki");
        assert!(pki.join("apiserver.crt").exists());

        // A reader of the CA (another cluster's relay would present such a certificate).
        let reader = client(
            addr,
            &pki.join("ca.crt"),
            Some((&pki.join("local.crt"), &pki.join("local.key"))),
        );
        assert_eq!(reader.healthz().await.unwrap(), "ok");
        let status: ApiServerStatus = reader.get("/v1/status").await.unwrap();
        assert_eq!(status.cluster, "cluster1");
        assert_eq!(status.cluster_id, 7);

        // No client certificate: refused during the handshake.
        let anonymous = client(addr, &pki.join("ca.crt"), None);
        let err = anonymous.healthz().await.unwrap_err();
        assert!(
            matches!(err, plexus_agent_api::ApiError::Unreachable { .. }),
            "{err}"
        );

        // A certificate of another CA: refused too.
        let other = plexus_pki::Ca::generate("other-ca").unwrap();
        let issued = other.issue_client("admin-cluster1").unwrap();
        let (cert, key) = issued.write_to(dir.path(), "intruder").unwrap();
        let intruder = client(addr, &pki.join("ca.crt"), Some((&cert, &key)));
        let err = intruder.healthz().await.unwrap_err();
        assert!(
            matches!(err, plexus_agent_api::ApiError::Unreachable { .. }),
            "{err}"
        );
        // Refused handshakes do not stop the listener.
        assert_eq!(reader.healthz().await.unwrap(), "ok");
        server.shutdown().await;
    })
    .await
    .unwrap();
}
