//! Key builders and parsers for every prefix of Cilium's kvstore layout.
//!
//! Prefixes handed to watchers end with `/`, so cluster `c1` does not also match `c10`.
//! Parsers take keys relative to their prefix (what a WatchStore hands out) and reject
//! malformed ones with an error naming the key.

use crate::ModelError;

/// Root of everything.
pub const ROOT: &str = "cilium";
/// Nodes: `cilium/state/nodes/v1/<cluster>/<node>`.
pub const NODES: &str = "cilium/state/nodes/v1";
/// Identities: `.../id/<id>` and `.../value/<labels>/<node>`.
pub const IDENTITIES: &str = "cilium/state/identities/v1";
/// ip -> identity: `cilium/state/ip/v1/default/<ip>`.
pub const IP: &str = "cilium/state/ip/v1";
/// Global services: `cilium/state/services/v1/<cluster>/<ns>/<name>`.
pub const SERVICES: &str = "cilium/state/services/v1";
/// MCS exports: `cilium/state/serviceexports/v1/<cluster>/<ns>/<name>`.
pub const SERVICE_EXPORTS: &str = "cilium/state/serviceexports/v1";
/// Cluster configs: `cilium/cluster-config/<cluster>`.
pub const CLUSTER_CONFIG: &str = "cilium/cluster-config";
/// Heartbeat key.
pub const HEARTBEAT: &str = "cilium/.heartbeat";
/// Sync canaries: `cilium/synced/<cluster>/<prefix>`.
pub const SYNCED: &str = "cilium/synced";
/// KVStoreMesh caches: `cilium/cache/...`.
pub const CACHE: &str = "cilium/cache";
/// A KVStoreMesh's heartbeat of each remote it is connected to:
/// `cilium/cache/.heartbeat/<cluster>` (see [`cache_heartbeat_key`]).
pub const CACHE_HEARTBEAT: &str = "cilium/cache/.heartbeat";
/// The ipcache namespace Cilium uses.
pub const IP_NAMESPACE: &str = "default";

/// The kinds of state a cluster publishes and a consumer mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateKind {
    /// Nodes.
    Nodes,
    /// Global services.
    Services,
    /// MCS service exports.
    ServiceExports,
    /// Identities.
    Identities,
    /// ip -> identity entries.
    Ip,
}

impl StateKind {
    /// Every kind.
    pub const ALL: [StateKind; 5] = [
        Self::Nodes,
        Self::Services,
        Self::ServiceExports,
        Self::Identities,
        Self::Ip,
    ];

    /// The short name used in `cilium/cache/<name>/v1`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nodes => "nodes",
            Self::Services => "services",
            Self::ServiceExports => "serviceexports",
            Self::Identities => "identities",
            Self::Ip => "ip",
        }
    }

    /// The state prefix without trailing slash (`cilium/state/nodes/v1`); the canary suffix.
    pub fn state_base(self) -> &'static str {
        match self {
            Self::Nodes => NODES,
            Self::Services => SERVICES,
            Self::ServiceExports => SERVICE_EXPORTS,
            Self::Identities => IDENTITIES,
            Self::Ip => IP,
        }
    }

    /// The cache base without trailing slash (`cilium/cache/nodes/v1`).
    pub fn cache_base(self) -> String {
        format!("{CACHE}/{}/v1", self.name())
    }

    /// Where cluster `cluster` publishes this kind, ending in `/`. Identities and ip entries
    /// are not scoped by cluster in the source's own kvstore.
    pub fn state_prefix(self, cluster: &str) -> String {
        match self {
            Self::Identities => format!("{IDENTITIES}/id/"),
            Self::Ip => format!("{IP}/{IP_NAMESPACE}/"),
            _ => format!("{}/{cluster}/", self.state_base()),
        }
    }

    /// Where a KVStoreMesh caches remote `cluster`'s entries of this kind, ending in `/`.
    pub fn cache_prefix(self, cluster: &str) -> String {
        match self {
            Self::Identities => format!("{}/{cluster}/id/", self.cache_base()),
            _ => format!("{}/{cluster}/", self.cache_base()),
        }
    }

    /// The canary written by `cluster` once this kind is fully published.
    pub fn canary(self, cluster: &str) -> String {
        canary_key(cluster, self.state_base())
    }

    /// The canary a KVStoreMesh writes once its cache of remote `cluster` is complete.
    pub fn cache_canary(self, cluster: &str) -> String {
        canary_key(cluster, &self.cache_base())
    }
}

