//! `plexus policy trace` in a lab of two meshed clusters (tunnel and native routing), as root:
//! a connection allowed at both ends (a CiliumNetworkPolicy at each), one denied by default at
//! egress (a port the egress policy does not name), one denied by an explicit `ingressDeny`
//! rule in the other cluster, and one denied by default at ingress (a NetworkPolicy without
//! rules). Each trace names the deciding rule at both ends, and agrees with what a real TCP
//! connection does. `-o json`, a named port of the destination, and the errors for an unknown
//! pod, context or port.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use plexus_test_support::lab::{Lab, eventually, run_lab};
use plexus_test_support::walkthrough;
use serde_json::Value;

const CLUSTER1: &str = "apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: a}}
spec:
  containers:
  - {name: a, image: busybox}
---
apiVersion: v1
kind: Pod
metadata: {name: c, labels: {app: c}}
spec:
  containers:
  - {name: c, image: busybox}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-out}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEndpoints:
    - matchLabels: {app: b, io.cilium.k8s.policy.cluster: cluster2}
    toPorts:
    - ports: [{port: '80', protocol: TCP}]
";

const CLUSTER2: &str = "apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: b}}
spec:
  containers:
  - name: b
    image: nginx
    ports:
    - {name: http, containerPort: 80}
    - {name: other, containerPort: 81}
---
apiVersion: v1
kind: Pod
metadata: {name: d, labels: {app: d}}
spec:
  containers:
  - name: d
    image: nginx
    ports:
    - {name: http, containerPort: 80}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-in}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: a, io.cilium.k8s.policy.cluster: cluster1}
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {app: c, io.cilium.k8s.policy.cluster: cluster1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all}
spec:
  podSelector: {matchLabels: {app: d}}
  policyTypes: [Ingress]
";

/// `policy trace` with cluster1 as the context, as text.
fn trace(lab: &Lab, src: &str, dst: &str, dport: &str) -> String {
    lab.ok(&[
        "--context",
        "cluster1",
        "policy",
        "trace",
        "--src",
        src,
        "--dst",
        dst,
        "--dport",
        dport,
    ])
}

/// Whether `pod` of cluster1 gets an answer from `target` of cluster2 on `port`.
fn connects(lab: &Lab, pod: &str, target_ip: &str, port: u16, target: &str) -> bool {
    walkthrough::reaches(lab, "cluster1", "default", pod, target_ip, port, target)
}

/// The trace's lines without the first (the pods' identities and addresses vary).
fn verdict_lines(text: &str) -> Vec<String> {
    text.lines().skip(1).map(str::to_string).collect()
}

/// Waits until the trace says `expected` (the agents apply policies as they learn them) and
/// a real connection agrees with its verdict.
fn settles(
    lab: &Lab,
    src: &str,
    dst: &str,
    dport: &str,
    expected: &[&str],
    conn: (&str, &str, u16, &str),
) -> String {
    let mut last = String::new();
    eventually(
        Duration::from_secs(60),
        &format!("trace {src} -> {dst}"),
        || {
            last = trace(lab, src, dst, dport);
            let lines = verdict_lines(&last);
            if lines != expected {
                return Err(last.clone());
            }
            let allowed = expected.last() == Some(&"verdict: ALLOWED");
            let (pod, ip, port, answerer) = conn;
            if connects(lab, pod, ip, port, answerer) != allowed {
                return Err(format!("the connection does not agree with:\n{last}"));
            }
            Ok(())
        },
    );
    // Shown with --nocapture, for people reading the test's output.
    eprintln!("{last}");
    last
}

