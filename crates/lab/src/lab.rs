//! Bringing a lab up and down, and failing a cluster on purpose.
//!
//! Layout (all names start with `plx-<lab>-`, so two labs never collide):
//! - the underlay namespace `plx-<lab>-u` holds a bridge `br0` (172.31.255.254/16); nothing of
//!   the lab links to the host's own network;
//! - per cluster `i` (1-based): a control-plane namespace `plx-<lab>-<cluster>` at 172.31.i.1
//!   running `plexus-apiserver` (and, as its child, etcd: client port 2379, status on 9963);
//!   with `etcd: {members: 3}` the cluster's etcd is instead three members the lab runs at
//!   172.31.i.2-4 ([`crate::etcd`]), whose endpoints the apiserver is given;
//! - per node `j`: a namespace `plx-<lab>-<cluster>-n<j>` at 172.31.i.(10+j) running
//!   `plexus-agent` (eBPF datapath, bpffs mounted under its state directory), its API on its
//!   socket and on TCP port [`AGENT_API_PORT`] with mutual TLS (a server certificate of the
//!   cluster's CA for the node's name and address, issued at each start), and its metrics for
//!   Prometheus on port [`AGENT_PROMETHEUS_PORT`] (plain HTTP, `/metrics`);
//! - every daemon runs with only `--config FILE`, as on a real host:
//!   `<dir>/<cluster>/apiserver.yaml` and `<node state dir>/agent.yaml` (which `lab
//!   agent-options` edits);
//! - per cluster, the cluster DNS: the `kube-dns` Service and pod in `kube-system` on the first
//!   node ([`crate::dns`]);
//! - with `runtime: podman`, per node a podman of its own under `<node>/podman`, with the lab's
//!   image imported ([`crate::podman`]);
//! - with `outside:` in the lab file, the namespace `plx-<lab>-outside` at 172.31.254.1, no
//!   cluster's, with an authoritative DNS server and HTTP servers ([`crate::outside`]);
//! - with `encryption: wireguard`, per node a WireGuard device `plexus_wg0` (the process
//!   `plexus-wireguard`, socket `<node>/wireguard.sock`), started before the agent and outliving
//!   agent restarts ([`crate::wireguard`]).
//!
//! Each namespace joins the underlay through a veth created inside the underlay namespace
//! (`u<i>c` / `u<i>n<j>`), its peer moved into the namespace as `eth0`. One CA (`<dir>/ca`)
//! serves every cluster. The state (pids, addresses) lives in `<dir>/lab.json`; `down` removes
//! every process, mount, namespace and file the lab created.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use plexus_agent_api::{Client, Endpoint, block_on};
use plexus_config::{AgentConfig, ApiServerConfig};
use serde::{Deserialize, Serialize};

use crate::outside::{self, OutsideState};
use crate::podman::{self, NodePodman};
use crate::spec::{Encryption, LabSpec, Routing, Runtime};
use crate::sys;
use crate::wireguard;

/// The TCP port of each agent's API (mutual TLS), on the node's underlay address.
pub const AGENT_API_PORT: u16 = 9965;

/// The TCP port of each apiserver's API (mutual TLS: the flow relay, the web view), on the
/// control plane's address (Hubble Relay's port).
pub const APISERVER_API_PORT: u16 = 4245;

/// The TCP port of each agent's plain-HTTP `/metrics` for Prometheus (`prometheus-listen`), on
/// the node's underlay address; Cilium's agent serves its metrics on the same port.
pub const AGENT_PROMETHEUS_PORT: u16 = 9962;

/// One node of a running lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeState {
    /// Node name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// The underlay-side veth.
    pub uplink: String,
    /// The agent's pid.
    pub agent_pid: Option<u32>,
    /// The WireGuard device's pid (`encryption: wireguard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_pid: Option<u32>,
    /// The agent's socket.
    pub socket: PathBuf,
    /// The agent's state directory.
    pub state_dir: PathBuf,
}

impl NodeState {
    /// The agent's API on TCP, `ip:port`, as the lab's contexts name it.
    pub fn api_address(&self) -> String {
        format!("{}:{AGENT_API_PORT}", self.ip)
    }

    /// The agent's Prometheus `/metrics`, `ip:port`.
    pub fn metrics_address(&self) -> String {
        format!("{}:{AGENT_PROMETHEUS_PORT}", self.ip)
    }
}

impl ClusterState {
    /// The apiserver's API on TCP, `ip:port`, as the lab's contexts name it (`relay`).
    pub fn api_address(&self) -> String {
        format!("{}:{APISERVER_API_PORT}", self.ip)
    }
}

/// One cluster of a running lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterState {
    /// Cluster name.
    pub name: String,
    /// Cluster id.
    pub id: u32,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// Service CIDR.
    pub service_cidr: String,
    /// Control-plane namespace.
    pub netns: String,
    /// Control-plane address (etcd 2379, apiserver 9963).
    pub ip: Ipv4Addr,
    /// The underlay-side veth of the control plane.
    pub uplink: String,
    /// The apiserver's pid.
    pub apiserver_pid: Option<u32>,
    /// The apiserver's state directory (pki/, etcd/).
    pub state_dir: PathBuf,
    /// Where its agents read remote-cluster configurations.
    pub clustermesh_dir: PathBuf,
    /// Its nodes.
    pub nodes: Vec<NodeState>,
    /// Taken down by `lab stop`.
    pub stopped: bool,
    /// The members of its etcd cluster (`etcd.members` above 1); none when the apiserver runs
    /// the cluster's etcd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_members: Vec<crate::etcd::EtcdMember>,
}

