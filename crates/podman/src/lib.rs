//! `plexus-podman`: the workload identity of a podman container (its name, pod, namespace and
//! identity labels), read from podman's stored state.
//!
//! Why not podman's REST API: while podman runs a CNI ADD it holds the container's (and the
//! pod's) lock, and the API's container inspect and list wait for that lock, so an agent asking
//! the API from inside ADD deadlocks. podman 4.3 stores every container's and pod's
//! configuration in a BoltDB file (`<graphroot>/libpod/bolt_state.db`, written before the
//! container starts), which [`PodmanState`] reads without podman's container locks: it takes
//! a shared `flock` on the file, as any bbolt reader does, for the few milliseconds a lookup
//! takes (see [`bolt`]).
//!
//! podman's layout (`libpod/boltdb_state_internal.go`, podman v4.3): the top-level bucket
//! `ctr` holds one bucket per container id with its `config` (JSON: `name`, `pod`, `labels`,
//! `pause` for a pod's infra container); the bucket `pod` holds one bucket per pod id with its
//! `config` (JSON: `name`, `labels`). `podman kube play` puts a Deployment template's labels on
//! the pod, and the CNI ADD of a pod is for its infra container, so an infra container's
//! identity is its pod's. See [`labels`] for which labels make an identity.

pub mod bolt;
pub mod labels;
pub mod sandbox;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use bolt::{BoltError, Snapshot};

/// Where podman 4.3 keeps its state when run as root with the default storage.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/containers/storage/libpod/bolt_state.db";
/// How long a lookup waits for podman to release its exclusive lock on the file (podman holds
/// it for one short database operation at a time).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

const CTR_BUCKET: &[u8] = b"ctr";
const POD_BUCKET: &[u8] = b"pod";
const CONFIG_KEY: &[u8] = b"config";

/// The identity of a podman workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The container's name (for an infra container, podman's `<pod id>-infra`).
    pub container_name: String,
    /// The name of the container's pod, if it is in one.
    pub pod_name: Option<String>,
    /// The namespace: the label `io.kubernetes.pod.namespace`, else `default`.
    pub namespace: String,
    /// The identity labels, validated, without the ones runtimes add ([`labels::is_ignored`]).
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// The name the workload's endpoint is listed under: its pod's, else the container's.
    pub fn endpoint_name(&self) -> &str {
        self.pod_name.as_deref().unwrap_or(&self.container_name)
    }
}

