//! A node as Cilium publishes it under `cilium/state/nodes/v1/<cluster>/<node>`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::cidr::{self, Cidr};

/// The kind of a node address (`InternalIP`, `ExternalIP`, ...). Unknown kinds are kept.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum NodeAddressType {
    /// `InternalIP`: the underlay address, the node's tunnel endpoint.
    InternalIp,
    /// `ExternalIP`.
    ExternalIp,
    /// `Hostname`.
    Hostname,
    /// `CiliumInternalIP`: the node's router address inside its pod CIDR.
    CiliumInternalIp,
    /// Any other kind, kept verbatim.
    Other(String),
}

impl From<String> for NodeAddressType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "InternalIP" => Self::InternalIp,
            "ExternalIP" => Self::ExternalIp,
            "Hostname" => Self::Hostname,
            "CiliumInternalIP" => Self::CiliumInternalIp,
            _ => Self::Other(s),
        }
    }
}

impl From<NodeAddressType> for String {
    fn from(t: NodeAddressType) -> Self {
        match t {
            NodeAddressType::InternalIp => "InternalIP".into(),
            NodeAddressType::ExternalIp => "ExternalIP".into(),
            NodeAddressType::Hostname => "Hostname".into(),
            NodeAddressType::CiliumInternalIp => "CiliumInternalIP".into(),
            NodeAddressType::Other(s) => s,
        }
    }
}

/// One address of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// Its kind.
    #[serde(rename = "Type")]
    pub kind: NodeAddressType,
    /// The address.
    #[serde(rename = "IP")]
    pub ip: IpAddr,
}

/// A node of a cluster (Cilium's `types.Node`, field names as Go writes them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node name (the last segment of its key).
    #[serde(rename = "Name")]
    pub name: String,
    /// Cluster name.
    #[serde(rename = "Cluster", default)]
    pub cluster: String,
    /// Addresses.
    #[serde(rename = "IPAddresses", default, deserialize_with = "null_vec")]
    pub ip_addresses: Vec<NodeAddress>,
    /// IPv4 pod CIDR.
    #[serde(rename = "IPv4AllocCIDR", default)]
    pub ipv4_alloc_cidr: Option<Cidr>,
    /// More IPv4 pod CIDRs.
    #[serde(
        rename = "IPv4SecondaryAllocCIDRs",
        default,
        with = "cidr::nullable_vec"
    )]
    pub ipv4_secondary_alloc_cidrs: Vec<Cidr>,
    /// IPv6 pod CIDR.
    #[serde(rename = "IPv6AllocCIDR", default)]
    pub ipv6_alloc_cidr: Option<Cidr>,
    /// More IPv6 pod CIDRs.
    #[serde(
        rename = "IPv6SecondaryAllocCIDRs",
        default,
        with = "cidr::nullable_vec"
    )]
    pub ipv6_secondary_alloc_cidrs: Vec<Cidr>,
    /// IPv4 health endpoint ("" when none).
    #[serde(rename = "IPv4HealthIP", default)]
    pub ipv4_health_ip: String,
    /// IPv6 health endpoint.
    #[serde(rename = "IPv6HealthIP", default)]
    pub ipv6_health_ip: String,
    /// IPv4 ingress address.
    #[serde(rename = "IPv4IngressIP", default)]
    pub ipv4_ingress_ip: String,
    /// IPv6 ingress address.
    #[serde(rename = "IPv6IngressIP", default)]
    pub ipv6_ingress_ip: String,
    /// Cluster id.
    #[serde(rename = "ClusterID", default)]
    pub cluster_id: u32,
    /// Where the node came from (`kvstore`, `local`, ...).
    #[serde(rename = "Source", default)]
    pub source: String,
    /// Encryption key index.
    #[serde(rename = "EncryptionKey", default)]
    pub encryption_key: u8,
    /// Node labels.
    #[serde(rename = "Labels", default, deserialize_with = "null_map")]
    pub labels: BTreeMap<String, String>,
    /// Node annotations.
    #[serde(rename = "Annotations", default, deserialize_with = "null_map")]
    pub annotations: BTreeMap<String, String>,
    /// WireGuard public key (base64, "" when none).
    #[serde(rename = "WireguardPubKey", default)]
    pub wireguard_pub_key: String,
    /// Boot id of the node.
    #[serde(rename = "BootID", default)]
    pub boot_id: String,
}

