//! The policy repository: policies by (kind, namespace, name), the selector cache they use, and
//! per-endpoint resolution.
//!
//! A policy entering the repository is compiled against the agent's [`PolicyConfig`]: entity
//! peers become selectors for the local cluster, CIDR peers become prefix lists with `except`
//! subtracted, and, with `policy-default-local-cluster` on (the default, as in current Cilium),
//! a peer endpoint selector without a cluster requirement (and without `reserved:` labels) gets
//! `k8s:io.cilium.k8s.policy.cluster=<local cluster>`; with it off, such selectors match
//! endpoints of every cluster, as Cilium up to 1.18 did. Selectors are interned in the
//! [`SelectorCache`] and released when the policy is replaced or deleted.
//!
//! [`PolicyRepository::resolve`] computes an endpoint's [`EndpointPolicy`] from its labels and
//! named ports; [`PolicyRepository::resolve_with_sources`] also says which policy each entry
//! comes from and which policies enforce each direction ([`PolicySources`], for flows: which
//! policy allowed or denied a packet). Identity changes go through [`PolicyRepository::update_identities`], which
//! returns the changed selectors; [`PolicyRepository::affects`] tells whether an endpoint's
//! policy depends on any of them, so callers recompute only those endpoints.
//!
//! Named ports: an ingress named port is the endpoint's own container port of that name. An
//! egress named port towards a peer identity whose ports are known
//! ([`PolicyRepository::set_identity_named_ports`]) is that identity's port of that name;
//! otherwise (unknown identities, `Any` and prefix peers) it is looked up in a node-wide index
//! ([`PolicyRepository::set_egress_named_ports`], name -> every port carrying that name, e.g.
//! from the ipcache's `NamedPorts`), as Cilium does, with Cilium's limitation: every port that
//! carries the name anywhere is allowed towards those peers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use plexus_model::cidr::Cidr;
use plexus_model::identity::NumericIdentity;
use plexus_model::labels::{CLUSTER_LABEL, Labels, SOURCE_K8S};

use crate::cache::{IdentityChange, SelectorCache, SelectorId};
use crate::dns::{DnsEntry, DnsPolicy};
use crate::entity::EntityPeers;
use crate::port::{NamedPorts, PortRef, PortSpec, Proto};
use crate::prefix::subtract;
use crate::resolved::{Direction, EndpointPolicy, Peer, PolicyEntry};
use crate::rule::{DnsPortRule, PeerRule, PeerSpec, Policy, PolicyKey, Rule};
use crate::selector::{Requirement, Selector};

/// Agent options that change what policies mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The local cluster's name.
    pub cluster_name: String,
    /// `policy-default-local-cluster`: peer endpoint selectors without a cluster label select
    /// only the local cluster. On by default.
    pub default_local_cluster: bool,
}

impl PolicyConfig {
    /// The default configuration for cluster `cluster_name`.
    pub fn new(cluster_name: impl Into<String>) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            default_local_cluster: true,
        }
    }
}

/// What resolution needs to know about an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The endpoint's identity labels.
    pub labels: Labels,
    /// Its container ports by name (for ingress named ports).
    pub named_ports: NamedPorts,
}

/// A protocol (`None` = any) and an inclusive port range (`None` = every port).
type ResolvedPort = (Option<Proto>, Option<(u16, u16)>);

#[derive(Clone, Debug)]
enum CompiledPeer {
    Any,
    Selector(SelectorId),
    Prefixes(Vec<Cidr>),
}

#[derive(Clone, Debug)]
struct CompiledPeerRule {
    peers: Vec<CompiledPeer>,
    ports: Vec<PortSpec>,
    dns: Vec<DnsPortRule>,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    subject: Selector,
    /// `spec` or `specs[i]`.
    path: String,
    ingress: bool,
    egress: bool,
    /// ingress, ingressDeny, egress, egressDeny.
    sections: [Vec<CompiledPeerRule>; 4],
}

