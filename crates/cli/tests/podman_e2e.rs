//! The lab with `runtime: podman`, as root: every pod is a podman container on its node's own
//! podman (podman runs the CNI plugin), and the walkthroughs' checks hold unchanged.
//! - `podman_pods_get_addresses_and_answer`: one cluster of two nodes. Each pod is a container
//!   of its node's podman only, with its labels, the namespace label and the cluster DNS; the
//!   agent's endpoint carries podman's container id and the pod's address; pods answer one
//!   another by address (built-in server, exact JSON), also from inside a container; a pod with
//!   a command runs it; `lab stop`/`lab start` pause and resume the containers; deleting a
//!   Deployment removes its containers and endpoints; `lab down` leaves no container, mount,
//!   namespace or process behind.
//! - `global_services_with_podman`: the global-services walkthrough, steps 3 to 5 and 7: both
//!   clusters answer, `shared-service=false`, `service-affinity=local` and its fallback,
//!   failover within 10 s.
//! - `protected_db_with_podman`: the protected-db policy: employees connect, the stranger is
//!   dropped, and the drop shows in `monitor`.
//!
//! The walkthroughs select pods by their labels, which the agent reads from podman's own
//! database (the lab gives each node's agent `podman-state`), never from the lab.
//! The labs run one at a time (two cores; step 7's failover is timed against the others' load).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use plexus_lab::lab::LabState;
use plexus_lab::podman::NodePodman;
use plexus_test_support::lab::{Lab, eventually, run_lab};
use plexus_test_support::walkthrough::{ask, both, only, reaches, share};
use serde_json::{Value, json};

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serially(base: &str, limit: Duration, test: impl FnOnce(Lab) + Send + 'static) {
    let _turn = ONE_LAB_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    run_lab(base, limit, test);
}

