//! The model, probes and truth tables of the Kubernetes NetworkPolicy e2e suite
//! (`test/e2e/network/netpol` upstream), for Plexus labs.
//!
//! The model is upstream's: namespaces `x`, `y`, `z` (labelled `ns: <name>`), pods `a`, `b`,
//! `c` in each (labelled `pod: <name>`), each serving TCP 80 and 81 on container ports named
//! `serve-80-tcp` and `serve-81-tcp` (the lab's built-in server answers on each container
//! port with its pod's name and namespace). The namespaces may live in different clusters of
//! one meshed lab ([`Model::create`] takes the placement).
//!
//! A case states what it expects as a [`Reachability`]: a truth table over every ordered pair of
//! pods (`x/a` -> `y/b`), all allowed by default, changed by upstream's helpers
//! ([`Reachability::expect_peer`] and friends). [`validate`] probes every pair at once (one
//! thread per probe, each entering its source pod's network namespace with `setns` and
//! connecting from there with a short timeout) and probes again until the observed table
//! matches or a time limit passes (policy takes a moment to reach every node); it then fails
//! with the expected, observed and comparison tables, printed as upstream prints them. A pod
//! probing itself (loopback) is left out of the comparison, as upstream does: its packets never
//! leave the pod.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::Lab;

/// The model's namespaces.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The ports every pod serves (TCP).
pub const PORTS: [u16; 2] = [80, 81];

/// How long one probe waits for the connection and for the answer. A denied probe takes this
/// long (its SYN is dropped), so it bounds one round of probes.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// One pod of the model, where it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPod {
    /// The context (cluster) it runs in.
    pub cluster: String,
    /// Its namespace (`x`, `y`, `z`).
    pub namespace: String,
    /// Its name (`a`, `b`, `c`).
    pub name: String,
    /// Its address.
    pub ip: String,
    /// Its network namespace (a name under `/run/netns`).
    pub netns: String,
}

impl ModelPod {
    /// `namespace/name`, as upstream names pods in its tables.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The Namespaces and Pods of the model's namespaces `namespaces`, as a manifest for
/// `plexus apply -f`.
pub fn manifest(namespaces: &[&str]) -> String {
    let mut out = String::new();
    for ns in namespaces {
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n---\n"
        );
        for pod in PODS {
            let _ = write!(
                out,
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels:\n    pod: {pod}\nspec:\n  containers:\n  - name: server\n    image: registry.k8s.io/e2e-test-images/agnhost:2.47\n    ports:\n"
            );
            for port in PORTS {
                let _ = write!(
                    out,
                    "    - containerPort: {port}\n      name: serve-{port}-tcp\n      protocol: TCP\n"
                );
            }
            out.push_str("---\n");
        }
    }
    out
}

/// The model running in a lab: every pod with its address and network namespace.
#[derive(Clone, Debug)]
pub struct Model {
    /// Pods in upstream's order: `x/a`, `x/b`, `x/c`, `y/a`, ...
    pub pods: Vec<ModelPod>,
}

impl Model {
    /// Creates the model in `lab` (up): each namespace in the cluster `placement` names for
    /// it (`(namespace, context)`, every model namespace once), then reads back where each
    /// pod runs. It does not wait for the pods' servers: validate the all-allowed table for
    /// that.
    pub fn create(lab: &Lab, placement: &[(&str, &str)]) -> Self {
        let mut by_cluster: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (ns, ctx) in placement {
            by_cluster.entry(ctx).or_default().push(ns);
        }
        for (ctx, namespaces) in &by_cluster {
            let file = lab.write(&format!("netpol-model-{ctx}.yaml"), &manifest(namespaces));
            lab.ok(&[
                "--context",
                ctx,
                "apply",
                "-f",
                file.to_str().expect("UTF-8"),
            ]);
        }
        let mut pods = Vec::new();
        for ns in NAMESPACES {
            let (_, ctx) = placement
                .iter()
                .find(|(n, _)| *n == ns)
                .unwrap_or_else(|| panic!("the placement {placement:?} has no namespace {ns}"));
            let listed = lab.json(&["--context", ctx, "get", "pods", "-n", ns, "-o", "json"]);
            for name in PODS {
                let p = listed
                    .as_array()
                    .and_then(|a| a.iter().find(|p| p["name"] == name))
                    .unwrap_or_else(|| panic!("pod {ns}/{name} not in cluster {ctx}: {listed}"));
                let field = |f: &str| -> String {
                    p[f].as_str()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| panic!("pod {ns}/{name} in {ctx} has no {f}: {p}"))
                        .to_string()
                };
                pods.push(ModelPod {
                    cluster: ctx.to_string(),
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    ip: field("ip"),
                    netns: field("netns"),
                });
            }
        }
        Self { pods }
    }

    /// The pods' keys in order (`x/a`, ...).
    pub fn keys(&self) -> Vec<String> {
        self.pods.iter().map(ModelPod::key).collect()
    }

    /// The pod `key` (`x/a`).
    pub fn pod(&self, key: &str) -> &ModelPod {
        self.pods
            .iter()
            .find(|p| p.key() == key)
            .unwrap_or_else(|| panic!("no pod {key} in the model"))
    }

    /// A table with every pair set to `value`.
    pub fn table(&self, value: bool) -> TruthTable {
        TruthTable::new(self.keys(), value)
    }
}

