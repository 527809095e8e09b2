//! Helpers shared by the policy integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_policy::{
    Direction, EndpointInfo, EndpointPolicy, IdentityChange, PolicyConfig, PolicyRepository, Proto,
    parse_documents, resolved::Verdict,
};

/// Labels of a pod: `k8s:app`, namespace and cluster.
pub fn pod(app: &str, ns: &str, cluster: &str) -> Labels {
    Labels::parse(&format!(
        "k8s:app={app};k8s:io.cilium.k8s.policy.cluster={cluster};k8s:io.kubernetes.pod.namespace={ns};"
    ))
    .unwrap()
}

/// A repository for cluster1 with `yaml` applied (namespace `default` by default).
pub fn repo_with(yaml: &str, default_local_cluster: bool) -> PolicyRepository {
    let mut config = PolicyConfig::new("cluster1");
    config.default_local_cluster = default_local_cluster;
    let mut repo = PolicyRepository::new(config);
    repo.upsert_all(parse_documents(yaml, "default").unwrap());
    repo
}

/// The same with the default configuration.
pub fn repo(yaml: &str) -> PolicyRepository {
    repo_with(yaml, true)
}

/// Adds identities.
pub fn add(repo: &mut PolicyRepository, ids: &[(u32, &Labels)]) {
    repo.update_identities(
        ids.iter()
            .map(|(id, l)| IdentityChange::Upsert(NumericIdentity(*id), (*l).clone())),
    );
}

/// An endpoint without named ports.
pub fn ep(labels: &Labels) -> EndpointInfo {
    EndpointInfo {
        labels: labels.clone(),
        named_ports: Default::default(),
    }
}

/// Whether TCP to/from `peer` on `port` passes.
pub fn tcp(policy: &EndpointPolicy, dir: Direction, peer: u32, port: u16) -> bool {
    policy.verdict(dir, NumericIdentity(peer), None, Proto::Tcp, port) == Verdict::Allow
}