const SECTIONS: [(Direction, bool); 4] = [
    (Direction::Ingress, false),
    (Direction::Ingress, true),
    (Direction::Egress, false),
    (Direction::Egress, true),
];

/// A section of a rule, named as in the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// `ingress` (allow).
    Ingress,
    /// `ingressDeny`.
    IngressDeny,
    /// `egress` (allow).
    Egress,
    /// `egressDeny`.
    EgressDeny,
}

impl Section {
    /// The section of `direction` holding allow (`deny` false) or deny rules.
    pub fn of(direction: Direction, deny: bool) -> Self {
        match (direction, deny) {
            (Direction::Ingress, false) => Self::Ingress,
            (Direction::Ingress, true) => Self::IngressDeny,
            (Direction::Egress, false) => Self::Egress,
            (Direction::Egress, true) => Self::EgressDeny,
        }
    }

    /// The field name: `ingress`, `ingressDeny`, `egress`, `egressDeny`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::IngressDeny => "ingressDeny",
            Self::Egress => "egress",
            Self::EgressDeny => "egressDeny",
        }
    }
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where in its policy object a resolved entry was written: the rule (`spec` or `specs[i]`),
/// the section and the element's index in it (`egress[0]`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryOrigin {
    /// `spec`, or `specs[i]` for a Cilium policy's i-th `specs` element.
    pub rule: String,
    /// The section.
    pub section: Section,
    /// The element's index in the section.
    pub index: usize,
}

impl std::fmt::Display for EntryOrigin {
    /// `egress[0]` for a rule written as `spec`, `specs[1].ingressDeny[2]` otherwise.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rule != "spec" {
            write!(f, "{}.", self.rule)?;
        }
        write!(f, "{}[{}]", self.section, self.index)
    }
}

#[derive(Debug)]
struct Stored {
    policy: Policy,
    compiled: Vec<CompiledRule>,
    /// The `toFQDNs` patterns of its rules.
    fqdns: BTreeSet<String>,
}

/// Policies and their resolution.
#[derive(Debug)]
pub struct PolicyRepository {
    config: PolicyConfig,
    cache: SelectorCache,
    policies: BTreeMap<PolicyKey, Stored>,
    egress_named_ports: NamedPorts,
    identity_named_ports: HashMap<NumericIdentity, NamedPorts>,
    revision: u64,
}

impl PolicyRepository {
    /// An empty repository.
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            cache: SelectorCache::new(),
            policies: BTreeMap::new(),
            egress_named_ports: NamedPorts::new(),
            identity_named_ports: HashMap::new(),
            revision: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The selector cache (read-only; change identities with [`Self::update_identities`]).
    pub fn cache(&self) -> &SelectorCache {
        &self.cache
    }

    /// Bumped on every policy change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Adds or replaces a policy; returns the one it replaced.
    pub fn upsert(&mut self, policy: Policy) -> Option<Policy> {
        let old = self.delete(&policy.key);
        let compiled = policy.rules.iter().map(|r| self.compile(r)).collect();
        let fqdns = policy
            .rules
            .iter()
            .flat_map(|r| r.egress.iter().chain(&r.egress_deny))
            .flat_map(|pr| pr.peers.iter().flatten())
            .filter_map(|p| match p {
                PeerSpec::Fqdn(pattern) => Some(pattern.clone()),
                _ => None,
            })
            .collect();
        self.policies.insert(
            policy.key.clone(),
            Stored {
                policy,
                compiled,
                fqdns,
            },
        );
        self.revision += 1;
        old
    }

    /// Adds or replaces every policy of a parsed file (already checked as a whole).
    pub fn upsert_all(&mut self, policies: impl IntoIterator<Item = Policy>) {
        for p in policies {
            self.upsert(p);
        }
    }

