//! What a cluster accepts from a remote cluster (steps 2 and 5 of the consumer protocol).
//!
//! - [`ClusterIds`] reserves cluster ids among connected remotes: a second cluster claiming an id
//!   already in use (or ours) is refused with an error naming both clusters.
//! - [`check_remote_config`] validates a remote's `CiliumClusterConfig` against the local mesh
//!   settings.
//! - The decoders turn raw values into validated entries for a `WatchStore`: the remote's nodes
//!   must carry its name and id and match their keys; ipcache entries must match their keys and
//!   carry identities of the remote's range (or reserved ones); identities must lie in the
//!   remote's range and carry its cluster label; services must match their keys and the remote.
//!   A value that fails is rejected (and counted by the store); nothing a remote sends can make
//!   the consumer fail.
//! - Each refusal's message starts with its [`RejectReason`] (`foreign-cluster: ...`), so that
//!   status and metrics count refusals by reason ([`RejectReason::of`]); [`bounded`] refuses
//!   values larger than a limit before they are parsed.

use std::collections::BTreeMap;
use std::sync::Arc;

use plexus_kvstore::DecodeFn;
use plexus_model::ModelError;
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::config::CiliumClusterConfig;
use plexus_model::identity::{NumericIdentity, identity_range};
use plexus_model::ipcache::IpIdentityPair;
use plexus_model::keys;
use plexus_model::labels::Labels;
use plexus_model::node::Node;
use plexus_model::service::ClusterService;

/// Why a value (or part of one) of a remote cluster was refused: the label refusals are
/// counted by in `clustermesh status` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// Malformed, or not matching its key.
    Invalid,
    /// Larger than the per-remote value size limit.
    ValueTooLarge,
    /// Claims another cluster: a foreign cluster name or label, an id outside the remote's range.
    ForeignCluster,
    /// Beyond the per-remote entry limit.
    EntryLimit,
    /// An ipcache entry for an address the remote does not own (outside its nodes' pod CIDRs
    /// and addresses).
    AddressNotOwned,
    /// A node whose pod CIDR or address overlaps ours or another cluster's.
    CidrConflict,
    /// A service backend outside the remote's nodes' pod CIDRs and addresses.
    BackendNotOwned,
}

impl RejectReason {
    /// Every reason.
    pub const ALL: [RejectReason; 7] = [
        Self::Invalid,
        Self::ValueTooLarge,
        Self::ForeignCluster,
        Self::EntryLimit,
        Self::AddressNotOwned,
        Self::CidrConflict,
        Self::BackendNotOwned,
    ];

    /// Its label (kebab-case).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::ValueTooLarge => "value-too-large",
            Self::ForeignCluster => "foreign-cluster",
            Self::EntryLimit => "entry-limit",
            Self::AddressNotOwned => "address-not-owned",
            Self::CidrConflict => "cidr-conflict",
            Self::BackendNotOwned => "backend-not-owned",
        }
    }

    /// The reason a refusal message starts with (`<label>: ...`); `Invalid` otherwise.
    pub fn of(message: &str) -> Self {
        let label = message.split(':').next().unwrap_or_default();
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == label)
            .unwrap_or(Self::Invalid)
    }

    /// `message` prefixed with this reason's label.
    pub fn tag(self, message: impl std::fmt::Display) -> String {
        format!("{}: {message}", self.as_str())
    }
}

/// Refuses values longer than `max` bytes before `decode` parses them.
pub fn bounded<T: 'static>(decode: DecodeFn<T>, max: usize) -> DecodeFn<T> {
    Box::new(move |key, raw| {
        if raw.len() > max {
            return Err(RejectReason::ValueTooLarge
                .tag(format!("{key}: value of {} bytes, limit {max}", raw.len())));
        }
        decode(key, raw)
    })
}

/// Why a remote cluster cannot be connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteConfigError {
    /// The id is already used by another cluster of the mesh.
    #[error("cluster {cluster:?} has id {id}, already used by cluster {used_by:?}")]
    IdInUse {
        /// The cluster being connected.
        cluster: String,
        /// Its id.
        id: u32,
        /// Who has it.
        used_by: String,
    },
    /// The remote's configuration is not acceptable.
    #[error(transparent)]
    Invalid(#[from] ModelError),
}

/// Cluster ids in use: ours and those of connected remotes.
#[derive(Clone, Debug)]
pub struct ClusterIds {
    by_id: BTreeMap<u32, String>,
}

impl ClusterIds {
    /// A registry holding the local cluster's id.
    pub fn new(local: &ClusterInfo) -> Self {
        Self {
            by_id: BTreeMap::from([(local.id, local.name.clone())]),
        }
    }

