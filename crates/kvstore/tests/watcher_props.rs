//! Property test: whatever happens to the store and the watch (writes, deletes, broken watches,
//! compactions), a consumer applying a `Watcher`'s events ends with exactly the store's content.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use plexus_kvstore::{KvBackend, MemoryBackend, WatchEvent, Watcher};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    /// Consume up to n events.
    Drain(u8),
    BreakWatch,
    Compact,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..12, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..12).prop_map(Step::Delete),
        3 => (1u8..6).prop_map(Step::Drain),
        1 => Just(Step::BreakWatch),
        1 => Just(Step::Compact),
    ]
}

fn apply(state: &mut BTreeMap<String, Vec<u8>>, list_done: &mut u32, e: WatchEvent) {
    match e {
        WatchEvent::Upsert { kv, .. } => {
            state.insert(kv.key, kv.value);
        }
        WatchEvent::Delete { key } => {
            state.remove(&key);
        }
        WatchEvent::ListDone => *list_done += 1,
    }
}

async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let store = MemoryBackend::new();
    let backend: Arc<dyn KvBackend> = Arc::new(store.clone());
    // A key outside the prefix must never show up.
    backend.put("p0", b"outside".to_vec(), None).await.unwrap();
    let mut watcher = Watcher::new(backend.clone(), "p/");
    let mut state = BTreeMap::new();
    let mut list_done = 0;
    for step in steps {
        match step {
            Step::Put(k, v) => {
                backend.put(&format!("p/{k}"), vec![v], None).await.unwrap();
            }
            Step::Delete(k) => {
                backend.delete(&format!("p/{k}")).await.unwrap();
            }
            Step::Drain(n) => {
                for _ in 0..n {
                    match tokio::time::timeout(Duration::from_millis(20), watcher.next()).await {
                        Ok(e) => apply(&mut state, &mut list_done, e),
                        Err(_) => break,
                    }
                }
            }
            Step::BreakWatch => store.break_watches(),
            Step::Compact => {
                let rev = backend.status().await.unwrap().revision;
                backend.compact(rev).await.unwrap();
            }
        }
    }
    let truth: BTreeMap<String, Vec<u8>> = backend
        .list_prefix("p/")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state != truth || list_done == 0 {
        let e = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .map_err(|_| TestCaseError::fail(format!("no convergence: {state:?} vs {truth:?}")))?;
        apply(&mut state, &mut list_done, e);
    }
    prop_assert_eq!(list_done, 1, "list done exactly once");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn watcher_converges_to_the_store(steps in prop::collection::vec(step(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(run(steps))?;
    }
}
