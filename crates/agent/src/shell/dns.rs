//! The node's DNS proxy in the agent: DNS-aware policy (`rules.dns`, `toFQDNs`) between the
//! core and the proxy's sockets ([`plexus_dnsproxy::server`]).
//!
//! - **Rules.** Each time the core resolves policy, the reconciler hands the result
//!   ([`DnsDesired`]) to [`DnsShell::update`]: the endpoints with DNS rules get their rules in
//!   the proxy, the `toFQDNs` patterns become the learner's selectors, and then (rules first) the
//!   datapath redirects exactly those endpoints' DNS queries to the proxy's port. The proxy's
//!   sockets open at the first update, so a restarted agent never answers a query before it
//!   knows the rules: until then the datapath sends queries to their servers.
//! - **Learning.** What the proxy learns goes into the core as [`Input::Fqdn`] (identities of
//!   selector sets, their addresses in the ipcache); an answer that taught something is held
//!   until the reconciler has applied it, at most `tofqdns-proxy-response-max-delay`.
//! - **Expiry.** [`DnsShell::run`] expires addresses when their TTL (at least `tofqdns-min-ttl`)
//!   has passed, except those that local endpoints still have live connections to (policy's
//!   conntrack, [`Datapath::connected_peers`]).
//! - **Restart.** What was learned is saved in the state directory (`fqdn.json`) when it
//!   changes, and taken over by the next agent before any policy is programmed, with the same
//!   identities: connections to learned addresses survive a restart, and so do lookups.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plexus_datapath::Datapath;
use plexus_dnsproxy::server::{DnsProxyServer, ProxyHost, ServerConfig, ServerStats};
use plexus_dnsproxy::{
    CacheConfig, Change, DnsProxy, EndpointId, FqdnSelectors, LearnedState, Learner, Outcome,
    ProxyConfig,
};
use plexus_model::identity::NumericIdentity;
use serde::{Deserialize, Serialize};

use super::CoreHandle;
use crate::core::{DnsDesired, FQDN_IDENTITIES, Input};

/// The file in the state directory that keeps what the proxy learned across restarts.
pub const STATE_FILE: &str = "fqdn.json";

/// How often the learned state is saved at most, and expiry checked at least.
const MAINTENANCE: Duration = Duration::from_secs(1);

/// The reserved identity `world` (an address the ipcache does not know).
const WORLD: u32 = 2;

/// The DNS proxy's options.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    /// The proxy's port on 127.0.0.1.
    pub port: u16,
    /// The shortest life of a learned address.
    pub min_ttl: Duration,
    /// The longest an answer is held until the datapath has its addresses.
    pub hold_max: Duration,
    /// Where the learned state is saved (`None`: not saved).
    pub state_file: Option<PathBuf>,
}

/// The saved learned state, with when it was saved.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedFile {
    /// Milliseconds since the Unix epoch.
    saved_at_unix_ms: u64,
    state: LearnedState,
}

/// The DNS proxy of this node: its state, its sockets once started, and its link to the core.
pub struct DnsShell {
    options: DnsOptions,
    proxy: Arc<Mutex<DnsProxy>>,
    core: CoreHandle,
    datapath: Arc<dyn Datapath>,
    server: Mutex<Option<DnsProxyServer>>,
    /// Something learned or forgotten since the state was last saved.
    dirty: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl DnsShell {
    /// A proxy with nothing learned and no sockets yet.
    pub fn new(options: DnsOptions, core: CoreHandle, datapath: Arc<dyn Datapath>) -> Arc<Self> {
        let learner = Learner::new(
            CacheConfig {
                min_ttl: options.min_ttl,
            },
            FQDN_IDENTITIES,
        );
        let proxy = DnsProxy::new(
            ProxyConfig {
                hold_max: options.hold_max,
                ..ProxyConfig::default()
            },
            learner,
        );
        Arc::new(Self {
            options,
            proxy: Arc::new(Mutex::new(proxy)),
            core,
            datapath,
            server: Mutex::new(None),
            dirty: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Takes over what a previous agent saved, if anything: call before the policies are
    /// listed, so that the first programmed policy already allows the learned addresses with
    /// their old identities. A file that cannot be read is logged and ignored (names are
    /// learned again at the next lookups).
    pub fn restore(&self) {
        let Some(path) = &self.options.state_file else {
            return;
        };
        let saved: SavedFile = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(saved) => saved,
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "ignoring the saved DNS proxy state");
                    return;
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "reading the saved DNS proxy state");
                return;
            }
        };
        let elapsed = Duration::from_millis(unix_ms().saturating_sub(saved.saved_at_unix_ms));
        let outcome =
            lock(&self.proxy)
                .learner_mut()
                .restore(&saved.state, Instant::now(), elapsed);
        tracing::info!(
            names = saved.state.names.len(),
            identities = saved.state.identities.len(),
            "DNS proxy state taken over from the previous agent"
        );
        self.feed(outcome);
    }

