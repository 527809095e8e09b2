//! Which container labels make a workload's identity, and their Kubernetes syntax.
//!
//! podman, buildah and image builders add labels of their own (`io.buildah.version`,
//! `org.opencontainers.image.*`, ...); they say how an image was made, not what the workload
//! is, so they are left out of its identity as Cilium leaves out similar ones. The namespace
//! comes from `io.kubernetes.pod.namespace`. What remains must be a valid Kubernetes label:
//! a key `[prefix/]name` and a value, with the syntax and lengths of
//! `k8s.io/apimachinery/pkg/util/validation` (`IsQualifiedName`, `IsValidLabelValue`).

/// The label carrying a workload's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The namespace of a workload without [`NAMESPACE_LABEL`].
pub const DEFAULT_NAMESPACE: &str = "default";
/// Key prefixes of labels that runtimes and image builders add: never identity labels.
pub const IGNORED_PREFIXES: [&str; 5] = [
    "io.buildah.",
    "io.podman.",
    "io.containers.",
    "org.opencontainers.",
    "io.kubernetes.",
];

/// The longest label name (the part after the prefix) and label value.
pub const MAX_NAME_LEN: usize = 63;
/// The longest label key prefix (a DNS subdomain).
pub const MAX_PREFIX_LEN: usize = 253;

/// Whether a label is added by runtimes or image builders (and so not part of an identity).
pub fn is_ignored(key: &str) -> bool {
    IGNORED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters: a label name or a
/// non-empty value.
fn check_name(text: &str, what: &str) -> Result<(), String> {
    if text.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} {text:?} is longer than {MAX_NAME_LEN} characters"
        ));
    }
    let bytes = text.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    let ok = match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alnum(first)
                && alnum(last)
                && bytes
                    .iter()
                    .all(|b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {text:?} must be letters, digits, '-', '_' or '.', starting and ending with a \
             letter or digit"
        ))
    }
}

/// A DNS-1123 subdomain: lower-case labels of letters, digits and '-' joined by '.'.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(format!(
            "prefix {prefix:?} is longer than {MAX_PREFIX_LEN} characters"
        ));
    }
    let ok = !prefix.is_empty()
        && prefix.split('.').all(|part| {
            let b = part.as_bytes();
            let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            matches!((b.first(), b.last()), (Some(f), Some(l)) if edge(f) && edge(l))
                && b.iter().all(|c| edge(c) || *c == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "prefix {prefix:?} must be a DNS subdomain (lower-case letters, digits, '-' and '.')"
        ))
    }
}

/// Checks a label key (`name` or `prefix/name`); the error says what is wrong.
pub fn validate_key(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        None => check_name(key, "name"),
        Some((prefix, name)) => {
            if name.contains('/') {
                return Err(format!("key {key:?} has more than one '/'"));
            }
            check_prefix(prefix)?;
            check_name(name, "name")
        }
    }
}

/// Checks a label value (may be empty); the error says what is wrong.
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value, "value")
}

/// Checks a namespace name: a DNS-1123 label (lower-case letters, digits, '-'; 63 at most).
pub fn validate_namespace(ns: &str) -> Result<(), String> {
    let b = ns.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = ns.len() <= MAX_NAME_LEN
        && matches!((b.first(), b.last()), (Some(f), Some(l)) if edge(f) && edge(l))
        && b.iter().all(|c| edge(c) || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "namespace {ns:?} must be a DNS label (lower-case letters, digits and '-', 63 at most)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for good in [
            "app",
            "a",
            "app.kubernetes.io/name",
            "example.com/Tier_1.x-y",
            "x/y",
            &"n".repeat(63),
        ] {
            validate_key(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("", "name \"\""),
            ("-app", "starting and ending"),
            ("app-", "starting and ending"),
            ("my app", "letters, digits"),
            ("a/b/c", "more than one '/'"),
            ("/app", "prefix \"\""),
            ("Example.com/app", "DNS subdomain"),
            ("ex..com/app", "DNS subdomain"),
            ("example.com/", "name \"\""),
            (&"n".repeat(64), "longer than 63"),
            (&format!("{}/x", "a".repeat(254)), "longer than 253"),
        ] {
            let err = validate_key(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn values() {
        for good in ["", "web", "v1.2_3-x", "A", &"v".repeat(63)] {
            validate_value(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, why) in [
            ("web server", "letters, digits"),
            ("-x", "starting and ending"),
            ("x.", "starting and ending"),
            ("é", "letters, digits"),
            (&"v".repeat(64), "longer than 63"),
        ] {
            let err = validate_value(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn namespaces_and_ignored_keys() {
        validate_namespace("default").unwrap();
        validate_namespace("team-1").unwrap();
        for bad in ["", "Prod", "a.b", "-x", &"n".repeat(64)] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
        assert!(is_ignored("io.buildah.version"));
        assert!(is_ignored("org.opencontainers.image.title"));
        assert!(is_ignored("io.kubernetes.pod.namespace"));
        assert!(is_ignored("io.podman.annotations.autoremove"));
        assert!(!is_ignored("app"));
        assert!(!is_ignored("io.cilium.k8s.policy.serviceaccount"));
    }
}
