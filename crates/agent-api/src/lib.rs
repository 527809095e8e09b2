//! The agent's API, as the agent, the CLI and the CNI plugin see it.
//!
//! The request and response types of every agent endpoint live here: the agent serializes
//! them and its clients deserialize them, so renaming a field breaks the build, not the output.
//! The agent serves HTTP/1.1 with JSON bodies on a unix socket (like Cilium's agent API),
//! fully privileged, and optionally on a TCP port with mutual TLS ([`tls`]) for CLIs and relays
//! on other hosts, where only the cluster's admin certificate may write; the apiserver serves
//! the same kind of API on TCP. [`Client`] is the one client of both: a
//! request per connection, a timeout on the whole exchange, errors that name the socket or
//! address and the path, and a typed method per agent endpoint.
//!
//! Paths served by the agent:
//! - `GET /v1/healthz`: `"ok"`;
//! - `GET /v1/status`: [`AgentStatus`], with the node's DNS proxy ([`DnsProxyStatus`]: port,
//!   redirected endpoints, learned names, counters) when it has one;
//! - `GET /v1/clustermesh`: [`ClusterMeshReport`], the remote clusters as this node sees them;
//! - `GET /v1/remote-nodes`: remote node names by cluster, from the merged view;
//! - `GET /v1/nodes`: [`NodeInfo`]s; `GET /v1/identities`: [`IdentityInfo`]s;
//! - `GET /v1/endpoints`: [`EndpointInfo`]s; `GET /v1/endpoints/<id | pod | namespace/pod>`:
//!   [`EndpointDetail`], with the endpoint's resolved policy;
//! - `GET /v1/services`: [`ServiceInfo`]s; `GET /v1/policy`: [`PolicyInfo`]s;
//! - `GET /v1/policy/trace?endpoint=..&direction=ingress|egress[&peer_identity=..]
//!   [&peer_ip=..]&proto=tcp|udp|sctp&dport=..` ([`TraceQuery`]): [`PolicyTrace`], why such a
//!   packet passes or is dropped at the local endpoint (verdict, enforcement, deciding rules);
//!   `not-found` for an endpoint the node does not have;
//! - `GET /v1/fqdn/cache`: [`FqdnCacheEntry`]s, what the node's DNS proxy learned for
//!   `toFQDNs` policy (name, address, identity, selectors, TTL left), sorted by name and
//!   address; error kind `unavailable` when the node has no DNS proxy (fake datapath);
//! - `GET /v1/bpf/ipcache`: [`IpcacheRow`]s; `GET /v1/bpf/lb`: [`LbRow`]s;
//! - `GET /v1/monitor[?type=drop|trace|translation|policy-verdict]`: [`MonitorMessage`]s, a
//!   JSON line each, streamed;
//! - `GET /v1/flows?request=<percent-encoded JSON plexus_flow::FlowRequest>`:
//!   [`plexus_flow::FlowResponse`]s, a JSON line each (Hubble's `GetFlowsResponse`): the
//!   node's recent flows that pass the request's filters, then, with `follow`, new ones as
//!   they come, and `lost_events` lines; a read, so also for read-only TCP clients (relays).
//!   Error kind `invalid` names the request's field at fault, `unavailable` when flows are off;
//! - `GET /v1/encryption`: [`EncryptionReport`], the node's WireGuard device and peers;
//! - `POST /v1/encryption/rotate-key` ([`Empty`] -> [`RotateKeyReport`]): a new WireGuard key,
//!   set on the device and published in the node's `Node` (error kind `invalid` when
//!   encryption is off);
//! - `POST /v1/ipam` ([`IpamRequest`] -> [`IpamResponse`]): an address for a pod;
//! - `PUT /v1/endpoint` ([`EndpointRequest`] -> [`EndpointResponse`]): register a configured pod;
//! - `GET /v1/endpoint/<container-id>` -> [`EndpointResponse`] (CNI CHECK);
//! - `DELETE /v1/endpoint/<container-id>` -> [`Empty`]: forget the pod and release its address
//!   (deleting an unknown endpoint succeeds, as CNI DEL must).
//!
//! Errors are non-2xx statuses with the JSON body [`ErrorBody`], `{"kind": "...", "message":
//! "..."}`; the client decodes them into [`ApiError::Server`] with its [`ErrorKind`].

pub mod client;
pub mod cni;
pub mod encryption;
pub mod error;
pub mod fqdn;
/// The monitor stream's events ([`plexus_monitor`]).
pub use plexus_monitor as monitor;
pub mod tls;
pub mod trace;
pub mod types;

pub use cni::{
    Empty, EndpointRequest, EndpointResponse, IpamRequest, IpamResponse, WorkloadSource,
};
pub use encryption::{
    EncryptionMode, EncryptionReport, EncryptionSummary, PeerReport, RotateKeyReport,
};
pub use error::{ErrorBody, ErrorKind};
pub use fqdn::{DnsProxyStats, DnsProxyStatus, FqdnCacheEntry};
pub use monitor::{MonitorEvent, MonitorFilter, MonitorMessage};
pub use trace::{
    PeerIdentitySource, PolicyRef, PolicyTrace, TraceDecision, TraceEndpoint, TraceQuery, TraceRule,
};
pub use types::{
    AgentStatus, ContainerPort, EndpointDetail, EndpointInfo, EndpointPolicy, IdentityInfo,
    IpcacheRow, LbRow, NodeInfo, PolicyEntry, PolicyInfo, RelayNode, ServiceInfo,
};

use serde::{Deserialize, Serialize};

pub use client::{
    ApiError, Client, DEFAULT_TIMEOUT, Endpoint, JsonLines, Method, StreamingBody, block_on,
};
pub use plexus_clustermesh::report::{MeshReport, RemoteClusterReport};

/// The remote clusters as one node's agent sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterMeshReport {
    /// The node.
    pub node: String,
    /// The local cluster.
    pub cluster: String,
    /// The remotes.
    #[serde(flatten)]
    pub mesh: MeshReport,
}