fn example(walkthrough: &str, file: &str) -> String {
    format!(
        "{}/../../examples/{walkthrough}/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The walkthrough's lab file with `runtime: podman` added.
fn podman_lab_file(lab: &Lab, walkthrough: &str) -> PathBuf {
    let text = std::fs::read_to_string(example(walkthrough, "lab.yaml")).unwrap();
    assert!(!text.contains("runtime:"), "{walkthrough}/lab.yaml: {text}");
    lab.write("lab.yaml", &format!("{text}runtime: podman\n"))
}

/// The podman of `node` of `cluster`, as the lab runs it.
fn node_podman(lab: &Lab, cluster: &str, node: &str) -> NodePodman {
    let state = LabState::load(lab.dir()).unwrap();
    let n = state
        .cluster(cluster)
        .unwrap()
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap_or_else(|| panic!("no node {node} in {cluster}"));
    NodePodman::of(n)
}

fn podman(lab: &Lab, cluster: &str, node: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    node_podman(lab, cluster, node)
        .run(&args)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The lab's processes, mounts and namespaces, by what names it: the lab's directory or name.
fn leftovers(lab_dir: &Path, lab_name: &str, container_netns: &[String]) -> Vec<String> {
    let dir = lab_dir.display().to_string();
    let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(|l| format!("mount {l}"))
        .collect();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&dir) {
            left.push(format!("process {cmdline}"));
        }
    }
    for ns in std::fs::read_dir("/run/netns").unwrap().flatten() {
        let name = ns.file_name().to_string_lossy().to_string();
        if name.starts_with(&format!("plx-{lab_name}-")) || container_netns.contains(&name) {
            left.push(format!("network namespace {name}"));
        }
    }
    left
}

/// `lab down`, then nothing of the lab is left: no mount, process or namespace, also none of
/// podman's.
fn down_and_nothing_left(mut lab: Lab) {
    let (dir, name) = (lab.dir().to_path_buf(), lab.name().to_string());
    let state = LabState::load(&dir).unwrap();
    let mut container_netns = Vec::new();
    for c in &state.clusters {
        for ns in ["default", "istio-space"] {
            for p in lab.pods(&c.name, ns) {
                if p["runtime"] == "podman" {
                    container_netns.push(p["netns"].as_str().unwrap().to_string());
                }
            }
        }
    }
    lab.down();
    assert!(!dir.exists(), "lab down removes {}", dir.display());
    let left = leftovers(&dir, &name, &container_netns);
    assert!(left.is_empty(), "left behind by lab down: {left:#?}");
}

const PODS: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: docker.io/nginx:1.15.8
        ports:
        - containerPort: 8080
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: client
spec:
  replicas: 1
  template:
    metadata:
      labels:
        app: client
    spec:
      containers:
      - name: client
        image: redis:6.0.5-alpine
        command: [sleep]
        args: [100d]
";

fn pods_get_addresses_and_answer(lab: Lab) {
    let file = lab.write(
        "lab.yaml",
        "clusters:\n- {name: c1, id: 1, podCIDR: 10.50.0.0/16, serviceCIDR: 10.51.0.0/16, nodes: 2}\nruntime: podman\n",
    );
    lab.up(&file, &[]);
    let pods_file = lab.write("pods.yaml", PODS);
    lab.ok(&[
        "--context",
        "c1",
        "apply",
        "-f",
        pods_file.to_str().unwrap(),
    ]);

    let pods = lab.pods("c1", "default");
    assert_eq!(pods.len(), 3, "{pods:?}");
    let webs: Vec<&Value> = pods
        .iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with("web-"))
        .collect();
    assert_ne!(webs[0]["node"], webs[1]["node"], "spread over the nodes");
    for node in ["c1-node1", "c1-node2"] {
        // Each node's podman holds its own pods, and only those.
        let mut expected: Vec<String> = pods
            .iter()
            .filter(|p| p["node"] == node)
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        expected.sort();
        // As a person looks: `plexus lab podman NODE ...`.
        let listed = lab.ok(&["lab", "podman", node, "ps", "--format", "{{.Names}}"]);
        let mut listed: Vec<&str> = listed.lines().collect();
        listed.sort();
        assert_eq!(listed, expected, "podman ps on {node}");
    }
    for p in &pods {
        let (name, node) = (p["name"].as_str().unwrap(), p["node"].as_str().unwrap());
        assert_eq!(p["runtime"], "podman", "{p}");
        let inspect: Value =
            serde_json::from_str(&podman(&lab, "c1", node, &["container", "inspect", name]))
                .unwrap();
        let labels = &inspect[0]["Config"]["Labels"];
        let app = name.split('-').next().unwrap();
        assert_eq!(labels["app"], app, "{name}: {labels}");
        assert_eq!(labels["io.kubernetes.pod.namespace"], "default", "{labels}");
        // The agent's endpoint is podman's container, wired by the CNI plugin podman ran.
        let ep = lab.json(&["--context", "c1", "endpoint", "get", name, "-o", "json"]);
        assert_eq!(ep["endpoint"]["container-id"], inspect[0]["Id"], "{ep}");
        assert_eq!(ep["endpoint"]["ip"], p["ip"], "{ep}");
    }

    // The built-in server answers with who it is, by address, from the other pod; the
    // container's own network stack (busybox wget inside it) gets the same answer.
    let client = pods
        .iter()
        .find(|p| p["name"] == "client-0")
        .unwrap()
        .clone();
    let answers_from_web = |web: &Value| {
        let expected = json!({"pod": web["name"], "namespace": "default",
            "node": web["node"], "cluster": "c1"});
        let url = format!("http://{}:8080/", web["ip"].as_str().unwrap());
        eventually(Duration::from_secs(30), "web answers by address", || {
            let out = lab.sh(
                "c1",
                "default",
                "client-0",
                &format!("curl -s --max-time 2 {url}"),
            );
            (serde_json::from_str::<Value>(out.trim()).ok() == Some(expected.clone()))
                .then_some(())
                .ok_or(out)
        });
        let inside = podman(
            &lab,
            "c1",
            client["node"].as_str().unwrap(),
            &["exec", "client-0", "wget", "-q", "-O", "-", &url],
        );
        assert_eq!(
            serde_json::from_str::<Value>(&inside).unwrap(),
            expected,
            "from inside client-0"
        );
    };
    for web in &webs {
        answers_from_web(web);
    }

    // The pod with a command runs it, with the cluster DNS as the lab's pods have it.
    let client_node = client["node"].as_str().unwrap();
    let cmdline = podman(
        &lab,
        "c1",
        client_node,
        &["exec", "client-0", "cat", "/proc/1/cmdline"],
    );
    assert_eq!(cmdline.replace('\0', " ").trim(), "sleep 100d");
    let resolv = podman(
        &lab,
        "c1",
        client_node,
        &["exec", "client-0", "cat", "/etc/resolv.conf"],
    );
    assert!(
        resolv.contains("nameserver 10.51.0.10")
            && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );

    // lab stop pauses the containers, lab start resumes them: the same pods answer again.
    lab.ok(&["lab", "stop", "c1"]);
    let paused = podman(
        &lab,
        "c1",
        client_node,
        &[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            "client-0",
        ],
    );
    assert_eq!(paused, "paused");
    lab.ok(&["lab", "start", "c1"]);
    for web in &webs {
        answers_from_web(web);
    }

    // Deleting the Deployment removes its containers (podman rm: CNI DEL) and endpoints.
    lab.ok(&["--context", "c1", "delete", "deployment", "web"]);
    for web in &webs {
        let (name, node) = (web["name"].as_str().unwrap(), web["node"].as_str().unwrap());
        let listed = podman(&lab, "c1", node, &["ps", "--all", "--format", "{{.Names}}"]);
        assert!(
            !listed.lines().any(|l| l == name),
            "{name} on {node}: {listed}"
        );
        let out = lab.plexus(&["--context", "c1", "endpoint", "get", name]);
        assert!(!out.status.success(), "endpoint of {name} is gone");
    }

    down_and_nothing_left(lab);
}

