//! The apiserver's API on TCP with mutual TLS (`--api-listen`), served by `plexus_tls_api`:
//! any client with a certificate of the cluster's CA (the mesh's CA) may read, only
//! `admin-<cluster>` may write.
//!
//! - `GET /v1/healthz`: `"ok"` while the process serves;
//! - `GET /v1/status`: [`ApiServerStatus`](crate::ApiServerStatus) as JSON;
//! - `GET /v1/flows?request=...[&scope=cluster]` and `GET /v1/relay/nodes`: the flow relay
//!   ([`crate::relay`]).
//! - the web view, `/ui` and `/ui/api/...` ([`crate::ui`], merged in by the server).
//!
//! Errors are the agent API's error bodies (`plexus_agent_api::ErrorBody`), so one client
//! (`plexus_agent_api::Client`) talks to both.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use crate::server::{ApiServerStatus, Shared};

/// The API's routes.
pub(crate) fn router(shared: Arc<Shared>, relay: Arc<crate::relay::Relay>) -> Router {
    Router::new()
        .route("/v1/healthz", get(|| async { axum::Json("ok") }))
        .route("/v1/status", get(status))
        .with_state(shared)
        .merge(crate::relay::router(relay))
}

async fn status(State(shared): State<Arc<Shared>>) -> axum::Json<ApiServerStatus> {
    axum::Json(shared.status())
}
