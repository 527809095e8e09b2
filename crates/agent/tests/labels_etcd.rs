//! Identity labels from the cluster's Namespace and Pod objects, against a real etcd and a real
//! `plexus-agent` (fake datapath): a pod's identity carries its namespace's labels; a namespace
//! relabel and a pod relabel move the pods to new identities (the old ones released); a change
//! superseded during the grace period never becomes an identity the pod uses; a bad object is
//! refused without harm; a restarted agent relabels what changed while it was down.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use plexus_agent_api::client::{Client, Endpoint};
use plexus_agent_api::{EndpointInfo, EndpointRequest, IpamRequest, WorkloadSource};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend};
use plexus_model::keys;
use plexus_model::objects::{NamespaceObject, PodObject};
use plexus_test_support::{EtcdProcess, workspace_bin};

const CLUSTER: &str = "c1";
const NODE: &str = "n1";
/// Long enough that two writes made one after the other land within it.
const GRACE: &str = "1s";
const LIMIT: Duration = Duration::from_secs(30);

struct Agent {
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(etcd: &str, dir: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .unwrap();
        std::fs::create_dir_all(dir.join("clustermesh")).unwrap();
        let child = Command::new(workspace_bin("plexus-agent"))
            .args(["--cluster-name", CLUSTER, "--cluster-id", "1"])
            .args(["--node-name", NODE, "--node-ip", "192.168.1.11"])
            .args(["--pod-cidr", "10.1.0.0/16", "--datapath", "fake"])
            .arg(format!("--identity-change-grace-period={GRACE}"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg(format!("--etcd-endpoints={etcd}"))
            .arg("--clustermesh-config")
            .arg(dir.join("clustermesh"))
            .arg("--api-socket")
            .arg(socket(dir))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child }
    }

    /// Stops it as systemd would (SIGTERM) and waits.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let _ = self.child.wait();
    }
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("agent.sock")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn put_json(kv: &EtcdBackend, key: &str, value: &impl serde::Serialize) {
    kv.put(key, serde_json::to_vec(value).unwrap(), None)
        .await
        .unwrap();
}

async fn client(dir: &Path) -> Client {
    let client = Client::new(Endpoint::Unix(socket(dir)));
    let log = dir.join("agent.log");
    wait(
        &format!("the agent answers (log {})", log.display()),
        || async { client.healthz().await.ok().map(|_| ()) },
    )
    .await;
    client
}

/// Polls `check` until it gives a value (the agent reacts to watches; nothing here is timed).
async fn wait<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register(client: &Client, ns: &str, pod: &str, pod_labels: &[(&str, &str)]) {
    let owner = format!("{ns}-{pod}");
    let ipam = client
        .ipam(&IpamRequest {
            owner: owner.clone(),
        })
        .await
        .unwrap();
    client
        .put_endpoint(&EndpointRequest {
            container_id: owner.clone(),
            netns: String::new(),
            ifname: "eth0".into(),
            host_ifname: format!("lxc{pod}"),
            host_mac: "02:00:00:00:00:01".into(),
            pod_mac: "02:00:00:00:00:02".into(),
            ip: ipam.ip,
            namespace: ns.into(),
            pod_name: pod.into(),
            labels: labels(pod_labels),
            ports: BTreeMap::new(),
            workload: WorkloadSource::Request,
        })
        .await
        .unwrap();
}

async fn endpoint(client: &Client, ns: &str, pod: &str) -> EndpointInfo {
    client
        .endpoints()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.namespace == ns && e.pod == pod)
        .unwrap_or_else(|| panic!("no endpoint {ns}/{pod}"))
}

/// The labels of identity `id` as its master key holds them.
async fn identity_labels(kv: &EtcdBackend, id: u32) -> String {
    let kv = kv
        .get(&keys::identity_id_key(id))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("identity {id} has no master key"));
    String::from_utf8(kv.value).unwrap()
}

