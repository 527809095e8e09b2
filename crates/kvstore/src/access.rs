//! etcd users, roles and authentication.
//!
//! With `--client-cert-auth`, etcd takes a client certificate's CN as the user name, so giving
//! a peer read-only access means: a role that may read some keys, a user of the certificate's
//! name with that role, and auth enabled. [`EtcdBackend::ensure_role`],
//! [`EtcdBackend::ensure_user`] and [`EtcdBackend::enable_auth`] do this idempotently: running
//! them again on a set-up etcd changes nothing, so a restarted apiserver simply re-applies them.
//! The caller must be `root` (or have the root role) once auth is enabled.
//!
//! A writer that is not root (a node's agent) gets a role from
//! [`EtcdBackend::ensure_writer_role`]: read access to some ranges, read-write access to others.

use etcd_client::{Permission, UserAddOptions};

use crate::etcd::EtcdBackend;
use crate::{Error, Result};

/// What a role may read: one key, or every key under a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadGrant {
    /// Exactly this key.
    Key(String),
    /// Every key starting with this prefix.
    Prefix(String),
}

fn already_exists(err: &etcd_client::Error) -> bool {
    err.to_string().contains("already exists")
}

fn auth_err(what: String) -> impl FnOnce(etcd_client::Error) -> Error {
    move |e| {
        let text = e.to_string();
        if text.contains("permission denied") || text.contains("Unauthenticated") {
            Error::PermissionDenied(format!("{what}: {text}"))
        } else {
            crate::etcd::map_err(&what, e)
        }
    }
}

impl EtcdBackend {
    /// Creates role `name` if missing and grants it read access to `grants`.
    pub async fn ensure_role(&self, name: &str, grants: &[ReadGrant]) -> Result<()> {
        self.ensure_writer_role(name, grants, &[]).await
    }

    /// Creates role `name` if missing and grants it read access to `read` and read-write access
    /// to `write` (a [`ReadGrant`] here only names the key range).
    pub async fn ensure_writer_role(
        &self,
        name: &str,
        read: &[ReadGrant],
        write: &[ReadGrant],
    ) -> Result<()> {
        let mut client = self.client().await;
        match client.role_add(name).await {
            Ok(_) => {}
            Err(e) if already_exists(&e) => {}
            Err(e) => return Err(auth_err(format!("add role {name:?}"))(e)),
        }
        let read = read.iter().map(|g| (g, false));
        let write = write.iter().map(|g| (g, true));
        for (grant, writes) in read.chain(write) {
            let perm = match (grant, writes) {
                (ReadGrant::Key(key), false) => Permission::read(key.as_bytes()),
                (ReadGrant::Prefix(prefix), false) => {
                    Permission::read(prefix.as_bytes()).with_prefix()
                }
                (ReadGrant::Key(key), true) => Permission::read_write(key.as_bytes()),
                (ReadGrant::Prefix(prefix), true) => {
                    Permission::read_write(prefix.as_bytes()).with_prefix()
                }
            };
            client
                .role_grant_permission(name, perm)
                .await
                .map_err(auth_err(format!("grant {grant:?} to role {name:?}")))?;
        }
        Ok(())
    }

    /// Creates user `name` (no password: it authenticates by certificate) if missing and gives
    /// it `roles`.
    pub async fn ensure_user(&self, name: &str, roles: &[&str]) -> Result<()> {
        let mut client = self.client().await;
        match client
            .user_add(name, "", Some(UserAddOptions::new().with_no_pwd()))
            .await
        {
            Ok(_) => {}
            Err(e) if already_exists(&e) => {}
            Err(e) => return Err(auth_err(format!("add user {name:?}"))(e)),
        }
        let have = client
            .user_get(name)
            .await
            .map_err(auth_err(format!("read user {name:?}")))?;
        for role in roles {
            if have.roles().iter().any(|r| r == role) {
                continue;
            }
            client
                .user_grant_role(name, *role)
                .await
                .map_err(auth_err(format!("grant role {role:?} to user {name:?}")))?;
        }
        Ok(())
    }

    /// Removes user `name`; `Ok(false)` when there was none.
    pub async fn remove_user(&self, name: &str) -> Result<bool> {
        match self.client().await.user_delete(name).await {
            Ok(_) => Ok(true),
            Err(e) if e.to_string().contains("not found") => Ok(false),
            Err(e) => Err(auth_err(format!("delete user {name:?}"))(e)),
        }
    }

    /// The users that exist.
    pub async fn users(&self) -> Result<Vec<String>> {
        let resp = self
            .client()
            .await
            .user_list()
            .await
            .map_err(auth_err("list users".into()))?;
        Ok(resp.users().to_vec())
    }

    /// Enables authentication (needs a `root` user with the root role). Idempotent.
    pub async fn enable_auth(&self) -> Result<()> {
        match self.client().await.auth_enable().await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("already enabled") => Ok(()),
            Err(e) => Err(auth_err("enable auth".into())(e)),
        }
    }
}
