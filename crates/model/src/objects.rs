//! Namespace and Pod objects in the cluster's kvstore, and the identity labels they give a pod.
//!
//! In kvstore mode (no Kubernetes API) the cluster's objects live under `plexus/objects/v1/`.
//! Namespaces are stored whole (`plexus/objects/v1/namespaces/<name>`); pods only with their
//! metadata (`plexus/objects/v1/pods/<namespace>/<name>`): what the agents need to give a pod
//! its identity (labels) is there, its spec stays with whatever runs it (the lab, podman). The
//! values are Kubernetes JSON (`{"apiVersion":"v1","kind":"Namespace","metadata":{...}}`), so a
//! Kubernetes object source can hand the agents the same types.
//!
//! A pod's identity labels are its own labels, its namespace, and its namespace's labels under
//! `io.cilium.k8s.namespace.labels.`, all with the `k8s` source, as Cilium builds them
//! ([`pod_identity_labels`]). Like Kubernetes, every namespace carries
//! `kubernetes.io/metadata.name=<name>`, stored or not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::labels::{Label, Labels, NAMESPACE_LABEL};

/// Kvstore prefix of Namespace objects: `plexus/objects/v1/namespaces/<name>`.
pub const NAMESPACES_PREFIX: &str = "plexus/objects/v1/namespaces/";
/// Kvstore prefix of Pod objects (metadata): `plexus/objects/v1/pods/<namespace>/<name>`.
pub const PODS_PREFIX: &str = "plexus/objects/v1/pods/";
/// Prefix of the identity labels that carry a pod's namespace's labels (Cilium's).
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The label Kubernetes puts on every namespace, with the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The annotation holding the configuration `apply` last wrote (kubectl's).
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Metadata of a stored object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Name.
    pub name: String,
    /// Namespace (pods only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A Namespace object as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceObject {
    /// `v1`.
    pub api_version: String,
    /// `Namespace`.
    pub kind: String,
    /// Its metadata.
    pub metadata: ObjectMeta,
}

/// A Pod's metadata as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodObject {
    /// `v1`.
    pub api_version: String,
    /// `Pod`.
    pub kind: String,
    /// Its metadata (name, namespace, labels, annotations).
    pub metadata: ObjectMeta,
}

impl NamespaceObject {
    /// A namespace with these labels.
    pub fn new(name: &str, labels: BTreeMap<String, String>) -> Self {
        Self {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            metadata: ObjectMeta {
                name: name.into(),
                labels,
                ..ObjectMeta::default()
            },
        }
    }

    /// Its kvstore key.
    pub fn key(&self) -> String {
        namespace_key(&self.metadata.name)
    }

    /// Parses a stored value; `key` (the full kvstore key) must match its name.
    pub fn from_kv(key: &str, value: &[u8]) -> Result<Self, ModelError> {
        let obj: Self =
            serde_json::from_slice(value).map_err(|e| ModelError::json("namespace", key, &e))?;
        if obj.kind != "Namespace" {
            return Err(ModelError::field(
                "namespace",
                key,
                "kind",
                "is not Namespace",
            ));
        }
        if obj.key() != key {
            return Err(ModelError::field(
                "namespace",
                key,
                "metadata.name",
                format!("{:?} does not match the key", obj.metadata.name),
            ));
        }
        Ok(obj)
    }
}

impl PodObject {
    /// A pod with these labels.
    pub fn new(namespace: &str, name: &str, labels: BTreeMap<String, String>) -> Self {
        Self {
            api_version: "v1".into(),
            kind: "Pod".into(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: namespace.into(),
                labels,
                ..ObjectMeta::default()
            },
        }
    }

    /// Its kvstore key.
    pub fn key(&self) -> String {
        pod_key(&self.metadata.namespace, &self.metadata.name)
    }

    /// Parses a stored value; `key` (the full kvstore key) must match its namespace and name.
    pub fn from_kv(key: &str, value: &[u8]) -> Result<Self, ModelError> {
        let obj: Self =
            serde_json::from_slice(value).map_err(|e| ModelError::json("pod", key, &e))?;
        if obj.kind != "Pod" {
            return Err(ModelError::field("pod", key, "kind", "is not Pod"));
        }
        if obj.key() != key {
            return Err(ModelError::field(
                "pod",
                key,
                "metadata",
                format!(
                    "{}/{} does not match the key",
                    obj.metadata.namespace, obj.metadata.name
                ),
            ));
        }
        Ok(obj)
    }
}

/// `plexus/objects/v1/namespaces/<name>`.
pub fn namespace_key(name: &str) -> String {
    format!("{NAMESPACES_PREFIX}{name}")
}

/// `plexus/objects/v1/pods/<namespace>/<name>`.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{PODS_PREFIX}{namespace}/{name}")
}

/// The identity labels of a pod (without the cluster label, which the allocator adds): its
/// labels, `io.kubernetes.pod.namespace=<namespace>`, and each label of its namespace as
/// `io.cilium.k8s.namespace.labels.<key>=<value>` (always including
/// `kubernetes.io/metadata.name=<namespace>`), every one with the `k8s` source.
pub fn pod_identity_labels(
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    pod_labels: &BTreeMap<String, String>,
) -> Labels {
    let mut out = Labels::new();
    for (k, v) in pod_labels {
        out.insert(Label::k8s(k.clone(), v.clone()));
    }
    for (k, v) in namespace_labels {
        out.insert(Label::k8s(
            format!("{NAMESPACE_LABELS_PREFIX}{k}"),
            v.clone(),
        ));
    }
    out.insert(Label::k8s(
        format!("{NAMESPACE_LABELS_PREFIX}{NAMESPACE_NAME_LABEL}"),
        namespace,
    ));
    out.insert(Label::k8s(NAMESPACE_LABEL, namespace));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_object_is_kubernetes_json() {
        let ns = NamespaceObject::new("x", BTreeMap::from([("ns".into(), "x".into())]));
        let json = serde_json::to_string(&ns).unwrap();
        assert_eq!(
            json,
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x","labels":{"ns":"x"}}}"#
        );
        assert_eq!(ns.key(), "plexus/objects/v1/namespaces/x");
        assert_eq!(
            NamespaceObject::from_kv(&ns.key(), json.as_bytes()).unwrap(),
            ns
        );
    }

    #[test]
    fn pod_object_is_kubernetes_json_and_checked_against_its_key() {
        let pod = PodObject::new("x", "a", BTreeMap::from([("pod".into(), "a".into())]));
        let json = serde_json::to_string(&pod).unwrap();
        assert_eq!(
            json,
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"x","labels":{"pod":"a"}}}"#
        );
        assert_eq!(
            PodObject::from_kv(&pod.key(), json.as_bytes()).unwrap(),
            pod
        );
        let err = PodObject::from_kv("plexus/objects/v1/pods/y/a", json.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("plexus/objects/v1/pods/y/a"),
            "{err}"
        );
    }

    #[test]
    fn identity_labels_carry_the_namespace_labels_as_cilium_does() {
        let labels = pod_identity_labels(
            "x",
            &BTreeMap::from([("ns".into(), "x".into())]),
            &BTreeMap::from([("pod".into(), "a".into())]),
        );
        assert_eq!(
            labels.to_kvstore_string(),
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x;\
             k8s:io.cilium.k8s.namespace.labels.ns=x;k8s:io.kubernetes.pod.namespace=x;k8s:pod=a;"
        );
    }
}
