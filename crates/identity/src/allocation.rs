//! The allocation protocol as a pure state machine: fed what was read, it returns the next read
//! or the transaction to try. No IO, no clock, no global randomness.
//!
//! One [`AllocationMachine`] allocates one label set for one node. The driver (the
//! [`crate::IdentityAllocator`]) starts it with [`Event::Start`], performs each [`Action`] and
//! feeds the result back as the matching [`Event`], until [`Action::Done`] or
//! [`Action::Failed`]. Every decision is made on data that was just read and committed with
//! a transaction whose conditions make it valid only if that data is still current, so any
//! number of allocators on any number of nodes may run concurrently without locks:
//!
//! 1. **Reference** — `value/<labels>/` holds value keys with id `X` and master `id/X` holds
//!    these labels: write the node's value key if `id/X` is still at the revision read
//!    (`ModRevision`). The garbage collector deletes a master only while `value/<labels>/` is
//!    empty, so once our value key is in, the master stays.
//! 2. **Reuse** — no value key exists, but a master `id/X` with these labels does (from the
//!    [`MasterIndex`], checked by reading `id/X`): rewrite the master (which moves its revision
//!    and so restarts any garbage collection grace period) and write the value key, if `id/X`
//!    is still at the revision read and `value/<labels>/` is still empty.
//! 3. **Create** — otherwise pick a random free id `N` in the cluster's range and write
//!    `id/N` and the value key, if `id/N` does not exist and `value/<labels>/` is still empty.
//!
//! Two repair paths keep the machine live on damaged state: when value keys name an id whose
//! master is missing, the master is re-created (if still absent and the value key read is
//! unchanged); when only this node's own value key is malformed or contradicts its master, it
//! is deleted and the allocation starts over. A failed transaction is retried after a short
//! jittered backoff, up to a bounded number of attempts.
//!
//! Invariants this gives: every value key under `value/<labels>/` holds the same id, which is
//! the id of a master holding `<labels>`; a master is never written for an id that has one; so
//! no id ever serves two label sets and, while a label set is referenced, it has one id.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::time::Duration;

use plexus_kvstore::{Compare, KeyValue, LeaseId, ListResult, Op, Txn};
use plexus_model::identity::{LOCAL_IDENTITY_FLAG, MIN_ALLOCATABLE};
use rand::Rng;

use crate::error::IdentityError;
use crate::paths;

/// What the allocator knows about existing master keys, from a cache that may lag behind the
/// kvstore. It is only a hint: every candidate is read back before use, and every write is
/// conditioned on what was read.
pub trait MasterIndex {
    /// Ids whose master key is known to hold exactly this label string.
    fn ids_with_labels(&self, labels: &str) -> Vec<u32>;
    /// Whether a master key is known for this id.
    fn is_taken(&self, id: u32) -> bool;
}

/// One label set to allocate for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationRequest {
    /// The canonical label string, cluster label included.
    pub labels: String,
    /// The node whose value key is written.
    pub node: String,
    /// The node's lease, attached to its value key.
    pub lease: LeaseId,
    /// An id this node held for these labels before (after its lease was lost): used again if
    /// nobody else references the labels and the id is still free or still theirs.
    pub preferred: Option<u32>,
}

/// Limits of one allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationLimits {
    /// Name of the cluster, for error messages.
    pub cluster: String,
    /// The identities the cluster may allocate.
    pub range: RangeInclusive<u32>,
    /// How many failed transactions are tolerated before giving up.
    pub max_attempts: u32,
    /// First backoff after a failed transaction; doubled per attempt.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

/// The result of a successful allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocated {
    /// The identity.
    pub id: u32,
    /// Whether this allocation created the identity (wrote a new master key for a new id).
    pub created: bool,
}

/// What the machine was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Begin.
    Start,
    /// The listing asked for by [`Action::ListValues`].
    Values(ListResult),
    /// The key asked for by [`Action::GetMaster`].
    Master(Option<KeyValue>),
    /// Whether the transaction of [`Action::Commit`] was applied.
    Committed(bool),
    /// The [`Action::Sleep`] is over.
    Slept,
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Values(_) => "value listing",
            Event::Master(_) => "master key",
            Event::Committed(_) => "transaction result",
            Event::Slept => "end of backoff",
        }
    }
}

