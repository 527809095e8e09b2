//! The Plexus kvstore: everything a cluster publishes, and everything it reads from its peers,
//! goes through this crate.
//!
//! The crate promises one narrow contract, [`KvBackend`], with two implementations that behave
//! the same way (one shared test suite runs against both):
//! - [`EtcdBackend`], etcd v3 over gRPC, optionally with TLS and a client certificate (the
//!   certificate's CN is the etcd user);
//! - [`MemoryBackend`], an in-memory store with revisions, expiring leases and compaction, for
//!   fast unit tests.
//!
//! On top of the trait sit the pieces every consumer needs:
//! - [`LeaseManager`]: one owning task keeps a lease alive and replaces it when it expired;
//! - [`Watcher`]: list, then watch from the list revision + 1, a "list done" marker after the
//!   initial list, and a re-list after compaction or a broken watch that deletes what vanished
//!   in between;
//! - [`SyncStore`]: publishes the keys one owner owns under a lease, re-creates them when the
//!   lease is replaced, and writes the sync canary once the initial set is written;
//! - [`WatchStore`]: mirrors a prefix into a local cache and reports when it has synced.
//!
//! [`connect_with_retry`] is the one connect-and-wait loop of every daemon and the CLI; errors
//! say what broke ([`ErrorKind`]: which side refused a certificate and why, refused, timeout,
//! auth) and keep their cause chain ([`Failure`]).
//!
//! [`access`] manages etcd users, roles and authentication for certificate-based users;
//! [`metered`] counts every operation for `/metrics`.

pub mod access;
mod backend;
pub mod connect;
mod diagnose;
pub mod error;
pub mod etcd;
pub mod lease;
pub mod memory;
pub mod metered;
pub mod sync_store;
pub mod watch_store;
pub mod watcher;

pub use access::ReadGrant;
pub use backend::{
    BoxWatchStream, Compare, KeyValue, KvBackend, LeaseId, ListResult, Op, RawEvent, RawEventKind,
    Revision, Status, Txn,
};
pub use connect::{Retry, connect_with_retry};
pub use error::{Error, ErrorKind, Failure, Result, TlsReason, TlsSide};
pub use etcd::{EtcdBackend, EtcdConfig, IncompleteTls, TlsFiles};
pub use lease::LeaseManager;
pub use memory::MemoryBackend;
pub use metered::{KvMetrics, MeteredBackend};
pub use sync_store::{QueueGauge, SyncStore, SyncStoreConfig};
pub use watch_store::{DecodeFn, EntryBudget, StoreEvent, WatchStore};
pub use watcher::{RelistLimiter, RelistPolicy, WatchEvent, Watcher, WatcherStats};

/// Installs the process-wide rustls crypto provider (ring).
///
/// rustls refuses to pick a provider by itself when more than one could be compiled in, so every
/// binary and test that opens a TLS connection calls this first. It is idempotent.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
