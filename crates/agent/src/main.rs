//! `plexus-agent`: the daemon of one node. It composes the library crates: today the
//! remote-cluster manager and its merged view, and the API on a unix socket the CLI reads.
//!
//! With `--etcd-endpoints` (the node's own cluster etcd), remote configurations that point at
//! that same etcd (a KVStoreMesh cache) reuse its connection: the agent then holds exactly one
//! etcd connection however many clusters it follows.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clap::Parser;
use plexus_agent_api::{ClusterMeshReport, MeshReport};
use plexus_clustermesh::mesh::{ClusterMesh, MeshHandle};
use plexus_clustermesh::remote_cluster::{Connector, DriverTiming, EtcdConnector, SharedConnector};
use plexus_clustermesh::view::MergedView;
use plexus_kvstore::{EtcdBackend, EtcdConfig, KvBackend, KvMetrics, MeteredBackend, TlsFiles};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};

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
    /// The cluster's etcd (comma-separated URLs).
    #[arg(long, value_delimiter = ',')]
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
    /// The API socket.
    #[arg(long)]
    api_socket: PathBuf,
    /// Also serve `/metrics` (Prometheus) on this TCP address.
    #[arg(long)]
    prometheus_listen: Option<std::net::SocketAddr>,
}

struct Agent {
    kv: Option<KvMetrics>,
    cluster: ClusterInfo,
    node: String,
    mesh: MeshHandle,
    view: Arc<Mutex<MergedView>>,
}

async fn connect_local(args: &Args) -> Result<Option<(Arc<dyn KvBackend>, KvMetrics)>> {
    if args.etcd_endpoints.is_empty() {
        return Ok(None);
    }
    let mut config = EtcdConfig::new(args.etcd_endpoints.clone());
    if let (Some(ca), Some(cert), Some(key)) = (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) {
        config = config.with_tls(TlsFiles {
            ca_file: ca.clone(),
            cert_file: cert.clone(),
            key_file: key.clone(),
        });
    }
    let backend = EtcdBackend::connect(config)
        .await
        .with_context(|| format!("connect to the cluster's etcd {:?}", args.etcd_endpoints))?;
    let (metered, metrics) = MeteredBackend::new(Arc::new(backend));
    Ok(Some((Arc::new(metered), metrics)))
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
    let args = Args::parse();
    let max = MaxConnectedClusters::from_u32(args.max_connected_clusters)
        .context("--max-connected-clusters")?;
    let cluster = ClusterInfo::new(args.cluster_name.clone(), args.cluster_id, max)
        .context("--cluster-name/--cluster-id")?;

    let (connector, kv): (Arc<dyn Connector>, _) = match connect_local(&args).await? {
        Some((local, kv)) => (
            Arc::new(SharedConnector::new(args.etcd_endpoints.clone(), local)),
            Some(kv),
        ),
        None => (Arc::new(EtcdConnector), None),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let mesh = ClusterMesh::spawn_with(
        connector,
        args.clustermesh_config.clone(),
        cluster.clone(),
        tx,
        DriverTiming::default(),
        Duration::from_secs(1),
    );
    let view = Arc::new(Mutex::new(MergedView::new()));
    let consumer = {
        let view = view.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                view.lock().unwrap_or_else(|e| e.into_inner()).apply(&event);
            }
        })
    };
    let agent = Arc::new(Agent {
        kv,
        cluster,
        node: args.node_name.clone(),
        mesh: mesh.handle(),
        view,
    });

    if let Some(dir) = args.api_socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&args.api_socket);
    let listener = tokio::net::UnixListener::bind(&args.api_socket)
        .with_context(|| format!("listen on {}", args.api_socket.display()))?;
    let app = Router::new()
        .route("/v1/healthz", get(|| async { axum::Json("ok") }))
        .route("/v1/clustermesh", get(clustermesh))
        .route("/v1/remote-nodes", get(remote_nodes))
        .route("/metrics", get(metrics))
        .with_state(agent.clone());
    if let Some(addr) = args.prometheus_listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listen on {addr}"))?;
        let app = Router::new()
            .route("/metrics", get(metrics))
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
    consumer.abort();
    let _ = std::fs::remove_file(&args.api_socket);
    drop(mesh);
    Ok(())
}

async fn clustermesh(State(agent): State<Arc<Agent>>) -> axum::Json<ClusterMeshReport> {
    let status = agent.mesh.status();
    axum::Json(ClusterMeshReport {
        node: agent.node.clone(),
        cluster: agent.cluster.name.clone(),
        mesh: MeshReport::from(&status),
    })
}

/// Remote nodes by cluster, from the merged view.
async fn remote_nodes(
    State(agent): State<Arc<Agent>>,
) -> axum::Json<std::collections::BTreeMap<String, Vec<String>>> {
    let view = agent.view.lock().unwrap_or_else(|e| e.into_inner());
    axum::Json(
        view.remotes()
            .iter()
            .map(|(cluster, r)| (cluster.clone(), r.nodes.keys().cloned().collect()))
            .collect(),
    )
}

/// Prometheus text: the remote clusters and the kvstore operations of the local connection.
async fn metrics(State(agent): State<Arc<Agent>>) -> String {
    let mut out = plexus_clustermesh::metrics::render(&agent.cluster.name, &agent.mesh.status());
    if let Some(kv) = &agent.kv {
        out.push_str(&kv.render("local"));
    }
    out
}