/// What the machine wants done next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// List every key under this prefix (`value/<labels>/`), then feed [`Event::Values`].
    ListValues(String),
    /// Read this master key, then feed [`Event::Master`].
    GetMaster(String),
    /// Try this transaction, then feed [`Event::Committed`].
    Commit(Txn),
    /// Wait this long, then feed [`Event::Slept`].
    Sleep(Duration),
    /// The labels hold this identity now.
    Done(Allocated),
    /// The allocation failed; do not feed more events.
    Failed(IdentityError),
}

/// Why a master is read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Basis {
    /// Value keys name this id; `witness` is one of them (another node's if there is one).
    Referenced { witness: KeyValue },
    /// No value key exists; the id is a candidate from the index or the preferred id.
    Candidate { preferred: bool },
}

/// What a transaction does, to know what its success means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    Reference,
    Reuse,
    Recreate,
    Create,
    DropOwnStale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    ListingValues,
    ReadingMaster { id: u32, basis: Basis },
    Committing { id: u32, commit: Commit },
    Sleeping,
    Finished,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::ListingValues => "listing value keys",
            Phase::ReadingMaster { .. } => "reading a master key",
            Phase::Committing { .. } => "committing",
            Phase::Sleeping => "backing off",
            Phase::Finished => "finished",
        }
    }
}

/// The allocation protocol for one label set (see the module documentation).
#[derive(Debug)]
pub struct AllocationMachine {
    request: AllocationRequest,
    limits: AllocationLimits,
    value_prefix: String,
    own_key: String,
    phase: Phase,
    /// Failed transactions (and repairs) so far.
    attempts: u32,
    /// Ids found unusable during this allocation: candidates whose master holds other labels,
    /// ids whose creation failed (probably taken by someone the index has not seen yet).
    avoid: BTreeSet<u32>,
}

impl AllocationMachine {
    /// A machine for `request` within `limits`; feed it [`Event::Start`].
    pub fn new(request: AllocationRequest, limits: AllocationLimits) -> Self {
        let value_prefix = paths::value_prefix(&request.labels);
        let own_key = paths::value_key(&request.labels, &request.node);
        Self {
            request,
            limits,
            value_prefix,
            own_key,
            phase: Phase::Idle,
            attempts: 0,
            avoid: BTreeSet::new(),
        }
    }

    /// How many transactions failed so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Feeds one event; returns what to do next.
    pub fn step<R: Rng + ?Sized>(&mut self, event: Event, index: &dyn MasterIndex, rng: &mut R) -> Action {
        let phase = std::mem::replace(&mut self.phase, Phase::Finished);
        match (phase, event) {
            (Phase::Idle, Event::Start) | (Phase::Sleeping, Event::Slept) => self.list(),
            (Phase::ListingValues, Event::Values(listing)) => self.on_values(listing, index, rng),
            (Phase::ReadingMaster { id, basis }, Event::Master(master)) => {
                self.on_master(id, basis, master, index, rng)
            }
            (Phase::Committing { id, commit }, Event::Committed(applied)) => {
                self.on_commit(id, commit, applied, rng)
            }
            (phase, event) => Action::Failed(IdentityError::Protocol {
                labels: self.request.labels.clone(),
                event: event.name(),
                phase: phase.name(),
            }),
        }
    }

    fn list(&mut self) -> Action {
        self.phase = Phase::ListingValues;
        Action::ListValues(self.value_prefix.clone())
    }

    fn on_values<R: Rng + ?Sized>(&mut self, listing: ListResult, index: &dyn MasterIndex, rng: &mut R) -> Action {
        // id -> value keys naming it; a foreign witness is preferred for the repair path.
        let mut refs: BTreeMap<u32, (usize, KeyValue)> = BTreeMap::new();
        let mut own_malformed = None;
        let mut foreign_malformed = None;
        for kv in listing.kvs {
            if paths::node_under(&self.value_prefix, &kv.key).is_none() {
                continue;
            }
            match paths::parse_id_value(&kv.value) {
                Some(id) => {
                    let own = kv.key == self.own_key;
                    let entry = refs.entry(id).or_insert_with(|| (0, kv.clone()));
                    entry.0 += 1;
                    if !own {
                        entry.1 = kv;
                    }
                }
                None if kv.key == self.own_key => own_malformed = Some(kv),
                None => foreign_malformed = Some(kv),
            }
        }
        // All value keys name the same id unless the store was damaged; then follow the most
        // referenced one (lowest id on a tie).
        let best = refs
            .into_iter()
            .filter(|(id, _)| !self.avoid.contains(id))
            .max_by(|(a_id, (a_n, _)), (b_id, (b_n, _))| a_n.cmp(b_n).then(b_id.cmp(a_id)));
        if let Some((id, (_, witness))) = best {
            self.phase = Phase::ReadingMaster { id, basis: Basis::Referenced { witness } };
            return Action::GetMaster(paths::master_key(id));
        }
        if let Some(kv) = own_malformed {
            return self.drop_own_stale(&kv);
        }
        if let Some(kv) = foreign_malformed {
            return self.fail(IdentityError::Conflict {
                key: kv.key,
                labels: self.request.labels.clone(),
                reason: format!("its value {:?} is not a numeric identity", String::from_utf8_lossy(&kv.value)),
            });
        }
        self.unreferenced(index, rng)
    }

