//! The chaos soak at CI length, as root: a 2 x 2 lab with the soak's workload
//! (`examples/chaos/soak.yaml`: a global service, echo and client pods, a policy), then
//! `plexus lab chaos` for 90 s with a kill every 15 s, which kills (SIGKILL) each kind of
//! component at least once: an agent, an apiserver, an etcd and a kube-dns. The soak must pass:
//! no failed request left unexplained by a kill, every component back, every node's ipcache,
//! load-balancing, endpoints and policy equal to the stores' truth afterwards. The soak's
//! report, in JSON, also shows that requests flowed on every probe.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use plexus_test_support::lab::{Lab, run_lab};
use serde_json::Value;

const LAB: &str = "clusters:\n- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}\n- {name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 2}\nrouting: tunnel\n";

const SOAK: &str = include_str!("../../../examples/chaos/soak.yaml");

fn soak(lab: Lab) {
    let file = lab.write("lab.yaml", LAB);
    let out = lab.up(&file, &["--mesh"]);
    assert!(
        out.contains("2/2 nodes are connected to all clusters"),
        "{out}"
    );
    let soak = lab.write("soak.yaml", SOAK);
    for ctx in ["cluster1", "cluster2"] {
        lab.ok(&["--context", ctx, "apply", "-f", soak.to_str().unwrap()]);
    }
    let out = lab.plexus(&[
        "lab",
        "chaos",
        "--duration",
        "90s",
        "--every",
        "15s",
        "--seed",
        "17",
        "-o",
        "json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no report ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let show = || format!("{report:#}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the soak failed: {}", show());
    let kinds: Vec<&str> = report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["target"]["kind"].as_str().unwrap())
        .collect();
    for kind in ["agent", "apiserver", "etcd", "kube-dns"] {
        assert!(kinds.contains(&kind), "no {kind} killed: {}", show());
    }
    for probe in ["pod", "service", "dns", "dns-http", "stream"] {
        assert!(
            report["succeeded"][probe].as_u64().unwrap_or(0) > 0,
            "no {probe} request succeeded: {}",
            show()
        );
    }
    assert_eq!(report["unexplained"], serde_json::json!([]), "{}", show());
    assert_eq!(report["differences"], serde_json::json!([]), "{}", show());
    assert_eq!(
        report["streams"].as_object().unwrap().len(),
        4,
        "{}",
        show()
    );
}

#[test]
fn chaos_soak_leaves_every_node_at_the_stores_truth() {
    run_lab("chaos", Duration::from_secs(600), soak);
}
