//! What a cluster publishes about itself for the clusters that read it.
//!
//! [`SelfPublisher`] (run by the cluster's apiserver) keeps two keys under the owner's lease:
//! - `cilium/cluster-config/<cluster>`: the `CiliumClusterConfig` (id, synced canaries,
//!   max-connected-clusters), re-written every five minutes so a key lost by accident returns;
//! - `cilium/.heartbeat`: the current RFC 3339 time, re-written every minute; a reader whose view
//!   of it has not changed for two intervals considers the cluster unhealthy.
//!
//! Both are written before [`SelfPublisher::start`] returns, and again at once when the lease is
//! replaced (after it ended, so were the keys).

use std::sync::Arc;
use std::time::Duration;

use plexus_kvstore::{KvBackend, LeaseId, LeaseManager};
use plexus_model::cluster::ClusterInfo;
use plexus_model::config::CiliumClusterConfig;
use plexus_model::keys;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the publisher writes.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// The cluster.
    pub cluster: ClusterInfo,
    /// Heartbeat period (Cilium: one minute).
    pub heartbeat_interval: Duration,
    /// Cluster config re-write period (Cilium: five minutes).
    pub config_interval: Duration,
}

impl PublisherConfig {
    /// Cilium's periods: heartbeat every minute, cluster config every five.
    pub fn new(cluster: ClusterInfo) -> Self {
        Self {
            cluster,
            heartbeat_interval: Duration::from_secs(60),
            config_interval: Duration::from_secs(300),
        }
    }
}

/// Keeps the cluster config and the heartbeat published. Dropping it stops the writes.
pub struct SelfPublisher {
    task: JoinHandle<()>,
}

struct Writer {
    backend: Arc<dyn KvBackend>,
    config_key: String,
    config_value: Vec<u8>,
}

impl Writer {
    async fn config(&self, lease: LeaseId) -> plexus_kvstore::Result<()> {
        self.backend
            .put(&self.config_key, self.config_value.clone(), Some(lease))
            .await
            .map(|_| ())
    }

    async fn heartbeat(&self, lease: LeaseId) -> plexus_kvstore::Result<()> {
        let now = plexus_model::time::format_rfc3339(chrono::Utc::now());
        self.backend
            .put(keys::HEARTBEAT, now.into_bytes(), Some(lease))
            .await
            .map(|_| ())
    }
}

impl SelfPublisher {
    /// Writes the cluster config and a heartbeat, then keeps them up to date.
    pub async fn start(
        backend: Arc<dyn KvBackend>,
        leases: &LeaseManager,
        config: PublisherConfig,
    ) -> plexus_kvstore::Result<Self> {
        let cluster_config = CiliumClusterConfig::new(config.cluster.id, config.cluster.max);
        let writer = Writer {
            backend,
            config_key: keys::cluster_config_key(&config.cluster.name),
            // Serializing a plain struct of numbers and booleans cannot fail.
            config_value: serde_json::to_vec(&cluster_config).unwrap_or_default(),
        };
        let lease_rx = leases.subscribe();
        let lease = leases.lease();
        writer.config(lease).await?;
        writer.heartbeat(lease).await?;
        let task = tokio::spawn(run(writer, lease_rx, config));
        Ok(Self { task })
    }
}

impl Drop for SelfPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(writer: Writer, mut lease_rx: watch::Receiver<LeaseId>, config: PublisherConfig) {
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    let mut refresh = tokio::time::interval(config.config_interval);
    heartbeat.tick().await; // both were written by start()
    refresh.tick().await;
    loop {
        let lease = *lease_rx.borrow();
        let result = tokio::select! {
            _ = heartbeat.tick() => writer.heartbeat(lease).await,
            _ = refresh.tick() => writer.config(lease).await,
            changed = lease_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let lease = *lease_rx.borrow_and_update();
                match writer.config(lease).await {
                    Ok(()) => writer.heartbeat(lease).await,
                    Err(err) => Err(err),
                }
            }
        };
        if let Err(err) = result {
            // The next tick tries again; readers tolerate a missed heartbeat.
            tracing::warn!(error = %err, "cannot publish cluster config or heartbeat");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_kvstore::MemoryBackend;
    use plexus_model::cluster::MaxConnectedClusters;

    #[tokio::test]
    async fn publishes_config_and_heartbeat_and_rewrites_them_under_a_new_lease() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let b: Arc<dyn KvBackend> = Arc::new(MemoryBackend::new());
            let leases = LeaseManager::start(b.clone(), Duration::from_secs(3)).await.unwrap();
            let cluster = ClusterInfo::new("cluster1", 1, MaxConnectedClusters::Max255).unwrap();
            let config = PublisherConfig {
                heartbeat_interval: Duration::from_millis(200),
                ..PublisherConfig::new(cluster)
            };
            let _publisher = SelfPublisher::start(b.clone(), &leases, config).await.unwrap();
            let kv = b.get("cilium/cluster-config/cluster1").await.unwrap().unwrap();
            assert_eq!(
                String::from_utf8(kv.value).unwrap(),
                r#"{"id":1,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"serviceExportsEnabled":false}}"#
            );
            assert_eq!(kv.lease, Some(leases.lease()));
            let first = b.get("cilium/.heartbeat").await.unwrap().unwrap();
            plexus_model::time::parse_rfc3339(std::str::from_utf8(&first.value).unwrap()).unwrap();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = b.get("cilium/.heartbeat").await.unwrap().unwrap();
                if now.mod_revision > first.mod_revision {
                    break;
                }
            }
            let old = leases.lease();
            b.lease_revoke(old).await.unwrap();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(kv) = b.get("cilium/cluster-config/cluster1").await.unwrap()
                    && kv.lease != Some(old)
                {
                    break;
                }
            }
            assert!(b.get("cilium/.heartbeat").await.unwrap().is_some());
        })
        .await
        .unwrap();
    }
}