/// `cilium/cache/.heartbeat/<cluster>`: the RFC 3339 time a KVStoreMesh rewrites while it is
/// connected to remote `cluster` and deletes as soon as it is not. Agents reading the cache
/// check it instead of `cilium/.heartbeat`, so they see the remote go away as readers of the
/// remote itself do (a Plexus addition to the wire format; Cilium's agents do not see it).
pub fn cache_heartbeat_key(cluster: &str) -> String {
    format!("{CACHE_HEARTBEAT}/{cluster}")
}

/// `cilium/state/nodes/v1/<cluster>/<node>`.
pub fn node_key(cluster: &str, node: &str) -> String {
    format!("{NODES}/{cluster}/{node}")
}

/// `cilium/state/identities/v1/id/<id>`.
pub fn identity_id_key(id: u32) -> String {
    format!("{IDENTITIES}/id/{id}")
}

/// `cilium/state/identities/v1/id/`.
pub fn identity_id_prefix() -> String {
    format!("{IDENTITIES}/id/")
}

/// `cilium/state/identities/v1/value/`.
pub fn identity_value_root() -> String {
    format!("{IDENTITIES}/value/")
}

/// `cilium/state/identities/v1/value/<labels>/`: every node's reference to these labels.
pub fn identity_value_prefix(labels: &str) -> String {
    format!("{IDENTITIES}/value/{labels}/")
}

/// `cilium/state/identities/v1/value/<labels>/<node>`.
pub fn identity_value_key(labels: &str, node: &str) -> String {
    format!("{IDENTITIES}/value/{labels}/{node}")
}

/// `cilium/state/ip/v1/default/<ip or cidr>`.
pub fn ip_key(ip_or_cidr: &str) -> String {
    format!("{IP}/{IP_NAMESPACE}/{ip_or_cidr}")
}

/// `cilium/state/services/v1/<cluster>/<ns>/<name>`.
pub fn service_key(cluster: &str, namespace: &str, name: &str) -> String {
    format!("{SERVICES}/{cluster}/{namespace}/{name}")
}

/// `cilium/state/serviceexports/v1/<cluster>/<ns>/<name>`.
pub fn service_export_key(cluster: &str, namespace: &str, name: &str) -> String {
    format!("{SERVICE_EXPORTS}/{cluster}/{namespace}/{name}")
}

/// `cilium/cluster-config/<cluster>`.
pub fn cluster_config_key(cluster: &str) -> String {
    format!("{CLUSTER_CONFIG}/{cluster}")
}

/// `cilium/synced/<cluster>/<prefix>`, e.g. `cilium/synced/c1/cilium/state/nodes/v1`.
pub fn canary_key(cluster: &str, prefix: &str) -> String {
    format!("{SYNCED}/{cluster}/{}", prefix.trim_end_matches('/'))
}

/// `cilium/cache/identities/v1/<remote>/id/<id>`.
pub fn cache_identity_key(remote: &str, id: u32) -> String {
    format!("{}{id}", StateKind::Identities.cache_prefix(remote))
}

/// `cilium/cache/ip/v1/<remote>/<ip>`.
pub fn cache_ip_key(remote: &str, ip_or_cidr: &str) -> String {
    format!("{}{ip_or_cidr}", StateKind::Ip.cache_prefix(remote))
}

/// The canaries a consumer waits for before mirroring cluster `cluster`.
pub fn expected_canaries(
    cluster: &str,
    service_exports: bool,
    cached: bool,
) -> Vec<(StateKind, String)> {
    StateKind::ALL
        .into_iter()
        .filter(|k| service_exports || *k != StateKind::ServiceExports)
        .map(|k| {
            (
                k,
                if cached {
                    k.cache_canary(cluster)
                } else {
                    k.canary(cluster)
                },
            )
        })
        .collect()
}

