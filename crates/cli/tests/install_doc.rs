//! `docs/install.md`, followed as written on four lab hosts.
//!
//! Each host of the guide (`c1-host1`, `c1-host2`, `c2-host1`, `c2-host2`) is a network
//! namespace with the guide's address on an underlay bridge of its own namespace (nothing links
//! to the machine's network), and a directory of the test that stands for its file system: the
//! guide's absolute paths (`/etc/plexus`, `/var/lib/plexus`, `/run/plexus`, `/usr/local/bin`,
//! ...) are rewritten to that directory. The guide's shell blocks run in order, each in the
//! namespace of the host(s) its fence names (```` ```sh title="c1-host1" ````; `every host`),
//! entered with `nsenter --net` only, as root, with `HOME` in the host's directory. What cannot
//! run here is stood in for by small commands first in `PATH`:
//! - `systemctl enable --now UNIT` starts the `ExecStart` line of the unit file of
//!   `deploy/systemd/` (checked to be the file the guide installed), paths rewritten, in the
//!   background in the host's namespace; `daemon-reload` and disabling Debian's own etcd do
//!   nothing (systemd does not run here);
//! - `apt-get install -y PKGS` checks that the packages are installed;
//! - `scp` copies between host directories, `ssh HOST CMD` runs CMD on HOST as a block would.
//!
//! A path after `HOST:` (scp) or in `ssh HOST ...` is rewritten for that host. Files are
//! rewritten too, before every block: a text file in a host's `/etc` that names a path of the
//! guide (`agent.yaml` from `plexus node join`, the CNI network) names it on that host, as the
//! host would read it. The build block (`cargo build --release`) is not run: the test uses the
//! binaries of its own build (`target/release/` stands for them).
//!
//! No registry is reachable here: each host's podman has the lab's image
//! ([`plexus_lab::podman::build_image`]: busybox and `plexus`) under every name the guide's
//! containers ask for (busybox, nginx, json-mock), with the host and its cluster in its
//! environment, so the guide's `rebel-base` pods answer, as the lab's do, with their pod, node
//! and cluster; nginx would answer its welcome page.
//!
//! The test fails on the first block that fails (with its output); then it checks what the
//! guide promises: both clusters connected on every node, the web container reachable from the
//! other cluster, the global service's pods (`podman kube play`) as endpoints with their labels
//! and as the service's backends, its ClusterIP answered by both clusters' pods, and a join of
//! a name already taken refused.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use plexus_lab::podman::PLEXUS_IN_IMAGE;
use plexus_test_support::lab::Lab;
use plexus_test_support::workspace_bin;
use serde_json::Value;

/// The guide's hosts and their underlay addresses.
const HOSTS: [(&str, &str); 4] = [
    ("c1-host1", "192.168.10.11"),
    ("c1-host2", "192.168.10.12"),
    ("c2-host1", "192.168.10.21"),
    ("c2-host2", "192.168.10.22"),
];

/// The guide's absolute paths that are a host's own (rewritten to the host's directory).
const HOST_PATHS: [&str; 11] = [
    "/etc/plexus",
    "/var/lib/plexus",
    "/run/plexus",
    "/usr/local/bin",
    "/usr/local/lib/cni",
    "/etc/cni/net.d",
    "/etc/containers",
    "/etc/systemd/system",
    "/var/lib/containers",
    "/run/containers",
    "/run/libpod",
];

/// The images the guide's containers ask for, as podman names them (all the lab's image here).
const IMAGES: [&str; 3] = [
    "docker.io/library/busybox:latest",
    "docker.io/library/nginx:1.15.8",
    "docker.io/cilium/json-mock:1.2",
];

/// How long one block may run (`clustermesh status --wait` waits up to 5 minutes itself).
const BLOCK_LIMIT: Duration = Duration::from_secs(360);

/// One shell block of the guide.
#[derive(Debug)]
struct Block {
    /// The hosts it runs on, or empty for the build machine.
    hosts: Vec<String>,
    code: String,
    /// Its line in the guide.
    line: usize,
    /// The heading of its section (`## 8. Containers`).
    section: String,
}

