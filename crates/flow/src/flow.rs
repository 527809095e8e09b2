//! The [`Flow`]: one observed packet event (trace, drop, policy verdict, translation) with
//! everything the agent knows about its endpoints, in the JSON shape of Hubble's `flow.Flow`
//! (`api/v1/flow/flow.proto`, printed by protojson with the proto field names, as
//! `hubble observe -o json` does).
//!
//! The protojson rules this module keeps: field names are the proto names (`IP`, `l4`, `Type`,
//! `Summary`, `drop_reason_desc`, `ipVersion`), enums are written by name, fields holding their
//! zero value (0, "", false, empty lists, the `*_UNKNOWN` enum value) are omitted, `uint64`
//! values are decimal strings, timestamps are RFC 3339 in UTC with 0, 3, 6 or 9 fractional
//! digits. Reading accepts what writing produces, plus numbers where protojson writes strings.
//!
//! Plexus extensions, where Hubble has no field (ours, documented in `docs/observability.md`):
//! `drop_reason_text`, `translation` and `policy_deny`.
//!
//! The types are plain structs with public fields and [`Default`], so a decoder fills what it
//! knows; the constructors ([`Flow::trace`], [`Flow::drop`], [`Flow::policy_verdict`],
//! [`Flow::translation`]) set the fields that make a flow of that kind consistent
//! (verdict, event type, observation point, drop reason).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Cilium monitor message types (`pkg/monitor/api/types.go`), the `type` of [`CiliumEventType`].
pub mod message_type {
    /// A drop notification (`MessageTypeDrop`).
    pub const DROP: i32 = 1;
    /// A trace notification (`MessageTypeTrace`).
    pub const TRACE: i32 = 4;
    /// A policy verdict notification (`MessageTypePolicyVerdict`).
    pub const POLICY_VERDICT: i32 = 5;
    /// A socket trace (`MessageTypeTraceSock`): Hubble's type for service translation flows,
    /// which Plexus uses for the load balancer's translation of a new connection.
    pub const TRACE_SOCK: i32 = 7;
}

pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Serde for protojson `google.protobuf.Timestamp`: RFC 3339, UTC, `Z`, 0/3/6/9 fraction digits.
pub mod timestamp {
    use super::*;

    /// Formats a time as protojson does.
    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    /// Parses an RFC 3339 time with any offset, as UTC.
    pub fn parse(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
        DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
    }

    /// Serializes a time.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    /// Deserializes a time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(|e| de::Error::custom(format!("time {s:?}: {e}")))
    }

    /// The same for an optional time (absent = `None`).
    pub mod option {
        use super::*;

        /// Serializes an optional time (use with `skip_serializing_if = "Option::is_none"`).
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format(t)),
                None => s.serialize_none(),
            }
        }

        /// Deserializes an optional time.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| parse(&s).map_err(|e| de::Error::custom(format!("time {s:?}: {e}"))))
                .transpose()
        }
    }
}

/// Serde for protojson `uint64`: a decimal string; reading also accepts a JSON number.
pub mod uint64_string {
    use super::*;

    /// Serializes as a decimal string.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    /// Deserializes from a decimal string or a number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an unsigned integer or a decimal string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom(format!("negative count {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                v.parse()
                    .map_err(|_| E::custom(format!("{v:?} is not an unsigned integer")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Hubble's `Verdict`: what happened to the packet or connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// No verdict (omitted from JSON).
    #[default]
    #[serde(rename = "VERDICT_UNKNOWN")]
    Unknown,
    /// Forwarded to the next processing entity (traces, allowed policy verdicts).
    #[serde(rename = "FORWARDED")]
    Forwarded,
    /// Dropped; the reason is in `drop_reason_desc`.
    #[serde(rename = "DROPPED")]
    Dropped,
    /// An error occurred while processing.
    #[serde(rename = "ERROR")]
    Error,
    /// Would have been dropped by policy in audit mode.
    #[serde(rename = "AUDIT")]
    Audit,
    /// Redirected to a proxy.
    #[serde(rename = "REDIRECTED")]
    Redirected,
    /// Observed at a trace point without a verdict.
    #[serde(rename = "TRACED")]
    Traced,
    /// An address was translated (the load balancer chose a backend).
    #[serde(rename = "TRANSLATED")]
    Translated,
}

impl Verdict {
    /// Every verdict, in Hubble's numeric order.
    pub const ALL: [Verdict; 8] = [
        Self::Unknown,
        Self::Forwarded,
        Self::Dropped,
        Self::Error,
        Self::Audit,
        Self::Redirected,
        Self::Traced,
        Self::Translated,
    ];

    /// Hubble's enum name (`FORWARDED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "VERDICT_UNKNOWN",
            Self::Forwarded => "FORWARDED",
            Self::Dropped => "DROPPED",
            Self::Error => "ERROR",
            Self::Audit => "AUDIT",
            Self::Redirected => "REDIRECTED",
            Self::Traced => "TRACED",
            Self::Translated => "TRANSLATED",
        }
    }

