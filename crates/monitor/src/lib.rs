//! The datapath's events as users see them: the one place that says what an event holds and
//! how it is printed. The datapath turns its raw events into [`MonitorEvent`]s; the agent
//! streams them (`GET /v1/monitor[?type=drop|trace|translation|policy-verdict]`, JSON lines,
//! one [`MonitorMessage`] each); the CLI prints them.
//!
//! Four kinds ([`EventKind`]): a trace per forwarded packet (TCP only when it opens, closes or
//! resets a connection), a drop per dropped packet, and once per new connection a translation
//! (a service frontend translated to a backend) and a policy verdict per direction where a
//! policy is enforced and allowed it (denials are drops).
//!
//! The [`std::fmt::Display`] of a message is the line `plexus monitor` prints, in the shape of
//! `cilium monitor`:
//!
//! ```text
//! -> endpoint 3833 flow 0x28c644b8 , identity 38354->6587186 state new: 10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN
//! xx drop (Policy denied) flow 0x28c644b8 to endpoint 3833, identity 38354->6587186: 10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN
//! Policy verdict log: flow 0x28c644b8 local EP ID 3833, remote ID 38354, proto 6, ingress, action allow, match L3-L4, 10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN
//! xlate service 10.96.0.10:80 -> backend 10.60.2.9:6379 flow 0x28c644b8 endpoint 3833, identity 38354->6587186: 10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN
//! ```

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

/// The raw code of the "Policy denied" drop reason.
pub const DROP_POLICY_DENIED: u8 = 6;

/// Which events a monitor stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorFilter {
    /// Drops only.
    Drop,
    /// Traces only.
    Trace,
    /// Service translations only.
    Translation,
    /// Policy verdicts: the allowed new connections, and the drops by policy (reason "Policy
    /// denied"), as Hubble's `policy-verdict` type shows both.
    PolicyVerdict,
}

impl MonitorFilter {
    /// Every filter, in the order the CLI lists them.
    pub const ALL: [Self; 4] = [
        Self::Drop,
        Self::Trace,
        Self::Translation,
        Self::PolicyVerdict,
    ];

    /// The value of the `type` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Trace => "trace",
            Self::Translation => "translation",
            Self::PolicyVerdict => "policy-verdict",
        }
    }

    /// Whether `event` passes the filter.
    pub fn keeps(self, event: &MonitorEvent) -> bool {
        match (self, &event.kind) {
            (Self::Drop, EventKind::Drop(_))
            | (Self::Trace, EventKind::Trace(_))
            | (Self::Translation, EventKind::Translation { .. })
            | (Self::PolicyVerdict, EventKind::PolicyVerdict(_)) => true,
            (Self::PolicyVerdict, EventKind::Drop(reason)) => reason.code == DROP_POLICY_DENIED,
            _ => false,
        }
    }
}

impl std::str::FromStr for MonitorFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                format!("monitor type {s:?}: expected drop, trace, translation or policy-verdict")
            })
    }
}

/// One line of the monitor stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorMessage {
    /// An event.
    Event(MonitorEvent),
    /// The stream fell behind and skipped this many events.
    Lost {
        /// How many.
        count: u64,
    },
}

impl fmt::Display for MonitorMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Event(e) => e.fmt(f),
            Self::Lost { count } => write!(f, "(lost {count} events)"),
        }
    }
}

/// Where a trace event was observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObservationPoint {
    /// Leaving a pod.
    FromEndpoint,
    /// Entering a pod.
    ToEndpoint,
    /// Arriving from the tunnel.
    FromOverlay,
    /// Sent into the tunnel.
    ToOverlay,
    /// Handed to the kernel's stack.
    ToStack,
    /// A point this version does not know, by its raw number.
    Other(u8),
}

/// Why a packet was dropped: the datapath's code and its description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropReason {
    /// The raw code of the BPF programs.
    pub code: u8,
    /// What it means, as `cilium monitor` words it (`Policy denied`).
    pub name: String,
}

