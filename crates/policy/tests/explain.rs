//! Explanations of verdicts (`explain`, for `plexus policy trace`): the verdict is the
//! datapath's, and the deciding rules name their policy, section and index, entry and kind of
//! match.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::*;
use plexus_model::identity::NumericIdentity;
use plexus_policy::Direction::{Egress, Ingress};
use plexus_policy::resolved::Verdict;
use plexus_policy::{
    Decision, Direction, Explanation, MatchKind, Packet, Peer, PolicyKind, PolicyRepository, Proto,
    explain,
};

const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-web}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: other}
  - fromEndpoints:
    - matchLabels: {app: web}
    toPorts:
    - ports: [{port: "5432", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-batch}
specs:
- endpointSelector: {matchLabels: {app: nothing}}
  ingress: [{}]
- endpointSelector: {matchLabels: {app: db}}
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {app: batch}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-out}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector: {matchLabels: {app: batch}}
  - ports: [{port: 5432}]
  - to:
    - podSelector: {matchLabels: {app: db}}
"#;

const DB: u32 = 65536 + 1;
const WEB: u32 = 65536 + 2;
const BATCH: u32 = 65536 + 3;
const LONE: u32 = 65536 + 4;

fn setup() -> PolicyRepository {
    let mut repo = repo(POLICIES);
    let (db, web, batch, lone) = (
        pod("db", "default", "cluster1"),
        pod("web", "default", "cluster1"),
        pod("batch", "default", "cluster1"),
        pod("lone", "default", "cluster1"),
    );
    add(
        &mut repo,
        &[(DB, &db), (WEB, &web), (BATCH, &batch), (LONE, &lone)],
    );
    repo
}

fn trace(repo: &PolicyRepository, app: &str, dir: Direction, peer: u32, port: u16) -> Explanation {
    let (policy, sources) = repo.resolve_with_sources(&ep(&pod(app, "default", "cluster1")));
    explain(
        &policy,
        &sources,
        &Packet {
            direction: dir,
            peer: NumericIdentity(peer),
            peer_ip: Some(IpAddr::from([10, 1, 0, 9])),
            proto: Proto::Tcp,
            port,
        },
    )
}

/// `CiliumNetworkPolicy default/allow-web ingress[1] L3-L4`, one line per deciding rule.
fn rules(e: &Explanation) -> Vec<String> {
    e.rules
        .iter()
        .map(|r| format!("{} {} {}", r.policy, r.origin, r.match_kind))
        .collect()
}

#[test]
fn an_allow_rule_names_its_policy_section_index_and_match() {
    let repo = setup();
    let e = trace(&repo, "db", Ingress, WEB, 5432);
    assert_eq!(e.verdict, Verdict::Allow);
    assert!(e.enforced);
    assert_eq!(e.decision, Decision::Allowed);
    assert_eq!(
        rules(&e),
        ["CiliumNetworkPolicy default/allow-web ingress[1] L3-L4"]
    );
    assert_eq!(e.rules[0].entry.peer, Peer::Identity(NumericIdentity(WEB)));
    assert_eq!(e.rules[0].entry.ports, Some((5432, 5432)));
    assert_eq!(e.match_kind(), Some(MatchKind::L3L4));
}

#[test]
fn default_deny_lists_the_enforcing_policies() {
    let repo = setup();
    let e = trace(&repo, "db", Ingress, WEB, 22);
    assert_eq!(e.verdict, Verdict::Deny);
    assert_eq!(e.decision, Decision::DefaultDeny);
    assert!(e.rules.is_empty());
    let enforcing: Vec<String> = e.enforcing.iter().map(ToString::to_string).collect();
    assert_eq!(
        enforcing,
        [
            "CiliumNetworkPolicy default/allow-web",
            "CiliumNetworkPolicy default/deny-batch"
        ]
    );
    assert_eq!(e.match_kind(), None);
}

#[test]
fn a_deny_rule_wins_and_is_named_with_its_specs_element() {
    let repo = setup();
    let e = trace(&repo, "db", Ingress, BATCH, 5432);
    assert_eq!(e.verdict, Verdict::Deny);
    assert_eq!(e.decision, Decision::DenyRule);
    assert_eq!(
        rules(&e),
        ["CiliumNetworkPolicy default/deny-batch specs[1].ingressDeny[0] L3-Only"]
    );
}

#[test]
fn no_policy_and_not_enforced() {
    let repo = setup();
    let e = trace(&repo, "lone", Ingress, WEB, 80);
    assert_eq!(e.verdict, Verdict::Allow);
    assert_eq!(e.decision, Decision::NoPolicy);
    assert!(e.selecting.is_empty() && e.rules.is_empty() && !e.enforced);

    // db is selected, for ingress only.
    let e = trace(&repo, "db", Egress, WEB, 80);
    assert_eq!(e.verdict, Verdict::Allow);
    assert_eq!(e.decision, Decision::NotEnforced);
    assert_eq!(e.selecting.len(), 2);
    assert!(e.enforcing.is_empty());
}

#[test]
fn every_allowing_rule_is_listed_the_datapaths_match_first() {
    let repo = setup();
    // web -> db on 5432: the port rule (any peer, L4-Only) and the db rule (L3-Only); the
    // datapath looks up db's identity first, so it reports L3-Only.
    let e = trace(&repo, "web", Egress, DB, 5432);
    assert_eq!(e.decision, Decision::Allowed);
    assert_eq!(
        rules(&e),
        [
            "NetworkPolicy default/web-out egress[2] L3-Only",
            "NetworkPolicy default/web-out egress[1] L4-Only",
        ]
    );
    assert_eq!(e.match_kind(), Some(MatchKind::L3Only));
    assert_eq!(e.rules[1].entry.peer, Peer::Any);
    assert_eq!(e.rules[1].entry.proto, Some(Proto::Tcp));

    // Any peer on 5432 only.
    let e = trace(&repo, "web", Egress, LONE, 5432);
    assert_eq!(
        rules(&e),
        ["NetworkPolicy default/web-out egress[1] L4-Only"]
    );
    let e = trace(&repo, "web", Egress, LONE, 5433);
    assert_eq!(e.decision, Decision::DefaultDeny);
    assert_eq!(e.enforcing[0].kind, PolicyKind::NetworkPolicy);
}

#[test]
fn the_explanation_agrees_with_the_rules_meaning() {
    let repo = setup();
    for app in ["db", "web", "batch", "lone"] {
        let labels = pod(app, "default", "cluster1");
        let policy = repo.resolve(&ep(&labels));
        for dir in [Ingress, Egress] {
            for peer in [DB, WEB, BATCH, LONE, 2, 1] {
                for port in [22, 80, 5432] {
                    let e = trace(&repo, app, dir, peer, port);
                    let expected =
                        policy.verdict(dir, NumericIdentity(peer), None, Proto::Tcp, port);
                    assert_eq!(e.verdict, expected, "{app} {dir} {peer} {port}");
                    match e.decision {
                        Decision::Allowed => {
                            assert!(!e.rules.is_empty() && e.rules.iter().all(|r| !r.entry.deny))
                        }
                        Decision::DenyRule => {
                            assert!(!e.rules.is_empty() && e.rules.iter().all(|r| r.entry.deny))
                        }
                        Decision::DefaultDeny => assert!(e.enforced && !e.enforcing.is_empty()),
                        Decision::NoPolicy | Decision::NotEnforced => assert!(!e.enforced),
                    }
                }
            }
        }
    }
}