    /// The verdict for a name, case-insensitively (`dropped`, `DROPPED`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hubble's `FlowType` (`Type` in JSON).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlowType {
    /// Unknown (omitted).
    #[default]
    #[serde(rename = "UNKNOWN_TYPE")]
    Unknown,
    /// A packet event with L3/L4 information.
    #[serde(rename = "L3_L4")]
    L3L4,
    /// An L7 (proxy) event; Plexus has none.
    #[serde(rename = "L7")]
    L7,
    /// A socket event; Plexus uses it for load-balancer translations, as Hubble does for its
    /// socket-level service translation.
    #[serde(rename = "SOCK")]
    Sock,
}

/// Hubble's `TraceObservationPoint`: where a trace was observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TraceObservationPoint {
    /// Unknown (omitted).
    #[default]
    #[serde(rename = "UNKNOWN_POINT")]
    Unknown,
    /// Towards a proxy.
    #[serde(rename = "TO_PROXY")]
    ToProxy,
    /// Towards the host namespace.
    #[serde(rename = "TO_HOST")]
    ToHost,
    /// Handed to the kernel's stack.
    #[serde(rename = "TO_STACK")]
    ToStack,
    /// Sent into the tunnel.
    #[serde(rename = "TO_OVERLAY")]
    ToOverlay,
    /// Entering a pod.
    #[serde(rename = "TO_ENDPOINT")]
    ToEndpoint,
    /// Leaving a pod.
    #[serde(rename = "FROM_ENDPOINT")]
    FromEndpoint,
    /// From a proxy.
    #[serde(rename = "FROM_PROXY")]
    FromProxy,
    /// From the host namespace.
    #[serde(rename = "FROM_HOST")]
    FromHost,
    /// From the kernel's stack.
    #[serde(rename = "FROM_STACK")]
    FromStack,
    /// Arriving from the tunnel.
    #[serde(rename = "FROM_OVERLAY")]
    FromOverlay,
    /// From a native device.
    #[serde(rename = "FROM_NETWORK")]
    FromNetwork,
    /// Towards a native device.
    #[serde(rename = "TO_NETWORK")]
    ToNetwork,
}

impl TraceObservationPoint {
    /// Every point but `Unknown`.
    pub const KNOWN: [TraceObservationPoint; 12] = [
        Self::ToEndpoint,
        Self::ToProxy,
        Self::ToHost,
        Self::ToStack,
        Self::ToOverlay,
        Self::FromEndpoint,
        Self::FromProxy,
        Self::FromHost,
        Self::FromStack,
        Self::FromOverlay,
        Self::FromNetwork,
        Self::ToNetwork,
    ];

    /// Cilium's trace sub-type for this point (`TraceToLxc` = 0 ... `TraceToNetwork` = 11): the
    /// `sub_type` of a trace flow's `event_type`. `None` for `Unknown`.
    pub fn monitor_sub_type(self) -> Option<i32> {
        Some(match self {
            Self::Unknown => return None,
            Self::ToEndpoint => 0,
            Self::ToProxy => 1,
            Self::ToHost => 2,
            Self::ToStack => 3,
            Self::ToOverlay => 4,
            Self::FromEndpoint => 5,
            Self::FromProxy => 6,
            Self::FromHost => 7,
            Self::FromStack => 8,
            Self::FromOverlay => 9,
            Self::FromNetwork => 10,
            Self::ToNetwork => 11,
        })
    }

    /// The point for a Cilium trace sub-type.
    pub fn from_monitor_sub_type(sub: i32) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|p| p.monitor_sub_type() == Some(sub))
            .unwrap_or(Self::Unknown)
    }

    /// Cilium's short name (`to-endpoint`), as Hubble's compact output prints a trace's type.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::ToEndpoint => "to-endpoint",
            Self::ToProxy => "to-proxy",
            Self::ToHost => "to-host",
            Self::ToStack => "to-stack",
            Self::ToOverlay => "to-overlay",
            Self::FromEndpoint => "from-endpoint",
            Self::FromProxy => "from-proxy",
            Self::FromHost => "from-host",
            Self::FromStack => "from-stack",
            Self::FromOverlay => "from-overlay",
            Self::FromNetwork => "from-network",
            Self::ToNetwork => "to-network",
        }
    }
}

/// Hubble's `TrafficDirection`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficDirection {
    /// Unknown (omitted).
    #[default]
    #[serde(rename = "TRAFFIC_DIRECTION_UNKNOWN")]
    Unknown,
    /// Into the endpoint.
    #[serde(rename = "INGRESS")]
    Ingress,
    /// Out of the endpoint.
    #[serde(rename = "EGRESS")]
    Egress,
}

impl TrafficDirection {
    /// Hubble's enum name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "TRAFFIC_DIRECTION_UNKNOWN",
            Self::Ingress => "INGRESS",
            Self::Egress => "EGRESS",
        }
    }
}

