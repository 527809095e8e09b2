//! The consumer protocol for one remote cluster, as a state machine.
//!
//! [`RemoteMachine`] is fed [`Input`]s (what the IO side observed) with the current time and
//! returns [`Action`]s (what the IO side must do). It holds no sockets and no clock, so every
//! path of the protocol is tested exactly, without IO. Time is an input: the caller passes `now`
//! with each step and asks [`RemoteMachine::next_deadline`] when the next [`Input::Tick`] can
//! change anything, so the driver sleeps until then instead of ticking. The instants are tokio's
//! ([`tokio::time::Instant`]), so a driver run under paused time is driven exactly too.
//!
//! 1. connect (mTLS); the connection is up once the heartbeat key was read; failures retry with
//!    exponential backoff (1 s doubling to 30 s);
//! 2. read the remote's `CiliumClusterConfig`, validate it and reserve its cluster id; retry
//!    while it is missing or refused, for a bounded time, then give up with the reason; once
//!    accepted, announce the id to consumers ([`Action::ConfigAccepted`]) before any watch starts,
//!    so every entry of the remote is read knowing its cluster id;
//! 3. with `syncedCanaries`, start each kind's list+watch only once its canary exists (the
//!    `cilium/cache/...` prefixes and canaries when the remote is a KVStoreMesh cache);
//! 4. report synced once every kind has delivered its initial listing;
//! 5. health: the connection is considered lost when a health check fails or the heartbeat value
//!    has not changed for two heartbeat intervals; state is kept meanwhile (the watches re-list
//!    and drain stale entries by themselves when the remote is back);
//! 6. removing the remote's configuration stops everything, drains its state and releases its id.

use std::collections::BTreeSet;
use std::time::Duration;

use plexus_model::cluster::ClusterInfo;
use plexus_model::config::CiliumClusterConfig;
use plexus_model::keys::{StateKind, expected_canaries};
use tokio::time::Instant;

use crate::failure::{FailureKind, RemoteFailure};
use crate::validate::{ClusterIds, RemoteConfigError, check_remote_config};

/// Timing of the protocol.
#[derive(Clone, Debug)]
pub struct Timing {
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Delay between attempts to read an acceptable cluster config.
    pub config_retry: Duration,
    /// How long to keep trying before giving up on the cluster config.
    pub config_timeout: Duration,
    /// The remote's heartbeat interval; stale after two of them.
    pub heartbeat_interval: Duration,
    /// How long an unreachable remote's service backends are kept (`None`: as long as the rest
    /// of its state, until it returns or its configuration is removed).
    pub service_cache_ttl: Option<Duration>,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            config_retry: Duration::from_secs(2),
            config_timeout: Duration::from_secs(120),
            heartbeat_interval: Duration::from_secs(60),
            service_cache_ttl: None,
        }
    }
}

/// What the IO side observed.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// The connection is up (the heartbeat key was read).
    Connected,
    /// Connecting failed.
    ConnectFailed(RemoteFailure),
    /// The remote's cluster config was read (`None`: the key does not exist).
    ClusterConfig(Option<CiliumClusterConfig>),
    /// Reading the cluster config failed.
    ConfigReadFailed(RemoteFailure),
    /// The canary of a kind exists.
    Canary(StateKind),
    /// A kind's watch delivered its initial listing.
    Synced(StateKind),
    /// A health check read the heartbeat key (`None`: absent).
    Heartbeat(Option<String>),
    /// A health check could not reach the remote.
    HealthCheckFailed(RemoteFailure),
    /// Time passed.
    Tick,
    /// The remote's configuration was removed.
    Removed,
}

