//! Pods in the lab: Namespaces, Pods, Deployments and StatefulSets from Kubernetes YAML.
//!
//! With the lab's default runtime (`netns`), a pod is a network namespace
//! (`plx-<lab>-p-<cluster>-<namespace>-<pod>`) wired by the real CNI plugin, run inside its
//! node's namespace, with the node's agent. It runs its container's `command`/`args` in its
//! namespace, or, with no command, the built-in server (`plexus lab serve`) on its container
//! ports, with the cluster DNS in its resolv.conf
//! (`<dir>/<cluster>/pods/<namespace>-<pod>.resolv.conf`, see [`crate::dns`]).
//!
//! With `runtime: podman`, a pod is a podman container named after the pod on its node's own
//! podman ([`crate::podman`]), which runs the CNI plugin; the same command or built-in server
//! runs in it, with the same DNS settings. Its network namespace is podman's; `exec` enters it
//! (and only it) with the pod's resolv.conf, so host tools such as curl run as in the pod. The
//! cluster DNS pod stays a lab pod ([`Workload::runtime`]).
//!
//! Deployments get `<name>-<n>` pods spread over the nodes (fewest pods first), StatefulSets
//! `<name>-<i>`. The lab keeps its workloads in `<dir>/<cluster>/workloads.json`; applying
//! again converges (missing pods are created, surplus ones removed), deleting removes the pods
//! (CNI DEL, process, namespace; for podman `podman rm -f`). Every pod also has its object
//! (`plexus/objects/v1/pods/<ns>/<name>`: labels, annotations) in the cluster's etcd, where
//! the agents read the labels that make its identity; re-applying a workload with other pod
//! labels relabels its pods in place ([`apply`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use plexus_kvstore::Op;
use plexus_model::apply::merge;
use plexus_model::objects::{self, PodObject};

use crate::lab::{Bins, ClusterState, LabState, NodeState};
use crate::podman::{self, NodePodman};
use crate::spec::Runtime;
use crate::sys;

/// A container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port.
    pub container_port: u16,
    /// `TCP` (default) or `UDP`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn tcp() -> String {
    "TCP".into()
}

/// A container (only what the lab uses; the image is recorded, not run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Name.
    pub name: String,
    /// Image (recorded).
    #[serde(default)]
    pub image: String,
    /// Command.
    #[serde(default)]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

/// A pod spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Containers (the first one runs).
    pub containers: Vec<Container>,
    /// Pin to a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// Object metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A pod template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Metadata (labels).
    #[serde(default)]
    pub metadata: Meta,
    /// Spec.
    pub spec: PodSpec,
}

/// A Deployment or StatefulSet spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSpec {
    /// Replicas (default 1).
    #[serde(default = "one")]
    pub replicas: u32,
    /// The pod template.
    pub template: Template,
}

fn one() -> u32 {
    1
}

/// A workload the lab runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// `Pod`, `Deployment` or `StatefulSet`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Replicas (1 for a Pod).
    pub replicas: u32,
    /// Pod labels (a Deployment's or StatefulSet's: its template's). The last applied ones:
    /// re-applying merges against them ([`apply`]).
    pub labels: BTreeMap<String, String>,
    /// Pod annotations (a Deployment's or StatefulSet's: its template's), as `labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Pod spec.
    pub spec: PodSpec,
    /// What runs its pods; `None`: the lab's runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
}

/// A running pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PodState {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Owning workload, `kind/name`.
    pub owner: String,
    /// Node.
    pub node: String,
    /// What runs it.
    #[serde(default, skip_serializing_if = "Runtime::is_default")]
    pub runtime: Runtime,
    /// Its network namespace (with podman: the container's, named by podman; empty while the
    /// container does not run).
    pub netns: String,
    /// The CNI container id (with podman: podman's id of the container).
    pub container_id: String,
    /// Its address.
    pub ip: String,
    /// Labels (the pod's own: its workload's when created, changed in place by re-applying
    /// it or by `plexus label`).
    pub labels: BTreeMap<String, String>,
    /// Annotations, as `labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The process it runs (with podman: the container's first process).
    pub pid: Option<u32>,
    /// Its resolv.conf (bind-mounted over `/etc/resolv.conf` for its process and `exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv_conf: Option<PathBuf>,
}

