//! The Plexus apiserver of one cluster, as a library the `plexus-apiserver` binary (and tests)
//! run.
//!
//! [`server`] wires the parts together: the cluster's etcd ([`local_etcd`] when it starts its
//! own), the access rules, the cluster config and heartbeat, identity GC, the service controller ([`services`]), KVStoreMesh, and the
//! HTTP endpoints of [`http`].

mod http;
pub mod local_etcd;
pub mod server;
pub mod services;

pub use server::{ApiServer, ApiServerConfig, ApiServerStatus, EtcdSource};
