//! The narrow backend trait and the plain data types it speaks.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::Result;

/// A kvstore revision (etcd's cluster-wide, monotonically increasing modification counter).
pub type Revision = i64;

/// A lease id as etcd hands it out.
pub type LeaseId = i64;

/// One key with its value and revision bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key.
    pub key: String,
    /// The raw value.
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last modification.
    pub mod_revision: Revision,
    /// The lease attached to the key, if any.
    pub lease: Option<LeaseId>,
}

/// The answer to a prefix listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListResult {
    /// Keys under the prefix, sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store revision at which the listing was taken; watch from `revision + 1`.
    pub revision: Revision,
}

/// What happened to a key, as a raw watch reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawEventKind {
    /// The key was created or modified; see [`KeyValue::create_revision`] to tell which.
    Put,
    /// The key was deleted (explicitly, by prefix, or because its lease ended).
    Delete,
}

/// One event of a raw watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// Put or delete.
    pub kind: RawEventKind,
    /// The key after the event; for a delete, the value is empty and `mod_revision` is the
    /// revision of the deletion.
    pub kv: KeyValue,
}

/// A stream of raw watch events. It yields [`crate::Error::Compacted`] when the start revision
/// is gone and other errors when the watch broke; after an error it ends.
pub type BoxWatchStream = BoxStream<'static, Result<Vec<RawEvent>>>;

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// No key exists under the prefix.
    PrefixEmpty(String),
    /// The key exists and was last modified at exactly this revision.
    ModRevision(String, Revision),
    /// The key exists and holds exactly this value.
    Value(String, Vec<u8>),
}

/// An operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write a key, optionally attached to a lease.
    Put {
        /// Key to write.
        key: String,
        /// Value to write.
        value: Vec<u8>,
        /// Lease to attach, if any.
        lease: Option<LeaseId>,
    },
    /// Delete a key (no error when it does not exist).
    Delete(String),
}

/// A transaction: when every comparison holds, all operations are applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions that must all hold.
    pub compares: Vec<Compare>,
    /// Operations applied when they do.
    pub ops: Vec<Op>,
}

/// Server status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Server version, e.g. `3.4.23`.
    pub version: String,
    /// Current store revision.
    pub revision: Revision,
    /// Database size in bytes (0 for the in-memory backend).
    pub db_size: i64,
    /// Member id of the leader (0 for the in-memory backend).
    pub leader: u64,
    /// The etcd cluster's id: the same on every member, new when the store was rebuilt from
    /// scratch, whose revisions then mean something else (0 for the in-memory backend).
    pub cluster_id: u64,
}

/// The narrow contract every kvstore implementation provides.
///
/// Keys are UTF-8 strings (Cilium's layout), values raw bytes. Implementations must agree on
/// semantics: revisions grow by one per write transaction; a listing carries the revision it was
/// taken at; a watch from revision `r` first replays every change with revision `>= r` and fails
/// with [`crate::Error::Compacted`] when `r` is older than the compaction point; keys attached
/// to a lease disappear (with delete events) when the lease expires or is revoked.
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Lists every key under `prefix`, with the revision of the listing.
    async fn list_prefix(&self, prefix: &str) -> Result<ListResult>;

    /// Writes a key, optionally attached to a lease. Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;

    /// Deletes a key. Returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Deletes every key under `prefix`. Returns how many were deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64>;

    /// Applies `txn` atomically if its comparisons hold. Returns whether it was applied.
    async fn txn(&self, txn: Txn) -> Result<bool>;

    /// Watches every key under `prefix`, starting at revision `from` (0: from now).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<BoxWatchStream>;

    /// Grants a lease with the given time to live.
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease once. Fails with [`crate::Error::LeaseNotFound`] when it has ended.
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration>;

    /// Revokes a lease, deleting every key attached to it.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<()>;

    /// Compacts the history up to `revision`: watches cannot start before it any more.
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Reports server status.
    async fn status(&self) -> Result<Status>;

    /// Creates `key` only if it does not exist. Returns whether it was created.
    async fn create_only(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<bool> {
        self.txn(Txn {
            compares: vec![Compare::Absent(key.to_string())],
            ops: vec![Op::Put {
                key: key.to_string(),
                value,
                lease,
            }],
        })
        .await
    }

    /// Replaces the value of `key` only if it was last modified at `expected`.
    /// Returns whether it was replaced.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<bool> {
        self.txn(Txn {
            compares: vec![Compare::ModRevision(key.to_string(), expected)],
            ops: vec![Op::Put {
                key: key.to_string(),
                value,
                lease,
            }],
        })
        .await
    }
}
