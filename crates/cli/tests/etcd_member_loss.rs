//! Losing an etcd member under load, as root: cluster1 runs its etcd as three members
//! (`etcd: {members: 3}`), cluster2 reads cluster1 through ClusterMesh. While a TCP stream and
//! HTTP requests go from cluster2 to cluster1 and cluster1's pods are scaled up and down, the
//! member every client talks to first is killed (SIGKILL), later brought back; then the same
//! for the leader. Nothing breaks: the stream never stalls, no request fails, every `apply`
//! during the loss succeeds, cluster2 stays connected and its agents end with exactly
//! cluster1's endpoints, cluster1's agents keep syncing, and each member rejoins.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use plexus_test_support::lab::{Lab, eventually, run_lab};
use serde_json::Value;

/// How long the stream runs: longer than both losses take (checked).
const SECONDS: u32 = 60;

fn churn(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: churn
spec:
  replicas: {replicas}
  template:
    metadata:
      labels:
        app: churn
    spec:
      containers:
      - name: churn
        image: nginx
"
    )
}

const SERVERS: &str = "apiVersion: v1
kind: Pod
metadata:
  name: iperf
  labels:
    app: iperf
spec:
  nodeName: cluster1-node1
  containers:
  - name: iperf
    image: iperf3
    command: [iperf3, -s]
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
spec:
  nodeName: cluster1-node2
  containers:
  - name: web
    image: nginx
    ports:
    - containerPort: 80
";

const CLIENT: &str = "apiVersion: v1
kind: Pod
metadata:
  name: client
  labels:
    app: client
spec:
  containers:
  - name: client
    image: busybox
    command: [sleep, '3600']
";

/// The /32 prefixes in 10.10.0.0/16 (cluster1's pod CIDR) that `node` of `ctx` has in its
/// ipcache.
fn cluster1_entries(lab: &Lab, ctx: &str, node: &str) -> BTreeSet<String> {
    let list = lab.json(&[
        "--context",
        ctx,
        "--node",
        node,
        "bpf",
        "ipcache",
        "list",
        "-o",
        "json",
    ]);
    list.as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["prefix"].as_str())
        .filter(|p| p.starts_with("10.10.") && p.ends_with("/32"))
        .map(str::to_string)
        .collect()
}

/// cluster1's pods' addresses, as /32 prefixes.
fn cluster1_pods(lab: &Lab) -> BTreeSet<String> {
    ["default", "kube-system"]
        .iter()
        .flat_map(|ns| lab.pods("cluster1", ns))
        .filter_map(|p| p["ip"].as_str().map(|ip| format!("{ip}/32")))
        .collect()
}

/// cluster2's connection to cluster1 as `clustermesh status -o json` reports it.
fn connection(lab: &Lab) -> Value {
    let status = lab.json(&[
        "clustermesh",
        "status",
        "--context",
        "cluster2",
        "-o",
        "json",
    ]);
    status["connections"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["cluster"] == "cluster1"))
        .cloned()
        .unwrap_or_else(|| panic!("no connection to cluster1 in {status:#}"))
}

/// Waits until cluster2's node and cluster1's nodes hold exactly cluster1's pods.
fn converged(lab: &Lab, what: &str) {
    eventually(Duration::from_secs(30), what, || {
        let truth = cluster1_pods(lab);
        for (ctx, node) in [
            ("cluster2", "cluster2-node1"),
            ("cluster1", "cluster1-node1"),
            ("cluster1", "cluster1-node2"),
        ] {
            let seen = cluster1_entries(lab, ctx, node);
            // A node's own ipcache also holds its router address: only pods are compared.
            let missing: Vec<_> = truth.difference(&seen).collect();
            let stale: Vec<_> = seen
                .difference(&truth)
                .filter(|p| !router_address(p))
                .collect();
            if !missing.is_empty() || !stale.is_empty() {
                return Err(format!("{node}: missing {missing:?}, stale {stale:?}"));
            }
        }
        Ok(())
    });
}

/// The router (cilium_host) address of a node takes the first address of its pod /24.
fn router_address(prefix: &str) -> bool {
    prefix.ends_with(".1/32")
}

