//! The web view in headless Chromium (Debian's `chromium`), through `plexus ui`.
//!
//! An apiserver runs in-process (its real etcd holds the cluster's node; its certificates are
//! the cluster's). The page, its files and its `/ui/api/` endpoints are the apiserver's web
//! view (`plexus_apiserver::ui::router`), served with the apiserver's API certificate beside
//! a fake relay's `/v1/flows` and `/v1/relay/nodes` (canned lines: the relay is not part of
//! this crate's apiserver yet). The `/ui/api/` endpoints ask a fake agent (real mutual TLS) at
//! the node's InternalIP. `plexus ui` proxies a local port to that API with the context's
//! admin certificate; the proxy's checks (GET only, its own Host only, streaming) are tested
//! with plain HTTP, then Chromium loads `/ui?follow=0` and the test asserts on the DOM after
//! the page's scripts ran (`--dump-dom --virtual-time-budget`): the clusters, a node, the
//! service row with its backends by cluster, flow rows with the drop marked, and the relay's
//! `3/4 nodes`. A screenshot is kept as `<target>/test-artifacts/ui.png`.
//!
//! Chromium runs as root here, so with `--no-sandbox`, with a temporary profile directory, in a
//! process group of its own that is killed when the test ends however it ends.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Requests, agent_routes, cluster_pki, relay_routes, serve};
use plexus_apiserver::{ApiListen, ApiServer, ApiServerConfig, EtcdSource};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, TlsFiles};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::node::{Node, NodeAddress, NodeAddressType};
use plexus_test_support::free_port;
use tokio::io::AsyncBufReadExt;