    /// Hands what the proxy learned or forgot to the core.
    fn feed(&self, outcome: Outcome) {
        for err in &outcome.errors {
            tracing::warn!(error = %err, "a learned address got no toFQDNs identity");
        }
        if !outcome.changes.is_empty() {
            self.dirty.store(true, Ordering::Relaxed);
            self.core.step(Input::Fqdn(outcome.changes));
        }
    }

    /// The policy's DNS side changed (called by the reconciler, inside the runtime): new rules
    /// and selectors in the proxy, its sockets open, then the redirects in the datapath.
    pub fn update(&self, desired: &DnsDesired) {
        let outcome = {
            let mut proxy = lock(&self.proxy);
            let known: Vec<EndpointId> = proxy.rules.endpoints().collect();
            for id in known {
                let wanted =
                    u16::try_from(id.0).is_ok_and(|id| desired.endpoints.contains_key(&id));
                if !wanted {
                    proxy.rules.remove(id);
                }
            }
            for (id, (l4, dns)) in &desired.endpoints {
                proxy
                    .rules
                    .set(EndpointId(u64::from(*id)), l4.clone(), dns.clone());
            }
            let selectors = FqdnSelectors::new(&desired.selectors);
            if proxy.learner().selectors() == &selectors {
                Outcome::default()
            } else {
                proxy.learner_mut().set_selectors(selectors)
            }
        };
        self.feed(outcome);
        self.start_server();
        self.sync_redirects(desired.endpoints.keys().copied().collect());
    }

    fn start_server(&self) {
        let mut server = lock(&self.server);
        if server.is_some() {
            return;
        }
        let host = Arc::new(Host {
            core: self.core.clone(),
            hold_max: self.options.hold_max,
            dirty: self.dirty.clone(),
        });
        let config = ServerConfig {
            port: self.options.port,
            ..ServerConfig::default()
        };
        match DnsProxyServer::start(config, self.proxy.clone(), host) {
            Ok(s) => {
                tracing::info!(listen = %s.local_addr(), "DNS proxy listening");
                *server = Some(s);
            }
            // The redirects still go in: without the socket the datapath sends queries to
            // their servers (L4 policy only) until a later update starts it.
            Err(err) => tracing::error!(error = %err, "DNS proxy not started"),
        }
    }

    fn sync_redirects(&self, wanted: BTreeSet<u16>) {
        let current = match self.datapath.dns_redirects() {
            Ok(c) => c,
            Err(err) => {
                tracing::warn!(error = %err, "reading the datapath's DNS redirects");
                return;
            }
        };
        for id in current.keys().filter(|id| !wanted.contains(id)) {
            if let Err(err) = self.datapath.set_dns_redirect(*id, None) {
                tracing::warn!(endpoint = id, error = %err, "removing a DNS redirect");
            }
        }
        for id in &wanted {
            if current.get(id) != Some(&self.options.port)
                && let Err(err) = self.datapath.set_dns_redirect(*id, Some(self.options.port))
            {
                tracing::warn!(endpoint = id, error = %err, "adding a DNS redirect");
            }
        }
    }

    /// The server's counters (zero before it started).
    pub fn stats(&self) -> ServerStats {
        lock(&self.server)
            .as_ref()
            .map(|s| s.stats())
            .unwrap_or_default()
    }

