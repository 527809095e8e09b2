//! [`Sandbox`]: a podman with its own storage, run directory, locks and configuration in one
//! directory, for tests and labs that must not share the host's podman state.
//!
//! podman is pointed at two files written into the directory, through `CONTAINERS_CONF` and
//! `CONTAINERS_STORAGE_CONF`: a `storage.conf` with the graph root and run root inside the
//! directory (driver `vfs`, so no overlay mounts), and a `containers.conf` with what podman
//! needs on this machine (runc, cgroupfs, lowered default ulimits, the CNI network backend;
//! see docs/podman.md) and its own temporary directory and file locks (the default shared
//! memory locks are one set per host, shared by every podman state). Commands may be run
//! inside a network namespace (`nsenter --net=<path>`, which keeps the host's /sys and
//! cgroup mounts, unlike `ip netns exec`).
//!
//! Dropping the sandbox removes its containers and pods, unmounts what is left under the
//! directory and deletes it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A failure running podman in a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Writing the sandbox's files failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// podman could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// podman failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// What a sandbox's `containers.conf` says beyond its fixed settings.
#[derive(Clone, Debug, Default)]
pub struct SandboxOptions {
    /// `[network] network_config_dir`: where podman finds CNI networks (default: `<dir>/cni`).
    pub network_config_dir: Option<PathBuf>,
    /// `[network] cni_plugin_dirs`: where podman finds CNI plugins (default: podman's).
    pub cni_plugin_dirs: Vec<PathBuf>,
    /// The network namespace podman runs in (`nsenter --net=<path>`); default: the caller's.
    pub netns: Option<PathBuf>,
}

/// The directories one podman state keeps for itself, as its `containers.conf` names them.
#[derive(Clone, Copy, Debug)]
pub struct ConfDirs<'a> {
    /// `[engine] tmp_dir`: its run-time files, and its file locks under `locks/`.
    pub tmp_dir: &'a Path,
    /// `[engine] static_dir`: the libpod database (`bolt_state.db`) lives here.
    pub static_dir: &'a Path,
    /// `[engine] volume_path`.
    pub volume_path: &'a Path,
    /// `[network] network_config_dir`: its CNI networks.
    pub network_config_dir: &'a Path,
    /// `[network] cni_plugin_dirs` (empty: podman's defaults).
    pub cni_plugin_dirs: &'a [PathBuf],
    /// `[engine] events_logfile_path` (default: podman's, under its tmp dir).
    pub events_logfile: Option<&'a Path>,
}

/// A `containers.conf` for a podman state of its own on this machine (docs/podman.md):
/// - `network_backend = "cni"`: Plexus is a CNI plugin (Debian's podman picks netavark when it
///   is installed);
/// - `runtime = "runc"`: crun refuses the hybrid cgroup layout;
/// - `cgroup_manager = "cgroupfs"`, `events_logger = "file"`: no systemd to talk to;
/// - `default_ulimits`: raising a limit fails without CAP_SYS_RESOURCE, so containers get
///   lowered ones;
/// - `lock_type = "file"`: podman's default shared-memory locks are one set per machine, shared
///   by every podman state on it, so two states would hand out the same lock numbers (and a
///   `system reset` of one would reset the other's); file locks live in the state's `tmp_dir`;
/// - the directories of `dirs`.
pub fn containers_conf(dirs: &ConfDirs<'_>) -> String {
    let mut conf = format!(
        "[containers]\n\
         default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
         [engine]\n\
         runtime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n\
         lock_type = \"file\"\n\
         tmp_dir = {}\n\
         static_dir = {}\n\
         volume_path = {}\n",
        toml_str(dirs.tmp_dir),
        toml_str(dirs.static_dir),
        toml_str(dirs.volume_path),
    );
    if let Some(log) = dirs.events_logfile {
        conf.push_str(&format!("events_logfile_path = {}\n", toml_str(log)));
    }
    conf.push_str(&format!(
        "[network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = {}\n",
        toml_str(dirs.network_config_dir)
    ));
    if !dirs.cni_plugin_dirs.is_empty() {
        let plugin_dirs = dirs
            .cni_plugin_dirs
            .iter()
            .map(|p| toml_str(p))
            .collect::<Vec<_>>()
            .join(", ");
        conf.push_str(&format!("cni_plugin_dirs = [{plugin_dirs}]\n"));
    }
    conf
}

/// A podman with all its state under one directory.
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    netns: Option<PathBuf>,
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

