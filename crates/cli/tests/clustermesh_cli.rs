//! `plexus clustermesh` end to end: three clusters, each a real `plexus-apiserver` with its own
//! TLS etcd, agents as `plexus-agent` processes, and the CLI as a process.
//!
//! c1 reads its remotes directly (two agents), c2 publishes state, c3 runs KVStoreMesh (its
//! agent reads only its own etcd). One shared CA (`enable --ca-from-context`).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plexus_test_support::{free_port, workspace_bin};
use serde_json::Value;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so the apiserver stops its etcd; SIGKILL if it lingers.
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

struct Cluster {
    name: String,
    id: u32,
    dir: PathBuf,
    etcd_port: u16,
    peer_port: u16,
    http_port: u16,
    kvstoremesh: bool,
    agents: Vec<String>,
    apiserver: Option<Proc>,
    agent_procs: Vec<Proc>,
}

impl Cluster {
    fn new(root: &Path, name: &str, id: u32, agents: &[&str], kvstoremesh: bool) -> Self {
        Self {
            name: name.into(),
            id,
            dir: root.join(name),
            etcd_port: free_port().unwrap(),
            peer_port: free_port().unwrap(),
            http_port: free_port().unwrap(),
            kvstoremesh,
            agents: agents.iter().map(|s| s.to_string()).collect(),
            apiserver: None,
            agent_procs: Vec::new(),
        }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.etcd_port)
    }

    fn socket(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.sock"))
    }

    fn context_yaml(&self) -> String {
        let mut s = format!(
            "- name: {n}\n  cluster-id: {id}\n  state-dir: {d}\n  etcd-endpoints: [{e}]\n  apiserver: 127.0.0.1:{h}\n  clustermesh-dir: {d}/clustermesh\n",
            n = self.name,
            id = self.id,
            d = self.dir.display(),
            e = self.endpoint(),
            h = self.http_port
        );
        if self.kvstoremesh {
            s.push_str(&format!(
                "  kvstoremesh-dir: {}/kvstoremesh\n",
                self.dir.display()
            ));
        }
        s.push_str("  agents:\n");
        for a in &self.agents {
            s.push_str(&format!(
                "  - node: {a}\n    socket: {}\n",
                self.socket(a).display()
            ));
        }
        s
    }

    fn start_apiserver(&mut self) {
        let mut cmd = Command::new(workspace_bin("plexus-apiserver"));
        cmd.args([
            "--cluster-name",
            &self.name,
            "--cluster-id",
            &self.id.to_string(),
        ])
        .arg("--state-dir")
        .arg(&self.dir)
        .arg(format!("--etcd-listen=127.0.0.1:{}", self.etcd_port))
        .arg(format!("--etcd-peer-listen=127.0.0.1:{}", self.peer_port))
        .arg(format!("--http-listen=127.0.0.1:{}", self.http_port));
        if self.kvstoremesh {
            let dir = self.dir.join("kvstoremesh");
            std::fs::create_dir_all(&dir).unwrap();
            cmd.arg("--kvstoremesh-config").arg(dir);
        }
        let log = std::fs::File::create(self.dir.join("apiserver.log")).unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        self.apiserver = Some(Proc(cmd.spawn().unwrap()));
    }

    fn start_agents(&mut self) {
        let pki = self.dir.join("pki");
        let cm = self.dir.join("clustermesh");
        std::fs::create_dir_all(&cm).unwrap();
        for (i, node) in self.agents.clone().into_iter().enumerate() {
            let state = self.dir.join(&node);
            let log = std::fs::File::create(self.dir.join(format!("{node}.log"))).unwrap();
            let child = Command::new(workspace_bin("plexus-agent"))
                .args([
                    "--cluster-name",
                    &self.name,
                    "--cluster-id",
                    &self.id.to_string(),
                ])
                .args(["--node-name", &node])
                .arg(format!("--node-ip=192.168.{}.{}", self.id, 10 + i))
                .arg(format!("--pod-cidr=10.{}.0.0/16", self.id * 10))
                .args(["--datapath", "fake"])
                .arg("--state-dir")
                .arg(&state)
                .arg(format!("--etcd-endpoints={}", self.endpoint()))
                .arg("--etcd-ca")
                .arg(pki.join("ca.crt"))
                .arg("--etcd-cert")
                .arg(pki.join("admin.crt"))
                .arg("--etcd-key")
                .arg(pki.join("admin.key"))
                .arg("--clustermesh-config")
                .arg(&cm)
                .arg("--api-socket")
                .arg(self.socket(&node))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            self.agent_procs.push(Proc(child));
        }
    }

    fn etcdctl(&self, cert: &str, args: &[&str]) -> std::process::Output {
        let pki = self.dir.join("pki");
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--cert={}",
                pki.join(format!("{cert}.crt")).display()
            ))
            .arg(format!(
                "--key={}",
                pki.join(format!("{cert}.key")).display()
            ))
            .args(args)
            .output()
            .unwrap()
    }
}

