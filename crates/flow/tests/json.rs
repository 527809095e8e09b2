//! The JSON shapes, literally: Hubble's field names and protojson rules (omitted zero values,
//! enum names, uint64 as strings, RFC 3339 times), and round trips.

#![allow(clippy::unwrap_used)]

mod common;

use common::{denied, forwarded, t, translated};
use plexus_flow::{
    DropReasonDesc, DropReasonInfo, Flow, FlowRequest, FlowResponse, LostEventSource, NodeState,
    ResponseKind, TraceObservationPoint, Verdict,
};

fn round_trip(resp: &FlowResponse, line: &str) {
    assert_eq!(resp.to_json_line(), line);
    assert_eq!(&FlowResponse::from_json_line(line).unwrap(), resp);
}

#[test]
fn policy_denied_drop_flow_has_hubbles_shape() {
    let line = concat!(
        r#"{"flow":{"time":"2026-12-07T12:00:01.123456789Z","verdict":"DROPPED","drop_reason":133,"#,
        r#""IP":{"source":"10.60.1.7","destination":"10.60.2.9","ipVersion":"IPv4"},"#,
        r#""l4":{"TCP":{"source_port":41234,"destination_port":80,"flags":{"SYN":true}}},"#,
        r#""source":{"identity":38354,"cluster_name":"c1","namespace":"default","labels":["k8s:app=x-wing","k8s:class=fighter","k8s:io.kubernetes.pod.namespace=default"],"pod_name":"x-wing"},"#,
        r#""destination":{"ID":3833,"identity":6587186,"cluster_name":"c2","namespace":"default","labels":["k8s:app=rebel-base"],"pod_name":"rebel-base-1"},"#,
        r#""Type":"L3_L4","node_name":"c2/n1","event_type":{"type":1,"sub_type":133},"#,
        r#""traffic_direction":"INGRESS","drop_reason_desc":"POLICY_DENIED","is_reply":false,"#,
        r#""ingress_denied_by":[{"name":"deny-x-wing","namespace":"default","labels":["k8s:io.cilium.k8s.policy.name=deny-x-wing"],"revision":"7","kind":"CiliumNetworkPolicy"}],"#,
        r#""Summary":"TCP Flags: SYN","drop_reason_text":"Policy denied","policy_deny":"deny-rule"},"#,
        r#""node_name":"c2/n1","time":"2026-12-07T12:00:01.123456789Z"}"#
    );
    round_trip(&FlowResponse::flow(denied()), line);
}

#[test]
fn trace_to_endpoint_omits_zero_sub_type() {
    // TO_ENDPOINT is Cilium's trace sub-type 0, which protojson omits.
    let line = concat!(
        r#"{"flow":{"time":"2026-12-07T12:00:01.123Z","verdict":"FORWARDED","#,
        r#""IP":{"source":"10.60.1.7","destination":"10.60.2.9","ipVersion":"IPv4"},"#,
        r#""l4":{"TCP":{"source_port":41234,"destination_port":80,"flags":{"SYN":true}}},"#,
        r#""source":{"identity":38354,"cluster_name":"c1","namespace":"default","labels":["k8s:app=x-wing","k8s:class=fighter","k8s:io.kubernetes.pod.namespace=default"],"pod_name":"x-wing"},"#,
        r#""destination":{"ID":3833,"identity":6587186,"cluster_name":"c2","namespace":"default","labels":["k8s:app=rebel-base"],"pod_name":"rebel-base-1"},"#,
        r#""Type":"L3_L4","node_name":"c2/n1","event_type":{"type":4},"#,
        r#""trace_observation_point":"TO_ENDPOINT","is_reply":false,"Summary":"TCP Flags: SYN"},"#,
        r#""node_name":"c2/n1","time":"2026-12-07T12:00:01.123Z"}"#
    );
    round_trip(&FlowResponse::flow(forwarded()), line);
}

