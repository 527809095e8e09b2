//! kubectl's three-way merge of an object's labels and annotations on `apply`.
//!
//! `apply -f` keeps the configuration it wrote in the object's
//! `kubectl.kubernetes.io/last-applied-configuration` annotation ([`LAST_APPLIED_ANNOTATION`]),
//! the document as the file had it (JSON, without that annotation), as kubectl does. Applying
//! again merges three maps per field (labels, annotations): the live object's, the last applied
//! one's and the file's. A key the last applied file had and the new one lacks is removed; a key
//! no file ever applied (set by `label` or `annotate`) stays; the file's keys win
//! ([`merge`]). Without a record (the object was not created by `apply`), nothing is removed.
//!
//! Pure functions, no IO: the CLI reads the live object, calls [`apply_metadata`] and writes
//! the result (compare-and-swap on the revision it read).

use std::collections::BTreeMap;

use crate::ModelError;
use crate::objects::LAST_APPLIED_ANNOTATION;

/// A string map of an object's metadata (labels or annotations).
pub type StringMap = BTreeMap<String, String>;

/// An object's labels and annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Labels.
    pub labels: StringMap,
    /// Annotations (with the last-applied record, when there is one).
    pub annotations: StringMap,
}

/// The three-way merge of one map: `live` without the keys of `last_applied` that `applied`
/// lacks, then every key of `applied` (the file wins). `last_applied` `None`: no record, so
/// nothing is removed.
pub fn merge(last_applied: Option<&StringMap>, live: &StringMap, applied: &StringMap) -> StringMap {
    let mut out = live.clone();
    if let Some(last) = last_applied {
        for k in last.keys() {
            if !applied.contains_key(k) {
                out.remove(k);
            }
        }
    }
    for (k, v) in applied {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Reads `metadata.<field>` of a document as a string map (absent or null: empty). `object`
/// names the document in errors.
pub fn document_map(
    document: &serde_json::Value,
    field: &'static str,
    object: &str,
) -> Result<StringMap, ModelError> {
    match document.get("metadata").and_then(|m| m.get(field)) {
        None | Some(serde_json::Value::Null) => Ok(StringMap::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| ModelError::Field {
            object: "object",
            name: object.to_string(),
            field: if field == "labels" {
                "metadata.labels"
            } else {
                "metadata.annotations"
            },
            reason: format!("a map of strings to strings is expected: {e}"),
        }),
    }
}

/// The labels and annotations of the last applied configuration recorded in `annotations`;
/// `None` when there is no record. `object` names the object in errors.
pub fn last_applied(annotations: &StringMap, object: &str) -> Result<Option<Metadata>, ModelError> {
    let Some(record) = annotations.get(LAST_APPLIED_ANNOTATION) else {
        return Ok(None);
    };
    let doc: serde_json::Value = serde_json::from_str(record).map_err(|e| ModelError::Field {
        object: "object",
        name: object.to_string(),
        field: "metadata.annotations[kubectl.kubernetes.io/last-applied-configuration]",
        reason: format!("not JSON ({e}); remove it with annotate KEY- to apply again"),
    })?;
    Ok(Some(Metadata {
        labels: document_map(&doc, "labels", object)?,
        annotations: document_map(&doc, "annotations", object)?,
    }))
}

/// The record of `document` for [`LAST_APPLIED_ANNOTATION`]: the document as compact JSON,
/// without a record of its own.
pub fn record(document: &serde_json::Value) -> String {
    let mut doc = document.clone();
    if let Some(ann) = doc
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(|a| a.as_object_mut())
    {
        ann.remove(LAST_APPLIED_ANNOTATION);
    }
    if let Some(meta) = doc.get_mut("metadata").and_then(|m| m.as_object_mut())
        && meta
            .get("annotations")
            .and_then(|a| a.as_object())
            .is_some_and(|a| a.is_empty())
    {
        meta.remove("annotations");
    }
    doc.to_string()
}

/// Applies `document` (the object as the file has it, its namespace filled in) over the live
/// object's metadata (`None`: the object does not exist yet): the merged labels and
/// annotations, with the new record in [`LAST_APPLIED_ANNOTATION`].
pub fn apply_metadata(
    live: Option<&Metadata>,
    document: &serde_json::Value,
    object: &str,
) -> Result<Metadata, ModelError> {
    let labels = document_map(document, "labels", object)?;
    let mut annotations = document_map(document, "annotations", object)?;
    annotations.remove(LAST_APPLIED_ANNOTATION);
    let empty = Metadata::default();
    let live = live.unwrap_or(&empty);
    let last = last_applied(&live.annotations, object)?;
    let mut live_annotations = live.annotations.clone();
    live_annotations.remove(LAST_APPLIED_ANNOTATION);
    let mut out = Metadata {
        labels: merge(last.as_ref().map(|l| &l.labels), &live.labels, &labels),
        annotations: merge(
            last.as_ref().map(|l| &l.annotations),
            &live_annotations,
            &annotations,
        ),
    };
    out.annotations
        .insert(LAST_APPLIED_ANNOTATION.to_string(), record(document));
    Ok(out)
}

/// Checks a label as Kubernetes does: the key an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters (alphanumerics, `-`, `_`, `.`, beginning and ending with an
/// alphanumeric); the value empty or such a name. (Identity labels are written
/// `source:key=value;` in the kvstore, so `=`, `;` and the like must never get in.)
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    fn name_ok(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    }
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "label key {key:?}: the prefix before '/' must be a DNS subdomain (lower-case alphanumerics, '-', '.')"
            ));
        }
    }
    if !name_ok(name) {
        return Err(format!(
            "label key {key:?}: the name must be 1-63 alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric"
        ));
    }
    if !value.is_empty() && !name_ok(value) {
        return Err(format!(
            "label {key}={value:?}: a value must be empty or 1-63 alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> StringMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_are_checked_as_kubernetes_does() {
        for (k, v) in [
            ("app", "web"),
            ("app.kubernetes.io/name", "web-1.2_3"),
            ("tier", ""),
        ] {
            assert_eq!(check_label(k, v), Ok(()), "{k}={v}");
        }
        for (k, v) in [
            ("", "x"),
            ("a=b", "x"),
            ("app", "a;b"),
            ("app", "-web"),
            ("Bad_Prefix/app", "x"),
            ("/app", "x"),
            ("app", &"x".repeat(64)),
        ] {
            assert!(check_label(k, v).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn three_way_merge_removes_only_what_the_last_apply_wrote() {
        let last = map(&[("app", "web"), ("tier", "front")]);
        let live = map(&[("app", "web"), ("tier", "front"), ("owner", "ops")]);
        let applied = map(&[("app", "web2"), ("env", "prod")]);
        assert_eq!(
            merge(Some(&last), &live, &applied),
            map(&[("app", "web2"), ("env", "prod"), ("owner", "ops")]),
            "tier (applied before, not now) goes, owner (never applied) stays, the file wins"
        );
    }

    #[test]
    fn without_a_record_nothing_is_removed() {
        let live = map(&[("a", "1"), ("b", "2")]);
        assert_eq!(
            merge(None, &live, &map(&[("b", "3")])),
            map(&[("a", "1"), ("b", "3")])
        );
    }

    #[test]
    fn a_key_set_by_hand_over_an_applied_one_is_reset_by_the_file() {
        let last = map(&[("app", "web")]);
        let live = map(&[("app", "changed-by-label")]);
        assert_eq!(
            merge(Some(&last), &live, &last),
            map(&[("app", "web")]),
            "the file's keys win"
        );
        // A key removed by hand and still in the file comes back.
        assert_eq!(merge(Some(&last), &StringMap::new(), &last), last);
    }

    #[test]
    fn apply_metadata_records_the_document_and_merges_both_maps() {
        let first = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "x", "labels": {"ns": "x", "team": "a"},
                         "annotations": {"note": "one"}}
        });
        let created = apply_metadata(None, &first, "namespace x").unwrap();
        assert_eq!(created.labels, map(&[("ns", "x"), ("team", "a")]));
        assert_eq!(created.annotations["note"], "one");
        let recorded: serde_json::Value =
            serde_json::from_str(&created.annotations[LAST_APPLIED_ANNOTATION]).unwrap();
        assert_eq!(recorded, first);

        // Someone labels and annotates it by hand.
        let mut live = created.clone();
        live.labels.insert("owner".into(), "ops".into());
        live.annotations.insert("by-hand".into(), "yes".into());

        let second = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "x", "labels": {"ns": "x"}}
        });
        let out = apply_metadata(Some(&live), &second, "namespace x").unwrap();
        assert_eq!(out.labels, map(&[("ns", "x"), ("owner", "ops")]));
        assert_eq!(
            out.annotations.keys().collect::<Vec<_>>(),
            vec!["by-hand", LAST_APPLIED_ANNOTATION],
            "note (applied before) goes, by-hand stays"
        );
        assert_eq!(out.annotations[LAST_APPLIED_ANNOTATION], second.to_string());
    }

    #[test]
    fn the_record_never_holds_itself_and_bad_records_are_named() {
        let doc = serde_json::json!({"kind": "Namespace", "metadata": {"name": "x",
            "annotations": {LAST_APPLIED_ANNOTATION: "{}"}}});
        assert_eq!(
            record(&doc),
            r#"{"kind":"Namespace","metadata":{"name":"x"}}"#
        );
        let err = last_applied(
            &map(&[(LAST_APPLIED_ANNOTATION, "not json")]),
            "namespace x",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("namespace x") && err.contains("last-applied-configuration"),
            "{err}"
        );
        let bad = serde_json::json!({"metadata": {"labels": {"a": 1}}});
        let err = apply_metadata(None, &bad, "service default/s")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("service default/s") && err.contains("metadata.labels"),
            "{err}"
        );
    }
}