/// The member cluster1's etcd names as its leader, asked with `etcdctl endpoint status` from
/// the control-plane namespace.
fn leader(lab: &Lab) -> String {
    let pki = lab.dir().join("cluster1/apiserver/pki");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("plx-{}-cluster1", lab.name()),
            "etcdctl",
        ])
        .arg("--endpoints=https://172.31.1.2:2379,https://172.31.1.3:2379,https://172.31.1.4:2379")
        .arg(format!("--cacert={}", pki.join("ca.crt").display()))
        .arg(format!("--cert={}", pki.join("admin.crt").display()))
        .arg(format!("--key={}", pki.join("admin.key").display()))
        .args(["endpoint", "status", "-w", "json"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "etcdctl endpoint status: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let leader = status
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Status"]["header"]["member_id"] == e["Status"]["leader"])
        .unwrap_or_else(|| panic!("no leader in {status:#}"));
    let endpoint = leader["Endpoint"].as_str().unwrap();
    let k = ["172.31.1.2:", "172.31.1.3:", "172.31.1.4:"]
        .iter()
        .position(|ip| endpoint.contains(ip))
        .unwrap_or_else(|| panic!("leader {endpoint} is no member"));
    format!("cluster1-etcd{k}")
}

fn lose_member(lab: &Lab, member: &str) {
    lab.ok(&["lab", "etcd-kill", "cluster1", member]);
    // Churn while the member is gone: pods come and go, their objects written to etcd.
    lab.apply("cluster1", "churn.yaml", &churn(5));
    let c = connection(lab);
    assert!(c["connected"].as_u64() > Some(0), "{member} lost: {c:#}");
    converged(lab, &format!("scaled up without {member}"));
    lab.apply("cluster1", "churn.yaml", &churn(1));
    converged(lab, &format!("scaled down without {member}"));
    let c = connection(lab);
    assert!(c["connected"].as_u64() > Some(0), "{member} lost: {c:#}");
    lab.ok(&["lab", "etcd-start", "cluster1", member]);
    lab.apply("cluster1", "churn.yaml", &churn(3));
    converged(lab, &format!("{member} back"));
}

fn run(lab: Lab) {
    let file = lab.write(
        "lab.yaml",
        "clusters:\n- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2, etcd: {members: 3}}\n- {name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 1}\n",
    );
    let out = lab.up(&file, &["--mesh"]);
    assert!(out.contains("nodes are connected to all clusters"), "{out}");
    let status = lab.ok(&["lab", "status"]);
    for k in 0..3 {
        assert!(status.contains(&format!("cluster1-etcd{k}")), "{status}");
    }
    lab.apply("cluster1", "servers.yaml", SERVERS);
    lab.apply("cluster1", "churn.yaml", &churn(3));
    lab.apply("cluster2", "client.yaml", CLIENT);
    converged(&lab, "before the loss");

    let iperf = lab.pod_ip("cluster1", "iperf");
    let web = lab.pod_ip("cluster1", "web");
    let stream = {
        let cli = lab.cli();
        std::thread::spawn(move || {
            cli.command(&[
                "--context",
                "cluster2",
                "exec",
                "client",
                "--",
                "iperf3",
                "-c",
                &iperf,
                "-t",
                &SECONDS.to_string(),
                "-J",
            ])
            .output()
            .unwrap()
        })
    };
    // HTTP requests one after another, each on a new connection.
    let requests = {
        let cli = lab.cli();
        let script = format!(
            "ok=0; failed=0; end=$(( $(date +%s) + {SECONDS} )); \
             while [ $(date +%s) -lt $end ]; do \
               if curl -s -o /dev/null --max-time 3 http://{web}/; then ok=$((ok+1)); else failed=$((failed+1)); fi; \
               sleep 0.05; \
             done; echo $ok $failed"
        );
        std::thread::spawn(move || {
            cli.command(&[
                "--context",
                "cluster2",
                "exec",
                "client",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .output()
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // Every client is given the members in the same order: cluster1-etcd0 is the one they all
    // talk to. Then the leader (elected meanwhile, or etcd0 again).
    lose_member(&lab, "cluster1-etcd0");
    let leader = leader(&lab);
    lose_member(&lab, &leader);
    assert!(
        !stream.is_finished() && !requests.is_finished(),
        "the traffic ended before the losses did: make SECONDS longer"
    );

    let out = stream.join().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "the stream broke: {report:#}");
    let intervals = report["intervals"].as_array().unwrap();
    for interval in intervals {
        assert!(
            interval["sum"]["bytes"].as_u64().unwrap() > 0,
            "a second without data: {report:#}"
        );
    }
    let out = requests.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let counts: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 2, "{text}");
    assert!(counts[0] > 0, "no request made: {text}");
    assert_eq!(
        counts[1],
        0,
        "{} of {} requests failed",
        counts[1],
        counts[0] + counts[1]
    );
    eprintln!(
        "losses of cluster1-etcd0 and of the leader {leader}: stream {} s without a gap; {} HTTP requests, none failed",
        intervals.len(),
        counts[0]
    );

    let c = connection(&lab);
    assert!(c["connected"].as_u64() > Some(0), "{c:#}");
    let status = lab.ok(&["lab", "status"]);
    assert!(!status.contains('❌'), "{status}");
}

#[test]
fn a_cluster_loses_etcd_members_under_traffic_and_churn() {
    run_lab("etcdloss", Duration::from_secs(300), run);
}