#[test]
fn podman_pods_get_addresses_and_answer() {
    serially(
        "podp",
        Duration::from_secs(300),
        pods_get_addresses_and_answer,
    );
}

/// `annotate service rebel-base CHANGE` in cluster1.
fn annotate_rebel_base(lab: &Lab, change: &str) {
    lab.ok(&[
        "--context",
        "cluster1",
        "annotate",
        "service",
        "rebel-base",
        change,
    ]);
}

fn ask_rebel_base(lab: &Lab, ctx: &str, n: usize) -> BTreeMap<String, usize> {
    ask(lab, ctx, "deployment/x-wing", "rebel-base", n)
}

fn global_services(lab: Lab) {
    let gs = |file: &str| example("global-services", file);
    // 1. and 2. The lab (podman), one shared CA, connected.
    lab.up(podman_lab_file(&lab, "global-services"), &["--mesh"]);

    // 3. The walkthrough's objects: every pod is a podman container; both clusters answer,
    //    from both sides.
    for ctx in ["cluster1", "cluster2"] {
        lab.ok(&["--context", ctx, "apply", "-f", &gs(&format!("{ctx}.yaml"))]);
        for p in lab.pods(ctx, "default") {
            assert_eq!(p["runtime"], "podman", "{p}");
        }
    }
    for ctx in ["cluster1", "cluster2"] {
        eventually(Duration::from_secs(60), "both clusters serve", || {
            both(&ask_rebel_base(&lab, ctx, 10)).map_err(|e| format!("{ctx}: {e}"))
        });
        let c = ask_rebel_base(&lab, ctx, 100);
        for cluster in ["cluster1", "cluster2"] {
            let n = share(&c, cluster);
            assert!(
                (20..=80).contains(&n),
                "from {ctx}: {cluster} served {n} of 100: {c:?}"
            );
        }
    }

    // 4. shared=false in cluster1: cluster1 still uses both, cluster2 only its own.
    annotate_rebel_base(&lab, "io.cilium/shared-service=false");
    eventually(Duration::from_secs(20), "cluster2 stays home", || {
        let c = ask_rebel_base(&lab, "cluster2", 20);
        only(&c, "cluster2").then_some(()).ok_or(format!("{c:?}"))
    });
    both(&ask_rebel_base(&lab, "cluster1", 40))
        .unwrap_or_else(|e| panic!("cluster1 still uses both: {e}"));
    annotate_rebel_base(&lab, "io.cilium/shared-service-");
    eventually(Duration::from_secs(20), "cluster2 sees both again", || {
        both(&ask_rebel_base(&lab, "cluster2", 20))
    });

    // 5. affinity local: cluster1 at home; without local backends, cluster2 serves.
    annotate_rebel_base(&lab, "io.cilium/service-affinity=local");
    eventually(Duration::from_secs(20), "affinity local", || {
        let c = ask_rebel_base(&lab, "cluster1", 20);
        only(&c, "cluster1").then_some(()).ok_or(format!("{c:?}"))
    });
    let c = ask_rebel_base(&lab, "cluster1", 50);
    assert!(only(&c, "cluster1"), "affinity local: {c:?}");
    lab.ok(&[
        "--context",
        "cluster1",
        "delete",
        "deployment",
        "rebel-base",
    ]);
    eventually(Duration::from_secs(20), "fallback to cluster2", || {
        let c = ask_rebel_base(&lab, "cluster1", 20);
        only(&c, "cluster2").then_some(()).ok_or(format!("{c:?}"))
    });
    // The deployment again (only it: applying the Service would reset its annotations).
    let text = std::fs::read_to_string(gs("cluster1.yaml")).unwrap();
    let deployment = text
        .split("\n---\n")
        .find(|d| d.contains("kind: Deployment") && d.contains("name: rebel-base"))
        .unwrap();
    let file = lab.write("rebel-base.yaml", deployment);
    lab.ok(&[
        "--context",
        "cluster1",
        "apply",
        "-f",
        file.to_str().unwrap(),
    ]);
    eventually(Duration::from_secs(30), "affinity local again", || {
        let c = ask_rebel_base(&lab, "cluster1", 20);
        only(&c, "cluster1").then_some(()).ok_or(format!("{c:?}"))
    });
    annotate_rebel_base(&lab, "io.cilium/service-affinity-");
    eventually(Duration::from_secs(20), "both again", || {
        both(&ask_rebel_base(&lab, "cluster1", 20))
    });

    // 7. cluster2 stops: within 10 s, every new request from cluster1 succeeds (on cluster1).
    lab.ok(&["lab", "stop", "cluster2"]);
    let took = eventually(Duration::from_secs(10), "failover", || {
        let c = ask_rebel_base(&lab, "cluster1", 10);
        only(&c, "cluster1").then_some(()).ok_or(format!("{c:?}"))
    });
    eprintln!("failover: new requests all served by cluster1 after {took:?}");
    let c = ask_rebel_base(&lab, "cluster1", 30);
    assert!(only(&c, "cluster1"), "after failover: {c:?}");
    lab.ok(&["lab", "start", "cluster2"]);
    eventually(Duration::from_secs(60), "cluster2 serves again", || {
        both(&ask_rebel_base(&lab, "cluster1", 20))
    });

    down_and_nothing_left(lab);
}