/// What happened: trace, drop, translation or policy verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A packet seen on its way.
    Trace(ObservationPoint),
    /// A packet dropped.
    Drop(DropReason),
    /// The load balancer translated a new connection to a service frontend: the event's
    /// destination is the backend chosen, `frontend` the address the client sent to.
    Translation {
        /// The service frontend (address and port) the client connected to.
        frontend: SocketAddrV4,
    },
    /// An enforced policy allowed a new connection, by a match of this kind; the event's
    /// `direction` says which side's policy (egress at the sender's endpoint, ingress at the
    /// receiver's).
    PolicyVerdict(PolicyMatch),
}

/// The kind of policy entry that allowed a connection (Cilium's `PolicyMatchType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyMatch {
    /// The peer's identity, any port.
    L3Only,
    /// The peer's identity and the protocol and port.
    L3L4,
    /// Any peer, the protocol and port.
    L4Only,
    /// Any peer, any port.
    All,
    /// The peer's identity and the protocol, any port.
    L3Proto,
    /// Any peer, the protocol, any port.
    ProtoOnly,
    /// A kind this version does not know, by its raw number.
    Other(u8),
}

impl PolicyMatch {
    /// The kind for a raw code (Cilium's numbers: 1 L3-only, 2 L3+L4, 3 L4-only, 4 all,
    /// 5 L3+protocol, 6 protocol only).
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::L3Only,
            2 => Self::L3L4,
            3 => Self::L4Only,
            4 => Self::All,
            5 => Self::L3Proto,
            6 => Self::ProtoOnly,
            other => Self::Other(other),
        }
    }

    /// The raw code (Cilium's `PolicyMatchType` number, Hubble's `policy_match_type`).
    pub fn as_raw(self) -> u8 {
        match self {
            Self::L3Only => 1,
            Self::L3L4 => 2,
            Self::L4Only => 3,
            Self::All => 4,
            Self::L3Proto => 5,
            Self::ProtoOnly => 6,
            Self::Other(raw) => raw,
        }
    }
}

impl fmt::Display for PolicyMatch {
    /// As Cilium names the match types (`L3-Only`, `L3-L4`, `L4-Only`, `all`, `L3-Proto`,
    /// `Proto-Only`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::L3Only => f.write_str("L3-Only"),
            Self::L3L4 => f.write_str("L3-L4"),
            Self::L4Only => f.write_str("L4-Only"),
            Self::All => f.write_str("all"),
            Self::L3Proto => f.write_str("L3-Proto"),
            Self::ProtoOnly => f.write_str("Proto-Only"),
            Self::Other(raw) => write!(f, "{raw}"),
        }
    }
}

/// The direction of a packet, seen from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficDirection {
    /// Towards the endpoint.
    Ingress,
    /// Leaving the endpoint.
    Egress,
}

impl fmt::Display for TrafficDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// The connection state of a packet, as connection tracking saw it (Cilium's trace reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceState {
    /// The first packet of a connection (no connection-tracking entry before it).
    New,
    /// Part of an established connection.
    Established,
    /// A reply of a connection.
    Reply,
    /// Related to a connection (ICMP errors).
    Related,
    /// Not looked up on the path that reported the packet (drops, arrivals from the tunnel).
    Unknown,
    /// A state this version does not know, by its raw number.
    Other(u8),
}

impl TraceState {
    /// The state for a raw code of the BPF programs (Cilium's trace reasons: 0 new,
    /// 1 established, 2 reply, 3 related, 5 unknown).
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            0 => Self::New,
            1 => Self::Established,
            2 => Self::Reply,
            3 => Self::Related,
            5 => Self::Unknown,
            other => Self::Other(other),
        }
    }

    /// The raw code (see [`TraceState::from_raw`]).
    pub fn as_raw(self) -> u8 {
        match self {
            Self::New => 0,
            Self::Established => 1,
            Self::Reply => 2,
            Self::Related => 3,
            Self::Unknown => 5,
            Self::Other(raw) => raw,
        }
    }

    /// Whether the packet is a reply: `Some(true)` for a reply, `Some(false)` for another known
    /// state, `None` when the state is not known (Hubble's `is_reply`, left out then).
    pub fn is_reply(self) -> Option<bool> {
        match self {
            Self::Reply => Some(true),
            Self::New | Self::Established | Self::Related => Some(false),
            Self::Unknown | Self::Other(_) => None,
        }
    }
}

