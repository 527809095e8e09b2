//! The scale harness: simulated remote clusters in Cilium's wire format, consumed by one real
//! agent through KVStoreMesh.
//!
//! [`ScaleSpec`] says how big the mesh is (remote clusters, and per remote: nodes, endpoints,
//! identities, shared services). [`SimCluster`] is one simulated remote: every address,
//! identity and service it publishes is a pure function of the spec and the remote's index, so
//! a bench or a test knows the exact counts the agent must reach. [`publish`] writes one
//! remote into its own etcd as a real cluster's agents and apiserver would (its cluster config
//! and heartbeat, then nodes, identities, ipcache entries and services through `SyncStore`s,
//! then the canaries). [`ScaleAgent`] runs one real `plexus-agent` with the eBPF datapath in
//! the harness's private network namespace ([`enter_private_netns`]), and [`list_and_decode`]
//! is the baseline: the bare listing and decoding of the same data.
//!
//! Addressing (no two remotes and the local cluster overlap; up to 2,047 remotes fit):
//! - remote `id` owns the pod range `10.0.0.0 + id << 13` (a /19); its node `k` the `k`-th
//!   block of it, sized to hold its endpoints; endpoint `e` lives on node `e % nodes`;
//! - node `k` of remote `id` has the underlay address `100.64.0.0 + id << 8 + k + 1`;
//! - identity `j` of remote `id` is the `j + 1`-th of its range
//!   ([`plexus_model::identity::identity_range`]); endpoint `e` at version `v` has identity
//!   `(e + v) % identities` (the churn bumps `v`);
//! - the local cluster is `scale-local` (id 1), its node's pod CIDR `10.255.0.0/16`, its node
//!   address [`NODE_IP`] on an `eth0` of the private namespace.
//!
//! Cleanup: the namespace is the calling thread's own (`unshare`), so it ends with the last
//! process in it; [`ScaleAgent`]'s drop kills the agent and unmounts its bpffs and cgroup2.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use plexus_clustermesh::publish::{PublisherConfig, SelfPublisher};
use plexus_kvstore::{KvBackend, LeaseManager, SyncStore, SyncStoreConfig};
use plexus_model::cidr::Cidr;
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::identity::identity_range;
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::keys::StateKind;
use plexus_model::labels::{Label, Labels};
use plexus_model::node::{Node, NodeAddress, NodeAddressType};
use plexus_model::service::{ClusterService, PortConfig, PortConfiguration};

/// The local cluster's name.
pub const LOCAL_CLUSTER: &str = "scale-local";
/// The local cluster's id.
pub const LOCAL_CLUSTER_ID: u32 = 1;
/// The agent's node address (on the private namespace's dummy `eth0`).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 255, 1);
/// The local cluster's pod CIDR.
pub const LOCAL_POD_CIDR: &str = "10.255.0.0/16";
/// Bits of address space each remote's pods get (a /19).
const CLUSTER_BITS: u32 = 13;

/// How big the simulated mesh is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleSpec {
    /// Remote clusters.
    pub clusters: usize,
    /// Nodes per remote.
    pub nodes: usize,
    /// Endpoints (ipcache entries of pods) per remote.
    pub endpoints: usize,
    /// Identities per remote.
    pub identities: usize,
    /// Shared services per remote.
    pub services: usize,
    /// Backends per service (endpoints of the remote).
    pub backends: usize,
}

impl ScaleSpec {
    /// The defaults: 250 remotes x 100 nodes x 1,000 endpoints x 100 identities, with
    /// 10 shared services of 10 backends each.
    pub const DEFAULT: Self = Self {
        clusters: 250,
        nodes: 100,
        endpoints: 1000,
        identities: 100,
        services: 10,
        backends: 10,
    };

    /// 255 clusters in the mesh when the remotes and the local one fit, 511 otherwise.
    pub fn max(&self) -> MaxConnectedClusters {
        if self.clusters < 255 {
            MaxConnectedClusters::Max255
        } else {
            MaxConnectedClusters::Max511
        }
    }