    /// Deletes a policy; returns it.
    pub fn delete(&mut self, key: &PolicyKey) -> Option<Policy> {
        let stored = self.policies.remove(key)?;
        for rule in &stored.compiled {
            for section in &rule.sections {
                for pr in section {
                    for peer in &pr.peers {
                        if let CompiledPeer::Selector(id) = peer {
                            self.cache.release(*id);
                        }
                    }
                }
            }
        }
        self.revision += 1;
        Some(stored.policy)
    }

    /// A policy by key.
    pub fn get(&self, key: &PolicyKey) -> Option<&Policy> {
        self.policies.get(key).map(|s| &s.policy)
    }

    /// Every policy, in key order.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values().map(|s| &s.policy)
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Replaces the node-wide named-port index used for egress named ports.
    pub fn set_egress_named_ports(&mut self, ports: NamedPorts) {
        self.egress_named_ports = ports;
    }

    /// Sets the named ports of the endpoints of one identity (the union over its endpoints);
    /// an empty map forgets them. Egress named ports towards a peer selected by identity are
    /// resolved against its own ports when known, and against the node-wide index otherwise.
    pub fn set_identity_named_ports(&mut self, id: NumericIdentity, ports: NamedPorts) {
        if ports.is_empty() {
            self.identity_named_ports.remove(&id);
        } else {
            self.identity_named_ports.insert(id, ports);
        }
    }

    /// Every `toFQDNs` pattern of the stored policies (normalized): the selectors a DNS proxy
    /// learns addresses for ([`crate::fqdn`]).
    pub fn fqdn_patterns(&self) -> BTreeSet<String> {
        self.policies
            .values()
            .flat_map(|s| s.fqdns.iter().cloned())
            .collect()
    }

    /// Applies identity changes (local or remote); returns the selectors whose sets changed.
    pub fn update_identities(
        &mut self,
        changes: impl IntoIterator<Item = IdentityChange>,
    ) -> BTreeSet<SelectorId> {
        self.cache.apply(changes)
    }

    fn compile_peer(&mut self, spec: &PeerSpec, out: &mut Vec<CompiledPeer>) {
        match spec {
            PeerSpec::Any => out.push(CompiledPeer::Any),
            PeerSpec::Fqdn(pattern) => {
                let sel = crate::fqdn::selector(pattern);
                out.push(CompiledPeer::Selector(self.cache.add_selector(sel)));
            }
            PeerSpec::Cidr { cidr, except } => {
                out.push(CompiledPeer::Prefixes(subtract(*cidr, except)));
            }
            PeerSpec::Entity(e) => match e.peers(&self.config.cluster_name) {
                EntityPeers::Any => out.push(CompiledPeer::Any),
                EntityPeers::Selectors(list) => {
                    for s in list {
                        out.push(CompiledPeer::Selector(self.cache.add_selector(s)));
                    }
                }
            },
            PeerSpec::Endpoints(sel) => {
                let mut sel = sel.clone();
                if self.config.default_local_cluster && spec.takes_cluster_default() {
                    sel.add(Requirement::equals(
                        &format!("{SOURCE_K8S}:{CLUSTER_LABEL}"),
                        &self.config.cluster_name,
                    ));
                }
                out.push(CompiledPeer::Selector(self.cache.add_selector(sel)));
            }
        }
    }

    fn compile_peer_rule(&mut self, pr: &PeerRule) -> CompiledPeerRule {
        let mut peers = Vec::new();
        match &pr.peers {
            // No L3 field: every peer on the given ports; nothing at all without ports.
            None if !pr.ports.is_empty() => peers.push(CompiledPeer::Any),
            None => {}
            Some(list) => {
                for spec in list {
                    self.compile_peer(spec, &mut peers);
                }
            }
        }
        CompiledPeerRule {
            peers,
            ports: pr.ports.clone(),
            dns: pr.dns.clone(),
        }
    }

