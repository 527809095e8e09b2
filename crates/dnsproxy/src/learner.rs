//! The learning state machine: DNS responses, selector changes and time in; the identity,
//! ipcache and name changes to apply out.
//!
//! [`Learner`] folds [`learn_from_response`], the [`LearnedCache`] and the
//! [`SelectorSetIdentities`] together. Only names some `toFQDNs` selector matches are learned
//! (as Cilium does since 1.15: no identity for an address nobody's policy can select). Each
//! input returns [`Change`]s in the order to apply them: the selector-set identity changes
//! (make-before-break, see [`crate::identity`]) and, per name whose addresses changed, the new
//! address set (for status: the agent lists what each name stands for). [`Learner::snapshot`]
//! and [`Learner::restore`] carry it across an agent restart with the same identities.
//!
//! An address whose selector set gets no identity (the range is exhausted) keeps the identity
//! it had, or stays out of the ipcache (so no `toFQDNs` rule allows it: fail closed); the
//! error comes back in the [`Outcome`] beside the changes that did happen, which are always
//! complete.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;

use crate::answer::{FqdnSelectors, learn_from_response};
use crate::cache::{CacheConfig, LearnedCache};
use crate::identity::{IdentityChange, IdentityError, SelectorSetIdentities};

/// One change to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A selector-set identity or ipcache change.
    Identity(IdentityChange),
    /// The addresses a name now resolves to (empty: forget the name).
    Name {
        /// The name, normalized.
        name: String,
        /// Its current addresses.
        addresses: BTreeSet<IpAddr>,
    },
}

/// What one input gave: the changes to apply, in order, and the addresses that could not get
/// an identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The changes, in the order to apply them.
    pub changes: Vec<Change>,
    /// Why some addresses got no (new) identity.
    pub errors: Vec<IdentityError>,
}

/// What a learner knows, in a form that survives an agent restart ([`Learner::snapshot`],
/// [`Learner::restore`]): its selectors, the identity of each selector set, and every learned
/// (name, address) with the life it had left.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LearnedState {
    /// The `toFQDNs` patterns.
    pub selectors: BTreeSet<String>,
    /// The identity of each selector set.
    pub identities: Vec<SavedIdentity>,
    /// The learned names.
    pub names: Vec<SavedName>,
}

/// A selector set's identity in a [`LearnedState`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedIdentity {
    /// The numeric identity.
    pub id: u32,
    /// Its patterns.
    pub selectors: BTreeSet<String>,
}

/// A learned address of a name in a [`LearnedState`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedName {
    /// The name (normalized).
    pub name: String,
    /// The address.
    pub address: IpAddr,
    /// The seconds of life it had left (0: expired, kept for its connections).
    pub ttl: u32,
}

/// The learned names and addresses of one node, and their identities.
#[derive(Clone, Debug)]
pub struct Learner {
    selectors: FqdnSelectors,
    cache: LearnedCache,
    identities: SelectorSetIdentities,
}

impl Learner {
    /// Nothing learned, no selectors; identities from `range` (see [`SelectorSetIdentities::new`]).
    pub fn new(config: CacheConfig, range: RangeInclusive<u32>) -> Self {
        Self {
            selectors: FqdnSelectors::default(),
            cache: LearnedCache::new(config),
            identities: SelectorSetIdentities::new(range),
        }
    }

    /// The cache (read-only).
    pub fn cache(&self) -> &LearnedCache {
        &self.cache
    }

    /// The identities (read-only).
    pub fn identities(&self) -> &SelectorSetIdentities {
        &self.identities
    }

    /// The selectors.
    pub fn selectors(&self) -> &FqdnSelectors {
        &self.selectors
    }

    /// The selectors that match one of the names of `ip`.
    fn set_of(&self, ip: IpAddr) -> BTreeSet<String> {
        self.cache
            .names_of(ip)
            .flat_map(|n| self.selectors.matching(n))
            .collect()
    }

    fn refresh(&mut self, ips: impl IntoIterator<Item = IpAddr>, out: &mut Outcome) {
        for ip in ips {
            let set = self.set_of(ip);
            match self.identities.set_address(ip, set) {
                Ok(changes) => out
                    .changes
                    .extend(changes.into_iter().map(Change::Identity)),
                Err(e) => out.errors.push(e),
            }
        }
    }

    /// Learns from a DNS response received at `now`.
    pub fn on_response(&mut self, msg: &Message, now: Instant) -> Outcome {
        let mut out = Vec::new();
        let mut touched = BTreeSet::new();
        for learned in learn_from_response(msg) {
            if !self.selectors.selects(&learned.name) {
                continue;
            }
            let new = self.cache.learn(&learned.name, &learned.addresses, now);
            if !new.is_empty() {
                touched.extend(new);
                out.push(Change::Name {
                    addresses: self.cache.addresses_of(&learned.name),
                    name: learned.name,
                });
            }
        }
        let mut ids = Outcome::default();
        self.refresh(touched, &mut ids);
        // Identities first: the datapath must know an address before policy selects it.
        ids.changes.extend(out);
        ids
    }

