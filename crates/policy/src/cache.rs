//! The selector cache: for every selector in use, the set of identities it matches.
//!
//! Identities (numeric id + labels) come and go: local ones from the allocator, remote ones from
//! each connected cluster. The cache keeps, per interned [`Selector`], the matching identity set
//! and updates it incrementally: an arriving identity is tested only against the selectors that
//! could match it (selectors are indexed by one `key=value` they require; the few without such a
//! requirement are tested always), so 10,000 remote identities arriving cost
//! O(identities x labels) lookups, not O(identities x selectors) matches. Every update returns the
//! selectors whose sets changed, which is what callers use to recompute only the affected
//! endpoint policies.
//!
//! The reserved identities 1..=10 are present from the start, each labelled `reserved:<name>`.

use std::collections::{BTreeSet, HashMap};

use plexus_model::identity::{NumericIdentity, ReservedIdentity};
use plexus_model::labels::{Label, Labels, SOURCE_RESERVED};

use crate::selector::Selector;

/// A handle on an interned selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SelectorId(pub u32);

/// An identity event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityChange {
    /// The identity exists with these labels (added, or its labels replaced).
    Upsert(NumericIdentity, Labels),
    /// The identity is gone.
    Remove(NumericIdentity),
}

#[derive(Debug)]
struct Entry {
    selector: Selector,
    anchor: Option<(String, String)>,
    matches: BTreeSet<NumericIdentity>,
    refs: usize,
}

/// Selectors and the identities they match.
#[derive(Debug)]
pub struct SelectorCache {
    identities: HashMap<NumericIdentity, Labels>,
    entries: HashMap<SelectorId, Entry>,
    by_selector: HashMap<Selector, SelectorId>,
    anchored: HashMap<String, HashMap<String, BTreeSet<SelectorId>>>,
    unanchored: BTreeSet<SelectorId>,
    next: u32,
    empty: BTreeSet<NumericIdentity>,
}

impl Default for SelectorCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The labels of a reserved identity: `reserved:<name>`.
pub fn reserved_labels(r: ReservedIdentity) -> Labels {
    [Label::new(SOURCE_RESERVED, r.name(), "")]
        .into_iter()
        .collect()
}

impl SelectorCache {
    /// A cache holding the reserved identities (1..=10) and no selectors.
    pub fn new() -> Self {
        let mut cache = Self {
            identities: HashMap::new(),
            entries: HashMap::new(),
            by_selector: HashMap::new(),
            anchored: HashMap::new(),
            unanchored: BTreeSet::new(),
            next: 0,
            empty: BTreeSet::new(),
        };
        for r in ReservedIdentity::ALL {
            if r != ReservedIdentity::Unknown {
                cache.identities.insert(r.id(), reserved_labels(r));
            }
        }
        cache
    }

    /// Interns `selector` (or takes one more reference on it) and returns its handle.
    pub fn add_selector(&mut self, selector: Selector) -> SelectorId {
        if let Some(id) = self.by_selector.get(&selector) {
            if let Some(e) = self.entries.get_mut(id) {
                e.refs += 1;
            }
            return *id;
        }
        let id = SelectorId(self.next);
        self.next += 1;
        let matches = self
            .identities
            .iter()
            .filter(|(_, l)| selector.matches(l))
            .map(|(i, _)| *i)
            .collect();
        let anchor = selector
            .anchor()
            .map(|(k, v)| (k.to_string(), v.to_string()));
        match &anchor {
            Some((k, v)) => {
                self.anchored
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
                    .insert(id);
            }
            None => {
                self.unanchored.insert(id);
            }
        }
        self.by_selector.insert(selector.clone(), id);
        self.entries.insert(
            id,
            Entry {
                selector,
                anchor,
                matches,
                refs: 1,
            },
        );
        id
    }

