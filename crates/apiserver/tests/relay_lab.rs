//! The flow relay in a real lab (as root; `cargo build --workspace --bins` first): two meshed
//! clusters, real agents on their TCP API (mutual TLS), the relays of both apiservers on the
//! control planes' addresses, reached from the lab's underlay namespace with a certificate of
//! the lab's CA. Cluster 1's relay lists every node of both clusters as reachable (its own by
//! probing the agents, cluster 2's through cluster 2's relay), and a flow request reaches every
//! node: each is named by a `NODE_CONNECTED` line.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use plexus_flow::{FlowResponse, NodeState, ResponseKind};
use plexus_test_support::lab::{Lab, eventually, run_lab};
use serde_json::Value;

/// `GET https://<relay><path>` from the lab's underlay namespace; the body, or why not.
fn relay_get(lab: &Lab, relay: &str, pki: &Path, path: &str) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/plx-{}-u", lab.name()))
        .args(["curl", "-sS", "--fail-with-body", "--max-time", "20"])
        .arg("--cacert")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("local.crt"))
        .arg("--key")
        .arg(pki.join("local.key"))
        .arg(format!("https://{relay}{path}"))
        .output()
        .map_err(|e| format!("nsenter curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{path}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn relay_of_two_clusters(mut lab: Lab) {
    let file = lab.write(
        "lab.yaml",
        "clusters:\n\
         - {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}\n\
         - {name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 1}\n",
    );
    lab.up(&file, &["--mesh"]);
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir().join("lab.json")).unwrap())
            .unwrap();
    let c1 = &state["clusters"][0];
    let relay = format!("{}:4245", c1["ip"].as_str().unwrap());
    let pki = PathBuf::from(c1["state-dir"].as_str().unwrap()).join("pki");
    let mut expected: Vec<String> = state["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            let cluster = c["name"].as_str().unwrap().to_string();
            c["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |n| format!("{cluster}/{}", n["name"].as_str().unwrap()))
        })
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 3);

    eventually(
        Duration::from_secs(60),
        "the relay lists every node as reachable",
        || {
            let body = relay_get(&lab, &relay, &pki, "/v1/relay/nodes")?;
            let nodes: Vec<plexus_agent_api::RelayNode> =
                serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
            let reachable: Vec<String> = nodes
                .iter()
                .filter(|n| n.reachable)
                .map(|n| n.name.clone())
                .collect();
            if reachable == expected && nodes.len() == expected.len() {
                Ok(())
            } else {
                Err(body)
            }
        },
    );

    // History of the whole mesh: every node's agent serves its flows, so every node is
    // connected (not unavailable, not answering with an error).
    let body = relay_get(&lab, &relay, &pki, "/v1/flows?request=%7B%7D").unwrap();
    let mut named = Vec::new();
    for line in body.lines() {
        let line = FlowResponse::from_json_line(line).unwrap();
        if let ResponseKind::NodeStatus(status) = &line.kind {
            assert_eq!(status.state_change, NodeState::Connected, "{body}");
            named.extend(status.node_names.clone());
        }
    }
    named.sort();
    assert_eq!(named, expected, "{body}");
    lab.down();
}

#[test]
fn the_relay_reads_every_node_of_a_meshed_lab() {
    run_lab("relay", Duration::from_secs(600), relay_of_two_clusters);
}