    fn compile(&mut self, rule: &Rule) -> CompiledRule {
        let mut sections: [Vec<CompiledPeerRule>; 4] = Default::default();
        for (i, list) in [
            &rule.ingress,
            &rule.ingress_deny,
            &rule.egress,
            &rule.egress_deny,
        ]
        .into_iter()
        .enumerate()
        {
            sections[i] = list.iter().map(|pr| self.compile_peer_rule(pr)).collect();
        }
        CompiledRule {
            subject: rule.subject.clone(),
            path: rule.path.clone(),
            ingress: rule.enforces_ingress(),
            egress: rule.enforces_egress(),
            sections,
        }
    }

    fn matching_rules<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a CompiledRule> {
        self.policies
            .values()
            .flat_map(|s| s.compiled.iter())
            .filter(move |r| r.subject.matches(labels))
    }

    /// The selectors the policy of an endpoint with these labels depends on.
    pub fn selectors_for(&self, labels: &Labels) -> BTreeSet<SelectorId> {
        let mut out = BTreeSet::new();
        for rule in self.matching_rules(labels) {
            for pr in rule.sections.iter().flatten() {
                for peer in &pr.peers {
                    if let CompiledPeer::Selector(id) = peer {
                        out.insert(*id);
                    }
                }
            }
        }
        out
    }

    /// Whether the policy of an endpoint with these labels depends on a changed selector.
    pub fn affects(&self, labels: &Labels, changed: &BTreeSet<SelectorId>) -> bool {
        !changed.is_empty() && !self.selectors_for(labels).is_disjoint(changed)
    }

    fn ports_of(specs: &[PortSpec], index: &NamedPorts) -> Vec<ResolvedPort> {
        if specs.is_empty() {
            return vec![(None, None)];
        }
        let mut out = Vec::new();
        for spec in specs {
            match &spec.port {
                PortRef::Number(0) => out.push((spec.proto, None)),
                PortRef::Number(p) => {
                    out.push((spec.proto, Some((*p, spec.end_port.unwrap_or(*p)))))
                }
                PortRef::Named(name) => {
                    for np in index.get(name).into_iter().flatten() {
                        if spec.proto.is_none_or(|p| p == np.proto) {
                            out.push((Some(np.proto), Some((np.port, np.port))));
                        }
                    }
                }
            }
        }
        out
    }

    /// Resolves the policy of the endpoints of a known identity (its labels from the cache).
    pub fn resolve_identity(
        &self,
        id: NumericIdentity,
        named_ports: NamedPorts,
    ) -> Option<EndpointPolicy> {
        let labels = self.cache.labels(id)?.clone();
        Some(self.resolve(&EndpointInfo {
            labels,
            named_ports,
        }))
    }

    /// Resolves the policy of an endpoint.
    pub fn resolve(&self, endpoint: &EndpointInfo) -> EndpointPolicy {
        self.resolve_inner(endpoint, None)
    }

    /// Resolves the policy of an endpoint and says which policy each entry comes from (for
    /// flows: which policy allowed or denied a connection), in the same pass.
    pub fn resolve_with_sources(&self, endpoint: &EndpointInfo) -> (EndpointPolicy, PolicySources) {
        let mut sources = PolicySources::default();
        let policy = self.resolve_inner(endpoint, Some(&mut sources));
        (policy, sources)
    }

