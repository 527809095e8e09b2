//! The lab end to end, as root: 2 clusters x 2 nodes, once with VXLAN tunnels and once with
//! native routing. Pods reach pods on their node, the other node and both nodes of the other
//! cluster (ICMP, TCP, full-size packets); the receiver sees the true source address; trace
//! events on the receiving node carry the sender's identity; the listings of a cluster1 node
//! show cluster2; a TCP stream survives agent restarts; `lab down` leaves nothing behind.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use plexus_test_support::lab::{Lab, run_lab};
use serde_json::Value;

fn up(lab: &Lab, mode: &str) {
    let lab_file = lab.write(
        "lab.yaml",
        &format!(
            "clusters:\n- {{name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}}\n- {{name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 2}}\nrouting: {mode}\n"
        ),
    );
    let out = lab.up(&lab_file, &["--mesh"]);
    assert!(
        out.contains("2/2 nodes are connected to all clusters"),
        "{out}"
    );
}

const PODS: &str = "apiVersion: v1
kind: Service
metadata:
  name: rebel-base
  annotations:
    service.cilium.io/global: 'true'
spec:
  ports:
  - port: 80
  selector:
    name: rebel-base
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: rebel-base
spec:
  replicas: 2
  template:
    metadata:
      labels:
        name: rebel-base
    spec:
      containers:
      - name: rebel-base
        image: nginx
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels:
    app: client
spec:
  nodeName: NODE
  containers:
  - name: client
    image: busybox
    command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: iperf
  labels:
    app: iperf
spec:
  nodeName: NODE
  containers:
  - name: iperf
    image: iperf3
    command: [iperf3, -s]
";

fn apply(lab: &Lab, ctx: &str) {
    let file = lab.write(
        &format!("{ctx}.yaml"),
        &PODS.replace("NODE", &format!("{ctx}-node1")),
    );
    lab.ok(&["--context", ctx, "apply", "-f", file.to_str().unwrap()]);
}

