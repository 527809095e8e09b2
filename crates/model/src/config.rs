//! The cluster configuration a cluster publishes under `cilium/cluster-config/<cluster>`.

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::cluster::{MaxConnectedClusters, validate_cluster_id};

/// What a cluster's kvstore offers its readers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The cluster writes sync canaries; readers wait for them.
    #[serde(default)]
    pub synced_canaries: bool,
    /// The data is a KVStoreMesh cache under `cilium/cache/...`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The mesh's maximum number of clusters (255 or 511).
    #[serde(default = "default_max")]
    pub max_connected_clusters: u32,
    /// MCS service exports are published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_exports_enabled: Option<bool>,
}

fn default_max() -> u32 {
    255
}

/// Cilium's `CiliumClusterConfig`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiliumClusterConfig {
    /// Cluster id.
    pub id: u32,
    /// Capabilities.
    pub capabilities: Capabilities,
}

impl CiliumClusterConfig {
    /// The configuration a Plexus cluster publishes.
    pub fn new(id: u32, max: MaxConnectedClusters) -> Self {
        Self {
            id,
            capabilities: Capabilities {
                synced_canaries: true,
                max_connected_clusters: max.as_u32(),
                service_exports_enabled: Some(false),
                cached: false,
            },
        }
    }

    /// Decodes the config of cluster `cluster`.
    pub fn from_json(cluster: &str, raw: &[u8]) -> Result<Self, ModelError> {
        serde_json::from_slice(raw).map_err(|e| ModelError::json("cluster config", cluster, &e))
    }

    /// The mesh maximum it declares.
    pub fn max_connected_clusters(&self) -> Result<MaxConnectedClusters, ModelError> {
        MaxConnectedClusters::from_u32(self.capabilities.max_connected_clusters)
    }

    /// Checks a remote's config against the local mesh settings: a valid id and the same maximum.
    pub fn validate(
        &self,
        cluster: &str,
        local_max: MaxConnectedClusters,
    ) -> Result<(), ModelError> {
        let max = self.max_connected_clusters().map_err(|e| {
            ModelError::field(
                "cluster config",
                cluster,
                "maxConnectedClusters",
                e.to_string(),
            )
        })?;
        if max != local_max {
            return Err(ModelError::field(
                "cluster config",
                cluster,
                "maxConnectedClusters",
                format!(
                    "{} differs from this cluster's {}",
                    max.as_u32(),
                    local_max.as_u32()
                ),
            ));
        }
        validate_cluster_id(self.id, max)
            .map_err(|e| ModelError::field("cluster config", cluster, "id", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"id":1,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}"#;

    #[test]
    fn wire_format_example_round_trips_exactly() {
        let config = CiliumClusterConfig::from_json("cluster1", EXAMPLE.as_bytes()).unwrap();
        assert_eq!(
            config,
            CiliumClusterConfig::new(1, MaxConnectedClusters::Max255)
        );
        assert_eq!(serde_json::to_string(&config).unwrap(), EXAMPLE);
        config
            .validate("cluster1", MaxConnectedClusters::Max255)
            .unwrap();
        let mut cached = config.clone();
        cached.capabilities.cached = true;
        assert_eq!(
            serde_json::to_string(&cached).unwrap(),
            r#"{"id":1,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}"#,
            "Go's field order"
        );
    }

    #[test]
    fn mismatches_are_explained() {
        let config = CiliumClusterConfig::new(300, MaxConnectedClusters::Max511);
        let err = config
            .validate("c9", MaxConnectedClusters::Max255)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cluster config \"c9\": field \"maxConnectedClusters\": 511 differs from this cluster's 255"
        );
        let config = CiliumClusterConfig::new(0, MaxConnectedClusters::Max255);
        assert!(
            config
                .validate("c9", MaxConnectedClusters::Max255)
                .unwrap_err()
                .to_string()
                .contains("field \"id\"")
        );
        assert!(CiliumClusterConfig::from_json("c9", b"{\"id\":\"x\"}").is_err());
    }
}
