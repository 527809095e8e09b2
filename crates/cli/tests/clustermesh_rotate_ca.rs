//! `plexus clustermesh rotate-ca` on a real 2-cluster mesh: two `plexus-apiserver`s with their
//! own TLS etcd, an agent per cluster (`plexus-agent` processes reading each other's etcd over
//! mutual TLS), the CLI as a process. c2 publishes ipcache entries all along; the CA shared by
//! both clusters is replaced while they are connected. Afterwards c1's agent holds every entry
//! c2 wrote before, during and after the rotation, both agents are connected to the other
//! cluster, every certificate and CA file is the new CA's, and the old CA's certificates are
//! refused.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, TlsFiles};
use plexus_test_support::{free_port, workspace_bin};
use serde_json::Value;

/// A child process stopped when dropped.
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
    procs: Vec<Proc>,
}

impl Cluster {
    fn new(root: &Path, name: &str, id: u32) -> Self {
        Self {
            name: name.into(),
            id,
            dir: root.join(name),
            etcd_port: free_port().unwrap(),
            peer_port: free_port().unwrap(),
            http_port: free_port().unwrap(),
            procs: Vec::new(),
        }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.etcd_port)
    }

    fn node(&self) -> String {
        format!("{}-node1", self.name)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.node()))
    }

    fn context_yaml(&self) -> String {
        format!(
            "- name: {n}\n  cluster-id: {id}\n  state-dir: {d}\n  etcd-endpoints: [{e}]\n  apiserver: 127.0.0.1:{h}\n  clustermesh-dir: {d}/clustermesh\n  agents:\n  - node: {node}\n    socket: {s}\n",
            n = self.name,
            id = self.id,
            d = self.dir.display(),
            e = self.endpoint(),
            h = self.http_port,
            node = self.node(),
            s = self.socket().display(),
        )
    }

    fn start_apiserver(&mut self) {
        let log = std::fs::File::create(self.dir.join("apiserver.log")).unwrap();
        let child = Command::new(workspace_bin("plexus-apiserver"))
            .args(["--cluster-name", &self.name])
            .args(["--cluster-id", &self.id.to_string()])
            .arg("--state-dir")
            .arg(&self.dir)
            .arg(format!("--etcd-listen=127.0.0.1:{}", self.etcd_port))
            .arg(format!("--etcd-peer-listen=127.0.0.1:{}", self.peer_port))
            .arg(format!("--http-listen=127.0.0.1:{}", self.http_port))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push(Proc(child));
    }

    fn start_agent(&mut self) {
        let pki = self.dir.join("pki");
        let cm = self.dir.join("clustermesh");
        std::fs::create_dir_all(&cm).unwrap();
        let node = self.node();
        let log = std::fs::File::create(self.dir.join(format!("{node}.log"))).unwrap();
        let child = Command::new(workspace_bin("plexus-agent"))
            .args(["--cluster-name", &self.name])
            .args(["--cluster-id", &self.id.to_string()])
            .args(["--node-name", &node])
            .arg(format!("--node-ip=192.168.{}.10", self.id))
            .arg(format!("--pod-cidr=10.{}.0.0/16", self.id * 10))
            .args(["--datapath", "fake"])
            .arg("--state-dir")
            .arg(self.dir.join(&node))
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
            .arg(self.socket())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push(Proc(child));
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let out = Command::new("curl")
                .args([
                    "-sf",
                    &format!("http://127.0.0.1:{}/readyz", self.http_port),
                ])
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "apiserver of {} not ready; log:\n{}",
            self.name,
            std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default()
        );
    }

    fn admin_files(&self, dir: &Path) -> TlsFiles {
        TlsFiles {
            ca_file: dir.join("ca.crt"),
            cert_file: dir.join("admin.crt"),
            key_file: dir.join("admin.key"),
        }
    }
}

