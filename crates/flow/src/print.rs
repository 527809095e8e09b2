//! Printing flow streams as `hubble observe` does: compact lines, an aligned table, or the JSON
//! lines as they are.
//!
//! Compact (Hubble's `-o compact`):
//!
//! ```text
//! Dec  7 12:00:01.123: default/x-wing:41234 (ID:1234) -> default/rebel-base-1:80 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)
//! Dec  7 12:00:01.124: default/x-wing:41234 (ID:1234) <> default/db:5432 (ID:7777) Policy denied DROPPED (TCP Flags: SYN)
//! Dec  7 12:00:01.125: default/x-wing:41234 (ID:1234) -> default/rebel-base-2:80 (ID:5678) post-xlate-fwd TRANSLATED (TCP 10.96.0.10:80 -> 10.60.2.9:80 (cluster c2))
//! Dec  7 12:00:02.000 [c1/n1]: EVENTS LOST: HUBBLE_RING_BUFFER 12
//! Dec  7 12:00:03.000: 1 nodes are unavailable: c2/n1
//! ```
//!
//! The time is UTC in Go's `StampMilli` layout. A side is `namespace/pod` (else
//! `namespace/service`, else the address) with its port; then its identity, `(ID:n)` or the
//! reserved name (`(world)`). The arrow is `->`, `<-` for replies (the sides swapped back to
//! the connection's direction) and `<>` when unknown. The type is the observation point for
//! traces, the drop reason in words for drops, `policy-verdict:<match> <DIRECTION>` for policy
//! verdicts and the translation point for translations; the verdict reads `ALLOWED`/`DENIED`
//! for policy verdicts. `[node]` follows the time when [`PrintOptions::node_name`] is set (lost
//! events always name their node).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use plexus_model::identity::ReservedIdentity;

use crate::flow::{Flow, Layer4, TraceObservationPoint, Verdict, message_type, policy_match};
use crate::response::{FlowResponse, NodeState, NodeStatusEvent, ResponseKind};

/// The output formats of `plexus observe -o`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// One line per flow (the default).
    #[default]
    Compact,
    /// Aligned columns.
    Table,
    /// The JSON lines as received.
    Json,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "compact" => Ok(Self::Compact),
            "table" => Ok(Self::Table),
            "json" | "jsonpb" => Ok(Self::Json),
            other => Err(format!("output {other:?}: expected compact, table or json")),
        }
    }
}

/// Printing options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrintOptions {
    /// Show the node name (`[cluster/node]` in compact, a NODE column in the table).
    pub node_name: bool,
}

/// A time as Hubble prints it: UTC, `Dec  7 12:00:01.123`.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.format("%b %e %H:%M:%S%.3f").to_string()
}

fn host_port(host: &str, port: Option<u32>) -> String {
    match port {
        Some(p) if p != 0 => {
            if host.contains(':') {
                format!("[{host}]:{p}")
            } else {
                format!("{host}:{p}")
            }
        }
        _ => host.to_string(),
    }
}

fn join_ns(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

/// The two sides as Hubble names them: `namespace/pod:port`, `namespace/service:port`, or
/// `address:port`.
pub fn hostnames(flow: &Flow) -> (String, String) {
    let Some(ip) = &flow.ip else {
        return (String::new(), String::new());
    };
    let ports = flow.l4.as_ref().and_then(Layer4::ports);
    let side =
        |addr: &str, ep: &crate::flow::Endpoint, svc: Option<&crate::flow::Service>, port| {
            let mut ns = ep.namespace.as_str();
            let mut svc_name = "";
            if let Some(s) = svc {
                ns = &s.namespace;
                svc_name = &s.name;
            }
            let host = if !ep.pod_name.is_empty() {
                join_ns(ns, &ep.pod_name)
            } else if !svc_name.is_empty() {
                join_ns(ns, svc_name)
            } else {
                addr.to_string()
            };
            host_port(&host, port)
        };
    (
        side(
            &ip.source,
            &flow.source,
            flow.source_service.as_ref(),
            ports.map(|p| p.0),
        ),
        side(
            &ip.destination,
            &flow.destination,
            flow.destination_service.as_ref(),
            ports.map(|p| p.1),
        ),
    )
}

/// An identity as Hubble prints it: `(ID:1234)` or the reserved name, `(world)`.
pub fn format_identity(id: u32) -> String {
    match ReservedIdentity::from_id(id) {
        Some(r) => format!("({})", r.name()),
        None => format!("(ID:{id})"),
    }
}

/// Hubble's type column: observation point, drop reason, policy verdict or translation point.
pub fn flow_type(flow: &Flow) -> String {
    let Some(ev) = flow.event_type else {
        return "UNKNOWN".into();
    };
    match ev.r#type {
        message_type::TRACE => {
            let point = TraceObservationPoint::from_monitor_sub_type(ev.sub_type);
            if point == TraceObservationPoint::Unknown {
                ev.sub_type.to_string()
            } else {
                point.short_name().into()
            }
        }
        message_type::DROP => {
            if flow.drop_reason_text.is_empty() {
                flow.drop_reason_desc.to_string()
            } else {
                flow.drop_reason_text.clone()
            }
        }
        message_type::POLICY_VERDICT => format!(
            "policy-verdict:{} {}",
            policy_match::name(flow.policy_match_type),
            flow.traffic_direction.as_str()
        ),
        message_type::TRACE_SOCK => flow.sock_xlate_point.short_name().into(),
        _ => "UNKNOWN".into(),
    }
}