/// A table of booleans for every ordered pair of items (`from` -> `to`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruthTable {
    items: Vec<String>,
    // Row-major: values[from * n + to].
    values: Vec<bool>,
}

impl TruthTable {
    /// Every pair of `items` set to `value`.
    pub fn new(items: Vec<String>, value: bool) -> Self {
        let n = items.len();
        Self {
            items,
            values: vec![value; n * n],
        }
    }

    /// The items (rows and columns).
    pub fn items(&self) -> &[String] {
        &self.items
    }

    fn index(&self, item: &str) -> usize {
        self.items
            .iter()
            .position(|i| i == item)
            .unwrap_or_else(|| panic!("{item} is not an item of the table {:?}", self.items))
    }

    /// The value of `from` -> `to`.
    pub fn get(&self, from: &str, to: &str) -> bool {
        self.values[self.index(from) * self.items.len() + self.index(to)]
    }

    /// Sets `from` -> `to`.
    pub fn set(&mut self, from: &str, to: &str, value: bool) {
        let i = self.index(from) * self.items.len() + self.index(to);
        self.values[i] = value;
    }

    /// The pairs whose values differ from `other`'s (same items), loopback (`a` -> `a`) left
    /// out.
    pub fn wrong(&self, other: &TruthTable) -> Vec<(String, String)> {
        assert_eq!(self.items, other.items, "tables of different items");
        let mut out = Vec::new();
        for from in &self.items {
            for to in &self.items {
                if from != to && self.get(from, to) != other.get(from, to) {
                    out.push((from.clone(), to.clone()));
                }
            }
        }
        out
    }

    /// A table that is true where both agree (loopback counts as agreeing).
    pub fn compare(&self, other: &TruthTable) -> TruthTable {
        let mut out = TruthTable::new(self.items.clone(), true);
        for (from, to) in self.wrong(other) {
            out.set(&from, &to, false);
        }
        out
    }

    /// Upstream's picture: a header of the items, then one row per `from`, `.` for true and
    /// `X` for false, tab-separated.
    pub fn pretty(&self) -> String {
        let mut out = format!("-\t{}\n", self.items.join("\t"));
        for from in &self.items {
            out.push_str(from);
            for to in &self.items {
                out.push('\t');
                out.push(if self.get(from, to) { '.' } else { 'X' });
            }
            out.push('\n');
        }
        out
    }
}

/// A set of pods by namespace and name, as upstream's `Peer`: `None` matches any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer<'a> {
    /// The namespace, or any.
    pub namespace: Option<&'a str>,
    /// The pod name, or any.
    pub pod: Option<&'a str>,
}

impl<'a> Peer<'a> {
    /// Every pod.
    pub fn any() -> Self {
        Self::default()
    }

    /// Every pod of namespace `ns`.
    pub fn ns(ns: &'a str) -> Self {
        Self {
            namespace: Some(ns),
            pod: None,
        }
    }

    /// The pod `ns/pod`.
    pub fn pod(ns: &'a str, pod: &'a str) -> Self {
        Self {
            namespace: Some(ns),
            pod: Some(pod),
        }
    }