struct Mesh {
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
        assert!(
            out.status.success(),
            "plexus {args:?} failed ({}):\n{text}",
            out.status
        );
        text
    }

    fn connection(&self, ctx: &str, remote: &str) -> Option<Value> {
        let out = self.plexus(&["clustermesh", "status", "--context", ctx, "-o", "json"]);
        let s: Value = serde_json::from_slice(&out.stdout).ok()?;
        s["connections"]
            .as_array()?
            .iter()
            .find(|c| c["cluster"] == remote)
            .cloned()
    }

    fn wait_connection(&self, ctx: &str, remote: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.connection(ctx, remote);
            if let Some(c) = &last
                && pred(c)
            {
                return c.clone();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{ctx}: connection to {remote} never as expected; last: {last:#?}");
    }
}

fn ip_entry(id: u32, i: usize) -> (String, Vec<u8>) {
    let ip = format!("10.{id}.{}.{}", i / 250, i % 250 + 1);
    let ident = (id << 16) | 256;
    (
        format!("cilium/state/ip/v1/default/{ip}"),
        format!(r#"{{"IP":"{ip}","Mask":null,"HostIP":"192.168.{id}.1","ID":{ident},"Key":0,"Metadata":""}}"#)
            .into_bytes(),
    )
}

/// Every certificate file under `dir` (`*.crt`, hidden ones aside), inspected.
fn certificates(dir: &Path) -> Vec<(PathBuf, Vec<plexus_pki::CertInfo>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".crt") {
            continue;
        }
        let pem = std::fs::read_to_string(e.path()).unwrap();
        out.push((e.path(), plexus_pki::inspect_bundle(&pem).unwrap()));
    }
    out
}

#[test]
fn rotate_ca_replaces_the_shared_ca_of_a_connected_mesh_without_loss() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        run();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(400)) {
        Ok(()) => test.join().unwrap(),
        Err(_) => match test.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("timed out"),
        },
    }
}