struct Mesh {
    _root: tempfile::TempDir,
    config: PathBuf,
}

impl Mesh {
    fn plexus(&self, args: &[&str]) -> std::process::Output {
        Command::new(workspace_bin("plexus"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.plexus(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "plexus {args:?} failed:\n{text}");
        text
    }

    fn status(&self, ctx: &str) -> Value {
        let out = self.plexus(&["clustermesh", "status", "--context", ctx, "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status -o json of {ctx} is not JSON ({e}):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Polls `status -o json` until `pred` holds on the connection to `remote` (or panics).
    fn wait_connection(
        &self,
        ctx: &str,
        remote: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.status(ctx);
            if let Some(c) = last["connections"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["cluster"] == remote))
                && pred(c)
            {
                return c.clone();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{ctx}: connection to {remote}: {what} never held; last status:\n{last:#}");
    }
}

/// Publishes, as c's admin, 2 nodes, 3 identities, a global service and `ips` ipcache entries,
/// then the sync canaries (no lease: the test owns them).
fn put_state(c: &Cluster, ips: usize) {
    use futures::StreamExt;
    use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, TlsFiles};
    let (name, id) = (c.name.clone(), c.id);
    let pki = c.dir.join("pki");
    let mut kvs: Vec<(String, String)> = Vec::new();
    // node0 owns the ipcache entries and the backend below (10.<id>.0.0/16 behind
    // 192.168.<id>.1): a remote's entries outside its nodes' pod CIDRs are refused.
    kvs.push((
        format!("cilium/state/nodes/v1/{name}/node0"),
        format!(r#"{{"Name":"node0","Cluster":"{name}","IPAddresses":[{{"Type":"InternalIP","IP":"192.168.{id}.1"}}],"IPv4AllocCIDR":{{"IP":"10.{id}.0.0","Mask":"//8AAA=="}},"ClusterID":{id}}}"#),
    ));
    kvs.push((
        format!("cilium/state/nodes/v1/{name}/node1"),
        format!(r#"{{"Name":"node1","Cluster":"{name}","ClusterID":{id}}}"#),
    ));
    for i in 0..3u32 {
        let ident = (id << 16) | (256 + i);
        kvs.push((
            format!("cilium/state/identities/v1/id/{ident}"),
            format!("k8s:app=a{i};k8s:io.cilium.k8s.policy.cluster={name};"),
        ));
    }
    kvs.push((
        format!("cilium/state/services/v1/{name}/default/rebel-base"),
        format!(r#"{{"cluster":"{name}","namespace":"default","name":"rebel-base","frontends":{{"10.96.0.10":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{"10.{id}.0.5":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"labels":{{}},"selector":{{}},"includeExternal":true,"shared":true,"clusterID":{id}}}"#),
    ));
    // Two entries c1 must refuse: a node claiming another cluster, malformed JSON.
    kvs.push((
        format!("cilium/state/nodes/v1/{name}/intruder"),
        r#"{"Name":"intruder","Cluster":"c1","ClusterID":1}"#.to_string(),
    ));
    kvs.push((
        "cilium/state/ip/v1/default/10.99.0.1".to_string(),
        "{not json".to_string(),
    ));
    let ident = (id << 16) | 256;
    for i in 0..ips {
        let ip = format!("10.{id}.{}.{}", i / 250, i % 250 + 1);
        kvs.push((
            format!("cilium/state/ip/v1/default/{ip}"),
            format!(r#"{{"IP":"{ip}","Mask":null,"HostIP":"192.168.{id}.1","ID":{ident},"Key":0,"Metadata":""}}"#),
        ));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let etcd =
                EtcdBackend::connect(EtcdConfig::new(vec![c.endpoint()]).with_tls(TlsFiles {
                    ca_file: pki.join("ca.crt"),
                    cert_file: pki.join("admin.crt"),
                    key_file: pki.join("admin.key"),
                }))
                .await
                .unwrap();
            let etcd = &etcd;
            futures::stream::iter(kvs)
                .map(|(k, v)| async move { etcd.put(&k, v.into_bytes(), None).await.unwrap() })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await;
            // Canaries last, as a publisher does.
            for kind in ["nodes", "identities", "services", "ip"] {
                etcd.put(
                    &format!("cilium/synced/{name}/cilium/state/{kind}/v1"),
                    b"2026-11-29T00:00:00Z".to_vec(),
                    None,
                )
                .await
                .unwrap();
            }
        })
        .await
        .unwrap();
    });
}

fn wait_ready(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{}/readyz", c.http_port)])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "apiserver of {} not ready; log:\n{}",
        c.name,
        std::fs::read_to_string(c.dir.join("apiserver.log")).unwrap_or_default()
    );
}

/// Established TCP connections of process `pid` to any of `ports` (loopback).
fn connections_to(pid: u32, ports: &[u16]) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy().to_string();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .map(|p| u16::from_str_radix(p, 16).unwrap());
            f[3] == "01" && inodes.contains(f[9]) && remote_port.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

#[test]
fn three_clusters_enable_connect_status_failover_and_disconnect() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        run();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(420)) {
        Ok(()) => test.join().unwrap(),
        Err(_) => match test.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("timed out"),
        },
    }
}

fn run() {
    let root = tempfile::tempdir().unwrap();
    let mut c1 = Cluster::new(root.path(), "c1", 1, &["c1-node1", "c1-node2"], false);
    let mut c2 = Cluster::new(root.path(), "c2", 2, &["c2-node1"], false);
    let mut c3 = Cluster::new(root.path(), "c3", 3, &["c3-node1"], true);
    // c4 reuses c2's id: connecting it must be refused.
    let c4 = Cluster::new(root.path(), "c4", 2, &[], false);
    let config = root.path().join("config.yaml");
    let mut yaml = String::from("current-context: c1\ncontexts:\n");
    for c in [&c1, &c2, &c3, &c4] {
        yaml.push_str(&c.context_yaml());
    }
    std::fs::write(&config, yaml).unwrap();
    let mesh = Mesh {
        _root: root,
        config,
    };

    // One shared CA, created before the clusters start, as a Cilium install would.
    let out = mesh.ok(&["clustermesh", "enable", "--context", "c1", "--create-ca"]);
    assert!(out.contains("CA created"), "{out}");
    for c in ["c2", "c3", "c4"] {
        mesh.ok(&[
            "clustermesh",
            "enable",
            "--context",
            c,
            "--ca-from-context",
            "c1",
        ]);
    }
    let ca = std::fs::read(c1.dir.join("pki/ca.crt")).unwrap();
    assert_eq!(std::fs::read(c3.dir.join("pki/ca.crt")).unwrap(), ca);

    for c in [&mut c1, &mut c2, &mut c3] {
        c.start_apiserver();
    }
    for c in [&c1, &c2, &c3] {
        wait_ready(c);
    }
    for c in [&mut c1, &mut c2, &mut c3] {
        c.start_agents();
    }
    put_state(&c2, 10_000);

    // Full mesh; connecting an id already in use is refused with a clear error.
    for (a, b) in [("c1", "c2"), ("c1", "c3"), ("c2", "c3")] {
        let out = mesh.ok(&[
            "clustermesh",
            "connect",
            "--context",
            a,
            "--destination-context",
            b,
        ]);
        assert!(
            out.contains(&format!("Connected cluster {a} and cluster {b}")),
            "{out}"
        );
    }
    let out = mesh.plexus(&[
        "clustermesh",
        "connect",
        "--context",
        "c1",
        "--destination-context",
        "c4",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("c4 has id 2, already used by cluster c2"),
        "{err}"
    );

    // c1's two agents see c2's state: exact counts.
    let c = mesh.wait_connection("c1", "c2", "2/2 ready with 10000 endpoints", |c| {
        c["ready"] == 2 && c["endpoints"] == 10_000
    });
    // 2 nodes published by the test and c2's agent's own node.
    assert_eq!(
        (
            c["nodes"].as_u64(),
            c["identities"].as_u64(),
            c["services"].as_u64()
        ),
        (Some(3), Some(3), Some(1))
    );
    assert_eq!(
        c["rejected"], 2,
        "a foreign node and malformed JSON are refused: {c}"
    );
    mesh.wait_connection("c1", "c3", "ready", |c| c["ready"] == 2);
    let metrics = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(c1.socket("c1-node1"))
        .arg("http://agent/metrics")
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("plexus_clustermesh_remote_cluster_readiness_status{source_cluster=\"c1\",target_cluster=\"c2\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("plexus_clustermesh_remote_cluster_rejected_entries_total{source_cluster=\"c1\",target_cluster=\"c2\"} 2"),
        "{metrics}"
    );
    let text = mesh.ok(&[
        "clustermesh",
        "status",
        "--context",
        "c1",
        "--wait",
        "--wait-duration",
        "60s",
    ]);
    assert!(
        text.contains("2/2 nodes are connected to all clusters"),
        "{text}"
    );
    assert!(text.contains("c2: 2/2 configured, 2/2 connected"), "{text}");

    // c3 reads through KVStoreMesh: same counts, and its agent holds one etcd connection.
    let c = mesh.wait_connection("c3", "c2", "ready through KVStoreMesh", |c| {
        c["ready"] == 1 && c["endpoints"] == 10_000 && c["kvstoremesh"]["ready"] == true
    });
    assert_eq!(c["nodes"], 3);
    let agent_pid = c3.agent_procs[0].0.id();
    let etcd_ports = [c1.etcd_port, c2.etcd_port, c3.etcd_port];
    assert_eq!(
        connections_to(agent_pid, &etcd_ports),
        1,
        "c3's agent holds one etcd connection"
    );

    // Remote credentials cannot write.
    let cm = c1.dir.join("clustermesh");
    let as_remote = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", c2.endpoint()))
            .arg(format!(
                "--cacert={}",
                cm.join("c2.etcd-client-ca.crt").display()
            ))
            .arg(format!(
                "--cert={}",
                cm.join("c2.etcd-client.crt").display()
            ))
            .arg(format!("--key={}", cm.join("c2.etcd-client.key").display()))
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_remote(&["put", "cilium/state/nodes/v1/c2/evil", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    // ...but can read what the wire format grants.
    let out = as_remote(&["get", "cilium/cluster-config/c2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"id\":2"));

    // c2 dies: c1 keeps its state and reports it not connected; KVStoreMesh keeps c3's cache.
    drop(c2.agent_procs.drain(..));
    drop(c2.apiserver.take());
    let c = mesh.wait_connection("c1", "c2", "not connected", |c| c["connected"] == 0);
    assert_eq!(c["endpoints"], 10_000, "state kept while c2 is away");
    let c = mesh.wait_connection("c3", "c2", "KVStoreMesh not connected", |c| {
        c["kvstoremesh"]["connected"] == false
    });
    assert_eq!(c["endpoints"], 10_000, "the cache stays while c2 is away");
    let s = mesh.status("c1");
    let errors = s["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["message"].as_str().unwrap().starts_with("c2:") && e["hint"].is_string()),
        "{s:#}"
    );

    // Disconnecting drains c2 from c1 (c2 is down: removing its user there only warns).
    let out = mesh.ok(&[
        "clustermesh",
        "disconnect",
        "--context",
        "c1",
        "--destination-context",
        "c2",
    ]);
    assert!(out.contains("c1 no longer reads c2"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = mesh.status("c1");
        let conns = s["connections"].as_array().unwrap();
        if conns.iter().all(|c| c["cluster"] != "c2") {
            break;
        }
        assert!(Instant::now() < deadline, "c2 still present: {s:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(!c1.dir.join("clustermesh/c2").exists());
    // c3 is untouched.
    mesh.wait_connection("c1", "c3", "still ready", |c| c["ready"] == 2);
    let _ = c1.etcdctl("admin", &["endpoint", "health"]);
}
