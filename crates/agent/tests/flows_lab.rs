//! Flows for real, as root: a lab of 2 meshed clusters of one node each, with the eBPF
//! datapath. cluster1's `db` (behind the service `db`) admits only `employee` and denies
//! `intruder` outright. The agent of db's node, read on its API socket with
//! `Client::flows`, shows:
//! - stranger (cluster2) -> db dropped by default deny, named by the policy that selects db,
//!   with both pods, labels, identities and clusters;
//! - intruder (cluster2) -> db dropped by the policy's deny rule;
//! - employee -> the service: its translation (frontend, backend, backend cluster, service
//!   name) and db's ingress policy verdict naming the allowing policy;
//! - a follower receives a new drop as it happens;
//! - `plexus observe` through both clusters' relays reads the same agent's flows.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use plexus_agent_api::{Client, Endpoint, block_on};
use plexus_flow::flow::message_type;
use plexus_flow::{
    EventTypeFilter, Flow, FlowFilter, FlowRequest, FlowResponse, PolicyDeny, TrafficDirection,
    Verdict,
};
use plexus_lab::lab::LabState;
use plexus_test_support::lab::{Lab, eventually, run_lab};
use plexus_test_support::{walkthrough, workspace_bin};

const LAB: &str = "clusters:
- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 1}
- {name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 1}
routing: tunnel
";

/// cluster1: `db` answers on TCP 6379 (the built-in server), behind the service `db`;
/// `employee` may reach it.
const CLUSTER1: &str = "apiVersion: v1
kind: Pod
metadata:
  name: db
  labels:
    app: db
spec:
  containers:
  - name: db
    image: redis
    ports:
    - containerPort: 6379
---
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  type: ClusterIP
  ports:
  - port: 6379
  selector:
    app: db
---
apiVersion: v1
kind: Pod
metadata:
  name: employee
  labels:
    app: employee
spec:
  containers:
  - name: employee
    image: busybox
    command: [sleep, '3600']
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db-access
spec:
  endpointSelector:
    matchLabels:
      app: db
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: employee
    toPorts:
    - ports:
      - port: '6379'
        protocol: TCP
  ingressDeny:
  - fromEndpoints:
    - matchLabels:
        app: intruder
        io.cilium.k8s.policy.cluster: cluster2
";

/// cluster2: `stranger` (no rule names it) and `intruder` (denied by name).
const CLUSTER2: &str = "apiVersion: v1
kind: Pod
metadata:
  name: stranger
  labels:
    app: stranger
spec:
  containers:
  - name: stranger
    image: busybox
    command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: intruder
  labels:
    app: intruder
spec:
  containers:
  - name: intruder
    image: busybox
    command: [sleep, '3600']
";

/// The flows `request` reads from the agent's history.
fn flows(client: &Client, request: &FlowRequest) -> Result<Vec<Flow>, String> {
    block_on(async {
        let mut lines = client.flows(request).await?;
        let mut out = Vec::new();
        while let Some(line) = lines.next().await {
            if let Some(f) = line?.as_flow() {
                out.push(Flow::clone(f));
            }
        }
        Ok(out)
    })
    .map_err(|e| e.to_string())
}

fn from_pod(pod: &str, f: impl FnOnce(&mut FlowFilter)) -> FlowRequest {
    let mut filter = FlowFilter {
        source_pod: vec![format!("default/{pod}")],
        ..FlowFilter::default()
    };
    f(&mut filter);
    FlowRequest {
        whitelist: vec![filter],
        number: Some(1),
        ..FlowRequest::default()
    }
}

/// Connects from `pod` to db until the agent has a flow `request` matches; that flow.
fn flow_after(
    lab: &Lab,
    client: &Client,
    ctx: &str,
    pod: &str,
    target: &str,
    request: &FlowRequest,
) -> Flow {
    let mut found = None;
    eventually(
        Duration::from_secs(60),
        &format!("a flow of {pod}'s connection to {target}"),
        || {
            let reached = walkthrough::reaches(lab, ctx, "default", pod, target, 6379, "db");
            let list = flows(client, request)?;
            found = list.into_iter().next();
            found
                .as_ref()
                .map(|_| ())
                .ok_or_else(|| format!("none yet (reached: {reached})"))
        },
    );
    found.unwrap()
}