/// Hubble's `SocketTranslationPoint`, set on translation flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SocketTranslationPoint {
    /// Unknown (omitted).
    #[default]
    #[serde(rename = "SOCK_XLATE_POINT_UNKNOWN")]
    Unknown,
    /// Before the forward translation.
    #[serde(rename = "SOCK_XLATE_POINT_PRE_DIRECTION_FWD")]
    PreDirectionFwd,
    /// After the forward translation (frontend -> backend): Plexus's translation flows.
    #[serde(rename = "SOCK_XLATE_POINT_POST_DIRECTION_FWD")]
    PostDirectionFwd,
    /// Before the reverse translation.
    #[serde(rename = "SOCK_XLATE_POINT_PRE_DIRECTION_REV")]
    PreDirectionRev,
    /// After the reverse translation.
    #[serde(rename = "SOCK_XLATE_POINT_POST_DIRECTION_REV")]
    PostDirectionRev,
}

impl SocketTranslationPoint {
    /// The numeric value (Hubble's enum number).
    pub fn number(self) -> i32 {
        self as i32
    }

    /// Hubble's compact name (`post-xlate-fwd`).
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unknown => "SOCK_XLATE_POINT_UNKNOWN",
            Self::PreDirectionFwd => "pre-xlate-fwd",
            Self::PostDirectionFwd => "post-xlate-fwd",
            Self::PreDirectionRev => "pre-xlate-rev",
            Self::PostDirectionRev => "post-xlate-rev",
        }
    }
}

/// Hubble's `IPVersion`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpVersion {
    /// No IP (omitted).
    #[default]
    #[serde(rename = "IP_NOT_USED")]
    NotUsed,
    /// IPv4.
    #[serde(rename = "IPv4")]
    V4,
    /// IPv6.
    #[serde(rename = "IPv6")]
    V6,
}

/// Hubble's `DropReason` enum as used by `drop_reason_desc`: a Cilium drop code, written by its
/// Hubble name when it has one (`POLICY_DENIED`) and as a number otherwise (as protojson writes
/// an enum value it does not know). 0 (`DROP_REASON_UNKNOWN`) is omitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropReasonDesc(pub u32);

/// Hubble's drop reason names by Cilium drop code (`api/v1/flow/flow.proto`, `enum DropReason`).
const DROP_REASON_NAMES: &[(u32, &str)] = &[
    (0, "DROP_REASON_UNKNOWN"),
    (130, "INVALID_SOURCE_MAC"),
    (131, "INVALID_DESTINATION_MAC"),
    (132, "INVALID_SOURCE_IP"),
    (133, "POLICY_DENIED"),
    (134, "INVALID_PACKET_DROPPED"),
    (135, "CT_TRUNCATED_OR_INVALID_HEADER"),
    (136, "CT_MISSING_TCP_ACK_FLAG"),
    (137, "CT_UNKNOWN_L4_PROTOCOL"),
    (138, "CT_CANNOT_CREATE_ENTRY_FROM_PACKET"),
    (139, "UNSUPPORTED_L3_PROTOCOL"),
    (140, "MISSED_TAIL_CALL"),
    (141, "ERROR_WRITING_TO_PACKET"),
    (142, "UNKNOWN_L4_PROTOCOL"),
    (143, "UNKNOWN_ICMPV4_CODE"),
    (144, "UNKNOWN_ICMPV4_TYPE"),
    (145, "UNKNOWN_ICMPV6_CODE"),
    (146, "UNKNOWN_ICMPV6_TYPE"),
    (147, "ERROR_RETRIEVING_TUNNEL_KEY"),
    (148, "ERROR_RETRIEVING_TUNNEL_OPTIONS"),
    (149, "INVALID_GENEVE_OPTION"),
    (150, "UNKNOWN_L3_TARGET_ADDRESS"),
    (151, "STALE_OR_UNROUTABLE_IP"),
    (152, "NO_MATCHING_LOCAL_CONTAINER_FOUND"),
    (153, "ERROR_WHILE_CORRECTING_L3_CHECKSUM"),
    (154, "ERROR_WHILE_CORRECTING_L4_CHECKSUM"),
    (155, "CT_MAP_INSERTION_FAILED"),
    (156, "INVALID_IPV6_EXTENSION_HEADER"),
    (157, "IP_FRAGMENTATION_NOT_SUPPORTED"),
    (158, "SERVICE_BACKEND_NOT_FOUND"),
    (160, "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT"),
    (161, "FAILED_TO_INSERT_INTO_PROXYMAP"),
    (162, "REACHED_EDT_RATE_LIMITING_DROP_HORIZON"),
    (163, "UNKNOWN_CONNECTION_TRACKING_STATE"),
    (164, "LOCAL_HOST_IS_UNREACHABLE"),
    (165, "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION"),
    (166, "UNSUPPORTED_L2_PROTOCOL"),
    (167, "NO_MAPPING_FOR_NAT_MASQUERADE"),
    (168, "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE"),
    (169, "FIB_LOOKUP_FAILED"),
    (170, "ENCAPSULATION_TRAFFIC_IS_PROHIBITED"),
    (171, "INVALID_IDENTITY"),
    (172, "UNKNOWN_SENDER"),
    (173, "NAT_NOT_NEEDED"),
    (174, "IS_A_CLUSTERIP"),
    (175, "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND"),
    (176, "FORBIDDEN_ICMPV6_MESSAGE"),
    (177, "DENIED_BY_LB_SRC_RANGE_CHECK"),
    (178, "SOCKET_LOOKUP_FAILED"),
    (179, "SOCKET_ASSIGN_FAILED"),
    (180, "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL"),
    (181, "POLICY_DENY"),
    (182, "VLAN_FILTERED"),
    (183, "INVALID_VNI"),
    (184, "INVALID_TC_BUFFER"),
    (185, "NO_SID"),
    (186, "MISSING_SRV6_STATE"),
    (187, "NAT46"),
    (188, "NAT64"),
    (189, "AUTH_REQUIRED"),
    (190, "CT_NO_MAP_FOUND"),
    (191, "SNAT_NO_MAP_FOUND"),
    (192, "INVALID_CLUSTER_ID"),
    (193, "UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP"),
    (194, "NO_EGRESS_GATEWAY"),
    (196, "TTL_EXCEEDED"),
    (197, "NO_NODE_ID"),
    (202, "DROP_HOST_NOT_READY"),
    (203, "DROP_EP_NOT_READY"),
];