fn test(mut lab: Lab, routing: &str) {
    let lab_file = lab.write(
        "lab.yaml",
        &format!(
            "clusters:\n- {{name: cluster1, id: 1, podCIDR: 10.30.0.0/16, serviceCIDR: 10.31.0.0/16, nodes: 1}}\n- {{name: cluster2, id: 2, podCIDR: 10.40.0.0/16, serviceCIDR: 10.41.0.0/16, nodes: 1}}\nrouting: {routing}\n"
        ),
    );
    let out = lab.up(&lab_file, &["--mesh"]);
    assert!(out.contains("connected"), "{out}");
    for (ctx, yaml) in [("cluster1", CLUSTER1), ("cluster2", CLUSTER2)] {
        let file = lab.write(&format!("{ctx}.yaml"), yaml);
        lab.ok(&["--context", ctx, "apply", "-f", file.to_str().unwrap()]);
    }
    let b_ip = lab.pod_ip("cluster2", "b");
    let d_ip = lab.pod_ip("cluster2", "d");

    // Allowed at both ends, by each cluster's policy; a named port of the destination.
    let text = settles(
        &lab,
        "default/a",
        "cluster2/default/b",
        "http",
        &[
            "egress  at default/a  ALLOWED  CiliumNetworkPolicy default/allow-out  egress[0]  L3-L4",
            "ingress at default/b  ALLOWED  CiliumNetworkPolicy default/b-in  ingress[0]  L3-Only",
            "verdict: ALLOWED",
        ],
        ("a", &b_ip, 80, "\"b\""),
    );
    let head = text.lines().next().unwrap();
    assert!(
        head.starts_with("default/a (cluster1, identity ")
            && head.contains("-> default/b (cluster2, identity ")
            && head.contains(&format!(", {b_ip}) TCP/80")),
        "{text}"
    );

    // Denied by default at egress: allow-out names port 80 only.
    settles(
        &lab,
        "cluster1/default/a",
        "cluster2/default/b",
        "81/tcp",
        &[
            "egress  at default/a  DENIED   default deny: CiliumNetworkPolicy default/allow-out selects default/a, no rule allows",
            "ingress at default/b  ALLOWED  CiliumNetworkPolicy default/b-in  ingress[0]  L3-Only",
            "verdict: DENIED",
        ],
        ("a", &b_ip, 81, "\"b\""),
    );

    // Denied by an explicit deny rule in the other cluster; c has no policy of its own.
    settles(
        &lab,
        "default/c",
        "cluster2/default/b",
        "80",
        &[
            "egress  at default/c  ALLOWED  no policy selects default/c",
            "ingress at default/b  DENIED   CiliumNetworkPolicy default/b-in  ingressDeny[0]  deny rule",
            "verdict: DENIED",
        ],
        ("c", &b_ip, 80, "\"b\""),
    );

    // Denied by default at ingress: a NetworkPolicy without rules.
    settles(
        &lab,
        "default/c",
        "cluster2/default/d",
        "80",
        &[
            "egress  at default/c  ALLOWED  no policy selects default/c",
            "ingress at default/d  DENIED   default deny: NetworkPolicy default/deny-all selects default/d, no rule allows",
            "verdict: DENIED",
        ],
        ("c", &d_ip, 80, "\"d\""),
    );

    // For programs.
    let v: Value = lab.json(&[
        "--context",
        "cluster1",
        "policy",
        "trace",
        "--src",
        "cluster1/default/c",
        "--dst",
        "cluster2/default/b",
        "--dport",
        "80",
        "-o",
        "json",
    ]);
    assert_eq!(v["verdict"], "deny", "{v}");
    assert_eq!(
        (v["protocol"].as_str(), v["dport"].as_u64()),
        (Some("TCP"), Some(80))
    );
    assert_eq!(v["src"]["cluster"], "cluster1");
    assert_eq!(v["dst"]["pod"], "b");
    assert_eq!(v["egress"]["decision"], "no-policy");
    assert_eq!(v["egress"]["peer-identity-source"], "ipcache");
    assert_eq!(v["egress"]["peer-identity"], v["dst"]["identity"]);
    let ingress = &v["ingress"];
    assert_eq!(ingress["decision"], "deny-rule");
    assert_eq!(ingress["cluster"], "cluster2");
    assert_eq!(ingress["enforced"], true);
    assert_eq!(ingress["peer-identity"], v["src"]["identity"]);
    assert!(
        ingress["peer-labels"]
            .as_str()
            .unwrap()
            .contains("k8s:app=c"),
        "cluster2 knows cluster1's identity: {ingress}"
    );
    let rule = &ingress["rules"][0];
    assert_eq!(rule["policy"]["kind"], "CiliumNetworkPolicy");
    assert_eq!(rule["policy"]["name"], "b-in");
    assert_eq!(
        (rule["section"].as_str(), rule["index"].as_u64()),
        (Some("ingressDeny"), Some(0))
    );
    assert_eq!(rule["entry"]["verdict"], "deny");
    assert_eq!(
        rule["entry"]["peer"].as_str().unwrap(),
        v["src"]["identity"].to_string()
    );

    // Errors name what is missing.
    let fails = |args: &[&str]| {
        let mut all = vec!["--context", "cluster1", "policy", "trace"];
        all.extend_from_slice(args);
        let out = lab.plexus(&all);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = fails(&[
        "--src",
        "default/nope",
        "--dst",
        "cluster2/default/b",
        "--dport",
        "80",
    ]);
    assert!(
        err.contains("pod default/nope not found on any node of cluster cluster1"),
        "{err}"
    );
    let err = fails(&[
        "--src",
        "default/a",
        "--dst",
        "cluster9/default/b",
        "--dport",
        "80",
    ]);
    assert!(err.contains("context \"cluster9\" not found"), "{err}");
    let err = fails(&[
        "--src",
        "default/a",
        "--dst",
        "cluster2/default/b",
        "--dport",
        "dns",
    ]);
    assert!(
        err.contains("pod default/b has no port named dns (its named ports: http, other)"),
        "{err}"
    );
    let err = fails(&["--src", "a", "--dst", "cluster2/default/b", "--dport", "80"]);
    assert!(err.contains("is not [CLUSTER/]NAMESPACE/POD"), "{err}");
    lab.down();
}

#[test]
fn policy_trace_names_the_deciding_rule_at_both_ends_across_clusters_tunnel() {
    run_lab("ptrt", Duration::from_secs(420), |lab| test(lab, "tunnel"));
}

/// Natively routed packets carry no identity: the receiving node looks the source up in its
/// ipcache, and the trace does the same.
#[test]
fn policy_trace_names_the_deciding_rule_at_both_ends_across_clusters_native() {
    run_lab("ptrn", Duration::from_secs(420), |lab| test(lab, "native"));
}
