//! Printing: exact compact lines (Hubble's layout), the table, JSON, lost events, node status.

#![allow(clippy::unwrap_used)]

mod common;

use common::{denied, forwarded, rebel_base, t, translated, x_wing};
use plexus_flow::flow::policy_match;
use plexus_flow::print::{compact, compact_flow, render, table};
use plexus_flow::{
    Flow, FlowResponse, LostEventSource, NodeState, OutputFormat, PrintOptions, TrafficDirection,
};

const PLAIN: PrintOptions = PrintOptions { node_name: false };

#[test]
fn compact_lines_read_like_hubbles() {
    assert_eq!(
        compact_flow(&forwarded(), &PLAIN),
        "Dec  7 12:00:01.123: default/x-wing:41234 (ID:38354) -> default/rebel-base-1:80 (ID:6587186) to-endpoint FORWARDED (TCP Flags: SYN)"
    );
    assert_eq!(
        compact_flow(&denied(), &PLAIN),
        "Dec  7 12:00:01.123: default/x-wing:41234 (ID:38354) -> default/rebel-base-1:80 (ID:6587186) Policy denied DROPPED (TCP Flags: SYN)"
    );
    assert_eq!(
        compact_flow(&translated(), &PLAIN),
        "Dec  7 12:00:01.000: default/x-wing:41234 (ID:38354) -> default/rebel-base-1:8080 (ID:6587186) post-xlate-fwd TRANSLATED (TCP 10.96.0.10:80 -> 10.60.2.9:8080 (cluster c2))"
    );
    assert_eq!(
        compact_flow(&forwarded(), &PrintOptions { node_name: true }),
        "Dec  7 12:00:01.123 [c2/n1]: default/x-wing:41234 (ID:38354) -> default/rebel-base-1:80 (ID:6587186) to-endpoint FORWARDED (TCP Flags: SYN)"
    );
}

#[test]
fn replies_flip_unknown_direction_and_reserved_identities() {
    // rebel-base-1 answers x-wing: printed in the connection's direction with `<-`.
    let mut reply = Flow::trace(
        t("2026-12-07T12:00:01.200Z"),
        "c1/n1",
        plexus_flow::TraceObservationPoint::ToEndpoint,
    )
    .with_packet(
        "10.60.2.9".parse().unwrap(),
        "10.60.1.7".parse().unwrap(),
        6,
        80,
        41234,
        0x12,
    );
    reply.source = rebel_base();
    reply.destination = x_wing();
    reply.is_reply = Some(true);
    assert_eq!(
        compact_flow(&reply, &PLAIN),
        "Dec  7 12:00:01.200: default/x-wing:41234 (ID:38354) <- default/rebel-base-1:80 (ID:6587186) to-endpoint FORWARDED (TCP Flags: SYN, ACK)"
    );
    // Unknown direction, an address without pod, the world identity, ICMP without ports.
    let mut ping = Flow::trace(
        t("2026-12-07T12:00:01.300Z"),
        "c1/n1",
        plexus_flow::TraceObservationPoint::FromOverlay,
    )
    .with_packet(
        "1.1.1.1".parse().unwrap(),
        "10.60.1.7".parse().unwrap(),
        1,
        8,
        0,
        0,
    );
    ping.source.identity = 2;
    ping.destination = x_wing();
    assert_eq!(
        compact_flow(&ping, &PLAIN),
        "Dec  7 12:00:01.300: 1.1.1.1 (world) <> default/x-wing (ID:38354) from-overlay FORWARDED (ICMPv4 EchoRequest)"
    );
}

#[test]
fn policy_verdicts_read_allowed() {
    let mut v = Flow::policy_verdict(
        t("2026-12-07T12:00:01.123Z"),
        "c1/n1",
        TrafficDirection::Egress,
        policy_match::L3_L4,
    )
    .with_packet(
        "10.60.1.7".parse().unwrap(),
        "10.60.2.9".parse().unwrap(),
        6,
        41234,
        80,
        0x02,
    );
    v.source = x_wing();
    v.destination = rebel_base();
    v.is_reply = Some(false);
    assert_eq!(
        compact_flow(&v, &PLAIN),
        "Dec  7 12:00:01.123: default/x-wing:41234 (ID:38354) -> default/rebel-base-1:80 (ID:6587186) policy-verdict:L3-L4 EGRESS ALLOWED (TCP Flags: SYN)"
    );
}

