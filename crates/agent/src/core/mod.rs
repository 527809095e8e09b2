//! The node's logic as a pure fold: inputs in, the desired datapath state out.
//!
//! [`NodeCore`] holds everything one node knows (its endpoints; its cluster's nodes, ip ->
//! identity entries and identities; every remote cluster's contribution; services and their
//! backends; policies) and folds each [`Input`] into it with [`NodeCore::step`]. It does no IO
//! and reads no clock: the IO shell ([`crate::shell`]) pumps inputs in from the kvstore, the
//! remote-cluster manager and the endpoint manager, then takes the [`Output`] with
//! [`NodeCore::take_output`] and applies it to the datapath and the kernel.
//!
//! What the output holds:
//! - the ipcache as a stream of [`Change`]s to its effective view, in order (an entry whose
//!   effective value did not change produces nothing, so a remote that reconnects and lists the
//!   same entries again causes no datapath write; see [`remotes`]);
//! - route changes (native routing: every other node's pod CIDR through its underlay address);
//! - the load balancer's whole desired table when anything it depends on changed
//!   ([`services`]);
//! - every local endpoint's desired policy when anything it depends on changed ([`policy`]);
//!   the node-local identities of the CIDRs policies name enter the ipcache first;
//! - with WireGuard on, the whole desired peer set when the nodes changed ([`encryption`]);
//! - for the DNS proxy, the endpoints with DNS rules and their rules, and the `toFQDNs`
//!   patterns, when they changed; what the proxy learns comes back as [`Input::Fqdn`].
//!
//! Module map: [`ipcache`] (sources of ipcache entries and their precedence, routes),
//! [`guard`] (what a remote may claim: only addresses of its own nodes, never ours or another
//! remote's; every remote event passes it first), [`remotes`] (remote clusters: cluster id
//! from their config, stale entries after a reconnect, drain), [`services`] (backends across clusters: global, shared, affinity with its
//! fallback, unreachable clusters), [`policy`] (selector cache, per-endpoint resolution, CIDR
//! identities), [`encryption`] (WireGuard peers from the nodes' keys).

pub mod encryption;
pub mod guard;
pub mod ipcache;
pub mod policy;
pub mod remotes;
pub mod services;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use plexus_clustermesh::remote_cluster::{MeshEvent, RemoteEvent};
use plexus_datapath::policy as dp;
use plexus_datapath::{Frontend, LbService, Prefix, RoutingMode};
use plexus_ipcache::Change;
use plexus_loadbalancer::cluster_service::Backends;
use plexus_loadbalancer::service::Service;
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::labels::Labels;
use plexus_model::node::Node;
use plexus_policy::Policy;

pub use self::encryption::{WireguardPeer, WireguardPeers};
pub use self::ipcache::{IpcacheState, RouteChange};
pub use self::policy::{CIDR_IDENTITY_MAX, DnsDesired, FQDN_IDENTITIES, PolicyState, PortSpec};
pub use self::remotes::RemoteState;
pub use self::services::ServiceState;

/// What a node is: fixed for the agent's lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// This cluster's name.
    pub cluster: String,
    /// This cluster's id.
    pub cluster_id: u16,
    /// This node's name.
    pub node_name: String,
    /// This node's underlay address.
    pub node_ip: Ipv4Addr,
    /// How packets reach other nodes.
    pub routing: RoutingMode,
    /// `policy-default-local-cluster`.
    pub policy_default_local_cluster: bool,
    /// WireGuard (`enable-wireguard`) and its strict mode.
    pub encryption: plexus_datapath::Encryption,
}

/// One endpoint of this node, as the core needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// Endpoint id on this node.
    pub id: u16,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its security identity.
    pub identity: u32,
    /// Its named container ports.
    pub named_ports: BTreeMap<String, PortSpec>,
    /// Its pod's namespace (empty when not known), for flows.
    pub namespace: String,
    /// Its pod's name (empty when not known), for flows.
    pub pod_name: String,
}