/// Whether this node still references the identity with `labels` (its value key).
async fn node_references(kv: &EtcdBackend, labels: &str) -> bool {
    kv.get(&keys::identity_value_key(labels, NODE))
        .await
        .unwrap()
        .is_some()
}

/// Waits until `ns/pod` has an identity other than `old` and returns it with its labels.
async fn moved(client: &Client, kv: &EtcdBackend, ns: &str, pod: &str, old: u32) -> (u32, String) {
    let id = wait(&format!("{ns}/{pod} leaves identity {old}"), || async {
        let ep = endpoint(client, ns, pod).await;
        (ep.identity != old).then_some(ep.identity)
    })
    .await;
    (id, identity_labels(kv, id).await)
}

async fn scenario(dir: &Path, etcd: &EtcdProcess) {
    plexus_kvstore::install_crypto_provider();
    let kv = Arc::new(
        EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .unwrap(),
    );
    // Namespace x is labelled before the agent starts; y has no object.
    put_json(
        &kv,
        &NamespaceObject::new("x", labels(&[("team", "t1")])).key(),
        &NamespaceObject::new("x", labels(&[("team", "t1")])),
    )
    .await;
    let agent = Agent::start(&etcd.endpoint(), dir);
    let api = client(dir).await;
    register(&api, "x", "a", &[("app", "web")]).await;
    register(&api, "x", "b", &[("app", "db")]).await;
    register(&api, "y", "c", &[("app", "web")]).await;

    // 1. Namespace labels in the identity (with the cluster label and metadata.name).
    let a = endpoint(&api, "x", "a").await;
    let a_labels = identity_labels(&kv, a.identity).await;
    assert_eq!(
        a_labels,
        "k8s:app=web;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x;\
         k8s:io.cilium.k8s.namespace.labels.team=t1;k8s:io.cilium.k8s.policy.cluster=c1;\
         k8s:io.kubernetes.pod.namespace=x;"
    );
    assert_eq!(a.namespace_labels, Some(labels(&[("team", "t1")])));
    let c = endpoint(&api, "y", "c").await;
    assert_eq!(
        identity_labels(&kv, c.identity).await,
        "k8s:app=web;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=y;\
         k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=y;"
    );
    assert_ne!(a.identity, c.identity, "same pod labels, other namespace");

    // 2. A namespace relabel moves both of its pods, releasing their old identities; y's pod
    //    stays.
    let b = endpoint(&api, "x", "b").await;
    let b_labels = identity_labels(&kv, b.identity).await;
    put_json(
        &kv,
        &NamespaceObject::new("x", BTreeMap::new()).key(),
        &NamespaceObject::new("x", labels(&[("team", "t2")])),
    )
    .await;
    let (a2, a2_labels) = moved(&api, &kv, "x", "a", a.identity).await;
    let (_, b2_labels) = moved(&api, &kv, "x", "b", b.identity).await;
    assert!(
        a2_labels.contains("namespace.labels.team=t2;"),
        "{a2_labels}"
    );
    assert!(
        b2_labels.contains("namespace.labels.team=t2;"),
        "{b2_labels}"
    );
    wait("the old identities released", || async {
        (!node_references(&kv, &a_labels).await && !node_references(&kv, &b_labels).await)
            .then_some(())
    })
    .await;
    assert!(node_references(&kv, &a2_labels).await);
    assert_eq!(endpoint(&api, "y", "c").await.identity, c.identity);
    let ep = endpoint(&api, "x", "a").await;
    assert_eq!(ep.namespace_labels, Some(labels(&[("team", "t2")])));
    // Its ip -> identity entry follows.
    let pair = kv
        .get(&format!("cilium/state/ip/v1/default/{}", ep.ip))
        .await
        .unwrap()
        .unwrap();
    let pair: serde_json::Value = serde_json::from_slice(&pair.value).unwrap();
    assert_eq!(pair["ID"], a2);

    // 3. A Pod object's labels replace the registration's; a newer change during the grace
    //    supersedes the older one, whose identity the pod never takes.
    let pod = |l: &[(&str, &str)]| PodObject::new("x", "a", labels(l));
    put_json(&kv, &pod(&[]).key(), &pod(&[("app", "v1")])).await;
    put_json(&kv, &pod(&[]).key(), &pod(&[("app", "api")])).await;
    let (a3, a3_labels) = moved(&api, &kv, "x", "a", a2).await;
    assert!(a3_labels.starts_with("k8s:app=api;"), "{a3_labels}");
    let ep = endpoint(&api, "x", "a").await;
    assert_eq!(ep.labels, labels(&[("app", "api")]));
    assert_eq!(ep.registered_labels, Some(labels(&[("app", "web")])));
    wait("the identity before the pod relabel released", || async {
        (!node_references(&kv, &a2_labels).await).then_some(())
    })
    .await;
    let v1_labels = a3_labels.replace("app=api", "app=v1");
    assert!(
        !node_references(&kv, &v1_labels).await,
        "the superseded change's identity is released"
    );
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(
        !log.lines()
            .any(|l| l.contains("endpoint relabelled") && l.contains("app=v1")),
        "the pod never switched to the superseded labels:\n{log}"
    );
    assert_eq!(
        endpoint(&api, "x", "b").await.labels,
        labels(&[("app", "db")])
    );

    // 4. Bad objects are refused, naming their key; the agent goes on.
    kv.put(
        "plexus/objects/v1/namespaces/y",
        b"{not json".to_vec(),
        None,
    )
    .await
    .unwrap();
    put_json(
        &kv,
        "plexus/objects/v1/pods/y/c",
        &PodObject::new("y", "other", labels(&[("app", "x")])),
    )
    .await;
    wait("the bad objects refused", || async {
        let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
        (log.contains("plexus/objects/v1/namespaces/y")
            && log.contains("plexus/objects/v1/pods/y/c"))
        .then_some(())
    })
    .await;
    // The pod object of x/a removed: back to the registration's labels, with a new identity.
    kv.delete(&pod(&[]).key()).await.unwrap();
    let (_, a4_labels) = moved(&api, &kv, "x", "a", a3).await;
    assert!(a4_labels.starts_with("k8s:app=web;"), "{a4_labels}");
    assert_eq!(endpoint(&api, "y", "c").await.identity, c.identity);
    let ep = endpoint(&api, "x", "a").await;
    assert_eq!(ep.registered_labels, None);
    let a4 = ep.identity;

    // 5. Changes while the agent is down: it restores the pods as they were, then relabels.
    agent.stop();
    put_json(
        &kv,
        &NamespaceObject::new("x", BTreeMap::new()).key(),
        &NamespaceObject::new("x", labels(&[("team", "t3")])),
    )
    .await;
    let _agent = Agent::start(&etcd.endpoint(), dir);
    let api = client(dir).await;
    let (_, a5_labels) = moved(&api, &kv, "x", "a", a4).await;
    assert!(
        a5_labels.contains("namespace.labels.team=t3;"),
        "{a5_labels}"
    );
    wait("the identity from before the restart released", || async {
        (!node_references(&kv, &a4_labels).await).then_some(())
    })
    .await;
    let persisted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state").join("endpoints.json")).unwrap())
            .unwrap();
    let a_state = persisted["endpoints"]["x-a"].clone();
    assert_eq!(a_state["namespace-labels"]["team"], "t3", "{persisted:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_pod_objects_give_and_change_identities() {
    let etcd = EtcdProcess::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    if tokio::time::timeout(Duration::from_secs(180), scenario(&path, &etcd))
        .await
        .is_err()
    {
        let log = std::fs::read_to_string(path.join("agent.log")).unwrap_or_default();
        panic!("timed out; agent log:\n{log}");
    }
}
