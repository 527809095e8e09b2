//! Lease ownership: one task keeps a lease alive and replaces it when it has ended.
//!
//! Everything a Plexus component publishes with a lease (its node, its ipcache entries, the
//! heartbeat, canaries) hangs off the lease of a [`LeaseManager`]. The manager renews the lease
//! every third of its TTL. When the server says the lease is gone (the process was paused or
//! cut off for longer than the TTL, so every key attached to it is gone too), the manager grants
//! a new one and announces it on [`LeaseManager::subscribe`]; owners of keys then write them
//! again under the new lease. Dropping the manager stops the renewals (the lease then expires);
//! [`LeaseManager::revoke`] deletes the keys at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{KvBackend, LeaseId};
use crate::{Error, Result};

/// Owns one lease at a time and keeps it alive.
pub struct LeaseManager {
    backend: Arc<dyn KvBackend>,
    current: watch::Receiver<LeaseId>,
    task: JoinHandle<()>,
}

impl LeaseManager {
    /// Grants a first lease with `ttl` and starts keeping it alive.
    pub async fn start(backend: Arc<dyn KvBackend>, ttl: Duration) -> Result<Self> {
        let lease = backend.lease_grant(ttl).await?;
        let (tx, current) = watch::channel(lease);
        let task = tokio::spawn(keep_alive(backend.clone(), ttl, tx));
        Ok(Self {
            backend,
            current,
            task,
        })
    }

    /// The lease to attach keys to right now.
    pub fn lease(&self) -> LeaseId {
        *self.current.borrow()
    }

    /// A receiver that changes whenever the lease was replaced by a new one.
    pub fn subscribe(&self) -> watch::Receiver<LeaseId> {
        self.current.clone()
    }

    /// Stops renewing and revokes the current lease, deleting every key attached to it.
    pub async fn revoke(self) -> Result<()> {
        self.task.abort();
        let lease = self.lease();
        match self.backend.lease_revoke(lease).await {
            Ok(()) | Err(Error::LeaseNotFound(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

impl Drop for LeaseManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive(backend: Arc<dyn KvBackend>, ttl: Duration, tx: watch::Sender<LeaseId>) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut lease = *tx.borrow();
    loop {
        tokio::time::sleep(period).await;
        match backend.lease_keep_alive(lease).await {
            Ok(_) => {}
            Err(Error::LeaseNotFound(_)) => {
                tracing::warn!(
                    lease = format!("{lease:#x}"),
                    "lease ended, granting a new one"
                );
                loop {
                    match backend.lease_grant(ttl).await {
                        Ok(new) => {
                            lease = new;
                            if tx.send(new).is_err() {
                                return;
                            }
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot grant a lease, retrying");
                            tokio::time::sleep(period).await;
                        }
                    }
                }
            }
            // Unreachable server: keep trying; if the lease ends meanwhile, the next successful
            // contact says so and a new lease is granted.
            Err(err) => tracing::debug!(error = %err, "lease keep-alive failed"),
        }
    }
}
