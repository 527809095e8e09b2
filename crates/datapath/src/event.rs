//! Monitor events: the records the BPF programs write to the `PLEXUS_EVENTS` ring buffer
//! (traces, drops, translations, policy verdicts), decoded, and printed in the shape of
//! `cilium monitor`.
//!
//! Decoding never panics: a record shorter than the oldest layout is an [`EventError`], an
//! unknown reason, observation point, state or match kind keeps its raw number. Records of the
//! 48-byte layout of earlier builds (still in a pinned ring buffer after an upgrade) decode with
//! no direction and no frontend.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
};

pub use plexus_monitor::{PolicyMatch, TraceState};

use crate::Direction;

/// Size of one ring-buffer record (`struct event` in `bpf/lib/common.h`).
pub const EVENT_SIZE: usize = 56;
/// Size of the records of earlier builds (no direction, no frontend).
pub const EVENT_SIZE_V1: usize = 48;

const EVENT_TRACE: u8 = 1;
const EVENT_DROP: u8 = 2;
const EVENT_TRANSLATION: u8 = 3;
const EVENT_POLICY_VERDICT: u8 = 4;

/// A ring-buffer record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The record is shorter than [`EVENT_SIZE_V1`].
    #[error("event record of {0} bytes, expected at least {EVENT_SIZE_V1}")]
    Truncated(usize),
    /// The record's type byte is none of trace, drop, translation and policy verdict.
    #[error("unknown event type {0}")]
    UnknownType(u8),
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Headers too short or malformed.
    InvalidPacket,
    /// The source address is not a local endpoint.
    UnknownSource,
    /// No local endpoint has the destination address.
    NoEndpoint,
    /// Neither IPv4 nor ARP.
    UnsupportedL3,
    /// A packet on the tunnel device without tunnel metadata.
    NoTunnelKey,
    /// Denied by policy.
    PolicyDenied,
    /// A pod sent with an address that belongs to another endpoint's device.
    SourceMismatch,
    /// An ARP packet other than a request for the gateway.
    UnsupportedArp,
    /// The node configuration map is missing.
    NoConfig,
    /// Setting the tunnel metadata failed.
    TunnelKeyFailed,
    /// A packet to a service frontend that has no active backend.
    NoServiceBackend,
    /// Strict-mode encryption: the destination's node has no WireGuard peer yet, so the packet
    /// would have left unencrypted.
    Unencrypted,
    /// A reason this version does not know.
    Other(u8),
}

