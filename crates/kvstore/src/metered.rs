//! Counting every kvstore operation, for the daemons' `/metrics`.
//!
//! [`MeteredBackend`] wraps any [`KvBackend`] and counts, per operation (`get`, `list`, `put`,
//! `delete`, `txn`, `watch`, `lease`, ...), the calls, the failures and the time spent, like
//! Cilium's `kvstore_operations_duration_seconds`. [`KvMetrics::render`] prints them in the
//! Prometheus text format. Counting is a few relaxed atomic adds per call.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::Result;
use crate::backend::{
    BoxWatchStream, KeyValue, KvBackend, LeaseId, ListResult, Revision, Status, Txn,
};

const OPS: [&str; 10] = [
    "get",
    "list",
    "put",
    "delete",
    "delete_prefix",
    "txn",
    "watch",
    "lease",
    "compact",
    "status",
];

#[derive(Default)]
struct OpCounters {
    calls: AtomicU64,
    errors: AtomicU64,
    micros: AtomicU64,
}

/// The counters of one [`MeteredBackend`] (shared: clones read the same numbers).
#[derive(Clone, Default)]
pub struct KvMetrics {
    ops: Arc<[OpCounters; OPS.len()]>,
}

/// One operation's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpFigures {
    /// Operation name.
    pub op: &'static str,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Total time spent.
    pub total: Duration,
}

impl KvMetrics {
    fn record<T>(&self, op: usize, start: Instant, result: &Result<T>) {
        let c = &self.ops[op];
        c.calls.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.micros
            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Every operation's figures.
    pub fn figures(&self) -> Vec<OpFigures> {
        OPS.iter()
            .zip(self.ops.iter())
            .map(|(op, c)| OpFigures {
                op,
                calls: c.calls.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                total: Duration::from_micros(c.micros.load(Ordering::Relaxed)),
            })
            .collect()
    }

    /// Prometheus text: `plexus_kvstore_operations_total`, `..._errors_total` and
    /// `..._duration_seconds_sum`, labelled by `operation` and `scope`.
    pub fn render(&self, scope: &str) -> String {
        let figures = self.figures();
        let mut out = String::new();
        type Family = (
            &'static str,
            &'static str,
            &'static str,
            fn(&OpFigures) -> f64,
        );
        let families: [Family; 3] = [
            (
                "plexus_kvstore_operations_total",
                "kvstore operations made",
                "counter",
                |f| f.calls as f64,
            ),
            (
                "plexus_kvstore_operation_errors_total",
                "kvstore operations that failed",
                "counter",
                |f| f.errors as f64,
            ),
            (
                "plexus_kvstore_operations_duration_seconds_sum",
                "time spent in kvstore operations",
                "counter",
                |f| f.total.as_secs_f64(),
            ),
        ];
        for (name, help, kind, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}.");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for f in &figures {
                let _ = writeln!(
                    out,
                    "{name}{{scope=\"{scope}\",operation=\"{}\"}} {}",
                    f.op,
                    value(f)
                );
            }
        }
        out
    }
}

/// A [`KvBackend`] that counts what passes through it.
pub struct MeteredBackend {
    inner: Arc<dyn KvBackend>,
    metrics: KvMetrics,
}

impl MeteredBackend {
    /// Wraps `inner`; read the figures through the returned [`KvMetrics`].
    pub fn new(inner: Arc<dyn KvBackend>) -> (Self, KvMetrics) {
        let metrics = KvMetrics::default();
        (
            Self {
                inner,
                metrics: metrics.clone(),
            },
            metrics,
        )
    }
}

macro_rules! metered {
    ($self:ident, $op:expr, $call:expr) => {{
        let start = Instant::now();
        let result = $call.await;
        $self.metrics.record($op, start, &result);
        result
    }};
}

#[async_trait]
impl KvBackend for MeteredBackend {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        metered!(self, 0, self.inner.get(key))
    }
    async fn list_prefix(&self, prefix: &str) -> Result<ListResult> {
        metered!(self, 1, self.inner.list_prefix(prefix))
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        metered!(self, 2, self.inner.put(key, value, lease))
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        metered!(self, 3, self.inner.delete(key))
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        metered!(self, 4, self.inner.delete_prefix(prefix))
    }
    async fn txn(&self, txn: Txn) -> Result<bool> {
        metered!(self, 5, self.inner.txn(txn))
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<BoxWatchStream> {
        metered!(self, 6, self.inner.watch(prefix, from))
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        metered!(self, 7, self.inner.lease_grant(ttl))
    }
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        metered!(self, 7, self.inner.lease_keep_alive(lease))
    }
    async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        metered!(self, 7, self.inner.lease_revoke(lease))
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        metered!(self, 8, self.inner.compact(revision))
    }
    async fn status(&self) -> Result<Status> {
        metered!(self, 9, self.inner.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    #[tokio::test(flavor = "current_thread")]
    async fn counts_calls_and_failures() {
        tokio::time::timeout(Duration::from_secs(5), async {
            let (backend, metrics) = MeteredBackend::new(Arc::new(MemoryBackend::new()));
            backend.put("a", b"1".to_vec(), None).await.unwrap();
            backend.get("a").await.unwrap();
            backend.get("b").await.unwrap();
            assert!(backend.lease_keep_alive(42).await.is_err());
            let f = metrics.figures();
            let by = |op: &str| f.iter().find(|x| x.op == op).unwrap().clone();
            assert_eq!((by("put").calls, by("get").calls), (1, 2));
            assert_eq!((by("lease").calls, by("lease").errors), (1, 1));
            let text = metrics.render("local");
            assert!(
                text.contains(
                    "plexus_kvstore_operations_total{scope=\"local\",operation=\"get\"} 2"
                ),
                "{text}"
            );
        })
        .await
        .unwrap();
    }
}
