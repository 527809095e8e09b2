//! One node-local identity per set of `toFQDNs` selectors, as Cilium >= 1.16 allocates them.
//!
//! Each learned address belongs to the set of selectors that match one of its names. Every
//! distinct non-empty set gets one node-local identity, labelled `fqdn:<pattern>` for each
//! selector of the set plus `reserved:world` (the addresses are outside the mesh, so `world`
//! rules keep selecting them, as they select CIDR identities). Addresses with the same set
//! share the identity: a new address of a known set costs only an ipcache entry, and the
//! selector cache (hence every endpoint's policy) changes only when a new set appears. An
//! identity is released when its last address leaves the set.
//!
//! [`SelectorSetIdentities::set_address`] returns the changes in the order they must be
//! applied: a new identity first (so policies select it), then the ipcache entry, then the
//! release of an identity that lost its last address (make-before-break: an address moving to
//! another set is never without an identity).
//!
//! Identities come from a range the caller reserves for this purpose inside the node-local
//! space, so they never collide with the node's CIDR identities.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use plexus_model::identity::NumericIdentity;
use plexus_model::labels::{Label, Labels, SOURCE_RESERVED};

/// The label source of FQDN selector labels.
pub use plexus_policy::fqdn::SOURCE_FQDN;

/// The labels of the identity of a selector set: `fqdn:<pattern>` each, and `reserved:world`.
pub fn fqdn_labels(set: &BTreeSet<String>) -> Labels {
    let mut labels = Labels::new();
    for pattern in set {
        labels.insert(Label::new(SOURCE_FQDN, pattern.as_str(), ""));
    }
    // Last, so that it survives a (single-label) pattern spelled `world`.
    labels.insert(Label::new(SOURCE_RESERVED, "world", ""));
    labels
}

/// A change to apply, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityChange {
    /// A new identity: add it to the selector cache before anything uses it.
    Allocated {
        /// The identity.
        id: NumericIdentity,
        /// Its labels ([`fqdn_labels`]).
        labels: Labels,
    },
    /// Map an address to an identity in the ipcache.
    IpcacheUpsert {
        /// The address.
        ip: IpAddr,
        /// Its identity.
        id: NumericIdentity,
    },
    /// Remove an address from the ipcache.
    IpcacheDelete {
        /// The address.
        ip: IpAddr,
    },
    /// An identity nothing uses any more: remove it from the selector cache.
    Released {
        /// The identity.
        id: NumericIdentity,
    },
}

/// Why an identity could not be allocated.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Every identity of the range is in use.
    #[error(
        "no free FQDN identity in {first}..={last} for the selector set {set:?} (address {ip})"
    )]
    Exhausted {
        /// First identity of the range.
        first: u32,
        /// Last identity of the range.
        last: u32,
        /// The set that needed one.
        set: BTreeSet<String>,
        /// The address that needed it.
        ip: IpAddr,
    },
}

#[derive(Clone, Debug)]
struct SetIdentity {
    id: NumericIdentity,
    addresses: usize,
}

/// The identities of selector sets and the set of each address.
#[derive(Clone, Debug)]
pub struct SelectorSetIdentities {
    range: RangeInclusive<u32>,
    next: u32,
    sets: BTreeMap<BTreeSet<String>, SetIdentity>,
    used: BTreeSet<u32>,
    addresses: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Identities sets had before a restart ([`Self::prefer`]), taken again when free.
    preferred: BTreeMap<BTreeSet<String>, u32>,
}

impl SelectorSetIdentities {
    /// Identities from `range` (node-local ids, e.g. a part of
    /// `plexus_datapath::IDENTITY_LOCAL_BASE..=IDENTITY_LOCAL_MAX` no one else allocates from).
    pub fn new(range: RangeInclusive<u32>) -> Self {
        Self {
            next: *range.start(),
            range,
            sets: BTreeMap::new(),
            used: BTreeSet::new(),
            addresses: BTreeMap::new(),
            preferred: BTreeMap::new(),
        }
    }

    /// Asks that `set`, when it next gets an identity, get `id` (the one it had before the
    /// agent restarted) if that is in the range and free, so a restart renumbers nothing.
    pub fn prefer(&mut self, set: BTreeSet<String>, id: u32) {
        if self.range.contains(&id) {
            self.preferred.insert(set, id);
        }
    }

    /// The identity of a set, if allocated.
    pub fn identity_of(&self, set: &BTreeSet<String>) -> Option<NumericIdentity> {
        self.sets.get(set).map(|s| s.id)
    }

    /// The identity of an address, if it has one.
    pub fn identity_of_address(&self, ip: IpAddr) -> Option<NumericIdentity> {
        self.addresses.get(&ip).and_then(|s| self.identity_of(s))
    }

    /// The selector set of an address.
    pub fn set_of(&self, ip: IpAddr) -> Option<&BTreeSet<String>> {
        self.addresses.get(&ip)
    }

    /// Every allocated identity with its set.
    pub fn identities(&self) -> impl Iterator<Item = (NumericIdentity, &BTreeSet<String>)> {
        self.sets.iter().map(|(set, s)| (s.id, set))
    }

