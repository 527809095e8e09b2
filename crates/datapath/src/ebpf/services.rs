//! The agent's copy of the load-balancing maps, and the ordered map writes that move them from
//! one state to the next.
//!
//! This module is pure: [`LbTables::upsert`] and [`LbTables::remove`] return the writes
//! ([`LbOp`]) and the caller applies them to `PLEXUS_LB_SERVICES` and `PLEXUS_LB_BACKENDS` in
//! order. The order is what keeps a packet from ever seeing a slot that points nowhere:
//!
//! 1. new or changed backend entries;
//! 2. slots 1..n that changed;
//! 3. the master entry (slot 0, the count), when new or changed;
//! 4. slots beyond the new count, deleted;
//! 5. backend entries no longer referenced, deleted.
//!
//! The writes of one step do not depend on each other: [`steps`] cuts the list into runs the
//! caller writes as one batch each (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`), so that
//! programming a frontend with 10,000 backends takes a handful of syscalls, not 20,000.
//! Re-programming writes only what differs.
//!
//! Service ids (also the reverse-NAT ids) are allocated per frontend, backend ids per
//! (frontend, backend address) pair, so that a backend's state is per service. Both are rebuilt
//! from the maps by [`LbTables::from_maps`] when an agent restarts on pinned maps: frontends and
//! backends keep their ids, and established connections keep their backends.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddrV4,
};

use crate::{
    DatapathError,
    abi::{LbBackend, LbServiceValue},
    lb::{Frontend, LbService},
};

/// One write to the load-balancing maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LbOp {
    /// Insert or replace a backend entry.
    PutBackend { id: u32, backend: LbBackend },
    /// Insert or replace a slot of a frontend (0 = the master entry).
    PutSlot {
        frontend: Frontend,
        slot: u16,
        value: LbServiceValue,
    },
    /// Delete a slot of a frontend.
    DeleteSlot { frontend: Frontend, slot: u16 },
    /// Delete a backend entry.
    DeleteBackend { id: u32 },
}

/// A run of consecutive writes of one step: none of them depends on another, so a run may go
/// to the kernel as one batch (applied in its order, each entry atomically).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// [`LbOp::PutBackend`]s.
    PutBackends(&'a [LbOp]),
    /// [`LbOp::PutSlot`]s: slots of backends, or master entries (never both in one run).
    PutSlots(&'a [LbOp]),
    /// [`LbOp::DeleteSlot`]s: master entries, or slots of backends (never both in one run).
    DeleteSlots(&'a [LbOp]),
    /// [`LbOp::DeleteBackend`]s.
    DeleteBackends(&'a [LbOp]),
}

/// Which step an op belongs to: a master entry is a step of its own, since it publishes (or
/// withdraws) the slots written before it (or deleted after it).
fn step_of(op: &LbOp) -> u8 {
    match op {
        LbOp::PutBackend { .. } => 0,
        LbOp::PutSlot { slot: 0, .. } => 1,
        LbOp::PutSlot { .. } => 2,
        LbOp::DeleteSlot { slot: 0, .. } => 3,
        LbOp::DeleteSlot { .. } => 4,
        LbOp::DeleteBackend { .. } => 5,
    }
}

/// `ops` cut into runs of one step, in order.
pub(crate) fn steps(ops: &[LbOp]) -> impl Iterator<Item = Step<'_>> {
    let mut rest = ops;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let kind = step_of(first);
        let len = rest.iter().take_while(|op| step_of(op) == kind).count();
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some(match first {
            LbOp::PutBackend { .. } => Step::PutBackends(run),
            LbOp::PutSlot { .. } => Step::PutSlots(run),
            LbOp::DeleteSlot { .. } => Step::DeleteSlots(run),
            LbOp::DeleteBackend { .. } => Step::DeleteBackends(run),
        })
    })
}

/// Hands out ids from 1 (0 means "none" in the maps), never one in use; after a release the
/// cursor moves on, so a released id comes back only after the others were used.
#[derive(Debug, Default)]
struct IdAllocator {
    used: BTreeSet<u32>,
    next: u32,
}

impl IdAllocator {
    fn allocate(&mut self) -> Option<u32> {
        if self.used.len() >= u32::MAX as usize {
            return None;
        }
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            if self.used.insert(self.next) {
                return Some(self.next);
            }
        }
    }

    fn reserve(&mut self, id: u32) {
        self.used.insert(id);
        self.next = self.next.max(id);
    }

    fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

