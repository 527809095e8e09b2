//! Errors of the kvstore crate, and what broke when etcd could not be reached.
//!
//! A failed connection or request to etcd becomes [`Error::Unavailable`] holding a [`Failure`]:
//! where it happened (the operation and the endpoints), the cause chain as the libraries
//! reported it (etcd-client, tonic, hyper, rustls, the OS), and one [`ErrorKind`] that says what
//! broke in words a user acts on. The kinds are few on purpose, one per thing a user fixes
//! differently:
//! - [`ErrorKind::Tls`]: the handshake failed; [`TlsSide`] says who refused (we refused the
//!   server's certificate, or the server refused ours) and [`TlsReason`] why (unknown CA, name
//!   mismatch, expired, an X.509 v1 certificate, ...);
//! - [`ErrorKind::Refused`]: nothing listens there;
//! - [`ErrorKind::Timeout`]: no answer in time;
//! - [`ErrorKind::Unauthenticated`] and [`ErrorKind::PermissionDenied`]: etcd auth;
//! - [`ErrorKind::Config`]: our own files are unusable (e.g. a client certificate rustls will
//!   not load; it is named in the message);
//! - [`ErrorKind::Other`]: anything else, told by the cause chain.
//!
//! The classification walks `std::error::Error::source()` (and the payload of `io::Error`s,
//! which `source()` skips) and looks for the typed errors of rustls and the OS first; words
//! are matched only for what reaches us as text alone (etcd's auth messages, timeouts that
//! the transport reports as text).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::backend::{LeaseId, Revision};

/// What went wrong talking to a kvstore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend could not be reached or the request failed in transport: where, why, and
    /// the cause chain.
    #[error("{0}")]
    Unavailable(Box<Failure>),
    /// The server refused the request for lack of permission (etcd auth).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A watch was asked to start at a revision that has been compacted away.
    #[error("revision {requested} has been compacted (compact revision {compact_revision})")]
    Compacted {
        /// The revision the caller asked for.
        requested: Revision,
        /// The oldest revision the server still has.
        compact_revision: Revision,
    },
    /// The lease does not exist (it expired or was revoked).
    #[error("lease {0:#x} not found")]
    LeaseNotFound(LeaseId),
    /// A key or prefix that cannot be used (empty, not UTF-8 where needed).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key.
        key: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The server refused the request as malformed or not applicable.
    #[error("request rejected: {0}")]
    Rejected(String),
    /// Client configuration (endpoints, TLS files) is unusable.
    #[error("kvstore configuration: {0}")]
    Config(String),
    /// The watch stream ended or broke.
    #[error("watch broken: {0}")]
    WatchBroken(String),
    /// The store has been closed.
    #[error("kvstore closed")]
    Closed,
}

impl Error {
    /// What broke, classified (see the [module documentation](self)).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unavailable(failure) => failure.kind.clone(),
            Error::PermissionDenied(message) => auth_kind(message),
            Error::Config(_) => ErrorKind::Config,
            _ => ErrorKind::Other,
        }
    }

    /// An [`Error::Unavailable`] of kind `kind` with only a message (no library cause), as the
    /// in-memory backend and tests report it.
    pub fn unavailable(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::Unavailable(Box::new(Failure {
            context: message.into(),
            kind,
            causes: Vec::new(),
        }))
    }
}

/// etcd reports failed authentication and missing permission with the same gRPC codes in
/// different releases; its words tell them apart.
fn auth_kind(message: &str) -> ErrorKind {
    let m = message.to_lowercase();
    if m.contains("user name not found")
        || m.contains("authentication failed")
        || m.contains("invalid auth token")
        || m.contains("user name is empty")
    {
        ErrorKind::Unauthenticated
    } else {
        ErrorKind::PermissionDenied
    }
}

/// A failed connection or request: where it happened, what kind of failure, and its cause chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The operation and where, e.g. `connect to https://127.0.0.1:2379`.
    pub context: String,
    /// What broke.
    pub kind: ErrorKind,
    /// The cause chain as the libraries worded it, outermost first (messages repeated by the
    /// next cause are left out).
    pub causes: Vec<String>,
}

