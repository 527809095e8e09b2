//! The flow ring: capacity, history queries (last N, since, filters), followers without gap or
//! repeat, and lost events when a follower lags.

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::t;
use futures::StreamExt;
use plexus_flow::{
    DEFAULT_CAPACITY, Flow, FlowFilter, FlowRequest, FlowResponse, FlowRing, LostEventSource,
    ResponseKind, TraceObservationPoint, Verdict,
};

/// Every async step of these tests is bounded, so a bug hangs no run.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

fn at(i: i64) -> DateTime<Utc> {
    t("2026-12-07T12:00:00Z") + chrono::Duration::seconds(i)
}

/// Flow number `i`: at 12:00:00 + i s, dropped when `i` is odd, forwarded otherwise.
fn flow(i: i64) -> Flow {
    let mut f = Flow::trace(at(i), "c1/n1", TraceObservationPoint::ToEndpoint);
    f.uuid = format!("flow-{i}");
    if i % 2 == 1 {
        f.verdict = Verdict::Dropped;
    }
    f
}

fn uuids(flows: &[Arc<Flow>]) -> Vec<String> {
    flows.iter().map(|f| f.uuid.clone()).collect()
}

fn uuid(resp: &FlowResponse) -> String {
    resp.as_flow().unwrap().uuid.clone()
}

fn names(range: std::ops::Range<i64>) -> Vec<String> {
    range.map(|i| format!("flow-{i}")).collect()
}

fn history(ring: &FlowRing, req: FlowRequest) -> Vec<String> {
    uuids(&ring.query(&req).unwrap().history)
}

fn dropped() -> FlowFilter {
    FlowFilter {
        verdict: vec![Verdict::Dropped],
        ..Default::default()
    }
}

#[test]
fn keeps_the_newest_capacity_flows() {
    let ring = FlowRing::new(4, "c1/n1");
    assert!(ring.is_empty());
    for i in 0..10 {
        ring.push(flow(i));
    }
    assert_eq!(ring.len(), 4);
    assert_eq!(ring.capacity(), 4);
    assert_eq!(ring.total_pushed(), 10);
    assert_eq!(history(&ring, FlowRequest::default()), names(6..10));
    assert_eq!(
        FlowRing::with_default_capacity("c/n").capacity(),
        DEFAULT_CAPACITY
    );
    assert_eq!(DEFAULT_CAPACITY, 4095);
    assert_eq!(FlowRing::new(0, "c/n").capacity(), 1);
}

#[test]
fn last_n_since_and_filters() {
    let ring = FlowRing::new(100, "c1/n1");
    for i in 0..10 {
        ring.push(flow(i));
    }
    let req = |number, since, whitelist| FlowRequest {
        number,
        since,
        whitelist,
        ..Default::default()
    };
    assert_eq!(history(&ring, req(Some(3), None, vec![])), names(7..10));
    assert_eq!(
        history(&ring, req(Some(0), None, vec![])),
        Vec::<String>::new()
    );
    assert_eq!(history(&ring, req(Some(50), None, vec![])), names(0..10));
    assert_eq!(history(&ring, req(None, Some(at(6)), vec![])), names(6..10));
    assert_eq!(
        history(&ring, req(Some(2), Some(at(3)), vec![])),
        names(8..10)
    );
    assert_eq!(
        history(&ring, req(Some(2), None, vec![dropped()])),
        vec!["flow-7", "flow-9"],
        "the last N matching flows"
    );
    assert_eq!(
        history(&ring, req(None, Some(at(4)), vec![dropped()])),
        vec!["flow-5", "flow-7", "flow-9"]
    );
    let blacklisted = FlowRequest {
        blacklist: vec![dropped()],
        number: Some(2),
        ..Default::default()
    };
    assert_eq!(history(&ring, blacklisted), vec!["flow-6", "flow-8"]);
    // Following without number or since: no history.
    let follow = FlowRequest {
        follow: true,
        ..Default::default()
    };
    assert!(ring.query(&follow).unwrap().history.is_empty());
}