fn run() {
    let root = tempfile::tempdir().unwrap();
    let mut c1 = Cluster::new(root.path(), "c1", 1);
    let mut c2 = Cluster::new(root.path(), "c2", 2);
    let config = root.path().join("config.yaml");
    let mut yaml = String::from("current-context: c1\ncontexts:\n");
    for c in [&c1, &c2] {
        yaml.push_str(&c.context_yaml());
    }
    std::fs::write(&config, yaml).unwrap();
    let mesh = Mesh { config };

    mesh.ok(&["clustermesh", "enable", "--context", "c1", "--create-ca"]);
    mesh.ok(&[
        "clustermesh",
        "enable",
        "--context",
        "c2",
        "--ca-from-context",
        "c1",
    ]);
    for c in [&mut c1, &mut c2] {
        c.start_apiserver();
    }
    for c in [&c1, &c2] {
        c.wait_ready();
    }
    for c in [&mut c1, &mut c2] {
        c.start_agent();
    }
    mesh.ok(&[
        "clustermesh",
        "connect",
        "--context",
        "c1",
        "--destination-context",
        "c2",
    ]);
    let old_id = plexus_pki::inspect(&std::fs::read_to_string(c1.dir.join("pki/ca.crt")).unwrap())
        .unwrap()
        .key_id;
    // The old admin identity, kept aside: refused once the rotation is over.
    let old_dir = root.path().join("old-admin");
    std::fs::create_dir_all(&old_dir).unwrap();
    for f in ["ca.crt", "admin.crt", "admin.key"] {
        std::fs::copy(c1.dir.join("pki").join(f), old_dir.join(f)).unwrap();
    }

    // c2 publishes all along: a writer with c2's admin files (reloaded as they change).
    let written = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd2 = rt
        .block_on(EtcdBackend::connect(
            EtcdConfig::new(vec![c2.endpoint()]).with_tls(c2.admin_files(&c2.dir.join("pki"))),
        ))
        .unwrap();
    let writer = {
        let (written, stop, etcd) = (written.clone(), stop.clone(), etcd2.clone());
        rt.spawn(async move {
            for kind in ["nodes", "identities", "services", "ip"] {
                etcd.put(
                    &format!("cilium/synced/c2/cilium/state/{kind}/v1"),
                    b"x".to_vec(),
                    None,
                )
                .await
                .unwrap();
            }
            let mut failed_puts = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let i = written.load(Ordering::Relaxed);
                let (k, v) = ip_entry(2, i);
                // A put refused while etcd restarts is tried again: every entry gets written.
                match tokio::time::timeout(Duration::from_secs(5), etcd.put(&k, v, None)).await {
                    Ok(Ok(_)) => {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => failed_puts += 1,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            failed_puts
        })
    };
    mesh.wait_connection("c1", "c2", |c| {
        c["ready"] == 1 && c["endpoints"].as_u64() > Some(0)
    });
    mesh.wait_connection("c2", "c1", |c| c["ready"] == 1);

    let started = Instant::now();
    let out = mesh.ok(&[
        "clustermesh",
        "rotate-ca",
        "--context",
        "c1",
        "--grace",
        "3s",
    ]);
    let took = started.elapsed();
    println!("{out}");
    assert!(out.contains("3/3"), "{out}");
    let during = written.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let failed_puts = rt.block_on(writer).unwrap();
    let total = written.load(Ordering::Relaxed);
    println!(
        "rotate-ca took {took:?}; c2 wrote {total} entries ({during} by the end of the rotation), {failed_puts} puts retried"
    );

    // c1's agent reads c2 with the new certificates: every entry, before, during and after.
    let c = mesh.wait_connection("c1", "c2", |c| {
        c["ready"] == 1 && c["endpoints"].as_u64() == Some(total as u64)
    });
    assert_eq!(c["connected"], 1);
    mesh.wait_connection("c2", "c1", |c| c["ready"] == 1 && c["connected"] == 1);

    // Everything is the new CA's: one CA in every CA file, every leaf issued by it.
    let new_id = plexus_pki::inspect(&std::fs::read_to_string(c1.dir.join("pki/ca.crt")).unwrap())
        .unwrap()
        .key_id;
    assert_ne!(new_id, old_id);
    for c in [&c1, &c2] {
        for dir in [c.dir.join("pki"), c.dir.join("clustermesh")] {
            for (path, infos) in certificates(&dir) {
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                if name == "ca.crt" || name.ends_with("-ca.crt") {
                    let ids: Vec<_> = infos.iter().map(|i| i.key_id.clone()).collect();
                    assert_eq!(ids, std::slice::from_ref(&new_id), "{}", path.display());
                } else {
                    assert_eq!(infos[0].issuer_key_id, new_id, "{}", path.display());
                }
            }
        }
    }
    assert!(!c1.dir.join("pki/.ca-next.key").exists());
    // etcd restarted to trust the bundle, then the new CA alone (not for its leaf).
    for c in [&c1, &c2] {
        let log = std::fs::read_to_string(c.dir.join("apiserver.log")).unwrap();
        assert_eq!(log.matches("the CA file changed").count(), 2, "{}", c.name);
    }

    // The old CA is dropped: its certificates are refused; the new admin is accepted.
    rt.block_on(async {
        let old = EtcdBackend::connect(
            EtcdConfig::new(vec![c1.endpoint()]).with_tls(c1.admin_files(&old_dir)),
        )
        .await
        .unwrap();
        assert!(
            old.get("cilium/.heartbeat").await.is_err(),
            "old CA refused"
        );
        let new = EtcdBackend::connect(
            EtcdConfig::new(vec![c1.endpoint()]).with_tls(c1.admin_files(&c1.dir.join("pki"))),
        )
        .await
        .unwrap();
        assert!(new.get("cilium/.heartbeat").await.unwrap().is_some());
    });

    // status sees the new CA's certificates, none expiring.
    let out = mesh.plexus(&["clustermesh", "status", "--context", "c1", "-o", "json"]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["warnings"].as_array().unwrap().len(), 0, "{s:#}");
    drop(etcd2);
    drop(rt);
}
