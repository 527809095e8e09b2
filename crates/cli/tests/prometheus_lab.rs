//! A real Prometheus scrapes a lab, as root: 2 clusters of one node each, meshed; Debian's
//! Prometheus runs inside the lab's underlay namespace with every apiserver (`:9963/metrics`)
//! and every agent (`prometheus-listen`, `:9962/metrics`) as targets, scraped every second.
//! Every target is up (so Prometheus parses what each serves), the agents' and apiservers'
//! metrics arrive with their labels, and a connection from cluster2 that cluster1's policy
//! denies shows up as `plexus_drop_count_total{reason="Policy denied",direction="INGRESS"}` of
//! the receiving node's agent, read from its eBPF counters at scrape time.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use plexus_lab::lab::LabState;
use plexus_test_support::lab::{Lab, eventually, run_lab};
use plexus_test_support::prometheus::{Job, Prometheus};
use plexus_test_support::walkthrough;

const LAB: &str = "clusters:
- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 1}
- {name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 1}
routing: tunnel
";

/// cluster1: `db` answers on TCP 6379 (the built-in server).
const DB: &str = "apiVersion: v1
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
";

/// cluster1: only `app: employee` may reach `db`.
const POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db-from-employee
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
";

/// cluster2: `stranger`, who is no employee.
const STRANGER: &str = "apiVersion: v1
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
";

/// `query`'s samples by their `instance` label.
fn by_instance(prometheus: &Prometheus, query: &str) -> Result<BTreeMap<String, f64>, String> {
    Ok(prometheus
        .query(query)?
        .into_iter()
        .map(|s| {
            (
                s.labels.get("instance").cloned().unwrap_or_default(),
                s.value,
            )
        })
        .collect())
}

fn scrape(mut lab: Lab) {
    let file = lab.write("lab.yaml", LAB);
    let out = lab.up(&file, &["--mesh"]);
    assert!(
        out.contains("1/1 nodes are connected to all clusters"),
        "{out}"
    );
    lab.apply("cluster1", "db.yaml", DB);
    lab.apply("cluster1", "policy.yaml", POLICY);
    lab.apply("cluster2", "stranger.yaml", STRANGER);

    // Every endpoint of the lab, from its state file.
    let state = LabState::load(lab.dir()).unwrap();
    let apiservers: Vec<String> = state
        .clusters
        .iter()
        .map(|c| format!("{}:9963", c.ip))
        .collect();
    let agents: Vec<String> = state
        .clusters
        .iter()
        .flat_map(|c| c.nodes.iter().map(|n| n.metrics_address()))
        .collect();
    let db_node = state.clusters[0].nodes[0].metrics_address();
    let prometheus = Prometheus::start(
        &state.underlay,
        &[
            Job {
                name: "plexus-apiserver".into(),
                targets: apiservers.clone(),
            },
            Job {
                name: "plexus-agent".into(),
                targets: agents.clone(),
            },
        ],
    );

    // Every target is scraped and parsed.
    let mut targets: Vec<String> = apiservers.iter().chain(&agents).cloned().collect();
    targets.sort();
    eventually(Duration::from_secs(60), "every target up", || {
        let up = by_instance(&prometheus, "up")?;
        let instances: Vec<String> = up.keys().cloned().collect();
        if instances == targets && up.values().all(|v| *v == 1.0) {
            Ok(())
        } else {
            Err(format!("up: {up:?}, expected {targets:?} all 1"))
        }
    });
    eventually(Duration::from_secs(30), "both apiservers ready", || {
        let ready = by_instance(&prometheus, "plexus_apiserver_ready")?;
        (ready.len() == 2 && ready.values().all(|v| *v == 1.0))
            .then_some(())
            .ok_or_else(|| format!("plexus_apiserver_ready: {ready:?}"))
    });
    eventually(
        Duration::from_secs(30),
        "cluster1's agent has cluster2 ready",
        || {
            let ready = by_instance(
                &prometheus,
                "plexus_clustermesh_remote_cluster_readiness_status{job=\"plexus-agent\",source_cluster=\"cluster1\",target_cluster=\"cluster2\"}",
            )?;
            (ready.get(&db_node) == Some(&1.0))
                .then_some(())
                .ok_or_else(|| format!("readiness: {ready:?}"))
        },
    );

    // A connection the policy denies: stranger (cluster2) -> db (cluster1), dropped on arrival
    // at db's node, counted in its eBPF metrics map, scraped from its agent.
    let db_ip = lab.pod_ip("cluster1", "db");
    let denied = "plexus_drop_count_total{reason=\"Policy denied\",direction=\"INGRESS\"}";
    eventually(
        Duration::from_secs(60),
        "a policy-denied connection counted",
        || {
            let reached =
                walkthrough::reaches(&lab, "cluster2", "default", "stranger", &db_ip, 6379, "db");
            let drops = by_instance(&prometheus, denied)?;
            match drops.get(&db_node) {
                Some(n) if *n > 0.0 && !reached => Ok(()),
                _ => Err(format!(
                    "stranger reached db: {reached}; {denied}: {drops:?}"
                )),
            }
        },
    );
    // The packets the datapath let through are counted too, on every node.
    let forwarded = by_instance(
        &prometheus,
        "sum by (instance) (plexus_forward_count_total)",
    )
    .unwrap();
    assert!(
        agents
            .iter()
            .all(|a| forwarded.get(a).is_some_and(|n| *n > 0.0)),
        "plexus_forward_count_total: {forwarded:?}"
    );
    drop(prometheus);
    lab.down();
}

#[test]
fn prometheus_scrapes_every_daemon_of_a_lab() {
    run_lab("prom", Duration::from_secs(300), scrape);
}