#[test]
fn global_services_with_podman() {
    serially("podgs", Duration::from_secs(600), global_services);
}

/// employee (cluster1), stranger (cluster1), employee (cluster2, istio-space) reach
/// protected-db?
fn outcome(lab: &Lab, db_ip: &str) -> [bool; 3] {
    let db = |ctx, ns, pod, target| reaches(lab, ctx, ns, pod, target, 6379, "protected-db");
    [
        db(
            "cluster1",
            "default",
            "statefulset/employee",
            "protected-db",
        ),
        db(
            "cluster1",
            "default",
            "statefulset/stranger",
            "protected-db",
        ),
        db("cluster2", "istio-space", "statefulset/employee", db_ip),
    ]
}

fn protected_db(lab: Lab) {
    let pdb = |file: &str| example("protected-db", file);
    let out = lab.up(podman_lab_file(&lab, "protected-db"), &["--mesh"]);
    assert!(out.contains("connected"), "{out}");
    for ctx in ["cluster1", "cluster2"] {
        lab.ok(&[
            "--context",
            ctx,
            "apply",
            "-f",
            &pdb(&format!("{ctx}.yaml")),
        ]);
    }
    let pod = |ctx: &str, ns: &str, prefix: &str| -> Value {
        lab.pods(ctx, ns)
            .into_iter()
            .find(|p| p["name"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no pod {prefix}* in {ctx}/{ns}"))
    };
    let db = pod("cluster1", "default", "protected-db");
    let employee2 = pod("cluster2", "istio-space", "employee");
    for p in [&db, &employee2] {
        assert_eq!(p["runtime"], "podman", "{p}");
    }
    let db_ip = db["ip"].as_str().unwrap().to_string();
    let db_node = db["node"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(60), "everyone connects", || {
        let o = outcome(&lab, &db_ip);
        (o == [true, true, true])
            .then_some(())
            .ok_or(format!("{o:?}"))
    });

    // The L4 policy: employees connect, stranger's SYNs are dropped as policy denials.
    let monitor = lab.spawn_monitor("cluster1", &db_node, "drop");
    lab.ok(&[
        "--context",
        "cluster1",
        "apply",
        "-f",
        &pdb("l4-policy.yaml"),
    ]);
    eventually(Duration::from_secs(20), "policy enforced", || {
        let o = outcome(&lab, &db_ip);
        (o == [true, false, true])
            .then_some(())
            .ok_or(format!("{o:?}"))
    });
    for _ in 0..3 {
        assert_eq!(outcome(&lab, &db_ip), [true, false, true]);
    }
    let drops = monitor.finish();
    let stranger = pod("cluster1", "default", "stranger");
    let ep = |name: &Value| -> Value {
        lab.json(&[
            "--context",
            "cluster1",
            "endpoint",
            "get",
            name.as_str().unwrap(),
            "-o",
            "json",
        ])
    };
    let stranger_id = ep(&stranger["name"])["endpoint"]["identity"].clone();
    let db_ep = ep(&db["name"]);
    let db_id = db_ep["endpoint"]["identity"].clone();
    let expected = format!(
        "identity {stranger_id}->{db_id}: {}:",
        stranger["ip"].as_str().unwrap()
    );
    let line = drops
        .lines()
        .find(|l| l.starts_with("xx drop (Policy denied)") && l.contains(&expected))
        .unwrap_or_else(|| panic!("no denial {expected:?} in:\n{drops}"));
    assert!(line.contains(&format!("-> {db_ip}:6379 tcp SYN")), "{line}");
    assert_eq!(db_ep["policy"]["ingress-enforced"], true, "{db_ep}");

    down_and_nothing_left(lab);
}

#[test]
fn protected_db_with_podman() {
    serially("podpdb", Duration::from_secs(420), protected_db);
}