impl DropReason {
    /// The reason for a raw code of the BPF programs.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::InvalidPacket,
            2 => Self::UnknownSource,
            3 => Self::NoEndpoint,
            4 => Self::UnsupportedL3,
            5 => Self::NoTunnelKey,
            6 => Self::PolicyDenied,
            7 => Self::SourceMismatch,
            8 => Self::UnsupportedArp,
            9 => Self::NoConfig,
            10 => Self::TunnelKeyFailed,
            11 => Self::NoServiceBackend,
            12 => Self::Unencrypted,
            other => Self::Other(other),
        }
    }

    /// The raw code used by the BPF programs.
    pub fn as_raw(self) -> u8 {
        match self {
            Self::InvalidPacket => 1,
            Self::UnknownSource => 2,
            Self::NoEndpoint => 3,
            Self::UnsupportedL3 => 4,
            Self::NoTunnelKey => 5,
            Self::PolicyDenied => 6,
            Self::SourceMismatch => 7,
            Self::UnsupportedArp => 8,
            Self::NoConfig => 9,
            Self::TunnelKeyFailed => 10,
            Self::NoServiceBackend => 11,
            Self::Unencrypted => 12,
            Self::Other(raw) => raw,
        }
    }

    /// Human-readable name, as `cilium monitor` would print it.
    pub fn name(self) -> String {
        match self {
            Self::InvalidPacket => "Invalid packet".into(),
            Self::UnknownSource => "Unknown source endpoint".into(),
            Self::NoEndpoint => "No local endpoint for destination".into(),
            Self::UnsupportedL3 => "Unsupported L3 protocol".into(),
            Self::NoTunnelKey => "Missing tunnel metadata".into(),
            Self::PolicyDenied => "Policy denied".into(),
            Self::SourceMismatch => "Invalid source ip".into(),
            Self::UnsupportedArp => "Unsupported ARP request".into(),
            Self::NoConfig => "Datapath not configured".into(),
            Self::TunnelKeyFailed => "Failed to set tunnel key".into(),
            Self::NoServiceBackend => "Service backend not found".into(),
            Self::Unencrypted => "Traffic is unencrypted".into(),
            Self::Other(raw) => format!("Unknown reason {raw}"),
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Where a trace event was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObservationPoint {
    /// Leaving a pod (from_container).
    FromEndpoint,
    /// Entering a pod (to_container).
    ToEndpoint,
    /// Arriving from the tunnel (from_overlay).
    FromOverlay,
    /// Sent into the tunnel.
    ToOverlay,
    /// Handed to the kernel's stack.
    ToStack,
    /// A point this version does not know.
    Other(u8),
}

impl ObservationPoint {
    /// The point for a raw code of the BPF programs.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::FromEndpoint,
            2 => Self::ToEndpoint,
            3 => Self::FromOverlay,
            4 => Self::ToOverlay,
            5 => Self::ToStack,
            other => Self::Other(other),
        }
    }

    /// The raw code used by the BPF programs.
    pub fn as_raw(self) -> u8 {
        match self {
            Self::FromEndpoint => 1,
            Self::ToEndpoint => 2,
            Self::FromOverlay => 3,
            Self::ToOverlay => 4,
            Self::ToStack => 5,
            Self::Other(raw) => raw,
        }
    }
}

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A packet seen on its way (TCP only with SYN, FIN or RST).
    Trace(ObservationPoint),
    /// A packet dropped.
    Drop(DropReason),
    /// The load balancer translated a new connection to a service frontend (once per
    /// connection, at its first packet or a SYN that reopens it): the event's `daddr`/`dport`
    /// are the backend chosen, its `saddr`/`sport` the client as it sent (also for a pod that
    /// reached itself, whose packet leaves with the hairpin source 169.254.42.1).
    Translation {
        /// The frontend (service address and port) the client sent to.
        frontend: SocketAddrV4,
    },
    /// An enforced policy allowed a new connection (once per connection and direction: egress
    /// at the sender's endpoint, ingress at the receiver's; the event's `direction` says
    /// which), by a match of this kind. Denials are [`EventKind::Drop`]s with
    /// [`DropReason::PolicyDenied`]; an endpoint without policy in that direction gets none.
    PolicyVerdict(PolicyMatch),
}

/// One decoded ring-buffer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MonitorEvent {
    /// Trace (with its observation point), drop (with its reason), translation (with the
    /// frontend) or policy verdict (with the kind of match).
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
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub tcp_flags: u8,
    /// The connection state conntrack found for the packet: traces where the policy's
    /// conntrack was looked up (new, established, reply), [`TraceState::Reply`] for replies
    /// restored by the load balancer, [`TraceState::New`] for translations and policy verdicts,
    /// [`TraceState::Unknown`] where nothing was looked up (drops, arrivals from the tunnel).
    pub state: TraceState,
    /// The packet's direction seen from `endpoint_id` (egress leaving it, ingress entering it);
    /// `None` when the record does not say (records of earlier builds).
    pub direction: Option<Direction>,
    /// Interface the program ran on.
    pub ifindex: u32,
    /// Packet length.
    pub len: u32,
    /// The packet's flow hash (`skb->hash`), as Cilium's monitor shows it.
    pub flow: u32,
    /// `bpf_ktime_get_ns` at the event.
    pub ktime_ns: u64,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn ip_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