fn key_err(key: &str, reason: &str) -> ModelError {
    ModelError::Key {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty() && !s.contains('/')
}

/// A node's relative key: its name.
pub fn parse_node_key(relative: &str) -> Result<&str, ModelError> {
    if segment_ok(relative) {
        Ok(relative)
    } else {
        Err(key_err(relative, "expected <node>"))
    }
}

/// A service's relative key: `<namespace>/<name>`.
pub fn parse_service_key(relative: &str) -> Result<(&str, &str), ModelError> {
    match relative.split_once('/') {
        Some((ns, name)) if segment_ok(ns) && segment_ok(name) => Ok((ns, name)),
        _ => Err(key_err(relative, "expected <namespace>/<name>")),
    }
}

/// An ip entry's relative key: `<ip>` or `<ip>/<len>`.
pub fn parse_ip_key(relative: &str) -> Result<crate::cidr::Cidr, ModelError> {
    if relative.contains('/') {
        relative
            .parse()
            .map_err(|_| key_err(relative, "expected <ip> or <ip>/<length>"))
    } else {
        relative
            .parse()
            .map(crate::cidr::Cidr::host)
            .map_err(|_| key_err(relative, "expected <ip> or <ip>/<length>"))
    }
}

/// An identity's relative key under `.../id/`: the numeric id.
pub fn parse_identity_id_key(relative: &str) -> Result<u32, ModelError> {
    relative
        .parse()
        .map_err(|_| key_err(relative, "expected a numeric identity"))
}

/// A value key relative to `.../value/`: `<labels>/<node>`; labels may contain `/`, the node is
/// the last segment.
pub fn parse_identity_value_key(relative: &str) -> Result<(&str, &str), ModelError> {
    match relative.rsplit_once('/') {
        Some((labels, node)) if !labels.is_empty() && !node.is_empty() => Ok((labels, node)),
        _ => Err(key_err(relative, "expected <labels>/<node>")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_match_the_layout() {
        assert_eq!(node_key("c1", "n1"), "cilium/state/nodes/v1/c1/n1");
        assert_eq!(
            identity_id_key(65612),
            "cilium/state/identities/v1/id/65612"
        );
        assert_eq!(
            identity_value_key("k8s:a=b;", "10.0.0.1"),
            "cilium/state/identities/v1/value/k8s:a=b;/10.0.0.1"
        );
        assert_eq!(
            ip_key("10.10.1.61"),
            "cilium/state/ip/v1/default/10.10.1.61"
        );
        assert_eq!(
            service_key("c1", "default", "rebel-base"),
            "cilium/state/services/v1/c1/default/rebel-base"
        );
        assert_eq!(
            service_export_key("c1", "a", "b"),
            "cilium/state/serviceexports/v1/c1/a/b"
        );
        assert_eq!(cluster_config_key("c1"), "cilium/cluster-config/c1");
        assert_eq!(
            StateKind::Nodes.canary("c1"),
            "cilium/synced/c1/cilium/state/nodes/v1"
        );
        assert_eq!(
            StateKind::Identities.canary("c1"),
            "cilium/synced/c1/cilium/state/identities/v1"
        );
        assert_eq!(
            StateKind::Ip.canary("c1"),
            "cilium/synced/c1/cilium/state/ip/v1"
        );
        assert_eq!(
            StateKind::Nodes.state_prefix("c1"),
            "cilium/state/nodes/v1/c1/"
        );
        assert_eq!(
            StateKind::Ip.state_prefix("c1"),
            "cilium/state/ip/v1/default/"
        );
        assert_eq!(
            StateKind::Identities.state_prefix("c1"),
            "cilium/state/identities/v1/id/"
        );
        assert_eq!(
            StateKind::Nodes.cache_prefix("r"),
            "cilium/cache/nodes/v1/r/"
        );
        assert_eq!(
            cache_identity_key("r", 7),
            "cilium/cache/identities/v1/r/id/7"
        );
        assert_eq!(
            cache_ip_key("r", "10.0.0.1"),
            "cilium/cache/ip/v1/r/10.0.0.1"
        );
        assert_eq!(
            StateKind::Services.cache_canary("r"),
            "cilium/synced/r/cilium/cache/services/v1"
        );
    }

    #[test]
    fn consumers_wait_for_these_canaries() {
        let names: Vec<String> = expected_canaries("c1", false, false)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        assert_eq!(
            names,
            [
                "cilium/synced/c1/cilium/state/nodes/v1",
                "cilium/synced/c1/cilium/state/services/v1",
                "cilium/synced/c1/cilium/state/identities/v1",
                "cilium/synced/c1/cilium/state/ip/v1",
            ]
        );
        assert_eq!(expected_canaries("c1", true, true).len(), 5);
        assert!(
            expected_canaries("c1", true, true)
                .iter()
                .all(|(_, k)| k.contains("/cilium/cache/"))
        );
    }

    #[test]
    fn parsers() {
        assert_eq!(
            parse_service_key("default/rebel-base").unwrap(),
            ("default", "rebel-base")
        );
        assert!(parse_service_key("default").is_err());
        assert!(parse_service_key("a/b/c").is_err());
        assert_eq!(
            parse_ip_key("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(parse_ip_key("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert!(parse_ip_key("ten").is_err());
        assert_eq!(parse_identity_id_key("65612").unwrap(), 65612);
        let err = parse_identity_id_key("x1").unwrap_err().to_string();
        assert_eq!(err, "invalid key \"x1\": expected a numeric identity");
        assert_eq!(
            parse_identity_value_key("k8s:app.kubernetes.io/name=db;/10.0.0.1").unwrap(),
            ("k8s:app.kubernetes.io/name=db;", "10.0.0.1")
        );
        assert!(parse_identity_value_key("nolabels").is_err());
        assert_eq!(parse_node_key("n1").unwrap(), "n1");
        assert!(parse_node_key("a/b").is_err());
    }
}
