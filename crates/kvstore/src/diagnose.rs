//! Finding out why a TLS connection was dropped when the transport only saw it drop.
//!
//! With TLS 1.3 a client finishes its side of the handshake before the server has checked the
//! client certificate. When the server refuses it, its alert races with the client's first
//! write, and the gRPC transport usually reports only "broken pipe" or "connection reset".
//! [`why_dropped`] repeats the handshake on its own connection with the same files, then
//! reads: a server that refuses our certificate answers with its alert (unknown CA, bad
//! certificate, expired, certificate required), which is then the classified reason. A server
//! that accepts us stays silent (it waits for our request), so the read times out and nothing
//! is concluded.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;

use crate::error::{ErrorKind, chain_of, classify};
use crate::etcd::TlsFiles;

/// How long the diagnosis waits for the server's alert.
const ALERT_WAIT: Duration = Duration::from_secs(2);

/// Why `endpoint` (`https://host:port`) drops TLS connections made with `tls`, when a fresh
/// handshake and read tell: `Some(kind)` of [`ErrorKind::Tls`], otherwise `None`.
pub(crate) async fn why_dropped(endpoint: &str, tls: &TlsFiles) -> Option<ErrorKind> {
    let hostport = endpoint
        .strip_prefix("https://")?
        .split('/')
        .next()
        .unwrap_or_default();
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => hostport,
    };
    let name = ServerName::try_from(host.to_string()).ok()?;
    let config = client_config(tls)?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(hostport).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut stream = match connector.connect(name, tcp).await {
            Ok(stream) => stream,
            Err(err) => return tls_kind(&err),
        };
        let mut buf = [0u8; 64];
        match tokio::time::timeout(ALERT_WAIT, stream.read(&mut buf)).await {
            Ok(Err(err)) => tls_kind(&err),
            // Silence (it waits for our request) or data: it accepted us.
            _ => None,
        }
    };
    tokio::time::timeout(ALERT_WAIT * 3, attempt)
        .await
        .ok()
        .flatten()
}

fn tls_kind(err: &std::io::Error) -> Option<ErrorKind> {
    match classify(&chain_of(err)) {
        kind @ ErrorKind::Tls { .. } => Some(kind),
        _ => None,
    }
}

fn client_config(tls: &TlsFiles) -> Option<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca_file).ok()? {
        roots.add(cert.ok()?).ok()?;
    }
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).ok()?;
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .ok()
}