    /// Refuses a spec whose addresses or identities would not fit (naming the parameter).
    pub fn check(&self) -> Result<()> {
        if self.clusters == 0 || self.clusters > 510 {
            bail!(
                "--clusters {}: 1 to 510 remotes (511 clusters with the local one)",
                self.clusters
            );
        }
        if self.nodes == 0 || self.nodes > 254 {
            bail!("--nodes {}: 1 to 254 per remote", self.nodes);
        }
        if self.nodes * self.node_block() > 1 << CLUSTER_BITS {
            bail!(
                "--nodes {} x --endpoints {}: more than a /19 of pod addresses per remote",
                self.nodes,
                self.endpoints
            );
        }
        let range = identity_range(2, self.max());
        let room = (range.end() - range.start()) as usize;
        if self.identities == 0 || self.identities >= room {
            bail!(
                "--identities {}: 1 to {} per remote",
                self.identities,
                room - 1
            );
        }
        if self.services > 0 && (self.backends == 0 || self.backends > self.endpoints) {
            bail!(
                "--backends {}: 1 to --endpoints ({}) per service",
                self.backends,
                self.endpoints
            );
        }
        Ok(())
    }

    /// Addresses per node's pod CIDR: room for its endpoints, the network address and the
    /// router (`CiliumInternalIP`), a power of two.
    fn node_block(&self) -> usize {
        let per_node = self.endpoints.div_ceil(self.nodes);
        (per_node + 2).next_power_of_two().max(4)
    }

    /// Every simulated remote.
    pub fn remotes(&self) -> impl Iterator<Item = SimCluster> + '_ {
        (0..self.clusters).map(|i| SimCluster::new(*self, i))
    }

    /// Entries of one remote as the consumer counts them: nodes + endpoints + identities +
    /// services.
    pub fn entries_per_remote(&self) -> usize {
        self.nodes + self.endpoints + self.identities + self.services
    }

    /// The local cluster.
    pub fn local(&self) -> Result<ClusterInfo> {
        Ok(ClusterInfo::new(
            LOCAL_CLUSTER,
            LOCAL_CLUSTER_ID,
            self.max(),
        )?)
    }
}

/// One simulated remote cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimCluster {
    spec: ScaleSpec,
    /// Its index among the remotes (0-based).
    pub index: usize,
    /// Its cluster id (`index + 2`; the local cluster is 1).
    pub id: u32,
    /// Its name, `sim-<id>`.
    pub name: String,
}

impl SimCluster {
    /// Remote `index` of `spec`.
    pub fn new(spec: ScaleSpec, index: usize) -> Self {
        let id = index as u32 + 2;
        Self {
            spec,
            index,
            id,
            name: format!("sim-{id}"),
        }
    }

    fn base(&self) -> u32 {
        u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (self.id << CLUSTER_BITS)
    }

    fn node_cidr(&self, k: usize) -> (Ipv4Addr, u8) {
        let block = self.spec.node_block();
        let len = 32 - block.trailing_zeros() as u8;
        (Ipv4Addr::from(self.base() + (k * block) as u32), len)
    }

