//! Test fixtures shared by the kvstore integration tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use plexus_kvstore::{
    BoxWatchStream, Error, EtcdBackend, EtcdConfig, KvBackend, LeaseId, ListResult, MemoryBackend,
    Result, Revision, Status, Txn,
};
use plexus_test_support::EtcdProcess;
use tokio::sync::watch;

/// A backend under test, with whatever keeps it alive (an etcd process).
pub struct Fixture {
    pub backend: Arc<dyn KvBackend>,
    _etcd: Option<EtcdProcess>,
}

impl Fixture {
    pub fn memory() -> Self {
        Self {
            backend: Arc::new(MemoryBackend::new()),
            _etcd: None,
        }
    }

    pub async fn etcd() -> Self {
        plexus_kvstore::install_crypto_provider();
        let etcd = EtcdProcess::start().expect("start etcd");
        let backend = EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .expect("connect to etcd");
        Self {
            backend: Arc::new(backend),
            _etcd: Some(etcd),
        }
    }

    /// etcd with TLS and `--client-cert-auth`, reached with a client certificate.
    pub async fn etcd_tls() -> Self {
        plexus_kvstore::install_crypto_provider();
        let etcd = EtcdProcess::start_tls().expect("start etcd with TLS");
        let cert = etcd.issue_client("root").expect("issue client certificate");
        let tls = plexus_kvstore::TlsFiles {
            ca_file: cert.ca_file,
            cert_file: cert.cert_file,
            key_file: cert.key_file,
        };
        let backend = EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]).with_tls(tls))
            .await
            .expect("connect to etcd over mTLS");
        Self {
            backend: Arc::new(backend),
            _etcd: Some(etcd),
        }
    }
}

/// Wraps a backend so a test can cut its watches and hold new ones, as a lost connection does.
#[derive(Clone)]
pub struct Breakable {
    inner: Arc<dyn KvBackend>,
    generation: Arc<watch::Sender<u64>>,
    held: Arc<watch::Sender<bool>>,
    arrived: Arc<watch::Sender<bool>>,
}

impl Breakable {
    pub fn new(inner: Arc<dyn KvBackend>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            generation: Arc::new(watch::channel(0).0),
            held: Arc::new(watch::channel(false).0),
            arrived: Arc::new(watch::channel(false).0),
        })
    }

    /// Breaks every open watch and makes the next `watch` call wait for [`Breakable::release`].
    pub fn hold_and_break(&self) {
        self.arrived.send_replace(false);
        self.held.send_replace(true);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Waits until a `watch` call is being held.
    pub async fn wait_held(&self) {
        let mut rx = self.arrived.subscribe();
        let _ = rx.wait_for(|a| *a).await;
    }

    /// Lets held and future `watch` calls through.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

#[async_trait]
impl KvBackend for Breakable {
    async fn get(&self, key: &str) -> Result<Option<plexus_kvstore::KeyValue>> {
        self.inner.get(key).await
    }
    async fn list_prefix(&self, prefix: &str) -> Result<ListResult> {
        self.inner.list_prefix(prefix).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.inner.delete_prefix(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<bool> {
        self.inner.txn(txn).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<BoxWatchStream> {
        if *self.held.borrow() {
            self.arrived.send_replace(true);
            let mut held = self.held.subscribe();
            let _ = held.wait_for(|h| !h).await;
        }
        let inner = self.inner.watch(prefix, from).await?;
        let mut generation = self.generation.subscribe();
        generation.borrow_and_update();
        Ok(futures::stream::unfold(
            (inner, generation, false),
            |(mut inner, mut generation, done)| async move {
                if done {
                    return None;
                }
                tokio::select! {
                    item = inner.next() => item.map(|item| (item, (inner, generation, false))),
                    _ = generation.changed() => Some((
                        Err(Error::WatchBroken("cut by the test".into())),
                        (inner, generation, true),
                    )),
                }
            },
        )
        .boxed())
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.inner.lease_keep_alive(lease).await
    }
    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        self.inner.lease_revoke(lease).await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }
    async fn status(&self) -> Result<Status> {
        self.inner.status().await
    }
}
