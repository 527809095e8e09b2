//! Label selectors over identity labels, with Cilium's source prefixes.
//!
//! A selector is a conjunction of requirements (`matchLabels` entries are `In` requirements
//! with one value). A requirement key may carry a label source: `k8s:app` matches only labels
//! of source `k8s`, `reserved:host` only reserved labels, and a key without a source (or with
//! `any:`) matches a label of that key from any source, as in Cilium. Selectors are values:
//! equal selectors are interned once by the [`crate::cache::SelectorCache`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use plexus_model::labels::Labels;
use serde::Deserialize;

use crate::error::{FieldError, field_err};

/// A `matchExpressions` operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum Operator {
    /// The label exists and its value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label exists.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement on a label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The label source the requirement is limited to; `None` matches any source.
    pub source: Option<String>,
    /// The label key.
    pub key: String,
    /// The operator.
    pub op: Operator,
    /// Values for `In` and `NotIn` (empty for the others).
    pub values: BTreeSet<String>,
}

impl Requirement {
    /// Splits a selector key into its source and key: `k8s:app` -> (`k8s`, `app`); a key
    /// without `:` or with source `any` matches any source.
    pub fn split_key(text: &str) -> (Option<String>, String) {
        match text.split_once(':') {
            Some(("any", key)) => (None, key.to_string()),
            Some((source, key)) if !source.is_empty() => {
                (Some(source.to_string()), key.to_string())
            }
            _ => (None, text.to_string()),
        }
    }

    /// `key = value` (`matchLabels`).
    pub fn equals(key: &str, value: &str) -> Self {
        let (source, key) = Self::split_key(key);
        Self {
            source,
            key,
            op: Operator::In,
            values: BTreeSet::from([value.to_string()]),
        }
    }

    /// `key exists`.
    pub fn exists(key: &str) -> Self {
        let (source, key) = Self::split_key(key);
        Self {
            source,
            key,
            op: Operator::Exists,
            values: BTreeSet::new(),
        }
    }

    /// The value of the matching label, if the label exists with an acceptable source.
    fn value_in<'a>(&self, labels: &'a Labels) -> Option<&'a str> {
        let label = labels.get(&self.key)?;
        match &self.source {
            Some(source) if *source != label.source => None,
            _ => Some(label.value.as_str()),
        }
    }

    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = self.value_in(labels);
        match self.op {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => !value.is_some_and(|v| self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector: all requirements must hold. The empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that selects every label set.
    pub fn all() -> Self {
        Self::default()
    }

    /// A selector from requirements (sorted and deduplicated, so equal selectors compare equal).
    pub fn new(requirements: impl IntoIterator<Item = Requirement>) -> Self {
        let mut requirements: Vec<Requirement> = requirements.into_iter().collect();
        requirements.sort();
        requirements.dedup();
        Self { requirements }
    }

    /// A selector of `key=value` pairs.
    pub fn from_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::new(pairs.into_iter().map(|(k, v)| Requirement::equals(k, v)))
    }

    /// The requirements, sorted.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Adds a requirement.
    pub fn add(&mut self, requirement: Requirement) {
        self.requirements.push(requirement);
        self.requirements.sort();
        self.requirements.dedup();
    }

    /// Whether some requirement is on `key` (any source).
    pub fn has_key(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }

    /// Whether some requirement's key starts with `prefix` (any source).
    pub fn has_key_prefix(&self, prefix: &str) -> bool {
        self.requirements.iter().any(|r| r.key.starts_with(prefix))
    }

    /// Whether some requirement is limited to label source `source`.
    pub fn has_source(&self, source: &str) -> bool {
        self.requirements
            .iter()
            .any(|r| r.source.as_deref() == Some(source))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// A `key=value` that every selected label set carries, used to index selectors.
    pub(crate) fn anchor(&self) -> Option<(&str, &str)> {
        self.requirements.iter().find_map(|r| {
            if r.op == Operator::In && r.values.len() == 1 {
                r.values.first().map(|v| (r.key.as_str(), v.as_str()))
            } else {
                None
            }
        })
    }

    /// Builds a selector from its API form; `field` is the path used in errors.
    pub(crate) fn from_api(api: &LabelSelector, field: &str) -> Result<Self, FieldError> {
        let mut requirements = Vec::new();
        for (key, value) in &api.match_labels {
            check_key(key, &format!("{field}.matchLabels"))?;
            requirements.push(Requirement::equals(key, value));
        }
        for (i, expr) in api.match_expressions.iter().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            check_key(&expr.key, &format!("{at}.key"))?;
            let needs_values = matches!(expr.op, Operator::In | Operator::NotIn);
            if needs_values && expr.values.is_empty() {
                return Err(field_err(
                    format!("{at}.values"),
                    format!("operator {:?} needs at least one value", expr.op),
                ));
            }
            if !needs_values && !expr.values.is_empty() {
                return Err(field_err(
                    format!("{at}.values"),
                    format!("operator {:?} takes no values", expr.op),
                ));
            }
            let (source, key) = Requirement::split_key(&expr.key);
            requirements.push(Requirement {
                source,
                key,
                op: expr.op,
                values: expr.values.iter().cloned().collect(),
            });
        }
        Ok(Self::new(requirements))
    }
}

fn check_key(key: &str, field: &str) -> Result<(), FieldError> {
    let (_, bare) = Requirement::split_key(key);
    if bare.is_empty() {
        return Err(field_err(field, format!("label key {key:?} is empty")));
    }
    Ok(())
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let key = match &r.source {
                Some(s) => format!("{s}:{}", r.key),
                None => format!("any:{}", r.key),
            };
            let values = r.values.iter().cloned().collect::<Vec<_>>().join("|");
            match r.op {
                Operator::In if r.values.len() == 1 => write!(f, "{key}={values}")?,
                Operator::In => write!(f, "{key} in ({values})")?,
                Operator::NotIn => write!(f, "{key} notin ({values})")?,
                Operator::Exists => write!(f, "{key}")?,
                Operator::DoesNotExist => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

/// A Kubernetes label selector as written in a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// `key: value` pairs that must all match.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Expressions that must all match.
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key, optionally with a source prefix (`k8s:app`).
    pub key: String,
    /// The operator.
    #[serde(rename = "operator")]
    pub op: Operator,
    /// Values for `In` and `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use plexus_model::labels::Label;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| Label::parse(&format!("{k}={v}")).unwrap())
            .collect()
    }

    #[test]
    fn sources_and_operators() {
        let l = labels(&[("k8s:app", "db"), ("reserved:host", "")]);
        assert!(Selector::from_labels([("app", "db")]).matches(&l));
        assert!(Selector::from_labels([("k8s:app", "db")]).matches(&l));
        assert!(Selector::from_labels([("any:app", "db")]).matches(&l));
        assert!(!Selector::from_labels([("container:app", "db")]).matches(&l));
        assert!(Selector::new([Requirement::exists("reserved:host")]).matches(&l));
        assert!(!Selector::new([Requirement::exists("k8s:host")]).matches(&l));
        let not_in = Requirement {
            source: None,
            key: "tier".into(),
            op: Operator::NotIn,
            values: BTreeSet::from(["x".to_string()]),
        };
        assert!(not_in.matches(&l), "NotIn matches an absent key");
        let dne = Requirement {
            op: Operator::DoesNotExist,
            values: BTreeSet::new(),
            ..not_in
        };
        assert!(dne.matches(&l));
        assert!(Selector::all().matches(&l));
        assert_eq!(
            Selector::from_labels([("a", "1"), ("b", "2")]),
            Selector::from_labels([("b", "2"), ("a", "1")])
        );
    }
}