/// One frontend as the maps hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServiceState {
    id: u32,
    /// Backend ids in slot order (slot 1 first).
    slots: Vec<u32>,
    /// Every backend entry of this frontend: address to (id, inactive).
    backends: BTreeMap<SocketAddrV4, (u32, bool)>,
}

/// The agent's copy of the load-balancing maps.
#[derive(Debug, Default)]
pub(crate) struct LbTables {
    services: BTreeMap<Frontend, ServiceState>,
    service_ids: IdAllocator,
    backend_ids: IdAllocator,
}

fn exhausted(fe: Frontend, what: &str) -> DatapathError {
    DatapathError::Invalid {
        what: format!("service {fe}"),
        reason: format!("no {what} id left"),
    }
}

impl LbTables {
    /// The writes that make the maps balance `svc` as given, and the new state. On an error
    /// (no id left) the state is unchanged.
    pub(crate) fn upsert(&mut self, svc: &LbService) -> Result<Vec<LbOp>, DatapathError> {
        svc.validate()?;
        let fe = svc.frontend;
        // Taken out, not cloned (a frontend may have tens of thousands of backends); put back
        // as it was on an error.
        let old = self.services.remove(&fe);
        let id = match &old {
            Some(s) => s.id,
            None => match self.service_ids.allocate() {
                Some(id) => id,
                None => return Err(exhausted(fe, "service")),
            },
        };
        let empty = BTreeMap::new();
        let old_backends = old.as_ref().map_or(&empty, |s| &s.backends);
        let old_slots: &[u32] = old.as_ref().map_or(&[], |s| &s.slots);

        let mut listed: Vec<(SocketAddrV4, (u32, bool))> =
            Vec::with_capacity(svc.active.len() + svc.inactive.len());
        let mut allocated = Vec::new();
        let addrs = svc
            .active
            .iter()
            .map(|a| (*a, false))
            .chain(svc.inactive.iter().map(|a| (*a, true)));
        for (addr, inactive) in addrs {
            let bid = match old_backends.get(&addr) {
                Some((bid, _)) => *bid,
                None => match self.backend_ids.allocate() {
                    Some(bid) => {
                        allocated.push(bid);
                        bid
                    }
                    None => {
                        for bid in allocated {
                            self.backend_ids.release(bid);
                        }
                        match old {
                            Some(old) => {
                                self.services.insert(fe, old);
                            }
                            None => self.service_ids.release(id),
                        }
                        return Err(exhausted(fe, "backend"));
                    }
                },
            };
            listed.push((addr, (bid, inactive)));
        }
        let slots: Vec<u32> = listed[..svc.active.len()]
            .iter()
            .map(|(_, (bid, _))| *bid)
            .collect();
        // Sorted first: the map is then built in one pass (`validate` ruled out duplicates).
        listed.sort_unstable_by_key(|(addr, _)| *addr);
        let backends: BTreeMap<SocketAddrV4, (u32, bool)> = listed.into_iter().collect();

        let mut ops = Vec::new();
        for (addr, (bid, inactive)) in &backends {
            if old_backends.get(addr) != Some(&(*bid, *inactive)) {
                ops.push(LbOp::PutBackend {
                    id: *bid,
                    backend: LbBackend {
                        addr: *addr,
                        proto: fe.proto,
                        inactive: *inactive,
                        service_id: id,
                    },
                });
            }
        }
        for (i, bid) in slots.iter().enumerate() {
            if old_slots.get(i) != Some(bid) {
                ops.push(LbOp::PutSlot {
                    frontend: fe,
                    slot: slot_number(i),
                    value: LbServiceValue {
                        backend_id: *bid,
                        service_id: id,
                        count: 0,
                    },
                });
            }
        }
        if old.is_none() || old_slots.len() != slots.len() {
            ops.push(LbOp::PutSlot {
                frontend: fe,
                slot: 0,
                value: LbServiceValue {
                    backend_id: 0,
                    service_id: id,
                    count: u16::try_from(slots.len()).unwrap_or(u16::MAX),
                },
            });
        }
        for i in slots.len()..old_slots.len() {
            ops.push(LbOp::DeleteSlot {
                frontend: fe,
                slot: slot_number(i),
            });
        }
        for (addr, (bid, _)) in old_backends {
            if !backends.contains_key(addr) {
                ops.push(LbOp::DeleteBackend { id: *bid });
                self.backend_ids.release(*bid);
            }
        }
        self.services.insert(
            fe,
            ServiceState {
                id,
                slots,
                backends,
            },
        );
        Ok(ops)
    }

