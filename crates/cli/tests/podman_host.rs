//! podman as the workload runtime of a host, as root: a one-node lab cluster gives the host (a
//! network namespace with a real agent, its eBPF datapath, etcd and an apiserver); podman runs
//! entered into that namespace (`nsenter --net`), with its own storage and configuration in the
//! test's directory and the CNI network written by `plexus host install-cni`.
//!
//! Checked: a container run with `--label app=web` gets an address and an endpoint whose
//! identity has `k8s:app=web` in namespace `default`, and a second container reaches it; a
//! Service selects it as a backend; `podman restart` registers it again; `podman stop` and
//! `podman rm` remove its endpoint and backend; a container without labels gets its
//! namespace's identity; an invalid label, an unreadable podman state and an unreachable agent
//! each fail `podman run` with a message naming the cause and leave no veth and no endpoint.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus_podman::sandbox::{Sandbox, SandboxOptions};
use plexus_test_support::lab::{Lab, eventually, run_lab};
use serde_json::Value;

const IMAGE: &str = "localhost/plexus-busybox:1";
/// A web server answering `web-ok`.
const WEB: &str = "mkdir -p /www && echo web-ok > /www/index.html && exec httpd -f -p 80 -h /www";

struct Host {
    lab: Lab,
    node_netns: String,
    socket: PathBuf,
}

impl Host {
    fn ctx(&self, args: &[&str]) -> Value {
        let mut all = vec!["--context", "cluster1"];
        all.extend_from_slice(args);
        self.lab.json(&all)
    }

    fn endpoints(&self) -> Vec<Value> {
        self.ctx(&["endpoint", "list", "-o", "json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn endpoint(&self, pod: &str) -> Option<Value> {
        self.endpoints().into_iter().find(|e| e["pod"] == pod)
    }

    /// The host-side veths (`lxc…`) in the node's namespace.
    fn veths(&self) -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.node_netns, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("lxc"))
            .collect()
    }

    fn backends(&self, service: &str) -> Vec<String> {
        let services = self.ctx(&["service", "list", "-o", "json"]);
        let mut out = Vec::new();
        for s in services.as_array().cloned().unwrap_or_default() {
            if s["name"] == service {
                collect_ips(&s["backends"], &mut out);
            }
        }
        out
    }
}

fn collect_ips(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with("10.40.") => {
            out.push(s.split(':').next().unwrap().into())
        }
        Value::Array(a) => a.iter().for_each(|x| collect_ips(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_ips(x, out)),
        _ => {}
    }
}

fn up(lab: Lab) -> Host {
    let file = lab.write(
        "lab.yaml",
        "clusters:\n- {name: cluster1, id: 1, podCIDR: 10.40.0.0/16, serviceCIDR: 10.41.0.0/16, nodes: 1}\nrouting: tunnel\n",
    );
    lab.up(&file, &[]);
    let node_netns = format!("plx-{}-cluster1-n1", lab.name());
    let socket = lab.dir().join("cluster1/cluster1-node1/agent.sock");
    Host {
        lab,
        node_netns,
        socket,
    }
}

fn podman_in(host: &Host, dir: &Path) -> Sandbox {
    let cni_dir = dir.join("net.d");
    let bin_dir = dir.join("cni-bin");
    // The user's step: the network podman uses, and the plugin where podman looks for it.
    let done = host.lab.json(&[
        "host",
        "install-cni",
        "--network-config-dir",
        &cni_dir.display().to_string(),
        "--agent-socket",
        &host.socket.display().to_string(),
        "--cni-bin-dir",
        &bin_dir.display().to_string(),
        "-o",
        "json",
    ]);
    assert_eq!(done["network"], "plexus", "{done}");
    assert_eq!(
        done["file"],
        cni_dir.join("plexus.conflist").display().to_string()
    );
    assert_eq!(
        done["plugin"],
        bin_dir.join("plexus-cni").display().to_string()
    );
    // A second network whose agent is not there: podman run with the agent down.
    let absent = dir.join("no-agent.sock");
    host.lab.ok(&[
        "host",
        "install-cni",
        "--network-config-dir",
        &cni_dir.display().to_string(),
        "--name",
        "plexus-down",
        "--agent-socket",
        &absent.display().to_string(),
    ]);
    Sandbox::new(
        &dir.join("podman"),
        SandboxOptions {
            network_config_dir: Some(cni_dir),
            cni_plugin_dirs: vec![bin_dir],
            netns: Some(PathBuf::from(format!("/run/netns/{}", host.node_netns))),
        },
    )
    .unwrap()
}

fn set_state(host: &Host, path: &Path) {
    host.lab.ok(&[
        "lab",
        "agent-options",
        "cluster1",
        &format!("podman-state={}", path.display()),
    ]);
}

fn container_ip(pm: &Sandbox, name: &str) -> String {
    pm.podman(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.Networks.plexus.IPAddress}}",
        name,
    ])
    .unwrap()
}

/// An HTTP GET of `ip` from a new container on the network (busybox's static wget crashes in
/// its resolver here, so the request is written with nc).
fn fetch(pm: &Sandbox, ip: &str) -> String {
    pm.podman(&[
        "run",
        "--rm",
        "--network",
        "plexus",
        IMAGE,
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 80"),
    ])
    .unwrap()
}

