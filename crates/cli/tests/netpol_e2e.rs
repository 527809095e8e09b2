//! The Kubernetes NetworkPolicy e2e suite (`test/e2e/network/netpol/network_policy.go`
//! upstream), its TCP cases ported to a Plexus lab, as root.
//!
//! Upstream's model: namespaces `x`, `y`, `z` with pods `a`, `b`, `c` each, serving TCP 80 and
//! 81 (`plexus_test_support::netpol`). Each case applies its policies (our YAML, written after
//! upstream's Go builders), states the expected truth table over all 81 ordered pairs with
//! upstream's helpers, and validates it: every pair probed at once, again until the table
//! matches or [`LIMIT`] passes, then a failure with upstream's printed tables. Between cases
//! the policies are deleted, changed labels restored, and the all-allowed table validated on
//! both ports, so no case sees the previous one's state.
//!
//! - `netpol_single_cluster`: one cluster of two nodes, every namespace in it.
//! - `netpol_multi_cluster`: two meshed clusters, `x` and `y` in cluster1 and `z` in cluster2;
//!   upstream cases whose meaning holds across clusters, the local-cluster default of KNP peers
//!   (`policy-default-local-cluster`), and CNPs naming `io.cilium.k8s.policy.cluster`.
//!
//! One lab per test (both run at once) keeps CI short. Every ported case runs, also those on
//! namespace labels, label changes, ipBlock on pod addresses and egress named ports (gated
//! until those parts of issue 15 reached main).
//!
//! Not ported (see docs/policy.md, "Conformance"): the UDP and SCTP truth tables (upstream's
//! `[LinuxOnly]` and `[Feature:SCTPConnectivity]` groups; the lab's server has no SCTP) and
//! the UDP half of "allowing any port traffic to a server on a specific protocol".
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use plexus_test_support::lab::{Lab, run_lab};
use plexus_test_support::netpol::{Model, Peer, Reachability, validate};

/// How long a truth table may take to come true after a change (policy or labels reaching
/// every node; a relabel also waits the agents' identity grace period).
const LIMIT: Duration = Duration::from_secs(30);

/// One ported case: upstream's name and its steps.
struct Case {
    name: &'static str,
    run: fn(&mut Suite) -> Result<(), String>,
}

/// The lab and model the cases of one test share, and what the current case changed.
struct Suite<'a> {
    lab: &'a Lab,
    model: Model,
    /// `(namespace, context)`: where each namespace lives.
    placement: &'static [(&'static str, &'static str)],
    /// The files the current case applied, with their context (deleted on reset).
    applied: Vec<(String, PathBuf)>,
    /// `plexus` commands that undo the current case's label changes.
    undo: Vec<Vec<String>>,
    files: u32,
}

/// Strips the common indentation of a YAML text written indented in the source.
fn dedent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().skip_while(|l| l.trim().is_empty()).collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out: String = lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

