//! Flow observation input: a flow request as the agent's API receives it (JSON, or
//! percent-encoded in a query string), `plexus observe` flags (`name=value` lines), and the
//! flow responses (JSON lines) the CLI reads back from agents and prints.
#![no_main]
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use plexus_flow::filter::{FlowRequest, LabelSelector, parse_ip_filter, percent_decode};
use plexus_flow::observe::{ObserveBuilder, parse_event_type, parse_since};
use plexus_flow::print::{OutputFormat, PrintOptions, render};
use plexus_flow::response::{FlowResponse, ResponseKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = Utc
        .timestamp_opt(1_800_000_000, 0)
        .single()
        .unwrap_or_default();
    let mut matchers = Vec::new();
    for json in [Some(text.to_string()), percent_decode(text)]
        .into_iter()
        .flatten()
    {
        if let Ok(request) = FlowRequest::from_json(&json) {
            let _ = request.to_query_value();
            matchers.extend(request.matcher().ok());
        }
    }
    let pairs = text.lines().map(|l| l.split_once('=').unwrap_or((l, "")));
    if let Ok(request) = ObserveBuilder::from_pairs(now, pairs) {
        matchers.extend(request.matcher().ok());
    }
    let _ = LabelSelector::parse(text);
    let _ = parse_ip_filter(text);
    let _ = parse_event_type(text);
    let _ = parse_since(text, now);

    let responses: Vec<FlowResponse> = text
        .lines()
        .filter_map(|l| FlowResponse::from_json_line(l).ok())
        .collect();
    for r in &responses {
        if let ResponseKind::Flow(flow) = &r.kind {
            for m in &matchers {
                let _ = m.matches(flow);
            }
        }
    }
    let opts = PrintOptions { node_name: true };
    for format in [
        OutputFormat::Compact,
        OutputFormat::Table,
        OutputFormat::Json,
    ] {
        let _ = render(&responses, format, &opts);
    }
});