    /// Expires learned addresses and saves the state, until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = lock(&self.proxy)
                .learner()
                .cache()
                .next_expiry(Instant::now());
            let wait = next
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(MAINTENANCE)
                .clamp(Duration::from_millis(10), MAINTENANCE);
            tokio::time::sleep(wait).await;
            self.expire();
            self.save();
        }
    }

    /// Expires what is due, sparing addresses with live connections (the datapath's
    /// connections are read only when some address is due).
    pub fn expire(&self) {
        let connected: std::cell::OnceCell<BTreeSet<std::net::Ipv4Addr>> =
            std::cell::OnceCell::new();
        let live = |ip: IpAddr| {
            let set = connected.get_or_init(|| {
                self.datapath.connected_peers().unwrap_or_else(|err| {
                    // Keep everything rather than cut connections on a read error.
                    tracing::warn!(error = %err, "reading the connections; keeping every address");
                    BTreeSet::from([std::net::Ipv4Addr::UNSPECIFIED])
                })
            });
            match ip {
                IpAddr::V4(v4) => {
                    set.contains(&v4) || set.contains(&std::net::Ipv4Addr::UNSPECIFIED)
                }
                IpAddr::V6(_) => false,
            }
        };
        let outcome = lock(&self.proxy).learner_mut().expire(Instant::now(), live);
        self.feed(outcome);
    }

    /// Saves the learned state if it changed (atomically: a new file renamed over the old).
    pub fn save(&self) {
        let Some(path) = &self.options.state_file else {
            return;
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let state = lock(&self.proxy).learner().snapshot(Instant::now());
        let file = SavedFile {
            saved_at_unix_ms: unix_ms(),
            state,
        };
        let tmp = path.with_extension("json.tmp");
        let result = serde_json::to_vec(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(err) = result {
            self.dirty.store(true, Ordering::Relaxed);
            tracing::warn!(file = %path.display(), error = %err, "saving the DNS proxy state");
        }
    }

    /// The learned names with their addresses, identities and remaining lives (for status).
    pub fn learned(&self) -> LearnedState {
        lock(&self.proxy).learner().snapshot(Instant::now())
    }

    /// Every learned (name, address) with the identity and selector set of the address and
    /// its life left, sorted by name and address (for `GET /v1/fqdn/cache`).
    pub fn cache(&self) -> Vec<CacheRow> {
        let now = Instant::now();
        let proxy = lock(&self.proxy);
        let learner = proxy.learner();
        let (cache, identities) = (learner.cache(), learner.identities());
        let mut rows = Vec::with_capacity(cache.len());
        for (name, ips) in cache.names() {
            for ip in ips {
                let left = cache
                    .expiry(name, *ip)
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                rows.push(CacheRow {
                    name: name.to_string(),
                    address: *ip,
                    identity: identities.identity_of_address(*ip).map(|id| id.0),
                    selectors: identities.set_of(*ip).cloned().unwrap_or_default(),
                    ttl: u32::try_from(left.as_secs()).unwrap_or(u32::MAX),
                });
            }
        }
        rows.sort_by(|a, b| (&a.name, a.address).cmp(&(&b.name, b.address)));
        rows
    }

    /// The proxy at a glance: its port once listening, the endpoints the datapath redirects
    /// to it, how much it learned, and its counters (for status and metrics).
    pub fn status(&self) -> DnsStatus {
        let port = lock(&self.server).as_ref().map(|s| s.local_addr().port());
        let redirected = match self.datapath.dns_redirects() {
            Ok(r) => Some(r.len()),
            Err(err) => {
                tracing::warn!(error = %err, "reading the datapath's DNS redirects");
                None
            }
        };
        let (names, addresses) = self.learned_counts();
        DnsStatus {
            port,
            redirected,
            names,
            addresses,
            stats: self.stats(),
        }
    }

    /// How many (name, address) pairs and distinct addresses are learned (cheaper than
    /// [`Self::status`]: no datapath read).
    pub fn learned_counts(&self) -> (usize, usize) {
        let proxy = lock(&self.proxy);
        let cache = proxy.learner().cache();
        (cache.len(), cache.addresses().count())
    }
}

/// One learned (name, address) of [`DnsShell::cache`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheRow {
    /// The name.
    pub name: String,
    /// The address.
    pub address: IpAddr,
    /// The identity of the address's selector set (`None`: it got none).
    pub identity: Option<u32>,
    /// The `toFQDNs` selectors matching a name of the address.
    pub selectors: BTreeSet<String>,
    /// Seconds of life left (0: expired, kept for live connections).
    pub ttl: u32,
}

/// What [`DnsShell::status`] gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsStatus {
    /// The port, once listening.
    pub port: Option<u16>,
    /// Endpoints redirected (`None`: the datapath could not be read).
    pub redirected: Option<usize>,
    /// Learned (name, address) pairs.
    pub names: usize,
    /// Distinct learned addresses.
    pub addresses: usize,
    /// The server's counters.
    pub stats: ServerStats,
}

/// The proxy's view of the agent.
struct Host {
    core: CoreHandle,
    hold_max: Duration,
    dirty: Arc<AtomicBool>,
}