impl Failure {
    /// The cause chain on one line (`a: b: c`), for logs.
    pub fn chain(&self) -> String {
        self.causes.join(": ")
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, self.causes.is_empty()) {
            (ErrorKind::Other, true) => write!(f, "{}", self.context),
            (ErrorKind::Other, false) => write!(f, "{}: {}", self.context, self.chain()),
            (kind, _) => write!(f, "{}: {kind}", self.context),
        }
    }
}

impl From<&str> for Box<Failure> {
    /// A failure of kind [`ErrorKind::Other`] that is only a message.
    fn from(message: &str) -> Self {
        Box::new(Failure {
            context: message.to_string(),
            kind: ErrorKind::Other,
            causes: Vec::new(),
        })
    }
}

impl From<String> for Box<Failure> {
    /// A failure of kind [`ErrorKind::Other`] that is only a message.
    fn from(message: String) -> Self {
        Box::new(Failure {
            context: message,
            kind: ErrorKind::Other,
            causes: Vec::new(),
        })
    }
}

/// What broke when a connection or request to the kvstore failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The TLS handshake failed.
    Tls {
        /// Who refused.
        side: TlsSide,
        /// Why.
        reason: TlsReason,
    },
    /// The connection was refused: nothing listens at the endpoint.
    Refused,
    /// No answer in time (connecting or a request).
    Timeout,
    /// etcd did not accept who we are (no such user for our certificate's CN, a bad token).
    Unauthenticated,
    /// etcd knows who we are but does not allow this.
    PermissionDenied,
    /// Our own configuration is unusable: a TLS file missing or unreadable, a client
    /// certificate the TLS library will not load (e.g. X.509 v1), no endpoints.
    Config,
    /// Anything else; the message carries the cause chain.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Tls { side, reason } => match (side, reason) {
                (TlsSide::WeRefused, TlsReason::Handshake(m)) => {
                    write!(f, "tls: handshake failed: {m}")
                }
                (TlsSide::ServerRefused, TlsReason::Handshake(m)) => {
                    write!(f, "tls: the server ended the handshake: {m}")
                }
                (TlsSide::WeRefused, reason) => {
                    write!(f, "tls: we refused the server's certificate: {reason}")
                }
                (TlsSide::ServerRefused, reason) => {
                    write!(
                        f,
                        "tls: the server refused our client certificate: {reason}"
                    )
                }
            },
            ErrorKind::Refused => f.write_str("connection refused"),
            ErrorKind::Timeout => f.write_str("timeout: no answer in time"),
            ErrorKind::Unauthenticated => f.write_str("not authenticated"),
            ErrorKind::PermissionDenied => f.write_str("permission denied"),
            ErrorKind::Config => f.write_str("unusable configuration"),
            ErrorKind::Other => f.write_str("other"),
        }
    }
}

/// Who refused a TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsSide {
    /// We (the client) refused what the server presented.
    WeRefused,
    /// The server refused us (an alert from the server, typically about our client
    /// certificate).
    ServerRefused,
}

/// Why a TLS handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsReason {
    /// The certificate was not issued by a CA the refusing side trusts.
    UnknownIssuer,
    /// The server's certificate is not valid for the name or address we connected to.
    NameMismatch {
        /// What we connected to.
        expected: String,
        /// The names the certificate holds (its subject alternative names).
        presented: Vec<String>,
    },
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
    /// An X.509 v1 certificate: made without extensions (`openssl x509 -req` without
    /// `-extfile`), which rustls does not accept.
    UnsupportedVersion,
    /// The certificate's (extended) key usage does not allow this use (e.g. a client-only
    /// certificate presented by a server).
    UnsupportedKeyUsage,
    /// The signature does not verify or uses an algorithm that is not supported.
    BadSignature,
    /// The certificate was revoked.
    Revoked,
    /// No certificate was presented where one is required.
    NoCertificate,
    /// Another certificate problem, in the TLS library's words.
    Certificate(String),
    /// A handshake problem that is not about a certificate (protocol, cipher, plain TCP where
    /// TLS was expected), in the TLS library's words.
    Handshake(String),
}

