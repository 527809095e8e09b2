//! Feeding [`ServiceRecords`] from the cluster's Service objects.
//!
//! [`follow_services`] mirrors `plexus/objects/v1/services/` of any [`KvBackend`] (etcd in the
//! daemon, the in-memory store in tests) with a [`WatchStore`] and applies every change to the
//! shared table, which it marks synced after the initial listing. A value that is not a
//! Service, or whose key does not match its `metadata` (`<namespace>/<name>`), is refused and
//! its name stops resolving.

use std::sync::{Arc, RwLock};

use plexus_kvstore::{DecodeFn, KvBackend, StoreEvent, WatchStore};
use plexus_loadbalancer::SERVICES_PREFIX;
use plexus_loadbalancer::service::Service;
use tokio::task::JoinHandle;

use crate::records::ServiceRecords;

/// The table shared by the watch (writer) and the DNS handler (readers).
pub type SharedRecords = Arc<RwLock<ServiceRecords>>;

/// Decodes a Service and checks that its key is `<namespace>/<name>` of its metadata.
fn decode_service() -> DecodeFn<Service> {
    Box::new(|key, raw| {
        let svc: Service =
            serde_json::from_slice(raw).map_err(|e| format!("service {key}: {e}"))?;
        if svc.key() != key {
            return Err(format!(
                "service {key}: metadata names {} instead",
                svc.key()
            ));
        }
        Ok(svc)
    })
}

/// Mirrors the services of `backend` into `records`. Never returns.
pub async fn follow_services(backend: Arc<dyn KvBackend>, records: SharedRecords) {
    let mut store = WatchStore::new(backend, SERVICES_PREFIX, decode_service());
    loop {
        let event = store.next().await;
        match &event {
            StoreEvent::Upsert { key, value, .. } => {
                tracing::debug!(service = %key, cluster_ip = ?value.spec.cluster_ip, "service")
            }
            StoreEvent::Delete { key, .. } => tracing::debug!(service = %key, "service removed"),
            StoreEvent::Rejected { key, reason } => {
                tracing::warn!(service = %key, %reason, "service refused")
            }
            StoreEvent::Synced => {
                tracing::info!(services = store.len(), "services synced: answering")
            }
        }
        records
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .apply(&event);
    }
}

/// Starts [`follow_services`] on the current tokio runtime.
pub fn spawn_follow_services(
    backend: Arc<dyn KvBackend>,
    records: SharedRecords,
) -> JoinHandle<()> {
    tokio::spawn(follow_services(backend, records))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use plexus_kvstore::MemoryBackend;

    use super::*;
    use crate::records::Answer;

    async fn until(records: &SharedRecords, name: &str, want: Answer) {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                {
                    let r = records.read().unwrap();
                    if r.synced() && r.resolve(name) == want {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} never resolved to {want:?}"));
    }

    #[tokio::test]
    async fn services_in_the_store_become_names_and_deleted_ones_vanish() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let backend = Arc::new(MemoryBackend::new());
            backend
                .put(
                    "plexus/objects/v1/services/default/web",
                    br#"{"metadata":{"name":"web","namespace":"default"},"spec":{"clusterIP":"10.11.0.5"}}"#.to_vec(),
                    None,
                )
                .await
                .unwrap();
            let records: SharedRecords =
                Arc::new(RwLock::new(ServiceRecords::new("cluster.local").unwrap()));
            let task = spawn_follow_services(backend.clone(), records.clone());
            let web = "web.default.svc.cluster.local";
            until(&records, web, Answer::Address("10.11.0.5".parse().unwrap())).await;

            // A key that does not match its object is refused.
            backend
                .put(
                    "plexus/objects/v1/services/default/db",
                    br#"{"metadata":{"name":"other","namespace":"default"},"spec":{"clusterIP":"10.11.0.6"}}"#.to_vec(),
                    None,
                )
                .await
                .unwrap();
            backend
                .put(
                    "plexus/objects/v1/services/default/api",
                    br#"{"metadata":{"name":"api","namespace":"default"},"spec":{"clusterIP":"10.11.0.7"}}"#.to_vec(),
                    None,
                )
                .await
                .unwrap();
            until(&records, "api.default.svc.cluster.local", Answer::Address("10.11.0.7".parse().unwrap())).await;
            assert_eq!(records.read().unwrap().resolve("db.default.svc.cluster.local"), Answer::NxDomain);
            assert_eq!(records.read().unwrap().resolve("other.default.svc.cluster.local"), Answer::NxDomain);

            backend.delete("plexus/objects/v1/services/default/web").await.unwrap();
            until(&records, web, Answer::NxDomain).await;
            task.abort();
        })
        .await
        .unwrap();
    }
}
