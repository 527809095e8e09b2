//! `plexus-agent`: the daemon of one node. It composes the library crates:
//! - the node's pod CIDR ([`plexus_ipam`]) and its `Node` published in the cluster's kvstore;
//! - its endpoints ([`endpoints`]): addresses, identities, datapath entries, published records;
//! - the node's view ([`view`]): its cluster's and the remote clusters' nodes, endpoints and
//!   identities folded into the ipcache and, in native routing mode, routes;
//! - the remote-cluster manager (`plexus_clustermesh`); remotes whose configuration points at
//!   this cluster's own etcd (a KVStoreMesh cache) reuse the agent's one connection;
//! - the datapath: eBPF in the kernel (`--datapath ebpf`, run inside the node's network
//!   namespace; bpffs is mounted under the state directory when missing) or the in-memory fake;
//! - the API on a unix socket ([`api`]) for the CLI and the CNI plugin.

mod api;
mod api_tls;
mod endpoints;
mod netcmd;
mod policy;
mod services;
mod view;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use plexus_clustermesh::mesh::{ClusterMesh, MeshHandle};
use plexus_clustermesh::remote_cluster::{Connector, DriverTiming, SharedConnector};
use plexus_clustermesh::validate::{identity_decoder, ipcache_decoder, node_decoder};
use plexus_datapath::{Datapath, EbpfDatapath, FakeDatapath, NodeConfig, RoutingMode};
use plexus_identity::allocator::IdentityAllocator;
use plexus_ipam::{Cidr4, PodIpam, claim_node_cidr};
use plexus_kvstore::{
    EtcdBackend, EtcdConfig, KvBackend, KvMetrics, LeaseManager, MeteredBackend, StoreEvent,
    SyncStore, SyncStoreConfig, TlsFiles, WatchStore,
};
use plexus_model::cidr::Cidr;
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::keys::StateKind;
use plexus_model::node::{Node, NodeAddress, NodeAddressType};

