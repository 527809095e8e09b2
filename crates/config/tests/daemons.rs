//! The real daemons refuse a bad configuration file before they start anything: the process
//! exits with a failure and its stderr names the file and the key at fault.
//!
//! Runs the workspace's binaries (`cargo build --bins` first).

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use plexus_test_support::workspace_bin;

/// Runs `bin args...`, killing it if it has not exited within 30 s (a daemon that accepted
/// its configuration would run on).
fn run(bin: &str, args: &[&str]) -> Output {
    let mut child = Command::new(workspace_bin(bin))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{bin} still runs after 30 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `bin --config <file with text> args...` fails, and its stderr names the file and has
/// every one of `expected`.
fn refused(bin: &str, text: &str, args: &[&str], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{bin}.yaml"));
    std::fs::write(&file, text).unwrap();
    let mut all = vec!["--config", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(bin, &all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{bin} accepted:\n{text}\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "no {e:?} in:\n{stderr}");
    }
}

const AGENT: &str = "cluster-name: c1\ncluster-id: 1\nnode-name: n1\nnode-ip: 10.0.0.1\n\
    pod-cidr: 10.1.0.0/16\nstate-dir: /nonexistent/state\n\
    etcd-endpoints: http://127.0.0.1:1\nclustermesh-config: /nonexistent/mesh\n";

#[test]
fn the_agent_refuses_an_unknown_key() {
    refused(
        "plexus-agent",
        &format!("{AGENT}clsuter-name: c1\n"),
        &[],
        &["unknown field `clsuter-name`", "`cluster-name`"],
    );
}

#[test]
fn the_agent_refuses_a_bad_value_even_when_a_flag_gives_it() {
    refused(
        "plexus-agent",
        &AGENT.replace("cluster-id: 1", "cluster-id: x"),
        &["--cluster-id=1"],
        &["cluster-id: invalid type: string \"x\", expected u32"],
    );
    refused(
        "plexus-agent",
        &AGENT.replace("10.1.0.0/16", "10.1.0.1/16"),
        &[],
        &["pod-cidr: \"10.1.0.1/16\"", "host bits"],
    );
}

#[test]
fn the_agent_names_a_value_missing_from_flags_and_file() {
    // api-socket is neither in the file nor a flag.
    refused(
        "plexus-agent",
        AGENT,
        &["--node-name=n2"],
        &["--api-socket is required: give the flag or `api-socket:` in"],
    );
}

#[test]
fn the_apiserver_refuses_an_unknown_key() {
    refused(
        "plexus-apiserver",
        "cluster-name: c1\ncluster-id: 1\nstate-dir: /nonexistent/state\nnode-name: n1\n",
        &[],
        &["unknown field `node-name`", "`cluster-name`"],
    );
}

#[test]
fn the_apiserver_refuses_a_bad_value() {
    refused(
        "plexus-apiserver",
        "cluster-name: c1\ncluster-id: 1\nstate-dir: /s\nservice-cidr: 10.96.0.0/33\n",
        &[],
        &["service-cidr: \"10.96.0.0/33\"", "prefix length above 32"],
    );
    refused(
        "plexus-apiserver",
        "cluster-name: c1\ncluster-id: 1\nheartbeat-interval: often\n",
        &[],
        &["heartbeat-interval: \"often\""],
    );
}

#[test]
fn plexus_dns_refuses_an_unknown_key() {
    refused(
        "plexus-dns",
        "etcd-endpoints: http://127.0.0.1:1\nlisten-address: 0.0.0.0:53\n",
        &[],
        &["unknown field `listen-address`"],
    );
}

#[test]
fn a_config_file_that_is_not_there_is_named() {
    let out = run("plexus-agent", &["--config", "/nonexistent/agent.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/agent.yaml: "), "{stderr}");
}
