//! The mesh's certificate authority and the certificates it issues.
//!
//! Every connection between Plexus components is mutual TLS: a cluster's etcd (and its
//! apiserver) present server certificates, and every client presents a client certificate whose
//! common name is its etcd user (`root`, `admin-<cluster>`, `remote-<peer>`, `local-<cluster>`).
//! One CA can be shared between clusters ([`Ca::from_pem`]), the way Cilium users copy the
//! `cilium-ca` secret from one cluster to another. Keys are ECDSA P-256; the CA is valid for ten
//! years and leaf certificates for three.

pub mod cluster;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

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
    /// Writes `<name>.crt` and `<name>.key` (mode 0600) into `dir`, returning both paths.
    pub fn write_to(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, &self.cert_pem, 0o644)?;
        write_file(&key, &self.key_pem, 0o600)?;
        Ok((cert, key))
    }
}

/// Writes `contents` to `path` with the given mode.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, contents).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
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
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Reads the common name, key identifiers, SANs and expiry of a PEM certificate.
pub fn inspect(cert_pem: &str) -> Result<CertInfo> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let bad = |reason: String| PkiError::Parse { reason };
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
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

/// A certificate authority that can issue server and client certificates.
pub struct Ca {
    issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Certificate {
        what: what.to_string(),
        source,
    }
}

fn validity(params: &mut CertificateParams, years: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365 * years);
}

impl Ca {
    /// Creates a new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self> {
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
        validity(&mut params, 10);
        let cert = params.self_signed(&key).map_err(cert_err("CA"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            issued,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA from its certificate and key (PEM), e.g. one shared by another cluster.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_err("CA"))?;
        Ok(Self {
            issued: Issued {
                cert_pem: cert_pem.to_string(),
                key_pem: key_pem.to_string(),
            },
            issuer,
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
        )
    }

    /// Issues a client certificate; `common_name` becomes the etcd user.
    pub fn issue_client(&self, common_name: &str) -> Result<Issued> {
        self.issue(
            common_name,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
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
        validity(&mut params, 3);
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
}
