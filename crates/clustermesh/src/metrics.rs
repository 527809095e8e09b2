//! Prometheus metrics of the remote clusters a cluster follows.
//!
//! [`collector`] reads a [`MeshStatus`] at each scrape and exposes it in a daemon's
//! `prometheus-client` registry (the agent's and, for KVStoreMesh, the apiserver's `/metrics`).
//! Names follow Cilium's `cilium_clustermesh_*` metrics with the `plexus_` prefix, labelled by
//! `source_cluster` (us) and `target_cluster` (the remote); as in Cilium,
//! `..._remote_cluster_failures` is a gauge (failures since the remote was configured).

use std::fmt;

use plexus_metrics::prometheus_client::collector::Collector;
use plexus_metrics::prometheus_client::encoding::DescriptorEncoder;
use plexus_metrics::{Labels, counters, gauges};

use crate::mesh::MeshStatus;
use crate::remote_cluster::RemoteClusterStatus;

/// A collector of the remote clusters' status of cluster `source`, read through `status` at
/// each scrape (e.g. `MeshHandle::status`).
pub fn collector(
    source: &str,
    status: impl Fn() -> MeshStatus + Send + Sync + 'static,
) -> MeshCollector {
    MeshCollector {
        source: source.to_string(),
        status: Box::new(status),
    }
}

/// The collector of [`collector`].
pub struct MeshCollector {
    source: String,
    status: Box<dyn Fn() -> MeshStatus + Send + Sync>,
}

impl fmt::Debug for MeshCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCollector")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Collector for MeshCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        encode(&self.source, &(self.status)(), &mut encoder)
    }
}

/// Writes the families of `status` of cluster `source`.
fn encode(source: &str, status: &MeshStatus, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let mine = || -> Labels<'_> { vec![("source_cluster", source)] };
    let per = |f: fn(&RemoteClusterStatus) -> u64| {
        status.remotes.iter().map(move |(name, s)| {
            (
                vec![
                    ("source_cluster", source),
                    ("target_cluster", name.as_str()),
                ],
                f(s),
            )
        })
    };
    gauges(
        encoder,
        "plexus_clustermesh_remote_clusters",
        "Number of remote clusters configured.",
        [(mine(), status.remotes.len() as u64)],
    )?;
    gauges(
        encoder,
        "plexus_clustermesh_remote_cluster_readiness_status",
        "Whether the remote cluster is connected and synced (1) or not (0).",
        per(|s| u64::from(s.protocol.ready)),
    )?;
    gauges(
        encoder,
        "plexus_clustermesh_remote_cluster_connected",
        "Whether the remote cluster's kvstore is reachable with a fresh heartbeat.",
        per(|s| u64::from(s.protocol.connected)),
    )?;
    gauges(
        encoder,
        "plexus_clustermesh_remote_cluster_failures",
        "Failures talking to the remote cluster since it was configured.",
        per(|s| s.protocol.failures),
    )?;
    gauges(
        encoder,
        "plexus_clustermesh_remote_cluster_nodes",
        "Nodes held from the remote cluster.",
        per(|s| s.nodes as u64),
    )?;
    gauges(
        encoder,
        "plexus_clustermesh_remote_cluster_endpoints",
        "ipcache entries held from the remote cluster.",
        per(|s| s.endpoints as u64),
    )?;
    gauges(
        encoder,
        "plexus_clustermesh_remote_cluster_identities",
        "Identities held from the remote cluster.",
        per(|s| s.identities as u64),
    )?;
    gauges(
        encoder,
        "plexus_clustermesh_remote_cluster_services",
        "Shared services held from the remote cluster.",
        per(|s| s.services as u64),
    )?;
    counters(
        encoder,
        "plexus_clustermesh_remote_cluster_rejected_entries",
        "Values from the remote cluster refused by validation.",
        per(|s| s.rejected),
    )?;
    counters(
        encoder,
        "plexus_clustermesh_remote_cluster_rejected_entries_by_reason",
        "Values (or parts of them) from the remote cluster refused, by reason.",
        status.remotes.iter().flat_map(|(name, s)| {
            s.rejected_by.iter().map(move |(reason, n)| {
                (
                    vec![
                        ("source_cluster", source),
                        ("target_cluster", name.as_str()),
                        ("reason", reason.as_str()),
                    ],
                    *n,
                )
            })
        }),
    )?;
    gauges(
        encoder,
        "plexus_clustermesh_config_errors",
        "Remote-cluster configuration files that cannot be used.",
        [(mine(), status.config_errors.len() as u64)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::RemoteStatus;
    use plexus_metrics::Format;
    use plexus_metrics::prometheus_client::registry::Registry;

    #[test]
    fn renders_every_remote_with_labels() {
        let remote = RemoteClusterStatus {
            protocol: RemoteStatus {
                name: "c2".into(),
                cluster_id: Some(2),
                connected: true,
                ready: true,
                synced: vec![],
                cached: false,
                failures: 3,
                last_failure: None,
                last_failure_kind: None,
            },
            nodes: 2,
            endpoints: 10_000,
            identities: 5,
            services: 1,
            rejected: 7,
            rejected_by: [
                ("foreign-cluster".to_string(), 5),
                ("invalid".to_string(), 2),
            ]
            .into(),
        };
        let status = MeshStatus {
            remotes: [("c2".to_string(), remote)].into(),
            config_errors: vec!["x".into()],
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector("c1", move || status.clone())));
        let text = plexus_metrics::encode(&registry, Format::Text).unwrap();
        for line in [
            "# TYPE plexus_clustermesh_remote_clusters gauge",
            "# TYPE plexus_clustermesh_remote_cluster_failures gauge",
            "plexus_clustermesh_remote_clusters{source_cluster=\"c1\"} 1",
            "plexus_clustermesh_remote_cluster_readiness_status{source_cluster=\"c1\",target_cluster=\"c2\"} 1",
            "plexus_clustermesh_remote_cluster_failures{source_cluster=\"c1\",target_cluster=\"c2\"} 3",
            "plexus_clustermesh_remote_cluster_endpoints{source_cluster=\"c1\",target_cluster=\"c2\"} 10000",
            "plexus_clustermesh_remote_cluster_rejected_entries_total{source_cluster=\"c1\",target_cluster=\"c2\"} 7",
            "plexus_clustermesh_remote_cluster_rejected_entries_by_reason_total{source_cluster=\"c1\",target_cluster=\"c2\",reason=\"foreign-cluster\"} 5",
            "plexus_clustermesh_config_errors{source_cluster=\"c1\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value`, every family has HELP and TYPE.
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 11);
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.split(' ').count() == 2)
        );
    }
}