/// Hubble's verdict column (`ALLOWED`/`DENIED`/`AUDITED` for policy verdicts).
pub fn verdict_text(flow: &Flow) -> &'static str {
    if flow.message_type() == message_type::POLICY_VERDICT {
        match flow.verdict {
            Verdict::Forwarded | Verdict::Redirected => return "ALLOWED",
            Verdict::Dropped | Verdict::Error => return "DENIED",
            Verdict::Audit => return "AUDITED",
            _ => {}
        }
    }
    flow.verdict.as_str()
}

/// One flow as a compact line (no newline).
pub fn compact_flow(flow: &Flow, opts: &PrintOptions) -> String {
    let (mut src, mut dst) = hostnames(flow);
    let mut src_id = format_identity(flow.source.identity);
    let mut dst_id = format_identity(flow.destination.identity);
    let arrow = match flow.is_reply {
        None => "<>",
        Some(false) => "->",
        Some(true) => {
            std::mem::swap(&mut src, &mut dst);
            std::mem::swap(&mut src_id, &mut dst_id);
            "<-"
        }
    };
    let node = if opts.node_name {
        format!(" [{}]", flow.node_name)
    } else {
        String::new()
    };
    format!(
        "{}{node}: {src} {src_id} {arrow} {dst} {dst_id} {} {} ({})",
        format_time(&flow.time),
        flow_type(flow),
        verdict_text(flow),
        flow.summary
    )
}

fn node_status_text(s: &NodeStatusEvent) -> String {
    let n = s.node_names.len();
    let names = s.node_names.join(", ");
    match s.state_change {
        NodeState::Connected => format!("Receiving flows from {n} nodes: {names}"),
        NodeState::Unavailable => {
            let mut t = format!("{n} nodes are unavailable: {names}");
            if !s.message.is_empty() {
                let _ = write!(t, " ({})", s.message);
            }
            t
        }
        NodeState::Gone => format!("{n} nodes removed from cluster: {names}"),
        NodeState::Error => format!("Error {:?} on {n} nodes: {names}", s.message),
        NodeState::Unknown => format!("unknown node status on {n} nodes: {names}"),
    }
}

/// One response line as compact text (no newline): a flow, lost events or a node status.
pub fn compact(resp: &FlowResponse, opts: &PrintOptions) -> String {
    let prefix = |node: &str| {
        if node.is_empty() {
            format_time(&resp.time)
        } else {
            format!("{} [{node}]", format_time(&resp.time))
        }
    };
    match &resp.kind {
        ResponseKind::Flow(f) => compact_flow(f, opts),
        ResponseKind::LostEvents(l) => format!(
            "{}: EVENTS LOST: {} {}",
            prefix(&resp.node_name),
            l.source.as_str(),
            l.num_events_lost
        ),
        ResponseKind::NodeStatus(s) => {
            format!("{}: {}", prefix(&resp.node_name), node_status_text(s))
        }
    }
}

/// One response line as JSON (no newline), exactly as streamed.
pub fn json(resp: &FlowResponse) -> String {
    resp.to_json_line()
}

/// Renders responses as Hubble's table: `TIMESTAMP [NODE] SOURCE DESTINATION TYPE VERDICT
/// SUMMARY`, columns padded to their widest cell plus three spaces. Lost events and node
/// status lines are printed in place, in their compact form, outside the columns.
pub fn table(resps: &[FlowResponse], opts: &PrintOptions) -> String {
    enum Row {
        Cells(Vec<String>),
        Line(String),
    }
    let mut header = vec!["TIMESTAMP".to_string()];
    if opts.node_name {
        header.push("NODE".into());
    }
    header.extend(
        ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
            .into_iter()
            .map(String::from),
    );
    let mut rows = vec![Row::Cells(header)];
    for r in resps {
        match &r.kind {
            ResponseKind::Flow(f) => {
                let (src, dst) = hostnames(f);
                let mut cells = vec![format_time(&f.time)];
                if opts.node_name {
                    cells.push(f.node_name.clone());
                }
                cells.extend([
                    src,
                    dst,
                    flow_type(f),
                    verdict_text(f).to_string(),
                    f.summary.clone(),
                ]);
                rows.push(Row::Cells(cells));
            }
            _ => rows.push(Row::Line(compact(r, opts))),
        }
    }
    let columns = if opts.node_name { 7 } else { 6 };
    let mut widths = vec![0usize; columns];
    for row in &rows {
        if let Row::Cells(cells) = row {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        match row {
            Row::Cells(cells) => {
                let last = cells.len() - 1;
                for (i, c) in cells.iter().enumerate() {
                    out.push_str(c);
                    if i < last {
                        let pad = widths[i] - c.chars().count() + 3;
                        out.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            Row::Line(l) => out.push_str(&l),
        }
        out.push('\n');
    }
    out
}

/// Prints responses in a format: compact and JSON one line each, the table aligned over all.
pub fn render(resps: &[FlowResponse], format: OutputFormat, opts: &PrintOptions) -> String {
    match format {
        OutputFormat::Table => table(resps, opts),
        OutputFormat::Compact | OutputFormat::Json => {
            let mut out = String::new();
            for r in resps {
                out.push_str(&match format {
                    OutputFormat::Json => json(r),
                    _ => compact(r, opts),
                });
                out.push('\n');
            }
            out
        }
    }
}