fn run(mut lab: Lab, mode: &str, full_size: u32) {
    up(&lab, mode);
    apply(&lab, "cluster1");
    apply(&lab, "cluster2");
    let c1 = lab.pods("cluster1", "default");
    let c2 = lab.pods("cluster2", "default");
    let rebel = |pods: &[Value], node: &str| -> String {
        pods.iter()
            .find(|p| p["owner"] == "deployment/rebel-base" && p["node"] == node)
            .map(|p| p["ip"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no rebel-base on {node}: {pods:?}"))
    };
    let targets = [
        ("same node", rebel(&c1, "cluster1-node1"), "cluster1"),
        ("other node", rebel(&c1, "cluster1-node2"), "cluster1"),
        ("cluster2 node1", rebel(&c2, "cluster2-node1"), "cluster2"),
        ("cluster2 node2", rebel(&c2, "cluster2-node2"), "cluster2"),
    ];
    for (what, ip, cluster) in &targets {
        let out = lab.exec("cluster1", "client", &["ping", "-c", "2", "-W", "2", ip]);
        assert!(
            out.status.success(),
            "{mode}: ping {what} {ip}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let size = full_size.to_string();
        let out = lab.exec(
            "cluster1",
            "client",
            &["ping", "-M", "do", "-s", &size, "-c", "1", "-W", "2", ip],
        );
        assert!(
            out.status.success(),
            "{mode}: full-size ping {what} {ip}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let out = lab.exec(
            "cluster1",
            "client",
            &["curl", "-s", "--max-time", "5", &format!("http://{ip}/")],
        );
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{mode}: curl {what} {ip}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(answer["cluster"], *cluster, "{mode}: {what}");
    }

    // The receiver sees the client's own address.
    let client_ip = lab.pod_ip("cluster1", "client");
    let server_ip = lab.pod_ip("cluster2", "client");
    let listener = {
        let cli = lab.cli();
        std::thread::spawn(move || {
            cli.command(&[
                "--context",
                "cluster2",
                "exec",
                "client",
                "--",
                "nc",
                "-l",
                "-n",
                "-v",
                "-w",
                "5",
                "-p",
                "9000",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
        })
    };
    // The listener starts in its own process: connect until it accepts (nc -l serves one).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !listener.is_finished() {
        let sent = lab.exec(
            "cluster1",
            "client",
            &[
                "sh",
                "-c",
                &format!("echo hello | nc -N -w 2 {server_ip} 9000"),
            ],
        );
        if sent.status.success() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = listener.join().unwrap();
    let seen = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        seen.contains(&format!("Connection received on {client_ip} ")),
        "{mode}: the receiver should see {client_ip}: {seen}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));

    // Trace events on the receiving node carry the sender's identity and address.
    let endpoints = lab.json(&[
        "--context",
        "cluster1",
        "--node",
        "cluster1-node1",
        "endpoint",
        "list",
        "-o",
        "json",
    ]);
    let client_identity = endpoints
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"] == "client")
        .map(|e| e["identity"].as_u64().unwrap())
        .unwrap();
    let monitor = lab.spawn_monitor("cluster2", "cluster2-node1", "trace");
    lab.exec(
        "cluster1",
        "client",
        &["ping", "-c", "3", "-W", "2", &server_ip],
    );
    std::thread::sleep(Duration::from_millis(500));
    let events = monitor.finish();
    assert!(
        events.lines().any(|l| l.starts_with("-> endpoint")
            && l.contains(&format!("identity {client_identity}->"))
            && l.contains(&format!("{client_ip} -> {server_ip}"))),
        "{mode}: no trace of {client_ip} (identity {client_identity}) on cluster2-node1:\n{events}"
    );

    // Listings on a cluster1 node show cluster2.
    let nodes = lab.json(&["--context", "cluster1", "node", "list", "-o", "json"]);
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"cluster2-node1") && names.contains(&"cluster2-node2"),
        "{names:?}"
    );
    let ipcache = lab.json(&[
        "--context",
        "cluster1",
        "bpf",
        "ipcache",
        "list",
        "-o",
        "json",
    ]);
    let has = |ip: &str| {
        ipcache
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["prefix"] == format!("{ip}/32"))
    };
    assert!(has(&server_ip) && has(&targets[3].1), "{ipcache:#}");
    let ids = lab.json(&["--context", "cluster1", "identity", "list", "-o", "json"]);
    assert!(
        ids.as_array()
            .unwrap()
            .iter()
            .any(|i| i["cluster"] == "cluster2"),
        "{ids:#}"
    );
    let eps = lab.ok(&["--context", "cluster1", "endpoint", "list"]);
    assert!(eps.contains("default/client"), "{eps}");

    // The global service: cluster1 load-balances over both clusters' backends.
    let states = |lab: &Lab| -> Vec<(String, String)> {
        let v = lab.json(&["--context", "cluster1", "service", "list", "-o", "json"]);
        let svc = v
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "rebel-base")
            .cloned();
        svc.map(|s| {
            s["backends"]["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["cluster"].as_str().unwrap().to_string(),
                        c["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while states(&lab).iter().filter(|(_, st)| st == "active").count() < 4 {
        assert!(
            Instant::now() < deadline,
            "{mode}: service backends: {:?}",
            states(&lab)
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Affinity local: cluster1's own backends serve, cluster2's wait; removing it restores all.
    lab.ok(&[
        "--context",
        "cluster1",
        "annotate",
        "service",
        "rebel-base",
        "io.cilium/service-affinity=local",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = states(&lab);
        if st.len() == 4 && st.iter().all(|(c, s)| (c == "cluster1") == (s == "active")) {
            break;
        }
        assert!(Instant::now() < deadline, "{mode}: affinity local: {st:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let refused = lab.plexus(&[
        "--context",
        "cluster1",
        "annotate",
        "service",
        "rebel-base",
        "io.cilium/service-affinity=remote",
    ]);
    assert!(
        !refused.status.success(),
        "changing a value needs --overwrite"
    );
    lab.ok(&[
        "--context",
        "cluster1",
        "annotate",
        "service",
        "rebel-base",
        "io.cilium/service-affinity-",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while states(&lab).iter().filter(|(_, st)| st == "active").count() < 4 {
        assert!(
            Instant::now() < deadline,
            "{mode}: affinity removed: {:?}",
            states(&lab)
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A cluster taken down is noticed and comes back with the same pods.
    if mode == "tunnel" {
        lab.ok(&["lab", "stop", "cluster2"]);
        let wait = |what: &str, pred: &dyn Fn(&Value) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let s = lab.json(&[
                    "--context",
                    "cluster1",
                    "clustermesh",
                    "status",
                    "-o",
                    "json",
                ]);
                if s["connections"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["cluster"] == "cluster2" && pred(c))
                {
                    return;
                }
                assert!(Instant::now() < deadline, "{what}: {s:#}");
                std::thread::sleep(Duration::from_millis(500));
            }
        };
        let stopped = Instant::now();
        wait("cluster2 reported down", &|c| c["connected"] == 0);
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "loss noticed after {:?}",
            stopped.elapsed()
        );
        lab.ok(&["lab", "start", "cluster2"]);
        wait("cluster2 back", &|c| c["ready"] == 2);
        let deadline = Instant::now() + Duration::from_secs(30);
        while states(&lab).iter().filter(|(_, st)| st == "active").count() < 4 {
            assert!(
                Instant::now() < deadline,
                "backends back: {:?}",
                states(&lab)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let out = lab.exec(
            "cluster1",
            "client",
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                &format!("http://{}/", targets[3].1),
            ],
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("cluster2"),
            "pods of cluster2 serve again"
        );
    }

    // A TCP stream across the clusters survives restarts of both agents on its path.
    let iperf_ip = lab.pod_ip("cluster2", "iperf");
    let stream = {
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
                &iperf_ip,
                "-t",
                "6",
                "-J",
            ])
            .output()
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    lab.ok(&["lab", "restart-agent", "cluster1", "cluster1-node1"]);
    lab.ok(&["lab", "restart-agent", "cluster2", "cluster2-node1"]);
    let out = stream.join().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{mode}: iperf3: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{mode}: the stream broke: {report:#}");
    for interval in report["intervals"].as_array().unwrap() {
        assert!(
            interval["sum"]["bytes"].as_u64().unwrap() > 0,
            "{mode}: a second without data: {report:#}"
        );
    }
    // Traffic still flows through the new agents.
    let out = lab.exec(
        "cluster1",
        "client",
        &["ping", "-c", "1", "-W", "2", &targets[2].1],
    );
    assert!(out.status.success());

    // `lab down` leaves nothing behind.
    let state: Value =
        serde_json::from_slice(&std::fs::read(lab.dir().join("lab.json")).unwrap()).unwrap();
    let mut pids: Vec<u64> = Vec::new();
    for c in state["clusters"].as_array().unwrap() {
        pids.extend(c["apiserver-pid"].as_u64());
        for n in c["nodes"].as_array().unwrap() {
            pids.extend(n["agent-pid"].as_u64());
        }
    }
    let dir = lab.dir().to_path_buf();
    lab.down();
    let left = lab.netns();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "process {pid} still runs: {stat}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "mounts left under {}",
        dir.display()
    );
    assert!(!Path::new(&dir).exists(), "lab directory left");
}

#[test]
fn tunnel_mode_pods_reach_pods_across_clusters() {
    run_lab("e2et", Duration::from_secs(300), |lab| {
        run(lab, "tunnel", 1422)
    });
}

#[test]
fn native_mode_pods_reach_pods_across_clusters() {
    run_lab("e2en", Duration::from_secs(300), |lab| {
        run(lab, "native", 1472)
    });
}
