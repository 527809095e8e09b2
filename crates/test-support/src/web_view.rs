//! Canned answers of a cluster's agents and relay, for the web view's and `plexus observe`'s
//! tests: what an agent of `cluster1` (node `node2`) answers to `/v1/clustermesh`,
//! `/v1/nodes` and `/v1/services` in a mesh with `cluster2`, and a relay's flow stream (a
//! forwarded trace, a translation to cluster2's backend, a policy-denied drop, lost events,
//! and node status lines: 3 of 4 nodes reached).
//!
//! The shapes are the agent API's and `plexus_flow`'s JSON; the tests that serve them decode
//! them with the real clients, so a drift fails there.

use serde_json::{Value, json};

/// `GET /v1/clustermesh` of node2 of cluster1: cluster2 ready with its counts.
pub fn clustermesh() -> Value {
    json!({
        "node": "node2",
        "cluster": "cluster1",
        "remote-clusters": [{
            "name": "cluster2",
            "ready": true,
            "connected": true,
            "status": "ready",
            "num-nodes": 2,
            "num-endpoints": 6,
            "num-identities": 5,
            "num-shared-services": 1,
            "num-rejected": 0,
            "num-failures": 0,
            "synced": {"nodes": true, "endpoints": true, "identities": true, "services": true},
            "config": {"cluster-id": 2, "kvstoremesh": false}
        }],
        "config-errors": []
    })
}

/// `GET /v1/nodes` of node2 of cluster1: both clusters' nodes.
pub fn nodes() -> Value {
    json!([
        {"cluster": "cluster1", "name": "node1", "ip": "127.0.0.2", "pod-cidr": "10.1.1.0/24", "local": false},
        {"cluster": "cluster1", "name": "node2", "ip": "127.0.0.1", "pod-cidr": "10.1.2.0/24", "local": true},
        {"cluster": "cluster2", "name": "node1", "ip": "172.31.2.11", "pod-cidr": "10.2.1.0/24", "local": false},
        {"cluster": "cluster2", "name": "node2", "ip": "172.31.2.12", "pod-cidr": "10.2.2.0/24", "local": false}
    ])
}

/// `GET /v1/services` of node2 of cluster1: the global service rebel-base with a backend in
/// each cluster.
pub fn services() -> Value {
    let port = json!({"http": {"protocol": "TCP", "port": 80}});
    json!([{
        "namespace": "default",
        "name": "rebel-base",
        "cluster-ip": "10.96.0.10",
        "ports": {"http": "80/TCP"},
        "global": true,
        "shared": true,
        "affinity": "none",
        "backends": {"candidates": [
            {"cluster": "cluster1", "ip": "10.1.2.5", "ports": port, "local": true, "state": "active"},
            {"cluster": "cluster2", "ip": "10.2.1.7", "ports": port, "local": false, "state": "active"}
        ]}
    }])
}

/// A relay's answer to a flow request, one JSON line each: node status (3 nodes connected,
/// cluster2/node2 unavailable), a translation, a forwarded trace, a policy-denied drop and lost
/// events.
pub fn flow_lines() -> Vec<String> {
    let x_wing = json!({"identity": 38354, "cluster_name": "cluster1", "namespace": "default",
        "labels": ["k8s:app=x-wing", "k8s:io.kubernetes.pod.namespace=default"], "pod_name": "x-wing"});
    let rebel = json!({"identity": 6587186, "cluster_name": "cluster2", "namespace": "default",
        "labels": ["k8s:app=rebel-base"], "pod_name": "rebel-base-7d9f"});
    let ip = json!({"source": "10.1.2.9", "destination": "10.2.1.7", "ipVersion": "IPv4"});
    let syn =
        json!({"TCP": {"source_port": 41234, "destination_port": 80, "flags": {"SYN": true}}});
    let lines = [
        json!({"node_status": {"state_change": "NODE_CONNECTED",
            "node_names": ["cluster1/node1", "cluster1/node2", "cluster2/node1"]},
            "time": "2026-12-07T12:00:00Z"}),
        json!({"node_status": {"state_change": "NODE_UNAVAILABLE",
            "node_names": ["cluster2/node2"], "message": "connection refused"},
            "time": "2026-12-07T12:00:00Z"}),
        json!({"flow": {"time": "2026-12-07T12:00:01.100Z", "verdict": "TRANSLATED",
            "IP": {"source": "10.1.2.9", "destination": "10.2.1.7", "ipVersion": "IPv4"},
            "l4": syn, "source": x_wing, "destination": rebel, "Type": "SOCK",
            "node_name": "cluster1/node2", "event_type": {"type": 7, "sub_type": 2},
            "destination_service": {"name": "rebel-base", "namespace": "default"},
            "sock_xlate_point": "SOCK_XLATE_POINT_POST_DIRECTION_FWD",
            "Summary": "TCP 10.96.0.10:80 -> 10.2.1.7:80 (cluster cluster2)",
            "translation": {"frontend": "10.96.0.10:80", "backend": "10.2.1.7:80",
                "backend_cluster": "cluster2"}},
            "node_name": "cluster1/node2", "time": "2026-12-07T12:00:01.100Z"}),
        json!({"flow": {"time": "2026-12-07T12:00:01.200Z", "verdict": "FORWARDED", "IP": ip,
            "l4": syn, "source": x_wing, "destination": rebel, "Type": "L3_L4",
            "node_name": "cluster2/node1", "event_type": {"type": 4},
            "trace_observation_point": "TO_ENDPOINT", "is_reply": false,
            "Summary": "TCP Flags: SYN"},
            "node_name": "cluster2/node1", "time": "2026-12-07T12:00:01.200Z"}),
        json!({"flow": {"time": "2026-12-07T12:00:02.300Z", "verdict": "DROPPED",
            "drop_reason": 133, "IP": ip, "l4": syn, "source": x_wing, "destination": rebel,
            "Type": "L3_L4", "node_name": "cluster2/node1",
            "event_type": {"type": 1, "sub_type": 133}, "traffic_direction": "INGRESS",
            "drop_reason_desc": "POLICY_DENIED", "is_reply": false,
            "Summary": "TCP Flags: SYN", "drop_reason_text": "Policy denied",
            "policy_deny": "default-deny"},
            "node_name": "cluster2/node1", "time": "2026-12-07T12:00:02.300Z"}),
        json!({"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "3"},
            "node_name": "cluster2/node1", "time": "2026-12-07T12:00:03Z"}),
    ];
    lines.iter().map(Value::to_string).collect()
}