impl ClusterState {
    /// The client URLs of the cluster's etcd: every member's, or the apiserver's own etcd.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        if self.etcd_members.is_empty() {
            vec![format!("https://{}:2379", self.ip)]
        } else {
            self.etcd_members
                .iter()
                .map(crate::etcd::EtcdMember::endpoint)
                .collect()
        }
    }
}

impl ClusterState {
    /// Where its apiserver's KVStoreMesh reads remote-cluster configurations (beside
    /// `clustermesh_dir`). The apiserver always runs KVStoreMesh on it: with the directory
    /// empty (`clustermesh enable --enable-kvstoremesh=false`) it mirrors nothing.
    pub fn kvstoremesh_dir(&self) -> PathBuf {
        self.clustermesh_dir.with_file_name("kvstoremesh")
    }
}

/// A running lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LabState {
    /// Lab name (namespace prefix).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The underlay namespace.
    pub underlay: String,
    /// Routing mode.
    pub routing: Routing,
    /// What runs the pods.
    #[serde(default, skip_serializing_if = "Runtime::is_default")]
    pub runtime: Runtime,
    /// Encryption of pod traffic between nodes.
    #[serde(default, skip_serializing_if = "Encryption::is_none")]
    pub encryption: Encryption,
    /// Which program is each node's WireGuard device (with encryption).
    #[serde(default, skip_serializing_if = "wireguard::Device::is_default")]
    pub wireguard_device: wireguard::Device,
    /// The outside network (`outside:` in the lab file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside: Option<OutsideState>,
    /// Clusters.
    pub clusters: Vec<ClusterState>,
}

/// The binaries the lab runs.
#[derive(Clone, Debug)]
pub struct Bins {
    /// `plexus-apiserver`.
    pub apiserver: PathBuf,
    /// `plexus-agent`.
    pub agent: PathBuf,
    /// `plexus-cni`.
    pub cni: PathBuf,
    /// `plexus` (the built-in pod server).
    pub plexus: PathBuf,
    /// `plexus-dns` (the cluster DNS pod).
    pub dns: PathBuf,
    /// `plexus-wireguard` (each node's WireGuard device, with `encryption: wireguard`; looked
    /// for only when a lab needs it).
    pub wireguard: PathBuf,
}

impl Bins {
    /// The binaries beside the running executable.
    pub fn beside_current_exe() -> Result<Self> {
        let exe = std::env::current_exe().context("find the running executable")?;
        let dir = exe.parent().context("executable directory")?.to_path_buf();
        let find = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                bail!(
                    "{} not found beside {}: build the workspace's binaries",
                    name,
                    exe.display()
                )
            }
        };
        Ok(Self {
            apiserver: find("plexus-apiserver")?,
            agent: find("plexus-agent")?,
            cni: find("plexus-cni")?,
            dns: find("plexus-dns")?,
            wireguard: dir.join("plexus-wireguard"),
            plexus: exe,
        })
    }
}

/// Progress lines for people.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

const STATE_FILE: &str = "lab.json";

impl LabState {
    /// Reads the state of the lab in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "no lab in {} (run plexus lab up -f LAB.yaml)",
                dir.display()
            )
        })?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: corrupt lab state", path.display()))
    }

    /// Writes the state.
    pub fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(".lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Result<&ClusterState> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .with_context(|| {
                let known: Vec<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "no cluster {name:?} in the lab (clusters: {})",
                    known.join(", ")
                )
            })
    }

    fn cluster_mut(&mut self, name: &str) -> Result<&mut ClusterState> {
        let known: Vec<String> = self.clusters.iter().map(|c| c.name.clone()).collect();
        self.clusters
            .iter_mut()
            .find(|c| c.name == name)
            .with_context(|| {
                format!(
                    "no cluster {name:?} in the lab (clusters: {})",
                    known.join(", ")
                )
            })
    }
}

/// The lab [`up`] would build from `spec`, with nothing started (for tests of code that reads a
/// lab's state).
#[cfg(test)]
pub(crate) fn plan_for_tests(name: &str, dir: &Path, spec: &LabSpec) -> LabState {
    plan(name, dir, spec)
}

fn plan(name: &str, dir: &Path, spec: &LabSpec) -> LabState {
    let underlay = format!("plx-{name}-u");
    let clusters = spec
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let i = i as u8 + 1;
            let cdir = dir.join(&c.name);
            ClusterState {
                name: c.name.clone(),
                id: c.id,
                pod_cidr: c.pod_cidr.clone(),
                service_cidr: c.service_cidr.clone(),
                netns: format!("plx-{name}-{}", c.name),
                ip: Ipv4Addr::new(172, 31, i, 1),
                uplink: format!("u{i}c"),
                apiserver_pid: None,
                state_dir: cdir.join("apiserver"),
                clustermesh_dir: cdir.join("clustermesh"),
                nodes: (1..=c.nodes)
                    .map(|j| {
                        let node = format!("{}-node{j}", c.name);
                        NodeState {
                            netns: format!("plx-{name}-{}-n{j}", c.name),
                            ip: Ipv4Addr::new(172, 31, i, 10 + j as u8),
                            uplink: format!("u{i}n{j}"),
                            agent_pid: None,
                            wireguard_pid: None,
                            socket: cdir.join(&node).join("agent.sock"),
                            state_dir: cdir.join(&node),
                            name: node,
                        }
                    })
                    .collect(),
                stopped: false,
                etcd_members: crate::etcd::plan(&c.name, i, c.etcd.members),
            }
        })
        .collect();
    LabState {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        underlay,
        routing: spec.routing,
        runtime: spec.runtime,
        encryption: spec.encryption,
        wireguard_device: spec.wireguard_device,
        outside: spec
            .outside
            .as_ref()
            .map(|o| OutsideState::plan(name, dir, o)),
        clusters,
    }
}

