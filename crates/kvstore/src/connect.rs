//! Connecting to etcd with retries until a deadline: the one loop every daemon and the CLI use.
//!
//! [`connect_with_retry`] connects and checks that etcd answers (etcd-client connects lazily, so
//! a connection is only known to work once a request went through), retrying with a doubling
//! delay while etcd starts or restarts. It promises:
//! - each distinct failure (by kind and message) is logged once, at `warn`, with its cause
//!   chain; the same failure again is not logged again, so a long wait is a few lines, not one
//!   per attempt;
//! - success after failures is logged once, at `info`;
//! - when the deadline passes, the last error is returned as it is, with its kind and cause.

use std::time::Duration;

use crate::error::ErrorKind;
use crate::etcd::{EtcdBackend, EtcdConfig};
use crate::{Error, KvBackend, Result};

/// How [`connect_with_retry`] retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Give up after this long (`None`: keep trying for as long as it takes).
    pub limit: Option<Duration>,
    /// The first delay between attempts; it doubles after each failure.
    pub min_delay: Duration,
    /// The longest delay between attempts.
    pub max_delay: Duration,
}

impl Retry {
    /// Retry for at most `limit`, starting at 250 ms between attempts, doubling up to 2 s.
    pub fn for_at_most(limit: Duration) -> Self {
        Self {
            limit: Some(limit),
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(2),
        }
    }

    /// Retry forever, starting at 500 ms between attempts, doubling up to 5 s (for daemons that
    /// serve something meanwhile and are not restarted when they exit).
    pub fn forever() -> Self {
        Self {
            limit: None,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(5),
        }
    }

    /// The delay after `failures` failed attempts (1, 2, ...).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.min_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Connects to the etcd `config` describes and checks that it answers, retrying as `retry`
/// says. `what` names it in the log (e.g. "the cluster's etcd").
///
/// A status request that etcd refuses for lack of permission still proves the connection
/// works (a read-only user may not be allowed to ask), so it counts as connected.
pub async fn connect_with_retry(
    config: &EtcdConfig,
    retry: &Retry,
    what: &str,
) -> Result<EtcdBackend> {
    let deadline = retry.limit.map(|l| tokio::time::Instant::now() + l);
    let mut failures = 0u32;
    let mut logged: Option<(ErrorKind, String)> = None;
    loop {
        let err = match connect_once(config).await {
            Ok(etcd) => {
                if failures > 0 {
                    tracing::info!(
                        endpoints = etcd.endpoints(),
                        attempts = failures + 1,
                        "connected to {what}"
                    );
                }
                return Ok(etcd);
            }
            Err(err) => err,
        };
        failures += 1;
        let seen = (err.kind(), err.to_string());
        if logged.as_ref() != Some(&seen) {
            let cause = match &err {
                Error::Unavailable(f) => f.chain(),
                other => other.to_string(),
            };
            tracing::warn!(error = %err, %cause, "cannot reach {what} yet, retrying");
            logged = Some(seen);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(err);
        }
        let mut delay = retry.delay(failures);
        if let Some(d) = deadline {
            delay = delay.min(d.saturating_duration_since(tokio::time::Instant::now()));
        }
        tokio::time::sleep(delay).await;
    }
}

async fn connect_once(config: &EtcdConfig) -> Result<EtcdBackend> {
    let etcd = EtcdBackend::connect(config.clone()).await?;
    match etcd.status().await {
        Ok(_) => Ok(etcd),
        Err(err) if err.kind() == ErrorKind::PermissionDenied => Ok(etcd),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let r = Retry::for_at_most(Duration::from_secs(10));
        let delays: Vec<u64> = (1..=6).map(|n| r.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 2000, 2000]);
    }

    // Real sockets, so real time: paused time would fire the connect timeout while the
    // runtime waits for the socket.
    #[tokio::test]
    async fn gives_up_at_the_deadline_with_the_last_error_and_its_kind() {
        crate::install_crypto_provider();
        // A closed loopback port: bind one, note it, close it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = EtcdConfig::new(vec![format!("http://127.0.0.1:{port}")]);
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            connect_with_retry(&config, &Retry::for_at_most(Duration::from_secs(1)), "etcd"),
        )
        .await
        .expect("gives up in time")
        .err()
        .expect("nothing listens");
        assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("status on http://127.0.0.1:{port}")),
            "{err}"
        );
    }
}
