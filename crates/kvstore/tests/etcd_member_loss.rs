//! The etcd backend against a real three-member etcd cluster (TLS, client-cert auth) losing
//! members: first the leader, which is also the member the client talks to, then the member
//! the client moved on to. Reads, writes, transactions, a watcher and a lease keep working:
//! no request fails, the watcher delivers exactly the cluster's history (nothing lost or
//! repeated, nothing listed again) and the lease never ends.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use plexus_kvstore::{
    EtcdBackend, EtcdConfig, KvBackend, LeaseManager, Op, RawEventKind, TlsFiles, Txn, WatchEvent,
    Watcher,
};
use plexus_test_support::EtcdCluster;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One change as the watcher reports it and as etcd's history has it.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Put { key: String, revision: i64 },
    Delete { key: String },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_watches_and_leases_survive_the_loss_of_members() {
    plexus_kvstore::install_crypto_provider();
    tokio::time::timeout(TEST_TIMEOUT, member_loss())
        .await
        .expect("test timed out");
}

async fn member_loss() {
    let mut cluster = EtcdCluster::start_tls(3).unwrap();
    let leader = cluster.leader(Duration::from_secs(10)).unwrap();
    // The client talks to the first endpoint it is given: make that the leader, so that the
    // first loss takes both the client's member and the leader.
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(leader);
    let cert = cluster.issue_client("root").unwrap();
    let tls = TlsFiles {
        ca_file: cert.ca_file,
        cert_file: cert.cert_file,
        key_file: cert.key_file,
    };
    let b: Arc<dyn KvBackend> = Arc::new(
        EtcdBackend::connect(EtcdConfig::new(endpoints).with_tls(tls))
            .await
            .unwrap(),
    );
    // A lease renewed every second: it ends after 3 s without a renewal.
    let leases = LeaseManager::start(b.clone(), Duration::from_secs(3))
        .await
        .unwrap();
    let lease = leases.lease();
    // The watcher lists at this revision (nothing else writes before it has listed).
    let start = b
        .put("loss/leased", b"1".to_vec(), Some(lease))
        .await
        .unwrap();

    let mut watcher = Watcher::new(b.clone(), "loss/");
    let mut changes = Vec::new();
    loop {
        match watcher.next().await {
            WatchEvent::ListDone => break,
            WatchEvent::Upsert { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // A writer that never stops during the losses: every request must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (b, stop) = (b.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut ambiguous) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let key = format!("loss/k{}", n % 20);
                b.put(&key, n.to_be_bytes().to_vec(), None)
                    .await
                    .unwrap_or_else(|e| panic!("put {key} #{n}: {e}"));
                b.get(&key)
                    .await
                    .unwrap_or_else(|e| panic!("get {key} #{n}: {e}"))
                    .unwrap();
                if n % 7 == 0 {
                    b.delete(&key)
                        .await
                        .unwrap_or_else(|e| panic!("delete {key} #{n}: {e}"));
                    // A transaction is not sent twice when its member died with it in
                    // flight (it may have been applied): the caller gets the error and reads
                    // what happened. Anything else must succeed.
                    match b.create_only(&key, b"c".to_vec(), None).await {
                        Ok(created) => assert!(created, "create {key} #{n}"),
                        Err(err) => {
                            eprintln!("create {key} #{n} in flight during a loss: {err}");
                            ambiguous += 1;
                            match b.get(&key).await.unwrap() {
                                Some(kv) => assert_eq!(kv.value, b"c".to_vec()),
                                None => {
                                    let created = b.create_only(&key, b"c".to_vec(), None).await;
                                    assert!(created.unwrap(), "create {key} #{n} again");
                                }
                            }
                        }
                    }
                }
                b.list_prefix("loss/")
                    .await
                    .unwrap_or_else(|e| panic!("list #{n}: {e}"));
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                ambiguous <= 2,
                "{ambiguous} transactions in flight at two losses"
            );
            n
        })
    };

    collect(&mut watcher, &mut changes, 30).await;

    // First loss: the leader, which the client talks to.
    cluster.kill(leader);
    collect(&mut watcher, &mut changes, 100).await;
    let second = cluster.leader(Duration::from_secs(10)).unwrap();
    assert_ne!(second, leader);

    // It comes back and catches up; then the member the client moved on to goes.
    cluster.restart(leader).unwrap();
    collect(&mut watcher, &mut changes, 50).await;
    let next = (leader + 1) % cluster.len();
    cluster.kill(next);
    collect(&mut watcher, &mut changes, 100).await;
    cluster.restart(next).unwrap();
    collect(&mut watcher, &mut changes, 30).await;

    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 0);

    // The lease never ended: same lease, its key still there.
    assert_eq!(leases.lease(), lease, "the lease was replaced");
    let leased = b
        .get("loss/leased")
        .await
        .unwrap()
        .expect("leased key kept");
    assert_eq!(leased.lease, Some(lease));

    // Drain the watcher up to a last write, then compare with etcd's own history, read by
    // one unbroken watch from the start.
    let last = b.put("loss/end", b"1".to_vec(), None).await.unwrap();
    while changes.last()
        != Some(&Change::Put {
            key: "loss/end".into(),
            revision: last,
        })
    {
        collect(&mut watcher, &mut changes, 1).await;
    }
    let history = history(&b, start + 1, last).await;
    assert_eq!(changes.len(), history.len(), "changes seen vs. history");
    assert!(
        changes == history,
        "the watcher's changes differ from etcd's history"
    );
    eprintln!(
        "{writes} rounds of put/get/list (and delete/create) written, {} changes watched",
        changes.len()
    );
    let stats = watcher.stats();
    assert_eq!(stats.lists, 1, "{stats:?}");
    assert!(stats.resumes >= 2, "{stats:?}");
    leases.revoke().await.unwrap();
}

