//! Resolution semantics: every supported field, default deny, deny precedence, namespace and
//! cluster defaulting, and identities that arrive after the policy.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use common::*;
use plexus_model::cidr::Cidr;
use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_policy::resolved::{MapKey, Verdict};
use plexus_policy::{
    Direction::{Egress, Ingress},
    EndpointInfo, IdentityChange, NamedPort, Peer, PolicyEntry, PolicyKey, PolicyKind, Proto,
    parse_documents,
};

const C1: u32 = 65536;
const C2: u32 = 131072;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn ids(policy: &plexus_policy::EndpointPolicy, dir: plexus_policy::Direction) -> BTreeSet<u32> {
    policy
        .entries
        .iter()
        .filter(|e| e.direction == dir && !e.deny)
        .filter_map(|e| match e.peer {
            Peer::Identity(id) => Some(id.0),
            _ => None,
        })
        .collect()
}

const L3: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l3}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: web}
"#;

#[test]
fn from_endpoints_allows_and_default_denies_the_rest() {
    let mut r = repo(L3);
    let (db, web, other) = (
        pod("db", "default", "cluster1"),
        pod("web", "default", "cluster1"),
        pod("x", "default", "cluster1"),
    );
    add(&mut r, &[(C1 + 1, &db), (C1 + 2, &web), (C1 + 3, &other)]);
    let p = r.resolve(&ep(&db));
    assert!(p.ingress_enforced && !p.egress_enforced);
    assert_eq!(
        p.entries,
        vec![PolicyEntry {
            direction: Ingress,
            peer: Peer::Identity(NumericIdentity(C1 + 2)),
            proto: None,
            ports: None,
            deny: false
        }]
    );
    assert!(tcp(&p, Ingress, C1 + 2, 80));
    assert!(!tcp(&p, Ingress, C1 + 3, 80));
    assert!(tcp(&p, Egress, C1 + 3, 80), "egress not enforced");
    assert_eq!(
        r.resolve_identity(NumericIdentity(C1 + 1), BTreeMap::new()),
        Some(p.clone())
    );
    assert_eq!(
        r.resolve_identity(NumericIdentity(C1 + 99), BTreeMap::new()),
        None
    );
    // An endpoint no rule selects is not enforced.
    let q = r.resolve(&ep(&web));
    assert!(!q.ingress_enforced && q.entries.is_empty());
}

#[test]
fn empty_sections_follow_cilium() {
    let doc = |ingress: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  endpointSelector: {{}}\n  ingress: {ingress}\n"
        )
    };
    let me = pod("a", "default", "cluster1");
    // `ingress: []` does not enforce.
    let p = repo(&doc("[]")).resolve(&ep(&me));
    assert!(!p.ingress_enforced);
    // `ingress: [{}]` enforces and allows nothing.
    let p = repo(&doc("[{}]")).resolve(&ep(&me));
    assert!(p.ingress_enforced && p.entries.is_empty());
    // A rule with only toPorts allows every peer on those ports.
    let p = repo(&doc(
        "[{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]",
    ))
    .resolve(&ep(&me));
    assert_eq!(p.entries.len(), 1);
    assert_eq!(p.entries[0].peer, Peer::Any);
    assert_eq!(p.entries[0].ports, Some((80, 80)));
    assert!(tcp(&p, Ingress, 2, 80) && !tcp(&p, Ingress, 2, 81));
    // An explicitly empty peer list selects nothing even with ports.
    let p = repo(&doc(
        "[{fromEndpoints: [], toPorts: [{ports: [{port: '80'}]}]}]",
    ))
    .resolve(&ep(&me));
    assert!(p.ingress_enforced && p.entries.is_empty());
}

