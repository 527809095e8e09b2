//! A real Prometheus for tests: Debian's `/usr/bin/prometheus` (override with
//! `PLEXUS_PROMETHEUS_BIN`), started inside a network namespace the test owns (a lab's
//! underlay), scraping the targets the test lists, and queried through its HTTP API (PromQL).
//!
//! It promises:
//! - its own configuration and TSDB in a temporary directory, a scrape interval of 1 s, its web
//!   listener on a loopback port that was free in that namespace, never Debian's service or
//!   any port of the host;
//! - cleanup: dropping a [`Prometheus`] (also while a test panics) kills the process and
//!   removes its directory; the process has a parent-death signal, so it dies with the thread
//!   that started it even when the test process is killed without unwinding;
//! - no timed assertions: [`Prometheus::start`] waits (with a deadline) until Prometheus says
//!   it is ready, and tests poll their queries with a deadline ([`crate::lab::eventually`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Prometheus binary: `PLEXUS_PROMETHEUS_BIN` or Debian's.
pub fn prometheus_bin() -> PathBuf {
    std::env::var_os("PLEXUS_PROMETHEUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/prometheus".into())
}

/// One scrape job: a name (the `job` label) and its `host:port` targets (`/metrics`, HTTP).
#[derive(Clone, Debug)]
pub struct Job {
    /// The job's name.
    pub name: String,
    /// Its targets, `host:port`.
    pub targets: Vec<String>,
}

/// One sample of an instant vector: its labels (with `__name__` when the query keeps it) and
/// its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// The value at the query's time.
    pub value: f64,
}

/// A running Prometheus in a network namespace, killed on drop.
pub struct Prometheus {
    child: Child,
    netns: String,
    listen: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus inside the named network namespace `netns` (`/run/netns/NAME`,
    /// entered with `nsenter --net`), scraping `jobs` every second; returns once it is ready.
    /// Panics (the test's failure) with its log when it does not come up within a minute.
    pub fn start(netns: &str, jobs: &[Job]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("plexus-prometheus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create Prometheus' directory: {e}"));
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml(jobs))
            .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let storage = dir.path().join("data");
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let port = in_netns(netns, || {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            Ok(listener.local_addr()?.port())
        })
        .unwrap_or_else(|e| panic!("find a free loopback port in netns {netns}: {e}"));
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address={listen}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn nsenter {}: {e}", prometheus_bin().display()));
        let mut prometheus = Self {
            child,
            netns: netns.to_string(),
            listen,
            dir,
        };
        prometheus.wait_ready(Duration::from_secs(60));
        prometheus
    }

    /// Where its web API listens, inside its namespace.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Prometheus exited ({status}):\n{}", self.log());
            }
            match self.get("/-/ready") {
                Ok((200, _)) => return,
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "Prometheus in {} not ready within {limit:?} ({last}):\n{}",
            self.netns,
            self.log()
        );
    }

    /// `GET path` of its HTTP API, from inside its namespace: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let (listen, owned) = (self.listen, path.to_string());
        in_netns(&self.netns, move || http_get(listen, &owned))
            .map_err(|e| format!("GET http://{}{path}: {e}", self.listen))
    }

    /// The instant vector of PromQL `query` now (`/api/v1/query`); an error names the query
    /// and says what Prometheus answered.
    pub fn query(&self, query: &str) -> Result<Vec<Sample>, String> {
        let (code, body) = self.get(&format!("/api/v1/query?query={}", url_encode(query)))?;
        let answer: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("query {query:?}: not JSON ({e}): {code} {body}"))?;
        if code != 200 || answer["status"] != "success" {
            return Err(format!("query {query:?}: {code} {body}"));
        }
        let Some(result) = answer["data"]["result"].as_array() else {
            return Err(format!("query {query:?}: no result list in {body}"));
        };
        result
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("query {query:?}: a sample without a value: {r}"))?;
                Ok(Sample { labels, value })
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration: every job's static targets, scraped every second.
fn config_yaml(jobs: &[Job]) -> String {
    let mut out = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for job in jobs {
        out.push_str(&format!(
            "  - job_name: {}\n    static_configs:\n      - targets: [{}]\n",
            serde_json::Value::from(job.name.as_str()),
            job.targets
                .iter()
                .map(|t| serde_json::Value::from(t.as_str()).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out
}

/// Runs `f` on a thread that entered network namespace `netns`.
fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter {path}: {e}"))?;
        f().map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| format!("the thread in netns {netns} panicked"))?
}

/// A plain HTTP/1.0 GET (Prometheus answers and closes): status and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head}")))?;
    Ok((code, body.to_string()))
}

/// `s` percent-encoded for a query string (everything but RFC 3986's unreserved characters).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_is_percent_encoded() {
        assert_eq!(
            url_encode("sum(x{reason=\"Policy denied\"}) > 0"),
            "sum%28x%7Breason%3D%22Policy%20denied%22%7D%29%20%3E%200"
        );
    }

    #[test]
    fn the_configuration_lists_every_job_and_target() {
        let yaml = config_yaml(&[
            Job {
                name: "plexus-apiserver".into(),
                targets: vec!["172.31.1.1:9963".into()],
            },
            Job {
                name: "plexus-agent".into(),
                targets: vec!["172.31.1.11:9962".into(), "172.31.2.11:9962".into()],
            },
        ]);
        assert!(yaml.contains("scrape_interval: 1s"), "{yaml}");
        assert!(
            yaml.contains(
                "  - job_name: \"plexus-agent\"\n    static_configs:\n      - targets: [\"172.31.1.11:9962\", \"172.31.2.11:9962\"]\n"
            ),
            "{yaml}"
        );
    }
}
