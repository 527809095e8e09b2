//! The identity keys of the kvstore-mode allocator, as this crate reads and writes them.
//!
//! - master key `cilium/state/identities/v1/id/<id>` holds the label string (no lease);
//! - value key `cilium/state/identities/v1/value/<label string>/<node>` holds the decimal id
//!   (attached to the node's lease).
//!
//! Label keys may contain `/` (`k8s:app.kubernetes.io/name=db`), so a value key is split at its
//! last `/`: node names never contain one.

/// Everything the identity allocator owns lives under this prefix.
pub(crate) const IDENTITIES_PREFIX: &str = "cilium/state/identities/v1/";
/// Prefix of the master keys.
pub(crate) const MASTER_PREFIX: &str = "cilium/state/identities/v1/id/";
/// Prefix of the value keys.
pub(crate) const VALUE_PREFIX: &str = "cilium/state/identities/v1/value/";

/// `.../id/<id>`.
pub(crate) fn master_key(id: u32) -> String {
    format!("{MASTER_PREFIX}{id}")
}

/// `.../value/<labels>/`: every node's value key of one label set.
pub(crate) fn value_prefix(labels: &str) -> String {
    format!("{VALUE_PREFIX}{labels}/")
}

/// `.../value/<labels>/<node>`.
pub(crate) fn value_key(labels: &str, node: &str) -> String {
    format!("{VALUE_PREFIX}{labels}/{node}")
}

/// The id of a master key, if `key` is one.
pub(crate) fn parse_master_key(key: &str) -> Option<u32> {
    let id = key.strip_prefix(MASTER_PREFIX)?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// `(labels, node)` of a value key, if `key` is one.
pub(crate) fn parse_value_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(VALUE_PREFIX)?;
    let (labels, node) = rest.rsplit_once('/')?;
    if labels.is_empty() || node.is_empty() {
        return None;
    }
    Some((labels, node))
}

/// The node of a key listed under `value_prefix(labels)`, if it is a direct child (a longer
/// label string that happens to extend `labels` with `/...` is not).
pub(crate) fn node_under<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let node = key.strip_prefix(prefix)?;
    (!node.is_empty() && !node.contains('/')).then_some(node)
}

/// The identity a value key holds: a decimal number, nothing else.
pub(crate) fn parse_id_value(value: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(value).ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(master_key(65536), "cilium/state/identities/v1/id/65536");
        assert_eq!(parse_master_key("cilium/state/identities/v1/id/65536"), Some(65536));
        assert_eq!(parse_master_key("cilium/state/identities/v1/id/x1"), None);
        assert_eq!(parse_master_key("cilium/state/identities/v1/id/"), None);
        let labels = "k8s:app.kubernetes.io/name=db;k8s:io.cilium.k8s.policy.cluster=c1;";
        let key = value_key(labels, "10.0.0.1");
        assert_eq!(key, format!("cilium/state/identities/v1/value/{labels}/10.0.0.1"));
        assert_eq!(parse_value_key(&key), Some((labels, "10.0.0.1")));
        assert_eq!(node_under(&value_prefix(labels), &key), Some("10.0.0.1"));
        assert_eq!(node_under(&value_prefix("k8s:a=b;"), "cilium/state/identities/v1/value/k8s:a=b;/x;/n"), None);
        assert_eq!(parse_id_value(b"65536"), Some(65536));
        assert_eq!(parse_id_value(b"+1"), None);
        assert_eq!(parse_id_value(b""), None);
    }
}
