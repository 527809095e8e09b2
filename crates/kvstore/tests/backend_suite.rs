//! One behavioural suite for every `KvBackend`: the in-memory store and real etcd must agree.
//!
//! Each case is written once against the trait and instantiated three times by `suite!`: on a
//! fresh `MemoryBackend`, on a fresh etcd process on loopback, and on one with TLS and
//! `--client-cert-auth` reached with a client certificate.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use plexus_kvstore::{
    Compare, Error, KvBackend, LeaseManager, Op, RawEventKind, StoreEvent, SyncStore,
    SyncStoreConfig, Txn, WatchEvent, WatchStore, Watcher,
};

mod common;
use common::{Breakable, Fixture};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn put(b: &Arc<dyn KvBackend>, key: &str, value: &str) -> i64 {
    b.put(key, value.as_bytes().to_vec(), None)
        .await
        .expect("put")
}

mod cases {
    use super::*;

    pub async fn put_get_list_with_revision(b: Arc<dyn KvBackend>) {
        put(&b, "p/a", "1").await;
        put(&b, "p/b", "2").await;
        let last = put(&b, "q/c", "3").await;
        put(&b, "p/a", "4").await;
        let got = b.get("p/a").await.unwrap().expect("p/a exists");
        assert_eq!(got.value, b"4");
        assert!(got.mod_revision > got.create_revision);
        assert!(got.create_revision < last);
        assert_eq!(b.get("p/missing").await.unwrap(), None);

        let listed = b.list_prefix("p/").await.unwrap();
        let keys: Vec<&str> = listed.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["p/a", "p/b"]);
        assert_eq!(listed.revision, b.status().await.unwrap().revision);
        assert_eq!(listed.revision, got.mod_revision);
    }

    pub async fn delete_and_delete_prefix(b: Arc<dyn KvBackend>) {
        for k in ["d/1", "d/2", "d/3", "dx/1"] {
            put(&b, k, "v").await;
        }
        assert!(b.delete("d/1").await.unwrap());
        assert!(!b.delete("d/1").await.unwrap());
        assert_eq!(b.delete_prefix("d/").await.unwrap(), 2);
        assert!(b.list_prefix("d/").await.unwrap().kvs.is_empty());
        assert_eq!(b.list_prefix("dx/").await.unwrap().kvs.len(), 1);
    }

    pub async fn create_only_and_compare_and_swap(b: Arc<dyn KvBackend>) {
        assert!(b.create_only("c/k", b"first".to_vec(), None).await.unwrap());
        assert!(
            !b.create_only("c/k", b"second".to_vec(), None)
                .await
                .unwrap()
        );
        let kv = b.get("c/k").await.unwrap().unwrap();
        assert_eq!(kv.value, b"first");
        assert!(
            !b.compare_and_swap("c/k", kv.mod_revision - 1, b"x".to_vec(), None)
                .await
                .unwrap()
        );
        assert!(
            b.compare_and_swap("c/k", kv.mod_revision, b"y".to_vec(), None)
                .await
                .unwrap()
        );
        assert_eq!(b.get("c/k").await.unwrap().unwrap().value, b"y");
        assert!(
            !b.compare_and_swap("c/absent", 1, b"z".to_vec(), None)
                .await
                .unwrap()
        );
    }

    pub async fn txn_prefix_empty_and_value(b: Arc<dyn KvBackend>) {
        // `v/xy/` must not count as inside `v/x/`.
        put(&b, "v/xy/n1", "9").await;
        let claim = |node: &str| Txn {
            compares: vec![
                Compare::PrefixEmpty("v/x/".into()),
                Compare::Absent("id/7".into()),
            ],
            ops: vec![
                Op::Put {
                    key: "id/7".into(),
                    value: b"x".to_vec(),
                    lease: None,
                },
                Op::Put {
                    key: format!("v/x/{node}"),
                    value: b"7".to_vec(),
                    lease: None,
                },
            ],
        };
        assert!(b.txn(claim("n1")).await.unwrap());
        assert!(!b.txn(claim("n2")).await.unwrap(), "second claim must fail");
        assert_eq!(b.list_prefix("v/x/").await.unwrap().kvs.len(), 1);
        let value_ok = Txn {
            compares: vec![Compare::Value("id/7".into(), b"x".to_vec())],
            ops: vec![Op::Delete("id/7".into())],
        };
        let value_wrong = Txn {
            compares: vec![Compare::Value("id/7".into(), b"other".to_vec())],
            ops: vec![Op::Delete("id/7".into())],
        };
        assert!(!b.txn(value_wrong).await.unwrap());
        assert!(b.txn(value_ok).await.unwrap());
        assert_eq!(b.get("id/7").await.unwrap(), None);
    }

    pub async fn lease_expiry_deletes_keys_with_events(b: Arc<dyn KvBackend>) {
        let lease = b.lease_grant(Duration::from_secs(2)).await.unwrap();
        let rev = b.put("l/a", b"1".to_vec(), Some(lease)).await.unwrap();
        b.put("l/b", b"1".to_vec(), None).await.unwrap();
        assert_eq!(b.get("l/a").await.unwrap().unwrap().lease, Some(lease));
        let mut stream = b.watch("l/", rev + 1).await.unwrap();
        // First the put of l/b, then (after the TTL) the delete of l/a.
        let mut deleted = None;
        while deleted.is_none() {
            let batch = stream.next().await.expect("stream open").expect("no error");
            deleted = batch.into_iter().find(|e| e.kind == RawEventKind::Delete);
        }
        assert_eq!(deleted.unwrap().kv.key, "l/a");
        assert_eq!(b.get("l/a").await.unwrap(), None);
        assert!(b.get("l/b").await.unwrap().is_some());
        let ka = b.lease_keep_alive(lease).await;
        assert!(matches!(ka, Err(Error::LeaseNotFound(_))), "{ka:?}");
    }

    pub async fn lease_keep_alive_and_revoke(b: Arc<dyn KvBackend>) {
        let lease = b.lease_grant(Duration::from_secs(2)).await.unwrap();
        b.put("r/a", b"1".to_vec(), Some(lease)).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            b.lease_keep_alive(lease)
                .await
                .expect("lease alive while renewed");
        }
        assert!(
            b.get("r/a").await.unwrap().is_some(),
            "kept alive past its TTL"
        );
        b.lease_revoke(lease).await.unwrap();
        assert_eq!(b.get("r/a").await.unwrap(), None);
        let ka = b.lease_keep_alive(lease).await;
        assert!(matches!(ka, Err(Error::LeaseNotFound(_))), "{ka:?}");
        assert!(b.put("r/b", b"1".to_vec(), Some(lease)).await.is_err());
    }

    pub async fn watch_replays_from_revision(b: Arc<dyn KvBackend>) {
        let first = put(&b, "w/a", "1").await;
        put(&b, "other/x", "1").await;
        put(&b, "w/b", "2").await;
        b.delete("w/a").await.unwrap();
        let mut stream = b.watch("w/", first).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            for e in stream.next().await.unwrap().unwrap() {
                seen.push((e.kind, e.kv.key));
            }
        }
        assert_eq!(
            seen,
            [
                (RawEventKind::Put, "w/a".to_string()),
                (RawEventKind::Put, "w/b".to_string()),
                (RawEventKind::Delete, "w/a".to_string())
            ]
        );
    }

    pub async fn watch_from_compacted_revision_fails(b: Arc<dyn KvBackend>) {
        let old = put(&b, "k/a", "1").await;
        put(&b, "k/a", "2").await;
        let now = put(&b, "k/a", "3").await;
        b.compact(now).await.unwrap();
        let result = match b.watch("k/", old).await {
            Err(err) => Err(err),
            Ok(mut stream) => stream.next().await.expect("an item"),
        };
        match result {
            Err(Error::Compacted {
                compact_revision, ..
            }) => assert_eq!(compact_revision, now),
            other => panic!("expected a compaction error, got {other:?}"),
        }
    }

    /// A broken watch (not compacted) resumes after the last revision delivered: every change
    /// made while it was down arrives once, in order, intermediate values included, and
    /// nothing is listed again.
    pub async fn watcher_resumes_a_broken_watch_without_listing(b: Arc<dyn KvBackend>) {
        let breakable = Breakable::new(b.clone());
        put(&b, "r/a", "1").await;
        let mut watcher = Watcher::new(breakable.clone(), "r/");
        assert!(matches!(watcher.next().await, WatchEvent::Upsert { .. }));
        assert_eq!(watcher.next().await, WatchEvent::ListDone);

        breakable.hold_and_break();
        let next = tokio::spawn(async move {
            let mut events = Vec::new();
            while events.len() < 4 {
                events.push(watcher.next().await);
            }
            (watcher, events)
        });
        breakable.wait_held().await;
        let r1 = put(&b, "r/a", "2").await;
        let r2 = put(&b, "r/a", "3").await;
        let r3 = put(&b, "r/b", "1").await;
        b.delete("r/a").await.unwrap();
        breakable.release();
        let (watcher, events) = next.await.unwrap();
        // (key, Some((revision, value, created)) for an upsert, None for a delete)
        type Seen = (String, Option<(i64, String, bool)>);
        let seen: Vec<Seen> = events
            .into_iter()
            .map(|e| match e {
                WatchEvent::Upsert { kv, created } => (
                    kv.key,
                    Some((
                        kv.mod_revision,
                        String::from_utf8(kv.value).unwrap(),
                        created,
                    )),
                ),
                WatchEvent::Delete { key } => (key, None),
                WatchEvent::ListDone => panic!("list done sent twice"),
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("r/a".to_string(), Some((r1, "2".to_string(), false))),
                ("r/a".to_string(), Some((r2, "3".to_string(), false))),
                ("r/b".to_string(), Some((r3, "1".to_string(), true))),
                ("r/a".to_string(), None),
            ]
        );
        assert_eq!(watcher.stats().lists, 1, "{:?}", watcher.stats());
        assert_eq!(watcher.stats().resumes, 1, "{:?}", watcher.stats());
    }

    pub async fn watcher_relists_after_compaction_and_drains(b: Arc<dyn KvBackend>) {
        let breakable = Breakable::new(b.clone());
        for k in ["a", "b", "c"] {
            put(&b, &format!("s/{k}"), "1").await;
        }
        let mut watcher = Watcher::new(breakable.clone(), "s/");
        let mut state = BTreeMap::new();
        apply_until(&mut watcher, &mut state, |e| *e == WatchEvent::ListDone).await;
        assert_eq!(state.keys().collect::<Vec<_>>(), ["s/a", "s/b", "s/c"]);
        put(&b, "s/d", "1").await;
        apply_until(
            &mut watcher,
            &mut state,
            |e| matches!(e, WatchEvent::Upsert { kv, .. } if kv.key == "s/d"),
        )
        .await;

        // Cut the watch and hold the next one until the store has moved on and compacted.
        breakable.hold_and_break();
        let next = tokio::spawn(async move {
            let mut events = Vec::new();
            let (mut added_e, mut drained_a) = (false, false);
            while !(added_e && drained_a) {
                let e = watcher.next().await;
                added_e |= matches!(&e, WatchEvent::Upsert { kv, .. } if kv.key == "s/e");
                drained_a |= e == WatchEvent::Delete { key: "s/a".into() };
                events.push(e);
            }
            (watcher, events)
        });
        breakable.wait_held().await;
        b.delete("s/a").await.unwrap();
        put(&b, "s/b", "2").await;
        let now = put(&b, "s/e", "1").await;
        b.compact(now).await.unwrap();
        breakable.release();
        let (watcher, events) = next.await.unwrap();
        for e in &events {
            apply(&mut state, e.clone());
        }
        assert!(
            !events.contains(&WatchEvent::ListDone),
            "list done is sent once"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, WatchEvent::Upsert { kv, .. } if kv.key == "s/c")),
            "unchanged keys are not repeated: {events:?}"
        );
        assert!(watcher.stats().compactions >= 1, "{:?}", watcher.stats());
        let truth: BTreeMap<String, Vec<u8>> = b
            .list_prefix("s/")
            .await
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        assert_eq!(state, truth);
    }

    pub async fn watch_store_decodes_rejects_and_syncs_once(b: Arc<dyn KvBackend>) {
        put(&b, "n/good", "1").await;
        put(&b, "n/bad", "x").await;
        let decode: plexus_kvstore::DecodeFn<u32> = Box::new(|key, raw| {
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("entry {key:?}: value is not a number"))
        });
        let mut store = WatchStore::new(b.clone(), "n/", decode);
        let mut events = Vec::new();
        loop {
            let e = store.next().await;
            let done = e == StoreEvent::Synced;
            events.push(e);
            if done {
                break;
            }
        }
        assert!(events.contains(&StoreEvent::Upsert {
            key: "good".into(),
            value: 1,
            created: true
        }));
        assert!(events.contains(&StoreEvent::Rejected {
            key: "bad".into(),
            reason: "entry \"bad\": value is not a number".into()
        }));
        assert_eq!(store.len(), 1);
        assert_eq!(store.rejected(), 1);
        // A valid value turning invalid leaves the cache.
        put(&b, "n/good", "oops").await;
        assert_eq!(
            store.next().await,
            StoreEvent::Delete {
                key: "good".into(),
                old: 1
            }
        );
        assert!(matches!(store.next().await, StoreEvent::Rejected { .. }));
        put(&b, "n/bad", "5").await;
        assert_eq!(
            store.next().await,
            StoreEvent::Upsert {
                key: "bad".into(),
                value: 5,
                created: true
            }
        );
        assert_eq!(store.get("bad"), Some(&5));
        assert!(store.synced());
    }

    pub async fn sync_store_publishes_writes_canary_and_recreates(b: Arc<dyn KvBackend>) {
        let leases = LeaseManager::start(b.clone(), Duration::from_secs(3))
            .await
            .unwrap();
        let canary = "cilium/synced/c1/cilium/state/nodes/v1";
        let store = SyncStore::start(
            b.clone(),
            &leases,
            SyncStoreConfig {
                prefix: "cilium/state/nodes/v1/c1/".into(),
                canary: Some(canary.into()),
            },
        );
        for i in 0..50 {
            store.upsert(format!("node-{i}"), format!("{{\"n\":{i}}}").into_bytes());
        }
        store.delete("node-49");
        store.synced();
        store.wait_synced().await;
        let listed = b.list_prefix("cilium/state/nodes/v1/c1/").await.unwrap();
        assert_eq!(listed.kvs.len(), 49, "every key before the canary");
        let canary_kv = b.get(canary).await.unwrap().expect("canary written");
        assert!(
            listed
                .kvs
                .iter()
                .all(|kv| kv.mod_revision < canary_kv.mod_revision)
        );
        let stamp = String::from_utf8(canary_kv.value).unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(&stamp).is_ok(),
            "canary {stamp:?} is RFC 3339"
        );
        assert!(listed.kvs.iter().all(|kv| kv.lease == Some(leases.lease())));

        // The lease ends behind the owner's back (as after a long pause): keys vanish, then the
        // manager grants a new lease and the store writes everything again.
        let old = leases.lease();
        b.lease_revoke(old).await.unwrap();
        assert!(
            b.list_prefix("cilium/state/nodes/v1/c1/")
                .await
                .unwrap()
                .kvs
                .is_empty()
        );
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let listed = b.list_prefix("cilium/state/nodes/v1/c1/").await.unwrap();
            if listed.kvs.len() == 49 && b.get(canary).await.unwrap().is_some() {
                assert!(listed.kvs.iter().all(|kv| kv.lease == Some(leases.lease())));
                break;
            }
        }
        assert_ne!(leases.lease(), old);
        store.delete("node-0");
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if b.get("cilium/state/nodes/v1/c1/node-0")
                .await
                .unwrap()
                .is_none()
            {
                break;
            }
        }
        leases.revoke().await.unwrap();
        assert!(b.list_prefix("cilium/").await.unwrap().kvs.is_empty());
    }

    async fn apply_until(
        watcher: &mut Watcher,
        state: &mut BTreeMap<String, Vec<u8>>,
        stop: impl Fn(&WatchEvent) -> bool,
    ) {
        loop {
            let e = watcher.next().await;
            let done = stop(&e);
            apply(state, e);
            if done {
                return;
            }
        }
    }

    fn apply(state: &mut BTreeMap<String, Vec<u8>>, e: WatchEvent) {
        match e {
            WatchEvent::Upsert { kv, .. } => {
                state.insert(kv.key, kv.value);
            }
            WatchEvent::Delete { key } => {
                state.remove(&key);
            }
            WatchEvent::ListDone => {}
        }
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::Fixture::memory();
                    tokio::time::timeout(super::TEST_TIMEOUT, super::cases::$case(fixture.backend.clone()))
                        .await
                        .expect("test timed out");
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::Fixture::etcd().await;
                    tokio::time::timeout(super::TEST_TIMEOUT, super::cases::$case(fixture.backend.clone()))
                        .await
                        .expect("test timed out");
                }
            )*
        }
        mod etcd_tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::Fixture::etcd_tls().await;
                    tokio::time::timeout(super::TEST_TIMEOUT, super::cases::$case(fixture.backend.clone()))
                        .await
                        .expect("test timed out");
                }
            )*
        }
    };
}

suite!(
    put_get_list_with_revision,
    delete_and_delete_prefix,
    create_only_and_compare_and_swap,
    txn_prefix_empty_and_value,
    lease_expiry_deletes_keys_with_events,
    lease_keep_alive_and_revoke,
    watch_replays_from_revision,
    watch_from_compacted_revision_fails,
    watcher_relists_after_compaction_and_drains,
    watcher_resumes_a_broken_watch_without_listing,
    watch_store_decodes_rejects_and_syncs_once,
    sync_store_publishes_writes_canary_and_recreates,
);