#[test]
fn deny_beats_allow_and_deny_alone_enforces() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: bad}}]
    toPorts: [{ports: [{port: "6379", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: q}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egressDeny:
  - toEntities: [world]
"#;
    let mut r = repo(yaml);
    let (db, bad) = (
        pod("db", "default", "cluster1"),
        pod("bad", "default", "cluster1"),
    );
    add(&mut r, &[(C1 + 1, &db), (C1 + 2, &bad)]);
    let p = r.resolve(&ep(&db));
    assert!(
        !tcp(&p, Ingress, C1 + 2, 6379),
        "deny wins over the allow-all"
    );
    assert!(tcp(&p, Ingress, C1 + 2, 80), "deny is limited to its port");
    assert!(tcp(&p, Ingress, 2, 6379));
    // egressDeny alone puts egress in default deny (Cilium: a non-empty egressDeny section).
    assert!(p.egress_enforced);
    assert!(!tcp(&p, Egress, C1 + 2, 80));
    let map = p.to_map();
    assert_eq!(
        map.identities.get(&MapKey {
            direction: Ingress,
            identity: C1 + 2,
            proto: 6,
            port: 6379,
            port_prefix_len: 16
        }),
        Some(&Verdict::Deny)
    );
    assert_eq!(
        map.identities.get(&MapKey {
            direction: Ingress,
            identity: 0,
            proto: 0,
            port: 0,
            port_prefix_len: 0
        }),
        Some(&Verdict::Allow)
    );
}

#[test]
fn entities_resolve_to_cilium_identities() {
    let yaml = |entity: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: e}}\nspec:\n  endpointSelector: {{matchLabels: {{app: db}}}}\n  egress:\n  - toEntities: [{entity}]\n"
        )
    };
    let (db, local, remote) = (
        pod("db", "default", "cluster1"),
        pod("x", "other", "cluster1"),
        pod("x", "default", "cluster2"),
    );
    let check = |entity: &str, expect: &[u32]| {
        let mut r = repo(&yaml(entity));
        add(
            &mut r,
            &[(C1 + 1, &db), (C1 + 2, &local), (C2 + 1, &remote)],
        );
        let p = r.resolve(&ep(&db));
        assert!(p.egress_enforced);
        assert_eq!(
            ids(&p, Egress),
            expect.iter().copied().collect(),
            "{entity}"
        );
    };
    check("host", &[1]);
    check("world", &[2, 9, 10]);
    check("unmanaged", &[3]);
    check("health", &[4]);
    check("init", &[5]);
    check("remote-node", &[6]);
    check("kube-apiserver", &[7]);
    check("cluster", &[1, 3, 4, 5, 6, 7, 8, C1 + 1, C1 + 2]);
    let r = repo(&yaml("all"));
    let p = r.resolve(&ep(&db));
    assert_eq!(p.entries.len(), 1);
    assert_eq!(p.entries[0].peer, Peer::Any);
}

#[test]
fn cidr_peers_are_prefix_lists_with_except_removed() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c}
spec:
  endpointSelector: {matchLabels: {app: db}}
  egress:
  - toCIDR: [192.0.2.7/32, 198.51.100.9]
  - toCIDRSet:
    - cidr: 10.0.0.0/30
      except: [10.0.0.1/32]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  ingress:
  - fromCIDRSet: [{cidr: "2001:db8::/32"}]
