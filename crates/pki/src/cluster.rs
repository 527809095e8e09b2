//! The certificate files of one cluster, in one directory.
//!
//! ```text
//! <dir>/ca.crt, ca.key                 the CA (shared by every cluster of a mesh)
//! <dir>/etcd-server.crt, .key          the cluster's etcd, with the SANs it is reached by
//! <dir>/admin.crt, .key                CN admin-<cluster>: the apiserver and the CLI (role root)
//! <dir>/local.crt, .key                CN local-<cluster>: agents reading the KVStoreMesh cache
//! <dir>/remote-<peer>.crt, .key        CN remote-<peer>: what cluster <peer> reads this one with
//! ```
//!
//! [`ClusterPki::ensure`] issues what is missing, and re-issues everything when the CA changed
//! (a certificate not signed by the current CA is worthless), so running it twice is harmless.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::{Ca, PkiError, Result, write_file};

/// The certificate directory of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPki {
    dir: PathBuf,
    cluster: String,
}

/// A client identity on disk: CA to trust, certificate, key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// The client key.
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl ClusterPki {
    /// The certificates of `cluster` in `dir`.
    pub fn new(dir: impl Into<PathBuf>, cluster: &str) -> Self {
        Self {
            dir: dir.into(),
            cluster: cluster.to_string(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// The etcd server certificate and key.
    pub fn etcd_server(&self) -> (PathBuf, PathBuf) {
        self.pair("etcd-server")
    }

    fn client(&self, name: &str) -> ClientFiles {
        let (cert, key) = self.pair(name);
        ClientFiles {
            ca: self.ca_cert(),
            cert,
            key,
        }
    }

    /// The `admin-<cluster>` identity.
    pub fn admin(&self) -> ClientFiles {
        self.client("admin")
    }

    /// The `local-<cluster>` identity.
    pub fn local(&self) -> ClientFiles {
        self.client("local")
    }

    /// The `remote-<peer>` identity (what `peer` reads this cluster with).
    pub fn remote(&self, peer: &str) -> ClientFiles {
        self.client(&format!("remote-{peer}"))
    }

    /// Whether a CA is present.
    pub fn has_ca(&self) -> bool {
        self.ca_cert().exists() && self.ca_key().exists()
    }

    /// Loads the CA.
    pub fn ca(&self) -> Result<Ca> {
        Ca::from_pem(&read(&self.ca_cert())?, &read(&self.ca_key())?)
    }

    /// Installs `ca` as this cluster's CA. Returns whether it differs from the one present
    /// (then every certificate is re-issued by the next [`ClusterPki::ensure`]).
    pub fn install_ca(&self, ca: &Ca) -> Result<bool> {
        std::fs::create_dir_all(&self.dir).map_err(|source| PkiError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let same = read(&self.ca_cert()).ok().as_deref() == Some(ca.cert_pem());
        if !same {
            write_file(&self.ca_cert(), ca.cert_pem(), 0o644)?;
            write_file(&self.ca_key(), &ca.pem().key_pem, 0o600)?;
        }
        Ok(!same)
    }

    /// Issues the etcd server, admin and local certificates where missing or not issued by the
    /// current CA. `dns`/`ips` are the names the etcd server is reached by (127.0.0.1 and
    /// localhost are always included). Returns whether anything was (re-)issued.
    pub fn ensure(&self, dns: &[&str], ips: &[IpAddr]) -> Result<bool> {
        let ca = self.ca()?;
        let mut changed = false;
        let (cert, key) = self.etcd_server();
        let mut all_dns = vec!["localhost"];
        all_dns.extend(dns.iter().copied().filter(|d| *d != "localhost"));
        let mut all_ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
        all_ips.extend(ips.iter().copied().filter(|ip| !ip.is_loopback()));
        if self.stale(&cert, &key, &ca, Some((&all_dns, &all_ips))) {
            ca.issue_server("etcd", &all_dns, &all_ips)?
                .write_to(&self.dir, "etcd-server")?;
            changed = true;
        }
        for (file, cn) in [
            ("admin", format!("admin-{}", self.cluster)),
            ("local", format!("local-{}", self.cluster)),
        ] {
            let (cert, key) = self.pair(file);
            if self.stale(&cert, &key, &ca, None) {
                ca.issue_client(&cn)?.write_to(&self.dir, file)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Issues the `remote-<peer>` certificate (always fresh).
    pub fn issue_remote(&self, peer: &str) -> Result<ClientFiles> {
        let ca = self.ca()?;
        ca.issue_client(&format!("remote-{peer}"))?
            .write_to(&self.dir, &format!("remote-{peer}"))?;
        Ok(self.remote(peer))
    }

    /// Whether the certificate at `cert` is missing, not issued by `ca`, or lacks the SANs.
    fn stale(&self, cert: &Path, key: &Path, ca: &Ca, sans: Option<(&[&str], &[IpAddr])>) -> bool {
        let (Ok(pem), true) = (read(cert), key.exists()) else {
            return true;
        };
        match crate::inspect(&pem) {
            Ok(info) => {
                info.issuer_key_id != ca.key_id()
                    || sans.is_some_and(|(dns, ips)| {
                        !dns.iter().all(|d| info.dns.iter().any(|x| x == d))
                            || !ips.iter().all(|ip| info.ips.contains(ip))
                    })
            }
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_issues_once_and_again_after_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::new(dir.path().join("c1"), "c1");
        assert!(!pki.has_ca());
        let ca = Ca::generate("mesh").unwrap();
        assert!(pki.install_ca(&ca).unwrap());
        assert!(!pki.install_ca(&ca).unwrap(), "same CA: nothing to do");
        assert!(pki.ensure(&[], &[]).unwrap());
        assert!(!pki.ensure(&[], &[]).unwrap(), "second run changes nothing");
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(
            pki.ensure(&[], &[ip]).unwrap(),
            "a new SAN re-issues the server cert"
        );
        let admin = std::fs::read_to_string(pki.admin().cert).unwrap();
        assert_eq!(crate::inspect(&admin).unwrap().common_name, "admin-c1");

        let other = Ca::generate("other").unwrap();
        assert!(pki.install_ca(&other).unwrap());
        assert!(
            pki.ensure(&[], &[ip]).unwrap(),
            "new CA: everything re-issued"
        );
        let admin2 = std::fs::read_to_string(pki.admin().cert).unwrap();
        assert_ne!(admin, admin2);
        let remote = pki.issue_remote("c2").unwrap();
        let pem = std::fs::read_to_string(remote.cert).unwrap();
        assert_eq!(crate::inspect(&pem).unwrap().common_name, "remote-c2");
    }
}
