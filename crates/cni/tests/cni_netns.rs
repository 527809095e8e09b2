#![allow(clippy::unwrap_used)]
//! The real plugin binary in real network namespaces, against a fake agent API.
//!
//! Needs root (fails otherwise; CI runs as root). Creates a "node" and a "pod" namespace
//! (`plexus-cni-test-<random>-node|pod`), serves a fake agent on a unix socket in a temp dir,
//! and runs `plexus-cni` inside the node namespace: ADD, the pod's address/routes/MTU, CHECK,
//! DEL twice, and ADD failing cleanly (code 11, no veth) when the agent is unreachable.
//! Everything is removed by Drop guards, also when an assertion fails.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use plexus_agent_api::{Empty, EndpointRequest, EndpointResponse, IpamRequest, IpamResponse};
use plexus_cni::link::host_ifname;
use serde_json::{Value, json};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const MTU: u32 = 1450;
const BINARY_TIMEOUT: Duration = Duration::from_secs(30);

/// A network namespace made with `ip netns add`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(suffix: &str, role: &str) -> Self {
        let name = format!("plexus-cni-test-{suffix}-{role}");
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        Self { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NS -j ARGS`, parsed; `None` when `ip` fails (a missing device).
    fn ip_json(&self, args: &[&str]) -> Option<Value> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j"])
            .args(args)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn has_link(&self, dev: &str) -> bool {
        self.ip_json(&["link", "show", "dev", dev]).is_some()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Default)]
struct AgentState {
    leases: BTreeMap<String, Ipv4Addr>,
    next: u8,
    endpoints: BTreeMap<String, EndpointRequest>,
}

type Shared = Arc<Mutex<AgentState>>;

async fn ipam(State(s): State<Shared>, Json(req): Json<IpamRequest>) -> Json<IpamResponse> {
    let mut s = s.lock().unwrap();
    let ip = match s.leases.get(&req.owner) {
        Some(ip) => *ip,
        None => {
            let ip = Ipv4Addr::new(10, 1, 0, 10 + s.next);
            s.next += 1;
            s.leases.insert(req.owner, ip);
            ip
        }
    };
    Json(IpamResponse {
        ip,
        gateway: GATEWAY,
        mtu: MTU,
    })
}

/// Refuses pods named `fail-put`, to drive ADD's rollback after the veth exists.
async fn put_endpoint(
    State(s): State<Shared>,
    Json(req): Json<EndpointRequest>,
) -> Result<Json<EndpointResponse>, (StatusCode, String)> {
    if req.pod_name == "fail-put" {
        return Err((StatusCode::INTERNAL_SERVER_ERROR, "refused".into()));
    }
    let resp = EndpointResponse {
        id: 1,
        identity: 4242,
        ip: req.ip,
        host_ifname: req.host_ifname.clone(),
    };
    s.lock()
        .unwrap()
        .endpoints
        .insert(req.container_id.clone(), req);
    Ok(Json(resp))
}

async fn get_endpoint(
    State(s): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<EndpointResponse>, (StatusCode, String)> {
    let s = s.lock().unwrap();
    let ep = s
        .endpoints
        .get(&id)
        .ok_or((StatusCode::NOT_FOUND, format!("no endpoint {id}")))?;
    Ok(Json(EndpointResponse {
        id: 1,
        identity: 4242,
        ip: ep.ip,
        host_ifname: ep.host_ifname.clone(),
    }))
}

async fn delete_endpoint(State(s): State<Shared>, UrlPath(id): UrlPath<String>) -> Json<Empty> {
    let mut s = s.lock().unwrap();
    s.endpoints.remove(&id);
    s.leases.remove(&id);
    Json(Empty {})
}

/// The fake agent: an axum server on a unix socket, stopped when dropped.
struct FakeAgent {
    state: Shared,
    socket: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl FakeAgent {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let state = Shared::default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        let app = Router::new()
            .route("/v1/ipam", post(ipam))
            .route("/v1/endpoint", put(put_endpoint))
            .route(
                "/v1/endpoint/{id}",
                axum::routing::get(get_endpoint).delete(delete_endpoint),
            )
            .with_state(state.clone());
        runtime.spawn(async move {
            // Bounded like every async part of the tests; the guard stops it sooner.
            let _ = tokio::time::timeout(
                Duration::from_secs(300),
                axum::serve(listener, app).into_future(),
            )
            .await;
        });
        Self {
            state,
            socket,
            runtime: Some(runtime),
            _dir: dir,
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What one run of the binary printed and whether it exited 0.
#[derive(Debug)]
struct Run {
    stdout: String,
    success: bool,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", self.stdout))
    }
}

/// Runs the plugin inside `node` with `vars` and `conf` on stdin, within [`BINARY_TIMEOUT`].
fn cni(node: &Netns, vars: &[(&str, &str)], conf: &Value) -> Run {
    let stdin = serde_json::to_vec(conf).unwrap();
    plexus_cni::netns::run_in(&node.path(), || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_plexus-cni"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The plugin may answer (VERSION) and exit without reading its stdin, as
        // runtimes allow: a closed pipe is not an error here.
        if let Err(e) = child.stdin.take().unwrap().write_all(&stdin) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe,
                "writing stdin: {e}"
            );
        }
        let deadline = Instant::now() + BINARY_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("plexus-cni {vars:?} did not finish within {BINARY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        Run {
            stdout: stdout.trim().to_string(),
            success: status.success(),
        }
    })
    .unwrap()
}

fn vars<'a>(command: &'a str, id: &'a str, pod: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", pod.to_str().unwrap()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=web;K8S_POD_NAME=front-0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn conf(socket: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "plexus",
        "type": "plexus-cni",
        "agent-socket": socket,
        "args": {"cni": {"labels": {"app": "x"}}},
    })
}

fn suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{:x}{n}", std::process::id(), nanos)
}

/// These tests create network namespaces: they need root, which CI has. Fail loudly otherwise.
fn require_root() {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    assert_eq!(
        uid, 0,
        "these tests create network namespaces and must run as root"
    );
}

#[test]
fn add_check_del_in_namespaces() {
    require_root();
    let suffix = suffix();
    let node = Netns::new(&suffix, "node");
    let pod = Netns::new(&suffix, "pod");
    let agent = FakeAgent::start();
    let id = format!("ctr{suffix}");
    let host = host_ifname(&id);
    let pod_path = pod.path();
    let conf = conf(&agent.socket);

    // VERSION.
    let version = cni(&node, &[("CNI_COMMAND", "VERSION")], &json!({}));
    assert!(version.success, "{version:?}");
    assert_eq!(
        version.json()["supportedVersions"],
        json!(["0.4.0", "1.0.0"])
    );

    // ADD.
    let add = cni(&node, &vars("ADD", &id, &pod_path), &conf);
    assert!(add.success, "{add:?}");
    let result = add.json();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], host.as_str());
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        pod_path.to_str().unwrap()
    );
    assert_eq!(
        result["ips"],
        json!([{"address": "10.1.0.10/32", "gateway": "10.1.0.1", "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}])
    );
    assert_eq!(result["dns"], json!({}));

    // The pod side: address, MTU, up, lo up, routes, MAC as reported.
    let eth0 = &pod.ip_json(&["addr", "show", "dev", "eth0"]).unwrap()[0];
    assert_eq!(eth0["mtu"], MTU);
    assert!(
        eth0["flags"].as_array().unwrap().contains(&json!("UP")),
        "{eth0}"
    );
    assert_eq!(eth0["address"], result["interfaces"][1]["mac"]);
    let addrs: Vec<_> = eth0["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(addrs, ["10.1.0.10/32"]);
    let lo = &pod.ip_json(&["link", "show", "dev", "lo"]).unwrap()[0];
    assert!(
        lo["flags"].as_array().unwrap().contains(&json!("UP")),
        "{lo}"
    );
    let routes = pod.ip_json(&["route", "show"]).unwrap();
    let routes = routes.as_array().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "10.1.0.1" && r["dev"] == "eth0"),
        "{routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "10.1.0.1" && r["scope"] == "link" && r["dev"] == "eth0"),
        "{routes:?}"
    );

    // The host side: in the node namespace, up, MTU, no address.
    let hostdev = &node.ip_json(&["addr", "show", "dev", &host]).unwrap()[0];
    assert_eq!(hostdev["mtu"], MTU);
    assert!(
        hostdev["flags"].as_array().unwrap().contains(&json!("UP")),
        "{hostdev}"
    );
    assert_eq!(hostdev["address"], result["interfaces"][0]["mac"]);
    assert!(
        hostdev["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["family"] != "inet"),
        "{hostdev}"
    );

    // The agent got the endpoint.
    {
        let state = agent.state.lock().unwrap();
        let ep = &state.endpoints[&id];
        assert_eq!(ep.labels.get("app").map(String::as_str), Some("x"));
        assert_eq!(ep.namespace, "web");
        assert_eq!(ep.pod_name, "front-0");
        assert_eq!(ep.ifname, "eth0");
        assert_eq!(ep.host_ifname, host);
        assert_eq!(ep.netns, pod_path.to_str().unwrap());
        assert_eq!(ep.ip, Ipv4Addr::new(10, 1, 0, 10));
        assert_eq!(json!(ep.host_mac), result["interfaces"][0]["mac"]);
        assert_eq!(json!(ep.pod_mac), result["interfaces"][1]["mac"]);
    }

    // CHECK, with the ADD result as prevResult.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let check = cni(&node, &vars("CHECK", &id, &pod_path), &check_conf);
    assert!(check.success, "{check:?}");
    assert_eq!(check.stdout, "");

    // ADD again for the same container is refused and leaves the pod alone.
    let again = cni(&node, &vars("ADD", &id, &pod_path), &conf);
    assert!(!again.success, "{again:?}");
    assert!(
        again.json()["msg"].as_str().unwrap().contains(&host),
        "{again:?}"
    );
    assert!(node.has_link(&host) && pod.has_link("eth0"));
    assert!(agent.state.lock().unwrap().endpoints.contains_key(&id));

    // DEL removes the veth (both sides) and the endpoint; DEL again succeeds.
    let del = cni(&node, &vars("DEL", &id, &pod_path), &conf);
    assert!(del.success, "{del:?}");
    assert!(!node.has_link(&host), "host veth {host} still there");
    assert!(!pod.has_link("eth0"), "pod eth0 still there");
    assert!(agent.state.lock().unwrap().endpoints.is_empty());
    assert!(agent.state.lock().unwrap().leases.is_empty());
    let del = cni(&node, &vars("DEL", &id, &pod_path), &conf);
    assert!(del.success, "{del:?}");
    // DEL without a netns at all (the runtime lost it) also succeeds.
    let del = cni(
        &node,
        &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", &id)],
        &conf,
    );
    assert!(del.success, "{del:?}");

    // CHECK after DEL fails, naming the container.
    let check = cni(&node, &vars("CHECK", &id, &pod_path), &check_conf);
    assert!(!check.success, "{check:?}");
    assert!(
        check.json()["msg"].as_str().unwrap().contains(&id),
        "{check:?}"
    );
}

#[test]
fn add_with_unreachable_agent_leaves_nothing() {
    require_root();
    let suffix = suffix();
    let node = Netns::new(&suffix, "node");
    let pod = Netns::new(&suffix, "pod");
    let dir = tempfile::tempdir().unwrap();
    let id = format!("ctr{suffix}");
    let add = cni(
        &node,
        &vars("ADD", &id, &pod.path()),
        &conf(&dir.path().join("no-agent.sock")),
    );
    assert!(!add.success, "{add:?}");
    let err = add.json();
    assert_eq!(err["code"], 11, "{err}");
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(err["msg"].as_str().unwrap().contains("/v1/ipam"), "{err}");
    assert!(
        err["details"].as_str().unwrap().contains("no-agent.sock"),
        "{err}"
    );
    assert!(!node.has_link(&host_ifname(&id)));
    assert!(!pod.has_link("eth0"));
}

#[test]
fn add_with_missing_netns_releases_the_address() {
    require_root();
    let suffix = suffix();
    let node = Netns::new(&suffix, "node");
    let agent = FakeAgent::start();
    let id = format!("ctr{suffix}");
    let missing = PathBuf::from(format!("/run/netns/plexus-cni-test-{suffix}-absent"));
    let add = cni(&node, &vars("ADD", &id, &missing), &conf(&agent.socket));
    assert!(!add.success, "{add:?}");
    let err = add.json();
    assert_eq!(err["code"], 7, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("-absent"), "{err}");
    assert!(!node.has_link(&host_ifname(&id)));
    assert!(agent.state.lock().unwrap().leases.is_empty());
}

#[test]
fn failed_registration_removes_the_veth_and_releases_the_address() {
    require_root();
    let suffix = suffix();
    let node = Netns::new(&suffix, "node");
    let pod = Netns::new(&suffix, "pod");
    let agent = FakeAgent::start();
    let id = format!("ctr{suffix}");
    let pod_path = pod.path();
    let mut env = vars("ADD", &id, &pod_path);
    env.retain(|(k, _)| *k != "CNI_ARGS");
    env.push(("CNI_ARGS", "K8S_POD_NAMESPACE=web;K8S_POD_NAME=fail-put"));
    let add = cni(&node, &env, &conf(&agent.socket));
    assert!(!add.success, "{add:?}");
    let err = add.json();
    assert_eq!(err["code"], 999, "{err}");
    assert!(
        err["msg"].as_str().unwrap().contains("PUT /v1/endpoint"),
        "{err}"
    );
    assert!(err["details"].as_str().unwrap().contains("500"), "{err}");
    assert!(!node.has_link(&host_ifname(&id)), "host veth left behind");
    assert!(!pod.has_link("eth0"), "pod eth0 left behind");
    assert!(agent.state.lock().unwrap().leases.is_empty());
}

#[test]
fn add_into_a_pod_whose_ifname_is_taken_changes_nothing() {
    require_root();
    let suffix = suffix();
    let node = Netns::new(&suffix, "node");
    let pod = Netns::new(&suffix, "pod");
    run_ok(Command::new("ip").args([
        "-n",
        &pod.name,
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ]));
    let agent = FakeAgent::start();
    let id = format!("ctr{suffix}");
    let add = cni(&node, &vars("ADD", &id, &pod.path()), &conf(&agent.socket));
    assert!(!add.success, "{add:?}");
    let err = add.json();
    assert!(
        err["msg"].as_str().unwrap().contains(&host_ifname(&id)),
        "{err}"
    );
    assert!(err["msg"].as_str().unwrap().contains("eth0"), "{err}");
    assert!(!node.has_link(&host_ifname(&id)));
    assert!(pod.has_link("eth0"), "the pod's own eth0 must stay");
    assert!(agent.state.lock().unwrap().leases.is_empty());
}
