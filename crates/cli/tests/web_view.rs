//! The web view in headless Chromium (Debian's `chromium`), through `plexus ui`.
//!
//! An apiserver runs in-process (its real etcd holds the cluster's node; its certificates are
//! the cluster's). The page, its files and its `/ui/api/` endpoints are the apiserver's web
//! view (`plexus_apiserver::ui::router`), served with the apiserver's API certificate beside
//! a fake relay's `/v1/flows` and `/v1/relay/nodes` (canned lines: the relay is not part of
//! this crate's apiserver yet). The `/ui/api/` endpoints ask a fake agent (real mutual TLS) at
//! the node's InternalIP. `plexus ui` proxies a local port to that API with the context's
//! admin certificate; the proxy's checks (GET only, its own Host only, streaming) are tested
//! with plain HTTP, then Chromium loads `/ui?follow=0` and the test asserts on the DOM once
//! the page's scripts ran: the clusters, a node, the service row with its backends by cluster,
//! flow rows with the drop marked, and the relay's `3/4 nodes`. A screenshot is kept as
//! `<target>/test-artifacts/ui.png`.
//!
//! Chromium is driven over the DevTools protocol on a pipe, and the test waits for the page's
//! own "settled" marks rather than `--dump-dom --virtual-time-budget`: virtual time does not
//! wait for a fetch's streamed body, so a dump could catch the flow table half read.
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

/// Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
/// JSON messages ended by NUL, commands on its fd 3, answers on its fd 4; two FIFOs here). The
/// test waits until the page says every part settled (`<body data-mesh data-services
/// data-relay data-flows>`), not for a time.
struct Browser {
    group: Group,
    to: std::fs::File,
    from: std::io::BufReader<std::fs::File>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` (blocking: call from a blocking thread); its process group id
    /// goes to `pid` as soon as it runs.
    fn start(url: &str, pid: std::sync::mpsc::Sender<u32>) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let to_path = profile.path().join("cdp-in");
        let from_path = profile.path().join("cdp-out");
        for p in [&to_path, &from_path] {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        let child = tokio::process::Command::new("bash")
            .args([
                "-c",
                r#"exec chromium "$@" 3<"$CDP_IN" 4>"$CDP_OUT""#,
                "chromium",
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
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .env("CDP_IN", &to_path)
            .env("CDP_OUT", &from_path)
            .env("HOME", profile.path())
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run chromium (scripts/setup.sh installs Debian's chromium)");
        let group = Group(child);
        let _ = pid.send(group.0.id().unwrap());
        // bash opens fd 3 (our writing end) first, then fd 4 (our reading end).
        let to = std::fs::OpenOptions::new()
            .write(true)
            .open(&to_path)
            .unwrap();
        let from = std::io::BufReader::new(std::fs::File::open(&from_path).unwrap());
        let mut b = Self {
            group,
            to,
            from,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let targets = b.call("Target.getTargets", serde_json::json!({}), false);
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap_or_else(|| panic!("no page target: {targets}"))["targetId"]
            .clone();
        let attached = b.call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": page, "flatten": true}),
            false,
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// One command (on the page's session when `on_page`); its result.
    fn call(
        &mut self,
        method: &str,
        params: serde_json::Value,
        on_page: bool,
    ) -> serde_json::Value {
        use std::io::BufRead;
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if on_page {
            msg["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).unwrap();
            assert!(
                n > 0,
                "chromium closed its DevTools pipe (is Debian's chromium installed? \
                 scripts/setup.sh installs it)"
            );
            buf.pop();
            let answer: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            if answer["id"] != id {
                continue; // an event, or another session's answer
            }
            assert!(answer.get("error").is_none(), "{method}: {answer}");
            return answer["result"].clone();
        }
    }

    /// Evaluates `expr` in the page; its value.
    fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expr, "returnByValue": true}),
            true,
        );
        r["result"]["value"].clone()
    }

    /// Waits until the page's JavaScript condition `until` holds; the DOM then.
    fn dom_when(&mut self, until: &str) -> String {
        while self.eval(until) != serde_json::Value::Bool(true) {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.eval("document.documentElement.outerHTML")
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A PNG of the page.
    fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let r = self.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
            true,
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.group.0.start_kill();
    }
}

/// Every part of the page settled, the flow history read to its end.
const SETTLED: &str = "(() => { const d = document.body && document.body.dataset; \
    return !!d && !!d.mesh && !!d.services && !!d.relay \
      && ['done', 'unavailable'].includes(d.flows); })()";

/// Opens `url` in a fresh headless Chromium (at most 90 s): the DOM once the JavaScript
/// condition `until` holds, and a screenshot into `png` when given. Chromium is killed when
/// this returns or the test fails.
async fn in_browser(url: &str, until: &str, png: Option<std::path::PathBuf>) -> String {
    let url = url.to_string();
    let until = until.to_string();
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let mut task = tokio::task::spawn_blocking(move || {
        let mut b = Browser::start(&url, pid_tx);
        let dom = b.dom_when(&until);
        if let Some(p) = png {
            b.screenshot(&p);
        }
        dom
    });
    match tokio::time::timeout(Duration::from_secs(90), &mut task).await {
        Ok(dom) => dom.unwrap(),
        Err(_) => {
            // The blocked thread owns the browser: kill its group, so the thread's next read
            // of the DevTools pipe ends and nothing is left running.
            if let Ok(pid) = pid_rx.try_recv() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = task.await;
            panic!("the page did not settle in Chromium within 90s");
        }
    }
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
    config.relay.agent_port = agent_port;
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

        let api_addr = api.addr.clone();
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

        // Chromium: the DOM once the page's parts settled, and a screenshot of it.
        let page = format!("{url}?follow=0");
        let png = common::artifacts_dir().join("ui.png");
        let _ = std::fs::remove_file(&png);
        let dom = in_browser(&page, SETTLED, Some(png.clone())).await;
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
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            png.display()
        );

        // The filters: form fields and typed observe flags become the request plexus observe
        // would send (--not included); a bad flag is shown, naming it.
        let filtered = format!(
            "{url}?follow=0&last=7&to-cluster=cluster1&more={}",
            plexus_flow::filter::percent_encode("--not --from-pod default/x-wing --type=drop")
        );
        in_browser(&filtered, SETTLED, None).await;
        let req = relay_requests.lock().unwrap().last().unwrap().clone();
        assert_eq!(req.number, Some(7));
        assert_eq!(req.whitelist[0].destination_cluster_name, ["cluster1"]);
        assert_eq!(req.whitelist[0].event_type.len(), 1, "{req:?}");
        assert_eq!(req.blacklist[0].source_pod, ["default/x-wing"], "{req:?}");
        let asked = relay_requests.lock().unwrap().len();
        let bad = format!("{url}?follow=0&more=--verdict%20LOST");
        let dom = in_browser(&bad, SETTLED, None).await;
        assert!(
            dom.contains(r#"data-flows="unavailable""#)
                && dom.contains("Flows unavailable: 400 --verdict \"LOST\""),
            "{dom}"
        );
        assert_eq!(relay_requests.lock().unwrap().len(), asked);

        // Following (the page's default): the live table fills while the relay's answer stays
        // open, through the proxy.
        let dom = in_browser(
            &url,
            "document.body.dataset.flows === 'streaming' \
               && document.querySelectorAll('#flow-rows tr').length === 4",
            None,
        )
        .await;
        assert!(dom.contains(r#"<tr class="flow dropped""#), "{dom}");
        assert!(dom.contains(r#"data-flows="streaming""#), "{dom}");
        let req = relay_requests.lock().unwrap().last().unwrap().clone();
        assert!(req.follow, "{req:?}");

        // With the agent gone, the page says the mesh and services are unavailable; the flows
        // still show.
        _agent.stop().await;
        let dom = in_browser(&page, SETTLED, None).await;
        assert!(dom.contains("The mesh is unavailable"), "{dom}");
        assert!(dom.contains("The services are unavailable"), "{dom}");
        assert!(dom.contains(r#"<tr class="flow dropped""#), "{dom}");

        // With the relay gone, the proxy says which relay did not answer.
        api.stop().await;
        let addr = proxy_addr.clone();
        let relay = api_addr.clone();
        let answer = tokio::task::spawn_blocking(move || {
            http(
                &addr,
                &format!("GET /ui HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
            )
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert!(
            answer.contains(&format!("the relay at {relay} did not answer /ui")),
            "{answer}"
        );

        drop(proxy);
        server.shutdown().await;
    })
    .await
    .unwrap();
}