impl Suite<'_> {
    /// The context of the cluster namespace `ns` lives in.
    fn ctx(&self, ns: &str) -> &'static str {
        self.placement
            .iter()
            .find(|(n, _)| *n == ns)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no namespace {ns} in {:?}", self.placement))
    }

    /// Applies `yaml` (indented in the source) in the cluster of namespace `ns`.
    fn apply(&mut self, ns: &str, yaml: &str) {
        self.files += 1;
        let ctx = self.ctx(ns);
        let path = self
            .lab
            .write(&format!("netpol-{}.yaml", self.files), &dedent(yaml));
        self.lab
            .ok(&["--context", ctx, "apply", "-f", path.to_str().unwrap()]);
        self.applied.push((ctx.to_string(), path));
    }

    /// Every pair allowed: the start of each expectation.
    fn all(&self) -> Reachability {
        Reachability::new(&self.model, true)
    }

    /// Validates `expected` on TCP `port`.
    fn validate(&self, port: u16, expected: Reachability) -> Result<(), String> {
        let rounds = validate(&self.model, port, &expected, LIMIT)?;
        // How long propagation took, in the log (not asserted).
        eprintln!("netpol:   TCP/{port} matched in round {rounds}");
        Ok(())
    }

    /// The address of pod `key` (`ns/pod`).
    fn ip(&self, key: &str) -> String {
        self.model.pod(key).ip.clone()
    }

    /// `plexus label KIND NAME KEY=VALUE [-n NS]` in the cluster of `ns`, undone on reset.
    fn label(&mut self, kind: &str, ns: &str, name: &str, key: &str, value: &str) {
        let ctx = self.ctx(ns).to_string();
        let mut args = vec!["--context".to_string(), ctx, "label".into(), kind.into()];
        args.push(name.into());
        if kind == "pod" {
            args.extend(["-n".into(), ns.into()]);
        }
        let mut undo = args.clone();
        args.push(format!("{key}={value}"));
        undo.push(format!("{key}-"));
        let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.ok(&args_ref);
        self.undo.push(undo);
    }

    /// Deletes what the case applied, undoes its label changes, and waits until every pair
    /// connects again on both ports.
    fn reset(&mut self) {
        for (ctx, path) in self.applied.drain(..).rev() {
            self.lab
                .ok(&["--context", &ctx, "delete", "-f", path.to_str().unwrap()]);
        }
        for args in self.undo.drain(..).rev() {
            let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
            self.lab.ok(&args_ref);
        }
        for port in [80, 81] {
            if let Err(e) = validate(&self.model, port, &self.all(), LIMIT) {
                panic!("after a case, with its policies deleted, not everything connects: {e}");
            }
        }
    }
}