    /// Whether the pod `key` (`ns/pod`) is in the set.
    pub fn matches(&self, key: &str) -> bool {
        let (ns, pod) = key.split_once('/').unwrap_or((key, ""));
        self.namespace.is_none_or(|n| n == ns) && self.pod.is_none_or(|p| p == pod)
    }
}

/// What a case expects: a [`TruthTable`] built with upstream's helpers, all pairs allowed to
/// begin with (or all denied, [`Reachability::new`]).
#[derive(Clone, Debug)]
pub struct Reachability {
    /// The expected table.
    pub expected: TruthTable,
}

impl Reachability {
    /// Every pair of `model`'s pods set to `allowed`.
    pub fn new(model: &Model, allowed: bool) -> Self {
        Self {
            expected: model.table(allowed),
        }
    }

    /// `from` -> `to` (`ns/pod`) is `allowed`.
    pub fn expect(mut self, from: &str, to: &str, allowed: bool) -> Self {
        self.expected.set(from, to, allowed);
        self
    }

    /// Every pair from a pod of `from` to a pod of `to` is `allowed`.
    pub fn expect_peer(mut self, from: Peer<'_>, to: Peer<'_>, allowed: bool) -> Self {
        let items = self.expected.items().to_vec();
        for f in items.iter().filter(|i| from.matches(i)) {
            for t in items.iter().filter(|i| to.matches(i)) {
                self.expected.set(f, t, allowed);
            }
        }
        self
    }

    /// Every pod to `to` (`ns/pod`) is `allowed`.
    pub fn expect_all_ingress(self, to: &str, allowed: bool) -> Self {
        let (ns, pod) = to.split_once('/').expect("ns/pod");
        self.expect_peer(Peer::any(), Peer::pod(ns, pod), allowed)
    }

    /// `from` (`ns/pod`) to every pod is `allowed`.
    pub fn expect_all_egress(self, from: &str, allowed: bool) -> Self {
        let (ns, pod) = from.split_once('/').expect("ns/pod");
        self.expect_peer(Peer::pod(ns, pod), Peer::any(), allowed)
    }
}

/// Whether a TCP connection from `from` to `to:port` gets `to`'s own answer within
/// [`PROBE_TIMEOUT`] (connect) plus [`PROBE_TIMEOUT`] (answer). Runs on the calling thread,
/// which it moves into `from`'s network namespace: call it on a thread of its own.
///
/// A refused or timed-out connection, or an answer from another pod, is `false`; not being
/// able to enter the namespace fails the test (that is the harness broken, not a denial).
pub fn probe(from: &ModelPod, to: &ModelPod, port: u16) -> bool {
    let path = format!("/run/netns/{}", from.netns);
    let netns = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("open {path} (pod {}): {e}", from.key()));
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("enter {path} (pod {}): {e}", from.key()));
    let addr: SocketAddr = format!("{}:{port}", to.ip)
        .parse()
        .unwrap_or_else(|e| panic!("address of pod {}: {:?}: {e}", to.key(), to.ip));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    // The built-in server answers once it has read something (or after its own read timeout):
    // say something, so the answer comes at once.
    let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
    if stream.write_all(b"netpol probe\n").is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut answer);
    serde_json::from_slice::<Value>(answer.trim_ascii())
        .is_ok_and(|v| v["pod"] == to.name.as_str() && v["namespace"] == to.namespace.as_str())
}

/// Probes every ordered pair of `model`'s pods on TCP `port`, all at once (one thread each);
/// the observed table. Loopback pairs are probed too (shown, never compared).
pub fn probe_all(model: &Model, port: u16) -> TruthTable {
    let mut observed = model.table(false);
    let results: Vec<(String, String, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = model
            .pods
            .iter()
            .flat_map(|from| model.pods.iter().map(move |to| (from, to)))
            .map(|(from, to)| {
                let h = std::thread::Builder::new()
                    .name(format!("probe {} {}", from.key(), to.key()))
                    .spawn_scoped(s, move || probe(from, to, port))
                    .expect("spawn a probe thread");
                (from.key(), to.key(), h)
            })
            .collect();
        handles
            .into_iter()
            .map(|(f, t, h)| {
                let ok = h
                    .join()
                    .unwrap_or_else(|_| panic!("the probe {f} -> {t} panicked"));
                (f, t, ok)
            })
            .collect()
    });
    for (f, t, ok) in results {
        observed.set(&f, &t, ok);
    }
    observed
}

