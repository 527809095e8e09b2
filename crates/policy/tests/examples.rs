//! The walkthrough policies of `shared/examples`, parsed from copies of the literal files, and
//! resolved for the walkthrough's identities.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_policy::{
    Direction::{Egress, Ingress},
    Peer, PolicyEntry, Proto,
};

const L4_POLICY: &str = include_str!("data/protected-db-l4-policy.yaml");
const GLOBAL_SERVICES: &str = include_str!("data/global-services-networkpolicy.yaml");

// protected-db's lab: cluster ids 101 and 102.
const C1: u32 = 101 << 16;
const C2: u32 = 102 << 16;

#[test]
fn protected_db_l4_policy() {
    let protected = pod("protected-db", "default", "cluster1");
    let employee1 = pod("employee", "default", "cluster1");
    let stranger1 = pod("stranger", "default", "cluster1");
    let employee2 = pod("employee", "istio-space", "cluster2");
    let ids = [
        (C1 + 1, &protected),
        (C1 + 2, &employee1),
        (C1 + 3, &stranger1),
        (C2 + 1, &employee2),
    ];
    // Both settings of policy-default-local-cluster give the walkthrough's outcome.
    for default_local in [true, false] {
        let mut r = repo_with(L4_POLICY, default_local);
        add(&mut r, &ids);
        let p = r.resolve(&ep(&protected));
        assert!(p.ingress_enforced && !p.egress_enforced);
        let expect: Vec<PolicyEntry> = [C1 + 2, C2 + 1]
            .into_iter()
            .map(|id| PolicyEntry {
                direction: Ingress,
                peer: Peer::Identity(NumericIdentity(id)),
                proto: Some(Proto::Tcp),
                ports: Some((6379, 6379)),
                deny: false,
            })
            .collect();
        assert_eq!(p.entries, expect, "default_local_cluster={default_local}");
        assert!(tcp(&p, Ingress, C1 + 2, 6379));
        assert!(tcp(&p, Ingress, C2 + 1, 6379));
        assert!(!tcp(&p, Ingress, C1 + 3, 6379), "stranger is dropped");
        // The policy does not select the other pods.
        assert!(!r.resolve(&ep(&stranger1)).ingress_enforced);
    }
    // The same policy applied in cluster2 would select nothing there: its endpointSelector
    // names cluster1.
    let policies = plexus_policy::parse_documents(L4_POLICY, "default").unwrap();
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].key.name, "clustermesh-ingress-l4-policy");
}

#[test]
fn global_services_policies() {
    let x_wing = pod("x-wing", "default", "cluster1").with_cluster("cluster1");
    let mut x_wing_named = x_wing.clone();
    x_wing_named.insert(plexus_model::labels::Label::k8s("name", "x-wing"));
    let mut rebel1 = pod("rebel-base", "default", "cluster1");
    rebel1.insert(plexus_model::labels::Label::k8s("name", "rebel-base"));
    let mut rebel2 = pod("rebel-base", "default", "cluster2");
    rebel2.insert(plexus_model::labels::Label::k8s("name", "rebel-base"));
    let dns1 = Labels::parse(
        "k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=kube-system;k8s:k8s-app=kube-dns;",
    )
    .unwrap();
    let dns2 = dns1.clone().with_cluster("cluster2");
    let (c1, c2) = (1u32 << 16, 2u32 << 16);
    let mut r = repo(GLOBAL_SERVICES);
    add(
        &mut r,
        &[
            (c1 + 1, &x_wing_named),
            (c1 + 2, &rebel1),
            (c2 + 2, &rebel2),
            (c1 + 53, &dns1),
            (c2 + 53, &dns2),
        ],
    );
    assert_eq!(r.len(), 2);
    let p = r.resolve(&ep(&x_wing_named));
    assert!(p.egress_enforced && !p.ingress_enforced);
    assert_eq!(
        p.entries,
        vec![
            PolicyEntry {
                direction: Egress,
                peer: Peer::Identity(NumericIdentity(c1 + 53)),
                proto: Some(Proto::Udp),
                ports: Some((53, 53)),
                deny: false,
            },
            PolicyEntry {
                direction: Egress,
                peer: Peer::Identity(NumericIdentity(c2 + 2)),
                proto: None,
                ports: None,
                deny: false,
            },
        ],
        "local kube-dns on UDP 53 (the L7 DNS rule at L4), rebel-base of cluster2 on any port"
    );
    // rebel-base in cluster1 is only allowed DNS.
    let p = r.resolve(&ep(&rebel1));
    let peers: BTreeSet<Peer> = p.entries.iter().map(|e| e.peer).collect();
    assert_eq!(
        peers,
        BTreeSet::from([Peer::Identity(NumericIdentity(c1 + 53))])
    );
    // With the option off, allow-dns reaches every cluster's kube-dns.
    let mut off = repo_with(GLOBAL_SERVICES, false);
    add(&mut off, &[(c1 + 53, &dns1), (c2 + 53, &dns2)]);
    let p = off.resolve(&ep(&rebel1));
    assert_eq!(p.entries.len(), 2);
}