    fn resolve_inner(
        &self,
        endpoint: &EndpointInfo,
        mut sources: Option<&mut PolicySources>,
    ) -> EndpointPolicy {
        let mut out = EndpointPolicy::default();
        for (key, rule) in self.policies.iter().flat_map(|(key, s)| {
            s.compiled
                .iter()
                .filter(|r| r.subject.matches(&endpoint.labels))
                .map(move |r| (key, r))
        }) {
            out.ingress_enforced |= rule.ingress;
            out.egress_enforced |= rule.egress;
            let first_entry = out.entries.len();
            // Where each entry of this rule was written, parallel to its entries.
            let mut origins = Vec::new();
            for (section, (direction, deny)) in rule.sections.iter().zip(SECTIONS) {
                for (element, pr) in section.iter().enumerate() {
                    if pr.peers.is_empty() {
                        continue;
                    }
                    let index = match direction {
                        Direction::Ingress => &endpoint.named_ports,
                        Direction::Egress => &self.egress_named_ports,
                    };
                    let ports = Self::ports_of(&pr.ports, index);
                    // Egress named ports towards an identity whose own ports are known.
                    let per_identity = direction == Direction::Egress
                        && !self.identity_named_ports.is_empty()
                        && pr.ports.iter().any(|p| matches!(p.port, PortRef::Named(_)));
                    let mut push = |peer: Peer, ports: &[ResolvedPort]| {
                        for (proto, ports) in ports {
                            out.entries.push(PolicyEntry {
                                direction,
                                peer,
                                proto: *proto,
                                ports: *ports,
                                deny,
                            });
                        }
                    };
                    for peer in &pr.peers {
                        match peer {
                            CompiledPeer::Any => push(Peer::Any, &ports),
                            CompiledPeer::Selector(id) => {
                                for identity in self.cache.matches(*id) {
                                    let own = per_identity
                                        .then(|| self.identity_named_ports.get(identity))
                                        .flatten();
                                    match own {
                                        Some(own) => push(
                                            Peer::Identity(*identity),
                                            &Self::ports_of(&pr.ports, own),
                                        ),
                                        None => push(Peer::Identity(*identity), &ports),
                                    }
                                }
                            }
                            CompiledPeer::Prefixes(list) => {
                                for prefix in list {
                                    push(Peer::Prefix(*prefix), &ports);
                                }
                            }
                        }
                    }
                    if sources.is_some() {
                        let origin = EntryOrigin {
                            rule: rule.path.clone(),
                            section: Section::of(direction, deny),
                            index: element,
                        };
                        // The entries pushed for this element (entries only grow).
                        origins.resize(out.entries.len() - first_entry, origin);
                    }
                }
            }
            if let Some(sources) = sources.as_deref_mut() {
                sources.record(
                    key,
                    rule.ingress,
                    rule.egress,
                    &out.entries[first_entry..],
                    origins,
                );
            }
        }
        out.entries.sort_unstable();
        out.entries.dedup();
        out
    }
}

impl PolicyRepository {
    /// Resolves the DNS rules of an endpoint (for the DNS proxy, see [`crate::dns`]): per peer
    /// and port of its egress allow rules, the names it may look up there. A `toPorts` element
    /// with `rules.dns` gives its patterns; an allow without DNS rules (no `toPorts`, or an
    /// element without `rules`) gives an entry for every name, so that a peer and port allowed
    /// both with and without DNS rules allows every name, as Cilium's L7 wildcarding does.
    /// Named ports are looked up in the node-wide index only.
    pub fn resolve_dns(&self, endpoint: &EndpointInfo) -> DnsPolicy {
        let mut out = DnsPolicy::default();
        for rule in self.matching_rules(&endpoint.labels) {
            out.egress_enforced |= rule.egress;
            // sections[2] is the egress allow section (see SECTIONS).
            for pr in &rule.sections[2] {
                if pr.peers.is_empty() {
                    continue;
                }
                let peers = self.expand_peers(&pr.peers);
                let mut push = |ports: &[ResolvedPort], patterns: Option<&[String]>| {
                    for peer in &peers {
                        for (proto, range) in ports {
                            out.entries.push(DnsEntry {
                                peer: *peer,
                                proto: *proto,
                                ports: *range,
                                patterns: patterns.map(|p| p.iter().cloned().collect()),
                            });
                        }
                    }
                };
                // The ports of the elements without DNS rules: all ports minus, once each,
                // those of the elements with DNS rules.
                let mut plain = pr.ports.clone();
                for d in &pr.dns {
                    for spec in &d.ports {
                        if let Some(i) = plain.iter().position(|p| p == spec) {
                            plain.remove(i);
                        }
                    }
                    push(
                        &Self::ports_of(&d.ports, &self.egress_named_ports),
                        Some(&d.patterns),
                    );
                }
                if pr.ports.is_empty() || !plain.is_empty() {
                    push(&Self::ports_of(&plain, &self.egress_named_ports), None);
                }
            }
        }
        out.entries.sort_unstable();
        out.entries.dedup();
        out
    }

