//! Network policy: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and NetworkPolicy.
//!
//! The control-plane half of policy enforcement, with no IO:
//! - [`parse`]: policy objects from YAML/JSON files, all documents or one error naming the
//!   object, field and reason ([`PolicyError`]); [`api`] holds the serde types, [`rule`] the
//!   checked form with Cilium's namespace defaulting;
//! - [`cache`]: a selector cache over local and remote identities, updated incrementally and
//!   reporting which selectors changed;
//! - [`repository`]: policies by (kind, namespace, name) and the per-endpoint resolution into
//!   allow and deny entries ([`resolved`]), with Cilium's semantics (default deny per direction,
//!   deny before allow, named ports, `policy-default-local-cluster`), and a compact form for an
//!   eBPF policy map; [`dns`] the DNS rules (`rules.dns`) resolved for the DNS proxy;
//! - [`explain`]: why one packet passes or is dropped at an endpoint, and the rules that
//!   decide it (`plexus policy trace`).
//!
//! See `docs/policy.md` for the model and its semantics.

pub mod api;
pub mod cache;
pub mod dns;
pub mod entity;
mod error;
pub mod explain;
pub mod fqdn;
pub mod parse;
pub mod port;
pub mod prefix;
pub mod repository;
pub mod resolved;
pub mod rule;
pub mod selector;

pub use cache::{IdentityChange, SelectorCache, SelectorId};
pub use dns::{DnsEntry, DnsPolicy};
pub use entity::Entity;
pub use error::PolicyError;
pub use explain::{DecidingRule, Decision, Explanation, MatchKind, Packet, explain};
pub use parse::{parse_documents, parse_value};
pub use port::{NamedPort, NamedPorts, Proto};
pub use repository::{
    EndpointInfo, EntryOrigin, PolicyConfig, PolicyRepository, PolicySources, Section,
    SelectingPolicy,
};
pub use resolved::{Direction, EndpointPolicy, Peer, PolicyEntry, PolicyMap};
pub use rule::{Policy, PolicyKey, PolicyKind};
pub use selector::Selector;

/// Where a cluster's policy objects are stored in its etcd: `<prefix><Kind>/<namespace>/<name>`
/// (namespace `-` for clusterwide policies), the object as applied, in JSON.
pub const POLICIES_PREFIX: &str = "plexus/objects/v1/policies/";

/// The etcd key of a policy object.
pub fn store_key(key: &PolicyKey) -> String {
    let ns = if key.namespace.is_empty() {
        "-"
    } else {
        key.namespace.as_str()
    };
    format!("{POLICIES_PREFIX}{}/{ns}/{}", key.kind.name(), key.name)
}
