//! The apiserver's HTTP endpoints.
//!
//! - `GET /healthz`: 200 while the process serves (liveness);
//! - `GET /readyz`: 200 once ready, else 503 with the reasons, one per line;
//! - `GET /metrics`: Prometheus metrics (readiness, kvstore operations and sync queues,
//!   KVStoreMesh remotes), OpenMetrics for Prometheus, text 0.0.4 for others
//!   ([`plexus_metrics::Format`]), all read at scrape time from one registry;
//! - `GET /v1/status`: [`crate::server::ApiServerStatus`] as JSON.

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use plexus_metrics::prometheus_client::collector::Collector;
use plexus_metrics::prometheus_client::encoding::DescriptorEncoder;
use plexus_metrics::prometheus_client::registry::Registry;
use plexus_metrics::{Format, gauges};

use crate::server::Shared;

/// Serves the endpoints on `listener` until the task is dropped.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let registry = Arc::new(registry(&shared));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move |headers: HeaderMap| metrics(registry.clone(), headers)),
        )
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

/// The apiserver's registry: its own gauges, the local kvstore's operations (`scope="local"`)
/// and, with KVStoreMesh, the remotes it mirrors.
fn registry(shared: &Arc<Shared>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ApiServerCollector(shared.clone())));
    registry.register_collector(Box::new(shared.kv.collector("local")));
    if let Some(mesh) = &shared.kvstoremesh {
        let mesh = mesh.clone();
        registry.register_collector(Box::new(plexus_clustermesh::metrics::collector(
            &shared.cluster.name,
            move || mesh.status(),
        )));
    }
    registry
}

async fn metrics(registry: Arc<Registry>, headers: HeaderMap) -> impl IntoResponse {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match plexus_metrics::encode(&registry, format) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, format.content_type())],
            body,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encode metrics: {err}\n"),
        ),
    }
}

/// `plexus_apiserver_ready{cluster}` and `plexus_kvstore_sync_queue_size{scope[,target_cluster]}`,
/// read from the apiserver's state at each scrape.
struct ApiServerCollector(Arc<Shared>);

impl fmt::Debug for ApiServerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ApiServerCollector")
            .field(&self.0.cluster.name)
            .finish()
    }
}

impl Collector for ApiServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let shared = &self.0;
        gauges(
            &mut encoder,
            "plexus_apiserver_ready",
            "Whether the apiserver is ready.",
            [(
                vec![("cluster", shared.cluster.name.as_str())],
                u64::from(shared.status().ready),
            )],
        )?;
        let queues = shared.queue_sizes();
        gauges(
            &mut encoder,
            "plexus_kvstore_sync_queue_size",
            "Keys waiting to be written to the kvstore.",
            queues.iter().map(|(scope, remote, n)| {
                let mut labels = vec![("scope", scope.as_str())];
                if let Some(r) = remote {
                    labels.push(("target_cluster", r.as_str()));
                }
                (labels, *n as u64)
            }),
        )
    }
}
