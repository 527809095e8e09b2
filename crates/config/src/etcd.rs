//! The etcd client keys every daemon shares (`etcd-endpoints`, `etcd-ca`, `etcd-cert`,
//! `etcd-key`), turned into the kvstore's [`EtcdConfig`] in one place.

use std::path::{Path, PathBuf};

use plexus_kvstore::{EtcdConfig, TlsFiles};

use crate::{ConfigError, invalid};

/// The TLS client identity of `etcd-ca`, `etcd-cert` and `etcd-key`: all three, or none for
/// plain TCP. `file` is the configuration file, named in the error.
pub fn etcd_tls(
    ca: Option<&PathBuf>,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    file: Option<&Path>,
) -> Result<Option<TlsFiles>, ConfigError> {
    TlsFiles::from_parts(ca, cert, key)
        .map_err(|e| invalid("etcd-ca, etcd-cert, etcd-key", e, file))
}

/// How to reach the etcd of `etcd-endpoints` with the identity of [`etcd_tls`].
pub fn etcd_config(
    endpoints: &[String],
    ca: Option<&PathBuf>,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    file: Option<&Path>,
) -> Result<EtcdConfig, ConfigError> {
    if endpoints.is_empty() {
        return Err(invalid("etcd-endpoints", "no endpoint given", file));
    }
    let config = EtcdConfig::new(endpoints.to_vec());
    Ok(match etcd_tls(ca, cert, key, file)? {
        Some(tls) => config.with_tls(tls),
        None => config,
    })
}
