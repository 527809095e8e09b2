//! The mesh's certificate authority and the certificates it issues.
//!
//! Every connection between Plexus components is mutual TLS: a cluster's etcd (and its
//! apiserver) present server certificates, and every client presents a client certificate whose
//! common name is its etcd user (`root`, `admin-<cluster>`, `remote-<peer>`, `local-<cluster>`).
//! One CA can be shared between clusters ([`Ca::from_pem`]), the way Cilium users copy the
//! `cilium-ca` secret from one cluster to another. Keys are ECDSA P-256.
//!
//! Lifetimes are finite and configurable ([`Validity`]): by default the CA is valid for three
//! years and leaf certificates for one. [`cluster::ClusterPki::ensure`] renews a leaf once less
//! than a third of its lifetime remains, keeping the lifetime it was issued with, so a daemon
//! that holds the CA key (the apiserver) renews its certificates long before they expire; the
//! daemons reload renewed files from disk for their new connections.

pub mod cluster;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// How long certificates are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// A new CA's lifetime.
    pub ca: std::time::Duration,
    /// A leaf (server or client) certificate's lifetime.
    pub leaf: std::time::Duration,
}

/// One day.
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

impl Default for Validity {
    /// Three years for a CA, one for leaf certificates.
    fn default() -> Self {
        Self {
            ca: DAY * 365 * 3,
            leaf: DAY * 365,
        }
    }
}

/// How far back `not_before` is set, so that a peer whose clock is slightly behind accepts a
/// fresh certificate: an hour, or a tenth of a short lifetime (seconds-long test certificates),
/// in whole seconds as certificates count them.
fn backdate(validity: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs((validity.as_secs() / 10).min(3600))
}

impl CertInfo {
    /// The lifetime the certificate was issued with (what [`Validity::leaf`] was), without the
    /// backdating of its start.
    pub fn lifetime(&self) -> std::time::Duration {
        let span = u64::try_from(self.not_after - self.not_before).unwrap_or_default();
        // span = v + backdate(v), strictly growing with v: an hour for v of 10 hours and more,
        // v/10 (whole seconds) below.
        let v = if span >= 11 * 3600 {
            span - 3600
        } else {
            let guess = span * 10 / 11;
            (guess.saturating_sub(1)..=guess + 2)
                .find(|v| v + v / 10 == span)
                .unwrap_or(span)
        };
        std::time::Duration::from_secs(v)
    }

    /// Seconds until it expires at `now` (Unix seconds); negative once expired.
    pub fn expires_in(&self, now: i64) -> i64 {
        self.not_after - now
    }

    /// Whether it is due for renewal at `now`: a third of its lifetime remains, or less.
    pub fn renewal_due(&self, now: i64) -> bool {
        let total = (self.not_after - self.not_before).max(1);
        (self.not_after - now) * 3 <= total
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// What went wrong issuing or storing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation or parsing failed.
    #[error("certificate {what}: {source}")]
    Certificate {
        /// Which certificate or key.
        what: String,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// A certificate could not be parsed.
    #[error("cannot read certificate: {reason}")]
    Parse {
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, PkiError>;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl Issued {
    /// Writes `<name>.crt` and `<name>.key` (mode 0600) into `dir`, returning both paths. Both
    /// are written to temporary files first and then renamed one right after the other, so a
    /// daemon reading them at any moment (etcd reads its certificate at every connection) finds
    /// a mismatched pair only for that instant; the daemons of this project check that the pair
    /// matches before using it.
    pub fn write_to(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let cert_tmp = write_temp(&cert, &self.cert_pem, 0o644)?;
        let key_tmp = write_temp(&key, &self.key_pem, 0o600)?;
        rename(&key_tmp, &key)?;
        rename(&cert_tmp, &cert)?;
        Ok((cert, key))
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| PkiError::Io {
        path: to.to_path_buf(),
        source,
    })
}

/// Writes `contents` with `mode` to a hidden temporary file beside `path`; returns its path.
fn write_temp(path: &Path, contents: &str, mode: u32) -> Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let io = |source| PkiError::Io {
        path: tmp.clone(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    // The umask may have narrowed the mode at creation.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(io)?;
    Ok(tmp)
}

/// Writes `contents` to `path` with the given mode, through a hidden temporary file and a
/// rename: daemons that reload certificates from disk never read half a file.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let tmp = write_temp(path, contents, mode)?;
    rename(&tmp, path)
}

/// What [`inspect`] reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name (for a client: the etcd user).
    pub common_name: String,
    /// The authority key identifier (which CA key signed it), hex.
    pub issuer_key_id: String,
    /// The subject key identifier, hex (set on CA certificates).
    pub key_id: String,
    /// DNS names among the subject alternative names.
    pub dns: Vec<String>,
    /// IP addresses among the subject alternative names.
    pub ips: Vec<IpAddr>,
    /// Start of validity, seconds since the Unix epoch.
    pub not_before: i64,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Reads the common name, key identifiers, SANs and validity of a PEM certificate (the first
/// one of a bundle).
pub fn inspect(cert_pem: &str) -> Result<CertInfo> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| PkiError::Parse {
            reason: format!("not a PEM certificate: {e}"),
        })?;
    inspect_pem(&pem)
}

/// Reads every certificate of a PEM bundle (a trust bundle holds several CAs while one
/// replaces another). Blocks that are not certificates are skipped; none at all is an error.
pub fn inspect_bundle(pem: &str) -> Result<Vec<CertInfo>> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::Parse {
            reason: format!("not a PEM bundle: {e}"),
        })?;
        if block.label == "CERTIFICATE" {
            out.push(inspect_pem(&block)?);
        }
    }
    if out.is_empty() {
        return Err(PkiError::Parse {
            reason: "no certificate in the PEM text".into(),
        });
    }
    Ok(out)
}

