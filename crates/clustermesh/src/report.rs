//! The JSON shape of a mesh's status, as daemons serve it and `plexus clustermesh status -o json`
//! prints it.
//!
//! Field names follow Cilium's `RemoteCluster` status model (kebab-case): `name`, `ready`,
//! `connected`, `status`, `num-nodes`, `num-endpoints`, `num-identities`, `num-shared-services`,
//! `num-failures`, `last-failure`, `synced`, `config`, plus Plexus's `num-rejected`,
//! `rejected-by-reason` and
//! `last-failure-kind` (the failure classified, e.g.
//! `{"kvstore": {"tls": {"side": "we-refused", "reason": "unknown-issuer"}}}`).

use serde::{Deserialize, Serialize};

use crate::failure::FailureKind;
use crate::mesh::MeshStatus;
use crate::remote_cluster::RemoteClusterStatus;
use plexus_model::keys::StateKind;

/// Which kinds have delivered their initial listing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SyncedReport {
    /// Nodes.
    pub nodes: bool,
    /// ipcache entries.
    pub endpoints: bool,
    /// Identities.
    pub identities: bool,
    /// Services.
    pub services: bool,
}

/// What was accepted of the remote's cluster config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RemoteConfigReport {
    /// The remote's cluster id, once validated.
    pub cluster_id: Option<u32>,
    /// Whether the remote is read through a KVStoreMesh cache.
    pub kvstoremesh: bool,
}

/// One remote cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RemoteClusterReport {
    /// Remote cluster name.
    pub name: String,
    /// Connected and every kind synced.
    pub ready: bool,
    /// Connected and heartbeat fresh.
    pub connected: bool,
    /// One line for people.
    pub status: String,
    /// Nodes held.
    pub num_nodes: usize,
    /// ipcache entries held.
    pub num_endpoints: usize,
    /// Identities held.
    pub num_identities: usize,
    /// Shared services held.
    pub num_shared_services: usize,
    /// Values refused by validation.
    pub num_rejected: u64,
    /// Refusals by reason (`foreign-cluster`, `value-too-large`, `entry-limit`,
    /// `address-not-owned`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rejected_by_reason: std::collections::BTreeMap<String, u64>,
    /// Failures so far.
    pub num_failures: u64,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// The kind of the last failure (what the CLI's hints come from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_kind: Option<FailureKind>,
    /// Synced kinds.
    pub synced: SyncedReport,
    /// The remote's accepted config.
    pub config: RemoteConfigReport,
}

/// The status of every remote plus unusable configuration files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MeshReport {
    /// Every configured remote, by name.
    pub remote_clusters: Vec<RemoteClusterReport>,
    /// Configuration files that could not be used.
    pub config_errors: Vec<String>,
}

impl From<&RemoteClusterStatus> for RemoteClusterReport {
    fn from(s: &RemoteClusterStatus) -> Self {
        let p = &s.protocol;
        let has = |k| p.synced.contains(&k);
        let status = if p.ready {
            "ready".to_string()
        } else if p.connected {
            "connected, waiting for initial sync".to_string()
        } else {
            match &p.last_failure {
                Some(f) => format!("not connected: {f}"),
                None => "connecting".to_string(),
            }
        };
        Self {
            name: p.name.clone(),
            ready: p.ready,
            connected: p.connected,
            status,
            num_nodes: s.nodes,
            num_endpoints: s.endpoints,
            num_identities: s.identities,
            num_shared_services: s.services,
            num_rejected: s.rejected,
            rejected_by_reason: s.rejected_by.clone(),
            num_failures: p.failures,
            last_failure: p.last_failure.clone(),
            last_failure_kind: p.last_failure_kind.clone(),
            synced: SyncedReport {
                nodes: has(StateKind::Nodes),
                endpoints: has(StateKind::Ip),
                identities: has(StateKind::Identities),
                services: has(StateKind::Services),
            },
            config: RemoteConfigReport {
                cluster_id: p.cluster_id,
                kvstoremesh: p.cached,
            },
        }
    }
}

impl From<&MeshStatus> for MeshReport {
    fn from(s: &MeshStatus) -> Self {
        Self {
            remote_clusters: s.remotes.values().map(RemoteClusterReport::from).collect(),
            config_errors: s.config_errors.clone(),
        }
    }
}