impl MonitorEvent {
    /// Decodes one ring-buffer record (of this layout or, shorter, of [`EVENT_SIZE_V1`]).
    pub fn decode(record: &[u8]) -> Result<Self, EventError> {
        if record.len() < EVENT_SIZE_V1 {
            return Err(EventError::Truncated(record.len()));
        }
        // Fields an older, shorter record lacks read as zero.
        let mut b = [0u8; EVENT_SIZE];
        let n = record.len().min(EVENT_SIZE);
        b[..n].copy_from_slice(&record[..n]);
        let kind = match b[0] {
            EVENT_TRACE => EventKind::Trace(ObservationPoint::from_raw(b[1])),
            EVENT_DROP => EventKind::Drop(DropReason::from_raw(b[1])),
            EVENT_TRANSLATION => EventKind::Translation {
                frontend: SocketAddrV4::new(ip_at(&b, 48), u16_at(&b, 52)),
            },
            EVENT_POLICY_VERDICT => EventKind::PolicyVerdict(PolicyMatch::from_raw(b[1])),
            other => return Err(EventError::UnknownType(other)),
        };
        let mut ktime = [0u8; 8];
        ktime.copy_from_slice(&b[40..48]);
        Ok(Self {
            kind,
            endpoint_id: u16_at(&b, 2),
            src_identity: u32_at(&b, 4),
            dst_identity: u32_at(&b, 8),
            saddr: ip_at(&b, 12),
            daddr: ip_at(&b, 16),
            sport: u16_at(&b, 20),
            dport: u16_at(&b, 22),
            protocol: b[24],
            tcp_flags: b[25],
            state: TraceState::from_raw(b[26]),
            direction: Direction::from_raw(b[27]),
            ifindex: u32_at(&b, 28),
            len: u32_at(&b, 32),
            flow: u32_at(&b, 36),
            ktime_ns: u64::from_ne_bytes(ktime),
        })
    }

    /// Encodes the record as the BPF programs write it (for fakes and tests).
    pub fn encode(&self) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        let (ty, sub) = match self.kind {
            EventKind::Trace(p) => (EVENT_TRACE, p.as_raw()),
            EventKind::Drop(r) => (EVENT_DROP, r.as_raw()),
            EventKind::Translation { frontend } => {
                b[48..52].copy_from_slice(&frontend.ip().octets());
                b[52..54].copy_from_slice(&frontend.port().to_ne_bytes());
                (EVENT_TRANSLATION, 0)
            }
            EventKind::PolicyVerdict(m) => (EVENT_POLICY_VERDICT, m.as_raw()),
        };
        b[0] = ty;
        b[1] = sub;
        b[2..4].copy_from_slice(&self.endpoint_id.to_ne_bytes());
        b[4..8].copy_from_slice(&self.src_identity.to_ne_bytes());
        b[8..12].copy_from_slice(&self.dst_identity.to_ne_bytes());
        b[12..16].copy_from_slice(&self.saddr.octets());
        b[16..20].copy_from_slice(&self.daddr.octets());
        b[20..22].copy_from_slice(&self.sport.to_ne_bytes());
        b[22..24].copy_from_slice(&self.dport.to_ne_bytes());
        b[24] = self.protocol;
        b[25] = self.tcp_flags;
        b[26] = self.state.as_raw();
        b[27] = self.direction.map_or(0, Direction::as_raw);
        b[28..32].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[32..36].copy_from_slice(&self.len.to_ne_bytes());
        b[36..40].copy_from_slice(&self.flow.to_ne_bytes());
        b[40..48].copy_from_slice(&self.ktime_ns.to_ne_bytes());
        b
    }

    /// The drop reason, if this is a drop.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self.kind {
            EventKind::Drop(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the packet is a reply of its connection; `None` when the state is unknown.
    pub fn is_reply(&self) -> Option<bool> {
        self.state.is_reply()
    }
}

