//! TLS for the agent's API over TCP: mutual TLS with the cluster's CA.
//!
//! The server ([`server_config`]) presents its certificate and requires a client certificate
//! chaining to the CA (rustls' `WebPkiClientVerifier`): a certificate from another CA, or none,
//! is refused during the handshake. What a verified client may do is decided from its
//! certificate's common name ([`common_name`]): see [`Access`]. The client ([`client_config`])
//! trusts only the CA and presents its own certificate.
//!
//! Both use the ring provider explicitly, so they work whether or not a process-wide provider
//! was installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration from {files}: {reason}")]
    Config {
        /// The files it was built from.
        files: String,
        /// rustls' reason.
        reason: String,
    },
}

/// The certificate and key files of one side, and the CA it trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate (PEM) the peer's certificate must chain to.
    pub ca: PathBuf,
    /// This side's certificate (PEM, leaf first).
    pub cert: PathBuf,
    /// This side's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    fn describe(&self) -> String {
        format!(
            "{}, {}, {}",
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no certificate in the file".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::File {
            path: ca.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The server side: `files.cert`/`files.key` presented, client certificates required and
/// verified against `files.ca`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let config_err = |reason: String| TlsError::Config {
        files: files.describe(),
        reason,
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&files.ca)?),
        provider(),
    )
    .build()
    .map_err(|e| config_err(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| config_err(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side: the server's certificate verified against `ca`; `identity` (certificate
/// and key) presented when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let files = match identity {
        Some((cert, key)) => format!("{}, {}, {}", ca.display(), cert.display(), key.display()),
        None => ca.display().to_string(),
    };
    let config_err = |reason: String| TlsError::Config {
        files: files.clone(),
        reason,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some((cert, key_path)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_path)?)
            .map_err(|e| config_err(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The common name of a (verified) certificate, if it has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// What a client may do over TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every call: the cluster's admin (`admin-<cluster>`), or the local unix socket.
    Admin,
    /// `GET` and `HEAD` only: any other certificate of the cluster's CA.
    Read,
}

impl Access {
    /// The access of a client whose verified certificate is named `common_name`, on an agent
    /// of `cluster`.
    pub fn of(common_name: Option<&str>, cluster: &str) -> Self {
        match common_name {
            Some(cn) if cn.strip_prefix("admin-") == Some(cluster) => Self::Admin,
            _ => Self::Read,
        }
    }

    /// Whether this access allows `method`.
    pub fn allows(self, method: &hyper::Method) -> bool {
        self == Self::Admin || matches!(*method, hyper::Method::GET | hyper::Method::HEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_clusters_admin_may_write() {
        assert_eq!(Access::of(Some("admin-c1"), "c1"), Access::Admin);
        assert_eq!(Access::of(Some("admin-c2"), "c1"), Access::Read);
        assert_eq!(Access::of(Some("remote-c1"), "c1"), Access::Read);
        assert_eq!(Access::of(Some("admin-c1x"), "c1"), Access::Read);
        assert_eq!(Access::of(None, "c1"), Access::Read);
        assert!(Access::Read.allows(&hyper::Method::GET));
        assert!(!Access::Read.allows(&hyper::Method::POST));
        assert!(!Access::Read.allows(&hyper::Method::DELETE));
        assert!(Access::Admin.allows(&hyper::Method::PUT));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.crt");
        let err = client_config(&missing, None).unwrap_err().to_string();
        assert!(err.contains("ca.crt"), "{err}");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "").unwrap();
        let err = client_config(&empty, None).unwrap_err().to_string();
        assert!(
            err.contains("empty.crt") && err.contains("no certificate"),
            "{err}"
        );
    }
}