"#;
    let r = repo(yaml);
    let db = pod("db", "default", "cluster1");
    let p = r.resolve(&ep(&db));
    let prefixes: Vec<(plexus_policy::Direction, Cidr, Option<(u16, u16)>)> = p
        .entries
        .iter()
        .filter_map(|e| match e.peer {
            Peer::Prefix(c) => Some((e.direction, c, e.ports)),
            _ => None,
        })
        .collect();
    assert_eq!(
        prefixes,
        vec![
            (Ingress, cidr("2001:db8::/32"), None),
            (Egress, cidr("10.0.0.0/32"), Some((443, 443))),
            (Egress, cidr("10.0.0.2/31"), Some((443, 443))),
            (Egress, cidr("192.0.2.7/32"), None),
            (Egress, cidr("198.51.100.9/32"), None),
        ]
    );
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    let v = |peer: u32, addr: &str, port: u16| {
        p.verdict(Egress, NumericIdentity(peer), ip(addr), Proto::Tcp, port)
    };
    assert_eq!(v(2, "10.0.0.2", 443), Verdict::Allow);
    assert_eq!(v(2, "10.0.0.1", 443), Verdict::Deny, "except");
    assert_eq!(v(2, "10.0.0.2", 80), Verdict::Deny, "port");
    assert_eq!(v(2, "192.0.2.7", 1), Verdict::Allow);
    // CIDR rules match by address, whoever owns it: a pod of any cluster inside the prefix.
    assert_eq!(v(C1 + 5, "192.0.2.7", 1), Verdict::Allow);
    assert_eq!(v(C1 + 5, "10.0.0.2", 443), Verdict::Allow);
    assert_eq!(
        v(C1 + 5, "10.0.0.1", 443),
        Verdict::Deny,
        "except, for a pod too"
    );
    assert_eq!(
        v(C1 + 5, "10.0.0.9", 443),
        Verdict::Deny,
        "outside the prefix"
    );
    assert_eq!(p.to_map().prefixes.len(), 5);
}

#[test]
fn ports_ranges_protocols_and_named_ports() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - toPorts:
    - ports:
      - {port: "8000", endPort: 8003, protocol: TCP}
      - {port: 53, protocol: UDP}
      - {port: "9", protocol: SCTP}
      - {port: "7000"}
      - {port: metrics, protocol: TCP}
      - {port: missing}
  egress:
  - toPorts:
    - ports:
      - {port: http}
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports:
      - {port: "0", protocol: udp}
"#;
    let mut r = repo(yaml);
    let web = pod("web", "default", "cluster1");
    add(&mut r, &[(C1 + 2, &web)]);
    let tcp9090 = NamedPort {
        port: 9090,
        proto: Proto::Tcp,
    };
    let me = EndpointInfo {
        labels: pod("db", "default", "cluster1"),
        named_ports: BTreeMap::from([("metrics".to_string(), BTreeSet::from([tcp9090]))]),
    };
    r.set_egress_named_ports(BTreeMap::from([(
        "http".to_string(),
        BTreeSet::from([
            NamedPort {
                port: 80,
                proto: Proto::Tcp,
            },
            NamedPort {
                port: 8080,
                proto: Proto::Tcp,
            },
        ]),
    )]));
    let p = r.resolve(&me);
    let got: Vec<(
        plexus_policy::Direction,
        Peer,
        Option<Proto>,
        Option<(u16, u16)>,
    )> = p
        .entries
        .iter()
        .map(|e| (e.direction, e.peer, e.proto, e.ports))
        .collect();
    let web_id = Peer::Identity(NumericIdentity(C1 + 2));
    assert_eq!(
        got,
        vec![
            (Ingress, Peer::Any, None, Some((7000, 7000))),
            (Ingress, Peer::Any, Some(Proto::Tcp), Some((8000, 8003))),
            (Ingress, Peer::Any, Some(Proto::Tcp), Some((9090, 9090))),
            (Ingress, Peer::Any, Some(Proto::Udp), Some((53, 53))),
            (Ingress, Peer::Any, Some(Proto::Sctp), Some((9, 9))),
            (Egress, Peer::Any, Some(Proto::Tcp), Some((80, 80))),
            (Egress, Peer::Any, Some(Proto::Tcp), Some((8080, 8080))),
            (Egress, web_id, Some(Proto::Udp), None),
        ]
    );
    assert!(tcp(&p, Ingress, 2, 8002) && !tcp(&p, Ingress, 2, 8004));
    // Per-identity named ports win over the node-wide index for peers selected by identity.
    let yaml2 = yaml.replace("{port: \"0\", protocol: udp}", "{port: http}");
    let mut r2 = repo(&yaml2);
    add(&mut r2, &[(C1 + 2, &web)]);
    r2.set_egress_named_ports(BTreeMap::from([(
        "http".to_string(),
        BTreeSet::from([NamedPort {
            port: 80,
            proto: Proto::Tcp,
        }]),
    )]));
    r2.set_identity_named_ports(
        NumericIdentity(C1 + 2),
        BTreeMap::from([(
            "http".to_string(),
            BTreeSet::from([NamedPort {
                port: 8443,
                proto: Proto::Tcp,
            }]),
        )]),
    );
    let p2 = r2.resolve(&me);
    let egress: Vec<(Peer, Option<(u16, u16)>)> = p2
        .entries
        .iter()
        .filter(|e| e.direction == Egress)
        .map(|e| (e.peer, e.ports))
        .collect();
    assert_eq!(
        egress,
        vec![(Peer::Any, Some((80, 80))), (web_id, Some((8443, 8443)))]
    );
    assert_eq!(
        p.verdict(Ingress, NumericIdentity(2), None, Proto::Udp, 7000),
        Verdict::Allow,
        "no protocol means any"
    );
    let map = p.to_map();
    assert!(map.identities.contains_key(&MapKey {
        direction: Ingress,
        identity: 0,
        proto: 6,
        port: 8000,
        port_prefix_len: 14
    }));
}