    /// Replaces the selectors (after a policy change): every address's set is recomputed;
    /// names no selector matches any more are forgotten by the policy (a `Name` change with
    /// no addresses) but stay in the cache until they expire, so a selector that comes back
    /// finds them.
    pub fn set_selectors(&mut self, selectors: FqdnSelectors) -> Outcome {
        let before: BTreeSet<String> = self
            .cache
            .names()
            .filter(|(n, _)| self.selectors.selects(n))
            .map(|(n, _)| n.to_string())
            .collect();
        self.selectors = selectors;
        let mut out = Outcome::default();
        let ips: Vec<IpAddr> = self
            .cache
            .addresses()
            .chain(self.identities.addresses())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.refresh(ips, &mut out);
        let names: Vec<(String, BTreeSet<IpAddr>)> = self
            .cache
            .names()
            .map(|(n, ips)| (n.to_string(), ips.copied().collect()))
            .collect();
        for (name, addresses) in names {
            let now_selected = self.selectors.selects(&name);
            match (before.contains(&name), now_selected) {
                (false, true) => out.changes.push(Change::Name { name, addresses }),
                (true, false) => out.changes.push(Change::Name {
                    name,
                    addresses: BTreeSet::new(),
                }),
                _ => {}
            }
        }
        out
    }

    /// What this learner knows at `now`, to save across a restart.
    pub fn snapshot(&self, now: Instant) -> LearnedState {
        let mut names = Vec::new();
        for (name, ips) in self.cache.names() {
            for ip in ips {
                let left = self
                    .cache
                    .expiry(name, *ip)
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                names.push(SavedName {
                    name: name.to_string(),
                    address: *ip,
                    ttl: u32::try_from(left.as_secs()).unwrap_or(u32::MAX),
                });
            }
        }
        LearnedState {
            selectors: self.selectors.patterns().clone(),
            identities: self
                .identities
                .identities()
                .map(|(id, set)| SavedIdentity {
                    id: id.0,
                    selectors: set.clone(),
                })
                .collect(),
            names,
        }
    }

