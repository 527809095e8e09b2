//! The truth computed from the stores, compared with every node's datapath state.
//!
//! The truth comes from each cluster's etcd only: its nodes and ipcache entries (as every
//! agent, local or remote, reads them: `plexus_ipcache::{from_node, from_pair}`), its
//! identities, Services, endpoint records, global services' ClusterServices and policy
//! objects. The state comes from each node's agent API: the datapath's ipcache and
//! load-balancing maps (`/v1/bpf/ipcache`, `/v1/bpf/lb`), its endpoints with their resolved
//! policy, and the policy objects it holds. Checked, for every node:
//!
//! - `ipcache`: every entry of the lab's address space (the underlay and the pod CIDRs) is
//!   the one the stores give, identity, tunnel endpoint and cluster id; none is missing or
//!   stale;
//! - `lb`: every frontend of every Service of the node's cluster, with as active backends
//!   the ready endpoints its selector picks in the cluster, plus, for a global service, the
//!   backends of the other clusters' shared ClusterService of the same name; no other
//!   frontend, no backend left inactive;
//! - `endpoints`: the node's endpoints are the endpoint records of the node;
//! - `policy`: the node holds the policy objects of its cluster's store; every identity an
//!   endpoint's resolved policy names exists in some cluster's store (or is reserved); and the
//!   entries naming allocated identities are exactly those the cluster's stored policies give
//!   for the endpoint's labels over every cluster's identities (`plexus_policy`'s repository,
//!   with the default options: entries for reserved identities, CIDRs and `any` are not
//!   compared).
//!
//! Each difference names the node, the map, the key and both values.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use plexus_agent_api::{
    Client, Endpoint, EndpointDetail, EndpointInfo, IpcacheRow, LbRow, PolicyInfo, block_on,
};
use plexus_loadbalancer::endpoint::EndpointRecord;
use plexus_loadbalancer::service::Service;
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::node::Node;
use plexus_model::service::ClusterService;
use serde::Serialize;

use crate::lab::{ClusterState, LabState, NodeState};

/// Identities below this are reserved (host, world, remote-node, ...): they live in no store.
const RESERVED_IDENTITIES: u32 = 256;
/// The reserved identities `host` and `remote-node`.
const HOST: u32 = 1;
const REMOTE_NODE: u32 = 6;

/// One difference between the truth and a node's state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Difference {
    /// The node.
    pub node: String,
    /// `ipcache`, `lb`, `endpoints` or `policy`.
    pub map: &'static str,
    /// The entry.
    pub key: String,
    /// What the stores say; `None`: there should be no such entry.
    pub expected: Option<String>,
    /// What the node holds; `None`: missing.
    pub actual: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_string());
        write!(
            f,
            "{} {} {}: expected {}, actual {}",
            self.node,
            self.map,
            self.key,
            show(&self.expected),
            show(&self.actual)
        )
    }
}

/// How many entries the truth had, summed over the nodes (so a check that compared nothing
/// shows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// ipcache entries.
    pub ipcache: usize,
    /// Load-balancing frontends.
    pub lb: usize,
    /// Endpoints.
    pub endpoints: usize,
    /// Policy objects.
    pub policies: usize,
    /// Policy entries of endpoints naming allocated identities.
    pub policy_entries: usize,
}

/// What one cluster's etcd holds, as far as the verifier is concerned.
#[derive(Clone, Debug, Default)]
pub struct Store {
    /// The cluster.
    pub cluster: String,
    /// Its id.
    pub id: u32,
    /// Its nodes.
    pub nodes: Vec<Node>,
    /// Its ipcache entries.
    pub pairs: Vec<IpIdentityPair>,
    /// Its identities with their labels (`source:key=value;...`).
    pub identities: BTreeMap<u32, String>,
    /// Its Services.
    pub services: Vec<Service>,
    /// Its endpoint records.
    pub endpoints: Vec<EndpointRecord>,
    /// The ClusterServices it publishes.
    pub cluster_services: Vec<ClusterService>,
    /// Its policy objects by `Kind/namespace/name` (`-` for clusterwide), as applied.
    pub policies: BTreeMap<String, serde_json::Value>,
}