#[test]
fn match_expressions_select_endpoints() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: m}
spec:
  endpointSelector:
    matchExpressions:
    - {key: app, operator: In, values: [db, cache]}
    - {key: tier, operator: DoesNotExist}
  ingress:
  - fromEndpoints:
    - matchExpressions:
      - {key: app, operator: NotIn, values: [bad]}
      - {key: k8s:app, operator: Exists}
"#;
    let mut r = repo(yaml);
    let (db, cache, bad, good) = (
        pod("db", "default", "cluster1"),
        pod("cache", "default", "cluster1"),
        pod("bad", "default", "cluster1"),
        pod("good", "default", "cluster1"),
    );
    add(&mut r, &[(C1 + 1, &bad), (C1 + 2, &good)]);
    let mut tiered = db.clone();
    tiered.insert(plexus_model::labels::Label::k8s("tier", "x"));
    assert!(r.resolve(&ep(&db)).ingress_enforced);
    assert!(r.resolve(&ep(&cache)).ingress_enforced);
    assert!(!r.resolve(&ep(&tiered)).ingress_enforced);
    assert_eq!(ids(&r.resolve(&ep(&db)), Ingress), BTreeSet::from([C1 + 2]));
}

#[test]
fn namespace_defaulting_cnp_and_ccnp() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: n, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db, k8s:io.kubernetes.pod.namespace: default}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: web}
    - matchLabels: {app: web, io.kubernetes.pod.namespace: staging}
    - {}
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: cw}
spec:
  endpointSelector: {matchLabels: {app: cache}}
  ingress:
  - fromEndpoints: [{}]
"#;
    let mut r = repo(yaml);
    let web_prod = pod("web", "prod", "cluster1");
    let web_staging = pod("web", "staging", "cluster1");
    let web_dev = pod("web", "dev", "cluster1");
    let other_prod = pod("x", "prod", "cluster1");
    add(
        &mut r,
        &[
            (C1 + 1, &web_prod),
            (C1 + 2, &web_staging),
            (C1 + 3, &web_dev),
            (C1 + 4, &other_prod),
        ],
    );
    // The subject is in the policy's namespace whatever the selector says.
    assert!(
        r.resolve(&ep(&pod("db", "prod", "cluster1")))
            .ingress_enforced
    );
    assert!(
        !r.resolve(&ep(&pod("db", "default", "cluster1")))
            .ingress_enforced
    );
    let p = r.resolve(&ep(&pod("db", "prod", "cluster1")));
    assert_eq!(ids(&p, Ingress), BTreeSet::from([C1 + 1, C1 + 2, C1 + 4]));
    // Clusterwide: the subject in every namespace; `{}` peers need a namespace label, so no
    // reserved identity.
    for ns in ["prod", "dev"] {
        let p = r.resolve(&ep(&pod("cache", ns, "cluster1")));
        assert!(p.ingress_enforced);
        assert_eq!(
            ids(&p, Ingress),
            BTreeSet::from([C1 + 1, C1 + 2, C1 + 3, C1 + 4])
        );
    }
    let key = PolicyKey {
        kind: PolicyKind::CiliumClusterwideNetworkPolicy,
        namespace: String::new(),
        name: "cw".into(),
    };
    assert!(r.get(&key).is_some());
}

