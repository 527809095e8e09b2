//! The web view on the apiserver's API (mutual TLS): the page and its files, and the
//! `/ui/api/` endpoints answered by the first agent of the cluster (nodes from the real etcd)
//! that answers. The agent is a fake serving canned answers over real mutual TLS (a server
//! certificate of the cluster's CA); the apiserver asks it with its API certificate. The
//! first node's agent is down, so the second one answers; with both down the endpoints say
//! so (503).
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use plexus_agent_api::{ApiError, Client, Endpoint, ErrorKind};
use plexus_apiserver::ui::{MeshView, ServicesView};
use plexus_apiserver::{ApiListen, ApiServer, ApiServerConfig, EtcdSource};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, TlsFiles};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::node::{Node, NodeAddress, NodeAddressType};
use plexus_test_support::{free_port, web_view};

fn client(addr: std::net::SocketAddr, pki: &std::path::Path) -> Client {
    let config = plexus_agent_api::tls::client_config(
        &pki.join("ca.crt"),
        Some((&pki.join("local.crt"), &pki.join("local.key"))),
    )
    .unwrap();
    Client::new(Endpoint::Tls {
        addr: addr.to_string(),
        config,
    })
    .with_timeout(Duration::from_secs(15))
}

fn node(name: &str, ip: &str) -> Vec<u8> {
    serde_json::to_vec(&Node {
        name: name.into(),
        cluster: "cluster1".into(),
        ip_addresses: vec![NodeAddress {
            kind: NodeAddressType::InternalIp,
            ip: ip.parse::<IpAddr>().unwrap(),
        }],
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_is_served_with_an_agents_view_of_the_mesh_and_services() {
    plexus_kvstore::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cluster = ClusterInfo::new("cluster1", 1, MaxConnectedClusters::Max255).unwrap();
    let etcd_port = free_port().unwrap();
    let agent_port = free_port().unwrap();
    let mut config = ApiServerConfig::new(
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
    config.api = Some(ApiListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
    });
    config.relay.agent_port = agent_port;
    tokio::time::timeout(Duration::from_secs(90), async {
        let server = ApiServer::start(config).await.unwrap();
        let pki = dir.path().join("pki");
        let api = client(server.api_addr().unwrap(), &pki);

        // The page and its files.
        let (status, html) = api.get_text("/ui").await.unwrap();
        assert_eq!(status, 200);
        assert!(html.contains("<title>Plexus</title>") && html.contains("/ui/app.js"));
        let (status, js) = api.get_text("/ui/app.js").await.unwrap();
        assert_eq!(status, 200);
        assert!(js.contains("/v1/flows?request="), "{js}");
        assert_eq!(api.get_text("/ui/app.css").await.unwrap().0, 200);

        // No nodes yet: the mesh is unavailable, and says why.
        let err = api.get::<MeshView>("/ui/api/mesh").await.unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::Unavailable), "{err}");
        assert!(err.to_string().contains("no nodes"), "{err}");

        // node1's agent is down (nothing listens on 127.0.0.2), node2's is the fake.
        let admin: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(
                EtcdConfig::new(vec![format!("https://127.0.0.1:{etcd_port}")]).with_tls(
                    TlsFiles {
                        ca_file: pki.join("ca.crt"),
                        cert_file: pki.join("admin.crt"),
                        key_file: pki.join("admin.key"),
                    },
                ),
            )
            .await
            .unwrap(),
        );
        admin
            .put(
                "cilium/state/nodes/v1/cluster1/node1",
                node("node1", "127.0.0.2"),
                None,
            )
            .await
            .unwrap();
        admin
            .put(
                "cilium/state/nodes/v1/cluster1/node2",
                node("node2", "127.0.0.1"),
                None,
            )
            .await
            .unwrap();
        let ca = plexus_pki::cluster::ClusterPki::new(&pki, "cluster1")
            .ca()
            .unwrap();
        let (cert, key) = ca
            .issue_server(
                "agent-node2",
                &["agent-node2"],
                &["127.0.0.1".parse().unwrap()],
            )
            .unwrap()
            .write_to(dir.path(), "agent")
            .unwrap();
        let agent = axum::Router::new()
            .route(
                "/v1/clustermesh",
                get(|| async { axum::Json(web_view::clustermesh()) }),
            )
            .route("/v1/nodes", get(|| async { axum::Json(web_view::nodes()) }))
            .route(
                "/v1/services",
                get(|| async { axum::Json(web_view::services()) }),
            );
        let agent_task = plexus_tls_api::start(
            format!("127.0.0.1:{agent_port}").parse().unwrap(),
            &plexus_agent_api::tls::TlsFiles {
                ca: pki.join("ca.crt"),
                cert,
                key,
            },
            agent,
            "cluster1",
        )
        .await
        .unwrap();

        let mesh: MeshView = api.get("/ui/api/mesh").await.unwrap();
        assert_eq!(mesh.cluster, "cluster1");
        assert_eq!(mesh.agent, "node2");
        assert_eq!(mesh.clustermesh.mesh.remote_clusters[0].name, "cluster2");
        assert_eq!(mesh.nodes.len(), 4);
        assert_eq!(mesh.unreachable.len(), 1, "{:?}", mesh.unreachable);
        assert!(
            mesh.unreachable[0].starts_with("node1 (127.0.0.2:"),
            "{:?}",
            mesh.unreachable
        );
        let services: ServicesView = api.get("/ui/api/services").await.unwrap();
        assert_eq!(services.agent, "node2");
        assert_eq!(services.services[0].name, "rebel-base");
        assert_eq!(services.services[0].backends.candidates.len(), 2);

        // The page's filters: observe flags to the request plexus observe would send.
        let flags = plexus_flow::filter::percent_encode(
            r#"[["verdict","DROPPED"],["to-cluster","cluster1"],["follow",""]]"#,
        );
        let req: plexus_flow::FlowRequest = api
            .get(&format!("/ui/api/request?flags={flags}"))
            .await
            .unwrap();
        assert!(req.follow);
        assert_eq!(req.whitelist[0].destination_cluster_name, ["cluster1"]);
        let bad = plexus_flow::filter::percent_encode(r#"[["verdict","LOST"]]"#);
        let err = api
            .get::<plexus_flow::FlowRequest>(&format!("/ui/api/request?flags={bad}"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::Invalid), "{err}");
        assert!(err.to_string().contains("--verdict"), "{err}");

        // Every agent down: unavailable, naming each node.
        agent_task.abort();
        let _ = agent_task.await;
        let err = api
            .get::<ServicesView>("/ui/api/services")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ApiError::Server { status: 503, message, .. }
                if message.contains("no agent of cluster cluster1 answered")
                    && message.contains("node1") && message.contains("node2")),
            "{err}"
        );
        server.shutdown().await;
    })
    .await
    .unwrap();
}
