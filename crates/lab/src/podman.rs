//! Pods as podman containers: the lab's `runtime: podman` ([`crate::spec::Runtime::Podman`]).
//!
//! Every node has a podman of its own under its state directory (`<node>/podman/`):
//! - `containers.conf`: the CNI network backend, runc, cgroupfs, the file events logger, the
//!   lowered ulimits, the node's CNI directory and the directory of `plexus-cni`, and its own
//!   tmp and static directories (see [`containers_conf`] for why each is there);
//! - `storage.conf`: its own graph root and run root, so `podman ps` on one node lists only
//!   that node's containers, and the libpod database the agent reads labels from is
//!   `<graphroot>/libpod/bolt_state.db` ([`NodePodman::state_db`]);
//! - `cni/plexus.conflist`: the CNI network `plexus` pointing at the node's agent, written by
//!   `plexus host install-cni` as on a real host.
//!
//! podman always runs through [`NodePodman::command`]: those two files in its environment
//! (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`) and entered into the node's network namespace
//! with `nsenter --net` only (`ip netns exec` remounts /sys, which hides the cgroup mounts runc
//! needs). So the CNI plugin podman runs wires the container to the node, as on a real host.
//!
//! The image is built here, as no registry is reachable: a root file system with busybox
//! (static) and the `plexus` binary with the shared libraries it needs ([`build_image`]),
//! imported into every node's store as [`IMAGE`]; whatever image name a pod asks for is a tag
//! of it ([`NodePodman::ensure_image`]). A pod without a command runs `plexus lab serve`, the
//! lab's built-in server ([`crate::serve`]); with one, its command (busybox gives sh, sleep,
//! nc, wget...).
//!
//! A pod is `podman run -d --network plexus --name <pod> --label <k>=<v>...
//! --label io.kubernetes.pod.namespace=<ns>` ([`run_args`]); removing it is `podman rm -f`
//! (podman runs CNI DEL). [`teardown`] leaves nothing of a node's podman behind: no container,
//! no mount, no network namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::lab::NodeState;
use crate::sys;

/// The CNI network of every node's podman.
pub const NETWORK: &str = "plexus";
/// The lab's image in every node's store.
pub const IMAGE: &str = "localhost/plexus-lab:latest";
/// The label podman containers carry their pod's namespace in (as Kubernetes' CRI does).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Where the `plexus` binary is inside the image.
pub const PLEXUS_IN_IMAGE: &str = "/usr/local/bin/plexus";