/// Brings up `lab_yaml` (with `--mesh` for several clusters), creates the model as `placement`
/// says, waits until every pair connects, then runs `cases`, and fails naming every case that
/// failed, with its tables.
fn run(
    lab: &Lab,
    lab_yaml: &str,
    mesh: bool,
    placement: &'static [(&'static str, &'static str)],
    cases: &[Case],
) {
    let file = lab.write("lab.yaml", lab_yaml);
    lab.up(&file, if mesh { &["--mesh"] } else { &[] });
    let model = Model::create(lab, placement);
    let mut suite = Suite {
        lab,
        model,
        placement,
        applied: Vec::new(),
        undo: Vec::new(),
        files: 0,
    };
    for port in [80, 81] {
        if let Err(e) = validate(&suite.model, port, &suite.all(), Duration::from_secs(90)) {
            panic!("the model's pods do not all connect before any policy: {e}");
        }
    }
    let mut failed = Vec::new();
    for case in cases {
        eprintln!("netpol: {}", case.name);
        // A step that panics (a command refused) fails its case, not the rest of the suite.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(&mut suite)))
                .unwrap_or_else(|panic| {
                    Err(panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "the case panicked".to_string()))
                });
        if let Err(report) = outcome {
            eprintln!("netpol: FAILED {}\n{report}", case.name);
            failed.push(format!("{}\n{report}", case.name));
        }
        suite.reset();
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

const SINGLE_LAB: &str = "clusters:\n- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}\n";
const SINGLE: &[(&str, &str)] = &[("x", "cluster1"), ("y", "cluster1"), ("z", "cluster1")];

const MULTI_LAB: &str = "clusters:\n- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 1}\n- {name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 1}\n";
const MULTI: &[(&str, &str)] = &[("x", "cluster1"), ("y", "cluster1"), ("z", "cluster2")];

#[test]
fn netpol_single_cluster() {
    run_lab("netpol", Duration::from_secs(900), |lab| {
        run(&lab, SINGLE_LAB, false, SINGLE, &single_cases());
    });
}

#[test]
fn netpol_multi_cluster() {
    run_lab("netpolmc", Duration::from_secs(600), |lab| {
        run(&lab, MULTI_LAB, true, MULTI, &multi_cases());
    });
}

// The cases, in upstream's order. Namespace selectors use `kubernetes.io/metadata.name` as
// upstream does today (Plexus maps it to the pod's namespace label); the cases on other
// namespace labels need them in identities.

fn single_cases() -> Vec<Case> {
    vec![
        Case {
            name: "should support a 'default-deny-ingress' policy",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-ingress, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Ingress]
                    ",
                );
                s.validate(80, s.all().expect_peer(Peer::any(), Peer::ns("x"), false))
            },
        },
        Case {
            name: "should support a 'default-deny-all' policy",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-all, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Ingress, Egress]
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_peer(Peer::any(), Peer::ns("x"), false)
                        .expect_peer(Peer::ns("x"), Peer::any(), false),
                )
            },
        },
        Case {
            name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: x-a-allows-x-b, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - podSelector: {matchLabels: {pod: b}}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_ingress("x/a", false)
                        .expect("x/b", "x/a", true),
                )
            },
        },
        Case {
            name: "should enforce policy to allow ingress traffic for a target",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-all, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Ingress]
                    ---
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-all-to-a, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - podSelector: {}
                          namespaceSelector: {}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_peer(Peer::any(), Peer::ns("x"), false)
                        .expect_all_ingress("x/a", true),
                )
            },
        },
        Case {
            name: "should enforce policy to allow ingress traffic from pods in all namespaces",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-from-another-ns, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {}}
                    ",
                );
                s.validate(80, s.all())
            },
        },
        Case {
            name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-client-a-via-ns-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                    ",
                );
                s.validate(80, from_y_only_to_xa(s))
            },
        },
        Case {
            name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector (namespace label ns: y, as upstream before 1.21)",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-client-a-via-ns-label, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {ns: y}}
                    ",
                );
                s.validate(80, from_y_only_to_xa(s))
            },
        },
        Case {
            name: "should enforce policy based on PodSelector with MatchExpressions",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: x-a-allows-x-b, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - podSelector:
                            matchExpressions: [{key: pod, operator: In, values: [b]}]
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_ingress("x/a", false)
                        .expect("x/b", "x/a", true),
                )
            },
        },
        Case {
            name: "should enforce policy based on NamespaceSelector with MatchExpressions",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ns-y-match-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector:
                            matchExpressions:
                            - {key: kubernetes.io/metadata.name, operator: In, values: [y]}
                    ",
                );
                s.validate(80, from_y_only_to_xa(s))
            },
        },
        Case {
            name: "should enforce policy based on PodSelector or NamespaceSelector",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ns-y-match-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector:
                            matchExpressions:
                            - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                        - podSelector: {matchLabels: {pod: b}}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect("x/a", "x/a", false)
                        .expect("x/c", "x/a", false),
                )
            },
        },
        Case {
            name: "should enforce policy based on PodSelector and NamespaceSelector",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ns-y-podselector-and-nsselector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector:
                            matchExpressions:
                            - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                          podSelector: {matchLabels: {pod: b}}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_ingress("x/a", false)
                        .expect("y/b", "x/a", true)
                        .expect("z/b", "x/a", true),
                )
            },
        },
        Case {
            name: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ns-y-z-pod-b-c, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector:
                            matchExpressions:
                            - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                          podSelector:
                            matchExpressions: [{key: pod, operator: In, values: [b, c]}]
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false)
                        .expect("y/a", "x/a", false)
                        .expect("z/a", "x/a", false),
                )
            },
        },
        Case {
            name: "should enforce policy based on any PodSelectors",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ns-x-pod-b-c, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - podSelector: {matchLabels: {pod: b}}
                        - podSelector: {matchLabels: {pod: c}}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_ingress("x/a", false)
                        .expect("x/b", "x/a", true)
                        .expect("x/c", "x/a", true),
                )
            },
        },
        Case {
            name: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ns-y-pod-a-via-namespace-pod-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                          podSelector: {matchLabels: {pod: a}}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_ingress("x/a", false)
                        .expect("y/a", "x/a", true),
                )
            },
        },
        Case {
            name: "should enforce policy based on Ports",
            run: |s| {
                s.apply("x", ALLOW_Y_TO_XA_ON_81);
                s.validate(81, from_y_only_to_xa(s))
            },
        },
        Case {
            name: "should enforce multiple, stacked policies with overlapping podSelectors",
            run: |s| {
                s.apply("x", ALLOW_Y_TO_XA_ON_81);
                s.validate(81, from_y_only_to_xa(s))?;
                s.validate(80, s.all().expect_all_ingress("x/a", false))?;
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                        ports:
                        - {port: 80, protocol: TCP}
                    ",
                );
                s.validate(80, from_y_only_to_xa(s))
            },
        },
        Case {
            name: "should support allow-all policy",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-all, namespace: x}
                    spec:
                      podSelector: {}
                      ingress:
                      - {}
                    ",
                );
                s.validate(80, s.all())?;
                s.validate(81, s.all())
            },
        },
        Case {
            name: "should allow ingress access on one named port",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-all, namespace: x}
                    spec:
                      podSelector: {}
                      ingress:
                      - ports:
                        - port: serve-81-tcp
                    ",
                );
                s.validate(81, s.all())?;
                s.validate(80, s.all().expect_peer(Peer::any(), Peer::ns("x"), false))
            },
        },
        Case {
            name: "should allow ingress access from namespace on one named port",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                        ports:
                        - {port: serve-80-tcp, protocol: TCP}
                    ",
                );
                s.validate(80, from_y_only_to_xa(s))?;
                s.validate(81, s.all().expect_all_ingress("x/a", false))
            },
        },
        Case {
            name: "should allow egress access on one named port",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-egress, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Egress]
                      egress:
                      - ports:
                        - port: serve-80-tcp
                    ",
                );
                s.validate(80, s.all())?;
                s.validate(81, s.all().expect_peer(Peer::ns("x"), Peer::any(), false))
            },
        },
        Case {
            name: "should enforce updated policy",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-all-mutate-to-deny-all, namespace: x}
                    spec:
                      podSelector: {}
                      ingress:
                      - {}
                    ",
                );
                s.validate(81, s.all())?;
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-all-mutate-to-deny-all, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Ingress]
                      ingress: []
                    ",
                );
                s.validate(81, s.all().expect_peer(Peer::any(), Peer::ns("x"), false))
            },
        },
        Case {
            name: "should allow ingress access from updated namespace",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-client-a-via-ns-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {ns2: updated}}
                    ",
                );
                s.validate(80, s.all().expect_all_ingress("x/a", false))?;
                s.label("namespace", "y", "y", "ns2", "updated");
                s.validate(
                    80,
                    s.all().expect_all_ingress("x/a", false).expect_peer(
                        Peer::ns("y"),
                        Peer::any(),
                        true,
                    ),
                )
            },
        },
        Case {
            name: "should allow ingress access from updated pod",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-client-a-via-pod-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - podSelector: {matchLabels: {pod: b, pod2: updated}}
                    ",
                );
                s.validate(80, s.all().expect_all_ingress("x/a", false))?;
                s.label("pod", "x", "b", "pod2", "updated");
                s.validate(
                    80,
                    s.all()
                        .expect_all_ingress("x/a", false)
                        .expect("x/b", "x/a", true),
                )
            },
        },
        Case {
            name: "should deny ingress from pods on other namespaces",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-empty-policy, namespace: x}
                    spec:
                      podSelector: {}
                      ingress:
                      - from:
                        - podSelector: {matchLabels: {}}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_peer(Peer::ns("y"), Peer::ns("x"), false)
                        .expect_peer(Peer::ns("z"), Peer::ns("x"), false),
                )
            },
        },
        Case {
            name: "should deny ingress access to updated pod",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-ingress-via-label-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {target: isolated}}
                      policyTypes: [Ingress]
                    ",
                );
                s.validate(80, s.all())?;
                s.label("pod", "x", "a", "target", "isolated");
                s.validate(80, s.all().expect_all_ingress("x/a", false))
            },
        },
        Case {
            name: "should deny egress from pods based on PodSelector",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-egress-pod-a, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                    ",
                );
                s.validate(80, s.all().expect_all_egress("x/a", false))
            },
        },
        Case {
            name: "should deny egress from all pods in a namespace",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-egress-ns-x, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Egress]
                    ",
                );
                s.validate(80, s.all().expect_peer(Peer::ns("x"), Peer::any(), false))
            },
        },
        Case {
            name: "should work with Ingress, Egress specified together",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-client-a-via-pod-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress, Ingress]
                      ingress:
                      - from:
                        - podSelector: {matchLabels: {pod: b}}
                      egress:
                      - ports:
                        - port: 80
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_ingress("x/a", false)
                        .expect("x/b", "x/a", true),
                )?;
                s.validate(
                    81,
                    s.all()
                        .expect_all_ingress("x/a", false)
                        .expect_all_egress("x/a", false)
                        .expect("x/b", "x/a", true),
                )
            },
        },
        Case {
            name: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-to-ns-y-pod-a, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                      egress:
                      - to:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                          podSelector: {matchLabels: {pod: a}}
                    ",
                );
                s.apply(
                    "y",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-from-xa-on-ya-match-selector, namespace: y}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
                          podSelector: {matchLabels: {pod: a}}
                    ---
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-from-xa-on-yb-match-selector, namespace: y}
                    spec:
                      podSelector: {matchLabels: {pod: b}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
                          podSelector: {matchLabels: {pod: a}}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_peer(Peer::pod("x", "a"), Peer::any(), false)
                        .expect_peer(Peer::any(), Peer::pod("y", "a"), false)
                        .expect_peer(Peer::pod("x", "a"), Peer::pod("y", "a"), true)
                        .expect_peer(Peer::any(), Peer::pod("y", "b"), false),
                )
            },
        },
        Case {
            name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-to-ns-y-pod-a, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                      egress:
                      - to:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                          podSelector: {matchLabels: {pod: a}}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_egress("x/a", false)
                        .expect("x/a", "y/a", true),
                )
            },
        },
        Case {
            name: "should enforce ingress policy allowing any port traffic to a server on a specific protocol (its TCP half)",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ingress-by-proto, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - ports:
                        - protocol: TCP
                    ",
                );
                s.validate(80, s.all())
            },
        },
        Case {
            name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ingress-port-80, namespace: x}
                    spec:
                      podSelector: {}
                      ingress:
                      - ports:
                        - port: 80
                    ",
                );
                s.validate(81, s.all().expect_peer(Peer::any(), Peer::ns("x"), false))?;
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ingress, namespace: x}
                    spec:
                      podSelector: {}
                      ingress:
                      - {}
                    ",
                );
                s.validate(81, s.all())
            },
        },
        Case {
            name: "should enforce multiple egress policies with egress allow-all policy taking precedence",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-egress-port-80, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Egress]
                      egress:
                      - ports:
                        - port: 80
                    ",
                );
                s.validate(81, s.all().expect_peer(Peer::ns("x"), Peer::any(), false))?;
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-egress, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Egress]
                      egress:
                      - {}
                    ",
                );
                s.validate(81, s.all())
            },
        },
        Case {
            name: "should stop enforcing policies after they are deleted",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-all, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Ingress, Egress]
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_peer(Peer::ns("x"), Peer::any(), false)
                        .expect_peer(Peer::any(), Peer::ns("x"), false),
                )
                // The reset after every case deletes the policy and checks that everything
                // connects again: the second half of this case.
            },
        },
        Case {
            name: "should allow egress access to server in CIDR block",
            run: |s| {
                let yb = s.ip("y/b");
                s.apply(
                    "x",
                    &format!(
                        "
                        apiVersion: networking.k8s.io/v1
                        kind: NetworkPolicy
                        metadata: {{name: allow-client-a-via-cidr-egress-rule, namespace: x}}
                        spec:
                          podSelector: {{matchLabels: {{pod: a}}}}
                          policyTypes: [Egress]
                          egress:
                          - to:
                            - ipBlock: {{cidr: {yb}/32}}
                        "
                    ),
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_egress("x/a", false)
                        .expect("x/a", "y/b", true),
                )
            },
        },
        Case {
            name: "should enforce except clause while egress access to server in CIDR block",
            run: |s| {
                s.apply("x", &large_cidr_except_xb(s));
                s.validate(80, s.all().expect("x/a", "x/b", false))
            },
        },
        Case {
            name: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            run: |s| {
                s.apply("x", &large_cidr_except_xb(s));
                s.validate(80, s.all().expect("x/a", "x/b", false))?;
                let xb = s.ip("x/b");
                // The same policy, updated to allow x/b alone.
                s.apply(
                    "x",
                    &format!(
                        "
                        apiVersion: networking.k8s.io/v1
                        kind: NetworkPolicy
                        metadata: {{name: allow-client-a-via-cidr-egress-rule, namespace: x}}
                        spec:
                          podSelector: {{matchLabels: {{pod: a}}}}
                          policyTypes: [Egress]
                          egress:
                          - to:
                            - ipBlock: {{cidr: {xb}/32}}
                        "
                    ),
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_egress("x/a", false)
                        .expect("x/a", "x/b", true),
                )
            },
        },
        Case {
            name: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-egress-for-target, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                      egress:
                      - {}
                    ",
                );
                s.validate(80, s.all())?;
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-ingress-via-label-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Ingress]
                    ",
                );
                s.validate(80, s.all().expect_all_ingress("x/a", false))
            },
        },
        Case {
            name: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-ingress, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Ingress]
                    ---
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-only-sctp-ingress-on-port-81, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - ports:
                        - {port: 81, protocol: SCTP}
                    ",
                );
                s.validate(81, s.all().expect_peer(Peer::any(), Peer::ns("x"), false))
            },
        },
        Case {
            name: "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-only-sctp-ingress-on-port-80, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - ports:
                        - {port: 80, protocol: SCTP}
                    ",
                );
                s.validate(81, s.all().expect_all_ingress("x/a", false))
            },
        },
        Case {
            name: "should not allow access by TCP when a policy specifies only UDP",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-only-udp-ingress-on-port-81, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - ports:
                        - {port: 81, protocol: UDP}
                    ",
                );
                s.validate(81, s.all().expect_all_ingress("x/a", false))
            },
        },
        Case {
            name: "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-client-a-via-ns-selector-for-immutable-ns-label, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
                    ",
                );
                s.validate(80, from_y_only_to_xa(s))
            },
        },
        Case {
            name: "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-ns-y-match-selector-for-immutable-ns-label, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      policyTypes: [Egress]
                      egress:
                      - to:
                        - namespaceSelector:
                            matchExpressions:
                            - {key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_peer(Peer::pod("x", "a"), Peer::ns("y"), false),
                )
            },
        },
    ]
}

