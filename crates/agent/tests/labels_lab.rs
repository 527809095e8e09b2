//! Label changes for real, as root: a lab of 2 meshed clusters (cluster1 with 2 nodes, cluster2
//! with 1), eBPF datapath. In both clusters `web` and `iperf` (`app: server`) admit only
//! `role: frontend` pods of cluster1 on TCP 80 and 5201; `client` (cluster1) starts with
//! `role: frontend`. Its labels change with `plexus label pod` (its Pod object in cluster1's
//! etcd):
//! - a change that keeps it allowed (a label added): two iperf3 streams, to the other node and
//!   to cluster2, run across the relabel and never break nor stall (data every second), and no
//!   packet of the client is dropped on either server's node;
//! - `role` removed: both servers stop admitting it (the verdict flips in the other cluster
//!   too, whose policy selects by the label);
//! - `role` back: both admit it again;
//! - its namespace labelled `quarantine: "true"` (`plexus label namespace`): cluster2, whose
//!   policy denies quarantined namespaces of cluster1, refuses it, cluster1 still admits it;
//!   the label removed, both admit it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use plexus_test_support::lab::{Lab, eventually, run_lab};
use serde_json::Value;

const LAB: &str = "clusters:
- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}
- {name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 1}
routing: tunnel
";

/// `web` (the built-in server on 80) and `iperf` (iperf3 on 5201) on node NODE, admitting
/// `role: frontend` of cluster1 (FROM: extra selector lines).
const SERVERS: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: server
spec:
  nodeName: NODE
  containers:
  - name: web
    image: nginx
    ports:
    - containerPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: iperf
  labels:
    app: server
spec:
  nodeName: NODE
  containers:
  - name: iperf
    image: iperf3
    command: [iperf3, -s]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: frontend-only
spec:
  endpointSelector:
    matchLabels:
      app: server
  ingress:
  - fromEndpoints:
    - matchLabels:
        role: frontendFROM
    toPorts:
    - ports:
      - port: '80'
        protocol: TCP
      - port: '5201'
        protocol: TCP
DENY";

/// cluster2 also refuses pods of cluster1 whose namespace is labelled `quarantine: "true"`.
const QUARANTINE: &str = "  ingressDeny:
  - fromEndpoints:
    - matchLabels:
        io.cilium.k8s.namespace.labels.quarantine: 'true'
        io.cilium.k8s.policy.cluster: cluster1
";

const CLIENT: &str = "apiVersion: v1
kind: Pod
metadata:
  name: client
  labels:
    app: client
    role: frontend
spec:
  nodeName: cluster1-node1
  containers:
  - name: client
    image: busybox
    command: [sleep, '3600']
";

/// `plexus label pod client CHANGES...` in cluster1 (its Pod object and the lab's record).
fn label_client(lab: &Lab, changes: &[&str]) {
    let mut args = vec!["--context", "cluster1", "label", "pod", "client"];
    args.extend_from_slice(changes);
    lab.ok(&args);
}

fn client_identity(lab: &Lab) -> u64 {
    let eps = lab.json(&[
        "--context",
        "cluster1",
        "--node",
        "cluster1-node1",
        "endpoint",
        "list",
        "-o",
        "json",
    ]);
    eps.as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"] == "client")
        .and_then(|e| e["identity"].as_u64())
        .unwrap_or_else(|| panic!("no client endpoint: {eps:#}"))
}

/// Whether the client gets an answer from `ip`'s web server (dropped packets: no answer).
fn reaches(lab: &Lab, ip: &str) -> bool {
    let out = lab.exec(
        "cluster1",
        "client",
        &["curl", "-s", "--max-time", "2", &format!("http://{ip}/")],
    );
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"cluster\"")
}

fn verdicts(lab: &Lab, targets: &[(&str, String)], allowed: bool) {
    let word = if allowed { "allowed" } else { "denied" };
    for (what, ip) in targets {
        eventually(
            Duration::from_secs(30),
            &format!("client -> {what} {word}"),
            || {
                if reaches(lab, ip) == allowed {
                    Ok(())
                } else {
                    Err(format!("still not {word}"))
                }
            },
        );
    }
}