impl fmt::Display for TlsReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsReason::UnknownIssuer => f.write_str("unknown issuer (CA)"),
            TlsReason::NameMismatch {
                expected,
                presented,
            } if presented.is_empty() => write!(
                f,
                "name mismatch: the certificate names no host (no subject alternative names), not {expected}"
            ),
            TlsReason::NameMismatch {
                expected,
                presented,
            } => write!(
                f,
                "name mismatch: the certificate is for {}, not {expected}",
                presented.join(", ")
            ),
            TlsReason::Expired => f.write_str("certificate expired"),
            TlsReason::NotYetValid => f.write_str("certificate not yet valid"),
            TlsReason::UnsupportedVersion => f.write_str(
                "unsupported certificate version: X.509 v1 (the certificate was made without extensions)",
            ),
            TlsReason::UnsupportedKeyUsage => f.write_str("unsupported key usage"),
            TlsReason::BadSignature => f.write_str("bad signature"),
            TlsReason::Revoked => f.write_str("certificate revoked"),
            TlsReason::NoCertificate => f.write_str("no certificate presented"),
            TlsReason::Certificate(m) | TlsReason::Handshake(m) => f.write_str(m),
        }
    }
}

/// Classifies a cause chain: the first typed cause that says what broke wins.
pub(crate) fn classify(chain: &[&(dyn std::error::Error + 'static)]) -> ErrorKind {
    for err in chain {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return classify_tls(tls);
        }
    }
    for err in chain {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return ErrorKind::Refused,
                std::io::ErrorKind::TimedOut => return ErrorKind::Timeout,
                _ => {}
            }
        }
        if err.downcast_ref::<tonic::TimeoutExpired>().is_some()
            || err.downcast_ref::<tokio::time::error::Elapsed>().is_some()
        {
            return ErrorKind::Timeout;
        }
    }
    // Some layers pass timeouts on as text only (hyper's connect timeout, h2 keep-alive).
    for err in chain {
        let m = err.to_string().to_lowercase();
        if m.contains("timed out") || m.contains("timeout expired") || m.contains("deadline") {
            return ErrorKind::Timeout;
        }
    }
    ErrorKind::Other
}

fn classify_tls(err: &rustls::Error) -> ErrorKind {
    use rustls::{AlertDescription as A, CertificateError as C};
    let (side, reason) = match err {
        rustls::Error::InvalidCertificate(cert) => {
            let reason = match cert {
                C::UnknownIssuer => TlsReason::UnknownIssuer,
                C::NotValidForName => TlsReason::NameMismatch {
                    expected: String::new(),
                    presented: Vec::new(),
                },
                C::NotValidForNameContext {
                    expected,
                    presented,
                } => TlsReason::NameMismatch {
                    expected: server_name(expected),
                    presented: presented.clone(),
                },
                C::Expired | C::ExpiredContext { .. } => TlsReason::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => TlsReason::NotYetValid,
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                    TlsReason::UnsupportedKeyUsage
                }
                #[allow(deprecated)]
                C::BadSignature
                | C::UnsupportedSignatureAlgorithm
                | C::UnsupportedSignatureAlgorithmContext { .. }
                | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                    TlsReason::BadSignature
                }
                C::Revoked => TlsReason::Revoked,
                C::Other(other) => webpki_reason(other),
                other => TlsReason::Certificate(format!("{other:?}").to_lowercase()),
            };
            (TlsSide::WeRefused, reason)
        }
        rustls::Error::NoCertificatesPresented => (TlsSide::WeRefused, TlsReason::NoCertificate),
        rustls::Error::AlertReceived(alert) => {
            let reason = match alert {
                A::UnknownCA => TlsReason::UnknownIssuer,
                A::CertificateExpired => TlsReason::Expired,
                A::CertificateRevoked => TlsReason::Revoked,
                A::CertificateRequired | A::NoCertificate => TlsReason::NoCertificate,
                A::BadCertificate => TlsReason::Certificate("bad certificate".into()),
                A::UnsupportedCertificate => {
                    TlsReason::Certificate("unsupported certificate".into())
                }
                A::CertificateUnknown => TlsReason::Certificate("certificate unknown".into()),
                other => TlsReason::Handshake(alert_words(other)),
            };
            (TlsSide::ServerRefused, reason)
        }
        other => (
            TlsSide::WeRefused,
            TlsReason::Handshake(other.to_string().to_lowercase()),
        ),
    };
    ErrorKind::Tls { side, reason }
}

