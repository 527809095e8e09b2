//! Errors of the kvstore crate.

/// What went wrong talking to a kvstore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend could not be reached or the request failed in transport.
    #[error("kvstore unavailable: {0}")]
    Unavailable(String),
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

use crate::backend::{LeaseId, Revision};

/// Result alias of the kvstore crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