#[test]
fn translation_flow_has_hubbles_sock_shape_and_our_extension() {
    let line = concat!(
        r#"{"flow":{"time":"2026-12-07T12:00:01Z","verdict":"TRANSLATED","#,
        r#""IP":{"source":"10.60.1.7","destination":"10.60.2.9","ipVersion":"IPv4"},"#,
        r#""l4":{"TCP":{"source_port":41234,"destination_port":8080,"flags":{"SYN":true}}},"#,
        r#""source":{"identity":38354,"cluster_name":"c1","namespace":"default","labels":["k8s:app=x-wing","k8s:class=fighter","k8s:io.kubernetes.pod.namespace=default"],"pod_name":"x-wing"},"#,
        r#""destination":{"ID":3833,"identity":6587186,"cluster_name":"c2","namespace":"default","labels":["k8s:app=rebel-base"],"pod_name":"rebel-base-1"},"#,
        r#""Type":"SOCK","node_name":"c1/n1","event_type":{"type":7,"sub_type":2},"#,
        r#""destination_service":{"name":"rebel-base","namespace":"default"},"#,
        r#""is_reply":false,"sock_xlate_point":"SOCK_XLATE_POINT_POST_DIRECTION_FWD","#,
        r#""Summary":"TCP 10.96.0.10:80 -> 10.60.2.9:8080 (cluster c2)","#,
        r#""translation":{"frontend":"10.96.0.10:80","backend":"10.60.2.9:8080","backend_cluster":"c2"}},"#,
        r#""node_name":"c1/n1","time":"2026-12-07T12:00:01Z"}"#
    );
    round_trip(&FlowResponse::flow(translated()), line);
}

#[test]
fn lost_events_line_writes_the_count_as_a_string() {
    let resp = FlowResponse::lost(
        LostEventSource::HubbleRingBuffer,
        3,
        "c1/n1",
        t("2026-12-07T12:00:02Z"),
    );
    let line = r#"{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"3"},"node_name":"c1/n1","time":"2026-12-07T12:00:02Z"}"#;
    round_trip(&resp, line);
    // A number is accepted too.
    let numeric = r#"{"lost_events":{"source":"PERF_EVENT_RING_BUFFER","num_events_lost":5},"node_name":"c1/n1","time":"2026-12-07T12:00:02Z"}"#;
    let parsed = FlowResponse::from_json_line(numeric).unwrap();
    match parsed.kind {
        ResponseKind::LostEvents(l) => {
            assert_eq!(l.source, LostEventSource::PerfEventRingBuffer);
            assert_eq!(l.num_events_lost, 5);
        }
        other => panic!("expected lost events, got {other:?}"),
    }
}

#[test]
fn node_status_line_has_no_node_name() {
    let resp = FlowResponse::node_status(
        NodeState::Unavailable,
        vec!["c2/n1".into(), "c2/n2".into()],
        "connection refused",
        t("2026-12-07T12:00:03Z"),
    );
    let line = r#"{"node_status":{"state_change":"NODE_UNAVAILABLE","node_names":["c2/n1","c2/n2"],"message":"connection refused"},"time":"2026-12-07T12:00:03Z"}"#;
    round_trip(&resp, line);
}

#[test]
fn reads_hubbles_own_output_ignoring_fields_we_do_not_have() {
    // A line as `hubble observe -o json` prints it (Cilium 1.16), with fields Plexus lacks.
    let line = concat!(
        r#"{"flow":{"time":"2024-05-02T08:03:01.672413870Z","uuid":"0b3f4c0e-6d06-4c1e-9d1f-1c4b2f0e2a11","#,
        r#""verdict":"DROPPED","drop_reason":133,"ethernet":{"source":"1e:2b:6f:4c:2e:3a","destination":"a2:8d:0c:21:76:d4"},"#,
        r#""IP":{"source":"10.0.1.7","destination":"10.0.2.9","ipVersion":"IPv4"},"#,
        r#""l4":{"TCP":{"source_port":47290,"destination_port":80,"flags":{"SYN":true}}},"#,
        r#""source":{"ID":1722,"identity":5434,"cluster_name":"default","namespace":"default","labels":["k8s:app.kubernetes.io/name=tiefighter","k8s:class=tiefighter","k8s:org=empire"],"pod_name":"tiefighter","workloads":[{"name":"tiefighter","kind":"Pod"}]},"#,
        r#""destination":{"ID":212,"identity":36196,"namespace":"default","labels":["k8s:class=deathstar","k8s:org=empire"],"pod_name":"deathstar-b4b8ccfb5-9k6xq"},"#,
        r#""Type":"L3_L4","node_name":"kind-kind/kind-worker","node_labels":["kubernetes.io/hostname=kind-worker"],"#,
        r#""event_type":{"type":1,"sub_type":133},"traffic_direction":"INGRESS","drop_reason_desc":"POLICY_DENIED","#,
        r#""is_reply":false,"interface":{"index":9,"name":"lxc4b3a"},"Summary":"TCP Flags: SYN"},"#,
        r#""node_name":"kind-kind/kind-worker","time":"2024-05-02T08:03:01.672413870Z"}"#
    );
    let resp = FlowResponse::from_json_line(line).unwrap();
    let flow = resp.as_flow().unwrap();
    assert_eq!(flow.verdict, Verdict::Dropped);
    assert_eq!(flow.drop_reason_desc, DropReasonDesc::POLICY_DENIED);
    assert_eq!(flow.source.pod_name, "tiefighter");
    assert_eq!(flow.destination.identity, 36196);
    assert_eq!(flow.interface.as_ref().unwrap().name, "lxc4b3a");
    assert_eq!(resp.time, t("2024-05-02T08:03:01.672413870Z"));
}