/// The `sh` blocks of `md`, in order; every one must say where it runs.
fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut lines = md.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if line.starts_with("## ") {
            section = line.to_string();
        }
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        if !info.starts_with("sh") {
            // Skip the whole fence (e.g. a table in a code block).
            for (_, l) in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
            }
            continue;
        }
        let title = info
            .split_once("title=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(t, _)| t)
            .unwrap_or_else(|| panic!("docs/install.md:{}: a sh block without title=", i + 1));
        let hosts: Vec<String> = match title {
            "build machine" => Vec::new(),
            "every host" => HOSTS.iter().map(|(h, _)| h.to_string()).collect(),
            list => list
                .split_whitespace()
                .map(|h| {
                    assert!(
                        HOSTS.iter().any(|(k, _)| *k == h),
                        "docs/install.md:{}: unknown host {h:?}",
                        i + 1
                    );
                    h.to_string()
                })
                .collect(),
        };
        let mut code = String::new();
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            code.push_str(l);
            code.push('\n');
        }
        out.push(Block {
            hosts,
            code,
            line: i + 1,
            section: section.clone(),
        });
    }
    out
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | '~')
}

/// The test's stand-in for the machines: where each host's files live, and the binaries.
struct World {
    hosts: BTreeMap<String, PathBuf>,
    bins: PathBuf,
    repo: PathBuf,
    /// The lab's image (a tarball of [`plexus_lab::podman::build_image`]), which the hosts'
    /// podman imports under the names of [`IMAGES`].
    image: PathBuf,
}

