//! `plexus ui`: the web view through a local proxy, as `cilium hubble ui` port-forwards.
//!
//! The apiserver serves the web view (`/ui`) on its API, which requires a client certificate;
//! browsers have none. The proxy listens on 127.0.0.1 and forwards every `GET`/`HEAD` to the
//! context's relay with the context's admin certificate, one TLS connection per request, and
//! streams the answer back as it comes (the flow table follows a never-ending response).
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
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long connecting to the relay and receiving its answer's head may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the proxy forwards.
pub struct Upstream {
    /// The relay, `host:port`.
    pub addr: String,
    /// The admin certificate's TLS configuration.
    pub tls: Arc<rustls::ClientConfig>,
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
    let accept = req.headers().get(header::ACCEPT).cloned();
    match tokio::time::timeout(
        UPSTREAM_TIMEOUT,
        send(&proxy.upstream, req.method().clone(), &path, accept),
    )
    .await
    {
        Ok(Ok(resp)) => resp,
        Ok(Err(err)) => plain(
            StatusCode::BAD_GATEWAY,
            format!(
                "plexus ui: the relay at {} did not answer {path}: {err:#}",
                proxy.upstream.addr
            ),
        ),
        Err(_) => plain(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "plexus ui: the relay at {} did not answer {path} within {UPSTREAM_TIMEOUT:?}",
                proxy.upstream.addr
            ),
        ),
    }
}

/// One request to the relay on a connection of its own; the answer's body streams.
async fn send(
    upstream: &Upstream,
    method: Method,
    path: &str,
    accept: Option<HeaderValue>,
) -> Result<Response> {
    let host = match upstream.addr.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => upstream.addr.as_str(),
    };
    let name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
    .with_context(|| format!("server name of {}", upstream.addr))?;
    let tcp = tokio::net::TcpStream::connect(upstream.addr.as_str())
        .await
        .context("connect")?;
    let tls = tokio_rustls::TlsConnector::from(upstream.tls.clone())
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .context("HTTP handshake")?;
    // The connection lives until the answer's body is read to its end or dropped (the browser
    // went away).
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, upstream.addr.as_str());
    if let Some(a) = accept {
        request = request.header(header::ACCEPT, a);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .context("build the request")?;
    let response = sender.send_request(request).await.context("send")?;
    let (parts, body) = response.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    for (k, v) in &parts.headers {
        if k != header::CONNECTION && k != header::TRANSFER_ENCODING {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    Ok(out)
}