impl From<&MonitorEvent> for plexus_monitor::MonitorEvent {
    /// The event as users see it (and as the agent streams it).
    fn from(e: &MonitorEvent) -> Self {
        use plexus_monitor as m;
        m::MonitorEvent {
            kind: match e.kind {
                EventKind::Trace(point) => m::EventKind::Trace(match point {
                    ObservationPoint::FromEndpoint => m::ObservationPoint::FromEndpoint,
                    ObservationPoint::ToEndpoint => m::ObservationPoint::ToEndpoint,
                    ObservationPoint::FromOverlay => m::ObservationPoint::FromOverlay,
                    ObservationPoint::ToOverlay => m::ObservationPoint::ToOverlay,
                    ObservationPoint::ToStack => m::ObservationPoint::ToStack,
                    ObservationPoint::Other(raw) => m::ObservationPoint::Other(raw),
                }),
                EventKind::Drop(reason) => m::EventKind::Drop(m::DropReason {
                    code: reason.as_raw(),
                    name: reason.name(),
                }),
                EventKind::Translation { frontend } => m::EventKind::Translation { frontend },
                EventKind::PolicyVerdict(kind) => m::EventKind::PolicyVerdict(kind),
            },
            endpoint_id: e.endpoint_id,
            src_identity: e.src_identity,
            dst_identity: e.dst_identity,
            saddr: e.saddr,
            daddr: e.daddr,
            sport: e.sport,
            dport: e.dport,
            protocol: e.protocol,
            tcp_flags: e.tcp_flags,
            state: e.state,
            direction: e.direction.map(|d| match d {
                Direction::Ingress => m::TrafficDirection::Ingress,
                Direction::Egress => m::TrafficDirection::Egress,
            }),
            ifindex: e.ifindex,
            len: e.len,
            flow: e.flow,
            ktime_ns: e.ktime_ns,
        }
    }
}

