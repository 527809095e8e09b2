//! What the API lists, read from the core and answered in `plexus_agent_api`'s types: nodes,
//! identities, services with their backends, policies, an endpoint's resolved policy and the
//! trace of a packet through it (`plexus policy trace`), and the node's encryption (its WireGuard device's peers beside the desired ones).

use plexus_agent_api::types::{
    Affinity, Backend, BackendPort, BackendState, Direction, PolicyObject, ServiceBackends, Verdict,
};
use plexus_agent_api::{
    EndpointInfo, EndpointPolicy, IdentityInfo, NodeInfo, PeerIdentitySource, PolicyEntry,
    PolicyInfo, PolicyRef, PolicyTrace, ServiceInfo, TraceDecision, TraceEndpoint, TraceQuery,
    TraceRule,
};
use plexus_loadbalancer::select::BackendState as LbState;
use plexus_loadbalancer::service::Affinity as LbAffinity;
use plexus_model::identity::NumericIdentity;
use plexus_policy::{Decision, Peer};
use std::net::IpAddr;

use crate::core::NodeCore;
use crate::core::ipcache::underlay;

/// Every node known, this cluster's first.
pub fn nodes(core: &NodeCore) -> Vec<NodeInfo> {
    let own = &core.config().cluster;
    let ipcache = core.ipcache();
    let mut out: Vec<NodeInfo> = ipcache
        .nodes()
        .iter()
        .map(|((cluster, name), n)| NodeInfo {
            cluster: cluster.clone(),
            name: name.clone(),
            ip: underlay(n).map(|ip| ip.to_string()),
            pod_cidr: n
                .ipv4_alloc_cidr
                .as_ref()
                .map(|c| format!("{}/{}", c.addr, c.prefix_len)),
            local: ipcache.is_self(cluster, name),
        })
        .collect();
    out.sort_by_key(|n| (n.cluster != *own, n.cluster.clone(), n.name.clone()));
    out
}

/// Every identity known.
pub fn identities(core: &NodeCore) -> Vec<IdentityInfo> {
    core.policy()
        .identities()
        .iter()
        .map(|(id, e)| IdentityInfo {
            id: *id,
            cluster: e.cluster.clone(),
            labels: e.labels.to_kvstore_string(),
        })
        .collect()
}

/// The labels (kvstore form) of identity `id`, when known.
pub fn identity_labels(core: &NodeCore, id: u32) -> Option<String> {
    core.policy()
        .identities()
        .get(&id)
        .map(|e| e.labels.to_kvstore_string())
}

/// Every local service with its selected backends.
pub fn services(core: &NodeCore) -> Vec<ServiceInfo> {
    core.services()
        .selections()
        .into_iter()
        .map(|s| ServiceInfo {
            namespace: s.service.metadata.namespace.clone(),
            name: s.service.metadata.name.clone(),
            cluster_ip: s.service.spec.cluster_ip.clone(),
            ports: s
                .service
                .spec
                .ports
                .iter()
                .map(|p| (p.name.clone(), format!("{}/{}", p.port, p.protocol)))
                .collect(),
            global: s.config.global,
            shared: s.config.shared,
            affinity: match s.config.affinity {
                LbAffinity::None => Affinity::None,
                LbAffinity::Local => Affinity::Local,
                LbAffinity::Remote => Affinity::Remote,
            },
            backends: ServiceBackends {
                candidates: s
                    .selection
                    .candidates
                    .into_iter()
                    .map(|c| Backend {
                        cluster: c.cluster.to_string(),
                        ip: c.ip.to_string(),
                        ports: c
                            .ports
                            .iter()
                            .map(|(name, p)| {
                                (
                                    name.clone(),
                                    BackendPort {
                                        protocol: p.protocol.clone(),
                                        port: p.port,
                                    },
                                )
                            })
                            .collect(),
                        local: c.local,
                        state: match c.state {
                            LbState::Active => BackendState::Active,
                            LbState::Standby => BackendState::Standby,
                            LbState::Unreachable => BackendState::Unreachable,
                        },
                    })
                    .collect(),
            },
            error: s.error,
        })
        .collect()
}

/// Every policy, in key order.
pub fn policies(core: &NodeCore) -> Vec<PolicyInfo> {
    core.policy()
        .objects()
        .iter()
        .map(|(k, v)| PolicyInfo {
            kind: k.kind.name().to_string(),
            namespace: k.namespace.clone(),
            name: k.name.clone(),
            object: policy_object(v),
        })
        .collect()
}

/// A policy object as applied: its `spec` (or `specs`) typed apart, every other field kept.
fn policy_object(object: &serde_json::Value) -> PolicyObject {
    let mut other = match object {
        serde_json::Value::Object(map) => map.clone(),
        _ => serde_json::Map::new(),
    };
    let spec = other.remove("spec");
    let specs = match other.remove("specs") {
        Some(serde_json::Value::Array(specs)) => Some(specs),
        Some(v) => Some(vec![v]),
        None => None,
    };
    PolicyObject { spec, specs, other }
}