const CLUSTER: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: web}
    - matchLabels: {app: admin, io.cilium.k8s.policy.cluster: cluster2}
"#;

#[test]
fn cluster_label_and_default_local_cluster_option() {
    let (w1, w2, a1, a2) = (
        pod("web", "default", "cluster1"),
        pod("web", "default", "cluster2"),
        pod("admin", "default", "cluster1"),
        pod("admin", "default", "cluster2"),
    );
    let all = [(C1 + 1, &w1), (C2 + 1, &w2), (C1 + 2, &a1), (C2 + 2, &a2)];
    let db = pod("db", "default", "cluster1");
    let mut on = repo_with(CLUSTER, true);
    add(&mut on, &all);
    assert_eq!(
        ids(&on.resolve(&ep(&db)), Ingress),
        BTreeSet::from([C1 + 1, C2 + 2])
    );
    let mut off = repo_with(CLUSTER, false);
    add(&mut off, &all);
    assert_eq!(
        ids(&off.resolve(&ep(&db)), Ingress),
        BTreeSet::from([C1 + 1, C2 + 1, C2 + 2])
    );
}

#[test]
fn remote_identities_arriving_after_the_policy() {
    let mut r = repo(CLUSTER);
    let db = pod("db", "default", "cluster1");
    let other = pod("x", "default", "cluster1");
    add(&mut r, &[(C1 + 1, &db)]);
    assert!(ids(&r.resolve(&ep(&db)), Ingress).is_empty());
    let admin2 = pod("admin", "default", "cluster2");
    let changed = r.update_identities([IdentityChange::Upsert(NumericIdentity(C2 + 7), admin2)]);
    assert_eq!(changed.len(), 1);
    assert!(r.affects(&db, &changed));
    assert!(!r.affects(&other, &changed));
    assert_eq!(ids(&r.resolve(&ep(&db)), Ingress), BTreeSet::from([C2 + 7]));
    // An unrelated remote identity changes no selector.
    let changed = r.update_identities([IdentityChange::Upsert(
        NumericIdentity(C2 + 8),
        pod("x", "default", "cluster2"),
    )]);
    assert!(changed.is_empty());
    // The remote cluster leaves.
    let changed = r.update_identities([
        IdentityChange::Remove(NumericIdentity(C2 + 7)),
        IdentityChange::Remove(NumericIdentity(C2 + 8)),
    ]);
    assert!(r.affects(&db, &changed));
    assert!(ids(&r.resolve(&ep(&db)), Ingress).is_empty());
}

#[test]
fn replace_and_delete() {
    let mut r = repo(L3);
    let db = pod("db", "default", "cluster1");
    let before = r.cache().selector_count();
    let key = r.policies().next().unwrap().key.clone();
    let replacement = parse_documents(&L3.replace("app: web", "app: api"), "default").unwrap();
    let old = r.upsert(replacement.into_iter().next().unwrap());
    assert!(old.is_some());
    assert_eq!(r.cache().selector_count(), before, "old selectors released");
    add(&mut r, &[(C1 + 9, &pod("api", "default", "cluster1"))]);
    assert_eq!(ids(&r.resolve(&ep(&db)), Ingress), BTreeSet::from([C1 + 9]));
    assert!(r.delete(&key).is_some());
    assert!(r.is_empty());
    assert_eq!(r.cache().selector_count(), 0);
    assert!(!r.resolve(&ep(&db)).ingress_enforced);
}

