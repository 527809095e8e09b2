//! Network policy on this node: the cluster's policy objects (from its etcd), the identities of
//! every cluster (from the node's view) in a selector cache, and per local endpoint the resolved
//! policy, kept programmed in the datapath.
//!
//! [`Policies::follow`] mirrors the policy objects into a [`PolicyRepository`]; a stored object
//! the policy crate refuses is logged and left out, never half-applied. [`Policies::program`]
//! recomputes when the policies, the identities (local or remote) or the endpoints change, and
//! hands each endpoint's entries to the datapath, which writes new entries before it removes
//! stale ones, so connections allowed before and after a change never see a gap.
//!
//! Named ports of ingress rules resolve against the endpoint's own container ports (given by the
//! CNI plugin). Each IPv4 prefix a policy names gets a node-local CIDR identity, installed in
//! the ipcache under every other source (pods, nodes and remote clusters keep theirs, as CIDR
//! rules select only peers outside the mesh); a CIDR rule applies to the identities of the named
//! prefixes within it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_datapath::Datapath;
use plexus_datapath::policy as dp;
use plexus_kvstore::{KvBackend, StoreEvent, WatchStore};
use plexus_model::cidr::Cidr;
use plexus_model::identity::NumericIdentity;
use plexus_model::labels::Labels;
use plexus_policy::{
    Direction, EndpointInfo, EndpointPolicy, IdentityChange, Peer, Policy, PolicyConfig, PolicyKey,
    PolicyRepository,
};
use serde::{Deserialize, Serialize};

use crate::endpoints::Endpoints;
use crate::view::NodeView;

/// One policy as `policy get` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    /// Kind.
    pub kind: String,
    /// Namespace (empty for clusterwide).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The object as applied.
    pub object: serde_json::Value,
}

/// One resolved entry, as `endpoint get` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EntryReport {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `allow` or `deny`.
    pub verdict: String,
    /// The peer: an identity number, `any`, or a CIDR.
    pub peer: String,
    /// The peer identity's labels, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_labels: Option<String>,
    /// `ANY`, `TCP`, `UDP`, `SCTP`.
    pub protocol: String,
    /// `80`, `8000-8080`, or `any`.
    pub ports: String,
}

/// An endpoint's resolved policy, as `endpoint get` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointPolicyReport {
    /// Ingress is default-deny.
    pub ingress_enforced: bool,
    /// Egress is default-deny.
    pub egress_enforced: bool,
    /// The entries.
    pub entries: Vec<EntryReport>,
}

/// What the programmed state was computed from: policy and identity generations, endpoints.
type Fingerprint = (u64, u64, Vec<(u16, u32)>);

struct Inner {
    repo: PolicyRepository,
    /// Policy key of each stored object key.
    keys: BTreeMap<String, PolicyKey>,
    objects: BTreeMap<PolicyKey, serde_json::Value>,
    generation: u64,
    synced: bool,
    /// Identities in the selector cache, with their labels (kvstore form).
    identities: BTreeMap<u32, String>,
    /// Resolved policy per endpoint id.
    resolved: BTreeMap<u16, EndpointPolicy>,
    /// Node-local CIDR identity of each prefix the resolved policies name.
    cidr_ids: BTreeMap<Cidr, u32>,
    next_cidr_id: u32,
}

/// The node's policies. Cheap to clone.
#[derive(Clone)]
pub struct Policies {
    inner: Arc<Mutex<Inner>>,
}

fn decode() -> plexus_kvstore::DecodeFn<(Policy, serde_json::Value)> {
    Box::new(|key, raw| {
        let value: serde_json::Value =
            serde_json::from_slice(raw).map_err(|e| format!("policy {key}: {e}"))?;
        let policy =
            plexus_policy::parse_value(&value, 1, "default").map_err(|e| format!("{key}: {e}"))?;
        Ok((policy, value))
    })
}