/// `podman run` that must fail: its stderr.
fn run_fails(pm: &Sandbox, args: &[&str]) -> String {
    let mut all = vec!["run", "-d"];
    all.extend_from_slice(args);
    let out = pm.output(&all).unwrap();
    assert!(
        !out.status.success(),
        "podman {all:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn podman_containers_on_a_host() {
    run_lab("podhost", Duration::from_secs(420), |lab| {
        let host = up(lab);
        let dir = host.lab.scratch().join("host");
        // Declared after the lab: dropped (containers removed) before the lab goes down.
        let pm = podman_in(&host, &dir);
        pm.import_busybox(IMAGE, &["/bin/sleep", "1000"]).unwrap();
        set_state(&host, &pm.state_path());
        // The lab's own pods (the cluster DNS) have veths too.
        let baseline = host.veths();

        // A labelled container: address, endpoint, identity.
        host.lab.write(
            "web-svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n  selector:\n    app: web\n",
        );
        host.lab.ok(&[
            "--context",
            "cluster1",
            "apply",
            "-f",
            &host
                .lab
                .scratch()
                .join("web-svc.yaml")
                .display()
                .to_string(),
        ]);
        let id = pm
            .podman(&[
                "run",
                "-d",
                "--name",
                "web",
                "--network",
                "plexus",
                "--label",
                "app=web",
                IMAGE,
                "sh",
                "-c",
                WEB,
            ])
            .unwrap();
        let ip = container_ip(&pm, "web");
        let ep = host.endpoint("web").expect("an endpoint for container web");
        assert_eq!(ep["container-id"], id.as_str(), "{ep}");
        assert_eq!(ep["ip"], ip.as_str(), "{ep}");
        assert_eq!(ep["namespace"], "default", "{ep}");
        assert_eq!(ep["labels"], serde_json::json!({"app": "web"}), "{ep}");
        let detail = host.ctx(&["endpoint", "get", "web", "-o", "json"]);
        let labels = detail["identity-labels"].as_str().unwrap_or_default();
        assert!(labels.contains("k8s:app=web;"), "{detail}");
        assert!(
            labels.contains("k8s:io.kubernetes.pod.namespace=default;"),
            "{detail}"
        );
        assert!(
            labels.contains("k8s:io.cilium.k8s.policy.cluster=cluster1;"),
            "{detail}"
        );

        // A second container reaches it through the datapath.
        let answer = fetch(&pm, &ip);
        assert!(answer.ends_with("web-ok"), "{answer}");
        eventually(
            Duration::from_secs(20),
            "web is a backend of Service web",
            || {
                let b = host.backends("web");
                b.contains(&ip)
                    .then_some(())
                    .ok_or(format!("backends {b:?}"))
            },
        );

        // restart: CNI DEL then ADD for the same container id.
        pm.podman(&["restart", "--time", "0", "web"]).unwrap();
        let ip = container_ip(&pm, "web");
        let ep = host
            .endpoint("web")
            .expect("web registered again after restart");
        assert_eq!(
            (ep["container-id"].as_str(), ep["ip"].as_str()),
            (Some(id.as_str()), Some(ip.as_str()))
        );
        let answer = fetch(&pm, &ip);
        assert!(answer.ends_with("web-ok"), "{answer}");

        // A container without labels: its namespace's identity.
        pm.podman(&["run", "-d", "--name", "bare", "--network", "plexus", IMAGE])
            .unwrap();
        let bare = host
            .endpoint("bare")
            .expect("an endpoint for container bare");
        assert_eq!(bare["labels"], serde_json::json!({}), "{bare}");
        let detail = host.ctx(&["endpoint", "get", "bare", "-o", "json"]);
        assert_eq!(
            detail["identity-labels"],
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default;\
             k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;",
            "{detail}"
        );

        // Failures: the cause named, nothing left behind.
        let before = (host.veths(), host.endpoints().len());
        let err = run_fails(
            &pm,
            &[
                "--name",
                "bad",
                "--network",
                "plexus",
                "--label",
                "app=web server",
                IMAGE,
            ],
        );
        assert!(
            err.contains("container bad: label \\\"app\\\": invalid value")
                || err.contains("container bad: label \"app\": invalid value"),
            "{err}"
        );
        assert_eq!((host.veths(), host.endpoints().len()), before);

        let err = run_fails(
            &pm,
            &["--name", "lonely", "--network", "plexus-down", IMAGE],
        );
        assert!(
            err.contains(&dir.join("no-agent.sock").display().to_string()),
            "{err}"
        );
        assert!(err.contains("the agent is unreachable"), "{err}");
        assert_eq!((host.veths(), host.endpoints().len()), before);

        let missing = dir.join("moved/bolt_state.db");
        set_state(&host, &missing);
        let err = run_fails(&pm, &["--name", "blind", "--network", "plexus", IMAGE]);
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("podman state"), "{err}");
        assert_eq!((host.veths(), host.endpoints().len()), before);
        set_state(&host, &pm.state_path());

        // stop and rm: endpoint and backend gone.
        pm.podman(&["stop", "--time", "0", "web"]).unwrap();
        eventually(
            Duration::from_secs(10),
            "stop removes web's endpoint",
            || match host.endpoint("web") {
                None => Ok(()),
                Some(ep) => Err(format!("{ep}")),
            },
        );
        eventually(Duration::from_secs(20), "web leaves Service web", || {
            let b = host.backends("web");
            b.is_empty().then_some(()).ok_or(format!("backends {b:?}"))
        });
        pm.podman(&["rm", "--force", "--time", "0", "bare"])
            .unwrap();
        assert!(host.endpoint("bare").is_none(), "{:?}", host.endpoints());
        pm.podman(&["rm", "--force", "--time", "0", "web"]).unwrap();
        eventually(
            Duration::from_secs(10),
            "no container's veth is left",
            || {
                let v = host.veths();
                (v == baseline).then_some(()).ok_or(format!(
                    "{v:?}; containers: {}",
                    pm.podman(&["ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}}"])
                        .unwrap_or_default()
                ))
            },
        );
        drop(pm);
        drop(host);
    });
}
