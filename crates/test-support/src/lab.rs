//! A whole lab for tests, driven through the `plexus` binary as a user would drive it.
//!
//! This is the one harness of the lab tests (the CLI's end-to-end and walkthrough tests, the
//! cluster DNS test): the tests keep their assertions, the scaffolding lives here.
//!
//! It promises:
//! - Every [`Lab`] has its own name (the test's base name, the process id and a counter, so
//!   also two runs of the same test at once differ) and its own temporary directory, holding
//!   the lab directory (`PLEXUS_LAB_DIR`), the contexts file (`PLEXUS_CONFIG`) and the files a
//!   test writes. `plexus lab down` removes the namespaces of its lab's name only, so one run
//!   never tears down another's lab.
//! - Teardown also on failure: dropping a [`Lab`] (also while a test panics) runs
//!   `plexus lab down`; [`run_lab`] bounds a test in time and, if it hangs, takes its lab down
//!   from outside and fails.
//! - [`eventually`] polls with a deadline and fails with the last reason; no timed assertions.
//!
//! The lab needs root (network namespaces, eBPF) and the workspace's binaries
//! (`cargo build --workspace --bins`, see [`crate::workspace_bin`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::workspace_bin;

/// The `plexus` binary pointed at one lab's directory and contexts; cheap to clone, so a test
/// can run commands from other threads while it holds the [`Lab`].
#[derive(Clone, Debug)]
pub struct LabCli {
    dir: PathBuf,
    config: PathBuf,
}

impl LabCli {
    /// `plexus ARGS` against this lab, to be run (or spawned) by the caller.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(workspace_bin("plexus"));
        cmd.env("PLEXUS_LAB_DIR", &self.dir)
            .env("PLEXUS_CONFIG", &self.config)
            .args(args);
        cmd
    }

    /// Runs `plexus ARGS` to the end; whatever it returned.
    pub fn plexus(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("run plexus {args:?}: {e}"))
    }

    /// Runs `plexus ARGS`, fails the test (with its output) unless it succeeds; its stdout.
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

    /// [`LabCli::ok`] parsed as JSON (for `-o json`).
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("plexus {args:?} did not print JSON ({e}):\n{out}"))
    }
}

/// One lab of one test, taken down on drop. It starts empty: the test brings it up
/// ([`Lab::up`]) and may take it down itself ([`Lab::down`]) to check what is left.
pub struct Lab {
    name: String,
    cli: LabCli,
    /// Set once `lab down` ran (the drop then has nothing to do).
    down: bool,
    // Dropped after `Drop::drop` ran `lab down`: the lab's files live in it.
    scratch: tempfile::TempDir,
}