impl Policies {
    /// No policy yet, for cluster `cluster` with `policy-default-local-cluster` as given.
    pub fn new(cluster: &str, default_local_cluster: bool) -> Self {
        let mut config = PolicyConfig::new(cluster);
        config.default_local_cluster = default_local_cluster;
        Self {
            inner: Arc::new(Mutex::new(Inner {
                repo: PolicyRepository::new(config),
                keys: BTreeMap::new(),
                objects: BTreeMap::new(),
                generation: 0,
                synced: false,
                identities: BTreeMap::new(),
                resolved: BTreeMap::new(),
                cidr_ids: BTreeMap::new(),
                next_cidr_id: plexus_datapath::IDENTITY_LOCAL_BASE,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the cluster's policy objects until the task is dropped.
    pub async fn follow(self, backend: Arc<dyn KvBackend>) {
        let mut store: WatchStore<(Policy, serde_json::Value)> =
            WatchStore::new(backend, plexus_policy::POLICIES_PREFIX, decode());
        loop {
            let event = store.next().await;
            let mut inner = self.lock();
            match event {
                StoreEvent::Upsert {
                    key,
                    value: (policy, object),
                    ..
                } => {
                    let pkey = policy.key.clone();
                    if let Some(old) = inner.keys.insert(key, pkey.clone())
                        && old != pkey
                    {
                        inner.repo.delete(&old);
                        inner.objects.remove(&old);
                    }
                    inner.repo.upsert(policy);
                    inner.objects.insert(pkey, object);
                }
                StoreEvent::Delete { key, .. } => {
                    if let Some(pkey) = inner.keys.remove(&key) {
                        inner.repo.delete(&pkey);
                        inner.objects.remove(&pkey);
                    }
                }
                StoreEvent::Rejected { key, reason } => {
                    tracing::warn!(%key, %reason, "policy object refused");
                    if let Some(pkey) = inner.keys.remove(&key) {
                        inner.repo.delete(&pkey);
                        inner.objects.remove(&pkey);
                    }
                }
                StoreEvent::Synced => inner.synced = true,
            }
            inner.generation += 1;
        }
    }

    /// Every policy, in key order.
    pub fn report(&self) -> Vec<PolicyReport> {
        self.lock()
            .objects
            .iter()
            .map(|(k, v)| PolicyReport {
                kind: k.kind.name().to_string(),
                namespace: k.namespace.clone(),
                name: k.name.clone(),
                object: v.clone(),
            })
            .collect()
    }

    /// The resolved policy of endpoint `id`.
    pub fn endpoint_report(&self, id: u16) -> EndpointPolicyReport {
        let inner = self.lock();
        let Some(p) = inner.resolved.get(&id) else {
            return EndpointPolicyReport::default();
        };
        EndpointPolicyReport {
            ingress_enforced: p.ingress_enforced,
            egress_enforced: p.egress_enforced,
            entries: p
                .entries
                .iter()
                .map(|e| {
                    let (peer, peer_labels) = match e.peer {
                        Peer::Any => ("any".to_string(), None),
                        Peer::Identity(id) => {
                            (id.0.to_string(), inner.identities.get(&id.0).cloned())
                        }
                        Peer::Prefix(c) => (c.to_string(), None),
                    };
                    EntryReport {
                        direction: match e.direction {
                            Direction::Ingress => "ingress",
                            Direction::Egress => "egress",
                        }
                        .into(),
                        verdict: if e.deny { "deny" } else { "allow" }.into(),
                        peer,
                        peer_labels,
                        protocol: e
                            .proto
                            .map(|p| format!("{p:?}").to_uppercase())
                            .unwrap_or_else(|| "ANY".into()),
                        ports: match e.ports {
                            None => "any".into(),
                            Some((lo, hi)) if lo == hi => lo.to_string(),
                            Some((lo, hi)) => format!("{lo}-{hi}"),
                        },
                    }
                })
                .collect(),
        }
    }

    /// Keeps the datapath's policy equal to the resolution of every local endpoint until the
    /// task is dropped. It starts once the policy objects are listed.
    pub async fn program(
        self,
        view: Arc<NodeView>,
        endpoints: Arc<Endpoints>,
        datapath: Arc<dyn Datapath>,
    ) {
        let tick = Duration::from_millis(200);
        while !self.lock().synced {
            tokio::time::sleep(tick).await;
        }
        let mut programmed: BTreeMap<u16, dp::EndpointPolicy> = datapath
            .policies()
            .map(|t| {
                t.keys()
                    .map(|id| (*id, dp::EndpointPolicy::default()))
                    .collect()
            })
            .unwrap_or_default();
        let mut last: Option<Fingerprint> = None;
        loop {
            let eps = endpoints.list().await;
            let ep_keys: Vec<(u16, u32)> = eps.iter().map(|e| (e.id, e.identity)).collect();
            let fingerprint = (
                self.lock().generation,
                view.identities_generation(),
                ep_keys,
            );
            if last.as_ref() != Some(&fingerprint) {
                let (desired, cidrs) = self.resolve_all(&view, &eps);
                // The prefixes' identities enter the ipcache before rules name them.
                view.set_policy_cidrs(cidrs);
                let ok = sync(datapath.as_ref(), &mut programmed, desired);
                last = ok.then_some(fingerprint);
                if !ok {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// Brings the selector cache up to date and resolves every endpoint.
    fn resolve_all(
        &self,
        view: &NodeView,
        eps: &[crate::endpoints::EndpointState],
    ) -> (
        BTreeMap<u16, dp::EndpointPolicy>,
        BTreeMap<plexus_datapath::Prefix, u32>,
    ) {
        let current = view.identity_labels();
        let mut inner = self.lock();
        let mut changes = Vec::new();
        for (id, labels) in &current {
            if inner.identities.get(id) != Some(labels) {
                match Labels::parse(labels) {
                    Ok(l) => changes.push(IdentityChange::Upsert(NumericIdentity(*id), l)),
                    Err(e) => tracing::warn!(id, error = %e, "identity labels refused"),
                }
            }
        }
        for id in inner.identities.keys() {
            if !current.contains_key(id) {
                changes.push(IdentityChange::Remove(NumericIdentity(*id)));
            }
        }
        if !changes.is_empty() {
            inner.repo.update_identities(changes);
        }
        inner.identities = current;
        let mut resolved = BTreeMap::new();
        let mut out = BTreeMap::new();
        for ep in eps {
            let Some(labels) = inner
                .identities
                .get(&ep.identity)
                .and_then(|l| Labels::parse(l).ok())
            else {
                // Its identity is not in the view yet: resolve on the next change.
                continue;
            };
            let named_ports = ep
                .ports
                .iter()
                .filter_map(|(name, p)| {
                    let proto = match p.protocol.as_str() {
                        "TCP" => plexus_policy::Proto::Tcp,
                        "UDP" => plexus_policy::Proto::Udp,
                        "SCTP" => plexus_policy::Proto::Sctp,
                        _ => return None,
                    };
                    Some((
                        name.clone(),
                        BTreeSet::from([plexus_policy::NamedPort {
                            port: p.port,
                            proto,
                        }]),
                    ))
                })
                .collect();
            let policy = inner.repo.resolve(&EndpointInfo {
                labels,
                named_ports,
            });
            resolved.insert(ep.id, policy);
        }
        // CIDR identities: one per IPv4 prefix a policy names, kept while it is named.
        let named: BTreeSet<Cidr> = resolved
            .values()
            .flat_map(|p| p.entries.iter())
            .filter_map(|e| match e.peer {
                Peer::Prefix(c) if c.addr.is_ipv4() => Some(c.network()),
                _ => None,
            })
            .collect();
        inner.cidr_ids.retain(|c, _| named.contains(c));
        for c in &named {
            if !inner.cidr_ids.contains_key(c) {
                let id = inner.next_cidr_id;
                inner.next_cidr_id = if id >= plexus_datapath::IDENTITY_LOCAL_MAX {
                    plexus_datapath::IDENTITY_LOCAL_BASE
                } else {
                    id + 1
                };
                inner.cidr_ids.insert(*c, id);
            }
        }
        for (id, policy) in &resolved {
            out.insert(*id, to_datapath(policy, &inner.cidr_ids));
        }
        let cidrs = inner
            .cidr_ids
            .iter()
            .filter_map(|(c, id)| match c.addr {
                std::net::IpAddr::V4(a) => plexus_datapath::Prefix::new(a, c.prefix_len)
                    .ok()
                    .map(|p| (p, *id)),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        inner.resolved = resolved;
        (out, cidrs)
    }
}

/// Whether prefix `inner` lies within prefix `outer`.
fn within(inner: &Cidr, outer: &Cidr) -> bool {
    inner.prefix_len >= outer.prefix_len && outer.contains(inner.addr)
}

/// The datapath's form: identity entries; a protocol-less entry with ports becomes one per
/// protocol; a CIDR entry applies to the CIDR identity of every named prefix within it (an
/// address carries the identity of the most specific named prefix, so a rule on 10.0.0.0/8
/// must also match the identity of a named 10.1.0.0/16).
pub fn to_datapath(p: &EndpointPolicy, cidr_ids: &BTreeMap<Cidr, u32>) -> dp::EndpointPolicy {
    let mut rules = BTreeSet::new();
    for e in &p.entries {
        let identities: Vec<u32> = match e.peer {
            Peer::Any => vec![dp::ANY_IDENTITY],
            Peer::Identity(id) => vec![id.0],
            Peer::Prefix(c) => cidr_ids
                .iter()
                .filter(|(named, _)| within(named, &c.network()))
                .map(|(_, id)| *id)
                .collect(),
        };
        let direction = match e.direction {
            Direction::Ingress => plexus_datapath::Direction::Ingress,
            Direction::Egress => plexus_datapath::Direction::Egress,
        };
        let (lo, hi) = e.ports.unwrap_or((0, u16::MAX));
        let protos: Vec<u8> = match (e.proto, e.ports) {
            (Some(p), _) => vec![p.number()],
            (None, None) => vec![0],
            (None, Some(_)) => vec![6, 17, 132],
        };
        for identity in &identities {
            for proto in &protos {
                let proto = *proto;
                rules.insert(dp::PolicyRule {
                    direction,
                    identity: *identity,
                    proto,
                    port_lo: if proto == 0 { 0 } else { lo },
                    port_hi: if proto == 0 { u16::MAX } else { hi },
                    deny: e.deny,
                });
            }
        }
    }
    dp::EndpointPolicy {
        ingress_enforced: p.ingress_enforced,
        egress_enforced: p.egress_enforced,
        rules: rules.into_iter().collect(),
    }
}

/// Programs what changed; false when something failed (left for the next attempt).
fn sync(
    datapath: &dyn Datapath,
    programmed: &mut BTreeMap<u16, dp::EndpointPolicy>,
    desired: BTreeMap<u16, dp::EndpointPolicy>,
) -> bool {
    let mut ok = true;
    for (id, policy) in &desired {
        let empty = !policy.ingress_enforced && !policy.egress_enforced && policy.rules.is_empty();
        if empty {
            continue;
        }
        if programmed.get(id) == Some(policy) {
            continue;
        }
        match datapath.set_policy(*id, policy) {
            Ok(()) => {
                tracing::info!(
                    endpoint = id,
                    rules = policy.rules.len(),
                    ingress = policy.ingress_enforced,
                    egress = policy.egress_enforced,
                    "policy programmed"
                );
                programmed.insert(*id, policy.clone());
            }
            Err(e) => {
                ok = false;
                tracing::warn!(endpoint = id, error = %e, "programming a policy");
            }
        }
    }
    let stale: Vec<u16> = programmed
        .iter()
        .filter(|(id, _)| {
            desired
                .get(id)
                .is_none_or(|p| !p.ingress_enforced && !p.egress_enforced && p.rules.is_empty())
        })
        .map(|(id, _)| *id)
        .collect();
    for id in stale {
        match datapath.remove_policy(id) {
            Ok(()) => {
                programmed.remove(&id);
            }
            Err(e) => {
                ok = false;
                tracing::warn!(endpoint = id, error = %e, "removing a policy");
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use plexus_datapath::FakeDatapath;
    use plexus_policy::{PolicyEntry, Proto};

    fn entry(
        peer: Peer,
        proto: Option<Proto>,
        ports: Option<(u16, u16)>,
        deny: bool,
    ) -> PolicyEntry {
        PolicyEntry {
            direction: Direction::Ingress,
            peer,
            proto,
            ports,
            deny,
        }
    }

    #[test]
    fn entries_become_datapath_rules() {
        let p = EndpointPolicy {
            ingress_enforced: true,
            egress_enforced: false,
            entries: vec![
                entry(
                    Peer::Identity(NumericIdentity(300)),
                    Some(Proto::Tcp),
                    Some((6379, 6379)),
                    false,
                ),
                entry(Peer::Any, None, Some((53, 53)), false),
                entry(Peer::Any, None, None, true),
                entry(
                    Peer::Prefix("10.0.0.0/8".parse().unwrap()),
                    None,
                    None,
                    false,
                ),
            ],
        };
        let cidrs = BTreeMap::from([
            ("10.0.0.0/8".parse::<Cidr>().unwrap(), 16_777_216),
            ("10.1.0.0/16".parse::<Cidr>().unwrap(), 16_777_217),
            ("192.168.0.0/16".parse::<Cidr>().unwrap(), 16_777_218),
        ]);
        let d = to_datapath(&p, &cidrs);
        assert!(d.ingress_enforced && !d.egress_enforced);
        let rules: Vec<(u32, u8, u16, u16, bool)> = d
            .rules
            .iter()
            .map(|r| (r.identity, r.proto, r.port_lo, r.port_hi, r.deny))
            .collect();
        assert_eq!(
            rules,
            vec![
                (0, 0, 0, 65535, true),
                (0, 6, 53, 53, false),
                (0, 17, 53, 53, false),
                (0, 132, 53, 53, false),
                (300, 6, 6379, 6379, false),
                (16_777_216, 0, 0, 65535, false),
                (16_777_217, 0, 0, 65535, false),
            ],
            "10.0.0.0/8 applies to the named 10.1.0.0/16 too, not to 192.168.0.0/16"
        );
    }

    #[test]
    fn endpoints_without_policy_are_cleared() {
        let dp_ = FakeDatapath::new();
        let mut programmed = BTreeMap::new();
        let enforced = dp::EndpointPolicy {
            ingress_enforced: true,
            egress_enforced: false,
            rules: vec![],
        };
        assert!(sync(
            &dp_,
            &mut programmed,
            BTreeMap::from([(7, enforced.clone())])
        ));
        assert_eq!(dp_.policies().unwrap()[&7].0, (true, false));
        assert!(sync(
            &dp_,
            &mut programmed,
            BTreeMap::from([(7, dp::EndpointPolicy::default())])
        ));
        assert!(dp_.policies().unwrap().is_empty());
        assert!(programmed.is_empty());
    }
}
