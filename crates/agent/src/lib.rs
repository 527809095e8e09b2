//! The Plexus node agent as a library: the node's logic as a pure core, the IO shell around
//! it, the endpoint manager and the API. The `plexus-agent` binary only parses its options and
//! calls [`run`].
//!
//! - [`core`]: a pure fold of everything the node knows (its endpoints; its cluster's nodes, ip
//!   -> identity entries and identities; the remote clusters' events; services; policies) into
//!   the desired datapath state (ipcache, routes, load balancer, policy). No IO, no clock:
//!   tested with plain unit tests (`tests/` of this crate), no root, etcd or eBPF.
//! - [`shell`]: the tasks that feed the core from etcd and the remote-cluster manager, and the
//!   reconciler that applies its output to the datapath and the kernel as soon as it changes.
//! - [`endpoints`]: the node's pods (addresses, identities, datapath entries, published
//!   records, persisted state, relabelling); [`labels`]: their identity labels from the
//!   cluster's Namespace and Pod objects; [`netcmd`]: the few kernel settings the agent makes.
//! - [`flows`]: datapath events decoded into Hubble-shaped flows, kept in a bounded ring and
//!   served on `/v1/flows`.
//! - [`api`]: the API the CLI and the CNI plugin use, on a unix socket and on TCP with mutual
//!   TLS (`plexus_tls_api`); [`reports`]: what it lists; [`metrics`]: the Prometheus registry
//!   of `/metrics` (datapath counters, flow metrics, remote clusters, kvstore).
//! - [`daemon`]: the wiring of one node's agent; [`options`]: its flags and configuration file.

pub mod api;
pub mod core;
pub mod daemon;
pub mod endpoints;
pub mod flows;
pub mod labels;
pub mod metrics;
pub mod netcmd;
pub mod options;
pub mod reports;
pub mod shell;

use std::net::Ipv4Addr;
use std::sync::Arc;

use plexus_clustermesh::mesh::MeshHandle;
use plexus_datapath::Datapath;
use plexus_model::cluster::ClusterInfo;

pub use daemon::run;
pub use options::Options;

use crate::endpoints::Endpoints;
use crate::shell::CoreHandle;

/// What the API handlers reach.
pub struct Agent {
    cluster: ClusterInfo,
    node: String,
    node_ip: Ipv4Addr,
    pod_cidr: String,
    routing: String,
    datapath_kind: String,
    mesh: MeshHandle,
    core: CoreHandle,
    endpoints: Arc<Endpoints>,
    datapath: Arc<dyn Datapath>,
    /// The node's WireGuard, when `enable-wireguard` is on.
    wireguard: Option<Arc<shell::wireguard::Wireguard>>,
    /// The node's flows, when `enable-flows` is on.
    flows: Option<Arc<plexus_flow::FlowRing>>,
    /// The node's DNS proxy (eBPF datapath only).
    dns: Option<Arc<shell::dns::DnsShell>>,
    /// What `/metrics` serves.
    metrics: Arc<metrics::Metrics>,
    /// The writes full datapath maps refused (warnings of `/v1/status`).
    maps: Arc<shell::maps::MapHealth>,
}

/// The remote clusters' status with the core's refusals added: what the manager's stores
/// refused and what the guard refused (addresses a remote does not own) count together.
pub(crate) fn mesh_status(
    mesh: &MeshHandle,
    core: &shell::CoreHandle,
) -> plexus_clustermesh::mesh::MeshStatus {
    let mut status = mesh.status();
    status.add_refused(&core.read(core::NodeCore::refused));
    status
}

impl Agent {
    /// The remote clusters' status, with the refusals of the core's guard.
    pub(crate) fn mesh_status(&self) -> plexus_clustermesh::mesh::MeshStatus {
        mesh_status(&self.mesh, &self.core)
    }

    /// The flow metrics, for the flow pipeline to count into.
    pub fn flow_metrics(&self) -> &metrics::FlowMetrics {
        self.metrics.flows()
    }
}