/// A cluster's workloads and pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Workloads {
    /// Namespaces created.
    pub namespaces: Vec<String>,
    /// Workloads by `kind/namespace/name`.
    pub workloads: BTreeMap<String, Workload>,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, PodState>,
}

fn file(lab: &LabState, cluster: &str) -> PathBuf {
    lab.dir.join(cluster).join("workloads.json")
}

impl Workloads {
    /// Loads a cluster's workloads.
    pub fn load(lab: &LabState, cluster: &str) -> Result<Self> {
        match std::fs::read(file(lab, cluster)) {
            Ok(b) => serde_json::from_slice(&b).context("corrupt workloads.json"),
            Err(_) => Ok(Self::default()),
        }
    }

    fn save(&self, lab: &LabState, cluster: &str) -> Result<()> {
        let path = file(lab, cluster);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

/// Reads a workload from a parsed Kubernetes object; `None` for kinds the lab does not run.
pub fn workload_from(doc: &serde_json::Value, default_ns: &str) -> Result<Option<Workload>> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let meta: Meta = serde_json::from_value(doc["metadata"].clone())
        .with_context(|| format!("{kind}: metadata"))?;
    if meta.name.is_empty() {
        bail!("{kind}: metadata.name is required");
    }
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| default_ns.to_string());
    let at = format!("{kind} {namespace}/{}", meta.name);
    let w = match kind {
        "Pod" => {
            let spec: PodSpec = serde_json::from_value(doc["spec"].clone())
                .with_context(|| format!("{at}: spec"))?;
            Workload {
                kind: kind.into(),
                namespace,
                name: meta.name.clone(),
                replicas: 1,
                labels: meta.labels.clone(),
                annotations: meta.annotations.clone(),
                spec,
                runtime: None,
            }
        }
        "Deployment" | "StatefulSet" => {
            let spec: SetSpec = serde_json::from_value(doc["spec"].clone())
                .with_context(|| format!("{at}: spec"))?;
            Workload {
                kind: kind.into(),
                namespace,
                name: meta.name.clone(),
                replicas: spec.replicas,
                labels: spec.template.metadata.labels,
                annotations: spec.template.metadata.annotations,
                spec: spec.template.spec,
                runtime: None,
            }
        }
        _ => return Ok(None),
    };
    if w.spec.containers.is_empty() {
        bail!("{at}: spec.containers: at least one container is needed");
    }
    Ok(Some(w))
}

fn pod_names(w: &Workload) -> Vec<String> {
    match w.kind.as_str() {
        "Pod" => vec![w.name.clone()],
        "StatefulSet" => (0..w.replicas).map(|i| format!("{}-{i}", w.name)).collect(),
        _ => (0..w.replicas)
            .map(|i| {
                format!(
                    "{}-{}",
                    w.name,
                    short_hash(&format!("{}/{}/{i}", w.namespace, w.name))
                )
            })
            .collect(),
    }
}

fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:05x}", h & 0xfffff)
}

fn cni(
    bins: &Bins,
    node: &crate::lab::NodeState,
    command: &str,
    pod: &PodState,
    labels: &BTreeMap<String, String>,
    ports: &[ContainerPort],
) -> Result<String> {
    let named: serde_json::Map<String, serde_json::Value> = ports
        .iter()
        .filter_map(|p| {
            let name = p.name.clone()?;
            Some((
                name,
                serde_json::json!({"port": p.container_port, "protocol": p.protocol}),
            ))
        })
        .collect();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "plexus",
        "type": "plexus-cni",
        "agent-socket": node.socket,
        "args": {"cni": {"labels": labels, "ports": named}},
    });
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", sys::netns_path(&node.netns)))
        .arg("--")
        .arg(&bins.cni)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", sys::netns_path(&pod.netns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bins.cni.parent().unwrap_or(Path::new("/")))
        .env(
            "CNI_ARGS",
            format!(
                "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                pod.namespace, pod.name
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run plexus-cni")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "CNI {command} of pod {}/{}: {}{}",
            pod.namespace,
            pod.name,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

fn start_pod(
    lab: &LabState,
    c: &ClusterState,
    w: &Workload,
    pod: &mut PodState,
    bins: &Bins,
) -> Result<()> {
    let node = node_of(c, pod)?;
    if pod.runtime == Runtime::Podman {
        return start_container(lab, c, w, pod, node);
    }
    sys::netns_add(&pod.netns)?;
    let ports: Vec<ContainerPort> = w
        .spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().cloned())
        .collect();
    let result = cni(bins, node, "ADD", pod, &w.labels, &ports)?;
    let v: serde_json::Value = serde_json::from_str(&result).context("CNI result")?;
    pod.ip = v["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    run_process(lab, c, w, pod, bins)
}

fn node_of<'a>(c: &'a ClusterState, pod: &PodState) -> Result<&'a NodeState> {
    c.nodes
        .iter()
        .find(|n| n.name == pod.node)
        .with_context(|| format!("node {} not in cluster {}", pod.node, c.name))
}

