//! The checks the walkthrough tests share (`examples/*/README.md`), whatever runs the lab's
//! pods: which clusters answer a service, and whether a pod reaches another on a port.
//!
//! The answers are the lab's built-in server's JSON (`{"pod":..,"cluster":..}`), so a check
//! counts clusters by the `cluster` field; anything else is a failed request.
//!
//! [`global_services`] is the global-services walkthrough itself from its step 2 on, so the
//! walkthrough test and the tests that run it on a variant of its lab (encryption) share it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::lab::{Lab, eventually};

/// A file of `examples/global-services/`.
pub fn example(file: &str) -> String {
    format!(
        "{}/../../examples/global-services/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `n` times `curl -s --max-time 2 TARGET` from `pod` (namespace `default` of `ctx`): how
/// many answers each cluster gave, and how many requests failed (under the key "failed").
pub fn ask(lab: &Lab, ctx: &str, pod: &str, target: &str, n: usize) -> BTreeMap<String, usize> {
    let script = format!(
        "for i in $(seq {n}); do curl -s --max-time 2 {target} || printf failed; echo; done"
    );
    let mut counts = BTreeMap::new();
    for line in lab
        .sh(ctx, "default", pod, &script)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let key = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["cluster"].as_str().map(str::to_string))
            .unwrap_or_else(|| "failed".to_string());
        *counts.entry(key).or_default() += 1;
    }
    let total: usize = counts.values().sum();
    assert_eq!(total, n, "{n} requests from {pod} in {ctx}: {counts:?}");
    counts
}

/// How many answers `cluster` gave.
pub fn share(counts: &BTreeMap<String, usize>, cluster: &str) -> usize {
    counts.get(cluster).copied().unwrap_or(0)
}

/// Whether both walkthrough clusters (`cluster1`, `cluster2`) answered; else the counts.
pub fn both(counts: &BTreeMap<String, usize>) -> Result<(), String> {
    (share(counts, "cluster1") > 0 && share(counts, "cluster2") > 0)
        .then_some(())
        .ok_or(format!("{counts:?}"))
}

/// Whether `cluster` gave every answer (and nothing failed).
pub fn only(counts: &BTreeMap<String, usize>, cluster: &str) -> bool {
    counts.len() == 1 && counts.contains_key(cluster)
}

/// Whether a TCP connection from `pod` (namespace `ns` of `ctx`) to `target:port` is answered
/// by a server whose answer names `answerer` (the built-in server's pod name).
pub fn reaches(
    lab: &Lab,
    ctx: &str,
    ns: &str,
    pod: &str,
    target: &str,
    port: u16,
    answerer: &str,
) -> bool {
    lab.sh(ctx, ns, pod, &format!("nc -w 2 {target} {port} </dev/null"))
        .contains(answerer)
}

/// `n` times `curl rebel-base` from `pod`: how many answers each cluster gave, and how many
/// requests failed (under the key "failed").
pub fn ask_rebel_base(lab: &Lab, ctx: &str, pod: &str, n: usize) -> BTreeMap<String, usize> {
    ask(lab, ctx, pod, "rebel-base", n)
}

/// `annotate service rebel-base CHANGE` in cluster1.
fn annotate_rebel_base(lab: &Lab, change: &str) {
    lab.ok(&[
        "--context",
        "cluster1",
        "annotate",
        "service",
        "rebel-base",
        change,
    ]);
}

