//! Which component the soak kills, and when: a pure, seeded schedule.
//!
//! The same seed, length and lab give the same faults, so a failing soak reproduces. Faults
//! come in rounds of four, one of each kind (agent, apiserver, etcd, kube-dns) in a seeded
//! order, so a short soak still kills every kind; the cluster and node are drawn at random.
//! A fault is due at its time; the runner performs them one after the other (a fault waits
//! until the previous one's component is back).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// A component the soak kills (SIGKILL) and brings back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// A node's agent; the lab starts a new one, which takes the pinned datapath over.
    Agent {
        /// Its cluster.
        cluster: String,
        /// Its node.
        node: String,
    },
    /// A cluster's apiserver (and with it its etcd); the lab starts it again.
    Apiserver {
        /// The cluster.
        cluster: String,
    },
    /// A cluster's etcd alone; the apiserver that supervises it starts it again.
    Etcd {
        /// The cluster.
        cluster: String,
    },
    /// A cluster's `kube-dns` pod's process; the lab starts it again.
    KubeDns {
        /// The cluster.
        cluster: String,
    },
}

impl Target {
    /// The cluster the component belongs to.
    pub fn cluster(&self) -> &str {
        match self {
            Self::Agent { cluster, .. }
            | Self::Apiserver { cluster }
            | Self::Etcd { cluster }
            | Self::KubeDns { cluster } => cluster,
        }
    }

    /// `agent`, `apiserver`, `etcd` or `kube-dns`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Agent { .. } => "agent",
            Self::Apiserver { .. } => "apiserver",
            Self::Etcd { .. } => "etcd",
            Self::KubeDns { .. } => "kube-dns",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Agent { node, .. } => write!(f, "agent {node}"),
            other => write!(f, "{} {}", other.kind(), other.cluster()),
        }
    }
}

/// One scheduled kill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// When it is due, from the soak's start.
    #[serde(with = "humantime_serde_secs")]
    pub at: Duration,
    /// What is killed.
    pub target: Target,
}

/// Serializes a duration as seconds with milliseconds (`12.345`).
pub(crate) mod humantime_serde_secs {
    use std::time::Duration;

    /// Seconds as a float.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_millis() as f64) / 1000.0)
    }
}

/// SplitMix64: small, seedable and good enough to pick faults.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A cluster as the schedule sees it: its name and its nodes' names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNodes {
    /// The cluster.
    pub cluster: String,
    /// Its nodes.
    pub nodes: Vec<String>,
}

/// The faults of a soak of `duration` with one fault every `every` (the first after one
/// period, none in the last period so the mesh has time to heal while traffic still runs).
pub fn schedule(
    seed: u64,
    duration: Duration,
    every: Duration,
    clusters: &[ClusterNodes],
) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    if clusters.is_empty() || every.is_zero() {
        return out;
    }
    let mut round: Vec<usize> = Vec::new();
    let mut k = 1u32;
    loop {
        // Up to a quarter of a period late, so faults do not beat in step with the probes.
        let jitter = every.mul_f64(rng.below(250) as f64 / 1000.0);
        let at = every * k + jitter;
        if at + every > duration {
            break;
        }
        if round.is_empty() {
            round = vec![0, 1, 2, 3];
            // Fisher-Yates, seeded.
            for i in (1..round.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                round.swap(i, j);
            }
        }
        let kind = round.pop().unwrap_or(0);
        let c = &clusters[rng.below(clusters.len() as u64) as usize];
        let cluster = c.cluster.clone();
        let target = match kind {
            0 if !c.nodes.is_empty() => Target::Agent {
                node: c.nodes[rng.below(c.nodes.len() as u64) as usize].clone(),
                cluster,
            },
            1 => Target::Apiserver { cluster },
            2 => Target::Etcd { cluster },
            _ => Target::KubeDns { cluster },
        };
        out.push(Fault { at, target });
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Vec<ClusterNodes> {
        (1..=2)
            .map(|i| ClusterNodes {
                cluster: format!("cluster{i}"),
                nodes: vec![format!("cluster{i}-node1"), format!("cluster{i}-node2")],
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let a = schedule(7, Duration::from_secs(600), Duration::from_secs(20), &lab());
        let b = schedule(7, Duration::from_secs(600), Duration::from_secs(20), &lab());
        let c = schedule(8, Duration::from_secs(600), Duration::from_secs(20), &lab());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_kind_is_killed_in_each_round_and_the_last_period_is_quiet() {
        let faults = schedule(1, Duration::from_secs(90), Duration::from_secs(15), &lab());
        // 15, 30, 45, 60 (+ jitter up to 3.75 s); 75 + jitter + 15 > 90.
        assert_eq!(faults.len(), 4, "{faults:?}");
        let mut kinds: Vec<&str> = faults.iter().map(|f| f.target.kind()).collect();
        kinds.sort();
        assert_eq!(kinds, ["agent", "apiserver", "etcd", "kube-dns"]);
        for (i, f) in faults.iter().enumerate() {
            let base = Duration::from_secs(15 * (i as u64 + 1));
            assert!(f.at >= base && f.at <= base + Duration::from_millis(3750));
            assert!(f.at + Duration::from_secs(15) <= Duration::from_secs(90));
        }
    }

    #[test]
    fn targets_name_their_cluster_and_node() {
        let faults = schedule(3, Duration::from_secs(600), Duration::from_secs(20), &lab());
        for f in &faults {
            assert!(lab().iter().any(|c| c.cluster == f.target.cluster()));
            if let Target::Agent { cluster, node } = &f.target {
                assert!(node.starts_with(cluster.as_str()), "{f:?}");
            }
        }
        let agent = Target::Agent {
            cluster: "cluster1".into(),
            node: "cluster1-node2".into(),
        };
        assert_eq!(agent.to_string(), "agent cluster1-node2");
        assert_eq!(
            Target::KubeDns {
                cluster: "cluster2".into()
            }
            .to_string(),
            "kube-dns cluster2"
        );
        assert_eq!(
            serde_json::to_value(&agent).unwrap(),
            serde_json::json!({"kind": "agent", "cluster": "cluster1", "node": "cluster1-node2"})
        );
    }

    #[test]
    fn no_clusters_no_faults() {
        assert!(schedule(1, Duration::from_secs(60), Duration::from_secs(10), &[]).is_empty());
    }
}
