//! What went wrong with a remote cluster, in words for people and as a kind for programs.
//!
//! Every failure the remote-cluster protocol records is a [`RemoteFailure`]: the message shown
//! in `clustermesh status` and the log, and a [`FailureKind`] that the CLI turns into a hint
//! (so hints never depend on the wording). Failures to reach the remote's kvstore carry the
//! kvstore's own classification ([`plexus_kvstore::ErrorKind`]: which side refused a
//! certificate and why, refused, timeout, auth); the others are the protocol's own.
//!
//! [`ChangeLog`] decides what of a remote's status changes is worth a log line: the connection
//! coming up, being lost (with its cause), and each new cause while it fails. The same failure
//! repeated on every retry is logged once.

use serde::{Deserialize, Serialize};

/// What kind of failure a remote cluster had.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Reaching the remote's kvstore failed, as the kvstore classified it.
    Kvstore(plexus_kvstore::ErrorKind),
    /// The remote has not published its cluster config (its apiserver is not running yet).
    ClusterConfigMissing,
    /// The remote's cluster id is already used by another cluster of the mesh.
    ClusterIdInUse,
    /// The remote's cluster config is not acceptable (an id out of range, another
    /// max-connected-clusters, a malformed value).
    ClusterConfigInvalid,
    /// The remote's heartbeat stopped changing: its apiserver (or KVStoreMesh) stopped
    /// publishing while its etcd still answers.
    HeartbeatStale,
    /// The remote is read through the local cluster's KVStoreMesh, which is not connected to it
    /// (its heartbeat of the remote is gone from the cache).
    KvstoremeshDisconnected,
    /// Anything else; the message says what.
    Other,
}

/// A failure of a remote cluster: its kind and the message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFailure {
    /// What kind.
    pub kind: FailureKind,
    /// What happened, with its cause.
    pub message: String,
    /// The cause chain as the libraries worded it, outermost first (empty when the message is
    /// all there is), for the log.
    pub causes: Vec<String>,
}

impl RemoteFailure {
    /// A failure of `kind` described by `message`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            causes: Vec::new(),
        }
    }
}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<&plexus_kvstore::Error> for RemoteFailure {
    fn from(err: &plexus_kvstore::Error) -> Self {
        let mut failure = Self::new(FailureKind::Kvstore(err.kind()), err.to_string());
        if let plexus_kvstore::Error::Unavailable(f) = err {
            failure.causes = f.causes.clone();
        }
        failure
    }
}

impl From<plexus_kvstore::Error> for RemoteFailure {
    fn from(err: plexus_kvstore::Error) -> Self {
        Self::from(&err)
    }
}

impl From<&str> for RemoteFailure {
    /// A failure of kind [`FailureKind::Other`].
    fn from(message: &str) -> Self {
        Self::new(FailureKind::Other, message)
    }
}

impl From<String> for RemoteFailure {
    /// A failure of kind [`FailureKind::Other`].
    fn from(message: String) -> Self {
        Self::new(FailureKind::Other, message)
    }
}

/// A change of a remote's state worth one log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateChange {
    /// The remote is connected (again, when `after_failures` > 0).
    Connected {
        /// Failures recorded before.
        after_failures: u64,
    },
    /// The connection was lost, for this reason.
    Lost(RemoteFailure),
    /// A failure with a cause other than the last one logged.
    Failing(RemoteFailure),
}

/// Remembers what was last logged for one remote, so each change is logged once.
#[derive(Debug, Default)]
pub struct ChangeLog {
    connected: bool,
    logged: Option<(FailureKind, String)>,
}

impl ChangeLog {
    /// A log for a remote that is not connected yet and has not failed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Compares the remote's state (`connected`, its failure count and last failure) with what
    /// was last logged; returns what changed, if anything worth a line.
    pub fn observe(
        &mut self,
        connected: bool,
        failures: u64,
        last_failure: Option<&RemoteFailure>,
    ) -> Option<StateChange> {
        let was_connected = std::mem::replace(&mut self.connected, connected);
        let new_cause = last_failure.filter(|f| {
            self.logged
                .as_ref()
                .is_none_or(|(kind, message)| *kind != f.kind || *message != f.message)
        });
        match (was_connected, connected) {
            (false, true) => {
                // The failure before the connection stays in the status; it is not news.
                self.logged = last_failure.map(|f| (f.kind.clone(), f.message.clone()));
                Some(StateChange::Connected {
                    after_failures: failures,
                })
            }
            (true, false) => {
                let cause = last_failure
                    .cloned()
                    .unwrap_or_else(|| "no cause known".into());
                self.logged = Some((cause.kind.clone(), cause.message.clone()));
                Some(StateChange::Lost(cause))
            }
            _ => {
                let cause = new_cause?.clone();
                self.logged = Some((cause.kind.clone(), cause.message.clone()));
                Some(StateChange::Failing(cause))
            }
        }
    }
}

impl StateChange {
    /// Writes the line for remote `remote`: `info` when connected, `warn` otherwise, with the
    /// failure's kind and cause chain as fields.
    pub fn log(&self, remote: &str) {
        match self {
            StateChange::Connected { after_failures: 0 } => {
                tracing::info!(remote, "connected to remote cluster");
            }
            StateChange::Connected { after_failures } => {
                tracing::info!(
                    remote,
                    failures = after_failures,
                    "connected to remote cluster"
                );
            }
            StateChange::Lost(f) => tracing::warn!(
                remote,
                kind = ?f.kind,
                cause = %f.causes.join(": "),
                "lost connection to remote cluster: {}",
                f.message
            ),
            StateChange::Failing(f) => tracing::warn!(
                remote,
                kind = ?f.kind,
                cause = %f.causes.join(": "),
                "remote cluster failing: {}",
                f.message
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_kvstore::ErrorKind;

    fn refused() -> RemoteFailure {
        RemoteFailure::new(
            FailureKind::Kvstore(ErrorKind::Refused),
            "connect: get on http://127.0.0.1:1: connection refused",
        )
    }

    #[test]
    fn each_change_is_logged_once() {
        let mut log = ChangeLog::new();
        assert_eq!(log.observe(false, 0, None), None, "nothing happened yet");
        let first = log.observe(false, 1, Some(&refused()));
        assert_eq!(first, Some(StateChange::Failing(refused())));
        for n in 2..10 {
            assert_eq!(log.observe(false, n, Some(&refused())), None, "same cause");
        }
        let timeout = RemoteFailure::new(FailureKind::Kvstore(ErrorKind::Timeout), "timeout");
        assert_eq!(
            log.observe(false, 10, Some(&timeout)),
            Some(StateChange::Failing(timeout.clone())),
            "a new cause"
        );
        assert_eq!(
            log.observe(true, 10, Some(&timeout)),
            Some(StateChange::Connected { after_failures: 10 })
        );
        assert_eq!(log.observe(true, 10, Some(&timeout)), None);
        assert_eq!(
            log.observe(false, 11, Some(&timeout)),
            Some(StateChange::Lost(timeout.clone())),
            "lost, even with the cause logged before it connected"
        );
        assert_eq!(log.observe(false, 12, Some(&timeout)), None);
    }
}
