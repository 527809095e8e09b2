//! The lab's outside network, as root: with `outside: {zone: example.test, servers: 2}` in the
//! lab file, pods on every node resolve names of the zone at the outside's DNS server
//! (172.31.254.1, outside every cluster) and reach the HTTP server behind each name through
//! their node; a rewrite of the zone file moves a name; after `lab stop` and `lab start` of the
//! cluster the pods reach it again; `lab status` lists the outside's servers and `lab down`
//! removes its namespace with the others.
//!
//! The lab is named after `outs` (namespaces `plx-outs<pid>x<n>-*`), apart from every other lab.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use plexus_test_support::lab::{Lab, eventually, run_lab};
use plexus_test_support::outside::{http_in, resolve_in};

const CLIENTS: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: client
spec:
  replicas: 2
  selector:
    matchLabels: {app: client}
  template:
    metadata:
      labels: {app: client}
    spec:
      containers:
      - name: client
        image: busybox
        command: [sleep, '3600']
";

#[test]
fn lab_pods_reach_the_outside_by_name() {
    run_lab("outs", Duration::from_secs(300), pods_reach_the_outside);
}

fn pods_reach_the_outside(mut lab: Lab) {
    assert!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0,
        "the lab test needs root (network namespaces)"
    );
    let lab_file = lab.write(
        "lab.yaml",
        "clusters:\n- {name: out1, id: 61, podCIDR: 10.150.0.0/16, serviceCIDR: 10.151.0.0/16, nodes: 2}\n\
         outside: {zone: example.test, servers: 2}\n",
    );
    lab.up(&lab_file, &[]);
    let outside_ns = format!("plx-{}-outside", lab.name());
    assert!(lab.netns().contains(&outside_ns), "{:?}", lab.netns());
    let status = lab.ok(&["lab", "status"]);
    assert!(
        status.contains("dns example.test 172.31.254.1")
            && status.contains("http s2.example.test 172.31.254.12"),
        "{status}"
    );

    let apps = lab.write("clients.yaml", CLIENTS);
    lab.ok(&["apply", "-f", apps.to_str().unwrap()]);
    let pods = lab.json(&["get", "pods", "-o", "json"]);
    let clients: Vec<(String, String)> = pods
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["owner"] == "deployment/client")
        .map(|p| {
            (
                p["node"].as_str().unwrap().to_string(),
                p["netns"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut nodes: Vec<&str> = clients.iter().map(|(n, _)| n.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["out1-node1", "out1-node2"], "{pods}");

    let s1 = Ipv4Addr::new(172, 31, 254, 11);
    let s2 = Ipv4Addr::new(172, 31, 254, 12);
    for (node, netns) in &clients {
        // Names resolve at the outside's server, from the pod through its node.
        eventually(
            Duration::from_secs(20),
            &format!("s1 from {node}"),
            || match resolve_in(netns, "s1.example.test.")? {
                a if a == [s1] => Ok(()),
                a => Err(format!("s1 = {a:?}")),
            },
        );
        assert_eq!(resolve_in(netns, "www.example.test.").unwrap(), [s1]);
        assert_eq!(resolve_in(netns, "s2.example.test.").unwrap(), [s2]);
        assert!(
            resolve_in(netns, "nope.example.test.")
                .unwrap_err()
                .contains("NXDomain")
        );
        // And the server behind each name answers.
        for (ip, name) in [(s1, "s1"), (s2, "s2")] {
            let json = http_in(netns, ip).unwrap_or_else(|e| panic!("{node} -> {ip}: {e}"));
            assert_eq!(json["pod"], name, "{json}");
            assert_eq!(json["cluster"], "outside", "{json}");
        }
    }

    // The test rewrites the zone: www moves to s2.
    let zone_file = lab.dir().join("outside/example.test.zone");
    let zone = std::fs::read_to_string(&zone_file).unwrap();
    assert!(zone.contains("www  IN CNAME s1\n"), "{zone}");
    let tmp = lab.dir().join("outside/zone.tmp");
    std::fs::write(
        &tmp,
        zone.replace("www  IN CNAME s1\n", "www  IN CNAME s2\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &zone_file).unwrap();
    let (_, netns) = &clients[0];
    eventually(
        Duration::from_secs(20),
        "www moves to s2",
        || match resolve_in(netns, "www.example.test.")? {
            a if a == [s2] => Ok(()),
            a => Err(format!("www = {a:?}")),
        },
    );
    assert_eq!(http_in(netns, s2).unwrap()["pod"], "s2");

    // After the cluster fails and comes back, its pods reach the outside again.
    lab.ok(&["lab", "stop", "out1"]);
    lab.ok(&["lab", "start", "out1"]);
    for (node, netns) in &clients {
        eventually(
            Duration::from_secs(30),
            &format!("{node} reaches s1 after lab start"),
            || match http_in(netns, s1)?["pod"].as_str() {
                Some("s1") => Ok(()),
                other => Err(format!("answered by {other:?}")),
            },
        );
    }
    assert_eq!(resolve_in(netns, "www.example.test.").unwrap(), [s2]);

    lab.down();
    assert!(lab.netns().is_empty(), "{:?}", lab.netns());
}
