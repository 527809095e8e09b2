//! Certificates made with the `openssl` binary, the way users make them outside Plexus.
//!
//! Two shapes matter to users coming from Cilium or from a tutorial:
//! - [`helm_ca`] and [`helm_signed_cert`]: what Cilium's Helm chart makes with Sprig's `genCA`
//!   and `genSignedCert` (RSA 2048, X.509 v3; the CA with `basicConstraints CA:TRUE`, the leaf
//!   with key usage `digitalSignature, keyEncipherment` and extended key usage
//!   `serverAuth, clientAuth`, plus subject alternative names);
//! - [`x509_req_v1_cert`]: `openssl req -new` then `openssl x509 -req -CA ... -CAkey ...
//!   -CAcreateserial` without `-extfile`, which makes an X.509 **v1** certificate with no
//!   extensions at all (no subject alternative names, no key usage).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, TestSupportError, io};

/// A CA certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct CaFiles {
    /// The CA certificate (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
}

/// Runs `openssl` in `dir`; its output is the error when it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(io("run openssl"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestSupportError::Io {
            what: format!("openssl {}", args.join(" ")),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        })
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
    Ok(path)
}

/// A CA as Helm's `genCA` makes it: RSA 2048, self-signed, X.509 v3 with
/// `basicConstraints critical CA:TRUE`, key usage `digitalSignature, keyEncipherment,
/// keyCertSign` and extended key usage `serverAuth, clientAuth`. Files `<name>.crt` and
/// `<name>.key` in `dir`.
pub fn helm_ca(dir: &Path, name: &str) -> Result<CaFiles> {
    let config = write(
        dir,
        &format!("{name}-ca.cnf"),
        &format!(
            "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3\n\
             [dn]\nCN = {name}\n\
             [v3]\nbasicConstraints = critical, CA:TRUE\n\
             keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign\n\
             extendedKeyUsage = serverAuth, clientAuth\n\
             subjectKeyIdentifier = hash\n"
        ),
    )?;
    let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "1095",
            "-config",
            &config.to_string_lossy(),
        ],
    )?;
    Ok(CaFiles {
        cert_file: dir.join(cert),
        key_file: dir.join(key),
    })
}

/// A certificate as Helm's `genSignedCert` makes it, signed by `ca`: RSA 2048, X.509 v3 with
/// key usage `digitalSignature, keyEncipherment`, extended key usage `serverAuth, clientAuth`,
/// `basicConstraints CA:FALSE` and subject alternative names `sans` (`IP:127.0.0.1`,
/// `DNS:name`). Returns `(<name>.crt, <name>.key)` in `dir`.
pub fn helm_signed_cert(
    dir: &Path,
    name: &str,
    common_name: &str,
    sans: &[&str],
    ca: &CaFiles,
) -> Result<(PathBuf, PathBuf)> {
    let mut ext = "[v3]\nbasicConstraints = critical, CA:FALSE\n\
                   keyUsage = critical, digitalSignature, keyEncipherment\n\
                   extendedKeyUsage = serverAuth, clientAuth\n\
                   authorityKeyIdentifier = keyid\n"
        .to_string();
    if !sans.is_empty() {
        ext.push_str(&format!("subjectAltName = {}\n", sans.join(", ")));
    }
    let ext = write(dir, &format!("{name}.ext"), &ext)?;
    sign(dir, name, common_name, ca, Some(&ext))
}

/// A certificate as `openssl req -new ...` then `openssl x509 -req -in ... -CA ... -CAkey ...
/// -CAcreateserial -days 1` make it without `-extfile`: X.509 v1, no extensions. Returns
/// `(<name>.crt, <name>.key)` in `dir`.
pub fn x509_req_v1_cert(
    dir: &Path,
    name: &str,
    common_name: &str,
    ca: &CaFiles,
) -> Result<(PathBuf, PathBuf)> {
    sign(dir, name, common_name, ca, None)
}

fn sign(
    dir: &Path,
    name: &str,
    common_name: &str,
    ca: &CaFiles,
    ext: Option<&Path>,
) -> Result<(PathBuf, PathBuf)> {
    let (csr, cert, key) = (
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.key"),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={common_name}"),
        ],
    )?;
    let (ca_cert, ca_key) = (
        ca.cert_file.to_string_lossy().into_owned(),
        ca.key_file.to_string_lossy().into_owned(),
    );
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_cert,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        &cert,
    ];
    let ext = ext.map(|e| e.to_string_lossy().into_owned());
    if let Some(ext) = &ext {
        args.extend(["-extfile", ext, "-extensions", "v3"]);
    }
    openssl(dir, &args)?;
    Ok((dir.join(cert), dir.join(key)))
}
