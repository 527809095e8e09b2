//! Transparent encryption (WireGuard) as the agent reports it: `GET /v1/encryption`,
//! `POST /v1/encryption/rotate-key`, and the summary in `GET /v1/status`.
//!
//! These are the JSON of `plexus encryption status -o json` (an array of [`EncryptionReport`],
//! one per node asked) and of `plexus encryption rotate-key -o json`; field names are
//! kebab-case and part of the contract (docs/agent.md shows an example). Keys are WireGuard's
//! standard base64, times are Unix seconds.

use serde::{Deserialize, Serialize};

/// How pod traffic between nodes is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncryptionMode {
    /// In the clear.
    #[default]
    Disabled,
    /// WireGuard, in userspace (the node's `plexus-wireguard` device).
    Wireguard,
}

/// The encryption line of `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EncryptionSummary {
    /// The mode.
    pub mode: EncryptionMode,
    /// WireGuard peers configured on the device at the last sync (0 when disabled).
    pub peers: usize,
    /// Whether the device answered at the last sync (false when disabled).
    pub device_reachable: bool,
}

/// `GET /v1/encryption`: one node's encryption, its device and its peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EncryptionReport {
    /// The node answering.
    pub node: String,
    /// Its cluster.
    pub cluster: String,
    /// Its underlay address.
    pub node_ip: String,
    /// The mode.
    pub mode: EncryptionMode,
    /// Strict mode: pod traffic to a node without a configured peer is dropped.
    pub strict: bool,
    /// The node's public key, as its Node publishes it (`None` when disabled).
    pub public_key: Option<String>,
    /// The UDP port the device listens on (`None` when disabled or unknown).
    pub port: Option<u16>,
    /// The device's UAPI socket (`None` when disabled).
    pub socket: Option<String>,
    /// Whether the device answered just now.
    pub device_reachable: bool,
    /// Why it did not, or why the last sync failed.
    pub device_error: Option<String>,
    /// When the device last matched the desired state (Unix seconds).
    pub last_synced: Option<u64>,
    /// The peers: every peer the device has and every one the node wants, by public key.
    pub peers: Vec<PeerReport>,
}

/// One WireGuard peer of [`EncryptionReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PeerReport {
    /// The peer's public key.
    pub public_key: String,
    /// The peer node's cluster (`None` for a peer the node does not want, about to go).
    pub cluster: Option<String>,
    /// The peer node's name.
    pub node: Option<String>,
    /// The peer node's underlay address.
    pub node_ip: Option<String>,
    /// Where its packets go, as the device has it (the desired one when not configured yet).
    pub endpoint: Option<String>,
    /// Its allowed IPs, as the device has them (the desired ones when not configured yet).
    pub allowed_ips: Vec<String>,
    /// The last completed handshake (Unix seconds; `None`: never).
    pub last_handshake: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Whether the device has this peer.
    pub configured: bool,
    /// Whether the node wants this peer (a node it knows publishes this key).
    pub desired: bool,
}

/// `POST /v1/encryption/rotate-key`: what changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RotateKeyReport {
    /// The node.
    pub node: String,
    /// Its previous public key.
    pub old_public_key: String,
    /// Its new public key, now published in its Node.
    pub public_key: String,
    /// Whether the device took the new key (if not, it gets it when it answers again).
    pub device_updated: bool,
    /// Why the device did not take it.
    pub device_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_the_cli_contract() {
        let report = EncryptionReport {
            node: "n1".into(),
            cluster: "c1".into(),
            node_ip: "192.168.1.1".into(),
            mode: EncryptionMode::Wireguard,
            strict: true,
            public_key: Some("pk1".into()),
            port: Some(51871),
            socket: Some("/run/wireguard/plexus_wg0.sock".into()),
            device_reachable: true,
            device_error: None,
            last_synced: Some(1_765_083_600),
            peers: vec![PeerReport {
                public_key: "pk2".into(),
                cluster: Some("c2".into()),
                node: Some("m1".into()),
                node_ip: Some("192.168.2.1".into()),
                endpoint: Some("192.168.2.1:51871".into()),
                allowed_ips: vec!["192.168.2.1/32".into()],
                last_handshake: Some(1_765_083_590),
                rx_bytes: 10,
                tx_bytes: 20,
                configured: true,
                desired: true,
            }],
        };
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({
                "node": "n1", "cluster": "c1", "node-ip": "192.168.1.1", "mode": "wireguard",
                "strict": true, "public-key": "pk1", "port": 51871,
                "socket": "/run/wireguard/plexus_wg0.sock", "device-reachable": true,
                "device-error": null, "last-synced": 1_765_083_600,
                "peers": [{
                    "public-key": "pk2", "cluster": "c2", "node": "m1",
                    "node-ip": "192.168.2.1", "endpoint": "192.168.2.1:51871",
                    "allowed-ips": ["192.168.2.1/32"], "last-handshake": 1_765_083_590,
                    "rx-bytes": 10, "tx-bytes": 20, "configured": true, "desired": true,
                }],
            })
        );
        assert_eq!(
            serde_json::to_value(EncryptionSummary::default()).unwrap(),
            serde_json::json!({"mode": "disabled", "peers": 0, "device-reachable": false})
        );
    }
}
