//! What the walkthrough tests share: a lab driven through the `plexus` binary, torn down on
//! drop (also when the test fails), a runner that bounds a walkthrough in time and removes its
//! lab if it hangs, and polling with a deadline.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use plexus_test_support::workspace_bin;
use serde_json::Value;

/// A lab in `dir` with its contexts in `config`.
pub struct Lab {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Set once `lab down` ran (the drop then has nothing to do).
    pub down: bool,
}

/// `plexus ARGS` against a lab's directory and contexts.
pub fn plexus_command(dir: &PathBuf, config: &PathBuf, args: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("plexus"));
    cmd.env("PLEXUS_LAB_DIR", dir)
        .env("PLEXUS_CONFIG", config)
        .args(args);
    cmd
}

impl Lab {
    pub fn new(dir: PathBuf, config: PathBuf) -> Self {
        Self {
            dir,
            config,
            down: false,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        plexus_command(&self.dir, &self.config, args)
    }

    pub fn plexus(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and asserts success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.plexus(args);
        assert!(
            out.status.success(),
            "plexus {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// A shell script run in a pod (with the pod's resolv.conf); its stdout.
    pub fn sh(&self, ctx: &str, ns: &str, pod: &str, script: &str) -> String {
        let out = self.plexus(&[
            "--context",
            ctx,
            "exec",
            "-n",
            ns,
            pod,
            "--",
            "sh",
            "-c",
            script,
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The pods of a namespace, as `get pods -o json` lists them.
    pub fn pods(&self, ctx: &str, ns: &str) -> Vec<Value> {
        self.json(&["--context", ctx, "get", "pods", "-n", ns, "-o", "json"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// The first pod of `default` whose name starts with `prefix`.
    pub fn pod(&self, ctx: &str, prefix: &str) -> Value {
        self.pods(ctx, "default")
            .into_iter()
            .find(|p| p["name"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no pod {prefix}* in {ctx}"))
    }

    /// `monitor --type drop` on `node` of `ctx`, running until [`Monitor::finish`].
    pub fn spawn_monitor(&self, ctx: &str, node: &str) -> Monitor {
        let out = self
            .dir
            .parent()
            .unwrap()
            .join(format!("monitor-{ctx}-{node}.txt"));
        let child = self
            .command(&[
                "--context",
                ctx,
                "--node",
                node,
                "monitor",
                "--type",
                "drop",
            ])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        Monitor { child, out }
    }

    pub fn down(&mut self) {
        self.down = true;
        self.ok(&["lab", "down"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.plexus(&["lab", "down"]);
        }
    }
}

/// A running `monitor`.
pub struct Monitor {
    child: std::process::Child,
    out: PathBuf,
}

impl Monitor {
    /// Stops it; what it printed.
    pub fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.out).unwrap()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it holds or `limit` passes (then fails with its last error); the time it took.
pub fn eventually(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return start.elapsed(),
            Err(e) if start.elapsed() > limit => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Runs `walkthrough` with a fresh lab directory and contexts file, within `limit`; if it hangs,
/// removes its lab from here and fails.
pub fn run_walkthrough(limit: Duration, walkthrough: fn(Lab)) {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, config) = (tmp.path().join("lab"), tmp.path().join("config.yaml"));
    let (tx, rx) = std::sync::mpsc::channel();
    let lab = Lab::new(dir.clone(), config.clone());
    let runner = std::thread::spawn(move || {
        walkthrough(lab);
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(runner.join().unwrap_err())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = plexus_command(&dir, &config, &["lab", "down"]).output();
            panic!("the walkthrough did not finish within {limit:?}");
        }
    }
}
