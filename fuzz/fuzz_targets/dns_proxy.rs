//! DNS messages through the agent's DNS proxy: the bytes as a query from a pod
//! (`DnsProxy::on_query`, `parse_query`), and as a server's response (`DnsProxy::on_response`,
//! `learn_from_response`) to a forwarded query with the same id and question, so the answer
//! reaches the learner, the identity allocator and the holds.
#![no_main]
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use plexus_dnsproxy::{
    CacheConfig, DnsProxy, EndpointId, Flow, FqdnSelectors, Learner, ProxyConfig, QueryAction,
    ResponseAction, learn_from_response, parse_query,
};
use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_policy::{
    DnsPolicy, EndpointInfo, EndpointPolicy, IdentityChange, PolicyConfig, PolicyRepository, Proto,
    parse_documents,
};

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
  - toFQDNs: [{matchPattern: "*.example.test"}, {matchName: "a.test"}]
"#;
const DNS_ID: NumericIdentity = NumericIdentity(65536 + 53);
const BASE: u32 = (1 << 24) + 0x8000;

fn labels(app: &str, ns: &str) -> Labels {
    let text = format!(
        "k8s:app={app};k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace={ns};"
    );
    Labels::parse(&text).unwrap_or_else(|e| panic!("fixed labels {text:?}: {e}"))
}

/// The client's resolved L4 and DNS policies, computed once: resolving per input would
/// dominate the run.
static POLICIES: LazyLock<(EndpointPolicy, DnsPolicy)> = LazyLock::new(|| {
    let mut repo = PolicyRepository::new(PolicyConfig::new("cluster1"));
    repo.upsert_all(parse_documents(POLICY, "default").unwrap_or_else(|e| panic!("{e}")));
    let client = labels("client", "default");
    repo.update_identities([
        IdentityChange::Upsert(NumericIdentity(65537), client.clone()),
        IdentityChange::Upsert(DNS_ID, labels("kube-dns", "kube-system")),
    ]);
    let info = EndpointInfo {
        labels: client,
        named_ports: Default::default(),
    };
    (repo.resolve(&info), repo.resolve_dns(&info))
});

fn proxy() -> DnsProxy {
    let mut learner = Learner::new(CacheConfig::default(), BASE..=BASE + 10);
    learner.set_selectors(FqdnSelectors::new(["*.example.test", "a.test"]));
    let mut p = DnsProxy::new(ProxyConfig::default(), learner);
    let (l4, dns) = POLICIES.clone();
    p.rules.set(EndpointId(1), l4, dns);
    p
}

fn flow() -> Flow {
    Flow {
        endpoint: EndpointId(1),
        client: ([10, 1, 0, 5], 40000).into(),
        server: ([10, 96, 0, 10], 53).into(),
        server_identity: DNS_ID,
        proto: Proto::Udp,
    }
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut p = proxy();
    let _ = parse_query(data);
    let _ = p.on_query(flow(), data, now);

    let Ok(response) = Message::from_vec(data) else {
        return;
    };
    let _ = learn_from_response(&response);
    // The query this response answers, sent first so the response is not unsolicited.
    let mut query = Message::query();
    query.metadata.id = response.metadata.id;
    if let Some(q) = response.queries.first() {
        query.add_query(q.clone());
    }
    if let Ok(bytes) = query.to_vec()
        && let QueryAction::Forward(_) = p.on_query(flow(), &bytes, now)
    {
        let (action, _errors) = p.on_response(flow(), data, now);
        if let ResponseAction::Hold { id, .. } = action {
            let _ = p.applied(id);
        }
    }
    let _ = p.poll(now + Duration::from_secs(60));
    let _ = p
        .learner_mut()
        .expire(now + Duration::from_secs(1 << 20), |_| false);
});