/// Printed as `cilium monitor` prints it; the format lives in [`plexus_monitor`], the one place
/// the CLI prints events from too.
impl fmt::Display for MonitorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        plexus_monitor::MonitorEvent::from(self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
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
            direction: Some(Direction::Ingress),
            ifindex: 7,
            len: 74,
            flow: 0x28c6_44b8,
            ktime_ns: 99,
        }
    }

    #[test]
    fn trace_prints_like_cilium_monitor() {
        assert_eq!(
            syn().to_string(),
            "-> endpoint 3833 flow 0x28c644b8 , identity 38354->6587186 state new: \
             10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN"
        );
    }

    #[test]
    fn drop_prints_like_cilium_monitor() {
        let ev = MonitorEvent {
            kind: EventKind::Drop(DropReason::PolicyDenied),
            ..syn()
        };
        assert_eq!(
            ev.to_string(),
            "xx drop (Policy denied) flow 0x28c644b8 to endpoint 3833, identity 38354->6587186: \
             10.60.1.7:42728 -> 10.60.2.9:6379 tcp SYN"
        );
    }

    #[test]
    fn flags_icmp_and_unparsed_packets() {
        let synack = MonitorEvent {
            tcp_flags: 0x12,
            ..syn()
        };
        assert!(synack.to_string().ends_with("tcp SYN, ACK"));
        let ping = MonitorEvent {
            protocol: 1,
            sport: 8,
            dport: 0,
            ..syn()
        };
        assert!(
            ping.to_string()
                .ends_with("10.60.1.7 -> 10.60.2.9 EchoRequest")
        );
        let bare = MonitorEvent {
            kind: EventKind::Drop(DropReason::UnsupportedL3),
            saddr: Ipv4Addr::UNSPECIFIED,
            daddr: Ipv4Addr::UNSPECIFIED,
            protocol: 0,
            ..syn()
        };
        assert!(bare.to_string().ends_with("74 bytes on ifindex 7"));
    }

    #[test]
    fn encode_decode_round_trip_and_errors() {
        let ev = syn();
        assert_eq!(MonitorEvent::decode(&ev.encode()).unwrap(), ev);
        let dropped = MonitorEvent {
            kind: EventKind::Drop(DropReason::Other(200)),
            ..ev
        };
        assert_eq!(MonitorEvent::decode(&dropped.encode()).unwrap(), dropped);
        assert_eq!(
            MonitorEvent::decode(&[0u8; 10]),
            Err(EventError::Truncated(10))
        );
        let mut bad = ev.encode();
        bad[0] = 9;
        assert_eq!(MonitorEvent::decode(&bad), Err(EventError::UnknownType(9)));
        for raw in 0..=255u8 {
            assert_eq!(DropReason::from_raw(raw).as_raw(), raw);
            assert_eq!(ObservationPoint::from_raw(raw).as_raw(), raw);
        }
        for ev in [
            MonitorEvent {
                kind: EventKind::Translation {
                    frontend: "10.96.0.10:80".parse().unwrap(),
                },
                direction: Some(Direction::Egress),
                ..syn()
            },
            MonitorEvent {
                kind: EventKind::PolicyVerdict(PolicyMatch::L3L4),
                state: TraceState::Reply,
                ..syn()
            },
            MonitorEvent {
                kind: EventKind::PolicyVerdict(PolicyMatch::Other(77)),
                state: TraceState::Unknown,
                direction: None,
                ..syn()
            },
        ] {
            assert_eq!(MonitorEvent::decode(&ev.encode()).unwrap(), ev);
        }
    }

    /// The byte offsets are the C struct's (`bpf/lib/common.h`), checked on a hand-made record.
    #[test]
    fn layout_matches_the_c_struct() {
        let mut b = [0u8; EVENT_SIZE];
        b[0] = 3; // EVENT_TRANSLATION
        b[2..4].copy_from_slice(&3833u16.to_ne_bytes());
        b[12..16].copy_from_slice(&[10, 60, 1, 7]);
        b[16..20].copy_from_slice(&[10, 60, 1, 9]);
        b[22..24].copy_from_slice(&8080u16.to_ne_bytes());
        b[26] = 2; // CT_STATE_REPLY
        b[27] = 2; // DIR_EGRESS
        b[48..52].copy_from_slice(&[10, 96, 0, 10]);
        b[52..54].copy_from_slice(&80u16.to_ne_bytes());
        let ev = MonitorEvent::decode(&b).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::Translation {
                frontend: "10.96.0.10:80".parse().unwrap()
            }
        );
        assert_eq!((ev.daddr, ev.dport), (Ipv4Addr::new(10, 60, 1, 9), 8080));
        assert_eq!(ev.state, TraceState::Reply);
        assert_eq!(ev.is_reply(), Some(true));
        assert_eq!(ev.direction, Some(Direction::Egress));
        assert_eq!(ev.encode(), b);
        b[0] = 4; // EVENT_POLICY_VERDICT
        b[1] = 3; // POLICY_MATCH_L4_ONLY
        b[26] = 5; // CT_STATE_UNKNOWN
        let ev = MonitorEvent::decode(&b).unwrap();
        assert_eq!(ev.kind, EventKind::PolicyVerdict(PolicyMatch::L4Only));
        assert_eq!(ev.is_reply(), None);
    }

    /// A record of the 48-byte layout (a ring buffer pinned by an earlier build) still decodes.
    #[test]
    fn records_of_the_earlier_layout_decode() {
        let ev = MonitorEvent {
            direction: None,
            ..syn()
        };
        let old = &ev.encode()[..EVENT_SIZE_V1];
        assert_eq!(MonitorEvent::decode(old).unwrap(), ev);
        assert_eq!(
            MonitorEvent::decode(&old[..47]),
            Err(EventError::Truncated(47))
        );
    }

    #[test]
    fn new_kinds_print_through_plexus_monitor() {
        let xlate = MonitorEvent {
            kind: EventKind::Translation {
                frontend: "10.96.0.10:80".parse().unwrap(),
            },
            direction: Some(Direction::Egress),
            ..syn()
        };
        assert!(
            xlate
                .to_string()
                .starts_with("xlate service 10.96.0.10:80 -> backend 10.60.2.9:6379 "),
            "{xlate}"
        );
        let verdict = MonitorEvent {
            kind: EventKind::PolicyVerdict(PolicyMatch::L3Only),
            ..syn()
        };
        assert!(
            verdict
                .to_string()
                .contains("remote ID 38354, proto 6, ingress, action allow, match L3-Only"),
            "{verdict}"
        );
    }
}
