//! Network policies as the agents read them (CiliumNetworkPolicy,
//! CiliumClusterwideNetworkPolicy, NetworkPolicy; YAML or JSON, several documents), then
//! resolved for an endpoint the way the datapath's policy map is computed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_policy::{EndpointInfo, IdentityChange, PolicyConfig, PolicyRepository};

fn labels(text: &str) -> Labels {
    Labels::parse(text).unwrap_or_else(|e| panic!("fixed labels {text:?}: {e}"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policies) = plexus_policy::parse_documents(text, "default") else {
        return;
    };
    let mut repo = PolicyRepository::new(PolicyConfig::new("cluster1"));
    repo.upsert_all(policies);
    let client = labels(
        "k8s:app=client;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;",
    );
    let server = labels(
        "k8s:app=server;k8s:io.cilium.k8s.policy.cluster=cluster2;k8s:io.kubernetes.pod.namespace=default;",
    );
    repo.update_identities([
        IdentityChange::Upsert(NumericIdentity(65537), client.clone()),
        IdentityChange::Upsert(NumericIdentity(131073), server),
    ]);
    let info = EndpointInfo {
        labels: client,
        named_ports: Default::default(),
    };
    let _ = repo.resolve(&info);
    let _ = repo.resolve_dns(&info);
});