/// What the IO side must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Connect after this delay (zero: now).
    Connect(Duration),
    /// Read `cilium/cluster-config/<remote>` after this delay.
    FetchConfig(Duration),
    /// The remote's cluster config was accepted with this id: tell consumers before any of the
    /// remote's entries (it comes before the first `WaitCanaries` or `StartWatch`).
    ConfigAccepted {
        /// The remote's cluster id, from its cluster config.
        cluster_id: u32,
    },
    /// Watch these canary keys and report each as it appears.
    WaitCanaries(Vec<(StateKind, String)>),
    /// Start list+watch of a kind under this prefix.
    StartWatch {
        /// The kind.
        kind: StateKind,
        /// The prefix (ends in `/`).
        prefix: String,
    },
    /// Every kind has synced: the remote's state is complete.
    ReportSynced,
    /// Close the connection and watches; the state is kept unless `Drain` follows.
    Disconnect,
    /// Delete everything known from this remote.
    Drain,
    /// The remote stayed unreachable for the service cache TTL: withdraw its services (the rest
    /// of its state stays).
    RevokeServices,
    /// The remote is reachable again: hand its services back.
    RestoreServices,
}

/// Where the machine stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting (or waiting to retry).
    Connecting,
    /// Reading and validating the cluster config since this time.
    FetchingConfig {
        /// When the first attempt was made.
        since: Instant,
    },
    /// Mirroring the remote.
    Running,
    /// Gave up; the reason is the last failure.
    Failed,
    /// The configuration was removed.
    Removed,
}

/// A status snapshot for `clustermesh status` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteStatus {
    /// Remote cluster name.
    pub name: String,
    /// Its id, once its config was accepted.
    pub cluster_id: Option<u32>,
    /// Connected and heartbeat fresh.
    pub connected: bool,
    /// Connected and every kind synced.
    pub ready: bool,
    /// Kinds that delivered their initial listing.
    pub synced: Vec<StateKind>,
    /// Whether the remote is read through a KVStoreMesh cache.
    pub cached: bool,
    /// Failures so far.
    pub failures: u64,
    /// The last failure.
    pub last_failure: Option<String>,
    /// The kind of the last failure.
    pub last_failure_kind: Option<FailureKind>,
}

/// The consumer protocol for one remote cluster.
#[derive(Debug)]
pub struct RemoteMachine {
    name: String,
    local: ClusterInfo,
    timing: Timing,
    phase: Phase,
    attempt: u32,
    remote: Option<ClusterInfo>,
    cached: bool,
    expected: BTreeSet<StateKind>,
    watching: BTreeSet<StateKind>,
    synced: BTreeSet<StateKind>,
    reported: bool,
    connected: bool,
    heartbeat: Option<String>,
    heartbeat_changed_at: Option<Instant>,
    failures: u64,
    last_failure: Option<RemoteFailure>,
    /// Since when the remote has been unreachable.
    lost_since: Option<Instant>,
    /// Whether its services were withdrawn after the TTL.
    services_revoked: bool,
    /// Whether the heartbeat was found stale (cleared by a new value).
    stale: bool,
}

