//! ip -> identity entries as Cilium publishes them under `cilium/state/ip/v1/default/<ip>`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::cidr::{Cidr, prefix_len_from_mask};
use crate::cluster::MaxConnectedClusters;
use crate::identity::{NumericIdentity, validate_remote_identity};

/// A named port of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    /// Port name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Port number.
    #[serde(rename = "Port")]
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    #[serde(rename = "Protocol")]
    pub protocol: String,
}

/// Cilium's `IPIdentityPair`: which identity and tunnel endpoint stand behind an IP or prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpIdentityPair {
    /// The address.
    #[serde(rename = "IP")]
    pub ip: IpAddr,
    /// `None` for a host entry keyed by the bare IP; otherwise the mask in base64.
    #[serde(rename = "Mask", default)]
    pub mask: Option<String>,
    /// Tunnel endpoint (the node's IP); "" when none.
    #[serde(rename = "HostIP", default)]
    pub host_ip: String,
    /// Numeric identity.
    #[serde(rename = "ID")]
    pub id: u32,
    /// Encryption key index.
    #[serde(rename = "Key", default)]
    pub key: u8,
    /// Free-form metadata.
    #[serde(rename = "Metadata", default)]
    pub metadata: String,
    /// Namespace of the pod.
    #[serde(
        rename = "K8sNamespace",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_namespace: String,
    /// Name of the pod.
    #[serde(
        rename = "K8sPodName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_pod_name: String,
    /// Service account of the pod.
    #[serde(
        rename = "K8sServiceAccount",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub k8s_service_account: String,
    /// Named ports of the pod.
    #[serde(rename = "NamedPorts", default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

impl IpIdentityPair {
    /// A host entry (`Mask: null`).
    pub fn host(ip: IpAddr, host_ip: Option<IpAddr>, id: u32) -> Self {
        Self {
            ip,
            mask: None,
            host_ip: host_ip.map(|h| h.to_string()).unwrap_or_default(),
            id,
            key: 0,
            metadata: String::new(),
            k8s_namespace: String::new(),
            k8s_pod_name: String::new(),
            k8s_service_account: String::new(),
            named_ports: Vec::new(),
        }
    }

    /// The prefix this entry covers (/32 or /128 for a host entry).
    pub fn prefix(&self) -> Result<Cidr, ModelError> {
        match &self.mask {
            None => Ok(Cidr::host(self.ip)),
            Some(mask) => Cidr::new(self.ip, prefix_len_from_mask(self.ip, mask)?),
        }
    }

    /// The relative key the entry belongs under: `<ip>` for a host entry, else `<ip>/<len>`.
    pub fn key_suffix(&self) -> Result<String, ModelError> {
        Ok(match &self.mask {
            None => self.ip.to_string(),
            Some(_) => self.prefix()?.to_string(),
        })
    }

    /// The tunnel endpoint, if any.
    pub fn tunnel_endpoint(&self) -> Result<Option<IpAddr>, ModelError> {
        if self.host_ip.is_empty() {
            return Ok(None);
        }
        self.host_ip.parse().map(Some).map_err(|_| {
            ModelError::field(
                "ipcache entry",
                &self.ip.to_string(),
                "HostIP",
                format!("{:?} is not an IP address", self.host_ip),
            )
        })
    }

    /// The identity as this cluster uses it (a remote host, 1, is a remote node, 6).
    pub fn identity(&self) -> NumericIdentity {
        NumericIdentity(self.id).normalize_remote()
    }

    /// Decodes an entry stored under relative key `key`.
    pub fn from_json(key: &str, raw: &[u8]) -> Result<Self, ModelError> {
        serde_json::from_slice(raw).map_err(|e| ModelError::json("ipcache entry", key, &e))
    }

    /// Checks that the value matches its relative key (`<ip>` or `<ip>/<len>`).
    pub fn validate_key(&self, key: &str) -> Result<(), ModelError> {
        let expected = self.key_suffix()?;
        if expected != key {
            return Err(ModelError::field(
                "ipcache entry",
                key,
                "IP",
                format!("value is for {expected:?}, not its key"),
            ));
        }
        self.tunnel_endpoint()?;
        Ok(())
    }

    /// Full check of an entry received from remote cluster `cluster_id`.
    pub fn validate_remote(
        &self,
        key: &str,
        cluster_id: u32,
        max: MaxConnectedClusters,
    ) -> Result<(), ModelError> {
        self.validate_key(key)?;
        validate_remote_identity(self.id, cluster_id, max)
            .map_err(|e| ModelError::field("ipcache entry", key, "ID", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"IP":"10.10.1.61","Mask":null,"HostIP":"172.18.0.3","ID":65612,"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"rebel-base-7f9d"}"#;

    #[test]
    fn wire_format_example_round_trips_exactly() {
        let pair = IpIdentityPair::from_json("10.10.1.61", EXAMPLE.as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&pair).unwrap(), EXAMPLE);
        pair.validate_remote("10.10.1.61", 1, MaxConnectedClusters::Max255)
            .unwrap();
        assert_eq!(
            pair.tunnel_endpoint().unwrap(),
            Some("172.18.0.3".parse().unwrap())
        );
        assert_eq!(pair.prefix().unwrap().to_string(), "10.10.1.61/32");
    }

    #[test]
    fn cidr_entries_are_keyed_by_prefix() {
        let raw =
            br#"{"IP":"10.30.0.0","Mask":"//8AAA==","HostIP":"","ID":2,"Key":0,"Metadata":""}"#;
        let pair = IpIdentityPair::from_json("10.30.0.0/16", raw).unwrap();
        pair.validate_key("10.30.0.0/16").unwrap();
        let err = pair.validate_key("10.30.0.0/24").unwrap_err().to_string();
        assert_eq!(
            err,
            "ipcache entry \"10.30.0.0/24\": field \"IP\": value is for \"10.30.0.0/16\", not its key"
        );
        let with_ports = IpIdentityPair {
            named_ports: vec![NamedPort {
                name: "http".into(),
                port: 80,
                protocol: "TCP".into(),
            }],
            ..IpIdentityPair::host("10.10.1.2".parse().unwrap(), None, 70000)
        };
        let json = serde_json::to_string(&with_ports).unwrap();
        assert!(
            json.ends_with(r#""NamedPorts":[{"Name":"http","Port":80,"Protocol":"TCP"}]}"#),
            "{json}"
        );
    }

    #[test]
    fn bad_entries_are_rejected() {
        let err = IpIdentityPair::from_json("x", br#"{"IP":"10.0.0.1","ID":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("malformed JSON"), "{err}");
        let err = IpIdentityPair::from_json("x", br#"{"IP":"nope","ID":1}"#).unwrap_err();
        assert!(err.to_string().contains("malformed JSON"), "{err}");
        let pair = IpIdentityPair::host("10.10.1.5".parse().unwrap(), None, 131072);
        let err = pair
            .validate_remote("10.10.1.5", 1, MaxConnectedClusters::Max255)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("field \"ID\"") && err.contains("outside cluster 1's range"),
            "{err}"
        );
        let bad_host = IpIdentityPair {
            host_ip: "node-1".into(),
            ..pair.clone()
        };
        assert!(
            bad_host
                .validate_key("10.10.1.5")
                .unwrap_err()
                .to_string()
                .contains("HostIP")
        );
        assert_eq!(
            IpIdentityPair::host("10.0.0.1".parse().unwrap(), None, 1)
                .identity()
                .0,
            6
        );
    }
}