#[test]
fn an_invalid_request_is_refused() {
    let ring = FlowRing::new(4, "c1/n1");
    let req = FlowRequest {
        whitelist: vec![FlowFilter {
            source_ip: vec!["nope".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = ring.query(&req).err().unwrap();
    assert_eq!(err.field, "whitelist[0].source_ip");
}

#[tokio::test]
async fn follower_continues_right_after_the_history() {
    let ring = FlowRing::new(100, "c1/n1");
    for i in 0..5 {
        ring.push(flow(i));
    }
    let q = ring
        .query(&FlowRequest {
            number: Some(2),
            follow: true,
            whitelist: vec![dropped()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(uuids(&q.history), vec!["flow-1", "flow-3"]);
    let mut follower = q.follower.unwrap();
    assert_eq!(ring.followers(), 1);
    for i in 5..9 {
        ring.push(flow(i));
    }
    assert_eq!(uuid(&within(follower.next()).await.unwrap()), "flow-5");
    assert_eq!(uuid(&within(follower.next()).await.unwrap()), "flow-7");
    drop(ring);
    assert_eq!(within(follower.next()).await, None, "ring gone");
}

#[tokio::test]
async fn a_lagging_follower_gets_the_lost_count() {
    let ring = FlowRing::new(4, "c1/n1");
    let mut follower = ring
        .query(&FlowRequest {
            follow: true,
            ..Default::default()
        })
        .unwrap()
        .follower
        .unwrap();
    for i in 0..10 {
        ring.push(flow(i));
    }
    // The follower's queue holds 4 flows: flows 0..6 were overwritten before it read them.
    let lost = within(follower.next()).await.unwrap();
    assert_eq!(
        lost,
        FlowResponse::lost(LostEventSource::HubbleRingBuffer, 6, "c1/n1", at(6))
    );
    for i in 6..10 {
        assert_eq!(
            uuid(&within(follower.next()).await.unwrap()),
            format!("flow-{i}")
        );
    }
    // It keeps following afterwards.
    ring.push(flow(10));
    assert_eq!(uuid(&within(follower.next()).await.unwrap()), "flow-10");
}

#[tokio::test]
async fn lost_events_are_not_filtered() {
    let ring = FlowRing::new(2, "c1/n1");
    let mut follower = ring
        .query(&FlowRequest {
            follow: true,
            whitelist: vec![dropped()],
            ..Default::default()
        })
        .unwrap()
        .follower
        .unwrap();
    for i in 0..6 {
        ring.push(flow(i));
    }
    let first = within(follower.next()).await.unwrap();
    match first.kind {
        ResponseKind::LostEvents(l) => assert_eq!(l.num_events_lost, 4),
        other => panic!("expected lost events, got {other:?}"),
    }
    assert_eq!(uuid(&within(follower.next()).await.unwrap()), "flow-5");
}

#[tokio::test]
async fn query_stream_is_history_then_follow() {
    let ring = Arc::new(FlowRing::new(100, "c1/n1"));
    for i in 0..3 {
        ring.push(flow(i));
    }
    let stream = ring
        .query(&FlowRequest {
            number: Some(2),
            follow: true,
            ..Default::default()
        })
        .unwrap()
        .into_stream();
    ring.push(flow(3));
    drop(Arc::try_unwrap(ring).ok().unwrap());
    let lines: Vec<FlowResponse> = within(stream.collect()).await;
    assert_eq!(
        lines.iter().map(uuid).collect::<Vec<_>>(),
        vec!["flow-1", "flow-2", "flow-3"]
    );
    assert_eq!(lines[0].node_name, "c1/n1");
    assert_eq!(lines[0].time, at(1));
}

#[tokio::test]
async fn upstream_losses_reach_followers_but_not_history() {
    let ring = FlowRing::new(8, "c1/n1");
    let mut follower = ring
        .query(&FlowRequest {
            follow: true,
            whitelist: vec![dropped()],
            ..Default::default()
        })
        .unwrap()
        .follower
        .unwrap();
    ring.push(flow(1));
    ring.push_lost(LostEventSource::PerfEventRingBuffer, 42, at(2));
    ring.push(flow(3));
    assert_eq!(uuid(&within(follower.next()).await.unwrap()), "flow-1");
    assert_eq!(
        within(follower.next()).await.unwrap(),
        FlowResponse::lost(LostEventSource::PerfEventRingBuffer, 42, "c1/n1", at(2))
    );
    assert_eq!(uuid(&within(follower.next()).await.unwrap()), "flow-3");
    assert_eq!(
        history(&ring, FlowRequest::default()),
        vec!["flow-1", "flow-3"]
    );
}