    /// Nobody references the labels: reuse a master that still holds them, or create one.
    fn unreferenced<R: Rng + ?Sized>(&mut self, index: &dyn MasterIndex, rng: &mut R) -> Action {
        let usable = |id: &u32| self.in_range(*id) && !self.avoid.contains(id);
        let candidate = match self.request.preferred.filter(&usable) {
            Some(id) => Some((id, true)),
            None => index.ids_with_labels(&self.request.labels).into_iter().filter(&usable).min().map(|id| (id, false)),
        };
        if let Some((id, preferred)) = candidate {
            self.phase = Phase::ReadingMaster { id, basis: Basis::Candidate { preferred } };
            return Action::GetMaster(paths::master_key(id));
        }
        let avoid = &self.avoid;
        let picked = pick_free_id(&self.limits.range, |id| index.is_taken(id) || avoid.contains(&id), rng);
        match picked {
            Some(id) => self.create(id),
            None => self.fail(IdentityError::RangeExhausted {
                cluster: self.limits.cluster.clone(),
                start: *self.limits.range.start(),
                end: *self.limits.range.end(),
                labels: self.request.labels.clone(),
            }),
        }
    }

    fn on_master<R: Rng + ?Sized>(
        &mut self,
        id: u32,
        basis: Basis,
        master: Option<KeyValue>,
        index: &dyn MasterIndex,
        rng: &mut R,
    ) -> Action {
        let master_key = paths::master_key(id);
        let holds_labels = master.as_ref().is_some_and(|m| m.value == self.request.labels.as_bytes());
        match basis {
            Basis::Referenced { witness } => {
                if !self.in_range(id) {
                    return self.fail(IdentityError::OutOfRange {
                        labels: self.request.labels.clone(),
                        id,
                        cluster: self.limits.cluster.clone(),
                        start: *self.limits.range.start(),
                        end: *self.limits.range.end(),
                    });
                }
                match master {
                    Some(master) if holds_labels => {
                        let txn = Txn {
                            compares: vec![Compare::ModRevision(master_key, master.mod_revision)],
                            ops: vec![self.put_value(id)],
                        };
                        self.commit(id, Commit::Reference, txn)
                    }
                    None => {
                        let txn = Txn {
                            compares: vec![
                                Compare::Absent(master_key),
                                Compare::ModRevision(witness.key, witness.mod_revision),
                            ],
                            ops: vec![self.put_master(id), self.put_value(id)],
                        };
                        self.commit(id, Commit::Recreate, txn)
                    }
                    Some(master) if witness.key == self.own_key => {
                        // Only our own key names this id, and the id belongs to other labels
                        // now: our key is a leftover; remove it and start over.
                        tracing::warn!(
                            key = %witness.key,
                            id,
                            master = %String::from_utf8_lossy(&master.value),
                            "own value key names an identity that holds other labels; deleting it"
                        );
                        self.drop_own_stale(&witness)
                    }
                    Some(master) => self.fail(IdentityError::Conflict {
                        key: witness.key,
                        labels: self.request.labels.clone(),
                        reason: format!(
                            "it names identity {id}, whose master holds labels {:?}",
                            String::from_utf8_lossy(&master.value)
                        ),
                    }),
                }
            }
            Basis::Candidate { preferred } => match master {
                Some(master) if holds_labels => {
                    let txn = Txn {
                        compares: vec![
                            Compare::ModRevision(master_key, master.mod_revision),
                            Compare::PrefixEmpty(self.value_prefix.clone()),
                        ],
                        // Rewriting the master moves its revision: a collector that saw it
                        // unreferenced starts its grace period over.
                        ops: vec![self.put_master(id), self.put_value(id)],
                    };
                    self.commit(id, Commit::Reuse, txn)
                }
                None if preferred => self.create(id),
                _ => {
                    self.avoid.insert(id);
                    self.unreferenced(index, rng)
                }
            },
        }
    }

