//! The apiserver's HTTP endpoints.
//!
//! - `GET /healthz`: 200 while the process serves (liveness);
//! - `GET /readyz`: 200 once ready, else 503 with the reasons, one per line;
//! - `GET /metrics`: Prometheus text (readiness, kvstore operations, KVStoreMesh remotes);
//! - `GET /v1/status`: [`crate::server::ApiServerStatus`] as JSON.

use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::server::Shared;

/// Serves the endpoints on `listener` until the task is dropped.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .with_state(shared);
    if let Err(err) = axum::serve(listener, app).await {
        tracing::error!(error = %err, "HTTP server stopped");
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let status = shared.status();
    if status.ready {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", status.not_ready.join("\n")),
        )
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    axum::Json(shared.status())
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let status = shared.status();
    let cluster = &shared.cluster.name;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP plexus_apiserver_ready Whether the apiserver is ready."
    );
    let _ = writeln!(out, "# TYPE plexus_apiserver_ready gauge");
    let _ = writeln!(
        out,
        "plexus_apiserver_ready{{cluster=\"{cluster}\"}} {}",
        u8::from(status.ready)
    );
    out.push_str(&shared.kv.render("local"));
    let _ = writeln!(
        out,
        "# HELP plexus_kvstore_sync_queue_size Keys waiting to be written to the kvstore."
    );
    let _ = writeln!(out, "# TYPE plexus_kvstore_sync_queue_size gauge");
    for (scope, remote, n) in shared.queue_sizes() {
        match remote {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "plexus_kvstore_sync_queue_size{{scope=\"{scope}\",target_cluster=\"{r}\"}} {n}"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "plexus_kvstore_sync_queue_size{{scope=\"{scope}\"}} {n}"
                );
            }
        }
    }
    if let Some(mesh) = &shared.kvstoremesh {
        out.push_str(&plexus_clustermesh::metrics::render(
            cluster,
            &mesh.status(),
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