/// Why a workload's identity cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    /// podman's state file cannot be read (missing, locked, not a bolt file, corrupt).
    #[error("podman state: {0}")]
    State(#[from] BoltError),
    /// The state has no such container.
    #[error("podman state {}: no container {id}", path.display())]
    NoContainer {
        /// The state file.
        path: PathBuf,
        /// The container id asked for.
        id: String,
    },
    /// The state lacks something podman always writes (a bucket, a config).
    #[error("podman state {}: {what} is missing", path.display())]
    Missing {
        /// The state file.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A stored configuration is not the JSON podman writes.
    #[error("podman state {}: {object}: config is not valid: {reason}", path.display())]
    Config {
        /// The state file.
        path: PathBuf,
        /// The container or pod.
        object: String,
        /// Why.
        reason: String,
    },
    /// A label is not a valid Kubernetes label key or value.
    #[error("{object}: label {key:?}: {reason}")]
    Label {
        /// The container (and pod) whose label it is.
        object: String,
        /// The label's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The part of podman's container config (`libpod.ContainerConfig`) an identity needs.
#[derive(Debug, Deserialize)]
struct ContainerConfig {
    #[serde(default)]
    name: String,
    #[serde(default)]
    pod: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    /// `IsInfra` in podman's Go type.
    #[serde(default)]
    pause: bool,
}

/// The part of podman's pod config (`libpod.PodConfig`) an identity needs.
#[derive(Debug, Deserialize)]
struct PodConfig {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// podman's stored state: one BoltDB file, read afresh on every lookup.
#[derive(Clone, Debug)]
pub struct PodmanState {
    path: PathBuf,
    lock_timeout: Duration,
}

impl PodmanState {
    /// The state at `db_path` (`<graphroot>/libpod/bolt_state.db`); nothing is read yet.
    pub fn open(db_path: impl Into<PathBuf>) -> Self {
        Self {
            path: db_path.into(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }

    /// The same state, waiting at most `timeout` for podman's lock.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn config<T: for<'de> Deserialize<'de>>(
        &self,
        snap: &Snapshot,
        bucket: &[u8],
        id: &str,
        kind: &str,
    ) -> Result<Option<T>, PodmanError> {
        let missing = |what: String| PodmanError::Missing {
            path: self.path.clone(),
            what,
        };
        let top = snap
            .bucket(&snap.root(), bucket)?
            .ok_or_else(|| missing(format!("bucket {:?}", String::from_utf8_lossy(bucket))))?;
        let Some(obj) = snap.bucket(&top, id.as_bytes())? else {
            return Ok(None);
        };
        let raw = snap
            .value(&obj, CONFIG_KEY)?
            .ok_or_else(|| missing(format!("the config of {kind} {id}")))?;
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| PodmanError::Config {
                path: self.path.clone(),
                object: format!("{kind} {id}"),
                reason: e.to_string(),
            })
    }

    /// The workload identity of container `container_id` (the full id, as CNI_CONTAINERID
    /// gives it): for a pod's infra container, its pod's name and labels.
    pub fn workload(&self, container_id: &str) -> Result<Workload, PodmanError> {
        let snap = Snapshot::open(&self.path, self.lock_timeout)?;
        let ctr: ContainerConfig = self
            .config(&snap, CTR_BUCKET, container_id, "container")?
            .ok_or_else(|| PodmanError::NoContainer {
                path: self.path.clone(),
                id: container_id.to_string(),
            })?;
        let pod: Option<PodConfig> = if ctr.pod.is_empty() {
            None
        } else {
            Some(
                self.config(&snap, POD_BUCKET, &ctr.pod, "pod")?
                    .ok_or_else(|| PodmanError::Missing {
                        path: self.path.clone(),
                        what: format!("pod {} of container {container_id}", ctr.pod),
                    })?,
            )
        };
        drop(snap);
        let object = match &pod {
            Some(p) => format!("container {} (pod {})", ctr.name, p.name),
            None => format!("container {}", ctr.name),
        };
        let raw = match (&pod, ctr.pause) {
            (Some(p), true) => p.labels.clone().unwrap_or_default(),
            _ => ctr.labels.clone().unwrap_or_default(),
        };
        let (namespace, labels) = identity(&object, &raw)?;
        Ok(Workload {
            container_name: ctr.name,
            pod_name: pod.map(|p| p.name),
            namespace,
            labels,
        })
    }
}

/// Splits stored labels into the namespace and the validated identity labels of `object`.
pub fn identity(
    object: &str,
    raw: &BTreeMap<String, String>,
) -> Result<(String, BTreeMap<String, String>), PodmanError> {
    let label_err = |key: &str, reason: String| PodmanError::Label {
        object: object.to_string(),
        key: key.to_string(),
        reason,
    };
    let namespace = match raw.get(labels::NAMESPACE_LABEL) {
        Some(ns) => {
            labels::validate_namespace(ns).map_err(|r| label_err(labels::NAMESPACE_LABEL, r))?;
            ns.clone()
        }
        None => labels::DEFAULT_NAMESPACE.to_string(),
    };
    let mut out = BTreeMap::new();
    for (key, value) in raw {
        if labels::is_ignored(key) {
            continue;
        }
        labels::validate_key(key).map_err(|r| label_err(key, format!("invalid key: {r}")))?;
        labels::validate_value(value).map_err(|r| label_err(key, format!("invalid value: {r}")))?;
        out.insert(key.clone(), value.clone());
    }
    Ok((namespace, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn identity_filters_and_validates() {
        let (ns, l) = identity(
            "container web",
            &map(&[
                ("app", "web"),
                ("io.buildah.version", "1.28.2"),
                ("org.opencontainers.image.title", "x y"),
                ("io.kubernetes.pod.namespace", "prod"),
            ]),
        )
        .unwrap();
        assert_eq!(ns, "prod");
        assert_eq!(l, map(&[("app", "web")]));
        let (ns, l) = identity("container c", &map(&[])).unwrap();
        assert_eq!((ns.as_str(), l.len()), ("default", 0));
        let err = identity("container web", &map(&[("app", "web server")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "container web: label \"app\": invalid value: value \"web server\" must be letters, \
             digits, '-', '_' or '.', starting and ending with a letter or digit"
        );
        let err = identity("container web", &map(&[("bad key", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("label \"bad key\": invalid key"), "{err}");
        let err = identity(
            "container web",
            &map(&[("io.kubernetes.pod.namespace", "Prod")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("io.kubernetes.pod.namespace"), "{err}");
    }
}
