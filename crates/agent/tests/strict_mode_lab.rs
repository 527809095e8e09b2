//! WireGuard strict mode for real, as root: a lab cluster of two nodes whose agents run with
//! `enable-wireguard` but no WireGuard device (none was started). Every node publishes its key
//! and wants the other as a peer, but no device ever accepts one, so strict mode must hold: a
//! pod's packets to a pod on the other node are dropped by the datapath, each drop shown by
//! `plexus monitor --type drop` as "Traffic is unencrypted", while traffic on one node passes.
//! `plexus status` and `plexus encryption status` say so; a key rotation publishes the new key,
//! which the other node's agent then wants as its peer.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use plexus_test_support::lab::{Lab, eventually, run_lab};
use serde_json::Value;

const PODS: &str = "apiVersion: v1
kind: Pod
metadata:
  name: a
spec:
  nodeName: cluster1-node1
  containers:
  - name: a
    image: busybox
    command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: b
spec:
  nodeName: cluster1-node2
  containers:
  - name: b
    image: busybox
    command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: c
spec:
  nodeName: cluster1-node1
  containers:
  - name: c
    image: busybox
    command: [sleep, '3600']
";

fn reports(lab: &Lab) -> Vec<Value> {
    let v = lab.json(&[
        "--context",
        "cluster1",
        "encryption",
        "status",
        "-o",
        "json",
    ]);
    v.as_array().unwrap().clone()
}

fn strict_mode(mut lab: Lab) {
    let file = lab.write(
        "lab.yaml",
        "clusters:\n- {name: cluster1, id: 1, podCIDR: 10.30.0.0/16, serviceCIDR: 10.31.0.0/16, nodes: 2}\nrouting: tunnel\n",
    );
    lab.up(&file, &[]);
    let absent = lab.scratch().join("no-device.sock");
    lab.ok(&[
        "lab",
        "agent-options",
        "cluster1",
        "enable-wireguard=true",
        &format!("wireguard-socket={}", absent.display()),
    ]);
    let pods = lab.write("pods.yaml", PODS);
    lab.ok(&[
        "--context",
        "cluster1",
        "apply",
        "-f",
        pods.to_str().unwrap(),
    ]);
    let (a, b, c) = (
        lab.pod_ip("cluster1", "a"),
        lab.pod_ip("cluster1", "b"),
        lab.pod_ip("cluster1", "c"),
    );

    // Both nodes want each other as peers, by the keys their Nodes publish; no device took one.
    eventually(
        Duration::from_secs(30),
        "both nodes want their peer",
        || {
            let r = reports(&lab);
            let ok = r.len() == 2
                && r.iter().all(|n| {
                    n["mode"] == "wireguard"
                        && n["strict"] == true
                        && n["device-reachable"] == false
                        && n["peers"].as_array().unwrap().len() == 1
                        && n["peers"][0]["desired"] == true
                        && n["peers"][0]["configured"] == false
                });
            ok.then_some(()).ok_or_else(|| format!("{r:?}"))
        },
    );
    let r = reports(&lab);
    assert_eq!(r[0]["node"], "cluster1-node1");
    assert_eq!(r[0]["peers"][0]["node"], "cluster1-node2");
    assert_eq!(r[0]["peers"][0]["public-key"], r[1]["public-key"]);
    assert_eq!(
        r[0]["peers"][0]["endpoint"],
        format!("{}:51871", r[1]["node-ip"].as_str().unwrap())
    );
    assert_eq!(
        r[0]["peers"][0]["allowed-ips"][0],
        format!("{}/32", r[1]["node-ip"].as_str().unwrap())
    );
    let status = lab.ok(&["--context", "cluster1", "status"]);
    assert!(
        status.contains("Encryption: WireGuard (userspace), 0 peers (device unreachable)"),
        "{status}"
    );

    // Pod traffic to the other node is dropped with its reason; on one node it passes.
    let monitor = lab.spawn_monitor("cluster1", "cluster1-node1", "drop");
    let out = lab.exec("cluster1", "a", &["ping", "-c", "2", "-W", "1", &b]);
    assert!(!out.status.success(), "a reached b in the clear");
    let out = lab.exec("cluster1", "a", &["ping", "-c", "1", "-W", "2", &c]);
    assert!(out.status.success(), "a cannot reach c on its own node");
    let drops = monitor.finish();
    let line = drops
        .lines()
        .find(|l| l.starts_with("xx drop (Traffic is unencrypted)"))
        .unwrap_or_else(|| panic!("no unencrypted drop in:\n{drops}"));
    assert!(line.contains(&format!("{a} -> {b}")), "{line}");

    // A rotation publishes the new key; the other node wants it.
    let old = r[0]["public-key"].as_str().unwrap().to_string();
    let rotated = lab.json(&[
        "--context",
        "cluster1",
        "--node",
        "cluster1-node1",
        "encryption",
        "rotate-key",
        "-o",
        "json",
    ]);
    assert_eq!(rotated[0]["old-public-key"], old.as_str());
    assert_eq!(rotated[0]["device-updated"], false);
    let new = rotated[0]["public-key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    eventually(
        Duration::from_secs(20),
        "node2 wants node1's new key",
        || {
            let r = reports(&lab);
            (r[0]["public-key"] == new.as_str() && r[1]["peers"][0]["public-key"] == new.as_str())
                .then_some(())
                .ok_or_else(|| format!("{r:?}"))
        },
    );
    lab.down();
}

#[test]
fn strict_mode_drops_pod_traffic_to_a_node_without_a_peer() {
    run_lab("wgstrict", Duration::from_secs(300), strict_mode);
}
