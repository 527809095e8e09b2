//! The lab's WireGuard devices (`encryption: wireguard` in the lab file).
//!
//! Each node gets its own userspace WireGuard device, `plexus_wg0`, run by the lab (as
//! systemd's `plexus-wireguard.service` runs it on a host), never by the agent: started in the
//! node's namespace before its agent, left alone by agent restarts (`lab restart-agent`,
//! `lab agent-options`), so the tunnels' sessions outlive the agent; killed with the node by
//! `lab stop` and started again by `lab start`; stopped, and its link deleted, by `lab down`.
//! The agent drives it through the standard WireGuard UAPI on the socket named in its
//! `wireguard-socket` option.
//!
//! The device is `plexus-wireguard` ([`Device::Plexus`]). For the benchmark only
//! (`plexus lab up --wireguard-device wireguard-go`, hidden), it is Debian's `wireguard-go`
//! ([`Device::WireguardGo`]): that one always puts its socket at
//! `/var/run/wireguard/<interface>.sock`, so it runs in a private mount namespace where the
//! node's own directory is bind-mounted over `/run/wireguard`, and the node's agent finds the
//! socket in that directory.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::lab::{Bins, NodeState};
use crate::sys;

/// The WireGuard link of every node.
pub const INTERFACE: &str = "plexus_wg0";

/// Which program is a node's WireGuard device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Device {
    /// `plexus-wireguard`: persistent TUN, outlives the agent.
    #[default]
    Plexus,
    /// Debian's `wireguard-go`, for the benchmark's comparison.
    WireguardGo,
}

impl Device {
    /// Whether this is the default (left out of the lab's state file).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The directory bind-mounted over `/run/wireguard` for `wireguard-go`.
fn wireguard_go_run_dir(n: &NodeState) -> PathBuf {
    n.state_dir.join("wireguard-go")
}

/// The device's UAPI socket of node `n` (the agent's `wireguard-socket`).
pub fn socket(n: &NodeState, device: Device) -> PathBuf {
    match device {
        Device::Plexus => n.state_dir.join("wireguard.sock"),
        Device::WireguardGo => wireguard_go_run_dir(n).join(format!("{INTERFACE}.sock")),
    }
}

/// The device's log of node `n`.
pub fn log(n: &NodeState) -> PathBuf {
    n.state_dir.join("wireguard.log")
}

/// Whether the device on `socket` answers a UAPI `get=1` with `errno=0`.
fn answers(socket: &Path) -> bool {
    let ask = || -> std::io::Result<bool> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.set_write_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"get=1\n\n")?;
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        // The answer ends with an empty line; a device with many peers writes several chunks.
        while !text.ends_with("\n\n") {
            let got = s.read(&mut buf)?;
            if got == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..got]));
        }
        Ok(text.lines().any(|l| l == "errno=0"))
    };
    ask().unwrap_or(false)
}

/// Starts node `n`'s device in its namespace and waits until it answers on its socket; its
/// pid.
pub fn start(n: &NodeState, device: Device, bins: &Bins) -> Result<u32> {
    std::fs::create_dir_all(&n.state_dir)
        .with_context(|| format!("create {}", n.state_dir.display()))?;
    let sock = socket(n, device);
    // A socket file of a device that died would answer nothing: the new device replaces it.
    let _ = std::fs::remove_file(&sock);
    let log = log(n);
    let pid = match device {
        Device::Plexus => {
            if !bins.wireguard.exists() {
                anyhow::bail!(
                    "{} not found: build the workspace's binaries (encryption: wireguard needs it)",
                    bins.wireguard.display()
                );
            }
            let args = vec![
                "--interface".to_string(),
                INTERFACE.to_string(),
                "--socket".to_string(),
                sock.display().to_string(),
            ];
            sys::spawn_in(&n.netns, &bins.wireguard, &args, &log)?
        }
        Device::WireguardGo => {
            let run = wireguard_go_run_dir(n);
            std::fs::create_dir_all(&run).with_context(|| format!("create {}", run.display()))?;
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("open {}", log.display()))?;
            let err = out.try_clone()?;
            // Neither unshare, nsenter nor the shell forks: the pid is wireguard-go's, and the
            // private mount namespace (with the bind mount) ends with it.
            let child = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--", "nsenter"])
                .arg(format!("--net={}", sys::netns_path(&n.netns)))
                .args([
                    "--",
                    "sh",
                    "-c",
                    r#"mkdir -p /run/wireguard && mount --bind "$1" /run/wireguard && shift && exec "$@""#,
                    "plexus-wireguard-go",
                ])
                .arg(&run)
                .args(["wireguard-go", "-f", INTERFACE])
                // This kernel may have no WireGuard module; if it has one, run wireguard-go
                // anyway: the benchmark compares the userspace devices.
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .with_context(|| format!("start wireguard-go in {}", n.netns))?;
            child.id()
        }
    };
    sys::wait_until(
        &format!(
            "WireGuard device of {} answering on {} (log: {})",
            n.name,
            sock.display(),
            log.display()
        ),
        Duration::from_secs(30),
        || answers(&sock),
    )?;
    Ok(pid)
}

/// Stops node `n`'s device (SIGTERM, then SIGKILL) and deletes its link, which
/// `plexus-wireguard` keeps on purpose when it ends (a persistent TUN, so that packets into it
/// are dropped while no device runs, never sent in the clear).
pub fn stop(n: &NodeState, pid: Option<u32>) {
    if let Some(pid) = pid {
        sys::stop(pid, Duration::from_secs(5));
    }
    if sys::netns_exists(&n.netns) {
        let _ = sys::ip(&["-n", &n.netns, "link", "del", INTERFACE]);
    }
}