    /// The writes that stop balancing `fe`: the master entry first, so that no packet finds the
    /// frontend any more, then its slots and backends. Empty for an unknown frontend.
    pub(crate) fn remove(&mut self, fe: Frontend) -> Vec<LbOp> {
        let Some(old) = self.services.remove(&fe) else {
            return Vec::new();
        };
        let mut ops = vec![LbOp::DeleteSlot {
            frontend: fe,
            slot: 0,
        }];
        for i in 0..old.slots.len() {
            ops.push(LbOp::DeleteSlot {
                frontend: fe,
                slot: slot_number(i),
            });
        }
        for (bid, _) in old.backends.values() {
            ops.push(LbOp::DeleteBackend { id: *bid });
            self.backend_ids.release(*bid);
        }
        self.service_ids.release(old.id);
        ops
    }

    /// Every frontend with its backends: active in slot order, inactive in address order.
    pub(crate) fn services(&self) -> Vec<LbService> {
        self.services
            .iter()
            .map(|(fe, s)| {
                let by_id: HashMap<u32, SocketAddrV4> =
                    s.backends.iter().map(|(a, (bid, _))| (*bid, *a)).collect();
                LbService {
                    frontend: *fe,
                    active: s
                        .slots
                        .iter()
                        .filter_map(|b| by_id.get(b).copied())
                        .collect(),
                    inactive: s
                        .backends
                        .iter()
                        .filter(|(_, (_, inactive))| *inactive)
                        .map(|(a, _)| *a)
                        .collect(),
                }
            })
            .collect()
    }

    /// Rebuilds the tables from the contents of the two maps (entries whose protocol this
    /// version does not know are left out by the caller). Also returns the writes that remove
    /// what an interrupted update left behind: slots beyond a master's count, slots and
    /// backends of no frontend.
    pub(crate) fn from_maps(
        entries: impl IntoIterator<Item = (Frontend, u16, LbServiceValue)>,
        backends: impl IntoIterator<Item = (u32, LbBackend)>,
    ) -> (Self, Vec<LbOp>) {
        let mut masters = BTreeMap::new();
        let mut slot_entries: BTreeMap<Frontend, BTreeMap<u16, u32>> = BTreeMap::new();
        for (fe, slot, v) in entries {
            if slot == 0 {
                masters.insert(fe, v);
            } else {
                slot_entries
                    .entry(fe)
                    .or_default()
                    .insert(slot, v.backend_id);
            }
        }
        let mut tables = Self::default();
        let mut garbage = Vec::new();
        let mut frontend_of = HashMap::new();
        for (fe, master) in &masters {
            tables.service_ids.reserve(master.service_id);
            frontend_of.insert(master.service_id, *fe);
            let mut slots = Vec::new();
            let have = slot_entries.remove(fe).unwrap_or_default();
            for (slot, bid) in &have {
                if *slot <= master.count {
                    slots.push(*bid);
                } else {
                    garbage.push(LbOp::DeleteSlot {
                        frontend: *fe,
                        slot: *slot,
                    });
                }
            }
            tables.services.insert(
                *fe,
                ServiceState {
                    id: master.service_id,
                    slots,
                    backends: BTreeMap::new(),
                },
            );
        }
        for (fe, have) in slot_entries {
            for slot in have.keys() {
                garbage.push(LbOp::DeleteSlot {
                    frontend: fe,
                    slot: *slot,
                });
            }
        }
        for (bid, be) in backends {
            let state = frontend_of
                .get(&be.service_id)
                .and_then(|fe| tables.services.get_mut(fe));
            match state {
                Some(state) => {
                    tables.backend_ids.reserve(bid);
                    state.backends.insert(be.addr, (bid, be.inactive));
                }
                None => garbage.push(LbOp::DeleteBackend { id: bid }),
            }
        }
        (tables, garbage)
    }
}