impl fmt::Display for TraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::New => f.write_str("new"),
            Self::Established => f.write_str("established"),
            Self::Reply => f.write_str("reply"),
            Self::Related => f.write_str("related"),
            Self::Unknown => f.write_str("unknown"),
            Self::Other(raw) => write!(f, "unknown({raw})"),
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MonitorEvent {
    /// Trace (with where), drop (with why), translation (with the frontend) or policy verdict
    /// (with the kind of match).
    pub kind: EventKind,
    /// The local endpoint involved, 0 if none.
    pub endpoint_id: u16,
    /// Source security identity (0 when unknown).
    pub src_identity: u32,
    /// Destination security identity (0 when unknown).
    pub dst_identity: u32,
    /// IPv4 source (0.0.0.0 when the packet was not parsed).
    pub saddr: Ipv4Addr,
    /// IPv4 destination.
    pub daddr: Ipv4Addr,
    /// TCP/UDP source port; ICMP type.
    pub sport: u16,
    /// TCP/UDP destination port; ICMP code.
    pub dport: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub tcp_flags: u8,
    /// The connection state of the packet.
    pub state: TraceState,
    /// The direction of the packet, seen from the endpoint (`None` when the datapath did not
    /// say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<TrafficDirection>,
    /// The interface the program ran on.
    pub ifindex: u32,
    /// Packet length.
    pub len: u32,
    /// The packet's flow hash.
    pub flow: u32,
    /// Monotonic time of the event, nanoseconds.
    pub ktime_ns: u64,
}

impl MonitorEvent {
    fn write_flow(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.saddr.is_unspecified() && self.daddr.is_unspecified() && self.protocol == 0 {
            return write!(f, "{} bytes on ifindex {}", self.len, self.ifindex);
        }
        match self.protocol {
            6 => {
                write!(
                    f,
                    "{}:{} -> {}:{} tcp",
                    self.saddr, self.sport, self.daddr, self.dport
                )?;
                let names = [(0x02, "SYN"), (0x10, "ACK"), (0x04, "RST"), (0x01, "FIN")];
                let flags: Vec<&str> = names
                    .iter()
                    .filter(|(bit, _)| self.tcp_flags & bit != 0)
                    .map(|(_, n)| *n)
                    .collect();
                if !flags.is_empty() {
                    write!(f, " {}", flags.join(", "))?;
                }
                Ok(())
            }
            17 => write!(
                f,
                "{}:{} -> {}:{} udp",
                self.saddr, self.sport, self.daddr, self.dport
            ),
            1 => {
                write!(f, "{} -> {} ", self.saddr, self.daddr)?;
                match (self.sport, self.dport) {
                    (8, _) => f.write_str("EchoRequest"),
                    (0, _) => f.write_str("EchoReply"),
                    (3, code) => write!(f, "DestinationUnreachable({code})"),
                    (11, _) => f.write_str("TimeExceeded"),
                    (t, c) => write!(f, "ICMPv4 type {t} code {c}"),
                }
            }
            p => write!(f, "{} -> {} proto {p}", self.saddr, self.daddr),
        }
    }
}