use crate::endpoints::{Endpoints, EndpointsConfig};
use crate::view::NodeView;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Routing {
    /// VXLAN between nodes, the source identity in the VNI.
    Tunnel,
    /// Plain routes to other nodes' pod CIDRs.
    Native,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DatapathKind {
    /// eBPF programs in the kernel.
    Ebpf,
    /// In-memory maps (control-plane tests).
    Fake,
}

/// The Plexus node agent.
#[derive(Parser, Debug)]
#[command(name = "plexus-agent", version)]
struct Args {
    /// Cluster name.
    #[arg(long)]
    cluster_name: String,
    /// Cluster id.
    #[arg(long)]
    cluster_id: u32,
    /// 255 or 511.
    #[arg(long, default_value_t = 255)]
    max_connected_clusters: u32,
    /// This node's name.
    #[arg(long)]
    node_name: String,
    /// This node's underlay address (its tunnel endpoint).
    #[arg(long)]
    node_ip: Ipv4Addr,
    /// The cluster's pod CIDR, carved into node CIDRs.
    #[arg(long)]
    pod_cidr: Cidr4,
    /// Prefix length of each node's CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_size: u8,
    /// How packets reach other nodes.
    #[arg(long, value_enum, default_value = "tunnel")]
    routing: Routing,
    /// The datapath.
    #[arg(long, value_enum, default_value = "ebpf")]
    datapath: DatapathKind,
    /// Pod MTU (default: 1450 in tunnel mode, 1500 in native mode).
    #[arg(long)]
    mtu: Option<u32>,
    /// Endpoint state, bpffs and cgroup2 mounts.
    #[arg(long)]
    state_dir: PathBuf,
    /// The cluster's etcd (comma-separated URLs).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd_endpoints: Vec<String>,
    /// Client identity for the cluster's etcd: CA.
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    /// Client identity: certificate.
    #[arg(long)]
    etcd_cert: Option<PathBuf>,
    /// Client identity: key.
    #[arg(long)]
    etcd_key: Option<PathBuf>,
    /// Remote-cluster configuration directory (one file per remote).
    #[arg(long)]
    clustermesh_config: PathBuf,
    /// The API socket (local, fully privileged).
    #[arg(long)]
    api_socket: PathBuf,
    /// Also serve the API on this TCP address with mutual TLS (clients need a certificate of
    /// `--api-tls-ca`; only `admin-<cluster>` may write).
    #[arg(long, requires_all = ["api_tls_cert", "api_tls_key", "api_tls_ca"])]
    api_listen: Option<std::net::SocketAddr>,
    /// The TCP API's server certificate.
    #[arg(long, requires = "api_listen")]
    api_tls_cert: Option<PathBuf>,
    /// The TCP API's server key.
    #[arg(long, requires = "api_listen")]
    api_tls_key: Option<PathBuf>,
    /// The CA that client certificates of the TCP API must chain to (the cluster's).
    #[arg(long, requires = "api_listen")]
    api_tls_ca: Option<PathBuf>,
    /// Withdraw an unreachable remote cluster's service backends after this long (default:
    /// keep them until it returns; its backends are skipped meanwhile anyway).
    #[arg(long, value_parser = humantime::parse_duration)]
    clustermesh_service_cache_ttl: Option<Duration>,
    /// `policy-default-local-cluster`: peer endpoint selectors without the cluster label select
    /// only this cluster's endpoints (as current Cilium releases do); `false` gives the older
    /// any-cluster behaviour.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    policy_default_local_cluster: bool,
    /// Also serve `/metrics` (Prometheus) on this TCP address.
    #[arg(long)]
    prometheus_listen: Option<std::net::SocketAddr>,
}

/// What the API handlers reach.
pub struct Agent {
    cluster: ClusterInfo,
    node: String,
    node_ip: Ipv4Addr,
    pod_cidr: String,
    routing: String,
    datapath_kind: String,
    kv: KvMetrics,
    mesh: MeshHandle,
    view: Arc<NodeView>,
    endpoints: Arc<Endpoints>,
    services: services::Services,
    policies: policy::Policies,
    datapath: Arc<dyn Datapath>,
}

async fn connect_etcd(args: &Args) -> Result<Arc<dyn KvBackend>> {
    let mut config = EtcdConfig::new(args.etcd_endpoints.clone());
    let tls = TlsFiles::from_parts(
        args.etcd_ca.as_ref(),
        args.etcd_cert.as_ref(),
        args.etcd_key.as_ref(),
    )
    .context("--etcd-ca, --etcd-cert and --etcd-key")?;
    if let Some(tls) = tls {
        config = config.with_tls(tls);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match EtcdBackend::connect(config.clone()).await {
            Ok(etcd) => return Ok(Arc::new(etcd)),
            Err(err) if tokio::time::Instant::now() >= deadline => {
                return Err(err).with_context(|| {
                    format!("connect to the cluster's etcd {:?}", args.etcd_endpoints)
                });
            }
            Err(err) => {
                tracing::info!(error = %err, "waiting for the cluster's etcd");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn own_node(args: &Args, cluster: &ClusterInfo, cidr: Cidr4, gateway: Ipv4Addr) -> Node {
    Node {
        name: args.node_name.clone(),
        cluster: cluster.name.clone(),
        ip_addresses: vec![
            NodeAddress {
                kind: NodeAddressType::InternalIp,
                ip: args.node_ip.into(),
            },
            NodeAddress {
                kind: NodeAddressType::CiliumInternalIp,
                ip: gateway.into(),
            },
        ],
        ipv4_alloc_cidr: Cidr::new(cidr.addr.into(), cidr.len).ok(),
        cluster_id: cluster.id,
        ..Default::default()
    }
}

fn load_datapath(
    args: &Args,
    cluster: &ClusterInfo,
    gateway: Ipv4Addr,
) -> Result<Arc<dyn Datapath>> {
    match args.datapath {
        DatapathKind::Fake => Ok(Arc::new(FakeDatapath::new())),
        DatapathKind::Ebpf => {
            let pin_dir = args.state_dir.join("bpffs");
            std::fs::create_dir_all(&pin_dir)
                .with_context(|| format!("create {}", pin_dir.display()))?;
            plexus_datapath::bpffs::ensure_bpffs(&pin_dir)
                .with_context(|| format!("mount bpffs on {}", pin_dir.display()))?;
            // The unified cgroup hierarchy, for socket-level programs (the services issue).
            let cgroup = args.state_dir.join("cgroupv2");
            plexus_datapath::bpffs::ensure_cgroup2(&cgroup)
                .with_context(|| format!("mount cgroup2 on {}", cgroup.display()))?;
            netcmd::enable_forwarding()?;
            let dp = EbpfDatapath::load(NodeConfig {
                node_ip: args.node_ip,
                routing: match args.routing {
                    Routing::Tunnel => RoutingMode::Tunnel,
                    Routing::Native => RoutingMode::Native,
                },
                gateway_ip: gateway,
                cluster_id: u16::try_from(cluster.id).context("cluster id")?,
                tunnel_ifname: "plexus_vxlan".into(),
                pin_dir,
            })
            .context("load the eBPF datapath")?;
            Ok(Arc::new(dp))
        }
    }
}

/// Follows this cluster's own nodes, ip -> identity entries and identities.
async fn follow_local(backend: Arc<dyn KvBackend>, cluster: ClusterInfo, view: Arc<NodeView>) {
    let mut nodes = WatchStore::new(
        backend.clone(),
        StateKind::Nodes.state_prefix(&cluster.name),
        node_decoder(cluster.clone()),
    );
    let mut ips = WatchStore::new(
        backend.clone(),
        StateKind::Ip.state_prefix(&cluster.name),
        ipcache_decoder(cluster.clone()),
    );
    let mut ids = WatchStore::new(
        backend,
        StateKind::Identities.state_prefix(&cluster.name),
        identity_decoder(cluster.clone()),
    );
    loop {
        tokio::select! {
            e = nodes.next() => match e {
                StoreEvent::Upsert { value, .. } => view.node_upsert(&cluster.name, &value),
                StoreEvent::Delete { old, .. } => view.node_delete(&cluster.name, &old.name),
                StoreEvent::Rejected { key, reason } => tracing::warn!(%key, %reason, "node refused"),
                StoreEvent::Synced => {}
            },
            e = ips.next() => match e {
                StoreEvent::Upsert { key, value, .. } => view.local_ip_upsert(&key, &value),
                StoreEvent::Delete { key, .. } => view.local_ip_delete(&key),
                StoreEvent::Rejected { key, reason } => tracing::warn!(%key, %reason, "ipcache entry refused"),
                StoreEvent::Synced => {}
            },
            e = ids.next() => match e {
                StoreEvent::Upsert { value, .. } => {
                    view.identity_upsert(&cluster.name, value.id.0, value.labels.to_kvstore_string())
                }
                StoreEvent::Delete { old, .. } => view.identity_delete(old.id.0),
                StoreEvent::Rejected { .. } | StoreEvent::Synced => {}
            },
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let max = MaxConnectedClusters::from_u32(args.max_connected_clusters)
        .context("--max-connected-clusters")?;
    let cluster = ClusterInfo::new(args.cluster_name.clone(), args.cluster_id, max)
        .context("--cluster-name/--cluster-id")?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("create {}", args.state_dir.display()))?;

    let raw = connect_etcd(&args).await?;
    let (metered, kv) = MeteredBackend::new(raw);
    let backend: Arc<dyn KvBackend> = Arc::new(metered);
    let leases = LeaseManager::start(backend.clone(), Duration::from_secs(15))
        .await
        .context("grant the agent's lease")?;

    let cidr = claim_node_cidr(
        backend.as_ref(),
        args.pod_cidr,
        args.node_cidr_size,
        &args.node_name,
    )
    .await
    .context("claim the node's pod CIDR")?;
    let ipam = PodIpam::new(cidr);
    let gateway = ipam.gateway();
    tracing::info!(node = %args.node_name, %cidr, %gateway, "node CIDR");

    let datapath = load_datapath(&args, &cluster, gateway)?;
    let view = Arc::new(NodeView::new(
        args.datapath == DatapathKind::Ebpf,
        match args.routing {
            Routing::Tunnel => RoutingMode::Tunnel,
            Routing::Native => RoutingMode::Native,
        },
        &cluster.name,
        u16::try_from(cluster.id).context("cluster id")?,
        &args.node_name,
        args.node_ip,
        datapath.clone(),
    ));

    // This node, published under the lease.
    let node = own_node(&args, &cluster, cidr, gateway);
    let node_store = SyncStore::start(
        backend.clone(),
        &leases,
        SyncStoreConfig {
            prefix: StateKind::Nodes.state_prefix(&cluster.name),
            canary: None,
        },
    );
    node_store.upsert(node.name.clone(), serde_json::to_vec(&node)?);
    view.node_upsert(&cluster.name, &node);

    let identities = Arc::new(IdentityAllocator::new(
        backend.clone(),
        cluster.clone(),
        args.node_name.clone(),
        leases.subscribe(),
    ));
    let mtu = args.mtu.unwrap_or(match args.routing {
        Routing::Tunnel => 1450,
        Routing::Native => 1500,
    });
    let endpoints = Arc::new(
        Endpoints::new(EndpointsConfig {
            datapath: datapath.clone(),
            identities,
            ip_store: SyncStore::start(
                backend.clone(),
                &leases,
                SyncStoreConfig {
                    prefix: StateKind::Ip.state_prefix(&cluster.name),
                    canary: None,
                },
            ),
            record_store: SyncStore::start(
                backend.clone(),
                &leases,
                SyncStoreConfig {
                    prefix: plexus_loadbalancer::ENDPOINTS_PREFIX.to_string(),
                    canary: None,
                },
            ),
            node_name: args.node_name.clone(),
            node_ip: args.node_ip,
            cluster_id: u16::try_from(cluster.id).context("cluster id")?,
            mtu,
            ipam,
            state_file: args.state_dir.join("endpoints.json"),
            view: view.clone(),
        })
        .await?,
    );

    let local_task = tokio::spawn(follow_local(backend.clone(), cluster.clone(), view.clone()));
    let services = services::Services::default();
    let services_task = tokio::spawn(services.clone().follow(backend.clone()));

    let connector: Arc<dyn Connector> = Arc::new(SharedConnector::new(
        args.etcd_endpoints.clone(),
        backend.clone(),
    ));
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let mut timing = DriverTiming::default();
    timing.protocol.service_cache_ttl = args.clustermesh_service_cache_ttl;
    let mesh = ClusterMesh::spawn_with(
        connector,
        args.clustermesh_config.clone(),
        cluster.clone(),
        tx,
        timing,
        Duration::from_secs(1),
    );
    let remote_task = {
        let view = view.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                view.remote_event(&event);
            }
        })
    };

    let policies = policy::Policies::new(&cluster.name, args.policy_default_local_cluster);
    let policies_task = tokio::spawn(policies.clone().follow(backend.clone()));
    let policy_program_task = tokio::spawn(policies.clone().program(
        view.clone(),
        endpoints.clone(),
        datapath.clone(),
    ));
    let program_task = tokio::spawn(services.clone().program(
        cluster.name.clone(),
        view.clone(),
        mesh.handle(),
        datapath.clone(),
        Duration::from_secs(10),
    ));

    let agent = Arc::new(Agent {
        cluster: cluster.clone(),
        node: args.node_name.clone(),
        node_ip: args.node_ip,
        pod_cidr: cidr.to_string(),
        routing: format!("{:?}", args.routing).to_lowercase(),
        datapath_kind: format!("{:?}", args.datapath).to_lowercase(),
        kv,
        mesh: mesh.handle(),
        view,
        endpoints,
        services,
        policies,
        datapath,
    });

    if let Some(dir) = args.api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&args.api_socket);
    let listener = tokio::net::UnixListener::bind(&args.api_socket)
        .with_context(|| format!("listen on {}", args.api_socket.display()))?;
    let app = api::router(agent.clone());
    let tcp_api = match (
        args.api_listen,
        args.api_tls_cert,
        args.api_tls_key,
        args.api_tls_ca,
    ) {
        (Some(addr), Some(cert), Some(key), Some(ca)) => {
            let files = plexus_agent_api::tls::TlsFiles { ca, cert, key };
            tracing::info!(%addr, "API on TCP with mutual TLS");
            Some(api_tls::start(addr, &files, app.clone(), &cluster.name).await?)
        }
        _ => None,
    };
    if let Some(addr) = args.prometheus_listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(api::metrics))
            .with_state(agent.clone());
        tokio::spawn(async move { axum::serve(tcp, app).await });
    }
    tracing::info!(node = %agent.node, cluster = %agent.cluster.name, socket = %args.api_socket.display(), "agent running");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = server => { r??; }
    }
    // Stop without tearing anything down: pinned maps and links keep pods' traffic flowing
    // until the next agent takes over; the lease keeps our records for its TTL.
    if let Some(task) = tcp_api {
        task.abort();
    }
    local_task.abort();
    services_task.abort();
    program_task.abort();
    policies_task.abort();
    policy_program_task.abort();
    remote_task.abort();
    let _ = std::fs::remove_file(&args.api_socket);
    drop(mesh);
    drop(node_store);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    plexus_kvstore::install_crypto_provider();
    run(Args::parse()).await
}
