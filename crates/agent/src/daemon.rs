//! The daemon: wires the library's parts together for one node and runs them.
//!
//! [`run`] connects to the cluster's etcd, claims the node's pod CIDR, publishes its `Node`
//! (with WireGuard on, with its public key: the key is generated once in the state dir, and
//! a thread syncs the node's WireGuard device, see [`crate::shell::wireguard`]),
//! loads the datapath, restores the endpoints, starts the remote-cluster manager, the sources
//! that feed the core and the endpoints' labels ([`crate::shell::sources`]) and the reconciler
//! that applies its output
//! ([`crate::shell::reconciler`]), and serves the API until SIGTERM or Ctrl-C. It stops
//! without tearing anything down: pinned maps and links keep pods' traffic flowing until the
//! next agent takes over, and the lease keeps the node's records for its TTL.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use plexus_clustermesh::mesh::ClusterMesh;
use plexus_clustermesh::remote_cluster::{Connector, DriverTiming, SharedConnector};
use plexus_datapath::{Datapath, EbpfDatapath, Encryption, FakeDatapath, NodeConfig, RoutingMode};
use plexus_identity::allocator::IdentityAllocator;
use plexus_ipam::{Cidr4, PodIpam, claim_node_cidr};
use plexus_kvstore::{
    EtcdBackend, KvBackend, LeaseManager, MeteredBackend, SyncStore, SyncStoreConfig,
};
use plexus_model::cidr::Cidr;
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_model::keys::StateKind;
use plexus_model::node::{Node, NodeAddress, NodeAddressType};
use plexus_wireguard::NodeKey;
use plexus_wireguard::uapi::UapiClient;

use crate::Agent;
use crate::core::{CoreConfig, Input, NodeCore};
use crate::endpoints::{Endpoints, EndpointsConfig};
use crate::options::{DatapathKind, Options, Routing};
use crate::shell::dns::{DnsOptions, DnsShell};
use crate::shell::reconciler::{KernelRoutes, NoRoutes, Reconciler, Routes};
use crate::shell::wireguard::{KernelSetup, Wireguard, WireguardConfig, WireguardKernel};
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
    let config = args.etcd_config()?;
    let etcd: EtcdBackend = plexus_kvstore::connect_with_retry(
        &config,
        &plexus_kvstore::Retry::for_at_most(Duration::from_secs(60)),
        "the cluster's etcd",
    )
    .await
    .with_context(|| format!("connect to the cluster's etcd {:?}", args.etcd_endpoints))?;
    Ok(Arc::new(etcd))
}

/// Cilium's `EncryptionKey` of a node (and `Key` of its endpoints' ip -> identity entries)
/// with WireGuard on: `wgTypes.StaticEncryptKey`, a non-zero static index (WireGuard has no
/// key index; peers only need to know that the node encrypts).
pub const WIREGUARD_ENCRYPT_KEY: u8 = 255;

/// The WireGuard key file in the state directory (Cilium's `cilium_wg0.key`).
pub const WIREGUARD_KEY_FILE: &str = "plexus_wg0.key";

/// Whose each of the device's peers is, in the state directory (for the next agent).
pub const WIREGUARD_PEERS_FILE: &str = "wireguard-peers.json";

/// This node's `Node`, as Cilium publishes it; with a WireGuard public key (base64), also its
/// `WireguardPubKey` and `EncryptionKey`.
pub fn own_node(
    args: &Options,
    cluster: &ClusterInfo,
    cidr: Cidr4,
    gateway: Ipv4Addr,
    wireguard_key: Option<&str>,
) -> Node {
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
        encryption_key: if wireguard_key.is_some() {
            WIREGUARD_ENCRYPT_KEY
        } else {
            0
        },
        wireguard_pub_key: wireguard_key.unwrap_or_default().to_string(),
        ..Default::default()
    }
}

fn encryption(args: &Options) -> Encryption {
    Encryption {
        enabled: args.enable_wireguard,
        strict: args.enable_wireguard && args.encryption_strict_mode,
    }
}

/// The pods' MTU when `--mtu` is not given: the underlay's (1500 unless WireGuard is on and the
/// node's device says otherwise) less WireGuard's overhead when it is on and VXLAN's in tunnel
/// mode: 1450/1500 without WireGuard, 1390/1440 with it, on a 1500-byte underlay.
pub fn default_mtu(routing: Routing, wireguard: bool, underlay: u32) -> u32 {
    let mut mtu = underlay;
    if wireguard {
        mtu -= crate::netcmd::WIREGUARD_OVERHEAD;
    }
    if routing == Routing::Tunnel {
        mtu -= crate::netcmd::VXLAN_OVERHEAD;
    }
    mtu
}

