//! Test parts that are real and clean up after themselves: etcd processes and whole labs.
//!
//! [`EtcdProcess`] starts the Debian `etcd` binary (etcd 3.4; override with `PLEXUS_ETCD_BIN`)
//! on free loopback ports with a temporary data directory, plain ([`EtcdProcess::start`]) or
//! with TLS and `--client-cert-auth` under a fresh CA ([`EtcdProcess::start_tls`]) or with
//! certificates the test made ([`EtcdProcess::start_tls_with`]). It promises
//! cleanup: dropping it (also while a test panics) kills the process and removes the directory,
//! and the process is started with a parent-death signal so it dies with the thread that
//! started it even if the test process is killed.
//!
//! [`openssl`] makes certificates with the `openssl` binary, in the shapes users bring (Cilium's
//! Helm chart, `openssl x509 -req` without extensions).
//!
//! [`EtcdFleet`] starts many etcds at once (the scale bench and test), on threads that outlive
//! them.
//!
//! [`EtcdProcess::setup_auth`] creates the users and roles of the wire format's access control
//! (a root user, read-only users for prefixes) and enables etcd auth; with client-cert auth,
//! the certificate's CN is the etcd user.
//!
//! [`outside`] holds the clients the lab tests use towards the outside network (DNS lookups over
//! UDP and TCP, HTTP), from a pod's network namespace.
//!
//! [`lab`] is the harness of the lab tests (the CLI's and the cluster DNS's): a [`lab::Lab`]
//! driven through the `plexus` binary, with its own name and directory, taken down on drop;
//! [`walkthrough`] holds the checks the walkthrough tests share; [`prometheus`] runs a real
//! Prometheus inside a lab's namespace and queries it; [`netpol`] is the model, probes and
//! truth tables of the Kubernetes NetworkPolicy e2e suite's port; [`web_view`] holds the canned answers of
//! agents and relays for the web view's and `plexus observe`'s tests.

// `pre_exec` with `prctl(PR_SET_PDEATHSIG)` needs unsafe: it is the only way to make sure no
// etcd (or Prometheus) outlives a test process that was killed without unwinding.
#![allow(unsafe_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plexus_pki::Ca;

pub use cluster::EtcdCluster;

mod cluster;
pub mod lab;
pub mod netpol;
pub mod openssl;
pub mod outside;
pub mod prometheus;
pub mod walkthrough;
pub mod web_view;

/// What went wrong starting or driving an etcd process.
#[derive(Debug, thiserror::Error)]
pub enum TestSupportError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// etcd did not become healthy in time.
    #[error("etcd at {endpoint} not ready after {waited:?}; log {log}:\n{tail}")]
    NotReady {
        /// Client endpoint.
        endpoint: String,
        /// How long we waited.
        waited: Duration,
        /// Path of etcd's log.
        log: String,
        /// Last lines of the log.
        tail: String,
    },
    /// An etcdctl command failed.
    #[error("etcdctl {args}: {output}")]
    Etcdctl {
        /// The arguments.
        args: String,
        /// What it printed.
        output: String,
    },
    /// Certificates could not be issued.
    #[error(transparent)]
    Pki(#[from] plexus_pki::PkiError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TestSupportError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestSupportError {
    let what = what.into();
    move |source| TestSupportError::Io { what, source }
}

/// Paths of a client certificate, its key and the CA that signed the server.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// CA certificate to trust.
    pub ca_file: PathBuf,
    /// Client certificate.
    pub cert_file: PathBuf,
    /// Client key.
    pub key_file: PathBuf,
}

/// TLS material for [`EtcdProcess::start_tls_with`], made by the test itself (with openssl,
/// rcgen or [`plexus_pki`]), so that a test can give etcd a deliberately wrong certificate.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The certificate etcd presents (PEM).
    pub cert_file: PathBuf,
    /// Its key (PEM).
    pub key_file: PathBuf,
    /// The CA etcd trusts for client certificates (PEM).
    pub client_ca_file: PathBuf,
    /// A client certificate etcd accepts, used by [`EtcdProcess::etcdctl`] as `root`. etcdctl
    /// then skips verifying the server's certificate, which may be wrong on purpose.
    pub root: ClientCert,
}