fn null_vec<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn null_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

impl Node {
    /// The first address of a kind.
    pub fn address(&self, kind: &NodeAddressType) -> Option<IpAddr> {
        self.ip_addresses
            .iter()
            .find(|a| &a.kind == kind)
            .map(|a| a.ip)
    }

    /// The tunnel endpoint: the node's `InternalIP`.
    pub fn internal_ip(&self) -> Option<IpAddr> {
        self.address(&NodeAddressType::InternalIp)
    }

    /// Decodes a node stored under relative key `key` (`<node>`).
    pub fn from_json(key: &str, raw: &[u8]) -> Result<Self, ModelError> {
        serde_json::from_slice(raw).map_err(|e| ModelError::json("node", key, &e))
    }

    /// Checks a node received from cluster `cluster` (id `cluster_id`) under relative key `key`.
    pub fn validate(&self, cluster: &str, cluster_id: u32, key: &str) -> Result<(), ModelError> {
        if self.name != key {
            return Err(ModelError::field(
                "node",
                key,
                "Name",
                format!("expected {key:?} (its key), got {:?}", self.name),
            ));
        }
        if self.cluster != cluster {
            return Err(ModelError::field(
                "node",
                key,
                "Cluster",
                format!("expected {cluster:?}, got {:?}", self.cluster),
            ));
        }
        if self.cluster_id != cluster_id {
            return Err(ModelError::field(
                "node",
                key,
                "ClusterID",
                format!("expected {cluster_id}, got {}", self.cluster_id),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of WIRE-FORMAT.md, verbatim.
    const EXAMPLE: &str = r#"{"Name":"node-1","Cluster":"cluster1",
 "IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.3"},{"Type":"CiliumInternalIP","IP":"10.10.1.1"}],
 "IPv4AllocCIDR":{"IP":"10.10.1.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,
 "IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"",
 "IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":1,"Source":"kvstore","EncryptionKey":0,
 "Labels":{},"Annotations":{},"WireguardPubKey":"","BootID":""}"#;

    #[test]
    fn wire_format_example_round_trips_exactly() {
        let node = Node::from_json("node-1", EXAMPLE.as_bytes()).unwrap();
        assert_eq!(node.internal_ip(), Some("172.18.0.3".parse().unwrap()));
        assert_eq!(node.ipv4_alloc_cidr.unwrap().to_string(), "10.10.1.0/24");
        node.validate("cluster1", 1, "node-1").unwrap();
        let compact: String = EXAMPLE.split('\n').map(str::trim_start).collect();
        assert_eq!(serde_json::to_string(&node).unwrap(), compact);
        let value: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        assert_eq!(serde_json::to_value(&node).unwrap(), value);
    }

    #[test]
    fn string_form_cidr_and_missing_fields_are_accepted() {
        let node = Node::from_json(
            "n",
            br#"{"Name":"n","Cluster":"c","IPv4AllocCIDR":"10.10.2.0/24","ClusterID":2}"#,
        )
        .unwrap();
        assert_eq!(node.ipv4_alloc_cidr.unwrap().to_string(), "10.10.2.0/24");
        assert!(node.ip_addresses.is_empty());
    }

    #[test]
    fn malformed_and_foreign_nodes_are_rejected_with_reasons() {
        let err = Node::from_json("n1", br#"{"Name":"n1","Cluster":"c1","ClusterID":"one"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("node \"n1\": malformed JSON: invalid type: string \"one\""),
            "{err}"
        );
        let err = Node::from_json(
            "n1",
            br#"{"Name":"n1","IPAddresses":[{"Type":"InternalIP","IP":"300.1.1.1"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("malformed JSON"), "{err}");
        // Fields added by newer releases are ignored, so newer peers stay readable.
        assert!(Node::from_json("n1", br#"{"Name":"n1","NewField":1}"#).is_ok());
        let node = Node::from_json("node-1", EXAMPLE.as_bytes()).unwrap();
        let err = node
            .validate("cluster2", 2, "node-1")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "node \"node-1\": field \"Cluster\": expected \"cluster2\", got \"cluster1\""
        );
        let err = node
            .validate("cluster1", 1, "node-2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("field \"Name\""), "{err}");
        let err = node
            .validate("cluster1", 3, "node-1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("field \"ClusterID\""), "{err}");
    }
}