fn load_datapath(
    args: &Options,
    cluster: &ClusterInfo,
    gateway: Ipv4Addr,
) -> Result<Arc<dyn Datapath>> {
    match args.datapath {
        // The fake's ipcache holds what `bpf-ipcache-map-max` allows, as the real one does.
        DatapathKind::Fake => Ok(Arc::new(
            FakeDatapath::with_encryption(args.node_ip, encryption(args))
                .with_ipcache_capacity(args.map_sizes.ipcache as usize),
        )),
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
            let dp = EbpfDatapath::load_with(
                NodeConfig {
                    node_ip: args.node_ip,
                    routing: routing_mode(args.routing),
                    gateway_ip: gateway,
                    cluster_id: u16::try_from(cluster.id).context("cluster id")?,
                    tunnel_ifname: "plexus_vxlan".into(),
                    pin_dir,
                    encryption: encryption(args),
                },
                args.map_sizes,
            )
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
        encryption: encryption(&args),
    }));
    let routes: Arc<dyn Routes> = if real_kernel {
        Arc::new(KernelRoutes { table: None })
    } else {
        Arc::new(NoRoutes)
    };

    // The node's WireGuard key, generated once and kept in the state dir.
    let key_file = args.state_dir.join(WIREGUARD_KEY_FILE);
    let wireguard_key = if args.enable_wireguard {
        Some(NodeKey::load_or_create(&key_file).context("the node's WireGuard key")?)
    } else {
        None
    };
    if real_kernel && !args.enable_wireguard {
        crate::netcmd::wireguard_teardown()?;
    }
    let underlay_mtu = if real_kernel && args.enable_wireguard {
        crate::netcmd::underlay_mtu(args.node_ip)?
    } else {
        1500
    };

    // This node, published under the lease.
    let node = own_node(
        &args,
        &cluster,
        cidr,
        gateway,
        wireguard_key.as_ref().map(|k| k.public_base64()).as_deref(),
    );
    let node_store = Arc::new(SyncStore::start(
        backend.clone(),
        &leases,
        SyncStoreConfig {
            prefix: StateKind::Nodes.state_prefix(&cluster.name),
            canary: None,
        },
    ));
    node_store.upsert(node.name.clone(), serde_json::to_vec(&node)?);
    core.step(Input::NodeUpsert(node.clone()));
    // A previous agent's policy prefixes keep their CIDR identities (before any resolution).
    match datapath.policy_cidrs() {
        Ok(cidrs) if !cidrs.is_empty() => {
            core.step(Input::PolicyCidrsInDatapath(cidrs));
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "reading the datapath's policy prefixes"),
    }

    // The DNS proxy (eBPF datapath only: its sockets live in the node's namespace): what a
    // previous agent learned is taken over before any policy is resolved.
    let dns = real_kernel.then(|| {
        DnsShell::new(
            DnsOptions {
                port: args.tofqdns_proxy_port,
                min_ttl: args.tofqdns_min_ttl,
                hold_max: args.tofqdns_proxy_response_max_delay,
                state_file: Some(args.state_dir.join(crate::shell::dns::STATE_FILE)),
            },
            core.clone(),
            datapath.clone(),
        )
    });
    if let Some(dns) = &dns {
        dns.restore();
    }

    let map_health = Arc::new(crate::shell::maps::MapHealth::default());
    let mut reconciler =
        Reconciler::new(driver, datapath.clone(), routes).with_map_health(map_health.clone());
    if let Some(dns) = &dns {
        reconciler = reconciler
            .with_dns(dns.clone())
            .with_proxy_routes(Arc::new(KernelRoutes {
                table: Some(plexus_datapath::proxy::PROXY_FORWARD_TABLE),
            }));
        tokio::spawn(dns.clone().run());
    }
    // Flows: the reconciler keeps the decoder's snapshot of the core; one task decodes.
    let flows = args.enable_flows.then(|| {
        let cell = Arc::new(crate::flows::SnapshotCell::default());
        let ring = Arc::new(plexus_flow::FlowRing::new(
            args.flow_ring_size,
            &format!("{}/{}", cluster.name, args.node_name),
        ));
        (cell, ring)
    });
    if let Some((cell, _)) = &flows {
        reconciler = reconciler.with_flows(crate::flows::SnapshotBuilder::new(
            cell.clone(),
            cluster.max,
        ));
    }
    let wireguard = match wireguard_key {
        None => None,
        Some(key) => {
            let published = Mutex::new(node);
            let (store, stepper) = (node_store.clone(), core.clone());
            // A rotated key: the Node again, with the new public key.
            let publish = Box::new(move |public: plexus_wireguard::uapi::Key| {
                let node = {
                    let mut n = published.lock().unwrap_or_else(|e| e.into_inner());
                    n.wireguard_pub_key = public.to_string();
                    n.clone()
                };
                match serde_json::to_vec(&node) {
                    Ok(bytes) => store.upsert(node.name.clone(), bytes),
                    Err(e) => tracing::warn!(error = %e, "encoding the node"),
                }
                stepper.step(Input::NodeUpsert(node));
            });
            let kernel: Option<Box<dyn WireguardKernel>> = real_kernel.then(|| {
                Box::new(KernelSetup::new(
                    args.routing == Routing::Tunnel,
                    args.node_ip,
                    underlay_mtu - crate::netcmd::WIREGUARD_OVERHEAD,
                )) as Box<dyn WireguardKernel>
            });
            tracing::info!(public_key = %key.public_base64(), socket = %args.wireguard_socket.display(), strict = args.encryption_strict_mode, "WireGuard on");
            let (handle, task) = Wireguard::start(WireguardConfig {
                device: Arc::new(UapiClient::new(args.wireguard_socket.clone())),
                datapath: datapath.clone(),
                key,
                key_file: key_file.clone(),
                socket: args.wireguard_socket.clone(),
                strict: args.encryption_strict_mode,
                publish,
                kernel,
                records_file: Some(args.state_dir.join(WIREGUARD_PEERS_FILE)),
            });
            std::thread::Builder::new()
                .name("wireguard-sync".into())
                .spawn(move || task.run())
                .context("start the WireGuard sync thread")?;
            reconciler = reconciler.with_wireguard(handle.clone());
            Some(handle)
        }
    };
    let reconciler = tokio::spawn(reconciler.run());

    let identities = Arc::new(IdentityAllocator::new(
        backend.clone(),
        cluster.clone(),
        args.node_name.clone(),
        leases.subscribe(),
    ));
    let objects = crate::labels::SharedObjects::default();
    let mtu = args
        .mtu
        .unwrap_or_else(|| default_mtu(args.routing, args.enable_wireguard, underlay_mtu));
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
            encrypt_key: if args.enable_wireguard {
                WIREGUARD_ENCRYPT_KEY
            } else {
                0
            },
            objects: objects.clone(),
            identity_change_grace: args.identity_change_grace_period,
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
    timing.limits = args.clustermesh_limits.clone();
    let mesh = ClusterMesh::spawn_with(
        connector,
        args.clustermesh_config.clone(),
        cluster.clone(),
        tx,
        timing,
        Duration::from_secs(1),
    );

    let trimmer = crate::shell::memory::Trimmer::new();
    let tasks = [
        tokio::spawn(sources::follow_local(
            backend.clone(),
            cluster.clone(),
            core.clone(),
        )),
        tokio::spawn(sources::follow_services(backend.clone(), core.clone())),
        tokio::spawn(sources::follow_policies(backend.clone(), core.clone())),
        tokio::spawn(sources::follow_objects(
            backend.clone(),
            objects,
            endpoints.clone(),
        )),
        tokio::spawn(sources::follow_remotes(rx, core.clone(), trimmer.clone())),
        tokio::spawn(trimmer.run(core.clone())),
        tokio::spawn(sources::follow_mesh_status(mesh.handle(), core.clone())),
        tokio::spawn(sources::service_grace(REMOTE_GRACE, core.clone())),
        reconciler,
    ];

    let (mesh_handle, core_handle) = (mesh.handle(), core.clone());
    let metrics = Arc::new(crate::metrics::Metrics::new(
        &cluster.name,
        move || crate::mesh_status(&mesh_handle, &core_handle),
        &kv,
        datapath.clone(),
        map_health.clone(),
        dns.clone(),
    ));
    let flow_task = flows.as_ref().map(|(cell, ring)| {
        tracing::info!(capacity = ring.capacity(), "flows on");
        let task = crate::flows::FlowTask {
            events: datapath.subscribe(),
            datapath: datapath.clone(),
            ring: ring.clone(),
            node_name: format!("{}/{}", cluster.name, args.node_name),
            counter: Some(Arc::new(metrics.flows().clone())),
            lost_poll: crate::flows::LOST_POLL,
        };
        tokio::spawn(task.run(cell.clone()))
    });
    let agent = Arc::new(Agent {
        cluster: cluster.clone(),
        node: args.node_name.clone(),
        node_ip: args.node_ip,
        pod_cidr: cidr.to_string(),
        routing: format!("{:?}", args.routing).to_lowercase(),
        datapath_kind: format!("{:?}", args.datapath).to_lowercase(),
        mesh: mesh.handle(),
        core,
        endpoints,
        datapath,
        wireguard,
        flows: flows.map(|(_, ring)| ring),
        dns,
        metrics,
        maps: map_health,
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
            Some(plexus_tls_api::start(addr, &files, app.clone(), &cluster.name).await?)
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
    if let Some(task) = flow_task {
        task.abort();
    }
    let _ = std::fs::remove_file(&args.api_socket);
    drop(mesh);
    drop(node_store);
    Ok(())
}