fn inspect_pem(pem: &x509_parser::pem::Pem) -> Result<CertInfo> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let bad = |reason: String| PkiError::Parse { reason };
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut info = CertInfo {
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string(),
        issuer_key_id: String::new(),
        key_id: String::new(),
        dns: Vec::new(),
        ips: Vec::new(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                if let Some(id) = &aki.key_identifier {
                    info.issuer_key_id = hex(id.0);
                }
            }
            ParsedExtension::SubjectKeyIdentifier(id) => info.key_id = hex(id.0),
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => info.dns.push(d.to_string()),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => info
                                .ips
                                .push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                            16 => info
                                .ips
                                .push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// A DER certificate as PEM.
fn pem_of(der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A certificate authority that can issue server and client certificates.
pub struct Ca {
    issued: Issued,
    issuer: Issuer<'static, KeyPair>,
    leaf_validity: std::time::Duration,
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Certificate {
        what: what.to_string(),
        source,
    }
}

fn validity(params: &mut CertificateParams, validity: std::time::Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - backdate(validity);
    params.not_after = now + validity;
}

impl Ca {
    /// Creates a new self-signed CA named `common_name`, valid for [`Validity::default`]'s CA
    /// lifetime.
    pub fn generate(common_name: &str) -> Result<Self> {
        Self::generate_with(common_name, Validity::default())
    }

    /// Creates a new self-signed CA valid for `validity.ca`, issuing leaves valid for
    /// `validity.leaf`.
    pub fn generate_with(common_name: &str, lifetimes: Validity) -> Result<Self> {
        let key = KeyPair::generate().map_err(cert_err("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Plexus");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, lifetimes.ca);
        let cert = params.self_signed(&key).map_err(cert_err("CA"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            issued,
            issuer: Issuer::new(params, key),
            leaf_validity: lifetimes.leaf,
        })
    }

    /// The same CA, issuing leaves valid for `leaf`.
    pub fn with_leaf_validity(mut self, leaf: std::time::Duration) -> Self {
        self.leaf_validity = leaf;
        self
    }

    /// How long the leaves it issues are valid.
    pub fn leaf_validity(&self) -> std::time::Duration {
        self.leaf_validity
    }

    /// Loads an existing CA from its certificate and key (PEM), e.g. one shared by another cluster.
    /// `cert_pem` may be a trust bundle of several CAs (while one replaces another): the CA is
    /// the certificate whose public key is the key's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err("CA key"))?;
        let mut mine = None;
        for block in x509_parser::pem::Pem::iter_from_buffer(cert_pem.as_bytes()).flatten() {
            if block.label != "CERTIFICATE" {
                continue;
            }
            let Ok(cert) = block.parse_x509() else {
                continue;
            };
            if cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
                mine = Some(pem_of(&block.contents));
                break;
            }
        }
        let cert_pem = match mine {
            Some(pem) => pem,
            // Not parseable as a bundle: let rcgen say what is wrong with it.
            None if inspect_bundle(cert_pem).is_err() => cert_pem.to_string(),
            None => {
                return Err(PkiError::Parse {
                    reason: "no certificate of the CA bundle belongs to the CA key".into(),
                });
            }
        };
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(cert_err("CA"))?;
        Ok(Self {
            issued: Issued {
                cert_pem,
                key_pem: key_pem.to_string(),
            },
            issuer,
            leaf_validity: Validity::default().leaf,
        })
    }

    /// The CA certificate and key, PEM.
    pub fn pem(&self) -> &Issued {
        &self.issued
    }

    /// The CA's subject key identifier, hex: what the certificates it issued name as their
    /// authority key identifier.
    pub fn key_id(&self) -> String {
        inspect(self.cert_pem())
            .map(|i| i.key_id)
            .unwrap_or_default()
    }

    /// The CA certificate, PEM (what peers put in their trust store).
    pub fn cert_pem(&self) -> &str {
        &self.issued.cert_pem
    }

    /// Issues a server certificate for `dns_names` and `ips`. It also allows client use, as etcd
    /// members present the same certificate to each other.
    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> Result<Issued> {
        self.issue_server_for(common_name, dns_names, ips, self.leaf_validity)
    }

    /// [`Ca::issue_server`] valid for `validity`.
    pub fn issue_server_for(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
        validity: std::time::Duration,
    ) -> Result<Issued> {
        let mut sans: Vec<SanType> = Vec::new();
        for name in dns_names {
            let name = (*name).try_into().map_err(cert_err(name))?;
            sans.push(SanType::DnsName(name));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.issue(
            common_name,
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            validity,
        )
    }

    /// Issues a client certificate; `common_name` becomes the etcd user.
    pub fn issue_client(&self, common_name: &str) -> Result<Issued> {
        self.issue_client_for(common_name, self.leaf_validity)
    }

    /// [`Ca::issue_client`] valid for `validity`.
    pub fn issue_client_for(
        &self,
        common_name: &str,
        validity: std::time::Duration,
    ) -> Result<Issued> {
        self.issue(
            common_name,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
        lifetime: std::time::Duration,
    ) -> Result<Issued> {
        let key = KeyPair::generate().map_err(cert_err(common_name))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.extended_key_usages = eku;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err(common_name))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn verify(dir: &Path, ca: &str, cert: &str, purpose: &str) -> bool {
        let out = Command::new("openssl")
            .args(["verify", "-purpose", purpose, "-CAfile", ca, cert])
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        out.status.success()
    }

    #[test]
    fn issued_certificates_chain_to_the_ca_and_a_shared_ca_issues_too() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("plexus-ca").unwrap();
        ca.pem().write_to(dir.path(), "ca").unwrap();
        let server = ca
            .issue_server("etcd", &["localhost"], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        server.write_to(dir.path(), "server").unwrap();
        let client = ca.issue_client("remote-cluster2").unwrap();
        client.write_to(dir.path(), "client").unwrap();
        assert!(verify(dir.path(), "ca.crt", "server.crt", "sslserver"));
        assert!(verify(dir.path(), "ca.crt", "client.crt", "sslclient"));
        assert!(
            !verify(dir.path(), "ca.crt", "client.crt", "sslserver"),
            "client certs are not server certs"
        );

        // The same CA, loaded by another cluster from its PEM, issues certificates that chain.
        let shared = Ca::from_pem(&ca.pem().cert_pem, &ca.pem().key_pem).unwrap();
        shared
            .issue_client("admin-cluster2")
            .unwrap()
            .write_to(dir.path(), "shared")
            .unwrap();
        assert!(verify(dir.path(), "ca.crt", "shared.crt", "sslclient"));

        // Another CA's certificates do not.
        let other = Ca::generate("other").unwrap();
        other
            .issue_client("intruder")
            .unwrap()
            .write_to(dir.path(), "intruder")
            .unwrap();
        assert!(!verify(dir.path(), "ca.crt", "intruder.crt", "sslclient"));

        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("client.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_bad_ca_pem_is_a_clear_error() {
        let err = Ca::from_pem("not a cert", "not a key")
            .err()
            .expect("rejected");
        assert!(err.to_string().starts_with("certificate CA key"), "{err}");
    }

    #[test]
    fn validity_is_configurable_and_renewal_is_due_in_the_last_third() {
        let day = std::time::Duration::from_secs(86_400);
        let ca = Ca::generate_with(
            "short",
            Validity {
                ca: day * 100,
                leaf: day * 10,
            },
        )
        .unwrap();
        let ca_info = inspect(ca.cert_pem()).unwrap();
        assert_eq!(ca_info.lifetime(), day * 100);
        let leaf = inspect(&ca.issue_client("admin-c1").unwrap().cert_pem).unwrap();
        assert_eq!(leaf.lifetime(), day * 10);
        // Backdated by an hour for clocks that lag.
        assert_eq!(leaf.not_after - leaf.not_before, 10 * 86_400 + 3600);
        let now = unix_now();
        assert!(!leaf.renewal_due(now));
        assert!(!leaf.renewal_due(leaf.not_after - 4 * 86_400));
        assert!(leaf.renewal_due(leaf.not_after - 3 * 86_400 - 1200));
        assert!(leaf.renewal_due(leaf.not_after + 1));
        assert!(leaf.expires_in(now) > 9 * 86_400);

        // Seconds-long lifetimes (tests) are backdated by a tenth only.
        let secs = inspect(
            &ca.issue_server_for("etcd", &[], &[], std::time::Duration::from_secs(20))
                .unwrap()
                .cert_pem,
        )
        .unwrap();
        assert_eq!(secs.not_after - secs.not_before, 22);
        assert_eq!(secs.lifetime(), std::time::Duration::from_secs(20));
        let defaults = Validity::default();
        assert_eq!((defaults.ca, defaults.leaf), (day * 365 * 3, day * 365));
    }

    #[test]
    fn a_bundle_lists_every_certificate() {
        let a = Ca::generate("a").unwrap();
        let b = Ca::generate("b").unwrap();
        let bundle = format!("{}{}", a.cert_pem(), b.cert_pem());
        let infos = inspect_bundle(&bundle).unwrap();
        let names: Vec<_> = infos.iter().map(|i| i.common_name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(inspect_bundle("nothing").is_err());
    }
}
