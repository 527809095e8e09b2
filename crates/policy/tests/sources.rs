//! Which policy an endpoint's entries come from (`resolve_with_sources`): the same policy as
//! `resolve`, each entry attributed to its policy, and the policies that enforce each
//! direction (what makes it default deny).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::*;
use plexus_model::identity::NumericIdentity;
use plexus_policy::Direction::{Egress, Ingress};
use plexus_policy::{PolicyKey, PolicyKind, Proto};

const POLICIES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-web}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: web}
    toPorts:
    - ports: [{port: "5432", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-batch}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {app: batch}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other-app}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints:
    - matchLabels: {app: db}
"#;

const DB: u32 = 65536 + 1;
const WEB: u32 = 65536 + 2;
const BATCH: u32 = 65536 + 3;

fn key(name: &str) -> PolicyKey {
    PolicyKey {
        kind: PolicyKind::CiliumNetworkPolicy,
        namespace: "default".into(),
        name: name.into(),
    }
}

#[test]
fn entries_name_their_policy_and_enforcing_policies_are_listed() {
    let mut repo = repo(POLICIES);
    let (db, web, batch) = (
        pod("db", "default", "cluster1"),
        pod("web", "default", "cluster1"),
        pod("batch", "default", "cluster1"),
    );
    add(&mut repo, &[(DB, &db), (WEB, &web), (BATCH, &batch)]);
    let (policy, sources) = repo.resolve_with_sources(&ep(&db));
    assert_eq!(policy, repo.resolve(&ep(&db)), "the same policy as resolve");
    let names: Vec<&str> = sources
        .policies
        .iter()
        .map(|p| p.key.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["allow-web", "deny-batch"],
        "only those selecting db"
    );
    let peer = |id: u32| (NumericIdentity(id), None::<IpAddr>);

    let (id, ip) = peer(BATCH);
    let deny = sources.covering(true, Ingress, id, ip, Some(Proto::Tcp), 5432);
    assert_eq!(deny, [&key("deny-batch")]);

    let (id, ip) = peer(WEB);
    let allow = sources.covering(false, Ingress, id, ip, Some(Proto::Tcp), 5432);
    assert_eq!(allow, [&key("allow-web")]);
    assert!(
        sources
            .covering(false, Ingress, id, ip, Some(Proto::Tcp), 22)
            .is_empty()
    );
    assert!(
        sources.covering(false, Ingress, id, ip, None, 0).is_empty(),
        "ICMP is not allowed by a port rule"
    );

    // Both policies enforce ingress on db (a deny-only policy too, as in Cilium); none egress.
    let enforcing: Vec<&str> = sources
        .enforcing(Ingress)
        .into_iter()
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(enforcing, ["allow-web", "deny-batch"]);
    assert!(sources.enforcing(Egress).is_empty());
}