impl Sandbox {
    /// Writes the sandbox's configuration into `dir` (created if needed; removed on drop).
    pub fn new(dir: &Path, options: SandboxOptions) -> Result<Self, SandboxError> {
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, text).map_err(|source| SandboxError::Write { path, source })
        };
        let mkdir = |path: &Path| {
            std::fs::create_dir_all(path).map_err(|source| SandboxError::Write {
                path: path.to_path_buf(),
                source,
            })
        };
        mkdir(dir)?;
        let cni_dir = options
            .network_config_dir
            .clone()
            .unwrap_or_else(|| dir.join("cni"));
        mkdir(&cni_dir)?;
        write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
                toml_str(&dir.join("graph")),
                toml_str(&dir.join("run")),
            ),
        )?;
        let conf = containers_conf(&ConfDirs {
            tmp_dir: &dir.join("tmp"),
            static_dir: &dir.join("graph/libpod"),
            volume_path: &dir.join("graph/volumes"),
            network_config_dir: &cni_dir,
            cni_plugin_dirs: &options.cni_plugin_dirs,
            events_logfile: None,
        });
        write(dir.join("containers.conf"), conf)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            netns: options.netns,
        })
    }

    /// The sandbox's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// podman's state file in this sandbox, as [`crate::PodmanState::open`] takes it.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("graph/libpod/bolt_state.db")
    }

    /// The `containers.conf` podman reads (`CONTAINERS_CONF`).
    pub fn containers_conf(&self) -> PathBuf {
        self.dir.join("containers.conf")
    }

    /// A `podman` command with the sandbox's environment (entered into its network namespace).
    pub fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("podman");
                c
            }
            None => Command::new("podman"),
        };
        cmd.env("CONTAINERS_CONF", self.containers_conf())
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        cmd
    }

    /// Runs `podman ARGS...`; its stdout, trimmed, or an error with its stderr.
    pub fn podman<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String, SandboxError> {
        let out = self.output(args)?;
        let command = command_line(args);
        if !out.status.success() {
            return Err(SandboxError::Failed {
                command,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `podman ARGS...` and returns what it did, failed or not.
    pub fn output<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output, SandboxError> {
        self.command()
            .args(args)
            .output()
            .map_err(|source| SandboxError::Spawn {
                command: command_line(args),
                source,
            })
    }

    /// Builds a busybox image (`/bin/busybox` of the host, a static binary, with applet links)
    /// named `name`, by `podman import` of a rootfs tarball; `cmd` is its default command.
    pub fn import_busybox(&self, name: &str, cmd: &[&str]) -> Result<(), SandboxError> {
        let rootfs = self.dir.join("busybox-rootfs");
        let bin = rootfs.join("bin");
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::Write { path, source }
        };
        std::fs::create_dir_all(&bin).map_err(werr(&bin))?;
        for d in ["tmp", "etc", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d)).map_err(werr(&rootfs.join(d)))?;
        }
        let busybox = bin.join("busybox");
        std::fs::copy("/bin/busybox", &busybox).map_err(werr(&busybox))?;
        for applet in [
            "sh", "sleep", "nc", "wget", "httpd", "ip", "cat", "echo", "hostname", "ls", "true",
        ] {
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", &link).map_err(werr(&link))?;
            }
        }
        let tar = self.dir.join("busybox-rootfs.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .map_err(|source| SandboxError::Spawn {
                command: "tar".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(SandboxError::Failed {
                command: format!("tar -C {} -cf {} .", rootfs.display(), tar.display()),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let mut args = vec!["import".to_string()];
        if !cmd.is_empty() {
            let json = serde_json::to_string(cmd).unwrap_or_default();
            args.push("--change".into());
            args.push(format!("CMD {json}"));
        }
        args.push(tar.display().to_string());
        args.push(name.to_string());
        self.podman(&args).map(|_| ())
    }
}

fn command_line<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let mut line = "podman".to_string();
    for a in args {
        line.push(' ');
        line.push_str(&a.as_ref().to_string_lossy());
    }
    line
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Best effort: each step runs even when an earlier one fails.
        let _ = self.output(&["pod", "rm", "--all", "--force", "--time", "0"]);
        let _ = self.output(&["rm", "--all", "--force", "--time", "0"]);
        // Whatever podman left mounted under the directory (a container's /dev/shm, ...).
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| Path::new(p).starts_with(&self.dir))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