    fn on_commit<R: Rng + ?Sized>(&mut self, id: u32, commit: Commit, applied: bool, rng: &mut R) -> Action {
        if applied {
            return match commit {
                Commit::DropOwnStale => {
                    self.attempts += 1;
                    if self.attempts >= self.limits.max_attempts {
                        return self.contention();
                    }
                    self.list()
                }
                Commit::Create => self.done(id, true),
                Commit::Reference | Commit::Reuse | Commit::Recreate => self.done(id, false),
            };
        }
        if commit == Commit::Create {
            self.avoid.insert(id);
        }
        self.attempts += 1;
        if self.attempts >= self.limits.max_attempts {
            return self.contention();
        }
        self.phase = Phase::Sleeping;
        Action::Sleep(backoff(self.attempts, self.limits.backoff_base, self.limits.backoff_max, rng))
    }

    fn create(&mut self, id: u32) -> Action {
        let txn = Txn {
            compares: vec![
                Compare::Absent(paths::master_key(id)),
                Compare::PrefixEmpty(self.value_prefix.clone()),
            ],
            ops: vec![self.put_master(id), self.put_value(id)],
        };
        self.commit(id, Commit::Create, txn)
    }

    fn drop_own_stale(&mut self, own: &KeyValue) -> Action {
        let txn = Txn {
            compares: vec![Compare::ModRevision(own.key.clone(), own.mod_revision)],
            ops: vec![Op::Delete(own.key.clone())],
        };
        self.commit(0, Commit::DropOwnStale, txn)
    }

    fn commit(&mut self, id: u32, commit: Commit, txn: Txn) -> Action {
        self.phase = Phase::Committing { id, commit };
        Action::Commit(txn)
    }

    fn done(&mut self, id: u32, created: bool) -> Action {
        self.phase = Phase::Finished;
        Action::Done(Allocated { id, created })
    }

    fn fail(&mut self, err: IdentityError) -> Action {
        self.phase = Phase::Finished;
        Action::Failed(err)
    }

    fn contention(&mut self) -> Action {
        self.fail(IdentityError::Contention { labels: self.request.labels.clone(), attempts: self.attempts })
    }

    fn put_master(&self, id: u32) -> Op {
        Op::Put { key: paths::master_key(id), value: self.request.labels.clone().into_bytes(), lease: None }
    }

    fn put_value(&self, id: u32) -> Op {
        Op::Put {
            key: self.own_key.clone(),
            value: id.to_string().into_bytes(),
            lease: Some(self.request.lease),
        }
    }

    fn in_range(&self, id: u32) -> bool {
        allocatable(&self.limits.range, id)
    }
}

/// Whether `id` may be allocated from `range`: inside it, not reserved, not node-local.
pub fn allocatable(range: &RangeInclusive<u32>, id: u32) -> bool {
    range.contains(&id) && id >= MIN_ALLOCATABLE && id & LOCAL_IDENTITY_FLAG == 0
}

/// Picks a random id of `range` that is allocatable and not `taken`, or `None` when there is
/// none. Random picks spread concurrent allocators over the range so they rarely collide.
pub fn pick_free_id<R: Rng + ?Sized>(
    range: &RangeInclusive<u32>,
    taken: impl Fn(u32) -> bool,
    rng: &mut R,
) -> Option<u32> {
    let start = (*range.start()).max(MIN_ALLOCATABLE);
    let end = *range.end();
    if start > end {
        return None;
    }
    let free = |id: u32| allocatable(range, id) && !taken(id);
    // Mostly-empty ranges: a few random probes find a free id at once.
    for _ in 0..32 {
        let id = rng.random_range(start..=end);
        if free(id) {
            return Some(id);
        }
    }
    // Crowded ranges: scan from a random point, wrapping around.
    let offset = rng.random_range(start..=end);
    (offset..=end).chain(start..offset).find(|id| free(*id))
}