impl RemoteMachine {
    /// A machine for remote `name` seen from `local`; the first action is to connect.
    pub fn new(name: impl Into<String>, local: ClusterInfo, timing: Timing) -> (Self, Vec<Action>) {
        let machine = Self {
            name: name.into(),
            local,
            timing,
            phase: Phase::Connecting,
            attempt: 0,
            remote: None,
            cached: false,
            expected: BTreeSet::new(),
            watching: BTreeSet::new(),
            synced: BTreeSet::new(),
            reported: false,
            connected: false,
            heartbeat: None,
            heartbeat_changed_at: None,
            failures: 0,
            last_failure: None,
            lost_since: None,
            services_revoked: false,
            stale: false,
        };
        (machine, vec![Action::Connect(Duration::ZERO)])
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    fn fail(&mut self, kind: FailureKind, reason: String) {
        self.failures += 1;
        self.last_failure = Some(RemoteFailure::new(kind, reason));
    }

    fn backoff(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        self.timing
            .reconnect_min
            .saturating_mul(factor)
            .min(self.timing.reconnect_max)
    }

    /// Feeds one input observed at `now`; returns what to do.
    pub fn step(&mut self, input: Input, now: Instant, ids: &mut ClusterIds) -> Vec<Action> {
        if self.phase == Phase::Removed {
            return Vec::new();
        }
        match input {
            Input::Removed => {
                ids.release(&self.name);
                self.phase = Phase::Removed;
                self.connected = false;
                vec![Action::Disconnect, Action::Drain]
            }
            Input::Connected => {
                self.connected = true;
                self.heartbeat_changed_at = Some(now);
                self.attempt = 0;
                let mut actions = self.found();
                if self.phase == Phase::Connecting {
                    self.phase = Phase::FetchingConfig { since: now };
                    actions.push(Action::FetchConfig(Duration::ZERO));
                }
                actions
            }
            Input::ConnectFailed(reason) => {
                self.fail(reason.kind, format!("connect: {}", reason.message));
                self.lost(now);
                self.connected = false;
                let delay = self.backoff();
                self.attempt += 1;
                vec![Action::Connect(delay)]
            }
            Input::ClusterConfig(config) => self.on_config(config, now, ids),
            Input::ConfigReadFailed(reason) => {
                let message = format!("cluster config: {}", reason.message);
                self.retry_config(reason.kind, message, now)
            }
            Input::Canary(kind) => {
                if self.phase != Phase::Running
                    || !self.expected.contains(&kind)
                    || self.watching.contains(&kind)
                {
                    return Vec::new();
                }
                self.start_watch(kind)
            }
            Input::Synced(kind) => {
                self.synced.insert(kind);
                if !self.reported
                    && !self.expected.is_empty()
                    && self.synced.is_superset(&self.expected)
                {
                    self.reported = true;
                    return vec![Action::ReportSynced];
                }
                Vec::new()
            }
            Input::Heartbeat(value) => {
                let fresh = value != self.heartbeat || self.heartbeat_changed_at.is_none();
                if fresh {
                    self.heartbeat = value;
                    self.heartbeat_changed_at = Some(now);
                }
                // A read that shows the same stale heartbeat does not make the remote healthy
                // again; a fresh value, or a read after a mere failed check, does.
                if self.stale && !fresh {
                    return Vec::new();
                }
                self.stale = false;
                self.connected = true;
                self.found()
            }
            Input::HealthCheckFailed(reason) => {
                if self.connected {
                    self.fail(reason.kind, format!("health check: {}", reason.message));
                }
                self.lost(now);
                self.connected = false;
                Vec::new()
            }
            Input::Tick => {
                let stale_after = self.timing.heartbeat_interval * 2;
                if let Some(at) = self.stale_at()
                    && now >= at
                {
                    self.connected = false;
                    self.stale = true;
                    self.lost(now);
                    self.fail(
                        FailureKind::HeartbeatStale,
                        format!("heartbeat not updated for more than {stale_after:?}"),
                    );
                }
                if let Some(at) = self.revoke_at()
                    && now >= at
                {
                    self.services_revoked = true;
                    return vec![Action::RevokeServices];
                }
                Vec::new()
            }
        }
    }

    /// The earliest time at which an [`Input::Tick`] can change anything (the heartbeat going
    /// stale, the service cache TTL running out); `None` while nothing is pending. A tick at or
    /// after it always changes the machine so that the deadline moves on, so a driver that
    /// sleeps until it and then ticks never spins.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Removed {
            return None;
        }
        [self.stale_at(), self.revoke_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the heartbeat goes stale: two heartbeat intervals after its value last changed.
    fn stale_at(&self) -> Option<Instant> {
        let at = self.heartbeat_changed_at.filter(|_| self.connected)?;
        Some(at + self.timing.heartbeat_interval * 2)
    }

    /// When an unreachable remote's services are withdrawn (with a service cache TTL).
    fn revoke_at(&self) -> Option<Instant> {
        let ttl = self.timing.service_cache_ttl?;
        let since = self.lost_since.filter(|_| !self.services_revoked)?;
        Some(since + ttl)
    }

    /// The remote became unreachable (the first time since it was last reachable).
    fn lost(&mut self, now: Instant) {
        self.lost_since.get_or_insert(now);
    }

    /// The remote is reachable: its withdrawn services come back.
    fn found(&mut self) -> Vec<Action> {
        self.lost_since = None;
        if std::mem::take(&mut self.services_revoked) {
            vec![Action::RestoreServices]
        } else {
            Vec::new()
        }
    }

    fn retry_config(&mut self, kind: FailureKind, reason: String, now: Instant) -> Vec<Action> {
        self.fail(kind, reason);
        let Phase::FetchingConfig { since } = self.phase else {
            return Vec::new();
        };
        if now.duration_since(since) >= self.timing.config_timeout {
            self.phase = Phase::Failed;
            return vec![Action::Disconnect];
        }
        vec![Action::FetchConfig(self.timing.config_retry)]
    }

    fn on_config(
        &mut self,
        config: Option<CiliumClusterConfig>,
        now: Instant,
        ids: &mut ClusterIds,
    ) -> Vec<Action> {
        if !matches!(self.phase, Phase::FetchingConfig { .. }) {
            return Vec::new();
        }
        let Some(config) = config else {
            let reason = format!("cluster config of {:?} is missing", self.name);
            return self.retry_config(FailureKind::ClusterConfigMissing, reason, now);
        };
        let remote = match check_remote_config(&self.local, &self.name, &config, ids) {
            Ok(remote) => remote,
            Err(err) => {
                let kind = match err {
                    RemoteConfigError::IdInUse { .. } => FailureKind::ClusterIdInUse,
                    RemoteConfigError::Invalid(_) => FailureKind::ClusterConfigInvalid,
                };
                return self.retry_config(kind, err.to_string(), now);
            }
        };
        let cluster_id = remote.id;
        self.remote = Some(remote);
        self.cached = config.capabilities.cached;
        let exports = config.capabilities.service_exports_enabled.unwrap_or(false);
        let canaries = expected_canaries(&self.name, exports, self.cached);
        self.expected = canaries.iter().map(|(k, _)| *k).collect();
        self.phase = Phase::Running;
        let mut actions = vec![Action::ConfigAccepted { cluster_id }];
        if config.capabilities.synced_canaries {
            actions.push(Action::WaitCanaries(canaries));
        } else {
            // Without canaries there is nothing to wait for.
            let kinds: Vec<StateKind> = self.expected.iter().copied().collect();
            actions.extend(kinds.into_iter().flat_map(|k| self.start_watch(k)));
        }
        actions
    }

    fn start_watch(&mut self, kind: StateKind) -> Vec<Action> {
        self.watching.insert(kind);
        let prefix = if self.cached {
            kind.cache_prefix(&self.name)
        } else {
            kind.state_prefix(&self.name)
        };
        vec![Action::StartWatch { kind, prefix }]
    }

    /// The last failure, with its cause chain.
    pub fn last_failure(&self) -> Option<&RemoteFailure> {
        self.last_failure.as_ref()
    }

    /// A status snapshot.
    pub fn status(&self) -> RemoteStatus {
        RemoteStatus {
            name: self.name.clone(),
            cluster_id: self.remote.as_ref().map(|r| r.id),
            connected: self.connected,
            ready: self.connected && self.reported,
            synced: self.synced.iter().copied().collect(),
            cached: self.cached,
            failures: self.failures,
            last_failure: self.last_failure.as_ref().map(|f| f.message.clone()),
            last_failure_kind: self.last_failure.as_ref().map(|f| f.kind.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_model::cluster::MaxConnectedClusters;

    fn local() -> ClusterInfo {
        ClusterInfo::new("c1", 1, MaxConnectedClusters::Max255).unwrap()
    }

    fn config(id: u32) -> CiliumClusterConfig {
        CiliumClusterConfig::new(id, MaxConnectedClusters::Max255)
    }

    fn running(ids: &mut ClusterIds, t0: Instant) -> RemoteMachine {
        let (mut m, first) = RemoteMachine::new("c2", local(), Timing::default());
        assert_eq!(first, [Action::Connect(Duration::ZERO)]);
        assert_eq!(
            m.step(Input::Connected, t0, ids),
            [Action::FetchConfig(Duration::ZERO)]
        );
        let actions = m.step(Input::ClusterConfig(Some(config(2))), t0, ids);
        assert!(matches!(
            &actions[..],
            [Action::ConfigAccepted { cluster_id: 2 }, Action::WaitCanaries(c)] if c.len() == 4
        ));
        m
    }

    #[test]
    fn happy_path_waits_for_each_canary_then_reports_synced_once() {
        let t0 = Instant::now();
        let mut ids = ClusterIds::new(&local());
        let mut m = running(&mut ids, t0);
        assert_eq!(m.status().cluster_id, Some(2));
        assert_eq!(
            m.step(Input::Canary(StateKind::Nodes), t0, &mut ids),
            [Action::StartWatch {
                kind: StateKind::Nodes,
                prefix: "cilium/state/nodes/v1/c2/".into()
            }]
        );
        assert!(
            m.step(Input::Canary(StateKind::Nodes), t0, &mut ids)
                .is_empty(),
            "started once"
        );
        assert!(
            m.step(Input::Canary(StateKind::ServiceExports), t0, &mut ids)
                .is_empty(),
            "not expected"
        );
        for kind in [StateKind::Services, StateKind::Identities, StateKind::Ip] {
            assert_eq!(m.step(Input::Canary(kind), t0, &mut ids).len(), 1);
        }
        for kind in [StateKind::Nodes, StateKind::Services, StateKind::Identities] {
            assert!(m.step(Input::Synced(kind), t0, &mut ids).is_empty());
            assert!(!m.status().ready);
        }
        assert_eq!(
            m.step(Input::Synced(StateKind::Ip), t0, &mut ids),
            [Action::ReportSynced]
        );
        assert!(
            m.step(Input::Synced(StateKind::Ip), t0, &mut ids)
                .is_empty()
        );
        assert!(m.status().ready);
    }

    #[test]
    fn a_cached_remote_is_read_from_the_cache_prefixes() {
        let t0 = Instant::now();
        let mut ids = ClusterIds::new(&local());
        let (mut m, _) = RemoteMachine::new("c2", local(), Timing::default());
        m.step(Input::Connected, t0, &mut ids);
        let mut cfg = config(2);
        cfg.capabilities.cached = true;
        let actions = m.step(Input::ClusterConfig(Some(cfg)), t0, &mut ids);
        assert_eq!(actions[0], Action::ConfigAccepted { cluster_id: 2 });
        let Action::WaitCanaries(canaries) = &actions[1] else {
            panic!("{actions:?}")
        };
        assert!(
            canaries
                .iter()
                .all(|(_, k)| k.starts_with("cilium/synced/c2/cilium/cache/"))
        );
        assert_eq!(
            m.step(Input::Canary(StateKind::Identities), t0, &mut ids),
            [Action::StartWatch {
                kind: StateKind::Identities,
                prefix: "cilium/cache/identities/v1/c2/id/".into()
            }]
        );
        assert!(m.status().cached);
    }

    #[test]
    fn without_canaries_every_watch_starts_at_once() {
        let t0 = Instant::now();
        let mut ids = ClusterIds::new(&local());
        let (mut m, _) = RemoteMachine::new("c2", local(), Timing::default());
        m.step(Input::Connected, t0, &mut ids);
        let mut cfg = config(2);
        cfg.capabilities.synced_canaries = false;
        let actions = m.step(Input::ClusterConfig(Some(cfg)), t0, &mut ids);
        assert_eq!(actions.len(), 5);
        assert_eq!(
            actions[0],
            Action::ConfigAccepted { cluster_id: 2 },
            "the id is announced before any watch starts"
        );
        assert!(
            actions[1..]
                .iter()
                .all(|a| matches!(a, Action::StartWatch { .. }))
        );
    }

    #[test]
    fn a_clashing_id_is_retried_then_refused_with_the_reason() {
        let t0 = Instant::now();
        let mut ids = ClusterIds::new(&local());
        ids.reserve("c3", 2).unwrap();
        let (mut m, _) = RemoteMachine::new("c2", local(), Timing::default());
        m.step(Input::Connected, t0, &mut ids);
        assert_eq!(
            m.step(Input::ClusterConfig(Some(config(2))), t0, &mut ids),
            [Action::FetchConfig(Duration::from_secs(2))]
        );
        assert_eq!(
            m.status().last_failure.as_deref(),
            Some("cluster \"c2\" has id 2, already used by cluster \"c3\"")
        );
        assert_eq!(
            m.step(
                Input::ClusterConfig(None),
                t0 + Duration::from_secs(60),
                &mut ids
            )
            .len(),
            1
        );
        assert_eq!(
            m.step(
                Input::ClusterConfig(Some(config(2))),
                t0 + Duration::from_secs(121),
                &mut ids
            ),
            [Action::Disconnect]
        );
        assert_eq!(m.phase(), &Phase::Failed);
        assert_eq!(m.status().failures, 3);
    }

    #[test]
    fn reconnects_back_off_and_cap() {
        let t0 = Instant::now();
        let mut ids = ClusterIds::new(&local());
        let (mut m, _) = RemoteMachine::new("c2", local(), Timing::default());
        let delays: Vec<Duration> = (0..8)
            .map(
                |_| match m.step(Input::ConnectFailed("refused".into()), t0, &mut ids)[..] {
                    [Action::Connect(d)] => d,
                    ref other => panic!("{other:?}"),
                },
            )
            .collect();
        let secs: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(
            m.step(Input::Connected, t0, &mut ids),
            [Action::FetchConfig(Duration::ZERO)]
        );
    }

    #[test]
    fn a_stale_heartbeat_or_failed_check_disconnects_but_keeps_state() {
        let t0 = Instant::now();
        let mut ids = ClusterIds::new(&local());
        let mut m = running(&mut ids, t0);
        for kind in [
            StateKind::Nodes,
            StateKind::Services,
            StateKind::Identities,
            StateKind::Ip,
        ] {
            m.step(Input::Canary(kind), t0, &mut ids);
            m.step(Input::Synced(kind), t0, &mut ids);
        }
        assert!(m.status().ready);
        let t1 = t0 + Duration::from_secs(60);
        m.step(
            Input::Heartbeat(Some("2026-11-22T12:01:00Z".into())),
            t1,
            &mut ids,
        );
        // The same value for two intervals: stale.
        m.step(
            Input::Heartbeat(Some("2026-11-22T12:01:00Z".into())),
            t1 + Duration::from_secs(100),
            &mut ids,
        );
        assert!(
            m.step(Input::Tick, t1 + Duration::from_secs(119), &mut ids)
                .is_empty()
        );
        assert!(m.status().connected);
        assert!(
            m.step(Input::Tick, t1 + Duration::from_secs(121), &mut ids)
                .is_empty(),
            "no drain"
        );
        let status = m.status();
        assert!(!status.connected && !status.ready);
        assert!(
            status
                .last_failure
                .unwrap()
                .contains("heartbeat not updated")
        );
        // Reading the same stale value again does not bring it back.
        m.step(
            Input::Heartbeat(Some("2026-11-22T12:01:00Z".into())),
            t1 + Duration::from_secs(123),
            &mut ids,
        );
        assert!(!m.status().connected, "still stale");
        // A fresh heartbeat brings it back; a failed check takes it down again.
        m.step(
            Input::Heartbeat(Some("2026-11-22T12:04:00Z".into())),
            t1 + Duration::from_secs(180),
            &mut ids,
        );
        assert!(m.status().ready);
        m.step(
            Input::HealthCheckFailed("deadline exceeded".into()),
            t1 + Duration::from_secs(185),
            &mut ids,
        );
        assert!(!m.status().connected);
        assert_eq!(m.status().synced.len(), 4, "state kept");
        // After a mere failed check, the next read reconnects even with the same value.
        m.step(
            Input::Heartbeat(Some("2026-11-22T12:04:00Z".into())),
            t1 + Duration::from_secs(187),
            &mut ids,
        );
        assert!(m.status().connected);
    }

    #[test]
    fn the_service_cache_ttl_withdraws_services_only_and_gives_them_back() {
        let t0 = Instant::now();
        let mut ids = ClusterIds::new(&local());
        let timing = Timing {
            service_cache_ttl: Some(Duration::from_secs(30)),
            ..Timing::default()
        };
        let (mut m, _) = RemoteMachine::new("c2", local(), timing);
        m.step(Input::Connected, t0, &mut ids);
        m.step(Input::HealthCheckFailed("timeout".into()), t0, &mut ids);
        let later = |s| t0 + Duration::from_secs(s);
        assert!(m.step(Input::Tick, later(29), &mut ids).is_empty());
        // A second failure does not restart the clock.
        m.step(
            Input::HealthCheckFailed("timeout".into()),
            later(20),
            &mut ids,
        );
        assert_eq!(
            m.step(Input::Tick, later(30), &mut ids),
            [Action::RevokeServices]
        );
        assert!(m.step(Input::Tick, later(40), &mut ids).is_empty(), "once");
        assert_eq!(
            m.step(Input::Heartbeat(Some("t".into())), later(41), &mut ids),
            [Action::RestoreServices]
        );
        // Without a TTL nothing is ever withdrawn.
        let (mut m, _) = RemoteMachine::new("c2", local(), Timing::default());
        m.step(Input::Connected, t0, &mut ids);
        m.step(Input::HealthCheckFailed("timeout".into()), t0, &mut ids);
        assert!(m.step(Input::Tick, later(100_000), &mut ids).is_empty());
    }

    #[test]
    fn the_next_deadline_is_when_a_tick_changes_something() {
        let t0 = Instant::now();
        let later = |s| t0 + Duration::from_secs(s);
        let mut ids = ClusterIds::new(&local());
        let timing = Timing {
            heartbeat_interval: Duration::from_secs(10),
            service_cache_ttl: Some(Duration::from_secs(30)),
            ..Timing::default()
        };
        let (mut m, _) = RemoteMachine::new("c2", local(), timing);
        assert_eq!(
            m.next_deadline(),
            None,
            "nothing to wait for before connecting"
        );
        m.step(Input::Connected, t0, &mut ids);
        assert_eq!(
            m.next_deadline(),
            Some(later(20)),
            "stale after two intervals"
        );
        m.step(Input::Heartbeat(Some("a".into())), later(5), &mut ids);
        assert_eq!(m.next_deadline(), Some(later(25)), "a new value moves it");
        m.step(Input::Heartbeat(Some("a".into())), later(7), &mut ids);
        assert_eq!(
            m.next_deadline(),
            Some(later(25)),
            "the same value does not"
        );
        // A tick before the deadline changes nothing; one at the deadline does.
        assert!(m.step(Input::Tick, later(24), &mut ids).is_empty());
        assert!(m.status().connected);
        assert!(m.step(Input::Tick, later(25), &mut ids).is_empty());
        assert!(!m.status().connected, "stale at exactly two intervals");
        // Now the service cache TTL runs, from the moment it went stale.
        assert_eq!(m.next_deadline(), Some(later(55)));
        assert_eq!(
            m.step(Input::Tick, later(55), &mut ids),
            [Action::RevokeServices]
        );
        assert_eq!(m.next_deadline(), None, "nothing left to happen by itself");
        // A failed check while revoked: still nothing; back, the heartbeat clock restarts.
        m.step(
            Input::HealthCheckFailed("timeout".into()),
            later(60),
            &mut ids,
        );
        assert_eq!(m.next_deadline(), None);
        m.step(Input::Heartbeat(Some("b".into())), later(70), &mut ids);
        assert_eq!(m.next_deadline(), Some(later(90)));
        m.step(
            Input::HealthCheckFailed("timeout".into()),
            later(71),
            &mut ids,
        );
        assert_eq!(
            m.next_deadline(),
            Some(later(101)),
            "only the TTL is pending"
        );
        m.step(Input::Removed, later(72), &mut ids);
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn removal_drains_and_releases_the_id() {
        let t0 = Instant::now();
        let mut ids = ClusterIds::new(&local());
        let mut m = running(&mut ids, t0);
        assert!(ids.reserve("c9", 2).is_err());
        assert_eq!(
            m.step(Input::Removed, t0, &mut ids),
            [Action::Disconnect, Action::Drain]
        );
        assert_eq!(m.phase(), &Phase::Removed);
        ids.reserve("c9", 2).unwrap();
        assert!(
            m.step(Input::Connected, t0, &mut ids).is_empty(),
            "a removed remote stays removed"
        );
    }
}
