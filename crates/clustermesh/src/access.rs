//! Who may read what in a cluster's etcd (WIRE-FORMAT.md, "Access control").
//!
//! The cluster's etcd runs with client-certificate auth; a certificate's CN is its etcd user:
//! - `root` and `admin-<c>`: role root, the cluster's own writers (apiserver, CLI);
//! - `remote`, and `remote-<peer>` per connected peer: role `remote`, read-only on
//!   `cilium/.heartbeat`, `cilium/state/`, the one key `cilium/cluster-config/<c>` and
//!   `cilium/synced/<c>/`;
//! - `local-<c>`: role `local`, read-only on `cilium/.heartbeat`, `cilium/cache/`,
//!   `cilium/cluster-config/` and `cilium/synced/` (agents that read a KVStoreMesh cache).
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
    }
}
