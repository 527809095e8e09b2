//! `plexus node join` end to end: a real `plexus-apiserver` with its TLS etcd, the CLI as a
//! process, and a `plexus-agent` (fake datapath) started with exactly the files the join wrote.
//!
//! It checks what a host gets (modes 0600/0700, agent.yaml's keys), that the node's own etcd
//! user is enough for the agent to register and to allocate an endpoint's identity, that it can
//! write neither another node's key nor the cluster config, and the refusals: a taken name, an
//! output directory of another node.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use plexus_test_support::{free_port, workspace_bin};
use serde_json::Value;

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if start.elapsed() > limit => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

struct Setup {
    root: tempfile::TempDir,
    etcd: String,
    _apiserver: Proc,
}

impl Setup {
    fn config(&self) -> PathBuf {
        self.root.path().join("config.yaml")
    }

    fn pki(&self) -> PathBuf {
        self.root.path().join("apiserver/pki")
    }

    fn plexus(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("plexus"))
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap()
    }

    fn join(&self, node: &str, ip: &str, out: &Path, extra: &[&str]) -> Output {
        let out = out.to_str().unwrap();
        let mut args = vec![
            "--context",
            "c1",
            "node",
            "join",
            "--node-name",
            node,
            "--node-ip",
            ip,
            "--pod-cidr",
            "10.1.0.0/16",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        self.plexus(&args)
    }

    /// etcdctl with a client certificate; its output.
    fn etcdctl(&self, ca: &Path, cert: &Path, key: &Path, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd))
            .arg(format!("--cacert={}", ca.display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .args(args)
            .output()
            .unwrap()
    }

    fn admin(&self, args: &[&str]) -> String {
        let pki = self.pki();
        let out = self.etcdctl(
            &pki.join("ca.crt"),
            &pki.join("admin.crt"),
            &pki.join("admin.key"),
            args,
        );
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

fn start() -> Setup {
    let root = tempfile::tempdir().unwrap();
    let (etcd_port, peer_port, http_port) = (
        free_port().unwrap(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let state = root.path().join("apiserver");
    std::fs::create_dir_all(&state).unwrap();
    let log = std::fs::File::create(root.path().join("apiserver.log")).unwrap();
    let apiserver = Proc(
        Command::new(workspace_bin("plexus-apiserver"))
            .args(["--cluster-name", "c1", "--cluster-id", "1"])
            .arg("--state-dir")
            .arg(&state)
            .arg(format!("--etcd-listen=127.0.0.1:{etcd_port}"))
            .arg(format!("--etcd-peer-listen=127.0.0.1:{peer_port}"))
            .arg(format!("--http-listen=127.0.0.1:{http_port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let etcd = format!("https://127.0.0.1:{etcd_port}");
    std::fs::write(
        root.path().join("config.yaml"),
        format!(
            "current-context: c1\ncontexts:\n- name: c1\n  cluster-id: 1\n  state-dir: {s}\n  etcd-endpoints: [{etcd}]\n  apiserver: 127.0.0.1:{http_port}\n  clustermesh-dir: {s}/clustermesh\n",
            s = state.display()
        ),
    )
    .unwrap();
    let setup = Setup {
        root,
        etcd,
        _apiserver: apiserver,
    };
    let log = setup.root.path().join("apiserver.log");
    wait_for("apiserver ready", Duration::from_secs(60), || {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{http_port}/readyz")])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::fs::read_to_string(&log).unwrap_or_default())
        }
    });
    setup
}

/// Runs `test` on its own thread and fails when it has not finished within `limit`.
fn within(limit: Duration, test: fn()) {
    let (tx, rx) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        test();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(runner.join().unwrap_err())
        }
        Err(_) => panic!("node join test did not finish within {limit:?}"),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_joined_node_runs_its_agent_as_its_own_etcd_user() {
    within(Duration::from_secs(240), joined_node);
}

fn joined_node() {
    let s = start();
    let out = s.root.path().join("h1");
    let joined = s.join("h1", "127.0.0.1", &out, &["-o", "json"]);
    assert!(joined.status.success(), "join h1: {}", text(&joined));
    let report: Value = serde_json::from_slice(&joined.stdout).unwrap();
    assert_eq!(report["etcd-user"], "node-c1-h1");
    assert_eq!(report["agent-address"], "127.0.0.1:9965");

    // What the host gets: secrets only its owner reads.
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("pki")), 0o700);
    for f in [
        "agent.yaml",
        "pki/ca.crt",
        "pki/etcd-client.crt",
        "pki/etcd-client.key",
        "pki/api.crt",
        "pki/api.key",
    ] {
        assert_eq!(mode(&out.join(f)), 0o600, "{f}");
    }
    let yaml: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(out.join("agent.yaml")).unwrap()).unwrap();
    assert_eq!(yaml["node-name"], "h1");
    assert_eq!(yaml["cluster-name"], "c1");
    assert_eq!(yaml["etcd-cert"], "/etc/plexus/pki/etcd-client.crt");
    assert_eq!(yaml["etcd-endpoints"][0], s.etcd.as_str());
    assert_eq!(yaml["api-listen"], "127.0.0.1:9965");
    assert!(
        yaml.get("enable-wireguard").is_none(),
        "a cluster without encryption: {yaml}"
    );
    // The context now lists the node's agent.
    let cfg = std::fs::read_to_string(s.config()).unwrap();
    assert!(
        cfg.contains("node: h1") && cfg.contains("127.0.0.1:9965"),
        "{cfg}"
    );

    // The node's user may write its own node key, not another node's nor the cluster config.
    let (ca, cert, key) = (
        out.join("pki/ca.crt"),
        out.join("pki/etcd-client.crt"),
        out.join("pki/etcd-client.key"),
    );
    let own = s.etcdctl(
        &ca,
        &cert,
        &key,
        &["put", "cilium/state/nodes/v1/c1/h1", "{}"],
    );
    assert!(own.status.success(), "own node key: {}", text(&own));
    for other in [
        "cilium/state/nodes/v1/c1/h2",
        "cilium/cluster-config/c1",
        "cilium/state/services/v1/c1/default/x",
        "plexus/objects/v1/services/default/x",
    ] {
        let denied = s.etcdctl(&ca, &cert, &key, &["put", other, "{}"]);
        assert!(
            !denied.status.success() && text(&denied).contains("permission denied"),
            "{other}: {}",
            text(&denied)
        );
    }
    s.admin(&["del", "cilium/state/nodes/v1/c1/h1"]);

    // The agent runs with exactly these files (their paths on this "host": the join's --out).
    let socket = s.root.path().join("h1.sock");
    let log = s.root.path().join("agent.log");
    let _agent = Proc(
        Command::new(workspace_bin("plexus-agent"))
            .args(["--cluster-name", "c1", "--cluster-id", "1"])
            .args(["--node-name", "h1", "--node-ip", "127.0.0.1"])
            .args(["--pod-cidr", "10.1.0.0/16", "--datapath", "fake"])
            .arg("--state-dir")
            .arg(s.root.path().join("agent"))
            .arg(format!("--etcd-endpoints={}", s.etcd))
            .arg("--etcd-ca")
            .arg(&ca)
            .arg("--etcd-cert")
            .arg(&cert)
            .arg("--etcd-key")
            .arg(&key)
            .arg("--clustermesh-config")
            .arg(s.root.path().join("clustermesh"))
            .arg("--api-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("h1 registered", Duration::from_secs(60), || {
        let got = s.admin(&["get", "--keys-only", "cilium/state/nodes/v1/c1/h1"]);
        if got.contains("h1") {
            Ok(())
        } else {
            Err(std::fs::read_to_string(&log).unwrap_or_default())
        }
    });
    // An endpoint: the agent allocates its identity and publishes its ip entry as node-c1-h1.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = plexus_agent_api::Client::new(plexus_agent_api::Endpoint::Unix(socket))
        .with_timeout(Duration::from_secs(10));
    let ep = rt
        .block_on(async {
            let ipam = client
                .ipam(&plexus_agent_api::IpamRequest {
                    owner: "ctr1".into(),
                })
                .await?;
            client
                .put_endpoint(&plexus_agent_api::EndpointRequest {
                    container_id: "ctr1".into(),
                    netns: "/nonexistent".into(),
                    ifname: "eth0".into(),
                    host_ifname: "lxc1".into(),
                    host_mac: "02:00:00:00:00:01".into(),
                    pod_mac: "02:00:00:00:00:02".into(),
                    ip: ipam.ip,
                    namespace: "default".into(),
                    pod_name: "web".into(),
                    labels: [("app".to_string(), "web".to_string())].into(),
                    ports: Default::default(),
                    workload: Default::default(),
                })
                .await
        })
        .unwrap_or_else(|e| {
            panic!(
                "endpoint as node-c1-h1: {e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    assert!(ep.identity >= 256, "{ep:?}");
    wait_for(
        "ip entry and identity published",
        Duration::from_secs(30),
        || {
            let ips = s.admin(&["get", "--prefix", "--keys-only", "cilium/state/ip/v1/"]);
            let ids = s.admin(&[
                "get",
                "--prefix",
                "--keys-only",
                "cilium/state/identities/v1/id/",
            ]);
            if ips.contains(&ep.ip.to_string()) && ids.contains(&ep.identity.to_string()) {
                Ok(())
            } else {
                Err(format!("ip: {ips} identities: {ids}"))
            }
        },
    );

    // Refusals: the name is taken now; h1's directory is not h2's; same node needs --overwrite.
    let again = s.join("h1", "127.0.0.2", &s.root.path().join("h1b"), &[]);
    assert!(!again.status.success());
    let err = text(&again);
    assert!(
        err.contains("node name h1 is already taken in cluster c1"),
        "{err}"
    );
    assert!(
        !s.root.path().join("h1b").exists(),
        "nothing written: {err}"
    );
    let into_h1 = s.join("h2", "127.0.0.3", &out, &[]);
    assert!(!into_h1.status.success());
    assert!(
        text(&into_h1).contains("holds the files of another node (h1"),
        "{}",
        text(&into_h1)
    );
    let same = s.join("h1", "127.0.0.1", &out, &[]);
    assert!(!same.status.success());
    assert!(text(&same).contains("--overwrite"), "{}", text(&same));
}

/// A cluster whose context says `encryption: wireguard` gets agents that encrypt.
#[test]
fn a_context_that_encrypts_gets_agents_that_do() {
    within(Duration::from_secs(120), joined_with_encryption);
}

fn joined_with_encryption() {
    let s = start();
    let mut cfg: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(s.config()).unwrap()).unwrap();
    cfg["contexts"][0]["encryption"] = "wireguard".into();
    std::fs::write(s.config(), serde_norway::to_string(&cfg).unwrap()).unwrap();
    let out = s.root.path().join("h1");
    let joined = s.join("h1", "127.0.0.1", &out, &[]);
    assert!(joined.status.success(), "join h1: {}", text(&joined));
    let yaml: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(out.join("agent.yaml")).unwrap()).unwrap();
    assert_eq!(yaml["enable-wireguard"], true, "{yaml}");
    // The agent reads the file it got (strict: an unknown key would be refused).
    let agent: plexus_config::AgentConfig =
        serde_norway::from_str(&std::fs::read_to_string(out.join("agent.yaml")).unwrap()).unwrap();
    assert_eq!(agent.enable_wireguard, Some(true));
}