fn join_underlay(underlay: &str, ns: &str, uplink: &str, ip: Ipv4Addr) -> Result<()> {
    sys::netns_add(ns)?;
    sys::ip(&[
        "-n", underlay, "link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])?;
    sys::ip(&["-n", underlay, "link", "set", uplink, "master", "br0", "up"])?;
    sys::ip(&["-n", ns, "addr", "add", &format!("{ip}/16"), "dev", "eth0"])?;
    sys::ip(&["-n", ns, "link", "set", "eth0", "up"])
}

/// The apiserver's configuration file in the lab.
fn apiserver_config_file(lab: &LabState, c: &ClusterState) -> PathBuf {
    lab.dir.join(&c.name).join("apiserver.yaml")
}

fn apiserver_config(c: &ClusterState) -> Result<ApiServerConfig> {
    let pki = c.state_dir.join("pki");
    let external = !c.etcd_members.is_empty();
    Ok(ApiServerConfig {
        cluster_name: Some(c.name.clone()),
        cluster_id: Some(c.id),
        state_dir: Some(c.state_dir.clone()),
        // Its own etcd, or the members the lab runs (as an external etcd cluster).
        etcd_listen: (!external).then(|| (c.ip, 2379).into()),
        etcd_peer_listen: (!external).then(|| (Ipv4Addr::LOCALHOST, 2380).into()),
        etcd_advertise: (!external).then(|| vec![c.ip.into()]),
        etcd_endpoints: external.then(|| c.etcd_endpoints()),
        etcd_ca: external.then(|| pki.join("ca.crt")),
        etcd_cert: external.then(|| pki.join("admin.crt")),
        etcd_key: external.then(|| pki.join("admin.key")),
        http_listen: Some((c.ip, 9963).into()),
        api_listen: Some((c.ip, APISERVER_API_PORT).into()),
        // The relay asks the connected clusters' relays at their control plane's address, read
        // from KVStoreMesh's directory first (with KVStoreMesh, the agents' files name the
        // local etcd).
        clustermesh_config: Some(c.clustermesh_dir.clone()),
        kvstoremesh_config: Some(c.kvstoremesh_dir()),
        service_cidr: Some(
            c.service_cidr
                .parse()
                .with_context(|| format!("service CIDR of {}", c.name))?,
        ),
        ..Default::default()
    })
}

/// Writes a configuration file whole (a crash never leaves half a file behind).
fn write_config(path: &Path, yaml: &str) -> Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

fn start_apiserver(lab: &LabState, c: &ClusterState, bins: &Bins) -> Result<u32> {
    std::fs::create_dir_all(c.kvstoremesh_dir())
        .with_context(|| format!("create {}", c.kvstoremesh_dir().display()))?;
    let file = apiserver_config_file(lab, c);
    write_config(&file, &apiserver_config(c)?.to_yaml()?)?;
    let args = vec![format!("--config={}", file.display())];
    let pid = sys::spawn_in(
        &c.netns,
        &bins.apiserver,
        &args,
        &lab.dir.join(&c.name).join("apiserver.log"),
    )?;
    let apiserver =
        Client::new(Endpoint::Tcp(format!("{}:9963", c.ip))).with_timeout(Duration::from_secs(1));
    sys::wait_until(
        &format!(
            "apiserver of {} ready (log: {})",
            c.name,
            lab.dir.join(&c.name).join("apiserver.log").display()
        ),
        Duration::from_secs(60),
        || {
            let apiserver = apiserver.clone();
            sys::in_netns(&c.netns, move || {
                Ok(block_on(apiserver.get_text("/readyz"))?)
            })
            .is_ok_and(|(code, _)| code == 200)
        },
    )?;
    Ok(pid)
}

/// The agent's configuration file of node `n`.
fn agent_config_file(n: &NodeState) -> PathBuf {
    n.state_dir.join("agent.yaml")
}

/// What the lab sets in the agent's file of node `n` (`lab agent-options` sets the other keys).
fn agent_config(lab: &LabState, c: &ClusterState, n: &NodeState) -> Result<AgentConfig> {
    let pki = c.state_dir.join("pki");
    Ok(AgentConfig {
        cluster_name: Some(c.name.clone()),
        cluster_id: Some(c.id),
        node_name: Some(n.name.clone()),
        node_ip: Some(n.ip),
        pod_cidr: Some(
            c.pod_cidr
                .parse()
                .with_context(|| format!("pod CIDR of {}", c.name))?,
        ),
        routing: Some(match lab.routing {
            Routing::Tunnel => plexus_config::agent::Routing::Tunnel,
            Routing::Native => plexus_config::agent::Routing::Native,
        }),
        state_dir: Some(n.state_dir.clone()),
        etcd_endpoints: Some(c.etcd_endpoints()),
        etcd_ca: Some(pki.join("ca.crt")),
        etcd_cert: Some(pki.join("admin.crt")),
        etcd_key: Some(pki.join("admin.key")),
        clustermesh_config: Some(c.clustermesh_dir.clone()),
        api_socket: Some(n.socket.clone()),
        api_listen: Some((n.ip, AGENT_API_PORT).into()),
        prometheus_listen: Some((n.ip, AGENT_PROMETHEUS_PORT).into()),
        // Issued by `start_agent` at each start.
        api_tls_cert: Some(n.state_dir.join("api.crt")),
        api_tls_key: Some(n.state_dir.join("api.key")),
        api_tls_ca: Some(pki.join("ca.crt")),
        podman_state: (lab.runtime == Runtime::Podman).then(|| NodePodman::of(n).state_db()),
        enable_wireguard: (lab.encryption == Encryption::Wireguard).then_some(true),
        wireguard_socket: (lab.encryption == Encryption::Wireguard)
            .then(|| wireguard::socket(n, lab.wireguard_device)),
        ..Default::default()
    })
}

fn start_agent(lab: &LabState, c: &ClusterState, n: &NodeState, bins: &Bins) -> Result<u32> {
    std::fs::create_dir_all(&n.state_dir)?;
    std::fs::create_dir_all(&c.clustermesh_dir)?;
    let pki = c.state_dir.join("pki");
    // The API on TCP presents a certificate of the cluster's CA for the node's name and address.
    // With the lifetime the cluster's certificates were issued with.
    let cluster_pki = plexus_pki::cluster::ClusterPki::new(&pki, &c.name);
    cluster_pki
        .ca()?
        .issue_server_for(
            &format!("agent-{}", n.name),
            &[&n.name],
            &[n.ip.into()],
            cluster_pki.leaf_lifetime(),
        )?
        .write_to(&n.state_dir, "api")?;
    // The file is written once, at the node's first start: later starts (a restart, `lab
    // start`) read it as it is, with what `lab agent-options` changed in it.
    let file = agent_config_file(n);
    if !file.exists() {
        write_config(&file, &agent_config(lab, c, n)?.to_yaml()?)?;
    }
    let args = vec![format!("--config={}", file.display())];
    let log = n.state_dir.join("agent.log");
    let pid = sys::spawn_in(&n.netns, &bins.agent, &args, &log)?;
    let agent = Client::new(Endpoint::Unix(n.socket.clone())).with_timeout(Duration::from_secs(1));
    sys::wait_until(
        &format!("agent of {} ready (log: {})", n.name, log.display()),
        Duration::from_secs(60),
        || block_on(agent.healthz()).is_ok(),
    )?;
    route_pods_from_control_plane(lab, c, n)?;
    Ok(pid)
}

/// Routes node `n`'s pod CIDR (what its agent claimed) from the control plane's namespace to
/// the node, as the underlay router of a real cluster would: pods, the `kube-dns` pod first,
/// reach etcd and the apiserver at the control-plane address, and the answers find their way
/// back. (A route through a link that goes down is dropped, so `lab start` sets it again.) The
/// outside network, if any, gets the same route.
fn route_pods_from_control_plane(lab: &LabState, c: &ClusterState, n: &NodeState) -> Result<()> {
    let agent = Client::new(Endpoint::Unix(n.socket.clone())).with_timeout(Duration::from_secs(2));
    let status =
        block_on(agent.status()).with_context(|| format!("status of the agent of {}", n.name))?;
    sys::ip(&[
        "-n",
        &c.netns,
        "route",
        "replace",
        &status.pod_cidr,
        "via",
        &n.ip.to_string(),
    ])?;
    outside::route_pods(lab, &status.pod_cidr, n.ip)
}

/// Gives every node its own podman with the lab's image ([`crate::podman`]).
fn setup_podman(lab: &LabState, bins: &Bins, progress: Progress<'_>) -> Result<()> {
    progress("⌛ podman: the lab's image (busybox and plexus)");
    let image_dir = lab.dir.join("podman-image");
    std::fs::create_dir_all(&image_dir)
        .with_context(|| format!("create {}", image_dir.display()))?;
    let tar = podman::build_image(&image_dir, &bins.plexus)?;
    let cni_dir = bins.cni.parent().context("the directory of plexus-cni")?;
    for c in &lab.clusters {
        for n in &c.nodes {
            progress(&format!("⌛ cluster {}: podman of {}", c.name, n.name));
            NodePodman::of(n).setup(&bins.plexus, &tar, cni_dir)?;
        }
    }
    let _ = std::fs::remove_dir_all(&image_dir);
    Ok(())
}

/// Brings a lab up from `spec` in `dir` (which must not hold a lab).
pub fn up(
    name: &str,
    dir: &Path,
    spec: &LabSpec,
    bins: &Bins,
    progress: Progress<'_>,
) -> Result<LabState> {
    if dir.join(STATE_FILE).exists() {
        bail!(
            "a lab already runs in {} (plexus lab down first)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut lab = plan(name, dir, spec);
    lab.save()?;
    progress(&format!("⌛ underlay network {}", lab.underlay));
    sys::netns_add(&lab.underlay)?;
    sys::ip(&["-n", &lab.underlay, "link", "add", "br0", "type", "bridge"])?;
    sys::ip(&[
        "-n",
        &lab.underlay,
        "addr",
        "add",
        "172.31.255.254/16",
        "dev",
        "br0",
    ])?;
    sys::ip(&["-n", &lab.underlay, "link", "set", "br0", "up"])?;

    let validity = spec.validity();
    let ca = plexus_pki::Ca::generate_with("plexus-lab-ca", validity)?;
    let ca_dir = dir.join("ca");
    std::fs::create_dir_all(&ca_dir)?;
    ca.pem().write_to(&ca_dir, "ca")?;
    for c in &lab.clusters {
        progress(&format!(
            "⌛ cluster {} (id {}): namespaces and certificates",
            c.name, c.id
        ));
        join_underlay(&lab.underlay, &c.netns, &c.uplink, c.ip)?;
        crate::etcd::add_addresses(c)?;
        for n in &c.nodes {
            join_underlay(&lab.underlay, &n.netns, &n.uplink, n.ip)?;
        }
        let pki = plexus_pki::cluster::ClusterPki::new(c.state_dir.join("pki"), &c.name)
            .with_leaf_validity(validity.leaf);
        pki.install_ca(&ca)?;
        let mut ips: Vec<std::net::IpAddr> = vec![c.ip.into()];
        ips.extend(c.etcd_members.iter().map(|m| std::net::IpAddr::from(m.ip)));
        pki.ensure(&[], &ips)?;
    }
    lab.save()?;
    if let Some(o) = &lab.outside {
        progress(&format!(
            "⌛ outside: DNS for {} at {} and {} HTTP servers",
            o.zone,
            o.dns_ip,
            o.servers.len()
        ));
        outside::up(&mut lab, bins)?;
    }
    if lab.runtime == Runtime::Podman {
        setup_podman(&lab, bins, progress)?;
    }
    let bins = bins.clone();
    for i in 0..lab.clusters.len() {
        let c = lab.clusters[i].clone();
        progress(&format!("⌛ cluster {}: etcd and apiserver", c.name));
        crate::etcd::start_all(&mut lab, i)?;
        lab.clusters[i].apiserver_pid = Some(start_apiserver(&lab, &c, &bins)?);
        lab.save()?;
        for j in 0..c.nodes.len() {
            let n = c.nodes[j].clone();
            if lab.encryption == Encryption::Wireguard {
                progress(&format!(
                    "⌛ cluster {}: WireGuard device of {}",
                    c.name, n.name
                ));
                lab.clusters[i].nodes[j].wireguard_pid =
                    Some(wireguard::start(&n, lab.wireguard_device, &bins)?);
                lab.save()?;
            }
            progress(&format!("⌛ cluster {}: agent of {}", c.name, n.name));
            lab.clusters[i].nodes[j].agent_pid = Some(start_agent(&lab, &c, &n, &bins)?);
            lab.save()?;
        }
        progress(&format!(
            "⌛ cluster {}: cluster DNS (kube-dns, {})",
            c.name,
            crate::dns::dns_ip(&c.service_cidr)?
        ));
        crate::dns::deploy(&lab, &lab.clusters[i].clone(), &bins)?;
        progress(&format!(
            "✅ cluster {} is up ({} nodes)",
            c.name,
            c.nodes.len()
        ));
    }
    Ok(lab)
}

/// Removes everything of the lab in `dir`: processes, mounts, namespaces, files.
pub fn down(dir: &Path, progress: Progress<'_>) -> Result<()> {
    let lab = match LabState::load(dir) {
        Ok(l) => l,
        Err(_) if !dir.exists() => return Ok(()),
        Err(e) => return Err(e),
    };
    for c in &lab.clusters {
        progress(&format!("⌛ cluster {}: stopping", c.name));
        crate::workload::remove_all(&lab, c);
        for n in &c.nodes {
            if let Some(pid) = n.agent_pid {
                sys::stop(pid, Duration::from_secs(5));
            }
            // After the agent, which drives it; also when the lab file had no encryption (a
            // half-up lab may have a device without its pid recorded).
            wireguard::stop(n, n.wireguard_pid);
            sys::unmount(&n.state_dir.join("bpffs"));
            sys::unmount(&n.state_dir.join("cgroupv2"));
            // Whatever the lab file said: a lab that failed half-way up may have some.
            podman::teardown(&NodePodman::of(n), &mut |warning| {
                progress(&format!("⚠️  {warning}"))
            });
        }
        if let Some(pid) = c.apiserver_pid {
            sys::stop(pid, Duration::from_secs(10));
        }
        crate::etcd::stop_all(c);
    }
    outside::down(&lab);
    for ns in sys::netns_with_prefix(&format!("plx-{}-", lab.name)) {
        sys::netns_del(&ns);
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    progress("✅ lab removed");
    Ok(())
}

/// Takes cluster `name` down as a failure would: its processes (apiserver and etcd, agents,
/// pods' processes) are killed and its nodes drop off the underlay. Pods' namespaces stay, so
/// [`start`] brings the same pods back.
pub fn stop(dir: &Path, name: &str) -> Result<()> {
    let mut lab = LabState::load(dir)?;
    crate::workload::stop_processes(&lab, name)?;
    let underlay = lab.underlay.clone();
    let c = lab.cluster_mut(name)?;
    for n in &mut c.nodes {
        if let Some(pid) = n.agent_pid.take() {
            sys::kill(pid);
        }
        // The node fails whole: its WireGuard device too (its link stays, as after a crash).
        if let Some(pid) = n.wireguard_pid.take() {
            sys::kill(pid);
        }
        sys::ip(&["-n", &underlay, "link", "set", &n.uplink, "down"])?;
    }
    if let Some(pid) = c.apiserver_pid.take() {
        sys::kill(pid);
    }
    for m in &mut c.etcd_members {
        if let Some(pid) = m.pid.take() {
            sys::kill(pid);
        }
    }
    sys::ip(&["-n", &underlay, "link", "set", &c.uplink, "down"])?;
    c.stopped = true;
    lab.save()
}

/// Brings cluster `name` back after [`stop`].
pub fn start(dir: &Path, name: &str, bins: &Bins, progress: Progress<'_>) -> Result<()> {
    let mut lab = LabState::load(dir)?;
    let c = lab.cluster(name)?.clone();
    sys::ip(&["-n", &lab.underlay, "link", "set", &c.uplink, "up"])?;
    for n in &c.nodes {
        sys::ip(&["-n", &lab.underlay, "link", "set", &n.uplink, "up"])?;
    }
    progress(&format!("⌛ cluster {}: etcd and apiserver", c.name));
    let i = lab
        .clusters
        .iter()
        .position(|x| x.name == name)
        .context("cluster")?;
    crate::etcd::start_all(&mut lab, i)?;
    let pid = start_apiserver(&lab, &c, bins)?;
    lab.clusters[i].apiserver_pid = Some(pid);
    for (j, n) in c.nodes.iter().enumerate() {
        if lab.encryption == Encryption::Wireguard {
            progress(&format!(
                "⌛ cluster {}: WireGuard device of {}",
                c.name, n.name
            ));
            let pid = wireguard::start(n, lab.wireguard_device, bins)?;
            lab.clusters[i].nodes[j].wireguard_pid = Some(pid);
            lab.save()?;
        }
        progress(&format!("⌛ cluster {}: agent of {}", c.name, n.name));
        let pid = start_agent(&lab, &c, n, bins)?;
        lab.clusters[i].nodes[j].agent_pid = Some(pid);
    }
    lab.clusters[i].stopped = false;
    lab.save()?;
    crate::workload::start_processes(&lab, name, bins)?;
    progress(&format!("✅ cluster {name} is up again"));
    Ok(())
}

/// Restarts the agent of `node` (SIGTERM, then a new process that takes the pinned maps and
/// programs over): pods' traffic keeps flowing meanwhile.
pub fn restart_agent(dir: &Path, cluster: &str, node: &str, bins: &Bins) -> Result<()> {
    let mut lab = LabState::load(dir)?;
    let c = lab.cluster(cluster)?.clone();
    let j = c
        .nodes
        .iter()
        .position(|n| n.name == node)
        .with_context(|| format!("no node {node} in cluster {cluster}"))?;
    if let Some(pid) = c.nodes[j].agent_pid {
        sys::stop(pid, Duration::from_secs(5));
    }
    let pid = start_agent(&lab, &c, &c.nodes[j], bins)?;
    let i = lab
        .clusters
        .iter()
        .position(|x| x.name == cluster)
        .context("cluster")?;
    lab.clusters[i].nodes[j].agent_pid = Some(pid);
    lab.save()
}

/// Kills the agent of `node` outright (SIGKILL, as a crash would) and starts a new one, which
/// takes the pinned maps and programs over; returns once it answers. Pods' traffic keeps
/// flowing meanwhile.
pub fn crash_agent(dir: &Path, cluster: &str, node: &str, bins: &Bins) -> Result<()> {
    crash_agent_and(dir, cluster, node, bins, || Ok(()))
}

/// [`crash_agent`], running `meanwhile` while no agent runs on the node (to change what the
/// new agent must catch up with).
pub fn crash_agent_and(
    dir: &Path,
    cluster: &str,
    node: &str,
    bins: &Bins,
    meanwhile: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let mut lab = LabState::load(dir)?;
    let c = lab.cluster(cluster)?.clone();
    let j = c
        .nodes
        .iter()
        .position(|n| n.name == node)
        .with_context(|| format!("no node {node} in cluster {cluster}"))?;
    if let Some(pid) = c.nodes[j].agent_pid {
        sys::kill(pid);
    }
    meanwhile()?;
    let pid = start_agent(&lab, &c, &c.nodes[j], bins)?;
    let i = lab
        .clusters
        .iter()
        .position(|x| x.name == cluster)
        .context("cluster")?;
    lab.clusters[i].nodes[j].agent_pid = Some(pid);
    lab.save()
}

/// Kills the apiserver of `cluster` outright (its etcd dies with it: the parent-death signal)
/// and starts it again; returns once it is ready (etcd serving).
pub fn crash_apiserver(dir: &Path, cluster: &str, bins: &Bins) -> Result<()> {
    let mut lab = LabState::load(dir)?;
    let c = lab.cluster(cluster)?.clone();
    if let Some(pid) = c.apiserver_pid {
        let etcd = etcd_pid(pid);
        sys::kill(pid);
        // The new etcd binds the same ports: wait until the old one is gone.
        if let Some(etcd) = etcd {
            sys::wait_until(
                &format!("etcd of {cluster} (pid {etcd}) ending with its apiserver"),
                Duration::from_secs(10),
                || !sys::alive(etcd),
            )?;
        }
    }
    let pid = start_apiserver(&lab, &c, bins)?;
    let i = lab
        .clusters
        .iter()
        .position(|x| x.name == cluster)
        .context("cluster")?;
    lab.clusters[i].apiserver_pid = Some(pid);
    lab.save()
}

/// Kills the etcd of `cluster` outright; its apiserver, which supervises it, starts it again.
/// Returns the killed pid.
pub fn crash_etcd(dir: &Path, cluster: &str) -> Result<u32> {
    let lab = LabState::load(dir)?;
    let c = lab.cluster(cluster)?;
    let apiserver = c
        .apiserver_pid
        .with_context(|| format!("the apiserver of {cluster} does not run"))?;
    let pid = etcd_pid(apiserver).with_context(|| {
        format!("no etcd process under the apiserver of {cluster} (pid {apiserver})")
    })?;
    sys::kill(pid);
    Ok(pid)
}

/// The etcd child of the apiserver `apiserver`, if one runs.
pub fn etcd_pid(apiserver: u32) -> Option<u32> {
    sys::children(apiserver)
        .into_iter()
        .find(|&pid| sys::comm(pid).as_deref() == Some("etcd"))
}

/// Sets agent options of `cluster` (`KEY=VALUE`, a key of the agent's configuration file,
/// which is its flag's name; an empty VALUE removes KEY) in the configuration file of each of
/// its agents and restarts them, as a configuration change rolls a DaemonSet. VALUE is read
/// as YAML (`false`, `1400`, `30s`, `[a, b]` or `a,b`). The keys the lab sets itself (cluster,
/// node, etcd, API) are refused, and so is an unknown key or a bad value, before any file is
/// written. Returns the options now in force besides the lab's own (`KEY=VALUE`).
pub fn set_agent_options(
    dir: &Path,
    cluster: &str,
    changes: &[String],
    bins: &Bins,
) -> Result<Vec<String>> {
    let lab = LabState::load(dir)?;
    let c = lab.cluster(cluster)?.clone();
    let mut edits = Vec::new();
    for change in changes {
        let (key, value) = change
            .trim_start_matches("--")
            .split_once('=')
            .with_context(|| format!("agent option {change:?}: expected KEY=VALUE"))?;
        let value = if value.is_empty() {
            None
        } else {
            Some(
                serde_norway::from_str::<serde_norway::Value>(value)
                    .with_context(|| format!("agent option {change:?}: {value:?} is not YAML"))?,
            )
        };
        edits.push((key.to_string(), value));
    }
    // Edit every node's file in memory and check each against the agent's schema first.
    let mut files = Vec::new();
    let mut in_force = Vec::new();
    for n in &c.nodes {
        let path = agent_config_file(n);
        let lab_keys = yaml_mapping(&agent_config(&lab, &c, n)?)?;
        let mut mapping = match std::fs::read_to_string(&path) {
            Ok(text) => {
                // Checked as the agent reads it, so a bad file is named.
                let config: AgentConfig = plexus_config::from_yaml(&text, &path)?;
                yaml_mapping(&config)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => lab_keys.clone(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        for (key, value) in &edits {
            let k = serde_norway::Value::String(key.clone());
            if lab_keys.contains_key(&k) {
                bail!(
                    "agent option {key:?}: the lab sets it itself (from the lab file);                      agent-options changes the agent's other keys"
                );
            }
            match value {
                Some(v) => {
                    mapping.insert(k, v.clone());
                }
                None => {
                    mapping.remove(&k);
                }
            }
        }
        // Checked against the agent's schema (unknown keys, bad values), and written in its
        // order of keys.
        let config: AgentConfig =
            plexus_config::from_yaml(&serde_norway::to_string(&mapping)?, &path)
                .context("agent options")?;
        let mapping = yaml_mapping(&config)?;
        let yaml = config.to_yaml()?;
        if files.is_empty() {
            // Every node gets the same edits: the first one's file tells what is in force.
            in_force = mapping
                .iter()
                .filter(|(k, _)| !lab_keys.contains_key(*k))
                .map(|(k, v)| format!("{}={}", yaml_text(k), yaml_text(v)))
                .collect();
        }
        files.push((path, yaml));
    }
    if changes.is_empty() {
        return Ok(in_force);
    }
    for (path, yaml) in &files {
        write_config(path, yaml)?;
    }
    if !c.stopped {
        for n in &c.nodes {
            restart_agent(dir, cluster, &n.name, bins)?;
        }
    }
    Ok(in_force)
}

/// A schema's YAML mapping, absent values left out.
fn yaml_mapping(config: &impl Serialize) -> Result<serde_norway::Mapping> {
    match serde_norway::to_value(config)? {
        serde_norway::Value::Mapping(m) => Ok(m),
        other => bail!("a configuration is a mapping, not {other:?}"),
    }
}

/// A YAML value as a person types it after `KEY=`: scalars bare, lists comma-separated.
fn yaml_text(v: &serde_norway::Value) -> String {
    use serde_norway::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        Value::Sequence(items) => items.iter().map(yaml_text).collect::<Vec<_>>().join(","),
        other => serde_norway::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// One line per process: what runs and whether it is alive.
pub fn status(dir: &Path) -> Result<Vec<(String, String, bool)>> {
    let lab = LabState::load(dir)?;
    let mut out = Vec::new();
    for c in &lab.clusters {
        if c.etcd_members.is_empty() {
            out.push((
                c.name.clone(),
                format!("apiserver+etcd {}", c.ip),
                c.apiserver_pid.is_some_and(sys::alive),
            ));
        } else {
            for m in &c.etcd_members {
                out.push((
                    c.name.clone(),
                    format!("etcd {} {}", m.name, m.ip),
                    m.pid.is_some_and(sys::alive),
                ));
            }
            out.push((
                c.name.clone(),
                format!("apiserver {}", c.ip),
                c.apiserver_pid.is_some_and(sys::alive),
            ));
        }
        for n in &c.nodes {
            if lab.encryption == Encryption::Wireguard {
                out.push((
                    c.name.clone(),
                    format!("wireguard {} {}", n.name, wireguard::INTERFACE),
                    n.wireguard_pid.is_some_and(sys::alive),
                ));
            }
            out.push((
                c.name.clone(),
                format!("agent {} {}", n.name, n.ip),
                n.agent_pid.is_some_and(sys::alive),
            ));
        }
    }
    out.extend(outside::status(&lab));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lab of one stopped cluster of two nodes in `dir`, with its agents' files written as
    /// `start_agent` writes them (nothing runs, so `set_agent_options` restarts nothing).
    fn stopped_lab(dir: &Path) -> LabState {
        let spec = LabSpec::parse(
            "lab.yaml",
            "clusters:\n- {name: c1, id: 1, podCIDR: 10.1.0.0/16, serviceCIDR: 10.2.0.0/16, nodes: 2}\n",
        )
        .unwrap();
        let mut lab = plan("t", dir, &spec);
        lab.clusters[0].stopped = true;
        let c = lab.clusters[0].clone();
        for n in &c.nodes {
            std::fs::create_dir_all(&n.state_dir).unwrap();
            let yaml = agent_config(&lab, &c, n).unwrap().to_yaml().unwrap();
            write_config(&agent_config_file(n), &yaml).unwrap();
        }
        lab.save().unwrap();
        lab
    }

    fn bins() -> Bins {
        let none = PathBuf::from("/nonexistent");
        Bins {
            apiserver: none.clone(),
            agent: none.clone(),
            cni: none.clone(),
            plexus: none.clone(),
            dns: none.clone(),
            wireguard: none,
        }
    }

    fn files(lab: &LabState) -> Vec<String> {
        lab.clusters[0]
            .nodes
            .iter()
            .map(|n| std::fs::read_to_string(agent_config_file(n)).unwrap())
            .collect()
    }

    #[test]
    fn the_lab_writes_what_the_daemons_read() {
        let dir = tempfile::tempdir().unwrap();
        let lab = stopped_lab(dir.path());
        let c = &lab.clusters[0];
        let agent = AgentConfig::load(&agent_config_file(&c.nodes[1])).unwrap();
        assert_eq!(agent.node_name.as_deref(), Some("c1-node2"));
        assert_eq!(agent.node_ip, Some(c.nodes[1].ip));
        assert_eq!(
            agent.etcd_endpoints,
            Some(vec![format!("https://{}:2379", c.ip)])
        );
        let apiserver = apiserver_config(c).unwrap();
        let text = apiserver.to_yaml().unwrap();
        assert!(text.contains("service-cidr: 10.2.0.0/16"), "{text}");
        // The relay reads the connected clusters from the cluster's clustermesh directory.
        assert_eq!(
            apiserver.clustermesh_config.as_ref(),
            Some(&c.clustermesh_dir)
        );
        assert_eq!(apiserver.kvstoremesh_config, Some(c.kvstoremesh_dir()));
        assert_eq!(
            plexus_config::from_yaml::<ApiServerConfig>(&text, Path::new("apiserver.yaml"))
                .unwrap(),
            apiserver
        );
    }

    #[test]
    fn an_etcd_cluster_of_three_is_given_to_every_client() {
        let dir = tempfile::tempdir().unwrap();
        let spec = LabSpec::parse(
            "lab.yaml",
            "clusters:\n- {name: c1, id: 1, podCIDR: 10.1.0.0/16, serviceCIDR: 10.2.0.0/16, nodes: 1, etcd: {members: 3}}\n",
        )
        .unwrap();
        let lab = plan("t", dir.path(), &spec);
        let c = &lab.clusters[0];
        let endpoints = vec![
            "https://172.31.1.2:2379".to_string(),
            "https://172.31.1.3:2379".to_string(),
            "https://172.31.1.4:2379".to_string(),
        ];
        assert_eq!(c.etcd_endpoints(), endpoints);
        let names: Vec<&str> = c.etcd_members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["c1-etcd0", "c1-etcd1", "c1-etcd2"]);
        // The apiserver starts no etcd of its own and is given the members, as an external
        // etcd cluster, with the admin certificate.
        let apiserver = apiserver_config(c).unwrap();
        assert_eq!(apiserver.etcd_endpoints, Some(endpoints.clone()));
        assert_eq!(apiserver.etcd_listen, None);
        assert_eq!(
            apiserver.etcd_cert,
            Some(c.state_dir.join("pki").join("admin.crt"))
        );
        let agent = agent_config(&lab, c, &c.nodes[0]).unwrap();
        assert_eq!(agent.etcd_endpoints, Some(endpoints));
        // One member (the default) is the apiserver's own etcd.
        let one = LabSpec::parse(
            "lab.yaml",
            "clusters:\n- {name: c1, id: 1, podCIDR: 10.1.0.0/16, serviceCIDR: 10.2.0.0/16, nodes: 1}\n",
        )
        .unwrap();
        let lab = plan("t", dir.path(), &one);
        assert!(lab.clusters[0].etcd_members.is_empty());
        assert!(
            apiserver_config(&lab.clusters[0])
                .unwrap()
                .etcd_endpoints
                .is_none()
        );
    }

    #[test]
    fn agent_options_edit_every_agent_file() {
        let dir = tempfile::tempdir().unwrap();
        let lab = stopped_lab(dir.path());
        let set = |changes: &[&str]| {
            let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
            set_agent_options(dir.path(), "c1", &changes, &bins())
        };
        assert_eq!(set(&[]).unwrap(), Vec::<String>::new());
        let now = set(&[
            "policy-default-local-cluster=false",
            "--clustermesh-service-cache-ttl=30s",
        ])
        .unwrap();
        assert_eq!(
            now,
            [
                "clustermesh-service-cache-ttl=30s",
                "policy-default-local-cluster=false",
            ]
        );
        for n in &lab.clusters[0].nodes {
            let c = AgentConfig::load(&agent_config_file(n)).unwrap();
            assert_eq!(c.policy_default_local_cluster, Some(false));
            assert_eq!(
                c.clustermesh_service_cache_ttl,
                Some(Duration::from_secs(30))
            );
            assert_eq!(c.node_name.as_deref(), Some(n.name.as_str()));
        }
        // Shown again without changes; an empty value removes the key.
        assert_eq!(set(&[]).unwrap(), now);
        assert_eq!(
            set(&["policy-default-local-cluster="]).unwrap(),
            ["clustermesh-service-cache-ttl=30s"]
        );
    }

    #[test]
    fn bad_agent_options_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let lab = stopped_lab(dir.path());
        let before = files(&lab);
        let set = |changes: &[&str]| {
            let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
            set_agent_options(dir.path(), "c1", &changes, &bins()).map_err(|e| format!("{e:#}"))
        };
        // An unknown key, even after a good one.
        let e = set(&["mtu=1400", "policy-default-local-clustre=false"]).unwrap_err();
        assert!(
            e.contains("unknown field `policy-default-local-clustre`"),
            "{e}"
        );
        assert!(e.contains("agent.yaml"), "{e}");
        // A bad value names the key.
        let e = set(&["mtu=big"]).unwrap_err();
        assert!(e.contains("mtu: invalid type: string \"big\""), "{e}");
        // What the lab sets itself.
        let e = set(&["node-name=x"]).unwrap_err();
        assert!(e.contains("\"node-name\": the lab sets it itself"), "{e}");
        assert!(set(&["mtu"]).unwrap_err().contains("expected KEY=VALUE"));
        assert!(set(&[]).unwrap().is_empty());
        assert_eq!(files(&lab), before);
    }
}