/// The wait after the `attempt`-th failed transaction: `base * 2^(attempt-1)`, at most `max`,
/// scaled by a random factor in [0.5, 1] so that allocators that collided do not collide again.
pub fn backoff<R: Rng + ?Sized>(attempt: u32, base: Duration, max: Duration, rng: &mut R) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    let full = base.saturating_mul(1u32 << exp).min(max);
    full.mul_f64(rng.random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const LABELS: &str = "k8s:app=db;k8s:io.cilium.k8s.policy.cluster=c1;";
    const LEASE: LeaseId = 0x77;

    #[derive(Default)]
    struct Index(BTreeMap<u32, String>);

    impl MasterIndex for Index {
        fn ids_with_labels(&self, labels: &str) -> Vec<u32> {
            self.0.iter().filter(|(_, l)| l.as_str() == labels).map(|(id, _)| *id).collect()
        }
        fn is_taken(&self, id: u32) -> bool {
            self.0.contains_key(&id)
        }
    }

    fn limits(range: RangeInclusive<u32>) -> AllocationLimits {
        AllocationLimits {
            cluster: "c1".into(),
            range,
            max_attempts: 4,
            backoff_base: Duration::from_millis(2),
            backoff_max: Duration::from_millis(50),
        }
    }

    fn machine(preferred: Option<u32>) -> AllocationMachine {
        let request = AllocationRequest { labels: LABELS.into(), node: "n1".into(), lease: LEASE, preferred };
        AllocationMachine::new(request, limits(65536..=131071))
    }

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), create_revision: rev, mod_revision: rev, lease: None }
    }

    fn listing(kvs: Vec<KeyValue>) -> Event {
        Event::Values(ListResult { kvs, revision: 100 })
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn own_value(id: u32) -> Op {
        Op::Put { key: paths::value_key(LABELS, "n1"), value: id.to_string().into_bytes(), lease: Some(LEASE) }
    }

    fn master_put(id: u32) -> Op {
        Op::Put { key: paths::master_key(id), value: LABELS.into(), lease: None }
    }

    fn commit_of(action: Action) -> Txn {
        match action {
            Action::Commit(txn) => txn,
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    #[test]
    fn references_an_identity_other_nodes_hold() {
        let (mut m, idx, mut r) = (machine(None), Index::default(), rng());
        assert_eq!(m.step(Event::Start, &idx, &mut r), Action::ListValues(paths::value_prefix(LABELS)));
        let other = kv(&paths::value_key(LABELS, "n2"), "70000", 10);
        assert_eq!(m.step(listing(vec![other]), &idx, &mut r), Action::GetMaster(paths::master_key(70000)));
        let txn = commit_of(m.step(Event::Master(Some(kv(&paths::master_key(70000), LABELS, 9))), &idx, &mut r));
        assert_eq!(
            txn,
            Txn {
                compares: vec![Compare::ModRevision(paths::master_key(70000), 9)],
                ops: vec![own_value(70000)]
            }
        );
        assert_eq!(
            m.step(Event::Committed(true), &idx, &mut r),
            Action::Done(Allocated { id: 70000, created: false })
        );
    }

    #[test]
    fn reuses_an_unreferenced_master_from_the_index() {
        let (mut m, mut idx, mut r) = (machine(None), Index::default(), rng());
        idx.0.insert(70001, LABELS.into());
        idx.0.insert(70002, "k8s:other=x;".into());
        m.step(Event::Start, &idx, &mut r);
        assert_eq!(m.step(listing(vec![]), &idx, &mut r), Action::GetMaster(paths::master_key(70001)));
        let txn = commit_of(m.step(Event::Master(Some(kv(&paths::master_key(70001), LABELS, 5))), &idx, &mut r));
        assert_eq!(
            txn,
            Txn {
                compares: vec![
                    Compare::ModRevision(paths::master_key(70001), 5),
                    Compare::PrefixEmpty(paths::value_prefix(LABELS)),
                ],
                ops: vec![master_put(70001), own_value(70001)],
            }
        );
        assert_eq!(
            m.step(Event::Committed(true), &idx, &mut r),
            Action::Done(Allocated { id: 70001, created: false })
        );
    }

    #[test]
    fn a_stale_index_entry_is_skipped_and_a_new_id_created() {
        let (mut m, mut idx, mut r) = (machine(None), Index::default(), rng());
        idx.0.insert(70001, LABELS.into());
        m.step(Event::Start, &idx, &mut r);
        m.step(listing(vec![]), &idx, &mut r);
        // The master was collected and its id reused by other labels.
        let txn = commit_of(m.step(Event::Master(Some(kv(&paths::master_key(70001), "k8s:x=y;", 8))), &idx, &mut r));
        let Compare::Absent(key) = &txn.compares[0] else { panic!("{txn:?}") };
        let id = paths::parse_master_key(key).unwrap();
        assert_ne!(id, 70001);
        assert!((65536..=131071).contains(&id));
        assert_eq!(txn.compares[1], Compare::PrefixEmpty(paths::value_prefix(LABELS)));
        assert_eq!(txn.ops, vec![master_put(id), own_value(id)]);
        assert_eq!(m.step(Event::Committed(true), &idx, &mut r), Action::Done(Allocated { id, created: true }));
    }

    #[test]
    fn creates_with_absent_and_prefix_empty_and_retries_on_conflict() {
        let (mut m, idx, mut r) = (machine(None), Index::default(), rng());
        m.step(Event::Start, &idx, &mut r);
        let txn = commit_of(m.step(listing(vec![]), &idx, &mut r));
        let Compare::Absent(key) = &txn.compares[0] else { panic!("{txn:?}") };
        let first = paths::parse_master_key(key).unwrap();
        // Someone else won: back off, list again, and this time reference their identity.
        let Action::Sleep(d) = m.step(Event::Committed(false), &idx, &mut r) else { panic!() };
        assert!(d <= Duration::from_millis(2) && d >= Duration::from_millis(1));
        assert_eq!(m.step(Event::Slept, &idx, &mut r), Action::ListValues(paths::value_prefix(LABELS)));
        let theirs = kv(&paths::value_key(LABELS, "n2"), "80000", 20);
        assert_eq!(m.step(listing(vec![theirs]), &idx, &mut r), Action::GetMaster(paths::master_key(80000)));
        commit_of(m.step(Event::Master(Some(kv(&paths::master_key(80000), LABELS, 20))), &idx, &mut r));
        assert_eq!(
            m.step(Event::Committed(true), &idx, &mut r),
            Action::Done(Allocated { id: 80000, created: false })
        );
        assert_eq!(m.attempts(), 1);
        assert_ne!(first, 0);
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let (mut m, idx, mut r) = (machine(None), Index::default(), rng());
        m.step(Event::Start, &idx, &mut r);
        for attempt in 1..=4 {
            commit_of(m.step(listing(vec![]), &idx, &mut r));
            match m.step(Event::Committed(false), &idx, &mut r) {
                Action::Sleep(_) if attempt < 4 => {
                    m.step(Event::Slept, &idx, &mut r);
                }
                Action::Failed(err) => {
                    assert_eq!(attempt, 4);
                    assert_eq!(
                        err.to_string(),
                        format!("gave up allocating an identity for labels {LABELS:?} after 4 conflicting attempts")
                    );
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
    }

    #[test]
    fn recreates_a_missing_master_conditioned_on_the_value_key_read() {
        let (mut m, idx, mut r) = (machine(None), Index::default(), rng());
        m.step(Event::Start, &idx, &mut r);
        let own = kv(&paths::value_key(LABELS, "n1"), "70000", 11);
        let other = kv(&paths::value_key(LABELS, "n2"), "70000", 12);
        m.step(listing(vec![own, other.clone()]), &idx, &mut r);
        let txn = commit_of(m.step(Event::Master(None), &idx, &mut r));
        assert_eq!(
            txn.compares,
            vec![Compare::Absent(paths::master_key(70000)), Compare::ModRevision(other.key, 12)]
        );
        assert_eq!(txn.ops, vec![master_put(70000), own_value(70000)]);
    }

    #[test]
    fn own_stale_value_key_is_dropped_and_a_foreign_one_reported() {
        let (mut m, idx, mut r) = (machine(None), Index::default(), rng());
        m.step(Event::Start, &idx, &mut r);
        let own = kv(&paths::value_key(LABELS, "n1"), "70000", 11);
        m.step(listing(vec![own.clone()]), &idx, &mut r);
        let txn = commit_of(m.step(Event::Master(Some(kv(&paths::master_key(70000), "k8s:x=y;", 3))), &idx, &mut r));
        assert_eq!(
            txn,
            Txn { compares: vec![Compare::ModRevision(own.key.clone(), 11)], ops: vec![Op::Delete(own.key)] }
        );
        assert_eq!(m.step(Event::Committed(true), &idx, &mut r), Action::ListValues(paths::value_prefix(LABELS)));

        let (mut m, idx) = (machine(None), Index::default());
        m.step(Event::Start, &idx, &mut r);
        m.step(listing(vec![kv(&paths::value_key(LABELS, "n2"), "70000", 11)]), &idx, &mut r);
        let Action::Failed(err) = m.step(Event::Master(Some(kv(&paths::master_key(70000), "k8s:x=y;", 3))), &idx, &mut r)
        else {
            panic!()
        };
        let msg = err.to_string();
        assert!(msg.contains("value/k8s:app=db;") && msg.contains("/n2") && msg.contains("k8s:x=y;"), "{msg}");

        let (mut m, idx) = (machine(None), Index::default());
        m.step(Event::Start, &idx, &mut r);
        let Action::Failed(err) = m.step(listing(vec![kv(&paths::value_key(LABELS, "n2"), "junk", 11)]), &idx, &mut r)
        else {
            panic!()
        };
        assert!(err.to_string().contains("\"junk\" is not a numeric identity"), "{err}");
    }

    #[test]
    fn an_existing_identity_outside_the_range_is_refused() {
        let (mut m, idx, mut r) = (machine(None), Index::default(), rng());
        m.step(Event::Start, &idx, &mut r);
        m.step(listing(vec![kv(&paths::value_key(LABELS, "n2"), "300", 11)]), &idx, &mut r);
        let Action::Failed(err) = m.step(Event::Master(Some(kv(&paths::master_key(300), LABELS, 3))), &idx, &mut r)
        else {
            panic!()
        };
        assert_eq!(
            err.to_string(),
            format!(
                "labels {LABELS:?} already hold identity 300 in the kvstore, outside cluster \"c1\"'s range 65536..=131071"
            )
        );
    }

    #[test]
    fn preferred_id_is_taken_back_when_free() {
        let (mut m, idx, mut r) = (machine(Some(70005)), Index::default(), rng());
        m.step(Event::Start, &idx, &mut r);
        assert_eq!(m.step(listing(vec![]), &idx, &mut r), Action::GetMaster(paths::master_key(70005)));
        let txn = commit_of(m.step(Event::Master(None), &idx, &mut r));
        assert_eq!(
            txn.compares,
            vec![Compare::Absent(paths::master_key(70005)), Compare::PrefixEmpty(paths::value_prefix(LABELS))]
        );
    }

    #[test]
    fn exhausted_range_is_a_clear_error() {
        let request = AllocationRequest { labels: LABELS.into(), node: "n1".into(), lease: LEASE, preferred: None };
        let mut m = AllocationMachine::new(request, limits(250..=258));
        let mut idx = Index::default();
        for id in 256..=258 {
            idx.0.insert(id, format!("k8s:n={id};"));
        }
        let mut r = rng();
        m.step(Event::Start, &idx, &mut r);
        let Action::Failed(err) = m.step(listing(vec![]), &idx, &mut r) else { panic!() };
        assert_eq!(
            err.to_string(),
            format!("identity range 250..=258 of cluster \"c1\" is exhausted: no free identity for labels {LABELS:?}")
        );
    }

    #[test]
    fn unexpected_events_fail_instead_of_panicking() {
        let (mut m, idx, mut r) = (machine(None), Index::default(), rng());
        let Action::Failed(err) = m.step(Event::Committed(true), &idx, &mut r) else { panic!() };
        assert!(err.to_string().contains("unexpected transaction result while idle"), "{err}");
    }

    #[test]
    fn picks_never_reserved_never_local_never_taken() {
        let mut r = rng();
        for _ in 0..2000 {
            let id = pick_free_id(&(0..=300), |_| false, &mut r).unwrap();
            assert!((256..=300).contains(&id));
            let id = pick_free_id(&((1 << 24) - 3..=(1 << 24) + 3), |_| false, &mut r).unwrap();
            assert!(id < 1 << 24);
        }
        assert_eq!(pick_free_id(&(0..=255), |_| false, &mut r), None);
        assert_eq!(pick_free_id(&(256..=1000), |id| id != 777, &mut r), Some(777));
        assert_eq!(pick_free_id(&(256..=1000), |_| true, &mut r), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut r = rng();
        let (base, max) = (Duration::from_millis(4), Duration::from_millis(40));
        for attempt in 1..40 {
            let d = backoff(attempt, base, max, &mut r);
            let full = (base * 2u32.pow((attempt - 1).min(16))).min(max);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }
}
