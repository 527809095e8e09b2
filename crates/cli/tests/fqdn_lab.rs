//! DNS-aware policy end to end, as root, against the lab's outside network (`example.test`
//! at 172.31.254.1, servers `s1`..`s3` at 172.31.254.11.., `www` a CNAME of `s1`).
//!
//! A pod whose policy allows DNS to the outside's server only for `www.example.test` and
//! `s*.example.test`, and HTTP
//! only to the addresses of `www.example.test` and of names matching `*3.example.test`:
//! - its DNS queries go through the node's DNS proxy (UDP and TCP): a name outside the zone
//!   no rule allows gets REFUSED, while an unpolicied pod's query for it reaches the server
//!   (NXDOMAIN);
//! - an allowed name is reachable, another name's address is not, a `matchPattern` wildcard
//!   works;
//! - when `www` moves (the zone file is rewritten), the new address is followed, and the old
//!   one is dropped once its TTL (30 s) has passed;
//! - across a restart of the node's agent, no lookup fails and the learned addresses stay
//!   reachable;
//! - `plexus fqdn cache list` shows what the node learned (name, address, identity, TTL,
//!   selectors), `plexus status` the proxy's line and section, and the agent's `/metrics` the
//!   proxy's counters and learned addresses.
//!
//! The lab is named after `fqdn` (namespaces `plx-fqdn<pid>x<n>-*`), apart from every other
//! lab.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use plexus_test_support::lab::{Lab, eventually, run_lab};
use plexus_test_support::outside::{DNS, Transport, http_in, lookup, lookup_in, resolve_in};

const S1: Ipv4Addr = Ipv4Addr::new(172, 31, 254, 11);
const S2: Ipv4Addr = Ipv4Addr::new(172, 31, 254, 12);
const S3: Ipv4Addr = Ipv4Addr::new(172, 31, 254, 13);

const PODS: &str = "apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: client}
spec:
  containers:
  - name: client
    image: busybox
    command: [sleep, '3600']
---
apiVersion: v1
kind: Pod
metadata:
  name: other
  labels: {app: other}
spec:
  containers:
  - name: other
    image: busybox
    command: [sleep, '3600']
";

const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-fqdn
spec:
  endpointSelector:
    matchLabels: {app: client}
  egress:
  - toCIDR: [172.31.254.1/32]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchName: www.example.test
        - matchPattern: "s*.example.test"
  - toFQDNs:
    - matchName: www.example.test
    - matchPattern: "*3.example.test"
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;

#[test]
fn to_fqdns_follows_dns_through_the_nodes_proxy() {
    run_lab("fqdn", Duration::from_secs(420), to_fqdns);
}

/// The first identity of `toFQDNs` selector sets (the upper half of the node-local range).
const FQDN_IDENTITY_BASE: u64 = 16_777_216 + 8_388_608;

/// What the node learned, as `plexus fqdn cache list`, `plexus status` and `/metrics` show it
/// (after the restart: www at s2, s3 learned again; s2's own name matches no toFQDNs selector).
fn inspect(lab: &Lab) {
    let cache = lab.json(&["fqdn", "cache", "list", "-o", "json"]);
    let entries = cache.as_array().unwrap();
    let find = |name: &str, address: &str| {
        entries
            .iter()
            .find(|e| e["name"] == name && e["address"] == address)
            .unwrap_or_else(|| panic!("no {name} -> {address} in {cache:#}"))
    };
    let www = find("www.example.test", "172.31.254.12");
    let www_id = www["identity"].as_u64().unwrap();
    assert!(www_id >= FQDN_IDENTITY_BASE, "{www}");
    assert_eq!(www["selectors"], serde_json::json!(["www.example.test"]));
    assert!(www["ttl"].as_u64().unwrap() <= 30, "{www}");
    let s3 = find("s3.example.test", "172.31.254.13");
    let s3_id = s3["identity"].as_u64().unwrap();
    assert!(s3_id >= FQDN_IDENTITY_BASE && s3_id != www_id, "{cache:#}");
    assert_eq!(s3["selectors"], serde_json::json!(["*3.example.test"]));
    assert!(
        entries.iter().all(|e| e["name"] != "s2.example.test"),
        "{cache:#}"
    );
    // Sorted by name.
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(names.is_sorted(), "{names:?}");

    let table = lab.ok(&["fqdn", "cache", "list"]);
    eprintln!("{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("www.example.test ") && l.contains("172.31.254.12"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(&www_id.to_string()), "{table}");
    assert!(row.trim_end().ends_with("www.example.test"), "{table}");

    // The proxy in the status: its port, the client's redirect, the REFUSED answers since the
    // restart (the lookup that waited for the new agent).
    let status = lab.json(&["status", "-o", "json"]);
    let proxy = &status["dns-proxy"];
    assert_eq!(proxy["port"], 10053, "{status:#}");
    assert_eq!(proxy["redirected-endpoints"], 1, "{status:#}");
    assert!(
        proxy["stats"]["refused"].as_u64().unwrap() >= 1,
        "{status:#}"
    );
    assert!(
        proxy["stats"]["forwarded"].as_u64().unwrap() >= 2,
        "{status:#}"
    );
    assert!(
        proxy["learned-addresses"].as_u64().unwrap() >= 2,
        "{status:#}"
    );
    let text = lab.ok(&["status"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("DNS proxy: port 10053, 1 endpoint redirected, ")),
        "{text}"
    );

    // The same counters on the agent's /metrics (its Prometheus port, from the underlay).
    let state = plexus_lab::lab::LabState::load(lab.dir()).unwrap();
    let address = state.clusters[0].nodes[0].metrics_address();
    let metrics = plexus_test_support::outside::in_netns(&state.underlay, move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(&address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    });
    let value = |sample: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in {metrics}"))
    };
    assert!(value("plexus_dns_proxy_queries_total{outcome=\"refused\"}") >= 1.0);
    assert!(value("plexus_dns_proxy_queries_total{outcome=\"forwarded\"}") >= 2.0);
    assert!(value("plexus_dns_proxy_responses_total{outcome=\"held\"}") >= 1.0);
    assert!(value("plexus_fqdn_learned_addresses") >= 2.0);
}

