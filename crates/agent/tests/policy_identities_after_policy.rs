//! Policy whose peer identities arrive after the policy, from a remote cluster: the endpoint's
//! desired policy gains their entries when they come, and loses them when they go.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use plexus_agent::core::{Input, NodeCore};
use plexus_clustermesh::remote_cluster::RemoteEvent;
use plexus_datapath::RoutingMode;
use plexus_datapath::policy::EndpointPolicy;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-x-wing
  namespace: default
spec:
  endpointSelector:
    matchLabels:
      app: rebel-base
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: x-wing
        io.cilium.k8s.policy.cluster: c2
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
"#;

const REBEL_BASE: u32 = 65_536 + 300;
const X_WING: u32 = 131_073;

fn policy_input() -> Input {
    let value: serde_json::Value = serde_norway::from_str(POLICY).unwrap();
    let policy = plexus_policy::parse_value(&value, 1, "default").unwrap();
    Input::PolicyUpsert {
        key: "plexus/objects/v1/policies/CiliumNetworkPolicy/default/allow-x-wing".into(),
        policy: Box::new(policy),
        object: value,
    }
}

fn desired(core: &mut NodeCore) -> Option<EndpointPolicy> {
    core.take_output().policies.map(|p| p[&7].clone())
}

fn setup() -> NodeCore {
    let mut core = core(RoutingMode::Tunnel);
    core.step_all([
        policy_input(),
        Input::IdentityUpsert {
            id: REBEL_BASE,
            labels: labels(
                "k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
            ),
        },
        Input::EndpointUpsert(endpoint(7, "10.1.1.5", REBEL_BASE)),
    ]);
    assert_eq!(
        core.take_output().policies,
        None,
        "nothing before the policies are listed"
    );
    core.step(Input::PoliciesSynced);
    core
}

#[test]
fn a_remote_identity_arriving_after_the_policy_is_allowed_when_it_comes() {
    let mut core = setup();
    let before = desired(&mut core).unwrap();
    assert!(before.ingress_enforced, "default deny on ingress");
    assert!(before.rules.is_empty(), "no peer matches yet");

    core.step_all([
        remote("c2", RemoteEvent::ClusterConfig { cluster_id: 2 }),
        remote(
            "c2",
            remote_identity(
                X_WING,
                "k8s:app=x-wing;k8s:io.cilium.k8s.policy.cluster=c2;k8s:io.kubernetes.pod.namespace=default",
            ),
        ),
        // Another app of c2, and x-wing of a third cluster: not selected.
        remote(
            "c2",
            remote_identity(
                X_WING + 1,
                "k8s:app=tie-fighter;k8s:io.cilium.k8s.policy.cluster=c2;k8s:io.kubernetes.pod.namespace=default",
            ),
        ),
        remote(
            "c3",
            remote_identity(
                196_609,
                "k8s:app=x-wing;k8s:io.cilium.k8s.policy.cluster=c3;k8s:io.kubernetes.pod.namespace=default",
            ),
        ),
    ]);
    let after = desired(&mut core).unwrap();
    let peers: Vec<(u32, u8, u16)> = after
        .rules
        .iter()
        .map(|r| (r.identity, r.proto, r.port_lo))
        .collect();
    assert_eq!(peers, vec![(X_WING, 6, 80)]);

    // The remote goes away: its identity, and the entry, go too.
    core.step(remote("c2", RemoteEvent::Drained));
    let gone = desired(&mut core).unwrap();
    assert!(gone.ingress_enforced && gone.rules.is_empty());
}

#[test]
fn nothing_is_recomputed_when_nothing_policy_depends_on_changed() {
    let mut core = setup();
    assert!(desired(&mut core).is_some());
    core.step(remote(
        "c2",
        RemoteEvent::IpUpsert(pair("10.2.1.5", "192.168.2.1", X_WING).into()),
    ));
    assert_eq!(desired(&mut core), None);
}

#[test]
fn an_endpoint_whose_identity_is_unknown_gets_its_policy_once_it_is_known() {
    let mut core = setup();
    core.step(Input::EndpointUpsert(endpoint(8, "10.1.1.6", 70_000)));
    let out = core.take_output().policies.unwrap();
    assert!(!out.contains_key(&8));
    core.step(Input::IdentityUpsert {
        id: 70_000,
        labels: labels(
            "k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
        ),
    });
    let out = core.take_output().policies.unwrap();
    assert!(out[&8].ingress_enforced);
}

#[test]
fn an_endpoint_moved_to_an_identity_not_known_yet_keeps_its_policy_until_it_is() {
    let mut core = setup();
    let before = desired(&mut core).unwrap();
    assert!(before.ingress_enforced);
    // Relabelled: its new identity has not reached this node's watch yet. It must not be left
    // without policy (open) meanwhile.
    const NEW: u32 = 65_536 + 301;
    core.step(Input::EndpointUpsert(endpoint(7, "10.1.1.5", NEW)));
    let meanwhile = desired(&mut core).unwrap();
    assert_eq!(meanwhile, before, "the policy it had");
    // Known, and no longer selected by the policy (other labels): its own policy now.
    core.step(Input::IdentityUpsert {
        id: NEW,
        labels: labels(
            "k8s:app=other;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
        ),
    });
    let after = desired(&mut core).unwrap();
    assert!(!after.ingress_enforced && after.rules.is_empty());
}
