//! DNS names and `toFQDNs` patterns.
//!
//! Names and patterns are compared in lower case without a trailing dot. In a pattern, `*`
//! alone matches every name; otherwise `*` matches zero or more characters of one DNS label
//! (`[-a-zA-Z0-9_]`, never a dot), as Cilium's `matchPattern` does: `*.cilium.io` matches
//! `docs.cilium.io` but neither `cilium.io` nor `a.b.cilium.io`.
//!
//! A `toFQDNs` peer selects identities by label: a DNS proxy gives the addresses it learns
//! node-local identities labelled `fqdn:<pattern>` for each pattern matching one of their names
//! (one identity per set of patterns, as Cilium does since 1.16), and [`selector`] selects the
//! identities that carry a pattern's label.

use crate::selector::{Requirement, Selector};

/// The label source of `toFQDNs` selector labels (`fqdn:<pattern>`, empty value).
pub const SOURCE_FQDN: &str = "fqdn";

/// The selector of a normalized `toFQDNs` pattern: identities labelled `fqdn:<pattern>`.
pub fn selector(pattern: &str) -> Selector {
    Selector::new([Requirement::exists(&format!("{SOURCE_FQDN}:{pattern}"))])
}

/// Lower case, without a trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether the normalized `name` matches the normalized `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    glob(pattern.as_bytes(), name.as_bytes())
}

fn glob(p: &[u8], n: &[u8]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((b'*', rest)) => {
            // Try every split of the label characters the star may take.
            let mut i = 0;
            loop {
                if glob(rest, &n[i..]) {
                    return true;
                }
                if i < n.len() && n[i] != b'.' {
                    i += 1;
                } else {
                    return false;
                }
            }
        }
        Some((c, rest)) => n.first() == Some(c) && glob(rest, &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("*", "anything.example.com"));
        assert!(matches("*.cilium.io", "docs.cilium.io"));
        assert!(!matches("*.cilium.io", "cilium.io"));
        assert!(!matches("*.cilium.io", "a.b.cilium.io"));
        assert!(matches("api*.example.com", "api-2.example.com"));
        assert!(matches("example.com", "example.com"));
        assert!(!matches("example.com", "www.example.com"));
        assert_eq!(normalize("WWW.Example.COM."), "www.example.com");
    }
}