/// The resolved policy of endpoint `id`.
pub fn endpoint_policy(core: &NodeCore, id: u16) -> EndpointPolicy {
    let Some(p) = core.policy().resolved(id) else {
        return EndpointPolicy::default();
    };
    EndpointPolicy {
        ingress_enforced: p.ingress_enforced,
        egress_enforced: p.egress_enforced,
        entries: p.entries.iter().map(|e| api_entry(core, e)).collect(),
    }
}

/// The API's form of a resolved entry (`endpoint get`, traces).
fn api_entry(core: &NodeCore, e: &plexus_policy::PolicyEntry) -> PolicyEntry {
    let (peer, peer_labels) = match e.peer {
        Peer::Any => ("any".to_string(), None),
        Peer::Identity(id) => (id.0.to_string(), identity_labels(core, id.0)),
        Peer::Prefix(c) => (c.to_string(), None),
    };
    PolicyEntry {
        direction: api_direction(e.direction),
        verdict: if e.deny {
            Verdict::Deny
        } else {
            Verdict::Allow
        },
        peer,
        peer_labels,
        protocol: e
            .proto
            .map(|p| p.to_string())
            .unwrap_or_else(|| "ANY".into()),
        ports: match e.ports {
            None => "any".into(),
            Some((lo, hi)) if lo == hi => lo.to_string(),
            Some((lo, hi)) => format!("{lo}-{hi}"),
        },
    }
}

fn api_direction(d: plexus_policy::Direction) -> Direction {
    match d {
        plexus_policy::Direction::Ingress => Direction::Ingress,
        plexus_policy::Direction::Egress => Direction::Egress,
    }
}