/// Ingress to x/a from namespace y only, on TCP 81.
const ALLOW_Y_TO_XA_ON_81: &str = "
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: allow-client-a-via-ns-selector, namespace: x}
    spec:
      podSelector: {matchLabels: {pod: a}}
      ingress:
      - from:
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
        ports:
        - {port: 81, protocol: TCP}
    ";

/// Upstream's table of "only namespace y reaches x/a".
fn from_y_only_to_xa(s: &Suite) -> Reachability {
    s.all()
        .expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false)
        .expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false)
}

/// Egress of x/a to the /4 around x/b's address, except x/b (upstream's `makeLargeCIDRForIP`).
fn large_cidr_except_xb(s: &Suite) -> String {
    let xb: std::net::Ipv4Addr = s.ip("x/b").parse().unwrap();
    let base = std::net::Ipv4Addr::from(u32::from(xb) & 0xf000_0000);
    format!(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: allow-client-a-via-cidr-egress-rule, namespace: x}}
        spec:
          podSelector: {{matchLabels: {{pod: a}}}}
          policyTypes: [Egress]
          egress:
          - to:
            - ipBlock:
                cidr: {base}/4
                except: [{xb}/32]
        "
    )
}

// The multi-cluster variant: x and y in cluster1, z in cluster2.