#[derive(Clone)]
struct Tls {
    /// The CA that issued the server and client certificates (`None`: the test brought its own
    /// certificates, see [`ServerTls`]).
    ca: Option<std::sync::Arc<Ca>>,
    ca_file: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    root: ClientCert,
}

/// A real etcd on loopback, killed and removed on drop.
pub struct EtcdProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<Tls>,
    issued: std::sync::atomic::AtomicU32,
    /// Set for a member of an [`EtcdCluster`]: its name and the cluster's peer list.
    membership: Option<Membership>,
}

/// Who a member of a multi-member cluster is.
#[derive(Clone)]
struct Membership {
    name: String,
    /// `--initial-cluster`: every member's `name=peer-url`.
    initial_cluster: String,
}

/// The etcd binary: `PLEXUS_ETCD_BIN` or `/usr/bin/etcd`.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("PLEXUS_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/etcd".into())
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind a loopback port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("read a loopback port"))?
        .port())
}

/// Path of a binary of this workspace (`plexus-apiserver`, `plexus-agent`, `plexus`), built
/// beside the running test (`cargo build --workspace --bins` builds them all; `scripts/test.sh`
/// does that first).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

impl EtcdProcess {
    /// Starts a plain-HTTP etcd.
    pub fn start() -> Result<Self> {
        Self::start_inner(false, None)
    }

    /// Starts an etcd with TLS and `--client-cert-auth`: clients need a certificate from
    /// [`EtcdProcess::issue_client`].
    pub fn start_tls() -> Result<Self> {
        Self::start_inner(true, None)
    }

    /// Starts an etcd with TLS and `--client-cert-auth` that presents `tls.cert_file` and
    /// trusts `tls.client_ca_file`; [`EtcdProcess::issue_client`] is not available.
    pub fn start_tls_with(tls: ServerTls) -> Result<Self> {
        Self::start_inner(true, Some(tls))
    }