impl DropReasonDesc {
    /// `POLICY_DENIED` (133): denied by network policy.
    pub const POLICY_DENIED: Self = Self(133);
    /// `POLICY_DENY` (181): denied by an explicit deny rule in Cilium.
    pub const POLICY_DENY: Self = Self(181);

    /// Hubble's enum name, if the code has one.
    pub fn name(self) -> Option<&'static str> {
        DROP_REASON_NAMES
            .iter()
            .find(|(code, _)| *code == self.0)
            .map(|(_, name)| *name)
    }

    /// The code for a Hubble enum name (exact, upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        DROP_REASON_NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(code, _)| Self(*code))
    }

    /// Whether this is a policy denial (`POLICY_DENIED` or `POLICY_DENY`).
    pub fn is_policy_denial(self) -> bool {
        self == Self::POLICY_DENIED || self == Self::POLICY_DENY
    }
}

impl fmt::Display for DropReasonDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for DropReasonDesc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => s.serialize_str(name),
            None => s.serialize_u32(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for DropReasonDesc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DropReasonDesc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Hubble drop reason name or number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(DropReasonDesc)
                    .map_err(|_| E::custom(format!("drop reason {v} out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(DropReasonDesc)
                    .map_err(|_| E::custom(format!("drop reason {v} out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                DropReasonDesc::from_name(v)
                    .ok_or_else(|| E::custom(format!("unknown drop reason {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// How a Plexus datapath drop reason appears in a flow: Cilium's code (`drop_reason`), Hubble's
/// name (`drop_reason_desc`) and the words `plexus monitor` uses (`drop_reason_text`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropReasonInfo {
    /// The code written to `drop_reason` and `drop_reason_desc`.
    pub code: u32,
    /// The words, as `plexus monitor` prints the reason.
    pub text: &'static str,
}

impl DropReasonInfo {
    /// Maps a raw drop code of the Plexus datapath (`plexus_datapath::DropReason::as_raw`) to
    /// Cilium's code for the same condition:
    ///
    /// | Plexus (raw) | Cilium code | Hubble name |
    /// |---|---|---|
    /// | InvalidPacket (1) | 134 | INVALID_PACKET_DROPPED |
    /// | UnknownSource (2) | 172 | UNKNOWN_SENDER |
    /// | NoEndpoint (3) | 152 | NO_MATCHING_LOCAL_CONTAINER_FOUND |
    /// | UnsupportedL3 (4) | 139 | UNSUPPORTED_L3_PROTOCOL |
    /// | NoTunnelKey (5) | 147 | ERROR_RETRIEVING_TUNNEL_KEY |
    /// | PolicyDenied (6) | 133 | POLICY_DENIED |
    /// | SourceMismatch (7) | 132 | INVALID_SOURCE_IP |
    /// | UnsupportedArp (8) | 150 | UNKNOWN_L3_TARGET_ADDRESS |
    /// | NoConfig (9) | 165 | NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION |
    /// | TunnelKeyFailed (10) | 141 | ERROR_WRITING_TO_PACKET |
    /// | NoServiceBackend (11) | 158 | SERVICE_BACKEND_NOT_FOUND |
    /// | Unencrypted (12) | 195 | (none in Hubble's enum: written as the number 195; Cilium's `DROP_UNENCRYPTED_TRAFFIC`) |
    ///
    /// A code this version does not know keeps its raw value (below 130, so it can never be
    /// mistaken for a Cilium drop code); its `drop_reason_desc` is then a number too.
    pub fn from_plexus(raw: u8) -> Self {
        let (code, text) = match raw {
            1 => (134, "Invalid packet"),
            2 => (172, "Unknown source endpoint"),
            3 => (152, "No local endpoint for destination"),
            4 => (139, "Unsupported L3 protocol"),
            5 => (147, "Missing tunnel metadata"),
            6 => (133, "Policy denied"),
            7 => (132, "Invalid source ip"),
            8 => (150, "Unsupported ARP request"),
            9 => (165, "Datapath not configured"),
            10 => (141, "Failed to set tunnel key"),
            11 => (158, "Service backend not found"),
            12 => (195, "Traffic is unencrypted"),
            other => {
                return Self {
                    code: u32::from(other),
                    text: "Unknown reason",
                };
            }
        };
        Self { code, text }
    }

    /// Policy denied (133).
    pub const POLICY_DENIED: Self = Self {
        code: 133,
        text: "Policy denied",
    };
}

/// Hubble's `CiliumEventType`: the monitor message type and sub-type a flow came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct CiliumEventType {
    /// [`message_type`] (drop 1, trace 4, policy verdict 5, translation 7).
    #[serde(rename = "type", skip_serializing_if = "is_default")]
    pub r#type: i32,
    /// Trace: the observation point's Cilium number; drop: the drop code; translation: the
    /// [`SocketTranslationPoint`] number.
    #[serde(skip_serializing_if = "is_default")]
    pub sub_type: i32,
}

/// Hubble's `IP`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ip {
    /// Source address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Destination address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// IPv4 or IPv6.
    #[serde(rename = "ipVersion", skip_serializing_if = "is_default")]
    pub ip_version: IpVersion,
    /// Whether the packet was encrypted (WireGuard).
    #[serde(skip_serializing_if = "is_default")]
    pub encrypted: bool,
}

impl Ip {
    /// The addresses of a packet.
    pub fn new(source: IpAddr, destination: IpAddr) -> Self {
        Self {
            source: source.to_string(),
            destination: destination.to_string(),
            ip_version: if source.is_ipv6() {
                IpVersion::V6
            } else {
                IpVersion::V4
            },
            encrypted: false,
        }
    }
}

/// Hubble's `TCPFlags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpFlags {
    /// FIN.
    #[serde(rename = "FIN", skip_serializing_if = "is_default")]
    pub fin: bool,
    /// SYN.
    #[serde(rename = "SYN", skip_serializing_if = "is_default")]
    pub syn: bool,
    /// RST.
    #[serde(rename = "RST", skip_serializing_if = "is_default")]
    pub rst: bool,
    /// PSH.
    #[serde(rename = "PSH", skip_serializing_if = "is_default")]
    pub psh: bool,
    /// ACK.
    #[serde(rename = "ACK", skip_serializing_if = "is_default")]
    pub ack: bool,
    /// URG.
    #[serde(rename = "URG", skip_serializing_if = "is_default")]
    pub urg: bool,
    /// ECE.
    #[serde(rename = "ECE", skip_serializing_if = "is_default")]
    pub ece: bool,
    /// CWR.
    #[serde(rename = "CWR", skip_serializing_if = "is_default")]
    pub cwr: bool,
    /// NS.
    #[serde(rename = "NS", skip_serializing_if = "is_default")]
    pub ns: bool,
}

impl TcpFlags {
    /// The flags of a TCP header's flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK
    /// 0x10, URG 0x20, ECE 0x40, CWR 0x80).
    pub fn from_bits(b: u8) -> Self {
        Self {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            psh: b & 0x08 != 0,
            ack: b & 0x10 != 0,
            urg: b & 0x20 != 0,
            ece: b & 0x40 != 0,
            cwr: b & 0x80 != 0,
            ns: false,
        }
    }

    /// The set flags' names in the order Hubble's summary lists them (`SYN, ACK`).
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.syn, "SYN"),
            (self.ack, "ACK"),
            (self.rst, "RST"),
            (self.fin, "FIN"),
            (self.psh, "PSH"),
            (self.urg, "URG"),
            (self.ece, "ECE"),
            (self.cwr, "CWR"),
            (self.ns, "NS"),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| name)
        .collect()
    }
}

/// Hubble's `TCP`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Tcp {
    /// Source port.
    #[serde(skip_serializing_if = "is_default")]
    pub source_port: u32,
    /// Destination port.
    #[serde(skip_serializing_if = "is_default")]
    pub destination_port: u32,
    /// Header flags (omitted when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<TcpFlags>,
}

/// Hubble's `UDP` (and `SCTP`, same shape).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Udp {
    /// Source port.
    #[serde(skip_serializing_if = "is_default")]
    pub source_port: u32,
    /// Destination port.
    #[serde(skip_serializing_if = "is_default")]
    pub destination_port: u32,
}

/// Hubble's `ICMPv4` (and `ICMPv6`, same shape).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Icmp {
    /// ICMP type.
    #[serde(rename = "type", skip_serializing_if = "is_default")]
    pub r#type: u32,
    /// ICMP code.
    #[serde(skip_serializing_if = "is_default")]
    pub code: u32,
}

