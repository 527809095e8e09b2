//! The clustermesh configuration directory: one file per remote cluster.
//!
//! As with Cilium, the file name is the remote cluster's name and the file is an etcd client
//! configuration:
//!
//! ```yaml
//! endpoints:
//! - https://cluster2.mesh.local:2379
//! trusted-ca-file: /var/lib/plexus/clustermesh/cluster2.etcd-client-ca.crt
//! cert-file: /var/lib/plexus/clustermesh/cluster2.etcd-client.crt
//! key-file: /var/lib/plexus/clustermesh/cluster2.etcd-client.key
//! ```
//!
//! A relative file path is relative to the configuration directory, so a directory written on
//! one machine (`plexus clustermesh connect` writes file names) can be copied to the nodes of a
//! cluster wherever they keep it.
//!
//! Only files that contain `endpoints:` are configurations (a mounted secret also holds the
//! certificates beside them); hidden files are skipped. [`ConfigDir::scan`] reports what was
//! added, changed (by content hash) or removed since the last scan, so the manager connects,
//! reconnects or disconnects-and-drains exactly the remotes whose files changed. A file that
//! cannot be parsed is reported with its path and reason and leaves the remote as it was.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use plexus_model::cluster::validate_cluster_name;
use serde::Deserialize;

/// Why a configuration file or directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The directory or a file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not a valid remote-cluster configuration.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
}

/// How to reach one remote cluster's kvstore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteClusterConfig {
    /// The remote cluster's name (the file name).
    pub name: String,
    /// Its etcd client URLs.
    pub endpoints: Vec<String>,
    /// CA that signed the remote's server certificate.
    pub trusted_ca_file: Option<PathBuf>,
    /// Our client certificate for the remote.
    pub cert_file: Option<PathBuf>,
    /// Our client key for the remote.
    pub key_file: Option<PathBuf>,
    /// Hash of the file's content: a change means reconnect.
    pub content_hash: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileFormat {
    endpoints: Vec<String>,
    #[serde(default)]
    trusted_ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
}

fn content_hash(contents: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    contents.hash(&mut h);
    h.finish()
}

/// Parses the configuration in `path` for remote `name`. `Ok(None)` when the file is not a
/// configuration (no `endpoints:`).
pub fn parse(
    name: &str,
    path: &Path,
    contents: &str,
) -> Result<Option<RemoteClusterConfig>, ConfigError> {
    if !contents.contains("endpoints:") {
        return Ok(None);
    }
    let invalid = |reason: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    validate_cluster_name(name, true).map_err(|e| invalid(format!("file name: {e}")))?;
    let file: FileFormat = serde_norway::from_str(contents).map_err(|e| invalid(e.to_string()))?;
    if file.endpoints.is_empty() {
        return Err(invalid("endpoints: at least one endpoint is needed".into()));
    }
    for endpoint in &file.endpoints {
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(invalid(format!(
                "endpoints: {endpoint:?} is not an http(s) URL"
            )));
        }
    }
    let tls = [&file.trusted_ca_file, &file.cert_file, &file.key_file];
    let given = tls.iter().filter(|f| f.is_some()).count();
    if given != 0 && given != 3 {
        return Err(invalid(
            "trusted-ca-file, cert-file and key-file go together".into(),
        ));
    }
    if given == 0 && file.endpoints.iter().any(|e| e.starts_with("https://")) {
        return Err(invalid(
            "https endpoints need trusted-ca-file, cert-file and key-file".into(),
        ));
    }
    // Relative to the directory the file is in, not to the reader's working directory.
    let resolve = |f: Option<PathBuf>| {
        f.map(|f| match path.parent() {
            Some(dir) if f.is_relative() => dir.join(f),
            _ => f,
        })
    };
    Ok(Some(RemoteClusterConfig {
        name: name.to_string(),
        endpoints: file.endpoints,
        trusted_ca_file: resolve(file.trusted_ca_file),
        cert_file: resolve(file.cert_file),
        key_file: resolve(file.key_file),
        content_hash: content_hash(contents),
    }))
}

/// A change of the configuration directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// A remote was configured.
    Added(RemoteClusterConfig),
    /// A remote's configuration changed: reconnect.
    Changed(RemoteClusterConfig),
    /// A remote's configuration is gone: disconnect and drain its state.
    Removed(String),
}

/// The result of one scan.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// What changed, sorted by cluster name.
    pub changes: Vec<ConfigChange>,
    /// Files that could not be used; their remotes keep their previous configuration.
    pub errors: Vec<ConfigError>,
}

/// Tracks the configuration directory between scans.
#[derive(Debug)]
pub struct ConfigDir {
    path: PathBuf,
    known: HashMap<String, u64>,
}