/// The global-services walkthrough (`examples/global-services/README.md`) from its step 2 on,
/// on a lab of its two clusters that is up (the walkthrough's `lab.yaml`, or a variant of it:
/// other routing, encryption). `connected`: the lab came up with `--mesh`, so step 2's enable
/// and connect are skipped (its checks are not). What each step checks is told in the
/// walkthrough test's own doc (`crates/cli/tests/walkthrough_global_services.rs`).
// Test code: a failed unwrap is the test's failure, as in the tests themselves.
#[allow(clippy::unwrap_used)]
pub fn global_services(lab: &Lab, connected: bool) {
    // 2. One shared CA, connected once from one side; each side shows the other connected.
    if !connected {
        lab.ok(&["clustermesh", "enable", "--context", "cluster1"]);
        lab.ok(&["clustermesh", "enable", "--context", "cluster2"]);
        lab.ok(&[
            "clustermesh",
            "connect",
            "--context",
            "cluster1",
            "--destination-context",
            "cluster2",
        ]);
    }
    for (ctx, other) in [("cluster1", "cluster2"), ("cluster2", "cluster1")] {
        let out = lab.ok(&[
            "clustermesh",
            "status",
            "--context",
            ctx,
            "--wait",
            "--wait-duration",
            "2m",
        ]);
        assert!(out.contains(other), "{ctx}: {out}");
    }

    // 3. The walkthrough's objects; both clusters answer, from both sides.
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
    for ctx in ["cluster1", "cluster2"] {
        eventually(Duration::from_secs(60), "both clusters serve", || {
            both(&ask_rebel_base(lab, ctx, "deployment/x-wing", 10))
                .map_err(|e| format!("{ctx}: {e}"))
        });
        let c = ask_rebel_base(lab, ctx, "deployment/x-wing", 100);
        for cluster in ["cluster1", "cluster2"] {
            let n = share(&c, cluster);
            assert!(
                (20..=80).contains(&n),
                "from {ctx}: {cluster} served {n} of 100: {c:?}"
            );
        }
    }
    let status = lab.json(&[
        "clustermesh",
        "status",
        "--context",
        "cluster1",
        "-o",
        "json",
    ]);
    let text = status.to_string();
    assert!(text.contains("cluster2"), "{text}");

    // Replies come from the service address: the client's socket is connected to it.
    let svc = lab.json(&["--context", "cluster1", "service", "list", "-o", "json"]);
    let rebel = svc
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "rebel-base")
        .unwrap();
    let vip = rebel["cluster-ip"].as_str().unwrap().to_string();
    let out = lab.sh(
        "cluster1",
        "default",
        "deployment/x-wing",
        "curl -s --max-time 2 -o /dev/null -w '%{remote_ip}' rebel-base",
    );
    assert_eq!(out.trim(), vip, "curl's peer is the service address");
    let lb = lab.ok(&["--context", "cluster1", "bpf", "lb", "list"]);
    assert!(lb.contains(&format!("{vip}:80/TCP")), "{lb}");

    // 4. shared=false in cluster1: cluster1 still uses both, cluster2 only its own.
    annotate_rebel_base(lab, "io.cilium/shared-service=false");
    eventually(Duration::from_secs(20), "cluster2 stays home", || {
        let c = ask_rebel_base(lab, "cluster2", "deployment/x-wing", 20);
        only(&c, "cluster2").then_some(()).ok_or(format!("{c:?}"))
    });
    let c = ask_rebel_base(lab, "cluster1", "deployment/x-wing", 40);
    both(&c).unwrap_or_else(|e| panic!("cluster1 still uses both: {e}"));
    annotate_rebel_base(lab, "io.cilium/shared-service-");
    eventually(Duration::from_secs(20), "cluster2 sees both again", || {
        both(&ask_rebel_base(lab, "cluster2", "deployment/x-wing", 20))
    });

    // 5. affinity local: cluster1 at home; without local backends, cluster2 serves.
    annotate_rebel_base(lab, "io.cilium/service-affinity=local");
    eventually(Duration::from_secs(20), "affinity local", || {
        let c = ask_rebel_base(lab, "cluster1", "deployment/x-wing", 20);
        only(&c, "cluster1").then_some(()).ok_or(format!("{c:?}"))
    });
    let c = ask_rebel_base(lab, "cluster1", "deployment/x-wing", 50);
    assert!(only(&c, "cluster1"), "affinity local: {c:?}");
    lab.ok(&[
        "--context",
        "cluster1",
        "delete",
        "deployment",
        "rebel-base",
    ]);
    eventually(Duration::from_secs(20), "fallback to cluster2", || {
        let c = ask_rebel_base(lab, "cluster1", "deployment/x-wing", 20);
        only(&c, "cluster2").then_some(()).ok_or(format!("{c:?}"))
    });
    // The deployment again (only it; the Service would keep its annotations, which `apply`
    // merges as kubectl does).
    let text = std::fs::read_to_string(example("cluster1.yaml")).unwrap();
    let deployment = text
        .split("\n---\n")
        .find(|d| d.contains("kind: Deployment") && d.contains("name: rebel-base"))
        .unwrap();
    let file = lab.scratch().join("rebel-base.yaml");
    std::fs::write(&file, deployment).unwrap();
    lab.ok(&[
        "--context",
        "cluster1",
        "apply",
        "-f",
        file.to_str().unwrap(),
    ]);
    eventually(Duration::from_secs(30), "affinity local again", || {
        let c = ask_rebel_base(lab, "cluster1", "deployment/x-wing", 20);
        only(&c, "cluster1").then_some(()).ok_or(format!("{c:?}"))
    });
    annotate_rebel_base(lab, "io.cilium/service-affinity-");
    eventually(Duration::from_secs(20), "both again", || {
        both(&ask_rebel_base(lab, "cluster1", "deployment/x-wing", 20))
    });

    // Hairpin: a rebel-base pod reaching its own service is answered, by itself among others.
    let pods = lab.json(&["--context", "cluster1", "get", "pods", "-o", "json"]);
    let me = pods
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .find(|n| n.starts_with("rebel-base"))
        .unwrap();
    let out = lab.sh(
        "cluster1",
        "default",
        &me,
        "for i in $(seq 40); do curl -s --max-time 2 rebel-base || printf failed; echo; done",
    );
    assert!(!out.contains("failed"), "hairpin: {out}");
    assert!(
        out.contains(&format!("\"pod\":\"{me}\"")),
        "{me} answered itself: {out}"
    );

    // A UDP service.
    udp_service(lab);

    // 6. The cross-cluster policy in both clusters: from x-wing in cluster1, what cluster2
    //    serves succeeds, what lands on cluster1 is dropped as a policy denial; DNS still works.
    let xwing_pod = lab.pod("cluster1", "x-wing");
    let monitor = lab.spawn_monitor("cluster1", xwing_pod["node"].as_str().unwrap(), "drop");
    for ctx in ["cluster1", "cluster2"] {
        lab.ok(&[
            "--context",
            ctx,
            "apply",
            "-f",
            &example("networkpolicy.yaml"),
        ]);
    }
    eventually(Duration::from_secs(90), "policy enforced", || {
        let c = ask_rebel_base(lab, "cluster1", "deployment/x-wing", 20);
        (share(&c, "cluster1") == 0 && share(&c, "cluster2") > 0 && share(&c, "failed") > 0)
            .then_some(())
            .ok_or(format!("{c:?}"))
    });
    let drops = monitor.finish();
    let xwing = lab.json(&[
        "--context",
        "cluster1",
        "endpoint",
        "get",
        xwing_pod["name"].as_str().unwrap(),
        "-o",
        "json",
    ]);
    let xwing_id = xwing["endpoint"]["identity"].as_u64().unwrap();
    let denial = drops
        .lines()
        .find(|l| {
            l.contains("drop (Policy denied)") && l.contains(&format!("identity {xwing_id}->"))
        })
        .unwrap_or_else(|| panic!("no policy denial from x-wing ({xwing_id}) in:\n{drops}"));
    assert!(denial.contains(":80 tcp SYN"), "{denial}");
    let out = lab.ok(&["--context", "cluster1", "policy", "get"]);
    assert!(
        out.contains("allow-cross-cluster") && out.contains("allow-dns"),
        "{out}"
    );
    assert_eq!(xwing["policy"]["egress-enforced"], true, "{xwing}");
    observe_step6(lab, xwing_pod["name"].as_str().unwrap(), xwing_id, &vip);
    for ctx in ["cluster1", "cluster2"] {
        lab.ok(&[
            "--context",
            ctx,
            "delete",
            "-f",
            &example("networkpolicy.yaml"),
        ]);
    }
    eventually(Duration::from_secs(20), "policy removed", || {
        let c = ask_rebel_base(lab, "cluster1", "deployment/x-wing", 20);
        (share(&c, "cluster1") > 0 && share(&c, "failed") == 0)
            .then_some(())
            .ok_or(format!("{c:?}"))
    });

    // 7. cluster2 stops: within 10 s, every new request from cluster1 succeeds (on cluster1).
    lab.ok(&["lab", "stop", "cluster2"]);
    let took = eventually(Duration::from_secs(10), "failover", || {
        let c = ask_rebel_base(lab, "cluster1", "deployment/x-wing", 10);
        only(&c, "cluster1").then_some(()).ok_or(format!("{c:?}"))
    });
    eprintln!("failover: new requests all served by cluster1 after {took:?}");
    let c = ask_rebel_base(lab, "cluster1", "deployment/x-wing", 30);
    assert!(only(&c, "cluster1"), "after failover: {c:?}");
    // Each node notices on its own health check; the status shows it once both have.
    eventually(
        Duration::from_secs(20),
        "status shows cluster2 not connected",
        || {
            let out = lab.ok(&["clustermesh", "status", "--context", "cluster1"]);
            out.contains("cluster2: 2/2 configured, 0/2 connected")
                .then_some(())
                .ok_or(out)
        },
    );

    lab.ok(&["lab", "start", "cluster2"]);
    eventually(Duration::from_secs(60), "cluster2 serves again", || {
        both(&ask_rebel_base(lab, "cluster1", "deployment/x-wing", 20))
    });
}