/// An iperf3 stream of `secs` seconds from the client to `ip`, in a thread.
fn stream(lab: &Lab, ip: String, secs: u32) -> std::thread::JoinHandle<std::process::Output> {
    let cli = lab.cli();
    std::thread::spawn(move || {
        cli.command(&[
            "--context",
            "cluster1",
            "exec",
            "client",
            "--",
            "iperf3",
            "-c",
            &ip,
            "-t",
            &secs.to_string(),
            "-b",
            "20M",
            "-J",
        ])
        .output()
        .unwrap()
    })
}

fn check_stream(what: &str, out: std::process::Output) {
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: iperf3: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{what}: the stream broke: {report:#}");
    let intervals = report["intervals"].as_array().unwrap();
    assert!(!intervals.is_empty(), "{what}: {report:#}");
    for interval in intervals {
        assert!(
            interval["sum"]["bytes"].as_u64().unwrap() > 0,
            "{what}: a second without data: {report:#}"
        );
    }
}

fn relabel(mut lab: Lab) {
    let file = lab.write("lab.yaml", LAB);
    let out = lab.up(&file, &["--mesh"]);
    assert!(out.contains("nodes are connected to all clusters"), "{out}");
    lab.apply(
        "cluster1",
        "servers1.yaml",
        &SERVERS
            .replace("NODE", "cluster1-node2")
            .replace("FROM", "")
            .replace("DENY", ""),
    );
    lab.apply(
        "cluster2",
        "servers2.yaml",
        &SERVERS
            .replace("NODE", "cluster2-node1")
            .replace("FROM", "\n        io.cilium.k8s.policy.cluster: cluster1")
            .replace("DENY", QUARANTINE),
    );
    lab.apply("cluster1", "client.yaml", CLIENT);
    let client_ip = lab.pod_ip("cluster1", "client");
    let web = [
        ("cluster1 web", lab.pod_ip("cluster1", "web")),
        ("cluster2 web", lab.pod_ip("cluster2", "web")),
    ];
    verdicts(&lab, &web, true);

    // A change that keeps the client allowed: its streams survive the move to a new identity.
    let before = client_identity(&lab);
    let monitors = [
        lab.spawn_monitor("cluster1", "cluster1-node2", "drop"),
        lab.spawn_monitor("cluster2", "cluster2-node1", "drop"),
    ];
    let streams = [
        (
            "to cluster1-node2",
            stream(&lab, lab.pod_ip("cluster1", "iperf"), 8),
        ),
        (
            "to cluster2",
            stream(&lab, lab.pod_ip("cluster2", "iperf"), 8),
        ),
    ];
    // Data flows before the change.
    std::thread::sleep(Duration::from_secs(2));
    label_client(&lab, &["tier=one"]);
    eventually(Duration::from_secs(30), "the client relabelled", || {
        if client_identity(&lab) != before {
            Ok(())
        } else {
            Err("same identity".into())
        }
    });
    assert!(
        streams.iter().all(|(_, s)| !s.is_finished()),
        "the relabel must happen while the streams run"
    );
    for (what, s) in streams {
        check_stream(what, s.join().unwrap());
    }
    for monitor in monitors {
        let drops = monitor.finish();
        assert!(
            !drops.lines().any(|l| l.contains(&client_ip)),
            "a packet of the client was dropped during the relabel:\n{drops}"
        );
    }
    verdicts(&lab, &web, true);

    // `role` removed: denied in both clusters (the monitor shows the client's drops); back:
    // allowed again.
    let monitor = lab.spawn_monitor("cluster2", "cluster2-node1", "drop");
    label_client(&lab, &["role-"]);
    verdicts(&lab, &web, false);
    let drops = monitor.finish();
    assert!(
        drops.lines().any(|l| l.contains(&client_ip)),
        "the denied client's drops are seen:\n{drops}"
    );
    label_client(&lab, &["role=frontend"]);
    verdicts(&lab, &web, true);

    // Its namespace quarantined: cluster2 refuses it, cluster1 still admits it; and back.
    let namespace = |change: &str| {
        lab.ok(&[
            "--context",
            "cluster1",
            "label",
            "namespace",
            "default",
            change,
        ]);
    };
    namespace("quarantine=true");
    verdicts(&lab, &web[1..], false);
    verdicts(&lab, &web[..1], true);
    namespace("quarantine-");
    verdicts(&lab, &web, true);
    lab.down();
}

#[test]
fn a_label_change_flips_verdicts_and_keeps_allowed_connections() {
    run_lab("relabel", Duration::from_secs(300), relabel);
}