/// A podman operation of the lab failed.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    /// podman could not be run, or it failed.
    #[error("podman {args} on node {node}: {reason}")]
    Command {
        /// The node.
        node: String,
        /// podman's arguments.
        args: String,
        /// Its error output (or why it did not run).
        reason: String,
    },
    /// A file of the node's podman or of the image could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `plexus host install-cni` failed.
    #[error("the CNI network of node {node}: {reason}")]
    InstallCni {
        /// The node.
        node: String,
        /// The command and its error output.
        reason: String,
    },
    /// Building the image failed.
    #[error("building the lab's podman image: {0}")]
    Image(String),
    /// podman's answer was not what the lab expects.
    #[error("podman inspect of container {container} on node {node}: {reason}")]
    Inspect {
        /// The node.
        node: String,
        /// The container.
        container: String,
        /// What is missing or wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, PodmanError>;

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> PodmanError + '_ {
    move |source| PodmanError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// A node's own podman: its files and how to run it.
#[derive(Clone, Debug)]
pub struct NodePodman {
    /// The node's name.
    pub node: String,
    /// The node's network namespace.
    pub netns: String,
    /// The directory of everything podman keeps for the node (`<node>/podman`).
    pub dir: PathBuf,
    /// The node's agent socket (the CNI network points at it).
    pub agent_socket: PathBuf,
}

impl NodePodman {
    /// The podman of node `n`.
    pub fn of(n: &NodeState) -> Self {
        Self {
            node: n.name.clone(),
            netns: n.netns.clone(),
            dir: n.state_dir.join("podman"),
            agent_socket: n.socket.clone(),
        }
    }

    /// Its `containers.conf`.
    pub fn containers_conf(&self) -> PathBuf {
        self.dir.join("containers.conf")
    }

    /// Its `storage.conf`.
    pub fn storage_conf(&self) -> PathBuf {
        self.dir.join("storage.conf")
    }

    /// Its graph root (images, containers' layers, the libpod database).
    pub fn graph_root(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// Its run root.
    pub fn run_root(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Its CNI network directory (`network_config_dir`).
    pub fn cni_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// The libpod database (podman's `static_dir` is `<graphroot>/libpod`, its default): what
    /// the agent's `podman-state` option names.
    pub fn state_db(&self) -> PathBuf {
        self.graph_root().join("libpod").join("bolt_state.db")
    }

    /// `podman` for this node, to add arguments to: its configuration files in the environment,
    /// entered into the node's network namespace (only that one: `nsenter --net`).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", sys::netns_path(&self.netns)))
            .args(["--", "podman"])
            .env("CONTAINERS_CONF", self.containers_conf())
            .env("CONTAINERS_STORAGE_CONF", self.storage_conf());
        cmd
    }

    /// Runs `podman ARGS` on this node; its stdout, trimmed.
    pub fn run(&self, args: &[String]) -> Result<String> {
        let err = |reason: String| PodmanError::Command {
            node: self.node.clone(),
            args: args.join(" "),
            reason,
        };
        let out = self
            .command()
            .args(args)
            .output()
            .map_err(|e| err(format!("run nsenter podman: {e}")))?;
        if !out.status.success() {
            return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn run_strs(&self, args: &[&str]) -> Result<String> {
        self.run(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    /// Writes the node's podman configuration and, with `plexus host install-cni` (`plexus`
    /// is the binary), its CNI network; imports the image (the tarball of [`build_image`]).
    /// `cni_bin_dir` is where `plexus-cni` is.
    pub fn setup(&self, plexus: &Path, image_tar: &Path, cni_bin_dir: &Path) -> Result<()> {
        for dir in [
            self.dir.clone(),
            self.cni_dir(),
            self.graph_root(),
            self.run_root(),
            self.dir.join("tmp"),
        ] {
            std::fs::create_dir_all(&dir).map_err(file_err(&dir))?;
        }
        let write = |path: PathBuf, text: String| -> Result<()> {
            std::fs::write(&path, text).map_err(file_err(&path))
        };
        write(self.containers_conf(), containers_conf(self, cni_bin_dir))?;
        write(self.storage_conf(), storage_conf(self))?;
        output(
            Command::new(plexus)
                .args(["host", "install-cni", "--name", NETWORK])
                .arg("--network-config-dir")
                .arg(self.cni_dir())
                .arg("--agent-socket")
                .arg(&self.agent_socket),
        )
        .map_err(|reason| PodmanError::InstallCni {
            node: self.node.clone(),
            reason,
        })?;
        let tar = image_tar.display().to_string();
        // Its default command is the built-in server on port 80, which takes who it is from
        // the environment, so `podman kube play` of a walkthrough's Deployments runs it too.
        let cmd = format!("CMD [\"{PLEXUS_IN_IMAGE}\", \"lab\", \"serve\", \"--port=80/tcp\"]");
        self.run_strs(&["import", "--quiet", "--change", &cmd, &tar, IMAGE])?;
        Ok(())
    }

    /// Makes `image` name the lab's image in this node's store (a tag), unless it already
    /// names an image there. An empty name is the lab's image itself.
    pub fn ensure_image(&self, image: &str) -> Result<String> {
        if image.is_empty() {
            return Ok(IMAGE.to_string());
        }
        if self.run_strs(&["image", "exists", image]).is_err() {
            self.run_strs(&["tag", IMAGE, image])?;
        }
        Ok(image.to_string())
    }

    /// Where container `name` is: its id, network namespace, address and process.
    pub fn inspect(&self, name: &str) -> Result<Container> {
        let out = self.run_strs(&["container", "inspect", name])?;
        Container::from_inspect(&self.node, name, &out)
    }

    /// `podman rm -f` of container `name` (podman runs CNI DEL); a missing one is fine.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.run_strs(&["rm", "--force", "--ignore", "--time", "0", name])
            .map(|_| ())
    }
}

/// A container as podman shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// podman's id (the CNI container id).
    pub id: String,
    /// Its network namespace, by name under `/run/netns` (podman's `SandboxKey`); empty when
    /// it is not running.
    pub netns: String,
    /// Its address on [`NETWORK`]; empty when it is not running.
    pub ip: String,
    /// Its first process on the host, when it runs.
    pub pid: Option<u32>,
    /// podman's state (`running`, `paused`, `exited`...).
    pub status: String,
}

impl Container {
    /// Reads `podman container inspect NAME` output.
    pub fn from_inspect(node: &str, name: &str, json: &str) -> Result<Self> {
        let err = |reason: String| PodmanError::Inspect {
            node: node.to_string(),
            container: name.to_string(),
            reason,
        };
        let v: Value = serde_json::from_str(json).map_err(|e| err(format!("not JSON: {e}")))?;
        let c = &v[0];
        let id = c["Id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| err("no Id".into()))?
            .to_string();
        let sandbox = c["NetworkSettings"]["SandboxKey"].as_str().unwrap_or("");
        let netns = match sandbox.strip_prefix("/run/netns/") {
            Some(name) => name.to_string(),
            None if sandbox.is_empty() => String::new(),
            None => {
                return Err(err(format!(
                    "SandboxKey {sandbox:?} is not under /run/netns"
                )));
            }
        };
        let ip = c["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let pid = c["State"]["Pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0);
        let status = c["State"]["Status"].as_str().unwrap_or("").to_string();
        Ok(Self {
            id,
            netns,
            ip,
            pid,
            status,
        })
    }
}

/// The node's `containers.conf`: the settings this machine needs and the node's own
/// directories ([`plexus_podman::sandbox::containers_conf`], see docs/lab.md).
pub fn containers_conf(p: &NodePodman, cni_bin_dir: &Path) -> String {
    let conf = plexus_podman::sandbox::containers_conf(&plexus_podman::sandbox::ConfDirs {
        tmp_dir: &p.dir.join("tmp"),
        static_dir: &p.graph_root().join("libpod"),
        volume_path: &p.graph_root().join("volumes"),
        network_config_dir: &p.cni_dir(),
        cni_plugin_dirs: &[cni_bin_dir.to_path_buf()],
        events_logfile: Some(&p.dir.join("events.log")),
    });
    format!(
        "# The podman of lab node {} (written by plexus lab up).\n{conf}",
        p.node
    )
}

/// The node's `storage.conf`: its own graph and run roots.
pub fn storage_conf(p: &NodePodman) -> String {
    format!(
        "# The container storage of lab node {node} (written by plexus lab up).
[storage]
driver = \"overlay\"
graphroot = {graph}
runroot = {run}
",
        node = p.node,
        graph = toml_string(&p.graph_root().display().to_string()),
        run = toml_string(&p.run_root().display().to_string()),
    )
}

fn toml_string(s: &str) -> String {
    // A TOML basic string is a JSON string for what paths hold.
    Value::String(s.to_string()).to_string()
}

/// What a pod's container is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRun {
    /// The pod's name (the container's name and host name).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The image (a tag of the lab's).
    pub image: String,
    /// The cluster DNS server and search list, as the lab's pods get them.
    pub dns: (String, Vec<String>),
    /// Its command and arguments: empty for the built-in server.
    pub command: Vec<String>,
    /// The built-in server's identity (node, cluster) and ports (`80/tcp`).
    pub serve: (String, String, Vec<String>),
}

/// `podman run` arguments for a pod.
pub fn run_args(p: &PodRun) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--detach".to_string(),
        "--pull=never".to_string(),
        format!("--network={NETWORK}"),
        format!("--name={}", p.name),
        format!("--hostname={}", p.name),
    ];
    for (k, v) in &p.labels {
        args.push(format!("--label={k}={v}"));
    }
    args.push(format!("--label={NAMESPACE_LABEL}={}", p.namespace));
    args.push(format!("--dns={}", p.dns.0));
    for s in &p.dns.1 {
        args.push(format!("--dns-search={s}"));
    }
    args.push("--dns-option=ndots:5".to_string());
    args.push(p.image.clone());
    if p.command.is_empty() {
        let (node, cluster, ports) = &p.serve;
        args.extend([
            PLEXUS_IN_IMAGE.to_string(),
            "lab".to_string(),
            "serve".to_string(),
            format!("--pod={}", p.name),
            format!("--namespace={}", p.namespace),
            format!("--node={node}"),
            format!("--cluster={cluster}"),
        ]);
        args.extend(ports.iter().map(|port| format!("--port={port}")));
    } else {
        args.extend(p.command.iter().cloned());
    }
    args
}

/// Builds the lab's image in `dir`: a root file system (busybox with its applets, `plexus`
/// with the libraries `ldd` lists and the loader) packed as `dir/image.tar`; its path.
pub fn build_image(dir: &Path, plexus: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    let image_err = PodmanError::Image;
    for sub in ["bin", "usr/local/bin", "etc", "tmp", "proc", "sys", "dev"] {
        let d = root.join(sub);
        std::fs::create_dir_all(&d).map_err(file_err(&d))?;
    }
    let busybox = Path::new("/bin/busybox");
    let copy = |from: &Path, to: &Path| -> Result<()> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(file_err(parent))?;
        }
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| image_err(format!("copy {} to {}: {e}", from.display(), to.display())))
    };
    copy(busybox, &root.join("bin/busybox"))?;
    let list = output(Command::new(busybox).arg("--list")).map_err(image_err)?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(file_err(&link))?;
        }
    }
    // The plexus binary without its debug information (a fraction of the size, the same
    // code), and what the loader needs to run it.
    let target = root.join(PLEXUS_IN_IMAGE.trim_start_matches('/'));
    output(Command::new("strip").arg("-o").arg(&target).arg(plexus)).map_err(image_err)?;
    for lib in ldd_paths(&output(Command::new("ldd").arg(plexus)).map_err(image_err)?) {
        copy(&lib, &root.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
    }
    for (file, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
    ] {
        let path = root.join(file);
        std::fs::write(&path, text).map_err(file_err(&path))?;
    }
    let tar = dir.join("image.tar");
    output(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    )
    .map_err(image_err)?;
    // The tarball is what the nodes import.
    let _ = std::fs::remove_dir_all(&root);
    Ok(tar)
}