/// The slot of the `i`-th active backend (slot 1 first). `LbService::validate` bounds the
/// backends to `u16::MAX`.
fn slot_number(i: usize) -> u16 {
    u16::try_from(i + 1).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lb::L4Proto;

    fn fe(port: u16) -> Frontend {
        Frontend {
            addr: Ipv4Addr::new(10, 96, 0, 1),
            port,
            proto: L4Proto::Tcp,
        }
    }

    fn svc(port: u16, active: &[&str], inactive: &[&str]) -> LbService {
        LbService {
            frontend: fe(port),
            active: active.iter().map(|s| s.parse().unwrap()).collect(),
            inactive: inactive.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    /// What a map would hold after applying `ops` in order.
    #[derive(Default)]
    struct Maps {
        slots: BTreeMap<(Frontend, u16), LbServiceValue>,
        backends: BTreeMap<u32, LbBackend>,
    }

    impl Maps {
        /// Applies `ops`, checking after each one that no slot within a master's count points
        /// to a missing backend (what a packet could observe between two writes).
        fn apply(&mut self, ops: &[LbOp]) {
            for op in ops {
                match op {
                    LbOp::PutBackend { id, backend } => {
                        self.backends.insert(*id, *backend);
                    }
                    LbOp::PutSlot {
                        frontend,
                        slot,
                        value,
                    } => {
                        self.slots.insert((*frontend, *slot), *value);
                    }
                    LbOp::DeleteSlot { frontend, slot } => {
                        self.slots.remove(&(*frontend, *slot));
                    }
                    LbOp::DeleteBackend { id } => {
                        self.backends.remove(id);
                    }
                }
                self.check_consistent();
            }
        }

        /// Applies `ops` step by step, each run in reverse: what a batch may do, if its order
        /// were not kept, must keep the invariant too.
        fn apply_steps_reversed(&mut self, ops: &[LbOp]) {
            for step in steps(ops) {
                let (Step::PutBackends(run)
                | Step::PutSlots(run)
                | Step::DeleteSlots(run)
                | Step::DeleteBackends(run)) = step;
                let reversed: Vec<LbOp> = run.iter().rev().cloned().collect();
                self.apply(&reversed);
            }
        }

        fn check_consistent(&self) {
            for ((fe, slot), master) in &self.slots {
                if *slot != 0 {
                    continue;
                }
                for s in 1..=master.count {
                    let v = self
                        .slots
                        .get(&(*fe, s))
                        .unwrap_or_else(|| panic!("{fe} slot {s} missing"));
                    assert!(
                        self.backends.contains_key(&v.backend_id),
                        "{fe} slot {s} points to missing backend {}",
                        v.backend_id
                    );
                }
            }
        }

        fn rebuild(&self) -> (LbTables, Vec<LbOp>) {
            LbTables::from_maps(
                self.slots.iter().map(|((fe, s), v)| (*fe, *s, *v)),
                self.backends.iter().map(|(id, b)| (*id, *b)),
            )
        }
    }

    #[test]
    fn updates_never_expose_a_dangling_slot_and_keep_backend_ids() {
        let mut t = LbTables::default();
        let mut maps = Maps::default();
        let a = svc(80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], &[]);
        maps.apply(&t.upsert(&a).unwrap());
        assert_eq!(maps.slots[&(fe(80), 0)].count, 3);
        let ids: Vec<u32> = (1..=3)
            .map(|s| maps.slots[&(fe(80), s)].backend_id)
            .collect();

        // Shrink, reorder, move one to inactive, add one.
        let b = svc(80, &["10.0.0.3:80", "10.0.0.4:80"], &["10.0.0.1:80"]);
        let ops = t.upsert(&b).unwrap();
        maps.apply(&ops);
        assert_eq!(maps.slots[&(fe(80), 0)].count, 2);
        assert!(!maps.slots.contains_key(&(fe(80), 3)));
        assert_eq!(maps.slots[&(fe(80), 1)].backend_id, ids[2], "id kept");
        assert_eq!(maps.backends.len(), 3, "10.0.0.2 deleted");
        assert!(maps.backends[&ids[0]].inactive);
        assert_eq!(t.services(), vec![b.clone()]);

        // Nothing changes: nothing is written.
        assert!(t.upsert(&b).unwrap().is_empty());

        // All inactive: count 0, the backends stay.
        let c = svc(80, &[], &["10.0.0.1:80", "10.0.0.3:80"]);
        maps.apply(&t.upsert(&c).unwrap());
        assert_eq!(maps.slots[&(fe(80), 0)].count, 0);
        assert_eq!(maps.backends.len(), 2);

        maps.apply(&t.remove(fe(80)));
        assert!(maps.slots.is_empty() && maps.backends.is_empty());
        assert!(t.remove(fe(80)).is_empty());
    }

    #[test]
    fn steps_are_runs_of_independent_writes() {
        let mut t = LbTables::default();
        let a = svc(80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], &[]);
        let ops = t.upsert(&a).unwrap();
        let kinds: Vec<(&str, usize)> = steps(&ops)
            .map(|s| match s {
                Step::PutBackends(r) => ("put backends", r.len()),
                Step::PutSlots(r) => ("put slots", r.len()),
                Step::DeleteSlots(r) => ("delete slots", r.len()),
                Step::DeleteBackends(r) => ("delete backends", r.len()),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![("put backends", 3), ("put slots", 3), ("put slots", 1)],
            "the master entry is a step of its own"
        );
        let ops = t.upsert(&svc(80, &["10.0.0.9:80"], &[])).unwrap();
        let lens: Vec<usize> = steps(&ops)
            .map(|s| match s {
                Step::PutBackends(r)
                | Step::PutSlots(r)
                | Step::DeleteSlots(r)
                | Step::DeleteBackends(r) => r.len(),
            })
            .collect();
        assert_eq!(lens, vec![1, 1, 1, 2, 3]);
        let ops = t.remove(fe(80));
        let lens: Vec<usize> = steps(&ops)
            .map(|s| match s {
                Step::PutBackends(r)
                | Step::PutSlots(r)
                | Step::DeleteSlots(r)
                | Step::DeleteBackends(r) => r.len(),
            })
            .collect();
        assert_eq!(lens, vec![1, 1, 1], "master, slot, backend");
        assert!(steps(&[]).next().is_none());
    }

    #[test]
    fn any_order_within_a_step_keeps_slots_pointing_to_backends() {
        let mut t = LbTables::default();
        let mut maps = Maps::default();
        let addrs: Vec<String> = (1..=40).map(|i| format!("10.0.1.{i}:80")).collect();
        let all: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let versions = [
            svc(80, &all[..30], &[]),
            svc(80, &all[10..40], &all[..5]),
            svc(80, &all[35..], &[]),
            svc(80, &all[..20], &all[30..]),
            svc(80, &[], &all[..3]),
            svc(80, &all, &[]),
        ];
        for v in &versions {
            maps.apply_steps_reversed(&t.upsert(v).unwrap());
            assert_eq!(t.services(), vec![v.clone()]);
        }
        maps.apply_steps_reversed(&t.remove(fe(80)));
        assert!(maps.slots.is_empty() && maps.backends.is_empty());
    }

    #[test]
    fn backend_ids_are_per_frontend() {
        let mut t = LbTables::default();
        let mut maps = Maps::default();
        maps.apply(&t.upsert(&svc(80, &["10.0.0.1:80"], &[])).unwrap());
        maps.apply(&t.upsert(&svc(81, &[], &["10.0.0.1:80"])).unwrap());
        assert_eq!(maps.backends.len(), 2);
        let states: BTreeSet<bool> = maps.backends.values().map(|b| b.inactive).collect();
        assert_eq!(states.len(), 2, "one active, one inactive entry");
        let sids: BTreeSet<u32> = maps.backends.values().map(|b| b.service_id).collect();
        assert_eq!(sids.len(), 2);
    }

    #[test]
    fn rebuilt_tables_keep_ids_and_collect_leftovers() {
        let mut t = LbTables::default();
        let mut maps = Maps::default();
        maps.apply(
            &t.upsert(&svc(80, &["10.0.0.1:80", "10.0.0.2:80"], &["10.0.0.9:80"]))
                .unwrap(),
        );
        maps.apply(&t.upsert(&svc(443, &["10.0.0.1:443"], &[])).unwrap());
        let before = t.services();
        let master = maps.slots[&(fe(80), 0)];

        // Leftovers of an interrupted update: a slot beyond the count, an orphan backend.
        maps.slots.insert(
            (fe(80), 3),
            LbServiceValue {
                backend_id: 999,
                service_id: master.service_id,
                count: 0,
            },
        );
        maps.backends.insert(
            1000,
            LbBackend {
                addr: "10.0.0.7:80".parse().unwrap(),
                proto: L4Proto::Tcp,
                inactive: false,
                service_id: 12345,
            },
        );
        let (mut again, garbage) = maps.rebuild();
        assert_eq!(
            garbage,
            vec![
                LbOp::DeleteSlot {
                    frontend: fe(80),
                    slot: 3
                },
                LbOp::DeleteBackend { id: 1000 }
            ]
        );
        maps.apply(&garbage);
        assert_eq!(again.services(), before);

        // The restarted agent writes nothing for an unchanged service and keeps the ids.
        assert!(again.upsert(&before[0]).unwrap().is_empty());
        let ops = again.upsert(&svc(8080, &["10.0.0.5:80"], &[])).unwrap();
        maps.apply(&ops);
        let new_sid = maps.slots[&(fe(8080), 0)].service_id;
        assert_ne!(new_sid, master.service_id);
        let used: BTreeSet<u32> = maps.backends.keys().copied().collect();
        assert_eq!(used.len(), maps.backends.len());
        assert_eq!(maps.backends.len(), 5);
    }
}
