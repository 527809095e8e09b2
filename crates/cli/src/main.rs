//! `plexus`: the command-line tool of a Plexus mesh, in the shape of cilium-cli.
//!
//! - `lab up|down|status|stop|start` ([`lab`]), and the built-in pod server `lab serve`;
//! - `apply -f`, `delete -f`, `get`, `exec` ([`objects`]); `label`, `annotate` ([`metadata`]);
//! - `clustermesh enable|connect|disconnect|rotate-ca|status` ([`clustermesh`]);
//! - per node: `status`, `endpoint list`, `node list`, `identity list`, `bpf ipcache list`, `bpf lb list`,
//!   `monitor` ([`node`]);
//! - per node: `fqdn cache list`, what the node's DNS proxy learned for `toFQDNs` policy
//!   ([`node`]);
//! - `policy trace`: the verdict of a pod-to-pod connection at both ends and the rules that
//!   decide it ([`trace`]);
//! - `encryption status|rotate-key`: WireGuard keys, devices and peers of a cluster's nodes
//!   ([`encryption`]);
//! - `observe`: flows of every node of the mesh through the cluster's relay ([`observe`]);
//! - `ui`: the web view through a local proxy to the relay ([`ui`]);
//! - `node join`: the files a new host needs to run a cluster's agent ([`join`]);
//! - `host install-cni` ([`host`]): set up a host's podman to run containers on Plexus;
//! - `context list|use`. Contexts live in the configuration file of [`config`]; a context with
//!   a `netns` (a lab cluster) is reached from inside that network namespace.

mod clustermesh;
mod config;
mod encryption;
mod host;
mod join;
mod lab;
mod metadata;
mod node;
mod objects;
mod observe;
mod trace;
mod ui;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::CliConfig;

