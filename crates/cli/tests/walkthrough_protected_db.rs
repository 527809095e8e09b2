//! The protected-db walkthrough (`examples/protected-db/README.md`) run as written, as root:
//! native routing, cluster ids 101 and 102, an L4 policy in cluster1 that lets employee of
//! cluster1 and employee of cluster2's `istio-space` reach protected-db on TCP 6379, and drops
//! stranger, shown by `monitor --type drop` as policy denials with identities and addresses.
//! With `policy-default-local-cluster` on (the default) and off, the outcome is the same.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use plexus_test_support::lab::{Lab, eventually, run_lab};
use plexus_test_support::walkthrough;
use serde_json::Value;

fn example(file: &str) -> String {
    format!(
        "{}/../../examples/protected-db/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Whether a TCP connection from `pod` to `target:6379` is answered by protected-db.
fn reaches(lab: &Lab, ctx: &str, ns: &str, pod: &str, target: &str) -> bool {
    walkthrough::reaches(lab, ctx, ns, pod, target, 6379, "protected-db")
}

fn ok_within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    eventually(limit, what, || {
        f().then_some(()).ok_or_else(|| "not yet".to_string())
    });
}

/// employee (cluster1), stranger (cluster1), employee (cluster2, istio-space) reach it?
fn outcome(lab: &Lab, db_ip: &str) -> [bool; 3] {
    [
        reaches(
            lab,
            "cluster1",
            "default",
            "statefulset/employee",
            "protected-db",
        ),
        reaches(
            lab,
            "cluster1",
            "default",
            "statefulset/stranger",
            "protected-db",
        ),
        reaches(
            lab,
            "cluster2",
            "istio-space",
            "statefulset/employee",
            db_ip,
        ),
    ]
}

fn walkthrough(mut lab: Lab) {
    // 1. The lab, meshed.
    let out = lab.up(example("lab.yaml"), &["--mesh"]);
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
    ok_within(Duration::from_secs(60), "everyone connects", || {
        outcome(&lab, &db_ip) == [true, true, true]
    });

    // 3. The L4 policy: employees connect, stranger's SYNs are dropped as policy denials.
    let monitor = lab.spawn_monitor("cluster1", &db_node, "drop");
    lab.ok(&[
        "--context",
        "cluster1",
        "apply",
        "-f",
        &example("l4-policy.yaml"),
    ]);
    ok_within(Duration::from_secs(20), "policy enforced", || {
        outcome(&lab, &db_ip) == [true, false, true]
    });
    for _ in 0..3 {
        assert_eq!(outcome(&lab, &db_ip), [true, false, true]);
    }
    let drops = monitor.finish();
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
    ok_within(Duration::from_secs(30), "same outcome, option off", || {
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
    ok_within(Duration::from_secs(20), "policy removed", || {
        outcome(&lab, &db_ip) == [true, true, true]
    });
    lab.down();
}

#[test]
fn protected_db_walkthrough_runs_as_written() {
    run_lab("pdb", Duration::from_secs(420), walkthrough);
}