fn multi_cases() -> Vec<Case> {
    vec![
        Case {
            name: "should support a 'default-deny-ingress' policy (z in the other cluster is denied too)",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-ingress, namespace: x}
                    spec:
                      podSelector: {}
                      policyTypes: [Ingress]
                    ",
                );
                s.validate(80, s.all().expect_peer(Peer::any(), Peer::ns("x"), false))
            },
        },
        Case {
            name: "should support a 'default-deny-all' policy in the other cluster (z in cluster2)",
            run: |s| {
                s.apply(
                    "z",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: deny-all, namespace: z}
                    spec:
                      podSelector: {}
                      policyTypes: [Ingress, Egress]
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_peer(Peer::any(), Peer::ns("z"), false)
                        .expect_peer(Peer::ns("z"), Peer::any(), false),
                )
            },
        },
        Case {
            name: "should enforce policy to allow ingress traffic from pods in all namespaces (KNP peers: the local cluster only)",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-from-another-ns, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {}
                    ",
                );
                // policy-default-local-cluster (on by default, as in Cilium 1.19): a KNP peer
                // without a cluster requirement selects the policy's cluster, so z is out.
                s.validate(
                    80,
                    s.all()
                        .expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false),
                )
            },
        },
        Case {
            name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector (z in the other cluster, named by its cluster)",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: networking.k8s.io/v1
                    kind: NetworkPolicy
                    metadata: {name: allow-client-a-via-ns-selector, namespace: x}
                    spec:
                      podSelector: {matchLabels: {pod: a}}
                      ingress:
                      - from:
                        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}
                          podSelector: {matchLabels: {io.cilium.k8s.policy.cluster: cluster2}}
                    ",
                );
                s.validate(
                    80,
                    s.all().expect_all_ingress("x/a", false).expect_peer(
                        Peer::ns("z"),
                        Peer::pod("x", "a"),
                        true,
                    ),
                )
            },
        },
        Case {
            name: "CNP: ingress to x/a from namespace z of cluster2 only (io.cilium.k8s.policy.cluster)",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: cilium.io/v2
                    kind: CiliumNetworkPolicy
                    metadata: {name: from-cluster2, namespace: x}
                    spec:
                      endpointSelector: {matchLabels: {pod: a}}
                      ingress:
                      - fromEndpoints:
                        - matchLabels:
                            io.kubernetes.pod.namespace: z
                            io.cilium.k8s.policy.cluster: cluster2
                    ",
                );
                s.validate(
                    80,
                    s.all().expect_all_ingress("x/a", false).expect_peer(
                        Peer::ns("z"),
                        Peer::pod("x", "a"),
                        true,
                    ),
                )
            },
        },
        Case {
            name: "CNP in cluster2: ingress to z/a from x/a of cluster1 only, on TCP 80",
            run: |s| {
                s.apply(
                    "z",
                    "
                    apiVersion: cilium.io/v2
                    kind: CiliumNetworkPolicy
                    metadata: {name: from-cluster1-xa, namespace: z}
                    spec:
                      endpointSelector: {matchLabels: {pod: a}}
                      ingress:
                      - fromEndpoints:
                        - matchLabels:
                            io.kubernetes.pod.namespace: x
                            pod: a
                            io.cilium.k8s.policy.cluster: cluster1
                        toPorts:
                        - ports: [{port: '80', protocol: TCP}]
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_ingress("z/a", false)
                        .expect("x/a", "z/a", true),
                )?;
                s.validate(81, s.all().expect_all_ingress("z/a", false))
            },
        },
        Case {
            name: "CNP: egress of x/a to cluster2 only",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: cilium.io/v2
                    kind: CiliumNetworkPolicy
                    metadata: {name: to-cluster2, namespace: x}
                    spec:
                      endpointSelector: {matchLabels: {pod: a}}
                      egress:
                      - toEndpoints:
                        - matchLabels:
                            io.kubernetes.pod.namespace: z
                            io.cilium.k8s.policy.cluster: cluster2
                    ",
                );
                s.validate(
                    80,
                    s.all().expect_all_egress("x/a", false).expect_peer(
                        Peer::pod("x", "a"),
                        Peer::ns("z"),
                        true,
                    ),
                )
            },
        },
        Case {
            name: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic), across clusters",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: cilium.io/v2
                    kind: CiliumNetworkPolicy
                    metadata: {name: allow-to-z-a, namespace: x}
                    spec:
                      endpointSelector: {matchLabels: {pod: a}}
                      egress:
                      - toEndpoints:
                        - matchLabels:
                            io.kubernetes.pod.namespace: z
                            pod: a
                            io.cilium.k8s.policy.cluster: cluster2
                    ",
                );
                s.apply(
                    "z",
                    "
                    apiVersion: cilium.io/v2
                    kind: CiliumNetworkPolicy
                    metadata: {name: allow-from-xa, namespace: z}
                    spec:
                      endpointSelector:
                        matchExpressions: [{key: pod, operator: In, values: [a, b]}]
                      ingress:
                      - fromEndpoints:
                        - matchLabels:
                            io.kubernetes.pod.namespace: x
                            pod: a
                            io.cilium.k8s.policy.cluster: cluster1
                    ",
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_egress("x/a", false)
                        .expect_all_ingress("z/a", false)
                        .expect_all_ingress("z/b", false)
                        .expect("x/a", "z/a", true),
                )
            },
        },
        Case {
            name: "CNP: ingress to x/a from namespace labels of cluster2's z (io.cilium.k8s.namespace.labels.ns)",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: cilium.io/v2
                    kind: CiliumNetworkPolicy
                    metadata: {name: from-ns-label-z, namespace: x}
                    spec:
                      endpointSelector: {matchLabels: {pod: a}}
                      ingress:
                      - fromEndpoints:
                        - matchLabels:
                            io.cilium.k8s.namespace.labels.ns: z
                            io.cilium.k8s.policy.cluster: cluster2
                    ",
                );
                s.validate(
                    80,
                    s.all().expect_all_ingress("x/a", false).expect_peer(
                        Peer::ns("z"),
                        Peer::pod("x", "a"),
                        true,
                    ),
                )
            },
        },
        Case {
            name: "should allow ingress access from updated pod, in the other cluster",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: cilium.io/v2
                    kind: CiliumNetworkPolicy
                    metadata: {name: from-updated-z-b, namespace: x}
                    spec:
                      endpointSelector: {matchLabels: {pod: a}}
                      ingress:
                      - fromEndpoints:
                        - matchLabels:
                            io.kubernetes.pod.namespace: z
                            pod2: updated
                            io.cilium.k8s.policy.cluster: cluster2
                    ",
                );
                s.validate(80, s.all().expect_all_ingress("x/a", false))?;
                s.label("pod", "z", "b", "pod2", "updated");
                s.validate(
                    80,
                    s.all()
                        .expect_all_ingress("x/a", false)
                        .expect("z/b", "x/a", true),
                )
            },
        },
        Case {
            name: "should allow egress access to server in CIDR block, in the other cluster",
            run: |s| {
                let zb = s.ip("z/b");
                s.apply(
                    "x",
                    &format!(
                        "
                        apiVersion: networking.k8s.io/v1
                        kind: NetworkPolicy
                        metadata: {{name: allow-client-a-via-cidr-egress-rule, namespace: x}}
                        spec:
                          podSelector: {{matchLabels: {{pod: a}}}}
                          policyTypes: [Egress]
                          egress:
                          - to:
                            - ipBlock: {{cidr: {zb}/32}}
                        "
                    ),
                );
                s.validate(
                    80,
                    s.all()
                        .expect_all_egress("x/a", false)
                        .expect("x/a", "z/b", true),
                )
            },
        },
        Case {
            name: "should allow egress access on one named port, towards the other cluster",
            run: |s| {
                s.apply(
                    "x",
                    "
                    apiVersion: cilium.io/v2
                    kind: CiliumNetworkPolicy
                    metadata: {name: egress-named-port-to-z, namespace: x}
                    spec:
                      endpointSelector: {}
                      egress:
                      - toEndpoints:
                        - matchLabels:
                            io.kubernetes.pod.namespace: z
                            io.cilium.k8s.policy.cluster: cluster2
                        toPorts:
                        - ports: [{port: serve-80-tcp}]
                    ",
                );
                let to_z_only = |s: &Suite| {
                    s.all()
                        .expect_peer(Peer::ns("x"), Peer::any(), false)
                        .expect_peer(Peer::ns("x"), Peer::ns("z"), true)
                };
                s.validate(80, to_z_only(s))?;
                s.validate(81, s.all().expect_peer(Peer::ns("x"), Peer::any(), false))
            },
        },
    ]
}