/// Writes the pod's resolv.conf (the cluster DNS, searching its namespace first) beside its log.
fn pod_resolv_conf(lab: &LabState, c: &ClusterState, pod: &mut PodState) -> Result<()> {
    let resolv = lab
        .dir
        .join(&c.name)
        .join("pods")
        .join(format!("{}-{}.resolv.conf", pod.namespace, pod.name));
    std::fs::create_dir_all(resolv.parent().unwrap_or(Path::new("/")))?;
    crate::dns::write_resolv_conf(c, &pod.namespace, &resolv)?;
    pod.resolv_conf = Some(resolv);
    Ok(())
}

/// Runs the pod as a podman container on its node: `podman run` (podman runs CNI ADD), then
/// where podman put it.
fn start_container(
    lab: &LabState,
    c: &ClusterState,
    w: &Workload,
    pod: &mut PodState,
    node: &NodeState,
) -> Result<()> {
    let p = NodePodman::of(node);
    let container = &w.spec.containers[0];
    let mut command = container.command.clone();
    command.extend(container.args.iter().cloned());
    let run = podman::PodRun {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        labels: w.labels.clone(),
        image: p.ensure_image(&container.image)?,
        dns: (
            crate::dns::dns_ip(&c.service_cidr)?.to_string(),
            crate::dns::search_list(&pod.namespace),
        ),
        command,
        serve: (
            pod.node.clone(),
            c.name.clone(),
            container
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.container_port, p.protocol.to_ascii_lowercase()))
                .collect(),
        ),
    };
    p.run(&podman::run_args(&run))?;
    refresh_container(lab, c, pod, &p)?;
    if pod.ip.is_empty() {
        bail!(
            "pod {}/{}: podman shows no address of its container on network {} of node {}",
            pod.namespace,
            pod.name,
            podman::NETWORK,
            pod.node
        );
    }
    Ok(())
}

/// Reads where podman runs the pod's container now (it may have a new network namespace after
/// a restart).
fn refresh_container(
    lab: &LabState,
    c: &ClusterState,
    pod: &mut PodState,
    p: &NodePodman,
) -> Result<()> {
    let info = p.inspect(&pod.name)?;
    pod.container_id = info.id;
    pod.netns = info.netns;
    pod.ip = info.ip;
    pod.pid = info.pid;
    pod_resolv_conf(lab, c, pod)
}

/// Starts the pod's process (its command, or the built-in server) in its namespace.
fn run_process(
    lab: &LabState,
    c: &ClusterState,
    w: &Workload,
    pod: &mut PodState,
    bins: &Bins,
) -> Result<()> {
    let container = &w.spec.containers[0];
    let log = lab
        .dir
        .join(&c.name)
        .join("pods")
        .join(format!("{}-{}.log", pod.namespace, pod.name));
    std::fs::create_dir_all(log.parent().unwrap_or(Path::new("/")))?;
    pod_resolv_conf(lab, c, pod)?;
    let (bin, args): (PathBuf, Vec<String>) = if container.command.is_empty() {
        let mut args = vec![
            "lab".to_string(),
            "serve".to_string(),
            format!("--pod={}", pod.name),
            format!("--namespace={}", pod.namespace),
            format!("--node={}", pod.node),
            format!("--cluster={}", c.name),
        ];
        for p in &container.ports {
            args.push(format!(
                "--port={}/{}",
                p.container_port,
                p.protocol.to_ascii_lowercase()
            ));
        }
        (bins.plexus.clone(), args)
    } else {
        let mut all = container.command.clone();
        all.extend(container.args.iter().cloned());
        (PathBuf::from(&all[0]), all[1..].to_vec())
    };
    pod.pid = Some(sys::spawn_in_pod(
        &pod.netns,
        pod.resolv_conf.as_deref(),
        &bin,
        &args,
        &log,
    )?);
    Ok(())
}

