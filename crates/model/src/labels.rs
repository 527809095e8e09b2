//! Security labels and their kvstore string form.
//!
//! A label is `source:key=value` (`k8s:app=rebel-base`). A label set is sorted by key and written
//! as every label followed by `;`:
//! `k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;`.
//! That string is the identity's value in the kvstore and part of allocation keys, so the form
//! is canonical: parsing and printing round-trip.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// Label carrying the cluster name of every workload identity.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// Label carrying the namespace of a pod.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Source of labels that come from Kubernetes-shaped objects.
pub const SOURCE_K8S: &str = "k8s";
/// Source of reserved labels.
pub const SOURCE_RESERVED: &str = "reserved";
/// Source used when a label names none.
pub const SOURCE_UNSPEC: &str = "unspec";

/// One label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Where it comes from (`k8s`, `reserved`, ...).
    pub source: String,
    /// The key.
    pub key: String,
    /// The value (may be empty).
    pub value: String,
}

impl Label {
    /// Builds a label.
    pub fn new(
        source: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        Self {
            source: source.into(),
            key: key.into(),
            value: value.into(),
        }
    }

    /// A `k8s:` label.
    pub fn k8s(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self::new(SOURCE_K8S, key, value)
    }

    /// Parses `source:key=value`; the source is what precedes the first `:` before the first
    /// `=` (`unspec` if none); without `=` the value is empty.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let err = |reason: &str| ModelError::Label {
            label: text.to_string(),
            reason: reason.to_string(),
        };
        if text.contains(';') {
            return Err(err("must not contain ';'"));
        }
        let (head, value) = match text.split_once('=') {
            Some((h, v)) => (h, v),
            None => (text, ""),
        };
        let (source, key) = match head.split_once(':') {
            Some((s, k)) => (s, k),
            None => (SOURCE_UNSPEC, head),
        };
        if key.is_empty() {
            return Err(err("key is empty"));
        }
        if source.is_empty() {
            return Err(err("source before ':' is empty"));
        }
        Ok(Self::new(source, key, value))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}={}", self.source, self.key, self.value)
    }
}

/// A set of labels, one per key, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(BTreeMap<String, Label>);

impl Labels {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the kvstore string form: labels each terminated by `;`.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        if text.is_empty() {
            return Ok(Self::new());
        }
        let Some(body) = text.strip_suffix(';') else {
            return Err(ModelError::Label {
                label: text.to_string(),
                reason: "label string must end with ';'".into(),
            });
        };
        let mut labels = Self::new();
        for part in body.split(';') {
            let label = Label::parse(part)?;
            if labels.0.contains_key(&label.key) {
                return Err(ModelError::Label {
                    label: part.to_string(),
                    reason: "duplicate key".into(),
                });
            }
            labels.insert(label);
        }
        Ok(labels)
    }

    /// Adds or replaces the label with this key.
    pub fn insert(&mut self, label: Label) {
        self.0.insert(label.key.clone(), label);
    }

    /// The label with this key.
    pub fn get(&self, key: &str) -> Option<&Label> {
        self.0.get(key)
    }

    /// Labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.0.values()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The canonical string form (`k8s:a=b;k8s:c=d;`).
    pub fn to_kvstore_string(&self) -> String {
        let mut out = String::new();
        for label in self.0.values() {
            out.push_str(&label.to_string());
            out.push(';');
        }
        out
    }

    /// The same labels with `k8s:io.cilium.k8s.policy.cluster=<cluster>` set.
    pub fn with_cluster(mut self, cluster: &str) -> Self {
        self.insert(Label::k8s(CLUSTER_LABEL, cluster));
        self
    }

    /// The cluster label's value.
    pub fn cluster(&self) -> Option<&str> {
        self.get(CLUSTER_LABEL).map(|l| l.value.as_str())
    }
}

impl FromIterator<Label> for Labels {
    fn from_iter<I: IntoIterator<Item = Label>>(iter: I) -> Self {
        let mut labels = Self::new();
        for label in iter {
            labels.insert(label);
        }
        labels
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_kvstore_string())
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_kvstore_string())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Labels::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_string_sorted_by_key() {
        let labels: Labels = [
            Label::k8s(NAMESPACE_LABEL, "default"),
            Label::k8s("app", "rebel-base"),
        ]
        .into_iter()
        .collect::<Labels>()
        .with_cluster("cluster1");
        let s = "k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;";
        assert_eq!(labels.to_kvstore_string(), s);
        assert_eq!(Labels::parse(s).unwrap(), labels);
        assert_eq!(labels.cluster(), Some("cluster1"));
    }

    #[test]
    fn parsing_details() {
        assert_eq!(Label::parse("app=x").unwrap().source, "unspec");
        assert_eq!(
            Label::parse("k8s:app.kubernetes.io/name=db").unwrap().key,
            "app.kubernetes.io/name"
        );
        assert_eq!(
            Label::parse("reserved:host").unwrap(),
            Label::new("reserved", "host", "")
        );
        assert_eq!(Label::parse("k8s:a=b=c").unwrap().value, "b=c");
        let err = Labels::parse("k8s:a=b").unwrap_err().to_string();
        assert!(err.contains("must end with ';'"), "{err}");
        let err = Labels::parse("k8s:a=b;k8s:=c;").unwrap_err().to_string();
        assert_eq!(err, "invalid label \"k8s:=c\": key is empty");
        assert!(Labels::parse("k8s:a=1;k8s:a=2;").is_err());
        assert!(Labels::parse("").unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn string_form_round_trips(pairs in prop::collection::btree_map("[a-z][a-z0-9./-]{0,12}", "[a-zA-Z0-9._-]{0,10}", 0..6)) {
            let labels: Labels = pairs.iter().map(|(k, v)| Label::k8s(k.clone(), v.clone())).collect();
            let s = labels.to_kvstore_string();
            prop_assert_eq!(Labels::parse(&s).unwrap(), labels);
        }
    }
}
