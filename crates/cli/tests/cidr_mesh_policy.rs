//! CIDR rules on pods' addresses and egress named ports across a mesh, as root: 2 clusters of
//! one node each, meshed (tunnel mode). cluster1's `client` connects to cluster2's `target-a`
//! and `target-b` (the built-in server on TCP 8080, named `http`, and 9000, named `admin`):
//!
//! 1. no policy: everything connects;
//! 2. a NetworkPolicy with `ipBlock` on cluster2's pod CIDR, `except` target-b's address, port
//!    8080: only target-a:8080 (the pods keep their own identities, the address decides); the
//!    same after cluster1's agent restarts;
//! 3. a CiliumNetworkPolicy towards cluster2's `app: target` on the named port `http`, which
//!    cluster1's agent knows only from the remote ipcache entries' `NamedPorts`: 8080 of both;
//! 4. an allow of every port of the targets with an `egressDeny` `toCIDR` of target-a's
//!    address: the CIDR deny beats the identity allow, target-b passes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use plexus_test_support::lab::{Lab, eventually, run_lab};
use plexus_test_support::walkthrough;

const LAB: &str = "clusters:
- {name: cluster1, id: 1, podCIDR: 10.30.0.0/16, serviceCIDR: 10.31.0.0/16, nodes: 1}
- {name: cluster2, id: 2, podCIDR: 10.40.0.0/16, serviceCIDR: 10.41.0.0/16, nodes: 1}
routing: tunnel
";

const CLIENT: &str = "apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: client}
spec:
  containers:
  - name: client
    image: busybox
    command: [sleep, '3600']
";

fn target(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: target}}
spec:
  containers:
  - name: server
    image: nginx
    ports:
    - {{containerPort: 8080, name: http}}
    - {{containerPort: 9000, name: admin}}
"
    )
}

fn ip_block(except: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: to-cluster2-block}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {{cidr: 10.40.0.0/16, except: [{except}/32]}}
    ports:
    - port: 8080
"
    )
}

const NAMED_PORT: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-targets-http}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {app: target, io.cilium.k8s.policy.cluster: cluster2}
    toPorts:
    - ports: [{port: http, protocol: TCP}]
";

fn cidr_deny(address: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: targets-but-one}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toEndpoints:
    - matchLabels: {{app: target, io.cilium.k8s.policy.cluster: cluster2}}
  egressDeny:
  - toCIDR: [{address}/32]
"
    )
}

/// Whether client reaches target-a:8080, target-a:9000, target-b:8080, target-b:9000.
fn outcome(lab: &Lab, a: &str, b: &str) -> [bool; 4] {
    let reaches = |ip: &str, port: u16, who: &str| {
        walkthrough::reaches(lab, "cluster1", "default", "client", ip, port, who)
    };
    [
        reaches(a, 8080, "target-a"),
        reaches(a, 9000, "target-a"),
        reaches(b, 8080, "target-b"),
        reaches(b, 9000, "target-b"),
    ]
}

fn settles(lab: &Lab, a: &str, b: &str, what: &str, expected: [bool; 4]) {
    eventually(Duration::from_secs(30), what, || {
        let got = outcome(lab, a, b);
        (got == expected)
            .then_some(())
            .ok_or_else(|| format!("{got:?}, expected {expected:?}"))
    });
    // It stays so (no flapping once settled).
    assert_eq!(outcome(lab, a, b), expected, "{what}, again");
}

fn cidr_and_named_ports(mut lab: Lab) {
    let file = lab.write("lab.yaml", LAB);
    let out = lab.up(&file, &["--mesh"]);
    assert!(
        out.contains("1/1 nodes are connected to all clusters"),
        "{out}"
    );
    lab.apply("cluster1", "client.yaml", CLIENT);
    lab.apply("cluster2", "target-a.yaml", &target("target-a"));
    lab.apply("cluster2", "target-b.yaml", &target("target-b"));
    let (a, b) = (
        lab.pod_ip("cluster2", "target-a"),
        lab.pod_ip("cluster2", "target-b"),
    );

    settles(&lab, &a, &b, "no policy", [true, true, true, true]);

    let knp = lab.apply("cluster1", "ip-block.yaml", &ip_block(&b));
    settles(
        &lab,
        &a,
        &b,
        "ipBlock with except on pod addresses",
        [true, false, false, false],
    );
    // A restarted agent keeps the prefixes' CIDR identities and the verdicts.
    lab.ok(&["lab", "restart-agent", "cluster1", "cluster1-node1"]);
    settles(
        &lab,
        &a,
        &b,
        "the same after an agent restart",
        [true, false, false, false],
    );
    lab.ok(&[
        "--context",
        "cluster1",
        "delete",
        "-f",
        knp.to_str().unwrap(),
    ]);

    let cnp = lab.apply("cluster1", "named-port.yaml", NAMED_PORT);
    settles(
        &lab,
        &a,
        &b,
        "egress named port of remote pods",
        [true, false, true, false],
    );
    lab.ok(&[
        "--context",
        "cluster1",
        "delete",
        "-f",
        cnp.to_str().unwrap(),
    ]);

    let deny = lab.apply("cluster1", "cidr-deny.yaml", &cidr_deny(&a));
    settles(
        &lab,
        &a,
        &b,
        "CIDR deny beats identity allow",
        [false, false, true, true],
    );
    lab.ok(&[
        "--context",
        "cluster1",
        "delete",
        "-f",
        deny.to_str().unwrap(),
    ]);
    settles(&lab, &a, &b, "policies gone", [true, true, true, true]);
    lab.down();
}

#[test]
fn cidr_rules_match_remote_pods_and_egress_named_ports_resolve() {
    run_lab("cidr", Duration::from_secs(400), cidr_and_named_ports);
}