fn decode<T: serde::de::DeserializeOwned>(
    c: &ClusterState,
    prefix: &str,
) -> Result<Vec<(String, T)>> {
    crate::kv::list(c, prefix)?
        .into_iter()
        .map(|(k, v)| {
            let value = serde_json::from_slice(&v)
                .with_context(|| format!("{k} in the etcd of {}", c.name))?;
            Ok((k, value))
        })
        .collect()
}

/// Reads cluster `c`'s store.
pub fn read_store(c: &ClusterState) -> Result<Store> {
    use plexus_model::keys;
    let nodes = decode::<Node>(c, &format!("{}/{}/", keys::NODES, c.name))?;
    let pairs = decode::<IpIdentityPair>(c, &format!("{}/default/", keys::IP))?;
    let identities = crate::kv::list(c, &keys::identity_id_prefix())?
        .into_iter()
        .filter_map(|(k, v)| {
            let id = k.rsplit('/').next()?.parse().ok()?;
            Some((id, String::from_utf8_lossy(&v).to_string()))
        })
        .collect();
    let services = decode::<Service>(c, plexus_loadbalancer::SERVICES_PREFIX)?;
    let endpoints = decode::<EndpointRecord>(c, plexus_loadbalancer::ENDPOINTS_PREFIX)?;
    let cluster_services = decode::<ClusterService>(c, &format!("{}/{}/", keys::SERVICES, c.name))?;
    let policies = decode::<serde_json::Value>(c, plexus_policy::POLICIES_PREFIX)?
        .into_iter()
        .map(|(k, v)| {
            let key = k.trim_start_matches(plexus_policy::POLICIES_PREFIX);
            (key.to_string(), v)
        })
        .collect();
    Ok(Store {
        cluster: c.name.clone(),
        id: c.id,
        nodes: nodes.into_iter().map(|(_, v)| v).collect(),
        pairs: pairs.into_iter().map(|(_, v)| v).collect(),
        identities,
        services: services.into_iter().map(|(_, v)| v).collect(),
        endpoints: endpoints.into_iter().map(|(_, v)| v).collect(),
        cluster_services: cluster_services.into_iter().map(|(_, v)| v).collect(),
        policies,
    })
}

/// What one node holds.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    /// Its datapath's ipcache.
    pub ipcache: Vec<IpcacheRow>,
    /// Its datapath's load-balancing maps.
    pub lb: Vec<LbRow>,
    /// Its endpoints with their resolved policy.
    pub endpoints: Vec<EndpointDetail>,
    /// The policy objects it holds.
    pub policies: Vec<PolicyInfo>,
}

/// Reads node `n`'s state through its agent's API (its socket).
pub fn read_node(n: &NodeState) -> Result<NodeView> {
    let agent = Client::new(Endpoint::Unix(n.socket.clone())).with_timeout(Duration::from_secs(10));
    let what = |w: &str| format!("{w} of the agent of {}", n.name);
    let ipcache = block_on(agent.ipcache()).with_context(|| what("bpf ipcache"))?;
    let lb = block_on(agent.lb()).with_context(|| what("bpf lb"))?;
    let policies = block_on(agent.policy()).with_context(|| what("policy"))?;
    let list: Vec<EndpointInfo> = block_on(agent.endpoints()).with_context(|| what("endpoints"))?;
    let mut endpoints = Vec::new();
    for e in list {
        endpoints.push(
            block_on(agent.endpoint(&e.id.to_string()))
                .with_context(|| what(&format!("endpoint {}", e.id)))?,
        );
    }
    Ok(NodeView {
        ipcache,
        lb,
        endpoints,
        policies,
    })
}

fn ipcache_value(
    identity: u32,
    tunnel: Option<Ipv4Addr>,
    cluster_id: u16,
    own: Ipv4Addr,
) -> String {
    let tunnel = tunnel
        .filter(|t| *t != own)
        .map(|t| t.to_string())
        .unwrap_or_else(|| "-".to_string());
    format!("identity {identity} tunnel {tunnel} cluster {cluster_id}")
}

