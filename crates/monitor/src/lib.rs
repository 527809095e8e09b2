//! The datapath's trace and drop events as users see them: the one place that says what an
//! event holds and how it is printed. The datapath turns its raw events into [`MonitorEvent`]s;
//! the agent streams them (`GET /v1/monitor[?type=drop|trace]`, JSON lines, one
//! [`MonitorMessage`] each); the CLI prints them.
//!
//! The [`std::fmt::Display`] of a message is the line `plexus monitor` prints, in the shape of
//! `cilium monitor`:
//!
//! ```text
//! -> endpoint 3833 flow 0x28c644b8 , identity 38354->6587186 state new: 10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN
//! xx drop (Policy denied) flow 0x28c644b8 to endpoint 3833, identity 38354->6587186: 10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN
//! ```

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Which events a monitor stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MonitorFilter {
    /// Drops only.
    Drop,
    /// Traces only.
    Trace,
}

impl MonitorFilter {
    /// The value of the `type` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Trace => "trace",
        }
    }

    /// Whether `event` passes the filter.
    pub fn keeps(self, event: &MonitorEvent) -> bool {
        matches!(
            (self, &event.kind),
            (Self::Drop, EventKind::Drop(_)) | (Self::Trace, EventKind::Trace(_))
        )
    }
}

impl std::str::FromStr for MonitorFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(Self::Drop),
            "trace" => Ok(Self::Trace),
            other => Err(format!("monitor type {other:?}: expected drop or trace")),
        }
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

/// Trace or drop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A packet seen on its way.
    Trace(ObservationPoint),
    /// A packet dropped.
    Drop(DropReason),
}

/// The connection state of a traced packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceState {
    /// No connection-tracking entry yet.
    New,
    /// Part of an established connection.
    Established,
    /// A reply.
    Reply,
    /// Related to a connection (ICMP errors).
    Related,
    /// A state this version does not know, by its raw number.
    Unknown(u8),
}

impl TraceState {
    /// The state for a raw code of the BPF programs.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            0 => Self::New,
            1 => Self::Established,
            2 => Self::Reply,
            3 => Self::Related,
            other => Self::Unknown(other),
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
            Self::Unknown(raw) => write!(f, "unknown({raw})"),
        }
    }
}

/// One trace or drop event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MonitorEvent {
    /// Trace (with where) or drop (with why).
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
    /// The connection state of a trace.
    pub state: TraceState,
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
                state: TraceState::Unknown(7),
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
    fn filter_keeps_its_kind() {
        assert!(MonitorFilter::Trace.keeps(&syn()));
        assert!(!MonitorFilter::Drop.keeps(&syn()));
        assert_eq!("drop".parse::<MonitorFilter>(), Ok(MonitorFilter::Drop));
        assert!("all".parse::<MonitorFilter>().is_err());
    }
}