/// Everything the core is fed.
#[derive(Clone, Debug)]
pub enum Input {
    /// A local endpoint appeared or changed.
    EndpointUpsert(LocalEndpoint),
    /// A local endpoint (by id) is gone.
    EndpointDelete(u16),
    /// A node of this cluster appeared or changed (this node included).
    NodeUpsert(Node),
    /// A node of this cluster (by name) is gone.
    NodeDelete(String),
    /// This cluster's nodes are listed (the node store's first listing is complete).
    NodesSynced,
    /// An ip -> identity entry of this cluster, by its key relative to the prefix.
    IpUpsert {
        /// `<ip>` or `<ip>/<len>`.
        key: String,
        /// The entry.
        pair: IpIdentityPair,
    },
    /// An ip -> identity entry of this cluster is gone.
    IpDelete(String),
    /// An identity of this cluster.
    IdentityUpsert {
        /// Its number.
        id: u32,
        /// Its labels.
        labels: Labels,
    },
    /// An identity of this cluster is gone.
    IdentityDelete(u32),
    /// One remote cluster's event, from the remote-cluster manager.
    Remote(MeshEvent),
    /// The remote clusters' connectivity, as the remote-cluster manager reports it.
    MeshStatus {
        /// The remote clusters that are connected (heartbeat fresh).
        reachable: BTreeSet<String>,
        /// Whether every configured remote has synced.
        all_ready: bool,
    },
    /// The time a restarted agent waits for its remotes before programming services passed.
    ServiceGraceExpired,
    /// A Service object, by its store key.
    ServiceUpsert {
        /// `<namespace>/<name>`.
        key: String,
        /// The object.
        service: Box<Service>,
    },
    /// A Service object is gone (or was refused).
    ServiceDelete(String),
    /// The Service objects are listed.
    ServicesSynced,
    /// The computed backends of a service, by its store key.
    BackendsUpsert {
        /// `<namespace>/<name>`.
        key: String,
        /// The backends.
        backends: Backends,
    },
    /// The backends of a service are gone.
    BackendsDelete(String),
    /// The backends are listed.
    BackendsSynced,
    /// A policy object, by its store key.
    PolicyUpsert {
        /// The store key.
        key: String,
        /// The checked policy.
        policy: Box<Policy>,
        /// The object as applied (for `policy get`).
        object: serde_json::Value,
    },
    /// A policy object is gone (or was refused).
    PolicyDelete(String),
    /// The policy objects are listed.
    PoliciesSynced,
    /// The policy prefixes a previous agent left in the datapath, with their CIDR identities
    /// (read at start): a prefix still named keeps its identity, so a restart renumbers
    /// nothing and no address loses its CIDR identity while entries are rewritten.
    PolicyCidrsInDatapath(BTreeMap<Prefix, u32>),
    /// What the DNS proxy learned for `toFQDNs`, in the order to apply: identities of selector
    /// sets (node-local, into the selector cache), their addresses (into the ipcache), names.
    Fqdn(Vec<plexus_dnsproxy::Change>),
}

/// What the IO shell must apply, in this order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// Changes to the effective ipcache, in order.
    pub ipcache: Vec<Change>,
    /// Changes to the routes to other nodes' pod CIDRs.
    pub routes: Vec<RouteChange>,
    /// Changes to the DNS proxy's forward routes (other nodes' pod CIDRs via their underlay
    /// addresses, for the table of the proxy's forwarded queries).
    pub proxy_routes: Vec<RouteChange>,
    /// The whole desired load-balancer table, when it may have changed.
    pub services: Option<BTreeMap<Frontend, LbService>>,
    /// The desired policy of every local endpoint, when it may have changed.
    pub policies: Option<BTreeMap<u16, dp::EndpointPolicy>>,
    /// With `policies`: every prefix the resolved policies name, with its node-local CIDR
    /// identity (the datapath's policy prefix map, so CIDR rules match pods' addresses too).
    pub policy_cidrs: Option<BTreeMap<Prefix, u32>>,
    /// With WireGuard on: the whole desired peer set, when the nodes changed.
    pub wireguard_peers: Option<WireguardPeers>,
    /// With `policies`: what the DNS proxy needs (endpoints with DNS rules and their rules,
    /// `toFQDNs` patterns), when it changed.
    pub dns: Option<DnsDesired>,
}

impl Output {
    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.ipcache.is_empty()
            && self.routes.is_empty()
            && self.proxy_routes.is_empty()
            && self.services.is_none()
            && self.policies.is_none()
            && self.policy_cidrs.is_none()
            && self.wireguard_peers.is_none()
            && self.dns.is_none()
    }
}

/// The node's state. See the module documentation.
#[derive(Debug)]
pub struct NodeCore {
    config: CoreConfig,
    ipcache: IpcacheState,
    remotes: BTreeMap<String, RemoteState>,
    /// What remotes may claim; their events pass it before they are folded.
    guard: guard::Guard,
    services: ServiceState,
    policy: PolicyState,
    /// Local endpoints by id.
    endpoints: BTreeMap<u16, LocalEndpoint>,
    /// Whether the nodes changed since the WireGuard peers were last output.
    peers_dirty: bool,
    /// Whether this cluster's nodes are listed.
    local_nodes_synced: bool,
    /// Remote clusters drained (their configuration removed) since this agent started and not
    /// configured again.
    drained: BTreeSet<String>,
    /// What the DNS proxy was last given.
    dns_given: Option<DnsDesired>,
    /// The names the DNS proxy learned, with their addresses (for status).
    fqdn_names: BTreeMap<String, BTreeSet<std::net::IpAddr>>,
    /// Inputs folded so far.
    seq: u64,
}