impl Lab {
    /// A fresh lab named after `base` (a few lower-case letters and digits, ending in a
    /// letter): its name is unique among the labs of this host, its directory is new.
    pub fn new(base: &str) -> Self {
        // Ending in a letter keeps the base apart from the pid after it.
        assert!(
            base.ends_with(|c: char| c.is_ascii_lowercase())
                && base
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "lab base name {base:?}: lower-case letters and digits, ending in a letter"
        );
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // The pid tells concurrent test processes apart, the counter the labs of one process.
        let name = format!(
            "{base}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let scratch = tempfile::Builder::new()
            .prefix(&format!("plexus-lab-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("create the directory of lab {name}: {e}"));
        let cli = LabCli {
            dir: scratch.path().join("lab"),
            config: scratch.path().join("config.yaml"),
        };
        Self {
            name,
            cli,
            down: false,
            scratch,
        }
    }

    /// The lab's name: `plexus lab up --name`, the prefix `plx-NAME-` of its namespaces.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lab directory (`PLEXUS_LAB_DIR`): `lab up` creates it, `lab down` removes it.
    pub fn dir(&self) -> &Path {
        &self.cli.dir
    }

    /// The contexts file (`PLEXUS_CONFIG`).
    pub fn config(&self) -> &Path {
        &self.cli.config
    }

    /// A directory for the test's own files, beside the lab directory and removed after it.
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// Writes `yaml` to `file` in [`Lab::scratch`] and applies it with `plexus --context CTX
    /// apply -f` (which must succeed); the file's path, for a later `delete -f`.
    pub fn apply(&self, ctx: &str, file: &str, yaml: &str) -> PathBuf {
        let path = self.write(file, yaml);
        let arg = path.to_str().expect("scratch paths are UTF-8");
        self.ok(&["--context", ctx, "apply", "-f", arg]);
        path
    }

    /// Writes `contents` to `file` in [`Lab::scratch`]; its path.
    pub fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.scratch().join(file);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// The CLI of this lab, to use from another thread.
    pub fn cli(&self) -> LabCli {
        self.cli.clone()
    }

    /// `plexus ARGS` against this lab (see [`LabCli::command`]).
    pub fn command(&self, args: &[&str]) -> Command {
        self.cli.command(args)
    }

    /// See [`LabCli::plexus`].
    pub fn plexus(&self, args: &[&str]) -> Output {
        self.cli.plexus(args)
    }

    /// See [`LabCli::ok`].
    pub fn ok(&self, args: &[&str]) -> String {
        self.cli.ok(args)
    }

    /// See [`LabCli::json`].
    pub fn json(&self, args: &[&str]) -> Value {
        self.cli.json(args)
    }

    /// `plexus lab up -f FILE --name NAME EXTRA...` (e.g. `--mesh`), asserted to succeed; its
    /// stdout. The name is always this lab's own.
    pub fn up(&self, file: impl AsRef<Path>, extra: &[&str]) -> String {
        let file = file.as_ref().to_str().expect("lab file paths are UTF-8");
        let mut args = vec!["lab", "up", "-f", file, "--name", &self.name];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// `plexus lab down`, asserted to succeed; its stdout. The drop then has nothing to do.
    pub fn down(&mut self) -> String {
        self.down = true;
        self.ok(&["lab", "down"])
    }

    /// The host's network namespaces of this lab (`plx-NAME-*`).
    pub fn netns(&self) -> Vec<String> {
        let prefix = format!("plx-{}-", self.name);
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The pods of namespace `ns` of cluster `ctx`, as `get pods -o json` lists them.
    pub fn pods(&self, ctx: &str, ns: &str) -> Vec<Value> {
        match self.json(&["--context", ctx, "get", "pods", "-n", ns, "-o", "json"]) {
            Value::Array(pods) => pods,
            other => panic!("get pods in {ctx}/{ns}: not a list: {other}"),
        }
    }

    /// The first pod of `default` in `ctx` whose name starts with `prefix`.
    pub fn pod(&self, ctx: &str, prefix: &str) -> Value {
        self.pods(ctx, "default")
            .into_iter()
            .find(|p| p["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .unwrap_or_else(|| panic!("no pod {prefix}* in {ctx}"))
    }

    /// The address of pod `pod` of `default` in `ctx`.
    pub fn pod_ip(&self, ctx: &str, pod: &str) -> String {
        let v = self.json(&["--context", ctx, "get", "pods", pod, "-o", "json"]);
        v[0]["ip"]
            .as_str()
            .unwrap_or_else(|| panic!("pod {pod} in {ctx} has no address: {v}"))
            .to_string()
    }

    /// `plexus --context CTX exec POD -- CMD...` to the end (the test judges the outcome).
    pub fn exec(&self, ctx: &str, pod: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["--context", ctx, "exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.plexus(&args)
    }

    /// A shell script run in a pod of `ns` (with the pod's resolv.conf); its stdout.
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

    /// `monitor --type KIND` on `node` of `ctx`, running until [`Monitor::finish`] (or drop).
    pub fn spawn_monitor(&self, ctx: &str, node: &str, kind: &str) -> Monitor {
        let out = self
            .scratch()
            .join(format!("monitor-{ctx}-{node}-{kind}.txt"));
        let file =
            std::fs::File::create(&out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
        let child = self
            .command(&["--context", ctx, "--node", node, "monitor", "--type", kind])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn plexus monitor: {e}"));
        // The monitor connects to the agent in its own process: give it time to subscribe
        // before the test makes the events it wants to see.
        std::thread::sleep(Duration::from_millis(700));
        Monitor { child, out }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Also when the test failed: nothing of the lab may stay behind. Without its directory
        // `lab up` never ran (it creates the directory first): nothing to remove, and no
        // `plexus` binary to ask, which might not even be built.
        if !self.down && self.dir().exists() {
            let _ = self.plexus(&["lab", "down"]);
        }
    }
}

/// A running `plexus monitor`, killed on drop.
pub struct Monitor {
    child: Child,
    out: PathBuf,
}

impl Monitor {
    /// Stops it; what it printed.
    pub fn finish(mut self) -> String {
        self.stop();
        std::fs::read_to_string(&self.out)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.out.display()))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
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

/// Runs `test` on a fresh [`Lab`] named after `base`, within `limit`. A failing test fails
/// here with its own panic (its lab was dropped, so taken down, while it unwound); a test that
/// hangs has its lab taken down from here, and fails.
pub fn run_lab(base: &str, limit: Duration, test: impl FnOnce(Lab) + Send + 'static) {
    let lab = Lab::new(base);
    let (name, cli) = (lab.name().to_string(), lab.cli());
    let (tx, rx) = channel();
    let runner = std::thread::spawn(move || {
        test(lab);
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => runner.join().expect("the lab test finished"),
        Err(RecvTimeoutError::Disconnected) => match runner.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the lab test ended without reporting"),
        },
        Err(RecvTimeoutError::Timeout) => {
            // The hung thread still holds the lab (and its directory): take it down from here.
            let _ = cli.plexus(&["lab", "down"]);
            panic!("the test of lab {name} did not finish within {limit:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lab_has_its_own_name_and_directory() {
        let (a, b) = (Lab::new("twin"), Lab::new("twin"));
        assert_ne!(a.name(), b.name());
        assert!(a.name().starts_with("twin") && b.name().starts_with("twin"));
        // `lab down` of one removes the namespaces `plx-NAME-*`: never the other's.
        assert!(!format!("plx-{}-", b.name()).starts_with(&format!("plx-{}-", a.name())));
        assert_ne!(a.dir(), b.dir());
        assert!(a.dir().starts_with(a.scratch()) && a.config().starts_with(a.scratch()));
        let file = a.write("lab.yaml", "clusters: []\n");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "clusters: []\n");
        // Never brought up: dropping it asks no `plexus` and removes its directory.
        let scratch = a.scratch().to_path_buf();
        drop(a);
        assert!(!scratch.exists());
    }

    #[test]
    #[should_panic(expected = "ending in a letter")]
    fn a_base_name_ending_in_a_digit_is_refused() {
        // "dns1" + pid 23 would read as "dns" + pid 123.
        let _ = Lab::new("dns1");
    }
}
