//! etcd-specific behaviour on real etcd processes: mTLS, users and roles, large listings,
//! a server that goes away.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use plexus_kvstore::{Error, EtcdBackend, EtcdConfig, KvBackend, TlsFiles, WatchEvent, Watcher};
use plexus_test_support::{ClientCert, EtcdProcess};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn tls(cert: &ClientCert) -> TlsFiles {
    TlsFiles {
        ca_file: cert.ca_file.clone(),
        cert_file: cert.cert_file.clone(),
        key_file: cert.key_file.clone(),
    }
}

async fn connect_as(etcd: &EtcdProcess, cn: &str) -> EtcdBackend {
    let cert = etcd.issue_client(cn).expect("issue client certificate");
    EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]).with_tls(tls(&cert)))
        .await
        .expect("connect with a client certificate")
}

async fn with_timeout<F: std::future::Future<Output = ()>>(f: F) {
    plexus_kvstore::install_crypto_provider();
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_our_certificates_and_refuses_others() {
    with_timeout(async {
        let etcd = EtcdProcess::start_tls().unwrap();
        let ok = connect_as(&etcd, "root").await;
        ok.put("k", b"v".to_vec(), None).await.unwrap();
        assert_eq!(ok.get("k").await.unwrap().unwrap().value, b"v");

        // No client certificate: the handshake (or the first request) fails.
        let mut config = EtcdConfig::new(vec![etcd.endpoint()]);
        config.connect_timeout = Duration::from_secs(2);
        config.request_timeout = Duration::from_secs(2);
        let no_cert = ClientCert {
            ca_file: etcd.ca_file().unwrap().to_path_buf(),
            cert_file: "/nonexistent/client.crt".into(),
            key_file: "/nonexistent/client.key".into(),
        };
        let err = EtcdBackend::connect(config.clone().with_tls(tls(&no_cert)))
            .await
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("/nonexistent/client.crt"),
            "the error names the file: {err}"
        );
        let refused = match EtcdBackend::connect(config.clone()).await {
            Err(err) => err,
            Ok(_) => panic!("https without TLS files must be refused"),
        };
        assert!(matches!(refused, Error::Config(_)), "{refused}");

        // A certificate from another CA is refused by the server.
        let other_dir = tempfile::tempdir().unwrap();
        let other = plexus_pki::Ca::generate("other").unwrap();
        let (cert_file, key_file) = other
            .issue_client("root")
            .unwrap()
            .write_to(other_dir.path(), "intruder")
            .unwrap();
        let intruder = TlsFiles {
            ca_file: etcd.ca_file().unwrap().to_path_buf(),
            cert_file,
            key_file,
        };
        match EtcdBackend::connect(config.with_tls(intruder)).await {
            Err(err) => assert!(matches!(err, Error::Unavailable(_)), "{err}"),
            Ok(b) => {
                let err = b
                    .get("k")
                    .await
                    .expect_err("a foreign certificate must be refused");
                assert!(
                    matches!(err, Error::Unavailable(_) | Error::PermissionDenied(_)),
                    "{err}"
                );
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_user_can_read_but_not_write() {
    with_timeout(async {
        let etcd = EtcdProcess::start_tls().unwrap();
        etcd.setup_auth(&[("remote", &["cilium/state/", "cilium/.heartbeat"])])
            .unwrap();
        let root = connect_as(&etcd, "root").await;
        root.put("cilium/state/nodes/v1/c1/n1", b"{}".to_vec(), None)
            .await
            .unwrap();
        root.put("cilium/private", b"secret".to_vec(), None)
            .await
            .unwrap();

        let remote = connect_as(&etcd, "remote").await;
        let listed = remote.list_prefix("cilium/state/").await.unwrap();
        assert_eq!(listed.kvs.len(), 1);
        let err = remote
            .put("cilium/state/nodes/v1/c1/evil", b"{}".to_vec(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
        let err = remote
            .delete("cilium/state/nodes/v1/c1/n1")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{err}");
        let err = remote.get("cilium/private").await.unwrap_err();
        assert!(
            matches!(err, Error::PermissionDenied(_)),
            "outside its prefixes: {err}"
        );
        assert!(
            root.get("cilium/state/nodes/v1/c1/evil")
                .await
                .unwrap()
                .is_none()
        );

        // A user etcd does not know is refused too.
        let stranger = connect_as(&etcd, "stranger").await;
        assert!(stranger.get("cilium/state/nodes/v1/c1/n1").await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_prefixes_are_listed_in_pages_at_one_revision() {
    with_timeout(async {
        let etcd = EtcdProcess::start().unwrap();
        let b = EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
            .await
            .unwrap();
        let value = vec![b'x'; 512];
        for chunk in (0..12_000).collect::<Vec<_>>().chunks(100) {
            let ops = chunk
                .iter()
                .map(|i| plexus_kvstore::Op::Put {
                    key: format!("big/{i:05}"),
                    value: value.clone(),
                    lease: None,
                })
                .collect();
            assert!(
                b.txn(plexus_kvstore::Txn {
                    compares: vec![],
                    ops
                })
                .await
                .unwrap()
            );
        }
        let listed = b.list_prefix("big/").await.unwrap();
        assert_eq!(listed.kvs.len(), 12_000, "6 MB in several pages");
        assert!(listed.kvs.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(listed.revision, b.status().await.unwrap().revision);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_survives_an_etcd_restart_and_drains_what_vanished() {
    with_timeout(async {
        let mut etcd = EtcdProcess::start().unwrap();
        let b: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
                .await
                .unwrap(),
        );
        b.put("r/a", b"1".to_vec(), None).await.unwrap();
        let lease = b.lease_grant(Duration::from_secs(2)).await.unwrap();
        b.put("r/leased", b"1".to_vec(), Some(lease)).await.unwrap();
        let mut watcher = Watcher::new(b.clone(), "r/");
        let mut keys = std::collections::BTreeSet::new();
        loop {
            match watcher.next().await {
                WatchEvent::Upsert { kv, .. } => {
                    keys.insert(kv.key);
                }
                WatchEvent::ListDone => break,
                WatchEvent::Delete { key } => {
                    keys.remove(&key);
                }
            }
        }
        assert_eq!(keys.len(), 2);
        // The server dies; its lease runs out while it is away (etcd restores leases with a
        // fresh TTL after a restart, so the key vanishes shortly after it comes back).
        etcd.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        etcd.restart().unwrap();
        let event = tokio::time::timeout(Duration::from_secs(30), watcher.next())
            .await
            .expect("event");
        assert_eq!(
            event,
            WatchEvent::Delete {
                key: "r/leased".into()
            }
        );
        b.put("r/b", b"2".to_vec(), None).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(30), watcher.next())
            .await
            .expect("event")
        {
            WatchEvent::Upsert { kv, created } => assert!(created && kv.key == "r/b"),
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
}

/// etcd closes connections that ping too often ("too_many_pings"); with the default settings a
/// quiet watch must stay open, not break and re-list every few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_stays_open() {
    with_timeout(async {
        let etcd = EtcdProcess::start().unwrap();
        let b: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
                .await
                .unwrap(),
        );
        b.put("q/a", b"1".to_vec(), None).await.unwrap();
        let mut watcher = Watcher::new(b.clone(), "q/");
        while watcher.next().await != WatchEvent::ListDone {}
        // 25 s of silence: nothing to report, and no re-list either.
        let quiet = tokio::time::timeout(Duration::from_secs(25), watcher.next()).await;
        assert!(quiet.is_err(), "unexpected event {quiet:?}");
        assert_eq!(watcher.stats().lists, 1, "{:?}", watcher.stats());
        b.put("q/b", b"1".to_vec(), None).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), watcher.next())
            .await
            .unwrap();
        assert!(
            matches!(event, WatchEvent::Upsert { created: true, .. }),
            "{event:?}"
        );
        assert_eq!(watcher.stats().lists, 1);
    })
    .await;
}
