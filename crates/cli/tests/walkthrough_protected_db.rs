//! The protected-db walkthrough (`examples/protected-db/README.md`) run as written, as root:
//! native routing, cluster ids 101 and 102, an L4 policy in cluster1 that lets employee of
//! cluster1 and employee of cluster2's `istio-space` reach protected-db on TCP 6379, and drops
//! stranger, shown by `monitor --type drop` as policy denials with identities and addresses.
//! With `policy-default-local-cluster` on (the default) and off, the outcome is the same.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use plexus_test_support::workspace_bin;
use serde_json::Value;

fn example(file: &str) -> String {
    format!(
        "{}/../../examples/protected-db/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

struct Lab {
    dir: PathBuf,
    config: PathBuf,
    down: bool,
}

impl Lab {
    fn plexus(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("plexus"))
            .env("PLEXUS_LAB_DIR", &self.dir)
            .env("PLEXUS_CONFIG", &self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.plexus(args);
        assert!(
            out.status.success(),
            "plexus {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn pods(&self, ctx: &str, ns: &str) -> Vec<Value> {
        let out = self.ok(&["--context", ctx, "get", "pods", "-n", ns, "-o", "json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Whether a TCP connection from `pod` to `target:6379` is answered by protected-db.
    fn reaches(&self, ctx: &str, ns: &str, pod: &str, target: &str) -> bool {
        let out = self.plexus(&[
            "--context",
            ctx,
            "exec",
            "-n",
            ns,
            pod,
            "--",
            "sh",
            "-c",
            &format!("nc -w 2 {target} 6379 </dev/null"),
        ]);
        String::from_utf8_lossy(&out.stdout).contains("protected-db")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.plexus(&["lab", "down"]);
        }
    }
}

fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// employee (cluster1), stranger (cluster1), employee (cluster2, istio-space) reach it?
fn outcome(lab: &Lab, db_ip: &str) -> [bool; 3] {
    [
        lab.reaches(
            "cluster1",
            "default",
            "statefulset/employee",
            "protected-db",
        ),
        lab.reaches(
            "cluster1",
            "default",
            "statefulset/stranger",
            "protected-db",
        ),
        lab.reaches("cluster2", "istio-space", "statefulset/employee", db_ip),
    ]
}

fn walkthrough(dir: PathBuf, config: PathBuf) {
    let mut lab = Lab {
        dir,
        config,
        down: false,
    };
    // 1. The lab, meshed.
    let out = lab.ok(&[
        "lab",
        "up",
        "-f",
        &example("lab.yaml"),
        "--mesh",
        "--name",
        "pdb",
    ]);
    assert!(out.contains("connected"), "{out}");

    // 2. Before any policy, everyone connects.
    lab.ok(&[
        "--context",
        "cluster1",
        "apply",
        "-f",
        &example("cluster1.yaml"),
    ]);
    lab.ok(&[
        "--context",
        "cluster2",
        "apply",
        "-f",
        &example("cluster2.yaml"),
    ]);
    let db = lab
        .pods("cluster1", "default")
        .into_iter()
        .find(|p| p["name"].as_str().unwrap().starts_with("protected-db"))
        .unwrap();
    let db_ip = db["ip"].as_str().unwrap().to_string();
    let db_node = db["node"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(60), "everyone connects", || {
        outcome(&lab, &db_ip) == [true, true, true]
    });

    // 3. The L4 policy: employees connect, stranger's SYNs are dropped as policy denials.
    let monitor_file = lab.dir.parent().unwrap().join("drops.txt");
    let mut monitor = Command::new(workspace_bin("plexus"))
        .env("PLEXUS_LAB_DIR", &lab.dir)
        .env("PLEXUS_CONFIG", &lab.config)
        .args([
            "--context",
            "cluster1",
            "--node",
            &db_node,
            "monitor",
            "--type",
            "drop",
        ])
        .stdout(std::fs::File::create(&monitor_file).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    lab.ok(&[
        "--context",
        "cluster1",
        "apply",
        "-f",
        &example("l4-policy.yaml"),
    ]);
    eventually(Duration::from_secs(20), "policy enforced", || {
        outcome(&lab, &db_ip) == [true, false, true]
    });
    for _ in 0..3 {
        assert_eq!(outcome(&lab, &db_ip), [true, false, true]);
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    let drops = std::fs::read_to_string(&monitor_file).unwrap();
    let stranger = lab
        .pods("cluster1", "default")
        .into_iter()
        .find(|p| p["name"].as_str().unwrap().starts_with("stranger"))
        .unwrap();
    let stranger_ip = stranger["ip"].as_str().unwrap().to_string();
    let ep = |pod: &str| -> Value {
        serde_json::from_str(&lab.ok(&[
            "--context",
            "cluster1",
            "endpoint",
            "get",
            pod,
            "-o",
            "json",
        ]))
        .unwrap()
    };
    let stranger_id = ep(stranger["name"].as_str().unwrap())["endpoint"]["identity"].clone();
    let db_ep = ep(db["name"].as_str().unwrap());
    let db_id = db_ep["endpoint"]["identity"].clone();
    let expected = format!("identity {stranger_id}->{db_id}: {stranger_ip}:");
    let line = drops
        .lines()
        .find(|l| l.starts_with("xx drop (Policy denied)") && l.contains(&expected))
        .unwrap_or_else(|| panic!("no denial {expected:?} in:\n{drops}"));
    assert!(line.contains(&format!("-> {db_ip}:6379 tcp SYN")), "{line}");
    assert_eq!(db_ep["policy"]["ingress-enforced"], true, "{db_ep}");

    // 4. The older any-cluster meaning of selectors without a cluster label: same outcome.
    lab.ok(&[
        "lab",
        "agent-options",
        "cluster1",
        "policy-default-local-cluster=false",
    ]);
    eventually(Duration::from_secs(30), "same outcome, option off", || {
        outcome(&lab, &db_ip) == [true, false, true]
    });
    lab.ok(&[
        "lab",
        "agent-options",
        "cluster1",
        "policy-default-local-cluster=true",
    ]);

    // Deleting the policy opens the door again.
    lab.ok(&[
        "--context",
        "cluster1",
        "delete",
        "-f",
        &example("l4-policy.yaml"),
    ]);
    eventually(Duration::from_secs(20), "policy removed", || {
        outcome(&lab, &db_ip) == [true, true, true]
    });
    lab.down = true;
    lab.ok(&["lab", "down"]);
}

#[test]
fn protected_db_walkthrough_runs_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, config) = (tmp.path().join("lab"), tmp.path().join("config.yaml"));
    let (tx, rx) = std::sync::mpsc::channel();
    let (d, c) = (dir.clone(), config.clone());
    let runner = std::thread::spawn(move || {
        walkthrough(d, c);
        let _ = tx.send(());
    });
    let limit = Duration::from_secs(420);
    match rx.recv_timeout(limit) {
        Ok(()) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(runner.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = Command::new(workspace_bin("plexus"))
                .env("PLEXUS_LAB_DIR", &dir)
                .env("PLEXUS_CONFIG", &config)
                .args(["lab", "down"])
                .output();
            panic!("the walkthrough did not finish within {limit:?}");
        }
    }
}