#[test]
fn specs_description_labels_dns_and_fqdns() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: s}
specs:
- description: dns
  labels: [{key: team, value: a, source: k8s}]
  endpointSelector: {matchLabels: {app: db}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
- endpointSelector: {matchLabels: {app: db}}
  egress:
  - toFQDNs: [{matchName: example.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#;
    let mut r = repo(yaml);
    let dns: Labels = Labels::parse(
        "k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=kube-system;k8s:k8s-app=kube-dns;",
    )
    .unwrap();
    add(&mut r, &[(C1 + 53, &dns)]);
    let p = r.resolve(&ep(&pod("db", "default", "cluster1")));
    assert!(p.egress_enforced);
    assert_eq!(
        p.entries,
        vec![PolicyEntry {
            direction: Egress,
            peer: Peer::Identity(NumericIdentity(C1 + 53)),
            proto: None,
            ports: Some((53, 53)),
            deny: false
        }],
        "DNS rules enforced at L4; toFQDNs selects nothing before a DNS source reports addresses"
    );
    // Once a DNS proxy gives learned addresses an identity labelled with the pattern,
    // toFQDNs selects that identity (and not one of another pattern).
    let db = pod("db", "default", "cluster1");
    assert_eq!(
        r.fqdn_patterns(),
        BTreeSet::from(["example.com".to_string()])
    );
    let learned = Labels::parse("fqdn:example.com=;reserved:world=;").unwrap();
    let other = Labels::parse("fqdn:other.org=;reserved:world=;").unwrap();
    const FQDN_ID: u32 = (1 << 24) + 0x8000;
    add(&mut r, &[(FQDN_ID, &learned), (FQDN_ID + 1, &other)]);
    let p = r.resolve(&ep(&db));
    assert_eq!(p.entries.len(), 2);
    assert_eq!(
        p.entries[1],
        PolicyEntry {
            direction: Egress,
            peer: Peer::Identity(NumericIdentity(FQDN_ID)),
            proto: Some(Proto::Tcp),
            ports: Some((443, 443)),
            deny: false
        }
    );
    let policy = r.policies().next().unwrap();
    assert_eq!(policy.rules.len(), 2);
    assert_eq!(policy.rules[0].description.as_deref(), Some("dns"));
    assert_eq!(policy.rules[0].labels, vec!["k8s:team=a".to_string()]);
    assert!(policy.rules[0].egress[0].l7_ignored);
}

const NP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {team: ops}}
      podSelector: {matchLabels: {app: admin}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: staging}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - {port: 5432}
    - {port: metrics, protocol: TCP}
    - {port: 7000, endPort: 7001, protocol: UDP}
"#;

#[test]
fn network_policy_translation() {
    let mut r = repo(NP);
    let web = pod("web", "prod", "cluster1");
    let web_other_ns = pod("web", "dev", "cluster1");
    let mut admin_ops = pod("admin", "ops-ns", "cluster1");
    admin_ops.insert(plexus_model::labels::Label::k8s(
        "io.cilium.k8s.namespace.labels.team",
        "ops",
    ));
    let staging = pod("anything", "staging", "cluster1");
    add(
        &mut r,
        &[
            (C1 + 1, &web),
            (C1 + 2, &web_other_ns),
            (C1 + 3, &admin_ops),
            (C1 + 4, &staging),
        ],
    );
    let me = EndpointInfo {
        labels: pod("db", "prod", "cluster1"),
        named_ports: BTreeMap::from([(
            "metrics".to_string(),
            BTreeSet::from([NamedPort {
                port: 9100,
                proto: Proto::Tcp,
            }]),
        )]),
    };
    let p = r.resolve(&me);
    assert!(
        p.ingress_enforced && p.egress_enforced,
        "Egress listed without rules denies all"
    );
    assert_eq!(ids(&p, Ingress), BTreeSet::from([C1 + 1, C1 + 3, C1 + 4]));
    assert!(tcp(&p, Ingress, C1 + 1, 5432), "protocol defaults to TCP");
    assert_eq!(
        p.verdict(Ingress, NumericIdentity(C1 + 1), None, Proto::Udp, 5432),
        Verdict::Deny
    );
    assert!(tcp(&p, Ingress, C1 + 1, 9100));
    assert_eq!(
        p.verdict(Ingress, NumericIdentity(C1 + 1), None, Proto::Udp, 7001),
        Verdict::Allow
    );
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    assert_eq!(
        p.verdict(
            Ingress,
            NumericIdentity(2),
            ip("10.2.0.1"),
            Proto::Tcp,
            5432
        ),
        Verdict::Allow
    );
    assert_eq!(
        p.verdict(
            Ingress,
            NumericIdentity(2),
            ip("10.1.0.1"),
            Proto::Tcp,
            5432
        ),
        Verdict::Deny
    );
    assert!(!tcp(&p, Egress, C1 + 1, 80));
    // Not selected: other pods of the namespace, and pods of other namespaces.
    assert!(!r.resolve(&ep(&web)).ingress_enforced);
}

#[test]
fn network_policy_defaults() {
    let yaml = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-in}
spec:
  podSelector: {}
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-out, namespace: locked}
spec:
  podSelector: {}
  egress: []
  policyTypes: [Egress]
