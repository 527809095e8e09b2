//! Policy entities (`fromEntities`/`toEntities`) and the identities they stand for.
//!
//! Entities are Cilium's: each is a set of selectors over identity labels, so that identities
//! arriving later (a remote cluster's, a CIDR identity labelled `reserved:world`) are picked up
//! by the [`crate::cache::SelectorCache`] like any other selector:
//! - `all`: every peer, inside or outside the mesh (the wildcard identity 0 in the datapath);
//! - `world`: `reserved:world` (2) and its per-family variants `world-ipv4` (9), `world-ipv6` (10);
//! - `cluster`: the *local* cluster, as in Cilium: every identity labelled
//!   `io.cilium.k8s.policy.cluster=<local cluster>` plus the reserved `host`, `remote-node`,
//!   `init`, `health`, `unmanaged`, `ingress` and `kube-apiserver`. Remote clusters' endpoints are
//!   not in it; select them with endpoint selectors on the cluster label;
//! - `host`, `remote-node`, `kube-apiserver`, `health`, `init`, `unmanaged`, `ingress`,
//!   `world-ipv4`, `world-ipv6`: the reserved identity of that name.

use plexus_model::identity::ReservedIdentity;
use plexus_model::labels::{CLUSTER_LABEL, SOURCE_K8S, SOURCE_RESERVED};

use crate::selector::{Requirement, Selector};

/// A policy entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// Everything.
    All,
    /// Outside the mesh.
    World,
    /// Outside the mesh, IPv4.
    WorldIpv4,
    /// Outside the mesh, IPv6.
    WorldIpv6,
    /// The local cluster.
    Cluster,
    /// The local host.
    Host,
    /// Other nodes.
    RemoteNode,
    /// The Kubernetes API server.
    KubeApiserver,
    /// Health endpoints.
    Health,
    /// Endpoints whose identity is not resolved yet.
    Init,
    /// Endpoints not managed by Plexus.
    Unmanaged,
    /// The ingress proxy.
    Ingress,
}

/// How an entity is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntityPeers {
    /// Every peer (identity 0 in the datapath).
    Any,
    /// The identities any of these selectors match.
    Selectors(Vec<Selector>),
}

const ALL: [Entity; 12] = [
    Entity::All,
    Entity::World,
    Entity::WorldIpv4,
    Entity::WorldIpv6,
    Entity::Cluster,
    Entity::Host,
    Entity::RemoteNode,
    Entity::KubeApiserver,
    Entity::Health,
    Entity::Init,
    Entity::Unmanaged,
    Entity::Ingress,
];

fn reserved(r: ReservedIdentity) -> Selector {
    Selector::new([Requirement::exists(&format!(
        "{SOURCE_RESERVED}:{}",
        r.name()
    ))])
}

impl Entity {
    /// The name used in policies.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::World => "world",
            Self::WorldIpv4 => "world-ipv4",
            Self::WorldIpv6 => "world-ipv6",
            Self::Cluster => "cluster",
            Self::Host => "host",
            Self::RemoteNode => "remote-node",
            Self::KubeApiserver => "kube-apiserver",
            Self::Health => "health",
            Self::Init => "init",
            Self::Unmanaged => "unmanaged",
            Self::Ingress => "ingress",
        }
    }

    /// Every entity name.
    pub fn names() -> Vec<&'static str> {
        ALL.iter().map(|e| e.name()).collect()
    }

    /// Looks an entity up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        ALL.into_iter().find(|e| e.name() == name)
    }

    /// The selectors standing for the entity in cluster `local_cluster`.
    pub fn peers(self, local_cluster: &str) -> EntityPeers {
        use ReservedIdentity as R;
        let one = |r| EntityPeers::Selectors(vec![reserved(r)]);
        match self {
            Self::All => EntityPeers::Any,
            Self::World => EntityPeers::Selectors(vec![
                reserved(R::World),
                reserved(R::WorldIpv4),
                reserved(R::WorldIpv6),
            ]),
            Self::WorldIpv4 => one(R::WorldIpv4),
            Self::WorldIpv6 => one(R::WorldIpv6),
            Self::Host => one(R::Host),
            Self::RemoteNode => one(R::RemoteNode),
            Self::KubeApiserver => one(R::KubeApiserver),
            Self::Health => one(R::Health),
            Self::Init => one(R::Init),
            Self::Unmanaged => one(R::Unmanaged),
            Self::Ingress => one(R::Ingress),
            Self::Cluster => {
                let mut v: Vec<Selector> = [
                    R::Host,
                    R::RemoteNode,
                    R::Init,
                    R::Health,
                    R::Unmanaged,
                    R::Ingress,
                    R::KubeApiserver,
                ]
                .into_iter()
                .map(reserved)
                .collect();
                v.push(Selector::from_labels([(
                    format!("{SOURCE_K8S}:{CLUSTER_LABEL}").as_str(),
                    local_cluster,
                )]));
                EntityPeers::Selectors(v)
            }
        }
    }
}