    /// Reserves `id` for `cluster`; a cluster may re-reserve its own id.
    pub fn reserve(&mut self, cluster: &str, id: u32) -> Result<(), RemoteConfigError> {
        match self.by_id.get(&id) {
            Some(owner) if owner != cluster => Err(RemoteConfigError::IdInUse {
                cluster: cluster.to_string(),
                id,
                used_by: owner.clone(),
            }),
            _ => {
                self.by_id.retain(|_, owner| owner != cluster);
                self.by_id.insert(id, cluster.to_string());
                Ok(())
            }
        }
    }

    /// Releases whatever id `cluster` holds.
    pub fn release(&mut self, cluster: &str) {
        self.by_id.retain(|_, owner| owner != cluster);
    }
}

/// Validates remote `name`'s configuration against the local cluster and reserves its id.
pub fn check_remote_config(
    local: &ClusterInfo,
    name: &str,
    config: &CiliumClusterConfig,
    ids: &mut ClusterIds,
) -> Result<ClusterInfo, RemoteConfigError> {
    config.validate(name, local.max)?;
    let remote = ClusterInfo::new(name, config.id, local.max)?;
    ids.reserve(name, config.id)?;
    Ok(remote)
}

/// A validated identity of a remote cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteIdentity {
    /// Its number.
    pub id: NumericIdentity,
    /// Its labels.
    pub labels: Labels,
}

/// Decodes the remote's nodes (relative key `<node>`).
pub fn node_decoder(remote: ClusterInfo) -> DecodeFn<Node> {
    Box::new(move |key, raw| {
        keys::parse_node_key(key).map_err(|e| e.to_string())?;
        let node = Node::from_json(key, raw).map_err(|e| e.to_string())?;
        node.validate(&remote.name, remote.id, key)
            .map_err(|e| RejectReason::ForeignCluster.tag(e))?;
        Ok(node)
    })
}

/// Decodes the remote's ipcache entries (relative key `<ip>` or `<ip>/<len>`).
pub fn ipcache_decoder(remote: ClusterInfo) -> DecodeFn<IpIdentityPair> {
    Box::new(move |key, raw| {
        let pair = IpIdentityPair::from_json(key, raw).map_err(|e| e.to_string())?;
        pair.validate_remote(key, remote.id, remote.max)
            .map_err(|e| {
                let e = e.to_string();
                if e.contains("range") {
                    RejectReason::ForeignCluster.tag(e)
                } else {
                    e
                }
            })?;
        Ok(pair)
    })
}

/// Decodes the remote's identities (relative key `<id>`, value the label string).
pub fn identity_decoder(remote: ClusterInfo) -> DecodeFn<RemoteIdentity> {
    Box::new(move |key, raw| {
        let id = keys::parse_identity_id_key(key).map_err(|e| e.to_string())?;
        check_identity_range(id, &remote.name, remote.id, remote.max)?;
        let text =
            std::str::from_utf8(raw).map_err(|_| format!("identity {id}: labels are not UTF-8"))?;
        let labels = Labels::parse(text).map_err(|e| format!("identity {id}: {e}"))?;
        match labels.cluster() {
            Some(c) if c == remote.name => Ok(RemoteIdentity {
                id: NumericIdentity(id),
                labels,
            }),
            other => Err(RejectReason::ForeignCluster.tag(format!(
                "identity {id}: cluster label is {other:?}, expected {:?}",
                remote.name
            ))),
        }
    })
}

fn check_identity_range(
    id: u32,
    name: &str,
    cluster_id: u32,
    max: MaxConnectedClusters,
) -> Result<(), String> {
    let range = identity_range(cluster_id, max);
    if range.contains(&id) {
        Ok(())
    } else {
        Err(RejectReason::ForeignCluster.tag(format!(
            "identity {id}: outside cluster {name:?}'s range {}..={}",
            range.start(),
            range.end()
        )))
    }
}

