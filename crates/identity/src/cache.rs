//! A local mirror of the master keys (`id/<id>` -> label string).
//!
//! [`MasterCache`] is pure: it applies [`WatchEvent`]s of a [`plexus_kvstore::Watcher`] on the
//! master prefix. The allocator keeps one up to date in a background task and uses it as its
//! [`MasterIndex`]: to find a master that still holds a label set nobody references, and to
//! avoid ids that are taken when picking a new one. The cache may lag behind the kvstore; the
//! allocation protocol never trusts it without reading the key back or conditioning a
//! transaction on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use plexus_kvstore::WatchEvent;

use crate::allocation::MasterIndex;
use crate::paths;

/// Master keys by id and by label string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasterCache {
    by_id: BTreeMap<u32, String>,
    by_labels: HashMap<String, BTreeSet<u32>>,
    synced: bool,
}

impl MasterCache {
    /// An empty, not yet synced cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one watcher event on the master prefix. Keys that are not master keys are
    /// ignored, and so are values that are not UTF-8 (no label string can match them).
    pub fn apply(&mut self, event: &WatchEvent) {
        match event {
            WatchEvent::Upsert { kv, .. } => {
                let Some(id) = paths::parse_master_key(&kv.key) else { return };
                match std::str::from_utf8(&kv.value) {
                    Ok(labels) => self.upsert(id, labels),
                    Err(_) => self.remove(id),
                }
            }
            WatchEvent::Delete { key } => {
                if let Some(id) = paths::parse_master_key(key) {
                    self.remove(id);
                }
            }
            WatchEvent::ListDone => self.synced = true,
        }
    }

    /// Records that `id/<id>` holds `labels`.
    pub fn upsert(&mut self, id: u32, labels: &str) {
        if let Some(old) = self.by_id.insert(id, labels.to_string()) {
            self.unindex(id, &old);
        }
        self.by_labels.entry(labels.to_string()).or_default().insert(id);
    }

    /// Records that `id/<id>` is gone.
    pub fn remove(&mut self, id: u32) {
        if let Some(old) = self.by_id.remove(&id) {
            self.unindex(id, &old);
        }
    }

    fn unindex(&mut self, id: u32, labels: &str) {
        if let Some(ids) = self.by_labels.get_mut(labels) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_labels.remove(labels);
            }
        }
    }

    /// The label string of `id`, as last seen.
    pub fn labels_of(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    /// Number of cached master keys.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no master key is cached.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether the initial listing has been applied.
    pub fn synced(&self) -> bool {
        self.synced
    }
}

impl MasterIndex for MasterCache {
    fn ids_with_labels(&self, labels: &str) -> Vec<u32> {
        self.by_labels.get(labels).map(|ids| ids.iter().copied().collect()).unwrap_or_default()
    }

    fn is_taken(&self, id: u32) -> bool {
        self.by_id.contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use plexus_kvstore::KeyValue;

    use super::*;

    fn upsert(id: u32, labels: &str) -> WatchEvent {
        WatchEvent::Upsert {
            kv: KeyValue {
                key: paths::master_key(id),
                value: labels.as_bytes().to_vec(),
                create_revision: 1,
                mod_revision: 1,
                lease: None,
            },
            created: true,
        }
    }

    #[test]
    fn follows_upserts_deletes_and_relabels() {
        let mut cache = MasterCache::new();
        cache.apply(&upsert(70000, "k8s:a=1;"));
        cache.apply(&upsert(70001, "k8s:a=1;"));
        cache.apply(&upsert(70002, "k8s:b=2;"));
        assert!(!cache.synced());
        cache.apply(&WatchEvent::ListDone);
        assert!(cache.synced());
        assert_eq!(cache.ids_with_labels("k8s:a=1;"), vec![70000, 70001]);
        cache.apply(&upsert(70001, "k8s:c=3;"));
        assert_eq!(cache.ids_with_labels("k8s:a=1;"), vec![70000]);
        assert_eq!(cache.labels_of(70001), Some("k8s:c=3;"));
        cache.apply(&WatchEvent::Delete { key: paths::master_key(70000) });
        assert!(cache.ids_with_labels("k8s:a=1;").is_empty());
        assert!(!cache.is_taken(70000) && cache.is_taken(70002));
        cache.apply(&WatchEvent::Delete { key: "cilium/state/identities/v1/id/zz".into() });
        assert_eq!(cache.len(), 2);
    }
}
