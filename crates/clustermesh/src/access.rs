//! Who may read what in a cluster's etcd (WIRE-FORMAT.md, "Access control").
//!
//! The cluster's etcd runs with client-certificate auth; a certificate's CN is its etcd user:
//! - `root` and `admin-<c>`: role root, the cluster's own writers (apiserver, CLI);
//! - `remote`, and `remote-<peer>` per connected peer: role `remote`, read-only on
//!   `cilium/.heartbeat`, `cilium/state/`, the one key `cilium/cluster-config/<c>` and
//!   `cilium/synced/<c>/`;
//! - `local-<c>`: role `local`, read-only on `cilium/.heartbeat`, `cilium/cache/`,
//!   `cilium/cluster-config/` and `cilium/synced/` (agents that read a KVStoreMesh cache).
//! - `node-<c>-<node>`: the agent of one node (`plexus node join`), role `node-<c>-<node>`:
//!   reads `cilium/` and `plexus/`, writes its own node key and the shared ranges an agent
//!   allocates in (identities, ip entries, endpoint records, pod CIDR claims), but not another
//!   node's key, the cluster config, the heartbeat, services or objects. Plexus's own addition
//!   to the wire format (Cilium's agents write as one shared user).
//!
//! [`apply`] creates all of this and enables auth; it is idempotent, so the apiserver runs it at
//! every start. [`grant_peer`] adds the per-peer user when a peer is connected.

use plexus_kvstore::{EtcdBackend, ReadGrant};
use plexus_model::keys;

/// Name of the read-only role of remote clusters.
pub const REMOTE_ROLE: &str = "remote";
/// Name of the read-only role of local agents reading the KVStoreMesh cache.
pub const LOCAL_ROLE: &str = "local";

/// The etcd user of cluster `cluster`'s administrators.
pub fn admin_user(cluster: &str) -> String {
    format!("admin-{cluster}")
}

/// The etcd user with which cluster `peer` reads this cluster.
pub fn remote_user(peer: &str) -> String {
    format!("remote-{peer}")
}

/// The etcd user of cluster `cluster`'s agents reading the KVStoreMesh cache.
pub fn local_user(cluster: &str) -> String {
    format!("local-{cluster}")
}

/// The etcd user (and role) of node `node`'s agent in cluster `cluster`.
pub fn node_user(cluster: &str, node: &str) -> String {
    format!("node-{cluster}-{node}")
}

/// What the agent of `node` may read, and what it may write.
pub fn node_grants(cluster: &str, node: &str) -> (Vec<ReadGrant>, Vec<ReadGrant>) {
    let read = vec![
        ReadGrant::Prefix(format!("{}/", keys::ROOT)),
        ReadGrant::Prefix("plexus/".to_string()),
    ];
    let write = vec![
        ReadGrant::Key(keys::node_key(cluster, node)),
        ReadGrant::Prefix(format!("{}/", keys::IDENTITIES)),
        ReadGrant::Prefix(format!("{}/", keys::IP)),
        ReadGrant::Prefix("plexus/endpoints/v1/".to_string()),
        ReadGrant::Prefix("plexus/ipam/v1/nodes/".to_string()),
    ];
    (read, write)
}

/// Creates the user and role of node `node`'s agent. Idempotent; must run as root.
pub async fn grant_node(
    etcd: &EtcdBackend,
    cluster: &str,
    node: &str,
) -> plexus_kvstore::Result<()> {
    let user = node_user(cluster, node);
    let (read, write) = node_grants(cluster, node);
    etcd.ensure_writer_role(&user, &read, &write).await?;
    etcd.ensure_user(&user, &[&user]).await
}

/// What the `remote` role of cluster `cluster` may read.
pub fn remote_grants(cluster: &str) -> Vec<ReadGrant> {
    vec![
        ReadGrant::Key(keys::HEARTBEAT.to_string()),
        ReadGrant::Prefix("cilium/state/".to_string()),
        ReadGrant::Key(format!("{}/{cluster}", keys::CLUSTER_CONFIG)),
        ReadGrant::Prefix(format!("cilium/synced/{cluster}/")),
    ]
}

/// What the `local` role may read.
pub fn local_grants() -> Vec<ReadGrant> {
    vec![
        ReadGrant::Key(keys::HEARTBEAT.to_string()),
        ReadGrant::Prefix("cilium/cache/".to_string()),
        ReadGrant::Prefix(format!("{}/", keys::CLUSTER_CONFIG)),
        ReadGrant::Prefix("cilium/synced/".to_string()),
    ]
}

/// Creates the roles and users of cluster `cluster` and enables auth. Idempotent. Must run as
/// `root` (or before auth is enabled).
pub async fn apply(etcd: &EtcdBackend, cluster: &str) -> plexus_kvstore::Result<()> {
    etcd.ensure_user("root", &["root"]).await?;
    etcd.ensure_user(&admin_user(cluster), &["root"]).await?;
    etcd.ensure_role(REMOTE_ROLE, &remote_grants(cluster))
        .await?;
    etcd.ensure_user("remote", &[REMOTE_ROLE]).await?;
    etcd.ensure_role(LOCAL_ROLE, &local_grants()).await?;
    etcd.ensure_user(&local_user(cluster), &[LOCAL_ROLE])
        .await?;
    etcd.enable_auth().await
}

/// Gives cluster `peer` read access as `remote-<peer>`.
pub async fn grant_peer(etcd: &EtcdBackend, peer: &str) -> plexus_kvstore::Result<()> {
    etcd.ensure_user(&remote_user(peer), &[REMOTE_ROLE]).await
}

/// Takes cluster `peer`'s access away.
pub async fn revoke_peer(etcd: &EtcdBackend, peer: &str) -> plexus_kvstore::Result<bool> {
    etcd.remove_user(&remote_user(peer)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_role_reads_only_what_wire_format_lists() {
        assert_eq!(
            remote_grants("c1"),
            vec![
                ReadGrant::Key("cilium/.heartbeat".into()),
                ReadGrant::Prefix("cilium/state/".into()),
                ReadGrant::Key("cilium/cluster-config/c1".into()),
                ReadGrant::Prefix("cilium/synced/c1/".into()),
            ]
        );
        assert_eq!(remote_user("c2"), "remote-c2");
        assert_eq!(local_user("c1"), "local-c1");
        assert_eq!(admin_user("c1"), "admin-c1");
        assert_eq!(node_user("c1", "h1"), "node-c1-h1");
        let (_, write) = node_grants("c1", "h1");
        assert!(write.contains(&ReadGrant::Key("cilium/state/nodes/v1/c1/h1".into())));
        assert!(
            !write
                .iter()
                .any(|g| matches!(g, ReadGrant::Prefix(p) if p.starts_with("cilium/state/nodes")))
        );
    }
}
