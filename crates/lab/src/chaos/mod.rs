//! The chaos soak: traffic across a running mesh while its components are killed at random,
//! then a check that every node's datapath state is the stores' truth.
//!
//! [`run`] takes a lab of two or more clusters where the soak's workload runs (in namespace
//! `default` of every cluster: the Deployment and global Service `chaos-echo`, the Deployment
//! `chaos-client`, the policy letting clients of any cluster reach the echo pods;
//! `examples/chaos/soak.yaml`). For the soak's length it runs:
//!
//! - HTTP requests in a loop from every client pod to every echo pod of the other clusters,
//!   to the global service's address and to its DNS name through the cluster DNS
//!   ([`traffic`]);
//! - a long TCP stream from every client pod to an echo pod of another cluster, a round trip
//!   every 100 ms, with the longest gap between two round trips;
//! - a kill (SIGKILL) of an agent, an apiserver, an etcd or a `kube-dns` at random, seeded
//!   ([`plan`]), each brought back at once as its supervisor would (the lab for agents,
//!   apiservers and pods; the apiserver for its etcd). While a killed agent is down, the
//!   client pod of its node gets a new label value ([`ROUND_LABEL`]): the new agent must give
//!   it a new identity, and every node (both clusters) must take it into its ipcache and the
//!   echo pods' policy, while that client's requests go on.
//!
//! Then, traffic stopped, it waits until every node's ipcache, load-balancing maps,
//! endpoints and policy equal the truth computed from the stores ([`verify`]), up to the
//! settle time. The report counts requests, groups the failed ones by cause and by the kill
//! that explains them ([`classify`]), lists the unexplained ones, the longest gap per
//! stream, and the differences left. The soak passes with no unexplained failure, every
//! component back, and no difference.

pub mod classify;
pub mod plan;
pub mod traffic;
pub mod verify;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::lab::{self, Bins, LabState, Progress};
use crate::workload::Workloads;
use crate::{dns, kv, sys};
use classify::{Cause, Failure, Probe, Window};
use plan::{ClusterNodes, Target, humantime_serde_secs};
use traffic::{Client, StreamStats, Traffic};

/// The namespace of the soak's workload.
pub const NAMESPACE: &str = "default";
/// The echo pods' label `app`, the global service's name.
pub const ECHO: &str = "chaos-echo";
/// The client pods' label `app`.
pub const CLIENT: &str = "chaos-client";

/// The echo pods' second HTTP port, which the clients ask by address.
pub const POD_PORT: u16 = 8080;

/// The label an agent's kill changes on the client pod of its node, while the agent is down.
pub const ROUND_LABEL: &str = "chaos-round";

/// How a soak runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long traffic runs.
    pub duration: Duration,
    /// The seed of the kills.
    pub seed: u64,
    /// One kill every this long.
    pub every: Duration,
    /// How long the mesh may take to reach the stores' truth (before and after).
    pub settle: Duration,
    /// The port the clients ask the other clusters' echo pods on, by address. Not the
    /// service's port (80) by default: see docs/reliability.md (a direct connection that
    /// reuses the 4-tuple of a recent connection through the service is refused by the
    /// server's PAWS check, as the datapath translates services per packet).
    pub pod_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(600),
            seed: 1,
            every: Duration::from_secs(20),
            settle: Duration::from_secs(60),
            pod_port: POD_PORT,
        }
    }
}

/// One kill and how long its component took to come back.
#[derive(Clone, Debug, Serialize)]
pub struct FaultReport {
    /// When it was killed, from the start.
    #[serde(with = "humantime_serde_secs")]
    pub at: Duration,
    /// What.
    pub target: Target,
    /// How long until it was back.
    #[serde(with = "humantime_serde_secs")]
    pub back_after: Duration,
    /// Why it did not come back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Failed requests of one probe and cause, explained by one kind of kill (or by none).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FailureGroup {
    /// The probe.
    pub probe: Probe,
    /// The cause.
    pub cause: Cause,
    /// The kind of kill that explains them (`agent`, `kube-dns`, ...); `None`: unexplained.
    pub explained_by: Option<&'static str>,
    /// How many.
    pub count: u64,
}

