//! Counting every kvstore operation, for the daemons' `/metrics`.
//!
//! [`MeteredBackend`] wraps any [`KvBackend`] and counts, per operation (`get`, `list`, `put`,
//! `delete`, `txn`, `watch`, `lease`, ...), the calls, the failures and the time spent, in the
//! buckets of a histogram like Cilium's `kvstore_operations_duration_seconds`.
//! [`KvMetrics::collector`] exposes them in a daemon's `prometheus-client` registry, read at
//! scrape time. Counting is a few relaxed atomic adds per call.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use plexus_metrics::prometheus_client::collector::Collector;
use plexus_metrics::prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use plexus_metrics::prometheus_client::metrics::MetricType;
use plexus_metrics::prometheus_client::registry::Unit;

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

/// Upper bounds (seconds) of the duration histogram's buckets, Prometheus' defaults: an etcd
/// round trip on a LAN is a few milliseconds, a slow one seconds. A last bucket holds the rest.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct OpCounters {
    calls: AtomicU64,
    errors: AtomicU64,
    micros: AtomicU64,
    /// Calls per duration bucket (not cumulative), the last one past [`BUCKETS`].
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

/// The counters of one [`MeteredBackend`] (shared: clones read the same numbers).
#[derive(Clone, Default)]
pub struct KvMetrics {
    ops: Arc<[OpCounters; OPS.len()]>,
}

impl fmt::Debug for KvMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.figures()).finish()
    }
}

/// One operation's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct OpFigures {
    /// Operation name.
    pub op: &'static str,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Total time spent.
    pub total: Duration,
    /// `(upper bound in seconds, calls)` per histogram bucket, not cumulative; the last bound
    /// is `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl KvMetrics {
    fn record<T>(&self, op: usize, start: Instant, result: &Result<T>) {
        let c = &self.ops[op];
        let elapsed = start.elapsed();
        c.calls.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
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
                buckets: BUCKETS
                    .iter()
                    .chain([f64::INFINITY].iter())
                    .zip(c.buckets.iter())
                    .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
                    .collect(),
            })
            .collect()
    }

    /// These counters as a collector for a daemon's registry, every sample labelled
    /// `scope` (e.g. `local`): `plexus_kvstore_operations_total`,
    /// `plexus_kvstore_operation_errors_total` and the histogram
    /// `plexus_kvstore_operations_duration_seconds`, per `operation`.
    pub fn collector(&self, scope: &str) -> KvCollector {
        KvCollector {
            metrics: self.clone(),
            scope: scope.to_string(),
        }
    }
}

/// The collector of [`KvMetrics::collector`]: reads the counters at each scrape.
#[derive(Debug)]
pub struct KvCollector {
    metrics: KvMetrics,
    scope: String,
}

impl Collector for KvCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let figures = self.metrics.figures();
        let scope = self.scope.as_str();
        let labels = |f: &OpFigures| vec![("scope", scope), ("operation", f.op)];
        plexus_metrics::counters(
            &mut encoder,
            "plexus_kvstore_operations",
            "kvstore operations made.",
            figures.iter().map(|f| (labels(f), f.calls)),
        )?;
        plexus_metrics::counters(
            &mut encoder,
            "plexus_kvstore_operation_errors",
            "kvstore operations that failed.",
            figures.iter().map(|f| (labels(f), f.errors)),
        )?;
        let mut family = encoder.encode_descriptor(
            "plexus_kvstore_operations_duration",
            "Time spent in kvstore operations.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for f in &figures {
            // The count from the buckets, so that it always equals the `+Inf` bucket.
            let count = f.buckets.iter().map(|(_, n)| n).sum();
            family
                .encode_family(&labels(f))?
                .encode_histogram::<NoLabelSet>(f.total.as_secs_f64(), count, &f.buckets, None)?;
        }
        Ok(())
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
    use plexus_metrics::Format;
    use plexus_metrics::prometheus_client::registry::Registry;

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
            assert_eq!(by("get").buckets.iter().map(|(_, n)| n).sum::<u64>(), 2);
            let mut registry = Registry::default();
            registry.register_collector(Box::new(metrics.collector("local")));
            for format in [Format::OpenMetrics, Format::Text] {
                let text = plexus_metrics::encode(&registry, format).unwrap();
                for line in [
                    "plexus_kvstore_operations_total{scope=\"local\",operation=\"get\"} 2",
                    "plexus_kvstore_operation_errors_total{scope=\"local\",operation=\"lease\"} 1",
                    "plexus_kvstore_operations_duration_seconds_count{scope=\"local\",operation=\"put\"} 1",
                ] {
                    assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
                }
                // The two formats put `le` first (OpenMetrics) or last (0.0.4).
                assert!(
                    text.lines().any(|l| l.starts_with(
                        "plexus_kvstore_operations_duration_seconds_bucket{"
                    ) && l.contains("le=\"+Inf\"")
                        && l.contains("operation=\"put\"")
                        && l.ends_with("} 1")),
                    "{text}"
                );
                assert!(
                    text.lines().any(|l| l.starts_with(
                        "plexus_kvstore_operations_duration_seconds_sum{scope=\"local\",operation=\"get\"} "
                    )),
                    "{text}"
                );
            }
        })
        .await
        .unwrap();
    }
}
