//! Errors of identity allocation and garbage collection.
//!
//! Every message names the label set, identity or key at fault, so that an operator reading a
//! log line can find the kvstore entry to look at.

use std::time::Duration;

use plexus_kvstore::LeaseId;

/// What went wrong allocating, releasing, looking up or collecting identities.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The kvstore failed (unreachable, permission denied, ...).
    #[error("kvstore error while {context}: {source}")]
    Kvstore {
        /// What was being done, naming the labels or key.
        context: String,
        /// The kvstore's error.
        source: plexus_kvstore::Error,
    },
    /// The node's lease has ended: its value keys are gone. Give the allocator a new lease with
    /// [`crate::IdentityAllocator::set_lease`].
    #[error("lease {lease:#x} of node {node:?} has ended (while {context}); set a new lease")]
    LeaseExpired {
        /// The node.
        node: String,
        /// The lease that ended.
        lease: LeaseId,
        /// What was being done.
        context: String,
    },
    /// Every identity of the cluster's range is taken.
    #[error(
        "identity range {start}..={end} of cluster {cluster:?} is exhausted: no free identity for labels {labels:?}"
    )]
    RangeExhausted {
        /// The cluster.
        cluster: String,
        /// First identity of the range.
        start: u32,
        /// Last identity of the range.
        end: u32,
        /// The labels that needed an identity.
        labels: String,
    },
    /// Other allocators kept winning the race for these labels.
    #[error("gave up allocating an identity for labels {labels:?} after {attempts} conflicting attempts")]
    Contention {
        /// The labels.
        labels: String,
        /// How many transactions failed.
        attempts: u32,
    },
    /// The kvstore already maps these labels to an identity this cluster may not allocate
    /// (the cluster id or the maximum number of clusters changed while the kvstore kept its
    /// state).
    #[error(
        "labels {labels:?} already hold identity {id} in the kvstore, outside cluster {cluster:?}'s range {start}..={end}"
    )]
    OutOfRange {
        /// The labels.
        labels: String,
        /// The identity the kvstore holds for them.
        id: u32,
        /// The cluster.
        cluster: String,
        /// First identity of the range.
        start: u32,
        /// Last identity of the range.
        end: u32,
    },
    /// Another node's value key contradicts the master keys; the garbage collector removes it
    /// after its grace period.
    #[error("value key {key:?} of labels {labels:?} is inconsistent: {reason}")]
    Conflict {
        /// The offending value key.
        key: String,
        /// The labels.
        labels: String,
        /// What is wrong with it.
        reason: String,
    },
    /// These labels cannot get a kvstore identity.
    #[error("labels {labels:?} cannot be allocated: {reason}")]
    InvalidLabels {
        /// The labels.
        labels: String,
        /// Why not.
        reason: String,
    },
    /// The node name cannot be used in a value key.
    #[error("invalid node name {node:?}: {reason}")]
    InvalidNode {
        /// The node name.
        node: String,
        /// Why not.
        reason: String,
    },
    /// [`crate::IdentityAllocator::release`] of labels this node does not hold.
    #[error("labels {labels:?} are not held by node {node:?}")]
    NotHeld {
        /// The labels.
        labels: String,
        /// The node.
        node: String,
    },
    /// A key under the identities prefix does not hold what its shape promises.
    #[error("malformed identity key {key:?}: {reason}")]
    Malformed {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The cache of master keys did not finish its initial listing in time.
    #[error("identity master cache not synced after {waited:?} (is the kvstore reachable?)")]
    NotSynced {
        /// How long we waited.
        waited: Duration,
    },
    /// The allocation state machine was fed an event it did not ask for (a bug in the driver).
    #[error("allocation of labels {labels:?}: unexpected {event} while {phase}")]
    Protocol {
        /// The labels.
        labels: String,
        /// The event received.
        event: &'static str,
        /// What the machine was waiting for.
        phase: &'static str,
    },
}

/// Result alias of this crate.
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// Wraps a kvstore error with what was being done; a lost lease gets its own variant.
pub(crate) fn kv_error(node: &str, context: impl Into<String>, source: plexus_kvstore::Error) -> IdentityError {
    match source {
        plexus_kvstore::Error::LeaseNotFound(lease) => {
            IdentityError::LeaseExpired { node: node.to_string(), lease, context: context.into() }
        }
        source => IdentityError::Kvstore { context: context.into(), source },
    }
}
