//! The Plexus apiserver of one cluster, as a library the `plexus-apiserver` binary (and tests)
//! run.
//!
//! [`server`] wires the parts together: the cluster's etcd ([`local_etcd`] when it starts its
//! own), the access rules, the cluster config and heartbeat, identity GC, the service
//! controller ([`services`]), KVStoreMesh, the plain HTTP endpoints of probes and metrics
//! (`http`) and the API on TCP with mutual TLS ([`api`]) with the flow relay ([`relay`]) and
//! the web view ([`ui`]).

pub mod api;
mod http;
pub mod local_etcd;
pub mod relay;
pub mod server;
pub mod services;
pub mod ui;

pub use relay::{Relay, RelayConfig};
pub use server::{ApiListen, ApiServer, ApiServerConfig, ApiServerStatus, EtcdSource};
