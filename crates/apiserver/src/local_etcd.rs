//! The cluster's own etcd, started and supervised by the apiserver.
//!
//! Like the etcd container beside Cilium's clustermesh-apiserver, [`LocalEtcd`] runs one etcd
//! member with its own data directory, TLS on the client port and `--client-cert-auth` (a client
//! certificate's CN is its etcd user). It promises:
//! - [`LocalEtcd::start`] returns once the client port accepts connections;
//! - a member that exits is started again (after 1 s, doubling to 30 s), with a log line;
//! - a renewed server certificate is presented without a restart: etcd reads its certificate
//!   and key at every new client connection, so established ones stay;
//! - a changed CA file (a new CA installed by `plexus clustermesh enable`, or a trust bundle
//!   during a CA rotation) restarts the member, as etcd loads the CAs it trusts only at start;
//! - the member dies with the apiserver: it is stopped when [`LocalEtcd`] is dropped, and it
//!   gets a parent-death signal should the apiserver be killed outright.

// `pre_exec` with `prctl(PR_SET_PDEATHSIG)` needs unsafe: the only way to make sure no etcd
// outlives an apiserver that was killed without running its destructors.
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How to run the member.
#[derive(Clone, Debug)]
pub struct LocalEtcdConfig {
    /// The etcd binary.
    pub bin: PathBuf,
    /// Member name.
    pub name: String,
    /// Data directory (created if missing).
    pub data_dir: PathBuf,
    /// Address the client port listens on, e.g. `127.0.0.1:2379` or `0.0.0.0:2379`.
    pub client_listen: String,
    /// The client URL advertised, e.g. `https://10.0.0.1:2379`.
    pub client_advertise: String,
    /// Peer port address, e.g. `127.0.0.1:2380` (peers speak plain HTTP on it).
    pub peer_listen: String,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// CA that client certificates must chain to.
    pub trusted_ca: PathBuf,
    /// Where etcd's output goes.
    pub log_file: PathBuf,
}

/// Why the member could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    /// A file or the process could not be handled.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The member did not open its client port in time.
    #[error("etcd did not start listening on {addr} within {waited:?}; see {log}")]
    NotReady {
        /// The client address.
        addr: String,
        /// How long we waited.
        waited: Duration,
        /// The log file.
        log: String,
    },
}

/// A running, supervised etcd member. Dropping it stops the member.
pub struct LocalEtcd {
    task: JoinHandle<()>,
    restarts: watch::Receiver<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalEtcdError {
    let what = what.into();
    move |source| LocalEtcdError::Io { what, source }
}

/// What makes the member restart: the CAs it trusts (the server certificate is read again at
/// every connection).
fn cert_hash(config: &LocalEtcdConfig) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(&config.trusted_ca).ok().hash(&mut h);
    h.finish()
}

fn spawn(config: &LocalEtcdConfig) -> Result<Child, LocalEtcdError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("create {}", config.data_dir.display())))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.log_file)
        .map_err(io(format!("open {}", config.log_file.display())))?;
    let log_err = log
        .try_clone()
        .map_err(io(format!("open {}", config.log_file.display())))?;
    let peer = format!("http://{}", config.peer_listen);
    let mut cmd = Command::new(&config.bin);
    cmd.arg(format!("--name={}", config.name))
        .arg(format!("--data-dir={}", config.data_dir.display()))
        .arg(format!(
            "--listen-client-urls=https://{}",
            config.client_listen
        ))
        .arg(format!(
            "--advertise-client-urls={}",
            config.client_advertise
        ))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={}={peer}", config.name))
        .arg("--initial-cluster-state=new")
        .arg(format!("--cert-file={}", config.server_cert.display()))
        .arg(format!("--key-file={}", config.server_key.display()))
        .arg(format!("--trusted-ca-file={}", config.trusted_ca.display()))
        .arg("--client-cert-auth")
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(key);
        }
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
    cmd.spawn()
        .map_err(io(format!("start {}", config.bin.display())))
}

async fn wait_listening(config: &LocalEtcdConfig, limit: Duration) -> bool {
    let addr = config
        .client_listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

impl LocalEtcd {
    /// Starts the member and waits (up to 30 s) until its client port accepts connections.
    pub async fn start(config: LocalEtcdConfig) -> Result<Self, LocalEtcdError> {
        let child = spawn(&config)?;
        if !wait_listening(&config, Duration::from_secs(30)).await {
            return Err(LocalEtcdError::NotReady {
                addr: config.client_listen.clone(),
                waited: Duration::from_secs(30),
                log: config.log_file.display().to_string(),
            });
        }
        let (restarts_tx, restarts) = watch::channel(0);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(supervise(config, child, restarts_tx, stop_rx));
        Ok(Self {
            task,
            restarts,
            stop: Some(stop_tx),
        })
    }

    /// How many times the member was started again.
    pub fn restarts(&self) -> u64 {
        *self.restarts.borrow()
    }

    /// Stops the member gracefully (SIGTERM, SIGKILL after 5 s).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        // The task owns the child with kill_on_drop: aborting it kills the member.
        self.task.abort();
    }
}

async fn supervise(
    config: LocalEtcdConfig,
    child: Child,
    restarts: watch::Sender<u64>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut child = Some(child);
    let mut backoff = Duration::from_secs(1);
    let mut certs = cert_hash(&config);
    let mut check = tokio::time::interval(Duration::from_secs(2));
    loop {
        // A member that could not be started is retried after the backoff.
        let exited = async {
            match child.as_mut() {
                Some(c) => Some(c.wait().await),
                None => {
                    tokio::time::sleep(backoff).await;
                    None
                }
            }
        };
        tokio::select! {
            _ = &mut stop => {
                if let Some(mut c) = child.take() {
                    stop_child(&mut c);
                    if tokio::time::timeout(Duration::from_secs(5), c.wait()).await.is_err() {
                        let _ = c.kill().await;
                    }
                }
                return;
            }
            status = exited => {
                if let Some(status) = status {
                    tracing::warn!(?status, log = %config.log_file.display(), "etcd exited; starting it again in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            _ = check.tick() => {
                let now = cert_hash(&config);
                if now == certs {
                    continue;
                }
                certs = now;
                tracing::info!("the CA file changed; restarting etcd to trust it");
                if let Some(mut c) = child.take() {
                    stop_child(&mut c);
                    if tokio::time::timeout(Duration::from_secs(5), c.wait()).await.is_err() {
                        let _ = c.kill().await;
                    }
                }
            }
        }
        child = match spawn(&config) {
            Ok(new) => {
                if wait_listening(&config, Duration::from_secs(30)).await {
                    backoff = Duration::from_secs(1);
                }
                restarts.send_modify(|n| *n += 1);
                Some(new)
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot start etcd");
                None
            }
        };
    }
}
