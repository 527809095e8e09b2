//! Parsing policy files: YAML or JSON, one or more documents, all or nothing.
//!
//! [`parse_documents`] parses every document of a file and returns every policy or the first
//! error; nothing of a file with one bad document is returned, so nothing of it can be applied.
//! Errors name the document, the object (`CiliumNetworkPolicy default/name`), the field path
//! and the reason. Empty documents are skipped.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::api;
use crate::error::PolicyError;
use crate::rule::{self, Policy, PolicyKey, PolicyKind};

/// Whether `kind` is a policy kind this crate parses.
pub fn is_policy_kind(kind: &str) -> bool {
    PolicyKind::from_name(kind).is_some()
}

/// Parses every document of `text` (YAML; JSON is YAML too). Namespaced objects without
/// `metadata.namespace` are put in `default_namespace`.
pub fn parse_documents(text: &str, default_namespace: &str) -> Result<Vec<Policy>, PolicyError> {
    let mut out: Vec<Policy> = Vec::new();
    let mut seen: BTreeMap<PolicyKey, usize> = BTreeMap::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = serde_json::Value::deserialize(doc).map_err(|e| PolicyError::Syntax {
            document,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let policy = parse_value(&value, document, default_namespace)?;
        if let Some(first) = seen.insert(policy.key.clone(), document) {
            return Err(PolicyError::Invalid {
                object: format!("document {document} ({})", policy.key),
                field: "metadata.name".into(),
                reason: format!("the same policy is already defined in document {first}"),
            });
        }
        out.push(policy);
    }
    Ok(out)
}

/// Parses one document already read into a JSON value; `document` (1-based) is used in errors.
pub fn parse_value(
    value: &serde_json::Value,
    document: usize,
    default_namespace: &str,
) -> Result<Policy, PolicyError> {
    let invalid = |object: String, field: &str, reason: String| PolicyError::Invalid {
        object,
        field: field.to_string(),
        reason,
    };
    let doc_only = format!("document {document}");
    if !value.is_object() {
        return Err(invalid(doc_only, "(document)", "expected an object".into()));
    }
    let kind_name = match value.get("kind") {
        Some(serde_json::Value::String(k)) => k.clone(),
        None => return Err(invalid(doc_only, "kind", "is required".into())),
        Some(other) => {
            return Err(invalid(
                doc_only,
                "kind",
                format!("expected a string, found {other}"),
            ));
        }
    };
    let Some(kind) = PolicyKind::from_name(&kind_name) else {
        return Err(invalid(
            doc_only,
            "kind",
            format!(
                "{kind_name} is not a policy kind (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)"
            ),
        ));
    };
    let name = value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let namespace = if kind.is_namespaced() {
        value
            .pointer("/metadata/namespace")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(default_namespace)
            .to_string()
    } else {
        String::new()
    };
    let key = PolicyKey {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let object = format!("document {document} ({key})");
    if name.is_empty() {
        return Err(invalid(object, "metadata.name", "is required".into()));
    }
    match value.get("apiVersion").and_then(|v| v.as_str()) {
        Some(v) if v == kind.api_version() => {}
        other => {
            return Err(invalid(
                object,
                "apiVersion",
                format!("{kind_name} needs {}, found {other:?}", kind.api_version()),
            ));
        }
    }
    let typed_err = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(document)".to_string()
        } else {
            path
        };
        PolicyError::Invalid {
            object: object.clone(),
            field,
            reason: e.into_inner().to_string(),
        }
    };
    let field_err = |(field, reason): (String, String)| PolicyError::Invalid {
        object: object.clone(),
        field,
        reason,
    };
    let rules = match kind {
        PolicyKind::NetworkPolicy => {
            let doc: api::NetworkPolicyDoc =
                serde_path_to_error::deserialize(value).map_err(typed_err)?;
            vec![rule::from_network_policy(&namespace, &doc.spec).map_err(field_err)?]
        }
        _ => {
            let doc: api::CiliumPolicyDoc =
                serde_path_to_error::deserialize(value).map_err(typed_err)?;
            let ns = kind.is_namespaced().then_some(namespace.as_str());
            let mut rules = Vec::new();
            if let Some(spec) = &doc.spec {
                rules.push(rule::from_cilium_rule(ns, spec, "spec").map_err(field_err)?);
            }
            for (i, spec) in doc.specs.iter().flatten().enumerate() {
                rules.push(
                    rule::from_cilium_rule(ns, spec, &format!("specs[{i}]")).map_err(field_err)?,
                );
            }
            if doc.spec.is_none() && doc.specs.is_none() {
                return Err(invalid(
                    object,
                    "spec",
                    "one of spec or specs is required".into(),
                ));
            }
            rules
        }
    };
    Ok(Policy { key, rules })
}