/// The ipcache node `node` (address `own`) of cluster `cluster` should hold, by prefix.
pub fn expected_ipcache(
    stores: &[Store],
    cluster: &str,
    node: &str,
    own: Ipv4Addr,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in stores {
        let id = s.id as u16;
        for n in &s.nodes {
            let is_self = s.cluster == cluster && n.name == node;
            for (p, v) in plexus_ipcache::from_node(n, id, is_self) {
                out.insert(
                    p.to_string(),
                    ipcache_value(v.identity, v.tunnel_endpoint, v.cluster_id, own),
                );
            }
        }
    }
    // Pods' entries after the nodes' (a pod's /32 is more precise than its node's CIDR).
    for s in stores {
        let id = s.id as u16;
        for pair in &s.pairs {
            if let Some((p, v)) = plexus_ipcache::from_pair(pair, id) {
                let mut identity = v.identity;
                if identity == HOST && s.cluster != cluster {
                    identity = REMOTE_NODE;
                }
                out.insert(
                    p.to_string(),
                    ipcache_value(identity, v.tunnel_endpoint, v.cluster_id, own),
                );
            }
        }
    }
    out
}

/// The ipcache rows of `rows` inside the lab's address space (`ranges`), by prefix.
pub fn actual_ipcache(
    rows: &[IpcacheRow],
    ranges: &[(Ipv4Addr, u8)],
    own: Ipv4Addr,
) -> BTreeMap<String, String> {
    rows.iter()
        .filter(|r| {
            r.prefix
                .split('/')
                .next()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
                .is_some_and(|a| ranges.iter().any(|&(net, len)| within(a, net, len)))
        })
        .map(|r| {
            let tunnel = r.tunnel_endpoint.as_deref().and_then(|t| t.parse().ok());
            (
                r.prefix.clone(),
                ipcache_value(r.identity, tunnel, r.cluster_id, own),
            )
        })
        .collect()
}

fn within(a: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from(a) & mask == u32::from(net) & mask
}

/// The load-balancing entries of the nodes of cluster `cluster`: frontend
/// (`ip:port/PROTO`) to its active backends (`ip:port`, sorted).
pub fn expected_lb(stores: &[Store], cluster: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(own) = stores.iter().find(|s| s.cluster == cluster) else {
        return out;
    };
    for svc in &own.services {
        let Some(ip) = svc.spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        let local = plexus_loadbalancer::cluster_service::backends(svc, &own.endpoints);
        let global = svc.global_config().map(|g| g.global).unwrap_or(false);
        for port in &svc.spec.ports {
            let proto = port.protocol.to_ascii_uppercase();
            let mut backends = BTreeSet::new();
            let mut add =
                |backends_of: &BTreeMap<String, plexus_model::service::PortConfiguration>| {
                    for (addr, ports) in backends_of {
                        if let Some(p) = ports.get(&port.name) {
                            backends.insert(format!("{addr}:{}", p.port));
                        }
                    }
                };
            add(&local);
            if global {
                for s in stores.iter().filter(|s| s.cluster != cluster) {
                    for cs in &s.cluster_services {
                        if cs.namespace == svc.metadata.namespace
                            && cs.name == svc.metadata.name
                            && cs.shared
                        {
                            add(&cs.backends);
                        }
                    }
                }
            }
            out.insert(
                format!("{ip}:{}/{proto}", port.port),
                backends.into_iter().collect::<Vec<_>>().join(" "),
            );
        }
    }
    out
}

/// The node's load-balancing entries, as [`expected_lb`] gives them; a backend left
/// inactive shows as `inactive ip:port`.
pub fn actual_lb(rows: &[LbRow]) -> BTreeMap<String, String> {
    rows.iter()
        .map(|r| {
            let mut active: Vec<String> = r.active.clone();
            active.sort();
            active.dedup();
            let mut all = active;
            all.extend(r.inactive.iter().map(|b| format!("inactive {b}")));
            (r.frontend.clone(), all.join(" "))
        })
        .collect()
}

/// The differences of two maps of node `node`'s `map`.
pub fn compare(
    node: &str,
    map: &'static str,
    expected: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
) -> Vec<Difference> {
    let keys: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    keys.into_iter()
        .filter(|k| expected.get(*k) != actual.get(*k))
        .map(|k| Difference {
            node: node.to_string(),
            map,
            key: k.clone(),
            expected: expected.get(k).cloned(),
            actual: actual.get(k).cloned(),
        })
        .collect()
}