/// webpki errors that rustls has no variant for reach us wrapped in `CertificateError::Other`.
fn webpki_reason(other: &rustls::OtherError) -> TlsReason {
    match other.0.downcast_ref::<webpki::Error>() {
        Some(webpki::Error::UnsupportedCertVersion) => TlsReason::UnsupportedVersion,
        #[allow(deprecated)]
        Some(webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_)) => {
            TlsReason::UnsupportedKeyUsage
        }
        Some(webpki::Error::CaUsedAsEndEntity) => {
            TlsReason::Certificate("a CA certificate is used as the server's certificate".into())
        }
        Some(webpki::Error::EndEntityUsedAsCa) => {
            TlsReason::Certificate("the issuer is not a CA (no basicConstraints CA:TRUE)".into())
        }
        Some(other) => TlsReason::Certificate(format!("{other:?}").to_lowercase()),
        None => TlsReason::Certificate(other.to_string().to_lowercase()),
    }
}

fn server_name(name: &rustls::pki_types::ServerName<'_>) -> String {
    match name {
        rustls::pki_types::ServerName::DnsName(dns) => dns.as_ref().to_string(),
        rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// `HandshakeFailure` -> `handshake failure`.
fn alert_words(alert: &rustls::AlertDescription) -> String {
    let name = format!("{alert:?}");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The cause chain of `err`, outermost first, including the payload of `io::Error`s (which
/// `io::Error::source()` skips: it returns the payload's source, not the payload).
pub(crate) fn chain_of<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(err) = next {
        out.push(err);
        if out.len() > 32 {
            break; // a cycle would be a bug elsewhere; do not hang on it
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            next = Some(inner);
            continue;
        }
        next = err.source();
    }
    out
}

/// The messages of a chain, leaving out each message the one before already contains.
pub(crate) fn chain_messages(chain: &[&(dyn std::error::Error + 'static)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for err in chain {
        // A gRPC status prints its code, message and source's debug form: its message is the
        // part that is not repeated further down the chain.
        let m = match err.downcast_ref::<tonic::Status>() {
            Some(status) => status.message().to_string(),
            None => err.to_string(),
        };
        if m.is_empty() || out.last().is_some_and(|last| last.contains(&m)) {
            continue;
        }
        out.push(m);
    }
    out
}

/// Result alias of the kvstore crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_say_who_refused_and_why() {
        let err = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let kind = classify(&chain_of(&err));
        assert_eq!(
            kind.to_string(),
            "tls: we refused the server's certificate: unknown issuer (CA)"
        );
        let alert = std::io::Error::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        assert_eq!(
            classify(&chain_of(&alert)).to_string(),
            "tls: the server refused our client certificate: no certificate presented"
        );
        let alert = std::io::Error::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure,
        ));
        assert_eq!(
            classify(&chain_of(&alert)).to_string(),
            "tls: the server ended the handshake: handshake failure"
        );
    }

    #[test]
    fn refused_and_timeouts_are_found_in_the_chain() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&chain_of(&refused)), ErrorKind::Refused);
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "get: no answer");
        assert_eq!(classify(&chain_of(&timed_out)), ErrorKind::Timeout);
        let other = std::io::Error::other("broken");
        assert_eq!(classify(&chain_of(&other)), ErrorKind::Other);
    }

    #[test]
    fn failures_display_their_context_and_kind() {
        let f = Failure {
            context: "connect to https://127.0.0.1:2379".into(),
            kind: ErrorKind::Refused,
            causes: vec!["transport error".into()],
        };
        assert_eq!(
            f.to_string(),
            "connect to https://127.0.0.1:2379: connection refused"
        );
        let other = Failure {
            kind: ErrorKind::Other,
            ..f
        };
        assert_eq!(
            other.to_string(),
            "connect to https://127.0.0.1:2379: transport error"
        );
        let err = Error::Unavailable("remote is down".into());
        assert_eq!(err.to_string(), "remote is down");
        assert_eq!(err.kind(), ErrorKind::Other);
        assert_eq!(
            Error::PermissionDenied("etcdserver: user name not found".into()).kind(),
            ErrorKind::Unauthenticated
        );
    }

    #[test]
    fn kinds_serialize_in_kebab_case() {
        let kind = ErrorKind::Tls {
            side: TlsSide::WeRefused,
            reason: TlsReason::UnsupportedVersion,
        };
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(
            json,
            r#"{"tls":{"side":"we-refused","reason":"unsupported-version"}}"#
        );
        assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), kind);
        assert_eq!(
            serde_json::to_string(&ErrorKind::Refused).unwrap(),
            r#""refused""#
        );
    }
}