impl ProxyHost for Host {
    fn endpoint_of(&self, client: IpAddr) -> Option<EndpointId> {
        let IpAddr::V4(v4) = client else {
            return None;
        };
        self.core.read(|c| {
            c.endpoints()
                .values()
                .find(|e| e.ip == v4)
                .map(|e| EndpointId(u64::from(e.id)))
        })
    }

    fn identity_of(&self, server: IpAddr) -> NumericIdentity {
        let IpAddr::V4(v4) = server else {
            return NumericIdentity(WORLD);
        };
        let id = self
            .core
            .read(|c| c.ipcache().lookup(v4).map(|v| v.identity));
        NumericIdentity(id.unwrap_or(WORLD))
    }

    fn apply(&self, changes: Vec<Change>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.dirty.store(true, Ordering::Relaxed);
        let seq = self.core.step(Input::Fqdn(changes));
        let (core, limit) = (self.core.clone(), self.hold_max);
        Box::pin(async move {
            core.wait_applied(seq, limit).await;
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::core::{CoreConfig, NodeCore};
    use plexus_datapath::{FakeDatapath, RoutingMode};

    /// A proxy that takes over `state` (as a previous agent saved it just now), with no
    /// sockets.
    fn restored(dir: &std::path::Path, state: serde_json::Value) -> (Arc<DnsShell>, CoreHandle) {
        let file = dir.join(STATE_FILE);
        let saved = serde_json::json!({"savedAtUnixMs": unix_ms(), "state": state});
        std::fs::write(&file, serde_json::to_vec(&saved).unwrap()).unwrap();
        let (core, _driver) = CoreHandle::new(NodeCore::new(CoreConfig {
            cluster: "c1".into(),
            cluster_id: 1,
            node_name: "n1".into(),
            node_ip: std::net::Ipv4Addr::new(192, 168, 1, 1),
            routing: RoutingMode::Tunnel,
            policy_default_local_cluster: true,
            encryption: Default::default(),
        }));
        let dns = DnsShell::new(
            DnsOptions {
                port: 10053,
                min_ttl: Duration::ZERO,
                hold_max: Duration::from_millis(100),
                state_file: Some(file),
            },
            core.clone(),
            Arc::new(FakeDatapath::new()),
        );
        dns.restore();
        (dns, core)
    }

    /// `GET /v1/fqdn/cache` and the status read the learner: each (name, address) sorted,
    /// with its address's identity and selector set, its life left (0 once past its TTL), and
    /// the counts.
    #[test]
    fn cache_rows_carry_the_identity_of_each_address() {
        let dir = tempfile::tempdir().unwrap();
        let www_id = *FQDN_IDENTITIES.start() + 5;
        let both_id = *FQDN_IDENTITIES.start() + 9;
        let (dns, _core) = restored(
            dir.path(),
            serde_json::json!({
                "selectors": ["www.example.test", "*3.example.test"],
                "identities": [
                    {"id": www_id, "selectors": ["www.example.test"]},
                    {"id": both_id, "selectors": ["*3.example.test", "www.example.test"]}
                ],
                "names": [
                    {"name": "www.example.test", "address": "172.31.254.12", "ttl": 30},
                    {"name": "www.example.test", "address": "172.31.254.13", "ttl": 30},
                    {"name": "s3.example.test", "address": "172.31.254.13", "ttl": 0}
                ]
            }),
        );
        let rows = dns.cache();
        let keys: Vec<(&str, String, Option<u32>, Vec<&str>)> = rows
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.address.to_string(),
                    r.identity,
                    r.selectors.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                (
                    "s3.example.test",
                    "172.31.254.13".to_string(),
                    Some(both_id),
                    vec!["*3.example.test", "www.example.test"]
                ),
                (
                    "www.example.test",
                    "172.31.254.12".to_string(),
                    Some(www_id),
                    vec!["www.example.test"]
                ),
                (
                    "www.example.test",
                    "172.31.254.13".to_string(),
                    Some(both_id),
                    vec!["*3.example.test", "www.example.test"]
                ),
            ]
        );
        assert_eq!(rows[0].ttl, 0, "{rows:?}");
        // Saved a moment ago with 30 s left (whole seconds, rounded down).
        assert!((28..=30).contains(&rows[1].ttl), "{rows:?}");

        let status = dns.status();
        assert_eq!(
            (
                status.port,
                status.redirected,
                status.names,
                status.addresses
            ),
            (None, Some(0), 3, 2)
        );
        assert_eq!(status.stats, ServerStats::default());
        assert_eq!(dns.learned_counts(), (3, 2));
    }
}