/// Probes `model` on TCP `port` until the observed table matches `expected` (loopback left
/// out) or `limit` passes; `Ok` with the number of rounds it took, or `Err` with upstream's
/// report: the expected, observed and comparison tables and the number of wrong pairs.
pub fn validate(
    model: &Model,
    port: u16,
    expected: &Reachability,
    limit: Duration,
) -> Result<u32, String> {
    let start = Instant::now();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let observed = probe_all(model, port);
        let wrong = expected.expected.wrong(&observed);
        if wrong.is_empty() {
            return Ok(rounds);
        }
        if start.elapsed() > limit {
            return Err(format!(
                "TCP/{port}: {} wrong results after {rounds} rounds in {:?}: {}\n\
                 expected:\n{}\nobserved:\n{}\ncomparison (X = wrong):\n{}",
                wrong.len(),
                start.elapsed(),
                wrong
                    .iter()
                    .map(|(f, t)| format!("{f}->{t}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                expected.expected.pretty(),
                observed.pretty(),
                expected.expected.compare(&observed).pretty()
            ));
        }
        // A denied probe already took PROBE_TIMEOUT; a round of allowed ones is quick, so
        // pace those a little.
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let pods = NAMESPACES
            .iter()
            .flat_map(|ns| {
                PODS.iter().map(move |p| ModelPod {
                    cluster: "cluster1".into(),
                    namespace: ns.to_string(),
                    name: p.to_string(),
                    ip: "10.0.0.1".into(),
                    netns: String::new(),
                })
            })
            .collect();
        Model { pods }
    }

    #[test]
    fn helpers_set_the_pairs_upstream_sets() {
        let m = model();
        assert_eq!(m.keys()[..4], ["x/a", "x/b", "x/c", "y/a"]);
        let r = Reachability::new(&m, true)
            .expect_peer(Peer::any(), Peer::ns("x"), false)
            .expect("y/b", "x/a", true);
        let t = &r.expected;
        assert!(!t.get("z/c", "x/b") && !t.get("x/a", "x/c") && t.get("x/a", "y/c"));
        assert!(t.get("y/b", "x/a") && !t.get("y/a", "x/a"));
        let r = Reachability::new(&m, true)
            .expect_all_ingress("x/a", false)
            .expect_all_egress("y/c", false);
        let t = &r.expected;
        assert!(!t.get("z/c", "x/a") && !t.get("y/c", "z/a") && t.get("z/c", "x/b"));
        assert!(Peer::pod("x", "a").matches("x/a") && !Peer::pod("x", "a").matches("x/b"));
        assert!(Peer::ns("y").matches("y/c") && !Peer::ns("y").matches("x/c"));
    }

    #[test]
    fn loopback_is_never_wrong_and_tables_print_as_upstream() {
        let items = vec!["x/a".to_string(), "x/b".to_string()];
        let mut expected = TruthTable::new(items.clone(), true);
        expected.set("x/a", "x/a", false);
        let mut observed = TruthTable::new(items, true);
        assert!(expected.wrong(&observed).is_empty());
        observed.set("x/b", "x/a", false);
        assert_eq!(expected.wrong(&observed), [("x/b".into(), "x/a".into())]);
        assert_eq!(observed.pretty(), "-\tx/a\tx/b\nx/a\t.\t.\nx/b\tX\t.\n");
        assert_eq!(
            expected.compare(&observed).pretty(),
            "-\tx/a\tx/b\nx/a\t.\t.\nx/b\tX\t.\n"
        );
    }

    #[test]
    fn the_manifest_names_the_ports_and_labels_as_upstream() {
        let m = manifest(&["x"]);
        assert!(m.contains("kind: Namespace\nmetadata:\n  name: x\n  labels:\n    ns: x\n"));
        assert_eq!(m.matches("kind: Pod").count(), 3);
        assert!(m.contains("    pod: b\n"));
        assert!(m.contains("name: serve-80-tcp") && m.contains("name: serve-81-tcp"));
    }
}