/// The differences of node `n` of cluster `cluster` given the stores.
pub fn check_node(
    stores: &[Store],
    cluster: &ClusterState,
    n: &NodeState,
    view: &NodeView,
    ranges: &[(Ipv4Addr, u8)],
    checked: &mut Checked,
) -> Vec<Difference> {
    let ipcache = expected_ipcache(stores, &cluster.name, &n.name, n.ip);
    let lb = expected_lb(stores, &cluster.name);
    checked.ipcache += ipcache.len();
    checked.lb += lb.len();
    let mut out = compare(
        &n.name,
        "ipcache",
        &ipcache,
        &actual_ipcache(&view.ipcache, ranges, n.ip),
    );
    out.extend(compare(&n.name, "lb", &lb, &actual_lb(&view.lb)));
    let own = stores.iter().find(|s| s.cluster == cluster.name);
    let expected_endpoints: BTreeMap<String, String> = own
        .map(|s| {
            s.endpoints
                .iter()
                .filter(|e| e.node == n.name)
                .map(|e| (format!("{}/{}", e.namespace, e.pod), e.ip.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let actual_endpoints: BTreeMap<String, String> = view
        .endpoints
        .iter()
        .map(|e| {
            (
                format!("{}/{}", e.endpoint.namespace, e.endpoint.pod),
                e.endpoint.ip.to_string(),
            )
        })
        .collect();
    checked.endpoints += expected_endpoints.len();
    out.extend(compare(
        &n.name,
        "endpoints",
        &expected_endpoints,
        &actual_endpoints,
    ));
    let expected_policies: BTreeMap<String, String> = own
        .map(|s| {
            s.policies
                .keys()
                .map(|k| (k.clone(), "held".to_string()))
                .collect()
        })
        .unwrap_or_default();
    let actual_policies: BTreeMap<String, String> = view
        .policies
        .iter()
        .map(|p| {
            let ns = if p.namespace.is_empty() {
                "-"
            } else {
                p.namespace.as_str()
            };
            (format!("{}/{ns}/{}", p.kind, p.name), "held".to_string())
        })
        .collect();
    checked.policies += expected_policies.len();
    out.extend(compare(
        &n.name,
        "policy",
        &expected_policies,
        &actual_policies,
    ));
    let known: BTreeSet<u32> = stores
        .iter()
        .flat_map(|s| s.identities.keys().copied())
        .collect();
    let repository = own.map(|s| policy_repository(stores, s));
    for e in &view.endpoints {
        let who = format!("{}/{}", e.endpoint.namespace, e.endpoint.pod);
        for entry in &e.policy.entries {
            let Ok(peer) = entry.peer.parse::<u32>() else {
                continue;
            };
            if peer >= RESERVED_IDENTITIES && !known.contains(&peer) {
                out.push(Difference {
                    node: n.name.clone(),
                    map: "policy",
                    key: format!("endpoint {who} {} peer {peer}", entry.direction),
                    expected: None,
                    actual: Some(format!(
                        "{} {} {}",
                        entry.verdict, entry.protocol, entry.ports
                    )),
                });
            }
        }
        // The entries naming allocated identities, as the stores' policies and identities
        // resolve them for the endpoint's labels.
        if let (Some(repository), Some(labels)) = (&repository, &e.identity_labels) {
            let Ok(labels) = plexus_model::labels::Labels::parse(labels) else {
                continue;
            };
            let resolved = repository.resolve(&plexus_policy::EndpointInfo {
                labels,
                named_ports: Default::default(),
            });
            let expected: BTreeMap<String, String> = resolved
                .entries
                .iter()
                .filter_map(|p| match p.peer {
                    plexus_policy::Peer::Identity(id) if id.0 >= RESERVED_IDENTITIES => {
                        let direction = match p.direction {
                            plexus_policy::Direction::Ingress => "ingress",
                            plexus_policy::Direction::Egress => "egress",
                        };
                        let proto = p
                            .proto
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "ANY".into());
                        let ports = match p.ports {
                            None => "any".to_string(),
                            Some((lo, hi)) if lo == hi => lo.to_string(),
                            Some((lo, hi)) => format!("{lo}-{hi}"),
                        };
                        let verdict = if p.deny { "deny" } else { "allow" };
                        Some((
                            format!("endpoint {who} {direction} peer {} {proto} {ports}", id.0),
                            verdict.to_string(),
                        ))
                    }
                    _ => None,
                })
                .collect();
            let actual: BTreeMap<String, String> = e
                .policy
                .entries
                .iter()
                .filter_map(|p| {
                    let peer = p.peer.parse::<u32>().ok()?;
                    (peer >= RESERVED_IDENTITIES).then(|| {
                        (
                            format!(
                                "endpoint {who} {} peer {peer} {} {}",
                                p.direction, p.protocol, p.ports
                            ),
                            p.verdict.to_string(),
                        )
                    })
                })
                .collect();
            checked.policy_entries += expected.len();
            out.extend(compare(&n.name, "policy", &expected, &actual));
        }
    }
    out
}

/// A policy repository of cluster `own`'s stored policies, with every cluster's identities.
fn policy_repository(stores: &[Store], own: &Store) -> plexus_policy::PolicyRepository {
    let mut repository =
        plexus_policy::PolicyRepository::new(plexus_policy::PolicyConfig::new(&own.cluster));
    for value in own.policies.values() {
        if let Ok(policy) = plexus_policy::parse_value(value, 1, "default") {
            repository.upsert(policy);
        }
    }
    repository.update_identities(stores.iter().flat_map(|s| {
        s.identities.iter().filter_map(|(id, labels)| {
            Some(plexus_policy::IdentityChange::Upsert(
                plexus_model::identity::NumericIdentity(*id),
                plexus_model::labels::Labels::parse(labels).ok()?,
            ))
        })
    }));
    repository
}

/// The lab's address space: the underlay and every cluster's pod CIDR.
pub fn lab_ranges(lab: &LabState) -> Vec<(Ipv4Addr, u8)> {
    let mut out = vec![(Ipv4Addr::new(172, 31, 0, 0), 16)];
    for c in &lab.clusters {
        if let Some((addr, len)) = crate::spec::parse_cidr(&c.pod_cidr) {
            out.push((Ipv4Addr::from(addr), len));
        }
    }
    out
}

/// Every difference between the stores' truth and every node's state, and how much was
/// compared.
pub fn verify(lab: &LabState) -> Result<(Vec<Difference>, Checked)> {
    let stores = lab
        .clusters
        .iter()
        .map(read_store)
        .collect::<Result<Vec<_>>>()?;
    let ranges = lab_ranges(lab);
    let mut out = Vec::new();
    let mut checked = Checked::default();
    for c in &lab.clusters {
        for n in &c.nodes {
            let view = read_node(n)?;
            out.extend(check_node(&stores, c, n, &view, &ranges, &mut checked));
        }
    }
    Ok((out, checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cluster: &str, name: &str, ip: &str, cidr: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "Name": name,
            "Cluster": cluster,
            "IPAddresses": [{"Type": "InternalIP", "IP": ip}],
            "IPv4AllocCIDR": cidr,
        }))
        .unwrap()
    }

    fn pair(ip: &str, id: u32, host: &str) -> IpIdentityPair {
        serde_json::from_value(serde_json::json!({"IP": ip, "ID": id, "HostIP": host})).unwrap()
    }

    fn endpoint(ip: &str, node: &str, app: &str) -> EndpointRecord {
        serde_json::from_value(serde_json::json!({
            "namespace": "default", "pod": format!("{app}-{ip}"), "ip": ip, "node": node,
            "labels": {"app": app},
        }))
        .unwrap()
    }

    fn service(name: &str, ip: &str, global: bool) -> Service {
        let annotations = if global {
            serde_json::json!({"service.cilium.io/global": "true"})
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "clusterIP": ip},
        }))
        .unwrap()
    }

    /// Two clusters of one node each, an echo pod in each behind a global service, and a
    /// local-only service in c1.
    fn stores() -> Vec<Store> {
        let mut c1 = Store {
            cluster: "c1".into(),
            id: 1,
            nodes: vec![node("c1", "c1-node1", "172.31.1.11", "10.10.0.0/24")],
            pairs: vec![pair("10.10.0.5", 1000, "172.31.1.11")],
            identities: [(1000, "k8s:app=echo".to_string())].into(),
            services: vec![
                service("echo", "10.11.0.20", true),
                service("local", "10.11.0.30", false),
            ],
            endpoints: vec![
                endpoint("10.10.0.5", "c1-node1", "echo"),
                endpoint("10.10.0.6", "c1-node1", "local"),
            ],
            ..Default::default()
        };
        c1.policies.insert(
            "CiliumNetworkPolicy/default/p".into(),
            serde_json::json!({}),
        );
        let c2_echo = service("echo", "10.21.0.20", true);
        let c2_endpoints = vec![endpoint("10.20.0.7", "c2-node1", "echo")];
        let cs =
            plexus_loadbalancer::cluster_service::cluster_service("c2", 2, &c2_echo, &c2_endpoints)
                .unwrap()
                .unwrap();
        let c2 = Store {
            cluster: "c2".into(),
            id: 2,
            nodes: vec![node("c2", "c2-node1", "172.31.2.11", "10.20.0.0/24")],
            pairs: vec![pair("10.20.0.7", 2000 | (2 << 16), "172.31.2.11")],
            services: vec![c2_echo],
            endpoints: c2_endpoints,
            cluster_services: vec![cs],
            ..Default::default()
        };
        vec![c1, c2]
    }

    #[test]
    fn the_ipcache_truth_holds_every_clusters_nodes_and_pods() {
        let own: Ipv4Addr = "172.31.1.11".parse().unwrap();
        let truth = expected_ipcache(&stores(), "c1", "c1-node1", own);
        assert_eq!(
            truth,
            BTreeMap::from([
                // Our node: host, no pod CIDR entry; our pod: no tunnel.
                (
                    "172.31.1.11/32".into(),
                    "identity 1 tunnel - cluster 1".into()
                ),
                (
                    "10.10.0.5/32".into(),
                    "identity 1000 tunnel - cluster 1".into()
                ),
                // The other cluster's node, its pod CIDR and its pod behind it.
                (
                    "172.31.2.11/32".into(),
                    "identity 6 tunnel - cluster 2".into()
                ),
                (
                    "10.20.0.0/24".into(),
                    "identity 2 tunnel 172.31.2.11 cluster 2".into()
                ),
                (
                    "10.20.0.7/32".into(),
                    format!("identity {} tunnel 172.31.2.11 cluster 2", 2000 | (2 << 16))
                ),
            ])
        );
    }

    #[test]
    fn the_lb_truth_adds_the_other_clusters_backends_to_global_services_only() {
        let truth = expected_lb(&stores(), "c1");
        assert_eq!(
            truth,
            BTreeMap::from([
                (
                    "10.11.0.20:80/TCP".into(),
                    "10.10.0.5:80 10.20.0.7:80".into()
                ),
                ("10.11.0.30:80/TCP".into(), "10.10.0.6:80".into()),
            ])
        );
        let rows = vec![LbRow {
            frontend: "10.11.0.20:80/TCP".into(),
            active: vec!["10.20.0.7:80".into(), "10.10.0.5:80".into()],
            inactive: vec!["10.10.0.9:80".into()],
        }];
        let diffs = compare("c1-node1", "lb", &truth, &actual_lb(&rows));
        assert_eq!(
            diffs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "c1-node1 lb 10.11.0.20:80/TCP: expected 10.10.0.5:80 10.20.0.7:80, actual 10.10.0.5:80 10.20.0.7:80 inactive 10.10.0.9:80",
                "c1-node1 lb 10.11.0.30:80/TCP: expected 10.10.0.6:80, actual (none)",
            ]
        );
    }

    #[test]
    fn stale_missing_and_wrong_entries_are_named_and_foreign_ones_ignored() {
        let s = stores();
        let own: Ipv4Addr = "172.31.1.11".parse().unwrap();
        let row = |prefix: &str, identity: u32, tunnel: Option<&str>, cluster_id: u16| IpcacheRow {
            prefix: prefix.into(),
            identity,
            tunnel_endpoint: tunnel.map(Into::into),
            cluster_id,
        };
        let rows = vec![
            row("172.31.1.11/32", 1, None, 1),
            // Our own pod with our own address as tunnel endpoint: the same as none.
            row("10.10.0.5/32", 1000, Some("172.31.1.11"), 1),
            row("172.31.2.11/32", 6, None, 2),
            row("10.20.0.0/24", 2, Some("172.31.2.11"), 2),
            // Wrong identity, then a stale pod, then an address outside the lab.
            row("10.20.0.7/32", 2001, Some("172.31.2.11"), 2),
            row("10.20.0.99/32", 2000, Some("172.31.2.11"), 2),
            row("192.168.0.1/32", 2, None, 0),
        ];
        let ranges = [
            (Ipv4Addr::new(172, 31, 0, 0), 16),
            (Ipv4Addr::new(10, 10, 0, 0), 16),
            (Ipv4Addr::new(10, 20, 0, 0), 16),
        ];
        let diffs = compare(
            "c1-node1",
            "ipcache",
            &expected_ipcache(&s, "c1", "c1-node1", own),
            &actual_ipcache(&rows, &ranges, own),
        );
        let keys: Vec<(&str, bool, bool)> = diffs
            .iter()
            .map(|d| (d.key.as_str(), d.expected.is_some(), d.actual.is_some()))
            .collect();
        assert_eq!(
            keys,
            [("10.20.0.7/32", true, true), ("10.20.0.99/32", false, true)]
        );
    }

    #[test]
    fn endpoints_policy_entries_are_resolved_from_the_stored_policies_and_identities() {
        let labels = |app: &str| {
            format!(
                "k8s:app={app};k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=default;"
            )
        };
        let mut s = stores();
        s[0].identities = [(1000, labels("echo")), (1001, labels("client"))].into();
        s[0].policies = [(
            "CiliumNetworkPolicy/default/p".to_string(),
            serde_json::json!({
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "p", "namespace": "default"},
                "spec": {
                    "endpointSelector": {"matchLabels": {"app": "echo"}},
                    "ingress": [{
                        "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                        "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
                    }],
                },
            }),
        )]
        .into();
        let lab = plan();
        let c = &lab.clusters[0];
        let n = &c.nodes[0];
        let entry = |peer: &str| plexus_agent_api::PolicyEntry {
            direction: plexus_agent_api::types::Direction::Ingress,
            verdict: plexus_agent_api::types::Verdict::Allow,
            peer: peer.into(),
            peer_labels: None,
            protocol: "TCP".into(),
            ports: "80".into(),
        };
        let view = |entries: Vec<plexus_agent_api::PolicyEntry>| NodeView {
            endpoints: vec![EndpointDetail {
                endpoint: serde_json::from_value(serde_json::json!({
                    "container-id": "x", "id": 1, "ip": "10.10.0.5", "host-ifname": "lxc1",
                    "host-mac": "", "pod-mac": "", "namespace": "default", "pod": "echo-10.10.0.5",
                    "labels": {"app": "echo"}, "identity": 1000,
                }))
                .unwrap(),
                identity_labels: Some(labels("echo")),
                policy: plexus_agent_api::EndpointPolicy {
                    ingress_enforced: true,
                    egress_enforced: false,
                    entries,
                },
            }],
            ..Default::default()
        };
        let policy_diffs = |v: &NodeView| -> Vec<String> {
            let mut checked = Checked::default();
            check_node(&s, c, n, v, &lab_ranges(&lab), &mut checked)
                .into_iter()
                .filter(|d| d.map == "policy" && d.key.starts_with("endpoint"))
                .map(|d| d.to_string())
                .collect()
        };
        assert!(policy_diffs(&view(vec![entry("1001"), entry("2")])).is_empty());
        // The client's identity missing; an identity no store knows.
        assert_eq!(
            policy_diffs(&view(vec![entry("4242")])),
            [
                "c1-node1 policy endpoint default/echo-10.10.0.5 ingress peer 4242: expected (none), actual allow TCP 80",
                "c1-node1 policy endpoint default/echo-10.10.0.5 ingress peer 1001 TCP 80: expected allow, actual (none)",
                "c1-node1 policy endpoint default/echo-10.10.0.5 ingress peer 4242 TCP 80: expected (none), actual allow",
            ]
        );
    }

    /// A lab state whose clusters are the stores' (names, ids, nodes).
    fn plan() -> LabState {
        let spec = crate::spec::LabSpec::parse(
            "lab.yaml",
            "clusters:\n- {name: c1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 1}\n- {name: c2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 1}\n",
        )
        .unwrap();
        crate::lab::plan_for_tests("t", std::path::Path::new("/nonexistent"), &spec)
    }
}