fn observe(mut lab: Lab) {
    let file = lab.write("lab.yaml", LAB);
    let out = lab.up(&file, &["--mesh"]);
    assert!(
        out.contains("1/1 nodes are connected to all clusters"),
        "{out}"
    );
    lab.apply("cluster1", "cluster1.yaml", CLUSTER1);
    lab.apply("cluster2", "cluster2.yaml", CLUSTER2);
    let state = LabState::load(lab.dir()).unwrap();
    let node = &state.clusters[0].nodes[0];
    let node_name = format!("cluster1/{}", node.name);
    let client =
        Client::new(Endpoint::Unix(node.socket.clone())).with_timeout(Duration::from_secs(10));
    let db_ip = lab.pod_ip("cluster1", "db");

    // stranger -> db: default deny, by the policy that selects db.
    let denied = |f: &mut FlowFilter| {
        f.verdict = vec![Verdict::Dropped];
        f.destination_pod = vec!["default/db".into()];
    };
    let flow = flow_after(
        &lab,
        &client,
        "cluster2",
        "stranger",
        &db_ip,
        &from_pod("stranger", denied),
    );
    assert_eq!(flow.node_name, node_name);
    assert_eq!(flow.drop_reason_desc.to_string(), "POLICY_DENIED");
    assert_eq!(flow.drop_reason_text, "Policy denied");
    assert_eq!(flow.traffic_direction, TrafficDirection::Ingress);
    assert_eq!(flow.policy_deny, Some(PolicyDeny::DefaultDeny));
    let by: Vec<(&str, &str, &str)> = flow
        .ingress_denied_by
        .iter()
        .map(|p| (p.kind.as_str(), p.namespace.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(by, [("CiliumNetworkPolicy", "default", "db-access")]);
    let (src, dst) = (&flow.source, &flow.destination);
    assert_eq!(
        (
            src.cluster_name.as_str(),
            src.namespace.as_str(),
            src.pod_name.as_str()
        ),
        ("cluster2", "default", "stranger")
    );
    assert!(
        src.labels.contains(&"k8s:app=stranger".to_string()),
        "{:?}",
        src.labels
    );
    assert!(
        src.labels
            .contains(&"k8s:io.cilium.k8s.policy.cluster=cluster2".to_string()),
        "{:?}",
        src.labels
    );
    assert_eq!(
        src.identity >> 16,
        2,
        "an identity of cluster2: {}",
        src.identity
    );
    assert_eq!(
        (
            dst.cluster_name.as_str(),
            dst.namespace.as_str(),
            dst.pod_name.as_str()
        ),
        ("cluster1", "default", "db")
    );
    assert!(dst.id > 0, "db is the node's endpoint");
    assert!(
        dst.labels.contains(&"k8s:app=db".to_string()),
        "{:?}",
        dst.labels
    );
    assert_eq!(flow.destination_ip().unwrap().to_string(), db_ip);
    // The event's kernel time, placed on the wall clock: today, not 1970 or the future.
    let age = Utc::now() - flow.time;
    assert!(
        age >= chrono::Duration::zero() && age < chrono::Duration::minutes(5),
        "flow time {} (now {})",
        flow.time,
        Utc::now()
    );

    // intruder -> db: the deny rule.
    let flow = flow_after(
        &lab,
        &client,
        "cluster2",
        "intruder",
        &db_ip,
        &from_pod("intruder", denied),
    );
    assert_eq!(flow.policy_deny, Some(PolicyDeny::DenyRule));
    assert_eq!(flow.ingress_denied_by.len(), 1);
    assert_eq!(flow.ingress_denied_by[0].name, "db-access");
    assert_eq!(flow.source.cluster_name, "cluster2");

    // employee -> the service: translated to db, allowed by the policy.
    let svc = lab.json(&["--context", "cluster1", "service", "list", "-o", "json"]);
    let vip = svc
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "db")
        .unwrap()["cluster-ip"]
        .as_str()
        .unwrap()
        .to_string();
    let translated = from_pod("employee", |f| f.verdict = vec![Verdict::Translated]);
    let flow = flow_after(&lab, &client, "cluster1", "employee", &vip, &translated);
    let t = flow.translation.clone().unwrap();
    assert_eq!(t.frontend, format!("{vip}:6379"));
    assert_eq!(t.backend, format!("{db_ip}:6379"));
    assert_eq!(t.backend_cluster, "cluster1");
    let service = flow.destination_service.clone().unwrap();
    assert_eq!(
        (service.namespace.as_str(), service.name.as_str()),
        ("default", "db")
    );
    assert_eq!(flow.message_type(), message_type::TRACE_SOCK);
    assert_eq!(flow.source.pod_name, "employee");

    let verdicts = from_pod("employee", |f| {
        f.event_type = vec![EventTypeFilter::of_type(message_type::POLICY_VERDICT)];
        f.verdict = vec![Verdict::Forwarded];
        f.destination_pod = vec!["default/db".into()];
    });
    let flow = flow_after(&lab, &client, "cluster1", "employee", &vip, &verdicts);
    assert_eq!(flow.traffic_direction, TrafficDirection::Ingress);
    assert_eq!(flow.ingress_allowed_by.len(), 1, "{flow:?}");
    assert_eq!(flow.ingress_allowed_by[0].name, "db-access");
    assert_eq!(flow.is_reply, Some(false));

    // A follower sees the next drop as it happens.
    let request = FlowRequest {
        whitelist: vec![FlowFilter {
            source_pod: vec!["default/stranger".into()],
            verdict: vec![Verdict::Dropped],
            ..FlowFilter::default()
        }],
        follow: true,
        ..FlowRequest::default()
    };
    let line: FlowResponse = block_on(async {
        let mut lines = client.flows(&request).await?;
        // The follower is subscribed once the response head came; now connect (blocking this
        // runtime's one thread is fine: the answer waits in the socket).
        let reached =
            walkthrough::reaches(&lab, "cluster2", "default", "stranger", &db_ip, 6379, "db");
        assert!(!reached, "stranger reached db");
        match tokio::time::timeout(Duration::from_secs(30), lines.next()).await {
            Ok(Some(line)) => line,
            _ => panic!("no followed drop within 30s"),
        }
    })
    .unwrap();
    let flow = line.as_flow().expect("a flow");
    assert_eq!(flow.source.pod_name, "stranger");
    assert_eq!(flow.policy_deny, Some(PolicyDeny::DefaultDeny));

    // The whole chain: `plexus observe` asks cluster2's relay, which asks cluster1's relay,
    // which asks this agent on its TCP API with the relay's certificate.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/plx-{}-u", lab.name()))
        .arg(workspace_bin("plexus"))
        .env("PLEXUS_LAB_DIR", lab.dir())
        .env("PLEXUS_CONFIG", lab.config())
        .args([
            "--context",
            "cluster2",
            "observe",
            "--from-pod",
            "default/intruder",
            "--verdict",
            "DROPPED",
            "--last",
            "1",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "plexus observe: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let relayed: Vec<Flow> = stdout
        .lines()
        .filter_map(|l| FlowResponse::from_json_line(l).ok())
        .filter_map(|r| r.as_flow().map(|f| Flow::clone(f)))
        .collect();
    assert_eq!(relayed.len(), 1, "{stdout}");
    assert_eq!(relayed[0].node_name, node_name);
    assert_eq!(relayed[0].policy_deny, Some(PolicyDeny::DenyRule));
    assert_eq!(relayed[0].destination.pod_name, "db");
    lab.down();
}

#[test]
fn the_agent_shows_denied_translated_and_allowed_flows_across_clusters() {
    run_lab("flows", Duration::from_secs(420), observe);
}
