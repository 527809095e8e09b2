//! The learned-address cache: which addresses each name resolved to, until when.
//!
//! An address learned for a name lives until `learned at + max(TTL, min TTL)`
//! ([`CacheConfig::min_ttl`], Cilium's `--tofqdns-min-ttl`; 0, its default, honours the
//! server's TTLs). Learning the same pair again extends its life, never shortens it. Expiry is
//! explicit ([`LearnedCache::expire`], at the time the caller passes; [`LearnedCache::next_expiry`]
//! says when the next one is due), and an expired address that still carries connections (a
//! predicate the caller gives, e.g. a conntrack lookup) is kept, as Cilium keeps such
//! "zombies", so a policy change or a short TTL never cuts a connection the policy allowed when
//! it was opened. It is checked again at the next expiry pass.
//!
//! Time is an [`Instant`] given by the caller: no clock of its own, so tests run in virtual time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Cache options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheConfig {
    /// The shortest life of a learned address, whatever the server's TTL.
    pub min_ttl: Duration,
}

/// Learned addresses per name.
#[derive(Clone, Debug, Default)]
pub struct LearnedCache {
    config: CacheConfig,
    /// name -> address -> expiry.
    names: BTreeMap<String, BTreeMap<IpAddr, Instant>>,
    /// address -> names (the reverse index, for the selector sets of an address).
    addresses: BTreeMap<IpAddr, BTreeSet<String>>,
}

