//! Configuration files of the Plexus daemons.
//!
//! A daemon's file is flat YAML whose keys are exactly its long flag names (as Cilium's agent
//! configuration keys equal its flags): `cluster-name: c1`, `etcd-endpoints: [https://...]`.
//! Each schema ([`AgentConfig`], [`ApiServerConfig`], [`DnsConfig`]) is one struct of optional
//! fields that is at the same time the daemon's flag set (`clap::Args`) and its file format
//! (serde, unknown keys refused), so every option is listed once. A daemon parses its flags,
//! reads `--config FILE` with [`load`], lays the flags over the file with [`layer`] (a flag
//! given on the command line wins), and resolves the result into its own options, where
//! [`required`] names a value missing from both.
//!
//! Values are checked as the flags check them (a CIDR, an address, a duration that does not
//! parse is refused), and every error names the file and the key at fault:
//! `/etc/plexus/agent.yaml: cluster-id: invalid type: string "x", expected u32`.
//!
//! The schemas serialize too (absent values are left out), so tools such as `plexus node join`
//! write a daemon's file with the same types it is read with ([`to_yaml`]).

/// `load` and `to_yaml` as methods of a schema, for its users' convenience.
macro_rules! file_methods {
    ($schema:ty) => {
        impl $schema {
            /// Reads and checks the configuration file at `path`.
            pub fn load(path: &std::path::Path) -> Result<Self, $crate::ConfigError> {
                $crate::load(path)
            }

            /// This configuration as the YAML of its file, absent values left out.
            pub fn to_yaml(&self) -> Result<String, $crate::ConfigError> {
                $crate::to_yaml(self)
            }
        }
    };
}
pub(crate) use file_methods;

pub mod agent;
pub mod apiserver;
pub mod dns;
pub mod encryption;
mod etcd;
mod value;

use std::path::{Path, PathBuf};

pub use agent::AgentConfig;
pub use apiserver::ApiServerConfig;
pub use dns::DnsConfig;
pub use encryption::Encryption;
pub use etcd::{etcd_config, etcd_tls};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What is wrong with a daemon's configuration (its file, its flags, or both together).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML of the schema: an unknown key, or a value of the wrong type
    /// or that does not parse.
    #[error("{}: {}{message}", path.display(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The key at fault (`None` when the error is about the whole document, such as an
        /// unknown key, which its message names).
        key: Option<String>,
        /// The parser's message.
        message: String,
    },
    /// A value the daemon needs is neither a flag nor a key of the file.
    #[error("--{key} is required: give the flag or `{key}:` in {}", in_file(file.as_deref()))]
    Missing {
        /// The flag name, which is also the key.
        key: &'static str,
        /// The configuration file, if one was given.
        file: Option<PathBuf>,
    },
    /// A value, or a combination of values, from the flags or the file is refused.
    #[error("{keys} in {}: {message}", flags_and(file.as_deref()))]
    Invalid {
        /// The keys at fault (flag names without `--`), comma-separated.
        keys: String,
        /// Why the value is refused.
        message: String,
        /// The configuration file, if one was given.
        file: Option<PathBuf>,
    },
    /// A schema could not be written as YAML (a bug: every schema serializes).
    #[error("write the configuration as YAML: {0}")]
    Serialize(#[from] serde_norway::Error),
}

fn flags_and(file: Option<&Path>) -> String {
    match file {
        Some(f) => format!("the flags and {}", f.display()),
        None => "the flags".to_string(),
    }
}

fn in_file(file: Option<&Path>) -> String {
    match file {
        Some(f) => f.display().to_string(),
        None => "a --config file".to_string(),
    }
}

/// Reads and checks the configuration file at `path` into schema `T`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_yaml(&text, path)
}

/// Parses `text`, the contents of the file `path` (named in errors), into schema `T`.
pub fn from_yaml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    // A file of only comments is an empty configuration, not an error.
    let text = if is_blank(text) { "{}" } else { text };
    serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text))
        .map_err(|e| parse_error(path, e))
}

/// The error of `path` with the key at fault, said once: serde_norway already starts its
/// messages with the key below the document's root, and an unknown field's message names it.
fn parse_error(path: &Path, e: serde_path_to_error::Error<serde_norway::Error>) -> ConfigError {
    let key = e.path().iter().next().map(|_| e.path().to_string());
    let message = e.into_inner().to_string();
    let (key, message) = match key {
        Some(k) if message.contains(&format!("unknown field `{k}`")) => (None, message),
        Some(k) => {
            let message = message
                .strip_prefix(&format!("{k}: "))
                .map(str::to_string)
                .unwrap_or(message);
            (Some(k), message)
        }
        None => (None, message),
    };
    ConfigError::Parse {
        path: path.to_path_buf(),
        key,
        message,
    }
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    })
}

/// A schema as YAML, absent values left out.
pub fn to_yaml<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    Ok(serde_norway::to_string(config)?)
}

/// Lays `flags` (what the command line gave) over the file `file` (if any): a value given as a
/// flag wins over the file's. Returns the combined configuration.
pub fn layer<T>(file: Option<&Path>, flags: T) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let Some(path) = file else {
        return Ok(flags);
    };
    let from_file: T = load(path)?;
    overlay(from_file, flags, path)
}

/// `top`'s present values over `base`'s. Both go through their YAML form, where absent values
/// are left out, so this holds for every schema without listing its keys again.
fn overlay<T>(base: T, top: T, path: &Path) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let mapping = |v: &T| -> Result<serde_norway::Mapping, ConfigError> {
        match serde_norway::to_value(v)? {
            serde_norway::Value::Mapping(m) => Ok(m),
            _ => Ok(serde_norway::Mapping::new()),
        }
    };
    let mut merged = mapping(&base)?;
    for (k, v) in mapping(&top)? {
        merged.insert(k, v);
    }
    serde_path_to_error::deserialize(serde_norway::Value::Mapping(merged))
        .map_err(|e| parse_error(path, e))
}

/// `value`, or the error that `--key` is missing from both the flags and `file`.
pub fn required<T>(
    value: Option<T>,
    key: &'static str,
    file: Option<&Path>,
) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError::Missing {
        key,
        file: file.map(Path::to_path_buf),
    })
}

/// The error that the values of `keys` (flags or file; comma-separated flag names without
/// `--`) are refused because of `message`.
pub fn invalid(keys: &str, message: impl std::fmt::Display, file: Option<&Path>) -> ConfigError {
    ConfigError::Invalid {
        keys: keys.to_string(),
        message: message.to_string(),
        file: file.map(Path::to_path_buf),
    }
}