/// The absolute paths `ldd` names (libraries and the loader), in its order.
pub fn ldd_paths(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Runs a tool to the end: its stdout, or what failed (the command and its error output).
fn output(cmd: &mut Command) -> std::result::Result<String, String> {
    let what = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Removes everything of node `p`'s podman: every container (podman runs CNI DEL, to the
/// agent if it still runs), the storage (`podman system reset`), and whatever is still
/// mounted below its directory. Errors are reported through `warn`: `lab down` goes on.
pub fn teardown(p: &NodePodman, warn: &mut dyn FnMut(String)) {
    if !p.containers_conf().exists() {
        return;
    }
    if let Err(e) = p.run_strs(&["rm", "--all", "--force", "--time", "0"]) {
        warn(e.to_string());
    }
    if let Err(e) = p.run_strs(&["system", "reset", "--force"]) {
        warn(e.to_string());
    }
    for mount in mounts_below(&p.dir) {
        sys::unmount(&mount);
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodePodman {
        NodePodman {
            node: "c1-node1".into(),
            netns: "plx-t-c1-n1".into(),
            dir: PathBuf::from("/lab/c1/c1-node1/podman"),
            agent_socket: PathBuf::from("/lab/c1/c1-node1/agent.sock"),
        }
    }

    #[test]
    fn a_node_has_its_own_configuration_and_storage() {
        let p = node();
        let conf = containers_conf(&p, Path::new("/target/debug"));
        for line in [
            "network_backend = \"cni\"",
            "runtime = \"runc\"",
            "cgroup_manager = \"cgroupfs\"",
            "events_logger = \"file\"",
            "lock_type = \"file\"",
            "default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]",
            "network_config_dir = \"/lab/c1/c1-node1/podman/cni\"",
            "cni_plugin_dirs = [\"/target/debug\"]",
            "tmp_dir = \"/lab/c1/c1-node1/podman/tmp\"",
            "static_dir = \"/lab/c1/c1-node1/podman/storage/libpod\"",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} in:\n{conf}");
        }
        let storage = storage_conf(&p);
        assert!(storage.contains("graphroot = \"/lab/c1/c1-node1/podman/storage\""));
        assert!(storage.contains("runroot = \"/lab/c1/c1-node1/podman/run\""));
        // The database the agent reads is where podman keeps it with this static_dir.
        assert_eq!(
            p.state_db(),
            Path::new("/lab/c1/c1-node1/podman/storage/libpod/bolt_state.db")
        );
        let cmd = p.command();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(cmd.get_program(), "nsenter");
        assert_eq!(args, ["--net=/run/netns/plx-t-c1-n1", "--", "podman"]);
        let env: BTreeMap<_, _> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy(), v.map(|v| v.to_string_lossy())))
            .collect();
        assert_eq!(
            env["CONTAINERS_CONF"].as_deref(),
            Some("/lab/c1/c1-node1/podman/containers.conf")
        );
        assert_eq!(
            env["CONTAINERS_STORAGE_CONF"].as_deref(),
            Some("/lab/c1/c1-node1/podman/storage.conf")
        );
    }

    #[test]
    fn a_pod_runs_its_command_or_the_built_in_server_with_its_labels() {
        let mut p = PodRun {
            name: "rebel-base-1a2b3".into(),
            namespace: "default".into(),
            labels: [("name".to_string(), "rebel-base".to_string())].into(),
            image: "docker.io/nginx:1.15.8".into(),
            dns: (
                "10.11.0.10".into(),
                vec!["default.svc.cluster.local".into(), "cluster.local".into()],
            ),
            command: vec![],
            serve: ("c1-node1".into(), "c1".into(), vec!["80/tcp".into()]),
        };
        let args = run_args(&p);
        let image = args
            .iter()
            .position(|a| a == "docker.io/nginx:1.15.8")
            .unwrap();
        let (opts, cmd) = args.split_at(image + 1);
        for opt in [
            "--network=plexus",
            "--name=rebel-base-1a2b3",
            "--label=name=rebel-base",
            "--label=io.kubernetes.pod.namespace=default",
            "--dns=10.11.0.10",
            "--dns-search=default.svc.cluster.local",
            "--dns-option=ndots:5",
            "--pull=never",
        ] {
            assert!(opts.contains(&opt.to_string()), "{opt} in {opts:?}");
        }
        assert_eq!(
            cmd,
            [
                "/usr/local/bin/plexus",
                "lab",
                "serve",
                "--pod=rebel-base-1a2b3",
                "--namespace=default",
                "--node=c1-node1",
                "--cluster=c1",
                "--port=80/tcp"
            ]
        );
        p.command = vec!["sleep".into(), "100d".into()];
        assert!(run_args(&p).ends_with(&[
            "docker.io/nginx:1.15.8".into(),
            "sleep".into(),
            "100d".into()
        ]));
    }

    #[test]
    fn inspect_output_gives_the_namespace_address_and_process() {
        let json = r#"[{"Id":"7cf92ea0d854","State":{"Status":"running","Pid":12329},
            "NetworkSettings":{"SandboxKey":"/run/netns/netns-3cda71ae",
            "Networks":{"plexus":{"IPAddress":"10.10.0.7"}}}}]"#;
        let c = Container::from_inspect("n1", "web", json).unwrap();
        assert_eq!(
            c,
            Container {
                id: "7cf92ea0d854".into(),
                netns: "netns-3cda71ae".into(),
                ip: "10.10.0.7".into(),
                pid: Some(12329),
                status: "running".into(),
            }
        );
        let stopped = r#"[{"Id":"7cf9","State":{"Status":"exited","Pid":0},"NetworkSettings":{"SandboxKey":""}}]"#;
        let c = Container::from_inspect("n1", "web", stopped).unwrap();
        assert_eq!((c.netns.as_str(), c.pid), ("", None));
        let err = Container::from_inspect("n1", "web", "[{}]")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "podman inspect of container web on node n1: no Id");
    }

    #[test]
    fn ldd_output_names_the_libraries_and_the_loader() {
        let ldd = "\tlinux-vdso.so.1 (0x00007f31c1146000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f31c1115000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f31bfa1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f31c1148000)
";
        assert_eq!(
            ldd_paths(ldd),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b/c"), PathBuf::from("/a b/c"));
    }
}
