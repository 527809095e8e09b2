//! The host operations the lab is made of: network namespaces, links, processes in a
//! namespace, mounts, and running code inside a namespace. Every failure names the command,
//! namespace or device. (The lab talks to its daemons through `plexus-agent-api`'s client.)

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs `ip <args>`.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The path of a named network namespace.
pub fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Whether a named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new(&netns_path(name)).exists()
}

/// Creates a named network namespace with its loopback up (idempotent).
pub fn netns_add(name: &str) -> Result<()> {
    if !netns_exists(name) {
        ip(&["netns", "add", name])?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Deletes a named network namespace; a missing one is fine.
pub fn netns_del(name: &str) {
    if netns_exists(name) {
        let _ = ip(&["netns", "del", name]);
    }
}

/// Every named network namespace starting with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `bin args` inside network namespace `ns`, detached (own process group), output
/// appended to `log`. Returns its pid.
pub fn spawn_in(ns: &str, bin: &Path, args: &[String], log: &Path) -> Result<u32> {
    spawn_in_pod(ns, None, bin, args, log)
}

/// A command that runs its program inside network namespace `ns` (append the program and its
/// arguments). With `resolv_conf`, the program also runs in a private mount namespace where
/// that file is bind-mounted over `/etc/resolv.conf`, as a container's would be: the mount
/// namespace, and so the mount, ends with the process. Neither `unshare`, `nsenter` nor the
/// shell forks, so the pid of the spawned command is the program's.
pub fn pod_command(ns: &str, resolv_conf: Option<&Path>) -> Command {
    match resolv_conf {
        None => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", netns_path(ns))).arg("--");
            cmd
        }
        Some(file) => {
            let mut cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "nsenter"])
                .arg(format!("--net={}", netns_path(ns)))
                .args([
                    "--",
                    "sh",
                    "-c",
                    r#"mount --bind "$1" /etc/resolv.conf && shift && exec "$@""#,
                    "plexus-pod",
                ])
                .arg(file);
            cmd
        }
    }
}

/// Starts `bin args` as a pod's process: in network namespace `ns`, with `resolv_conf` over
/// `/etc/resolv.conf` (see [`pod_command`]), detached (own process group), output appended to
/// `log`. Returns its pid.
pub fn spawn_in_pod(
    ns: &str,
    resolv_conf: Option<&Path>,
    bin: &Path,
    args: &[String],
    log: &Path,
) -> Result<u32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone()?;
    let child = pod_command(ns, resolv_conf)
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {} in {ns}", bin.display()))?;
    Ok(child.id())
}

/// Whether process `pid` is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Reaps `pid` if it is our child (so it does not linger as a zombie).
fn reap(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

/// Stops `pid`: SIGTERM, then SIGKILL after `grace`.
pub fn stop(pid: u32, grace: Duration) {
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap(pid);
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(pid);
}

/// Kills `pid` at once, as a crash would.
pub fn kill(pid: u32) {
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..100 {
        reap(pid);
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command name of process `pid` (`/proc/<pid>/comm`).
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The live children of process `pid` (from `/proc/*/stat`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
                // After the command's closing parenthesis: state, then the parent's pid.
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .filter(|&child| alive(child))
        .collect()
}

/// Runs `f` on a new thread that enters network namespace `ns` first, without waiting for
/// it: its result, or the failure to enter the namespace, is the thread's.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter {path}"))?;
        f()
    })
}

/// Runs `f` on a thread that entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = netns_path(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter {path}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// Unmounts `path` if something is mounted there.
pub fn unmount(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}

/// Waits until `f` holds, up to `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what}: not within {limit:?}")
}
