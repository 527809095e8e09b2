//! Flows, Plexus's observability record of what the datapath did with packets, in the shape
//! Hubble gives them, so that `plexus observe` reads like `hubble observe` and tools that read
//! Hubble's JSON read ours.
//!
//! Pure, no IO: the agent builds [`Flow`]s from datapath events and keeps them in a
//! [`FlowRing`]; its API answers a [`FlowRequest`] with [`FlowResponse`] JSON lines; the
//! relay merges nodes' streams by time ([`merge`]); the CLI turns its flags into a request
//! ([`ObserveBuilder`]) and prints the answer ([`print`]).
//!
//! - [`flow`]: [`Flow`] and its parts, Hubble's field names and enums, Cilium's drop codes.
//! - [`response`]: [`FlowResponse`], one line of a stream (flow, lost events, node status).
//! - [`filter`]: [`FlowFilter`], [`FlowRequest`] and their matching semantics.
//! - [`observe`]: `plexus observe` flags to a [`FlowRequest`] (Hubble's rules, `--not`).
//! - [`ring`]: [`FlowRing`], bounded history and followers, lost events when a follower lags.
//! - [`print`]: compact, table and JSON output.
//! - [`merge`]: time-ordered k-way merges, exact for history, windowed for following.
//!
//! See `docs/observability.md` for the fields and filters from a user's point of view.

pub mod filter;
pub mod flow;
pub mod merge;
pub mod observe;
pub mod print;
pub mod response;
pub mod ring;

pub use filter::{EventTypeFilter, FilterError, FlowFilter, FlowMatcher, FlowRequest};
pub use flow::{
    CiliumEventType, DropReasonDesc, DropReasonInfo, Endpoint, Flow, FlowType, Icmp, Ip, IpVersion,
    Layer4, NetworkInterface, Policy, PolicyDeny, Service, SocketTranslationPoint, Tcp, TcpFlags,
    TraceObservationPoint, TrafficDirection, Translation, Udp, Verdict,
};
pub use merge::{Timed, merge_follow, merge_history, merge_sorted};
pub use observe::{FlagError, ObserveBuilder};
pub use print::{OutputFormat, PrintOptions};
pub use response::{
    FlowResponse, LostEvent, LostEventSource, NodeState, NodeStatusEvent, ResponseKind,
};
pub use ring::{DEFAULT_CAPACITY, FlowFollower, FlowQuery, FlowRing};
