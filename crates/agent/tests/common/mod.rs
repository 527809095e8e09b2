//! What the fold tests share: a core for node `n1` of cluster `c1` (id 1), and wire values
//! written as the literal JSON the kvstore carries.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use plexus_agent::core::{CoreConfig, Input, LocalEndpoint, NodeCore, Output};
use plexus_clustermesh::remote_cluster::{MeshEvent, RemoteEvent};
use plexus_clustermesh::validate::RemoteIdentity;
use plexus_datapath::{Encryption, IpcacheValue, Prefix, RoutingMode};
use plexus_ipcache::Change;
use plexus_model::identity::NumericIdentity;
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::labels::Labels;
use plexus_model::node::Node;
use plexus_model::service::ClusterService;

/// Node `n1` (192.168.1.1) of cluster `c1` (id 1).
pub fn core(routing: RoutingMode) -> NodeCore {
    core_with(routing, Encryption::DISABLED)
}

/// Node `n1` of cluster `c1` with `encryption`.
pub fn core_with(routing: RoutingMode, encryption: Encryption) -> NodeCore {
    NodeCore::new(CoreConfig {
        cluster: "c1".into(),
        cluster_id: 1,
        node_name: "n1".into(),
        node_ip: "192.168.1.1".parse().unwrap(),
        routing,
        policy_default_local_cluster: true,
        encryption,
    })
}

/// `node` publishing WireGuard key `key` (base64), as Cilium does with WireGuard on.
pub fn with_key(mut node: Node, key: &str) -> Node {
    node.wireguard_pub_key = key.to_string();
    node.encryption_key = 255;
    node
}

/// A `Node` of `cluster` (id `id`) as Cilium publishes it: underlay `ip`, pod CIDR `cidr` /24.
pub fn node(cluster: &str, id: u32, name: &str, ip: &str, cidr: &str) -> Node {
    serde_json::from_str(&format!(
        r#"{{"Name":"{name}","Cluster":"{cluster}","IPAddresses":[{{"Type":"InternalIP","IP":"{ip}"}}],"IPv4AllocCIDR":{{"IP":"{cidr}","Mask":"////AA=="}},"ClusterID":{id}}}"#
    ))
    .unwrap()
}

/// An `IPIdentityPair` for a pod `ip` behind node `host` with identity `id`.
pub fn pair(ip: &str, host: &str, id: u32) -> IpIdentityPair {
    serde_json::from_str(&format!(
        r#"{{"IP":"{ip}","Mask":null,"HostIP":"{host}","ID":{id},"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"pod-{ip}"}}"#
    ))
    .unwrap()
}

/// A remote ClusterService of `cluster` named `default/<name>` with backends on port 80.
pub fn cluster_service(
    cluster: &str,
    name: &str,
    shared: bool,
    backends: &[&str],
) -> std::sync::Arc<ClusterService> {
    let backends: Vec<String> = backends
        .iter()
        .map(|b| format!(r#""{b}":{{"http":{{"Protocol":"TCP","Port":80}}}}"#))
        .collect();
    serde_json::from_str(&format!(
        r#"{{"cluster":"{cluster}","namespace":"default","name":"{name}","frontends":{{"10.99.0.5":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{{}}},"labels":{{}},"selector":{{}},"includeExternal":false,"shared":{shared},"clusterID":2}}"#,
        backends.join(",")
    ))
    .map(std::sync::Arc::new)
    .unwrap()
}

/// A remote event of `cluster`.
pub fn remote(cluster: &str, event: RemoteEvent) -> Input {
    Input::Remote(MeshEvent {
        cluster: cluster.into(),
        event,
    })
}

/// Identity labels in the kvstore's form (`source:key=value;...`, the last `;` added here).
pub fn labels(text: &str) -> Labels {
    Labels::parse(&format!("{text};")).unwrap()
}

/// A remote identity.
pub fn remote_identity(id: u32, text: &str) -> RemoteEvent {
    RemoteEvent::IdentityUpsert(RemoteIdentity {
        id: NumericIdentity(id),
        labels: labels(text),
    })
}

/// A local endpoint without named ports.
pub fn endpoint(id: u16, ip: &str, identity: u32) -> LocalEndpoint {
    LocalEndpoint {
        id,
        ip: ip.parse().unwrap(),
        identity,
        named_ports: BTreeMap::new(),
        namespace: String::new(),
        pod_name: String::new(),
    }
}

pub fn prefix(p: &str) -> Prefix {
    p.parse().unwrap()
}

pub fn value(identity: u32, tunnel: Option<&str>, cluster_id: u16) -> IpcacheValue {
    IpcacheValue {
        identity,
        tunnel_endpoint: tunnel.map(|t| t.parse().unwrap()),
        cluster_id,
    }
}

/// Steps every input and takes the output.
pub fn run(core: &mut NodeCore, inputs: impl IntoIterator<Item = Input>) -> Output {
    core.step_all(inputs);
    core.take_output()
}

/// The ipcache changes of an output, as (prefix, Some(value) | None for a delete).
pub fn ipcache_changes(out: &Output) -> Vec<(String, Option<IpcacheValue>)> {
    out.ipcache
        .iter()
        .map(|c| match c {
            Change::Upsert(p, v) => (p.to_string(), Some(*v)),
            Change::Delete(p) => (p.to_string(), None),
        })
        .collect()
}
