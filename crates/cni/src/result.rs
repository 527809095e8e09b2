//! What the plugin prints on stdout: the CNI result of ADD ([`CniResult`]), the answer to
//! VERSION ([`VersionResult`]) and errors ([`ErrorResult`]), in the JSON of the CNI 1.0
//! specification (with the `version` field of 0.4.0 results when the configuration asks for
//! 0.4.0).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::conf::SUPPORTED_VERSIONS;
use crate::error::CniError;

/// The result of ADD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The result's version (the configuration's).
    pub cni_version: String,
    /// The host-side veth, then the pod interface.
    pub interfaces: Vec<Interface>,
    /// The pod's addresses.
    pub ips: Vec<IpConfig>,
    /// The pod's routes.
    pub routes: Vec<Route>,
    /// DNS settings (none: the runtime configures DNS).
    pub dns: Dns,
}

/// An interface the plugin created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    pub mac: String,
    /// The network namespace holding it, for interfaces inside the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address given to the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"`, only in 0.4.0 results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address in CIDR form, `10.1.0.5/32`.
    pub address: String,
    /// The gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The index into `interfaces` of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route inside the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination in CIDR form.
    pub dst: String,
    /// The next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
}

/// DNS settings; empty fields are left out, so the default is `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The answer to VERSION.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionResult {
    /// The version of this answer.
    pub cni_version: String,
    /// The versions the plugin speaks.
    pub supported_versions: Vec<String>,
}

impl Default for VersionResult {
    fn default() -> Self {
        Self {
            cni_version: "1.0.0".into(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }
    }
}

/// A CNI error as printed on stdout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResult {
    /// The version of this answer.
    pub cni_version: String,
    /// The CNI error code.
    pub code: u32,
    /// The message.
    pub msg: String,
    /// Details, left out when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ErrorResult {
    /// The printed form of `err` in version `cni_version`.
    pub fn new(cni_version: &str, err: &CniError) -> Self {
        Self {
            cni_version: cni_version.to_string(),
            code: err.code,
            msg: err.msg.clone(),
            details: err.details.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn add_result(version: Option<String>) -> CniResult {
        let gw = Ipv4Addr::new(10, 1, 0, 1);
        CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![
                Interface {
                    name: "lxc0123456789a".into(),
                    mac: "02:00:00:00:00:01".into(),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    sandbox: Some("/run/netns/pod".into()),
                },
            ],
            ips: vec![IpConfig {
                version,
                address: "10.1.0.5/32".into(),
                gateway: Some(gw),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(gw),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn add_result_json() {
        let got: Value = serde_json::to_value(add_result(None)).unwrap();
        let want: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0",
                "interfaces":[{"name":"lxc0123456789a","mac":"02:00:00:00:00:01"},
                              {"name":"eth0","mac":"02:00:00:00:00:02","sandbox":"/run/netns/pod"}],
                "ips":[{"address":"10.1.0.5/32","gateway":"10.1.0.1","interface":1}],
                "routes":[{"dst":"0.0.0.0/0","gw":"10.1.0.1"}],
                "dns":{}}"#,
        )
        .unwrap();
        assert_eq!(got, want);
        let back: CniResult = serde_json::from_value(want).unwrap();
        assert_eq!(back, add_result(None));
    }

    #[test]
    fn v040_ips_carry_their_version() {
        let got = serde_json::to_value(add_result(Some("4".into()))).unwrap();
        assert_eq!(got["ips"][0]["version"], json!("4"));
    }

    #[test]
    fn version_json() {
        assert_eq!(
            serde_json::to_string(&VersionResult::default()).unwrap(),
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#
        );
    }

    #[test]
    fn error_json() {
        let err = CniError::new(
            11,
            "requesting an address: the agent failed",
            "cannot reach unix:/x",
        );
        assert_eq!(
            serde_json::to_string(&ErrorResult::new("1.0.0", &err)).unwrap(),
            r#"{"cniVersion":"1.0.0","code":11,"msg":"requesting an address: the agent failed","details":"cannot reach unix:/x"}"#
        );
        let bare = CniError::new(4, "network configuration: name: missing", "");
        assert_eq!(
            serde_json::to_string(&ErrorResult::new("0.4.0", &bare)).unwrap(),
            r#"{"cniVersion":"0.4.0","code":4,"msg":"network configuration: name: missing"}"#
        );
    }
}