impl fmt::Display for MonitorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            EventKind::Trace(point) => {
                match point {
                    ObservationPoint::FromEndpoint => {
                        write!(f, "<- endpoint {}", self.endpoint_id)?
                    }
                    ObservationPoint::ToEndpoint => write!(f, "-> endpoint {}", self.endpoint_id)?,
                    ObservationPoint::FromOverlay => f.write_str("<- overlay")?,
                    ObservationPoint::ToOverlay => f.write_str("-> overlay")?,
                    ObservationPoint::ToStack => f.write_str("-> stack")?,
                    ObservationPoint::Other(raw) => write!(f, "-> point {raw}")?,
                }
                write!(
                    f,
                    " flow {:#x} , identity {}->{} state {}: ",
                    self.flow, self.src_identity, self.dst_identity, self.state
                )?;
            }
            EventKind::Drop(reason) => write!(
                f,
                "xx drop ({}) flow {:#x} to endpoint {}, identity {}->{}: ",
                reason.name, self.flow, self.endpoint_id, self.src_identity, self.dst_identity
            )?,
            EventKind::Translation { frontend } => write!(
                f,
                "xlate service {frontend} -> backend {}:{} flow {:#x} endpoint {}, \
                 identity {}->{}: ",
                self.daddr,
                self.dport,
                self.flow,
                self.endpoint_id,
                self.src_identity,
                self.dst_identity
            )?,
            EventKind::PolicyVerdict(kind) => {
                // The remote side is the peer of the endpoint whose policy allowed.
                let (remote, direction) = match self.direction {
                    Some(TrafficDirection::Ingress) => (self.src_identity, "ingress"),
                    Some(TrafficDirection::Egress) => (self.dst_identity, "egress"),
                    None => (self.dst_identity, "unknown direction"),
                };
                write!(
                    f,
                    "Policy verdict log: flow {:#x} local EP ID {}, remote ID {remote}, \
                     proto {}, {direction}, action allow, match {kind}, ",
                    self.flow, self.endpoint_id, self.protocol
                )?
            }
        }
        self.write_flow(f)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn syn() -> MonitorEvent {
        MonitorEvent {
            kind: EventKind::Trace(ObservationPoint::ToEndpoint),
            endpoint_id: 3833,
            src_identity: 38354,
            dst_identity: 6587186,
            saddr: Ipv4Addr::new(10, 60, 1, 7),
            daddr: Ipv4Addr::new(10, 60, 2, 9),
            sport: 42728,
            dport: 6379,
            protocol: 6,
            tcp_flags: 0x02,
            state: TraceState::New,
            direction: Some(TrafficDirection::Ingress),
            ifindex: 7,
            len: 74,
            flow: 0x28c6_44b8,
            ktime_ns: 99,
        }
    }

    #[test]
    fn prints_like_cilium_monitor() {
        assert_eq!(
            syn().to_string(),
            "-> endpoint 3833 flow 0x28c644b8 , identity 38354->6587186 state new: \
             10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN"
        );
        let drop = MonitorEvent {
            kind: EventKind::Drop(DropReason {
                code: 6,
                name: "Policy denied".into(),
            }),
            ..syn()
        };
        assert_eq!(
            drop.to_string(),
            "xx drop (Policy denied) flow 0x28c644b8 to endpoint 3833, identity 38354->6587186: \
             10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN"
        );
        assert_eq!(
            MonitorMessage::Lost { count: 3 }.to_string(),
            "(lost 3 events)"
        );
    }

    #[test]
    fn messages_round_trip_as_json_lines() {
        for m in [
            MonitorMessage::Event(syn()),
            MonitorMessage::Event(MonitorEvent {
                kind: EventKind::Trace(ObservationPoint::Other(9)),
                state: TraceState::Other(7),
                direction: None,
                ..syn()
            }),
            MonitorMessage::Event(MonitorEvent {
                kind: EventKind::Translation {
                    frontend: "10.96.0.10:80".parse().unwrap(),
                },
                direction: Some(TrafficDirection::Egress),
                ..syn()
            }),
            MonitorMessage::Event(MonitorEvent {
                kind: EventKind::PolicyVerdict(PolicyMatch::L4Only),
                state: TraceState::Unknown,
                ..syn()
            }),
            MonitorMessage::Event(MonitorEvent {
                kind: EventKind::PolicyVerdict(PolicyMatch::Other(9)),
                ..syn()
            }),
            MonitorMessage::Lost { count: 12 },
        ] {
            let line = serde_json::to_string(&m).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<MonitorMessage>(&line).unwrap(), m);
        }
    }

    #[test]
    fn translations_and_policy_verdicts_print_like_cilium_monitor() {
        let xlate = MonitorEvent {
            kind: EventKind::Translation {
                frontend: "10.96.0.10:80".parse().unwrap(),
            },
            direction: Some(TrafficDirection::Egress),
            ..syn()
        };
        assert_eq!(
            xlate.to_string(),
            "xlate service 10.96.0.10:80 -> backend 10.60.2.9:6379 flow 0x28c644b8 endpoint \
             3833, identity 38354->6587186: 10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN"
        );
        let ingress = MonitorEvent {
            kind: EventKind::PolicyVerdict(PolicyMatch::L3L4),
            ..syn()
        };
        assert_eq!(
            ingress.to_string(),
            "Policy verdict log: flow 0x28c644b8 local EP ID 3833, remote ID 38354, proto 6, \
             ingress, action allow, match L3-L4, 10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN"
        );
        let egress = MonitorEvent {
            kind: EventKind::PolicyVerdict(PolicyMatch::All),
            direction: Some(TrafficDirection::Egress),
            ..syn()
        };
        assert!(
            egress
                .to_string()
                .contains("remote ID 6587186, proto 6, egress, action allow, match all,"),
            "{egress}"
        );
        let reply = MonitorEvent {
            state: TraceState::Reply,
            ..syn()
        };
        assert!(reply.to_string().contains("state reply:"));
    }

    #[test]
    fn raw_codes_round_trip() {
        for raw in 0..=255u8 {
            assert_eq!(TraceState::from_raw(raw).as_raw(), raw);
            assert_eq!(PolicyMatch::from_raw(raw).as_raw(), raw);
        }
        assert_eq!(TraceState::Reply.is_reply(), Some(true));
        assert_eq!(TraceState::New.is_reply(), Some(false));
        assert_eq!(TraceState::Unknown.is_reply(), None);
        assert_eq!(TraceState::Unknown.to_string(), "unknown");
    }

    #[test]
    fn filter_keeps_its_kind() {
        assert!(MonitorFilter::Trace.keeps(&syn()));
        assert!(!MonitorFilter::Drop.keeps(&syn()));
        assert_eq!("drop".parse::<MonitorFilter>(), Ok(MonitorFilter::Drop));
        assert!("all".parse::<MonitorFilter>().is_err());
        for f in MonitorFilter::ALL {
            assert_eq!(f.as_str().parse::<MonitorFilter>(), Ok(f));
            // The query parameter and the JSON name agree.
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.as_str())
            );
        }
        let xlate = MonitorEvent {
            kind: EventKind::Translation {
                frontend: "10.96.0.10:80".parse().unwrap(),
            },
            ..syn()
        };
        assert!(MonitorFilter::Translation.keeps(&xlate));
        assert!(!MonitorFilter::Trace.keeps(&xlate));
        let verdict = MonitorEvent {
            kind: EventKind::PolicyVerdict(PolicyMatch::L3Only),
            ..syn()
        };
        assert!(MonitorFilter::PolicyVerdict.keeps(&verdict));
        assert!(!MonitorFilter::Translation.keeps(&verdict));
        let drop = |code| MonitorEvent {
            kind: EventKind::Drop(DropReason {
                code,
                name: String::new(),
            }),
            ..syn()
        };
        assert!(MonitorFilter::PolicyVerdict.keeps(&drop(DROP_POLICY_DENIED)));
        assert!(!MonitorFilter::PolicyVerdict.keeps(&drop(11)));
        assert!(MonitorFilter::Drop.keeps(&drop(DROP_POLICY_DENIED)));
    }
}