impl NodeCore {
    /// A node that knows nothing yet.
    pub fn new(config: CoreConfig) -> Self {
        Self {
            ipcache: IpcacheState::new(&config),
            services: ServiceState::new(&config.cluster),
            policy: PolicyState::new(&config.cluster, config.policy_default_local_cluster),
            remotes: BTreeMap::new(),
            guard: guard::Guard::new(),
            endpoints: BTreeMap::new(),
            // The first output carries the peer set, even an empty one.
            peers_dirty: true,
            local_nodes_synced: false,
            drained: BTreeSet::new(),
            dns_given: None,
            fqdn_names: BTreeMap::new(),
            seq: 0,
            config,
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// How many inputs were folded so far (the shell reports which it has applied).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Folds one input in.
    pub fn step(&mut self, input: Input) {
        self.seq += 1;
        let own_cluster = self.config.cluster.clone();
        if matches!(
            &input,
            Input::NodeUpsert(_)
                | Input::NodeDelete(_)
                | Input::NodesSynced
                | Input::Remote(MeshEvent {
                    event: RemoteEvent::NodeUpsert(_)
                        | RemoteEvent::NodeDelete(_)
                        | RemoteEvent::ClusterConfig { .. }
                        | RemoteEvent::Synced
                        | RemoteEvent::Drained,
                    ..
                })
        ) {
            self.peers_dirty = true;
        }
        if let Input::Remote(MeshEvent { cluster, event }) = &input {
            match event {
                RemoteEvent::Drained => {
                    self.drained.insert(cluster.clone());
                }
                RemoteEvent::ClusterConfig { .. } => {
                    self.drained.remove(cluster);
                }
                _ => {}
            }
        }
        match input {
            Input::EndpointUpsert(ep) => {
                self.ipcache.local_endpoint(ep.ip, Some(ep.identity));
                if self.endpoints.get(&ep.id) != Some(&ep) {
                    self.policy.mark_dirty();
                }
                self.endpoints.insert(ep.id, ep);
            }
            Input::EndpointDelete(id) => {
                if let Some(ep) = self.endpoints.remove(&id) {
                    self.ipcache.local_endpoint(ep.ip, None);
                    self.policy.mark_dirty();
                }
            }
            Input::NodeUpsert(node) => {
                let id = self.config.cluster_id;
                self.ipcache.node_upsert(&own_cluster, id, &node);
                let unblocked = self.guard.local_node_upsert(&node);
                self.fold_remote(unblocked);
            }
            Input::NodeDelete(name) => {
                self.ipcache.node_delete(&own_cluster, &name);
                let unblocked = self.guard.local_node_delete(&name);
                self.fold_remote(unblocked);
            }
            Input::NodesSynced => self.local_nodes_synced = true,
            Input::IpUpsert { key, pair } => {
                self.policy
                    .ip_ports_upsert(&own_cluster, &key, pair.id, &pair.named_ports);
                self.ipcache.cluster_ip_upsert(&key, &pair);
            }
            Input::IpDelete(key) => {
                self.policy.ip_ports_delete(&own_cluster, &key);
                self.ipcache.cluster_ip_delete(&key);
            }
            Input::IdentityUpsert { id, labels } => {
                self.policy.identity_upsert(id, &own_cluster, labels)
            }
            Input::IdentityDelete(id) => self.policy.identity_delete(id),
            Input::Remote(event) => {
                let passed = self.guard.remote(event);
                self.fold_remote(passed);
            }
            Input::MeshStatus {
                reachable,
                all_ready,
            } => self.services.set_mesh_status(reachable, all_ready),
            Input::ServiceGraceExpired => self.services.grace_expired(),
            Input::ServiceUpsert { key, service } => self.services.service_upsert(key, *service),
            Input::ServiceDelete(key) => self.services.service_delete(&key),
            Input::ServicesSynced => self.services.services_synced(),
            Input::BackendsUpsert { key, backends } => self.services.backends_upsert(key, backends),
            Input::BackendsDelete(key) => self.services.backends_delete(&key),
            Input::BackendsSynced => self.services.backends_synced(),
            Input::PolicyUpsert {
                key,
                policy,
                object,
            } => self.policy.policy_upsert(key, *policy, object),
            Input::PolicyDelete(key) => self.policy.policy_delete(&key),
            Input::PoliciesSynced => self.policy.policies_synced(),
            Input::PolicyCidrsInDatapath(cidrs) => self.policy.restore_cidr_ids(&cidrs),
            Input::Fqdn(changes) => self.fqdn(changes),
        }
    }

    /// Folds remote events the guard passed.
    fn fold_remote(&mut self, events: Vec<MeshEvent>) {
        for event in events {
            remotes::fold(
                &mut self.remotes,
                &mut self.ipcache,
                &mut self.services,
                &mut self.policy,
                event,
            );
        }
    }

    /// What the guard refused of each remote so far, by reason label.
    pub fn refused(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.guard.refused()
    }

    fn fqdn(&mut self, changes: Vec<plexus_dnsproxy::Change>) {
        use plexus_dnsproxy::{Change, IdentityChange};
        let own_cluster = self.config.cluster.clone();
        for change in changes {
            match change {
                Change::Identity(IdentityChange::Allocated { id, labels }) => {
                    self.policy.identity_upsert(id.0, &own_cluster, labels);
                }
                Change::Identity(IdentityChange::IpcacheUpsert { ip, id }) => {
                    self.ipcache.fqdn_address(ip, Some(id.0));
                }
                Change::Identity(IdentityChange::IpcacheDelete { ip }) => {
                    self.ipcache.fqdn_address(ip, None);
                }
                Change::Identity(IdentityChange::Released { id }) => {
                    self.policy.identity_delete(id.0);
                }
                Change::Name { name, addresses } => {
                    if addresses.is_empty() {
                        self.fqdn_names.remove(&name);
                    } else {
                        self.fqdn_names.insert(name, addresses);
                    }
                }
            }
        }
    }

    /// The names the DNS proxy learned for `toFQDNs` selectors, with their addresses.
    pub fn fqdn_names(&self) -> &BTreeMap<String, BTreeSet<std::net::IpAddr>> {
        &self.fqdn_names
    }

    /// Folds several inputs in.
    pub fn step_all(&mut self, inputs: impl IntoIterator<Item = Input>) {
        for input in inputs {
            self.step(input);
        }
    }

    /// What changed since the last call: computes the services' and policies' desired state
    /// when their inputs changed (and they may be programmed: their objects are listed).
    pub fn take_output(&mut self) -> Output {
        let services = self.services.take_desired();
        let (policies, policy_cidrs) = match self.policy.take_desired(&self.endpoints) {
            Some((policies, cidrs)) => {
                // The prefixes' identities enter the ipcache before rules name them.
                self.ipcache.set_policy_cidrs(cidrs.clone());
                (Some(policies), Some(cidrs))
            }
            None => (None, None),
        };
        let dns = policies
            .is_some()
            .then(|| self.policy.dns())
            .filter(|d| self.dns_given.as_ref() != Some(*d))
            .cloned();
        if let Some(d) = &dns {
            self.dns_given = Some(d.clone());
        }
        let (ipcache, routes) = self.ipcache.take_changes();
        let proxy_routes = self.ipcache.take_proxy_routes();
        let wireguard_peers = (self.config.encryption.enabled
            && std::mem::take(&mut self.peers_dirty))
        .then(|| self.wireguard_peers());
        Output {
            ipcache,
            routes,
            proxy_routes,
            services,
            policies,
            policy_cidrs,
            wireguard_peers,
            dns,
        }
    }

    /// The clusters whose WireGuard peers may be removed when the core does not want them:
    /// those whose nodes it has listed in full since the agent started (this cluster once its
    /// nodes are listed, a remote once it synced) and the remotes drained since. A restarted
    /// agent keeps the device's other peers until their cluster is listed, so a restart (or a
    /// remote that is unreachable meanwhile) never tears down a working tunnel.
    pub fn settled_clusters(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .remotes
            .iter()
            .filter(|(_, r)| r.synced)
            .map(|(c, _)| c.clone())
            .collect();
        out.extend(self.drained.iter().cloned());
        if self.local_nodes_synced {
            out.insert(self.config.cluster.clone());
        }
        out
    }

    /// The WireGuard peers this node wants now (see [`encryption`]), whether or not WireGuard
    /// is on.
    pub fn wireguard_peers(&self) -> WireguardPeers {
        encryption::desired_peers(self.config.routing, self.ipcache.nodes(), |c, n| {
            self.ipcache.is_self(c, n)
        })
    }

    /// The ipcache's sources and effective view.
    pub fn ipcache(&self) -> &IpcacheState {
        &self.ipcache
    }

    /// The services and their backends.
    pub fn services(&self) -> &ServiceState {
        &self.services
    }

    /// Policies, identities and resolved endpoint policies.
    pub fn policy(&self) -> &PolicyState {
        &self.policy
    }

    /// What the core knows of each remote cluster.
    pub fn remotes(&self) -> &BTreeMap<String, RemoteState> {
        &self.remotes
    }

    /// The local endpoints by id.
    pub fn endpoints(&self) -> &BTreeMap<u16, LocalEndpoint> {
        &self.endpoints
    }

    /// The desired effective ipcache (what the datapath must hold once the output is applied).
    pub fn desired_ipcache(&self) -> BTreeMap<Prefix, plexus_datapath::IpcacheValue> {
        self.ipcache.effective()
    }
}