    /// The peers a compiled peer list stands for now.
    fn expand_peers(&self, peers: &[CompiledPeer]) -> Vec<Peer> {
        let mut out = Vec::new();
        for peer in peers {
            match peer {
                CompiledPeer::Any => out.push(Peer::Any),
                CompiledPeer::Selector(id) => {
                    out.extend(self.cache.matches(*id).iter().map(|i| Peer::Identity(*i)));
                }
                CompiledPeer::Prefixes(list) => out.extend(list.iter().map(|c| Peer::Prefix(*c))),
            }
        }
        out
    }
}

/// A policy that selects an endpoint, and the directions its rules enforce there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectingPolicy {
    /// The policy.
    pub key: PolicyKey,
    /// Whether one of its rules selecting the endpoint enforces ingress.
    pub ingress: bool,
    /// Whether one of its rules selecting the endpoint enforces egress.
    pub egress: bool,
}

/// Where an endpoint's resolved entries come from ([`PolicyRepository::resolve_with_sources`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySources {
    /// Every policy with a rule selecting the endpoint, in key order.
    pub policies: Vec<SelectingPolicy>,
    /// Each entry with the index in `policies` of the policy it comes from (an entry two
    /// policies give appears twice).
    pub entries: Vec<(PolicyEntry, usize)>,
    /// Where each element of `entries` was written in its policy (same index).
    pub origins: Vec<EntryOrigin>,
}

impl PolicySources {
    fn record(
        &mut self,
        key: &PolicyKey,
        ingress: bool,
        egress: bool,
        entries: &[PolicyEntry],
        origins: Vec<EntryOrigin>,
    ) {
        debug_assert_eq!(entries.len(), origins.len());
        let index = match self.policies.last_mut() {
            Some(last) if last.key == *key => {
                last.ingress |= ingress;
                last.egress |= egress;
                self.policies.len() - 1
            }
            _ => {
                self.policies.push(SelectingPolicy {
                    key: key.clone(),
                    ingress,
                    egress,
                });
                self.policies.len() - 1
            }
        };
        self.entries.extend(entries.iter().map(|e| (*e, index)));
        self.origins.extend(origins);
    }

    /// The policies with an entry of `deny` kind that covers the packet (see
    /// [`PolicyEntry::covers`]; a protocol without ports, `None` here, is covered only by
    /// entries for every protocol and port), each once, in key order.
    pub fn covering(
        &self,
        deny: bool,
        direction: Direction,
        peer: NumericIdentity,
        peer_ip: Option<IpAddr>,
        proto: Option<Proto>,
        port: u16,
    ) -> Vec<&PolicyKey> {
        let mut found: BTreeSet<usize> = BTreeSet::new();
        for (entry, index) in &self.entries {
            let covers = match proto {
                Some(proto) => entry.covers(direction, peer, peer_ip, proto, port),
                None => {
                    entry.proto.is_none()
                        && entry.ports.is_none()
                        && entry.covers(direction, peer, peer_ip, Proto::Tcp, 0)
                }
            };
            if entry.deny == deny && covers {
                found.insert(*index);
            }
        }
        found.into_iter().map(|i| &self.policies[i].key).collect()
    }

    /// The policies that enforce `direction` on the endpoint (make it default-deny there).
    pub fn enforcing(&self, direction: Direction) -> Vec<&PolicyKey> {
        self.policies
            .iter()
            .filter(|p| match direction {
                Direction::Ingress => p.ingress,
                Direction::Egress => p.egress,
            })
            .map(|p| &p.key)
            .collect()
    }
}
