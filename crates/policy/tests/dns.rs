//! DNS rules resolved for the DNS proxy: patterns per peer and port, L7 wildcarding by allows
//! without DNS rules, several rules adding up.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use plexus_model::identity::NumericIdentity;
use plexus_policy::{DnsEntry, Peer, Proto};

const C1: u32 = 65536;

const DNS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns:
        - matchPattern: "*.Example.test."
        - matchName: api.other.test
    - ports: [{port: "8053", protocol: UDP}]
"#;

fn setup(
    yaml: &str,
) -> (
    plexus_policy::PolicyRepository,
    plexus_model::labels::Labels,
) {
    let mut r = repo(yaml);
    let client = pod("client", "default", "cluster1");
    let dns = pod("kube-dns", "kube-system", "cluster1");
    add(&mut r, &[(C1 + 1, &client), (C1 + 53, &dns)]);
    (r, client)
}

#[test]
fn dns_rules_per_peer_and_port() {
    let (r, client) = setup(DNS);
    let p = r.resolve_dns(&ep(&client));
    assert!(p.egress_enforced);
    let patterns: BTreeSet<String> = ["*.example.test", "api.other.test"]
        .into_iter()
        .map(String::from)
        .collect();
    let server = Peer::Identity(NumericIdentity(C1 + 53));
    assert_eq!(
        p.entries,
        vec![
            DnsEntry {
                peer: server,
                proto: Some(Proto::Tcp),
                ports: Some((53, 53)),
                patterns: Some(patterns.clone()),
            },
            DnsEntry {
                peer: server,
                proto: Some(Proto::Udp),
                ports: Some((53, 53)),
                patterns: Some(patterns),
            },
            // The element without rules allows every name on its port.
            DnsEntry {
                peer: server,
                proto: Some(Proto::Udp),
                ports: Some((8053, 8053)),
                patterns: None,
            },
        ]
    );
    let id = NumericIdentity(C1 + 53);
    assert!(p.has_dns_rules(id, None, Proto::Udp, 53));
    assert!(!p.has_dns_rules(id, None, Proto::Udp, 8053));
    assert!(!p.has_dns_rules(NumericIdentity(C1 + 1), None, Proto::Udp, 53));
    assert!(p.allows(id, None, Proto::Udp, 53, "www.example.test"));
    assert!(p.allows(id, None, Proto::Tcp, 53, "api.other.test"));
    assert!(!p.allows(id, None, Proto::Udp, 53, "example.test"));
    assert!(!p.allows(id, None, Proto::Udp, 53, "a.b.example.test"));
    assert!(p.allows(id, None, Proto::Udp, 8053, "anything.org"));
    // Endpoints the policy does not select have no DNS rules.
    let other = pod("other", "default", "cluster1");
    assert_eq!(r.resolve_dns(&ep(&other)), Default::default());
}

const WILDCARD: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: wide}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:app: kube-dns}
"#;

#[test]
fn an_allow_without_dns_rules_wildcards_the_names() {
    let (r, client) = setup(&format!("{DNS}\n---\n{WILDCARD}"));
    let p = r.resolve_dns(&ep(&client));
    let id = NumericIdentity(C1 + 53);
    // Still proxied (a rule with DNS rules covers port 53), but every name passes.
    assert!(p.has_dns_rules(id, None, Proto::Udp, 53));
    assert!(p.allows(id, None, Proto::Udp, 53, "not-listed.org"));
    assert!(p.entries.contains(&DnsEntry {
        peer: Peer::Identity(id),
        proto: None,
        ports: None,
        patterns: None,
    }));
}

const TWO: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: more}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchName: more.test}]
"#;

#[test]
fn rules_of_several_policies_add_up() {
    let (r, client) = setup(&format!("{DNS}\n---\n{TWO}"));
    let p = r.resolve_dns(&ep(&client));
    let id = NumericIdentity(C1 + 53);
    assert!(p.allows(id, None, Proto::Udp, 53, "more.test"));
    assert!(p.allows(id, None, Proto::Udp, 53, "x.example.test"));
    assert!(!p.allows(id, None, Proto::Udp, 53, "less.test"));
}
