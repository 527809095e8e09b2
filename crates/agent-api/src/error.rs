//! Errors as they cross the API: a non-2xx status with the JSON body [`ErrorBody`], `{"kind":
//! "...", "message": "..."}`. The kind tells a client what to do (retry, fix the request, ask
//! for other credentials) without reading the message; the message tells a person what broke.

use serde::{Deserialize, Serialize};

/// What kind of failure the server reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The object asked for does not exist (404).
    NotFound,
    /// The request is malformed or asks for something impossible (400).
    Invalid,
    /// The caller's identity may not do this (403): over TCP, only the cluster's admin
    /// certificate may write.
    Forbidden,
    /// The server cannot answer now (not ready, a dependency down); retrying may help (503).
    Unavailable,
    /// The server failed (500); its log says more.
    Internal,
}

impl ErrorKind {
    /// The HTTP status the server answers with.
    pub fn status(self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::Invalid => 400,
            Self::Forbidden => 403,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// The kind of an error status whose body is not an [`ErrorBody`] (a server that does not
    /// speak this format, such as a proxy or the apiserver's probes).
    pub fn from_status(status: u16) -> Self {
        match status {
            404 | 410 => Self::NotFound,
            401 | 403 => Self::Forbidden,
            503 | 502 | 504 | 429 => Self::Unavailable,
            400..=499 => Self::Invalid,
            _ => Self::Internal,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotFound => "not found",
            Self::Invalid => "invalid",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal error",
        })
    }
}

/// The body of an error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What failed, for people.
    pub message: String,
}

impl ErrorBody {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Decodes an error answer: the typed body, else the kind from the status and the body as
    /// the message.
    pub fn decode(status: u16, body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_else(|_| Self {
            kind: ErrorKind::from_status(status),
            message: String::from_utf8_lossy(body).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_plain_answers_get_a_kind_from_their_status() {
        let body = ErrorBody::new(ErrorKind::NotFound, "no endpoint 7 on node n1");
        let json = serde_json::to_vec(&body).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&json),
            r#"{"kind":"not-found","message":"no endpoint 7 on node n1"}"#
        );
        assert_eq!(ErrorBody::decode(404, &json), body);
        assert_eq!(
            ErrorBody::decode(503, b"not ready:\netcd\n"),
            ErrorBody::new(ErrorKind::Unavailable, "not ready:\netcd")
        );
        assert_eq!(
            ErrorBody::decode(422, b"missing field owner").kind,
            ErrorKind::Invalid
        );
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::Invalid,
            ErrorKind::Forbidden,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_status(kind.status()), kind);
        }
    }
}