/// Hubble's `Layer4`: a one-of, written as an object with exactly one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layer4 {
    /// `{"TCP": {...}}`.
    #[serde(rename = "TCP")]
    Tcp(Tcp),
    /// `{"UDP": {...}}`.
    #[serde(rename = "UDP")]
    Udp(Udp),
    /// `{"ICMPv4": {...}}`.
    #[serde(rename = "ICMPv4")]
    IcmpV4(Icmp),
    /// `{"ICMPv6": {...}}`.
    #[serde(rename = "ICMPv6")]
    IcmpV6(Icmp),
    /// `{"SCTP": {...}}`.
    #[serde(rename = "SCTP")]
    Sctp(Udp),
}

impl Layer4 {
    /// The L4 part of a packet from the datapath's raw fields: `protocol` is the IP protocol
    /// number; `sport`/`dport` are the ports (ICMP: type and code); `tcp_flags` the TCP flags
    /// byte. `None` for other protocols.
    pub fn from_raw(protocol: u8, sport: u16, dport: u16, tcp_flags: u8) -> Option<Self> {
        match protocol {
            6 => Some(Self::Tcp(Tcp {
                source_port: sport.into(),
                destination_port: dport.into(),
                flags: Some(TcpFlags::from_bits(tcp_flags)),
            })),
            17 => Some(Self::Udp(Udp {
                source_port: sport.into(),
                destination_port: dport.into(),
            })),
            1 => Some(Self::IcmpV4(Icmp {
                r#type: sport.into(),
                code: dport.into(),
            })),
            58 => Some(Self::IcmpV6(Icmp {
                r#type: sport.into(),
                code: dport.into(),
            })),
            132 => Some(Self::Sctp(Udp {
                source_port: sport.into(),
                destination_port: dport.into(),
            })),
            _ => None,
        }
    }

