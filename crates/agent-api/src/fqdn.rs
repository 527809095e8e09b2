//! The node's DNS proxy as its clients read it: what it learned for `toFQDNs` policy
//! (`GET /v1/fqdn/cache`, `plexus fqdn cache list`) and its state and counters (the
//! `dns-proxy` section of `GET /v1/status`).
//!
//! The JSON field names are kebab-case like the rest of the agent's API: they are the CLI's
//! `-o json` output.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One learned (name, address) of `GET /v1/fqdn/cache`, as Cilium's `fqdn cache list` shows
/// a lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FqdnCacheEntry {
    /// The name (normalized: lower case, no trailing dot).
    pub name: String,
    /// One of its addresses.
    pub address: IpAddr,
    /// The identity of the address: that of the set of `toFQDNs` selectors matching any name
    /// of the address (`None`: the node-local identities are exhausted, no rule allows it).
    pub identity: Option<u32>,
    /// That set of selectors.
    pub selectors: Vec<String>,
    /// Seconds of life left (0: past its TTL, kept while local endpoints have connections to
    /// it).
    pub ttl: u32,
}

/// The node's DNS proxy in `GET /v1/status` (absent when the node has none: fake datapath,
/// or an agent that predates it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DnsProxyStatus {
    /// The port it listens on at 127.0.0.1 (`None`: not listening yet; it opens its sockets
    /// with the first policy resolved).
    pub port: Option<u16>,
    /// How many local endpoints have their DNS queries redirected to it (`None`: the
    /// datapath's redirects could not be read).
    pub redirected_endpoints: Option<usize>,
    /// Learned (name, address) pairs.
    pub learned_names: usize,
    /// Distinct learned addresses.
    pub learned_addresses: usize,
    /// Its counters since it started.
    pub stats: DnsProxyStats,
}

/// The DNS proxy's counters since it started (`plexus_dns_proxy_*` in the metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DnsProxyStats {
    /// Queries received (UDP datagrams and TCP messages).
    pub queries: u64,
    /// Queries sent on to their server.
    pub forwarded: u64,
    /// Queries answered REFUSED (no DNS rule of the endpoint allows the name).
    pub refused: u64,
    /// Queries dropped as malformed.
    pub malformed: u64,
    /// Queries from an address that is no local endpoint.
    pub no_endpoint: u64,
    /// Queries or TCP connections dropped because too many were in flight.
    pub overloaded: u64,
    /// Responses passed on at once.
    pub delivered: u64,
    /// Responses held until what they taught was applied.
    pub held: u64,
    /// Held responses released after the longest hold before it was applied.
    pub hold_expired: u64,
    /// Responses dropped (malformed or unsolicited).
    pub responses_dropped: u64,
    /// Forwarding failures (socket, connect or send errors, server closed).
    pub forward_errors: u64,
    /// Forwarded queries their server did not answer in time.
    pub forward_timeouts: u64,
    /// Answers that could not be sent to the client.
    pub send_errors: u64,
    /// TCP connections accepted.
    pub tcp_connections: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The CLI's `-o json` of `plexus fqdn cache list`: literal JSON reads back as the same
    /// entries and is written again unchanged.
    #[test]
    fn cache_entries_json_is_the_cli_contract() {
        let doc = serde_json::json!([
            {"name": "www.example.test", "address": "172.31.254.12", "identity": 25_165_824,
             "selectors": ["*3.example.test", "www.example.test"], "ttl": 27},
            {"name": "s1.example.test", "address": "fd00::11", "identity": null,
             "selectors": [], "ttl": 0}
        ]);
        let entries: Vec<FqdnCacheEntry> = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(
            entries[0],
            FqdnCacheEntry {
                name: "www.example.test".into(),
                address: "172.31.254.12".parse().unwrap(),
                identity: Some(25_165_824),
                selectors: vec!["*3.example.test".into(), "www.example.test".into()],
                ttl: 27,
            }
        );
        assert_eq!(entries[1].identity, None);
        assert_eq!(entries[1].address, "fd00::11".parse::<IpAddr>().unwrap());
        assert_eq!(serde_json::to_value(&entries).unwrap(), doc);
    }

    #[test]
    fn proxy_status_json_is_the_cli_contract() {
        let doc = serde_json::json!({
            "port": 10053, "redirected-endpoints": 2, "learned-names": 3,
            "learned-addresses": 2,
            "stats": {
                "queries": 10, "forwarded": 7, "refused": 2, "malformed": 1, "no-endpoint": 0,
                "overloaded": 0, "delivered": 4, "held": 3, "hold-expired": 1,
                "responses-dropped": 0, "forward-errors": 0, "forward-timeouts": 1,
                "send-errors": 0, "tcp-connections": 5
            }
        });
        let status: DnsProxyStatus = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(status.port, Some(10053));
        assert_eq!(status.redirected_endpoints, Some(2));
        assert_eq!(
            (
                status.stats.refused,
                status.stats.hold_expired,
                status.stats.forward_timeouts
            ),
            (2, 1, 1)
        );
        assert_eq!(serde_json::to_value(&status).unwrap(), doc);
        // Before the sockets open.
        let idle: DnsProxyStatus = serde_json::from_value(serde_json::json!({
            "port": null, "redirected-endpoints": 0, "learned-names": 0,
            "learned-addresses": 0, "stats": DnsProxyStats::default()
        }))
        .unwrap();
        assert_eq!(idle.port, None);
    }
}