fn remove_pod(lab: &LabState, c: &ClusterState, pod: &PodState, bins: Option<&Bins>) {
    if pod.runtime == Runtime::Podman {
        // podman runs CNI DEL (to the agent, while it runs) and removes the namespace.
        if let Ok(node) = node_of(c, pod)
            && let Err(err) = NodePodman::of(node).remove(&pod.name)
        {
            eprintln!("⚠️  {err}");
        }
        if let Some(file) = &pod.resolv_conf {
            let _ = std::fs::remove_file(file);
        }
        return;
    }
    if let Some(pid) = pod.pid {
        sys::stop(pid, Duration::from_secs(2));
    }
    if let (Some(bins), Some(node)) = (bins, c.nodes.iter().find(|n| n.name == pod.node)) {
        if let Err(err) = cni(bins, node, "DEL", pod, &BTreeMap::new(), &[]) {
            eprintln!("⚠️  {err:#}");
        }
    } else {
        let _ = lab;
    }
    sys::netns_del(&pod.netns);
    if let Some(file) = &pod.resolv_conf {
        let _ = std::fs::remove_file(file);
    }
}

/// Stops the processes of cluster `cluster`'s pods (their namespaces stay), as `lab stop` does.
/// podman's containers are paused: their processes stop, their namespaces and endpoints stay
/// (no CNI DEL reaches the agents, which are down too).
pub fn stop_processes(lab: &LabState, cluster: &str) -> Result<()> {
    let c = lab.cluster(cluster)?;
    let mut state = Workloads::load(lab, cluster)?;
    for pod in state.pods.values_mut() {
        if pod.runtime == Runtime::Podman {
            let p = NodePodman::of(node_of(c, pod)?);
            p.run(&["pause".to_string(), pod.name.clone()])?;
            pod.pid = None;
            continue;
        }
        if let Some(pid) = pod.pid.take() {
            sys::kill(pid);
        }
    }
    state.save(lab, cluster)
}

/// Starts the processes of cluster `cluster`'s pods again, as `lab start` does.
pub fn start_processes(lab: &LabState, cluster: &str, bins: &Bins) -> Result<()> {
    let c = lab.cluster(cluster)?;
    let mut state = Workloads::load(lab, cluster)?;
    let workloads = state.workloads.clone();
    for pod in state.pods.values_mut() {
        if pod.runtime == Runtime::Podman {
            resume_container(lab, c, pod)?;
            continue;
        }
        let Some(w) = workloads.values().find(|w| {
            format!("{}/{}", w.kind.to_lowercase(), w.name) == pod.owner
                && w.namespace == pod.namespace
        }) else {
            continue;
        };
        if pod.pid.is_none_or(|p| !sys::alive(p)) {
            run_process(lab, c, w, pod, bins)?;
        }
    }
    state.save(lab, cluster)
}

/// Lets a paused container run again (or starts it, if it ended), as `lab start` does.
fn resume_container(lab: &LabState, c: &ClusterState, pod: &mut PodState) -> Result<()> {
    let p = NodePodman::of(node_of(c, pod)?);
    let verb = match p.inspect(&pod.name)?.status.as_str() {
        "running" => None,
        "paused" => Some("unpause"),
        _ => Some("start"),
    };
    if let Some(verb) = verb {
        p.run(&[verb.to_string(), pod.name.clone()])?;
    }
    refresh_container(lab, c, pod, &p)
}

/// Removes every pod of cluster `c` (before `lab down` stops its agents).
pub fn remove_all(lab: &LabState, c: &ClusterState) {
    let Ok(w) = Workloads::load(lab, &c.name) else {
        return;
    };
    let bins = Bins::beside_current_exe().ok();
    for pod in w.pods.values() {
        remove_pod(lab, c, pod, bins.as_ref());
    }
}

/// The Pod object (metadata) the agents read for `pod`.
pub fn pod_object(pod: &PodState) -> PodObject {
    let mut obj = PodObject::new(&pod.namespace, &pod.name, pod.labels.clone());
    obj.metadata.annotations = pod.annotations.clone();
    obj
}