/// What a soak found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// How long traffic ran.
    #[serde(with = "humantime_serde_secs")]
    pub duration: Duration,
    /// The kills.
    pub faults: Vec<FaultReport>,
    /// Requests (stream round trips included) that succeeded, by probe.
    pub succeeded: BTreeMap<Probe, u64>,
    /// Failed requests, grouped.
    pub failed: Vec<FailureGroup>,
    /// Every failed request no kill explains.
    pub unexplained: Vec<Failure>,
    /// The streams' figures.
    pub streams: BTreeMap<String, StreamStats>,
    /// How long after traffic stopped every node matched the stores (`None`: not within the
    /// settle time).
    #[serde(with = "option_secs")]
    pub converged_after: Option<Duration>,
    /// How many entries the last check compared (all nodes).
    pub checked: verify::Checked,
    /// The differences left.
    pub differences: Vec<verify::Difference>,
}

mod option_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64((d.as_millis() as f64) / 1000.0),
            None => s.serialize_none(),
        }
    }
}

impl Report {
    /// No unexplained failure, every component back, no difference left.
    pub fn passed(&self) -> bool {
        self.unexplained.is_empty()
            && self.differences.is_empty()
            && self.faults.iter().all(|f| f.error.is_none())
    }

    /// The report for people.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let ok: u64 = self.succeeded.values().sum();
        let failed: u64 = self.failed.iter().map(|g| g.count).sum();
        let _ = writeln!(
            s,
            "chaos soak: {:.0} s, seed {}, {} kills, {} requests, {} failed ({} unexplained)",
            self.duration.as_secs_f64(),
            self.seed,
            self.faults.len(),
            ok + failed,
            failed,
            self.unexplained.len()
        );
        let _ = writeln!(s, "kills:");
        for f in &self.faults {
            let _ = writeln!(
                s,
                "  {:>7.1}s {:<28} back after {:.1} s{}",
                f.at.as_secs_f64(),
                f.target.to_string(),
                f.back_after.as_secs_f64(),
                f.error
                    .as_ref()
                    .map(|e| format!(" ❌ {e}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(s, "requests by probe:");
        for (probe, n) in &self.succeeded {
            let bad: u64 = self
                .failed
                .iter()
                .filter(|g| g.probe == *probe)
                .map(|g| g.count)
                .sum();
            let _ = writeln!(s, "  {:<10} {n} ok, {bad} failed", format!("{probe:?}"));
        }
        if !self.failed.is_empty() {
            let _ = writeln!(s, "failed requests by cause:");
            for g in &self.failed {
                let _ = writeln!(
                    s,
                    "  {:<6} {:<10} {:<20} {}",
                    g.count,
                    format!("{:?}", g.probe),
                    g.cause.to_string(),
                    g.explained_by
                        .map(|k| format!("explained: {k} kill"))
                        .unwrap_or_else(|| "UNEXPLAINED".to_string())
                );
            }
        }
        for f in self.unexplained.iter().take(20) {
            let _ = writeln!(
                s,
                "  ❌ {:>7.1}s {:?} from {} to {}: {}",
                f.at.as_secs_f64(),
                f.probe,
                f.client_node,
                f.target,
                f.cause
            );
        }
        let _ = writeln!(s, "streams (longest gap between round trips):");
        for (name, st) in &self.streams {
            let _ = writeln!(
                s,
                "  {name:<32} {:.2} s (ending at {:.1} s), {} round trips, {} breaks",
                st.longest_gap.as_secs_f64(),
                st.longest_gap_end.as_secs_f64(),
                st.round_trips,
                st.breaks
            );
        }
        match self.converged_after {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "state: every node's ipcache, lb, endpoints and policy equal the stores' truth ({:.1} s after traffic stopped; {} ipcache entries, {} frontends, {} endpoints, {} policies, {} policy entries compared)",
                    d.as_secs_f64(),
                    self.checked.ipcache,
                    self.checked.lb,
                    self.checked.endpoints,
                    self.checked.policies,
                    self.checked.policy_entries
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "state: {} differences from the stores' truth:",
                    self.differences.len()
                );
                for d in self.differences.iter().take(50) {
                    let _ = writeln!(s, "  ❌ {d}");
                }
            }
        }
        let _ = writeln!(
            s,
            "{}",
            if self.passed() {
                "✅ passed"
            } else {
                "❌ failed"
            }
        );
        s
    }
}

/// The soak's pods and addresses in the lab.
struct Setup {
    clients: Vec<Client>,
    /// Echo pods: cluster, netns, address.
    echoes: Vec<(String, String, Ipv4Addr)>,
}

fn setup(lab: &LabState, pod_port: u16) -> Result<Setup> {
    if lab.clusters.len() < 2 {
        bail!("the chaos soak needs a lab of two clusters or more");
    }
    let mut echoes = Vec::new();
    let mut clients = Vec::new();
    for c in &lab.clusters {
        let w = Workloads::load(lab, &c.name)?;
        let app = |p: &&crate::workload::PodState, app: &str| {
            p.namespace == NAMESPACE && p.labels.get("app").map(String::as_str) == Some(app)
        };
        let found: Vec<_> = w.pods.values().filter(|p| app(p, ECHO)).collect();
        if found.is_empty() {
            bail!(
                "no {ECHO} pod in namespace {NAMESPACE} of cluster {} (apply examples/chaos/soak.yaml to every cluster first)",
                c.name
            );
        }
        for p in found {
            let ip =
                p.ip.parse()
                    .with_context(|| format!("address of pod {} in {}", p.name, c.name))?;
            echoes.push((c.name.clone(), p.netns.clone(), ip));
        }
    }
    for c in &lab.clusters {
        let key = format!("{}{NAMESPACE}/{ECHO}", plexus_loadbalancer::SERVICES_PREFIX);
        let svc = kv::list(c, &key)?
            .into_iter()
            .find(|(k, _)| *k == key)
            .with_context(|| format!("no Service {NAMESPACE}/{ECHO} in cluster {}", c.name))?;
        let svc: plexus_loadbalancer::service::Service = serde_json::from_slice(&svc.1)
            .with_context(|| format!("{key} in the etcd of {}", c.name))?;
        let service: Ipv4Addr = svc
            .spec
            .cluster_ip
            .as_deref()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("{key} of {} has no address yet", c.name))?;
        let w = Workloads::load(lab, &c.name)?;
        let mut any = false;
        for p in w.pods.values().filter(|p| {
            p.namespace == NAMESPACE && p.labels.get("app").map(String::as_str) == Some(CLIENT)
        }) {
            any = true;
            clients.push(Client {
                cluster: c.name.clone(),
                node: p.node.clone(),
                netns: p.netns.clone(),
                pods: echoes
                    .iter()
                    .filter(|(cluster, _, _)| *cluster != c.name)
                    .map(|(_, _, ip)| *ip)
                    .collect(),
                pod_port,
                service,
                dns: dns::dns_ip(&c.service_cidr)?,
                name: format!("{ECHO}.{NAMESPACE}.svc.{}", dns::DOMAIN),
            });
        }
        if !any {
            bail!(
                "no {CLIENT} pod in namespace {NAMESPACE} of cluster {}",
                c.name
            );
        }
    }
    Ok(Setup { clients, echoes })
}

