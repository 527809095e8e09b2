//! Prometheus metrics of the remote clusters a cluster follows.
//!
//! [`render`] turns a [`MeshStatus`] into the Prometheus text exposition format; the daemons
//! serve it on `/metrics`. Names follow Cilium's `cilium_clustermesh_*` metrics with the
//! `plexus_` prefix, labelled by `source_cluster` (us) and `target_cluster` (the remote).

use std::fmt::Write;

use crate::mesh::MeshStatus;

/// Renders the mesh status of cluster `source` as Prometheus text.
pub fn render(source: &str, status: &MeshStatus) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, kind: &str, samples: Vec<(Option<&str>, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (target, value) in samples {
            match target {
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "{name}{{source_cluster=\"{source}\",target_cluster=\"{t}\"}} {value}"
                    );
                }
                None => {
                    let _ = writeln!(out, "{name}{{source_cluster=\"{source}\"}} {value}");
                }
            }
        }
    };
    let remotes: Vec<_> = status.remotes.iter().collect();
    let per = |f: &dyn Fn(&crate::remote_cluster::RemoteClusterStatus) -> f64| -> Vec<(Option<&str>, f64)> {
        remotes.iter().map(|(name, s)| (Some(name.as_str()), f(s))).collect()
    };
    family(
        "plexus_clustermesh_remote_clusters",
        "Number of remote clusters configured.",
        "gauge",
        vec![(None, remotes.len() as f64)],
    );
    family(
        "plexus_clustermesh_remote_cluster_readiness_status",
        "Whether the remote cluster is connected and synced (1) or not (0).",
        "gauge",
        per(&|s| f64::from(u8::from(s.protocol.ready))),
    );
    family(
        "plexus_clustermesh_remote_cluster_connected",
        "Whether the remote cluster's kvstore is reachable with a fresh heartbeat.",
        "gauge",
        per(&|s| f64::from(u8::from(s.protocol.connected))),
    );
    family(
        "plexus_clustermesh_remote_cluster_failures",
        "Failures talking to the remote cluster since it was configured.",
        "counter",
        per(&|s| s.protocol.failures as f64),
    );
    family(
        "plexus_clustermesh_remote_cluster_nodes",
        "Nodes held from the remote cluster.",
        "gauge",
        per(&|s| s.nodes as f64),
    );
    family(
        "plexus_clustermesh_remote_cluster_endpoints",
        "ipcache entries held from the remote cluster.",
        "gauge",
        per(&|s| s.endpoints as f64),
    );
    family(
        "plexus_clustermesh_remote_cluster_identities",
        "Identities held from the remote cluster.",
        "gauge",
        per(&|s| s.identities as f64),
    );
    family(
        "plexus_clustermesh_remote_cluster_services",
        "Shared services held from the remote cluster.",
        "gauge",
        per(&|s| s.services as f64),
    );
    family(
        "plexus_clustermesh_remote_cluster_rejected_entries_total",
        "Values from the remote cluster refused by validation.",
        "counter",
        per(&|s| s.rejected as f64),
    );
    family(
        "plexus_clustermesh_config_errors",
        "Remote-cluster configuration files that cannot be used.",
        "gauge",
        vec![(None, status.config_errors.len() as f64)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::RemoteStatus;
    use crate::remote_cluster::RemoteClusterStatus;

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
        };
        let status = MeshStatus {
            remotes: [("c2".to_string(), remote)].into(),
            config_errors: vec!["x".into()],
        };
        let text = render("c1", &status);
        for line in [
            "# TYPE plexus_clustermesh_remote_clusters gauge",
            "plexus_clustermesh_remote_clusters{source_cluster=\"c1\"} 1",
            "plexus_clustermesh_remote_cluster_readiness_status{source_cluster=\"c1\",target_cluster=\"c2\"} 1",
            "plexus_clustermesh_remote_cluster_failures{source_cluster=\"c1\",target_cluster=\"c2\"} 3",
            "plexus_clustermesh_remote_cluster_endpoints{source_cluster=\"c1\",target_cluster=\"c2\"} 10000",
            "plexus_clustermesh_remote_cluster_rejected_entries_total{source_cluster=\"c1\",target_cluster=\"c2\"} 7",
            "plexus_clustermesh_config_errors{source_cluster=\"c1\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value`, every family has HELP and TYPE.
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 10);
        assert!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .all(|l| l.split(' ').count() == 2)
        );
    }
}
