//! Time-ordered merges: exact for history, windowed for following (on tokio's paused clock,
//! so the arrival times are exact).

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use plexus_flow::{FlowResponse, LostEventSource, merge_follow, merge_history, merge_sorted};

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(600), f)
        .await
        .expect("timed out")
}

fn at(secs: i64) -> DateTime<Utc> {
    common::t("2026-12-07T12:00:00Z") + chrono::Duration::seconds(secs)
}

/// A response line named `node` at flow time `secs` (lost-event lines are cheap to build).
fn line(node: &str, secs: i64) -> FlowResponse {
    FlowResponse::lost(LostEventSource::HubbleRingBuffer, 1, node, at(secs))
}

fn label(r: &FlowResponse) -> String {
    format!("{}@{}", r.node_name, (r.time - at(0)).num_seconds())
}

/// Yields each item `ms` milliseconds after the stream is first polled, then ends at `end_ms`.
fn timed(items: Vec<(u64, FlowResponse)>, end_ms: u64) -> impl Stream<Item = FlowResponse> + Unpin {
    let start = tokio::time::Instant::now();
    Box::pin(
        futures::stream::unfold(
            (items.into_iter(), start, end_ms, false),
            |(mut items, start, end_ms, done)| async move {
                if done {
                    return None;
                }
                match items.next() {
                    Some((ms, item)) => {
                        tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                        Some((Some(item), (items, start, end_ms, false)))
                    }
                    None => {
                        tokio::time::sleep_until(start + Duration::from_millis(end_ms)).await;
                        Some((None, (items, start, end_ms, true)))
                    }
                }
            },
        )
        .filter_map(|x| async move { x }),
    )
}

#[test]
fn sorted_lists_merge_exactly() {
    let merged = merge_sorted(vec![
        vec![line("a", 1), line("a", 4), line("a", 4), line("a", 9)],
        vec![],
        vec![line("b", 0), line("b", 4), line("b", 10)],
        vec![line("c", 5)],
    ]);
    assert_eq!(
        merged.iter().map(label).collect::<Vec<_>>(),
        vec!["b@0", "a@1", "a@4", "a@4", "b@4", "c@5", "a@9", "b@10"],
        "ties keep the lists' order"
    );
}

#[tokio::test(start_paused = true)]
async fn history_merge_waits_for_every_head() {
    // Node b is slow: its oldest flow arrives last, yet comes out first.
    let a = timed(
        vec![(0, line("a", 2)), (1, line("a", 3)), (2, line("a", 7))],
        3,
    );
    let b = timed(vec![(5_000, line("b", 1)), (5_001, line("b", 5))], 5_002);
    let c = timed(vec![], 0);
    let merged: Vec<FlowResponse> = within(merge_history(vec![a, b, c]).collect()).await;
    assert_eq!(
        merged.iter().map(label).collect::<Vec<_>>(),
        vec!["b@1", "a@2", "a@3", "b@5", "a@7"]
    );
}

fn follow_inputs() -> Vec<std::pin::Pin<Box<dyn Stream<Item = FlowResponse>>>> {
    // Node a: flow time 10 arrives at 0 s, flow time 20 at 1.2 s.
    // Node b: flow time 5 arrives at 0.5 s, flow time 15 at 3 s. Both end at 5 s.
    vec![
        Box::pin(timed(
            vec![(0, line("a", 10)), (1_200, line("a", 20))],
            5_000,
        )),
        Box::pin(timed(
            vec![(500, line("b", 5)), (3_000, line("b", 15))],
            5_000,
        )),
    ]
}

#[tokio::test(start_paused = true)]
async fn follow_merge_reorders_within_the_window() {
    // Window 1 s: b@5 arrives 0.5 s after a@10 and is put before it; b@15 arrives 1.8 s after
    // a@20 (more than the window) and comes out after it.
    let merged: Vec<FlowResponse> =
        within(merge_follow(follow_inputs(), Duration::from_secs(1)).collect()).await;
    assert_eq!(
        merged.iter().map(label).collect::<Vec<_>>(),
        vec!["b@5", "a@10", "a@20", "b@15"]
    );
    // Window 10 s: everything is still held when the inputs end, and comes out in order.
    let merged: Vec<FlowResponse> =
        within(merge_follow(follow_inputs(), Duration::from_secs(10)).collect()).await;
    assert_eq!(
        merged.iter().map(label).collect::<Vec<_>>(),
        vec!["b@5", "a@10", "b@15", "a@20"]
    );
}

#[tokio::test(start_paused = true)]
async fn follow_merge_emits_once_the_window_expires_while_inputs_stay_open() {
    // Inputs that never end: items must still come out, by the window alone.
    let (tx_a, rx_a) = futures::channel::mpsc::unbounded();
    let (tx_b, rx_b) = futures::channel::mpsc::unbounded();
    let mut merged = Box::pin(merge_follow(vec![rx_a, rx_b], Duration::from_millis(200)));
    tx_a.unbounded_send(line("a", 2)).unwrap();
    tx_b.unbounded_send(line("b", 1)).unwrap();
    assert_eq!(label(&within(merged.next()).await.unwrap()), "b@1");
    assert_eq!(label(&within(merged.next()).await.unwrap()), "a@2");
    tx_b.unbounded_send(line("b", 3)).unwrap();
    assert_eq!(label(&within(merged.next()).await.unwrap()), "b@3");
    drop((tx_a, tx_b));
    assert!(within(merged.next()).await.is_none());
}

#[test]
fn merged_streams_are_send_for_http_bodies() {
    fn assert_send<T: Send>(_: &T) {}
    type Input = std::pin::Pin<Box<dyn Stream<Item = FlowResponse> + Send>>;
    let inputs = || -> Vec<Input> { vec![Box::pin(futures::stream::empty())] };
    assert_send(&merge_history(inputs()));
    assert_send(&merge_follow(inputs(), Duration::from_millis(100)));
}
