//! The daemon: wires the library's parts together for one node and runs them.
//!
//! [`run`] connects to the cluster's etcd, claims the node's pod CIDR, publishes its `Node`,
//! loads the datapath, restores the endpoints, starts the remote-cluster manager, the sources
//! that feed the core ([`crate::shell::sources`]) and the reconciler that applies its output
//! ([`crate::shell::reconciler`]), and serves the API until SIGTERM or Ctrl-C. It stops
//! without tearing anything down: pinned maps and links keep pods' traffic flowing until the
//! next agent takes over, and the lease keeps the node's records for its TTL.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use plexus_clustermesh::mesh::ClusterMesh;
use plexus_clustermesh::remote_cluster::{Connector, DriverTiming, SharedConnector};
use plexus_datapath::{Datapath, EbpfDatapath, FakeDatapath, NodeConfig, RoutingMode};
use plexus_identity::allocator::IdentityAllocator;
use plexus_ipam::{Cidr4, PodIpam, claim_node_cidr};
use plexus_kvstore::{
    EtcdBackend, EtcdConfig, KvBackend, LeaseManager, MeteredBackend, SyncStore, SyncStoreConfig,
    TlsFiles,
};
use plexus_model::cidr::Cidr;
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::keys::StateKind;
use plexus_model::node::{Node, NodeAddress, NodeAddressType};

use crate::Agent;
use crate::core::{CoreConfig, Input, NodeCore};
use crate::endpoints::{Endpoints, EndpointsConfig};
use crate::options::{DatapathKind, Options, Routing};
use crate::shell::reconciler::{KernelRoutes, NoRoutes, Reconciler, Routes};
use crate::shell::{CoreHandle, sources};

/// How long a starting agent waits for its remote clusters to sync before it programs
/// services anyway.
const REMOTE_GRACE: Duration = Duration::from_secs(10);

fn routing_mode(routing: Routing) -> RoutingMode {
    match routing {
        Routing::Tunnel => RoutingMode::Tunnel,
        Routing::Native => RoutingMode::Native,
    }
}

async fn connect_etcd(args: &Options) -> Result<Arc<dyn KvBackend>> {
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
    let etcd: EtcdBackend = plexus_kvstore::connect_with_retry(
        &config,
        &plexus_kvstore::Retry::for_at_most(Duration::from_secs(60)),
        "the cluster's etcd",
    )
    .await
    .with_context(|| format!("connect to the cluster's etcd {:?}", args.etcd_endpoints))?;
    Ok(Arc::new(etcd))
}

fn own_node(args: &Options, cluster: &ClusterInfo, cidr: Cidr4, gateway: Ipv4Addr) -> Node {
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
    args: &Options,
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
            crate::netcmd::enable_forwarding()?;
            let dp = EbpfDatapath::load(NodeConfig {
                node_ip: args.node_ip,
                routing: routing_mode(args.routing),
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

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(args: Options) -> Result<()> {
    let max = MaxConnectedClusters::from_u32(args.max_connected_clusters)
        .context("--max-connected-clusters")?;
    let cluster = ClusterInfo::new(args.cluster_name.clone(), args.cluster_id, max)
        .context("--cluster-name/--cluster-id")?;
    let cluster_id = u16::try_from(cluster.id).context("cluster id")?;
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
    let real_kernel = args.datapath == DatapathKind::Ebpf;
    let (core, driver) = CoreHandle::new(NodeCore::new(CoreConfig {
        cluster: cluster.name.clone(),
        cluster_id,
        node_name: args.node_name.clone(),
        node_ip: args.node_ip,
        routing: routing_mode(args.routing),
        policy_default_local_cluster: args.policy_default_local_cluster,
    }));
    let routes: Arc<dyn Routes> = if real_kernel {
        Arc::new(KernelRoutes)
    } else {
        Arc::new(NoRoutes)
    };
    let reconciler = tokio::spawn(Reconciler::new(driver, datapath.clone(), routes).run());

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
    core.step(Input::NodeUpsert(node));

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
            mtu,
            ipam,
            state_file: args.state_dir.join("endpoints.json"),
            core: core.clone(),
            real_kernel,
            podman_state: args.podman_state.clone(),
        })
        .await?,
    );

    let connector: Arc<dyn Connector> = Arc::new(SharedConnector::new(
        args.etcd_endpoints.clone(),
        backend.clone(),
    ));
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
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

    let tasks = [
        tokio::spawn(sources::follow_local(
            backend.clone(),
            cluster.clone(),
            core.clone(),
        )),
        tokio::spawn(sources::follow_services(backend.clone(), core.clone())),
        tokio::spawn(sources::follow_policies(backend.clone(), core.clone())),
        tokio::spawn(sources::follow_remotes(rx, core.clone())),
        tokio::spawn(sources::follow_mesh_status(mesh.handle(), core.clone())),
        tokio::spawn(sources::service_grace(REMOTE_GRACE, core.clone())),
        reconciler,
    ];

    let agent = Arc::new(Agent {
        cluster: cluster.clone(),
        node: args.node_name.clone(),
        node_ip: args.node_ip,
        pod_cidr: cidr.to_string(),
        routing: format!("{:?}", args.routing).to_lowercase(),
        datapath_kind: format!("{:?}", args.datapath).to_lowercase(),
        kv,
        mesh: mesh.handle(),
        core,
        endpoints,
        datapath,
    });

    if let Some(dir) = args.api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&args.api_socket);
    let listener = tokio::net::UnixListener::bind(&args.api_socket)
        .with_context(|| format!("listen on {}", args.api_socket.display()))?;
    let app = crate::api::router(agent.clone());
    let tcp_api = match (
        args.api_listen,
        args.api_tls_cert.clone(),
        args.api_tls_key.clone(),
        args.api_tls_ca.clone(),
    ) {
        (Some(addr), Some(cert), Some(key), Some(ca)) => {
            let files = plexus_agent_api::tls::TlsFiles { ca, cert, key };
            tracing::info!(%addr, "API on TCP with mutual TLS");
            Some(crate::api_tls::start(addr, &files, app.clone(), &cluster.name).await?)
        }
        _ => None,
    };
    if let Some(addr) = args.prometheus_listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(crate::api::metrics))
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
    for task in tasks {
        task.abort();
    }
    if let Some(task) = tcp_api {
        task.abort();
    }
    let _ = std::fs::remove_file(&args.api_socket);
    drop(mesh);
    drop(node_store);
    Ok(())
}