    fn start_inner(tls: bool, custom: Option<ServerTls>) -> Result<Self> {
        let mut last = None;
        // A port picked as free may be taken before etcd binds it: try a few times.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("plexus-etcd-")
                .tempdir()
                .map_err(io("create etcd temp dir"))?;
            let tls = match (&custom, tls) {
                (Some(custom), _) => Some(Tls {
                    ca: None,
                    ca_file: custom.client_ca_file.clone(),
                    server_cert: custom.cert_file.clone(),
                    server_key: custom.key_file.clone(),
                    root: custom.root.clone(),
                }),
                (None, true) => Some(Self::make_tls(dir.path())?),
                (None, false) => None,
            };
            let mut etcd = Self {
                child: None,
                dir,
                client_port: free_port()?,
                peer_port: free_port()?,
                tls,
                issued: std::sync::atomic::AtomicU32::new(0),
                membership: None,
            };
            match etcd.spawn() {
                Ok(()) => return Ok(etcd),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| TestSupportError::Io {
            what: "start etcd".into(),
            source: std::io::Error::other("no attempt made"),
        }))
    }

    fn make_tls(dir: &Path) -> Result<Tls> {
        let ca = Ca::generate("plexus-test-ca")?;
        let (ca_file, _) = ca.pem().write_to(dir, "ca")?;
        let server =
            ca.issue_server("etcd", &["localhost"], &["127.0.0.1".parse().expect("ip")])?;
        let (server_cert, server_key) = server.write_to(dir, "server")?;
        let (cert_file, key_file) = ca.issue_client("root")?.write_to(dir, "client-root")?;
        let root = ClientCert {
            ca_file: ca_file.clone(),
            cert_file,
            key_file,
        };
        Ok(Tls {
            ca: Some(std::sync::Arc::new(ca)),
            ca_file,
            server_cert,
            server_key,
            root,
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// The data directory (kept across [`EtcdProcess::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Path of etcd's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The CA that issued the server's and clients' certificates ([`EtcdProcess::start_tls`]
    /// only), e.g. to issue certificates of other shapes from it.
    pub fn ca(&self) -> Option<&Ca> {
        self.tls.as_ref().and_then(|t| t.ca.as_deref())
    }

    /// The CA file clients must trust (TLS mode only).
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_file.as_path())
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Issues a client certificate with common name `cn` (the etcd user). TLS mode only.
    pub fn issue_client(&self, cn: &str) -> Result<ClientCert> {
        let ca = self
            .tls
            .as_ref()
            .and_then(|t| t.ca.as_ref().map(|ca| (t, ca)));
        let (tls, ca) = ca.ok_or_else(|| TestSupportError::Io {
            what: "issue a client certificate".into(),
            source: std::io::Error::other("etcd runs without TLS or with the test's certificates"),
        })?;
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let (cert_file, key_file) = ca
            .issue_client(cn)?
            .write_to(self.dir.path(), &format!("client-{n}-{cn}"))?;
        Ok(ClientCert {
            ca_file: tls.ca_file.clone(),
            cert_file,
            key_file,
        })
    }

    /// The certificate of the `root` user (TLS mode only).
    pub fn root_client(&self) -> Option<&ClientCert> {
        self.tls.as_ref().map(|t| &t.root)
    }

    fn spawn(&mut self) -> Result<()> {
        self.launch()?;
        self.wait_ready(Duration::from_secs(20))
    }

    /// Starts the process without waiting for it to answer (a member of a new cluster only
    /// answers once a quorum of its peers runs).
    fn launch(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .map_err(io("open etcd log"))?;
        let log_err = log.try_clone().map_err(io("open etcd log"))?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let (name, initial_cluster) = match &self.membership {
            Some(m) => (m.name.clone(), m.initial_cluster.clone()),
            None => ("plexus-test".to_string(), format!("plexus-test={peer}")),
        };
        let mut cmd = Command::new(etcd_bin());
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-token=plexus-test")
            // A restarted member finds its data directory and ignores this.
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(key);
            }
        }
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca_file.display()))
                .arg("--client-cert-auth");
        }
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
            .map_err(io(format!("spawn {}", etcd_bin().display())))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                break; // exited: report with the log below
            }
            if self
                .etcdctl(&[
                    "endpoint",
                    "health",
                    "--dial-timeout=500ms",
                    "--command-timeout=1s",
                ])
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let err = TestSupportError::NotReady {
            endpoint: self.endpoint(),
            waited: start.elapsed(),
            log: self.log_file().display().to_string(),
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        };
        self.kill();
        Err(err)
    }

    /// Runs `etcdctl` against this etcd (as `root` in TLS mode) and returns its output.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()));
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cacert={}", tls.root.ca_file.display()))
                .arg(format!("--cert={}", tls.root.cert_file.display()))
                .arg(format!("--key={}", tls.root.key_file.display()));
            if tls.ca.is_none() {
                cmd.arg("--insecure-skip-tls-verify");
            }
        }
        let out = cmd.args(args).output().map_err(io("run etcdctl"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(TestSupportError::Etcdctl {
                args: args.join(" "),
                output: text.trim().to_string(),
            })
        }
    }

    /// Creates the `root` user (role root), one read-only user per `(user, prefixes)` with a
    /// role of the same name that may read those key prefixes, then enables auth.
    /// TLS mode: users authenticate by certificate CN.
    pub fn setup_auth(&self, read_only: &[(&str, &[&str])]) -> Result<()> {
        self.etcdctl(&["user", "add", "root", "--no-password"])?;
        self.etcdctl(&["user", "grant-role", "root", "root"])?;
        for (user, prefixes) in read_only {
            self.etcdctl(&["role", "add", user])?;
            for prefix in *prefixes {
                self.etcdctl(&[
                    "role",
                    "grant-permission",
                    user,
                    "read",
                    prefix,
                    "--prefix=true",
                ])?;
            }
            self.etcdctl(&["user", "add", user, "--no-password"])?;
            self.etcdctl(&["user", "grant-role", user, user])?;
        }
        self.etcdctl(&["auth", "enable"])?;
        Ok(())
    }

    /// Stops etcd gracefully (SIGTERM, then SIGKILL after 5 s). The data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd at once (SIGKILL), as a crash would. The data directory stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Many etcd processes started in parallel, for benches and tests at scale: `n` etcds on