/// Appends the watcher's next `count` changes.
async fn collect(watcher: &mut Watcher, changes: &mut Vec<Change>, count: usize) {
    for _ in 0..count {
        changes.push(match watcher.next().await {
            WatchEvent::Upsert { kv, .. } => Change::Put {
                key: kv.key,
                revision: kv.mod_revision,
            },
            WatchEvent::Delete { key } => Change::Delete { key },
            WatchEvent::ListDone => panic!("list done sent twice"),
        });
    }
}

/// Every change under `loss/` from `from` to `to`, as one watch reads it.
async fn history(b: &Arc<dyn KvBackend>, from: i64, to: i64) -> Vec<Change> {
    let mut stream = b.watch("loss/", from).await.unwrap();
    let mut changes = Vec::new();
    let mut revision = from - 1;
    while revision < to {
        let batch = stream.next().await.unwrap().unwrap();
        for event in batch {
            revision = event.kv.mod_revision;
            if revision > to {
                break;
            }
            changes.push(match event.kind {
                RawEventKind::Put => Change::Put {
                    key: event.kv.key,
                    revision,
                },
                RawEventKind::Delete => Change::Delete { key: event.kv.key },
            });
        }
    }
    changes
}

/// A client started while its first member is down (never connected to it) sends every
/// request, transactions included, to the others at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_before_the_client_starts_is_skipped() {
    plexus_kvstore::install_crypto_provider();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut cluster = EtcdCluster::start_tls(3).unwrap();
        // A follower, so that no election runs meanwhile (a conditional transaction that meets
        // one is not sent again: see `requests_watches_and_leases_survive_the_loss_of_members`).
        let leader = cluster.leader(Duration::from_secs(10)).unwrap();
        let down = (leader + 1) % cluster.len();
        cluster.kill(down);
        let mut endpoints = cluster.endpoints();
        endpoints.rotate_left(down);
        let cert = cluster.issue_client("root").unwrap();
        let tls = TlsFiles {
            ca_file: cert.ca_file,
            cert_file: cert.cert_file,
            key_file: cert.key_file,
        };
        let b = EtcdBackend::connect(EtcdConfig::new(endpoints).with_tls(tls))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        assert!(b.create_only("down/a", b"1".to_vec(), None).await.unwrap());
        b.put("down/b", b"1".to_vec(), None).await.unwrap();
        assert_eq!(b.list_prefix("down/").await.unwrap().kvs.len(), 2);
        eprintln!("first requests answered after {:?}", started.elapsed());
    })
    .await
    .expect("test timed out");
}

/// Right after the leader dies, the members left answer "timeout" until they elect another: a
/// batch of puts and deletes (a transaction without conditions, as `plexus apply` writes) is
/// sent again until one is elected, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_as_the_leader_dies_is_applied() {
    plexus_kvstore::install_crypto_provider();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut cluster = EtcdCluster::start_tls(3).unwrap();
        let leader = cluster.leader(Duration::from_secs(10)).unwrap();
        let mut endpoints = cluster.endpoints();
        endpoints.rotate_left(leader);
        let cert = cluster.issue_client("root").unwrap();
        let tls = TlsFiles {
            ca_file: cert.ca_file,
            cert_file: cert.cert_file,
            key_file: cert.key_file,
        };
        let b = EtcdBackend::connect(EtcdConfig::new(endpoints).with_tls(tls))
            .await
            .unwrap();
        b.put("batch/old", b"1".to_vec(), None).await.unwrap();
        cluster.kill(leader);
        let applied = b
            .txn(Txn {
                compares: vec![],
                ops: vec![
                    Op::Put {
                        key: "batch/new".into(),
                        value: b"1".to_vec(),
                        lease: None,
                    },
                    Op::Delete("batch/old".into()),
                ],
            })
            .await
            .unwrap();
        assert!(applied);
        let keys: Vec<String> = b
            .list_prefix("batch/")
            .await
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["batch/new"]);
    })
    .await
    .expect("test timed out");
}

/// An etcd rebuilt from scratch (data lost, started again with the same configuration) counts
/// revisions anew: a watcher does not resume there from the revision it had, it lists again
/// and drains what is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_lists_again_on_an_etcd_rebuilt_from_scratch() {
    plexus_kvstore::install_crypto_provider();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let mut etcd = plexus_test_support::EtcdProcess::start().unwrap();
        let b: Arc<dyn KvBackend> = Arc::new(
            EtcdBackend::connect(EtcdConfig::new(vec![etcd.endpoint()]))
                .await
                .unwrap(),
        );
        for i in 0..20 {
            b.put(&format!("rebuilt/old{i}"), b"1".to_vec(), None)
                .await
                .unwrap();
        }
        let mut watcher = Watcher::new(b.clone(), "rebuilt/");
        while watcher.next().await != WatchEvent::ListDone {}
        etcd.stop();
        std::fs::remove_dir_all(etcd.data_dir()).unwrap();
        etcd.restart().unwrap();
        b.put("rebuilt/new", b"1".to_vec(), None).await.unwrap();
        let mut old = 20;
        let mut new = false;
        while old > 0 || !new {
            match watcher.next().await {
                WatchEvent::Delete { key } if key.starts_with("rebuilt/old") => old -= 1,
                WatchEvent::Upsert { kv, .. } if kv.key == "rebuilt/new" => new = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(watcher.stats().lists, 2, "{:?}", watcher.stats());
    })
    .await
    .expect("test timed out");
}