    /// Every address with an identity.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.keys().copied()
    }

    fn allocate(&mut self, set: &BTreeSet<String>, ip: IpAddr) -> Result<u32, IdentityError> {
        if let Some(id) = self.preferred.remove(set)
            && !self.used.contains(&id)
        {
            self.used.insert(id);
            return Ok(id);
        }
        let (first, last) = (*self.range.start(), *self.range.end());
        let size = u64::from(last - first) + 1;
        let mut candidate = self.next;
        for _ in 0..size {
            let this = candidate;
            candidate = if this >= last { first } else { this + 1 };
            if !self.used.contains(&this) {
                self.next = candidate;
                self.used.insert(this);
                return Ok(this);
            }
        }
        Err(IdentityError::Exhausted {
            first,
            last,
            set: set.clone(),
            ip,
        })
    }

    /// Sets the selector set of an address (an empty set removes it) and returns the changes
    /// to apply, in order. On error nothing changed.
    pub fn set_address(
        &mut self,
        ip: IpAddr,
        set: BTreeSet<String>,
    ) -> Result<Vec<IdentityChange>, IdentityError> {
        let old = self.addresses.get(&ip).cloned();
        if old.as_ref() == Some(&set) || (old.is_none() && set.is_empty()) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if set.is_empty() {
            out.push(IdentityChange::IpcacheDelete { ip });
            self.addresses.remove(&ip);
        } else {
            let id = match self.sets.get_mut(&set) {
                Some(s) => {
                    s.addresses += 1;
                    s.id
                }
                None => {
                    let id = NumericIdentity(self.allocate(&set, ip)?);
                    out.push(IdentityChange::Allocated {
                        id,
                        labels: fqdn_labels(&set),
                    });
                    self.sets
                        .insert(set.clone(), SetIdentity { id, addresses: 1 });
                    id
                }
            };
            out.push(IdentityChange::IpcacheUpsert { ip, id });
            self.addresses.insert(ip, set);
        }
        if let Some(old) = old
            && let Some(s) = self.sets.get_mut(&old)
        {
            s.addresses -= 1;
            if s.addresses == 0 {
                let id = s.id;
                self.sets.remove(&old);
                self.used.remove(&id.0);
                out.push(IdentityChange::Released { id });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BASE: u32 = (1 << 24) + 0x8000;

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_identity_per_set_shared_by_its_addresses() {
        let mut ids = SelectorSetIdentities::new(BASE..=BASE + 10);
        let web = set(&["*.example.test"]);
        let changes = ids.set_address(ip("192.0.2.1"), web.clone()).unwrap();
        let id = NumericIdentity(BASE);
        assert_eq!(
            changes,
            vec![
                IdentityChange::Allocated {
                    id,
                    labels: Labels::parse("fqdn:*.example.test=;reserved:world=;").unwrap(),
                },
                IdentityChange::IpcacheUpsert {
                    ip: ip("192.0.2.1"),
                    id
                },
            ]
        );
        // A second address of the same set: only an ipcache entry.
        assert_eq!(
            ids.set_address(ip("192.0.2.2"), web.clone()).unwrap(),
            vec![IdentityChange::IpcacheUpsert {
                ip: ip("192.0.2.2"),
                id
            }]
        );
        assert!(
            ids.set_address(ip("192.0.2.2"), web.clone())
                .unwrap()
                .is_empty()
        );
        assert_eq!(ids.identity_of(&web), Some(id));
        assert_eq!(ids.identity_of_address(ip("192.0.2.2")), Some(id));
        // Removing one keeps the identity; removing the last releases it after the ipcache.
        assert_eq!(
            ids.set_address(ip("192.0.2.1"), BTreeSet::new()).unwrap(),
            vec![IdentityChange::IpcacheDelete {
                ip: ip("192.0.2.1")
            }]
        );
        assert_eq!(
            ids.set_address(ip("192.0.2.2"), BTreeSet::new()).unwrap(),
            vec![
                IdentityChange::IpcacheDelete {
                    ip: ip("192.0.2.2")
                },
                IdentityChange::Released { id }
            ]
        );
        assert_eq!(ids.identities().count(), 0);
        assert!(
            ids.set_address(ip("192.0.2.9"), BTreeSet::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn moving_to_another_set_is_make_before_break() {
        let mut ids = SelectorSetIdentities::new(BASE..=BASE + 10);
        let a = set(&["*.example.test"]);
        let ab = set(&["*.example.test", "www.example.test"]);
        ids.set_address(ip("192.0.2.1"), a).unwrap();
        let changes = ids.set_address(ip("192.0.2.1"), ab.clone()).unwrap();
        let new = NumericIdentity(BASE + 1);
        assert_eq!(
            changes,
            vec![
                IdentityChange::Allocated {
                    id: new,
                    labels: fqdn_labels(&ab),
                },
                IdentityChange::IpcacheUpsert {
                    ip: ip("192.0.2.1"),
                    id: new
                },
                IdentityChange::Released {
                    id: NumericIdentity(BASE)
                },
            ]
        );
        assert_eq!(ids.set_of(ip("192.0.2.1")), Some(&ab));
    }

    #[test]
    fn the_range_is_reused_and_can_run_out() {
        let mut ids = SelectorSetIdentities::new(BASE..=BASE + 1);
        ids.set_address(ip("192.0.2.1"), set(&["a.test"])).unwrap();
        ids.set_address(ip("192.0.2.2"), set(&["b.test"])).unwrap();
        let err = ids
            .set_address(ip("192.0.2.3"), set(&["c.test"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no free FQDN identity in {BASE}..={} for the selector set {{\"c.test\"}} (address 192.0.2.3)",
                BASE + 1
            )
        );
        assert_eq!(ids.set_of(ip("192.0.2.3")), None, "nothing changed");
        ids.set_address(ip("192.0.2.1"), BTreeSet::new()).unwrap();
        ids.set_address(ip("192.0.2.3"), set(&["c.test"])).unwrap();
        assert_eq!(
            ids.identity_of_address(ip("192.0.2.3")),
            Some(NumericIdentity(BASE))
        );
    }

    #[test]
    fn labels_of_a_set() {
        let l = fqdn_labels(&set(&["*", "api.example.test"]));
        assert_eq!(
            l.to_kvstore_string(),
            "fqdn:*=;fqdn:api.example.test=;reserved:world=;"
        );
    }
}