/// plexus: multi-cluster networking.
#[derive(Parser, Debug)]
#[command(name = "plexus", version)]
struct Cli {
    /// Configuration file (default: $PLEXUS_CONFIG, else ~/.plexus/config.yaml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The context (cluster) to act on; default: the current context.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The node to ask (default: the cluster's first node).
    #[arg(long, global = true)]
    node: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a mesh of clusters in network namespaces on this host.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Create or update objects from a file. Labels and annotations are merged as `kubectl
    /// apply` merges them: keys the last applied file had and this one lacks are removed, keys
    /// set with `label`/`annotate` stay, the file's keys win.
    Apply {
        /// The file.
        #[arg(short, long)]
        file: PathBuf,
        /// Default namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Delete the objects of a file.
    Delete {
        /// The file whose objects to delete.
        #[arg(short, long, conflicts_with_all = ["kind", "name"])]
        file: Option<PathBuf>,
        /// Or one object: its kind (deployment, statefulset, pod, service)...
        #[arg(requires = "name")]
        kind: Option<String>,
        /// ...and its name.
        name: Option<String>,
        /// Default namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// List objects.
    Get {
        /// pods, deployments, statefulsets, namespaces (with their labels), services.
        kind: String,
        /// One object.
        name: Option<String>,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Set or remove labels (`KEY=VALUE`, `KEY-`) of a pod or a namespace. The agents give
    /// the pod (or the namespace's pods) new identities; `apply` keeps labels set here.
    Label {
        /// `pod` or `namespace`.
        kind: String,
        /// The object.
        name: String,
        /// `KEY=VALUE` or `KEY-`.
        #[arg(required = true)]
        changes: Vec<String>,
        /// Replace an existing value.
        #[arg(long)]
        overwrite: bool,
        /// Namespace (of a pod).
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Set or remove annotations (`KEY=VALUE`, `KEY-`) of a service, a pod or a namespace.
    Annotate {
        /// `service`, `pod` or `namespace`.
        kind: String,
        /// The object.
        name: String,
        /// `KEY=VALUE` or `KEY-`.
        #[arg(required = true)]
        changes: Vec<String>,
        /// Replace an existing value.
        #[arg(long)]
        overwrite: bool,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Run a command in a pod's network namespace.
    Exec {
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// POD, deployment/NAME or statefulset/NAME.
        target: String,
        /// The command.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Enable, connect and inspect the mesh.
    Clustermesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// A node's agent status.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A node's endpoints.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// The cluster's network policies, as a node holds them.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Nodes of every cluster as a node sees them; add a node to a cluster.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// What a node's DNS proxy learned for toFQDNs policy.
    Fqdn {
        #[command(subcommand)]
        command: FqdnCommand,
    },
    /// Services with their frontends and backends (with cluster and state), as a node sees them.
    Service {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// Identities of every cluster, as a node sees them.
    Identity {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// BPF maps of a node.
    Bpf {
        #[command(subcommand)]
        command: BpfCommand,
    },
    /// Print a node's datapath events.
    Monitor {
        /// Only one kind of event: drops, traces, service translations, or policy verdicts
        /// (allowed new connections and drops by policy).
        #[arg(long = "type", value_parser = ["drop", "trace", "translation", "policy-verdict"])]
        kind: Option<String>,
    },
    /// Flows of every node of every cluster of the mesh, through the cluster's relay (or one
    /// node's agent with --node), as `hubble observe` prints them. `--not` negates the next
    /// filter flag.
    Observe(observe::ObserveArgs),
    /// The web view (mesh, services, live flows) in a browser: a local proxy to the relay with
    /// the context's admin certificate; open the URL it prints.
    Ui {
        /// The local port (on 127.0.0.1; 0: any free port).
        #[arg(long, default_value_t = 12000)]
        port: u16,
    },
    /// WireGuard encryption of the cluster's nodes (every node, or --node).
    Encryption {
        #[command(subcommand)]
        command: EncryptionCommand,
    },
    /// List or switch contexts.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
    /// Set up this host to run workloads on Plexus.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
}

#[derive(Subcommand, Debug)]
enum HostCommand {
    /// Write the CNI network podman uses (`podman run --network NAME`), pointing at the local
    /// agent; with --cni-bin-dir, also install the plexus-cni plugin there.
    InstallCni {
        /// Where podman reads CNI networks (its `network_config_dir`).
        #[arg(long, default_value = "/etc/cni/net.d")]
        network_config_dir: PathBuf,
        /// The network's name.
        #[arg(long, default_value = "plexus")]
        name: String,
        /// The local agent's API socket.
        #[arg(long, default_value = "/run/plexus/agent.sock")]
        agent_socket: PathBuf,
        /// Also copy the plexus-cni binary into this directory (podman's `cni_plugin_dirs`,
        /// e.g. /usr/lib/cni).
        #[arg(long)]
        cni_bin_dir: Option<PathBuf>,
        /// The plexus-cni binary to copy (default: the one beside this plexus binary).
        #[arg(long, requires = "cni_bin_dir")]
        cni_plugin: Option<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum EncryptionCommand {
    /// Per node: the public key, the port, the device, and each peer with its endpoint,
    /// allowed IPs, last handshake and bytes.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A new WireGuard key for each node (one after the other): set on its device, published
    /// in its Node, picked up by its peers.
    RotateKey {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointCommand {
    /// List them.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// One endpoint with its identity and resolved policy (by id, pod or namespace/pod; without
    /// --node, every node of the cluster is searched).
    Get {
        /// Endpoint id, pod name, or namespace/pod.
        id: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Print the policies.
    Get {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Whether a connection from one pod to another passes policy, and the rule that decides
    /// it at each end (each end evaluated by the agent hosting the pod, as its datapath does).
    Trace {
        /// The source pod: [CLUSTER/]NAMESPACE/POD (CLUSTER: a context; default --context).
        #[arg(long)]
        src: trace::PodRef,
        /// The destination pod: [CLUSTER/]NAMESPACE/POD.
        #[arg(long)]
        dst: trace::PodRef,
        /// The destination port: a number or a named port of the destination pod, with an
        /// optional protocol (/tcp, the default, /udp, /sctp).
        #[arg(long)]
        dport: trace::PortArg,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum ListCommand {
    /// List them.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// List them.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Write what a new host needs to run the cluster's agent: agent.yaml, the node's etcd
    /// client certificate (its own etcd user) and the agent's API certificate (files 0600).
    Join {
        /// The node's name.
        #[arg(long)]
        node_name: String,
        /// The node's underlay address.
        #[arg(long)]
        node_ip: std::net::Ipv4Addr,
        /// The cluster's pod CIDR (the same for every node of the cluster).
        #[arg(long)]
        pod_cidr: plexus_ipam::Cidr4,
        /// Where to write the files (default: ./<node-name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the files will live on the node (the paths agent.yaml refers to).
        #[arg(long, default_value = "/etc/plexus")]
        install_dir: PathBuf,
        /// The agent's state directory on the node.
        #[arg(long, default_value = "/var/lib/plexus/agent")]
        state_dir: PathBuf,
        /// The agent's API socket on the node.
        #[arg(long, default_value = "/run/plexus/agent.sock")]
        api_socket: PathBuf,
        /// Where the agent reads remote-cluster configurations on the node (copies of the
        /// context's clustermesh-dir).
        #[arg(long, default_value = "/etc/plexus/clustermesh")]
        clustermesh_config: PathBuf,
        /// podman's state file on the node (where the agent reads containers' labels).
        #[arg(
            long,
            default_value = "/var/lib/containers/storage/libpod/bolt_state.db"
        )]
        podman_state: PathBuf,
        /// Write the files again when --out already holds this node's.
        #[arg(long)]
        overwrite: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum FqdnCommand {
    /// The learned names: each address with its identity (that of the toFQDNs selectors
    /// matching its names), the seconds left of its TTL ("expired": kept while connections
    /// use it) and those selectors.
    Cache {
        #[command(subcommand)]
        command: ListCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BpfCommand {
    /// The ipcache map.
    Ipcache {
        #[command(subcommand)]
        command: ListCommand,
    },
    /// The load-balancing maps: service frontends and their backends.
    Lb {
        #[command(subcommand)]
        command: ListCommand,
    },
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Bring a lab up.
    Up {
        /// The lab file.
        #[arg(short, long)]
        file: PathBuf,
        /// Enable ClusterMesh on every cluster and connect them all.
        #[arg(long)]
        mesh: bool,
        /// With --mesh: whether each cluster's agents read the others through its KVStoreMesh
        /// (as `clustermesh enable --enable-kvstoremesh`).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        enable_kvstoremesh: bool,
        /// Lab name (prefix of its network namespaces).
        #[arg(long, default_value = "lab")]
        name: String,
        /// With `encryption: wireguard`: the program that is each node's WireGuard device,
        /// `plexus` (plexus-wireguard) or `wireguard-go` (Debian's; for the benchmark's
        /// comparison only, so hidden).
        #[arg(long, hide = true, default_value = "plexus", value_parser = ["plexus", "wireguard-go"])]
        wireguard_device: String,
    },
    /// Remove the lab: every process, namespace, mount and file.
    Down,
    /// What runs.
    Status,
    /// Take a cluster down as a failure would.
    Stop {
        /// The cluster.
        cluster: String,
    },
    /// Bring a stopped cluster back.
    Start {
        /// The cluster.
        cluster: String,
    },
    /// Kill one member of a cluster's etcd (`etcd: {members: 3}` in the lab file) at once, as
    /// a crash would; its data stays.
    EtcdKill {
        /// The cluster.
        cluster: String,
        /// The member, e.g. cluster1-etcd0 (`plexus lab status` lists them).
        member: String,
    },
    /// Start a killed etcd member again with its data; returns once it answers.
    EtcdStart {
        /// The cluster.
        cluster: String,
        /// The member.
        member: String,
    },
    /// Restart one node's agent (traffic keeps flowing).
    RestartAgent {
        /// The cluster.
        cluster: String,
        /// The node.
        node: String,
    },
    /// Show or set a cluster's agent options (KEY=VALUE, e.g.
    /// policy-default-local-cluster=false; KEY= removes one) and restart its agents.
    AgentOptions {
        /// The cluster.
        cluster: String,
        /// Changes.
        changes: Vec<String>,
    },
    /// Chaos soak: HTTP requests and long TCP streams across the clusters while agents,
    /// apiservers, etcd and kube-dns are killed at random (seeded), then every node's ipcache,
    /// load-balancing and policy state checked against the stores (apply
    /// examples/chaos/soak.yaml to every cluster first). Exits 1 when a failure is left
    /// unexplained or a node differs from the stores.
    Chaos {
        /// How long traffic runs (e.g. 90s, 10m).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// The seed of the kills (the same seed, the same kills).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// One kill every this long.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        every: std::time::Duration,
        /// How long the nodes may take to match the stores, before and after.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        settle: std::time::Duration,
        /// The echo pods' port the clients ask by address (80, the service's port, shows the
        /// 4-tuple collisions of docs/reliability.md).
        #[arg(long, default_value_t = plexus_lab::chaos::POD_PORT)]
        pod_port: u16,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Run podman as one node of a `runtime: podman` lab runs it (its configuration files,
    /// entered into the node's network namespace), e.g. `plexus lab podman cluster1-node1 ps`.
    Podman {
        /// The node (`plexus lab status` lists them).
        node: String,
        /// podman's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark helper: a 1-byte TCP echo server.
    #[command(hide = true)]
    BenchEcho {
        #[arg(long)]
        port: u16,
    },
    /// Benchmark helper: 1-byte request/response transactions per second against ADDR.
    #[command(hide = true)]
    BenchRr {
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// The built-in server of pods without a command (run by the lab in a pod, and the default
    /// command of the lab's container image, where the environment names who answers).
    #[command(hide = true)]
    Serve {
        /// The pod (default: the container's hostname, which `podman kube play` sets to the
        /// pod's name).
        #[arg(long, env = "HOSTNAME")]
        pod: String,
        #[arg(long, env = "PLEXUS_NAMESPACE", default_value = "default")]
        namespace: String,
        #[arg(long, env = "PLEXUS_NODE")]
        node: String,
        #[arg(long, env = "PLEXUS_CLUSTER")]
        cluster: String,
        /// `PORT/tcp` or `PORT/udp` (none: it just waits).
        #[arg(long, env = "PLEXUS_PORTS", value_delimiter = ',')]
        port: Vec<String>,
        /// The address to listen on (default: every address).
        #[arg(long, default_value = "0.0.0.0")]
        address: std::net::IpAddr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// For people.
    Text,
    /// For programs.
    Json,
}

#[derive(Subcommand, Debug)]
enum MeshCommand {
    /// Give the cluster a CA and certificates, and set up its etcd users and roles.
    Enable {
        /// Create a CA when the cluster has none.
        #[arg(long)]
        create_ca: bool,
        /// Share the CA of another context (as Cilium users copy the cilium-ca secret).
        #[arg(long, value_name = "CONTEXT", conflicts_with = "create_ca")]
        ca_from_context: Option<String>,
        /// Lifetime of the certificates issued (etcd server, clients); certificates of another
        /// lifetime are re-issued. Default: one year for new ones, existing ones keep theirs.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        cert_validity: Option<Duration>,
        /// Lifetime of a CA created by --create-ca.
        #[arg(long, value_name = "DURATION", default_value = "3y", value_parser = humantime::parse_duration)]
        ca_validity: Duration,
        /// Whether the cluster's agents read remote clusters through its KVStoreMesh (the
        /// apiserver mirroring them into the cluster's etcd; the context's kvstoremesh-dir),
        /// as Cilium does by default since 1.16; `false`: each agent reads every remote
        /// itself. Applies to the connections made afterwards.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        enable_kvstoremesh: bool,
    },
    /// Connect the cluster and another one, both directions.
    Connect {
        /// The other cluster's context.
        #[arg(long)]
        destination_context: String,
    },
    /// Disconnect the cluster and another one, both directions.
    Disconnect {
        /// The other cluster's context.
        #[arg(long)]
        destination_context: String,
    },
    /// Replace the CA shared by the cluster and every cluster issuing from it, without
    /// breaking connections: trust old and new, re-issue from the new, drop the old.
    RotateCa {
        /// Lifetime of the new CA.
        #[arg(long, value_name = "DURATION", default_value = "3y", value_parser = humantime::parse_duration)]
        ca_validity: Duration,
        /// How long to wait after each step for clients that reload their files at their next
        /// request.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Show the mesh as the cluster sees it.
    Status {
        /// Wait until every node is connected to every remote cluster.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait_duration: Duration,
        /// Warn about certificates that expire within this time.
        #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = humantime::parse_duration)]
        expiry_warning: Duration,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum ContextCommand {
    /// List the contexts.
    List,
    /// Make a context the current one.
    Use {
        /// The context.
        name: String,
    },
}

/// Enters network namespace `name` for this thread and every thread started after.
fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter network namespace {name}"))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// Lets a closed pipe end the CLI quietly, as it ends `ls | head`, instead of a panic in
/// `println!`.
#[allow(unsafe_code)]
fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL installs no Rust
    // handler, so nothing runs in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Ignores SIGPIPE again, for commands that keep connections open while their peers restart:
/// hyper writes HTTP/2 frames with `writev`, which (unlike `send` with `MSG_NOSIGNAL`) raises
/// SIGPIPE when the peer closed, and the default action would kill the CLI mid-way (an etcd
/// restarting during `clustermesh rotate-ca`). The write then fails with `EPIPE` and the
/// connection is made again.
#[allow(unsafe_code)]
fn ignore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_IGN installs no handler, so nothing runs in signal context; sigaction is
    // safe to call while other threads run.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

fn main() -> std::process::ExitCode {
    default_sigpipe();
    plexus_kvstore::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(err) => {
            eprintln!("Error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    let path = cli.config.clone().unwrap_or_else(config::default_path);
    let mut cfg = CliConfig::load(&path)?;
    let ctx_name = cli.context.as_deref();
    let node = cli.node.as_deref();
    match cli.command {
        Command::Host {
            command:
                HostCommand::InstallCni {
                    network_config_dir,
                    name,
                    agent_socket,
                    cni_bin_dir,
                    cni_plugin,
                    output,
                },
        } => {
            let done = host::install_cni(
                &network_config_dir,
                &name,
                &agent_socket,
                cni_bin_dir.as_deref(),
                cni_plugin.as_deref(),
            )?;
            host::print_install_cni(&done, output == Output::Json)?;
            return Ok(0);
        }
        Command::Lab { command } => {
            return match command {
                LabCommand::Up {
                    file,
                    mesh,
                    enable_kvstoremesh,
                    name,
                    wireguard_device,
                } => {
                    let device = if wireguard_device == "wireguard-go" {
                        plexus_lab::wireguard::Device::WireguardGo
                    } else {
                        plexus_lab::wireguard::Device::Plexus
                    };
                    let lab = lab::up(&file, &name, device, &mut cfg, &path)?;
                    if mesh {
                        enter_netns(&lab.underlay)?;
                        let names: Vec<String> =
                            lab.clusters.iter().map(|c| c.name.clone()).collect();
                        runtime()?.block_on(async {
                            for n in &names {
                                clustermesh::enable(
                                    &mut cfg,
                                    &path,
                                    Some(n),
                                    false,
                                    None,
                                    clustermesh::Lifetimes::default(),
                                    enable_kvstoremesh,
                                )
                                .await?;
                            }
                            for (i, a) in names.iter().enumerate() {
                                for b in &names[i + 1..] {
                                    clustermesh::connect(&cfg, &path, Some(a), b).await?;
                                }
                            }
                            for n in &names {
                                clustermesh::status(
                                    &cfg,
                                    &path,
                                    Some(n),
                                    Some(Duration::from_secs(120)),
                                    clustermesh::DEFAULT_EXPIRY_WARNING,
                                    false,
                                )
                                .await?;
                            }
                            Ok::<_, anyhow::Error>(())
                        })?;
                    }
                    Ok(0)
                }
                LabCommand::Down => lab::down(&mut cfg, &path).map(|()| 0),
                LabCommand::Status => lab::status().map(|ok| u8::from(!ok)),
                LabCommand::Stop { cluster } => lab::stop(&cluster).map(|()| 0),
                LabCommand::Start { cluster } => lab::start(&cluster).map(|()| 0),
                LabCommand::EtcdKill { cluster, member } => {
                    plexus_lab::etcd::kill_member(&lab::lab_dir(), &cluster, &member)?;
                    println!("✅ etcd member {member} of {cluster} killed");
                    Ok(0)
                }
                LabCommand::EtcdStart { cluster, member } => {
                    plexus_lab::etcd::start_member(&lab::lab_dir(), &cluster, &member)?;
                    println!("✅ etcd member {member} of {cluster} runs again");
                    Ok(0)
                }
                LabCommand::BenchEcho { port } => plexus_lab::bench::echo_server(port).map(|()| 0),
                LabCommand::BenchRr { to, seconds } => {
                    let tps = plexus_lab::bench::rr(&to, Duration::from_secs(seconds))?;
                    println!("{tps:.0}");
                    Ok(0)
                }
                LabCommand::RestartAgent { cluster, node } => {
                    let bins = plexus_lab::lab::Bins::beside_current_exe()?;
                    plexus_lab::lab::restart_agent(&lab::lab_dir(), &cluster, &node, &bins)?;
                    println!("✅ agent of {node} restarted");
                    Ok(0)
                }
                LabCommand::Chaos {
                    duration,
                    seed,
                    every,
                    settle,
                    pod_port,
                    output,
                } => {
                    let bins = plexus_lab::lab::Bins::beside_current_exe()?;
                    let options = plexus_lab::chaos::Options {
                        duration,
                        seed,
                        every,
                        settle,
                        pod_port,
                    };
                    let mut progress = |line: &str| eprintln!("{line}");
                    let report =
                        plexus_lab::chaos::run(&lab::lab_dir(), &options, &bins, &mut progress)?;
                    if output == Output::Json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        print!("{}", report.text());
                    }
                    Ok(if report.passed() { 0 } else { 1 })
                }
                LabCommand::Podman { node, args } => {
                    let state = plexus_lab::lab::LabState::load(&lab::lab_dir())?;
                    let n = state
                        .clusters
                        .iter()
                        .flat_map(|c| &c.nodes)
                        .find(|n| n.name == node)
                        .with_context(|| format!("no node {node} in the lab"))?;
                    if state.runtime != plexus_lab::spec::Runtime::Podman {
                        anyhow::bail!("the lab runs its pods without podman (runtime: netns)");
                    }
                    let status = plexus_lab::podman::NodePodman::of(n)
                        .command()
                        .args(&args)
                        .status()
                        .context("run podman")?;
                    Ok(status
                        .code()
                        .and_then(|c| u8::try_from(c).ok())
                        .unwrap_or(1))
                }
                LabCommand::AgentOptions { cluster, changes } => {
                    let bins = plexus_lab::lab::Bins::beside_current_exe()?;
                    let now = plexus_lab::lab::set_agent_options(
                        &lab::lab_dir(),
                        &cluster,
                        &changes,
                        &bins,
                    )?;
                    if !changes.is_empty() {
                        println!("✅ agents of {cluster} restarted");
                    }
                    if now.is_empty() {
                        println!("agent options of {cluster}: (defaults)");
                    } else {
                        println!("agent options of {cluster}: {}", now.join(" "));
                    }
                    Ok(0)
                }
                LabCommand::Serve {
                    pod,
                    namespace,
                    node,
                    cluster,
                    port,
                    address,
                } => {
                    let mut ports = Vec::new();
                    for p in port {
                        let (n, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
                        ports.push((
                            n.parse().with_context(|| format!("--port {p}"))?,
                            proto.to_string(),
                        ));
                    }
                    plexus_lab::serve::serve_on(
                        address,
                        plexus_lab::serve::Identity {
                            pod,
                            namespace,
                            node,
                            cluster,
                        },
                        ports,
                    )
                    .map(|()| 0)
                }
            };
        }
        Command::Exec {
            namespace,
            target,
            command,
        } => {
            let ctx = cfg.context(ctx_name, &path)?;
            let dir = ctx
                .lab_dir
                .clone()
                .with_context(|| format!("context {} is not a lab cluster", ctx.name))?;
            let lab = plexus_lab::lab::LabState::load(&dir)?;
            let pod = plexus_lab::workload::find_pod(&lab, &ctx.name, &namespace, &target)?;
            let code = plexus_lab::workload::exec(&pod, &command)?;
            return Ok(u8::try_from(code).unwrap_or(1));
        }
        Command::Context { command } => {
            match command {
                ContextCommand::List => {
                    for c in &cfg.contexts {
                        let current = cfg.current_context.as_deref() == Some(c.name.as_str());
                        println!(
                            "{} {:<16} id {:<4} etcd {}",
                            if current { "*" } else { " " },
                            c.name,
                            c.cluster_id,
                            c.etcd_endpoints.join(",")
                        );
                    }
                }
                ContextCommand::Use { name } => {
                    cfg.context(Some(&name), &path)?;
                    cfg.current_context = Some(name.clone());
                    cfg.save(&path)?;
                    println!("current context: {name}");
                }
            }
            return Ok(0);
        }
        _ => {}
    }

    // The web view's listener is bound in this (the host's) network namespace, so a browser
    // here reaches it even when the relay is reached from inside a lab's namespace.
    let ui_listener = match &cli.command {
        Command::Ui { port } => Some(ui::bind(*port)?),
        _ => None,
    };
    // Everything else talks to a cluster: enter its network namespace first (threads started
    // afterwards, the runtime's among them, inherit it).
    if let Some(ns) = cfg
        .context(ctx_name, &path)
        .ok()
        .and_then(|c| c.netns.clone())
    {
        enter_netns(&ns)?;
    }
    let rt = runtime()?;
    rt.block_on(async {
        match cli.command {
            Command::Apply { file, namespace } => {
                objects::apply(cfg.context(ctx_name, &path)?, &file, &namespace).await?;
            }
            Command::Delete {
                file,
                kind,
                name,
                namespace,
            } => {
                let ctx = cfg.context(ctx_name, &path)?;
                match (file, kind, name) {
                    (Some(file), _, _) => objects::delete(ctx, &file, &namespace).await?,
                    (None, Some(kind), Some(name)) => {
                        objects::delete_named(ctx, &kind, &name, &namespace).await?
                    }
                    _ => anyhow::bail!("delete needs -f FILE, or KIND NAME"),
                }
            }
            Command::Label {
                kind,
                name,
                changes,
                overwrite,
                namespace,
            } => {
                metadata::run(
                    cfg.context(ctx_name, &path)?,
                    metadata::Field::Labels,
                    &kind,
                    &name,
                    &changes,
                    overwrite,
                    &namespace,
                )
                .await?;
            }
            Command::Annotate {
                kind,
                name,
                changes,
                overwrite,
                namespace,
            } => {
                metadata::run(
                    cfg.context(ctx_name, &path)?,
                    metadata::Field::Annotations,
                    &kind,
                    &name,
                    &changes,
                    overwrite,
                    &namespace,
                )
                .await?;
            }
            Command::Get {
                kind,
                name,
                namespace,
                output,
            } => {
                objects::get(
                    cfg.context(ctx_name, &path)?,
                    &kind,
                    name.as_deref(),
                    &namespace,
                    output == Output::Json,
                )
                .await?;
            }
            Command::Clustermesh { command } => match command {
                MeshCommand::Enable {
                    create_ca,
                    ca_from_context,
                    cert_validity,
                    ca_validity,
                    enable_kvstoremesh,
                } => {
                    clustermesh::enable(
                        &mut cfg,
                        &path,
                        ctx_name,
                        create_ca,
                        ca_from_context.as_deref(),
                        clustermesh::Lifetimes {
                            leaf: cert_validity,
                            ca: ca_validity,
                        },
                        enable_kvstoremesh,
                    )
                    .await?
                }
                MeshCommand::Connect {
                    destination_context,
                } => clustermesh::connect(&cfg, &path, ctx_name, &destination_context).await?,
                MeshCommand::Disconnect {
                    destination_context,
                } => clustermesh::disconnect(&cfg, &path, ctx_name, &destination_context).await?,
                MeshCommand::RotateCa { ca_validity, grace } => {
                    ignore_sigpipe();
                    clustermesh::rotate_ca(&cfg, &path, ctx_name, ca_validity, grace).await?
                }
                MeshCommand::Status {
                    wait,
                    wait_duration,
                    expiry_warning,
                    output,
                } => {
                    clustermesh::status(
                        &cfg,
                        &path,
                        ctx_name,
                        wait.then_some(wait_duration),
                        expiry_warning,
                        output == Output::Json,
                    )
                    .await?;
                }
            },
            Command::Status { output } => {
                node::list(
                    cfg.context(ctx_name, &path)?,
                    node,
                    node::Listing::Status,
                    output == Output::Json,
                )
                .await?
            }
            Command::Endpoint {
                command: EndpointCommand::Get { id, output },
            } => {
                node::endpoint_get(
                    cfg.context(ctx_name, &path)?,
                    node,
                    &id,
                    output == Output::Json,
                )
                .await?
            }
            Command::Policy {
                command: PolicyCommand::Get { output },
            } => {
                node::list(
                    cfg.context(ctx_name, &path)?,
                    node,
                    node::Listing::Policy,
                    output == Output::Json,
                )
                .await?
            }
            Command::Policy {
                command:
                    PolicyCommand::Trace {
                        src,
                        dst,
                        dport,
                        output,
                    },
            } => {
                trace::run(
                    &cfg,
                    &path,
                    ctx_name,
                    &src,
                    &dst,
                    &dport,
                    output == Output::Json,
                )
                .await?
            }
            Command::Endpoint {
                command: EndpointCommand::List { output },
            } => {
                node::list(
                    cfg.context(ctx_name, &path)?,
                    node,
                    node::Listing::Endpoints,
                    output == Output::Json,
                )
                .await?
            }
            Command::Node {
                command:
                    NodeCommand::Join {
                        node_name,
                        node_ip,
                        pod_cidr,
                        out,
                        install_dir,
                        state_dir,
                        api_socket,
                        clustermesh_config,
                        podman_state,
                        overwrite,
                        output,
                    },
            } => {
                let req = join::JoinRequest {
                    out: out.unwrap_or_else(|| PathBuf::from(&node_name)),
                    node_name,
                    node_ip,
                    pod_cidr,
                    install_dir,
                    state_dir,
                    api_socket,
                    clustermesh_config,
                    podman_state,
                    overwrite,
                };
                let report = join::join(&mut cfg, &path, ctx_name, &req).await?;
                if output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    join::print(&report);
                }
            }
            Command::Node {
                command: NodeCommand::List { output },
            } => {
                node::list(
                    cfg.context(ctx_name, &path)?,
                    node,
                    node::Listing::Nodes,
                    output == Output::Json,
                )
                .await?
            }
            Command::Service {
                command: ListCommand::List { output },
            } => {
                node::list(
                    cfg.context(ctx_name, &path)?,
                    node,
                    node::Listing::Services,
                    output == Output::Json,
                )
                .await?
            }
            Command::Identity {
                command: ListCommand::List { output },
            } => {
                node::list(
                    cfg.context(ctx_name, &path)?,
                    node,
                    node::Listing::Identities,
                    output == Output::Json,
                )
                .await?
            }
            Command::Fqdn {
                command:
                    FqdnCommand::Cache {
                        command: ListCommand::List { output },
                    },
            } => {
                node::list(
                    cfg.context(ctx_name, &path)?,
                    node,
                    node::Listing::FqdnCache,
                    output == Output::Json,
                )
                .await?
            }
            Command::Bpf { command } => {
                let (what, output) = match command {
                    BpfCommand::Ipcache {
                        command: ListCommand::List { output },
                    } => (node::Listing::Ipcache, output),
                    BpfCommand::Lb {
                        command: ListCommand::List { output },
                    } => (node::Listing::Lb, output),
                };
                node::list(
                    cfg.context(ctx_name, &path)?,
                    node,
                    what,
                    output == Output::Json,
                )
                .await?
            }
            Command::Encryption { command } => match command {
                EncryptionCommand::Status { output } => {
                    encryption::status(cfg.context(ctx_name, &path)?, node, output == Output::Json)
                        .await?
                }
                EncryptionCommand::RotateKey { output } => {
                    encryption::rotate_key(
                        cfg.context(ctx_name, &path)?,
                        node,
                        output == Output::Json,
                    )
                    .await?
                }
            },
            Command::Monitor { kind } => {
                let kind = kind
                    .as_deref()
                    .map(str::parse::<plexus_agent_api::MonitorFilter>)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!(e))?;
                node::monitor(cfg.context(ctx_name, &path)?, node, kind).await?
            }
            Command::Observe(args) => {
                observe::observe(cfg.context(ctx_name, &path)?, node, &args).await?
            }
            Command::Ui { .. } => {
                let ctx = cfg.context(ctx_name, &path)?;
                let addr = ctx.relay_address()?.to_string();
                let client = ctx.relay_client()?.with_timeout(ui::UPSTREAM_TIMEOUT);
                let listener = ui_listener.context("the web view's listener")?;
                let local = listener.local_addr()?;
                println!(
                    "Plexus web view of cluster {} (relay {addr}): http://{local}/ui",
                    ctx.name
                );
                use std::io::Write as _;
                std::io::stdout().flush()?;
                ui::serve(listener, ui::Upstream { addr, client }).await?
            }
            Command::Lab { .. }
            | Command::Exec { .. }
            | Command::Context { .. }
            | Command::Host { .. } => {}
        }
        Ok::<_, anyhow::Error>(0)
    })
}