/// The flow lines (`{"flow": ...}`) of `plexus observe ARGS -o json` through cluster1's relay.
#[allow(clippy::unwrap_used)]
pub fn observe_flows(lab: &Lab, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--context", "cluster1", "observe", "-o", "json"];
    all.extend_from_slice(args);
    let out = lab.ok(&all);
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter_map(|v| v.get("flow").cloned())
        .collect()
}

/// Whether `endpoint`'s labels (`["k8s:name=x-wing", ...]`) hold `label` (`name=x-wing`).
fn has_label(endpoint: &Value, label: &str) -> bool {
    endpoint["labels"].as_array().is_some_and(|l| {
        l.iter().any(|v| {
            v.as_str()
                .is_some_and(|v| v.ends_with(&format!(":{label}")))
        })
    })
}

/// Flows after step 6 (the flows issue), read through cluster1's relay, which reads every node
/// of both clusters: x-wing's drops towards cluster1 with both identities, labels, pods,
/// clusters and the reason; x-wing's service translations with the frontend and each
/// backend's cluster; flows of both clusters' nodes in one stream.
#[allow(clippy::unwrap_used)]
pub fn observe_step6(lab: &Lab, xwing: &str, xwing_id: u64, vip: &str) {
    let mut drop = Value::Null;
    eventually(
        Duration::from_secs(30),
        "observe shows x-wing's drops",
        || {
            let flows = observe_flows(
                lab,
                &[
                    "--verdict",
                    "DROPPED",
                    "--to-cluster",
                    "cluster1",
                    "--last",
                    "1000",
                ],
            );
            drop = flows
                .into_iter()
                .find(|f| f["source"]["pod_name"] == xwing)
                .ok_or_else(|| "no drop from x-wing yet".to_string())?;
            Ok(())
        },
    );
    let (src, dst) = (&drop["source"], &drop["destination"]);
    assert_eq!(drop["verdict"], "DROPPED", "{drop}");
    assert_eq!(drop["drop_reason_desc"], "POLICY_DENIED", "{drop}");
    assert_eq!(drop["drop_reason_text"], "Policy denied", "{drop}");
    assert_eq!(drop["traffic_direction"], "EGRESS", "{drop}");
    assert!(
        drop["node_name"].as_str().unwrap().starts_with("cluster1/"),
        "{drop}"
    );
    assert_eq!(src["identity"].as_u64(), Some(xwing_id), "{drop}");
    assert_eq!(src["cluster_name"], "cluster1", "{drop}");
    assert_eq!(src["namespace"], "default", "{drop}");
    assert!(has_label(src, "name=x-wing"), "{drop}");
    assert_eq!(dst["cluster_name"], "cluster1", "{drop}");
    assert_eq!(dst["namespace"], "default", "{drop}");
    assert!(
        dst["pod_name"].as_str().unwrap().starts_with("rebel-base"),
        "{drop}"
    );
    assert!(has_label(dst, "name=rebel-base"), "{drop}");
    assert!(dst["identity"].as_u64().unwrap() > 0, "{drop}");
    assert_eq!(drop["l4"]["TCP"]["destination_port"], 80, "{drop}");
    // Default deny: x-wing's egress is selected by the walkthrough's policies, none allows this.
    assert_eq!(drop["policy_deny"], "default-deny", "{drop}");

    // Translations: the frontend, and backends of both clusters.
    let flows = observe_flows(
        lab,
        &[
            "--from-pod",
            &format!("default/{xwing}"),
            "--type",
            "translation",
            "--last",
            "1000",
        ],
    );
    let frontend = format!("{vip}:80");
    let clusters: std::collections::BTreeSet<String> = flows
        .iter()
        .filter(|f| f["translation"]["frontend"] == frontend.as_str())
        .map(|f| {
            f["translation"]["backend_cluster"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        clusters.contains("cluster1") && clusters.contains("cluster2"),
        "translations of {frontend} by backend cluster: {clusters:?} in {flows:?}"
    );
    let one = flows
        .iter()
        .find(|f| f["translation"]["frontend"] == frontend.as_str())
        .unwrap();
    assert_eq!(one["verdict"], "TRANSLATED", "{one}");
    assert_eq!(one["destination_service"]["name"], "rebel-base", "{one}");

    // One stream holds the nodes of both clusters.
    let nodes: std::collections::BTreeSet<String> = observe_flows(lab, &["--last", "4000"])
        .iter()
        .filter_map(|f| f["node_name"].as_str().map(str::to_string))
        .collect();
    for cluster in ["cluster1/", "cluster2/"] {
        assert!(
            nodes.iter().any(|n| n.starts_with(cluster)),
            "{cluster}: {nodes:?}"
        );
    }
}

/// A service with a UDP port in front of the built-in server's UDP answer.
#[allow(clippy::unwrap_used)]
fn udp_service(lab: &Lab) {
    let file = lab.scratch().join("udp.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1
kind: Service
metadata:
  name: echo-udp
spec:
  ports:
  - name: echo
    port: 5353
    targetPort: 7000
    protocol: UDP
  selector:
    app: echo-udp
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo-udp
spec:
  replicas: 1
  selector:
    matchLabels:
      app: echo-udp
  template:
    metadata:
      labels:
        app: echo-udp
    spec:
      containers:
      - name: echo
        image: echo
        ports:
        - containerPort: 7000
          protocol: UDP
",
    )
    .unwrap();
    lab.ok(&[
        "--context",
        "cluster1",
        "apply",
        "-f",
        file.to_str().unwrap(),
    ]);
    eventually(Duration::from_secs(30), "UDP service answers", || {
        let out = lab.sh(
            "cluster1",
            "default",
            "deployment/x-wing",
            "echo hi | nc -u -w 1 echo-udp.default.svc.cluster.local 5353",
        );
        out.contains("\"cluster\":\"cluster1\"")
            .then_some(())
            .ok_or(out)
    });
}