fn put_object(
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<Op> {
    let mut obj = PodObject::new(namespace, name, labels.clone());
    obj.metadata.annotations = annotations.clone();
    Ok(Op::Put {
        key: obj.key(),
        value: serde_json::to_vec(&obj)?,
        lease: None,
    })
}

fn delete_pod_object(pod: &PodState) -> Op {
    Op::Delete(objects::pod_key(&pod.namespace, &pod.name))
}

/// Applies workloads to cluster `cluster`: creates missing pods, removes surplus ones, and
/// when a workload's pod labels or annotations changed since it was last applied, changes
/// those of its existing pods in place (no restart), as `kubectl apply` merges: a pod keeps
/// what was set on it by hand (`plexus label`), loses what only the old template had, and
/// gets every key of the new template. Every pod's object (`plexus/objects/v1/pods/...`) is
/// written to the cluster's etcd before the pod starts (so its agent finds it), rewritten when
/// its labels change, and removed with the pod. Returns one line per change.
pub fn apply(
    lab: &LabState,
    cluster: &str,
    workloads: Vec<Workload>,
    namespaces: Vec<String>,
    bins: &Bins,
) -> Result<Vec<String>> {
    let c = lab.cluster(cluster)?;
    let mut state = Workloads::load(lab, cluster)?;
    let mut lines = Vec::new();
    let mut added_namespace = false;
    for ns in namespaces {
        if !state.namespaces.contains(&ns) {
            state.namespaces.push(ns.clone());
            lines.push(format!("namespace/{ns} created"));
            added_namespace = true;
        }
    }
    if added_namespace {
        state.save(lab, cluster)?;
    }
    for w in workloads {
        let key = format!("{}/{}/{}", w.kind, w.namespace, w.name);
        let owner = format!("{}/{}", w.kind.to_lowercase(), w.name);
        let wanted = pod_names(&w);
        let mut ops = Vec::new();
        // Existing pods follow a changed template in place.
        let mut relabeled = Vec::new();
        if let Some(old) = state.workloads.get(&key)
            && (old.labels != w.labels || old.annotations != w.annotations)
        {
            for (pkey, pod) in state.pods.iter().filter(|(_, p)| {
                p.owner == owner && p.namespace == w.namespace && wanted.contains(&p.name)
            }) {
                let labels = merge(Some(&old.labels), &pod.labels, &w.labels);
                let annotations = merge(Some(&old.annotations), &pod.annotations, &w.annotations);
                if labels != pod.labels || annotations != pod.annotations {
                    ops.push(put_object(
                        &pod.namespace,
                        &pod.name,
                        &labels,
                        &annotations,
                    )?);
                    relabeled.push((pkey.clone(), labels, annotations));
                }
            }
        }
        // Surplus pods of this workload.
        let surplus: Vec<String> = state
            .pods
            .iter()
            .filter(|(_, p)| {
                p.owner == owner && p.namespace == w.namespace && !wanted.contains(&p.name)
            })
            .map(|(k, p)| {
                ops.push(delete_pod_object(p));
                k.clone()
            })
            .collect();
        let missing: Vec<String> = wanted
            .into_iter()
            .filter(|name| !state.pods.contains_key(&format!("{}/{name}", w.namespace)))
            .collect();
        for name in &missing {
            ops.push(put_object(&w.namespace, name, &w.labels, &w.annotations)?);
        }
        // The objects first, in one transaction: if that fails, nothing has changed.
        crate::kv::write(c, ops)
            .with_context(|| format!("{} {}/{}: pod objects", w.kind, w.namespace, w.name))?;
        for (pkey, labels, annotations) in relabeled {
            if let Some(pod) = state.pods.get_mut(&pkey) {
                pod.labels = labels;
                pod.annotations = annotations;
                lines.push(format!("pod/{} relabeled", pod.name));
            }
        }
        for k in surplus {
            if let Some(p) = state.pods.remove(&k) {
                remove_pod(lab, c, &p, Some(bins));
                lines.push(format!("pod/{} deleted", p.name));
            }
        }
        state.save(lab, cluster)?;
        for name in missing {
            let pkey = format!("{}/{name}", w.namespace);
            let runtime = w.runtime.unwrap_or(lab.runtime);
            let node = match &w.spec.node_name {
                Some(n) => n.clone(),
                None => c
                    .nodes
                    .iter()
                    // A podman container is named after its pod: one of a name per node.
                    .filter(|n| {
                        runtime != Runtime::Podman
                            || !state.pods.values().any(|p| {
                                p.node == n.name && p.name == name && p.runtime == runtime
                            })
                    })
                    .min_by_key(|n| state.pods.values().filter(|p| p.node == n.name).count())
                    .map(|n| n.name.clone())
                    .with_context(|| {
                        format!(
                            "pod {}/{name}: no node of cluster {} without a container named {name} (podman names containers after their pods)",
                            w.namespace, c.name
                        )
                    })?,
            };
            let mut pod = PodState {
                namespace: w.namespace.clone(),
                name: name.clone(),
                owner: owner.clone(),
                node,
                runtime,
                netns: match runtime {
                    Runtime::Netns => {
                        format!("plx-{}-p-{}-{}-{name}", lab.name, c.name, w.namespace)
                    }
                    // podman names it when it creates the container.
                    Runtime::Podman => String::new(),
                },
                container_id: format!("{}-{}-{name}", c.name, w.namespace),
                ip: String::new(),
                labels: w.labels.clone(),
                annotations: w.annotations.clone(),
                pid: None,
                resolv_conf: None,
            };
            if let Err(err) = start_pod(lab, c, &w, &mut pod, bins) {
                remove_pod(lab, c, &pod, Some(bins));
                if let Err(e) = crate::kv::write(c, vec![delete_pod_object(&pod)]) {
                    eprintln!("⚠️  {e:#}");
                }
                state.save(lab, cluster)?;
                return Err(err);
            }
            lines.push(format!("pod/{name} created on {} ({})", pod.node, pod.ip));
            state.pods.insert(pkey, pod);
            state.save(lab, cluster)?;
        }
        let existed = state.workloads.insert(key, w.clone()).is_some();
        lines.push(format!(
            "{}/{} {}",
            w.kind.to_lowercase(),
            w.name,
            if existed { "configured" } else { "created" }
        ));
        state.save(lab, cluster)?;
    }
    Ok(lines)
}

/// Deletes workloads (by kind, namespace, name) and their pods, with their objects.
pub fn delete(
    lab: &LabState,
    cluster: &str,
    targets: Vec<(String, String, String)>,
    bins: &Bins,
) -> Result<Vec<String>> {
    let c = lab.cluster(cluster)?;
    let mut state = Workloads::load(lab, cluster)?;
    let mut lines = Vec::new();
    let mut ops = Vec::new();
    for (kind, ns, name) in targets {
        let owner = format!("{}/{name}", kind.to_lowercase());
        let pods: Vec<String> = state
            .pods
            .iter()
            .filter(|(_, p)| p.owner == owner && p.namespace == ns)
            .map(|(k, _)| k.clone())
            .collect();
        for k in pods {
            if let Some(p) = state.pods.remove(&k) {
                remove_pod(lab, c, &p, Some(bins));
                ops.push(delete_pod_object(&p));
            }
        }
        if state
            .workloads
            .remove(&format!("{kind}/{ns}/{name}"))
            .is_some()
        {
            lines.push(format!("{owner} deleted"));
        }
        state.save(lab, cluster)?;
    }
    crate::kv::write(c, ops).context("remove the pods' objects")?;
    Ok(lines)
}

/// Forgets namespaces (after their objects were deleted); their pods keep running.
pub fn forget_namespaces(lab: &LabState, cluster: &str, names: &[String]) -> Result<()> {
    let mut state = Workloads::load(lab, cluster)?;
    state.namespaces.retain(|n| !names.contains(n));
    state.save(lab, cluster)
}

/// Sets pod `namespace/name`'s labels and annotations in the lab's records (its object in etcd
/// is the caller's: `plexus label` writes it with compare-and-swap first).
pub fn set_pod_metadata(
    lab: &LabState,
    cluster: &str,
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Result<()> {
    let mut state = Workloads::load(lab, cluster)?;
    let pod = state
        .pods
        .get_mut(&format!("{namespace}/{name}"))
        .with_context(|| format!("no pod {name} in namespace {namespace} of cluster {cluster}"))?;
    pod.labels = labels;
    pod.annotations = annotations;
    state.save(lab, cluster)
}

/// Finds a pod by name, `deployment/NAME` or `statefulset/NAME` (its first pod).
pub fn find_pod(lab: &LabState, cluster: &str, namespace: &str, target: &str) -> Result<PodState> {
    let state = Workloads::load(lab, cluster)?;
    let found = match target.split_once('/') {
        Some((kind, name)) => {
            let owner = format!("{}/{name}", kind.to_lowercase());
            state
                .pods
                .values()
                .filter(|p| p.owner == owner && p.namespace == namespace)
                .min_by_key(|p| p.name.clone())
                .cloned()
        }
        None => state.pods.get(&format!("{namespace}/{target}")).cloned(),
    };
    found.with_context(|| format!("no pod {target} in namespace {namespace} of cluster {cluster}"))
}

/// Runs `command` in pod `pod`'s network namespace, with its resolv.conf, with the caller's
/// stdio; its exit code.
pub fn exec(pod: &PodState, command: &[String]) -> Result<i32> {
    if command.is_empty() {
        bail!("exec: no command given (plexus exec POD -- COMMAND...)");
    }
    if pod.netns.is_empty() {
        bail!(
            "exec: pod {}/{} has no network namespace: its container does not run",
            pod.namespace,
            pod.name
        );
    }
    let status = sys::pod_command(&pod.netns, pod.resolv_conf.as_deref())
        .args(command)
        .status()
        .with_context(|| format!("run {} in pod {}", command[0], pod.name))?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Routing;

    fn pod(ns: &str, name: &str, owner: &str) -> PodState {
        PodState {
            namespace: ns.into(),
            name: name.into(),
            owner: owner.into(),
            node: "c1-node1".into(),
            runtime: Runtime::Netns,
            netns: format!("plx-t-p-c1-{ns}-{name}"),
            container_id: format!("c1-{ns}-{name}"),
            ip: "10.10.0.2".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            pid: None,
            resolv_conf: None,
        }
    }

    #[test]
    fn pods_are_found_by_name_deployment_or_statefulset() {
        let dir = tempfile::tempdir().unwrap();
        let lab = LabState {
            name: "t".into(),
            dir: dir.path().to_path_buf(),
            underlay: "plx-t-u".into(),
            routing: Routing::Tunnel,
            runtime: Runtime::Netns,
            encryption: Default::default(),
            wireguard_device: Default::default(),
            outside: None,
            clusters: vec![],
        };
        std::fs::create_dir_all(dir.path().join("c1")).unwrap();
        let mut w = Workloads::default();
        for p in [
            pod("default", "web-1a2b3", "deployment/web"),
            pod("default", "db-1", "statefulset/db"),
            pod("default", "db-0", "statefulset/db"),
            pod("other", "x", "pod/x"),
        ] {
            w.pods.insert(format!("{}/{}", p.namespace, p.name), p);
        }
        w.save(&lab, "c1").unwrap();
        let find = |ns: &str, t: &str| find_pod(&lab, "c1", ns, t).map(|p| p.name);
        assert_eq!(find("default", "deployment/web").unwrap(), "web-1a2b3");
        assert_eq!(
            find("default", "statefulset/db").unwrap(),
            "db-0",
            "the first replica"
        );
        assert_eq!(find("other", "x").unwrap(), "x");
        let err = find("default", "x").unwrap_err().to_string();
        assert_eq!(err, "no pod x in namespace default of cluster c1");
    }

    #[test]
    fn workloads_parse_from_kubernetes_objects_with_clear_errors() {
        let doc: serde_json::Value = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "db"}},
                     "spec": {"containers": [{"name": "db", "image": "redis", "ports": [{"containerPort": 6379}]}]}}}
        });
        let w = workload_from(&doc, "default").unwrap().unwrap();
        assert_eq!(pod_names(&w), vec!["db-0", "db-1"]);
        assert_eq!(w.spec.containers[0].ports[0].protocol, "TCP");
        let bad = serde_json::json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}});
        let err = format!("{:#}", workload_from(&bad, "default").unwrap_err());
        assert!(err.contains("Pod default/p: spec.containers"), "{err}");
        let svc = serde_json::json!({"kind": "Service", "metadata": {"name": "s"}});
        assert!(workload_from(&svc, "default").unwrap().is_none());
    }
}