/// `threads` threads that stay alive until the fleet is dropped (an [`EtcdProcess`] dies with
/// the thread that started it). Dropping the fleet stops every one.
pub struct EtcdFleet {
    endpoints: Vec<String>,
    stop: Vec<std::sync::mpsc::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EtcdFleet {
    /// Starts `n` plain etcds on `threads` threads; `progress` hears the count started so far.
    /// Fails (stopping those started) if one does not start.
    pub fn start(n: usize, threads: usize, mut progress: impl FnMut(usize)) -> Result<Self> {
        let threads = threads.clamp(1, n.max(1));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(usize, String)>>();
        let mut fleet = Self {
            endpoints: vec![String::new(); n],
            stop: Vec::new(),
            threads: Vec::new(),
        };
        for t in 0..threads {
            let tx = tx.clone();
            let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
            fleet.stop.push(stop_tx);
            fleet.threads.push(std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in (t..n).step_by(threads) {
                    match EtcdProcess::start() {
                        Ok(etcd) => {
                            let _ = tx.send(Ok((i, etcd.endpoint())));
                            mine.push(etcd);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            break;
                        }
                    }
                }
                // Keep them running until the fleet is dropped (or its sender is gone).
                let _ = stop_rx.recv();
                drop(mine);
            }));
        }
        drop(tx);
        for done in 1..=n {
            let (i, endpoint) = rx.recv().map_err(|_| TestSupportError::Io {
                what: "start an etcd of the fleet".into(),
                source: std::io::Error::other("a starting thread ended early"),
            })??;
            fleet.endpoints[i] = endpoint;
            progress(done);
        }
        Ok(fleet)
    }

    /// The client URLs, in start order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }
}

impl Drop for EtcdFleet {
    fn drop(&mut self) {
        self.stop.clear(); // wakes every thread, which drops (kills) its etcds
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_restarts_and_cleans_up() {
        let mut etcd = EtcdProcess::start().unwrap();
        etcd.etcdctl(&["put", "k", "v"]).unwrap();
        let dir = etcd.dir.path().to_path_buf();
        let pid = etcd.pid().unwrap();
        etcd.restart().unwrap();
        assert_ne!(etcd.pid().unwrap(), pid);
        assert!(
            etcd.etcdctl(&["get", "k"]).unwrap().contains('v'),
            "data kept across restart"
        );
        drop(etcd);
        assert!(!dir.exists(), "temp dir removed");
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_panicking_test_leaves_no_etcd_behind() {
        let (tx, rx) = std::sync::mpsc::channel();
        let outcome = std::thread::spawn(move || {
            let etcd = EtcdProcess::start().unwrap();
            tx.send((etcd.pid().unwrap(), etcd.dir.path().to_path_buf()))
                .unwrap();
            panic!("a failing test");
        })
        .join();
        assert!(outcome.is_err());
        let (pid, dir) = rx.recv().unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd {pid} still runs"
        );
        assert!(!dir.exists(), "temp dir removed");
    }

    #[test]
    fn tls_mode_requires_a_client_certificate() {
        let etcd = EtcdProcess::start_tls().unwrap();
        assert!(etcd.endpoint().starts_with("https://127.0.0.1:"));
        etcd.etcdctl(&["put", "k", "v"]).unwrap();
        // Without a client certificate the handshake fails.
        let out = Command::new("etcdctl")
            .args([
                &format!("--endpoints={}", etcd.endpoint()),
                &format!("--cacert={}", etcd.ca_file().unwrap().display()),
                "--dial-timeout=1s",
                "--command-timeout=2s",
                "get",
                "k",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}
