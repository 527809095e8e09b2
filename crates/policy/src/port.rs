//! L4 protocols, ports, port ranges and named ports.
//!
//! A port is a number (`0` meaning every port), a range (`port` .. `endPort`) or a named port
//! that is resolved against container ports when a policy is resolved for an endpoint.
//! [`masked_ports`] splits a range into the (port, prefix length) blocks that an eBPF LPM map
//! keyed by port can hold, as Cilium's policy map does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::error::{FieldError, field_err};

/// An L4 protocol a policy may name. `None` where an `Option<Proto>` is used means any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Proto {
    /// TCP (6).
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP (17).
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP (132).
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// Parses `TCP`, `UDP`, `SCTP` (any case); `ANY` gives `None`.
    pub fn parse_any(text: &str, field: &str) -> Result<Option<Self>, FieldError> {
        match text.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Some(Self::Tcp)),
            "UDP" => Ok(Some(Self::Udp)),
            "SCTP" => Ok(Some(Self::Sctp)),
            "ANY" => Ok(None),
            _ => Err(field_err(
                field,
                format!("protocol {text:?} is not supported (TCP, UDP, SCTP or ANY)"),
            )),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// A port as written in a policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    /// A number; 0 means every port.
    Number(u16),
    /// A container port name.
    Named(String),
}

/// One port entry of a rule: protocol (`None` = any), port and optional range end.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// Protocol; `None` means any.
    pub proto: Option<Proto>,
    /// Port or name.
    pub port: PortRef,
    /// Last port of a range (numeric ports only).
    pub end_port: Option<u16>,
}

impl PortSpec {
    /// Builds a spec from its API fields, checking them; `field` is the path for errors.
    pub(crate) fn parse(
        port: Option<&serde_json::Value>,
        end_port: Option<i64>,
        proto: Option<Proto>,
        field: &str,
    ) -> Result<Self, FieldError> {
        let port = match port {
            None => PortRef::Number(0),
            Some(v) => parse_port(v, &format!("{field}.port"))?,
        };
        let end_field = format!("{field}.endPort");
        let end_port = match (end_port, &port) {
            (None, _) => None,
            (Some(_), PortRef::Named(_)) => {
                return Err(field_err(end_field, "a range cannot start at a named port"));
            }
            (Some(_), PortRef::Number(0)) => {
                return Err(field_err(end_field, "a range needs a non-zero port"));
            }
            (Some(end), PortRef::Number(start)) => {
                let end = u16::try_from(end)
                    .map_err(|_| field_err(&end_field, format!("{end} is not a port (1-65535)")))?;
                if end < *start {
                    return Err(field_err(
                        end_field,
                        format!("{end} is below the range's first port {start}"),
                    ));
                }
                Some(end)
            }
        };
        Ok(Self {
            proto,
            port,
            end_port,
        })
    }
}

fn parse_port(value: &serde_json::Value, field: &str) -> Result<PortRef, FieldError> {
    let number = |n: i64| {
        u16::try_from(n)
            .map(PortRef::Number)
            .map_err(|_| field_err(field, format!("{n} is not a port (0-65535)")))
    };
    match value {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(n) => number(n),
            None => Err(field_err(field, format!("{n} is not a port (0-65535)"))),
        },
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<i64>() {
                Ok(n) => number(n),
                Err(_) => Err(field_err(field, format!("{s:?} is not a port (0-65535)"))),
            }
        }
        serde_json::Value::String(s) => {
            let valid = (1..=15).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && s.bytes().any(|b| b.is_ascii_lowercase())
                && !s.starts_with('-')
                && !s.ends_with('-')
                && !s.contains("--");
            if valid {
                Ok(PortRef::Named(s.clone()))
            } else {
                Err(field_err(
                    field,
                    format!(
                        "{s:?} is neither a port number nor a port name (1-15 of a-z, 0-9, '-')"
                    ),
                ))
            }
        }
        other => Err(field_err(
            field,
            format!("expected a port number or name, found {other}"),
        )),
    }
}

/// A container port with a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    /// The port number.
    pub port: u16,
    /// Its protocol.
    pub proto: Proto,
}

/// Named ports: name -> the ports carrying it (one for an endpoint; possibly several in the
/// node-wide index used for egress).
pub type NamedPorts = BTreeMap<String, BTreeSet<NamedPort>>;

/// Splits an inclusive port range into `(port, prefix_len)` blocks: each block covers the ports
/// whose top `prefix_len` bits equal `port`'s. `(0, 0)` is every port.
pub fn masked_ports(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut cur, end) = (u32::from(start), u32::from(end));
    while cur <= end {
        let mut size_bits = 0u32;
        while size_bits < 16 {
            let next = size_bits + 1;
            let block = 1u32 << next;
            if cur % block != 0 || cur + block - 1 > end {
                break;
            }
            size_bits = next;
        }
        // `cur` <= 65535 and size_bits <= 16, so both conversions are exact.
        out.push((cur as u16, (16 - size_bits) as u8));
        cur += 1 << size_bits;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges_split_into_aligned_blocks() {
        assert_eq!(masked_ports(80, 80), vec![(80, 16)]);
        assert_eq!(masked_ports(0, 65535), vec![(0, 0)]);
        assert_eq!(masked_ports(8080, 8083), vec![(8080, 14)]);
        assert_eq!(masked_ports(1, 4), vec![(1, 16), (2, 15), (4, 16)]);
        assert_eq!(masked_ports(65535, 65535), vec![(65535, 16)]);
        let total: u32 = masked_ports(1000, 2000)
            .iter()
            .map(|(_, l)| 1u32 << (16 - u32::from(*l)))
            .sum();
        assert_eq!(total, 1001);
    }

    #[test]
    fn port_values() {
        let v = |s: &str| serde_json::Value::String(s.into());
        assert_eq!(parse_port(&v("6379"), "p").unwrap(), PortRef::Number(6379));
        assert_eq!(
            parse_port(&v("http"), "p").unwrap(),
            PortRef::Named("http".into())
        );
        assert!(
            parse_port(&v("70000"), "p")
                .unwrap_err()
                .1
                .contains("not a port")
        );
        assert!(parse_port(&v("Bad_Name"), "p").is_err());
        assert!(parse_port(&serde_json::json!(-1), "p").is_err());
        assert!(parse_port(&serde_json::json!(true), "p").is_err());
        assert!(Proto::parse_any("ICMP", "p").is_err());
        assert_eq!(Proto::parse_any("udp", "p").unwrap(), Some(Proto::Udp));
    }
}