/// Decodes the remote's global services (relative key `<namespace>/<name>`), once: the result
/// is shared by whoever holds it.
pub fn service_decoder(remote: ClusterInfo) -> DecodeFn<Arc<ClusterService>> {
    Box::new(move |key, raw| {
        keys::parse_service_key(key).map_err(|e| e.to_string())?;
        let svc = ClusterService::from_json(key, raw).map_err(|e| e.to_string())?;
        svc.validate(&remote.name, remote.id, key)
            .map_err(|e| RejectReason::ForeignCluster.tag(e))?;
        Ok(Arc::new(svc))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, id: u32) -> ClusterInfo {
        ClusterInfo::new(name, id, MaxConnectedClusters::Max255).unwrap()
    }

    #[test]
    fn ids_are_reserved_once() {
        let mut ids = ClusterIds::new(&c("c1", 1));
        ids.reserve("c2", 2).unwrap();
        ids.reserve("c2", 2).unwrap();
        let err = ids.reserve("c9", 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster \"c9\" has id 2, already used by cluster \"c2\""
        );
        assert!(ids.reserve("c9", 1).is_err(), "our own id");
        ids.reserve("c2", 3).unwrap();
        ids.reserve("c9", 2).unwrap();
        ids.release("c9");
        ids.reserve("c4", 2).unwrap();
    }

    #[test]
    fn remote_configs_are_checked() {
        let local = c("c1", 1);
        let mut ids = ClusterIds::new(&local);
        let remote = check_remote_config(
            &local,
            "c2",
            &CiliumClusterConfig::new(2, MaxConnectedClusters::Max255),
            &mut ids,
        )
        .unwrap();
        assert_eq!(remote, c("c2", 2));
        let err = check_remote_config(
            &local,
            "c3",
            &CiliumClusterConfig::new(2, MaxConnectedClusters::Max255),
            &mut ids,
        )
        .unwrap_err();
        assert!(matches!(err, RemoteConfigError::IdInUse { .. }));
        let err = check_remote_config(
            &local,
            "c4",
            &CiliumClusterConfig::new(4, MaxConnectedClusters::Max511),
            &mut ids,
        )
        .unwrap_err();
        assert!(err.to_string().contains("maxConnectedClusters"), "{err}");
    }

    #[test]
    fn decoders_accept_the_remote_and_reject_impostors() {
        let remote = c("cluster1", 1);
        let node = br#"{"Name":"node-1","Cluster":"cluster1","ClusterID":1}"#;
        assert!(node_decoder(remote.clone())("node-1", node).is_ok());
        let err = node_decoder(c("cluster2", 2))("node-1", node).unwrap_err();
        assert!(err.contains("field \"Cluster\""), "{err}");
        assert!(
            node_decoder(remote.clone())("node-1", b"{not json")
                .unwrap_err()
                .contains("malformed JSON")
        );

        let ident = identity_decoder(remote.clone());
        let labels = b"k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cluster1;";
        assert_eq!(ident("65612", labels).unwrap().id, NumericIdentity(65612));
        assert!(
            ident("131072", labels)
                .unwrap_err()
                .contains("outside cluster \"cluster1\"'s range")
        );
        assert!(
            ident(
                "65612",
                b"k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cluster2;"
            )
            .unwrap_err()
            .contains("cluster label")
        );
        assert!(ident("65612", b"k8s:app=x;").is_err());
        assert!(ident("abc", labels).is_err());

        let ip = ipcache_decoder(remote.clone());
        let entry = br#"{"IP":"10.10.1.61","Mask":null,"HostIP":"172.18.0.3","ID":65612,"Key":0,"Metadata":""}"#;
        assert!(ip("10.10.1.61", entry).is_ok());
        assert!(ip("10.10.1.62", entry).is_err());
        let foreign =
            br#"{"IP":"10.10.1.61","Mask":null,"HostIP":"","ID":131073,"Key":0,"Metadata":""}"#;
        assert!(
            ip("10.10.1.61", foreign)
                .unwrap_err()
                .contains("outside cluster 1's range")
        );

        let svc = br#"{"cluster":"cluster1","namespace":"default","name":"web","frontends":{},"backends":{},"labels":{},"selector":{},"includeExternal":true,"shared":true,"clusterID":1}"#;
        assert!(service_decoder(remote.clone())("default/web", svc).is_ok());
        assert!(service_decoder(remote)("default/other", svc).is_err());
    }

    #[test]
    fn refusals_are_classified_by_reason() {
        let remote = c("cluster1", 1);
        let ident = identity_decoder(remote.clone());
        let reason = |r: Result<RemoteIdentity, String>| RejectReason::of(&r.unwrap_err());
        assert_eq!(
            reason(ident(
                "65612",
                b"k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cluster2;"
            )),
            RejectReason::ForeignCluster
        );
        assert_eq!(
            reason(ident(
                "131072",
                b"k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cluster1;"
            )),
            RejectReason::ForeignCluster
        );
        assert_eq!(reason(ident("abc", b"")), RejectReason::Invalid);
        let node = br#"{"Name":"node-1","Cluster":"cluster2","ClusterID":2}"#;
        assert_eq!(
            RejectReason::of(&node_decoder(remote.clone())("node-1", node).unwrap_err()),
            RejectReason::ForeignCluster
        );
        // Oversized values are refused before parsing.
        let big = bounded(identity_decoder(remote), 64);
        let labels = format!(
            "k8s:app={};k8s:io.cilium.k8s.policy.cluster=cluster1;",
            "x".repeat(100)
        );
        let err = big("65612", labels.as_bytes()).unwrap_err();
        assert_eq!(RejectReason::of(&err), RejectReason::ValueTooLarge, "{err}");
        assert!(err.contains("value of 151 bytes, limit 64"), "{err}");
        assert!(big("65612", b"k8s:io.cilium.k8s.policy.cluster=cluster1;").is_ok());
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::of(&r.tag("x")), r);
        }
    }
}
