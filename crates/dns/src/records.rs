//! The cluster's DNS names: `<service>.<namespace>.svc.<domain>` and the addresses they stand
//! for.
//!
//! [`ServiceRecords`] is a plain in-memory table fed with Service objects (by
//! [`crate::watch`], or directly in tests) and asked one question: what does a name resolve
//! to? It promises:
//! - names are compared case-insensitively, with or without the trailing dot;
//! - a service with an IPv4 `clusterIP` resolves to it; a service without one (not allocated
//!   yet, or headless `None`) is a name that exists with no address;
//! - the names above services (`<namespace>.svc.<domain>` while the namespace has a service,
//!   `svc.<domain>`, `<domain>`) exist with no address, so resolvers do not cache them as
//!   missing;
//! - every other name inside the domain does not exist; names outside it are not ours.
//!
//! Until [`ServiceRecords::set_synced`] it still answers, but callers should not trust a "does
//! not exist" before the table has seen the whole initial listing: see [`ServiceRecords::synced`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use plexus_kvstore::StoreEvent;
use plexus_loadbalancer::service::Service;

/// The default cluster domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// What a name resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A service with this address.
    Address(Ipv4Addr),
    /// The name exists inside the domain but has no address.
    NoData,
    /// No such name inside the domain.
    NxDomain,
    /// The name is outside the cluster domain.
    NotInZone,
}

/// A cluster domain that is not a valid DNS name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cluster domain {domain:?}: {reason}")]
pub struct DomainError {
    /// The domain given.
    pub domain: String,
    /// Why it is refused.
    pub reason: &'static str,
}

/// Lower-cases a name and drops its trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The service names of one cluster domain.
#[derive(Clone, Debug)]
pub struct ServiceRecords {
    domain: String,
    /// namespace -> service name -> address.
    services: BTreeMap<String, BTreeMap<String, Option<Ipv4Addr>>>,
    synced: bool,
}

impl ServiceRecords {
    /// An empty table for `domain` (for example `cluster.local`, trailing dot optional).
    pub fn new(domain: &str) -> Result<Self, DomainError> {
        let normalized = normalize(domain);
        let bad = |reason| DomainError {
            domain: domain.to_string(),
            reason,
        };
        if normalized.is_empty() {
            return Err(bad("empty"));
        }
        if normalized.split('.').any(|l| l.is_empty() || l.len() > 63) {
            return Err(bad("every label must have 1 to 63 characters"));
        }
        if !normalized
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        Ok(Self {
            domain: normalized,
            services: BTreeMap::new(),
            synced: false,
        })
    }