    /// Node `k`'s underlay address.
    pub fn node_ip(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (self.id << 8) + k as u32 + 1)
    }

    /// Endpoint `e`'s address.
    pub fn endpoint_ip(&self, e: usize) -> Ipv4Addr {
        let k = e % self.spec.nodes;
        let slot = e / self.spec.nodes;
        let (net, _) = self.node_cidr(k);
        Ipv4Addr::from(u32::from(net) + 1 + slot as u32)
    }

    /// Identity `j`'s number.
    pub fn identity(&self, j: usize) -> u32 {
        identity_range(self.id, self.spec.max()).start() + 1 + j as u32
    }

    /// Endpoint `e`'s identity at version `v`.
    pub fn endpoint_identity(&self, e: usize, v: usize) -> u32 {
        self.identity((e + v) % self.spec.identities)
    }

    /// Identity `j`'s labels.
    pub fn labels(&self, j: usize) -> Labels {
        let mut labels = Labels::new();
        labels.insert(Label::k8s("app", format!("app-{j}")));
        labels.insert(Label::k8s("io.kubernetes.pod.namespace", "scale"));
        labels.with_cluster(&self.name)
    }

    /// Node `k`.
    pub fn node(&self, k: usize) -> Node {
        let (net, len) = self.node_cidr(k);
        let block = self.spec.node_block() as u32;
        let router = Ipv4Addr::from(u32::from(net) + block - 1);
        Node {
            name: format!("node-{k}"),
            cluster: self.name.clone(),
            ip_addresses: vec![
                NodeAddress {
                    kind: NodeAddressType::InternalIp,
                    ip: self.node_ip(k).into(),
                },
                NodeAddress {
                    kind: NodeAddressType::CiliumInternalIp,
                    ip: router.into(),
                },
            ],
            ipv4_alloc_cidr: Cidr::new(net.into(), len).ok(),
            cluster_id: self.id,
            ..Default::default()
        }
    }

    /// Endpoint `e`'s ipcache entry at version `v`.
    pub fn ip_entry(&self, e: usize, v: usize) -> IpIdentityPair {
        let mut p = IpIdentityPair::host(
            self.endpoint_ip(e).into(),
            Some(self.node_ip(e % self.spec.nodes).into()),
            self.endpoint_identity(e, v),
        );
        p.k8s_namespace = "scale".into();
        p.k8s_pod_name = format!("pod-{e}");
        p
    }

    /// Service `s`.
    pub fn service(&self, s: usize) -> ClusterService {
        let port = |p: u16| -> PortConfiguration {
            [(
                "http".to_string(),
                PortConfig {
                    protocol: "TCP".into(),
                    port: p,
                },
            )]
            .into()
        };
        let frontend = Ipv4Addr::new(172, 20, (s / 250) as u8, (s % 250) as u8 + 1);
        ClusterService {
            cluster: self.name.clone(),
            namespace: "scale".into(),
            name: format!("svc-{s}"),
            frontends: [(frontend.to_string(), port(80))].into(),
            backends: (0..self.spec.backends)
                .map(|b| {
                    let e = (s * self.spec.backends + b) % self.spec.endpoints;
                    (self.endpoint_ip(e).to_string(), port(8080))
                })
                .collect(),
            hostnames: Default::default(),
            zones: Default::default(),
            labels: Default::default(),
            selector: Default::default(),
            include_external: true,
            shared: true,
            cluster_id: self.id,
        }
    }

    /// The key of endpoint `e`'s ipcache entry in the remote's etcd.
    pub fn ip_key(&self, e: usize) -> String {
        format!(
            "{}{}",
            StateKind::Ip.state_prefix(&self.name),
            self.endpoint_ip(e)
        )
    }
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    // The model's types serialize to JSON without fail (plain structs, string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

/// One published remote: its stores and publisher keep their keys under the lease.
pub struct Published {
    /// The remote's etcd.
    pub backend: Arc<dyn KvBackend>,
    /// Its lease (the churn writes under it).
    pub leases: LeaseManager,
    _publisher: SelfPublisher,
    _stores: Vec<SyncStore>,
}

/// Publishes remote `sim` into `backend` as a real cluster does (cluster config, heartbeat,
/// every kind's entries, then the canaries) and returns once everything is written.
pub async fn publish(backend: Arc<dyn KvBackend>, sim: &SimCluster) -> Result<Published> {
    let leases = LeaseManager::start(backend.clone(), Duration::from_secs(60))
        .await
        .with_context(|| format!("grant {}'s lease", sim.name))?;
    let info = ClusterInfo::new(&sim.name, sim.id, sim.spec.max())?;
    let publisher = SelfPublisher::start(backend.clone(), &leases, PublisherConfig::new(info))
        .await
        .with_context(|| format!("publish {}'s cluster config", sim.name))?;
    let store = |kind: StateKind| {
        SyncStore::start(
            backend.clone(),
            &leases,
            SyncStoreConfig {
                prefix: kind.state_prefix(&sim.name),
                canary: Some(kind.canary(&sim.name)),
            },
        )
    };
    let spec = sim.spec;
    let nodes = store(StateKind::Nodes);
    for k in 0..spec.nodes {
        let n = sim.node(k);
        nodes.upsert(n.name.clone(), json(&n));
    }
    let identities = store(StateKind::Identities);
    for j in 0..spec.identities {
        identities.upsert(
            sim.identity(j).to_string(),
            sim.labels(j).to_kvstore_string().into_bytes(),
        );
    }
    let ips = store(StateKind::Ip);
    for e in 0..spec.endpoints {
        ips.upsert(sim.endpoint_ip(e).to_string(), json(&sim.ip_entry(e, 0)));
    }
    let services = store(StateKind::Services);
    for s in 0..spec.services {
        let svc = sim.service(s);
        services.upsert(format!("{}/{}", svc.namespace, svc.name), json(&svc));
    }
    let stores = vec![nodes, identities, ips, services];
    for s in &stores {
        s.synced();
    }
    for s in &stores {
        s.wait_synced().await;
    }
    Ok(Published {
        backend,
        leases,
        _publisher: publisher,
        _stores: stores,
    })
}