impl World {
    /// `text` as host `host` sees it: the guide's host paths in its directory (a path right
    /// after `OTHER:` in OTHER's), `target/release/` the test's binaries, `deploy/` and
    /// `examples/` the checkout's. Paths already rewritten stay as they are.
    fn rewrite(&self, text: &str, host: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while !rest.is_empty() {
            let prev = out.chars().last();
            if prev.is_none_or(|c| !is_path_char(c) || c == ':') {
                for p in HOST_PATHS {
                    if let Some(after) = rest.strip_prefix(p)
                        && after
                            .chars()
                            .next()
                            .is_none_or(|c| c == '/' || !is_path_char(c))
                    {
                        // `HOST:/path` is a path on HOST (scp).
                        let on = self
                            .hosts
                            .keys()
                            .find(|h| out.ends_with(&format!("{h}:")))
                            .map_or(host, String::as_str);
                        out.push_str(&format!("{}{p}", self.hosts[on].display()));
                        rest = after;
                        continue 'scan;
                    }
                }
                for (rel, base) in [
                    ("target/release/", self.bins.clone()),
                    ("deploy/", self.repo.join("deploy")),
                    ("examples/", self.repo.join("examples")),
                ] {
                    if let Some(after) = rest.strip_prefix(rel) {
                        out.push_str(&format!("{}/", base.display()));
                        rest = after;
                        continue 'scan;
                    }
                }
            }
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// A block's code for `host`: `ssh OTHER ...` lines are rewritten for OTHER.
    fn rewrite_block(&self, code: &str, host: &str) -> String {
        code.lines()
            .map(|l| {
                if let Some((other, cmd)) = l
                    .strip_prefix("ssh ")
                    .and_then(|r| r.split_once(' '))
                    .filter(|(h, _)| self.hosts.contains_key(*h))
                {
                    format!("ssh {other} {}\n", self.rewrite(cmd, other))
                } else {
                    format!("{}\n", self.rewrite(l, host))
                }
            })
            .collect()
    }

    /// Rewrites the text files of every host's configuration directories for their host.
    fn rewrite_files(&self) {
        for (host, root) in &self.hosts {
            for dir in ["etc/plexus", "etc/cni/net.d", "etc/containers"] {
                for file in files_under(&root.join(dir)) {
                    let Ok(text) = std::fs::read_to_string(&file) else {
                        continue;
                    };
                    if text.starts_with("-----BEGIN") {
                        continue;
                    }
                    let new = self.rewrite(&text, host);
                    if new != text {
                        std::fs::write(&file, new).unwrap();
                    }
                }
            }
        }
    }

    /// podman's configuration on each host that has the guide's containers.conf: that file,
    /// plus this machine's facts and a state of the host's own (see [`podman_additions`]).
    fn podman_files(&self) {
        for root in self.hosts.values() {
            let Ok(doc) = std::fs::read_to_string(root.join("etc/containers/containers.conf"))
            else {
                continue;
            };
            std::fs::write(
                root.join("test/containers.conf"),
                merge_toml_sections(&doc, &podman_additions(root)),
            )
            .unwrap();
            std::fs::write(
                root.join("test/storage.conf"),
                format!(
                    "[storage]\ndriver = \"vfs\"\ngraphroot = \"{r}/var/lib/containers/storage\"\nrunroot = \"{r}/run/containers/storage\"\n",
                    r = root.display()
                ),
            )
            .unwrap();
        }
    }

    fn netns(&self, lab: &str, host: &str) -> String {
        format!("plx-{lab}-{}", short(host))
    }
}

/// What the test adds to the guide's containers.conf on a host: the facts of this machine
/// (docs/podman.md: lowered ulimits, cgroupfs, events to a file; the guide's runc and CNI backend
/// are the guide's own), the host's own podman state (its storage in the host's directory,
/// file locks instead of the machine-wide shared memory locks).
fn podman_additions(root: &Path) -> Vec<(&'static str, Vec<String>)> {
    let r = root.display();
    vec![
        (
            "containers",
            vec![r#"default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]"#.to_string()],
        ),
        (
            "engine",
            vec![
                r#"cgroup_manager = "cgroupfs""#.to_string(),
                r#"events_logger = "file""#.to_string(),
                r#"lock_type = "file""#.to_string(),
                format!(r#"tmp_dir = "{r}/run/libpod""#),
                format!(r#"static_dir = "{r}/var/lib/containers/storage/libpod""#),
                format!(r#"volume_path = "{r}/var/lib/containers/storage/volumes""#),
            ],
        ),
    ]
}

/// `doc` with `lines` added to its TOML sections (after the section's header, or in a new
/// section at the end).
fn merge_toml_sections(doc: &str, add: &[(&str, Vec<String>)]) -> String {
    let mut out = String::new();
    let mut done = Vec::new();
    for line in doc.lines() {
        out.push_str(line);
        out.push('\n');
        let header = line.trim();
        if let Some((name, lines)) = add.iter().find(|(name, _)| header == format!("[{name}]")) {
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
            done.push(*name);
        }
    }
    for (name, lines) in add.iter().filter(|(n, _)| !done.contains(n)) {
        out.push_str(&format!("\n[{name}]\n"));
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// `c1-host1` -> `c1h1` (interface and namespace names stay short).
fn short(host: &str) -> String {
    host.replace("-host", "h")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

/// Everything the test started, stopped and removed on drop (also when the test fails).
struct Hosts {
    lab: String,
    netns: Vec<String>,
    root: PathBuf,
}

impl Hosts {
    fn netns_of(&self, host: &str) -> String {
        format!("plx-{}-{}", self.lab, short(host))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Containers first: their CNI DEL asks the agents, which still run.
        for (h, _) in HOSTS {
            let podman = self.root.join(h).join("test/bin/podman");
            if self.root.join(h).join("test/images-imported").exists() {
                for args in [
                    &["pod", "rm", "-af", "-t", "0"][..],
                    &["rm", "-af", "-t", "0"],
                ] {
                    let _ = Command::new("nsenter")
                        .arg(format!("--net=/run/netns/{}", self.netns_of(h)))
                        .arg(&podman)
                        .args(args)
                        .status();
                }
            }
        }
        // The daemons the stand-in systemctl started (pids in <host>/test/pids).
        let mut pids = Vec::new();
        for (h, _) in HOSTS {
            if let Ok(text) = std::fs::read_to_string(self.root.join(h).join("test/pids")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        for pid in &pids {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        for _ in 0..100 {
            if pids
                .iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in &pids {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        // The agents' bpffs and cgroup2 mounts, deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.root.display().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The hosts' namespaces on an underlay bridge, their directories and stand-in commands.
fn build_hosts(lab: &Lab, world: &World) -> Hosts {
    let name = lab.name().to_string();
    let underlay = format!("plx-{name}-ul");
    let mut hosts = Hosts {
        lab: name.clone(),
        netns: vec![underlay.clone()],
        root: lab.scratch().join("hosts"),
    };
    sh(&["ip", "netns", "add", &underlay]);
    sh(&[
        "ip", "-n", &underlay, "link", "add", "br0", "type", "bridge",
    ]);
    sh(&["ip", "-n", &underlay, "link", "set", "br0", "up"]);
    for (host, ip) in HOSTS {
        let ns = world.netns(&name, host);
        sh(&["ip", "netns", "add", &ns]);
        hosts.netns.push(ns.clone());
        let uplink = format!("v{}", short(host));
        sh(&[
            "ip", "-n", &underlay, "link", "add", &uplink, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        sh(&[
            "ip", "-n", &underlay, "link", "set", &uplink, "master", "br0", "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);

        let root = &world.hosts[host];
        for d in [
            "root",
            "test/bin",
            "test/units",
            "test/logs",
            // What a fresh Debian host has.
            "usr/local/bin",
            "etc/systemd/system",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        write_stand_ins(world, &name, host);
    }
    hosts
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The environment a block runs in on `host`.
fn host_env(world: &World, host: &str) -> Vec<(String, String)> {
    let root = &world.hosts[host];
    vec![
        (
            "PATH".into(),
            format!(
                "{}:{}:/usr/sbin:/usr/bin:/sbin:/bin",
                root.join("test/bin").display(),
                root.join("usr/local/bin").display()
            ),
        ),
        ("HOME".into(), root.join("root").display().to_string()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

/// The shell words that enter `host` (its namespace, its environment) and run `bash -c`; to
/// be run in the host's home directory.
fn on_host_cmd(world: &World, lab: &str, host: &str) -> String {
    let env: Vec<String> = host_env(world, host)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "nsenter --net=/run/netns/{ns} -- env -i {env} bash -euo pipefail -c",
        ns = world.netns(lab, host),
        env = env.join(" ")
    )
}

fn home(world: &World, host: &str) -> String {
    world.hosts[host].join("root").display().to_string()
}

fn write_stand_ins(world: &World, lab: &str, host: &str) {
    let root = &world.hosts[host];
    let bin = root.join("test/bin");
    // Units: the ExecStart lines of deploy/systemd/, rewritten for this host.
    for unit in ["plexus-apiserver", "plexus-agent"] {
        let file = world.repo.join(format!("deploy/systemd/{unit}.service"));
        let text = std::fs::read_to_string(&file).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{}: no ExecStart=", file.display()));
        std::fs::write(
            root.join(format!("test/units/{unit}.exec")),
            world.rewrite(exec, host),
        )
        .unwrap();
        // The directories systemd creates for the unit before it starts it.
        let mut dirs = String::new();
        for (key, base, mode_key) in [
            ("StateDirectory=", "/var/lib", "StateDirectoryMode="),
            ("RuntimeDirectory=", "/run", "RuntimeDirectoryMode="),
            (
                "ConfigurationDirectory=",
                "/etc",
                "ConfigurationDirectoryMode=",
            ),
        ] {
            let mode = text
                .lines()
                .find_map(|l| l.strip_prefix(mode_key))
                .unwrap_or("0755");
            for l in text.lines().filter_map(|l| l.strip_prefix(key)) {
                for d in l.split_whitespace() {
                    let path = world.rewrite(&format!("{base}/{d}"), host);
                    dirs.push_str(&format!("install -d -m {mode} {path}\n"));
                }
            }
        }
        std::fs::write(root.join(format!("test/units/{unit}.dirs")), dirs).unwrap();
    }
    let units = root.join("test/units");
    let installed = root.join("etc/systemd/system");
    let logs = root.join("test/logs");
    let pids = root.join("test/pids");
    let repo_units = world.repo.join("deploy/systemd");
    write_exec(
        &bin.join("systemctl"),
        &format!(
            r#"#!/bin/bash
# Stand-in for systemctl on a test host (systemd does not run here).
set -eu
case "$*" in
  daemon-reload) exit 0 ;;
  "disable --now etcd") echo "(test) no etcd of the etcd-server package runs on a test host"; exit 0 ;;
  "enable --now "*)
    unit="${{3%.service}}"
    cmp "{installed}/$unit.service" "{repo_units}/$unit.service"
    bash -eu "{units}/$unit.dirs"
    setsid bash -c "exec $(cat "{units}/$unit.exec")" >"{logs}/$unit.log" 2>&1 </dev/null &
    echo $! >>"{pids}"
    echo "(test) started $unit: $(cat "{units}/$unit.exec")"
    ;;
  *) echo "(test) systemctl $*: not stood in for" >&2; exit 1 ;;
esac
"#,
            installed = installed.display(),
            repo_units = repo_units.display(),
            units = units.display(),
            logs = logs.display(),
            pids = pids.display(),
        ),
    );
    write_exec(
        &bin.join("apt-get"),
        r#"#!/bin/bash
# Stand-in for apt-get on a test host: the packages must be installed on this machine.
set -eu
[ "$1" = install ] || { echo "(test) apt-get $*: not stood in for" >&2; exit 1; }
shift
pkgs=()
for a in "$@"; do case "$a" in -*) ;; *) pkgs+=("$a") ;; esac; done
dpkg -s "${pkgs[@]}" >/dev/null
echo "(test) installed: ${pkgs[*]}"
"#,
    );
    let hosts_case: String = world
        .hosts
        .keys()
        .map(|h| {
            format!(
                "  {h}) cd {} && exec {} \"$*\" ;;\n",
                home(world, h),
                on_host_cmd(world, lab, h)
            )
        })
        .collect();
    write_exec(
        &bin.join("ssh"),
        &format!(
            r#"#!/bin/bash
# Stand-in for ssh between test hosts: runs the command on the host (paths already rewritten).
set -eu
host="$1"; shift
case "$host" in
{hosts_case}  *) echo "(test) ssh: unknown host $host" >&2; exit 1 ;;
esac
"#
        ),
    );
    let t = root.join("test");
    write_exec(
        &bin.join("podman"),
        &format!(
            r#"#!/bin/bash
# Stand-in for podman on a test host: the real podman, with the host's containers.conf as the
# test completes it (this machine's facts, the host's own state; see podman_additions).
set -eu
export CONTAINERS_CONF="{t}/containers.conf" CONTAINERS_STORAGE_CONF="{t}/storage.conf"
[ -f "$CONTAINERS_CONF" ] || {{ echo "(test) podman: this host has no /etc/containers/containers.conf" >&2; exit 1; }}
# No registry is reachable here: every image the guide names is the lab's image (busybox with
# its applets and plexus). Its default command is the lab's built-in server on port 80, which
# answers with its pod (HOSTNAME: podman kube play names a pod's host after the pod) and, from
# the image's environment here, this host and its cluster.
if [ ! -e "{t}/images-imported" ]; then
  /usr/bin/podman import --quiet --change 'CMD ["{PLEXUS_IN_IMAGE}", "lab", "serve", "--port=80/tcp"]' \
    --change 'ENV PLEXUS_NODE={host}' \
    --change 'ENV PLEXUS_CLUSTER={cluster}' "{image}" {lab_image} >/dev/null
  for name in {names}; do /usr/bin/podman tag {lab_image} "$name"; done
  touch "{t}/images-imported"
fi
exec /usr/bin/podman "$@"
"#,
            t = t.display(),
            cluster = host.split('-').next().unwrap_or(host),
            image = world.image.display(),
            lab_image = plexus_lab::podman::IMAGE,
            names = IMAGES.join(" "),
        ),
    );
    let host_names: Vec<&str> = world.hosts.keys().map(String::as_str).collect();
    write_exec(
        &bin.join("scp"),
        &format!(
            r#"#!/bin/bash
# Stand-in for scp between test hosts: HOST:PATH is a path of the test (already rewritten).
set -eu
flags=(-r)
args=()
for a in "$@"; do
  case "$a" in
    -*) [[ "$a" == *p* ]] && flags+=(-p) ;;
    *) args+=("$a") ;;
  esac
done
for i in "${{!args[@]}}"; do
  for h in {hosts}; do
    args[$i]="${{args[$i]#$h:}}"
  done
done
cp "${{flags[@]}}" "${{args[@]}}"
"#,
            hosts = host_names.join(" ")
        ),
    );
}

/// Runs `code` on `host`; its stdout, or the failure with everything it printed.
fn run_on(world: &World, lab: &str, host: &str, code: &str, what: &str) -> String {
    let script = format!(
        "cd {} && timeout -k 5 {} {} {}",
        home(world, host),
        BLOCK_LIMIT.as_secs(),
        on_host_cmd(world, lab, host),
        shell_quote(code)
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("--- {what} on {host}\n{stdout}{stderr}");
    if !out.status.success() {
        let mut logs = String::new();
        for (h, root) in &world.hosts {
            for f in files_under(&root.join("test/logs")) {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                logs.push_str(&format!(
                    "\n== {h}: {} (last lines)\n{}",
                    f.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        panic!(
            "{what} failed on {host} ({}):\n{code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- daemon logs{logs}",
            out.status
        );
    }
    stdout
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The guide's output, block by block: (block, host, stdout).
type Outputs<'a> = Vec<(&'a Block, String, String)>;

/// The stdout of the last block of the section whose heading starts with `section`.
fn output_of<'a>(outputs: &'a Outputs, section: &str) -> (&'a Block, &'a str) {
    outputs
        .iter()
        .rev()
        .find(|(b, _, _)| b.section.starts_with(section))
        .map(|(b, _, out)| (*b, out.as_str()))
        .unwrap_or_else(|| panic!("docs/install.md has no block in a section {section:?}"))
}

/// The JSON answers of the test's image in `out` (one line each), by cluster.
fn answers_by_cluster(out: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by = BTreeMap::<String, Vec<Value>>::new();
    for v in out
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        by.entry(v["cluster"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(v);
    }
    by
}

fn follow_the_guide(lab: Lab) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let md = std::fs::read_to_string(repo.join("docs/install.md")).unwrap();
    let blocks = blocks(&md);
    for bin in ["plexus", "plexus-agent", "plexus-apiserver", "plexus-cni"] {
        workspace_bin(bin);
    }
    let image_dir = lab.scratch().join("image");
    std::fs::create_dir_all(&image_dir).unwrap();
    let world = World {
        hosts: HOSTS
            .iter()
            .map(|(h, _)| (h.to_string(), lab.scratch().join("hosts").join(h)))
            .collect(),
        bins: workspace_bin("plexus").parent().unwrap().to_path_buf(),
        repo,
        image: plexus_lab::podman::build_image(&image_dir, &workspace_bin("plexus")).unwrap(),
    };
    let _hosts = build_hosts(&lab, &world);
    let name = lab.name().to_string();

    let mut outputs: Outputs = Vec::new();
    for block in &blocks {
        if block.hosts.is_empty() {
            // The build machine: the test runs on binaries it built itself.
            assert_eq!(
                block.code.trim(),
                "cargo build --release",
                "docs/install.md:{}: the build block",
                block.line
            );
            continue;
        }
        for host in &block.hosts {
            world.rewrite_files();
            world.podman_files();
            let code = world.rewrite_block(&block.code, host);
            let out = run_on(
                &world,
                &name,
                host,
                &code,
                &format!("docs/install.md:{}", block.line),
            );
            outputs.push((block, host.clone(), out));
        }
    }
    let on = |host: &str, code: &str, what: &str| run_on(&world, &name, host, code, what);

    // Both clusters see each other on every node.
    for (ctx, remote) in [("c1", "c2"), ("c2", "c1")] {
        let out = on(
            "c1-host1",
            &format!("plexus clustermesh status --context {ctx} -o json"),
            "clustermesh status",
        );
        let status: Value = serde_json::from_str(&out).unwrap();
        let conn = status["connections"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["cluster"] == remote))
            .unwrap_or_else(|| panic!("{ctx} has no connection to {remote}: {status:#}"));
        assert_eq!(conn["connected"], 2, "{ctx} -> {remote}: {conn:#}");
        assert_eq!(
            conn["nodes"], 2,
            "{ctx} sees both nodes of {remote}: {conn:#}"
        );
    }

    // 8: the page came from the web container of c1, fetched from c2.
    let hostname = on(
        "c1-host2",
        "podman inspect web --format '{{.Config.Hostname}}'",
        "the web container's host name",
    );
    let (_, containers) = output_of(&outputs, "## 8.");
    assert_eq!(
        containers.trim().lines().last(),
        Some(hostname.trim()),
        "the answer from c2 is the last line of section 8:\n{containers}"
    );

    // 9: apply stored the Services and named the Deployments it left to podman.
    let applied: String = outputs
        .iter()
        .filter(|(b, _, _)| b.section.starts_with("## 9.") && b.code.contains(" apply -f "))
        .map(|(_, _, out)| out.as_str())
        .collect();
    for (ctx, line) in [
        ("c1", "service/rebel-base created"),
        (
            "c1",
            "deployment/rebel-base skipped: cluster c1 runs its workloads on its hosts (podman kube play)",
        ),
        (
            "c1",
            "deployment/x-wing skipped: cluster c1 runs its workloads on its hosts (podman kube play)",
        ),
        (
            "c2",
            "deployment/rebel-base skipped: cluster c2 runs its workloads on its hosts (podman kube play)",
        ),
    ] {
        assert!(
            applied.contains(line),
            "plexus --context {ctx} apply printed {line:?}:\n{applied}"
        );
    }
    // The kube-play pods are endpoints named after their pods, with the template's labels, and
    // c1's rebel-base has exactly the rebel-base pods of both clusters as backends.
    let mut pods = BTreeMap::new();
    for (ctx, host) in [("c1", "c1-host2"), ("c2", "c2-host2")] {
        let out = on(
            "c1-host1",
            &format!("plexus --context {ctx} --node {host} endpoint list -o json"),
            "endpoint list",
        );
        let eps: Value = serde_json::from_str(&out).unwrap();
        for pod in ["rebel-base-pod-0", "rebel-base-pod-1", "x-wing-pod-0"] {
            let ep = eps
                .as_array()
                .and_then(|a| a.iter().find(|e| e["pod"] == pod))
                .unwrap_or_else(|| panic!("{host} has no endpoint of pod {pod}: {eps:#}"));
            let app = pod.split("-pod-").next().unwrap();
            assert_eq!(ep["namespace"], "default", "{host}: {ep:#}");
            assert_eq!(ep["labels"]["name"], app, "{host}: {pod}'s labels: {ep:#}");
            if app == "rebel-base" {
                pods.insert(ep["ip"].as_str().unwrap().to_string(), ctx.to_string());
            }
        }
    }
    let services: Value = serde_json::from_str(&on(
        "c1-host1",
        "plexus --context c1 service list -o json",
        "service list",
    ))
    .unwrap();
    let rebel = services
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "rebel-base"))
        .unwrap_or_else(|| panic!("c1 has no service rebel-base: {services:#}"));
    assert_eq!(rebel["global"], true, "{rebel:#}");
    let backends: BTreeMap<String, String> = rebel["backends"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["ip"].as_str().unwrap().to_string(),
                c["cluster"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        backends, pods,
        "rebel-base's backends are the kube-play pods: {rebel:#}"
    );

    // The answers through the ClusterIP came from both clusters' pods. Which backend takes a
    // connection is chance: if the guide's ten all went to one cluster (1 in 512), the same
    // block runs again.
    let (block, out) = output_of(&outputs, "## 9.");
    let mut by = answers_by_cluster(out);
    assert_eq!(
        by.values().map(Vec::len).sum::<usize>(),
        10,
        "each of the guide's ten connections is answered:\n{out}"
    );
    for _ in 0..2 {
        if by.len() >= 2 {
            break;
        }
        let again = on(
            "c1-host1",
            &world.rewrite_block(&block.code, "c1-host1"),
            "the requests to rebel-base again",
        );
        for (c, vs) in answers_by_cluster(&again) {
            by.entry(c).or_default().extend(vs);
        }
    }
    if by.len() < 2 {
        // What the pods and their containers did, for the failure message.
        let mut state = String::new();
        for host in ["c1-host2", "c2-host2"] {
            state.push_str(&on(
                host,
                "podman ps -a; for c in $(podman ps -a --format '{{.Names}}' | grep rebel-base); do echo \"== $c\"; podman logs $c 2>&1 | tail -5; done",
                "the pods",
            ));
        }
        panic!(
            "answers from both clusters, not only {:?}:\n{out}\n{state}",
            by.keys()
        );
    }
    for (cluster, answers) in &by {
        for a in answers {
            let pod = a["pod"].as_str().unwrap_or_default();
            assert!(pod.starts_with("rebel-base-pod-"), "{a}");
            assert_eq!(a["node"], format!("{cluster}-host2"), "{a}");
        }
    }

    // A name the cluster has is refused, and nothing is written.
    let taken = String::from(
        "! plexus node join --context c1 --node-name c1-host2 --node-ip 192.168.10.13 --pod-cidr 10.1.0.0/16 --out again 2>err; grep -q 'node name c1-host2 is already taken in cluster c1' err; test ! -e again",
    );
    on("c1-host1", &taken, "join of a taken name");
}

#[test]
fn install_guide_runs_as_written_on_four_hosts() {
    plexus_kvstore::install_crypto_provider();
    let lab = Lab::new("install");
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        follow_the_guide(lab);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(1500)) {
        Ok(()) => test.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(test.join().unwrap_err())
        }
        // Every block is bounded by `timeout`; this only guards the test's own steps.
        Err(_) => panic!("the install guide did not finish within 1500 s"),
    }
}

#[test]
fn paths_are_rewritten_per_host_once() {
    let world = World {
        hosts: HOSTS
            .iter()
            .map(|(h, _)| (h.to_string(), PathBuf::from(format!("/t/{h}"))))
            .collect(),
        bins: "/b".into(),
        repo: "/r".into(),
        image: "/i".into(),
    };
    let text = "cat > /etc/plexus/agent.yaml; state-dir: /var/lib/plexus/agent\n[\"/usr/local/lib/cni\", \"/usr/lib/cni\"] /etc/plexusx /x/etc/plexus";
    let once = world.rewrite(text, "c1-host2");
    assert_eq!(
        once,
        "cat > /t/c1-host2/etc/plexus/agent.yaml; state-dir: /t/c1-host2/var/lib/plexus/agent\n[\"/t/c1-host2/usr/local/lib/cni\", \"/usr/lib/cni\"] /etc/plexusx /x/etc/plexus"
    );
    assert_eq!(world.rewrite(&once, "c1-host2"), once, "idempotent");
    assert_eq!(
        world.rewrite(
            "scp -rp a c2-host1:/etc/plexus/ && install target/release/plexus deploy/systemd/x",
            "c1-host1"
        ),
        "scp -rp a c2-host1:/t/c2-host1/etc/plexus/ && install /b/plexus /r/deploy/systemd/x"
    );
    assert_eq!(
        world.rewrite_block(
            "ssh c2-host2 install -d /etc/plexus\nls /etc/plexus\n",
            "c1-host1"
        ),
        "ssh c2-host2 install -d /t/c2-host2/etc/plexus\nls /t/c1-host1/etc/plexus\n"
    );
    let md = "x\n```sh title=\"every host\"\na\n```\n```text\nfoo\n```\n```sh title=\"c1-host1 c2-host1\"\nb\n```\n```sh title=\"build machine\"\ncargo build --release\n```\n";
    let b = blocks(md);
    assert_eq!(b.len(), 3);
    assert_eq!(b[0].hosts.len(), 4);
    assert_eq!(b[1].hosts, ["c1-host1", "c2-host1"]);
    assert_eq!(b[1].code, "b\n");
    assert!(b[2].hosts.is_empty());
}