impl LearnedCache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The options.
    pub fn config(&self) -> CacheConfig {
        self.config
    }

    /// Records that `name` (normalized) resolved to these addresses (with TTLs in seconds) at
    /// `now`. Returns the addresses that are new for the name.
    pub fn learn(
        &mut self,
        name: &str,
        addresses: &BTreeMap<IpAddr, u32>,
        now: Instant,
    ) -> BTreeSet<IpAddr> {
        let mut new = BTreeSet::new();
        let entry = self.names.entry(name.to_string()).or_default();
        for (ip, ttl) in addresses {
            let life = Duration::from_secs(u64::from(*ttl)).max(self.config.min_ttl);
            let until = now + life;
            match entry.get_mut(ip) {
                Some(t) => *t = (*t).max(until),
                None => {
                    entry.insert(*ip, until);
                    new.insert(*ip);
                    self.addresses
                        .entry(*ip)
                        .or_default()
                        .insert(name.to_string());
                }
            }
        }
        if entry.is_empty() {
            self.names.remove(name);
        }
        new
    }

    /// Removes the expired pairs whose address has no live connection (`live(address)` false);
    /// returns them, by name.
    pub fn expire(
        &mut self,
        now: Instant,
        live: impl Fn(IpAddr) -> bool,
    ) -> BTreeMap<String, BTreeSet<IpAddr>> {
        let mut removed: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        let mut live_memo: BTreeMap<IpAddr, bool> = BTreeMap::new();
        for (name, entries) in &mut self.names {
            entries.retain(|ip, until| {
                if *until > now || *live_memo.entry(*ip).or_insert_with(|| live(*ip)) {
                    return true;
                }
                removed.entry(name.clone()).or_default().insert(*ip);
                false
            });
        }
        self.names.retain(|_, entries| !entries.is_empty());
        for (name, ips) in &removed {
            for ip in ips {
                if let Some(names) = self.addresses.get_mut(ip) {
                    names.remove(name);
                    if names.is_empty() {
                        self.addresses.remove(ip);
                    }
                }
            }
        }
        removed
    }

    /// The earliest expiry among the entries that have not expired by `now`, if any: when the
    /// next [`Self::expire`] pass has work (addresses kept for their connections are not
    /// counted; the caller rechecks those on its own schedule).
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.names
            .values()
            .flat_map(|m| m.values())
            .filter(|t| **t > now)
            .min()
            .copied()
    }

    /// The addresses currently learned for a name (normalized).
    pub fn addresses_of(&self, name: &str) -> BTreeSet<IpAddr> {
        self.names
            .get(name)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The names an address is learned for.
    pub fn names_of(&self, ip: IpAddr) -> impl Iterator<Item = &str> {
        self.addresses
            .get(&ip)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Every name with its addresses.
    pub fn names(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &IpAddr>)> {
        self.names.iter().map(|(n, m)| (n.as_str(), m.keys()))
    }

    /// Every learned address.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.keys().copied()
    }

    /// When a pair expires (its TTL, not counting connections).
    pub fn expiry(&self, name: &str, ip: IpAddr) -> Option<Instant> {
        self.names.get(name)?.get(&ip).copied()
    }

    /// Number of (name, address) pairs.
    pub fn len(&self) -> usize {
        self.names.values().map(BTreeMap::len).sum()
    }

    /// Whether nothing is learned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ttls(list: &[(&str, u32)]) -> BTreeMap<IpAddr, u32> {
        list.iter().map(|(a, t)| (ip(a), *t)).collect()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn ttls_expire_and_relearning_extends() {
        let t0 = Instant::now();
        let mut c = LearnedCache::new(CacheConfig::default());
        let new = c.learn(
            "www.example.test",
            &ttls(&[("192.0.2.1", 10), ("192.0.2.2", 30)]),
            t0,
        );
        assert_eq!(new, [ip("192.0.2.1"), ip("192.0.2.2")].into());
        assert_eq!(c.next_expiry(t0), Some(t0 + S(10)));
        // Learned again later with a short TTL: the longer life stays.
        assert!(
            c.learn("www.example.test", &ttls(&[("192.0.2.2", 1)]), t0 + S(5))
                .is_empty()
        );
        assert_eq!(
            c.expiry("www.example.test", ip("192.0.2.2")),
            Some(t0 + S(30))
        );
        // And later with a long one: extended.
        c.learn("www.example.test", &ttls(&[("192.0.2.1", 10)]), t0 + S(8));
        assert_eq!(
            c.expiry("www.example.test", ip("192.0.2.1")),
            Some(t0 + S(18))
        );

        assert!(c.expire(t0 + S(17), |_| false).is_empty());
        let gone = c.expire(t0 + S(18), |_| false);
        assert_eq!(
            gone,
            [("www.example.test".to_string(), [ip("192.0.2.1")].into())].into()
        );
        assert_eq!(c.addresses_of("www.example.test"), [ip("192.0.2.2")].into());
        assert_eq!(c.names_of(ip("192.0.2.1")).count(), 0);
        c.expire(t0 + S(30), |_| false);
        assert!(c.is_empty());
        assert_eq!(c.addresses().count(), 0);
        assert_eq!(c.next_expiry(t0 + S(30)), None);
    }

    #[test]
    fn the_minimum_ttl_lengthens_short_answers() {
        let t0 = Instant::now();
        let mut c = LearnedCache::new(CacheConfig { min_ttl: S(60) });
        c.learn("a.test", &ttls(&[("192.0.2.1", 0), ("192.0.2.2", 120)]), t0);
        assert_eq!(c.expiry("a.test", ip("192.0.2.1")), Some(t0 + S(60)));
        assert_eq!(c.expiry("a.test", ip("192.0.2.2")), Some(t0 + S(120)));
        assert!(c.expire(t0 + S(59), |_| false).is_empty());
        assert_eq!(c.expire(t0 + S(60), |_| false).len(), 1);
    }

    #[test]
    fn addresses_with_live_connections_outlive_their_ttl() {
        let t0 = Instant::now();
        let mut c = LearnedCache::new(CacheConfig::default());
        c.learn("a.test", &ttls(&[("192.0.2.1", 1), ("192.0.2.2", 1)]), t0);
        c.learn("b.test", &ttls(&[("192.0.2.1", 1)]), t0);
        let busy = ip("192.0.2.1");
        let gone = c.expire(t0 + S(5), |a| a == busy);
        assert_eq!(
            gone,
            [("a.test".to_string(), [ip("192.0.2.2")].into())].into()
        );
        assert_eq!(c.names_of(busy).collect::<Vec<_>>(), ["a.test", "b.test"]);
        // The connection closed: gone at the next pass.
        let gone = c.expire(t0 + S(6), |_| false);
        assert_eq!(gone.len(), 2);
        assert!(c.is_empty());
    }

    #[test]
    fn one_address_under_several_names() {
        let t0 = Instant::now();
        let mut c = LearnedCache::new(CacheConfig::default());
        c.learn("a.test", &ttls(&[("192.0.2.1", 10)]), t0);
        c.learn("b.test", &ttls(&[("192.0.2.1", 20)]), t0);
        assert_eq!(c.len(), 2);
        c.expire(t0 + S(10), |_| false);
        assert_eq!(c.names_of(ip("192.0.2.1")).collect::<Vec<_>>(), ["b.test"]);
        assert_eq!(c.names().count(), 1);
    }
}