    /// Drops one reference; the selector is forgotten with its last reference.
    pub fn release(&mut self, id: SelectorId) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        e.refs -= 1;
        if e.refs > 0 {
            return;
        }
        let Some(e) = self.entries.remove(&id) else {
            return;
        };
        self.by_selector.remove(&e.selector);
        match e.anchor {
            Some((k, v)) => {
                if let Some(values) = self.anchored.get_mut(&k) {
                    if let Some(ids) = values.get_mut(&v) {
                        ids.remove(&id);
                        if ids.is_empty() {
                            values.remove(&v);
                        }
                    }
                    if values.is_empty() {
                        self.anchored.remove(&k);
                    }
                }
            }
            None => {
                self.unanchored.remove(&id);
            }
        }
    }

    /// The identities `id` matches (empty for an unknown handle).
    pub fn matches(&self, id: SelectorId) -> &BTreeSet<NumericIdentity> {
        self.entries.get(&id).map_or(&self.empty, |e| &e.matches)
    }

    /// The selector behind a handle.
    pub fn selector(&self, id: SelectorId) -> Option<&Selector> {
        self.entries.get(&id).map(|e| &e.selector)
    }

    /// The labels of a known identity.
    pub fn labels(&self, id: NumericIdentity) -> Option<&Labels> {
        self.identities.get(&id)
    }

    /// Number of identities known (reserved ones included).
    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }

    /// Number of interned selectors.
    pub fn selector_count(&self) -> usize {
        self.entries.len()
    }

    fn candidates(&self, labels: &Labels) -> Vec<SelectorId> {
        let mut out: Vec<SelectorId> = self.unanchored.iter().copied().collect();
        for label in labels.iter() {
            if let Some(ids) = self
                .anchored
                .get(&label.key)
                .and_then(|values| values.get(&label.value))
            {
                out.extend(ids.iter().copied());
            }
        }
        out
    }

    /// Adds an identity or replaces its labels; returns the selectors whose sets changed.
    pub fn upsert_identity(&mut self, id: NumericIdentity, labels: Labels) -> BTreeSet<SelectorId> {
        let mut changed = BTreeSet::new();
        if self.identities.get(&id) == Some(&labels) {
            return changed;
        }
        let mut before = BTreeSet::new();
        if let Some(old) = self.identities.remove(&id) {
            for sid in self.candidates(&old) {
                if self
                    .entries
                    .get(&sid)
                    .is_some_and(|e| e.matches.contains(&id))
                {
                    before.insert(sid);
                }
            }
        }
        let mut after = BTreeSet::new();
        for sid in self.candidates(&labels) {
            if self
                .entries
                .get(&sid)
                .is_some_and(|e| e.selector.matches(&labels))
            {
                after.insert(sid);
            }
        }
        for sid in before.difference(&after) {
            if let Some(e) = self.entries.get_mut(sid) {
                e.matches.remove(&id);
            }
            changed.insert(*sid);
        }
        for sid in after.difference(&before) {
            if let Some(e) = self.entries.get_mut(sid) {
                e.matches.insert(id);
            }
            changed.insert(*sid);
        }
        self.identities.insert(id, labels);
        changed
    }

    /// Removes an identity; returns the selectors whose sets changed.
    pub fn remove_identity(&mut self, id: NumericIdentity) -> BTreeSet<SelectorId> {
        let mut changed = BTreeSet::new();
        let Some(old) = self.identities.remove(&id) else {
            return changed;
        };
        for sid in self.candidates(&old) {
            if let Some(e) = self.entries.get_mut(&sid)
                && e.matches.remove(&id)
            {
                changed.insert(sid);
            }
        }
        changed
    }

    /// Applies a batch of changes; returns every selector whose set changed.
    pub fn apply(
        &mut self,
        changes: impl IntoIterator<Item = IdentityChange>,
    ) -> BTreeSet<SelectorId> {
        let mut changed = BTreeSet::new();
        for change in changes {
            match change {
                IdentityChange::Upsert(id, labels) => {
                    changed.extend(self.upsert_identity(id, labels))
                }
                IdentityChange::Remove(id) => changed.extend(self.remove_identity(id)),
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::selector::{Operator, Requirement};

    fn labels(text: &str) -> Labels {
        Labels::parse(text).unwrap()
    }

    #[test]
    fn incremental_updates_report_changed_selectors() {
        let mut cache = SelectorCache::new();
        let db = cache.add_selector(Selector::from_labels([("app", "db")]));
        let c2 = cache.add_selector(Selector::from_labels([(
            "io.cilium.k8s.policy.cluster",
            "cluster2",
        )]));
        let not_db = cache.add_selector(Selector::new([Requirement {
            source: Some("k8s".into()),
            key: "app".into(),
            op: Operator::NotIn,
            values: BTreeSet::from(["db".to_string()]),
        }]));
        // Reserved identities carry no k8s:app, so NotIn matches them.
        assert_eq!(cache.matches(not_db).len(), 10);
        let id = NumericIdentity(131_073);
        let changed = cache.upsert_identity(
            id,
            labels("k8s:app=db;k8s:io.cilium.k8s.policy.cluster=cluster2;"),
        );
        assert_eq!(changed, BTreeSet::from([db, c2]));
        assert!(cache.matches(db).contains(&id));
        // Same labels again: nothing changes.
        assert!(
            cache
                .upsert_identity(
                    id,
                    labels("k8s:app=db;k8s:io.cilium.k8s.policy.cluster=cluster2;")
                )
                .is_empty()
        );
        // Relabel: leaves db, enters not_db.
        let changed = cache.upsert_identity(
            id,
            labels("k8s:app=web;k8s:io.cilium.k8s.policy.cluster=cluster2;"),
        );
        assert_eq!(changed, BTreeSet::from([db, not_db]));
        assert_eq!(cache.remove_identity(id), BTreeSet::from([c2, not_db]));
        assert!(cache.matches(c2).is_empty());
        // Interning and release.
        let again = cache.add_selector(Selector::from_labels([("app", "db")]));
        assert_eq!(again, db);
        cache.release(db);
        assert!(cache.selector(db).is_some());
        cache.release(db);
        assert!(cache.selector(db).is_none());
        assert!(cache.matches(db).is_empty());
    }
}
