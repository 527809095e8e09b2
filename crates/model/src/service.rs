//! Global services as Cilium publishes them under `cilium/state/services/v1/<cluster>/<ns>/<name>`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// A port of a frontend or backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// `TCP`, `UDP` or `SCTP`.
    #[serde(rename = "Protocol")]
    pub protocol: String,
    /// Port number.
    #[serde(rename = "Port")]
    pub port: u16,
}

/// Ports by port name.
pub type PortConfiguration = BTreeMap<String, PortConfig>;

/// Cilium's `ClusterService`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterService {
    /// Cluster the service belongs to.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Service addresses and their ports.
    #[serde(default)]
    pub frontends: BTreeMap<String, PortConfiguration>,
    /// Ready backend addresses and their (target) ports.
    #[serde(default)]
    pub backends: BTreeMap<String, PortConfiguration>,
    /// Backend hostnames by address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hostnames: BTreeMap<String, String>,
    /// Backend zones by address (kept verbatim).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, serde_json::Value>,
    /// Service labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Endpoint selector.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Whether other clusters may use these backends.
    #[serde(rename = "includeExternal", default)]
    pub include_external: bool,
    /// Whether the service is shared with other clusters.
    #[serde(default)]
    pub shared: bool,
    /// Cluster id.
    #[serde(rename = "clusterID", default)]
    pub cluster_id: u32,
}

const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

impl ClusterService {
    /// Decodes a service stored under relative key `key` (`<ns>/<name>`).
    pub fn from_json(key: &str, raw: &[u8]) -> Result<Self, ModelError> {
        serde_json::from_slice(raw).map_err(|e| ModelError::json("service", key, &e))
    }

    /// Checks a service received from cluster `cluster` (id `cluster_id`) under relative key
    /// `key`: names match the key and the source, addresses are IPs, protocols are known.
    pub fn validate(&self, cluster: &str, cluster_id: u32, key: &str) -> Result<(), ModelError> {
        let err = |field, reason: String| ModelError::field("service", key, field, reason);
        let expected = format!("{}/{}", self.namespace, self.name);
        if expected != key {
            return Err(err(
                "name",
                format!("value is for {expected:?}, not its key"),
            ));
        }
        if self.cluster != cluster {
            return Err(err(
                "cluster",
                format!("expected {cluster:?}, got {:?}", self.cluster),
            ));
        }
        if self.cluster_id != cluster_id {
            return Err(err(
                "clusterID",
                format!("expected {cluster_id}, got {}", self.cluster_id),
            ));
        }
        for (field, map) in [("frontends", &self.frontends), ("backends", &self.backends)] {
            for (ip, ports) in map {
                ip.parse::<IpAddr>()
                    .map_err(|_| err(field, format!("{ip:?} is not an IP address")))?;
                for (name, port) in ports {
                    if !PROTOCOLS.contains(&port.protocol.as_str()) {
                        return Err(err(
                            field,
                            format!(
                                "port {name:?} of {ip}: unknown protocol {:?}",
                                port.protocol
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Cilium's `MCSAPIServiceSpec`, published under `cilium/state/serviceexports/v1/...` when MCS
/// exports are enabled. Fields beyond these are kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct McsApiServiceSpec {
    /// Cluster of the export.
    pub cluster: String,
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Everything else of the spec (ports, type, session affinity, timestamps, ...).
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"cluster":"cluster1","namespace":"default","name":"rebel-base","frontends":{"10.11.0.20":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.10.1.61":{"http":{"Protocol":"TCP","Port":80}}},"labels":{},"selector":{"name":"rebel-base"},"includeExternal":true,"shared":true,"clusterID":1}"#;

    #[test]
    fn wire_format_example_round_trips_exactly() {
        let svc = ClusterService::from_json("default/rebel-base", EXAMPLE.as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&svc).unwrap(), EXAMPLE);
        svc.validate("cluster1", 1, "default/rebel-base").unwrap();
        assert_eq!(svc.backends["10.10.1.61"]["http"].port, 80);
    }

    #[test]
    fn bad_services_are_rejected() {
        let svc = ClusterService::from_json("default/rebel-base", EXAMPLE.as_bytes()).unwrap();
        let err = svc
            .validate("cluster1", 1, "default/other")
            .unwrap_err()
            .to_string();
        assert!(err.contains("field \"name\""), "{err}");
        assert!(svc.validate("cluster2", 2, "default/rebel-base").is_err());
        let mut bad = svc.clone();
        bad.backends
            .insert("backend-1".into(), PortConfiguration::new());
        assert!(
            bad.validate("cluster1", 1, "default/rebel-base")
                .unwrap_err()
                .to_string()
                .contains("not an IP")
        );
        let mut bad = svc;
        bad.frontends
            .get_mut("10.11.0.20")
            .unwrap()
            .get_mut("http")
            .unwrap()
            .protocol = "ICMP".into();
        assert!(
            bad.validate("cluster1", 1, "default/rebel-base")
                .unwrap_err()
                .to_string()
                .contains("unknown protocol")
        );
        let err = ClusterService::from_json("a/b", br#"{"cluster":"c","namespace":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `name`"), "{err}");
    }

    #[test]
    fn mcs_spec_keeps_unknown_fields() {
        let raw = r#"{"cluster":"c1","name":"db","namespace":"default","ports":[{"port":80}],"type":"ClusterSetIP"}"#;
        let spec: McsApiServiceSpec = serde_json::from_str(raw).unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            serde_json::from_str::<serde_json::Value>(raw).unwrap()
        );
    }
}