#[test]
fn lost_events_and_node_status_are_readable() {
    let lost = FlowResponse::lost(
        LostEventSource::HubbleRingBuffer,
        12,
        "c1/n1",
        t("2026-12-07T12:00:02Z"),
    );
    assert_eq!(
        compact(&lost, &PLAIN),
        "Dec  7 12:00:02.000 [c1/n1]: EVENTS LOST: HUBBLE_RING_BUFFER 12"
    );
    let at = t("2026-12-07T12:00:03Z");
    let status = |state, nodes: &[&str], msg: &str| {
        compact(
            &FlowResponse::node_status(
                state,
                nodes.iter().map(|n| n.to_string()).collect(),
                msg,
                at,
            ),
            &PLAIN,
        )
    };
    assert_eq!(
        status(NodeState::Connected, &["c1/n1", "c1/n2"], ""),
        "Dec  7 12:00:03.000: Receiving flows from 2 nodes: c1/n1, c1/n2"
    );
    assert_eq!(
        status(NodeState::Unavailable, &["c2/n1"], "connection refused"),
        "Dec  7 12:00:03.000: 1 nodes are unavailable: c2/n1 (connection refused)"
    );
    assert_eq!(
        status(NodeState::Gone, &["c2/n1"], ""),
        "Dec  7 12:00:03.000: 1 nodes removed from cluster: c2/n1"
    );
    assert_eq!(
        status(NodeState::Error, &["c2/n1"], "bad request"),
        "Dec  7 12:00:03.000: Error \"bad request\" on 1 nodes: c2/n1"
    );
}

#[test]
fn table_aligns_columns_and_keeps_other_lines_in_place() {
    let lines = vec![
        FlowResponse::flow(forwarded()),
        FlowResponse::lost(
            LostEventSource::HubbleRingBuffer,
            3,
            "c2/n1",
            t("2026-12-07T12:00:01.124Z"),
        ),
        FlowResponse::flow(denied()),
    ];
    let expected = [
        format!(
            "{:<22}{:<23}{:<26}{:<16}{:<12}{}",
            "TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"
        ),
        format!(
            "{:<22}{:<23}{:<26}{:<16}{:<12}{}",
            "Dec  7 12:00:01.123",
            "default/x-wing:41234",
            "default/rebel-base-1:80",
            "to-endpoint",
            "FORWARDED",
            "TCP Flags: SYN"
        ),
        "Dec  7 12:00:01.124 [c2/n1]: EVENTS LOST: HUBBLE_RING_BUFFER 3".to_string(),
        format!(
            "{:<22}{:<23}{:<26}{:<16}{:<12}{}",
            "Dec  7 12:00:01.123",
            "default/x-wing:41234",
            "default/rebel-base-1:80",
            "Policy denied",
            "DROPPED",
            "TCP Flags: SYN"
        ),
    ]
    .join("\n")
        + "\n";
    assert_eq!(table(&lines, &PLAIN), expected);
    assert_eq!(render(&lines, OutputFormat::Table, &PLAIN), expected);
    let with_node = table(&lines[..1], &PrintOptions { node_name: true });
    assert!(
        with_node.starts_with(&format!("{:<22}{:<8}SOURCE", "TIMESTAMP", "NODE")),
        "{with_node}"
    );
}

#[test]
fn json_output_is_the_line_as_is_and_formats_parse() {
    let lines = vec![FlowResponse::flow(denied())];
    let out = render(&lines, OutputFormat::Json, &PLAIN);
    assert_eq!(out, format!("{}\n", lines[0].to_json_line()));
    assert_eq!(
        FlowResponse::from_json_line(out.trim_end()).unwrap(),
        lines[0]
    );
    let compact_out = render(&lines, OutputFormat::Compact, &PLAIN);
    assert_eq!(compact_out, format!("{}\n", compact(&lines[0], &PLAIN)));
    assert_eq!("compact".parse::<OutputFormat>(), Ok(OutputFormat::Compact));
    assert_eq!("table".parse::<OutputFormat>(), Ok(OutputFormat::Table));
    assert_eq!("json".parse::<OutputFormat>(), Ok(OutputFormat::Json));
    assert!("yaml".parse::<OutputFormat>().unwrap_err().contains("yaml"));
}