impl ConfigDir {
    /// Tracks `path`; nothing is known before the first scan.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            known: HashMap::new(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the directory and reports what changed since the last scan. A missing directory
    /// means no remotes.
    pub fn scan(&mut self) -> Result<ScanResult, ConfigError> {
        let mut result = ScanResult::default();
        let mut seen: BTreeMap<String, Option<RemoteClusterConfig>> = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => {
                entries
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| ConfigError::Io {
                        path: self.path.clone(),
                        source,
                    })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(ConfigError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') || !path.is_file() {
                continue;
            }
            let contents = match std::fs::read_to_string(&path) {
                Ok(c) => c,
                Err(source) => {
                    result.errors.push(ConfigError::Io { path, source });
                    seen.insert(name, None);
                    continue;
                }
            };
            match parse(&name, &path, &contents) {
                Ok(Some(config)) => {
                    seen.insert(name, Some(config));
                }
                Ok(None) => {}
                Err(err) => {
                    result.errors.push(err);
                    // Keep the previous configuration of this remote, if any.
                    seen.insert(name, None);
                }
            }
        }
        let mut removed: Vec<String> = self
            .known
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect();
        removed.sort();
        for name in removed {
            self.known.remove(&name);
            result.changes.push(ConfigChange::Removed(name));
        }
        for (name, config) in seen {
            let Some(config) = config else { continue };
            match self.known.insert(name, config.content_hash) {
                None => result.changes.push(ConfigChange::Added(config)),
                Some(old) if old != config.content_hash => {
                    result.changes.push(ConfigChange::Changed(config))
                }
                Some(_) => {}
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str = "endpoints:\n- https://127.0.0.1:2379\ntrusted-ca-file: /etc/ca.crt\ncert-file: /etc/c.crt\nkey-file: /etc/c.key\n";

    #[test]
    fn parses_cilium_shaped_files() {
        let c = parse("cluster2", Path::new("/d/cluster2"), TLS)
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoints, ["https://127.0.0.1:2379"]);
        assert_eq!(c.key_file.as_deref(), Some(Path::new("/etc/c.key")));
        assert!(
            parse(
                "cluster2",
                Path::new("/d/cluster2"),
                "-----BEGIN CERTIFICATE-----"
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn relative_files_are_relative_to_the_directory() {
        let rel = "endpoints:\n- https://127.0.0.1:2379\ntrusted-ca-file: c2.etcd-client-ca.crt\ncert-file: c2.etcd-client.crt\nkey-file: /abs/c2.key\n";
        let c = parse("c2", Path::new("/etc/plexus/clustermesh/c2"), rel)
            .unwrap()
            .unwrap();
        assert_eq!(
            c.trusted_ca_file.as_deref(),
            Some(Path::new("/etc/plexus/clustermesh/c2.etcd-client-ca.crt"))
        );
        assert_eq!(
            c.cert_file.as_deref(),
            Some(Path::new("/etc/plexus/clustermesh/c2.etcd-client.crt"))
        );
        assert_eq!(c.key_file.as_deref(), Some(Path::new("/abs/c2.key")));
    }

    #[test]
    fn bad_files_name_the_file_and_field() {
        let err = parse(
            "cluster2",
            Path::new("/d/cluster2"),
            "endpoints:\n- https://x:2379\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/d/cluster2: https endpoints need trusted-ca-file, cert-file and key-file"
        );
        let err = parse("Cluster2", Path::new("/d/Cluster2"), TLS)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/d/Cluster2: file name: invalid cluster name"),
            "{err}"
        );
        let err = parse("c2", Path::new("/d/c2"), "endpoints: 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoints"), "{err}");
        let err = parse("c2", Path::new("/d/c2"), "endpoints: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one endpoint"), "{err}");
        let err = parse(
            "c2",
            Path::new("/d/c2"),
            "endpoints:\n- http://x\ncert-file: /a\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("go together"), "{err}");
        let err = parse(
            "c2",
            Path::new("/d/c2"),
            "endpoints:\n- http://x\nbogus: 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn scans_report_added_changed_removed_and_keep_broken_remotes() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ConfigDir::new(dir.path().join("missing"));
        assert!(
            config.scan().unwrap().changes.is_empty(),
            "a missing directory means no remotes"
        );

        let mut config = ConfigDir::new(dir.path());
        std::fs::write(dir.path().join("c2"), TLS).unwrap();
        std::fs::write(dir.path().join("c3"), "endpoints:\n- http://127.0.0.1:1\n").unwrap();
        std::fs::write(dir.path().join("c2.crt"), "-----BEGIN CERTIFICATE-----").unwrap();
        std::fs::write(dir.path().join(".hidden"), TLS).unwrap();
        let scan = config.scan().unwrap();
        let names: Vec<_> = scan
            .changes
            .iter()
            .map(|c| match c {
                ConfigChange::Added(c) => c.name.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["c2", "c3"]);
        assert!(config.scan().unwrap().changes.is_empty(), "nothing changed");

        std::fs::write(dir.path().join("c3"), "endpoints:\n- http://127.0.0.1:2\n").unwrap();
        let scan = config.scan().unwrap();
        assert!(
            matches!(&scan.changes[..], [ConfigChange::Changed(c)] if c.endpoints == ["http://127.0.0.1:2"])
        );

        // A broken edit keeps the remote connected as it was; removing the file drains it.
        std::fs::write(dir.path().join("c3"), "endpoints: [\n").unwrap();
        let scan = config.scan().unwrap();
        assert!(scan.changes.is_empty());
        assert!(scan.errors[0].to_string().contains("c3"));
        std::fs::remove_file(dir.path().join("c3")).unwrap();
        std::fs::remove_file(dir.path().join("c2")).unwrap();
        let scan = config.scan().unwrap();
        assert_eq!(
            scan.changes,
            [
                ConfigChange::Removed("c2".into()),
                ConfigChange::Removed("c3".into())
            ]
        );
    }
}
