//! The lab's writes to (and reads of) a cluster's etcd: the kube-dns Service ([`crate::dns`]) and the Pod
//! objects of the pods it runs ([`crate::workload`]).
//!
//! The lab writes as the cluster's admin (its `pki/admin.*`), from the cluster's control-plane
//! network namespace, so it works whether or not the caller is inside the lab's underlay; one
//! transaction per call, so a batch of pod objects is written whole or not at all.

use std::time::Duration;

use anyhow::{Context, Result};
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, Op, TlsFiles, Txn};

use crate::lab::ClusterState;
use crate::sys;

/// How long the lab waits for a cluster's etcd.
const CONNECT_LIMIT: Duration = Duration::from_secs(20);

/// Applies `ops` to cluster `c`'s etcd in one transaction (nothing to do: no connection).
pub fn write(c: &ClusterState, ops: Vec<Op>) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let what = describe(&ops);
    let cluster = c.name.clone();
    with_etcd(c, move |etcd| async move {
        etcd.txn(Txn {
            compares: vec![],
            ops,
        })
        .await
        .with_context(|| format!("write {what} in the etcd of {cluster}"))?;
        Ok(())
    })
}

/// The keys and values under `prefix` in cluster `c`'s etcd.
pub fn list(c: &ClusterState, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let prefix = prefix.to_string();
    let cluster = c.name.clone();
    with_etcd(c, move |etcd| async move {
        let list = etcd
            .list_prefix(&prefix)
            .await
            .with_context(|| format!("list {prefix} in the etcd of {cluster}"))?;
        Ok(list.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
    })
}

/// Runs `f` with a connection to cluster `c`'s etcd, on a thread in the cluster's
/// control-plane namespace with a runtime of its own (whether or not the caller runs one).
fn with_etcd<T, F, Fut>(c: &ClusterState, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(EtcdBackend) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    with_endpoints(c, c.etcd_endpoints(), f)
}

/// Whether the etcd member at `endpoint` of cluster `c` answers a status request.
pub fn status_of(c: &ClusterState, endpoint: &str) -> Result<()> {
    let what = format!("status of {endpoint}");
    with_endpoints(c, vec![endpoint.to_string()], move |etcd| async move {
        etcd.status().await.context(what)?;
        Ok(())
    })
}

fn with_endpoints<T, F, Fut>(c: &ClusterState, endpoints: Vec<String>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(EtcdBackend) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let pki = c.state_dir.join("pki");
    let config = EtcdConfig::new(endpoints).with_tls(TlsFiles {
        ca_file: pki.join("ca.crt"),
        cert_file: pki.join("admin.crt"),
        key_file: pki.join("admin.key"),
    });
    let cluster = c.name.clone();
    sys::in_netns(&c.netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start a tokio runtime")?;
        rt.block_on(async {
            plexus_kvstore::install_crypto_provider();
            let etcd = tokio::time::timeout(CONNECT_LIMIT, EtcdBackend::connect(config))
                .await
                .with_context(|| format!("connect to the etcd of {cluster}: timed out"))?
                .with_context(|| format!("connect to the etcd of {cluster}"))?;
            f(etcd).await
        })
    })
}

/// The keys of `ops`, for errors.
fn describe(ops: &[Op]) -> String {
    let keys: Vec<&str> = ops
        .iter()
        .map(|op| match op {
            Op::Put { key, .. } => key.as_str(),
            Op::Delete(key) => key.as_str(),
        })
        .collect();
    keys.join(", ")
}