    /// Takes over what a previous agent saved ([`Self::snapshot`]), `elapsed` later: its
    /// names with the life they had left minus `elapsed` (one that has run out stays until the
    /// next [`Self::expire`], which keeps it while connections use it), its selectors, and its
    /// identities where still free. Returns the changes that re-create its identities and
    /// ipcache entries, to apply before any policy is programmed.
    pub fn restore(&mut self, state: &LearnedState, now: Instant, elapsed: Duration) -> Outcome {
        for saved in &state.identities {
            self.identities.prefer(saved.selectors.clone(), saved.id);
        }
        let elapsed = u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX);
        for saved in &state.names {
            let name = plexus_policy::fqdn::normalize(&saved.name);
            let ttl = saved.ttl.saturating_sub(elapsed);
            self.cache
                .learn(&name, &BTreeMap::from([(saved.address, ttl)]), now);
        }
        self.set_selectors(FqdnSelectors::new(&state.selectors))
    }

    /// Expires what is due at `now`; `live(address)` says whether connections still use an
    /// address (then it is kept).
    pub fn expire(&mut self, now: Instant, live: impl Fn(IpAddr) -> bool) -> Outcome {
        let removed = self.cache.expire(now, live);
        let ips: BTreeSet<IpAddr> = removed.values().flatten().copied().collect();
        let mut names: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for name in removed.keys() {
            if self.selectors.selects(name) {
                names.insert(name.clone(), self.cache.addresses_of(name));
            }
        }
        let mut out = Outcome {
            changes: names
                .into_iter()
                .map(|(name, addresses)| Change::Name { name, addresses })
                .collect(),
            errors: Vec::new(),
        };
        // Policy first (stop selecting), then the identities and ipcache entries.
        self.refresh(ips, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use plexus_model::identity::NumericIdentity;

    const BASE: u32 = (1 << 24) + 0x8000;

    fn answer(q: &str, ips: &[&str], ttl: u32) -> Message {
        let name = Name::from_ascii(q).unwrap();
        let mut m = Message::response(1, OpCode::Query);
        m.add_query(Query::query(name.clone(), RecordType::A));
        for ip in ips {
            m.add_answer(Record::from_rdata(
                name.clone(),
                ttl,
                RData::A(A(ip.parse().unwrap())),
            ));
        }
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    fn learner(patterns: &[&str]) -> Learner {
        let mut l = Learner::new(CacheConfig::default(), BASE..=BASE + 100);
        assert!(
            l.set_selectors(FqdnSelectors::new(patterns))
                .changes
                .is_empty()
        );
        l
    }

    #[test]
    fn responses_give_identities_then_names() {
        let t0 = Instant::now();
        let mut l = learner(&["*.example.test"]);
        let changes = l
            .on_response(
                &answer("www.example.test.", &["192.0.2.1", "192.0.2.2"], 30),
                t0,
            )
            .changes;
        let id = NumericIdentity(BASE);
        assert_eq!(
            changes,
            vec![
                Change::Identity(IdentityChange::Allocated {
                    id,
                    labels: crate::fqdn_labels(&set(&["*.example.test"])),
                }),
                Change::Identity(IdentityChange::IpcacheUpsert {
                    ip: ip("192.0.2.1"),
                    id
                }),
                Change::Identity(IdentityChange::IpcacheUpsert {
                    ip: ip("192.0.2.2"),
                    id
                }),
                Change::Name {
                    name: "www.example.test".into(),
                    addresses: ips(&["192.0.2.1", "192.0.2.2"]),
                },
            ]
        );
        // Same answer again: nothing new.
        assert!(
            l.on_response(&answer("www.example.test.", &["192.0.2.1"], 30), t0)
                .changes
                .is_empty()
        );
        // Another name of the same selector set: only an ipcache entry and the name.
        let changes = l
            .on_response(&answer("api.example.test.", &["192.0.2.3"], 30), t0)
            .changes;
        assert_eq!(
            changes,
            vec![
                Change::Identity(IdentityChange::IpcacheUpsert {
                    ip: ip("192.0.2.3"),
                    id
                }),
                Change::Name {
                    name: "api.example.test".into(),
                    addresses: ips(&["192.0.2.3"]),
                },
            ]
        );
        // Names no selector matches are not learned.
        assert!(
            l.on_response(&answer("other.org.", &["198.51.100.1"], 30), t0)
                .changes
                .is_empty()
        );
        assert_eq!(l.cache().names_of(ip("198.51.100.1")).count(), 0);
    }

    #[test]
    fn expiry_removes_names_then_identities_and_spares_live_addresses() {
        let t0 = Instant::now();
        let mut l = learner(&["*.example.test"]);
        l.on_response(
            &answer("www.example.test.", &["192.0.2.1", "192.0.2.2"], 10),
            t0,
        );
        let busy = ip("192.0.2.1");
        let changes = l
            .expire(t0 + Duration::from_secs(10), |a| a == busy)
            .changes;
        assert_eq!(
            changes,
            vec![
                Change::Name {
                    name: "www.example.test".into(),
                    addresses: ips(&["192.0.2.1"]),
                },
                Change::Identity(IdentityChange::IpcacheDelete {
                    ip: ip("192.0.2.2")
                }),
            ]
        );
        let changes = l.expire(t0 + Duration::from_secs(11), |_| false).changes;
        assert_eq!(
            changes,
            vec![
                Change::Name {
                    name: "www.example.test".into(),
                    addresses: BTreeSet::new(),
                },
                Change::Identity(IdentityChange::IpcacheDelete { ip: busy }),
                Change::Identity(IdentityChange::Released {
                    id: NumericIdentity(BASE)
                }),
            ]
        );
    }

    #[test]
    fn a_restart_keeps_names_identities_and_remaining_lives() {
        let t0 = Instant::now();
        let mut l = learner(&["*.example.test", "api.example.test"]);
        // Two sets; the one allocated first has the higher address, so a new agent that
        // refreshes addresses in order would number them the other way round.
        l.on_response(&answer("www.example.test.", &["192.0.2.5"], 60), t0);
        l.on_response(&answer("api.example.test.", &["192.0.2.2"], 30), t0);
        let before = l.identities().identity_of_address(ip("192.0.2.2")).unwrap();
        let saved = l.snapshot(t0 + Duration::from_secs(10));
        assert_eq!(saved.names.len(), 2);
        assert_eq!(
            saved.names[0],
            SavedName {
                name: "api.example.test".into(),
                address: ip("192.0.2.2"),
                ttl: 20
            }
        );
        // Through JSON, as the agent saves it.
        let json = serde_json::to_string(&saved).unwrap();
        let saved: LearnedState = serde_json::from_str(&json).unwrap();

        // The new agent keeps the old numbers (without the preference, api would get BASE).
        let t1 = Instant::now();
        let mut n = Learner::new(CacheConfig::default(), BASE..=BASE + 100);
        let changes = n.restore(&saved, t1, Duration::from_secs(15)).changes;
        assert_eq!(
            n.identities().identity_of_address(ip("192.0.2.2")),
            Some(before)
        );
        assert_eq!(
            n.identities().identity_of_address(ip("192.0.2.5")),
            l.identities().identity_of_address(ip("192.0.2.5"))
        );
        assert!(
            changes.contains(&Change::Identity(IdentityChange::IpcacheUpsert {
                ip: ip("192.0.2.2"),
                id: before
            }))
        );
        // api had 20 s left, 15 s passed: gone 5 s later (no connection), www stays.
        let gone = n.expire(t1 + Duration::from_secs(6), |_| false).changes;
        assert!(
            gone.contains(&Change::Identity(IdentityChange::IpcacheDelete {
                ip: ip("192.0.2.2")
            }))
        );
        assert_eq!(
            n.cache().addresses_of("www.example.test"),
            ips(&["192.0.2.5"])
        );
        // The restored selectors are in force: a new answer is learned.
        assert!(
            !n.on_response(&answer("new.example.test.", &["192.0.2.9"], 60), t1)
                .changes
                .is_empty()
        );
    }

    #[test]
    fn a_new_selector_moves_addresses_to_a_new_set() {
        let t0 = Instant::now();
        let mut l = learner(&["*.example.test"]);
        l.on_response(&answer("www.example.test.", &["192.0.2.1"], 60), t0);
        l.on_response(&answer("api.example.test.", &["192.0.2.2"], 60), t0);
        let changes = l
            .set_selectors(FqdnSelectors::new(["*.example.test", "www.example.test"]))
            .changes;
        let (old, new) = (NumericIdentity(BASE), NumericIdentity(BASE + 1));
        assert_eq!(
            changes,
            vec![
                Change::Identity(IdentityChange::Allocated {
                    id: new,
                    labels: crate::fqdn_labels(&set(&["*.example.test", "www.example.test"])),
                }),
                Change::Identity(IdentityChange::IpcacheUpsert {
                    ip: ip("192.0.2.1"),
                    id: new
                }),
            ]
        );
        assert_eq!(
            l.identities().identity_of_address(ip("192.0.2.2")),
            Some(old)
        );
        // Every selector gone: every address and identity leaves; the names are forgotten.
        let changes = l.set_selectors(FqdnSelectors::default()).changes;
        assert_eq!(
            changes,
            vec![
                Change::Identity(IdentityChange::IpcacheDelete {
                    ip: ip("192.0.2.1")
                }),
                Change::Identity(IdentityChange::Released { id: new }),
                Change::Identity(IdentityChange::IpcacheDelete {
                    ip: ip("192.0.2.2")
                }),
                Change::Identity(IdentityChange::Released { id: old }),
                Change::Name {
                    name: "api.example.test".into(),
                    addresses: BTreeSet::new(),
                },
                Change::Name {
                    name: "www.example.test".into(),
                    addresses: BTreeSet::new(),
                },
            ]
        );
        // A selector that comes back finds the cached names.
        let changes = l
            .set_selectors(FqdnSelectors::new(["www.example.test"]))
            .changes;
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(
            changes[2],
            Change::Name {
                name: "www.example.test".into(),
                addresses: ips(&["192.0.2.1"]),
            }
        );
    }

    #[test]
    fn an_exhausted_range_fails_closed_and_keeps_the_other_changes() {
        let t0 = Instant::now();
        let mut l = Learner::new(CacheConfig::default(), BASE..=BASE);
        l.set_selectors(FqdnSelectors::new(["a.test", "b.test"]));
        let one = l.on_response(&answer("a.test.", &["192.0.2.1"], 30), t0);
        assert!(one.errors.is_empty());
        let two = l.on_response(&answer("b.test.", &["192.0.2.2"], 30), t0);
        assert_eq!(two.errors.len(), 1, "{two:?}");
        assert_eq!(
            two.changes,
            vec![Change::Name {
                name: "b.test".into(),
                addresses: ips(&["192.0.2.2"]),
            }],
            "the name is learned, the address has no identity"
        );
        assert_eq!(l.identities().identity_of_address(ip("192.0.2.2")), None);
        // Once the first expires, the next response gives the second its identity.
        let gone = l.expire(t0 + Duration::from_secs(30), |_| false);
        assert!(gone.errors.is_empty(), "{gone:?}");
        let again = l.on_response(
            &answer("b.test.", &["192.0.2.2", "192.0.2.3"], 30),
            t0 + Duration::from_secs(31),
        );
        assert!(again.errors.is_empty(), "{again:?}");
        assert_eq!(
            l.identities().identity_of_address(ip("192.0.2.2")),
            Some(NumericIdentity(BASE))
        );
    }
}
