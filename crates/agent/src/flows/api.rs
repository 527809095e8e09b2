//! `GET /v1/flows?request=<url-encoded JSON FlowRequest>`: the ring's flows as JSON lines of
//! [`FlowResponse`] (Hubble's `GetFlowsResponse`): the history the request asks for, then,
//! with `follow`, new flows as they come (and `lost_events` lines), until the client goes.
//!
//! A read (GET): served on the unix socket and on the TCP API to any client certificate of the
//! cluster's CA, so relays may call it. Errors: a request that is not a `FlowRequest`'s JSON,
//! or whose filter values are invalid (the message names the field, `whitelist[0].source_ip`),
//! is `invalid`; flows turned off (`enable-flows: false`) is `unavailable`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use plexus_agent_api::ErrorKind;
use plexus_flow::{FlowRequest, FlowResponse, FlowRing};
use serde::Deserialize;

use crate::api::ApiError;

/// The query string of `/v1/flows`.
#[derive(Debug, Default, Deserialize)]
pub struct FlowsQuery {
    /// The request's JSON (percent-decoded by the query parser); absent = every flow kept.
    pub request: Option<String>,
}

/// Answers one request from `ring` (`None`: flows are off).
pub fn serve(ring: Option<&Arc<FlowRing>>, query: FlowsQuery) -> Result<Response, ApiError> {
    let Some(ring) = ring else {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            "flows are off on this node (agent option enable-flows: false)",
        ));
    };
    let request = match query.request.as_deref() {
        None | Some("") => FlowRequest::default(),
        Some(json) => FlowRequest::from_json(json).map_err(|e| {
            ApiError::new(
                ErrorKind::Invalid,
                format!("query parameter request: not a flow request: {e}"),
            )
        })?,
    };
    let answer = ring
        .query(&request)
        .map_err(|e| ApiError::new(ErrorKind::Invalid, e.to_string()))?;
    let lines = answer.into_stream().map(|line: FlowResponse| {
        let mut text = line.to_json_line();
        text.push('\n');
        Ok::<_, std::io::Error>(text)
    });
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| Response::new(Body::empty())))
}

/// The query string, or an `invalid` error saying what is wrong with it.
pub fn query(q: Result<Query<FlowsQuery>, QueryRejection>) -> Result<FlowsQuery, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            ErrorKind::Invalid,
            format!("query string: {}", e.body_text()),
        )
    })
}

/// A router with `/v1/flows` alone, over `ring` (for tests and tools that serve only flows).
pub fn router(ring: Option<Arc<FlowRing>>) -> Router {
    Router::new()
        .route(
            "/v1/flows",
            get(
                |State(ring): State<Option<Arc<FlowRing>>>,
                 q: Result<Query<FlowsQuery>, QueryRejection>| async move {
                    query(q)
                        .and_then(|q| serve(ring.as_ref(), q))
                        .into_response()
                },
            ),
        )
        .with_state(ring)
}