"#;
    let r = repo(yaml);
    let p = r.resolve(&ep(&pod("a", "default", "cluster1")));
    assert!(p.ingress_enforced && !p.egress_enforced);
    assert_eq!(p.entries.len(), 1);
    assert_eq!(p.entries[0].peer, Peer::Any);
    let p = r.resolve(&ep(&pod("a", "locked", "cluster1")));
    assert!(!p.ingress_enforced && p.egress_enforced && p.entries.is_empty());
}

#[test]
fn enable_default_deny_false_adds_without_isolating() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soft}
spec:
  endpointSelector: {matchLabels: {app: db}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: bad}}]
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
"#;
    let mut r = repo(yaml);
    let (db, web, bad) = (
        pod("db", "default", "cluster1"),
        pod("web", "default", "cluster1"),
        pod("bad", "default", "cluster1"),
    );
    add(&mut r, &[(C1 + 2, &web), (C1 + 3, &bad)]);
    let p = r.resolve(&ep(&db));
    assert!(!p.ingress_enforced, "no default deny for ingress");
    assert!(p.egress_enforced, "egress keeps the default");
    assert!(tcp(&p, Ingress, 2, 80), "others still pass");
    assert!(!tcp(&p, Ingress, C1 + 3, 80), "deny entries still apply");
    assert!(!p.to_map().ingress_enforced);
    // Another rule with default deny isolates the endpoint again.
    let strict = L3.replace("name: l3", "name: strict");
    r.upsert(parse_documents(&strict, "default").unwrap().remove(0));
    let p = r.resolve(&ep(&db));
    assert!(p.ingress_enforced && tcp(&p, Ingress, C1 + 2, 80) && !tcp(&p, Ingress, 2, 80));
}

#[test]
fn reserved_label_selectors_are_not_defaulted() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: r}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints:
    - matchLabels: {"reserved:host": ""}
    - matchExpressions: [{key: "reserved:kube-apiserver", operator: Exists}]
"#;
    let r = repo(yaml);
    let p = r.resolve(&ep(&pod("db", "default", "cluster1")));
    assert_eq!(
        ids(&p, Ingress),
        BTreeSet::from([1, 7]),
        "no namespace or cluster added"
    );
}