fn netns_of(lab: &Lab, pod: &str) -> String {
    let pods = lab.json(&["get", "pods", "-o", "json"]);
    pods.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .unwrap_or_else(|| panic!("no pod {pod}: {pods}"))["netns"]
        .as_str()
        .unwrap()
        .to_string()
}

fn to_fqdns(mut lab: Lab) {
    let lab_file = lab.write(
        "lab.yaml",
        "clusters:\n- {name: fq1, id: 71, podCIDR: 10.160.0.0/16, serviceCIDR: 10.161.0.0/16, nodes: 1}\n\
         outside: {zone: example.test, servers: 3}\n",
    );
    lab.up(&lab_file, &[]);
    let pods = lab.write("pods.yaml", PODS);
    lab.ok(&["apply", "-f", pods.to_str().unwrap()]);
    let client = netns_of(&lab, "client");
    let other = netns_of(&lab, "other");

    // Without a policy the client reaches every server.
    eventually(Duration::from_secs(20), "client reaches s2", || {
        http_in(&client, S2).map(|_| ())
    });

    let policy = lab.write("policy.yaml", POLICY);
    lab.ok(&["apply", "-f", policy.to_str().unwrap()]);

    // The proxy answers for the client: a name no DNS rule allows is REFUSED, over UDP and TCP.
    eventually(
        Duration::from_secs(20),
        "REFUSED from the proxy",
        || match lookup_in(&client, DNS, "nope.example.test.", Transport::Udp)? {
            a if a.code == ResponseCode::Refused => Ok(()),
            a => Err(format!("{a:?}")),
        },
    );
    let tcp = lookup_in(&client, DNS, "nope.example.test.", Transport::Tcp).unwrap();
    assert_eq!(tcp.code, ResponseCode::Refused, "{tcp:?}");
    // The unpolicied pod's query reaches the server, which knows no such name.
    let a = lookup_in(&other, DNS, "nope.example.test.", Transport::Udp).unwrap();
    assert_eq!(a.code, ResponseCode::NXDomain, "{a:?}");

    // An allowed name: answered by its server (as the pod sees it), and reachable.
    let a = lookup_in(&client, DNS, "www.example.test.", Transport::Udp).unwrap();
    assert_eq!(
        (a.code, a.addresses.as_slice()),
        (ResponseCode::NoError, &[S1][..])
    );
    assert_eq!(a.from, std::net::SocketAddr::from((DNS, 53)));
    assert_eq!(http_in(&client, S1).unwrap()["pod"], "s1");
    // Over TCP too.
    let a = lookup_in(&client, DNS, "www.example.test.", Transport::Tcp).unwrap();
    assert_eq!(a.addresses, [S1], "{a:?}");

    // Another name of the zone resolves (the DNS rule allows it) but its address is not
    // reachable: no toFQDNs selector matches it.
    assert_eq!(resolve_in(&client, "s2.example.test.").unwrap(), [S2]);
    let err = http_in(&client, S2).unwrap_err();
    assert!(err.contains("connect"), "{err}");
    // The other pod, without a policy, still reaches it.
    assert_eq!(http_in(&other, S2).unwrap()["pod"], "s2");

    // A matchPattern wildcard.
    assert_eq!(resolve_in(&client, "s3.example.test.").unwrap(), [S3]);
    assert_eq!(http_in(&client, S3).unwrap()["pod"], "s3");

    // www moves to s2: the next lookup teaches the proxy, and s2 becomes reachable.
    let zone_file = lab.dir().join("outside/example.test.zone");
    let zone = std::fs::read_to_string(&zone_file).unwrap();
    let tmp = lab.dir().join("outside/zone.tmp");
    std::fs::write(
        &tmp,
        zone.replace("www  IN CNAME s1\n", "www  IN CNAME s2\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &zone_file).unwrap();
    eventually(
        Duration::from_secs(20),
        "www moves to s2",
        || match resolve_in(&client, "www.example.test.")? {
            a if a == [S2] => Ok(()),
            a => Err(format!("www = {a:?}")),
        },
    );
    assert_eq!(http_in(&client, S2).unwrap()["pod"], "s2");
    // s1 was learned under www with a TTL of 30 s; no connection uses it: it is dropped.
    eventually(
        Duration::from_secs(60),
        "s1 dropped after its TTL",
        || match http_in(&client, S1) {
            Err(e) if e.contains("connect") => Ok(()),
            other => Err(format!("still reachable: {other:?}")),
        },
    );

    // The agent keeps what it learned in its state directory, for the next agent (www's s2
    // expired with s1, as both were last answered together: look it up again).
    assert_eq!(resolve_in(&client, "www.example.test.").unwrap(), [S2]);
    let node_dir = lab.dir().join("fq1/fq1-node1");
    eventually(Duration::from_secs(5), "fqdn.json names www", || {
        let saved =
            std::fs::read_to_string(node_dir.join("fqdn.json")).map_err(|e| e.to_string())?;
        let saved: serde_json::Value = serde_json::from_str(&saved).map_err(|e| e.to_string())?;
        let names = saved["state"]["names"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        names
            .iter()
            .any(|n| n["name"] == "www.example.test" && n["address"] == "172.31.254.12")
            .then_some(())
            .ok_or_else(|| format!("{saved}"))
    });

    // The agent restarts while the client looks names up without pause: no lookup fails (a
    // lookup, as a stub resolver does it, tries up to 3 times, 1 s each).
    let stop = Arc::new(AtomicBool::new(false));
    let looker = {
        let (stop, client) = (stop.clone(), client.clone());
        std::thread::spawn(move || {
            plexus_test_support::outside::in_netns(&client, move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let mut last = String::new();
                    let done = (0..3).any(|_| {
                        match lookup(
                            DNS,
                            "www.example.test.",
                            Transport::Udp,
                            Duration::from_secs(1),
                        ) {
                            Ok(a) if a.code == ResponseCode::NoError && a.addresses == [S2] => true,
                            Ok(a) => {
                                last = format!("{a:?}");
                                // A wrong answer is a failure at once, not a retry.
                                false
                            }
                            Err(e) => {
                                last = e;
                                false
                            }
                        }
                    });
                    if done {
                        ok += 1;
                    } else {
                        failed.push(last);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                (ok, failed)
            })
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    lab.ok(&["lab", "restart-agent", "fq1", "fq1-node1"]);
    // The new agent serves again: a name no rule allows is REFUSED once more.
    eventually(
        Duration::from_secs(30),
        "the proxy back after the restart",
        || match lookup_in(&client, DNS, "nope.example.test.", Transport::Udp)? {
            a if a.code == ResponseCode::Refused => Ok(()),
            a => Err(format!("{a:?}")),
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = looker.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} lookups failed across the restart: {failed:?}",
        failed.len()
    );
    assert!(ok > 20, "only {ok} lookups");
    let log = std::fs::read_to_string(node_dir.join("agent.log")).unwrap();
    assert!(log.contains("DNS proxy state taken over"), "{log}");
    // What was learned is still allowed, and still denied where it was; the new agent learns
    // again (s3's address expired with its TTL long ago).
    assert_eq!(http_in(&client, S2).unwrap()["pod"], "s2");
    assert!(http_in(&client, S1).is_err());
    assert!(http_in(&client, S3).is_err());
    assert_eq!(resolve_in(&client, "s3.example.test.").unwrap(), [S3]);
    assert_eq!(http_in(&client, S3).unwrap()["pod"], "s3");
    eprintln!("{ok} lookups across the agent's restart, none failed");

    inspect(&lab);

    lab.down();
    assert!(lab.netns().is_empty(), "{:?}", lab.netns());
}