#[test]
fn drop_reasons_map_to_ciliums_codes() {
    let cases = [
        (1, 134, Some("INVALID_PACKET_DROPPED")),
        (2, 172, Some("UNKNOWN_SENDER")),
        (3, 152, Some("NO_MATCHING_LOCAL_CONTAINER_FOUND")),
        (4, 139, Some("UNSUPPORTED_L3_PROTOCOL")),
        (5, 147, Some("ERROR_RETRIEVING_TUNNEL_KEY")),
        (6, 133, Some("POLICY_DENIED")),
        (7, 132, Some("INVALID_SOURCE_IP")),
        (8, 150, Some("UNKNOWN_L3_TARGET_ADDRESS")),
        (
            9,
            165,
            Some("NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION"),
        ),
        (10, 141, Some("ERROR_WRITING_TO_PACKET")),
        (11, 158, Some("SERVICE_BACKEND_NOT_FOUND")),
        (12, 195, None),
        (99, 99, None),
    ];
    for (raw, code, name) in cases {
        let info = DropReasonInfo::from_plexus(raw);
        assert_eq!(info.code, code, "plexus drop reason {raw}");
        assert_eq!(
            DropReasonDesc(code).name(),
            name,
            "plexus drop reason {raw}"
        );
    }
    // A code without a Hubble name is written as a number, as protojson does.
    let f = Flow::drop(
        t("2026-12-07T12:00:00Z"),
        "c1/n1",
        DropReasonInfo::from_plexus(12),
    );
    let json = serde_json::to_string(&f).unwrap();
    assert!(json.contains(r#""drop_reason_desc":195"#), "{json}");
    assert!(
        json.contains(r#""drop_reason_text":"Traffic is unencrypted""#),
        "{json}"
    );
    let back: Flow = serde_json::from_str(&json).unwrap();
    assert_eq!(back, f);
}

#[test]
fn empty_flow_is_just_its_time() {
    let f = Flow {
        time: t("2026-12-07T12:00:00.100Z"),
        ..Flow::default()
    };
    assert_eq!(
        serde_json::to_string(&f).unwrap(),
        r#"{"time":"2026-12-07T12:00:00.100Z"}"#
    );
    let trace = Flow::trace(f.time, "c/n", TraceObservationPoint::FromOverlay);
    let json = serde_json::to_string(&trace).unwrap();
    assert!(
        json.contains(r#""event_type":{"type":4,"sub_type":9}"#),
        "{json}"
    );
}

#[test]
fn request_round_trips_through_the_query_parameter() {
    let req = FlowRequest {
        whitelist: vec![plexus_flow::FlowFilter {
            source_pod: vec!["default/x-wing".into()],
            source_cluster_name: vec!["c1".into()],
            verdict: vec![Verdict::Dropped],
            event_type: vec![plexus_flow::EventTypeFilter::of_type(1)],
            ..Default::default()
        }],
        blacklist: vec![],
        number: Some(20),
        follow: true,
        since: Some(t("2026-12-07T11:55:00Z")),
    };
    let json = serde_json::to_string(&req).unwrap();
    assert_eq!(
        json,
        r#"{"whitelist":[{"source_pod":["default/x-wing"],"source_cluster_name":["c1"],"verdict":["DROPPED"],"event_type":[{"type":1}]}],"number":20,"follow":true,"since":"2026-12-07T11:55:00Z"}"#
    );
    let q = req.to_query_value();
    assert!(!q.contains(['{', '"', ' ', '/', ':']), "{q}");
    let decoded = plexus_flow::filter::percent_decode(&q).unwrap();
    assert_eq!(FlowRequest::from_json(&decoded).unwrap(), req);
    // The note's shorter names for the cluster fields are accepted.
    let alias: FlowRequest = FlowRequest::from_json(
        r#"{"whitelist":[{"source_cluster":["c1"],"destination_cluster":["c2"]}]}"#,
    )
    .unwrap();
    assert_eq!(alias.whitelist[0].source_cluster_name, vec!["c1"]);
    assert_eq!(alias.whitelist[0].destination_cluster_name, vec!["c2"]);
    assert_eq!(
        FlowRequest::from_json("{}").unwrap(),
        FlowRequest::default()
    );
}
