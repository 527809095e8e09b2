//! DNS-aware policy in the core: the endpoints with DNS rules and the `toFQDNs` patterns go to
//! the DNS proxy; what its learner gives back ([`Input::Fqdn`]) puts the learned addresses in
//! the ipcache under their selector set's identity, which `toFQDNs` rules then allow; expiry
//! takes both out again.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use plexus_agent::core::{FQDN_IDENTITIES, Input, NodeCore};
use plexus_datapath::policy::EndpointPolicy;
use plexus_datapath::{Direction, Prefix, RoutingMode};
use plexus_dnsproxy::{CacheConfig, FqdnSelectors, Learner};
use plexus_ipcache::Change;

const CLIENT: u32 = 65_536 + 300;
const OTHER_CLIENT: u32 = 65_536 + 302;
const KUBE_DNS: u32 = 65_536 + 301;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.example.test"}]
  - toFQDNs: [{matchPattern: "*.example.test"}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;

fn setup() -> NodeCore {
    let value: serde_json::Value = serde_norway::from_str(POLICY).unwrap();
    let policy = plexus_policy::parse_value(&value, 1, "default").unwrap();
    let mut core = core(RoutingMode::Tunnel);
    core.step_all([
        Input::PolicyUpsert {
            key: "plexus/objects/v1/policies/CiliumNetworkPolicy/default/fqdn".into(),
            policy: Box::new(policy),
            object: value,
        },
        Input::IdentityUpsert {
            id: CLIENT,
            labels: labels(
                "k8s:app=client;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
            ),
        },
        Input::IdentityUpsert {
            id: OTHER_CLIENT,
            labels: labels(
                "k8s:app=other;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default",
            ),
        },
        Input::IdentityUpsert {
            id: KUBE_DNS,
            labels: labels(
                "k8s:k8s-app=kube-dns;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=kube-system",
            ),
        },
        Input::EndpointUpsert(endpoint(7, "10.1.1.5", CLIENT)),
        Input::EndpointUpsert(endpoint(8, "10.1.1.6", OTHER_CLIENT)),
        Input::PoliciesSynced,
    ]);
    core
}

fn answer(q: &str, ips: &[Ipv4Addr], ttl: u32) -> Message {
    let name = Name::from_ascii(q).unwrap();
    let mut m = Message::response(1, OpCode::Query);
    m.add_query(Query::query(name.clone(), RecordType::A));
    for ip in ips {
        m.add_answer(Record::from_rdata(name.clone(), ttl, RData::A(A(*ip))));
    }
    m
}

/// The egress TCP/80 identities of a policy.
fn web_peers(p: &EndpointPolicy) -> Vec<u32> {
    p.rules
        .iter()
        .filter(|r| r.direction == Direction::Egress && !r.deny && r.proto == 6 && r.port_lo == 80)
        .map(|r| r.identity)
        .collect()
}

#[test]
fn learned_addresses_get_their_selector_sets_identity_and_to_fqdns_allows_it() {
    let mut core = setup();
    let out = core.take_output();
    // Only the endpoint whose egress policy has DNS rules goes to the proxy.
    let dns = out.dns.unwrap();
    assert_eq!(dns.endpoints.keys().copied().collect::<Vec<_>>(), vec![7]);
    assert!(dns.endpoints[&7].1.egress_enforced);
    assert_eq!(
        dns.selectors.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["*.example.test"]
    );
    assert!(
        web_peers(&out.policies.unwrap()[&7]).is_empty(),
        "nothing learned yet"
    );
    // Nothing changed: the proxy is not given the same again.
    let out = run(&mut core, [Input::PoliciesSynced]);
    assert!(out.dns.is_none());

    // The proxy learns www.example.test.
    let mut learner = Learner::new(CacheConfig::default(), FQDN_IDENTITIES);
    learner.set_selectors(FqdnSelectors::new(&dns.selectors));
    let t0 = Instant::now();
    let www = Ipv4Addr::new(172, 31, 254, 11);
    let learned = learner.on_response(&answer("www.example.test.", &[www], 30), t0);
    let id = *FQDN_IDENTITIES.start();
    let out = run(&mut core, [Input::Fqdn(learned.changes)]);
    let host = Prefix::new(www, 32).unwrap();
    assert!(
        out.ipcache
            .iter()
            .any(|c| matches!(c, Change::Upsert(p, v) if *p == host && v.identity == id)),
        "{:?}",
        out.ipcache
    );
    let policies = out.policies.unwrap();
    assert_eq!(web_peers(&policies[&7]), vec![id]);
    assert_eq!(core.ipcache().lookup(www).unwrap().identity, id);
    assert_eq!(
        core.fqdn_names()["www.example.test"],
        [std::net::IpAddr::V4(www)].into()
    );
    // The identity is known with its labels (flows show them).
    let labels = &core.policy().identities()[&id].labels;
    assert!(
        labels.to_string().contains("fqdn:*.example.test"),
        "{labels}"
    );

    // A second address of the same name: the same identity, an ipcache entry only.
    let api = Ipv4Addr::new(172, 31, 254, 12);
    let learned = learner.on_response(&answer("www.example.test.", &[api], 30), t0);
    let out = run(&mut core, [Input::Fqdn(learned.changes)]);
    assert_eq!(core.ipcache().lookup(api).unwrap().identity, id);
    assert!(out.policies.is_none(), "no new identity, no policy change");

    // Expired and unused: out of the ipcache, the identity released, the rule gone.
    let gone = learner.expire(t0 + Duration::from_secs(31), |_| false);
    let out = run(&mut core, [Input::Fqdn(gone.changes)]);
    assert!(out.ipcache.contains(&Change::Delete(host)));
    assert!(core.ipcache().lookup(www).is_none());
    assert!(web_peers(&out.policies.unwrap()[&7]).is_empty());
    assert!(core.fqdn_names().is_empty());
}

#[test]
fn fqdn_and_cidr_identities_never_share_numbers() {
    let cidr_max = plexus_agent::core::CIDR_IDENTITY_MAX;
    assert!(cidr_max >= plexus_datapath::IDENTITY_LOCAL_BASE);
    assert_eq!(*FQDN_IDENTITIES.start(), cidr_max + 1);
    assert_eq!(*FQDN_IDENTITIES.end(), plexus_datapath::IDENTITY_LOCAL_MAX);
}
