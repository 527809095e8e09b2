//! The endpoint records agents publish for the cluster-wide controllers.
//!
//! Each agent writes one record per local pod under
//! `plexus/endpoints/v1/<namespace>/<pod>` (under its lease): the pod's address, node, labels,
//! readiness and named container ports. The apiserver's service controller selects backends
//! from them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// One pod, as its agent publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointRecord {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Its address.
    pub ip: IpAddr,
    /// The node it runs on.
    pub node: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether it takes traffic.
    #[serde(default = "yes")]
    pub ready: bool,
    /// Named container ports.
    #[serde(default)]
    pub ports: BTreeMap<String, ContainerPort>,
}

fn yes() -> bool {
    true
}

impl EndpointRecord {
    /// The record's key relative to [`crate::ENDPOINTS_PREFIX`].
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}
