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
//! [`ClusterPki::ensure`] issues what is missing, re-issues everything when the CA changed
//! (a certificate not signed by the current CA is worthless), and renews a certificate once less
//! than a third of its lifetime remains, so running it twice is harmless and running it
//! periodically (the apiserver does) keeps the certificates valid. A renewed certificate keeps
//! the lifetime it was issued with, unless a lifetime was set with
//! [`ClusterPki::with_leaf_validity`] (then certificates of another lifetime are re-issued).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::{Ca, CertInfo, PkiError, Result, Validity, write_file};

/// The certificate directory of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPki {
    dir: PathBuf,
    cluster: String,
    /// The lifetime asked for, if any (else renewals keep each certificate's own).
    leaf_validity: Option<std::time::Duration>,
}

/// Whether two lifetimes are the same up to the rounding of their recovery from a certificate.
fn same_lifetime(a: std::time::Duration, b: std::time::Duration) -> bool {
    a.abs_diff(b) <= std::time::Duration::from_secs(2)
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
            leaf_validity: None,
        }
    }

    /// Issues leaves valid for `validity`, and re-issues those of another lifetime.
    pub fn with_leaf_validity(mut self, validity: std::time::Duration) -> Self {
        self.leaf_validity = Some(validity);
        self
    }

    /// The lifetime a (re-)issued `current` certificate gets: the one asked for, else its own,
    /// else the admin certificate's (the lifetime the cluster was enabled with), else the
    /// default.
    fn lifetime_for(&self, current: Option<&CertInfo>) -> std::time::Duration {
        self.leaf_validity
            .or_else(|| current.map(CertInfo::lifetime))
            .or_else(|| self.current(&self.admin().cert).map(|i| i.lifetime()))
            .unwrap_or(Validity::default().leaf)
    }

    /// The lifetime of a new certificate of this cluster: the one asked for, else the admin
    /// certificate's, else the default.
    pub fn leaf_lifetime(&self) -> std::time::Duration {
        self.lifetime_for(None)
    }

    fn current(&self, cert: &Path) -> Option<CertInfo> {
        read(cert).ok().and_then(|pem| crate::inspect(&pem).ok())
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

    /// The trust bundle (`ca.crt`): the CA, or during a rotation the old and the new CA.
    pub fn trust_bundle(&self) -> Result<String> {
        read(&self.ca_cert())
    }

    /// Makes `bundle` the trust bundle (what etcd and every client of this directory trust),
    /// keeping the issuing CA's key. Returns whether it changed. The bundle must hold the
    /// issuing CA.
    pub fn trust(&self, bundle: &str) -> Result<bool> {
        let infos = crate::inspect_bundle(bundle)?;
        let issuer = self.ca()?.key_id();
        if !infos.iter().any(|i| i.key_id == issuer) {
            return Err(PkiError::Parse {
                reason: format!(
                    "the trust bundle for {} lacks the CA that issues its certificates",
                    self.dir.display()
                ),
            });
        }
        if self.trust_bundle().ok().as_deref() == Some(bundle) {
            return Ok(false);
        }
        write_file(&self.ca_cert(), bundle, 0o644)?;
        Ok(true)
    }

    /// Makes `ca` (already in the trust bundle) the CA that issues this directory's
    /// certificates; the next [`ClusterPki::ensure`] and [`ClusterPki::reissue_foreign`]
    /// re-issue them from it.
    pub fn switch_issuer(&self, ca: &Ca) -> Result<()> {
        let infos = crate::inspect_bundle(&self.trust_bundle()?)?;
        if !infos.iter().any(|i| i.key_id == ca.key_id()) {
            return Err(PkiError::Parse {
                reason: format!(
                    "the trust bundle of {} does not hold the new CA yet",
                    self.dir.display()
                ),
            });
        }
        write_file(&self.ca_key(), &ca.pem().key_pem, 0o600)
    }

    /// Re-issues, from the current CA, every certificate of the directory (`<name>.crt` beside
    /// `<name>.key`, the CA aside) that another CA issued: same common name, addresses and
    /// lifetime (a server certificate when it has addresses, else a client one). Returns the
    /// names re-issued.
    pub fn reissue_foreign(&self) -> Result<Vec<String>> {
        let ca = self.ca()?;
        let entries = std::fs::read_dir(&self.dir).map_err(|source| PkiError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                let stem = n.strip_suffix(".crt")?.to_string();
                (!n.starts_with('.') && stem != "ca" && self.pair(&stem).1.exists()).then_some(stem)
            })
            .collect();
        names.sort();
        let mut done = Vec::new();
        for name in names {
            let Some(info) = self.current(&self.pair(&name).0) else {
                continue;
            };
            if info.issuer_key_id == ca.key_id() {
                continue;
            }
            let lifetime = self.lifetime_for(Some(&info));
            let issued = if info.dns.is_empty() && info.ips.is_empty() {
                ca.issue_client_for(&info.common_name, lifetime)?
            } else {
                let dns: Vec<&str> = info.dns.iter().map(String::as_str).collect();
                ca.issue_server_for(&info.common_name, &dns, &info.ips, lifetime)?
            };
            issued.write_to(&self.dir, &name)?;
            done.push(name);
        }
        Ok(done)
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
            let lifetime = self.lifetime_for(self.current(&cert).as_ref());
            ca.issue_server_for("etcd", &all_dns, &all_ips, lifetime)?
                .write_to(&self.dir, "etcd-server")?;
            changed = true;
        }
        for (file, cn) in [
            ("admin", format!("admin-{}", self.cluster)),
            ("local", format!("local-{}", self.cluster)),
        ] {
            let (cert, key) = self.pair(file);
            if self.stale(&cert, &key, &ca, None) {
                let lifetime = self.lifetime_for(self.current(&cert).as_ref());
                ca.issue_client_for(&cn, lifetime)?
                    .write_to(&self.dir, file)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Issues the server certificate `<name>.crt` (common name and DNS name `common_name`, the
    /// addresses `ips`) where missing, not issued by the current CA, without those addresses,
    /// or due for renewal. Returns its files and whether it was (re-)issued.
    pub fn ensure_server(
        &self,
        name: &str,
        common_name: &str,
        ips: &[IpAddr],
    ) -> Result<((PathBuf, PathBuf), bool)> {
        let ca = self.ca()?;
        let (cert, key) = self.pair(name);
        if !self.stale(&cert, &key, &ca, Some((&[common_name], ips))) {
            return Ok(((cert, key), false));
        }
        let lifetime = self.lifetime_for(self.current(&cert).as_ref());
        let files = ca
            .issue_server_for(common_name, &[common_name], ips, lifetime)?
            .write_to(&self.dir, name)?;
        Ok((files, true))
    }

    /// How often a renewal loop should run [`ClusterPki::ensure`]: a tenth of the shortest
    /// lifetime among the etcd server, admin and local certificates, between a second and ten
    /// minutes (a certificate is renewed with a third of its life left, so never late).
    pub fn renewal_interval(&self) -> std::time::Duration {
        let shortest = [self.etcd_server().0, self.admin().cert, self.local().cert]
            .iter()
            .filter_map(|p| self.current(p))
            .map(|i| i.lifetime())
            .min()
            .unwrap_or(Validity::default().leaf);
        (shortest / 10).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(600),
        )
    }

    /// Issues the `remote-<peer>` certificate (always fresh).
    pub fn issue_remote(&self, peer: &str) -> Result<ClientFiles> {
        let ca = self.ca()?;
        let name = format!("remote-{peer}");
        let lifetime = self.lifetime_for(self.current(&self.pair(&name).0).as_ref());
        ca.issue_client_for(&name, lifetime)?
            .write_to(&self.dir, &name)?;
        Ok(self.remote(peer))
    }

    /// Whether the certificate at `cert` is missing, not issued by `ca`, lacks the SANs, is due
    /// for renewal, or has another lifetime than the one asked for.
    fn stale(&self, cert: &Path, key: &Path, ca: &Ca, sans: Option<(&[&str], &[IpAddr])>) -> bool {
        let (Ok(pem), true) = (read(cert), key.exists()) else {
            return true;
        };
        match crate::inspect(&pem) {
            Ok(info) => {
                info.issuer_key_id != ca.key_id()
                    || info.renewal_due(crate::unix_now())
                    || self
                        .leaf_validity
                        .is_some_and(|v| !same_lifetime(v, info.lifetime()))
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

    #[test]
    fn lifetimes_are_kept_on_renewal_and_changed_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::new(dir.path(), "c1");
        pki.install_ca(&Ca::generate("mesh").unwrap()).unwrap();
        let lifetime = |pki: &ClusterPki| {
            let pem = std::fs::read_to_string(pki.admin().cert).unwrap();
            crate::inspect(&pem).unwrap().lifetime()
        };
        // Default: a year.
        assert!(pki.ensure(&[], &[]).unwrap());
        assert_eq!(lifetime(&pki), std::time::Duration::from_secs(365 * 86_400));

        // Asking for another lifetime re-issues everything with it, once.
        let six = std::time::Duration::from_secs(6);
        let short = pki.clone().with_leaf_validity(six);
        assert!(short.ensure(&[], &[]).unwrap());
        assert!(
            !short.ensure(&[], &[]).unwrap(),
            "fresh and of the asked lifetime"
        );
        assert_eq!(lifetime(&pki), six);

        // With a third of its life left a certificate is renewed, with its own lifetime, by a
        // ClusterPki that was not told any (the apiserver's renewal).
        let before = std::fs::read_to_string(pki.admin().cert).unwrap();
        let info = crate::inspect(&before).unwrap();
        assert!(!info.renewal_due(crate::unix_now()));
        while !info.renewal_due(crate::unix_now()) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(pki.ensure(&[], &[]).unwrap(), "renewal due");
        let after = std::fs::read_to_string(pki.admin().cert).unwrap();
        assert_ne!(before, after);
        assert_eq!(lifetime(&pki), six);
        // A new certificate gets the lifetime the cluster's were issued with.
        let remote = pki.issue_remote("c2").unwrap();
        let info = crate::inspect(&std::fs::read_to_string(remote.cert).unwrap()).unwrap();
        assert_eq!(info.lifetime(), six);
    }

    #[test]
    fn a_ca_is_rotated_through_a_trust_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::new(dir.path(), "c1");
        let old = Ca::generate("old").unwrap();
        pki.install_ca(&old).unwrap();
        pki.ensure(&[], &[]).unwrap();
        pki.issue_remote("c2").unwrap();
        let api = pki
            .ensure_server("apiserver", "apiserver-c1", &["10.0.0.1".parse().unwrap()])
            .unwrap();
        assert!(api.1);
        let new = Ca::generate("new").unwrap();
        assert!(
            pki.switch_issuer(&new).is_err(),
            "not before the bundle holds it"
        );

        // 1. Trust both: the issuer stays the old CA.
        let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
        assert!(pki.trust(&bundle).unwrap());
        assert!(!pki.trust(&bundle).unwrap());
        assert_eq!(pki.ca().unwrap().key_id(), old.key_id());
        assert!(pki.reissue_foreign().unwrap().is_empty());

        // 2. Issue from the new CA: everything is re-issued, names and addresses kept.
        pki.switch_issuer(&new).unwrap();
        assert_eq!(pki.ca().unwrap().key_id(), new.key_id());
        let redone = pki.reissue_foreign().unwrap();
        assert_eq!(
            redone,
            ["admin", "apiserver", "etcd-server", "local", "remote-c2"]
        );
        let api =
            crate::inspect(&std::fs::read_to_string(dir.path().join("apiserver.crt")).unwrap())
                .unwrap();
        assert_eq!(api.common_name, "apiserver-c1");
        assert_eq!(api.issuer_key_id, new.key_id());
        assert!(api.ips.contains(&"10.0.0.1".parse().unwrap()));
        assert!(
            !pki.ensure(&[], &[]).unwrap(),
            "nothing left from the old CA"
        );

        // 3. Drop the old CA; a bundle without the issuer is refused.
        assert!(pki.trust(old.cert_pem()).is_err());
        assert!(pki.trust(new.cert_pem()).unwrap());
        assert_eq!(
            crate::inspect_bundle(&pki.trust_bundle().unwrap())
                .unwrap()
                .len(),
            1
        );
    }
}