/// A process group started by the test; SIGKILLed on drop.
struct Group(tokio::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`), at most
/// 90 s; its stdout.
async fn chromium(url: &str, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1100",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .env("HOME", profile.path())
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run chromium (scripts/setup.sh installs Debian's chromium)");
    let mut group = Group(child);
    let mut stdout = group.0.stdout.take().unwrap();
    let mut stderr = group.0.stderr.take().unwrap();
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (a, b, status) = tokio::join!(
            tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out),
            tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut err),
            group.0.wait()
        );
        a.unwrap();
        b.unwrap();
        (status.unwrap(), out, err)
    };
    let (status, out, err) = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium did not finish within 90s");
    assert!(
        status.success(),
        "chromium failed: {status}: {}",
        String::from_utf8_lossy(&err)
    );
    drop(group);
    String::from_utf8_lossy(&out).to_string()
}

/// One plain HTTP/1.1 exchange with the proxy; the whole answer (the request asks the server
/// to close).
fn http(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
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

fn api_files(pki: &Path) -> plexus_agent_api::tls::TlsFiles {
    plexus_agent_api::tls::TlsFiles {
        ca: pki.join("ca.crt"),
        cert: pki.join("apiserver.crt"),
        key: pki.join("apiserver.key"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_renders_the_mesh_services_and_flows_in_chromium() {
    plexus_kvstore::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = cluster_pki(dir.path());
    let etcd_port = free_port().unwrap();
    let agent_port = free_port().unwrap();
    let cluster = ClusterInfo::new("cluster1", 1, MaxConnectedClusters::Max255).unwrap();
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
    config.agent_port = agent_port;
    tokio::time::timeout(Duration::from_secs(240), async {
        let server = ApiServer::start(config).await.unwrap();
        let pki_dir = pki.dir().to_path_buf();
        let kv: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(
                EtcdConfig::new(vec![format!("https://127.0.0.1:{etcd_port}")]).with_tls(
                    TlsFiles {
                        ca_file: pki_dir.join("ca.crt"),
                        cert_file: pki_dir.join("admin.crt"),
                        key_file: pki_dir.join("admin.key"),
                    },
                ),
            )
            .await
            .unwrap(),
        );
        kv.put(
            "cilium/state/nodes/v1/cluster1/node2",
            node("node2", "127.0.0.1"),
            None,
        )
        .await
        .unwrap();

        // The agent of node2 (canned answers), at its InternalIP and the agents' port.
        let agent_requests = Requests::default();
        let _agent = serve(
            &common::server_files(&pki, "agent"),
            agent_port,
            agent_routes(agent_requests.clone()),
            agent_requests,
        )
        .await;

        // The web view as the apiserver serves it, beside the relay's flows (canned).
        let files = api_files(&pki_dir);
        let agent_tls =
            plexus_agent_api::tls::client_config(&files.ca, Some((&files.cert, &files.key)))
                .unwrap();
        let ui = plexus_apiserver::ui::router(plexus_apiserver::ui::UiState::new(
            "cluster1",
            kv.clone(),
            agent_port,
            agent_tls,
        ));
        let relay_requests = Requests::default();
        let api = serve(
            &files,
            0,
            ui.merge(relay_routes(relay_requests.clone())),
            relay_requests.clone(),
        )
        .await;

        // plexus ui, to that API with the context's admin certificate.
        let config_file = dir.path().join("config.yaml");
        common::write_config(&config_file, dir.path(), &api.addr, &[]);
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
            .arg("--config")
            .arg(&config_file)
            .args(["ui", "--port", "0"])
            .process_group(0)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut proxy = Group(child);
        let mut stdout = tokio::io::BufReader::new(proxy.0.stdout.take().unwrap()).lines();
        let banner = stdout.next_line().await.unwrap().unwrap();
        let url = banner
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no URL in {banner:?}"))
            .to_string();
        assert!(url.ends_with("/ui"), "{banner}");
        let proxy_addr = url
            .trim_start_matches("http://")
            .trim_end_matches("/ui")
            .to_string();

        // The proxy: the page through it, refusals, and a following stream that arrives while
        // it stays open.
        let addr = proxy_addr.clone();
        tokio::task::spawn_blocking(move || {
            let host = format!("Host: {addr}\r\nConnection: close\r\n");
            let page = http(&addr, &format!("GET /ui HTTP/1.1\r\n{host}\r\n"));
            assert!(page.starts_with("HTTP/1.1 200"), "{page}");
            assert!(page.contains("<title>Plexus</title>"), "{page}");
            assert!(
                page.to_ascii_lowercase()
                    .contains("content-security-policy")
            );
            let post = http(
                &addr,
                &format!("POST /ui HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n"),
            );
            assert!(post.starts_with("HTTP/1.1 405"), "{post}");
            let foreign = http(
                &addr,
                "GET /ui HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n",
            );
            assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
            let req = plexus_flow::FlowRequest {
                follow: true,
                ..Default::default()
            };
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            write!(
                s,
                "GET /v1/flows?request={} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
                req.to_query_value()
            )
            .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The fake relay never ends a following stream: every line must come through
            // the proxy while it is open.
            while !String::from_utf8_lossy(&got).contains("HUBBLE_RING_BUFFER") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the proxy closed the stream");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap();
        assert!(relay_requests.lock().unwrap().last().unwrap().follow);

        // Chromium: the DOM after the page's scripts ran.
        let page = format!("{url}?follow=0");
        let dom = chromium(&page, &["--dump-dom".to_string()]).await;
        for needle in [
            "cluster cluster1",
            r#"data-cluster="cluster2""#,
            "ready",
            "2 nodes · 6 endpoints · 5 identities · 1 shared services",
            r#"data-node="cluster1/node2""#,
            r#"data-node="cluster2/node1""#,
            r#"data-service="default/rebel-base""#,
            "10.2.1.7 (active)",
            r#"<tr class="flow dropped""#,
            "Policy denied",
            "✖ ",
            "default/x-wing:41234 (ID:38354) [cluster1]",
            "EVENTS LOST: HUBBLE_RING_BUFFER 3",
            "3/4 nodes (unavailable: cluster2/node2: connection refused)",
            "relay reaches 3/4 nodes",
        ] {
            assert!(dom.contains(needle), "{needle:?} not in the page:\n{dom}");
        }
        assert!(!dom.contains("The mesh is unavailable"), "{dom}");
        assert!(!dom.contains("The services are unavailable"), "{dom}");
        let req = relay_requests.lock().unwrap().last().unwrap().clone();
        assert!(!req.follow, "{req:?}");
        assert_eq!(req.number, Some(100));

        // A screenshot for people.
        let png = common::artifacts_dir().join("ui.png");
        let _ = std::fs::remove_file(&png);
        chromium(&page, &[format!("--screenshot={}", png.display())]).await;
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            png.display()
        );

        // With the agent gone, the page says the mesh and services are unavailable.
        drop(_agent);
        let dom = chromium(&page, &["--dump-dom".to_string()]).await;
        assert!(dom.contains("The mesh is unavailable"), "{dom}");
        assert!(dom.contains("The services are unavailable"), "{dom}");
        assert!(dom.contains(r#"<tr class="flow dropped""#), "{dom}");

        drop(proxy);
        server.shutdown().await;
    })
    .await
    .unwrap();
}