/// What [`list_and_decode`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    /// Entries decoded (nodes + endpoints + identities + services).
    pub entries: usize,
    /// Bytes of their keys and values as listed.
    pub bytes: usize,
}

/// The baseline: lists every kind one remote publishes and decodes each value into the
/// model's type, nothing more (no validation, no merge, no datapath).
pub async fn list_and_decode(backend: &dyn KvBackend, sim: &SimCluster) -> Result<Listed> {
    let mut out = Listed::default();
    for kind in [
        StateKind::Nodes,
        StateKind::Identities,
        StateKind::Ip,
        StateKind::Services,
    ] {
        let list = backend
            .list_prefix(&kind.state_prefix(&sim.name))
            .await
            .with_context(|| format!("list {}'s {}", sim.name, kind.name()))?;
        for kv in &list.kvs {
            out.bytes += kv.key.len() + kv.value.len();
            let ok = match kind {
                StateKind::Nodes => serde_json::from_slice::<Node>(&kv.value).is_ok(),
                StateKind::Ip => serde_json::from_slice::<IpIdentityPair>(&kv.value).is_ok(),
                StateKind::Services => serde_json::from_slice::<ClusterService>(&kv.value).is_ok(),
                _ => Labels::parse(&String::from_utf8_lossy(&kv.value)).is_ok(),
            };
            if !ok {
                bail!("{}: the value does not decode", kv.key);
            }
            out.entries += 1;
        }
    }
    Ok(out)
}

/// Writes the clustermesh configuration file of remote `name` (endpoints `endpoint`) into
/// `dir`, whole (a reader never sees half a file).
pub fn write_remote_config(dir: &Path, name: &str, endpoint: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("endpoints:\n- {endpoint}\n"))
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name))
        .with_context(|| format!("write {}", dir.join(name).display()))
}

/// Moves the calling thread into a network namespace of its own, with loopback up and a
/// `eth0` (one end of a veth pair) holding [`NODE_IP`]. Threads and processes it starts afterwards (a tokio
/// runtime, etcd, the agent) live there too; the namespace ends with the last of them. Call
/// it before starting any of them.
pub fn enter_private_netns() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("unshare the network namespace")?;
    crate::sys::ip(&["link", "set", "lo", "up"])?;
    // A veth pair (the kernel may lack the dummy driver); nothing is on the other end.
    crate::sys::ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0-peer",
    ])?;
    crate::sys::ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"])?;
    crate::sys::ip(&["link", "set", "eth0-peer", "up"])?;
    crate::sys::ip(&["link", "set", "eth0", "up"])
}

/// One real `plexus-agent` (eBPF datapath) of the local cluster, in the calling thread's
/// namespace; killed, and its mounts removed, on drop.
pub struct ScaleAgent {
    child: Child,
    dir: PathBuf,
}

