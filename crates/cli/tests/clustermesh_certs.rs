//! Certificate lifetimes and expiry warnings through the CLI as a process: `clustermesh enable`
//! with `--ca-validity`/`--cert-validity`, and `clustermesh status` listing every certificate of
//! the cluster and of its remote configurations, warning ahead of expiry (`--expiry-warning`,
//! 30 days by default) in text and JSON. No daemon runs: the certificates are read from disk.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use plexus_test_support::{free_port, workspace_bin};
use serde_json::Value;

const DAY: i64 = 86_400;

fn plexus(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(workspace_bin("plexus"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn ok(config: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = plexus(config, args);
    assert!(success, "plexus {args:?} failed:\n{stdout}{stderr}");
    stdout
}

fn status(config: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["clustermesh", "status", "--context", "c1", "-o", "json"];
    args.extend_from_slice(extra);
    let (_, stdout, stderr) = plexus(config, &args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}{stderr}"))
}

fn cert<'a>(report: &'a Value, file_suffix: &str) -> &'a Value {
    report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["file"].as_str().unwrap().ends_with(file_suffix))
        .unwrap_or_else(|| panic!("no {file_suffix} in {report:#}"))
}

fn warnings(report: &Value) -> Vec<(String, String)> {
    report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["message"].as_str().unwrap().to_string(),
                w["hint"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn enable_issues_finite_lifetimes_and_status_warns_ahead_of_expiry() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    // An apiserver address where nothing listens: enable leaves the etcd users to it.
    let nobody = free_port().unwrap();
    let mut yaml = String::from("current-context: c1\ncontexts:\n");
    for (name, id) in [("c1", 1), ("c2", 2)] {
        yaml.push_str(&format!(
            "- name: {name}\n  cluster-id: {id}\n  state-dir: {d}/{name}\n  etcd-endpoints: [https://127.0.0.1:{nobody}]\n  apiserver: 127.0.0.1:{nobody}\n  clustermesh-dir: {d}/{name}/clustermesh\n  agents: []\n",
            d = dir.display()
        ));
    }
    let config = dir.join("config.yaml");
    std::fs::write(&config, yaml).unwrap();

    let out = ok(
        &config,
        &[
            "clustermesh",
            "enable",
            "--context",
            "c1",
            "--create-ca",
            "--ca-validity",
            "60d",
            "--cert-validity",
            "10d",
        ],
    );
    assert!(out.contains("valid for 60 days"), "{out}");
    assert!(out.contains("valid for 10 days"), "{out}");
    ok(
        &config,
        &[
            "clustermesh",
            "enable",
            "--context",
            "c2",
            "--ca-from-context",
            "c1",
        ],
    );

    // Default window (30 days): the 10-day leaves are expiring, the 60-day CA is not.
    let r = status(&config, &[]);
    let ca = cert(&r, "c1/pki/ca.crt");
    assert_eq!(ca["common-name"], "plexus-ca");
    assert_eq!(ca["state"], "valid");
    assert_eq!(ca["scope"], "cluster");
    let left = ca["expires-in-seconds"].as_i64().unwrap();
    assert!((59 * DAY..=60 * DAY).contains(&left), "{left}");
    for leaf in ["admin.crt", "local.crt", "etcd-server.crt"] {
        let c = cert(&r, &format!("c1/pki/{leaf}"));
        assert_eq!(c["state"], "expiring", "{leaf}");
        let left = c["expires-in-seconds"].as_i64().unwrap();
        assert!((9 * DAY..=10 * DAY).contains(&left), "{leaf}: {left}");
    }
    let w = warnings(&r);
    assert_eq!(w.len(), 3, "{w:?}");
    for (message, hint) in &w {
        assert!(
            message.contains("expires in 9 days") || message.contains("expires in 10 days"),
            "{message}"
        );
        assert!(hint.contains("apiserver of c1 renews"), "{hint}");
    }
    // Another cluster's view: the shared CA, its leaves of the default year.
    let (_, c2, _) = plexus(
        &config,
        &["clustermesh", "status", "--context", "c2", "-o", "json"],
    );
    let c2: Value = serde_json::from_str(&c2).unwrap();
    assert!(warnings(&c2).is_empty(), "{c2:#}");

    // The window is configurable: 5 days warns of nothing, 90 days of the CA too.
    assert!(warnings(&status(&config, &["--expiry-warning", "5d"])).is_empty());
    let w = warnings(&status(&config, &["--expiry-warning", "90d"]));
    assert_eq!(w.len(), 4, "{w:?}");
    assert!(
        w.iter()
            .any(|(m, h)| m.contains("CN plexus-ca") && h.contains("rotate-ca --context c1")),
        "{w:?}"
    );

    // Another lifetime re-issues the leaves with it.
    let out = ok(
        &config,
        &[
            "clustermesh",
            "enable",
            "--context",
            "c1",
            "--cert-validity",
            "400d",
        ],
    );
    assert!(out.contains("valid for 400 days"), "{out}");
    let r = status(&config, &[]);
    assert!(warnings(&r).is_empty(), "{:?}", warnings(&r));

    // A remote configuration whose client certificate expired: warned about, with the
    // command that re-issues it.
    let pki = plexus_pki::cluster::ClusterPki::new(dir.join("c2/pki"), "c2");
    let ca = pki.ca().unwrap();
    let cm = dir.join("c1/clustermesh");
    std::fs::create_dir_all(&cm).unwrap();
    ca.pem().write_to(&cm, "c2.etcd-client-ca").unwrap();
    let short = ca
        .issue_client_for("remote-c1", Duration::from_secs(1))
        .unwrap();
    short.write_to(&cm, "c2.etcd-client").unwrap();
    let expiry = plexus_pki::inspect(&short.cert_pem).unwrap().not_after;
    while plexus_pki::unix_now() <= expiry {
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = status(&config, &[]);
    let client = cert(&r, "c1/clustermesh/c2.etcd-client.crt");
    assert_eq!(client["state"], "expired");
    assert_eq!(client["scope"], serde_json::json!({"remote": "c2"}));
    assert_eq!(cert(&r, "c2.etcd-client-ca.crt")["state"], "valid");
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].0.contains("CN remote-c1") && w[0].0.contains("expired"),
        "{w:?}"
    );
    assert!(
        w[0].1
            .contains("plexus clustermesh connect --context c1 --destination-context c2"),
        "{w:?}"
    );

    // The same in text.
    let (_, text, _) = plexus(&config, &["clustermesh", "status", "--context", "c1"]);
    assert!(text.contains("⚠️  1 warnings:"), "{text}");
    assert!(
        text.contains("c2.etcd-client.crt (CN remote-c1) expired"),
        "{text}"
    );
}
