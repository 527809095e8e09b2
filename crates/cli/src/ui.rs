//! `plexus ui`: the web view through a local proxy, as `cilium hubble ui` port-forwards.
//!
//! The apiserver serves the web view (`/ui`) on its API, which requires a client certificate;
//! browsers have none. The proxy listens on 127.0.0.1 and forwards every `GET`/`HEAD` to the
//! context's relay with the context's admin certificate (`plexus_agent_api::Client::forward`,
//! one TLS connection per request), and streams the answer back as it comes (the flow table
//! follows a never-ending response).
//!
//! It refuses other methods (the admin certificate may write; the page only reads) and
//! requests whose `Host` is not the proxy's own loopback address, so a web page of another
//! site cannot reach it through a DNS name that resolves to 127.0.0.1.
//!
//! The listener is bound before the CLI enters a lab context's network namespace, so a lab's
//! web view opens in the host's browser while the relay is reached inside the lab.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// How long connecting to the relay and receiving its answer's head may take.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the proxy forwards: the relay, with the admin certificate.
pub struct Upstream {
    /// The relay, `host:port` (for messages).
    pub addr: String,
    /// A client of the relay (its timeout bounds connecting and the answer's head).
    pub client: plexus_agent_api::Client,
}

struct Proxy {
    upstream: Upstream,
    /// The `Host` values a browser on this machine sends to the proxy.
    hosts: Vec<String>,
}

/// Binds the proxy's listener on 127.0.0.1 (`port` 0: any free port).
pub fn bind(port: u16) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("listen on 127.0.0.1:{port}"))?;
    listener
        .set_nonblocking(true)
        .context("make the proxy's listener non-blocking")?;
    Ok(listener)
}

/// Serves the proxy on `listener` until the task is dropped or the listener fails.
pub async fn serve(listener: std::net::TcpListener, upstream: Upstream) -> Result<()> {
    let port = listener.local_addr()?.port();
    let listener =
        tokio::net::TcpListener::from_std(listener).context("hand the listener to the runtime")?;
    let proxy = Arc::new(Proxy {
        upstream,
        hosts: vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")],
    });
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    axum::serve(listener, app)
        .await
        .context("serve the web view proxy")
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn forward(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("plexus ui forwards GET and HEAD only, not {}", req.method()),
        );
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !proxy.hosts.iter().any(|h| h == host) {
        return plain(
            StatusCode::FORBIDDEN,
            format!(
                "plexus ui answers requests to {} only, not to {host:?}",
                proxy.hosts.join(" or ")
            ),
        );
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if path == "/" {
        return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, "/ui")]).into_response();
    }
    match proxy
        .upstream
        .client
        .forward(req.method().clone(), &path)
        .await
    {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let mut out = Response::new(Body::new(body));
            *out.status_mut() = parts.status;
            for (k, v) in &parts.headers {
                if k != header::CONNECTION && k != header::TRANSFER_ENCODING {
                    out.headers_mut().append(k.clone(), v.clone());
                }
            }
            out
        }
        Err(err) => plain(
            StatusCode::BAD_GATEWAY,
            format!(
                "plexus ui: the relay at {} did not answer {path}: {err}",
                proxy.upstream.addr
            ),
        ),
    }
}
