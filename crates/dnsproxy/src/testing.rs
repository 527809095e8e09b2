//! Fixtures shared by the proxy's tests and benchmarks: a client's policy with DNS rules and
//! `toFQDNs`, and the identity labels of a pod of cluster `cluster1`.

use plexus_model::labels::Labels;

/// The client's policy: DNS to kube-dns for `*.example.test` only (any protocol, port 53), and
/// `toFQDNs` of those names.
pub const CLIENT_DNS_POLICY: &str = r#"
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
        dns: [{matchPattern: "*.example.test"}]
  - toFQDNs: [{matchPattern: "*.example.test"}]
"#;

/// The identity labels of pod `app` in namespace `ns` of cluster `cluster1`.
pub fn pod_labels(app: &str, ns: &str) -> Labels {
    let text = format!(
        "k8s:app={app};k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace={ns};"
    );
    Labels::parse(&text).unwrap_or_else(|e| panic!("fixture labels {text}: {e}"))
}