/// Waits until every node matches the stores, up to `limit`: how long it took, or the
/// differences still there.
pub fn settle(
    lab: &LabState,
    limit: Duration,
) -> Result<(
    std::result::Result<Duration, Vec<verify::Difference>>,
    verify::Checked,
)> {
    let start = Instant::now();
    loop {
        let (diffs, checked) = verify::verify(lab)?;
        if diffs.is_empty() {
            return Ok((Ok(start.elapsed()), checked));
        }
        if start.elapsed() > limit {
            return Ok((Err(diffs), checked));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Gives the client pod on `node` the label `chaos-round=<round>` (its Pod object in the
/// cluster's etcd and the lab's record), as `plexus label` does: a new identity for the pod,
/// which every node's ipcache and the echo pods' policy must take up.
fn relabel_client(lab: &LabState, cluster: &str, node: &str, round: usize) -> Result<()> {
    let c = lab.cluster(cluster)?;
    let w = Workloads::load(lab, cluster)?;
    let Some(pod) = w.pods.values().find(|p| {
        p.node == node
            && p.namespace == NAMESPACE
            && p.labels.get("app").map(String::as_str) == Some(CLIENT)
    }) else {
        return Ok(());
    };
    let mut labels = pod.labels.clone();
    labels.insert(ROUND_LABEL.to_string(), round.to_string());
    let mut obj = crate::workload::pod_object(pod);
    obj.metadata.labels = labels.clone();
    kv::write(
        c,
        vec![plexus_kvstore::Op::Put {
            key: obj.key(),
            value: serde_json::to_vec(&obj)?,
            lease: None,
        }],
    )?;
    crate::workload::set_pod_metadata(
        lab,
        cluster,
        &pod.namespace,
        &pod.name,
        labels,
        pod.annotations.clone(),
    )
}

/// Kills `target` and brings it back; returns once it serves again. An agent's kill also
/// relabels the client pod of its node while no agent runs there (`round` is the label's
/// value).
fn kill(dir: &Path, target: &Target, bins: &Bins, round: usize) -> Result<()> {
    let lab = LabState::load(dir)?;
    let c = lab.cluster(target.cluster())?.clone();
    match target {
        Target::Agent { cluster, node } => lab::crash_agent_and(dir, cluster, node, bins, || {
            relabel_client(&lab, cluster, node, round)
        }),
        Target::Apiserver { cluster } => lab::crash_apiserver(dir, cluster, bins),
        Target::Etcd { cluster } => {
            let old = lab::crash_etcd(dir, cluster)?;
            let apiserver = c.apiserver_pid.unwrap_or_default();
            sys::wait_until(
                &format!("etcd of {cluster} started again by its apiserver"),
                Duration::from_secs(60),
                || lab::etcd_pid(apiserver).is_some_and(|p| p != old),
            )?;
            sys::wait_until(
                &format!("etcd of {cluster} serving again"),
                Duration::from_secs(60),
                || kv::list(&c, "cilium/cluster-config/").is_ok(),
            )
        }
        Target::KubeDns { cluster } => {
            let pod = crate::workload::find_pod(
                &lab,
                cluster,
                dns::NAMESPACE,
                &format!("deployment/{}", dns::NAME),
            )?;
            if let Some(pid) = pod.pid {
                sys::kill(pid);
            }
            crate::workload::start_processes(&lab, cluster, bins)?;
            let server = dns::dns_ip(&c.service_cidr)?;
            let name = format!("{}.{}.svc.{}", dns::NAME, dns::NAMESPACE, dns::DOMAIN);
            sys::wait_until(
                &format!("kube-dns of {cluster} answering again"),
                Duration::from_secs(60),
                || {
                    let name = name.clone();
                    sys::in_netns(&pod.netns, move || {
                        Ok(traffic::resolve_a(server, &name).is_ok())
                    })
                    .unwrap_or(false)
                },
            )
        }
    }
}

/// Runs the soak on the lab in `dir` (see the module's documentation).
pub fn run(dir: &Path, options: &Options, bins: &Bins, progress: Progress<'_>) -> Result<Report> {
    let lab = LabState::load(dir)?;
    let setup = setup(&lab, options.pod_port)?;
    progress(&format!(
        "⌛ waiting until every node matches the stores (up to {:?})",
        options.settle
    ));
    if let (Err(diffs), _) = settle(&lab, options.settle)? {
        let list: Vec<String> = diffs.iter().take(20).map(ToString::to_string).collect();
        bail!(
            "before the soak, {} differences from the stores' truth:\n  {}",
            diffs.len(),
            list.join("\n  ")
        );
    }
    let faults = plan::schedule(
        options.seed,
        options.duration,
        options.every,
        &lab.clusters
            .iter()
            .map(|c| ClusterNodes {
                cluster: c.name.clone(),
                nodes: c.nodes.iter().map(|n| n.name.clone()).collect(),
            })
            .collect::<Vec<_>>(),
    );
    progress(&format!(
        "⌛ soak: {} s, seed {}, {} clients, {} kills planned",
        options.duration.as_secs(),
        options.seed,
        setup.clients.len(),
        faults.len()
    ));
    let start = Instant::now();
    let mut traffic = Traffic::new();
    for (_, netns, ip) in &setup.echoes {
        traffic.stream_server(netns, *ip);
    }
    // Let the servers bind before the streams connect.
    std::thread::sleep(Duration::from_millis(300));
    for c in &setup.clients {
        traffic.client(c.clone(), start);
        // To an echo pod of another cluster on a node of the same rank, if any.
        if let Some(to) = c.pods.first() {
            traffic.stream(c.clone(), *to, start);
        }
    }
    let mut windows: Vec<Window> = Vec::new();
    let mut reports = Vec::new();
    let mut next = faults.into_iter().peekable();
    let mut last_line = Duration::ZERO;
    while start.elapsed() < options.duration {
        if let Some(f) = next.next_if(|f| f.at <= start.elapsed()) {
            let from = start.elapsed();
            progress(&format!(
                "💥 {:>6.1}s kill {}",
                from.as_secs_f64(),
                f.target
            ));
            let result = kill(dir, &f.target, bins, reports.len() + 1);
            let to = start.elapsed();
            let back_after = to - from;
            match &result {
                Ok(()) => progress(&format!(
                    "✅ {:>6.1}s {} back after {:.1} s",
                    to.as_secs_f64(),
                    f.target,
                    back_after.as_secs_f64()
                )),
                Err(e) => progress(&format!("❌ {} did not come back: {e:#}", f.target)),
            }
            windows.push(Window {
                target: f.target.clone(),
                from,
                to,
            });
            reports.push(FaultReport {
                at: from,
                target: f.target,
                back_after,
                error: result.err().map(|e| format!("{e:#}")),
            });
            continue;
        }
        if start.elapsed() >= last_line + Duration::from_secs(10) {
            last_line = start.elapsed();
            let log = traffic.log.lock().unwrap_or_else(|p| p.into_inner());
            let ok: u64 = log.ok.values().sum();
            let gap = log
                .streams
                .values()
                .map(|s| s.longest_gap)
                .max()
                .unwrap_or_default();
            progress(&format!(
                "⏱  {:>6.1}s {} requests ok, {} failed, longest stream gap {:.2} s",
                last_line.as_secs_f64(),
                ok,
                log.failures.len(),
                gap.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = traffic.stop()?;
    progress("⌛ traffic stopped; waiting until every node matches the stores");
    let lab = LabState::load(dir)?;
    let (settled, checked) = settle(&lab, options.settle)?;
    let (converged_after, differences) = match settled {
        Ok(d) => (Some(d), Vec::new()),
        Err(diffs) => (None, diffs),
    };
    let before = traffic::REQUEST_TIMEOUT + Duration::from_millis(500);
    let after = Duration::from_secs(2);
    let mut groups: BTreeMap<(Probe, Cause, Option<&'static str>), u64> = BTreeMap::new();
    let mut unexplained = Vec::new();
    for f in &log.failures {
        let by = classify::explain(f, &windows, before, after).map(|w| w.target.kind());
        *groups.entry((f.probe, f.cause.clone(), by)).or_default() += 1;
        if by.is_none() {
            unexplained.push(f.clone());
        }
    }
    Ok(Report {
        seed: options.seed,
        duration: options.duration,
        faults: reports,
        succeeded: log.ok,
        failed: groups
            .into_iter()
            .map(|((probe, cause, explained_by), count)| FailureGroup {
                probe,
                cause,
                explained_by,
                count,
            })
            .collect(),
        unexplained,
        streams: log.streams,
        converged_after,
        checked,
        differences,
    })
}