impl ScaleAgent {
    /// Starts `bin` with state under `dir`, its cluster's etcd at `etcd`, reading remotes from
    /// `dir/clustermesh`, and waits for its API.
    pub async fn start(bin: &Path, dir: &Path, etcd: &str, spec: &ScaleSpec) -> Result<Self> {
        let state = dir.join("state");
        let mesh = dir.join("clustermesh");
        std::fs::create_dir_all(&mesh).with_context(|| format!("create {}", mesh.display()))?;
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        // Room for every remote entry with a fifth to spare (the default holds 512,000).
        let ipcache_max = (spec.clusters * (spec.endpoints + 2 * spec.nodes) * 6 / 5).max(512_000);
        let child = Command::new(bin)
            .args(["--cluster-name", LOCAL_CLUSTER])
            .arg(format!("--cluster-id={LOCAL_CLUSTER_ID}"))
            .arg(format!("--max-connected-clusters={}", spec.max().as_u32()))
            .args(["--node-name", "scale-node"])
            .arg(format!("--node-ip={NODE_IP}"))
            .arg(format!("--pod-cidr={LOCAL_POD_CIDR}"))
            .args(["--datapath", "ebpf", "--routing", "tunnel"])
            .arg(format!("--bpf-ipcache-map-max={ipcache_max}"))
            .arg("--state-dir")
            .arg(&state)
            .arg(format!("--etcd-endpoints={etcd}"))
            .arg("--clustermesh-config")
            .arg(&mesh)
            .arg("--api-socket")
            .arg(dir.join("agent.sock"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let agent = Self {
            child,
            dir: dir.to_path_buf(),
        };
        let client = agent.client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while client.healthz().await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the agent did not answer within 60 s (log {})",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(agent)
    }

    /// Its API client (unix socket).
    pub fn client(&self) -> plexus_agent_api::Client {
        plexus_agent_api::Client::new(plexus_agent_api::Endpoint::Unix(
            self.dir.join("agent.sock"),
        ))
        .with_timeout(Duration::from_secs(60))
    }

    /// The directory of its clustermesh configuration files.
    pub fn clustermesh_dir(&self) -> PathBuf {
        self.dir.join("clustermesh")
    }

    /// Its pinned maps.
    pub fn pin_dir(&self) -> PathBuf {
        self.dir.join("state").join("bpffs")
    }

    /// Its log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory (`VmRSS` of `/proc/<pid>/status`), in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .with_context(|| format!("no VmRSS in {path}"))
    }
}

impl Drop for ScaleAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::sys::unmount(&self.dir.join("state").join("bpffs"));
        crate::sys::unmount(&self.dir.join("state").join("cgroupv2"));
    }
}

/// Whether `addr` is one of the simulated remotes' pod addresses (not the local cluster's).
pub fn is_remote_pod(addr: Ipv4Addr) -> bool {
    let o = addr.octets();
    o[0] == 10 && o[1] != 255
}

/// Whether `addr` is one of the simulated remotes' node addresses.
pub fn is_remote_node(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 100 && (64..128).contains(&o[1])
        }
        IpAddr::V6(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn addresses_and_identities_are_distinct_and_validate() {
        let spec = ScaleSpec {
            clusters: 3,
            nodes: 7,
            endpoints: 50,
            identities: 5,
            services: 2,
            backends: 3,
        };
        spec.check().unwrap();
        let mut ips = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for sim in spec.remotes() {
            for e in 0..spec.endpoints {
                let ip = sim.endpoint_ip(e);
                assert!(is_remote_pod(ip));
                assert!(ips.insert(ip), "{ip} twice");
                let p = sim.ip_entry(e, 0);
                let node = sim.node(e % spec.nodes);
                assert!(node.ipv4_alloc_cidr.unwrap().contains(p.ip), "{ip}");
            }
            for j in 0..spec.identities {
                assert!(ids.insert(sim.identity(j)));
                plexus_model::identity::validate_remote_identity(
                    sim.identity(j),
                    sim.id,
                    spec.max(),
                )
                .unwrap();
                assert_eq!(sim.labels(j).cluster(), Some(sim.name.as_str()));
            }
            for k in 0..spec.nodes {
                assert!(is_remote_node(sim.node_ip(k).into()));
            }
            let svc = sim.service(1);
            svc.validate(&sim.name, sim.id, "scale/svc-1").unwrap();
            assert_eq!(svc.backends.len(), 3);
        }
    }

    #[test]
    fn the_511_mode_and_refusals() {
        let big = ScaleSpec {
            clusters: 510,
            ..ScaleSpec::DEFAULT
        };
        big.check().unwrap();
        assert_eq!(big.max(), MaxConnectedClusters::Max511);
        let last = SimCluster::new(big, 509);
        assert_eq!(last.id, 511);
        assert!(is_remote_pod(last.endpoint_ip(999)));
        assert_eq!(ScaleSpec::DEFAULT.max(), MaxConnectedClusters::Max255);
        let too_many = ScaleSpec {
            clusters: 511,
            ..ScaleSpec::DEFAULT
        };
        assert!(
            too_many
                .check()
                .unwrap_err()
                .to_string()
                .contains("--clusters")
        );
        let crowded = ScaleSpec {
            nodes: 200,
            endpoints: 20_000,
            ..ScaleSpec::DEFAULT
        };
        assert!(crowded.check().unwrap_err().to_string().contains("/19"));
    }
}