    /// The cluster domain (lower case, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Adds or replaces a service.
    pub fn upsert(&mut self, svc: &Service) {
        let ip = match svc.spec.cluster_ip.as_deref() {
            None | Some("") | Some("None") => None,
            Some(text) => match text.parse::<Ipv4Addr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    tracing::warn!(service = %svc.key(), cluster_ip = %text, "clusterIP is not an IPv4 address: the name has no address");
                    None
                }
            },
        };
        self.services
            .entry(svc.metadata.namespace.to_ascii_lowercase())
            .or_default()
            .insert(svc.metadata.name.to_ascii_lowercase(), ip);
    }

    /// Removes service `namespace/name` (a missing one is fine).
    pub fn remove(&mut self, namespace: &str, name: &str) {
        let ns = namespace.to_ascii_lowercase();
        if let Some(names) = self.services.get_mut(&ns) {
            names.remove(&name.to_ascii_lowercase());
            if names.is_empty() {
                self.services.remove(&ns);
            }
        }
    }

    /// Applies one event of a [`plexus_kvstore::WatchStore`] over the services prefix (keys
    /// relative to it: `<namespace>/<name>`).
    pub fn apply(&mut self, event: &StoreEvent<Service>) {
        match event {
            StoreEvent::Upsert { value, .. } => self.upsert(value),
            StoreEvent::Delete { old, .. } => {
                self.remove(&old.metadata.namespace, &old.metadata.name)
            }
            StoreEvent::Rejected { key, .. } => {
                if let Some((ns, name)) = key.split_once('/') {
                    self.remove(ns, name);
                }
            }
            StoreEvent::Synced => self.synced = true,
        }
    }

    /// Marks the table as holding the whole initial listing.
    pub fn set_synced(&mut self) {
        self.synced = true;
    }

    /// Whether the table holds the whole initial listing (before that, a missing name may only
    /// be missing from the table).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.services.values().map(BTreeMap::len).sum()
    }

    /// Whether there is no service.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The namespaces that have at least one service.
    pub fn namespaces(&self) -> BTreeSet<&str> {
        self.services.keys().map(String::as_str).collect()
    }

    /// Whether `name` (any case, trailing dot optional) is the domain or lies inside it.
    pub fn in_zone(&self, name: &str) -> bool {
        let name = normalize(name);
        name == self.domain
            || name
                .strip_suffix(&self.domain)
                .is_some_and(|rest| rest.ends_with('.'))
    }

    /// What `name` resolves to (any case, trailing dot optional).
    pub fn resolve(&self, name: &str) -> Answer {
        let name = normalize(name);
        let relative = if name == self.domain {
            ""
        } else {
            match name
                .strip_suffix(&self.domain)
                .and_then(|rest| rest.strip_suffix('.'))
            {
                Some(rest) => rest,
                None => return Answer::NotInZone,
            }
        };
        // Labels from the domain outwards: svc, <namespace>, <service>.
        let labels: Vec<&str> = if relative.is_empty() {
            vec![]
        } else {
            relative.rsplit('.').collect()
        };
        match labels.as_slice() {
            [] | ["svc"] => Answer::NoData,
            ["svc", ns] if self.services.contains_key(*ns) => Answer::NoData,
            ["svc", ns, svc] => match self.services.get(*ns).and_then(|s| s.get(*svc)) {
                Some(Some(ip)) => Answer::Address(*ip),
                Some(None) => Answer::NoData,
                None => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use plexus_loadbalancer::service::{Metadata, ServiceSpec};

    fn svc(ns: &str, name: &str, ip: Option<&str>) -> Service {
        Service {
            metadata: Metadata {
                name: name.into(),
                namespace: ns.into(),
                ..Default::default()
            },
            spec: ServiceSpec {
                cluster_ip: ip.map(str::to_string),
                ..Default::default()
            },
        }
    }

    fn table() -> ServiceRecords {
        let mut r = ServiceRecords::new("cluster.local").unwrap();
        r.upsert(&svc("default", "rebel-base", Some("10.11.0.20")));
        r.upsert(&svc("kube-system", "kube-dns", Some("10.11.0.10")));
        r.upsert(&svc("default", "pending", None));
        r.upsert(&svc("default", "headless", Some("None")));
        r.upsert(&svc("default", "v6", Some("fd00::1")));
        r
    }

    #[test]
    fn known_services_resolve_to_their_cluster_ip() {
        let r = table();
        assert_eq!(
            r.resolve("rebel-base.default.svc.cluster.local"),
            Answer::Address("10.11.0.20".parse().unwrap())
        );
        assert_eq!(
            r.resolve("kube-dns.kube-system.svc.cluster.local"),
            Answer::Address("10.11.0.10".parse().unwrap())
        );
    }

    #[test]
    fn names_are_case_insensitive_and_the_trailing_dot_is_optional() {
        let r = table();
        let want = Answer::Address("10.11.0.20".parse().unwrap());
        assert_eq!(r.resolve("rebel-base.default.svc.cluster.local."), want);
        assert_eq!(r.resolve("Rebel-Base.DEFAULT.svc.Cluster.Local."), want);
        let mut r = ServiceRecords::new("Cluster.Local.").unwrap();
        r.upsert(&svc("Default", "Web", Some("10.11.0.30")));
        assert_eq!(r.domain(), "cluster.local");
        assert_eq!(
            r.resolve("web.default.svc.cluster.local"),
            Answer::Address("10.11.0.30".parse().unwrap())
        );
    }

    #[test]
    fn unknown_names_inside_the_domain_do_not_exist() {
        let r = table();
        for name in [
            "x-wing.default.svc.cluster.local",
            "rebel-base.other.svc.cluster.local",
            "a.rebel-base.default.svc.cluster.local",
            "rebel-base.default.cluster.local",
            "other.svc.cluster.local",
            "pod.cluster.local",
        ] {
            assert_eq!(r.resolve(name), Answer::NxDomain, "{name}");
        }
    }

    #[test]
    fn a_service_is_only_found_in_its_own_namespace() {
        let r = table();
        assert_eq!(
            r.resolve("kube-dns.default.svc.cluster.local"),
            Answer::NxDomain
        );
        assert_eq!(
            r.resolve("rebel-base.kube-system.svc.cluster.local"),
            Answer::NxDomain
        );
    }

    #[test]
    fn services_without_an_ipv4_cluster_ip_exist_without_an_address() {
        let r = table();
        for name in ["pending", "headless", "v6"] {
            assert_eq!(
                r.resolve(&format!("{name}.default.svc.cluster.local")),
                Answer::NoData,
                "{name}"
            );
        }
    }

    #[test]
    fn names_above_services_exist_and_outside_names_are_not_ours() {
        let r = table();
        for name in [
            "cluster.local",
            "svc.cluster.local.",
            "default.svc.cluster.local",
        ] {
            assert_eq!(r.resolve(name), Answer::NoData, "{name}");
        }
        for name in [
            "example.com",
            "local",
            "xcluster.local",
            "svc.cluster.localx",
        ] {
            assert_eq!(r.resolve(name), Answer::NotInZone, "{name}");
            assert!(!r.in_zone(name), "{name}");
        }
        assert!(r.in_zone("A.Cluster.Local."));
    }

    #[test]
    fn deleted_and_rejected_services_stop_resolving() {
        let mut r = table();
        r.apply(&StoreEvent::Delete {
            key: "default/rebel-base".into(),
            old: svc("default", "rebel-base", Some("10.11.0.20")),
        });
        assert_eq!(
            r.resolve("rebel-base.default.svc.cluster.local"),
            Answer::NxDomain
        );
        r.apply(&StoreEvent::Rejected {
            key: "kube-system/kube-dns".into(),
            reason: "bad".into(),
        });
        assert_eq!(
            r.resolve("kube-dns.kube-system.svc.cluster.local"),
            Answer::NxDomain
        );
        // Its namespace had only that service: the namespace name is gone too.
        assert_eq!(r.resolve("kube-system.svc.cluster.local"), Answer::NxDomain);
        assert!(!r.synced());
        r.apply(&StoreEvent::Synced);
        assert!(r.synced());
    }

    #[test]
    fn an_address_change_is_seen() {
        let mut r = table();
        r.apply(&StoreEvent::Upsert {
            key: "default/pending".into(),
            value: svc("default", "pending", Some("10.11.0.21")),
            created: false,
        });
        assert_eq!(
            r.resolve("pending.default.svc.cluster.local"),
            Answer::Address("10.11.0.21".parse().unwrap())
        );
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn bad_domains_are_refused_with_the_reason() {
        assert_eq!(
            ServiceRecords::new("").unwrap_err().to_string(),
            "cluster domain \"\": empty"
        );
        assert!(ServiceRecords::new("a..local").is_err());
        assert!(ServiceRecords::new("clu ster.local").is_err());
    }
}
