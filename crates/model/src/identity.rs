//! Numeric security identities, reserved identities and per-cluster identity ranges.
//!
//! An identity is a 24-bit number (it travels in the VXLAN VNI). Ids below 256 are reserved and
//! have the same meaning in every cluster. With 255 clusters, cluster `c` owns
//! `[c << 16, ((c + 1) << 16) - 1]` (shift 15 with 511 clusters); cluster 0 owns `256..2^shift`.
//! Node-local identities (CIDR, FQDN) have bit 24 set and never leave their node.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::cluster::MaxConnectedClusters;

/// A numeric security identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NumericIdentity(pub u32);

/// Ids below this are reserved.
pub const MIN_ALLOCATABLE: u32 = 256;
/// Bit marking node-local identities.
pub const LOCAL_IDENTITY_FLAG: u32 = 1 << 24;
/// Largest cluster-scoped identity (24 bits).
pub const MAX_IDENTITY: u32 = (1 << 24) - 1;

/// The reserved identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservedIdentity {
    /// 0: unknown.
    Unknown = 0,
    /// 1: the local host.
    Host = 1,
    /// 2: anything outside the cluster.
    World = 2,
    /// 3: endpoints not managed by Plexus.
    Unmanaged = 3,
    /// 4: health-check endpoints.
    Health = 4,
    /// 5: endpoints whose identity is not resolved yet.
    Init = 5,
    /// 6: other nodes of the mesh.
    RemoteNode = 6,
    /// 7: the Kubernetes API server.
    KubeApiserver = 7,
    /// 8: the ingress proxy.
    Ingress = 8,
    /// 9: the IPv4 world.
    WorldIpv4 = 9,
    /// 10: the IPv6 world.
    WorldIpv6 = 10,
}

impl ReservedIdentity {
    /// Every reserved identity.
    pub const ALL: [ReservedIdentity; 11] = [
        Self::Unknown,
        Self::Host,
        Self::World,
        Self::Unmanaged,
        Self::Health,
        Self::Init,
        Self::RemoteNode,
        Self::KubeApiserver,
        Self::Ingress,
        Self::WorldIpv4,
        Self::WorldIpv6,
    ];

    /// The identity's number.
    pub fn id(self) -> NumericIdentity {
        NumericIdentity(self as u32)
    }

    /// The name used in labels (`reserved:<name>`) and listings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Host => "host",
            Self::World => "world",
            Self::Unmanaged => "unmanaged",
            Self::Health => "health",
            Self::Init => "init",
            Self::RemoteNode => "remote-node",
            Self::KubeApiserver => "kube-apiserver",
            Self::Ingress => "ingress",
            Self::WorldIpv4 => "world-ipv4",
            Self::WorldIpv6 => "world-ipv6",
        }
    }

    /// Looks a reserved identity up by number.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u32 == id)
    }

    /// Looks a reserved identity up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl NumericIdentity {
    /// Whether the id is reserved (below 256).
    pub fn is_reserved(self) -> bool {
        self.0 < MIN_ALLOCATABLE
    }

    /// Whether the id is node-local (bit 24 set).
    pub fn is_local(self) -> bool {
        self.0 & LOCAL_IDENTITY_FLAG != 0
    }

    /// The cluster id encoded in a cluster-scoped identity.
    pub fn cluster_id(self, max: MaxConnectedClusters) -> u32 {
        (self.0 & MAX_IDENTITY) >> max.identity_shift()
    }

    /// A received identity as this cluster uses it: a remote "host" (1) is a remote node (6).
    pub fn normalize_remote(self) -> Self {
        if self == ReservedIdentity::Host.id() {
            ReservedIdentity::RemoteNode.id()
        } else {
            self
        }
    }
}

impl fmt::Display for NumericIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for NumericIdentity {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id: u32 = s.parse().map_err(|_| ModelError::Identity {
            id: 0,
            reason: format!("{s:?} is not a number"),
        })?;
        if id > MAX_IDENTITY && id & LOCAL_IDENTITY_FLAG == 0 {
            return Err(ModelError::Identity {
                id,
                reason: "wider than 24 bits".into(),
            });
        }
        Ok(Self(id))
    }
}

/// The identities cluster `cluster_id` may allocate.
pub fn identity_range(cluster_id: u32, max: MaxConnectedClusters) -> RangeInclusive<u32> {
    let shift = max.identity_shift();
    if cluster_id == 0 {
        return MIN_ALLOCATABLE..=(1 << shift) - 1;
    }
    (cluster_id << shift)..=((cluster_id + 1) << shift) - 1
}

/// Checks an identity received from remote cluster `cluster_id`: reserved ids are unscoped and
/// accepted; node-local ids never travel; anything else must lie in the remote's range.
pub fn validate_remote_identity(
    id: u32,
    cluster_id: u32,
    max: MaxConnectedClusters,
) -> Result<(), ModelError> {
    let ident = NumericIdentity(id);
    if ident.is_local() {
        return Err(ModelError::Identity {
            id,
            reason: "node-local identities never leave their node".into(),
        });
    }
    if ident.is_reserved() {
        return Ok(());
    }
    let range = identity_range(cluster_id, max);
    if !range.contains(&id) {
        return Err(ModelError::Identity {
            id,
            reason: format!(
                "outside cluster {cluster_id}'s range {}..={}",
                range.start(),
                range.end()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use MaxConnectedClusters::*;

    #[test]
    fn ranges() {
        assert_eq!(identity_range(1, Max255), 65536..=131071);
        assert_eq!(identity_range(255, Max255), (255 << 16)..=16_777_215);
        assert_eq!(identity_range(0, Max255), 256..=65535);
        assert_eq!(identity_range(1, Max511), 32768..=65535);
        assert_eq!(identity_range(511, Max511), (511 << 15)..=16_777_215);
        assert_eq!(identity_range(0, Max511), 256..=32767);
        assert_eq!(NumericIdentity(65612).cluster_id(Max255), 1);
        assert_eq!(NumericIdentity(65612).cluster_id(Max511), 2);
    }

    #[test]
    fn remote_validation() {
        validate_remote_identity(65612, 1, Max255).unwrap();
        validate_remote_identity(2, 7, Max255).unwrap();
        let err = validate_remote_identity(131072, 1, Max255).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid identity 131072: outside cluster 1's range 65536..=131071"
        );
        assert!(validate_remote_identity(LOCAL_IDENTITY_FLAG | 5, 1, Max255).is_err());
        assert_eq!(
            NumericIdentity(1).normalize_remote(),
            ReservedIdentity::RemoteNode.id()
        );
        assert_eq!(
            NumericIdentity(70000).normalize_remote(),
            NumericIdentity(70000)
        );
    }

    #[test]
    fn reserved_names() {
        assert_eq!(
            ReservedIdentity::from_name("remote-node"),
            Some(ReservedIdentity::RemoteNode)
        );
        assert_eq!(
            ReservedIdentity::from_id(7).map(|r| r.name()),
            Some("kube-apiserver")
        );
        assert!(ReservedIdentity::ALL.iter().all(|r| r.id().is_reserved()));
        assert!(
            "16777216".parse::<NumericIdentity>().is_ok(),
            "local flag alone"
        );
        assert!("x".parse::<NumericIdentity>().is_err());
    }
}