    /// Source and destination ports (TCP, UDP, SCTP).
    pub fn ports(&self) -> Option<(u32, u32)> {
        match self {
            Self::Tcp(t) => Some((t.source_port, t.destination_port)),
            Self::Udp(u) | Self::Sctp(u) => Some((u.source_port, u.destination_port)),
            Self::IcmpV4(_) | Self::IcmpV6(_) => None,
        }
    }

    /// The protocol's lower-case name as filters use it (`tcp`, `udp`, `icmpv4`, `icmpv6`,
    /// `sctp`).
    pub fn protocol_name(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "tcp",
            Self::Udp(_) => "udp",
            Self::IcmpV4(_) => "icmpv4",
            Self::IcmpV6(_) => "icmpv6",
            Self::Sctp(_) => "sctp",
        }
    }

    /// Hubble's summary of the L4 header: `TCP Flags: SYN, ACK`, `UDP`, `ICMPv4 EchoRequest`.
    pub fn summary(&self) -> String {
        match self {
            Self::Tcp(t) => {
                let flags = t.flags.map(|f| f.names()).unwrap_or_default();
                if flags.is_empty() {
                    "TCP".into()
                } else {
                    format!("TCP Flags: {}", flags.join(", "))
                }
            }
            Self::Udp(_) => "UDP".into(),
            Self::Sctp(_) => "SCTP".into(),
            Self::IcmpV4(i) => format!("ICMPv4 {}", icmpv4_name(i.r#type, i.code)),
            Self::IcmpV6(i) => format!("ICMPv6 type {} code {}", i.r#type, i.code),
        }
    }
}

fn icmpv4_name(ty: u32, code: u32) -> String {
    match ty {
        0 => "EchoReply".into(),
        3 => format!("DestinationUnreachable({code})"),
        8 => "EchoRequest".into(),
        11 => "TimeExceeded".into(),
        other => format!("type {other} code {code}"),
    }
}

/// Hubble's `Endpoint`: one side of a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    /// The local endpoint id (0 when the side is not a local endpoint).
    #[serde(rename = "ID", skip_serializing_if = "is_default")]
    pub id: u32,
    /// The security identity.
    #[serde(skip_serializing_if = "is_default")]
    pub identity: u32,
    /// The cluster the endpoint lives in.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
    /// The pod's namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Labels of the identity, `source:key=value` (`k8s:app=x`, `reserved:world`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The pod's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
}

impl Endpoint {
    /// Whether every field is empty (the side is omitted then).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Hubble's `Service`: a service's name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    /// Name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Hubble's `Policy`: a policy that allowed or denied a flow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Namespace (empty for clusterwide policies).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Labels of the rule (`k8s:io.cilium.k8s.policy.name=x`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The policy repository's revision (`uint64`: a decimal string in JSON).
    #[serde(with = "uint64_string", skip_serializing_if = "is_default")]
    pub revision: u64,
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy` or `NetworkPolicy`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
}

/// Hubble's `NetworkInterface`: where the flow was observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkInterface {
    /// Interface index.
    #[serde(skip_serializing_if = "is_default")]
    pub index: u32,
    /// Interface name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Plexus extension: the load balancer's translation of a new connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Translation {
    /// The service frontend the client addressed, `ip:port`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub frontend: String,
    /// The chosen backend, `ip:port`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// The cluster the backend lives in.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub backend_cluster: String,
}

/// Plexus extension: why policy denied a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyDeny {
    /// An explicit deny rule matched (`deny-rule`).
    DenyRule,
    /// Policy selected the endpoint and no rule allowed the flow (`default-deny`).
    DefaultDeny,
}

/// Cilium's policy match types (`policy_match_type` of policy verdict flows).
pub mod policy_match {
    /// No policy applied (allowed because the endpoint has no policy in that direction).
    pub const NONE: u32 = 0;
    /// Matched by L3 only.
    pub const L3_ONLY: u32 = 1;
    /// Matched by L3 and L4.
    pub const L3_L4: u32 = 2;
    /// Matched by L4 only.
    pub const L4_ONLY: u32 = 3;
    /// Allow-all.
    pub const ALL: u32 = 4;

    /// Cilium's name for a match type (`L3-L4`), as Hubble prints `policy-verdict:L3-L4`.
    pub fn name(m: u32) -> &'static str {
        match m {
            NONE => "none",
            L3_ONLY => "L3-Only",
            L3_L4 => "L3-L4",
            L4_ONLY => "L4-Only",
            ALL => "all",
            _ => "unknown",
        }
    }
}

/// One flow, in the JSON shape of Hubble's `flow.Flow`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Flow {
    /// When the event happened (wall clock, UTC).
    #[serde(with = "timestamp")]
    pub time: DateTime<Utc>,
    /// A unique id for this flow (omitted when empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uuid: String,
    /// What happened.
    #[serde(skip_serializing_if = "is_default")]
    pub verdict: Verdict,
    /// Cilium's drop code (drops only; deprecated by Hubble in favour of `drop_reason_desc` but
    /// still written).
    #[serde(skip_serializing_if = "is_default")]
    pub drop_reason: u32,
    /// Addresses.
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ip>,
    /// L4 header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l4: Option<Layer4>,
    /// The sending side.
    #[serde(skip_serializing_if = "Endpoint::is_empty")]
    pub source: Endpoint,
    /// The receiving side.
    #[serde(skip_serializing_if = "Endpoint::is_empty")]
    pub destination: Endpoint,
    /// `L3_L4` for packet events, `SOCK` for translations.
    #[serde(rename = "Type", skip_serializing_if = "is_default")]
    pub r#type: FlowType,
    /// The node that observed it, `cluster/node`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// The monitor message type it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<CiliumEventType>,
    /// The service of the source, if it is a service address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_service: Option<Service>,
    /// The service the destination address belongs to (a frontend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<Service>,
    /// Ingress or egress, from the point of view of the local endpoint.
    #[serde(skip_serializing_if = "is_default")]
    pub traffic_direction: TrafficDirection,
    /// Policy verdicts: how the policy matched ([`policy_match`]).
    #[serde(skip_serializing_if = "is_default")]
    pub policy_match_type: u32,
    /// Traces: where it was observed.
    #[serde(skip_serializing_if = "is_default")]
    pub trace_observation_point: TraceObservationPoint,
    /// Drops: Hubble's name of the drop reason.
    #[serde(skip_serializing_if = "is_default")]
    pub drop_reason_desc: DropReasonDesc,
    /// Whether the packet is a reply; absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_reply: Option<bool>,
    /// The interface the event was observed on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<NetworkInterface>,
    /// Translations: the socket translation point.
    #[serde(skip_serializing_if = "is_default")]
    pub sock_xlate_point: SocketTranslationPoint,
    /// Policies that allowed the flow on egress.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress_allowed_by: Vec<Policy>,
    /// Policies that allowed the flow on ingress.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress_allowed_by: Vec<Policy>,
    /// Policies that denied the flow on egress.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<Policy>,
    /// Policies that denied the flow on ingress.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<Policy>,
    /// One line describing the packet (`TCP Flags: SYN`), as Hubble's `Summary`.
    #[serde(rename = "Summary", skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// Plexus extension: the drop reason in words (`Policy denied`), as `plexus monitor` prints
    /// it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub drop_reason_text: String,
    /// Plexus extension: the load balancer's translation (translation flows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translation: Option<Translation>,
    /// Plexus extension: why policy denied the flow (policy drops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_deny: Option<PolicyDeny>,
}

impl Flow {
    /// A trace: forwarded, observed at `point`, type `L3_L4`, event type trace with the point's
    /// Cilium sub-type.
    pub fn trace(time: DateTime<Utc>, node_name: &str, point: TraceObservationPoint) -> Self {
        Self {
            time,
            node_name: node_name.into(),
            verdict: Verdict::Forwarded,
            r#type: FlowType::L3L4,
            trace_observation_point: point,
            event_type: Some(CiliumEventType {
                r#type: message_type::TRACE,
                sub_type: point.monitor_sub_type().unwrap_or_default(),
            }),
            ..Self::default()
        }
    }

    /// A drop: dropped, `drop_reason`/`drop_reason_desc`/`drop_reason_text` from `reason`,
    /// event type drop with the code as sub-type.
    pub fn drop(time: DateTime<Utc>, node_name: &str, reason: DropReasonInfo) -> Self {
        Self {
            time,
            node_name: node_name.into(),
            verdict: Verdict::Dropped,
            r#type: FlowType::L3L4,
            drop_reason: reason.code,
            drop_reason_desc: DropReasonDesc(reason.code),
            drop_reason_text: reason.text.into(),
            event_type: Some(CiliumEventType {
                r#type: message_type::DROP,
                sub_type: i32::try_from(reason.code).unwrap_or_default(),
            }),
            ..Self::default()
        }
    }

    /// An allowed policy verdict (one per new connection): forwarded, with the direction and
    /// the [`policy_match`] type. Denials are drops ([`Flow::drop`] with
    /// [`DropReasonInfo::POLICY_DENIED`]).
    pub fn policy_verdict(
        time: DateTime<Utc>,
        node_name: &str,
        direction: TrafficDirection,
        match_type: u32,
    ) -> Self {
        Self {
            time,
            node_name: node_name.into(),
            verdict: Verdict::Forwarded,
            r#type: FlowType::L3L4,
            traffic_direction: direction,
            policy_match_type: match_type,
            event_type: Some(CiliumEventType {
                r#type: message_type::POLICY_VERDICT,
                sub_type: 0,
            }),
            ..Self::default()
        }
    }

    /// A load-balancer translation of a new connection: translated, type `SOCK`, event type
    /// trace-sock with sub-type and `sock_xlate_point` "post forward translation" (Hubble's
    /// shape for a service translation), and the `translation` extension. The flow's `IP`
    /// destination should be the backend (the packet after translation).
    pub fn translation(
        time: DateTime<Utc>,
        node_name: &str,
        frontend: SocketAddr,
        backend: SocketAddr,
        backend_cluster: &str,
    ) -> Self {
        Self {
            time,
            node_name: node_name.into(),
            verdict: Verdict::Translated,
            r#type: FlowType::Sock,
            sock_xlate_point: SocketTranslationPoint::PostDirectionFwd,
            event_type: Some(CiliumEventType {
                r#type: message_type::TRACE_SOCK,
                sub_type: SocketTranslationPoint::PostDirectionFwd.number(),
            }),
            translation: Some(Translation {
                frontend: frontend.to_string(),
                backend: backend.to_string(),
                backend_cluster: backend_cluster.into(),
            }),
            ..Self::default()
        }
    }

    /// Sets `IP` and `l4` from the datapath's raw packet fields (see [`Layer4::from_raw`]) and
    /// fills `Summary` (see [`Flow::fill_summary`]).
    pub fn with_packet(
        mut self,
        saddr: IpAddr,
        daddr: IpAddr,
        protocol: u8,
        sport: u16,
        dport: u16,
        tcp_flags: u8,
    ) -> Self {
        self.ip = Some(Ip::new(saddr, daddr));
        self.l4 = Layer4::from_raw(protocol, sport, dport, tcp_flags);
        self.fill_summary();
        self
    }

    /// Sets `Summary` as Hubble words it from the L4 header (`TCP Flags: SYN`, `UDP`,
    /// `ICMPv4 EchoRequest`); a translation reads `TCP <frontend> -> <backend> (cluster c)`.
    pub fn fill_summary(&mut self) {
        self.summary = match (&self.translation, &self.l4) {
            (Some(t), l4) => {
                let mut s = match l4 {
                    Some(l4) => format!("{} ", l4.protocol_name().to_ascii_uppercase()),
                    None => String::new(),
                };
                s.push_str(&format!("{} -> {}", t.frontend, t.backend));
                if !t.backend_cluster.is_empty() {
                    s.push_str(&format!(" (cluster {})", t.backend_cluster));
                }
                s
            }
            (None, Some(l4)) => l4.summary(),
            (None, None) => String::new(),
        };
    }

    /// The monitor message type (0 when absent).
    pub fn message_type(&self) -> i32 {
        self.event_type.map(|e| e.r#type).unwrap_or_default()
    }

    /// The parsed source address.
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.ip.as_ref().and_then(|ip| ip.source.parse().ok())
    }

    /// The parsed destination address.
    pub fn destination_ip(&self) -> Option<IpAddr> {
        self.ip.as_ref().and_then(|ip| ip.destination.parse().ok())
    }
}