fn policy_ref(key: &plexus_policy::PolicyKey) -> PolicyRef {
    PolicyRef {
        kind: key.kind.name().to_string(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

/// Why a packet between local endpoint `endpoint` and a peer passes or is dropped there
/// (`GET /v1/policy/trace`), from the endpoint's resolved policy as the core last computed it
/// for the datapath. The peer identity is the one the datapath would use: at egress the query's
/// if given, else the address's; at ingress the query's (the sender's identity, which the
/// tunnel's VNI carries) unless the peer is a local endpoint or the node routes natively, where
/// the datapath uses the address's. The address's identity is a local endpoint's, else this
/// node's ipcache entry (longest prefix), else `world`. `None` while the endpoint's
/// policy is not resolved (policies not listed yet, or its identity not known yet).
pub fn policy_trace(
    core: &NodeCore,
    endpoint: &EndpointInfo,
    query: &TraceQuery,
    proto: plexus_policy::Proto,
) -> Option<PolicyTrace> {
    let policy = core.policy().resolved(endpoint.id)?;
    let sources = core.policy().sources().get(&endpoint.id)?;
    let ipcache_identity = query
        .peer_ip
        .and_then(|ip| core.ipcache().lookup(ip))
        .map(|v| v.identity);
    let local = query.peer_ip.and_then(|ip| {
        core.endpoints()
            .values()
            .find(|e| e.ip == ip)
            .map(|e| e.identity)
    });
    // The datapath's own lookup of the address: a local endpoint (its endpoint map, or the
    // mark of a local delivery), else the ipcache, else world.
    let looked_up = local
        .map(|id| (id, PeerIdentitySource::LocalEndpoint))
        .or(ipcache_identity.map(|id| (id, PeerIdentitySource::Ipcache)))
        .unwrap_or((
            plexus_model::identity::ReservedIdentity::World.id().0,
            PeerIdentitySource::World,
        ));
    let native = core.config().routing == plexus_datapath::RoutingMode::Native;
    let (peer_identity, peer_identity_source) = match (query.direction, query.peer_identity) {
        (_, Some(id)) if query.peer_ip.is_none() => (id, PeerIdentitySource::Request),
        (Direction::Egress, Some(id)) => (id, PeerIdentitySource::Request),
        // From another node over a tunnel, the VNI carries the sender's identity; natively
        // routed packets carry none and the source address is looked up.
        (Direction::Ingress, Some(id)) if local.is_none() && !native => {
            (id, PeerIdentitySource::Request)
        }
        _ => looked_up,
    };
    let direction = match query.direction {
        Direction::Ingress => plexus_policy::Direction::Ingress,
        Direction::Egress => plexus_policy::Direction::Egress,
    };
    let explained = plexus_policy::explain(
        policy,
        sources,
        &plexus_policy::Packet {
            direction,
            peer: NumericIdentity(peer_identity),
            peer_ip: query.peer_ip.map(IpAddr::V4),
            proto,
            port: query.dport,
        },
    );
    Some(PolicyTrace {
        node: core.config().node_name.clone(),
        cluster: core.config().cluster.clone(),
        endpoint: TraceEndpoint {
            id: endpoint.id,
            namespace: endpoint.namespace.clone(),
            pod: endpoint.pod.clone(),
            ip: endpoint.ip,
            identity: endpoint.identity,
        },
        direction: query.direction,
        peer_identity,
        peer_identity_source,
        peer_labels: identity_labels(core, peer_identity).or_else(|| {
            plexus_model::identity::ReservedIdentity::from_id(peer_identity)
                .map(|r| format!("reserved:{}", r.name()))
        }),
        peer_ip: query.peer_ip,
        ipcache_identity,
        protocol: proto.to_string(),
        dport: query.dport,
        verdict: match explained.verdict {
            plexus_policy::resolved::Verdict::Allow => Verdict::Allow,
            plexus_policy::resolved::Verdict::Deny => Verdict::Deny,
        },
        enforced: explained.enforced,
        decision: match explained.decision {
            Decision::NoPolicy => TraceDecision::NoPolicy,
            Decision::NotEnforced => TraceDecision::NotEnforced,
            Decision::Allowed => TraceDecision::Allowed,
            Decision::DenyRule => TraceDecision::DenyRule,
            Decision::DefaultDeny => TraceDecision::DefaultDeny,
        },
        match_kind: explained.match_kind().map(|m| m.to_string()),
        rules: explained
            .rules
            .iter()
            .map(|r| TraceRule {
                policy: policy_ref(&r.policy),
                rule: r.origin.rule.clone(),
                section: r.origin.section.to_string(),
                index: r.origin.index,
                location: r.origin.to_string(),
                entry: api_entry(core, &r.entry),
                match_kind: r.match_kind.to_string(),
            })
            .collect(),
        enforcing: explained.enforcing.iter().map(policy_ref).collect(),
        selecting: explained.selecting.iter().map(policy_ref).collect(),
    })
}

/// Unix seconds of `t` (`None` before the epoch).
fn unix(t: std::time::SystemTime) -> Option<u64> {
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// The encryption report of a node with WireGuard: `base` (the node's names) completed from
/// its WireGuard handle and the device's live state `live` (or why it could not be read).
/// Peers are the union of the device's and the desired ones, by key.
pub fn encryption(
    base: plexus_agent_api::EncryptionReport,
    wg: &crate::shell::wireguard::Wireguard,
    live: Result<plexus_wireguard::uapi::DeviceInfo, String>,
) -> plexus_agent_api::EncryptionReport {
    use plexus_agent_api::{EncryptionMode, PeerReport};
    let status = wg.status();
    let desired = wg.desired();
    let (device_reachable, device_error, device) = match live {
        Ok(info) => (true, status.error.clone(), Some(info)),
        Err(e) => (false, Some(e), None),
    };
    let mut peers: Vec<PeerReport> = Vec::new();
    if let Some(info) = &device {
        for p in &info.peers {
            let want = desired.get(&p.public_key);
            peers.push(PeerReport {
                public_key: p.public_key.to_string(),
                cluster: want.map(|w| w.cluster.clone()),
                node: want.map(|w| w.node.clone()),
                node_ip: want.map(|w| w.node_ip.to_string()),
                endpoint: p.endpoint.map(|e| e.to_string()),
                allowed_ips: p.allowed_ips.iter().map(ToString::to_string).collect(),
                last_handshake: p.last_handshake.and_then(unix),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
                configured: true,
                desired: want.is_some(),
            });
        }
    }
    for (key, w) in &desired {
        let on_device = device
            .as_ref()
            .is_some_and(|i| i.peers.iter().any(|p| p.public_key == *key));
        if on_device {
            continue;
        }
        peers.push(PeerReport {
            public_key: key.to_string(),
            cluster: Some(w.cluster.clone()),
            node: Some(w.node.clone()),
            node_ip: Some(w.node_ip.to_string()),
            endpoint: Some(w.endpoint.to_string()),
            allowed_ips: w.allowed_ips.iter().map(ToString::to_string).collect(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            configured: false,
            desired: true,
        });
    }
    peers.sort_by(|a, b| {
        (&a.cluster, &a.node, &a.public_key).cmp(&(&b.cluster, &b.node, &b.public_key))
    });
    plexus_agent_api::EncryptionReport {
        mode: EncryptionMode::Wireguard,
        strict: wg.strict(),
        public_key: Some(wg.public_key().to_string()),
        port: device.as_ref().map(|i| i.listen_port).filter(|p| *p != 0),
        socket: Some(wg.socket().display().to_string()),
        device_reachable,
        device_error,
        last_synced: status.last_synced.and_then(unix),
        peers,
        ..base
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn policy_objects_keep_their_spec_and_everything_else() {
        let object = serde_json::json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "db", "namespace": "default"},
            "spec": {"endpointSelector": {}},
        });
        let info = policy_object(&object);
        assert_eq!(info.spec, Some(serde_json::json!({"endpointSelector": {}})));
        assert_eq!(serde_json::to_value(&info).unwrap(), object);
    }
}
