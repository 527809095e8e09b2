//! Plexus's DNS proxy: what DNS-aware policy (`rules.dns` and
//! `toFQDNs`) needs between a pod's DNS query and the datapath.
//!
//! - [`rules`]: per endpoint, the DNS rules of its resolved policy and the decision for one
//!   query ([`DnsRules::decide`]: forward it, or answer REFUSED, built by [`refused`]);
//! - [`answer`]: what a DNS response teaches (names, addresses, TTLs) and which `toFQDNs`
//!   selectors match a name ([`FqdnSelectors`], with `plexus-policy`'s pattern semantics);
//! - [`cache`]: the learned addresses per name with their expiry, a configurable minimum TTL,
//!   and addresses kept past their TTL while connections use them;
//! - [`identity`]: one node-local identity per set of selectors (labels `fqdn:<pattern>`), as
//!   Cilium >= 1.16 does, so a new address of a known set needs only an ipcache entry;
//! - [`learner`]: the three above folded into one state machine fed `(event, now)` that
//!   returns the identity and ipcache changes to apply, make-before-break;
//! - [`proxy`]: the exchange: a query in, forward or REFUSED out; only solicited responses
//!   learned from; a response that changed something held until its changes are applied (at
//!   most 100 ms by default);
//! - [`server`]: the proxy's sockets around [`DnsProxy`]: transparent UDP and TCP sockets on
//!   the node's 127.0.0.1 that the datapath redirects pods' queries to, forwarding to the
//!   servers, answering as them;
//! - [`testing`]: fixtures of the proxy's tests and benchmarks.
//!
//! The pure parts do no I/O; [`server`] is the one module with sockets. The datapath redirect
//! and the agent's wiring (`plexus-agent`'s `shell::dns`) build on these; see
//! `docs/dns-proxy.md`.

pub mod answer;
pub mod cache;
pub mod identity;
pub mod learner;
pub mod proxy;
pub mod rules;
pub mod server;
pub mod testing;

pub use answer::{FqdnSelectors, Learned, learn_from_response};
pub use cache::{CacheConfig, LearnedCache};
pub use identity::IdentityError;
pub use identity::{IdentityChange, SelectorSetIdentities, fqdn_labels};
pub use learner::{Change, LearnedState, Learner, Outcome, SavedIdentity, SavedName};
pub use proxy::{
    DnsProxy, DropReason, Flow, HoldId, ProxyConfig, QueryAction, Release, ResponseAction,
};
pub use rules::{
    Decision, DnsRules, EndpointId, MessageError, Query, RefuseReason, encode, parse_query, refused,
};
pub use server::{DnsProxyServer, ProxyHost, ServerConfig, ServerError, ServerStats};
