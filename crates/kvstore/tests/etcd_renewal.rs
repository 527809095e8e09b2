//! Certificates renewed on disk, against a real etcd with TLS and `--client-cert-auth`.
//!
//! A client certificate valid for a few seconds is replaced on disk by a fresh one; past the
//! first one's expiry the backend keeps working: new requests (and the connections made after
//! etcd restarts) present the new certificate, and a watch opened before the renewal keeps its
//! connection. A backend whose files are not renewed is the control: it keeps its established
//! connection but cannot make a new one once its certificate expired.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use plexus_kvstore::{Error, ErrorKind, EtcdBackend, EtcdConfig, KvBackend, TlsFiles, TlsSide};
use plexus_test_support::EtcdProcess;

fn write_client(etcd: &EtcdProcess, dir: &Path, name: &str, lifetime: Duration) -> TlsFiles {
    let ca = etcd.ca().expect("etcd made its CA");
    let (cert_file, key_file) = ca
        .issue_client_for("root", lifetime)
        .unwrap()
        .write_to(dir, name)
        .unwrap();
    TlsFiles {
        ca_file: etcd.ca_file().unwrap().to_path_buf(),
        cert_file,
        key_file,
    }
}

fn not_after(files: &TlsFiles) -> i64 {
    plexus_pki::inspect(&std::fs::read_to_string(&files.cert_file).unwrap())
        .unwrap()
        .not_after
}

/// Sleeps until the Unix time `t` has passed.
async fn sleep_past(t: i64) {
    let left = t + 1 - plexus_pki::unix_now();
    if left > 0 {
        tokio::time::sleep(Duration::from_secs(left as u64)).await;
    }
}

/// `op` until it succeeds (etcd restarting), attempts 250 ms apart for up to 30 s.
async fn eventually<T, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = plexus_kvstore::Result<T>>,
{
    let mut last = None;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        match op().await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("still failing: {last:?}");
}

#[tokio::test]
async fn a_renewed_client_certificate_is_used_past_the_first_ones_expiry() {
    tokio::time::timeout(Duration::from_secs(120), async {
        plexus_kvstore::install_crypto_provider();
        let mut etcd = EtcdProcess::start_tls().expect("start etcd with TLS");
        let dir = tempfile::tempdir().unwrap();
        let renewed = write_client(&etcd, dir.path(), "renewed", Duration::from_secs(4));
        let control = write_client(&etcd, dir.path(), "control", Duration::from_secs(4));
        let first_expiry = not_after(&renewed).max(not_after(&control));
        let config = |tls: &TlsFiles| EtcdConfig::new(vec![etcd.endpoint()]).with_tls(tls.clone());
        let backend = EtcdBackend::connect(config(&renewed)).await.unwrap();
        let stale = EtcdBackend::connect(config(&control)).await.unwrap();
        backend.put("k/before", b"1".to_vec(), None).await.unwrap();
        stale.get("k/before").await.unwrap();

        // A watch opened before the renewal, on the first certificate's connection.
        let mut watch = backend.watch("w/", 0).await.unwrap();

        // Renew: a fresh certificate (an hour) replaces the first in the same files.
        let (cert, key) = etcd
            .ca()
            .unwrap()
            .issue_client_for("root", Duration::from_secs(3600))
            .unwrap()
            .write_to(dir.path(), "renewed")
            .unwrap();
        assert_eq!(
            (cert, key),
            (renewed.cert_file.clone(), renewed.key_file.clone())
        );
        sleep_past(first_expiry).await;

        // Past the first certificate's expiry: requests work, the open watch sees them.
        backend
            .put("w/a", b"after-expiry".to_vec(), None)
            .await
            .unwrap();
        let events = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the watch opened before the renewal delivers")
            .expect("watch stream open")
            .expect("no watch error");
        assert_eq!(events[0].kv.key, "w/a");
        // The control keeps its established connection too.
        assert!(stale.get("w/a").await.unwrap().is_some());

        // etcd restarts: every connection is new. The renewed backend reconnects with the new
        // certificate; the control's expired certificate is refused.
        etcd.restart().unwrap();
        let kv = eventually(|| backend.get("w/a")).await;
        assert_eq!(kv.unwrap().value, b"after-expiry");
        eventually(|| backend.put("k/after-restart", b"2".to_vec(), None)).await;
        // (etcd may still be starting: only a TLS refusal ends the wait.)
        let mut last = String::new();
        let mut refused = None;
        for _ in 0..40 {
            match stale.get("w/a").await {
                Err(Error::Unavailable(f)) if matches!(f.kind, ErrorKind::Tls { .. }) => {
                    refused = Some(f);
                    break;
                }
                other => last = format!("{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let refused = refused
            .unwrap_or_else(|| panic!("an expired client certificate is refused; last: {last}"));
        assert!(
            matches!(
                refused.kind,
                ErrorKind::Tls {
                    side: TlsSide::ServerRefused,
                    ..
                }
            ),
            "{refused:?}"
        );
    })
    .await
    .expect("the renewal test timed out");
}
