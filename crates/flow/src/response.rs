//! [`FlowResponse`]: one line of a flow stream, in the shape of Hubble's `GetFlowsResponse`:
//!
//! ```text
//! {"flow":{...},"node_name":"c1/n1","time":"2026-12-07T12:00:01.123Z"}
//! {"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"3"},"node_name":"c1/n1","time":"..."}
//! {"node_status":{"state_change":"NODE_UNAVAILABLE","node_names":["c2/n1"],"message":"..."},"time":"..."}
//! ```
//!
//! `num_events_lost` is a protojson `uint64`: a decimal string (a number is accepted too).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::flow::{Flow, is_default, timestamp, uint64_string};

/// Where events were lost (Hubble's `LostEventSource`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LostEventSource {
    /// Unknown (omitted).
    #[default]
    #[serde(rename = "UNKNOWN_LOST_EVENT_SOURCE")]
    Unknown,
    /// The BPF ring buffer was full: the datapath could not hand events to the agent.
    #[serde(rename = "PERF_EVENT_RING_BUFFER")]
    PerfEventRingBuffer,
    /// The agent's event reader fell behind (its broadcast lagged).
    #[serde(rename = "OBSERVER_EVENTS_QUEUE")]
    ObserverEventsQueue,
    /// A flow stream fell behind the flow ring; the flows were overwritten before it read them.
    #[serde(rename = "HUBBLE_RING_BUFFER")]
    HubbleRingBuffer,
}

impl LostEventSource {
    /// Hubble's enum name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN_LOST_EVENT_SOURCE",
            Self::PerfEventRingBuffer => "PERF_EVENT_RING_BUFFER",
            Self::ObserverEventsQueue => "OBSERVER_EVENTS_QUEUE",
            Self::HubbleRingBuffer => "HUBBLE_RING_BUFFER",
        }
    }
}

/// Hubble's `LostEvent`: some events never reached this stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LostEvent {
    /// Where they were lost.
    #[serde(skip_serializing_if = "is_default")]
    pub source: LostEventSource,
    /// How many.
    #[serde(with = "uint64_string", skip_serializing_if = "is_default")]
    pub num_events_lost: u64,
}

/// Hubble relay's `NodeState`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Unknown (omitted).
    #[default]
    #[serde(rename = "UNKNOWN_NODE_STATE")]
    Unknown,
    /// The relay receives flows from these nodes.
    #[serde(rename = "NODE_CONNECTED")]
    Connected,
    /// These nodes could not be reached.
    #[serde(rename = "NODE_UNAVAILABLE")]
    Unavailable,
    /// These nodes left the cluster.
    #[serde(rename = "NODE_GONE")]
    Gone,
    /// These nodes answered with an error (in `message`).
    #[serde(rename = "NODE_ERROR")]
    Error,
}

/// Hubble relay's `NodeStatusEvent`: which nodes a relay's answer covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatusEvent {
    /// What happened to the nodes.
    #[serde(skip_serializing_if = "is_default")]
    pub state_change: NodeState,
    /// The nodes, `cluster/node`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_names: Vec<String>,
    /// Details (the error, for `NODE_ERROR` and `NODE_UNAVAILABLE`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What a [`FlowResponse`] carries (one of the three keys).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseKind {
    /// `"flow"`: a flow.
    #[serde(rename = "flow")]
    Flow(Arc<Flow>),
    /// `"lost_events"`: events that never reached the stream.
    #[serde(rename = "lost_events")]
    LostEvents(LostEvent),
    /// `"node_status"`: the relay's report on its nodes.
    #[serde(rename = "node_status")]
    NodeStatus(NodeStatusEvent),
}

/// One line of a flow stream (Hubble's `GetFlowsResponse`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowResponse {
    /// The flow, lost events or node status.
    #[serde(flatten)]
    pub kind: ResponseKind,
    /// The node that produced the line, `cluster/node` (empty for the relay's node status).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// The time of the flow, or when the loss or status was noticed.
    #[serde(with = "timestamp")]
    pub time: DateTime<Utc>,
}

impl FlowResponse {
    /// The line for a flow (its node name and time copied out, as Hubble does).
    pub fn flow(flow: impl Into<Arc<Flow>>) -> Self {
        let flow = flow.into();
        Self {
            node_name: flow.node_name.clone(),
            time: flow.time,
            kind: ResponseKind::Flow(flow),
        }
    }

    /// The line for `count` events lost at `source`, noticed by `node_name` at `time`.
    pub fn lost(source: LostEventSource, count: u64, node_name: &str, time: DateTime<Utc>) -> Self {
        Self {
            kind: ResponseKind::LostEvents(LostEvent {
                source,
                num_events_lost: count,
            }),
            node_name: node_name.into(),
            time,
        }
    }

    /// The relay's line about `nodes`.
    pub fn node_status(
        state: NodeState,
        nodes: Vec<String>,
        message: &str,
        time: DateTime<Utc>,
    ) -> Self {
        Self {
            kind: ResponseKind::NodeStatus(NodeStatusEvent {
                state_change: state,
                node_names: nodes,
                message: message.into(),
            }),
            node_name: String::new(),
            time,
        }
    }

    /// The flow, if this line is one.
    pub fn as_flow(&self) -> Option<&Arc<Flow>> {
        match &self.kind {
            ResponseKind::Flow(f) => Some(f),
            _ => None,
        }
    }

    /// The line as one JSON line (no newline).
    pub fn to_json_line(&self) -> String {
        // A FlowResponse has only string keys and serializable values; this cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one JSON line.
    pub fn from_json_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}
