//! Which killed component explains a failed request: a pure function of the failure and the
//! faults' windows.
//!
//! A window runs from the kill until the component was back (the runner's own check: the
//! agent answers, the apiserver is ready, etcd serves, kube-dns answers), widened by the
//! probe timeout before (a request started just before the kill) and a grace after (caches
//! and connections catching up). The failures a kill may explain, and only those:
//!
//! | killed | explains |
//! | --- | --- |
//! | `kube-dns` of cluster C | DNS lookups by clients of cluster C (one replica: no answer until it is back, then SERVFAIL until it has listed the services) |
//! | agent, apiserver, etcd | nothing: the datapath stays pinned and keeps forwarding, DNS answers from the server's cache |
//!
//! Every other failure is unexplained: a bug to find and fix.

use std::time::Duration;

use serde::Serialize;

use super::plan::{Target, humantime_serde_secs};

/// What a request tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Probe {
    /// HTTP to a pod of the other cluster, by address.
    Pod,
    /// HTTP to the global service's address.
    Service,
    /// The global service's name through the cluster DNS (the lookup itself).
    Dns,
    /// HTTP to the address the DNS answered.
    DnsHttp,
    /// One round trip on a long TCP stream to a pod of the other cluster.
    Stream,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// No DNS answer in time.
    DnsTimeout,
    /// A DNS answer without an address (or an error code).
    DnsNoAddress,
    /// The TCP handshake was refused (RST).
    Refused,
    /// The TCP handshake did not complete in time.
    ConnectTimeout,
    /// The connection was reset.
    Reset,
    /// No answer in time on an established connection.
    ReadTimeout,
    /// An answer that is not the echo or the server's JSON.
    BadAnswer,
    /// Any other I/O error.
    Other(String),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::DnsTimeout => "dns timeout",
            Self::DnsNoAddress => "dns no address",
            Self::Refused => "connection refused",
            Self::ConnectTimeout => "connect timeout",
            Self::Reset => "connection reset",
            Self::ReadTimeout => "read timeout",
            Self::BadAnswer => "bad answer",
            Self::Other(e) => return write!(f, "other: {e}"),
        };
        f.write_str(s)
    }
}

impl Cause {
    /// The cause of an I/O error while connecting (`connecting`) or afterwards.
    pub fn of(err: &std::io::Error, connecting: bool) -> Self {
        use std::io::ErrorKind as K;
        match err.kind() {
            K::ConnectionRefused => Self::Refused,
            K::TimedOut | K::WouldBlock if connecting => Self::ConnectTimeout,
            K::TimedOut | K::WouldBlock => Self::ReadTimeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                Self::Reset
            }
            _ => Self::Other(err.to_string()),
        }
    }
}

/// One failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// When it started, from the soak's start.
    #[serde(with = "humantime_serde_secs")]
    pub at: Duration,
    /// What it tried.
    pub probe: Probe,
    /// The client's cluster.
    pub client_cluster: String,
    /// The client's node.
    pub client_node: String,
    /// Where it went: a pod's address, the service's, the DNS server's.
    pub target: String,
    /// Why it failed.
    pub cause: Cause,
}

/// A killed component's time out of service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Window {
    /// What was killed.
    pub target: Target,
    /// The kill.
    #[serde(with = "humantime_serde_secs")]
    pub from: Duration,
    /// Back in service.
    #[serde(with = "humantime_serde_secs")]
    pub to: Duration,
}

/// The window that explains `failure`, if any (see the module's table). `before` widens each
/// window before the kill (the probe timeout), `after` after the component is back.
pub fn explain<'a>(
    failure: &Failure,
    windows: &'a [Window],
    before: Duration,
    after: Duration,
) -> Option<&'a Window> {
    windows.iter().find(|w| {
        let from = w.from.saturating_sub(before);
        let to = w.to + after;
        failure.at >= from && failure.at <= to && may_explain(&w.target, failure)
    })
}

fn may_explain(target: &Target, failure: &Failure) -> bool {
    match target {
        Target::KubeDns { cluster } => {
            failure.probe == Probe::Dns && &failure.client_cluster == cluster
        }
        Target::Agent { .. } | Target::Apiserver { .. } | Target::Etcd { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(at: u64, probe: Probe, cluster: &str) -> Failure {
        Failure {
            at: Duration::from_secs(at),
            probe,
            client_cluster: cluster.into(),
            client_node: format!("{cluster}-node1"),
            target: "10.11.0.10".into(),
            cause: Cause::DnsTimeout,
        }
    }

    fn windows() -> Vec<Window> {
        vec![
            Window {
                target: Target::KubeDns {
                    cluster: "cluster1".into(),
                },
                from: Duration::from_secs(10),
                to: Duration::from_secs(12),
            },
            Window {
                target: Target::Agent {
                    cluster: "cluster2".into(),
                    node: "cluster2-node1".into(),
                },
                from: Duration::from_secs(30),
                to: Duration::from_secs(33),
            },
        ]
    }

    #[test]
    fn a_kube_dns_kill_explains_its_clusters_lookups_in_its_window() {
        let w = windows();
        let (before, after) = (Duration::from_secs(2), Duration::from_secs(1));
        let f = failure(11, Probe::Dns, "cluster1");
        assert_eq!(explain(&f, &w, before, after), Some(&w[0]));
        // Started just before the kill, ended in a timeout after it.
        assert!(explain(&failure(8, Probe::Dns, "cluster1"), &w, before, after).is_some());
        assert!(explain(&failure(13, Probe::Dns, "cluster1"), &w, before, after).is_some());
        // Too early, too late, another cluster, not a lookup.
        assert!(explain(&failure(7, Probe::Dns, "cluster1"), &w, before, after).is_none());
        assert!(explain(&failure(14, Probe::Dns, "cluster1"), &w, before, after).is_none());
        assert!(explain(&failure(11, Probe::Dns, "cluster2"), &w, before, after).is_none());
        assert!(explain(&failure(11, Probe::Pod, "cluster1"), &w, before, after).is_none());
    }

    #[test]
    fn an_agent_kill_explains_nothing() {
        let w = windows();
        for probe in [Probe::Pod, Probe::Service, Probe::Dns, Probe::Stream] {
            let f = failure(31, probe, "cluster2");
            assert!(
                explain(&f, &w, Duration::from_secs(2), Duration::from_secs(1)).is_none(),
                "{probe:?}"
            );
        }
    }

    #[test]
    fn io_errors_have_causes() {
        use std::io::{Error, ErrorKind};
        let e = |k| Error::from(k);
        assert_eq!(
            Cause::of(&e(ErrorKind::ConnectionRefused), true),
            Cause::Refused
        );
        assert_eq!(
            Cause::of(&e(ErrorKind::TimedOut), true),
            Cause::ConnectTimeout
        );
        assert_eq!(
            Cause::of(&e(ErrorKind::WouldBlock), false),
            Cause::ReadTimeout
        );
        assert_eq!(
            Cause::of(&e(ErrorKind::ConnectionReset), false),
            Cause::Reset
        );
        assert_eq!(Cause::ConnectTimeout.to_string(), "connect timeout");
    }
}
