//! ClusterMesh: how a cluster reads the state of the other clusters of its mesh.
//!
//! It holds the remote-cluster manager (one state machine per remote cluster that follows the
//! consumer protocol of the wire format: mTLS connect, heartbeat, cluster-config validation,
//! canary-gated list+watch, stale drain), one merged stream of events for the agent, and the
//! KVStoreMesh reflector that mirrors remote clusters into the local kvstore. It builds on
//! `plexus-kvstore` (WatchStore) and `plexus-model` (keys and values).
//!
//! Modules: [`access`] (the etcd users and roles of a cluster), [`config`] (the remote-cluster configuration directory, one file per remote),
//! [`validate`] (what is accepted from a remote: its cluster config, id, and entries),
//! [`failure`] (what went wrong with a remote, as a message and a kind),
//! [`remote`] (the consumer protocol for one remote as a state machine, without IO),
//! [`metrics`] (a Prometheus collector of the remotes' status), [`report`] (its JSON shape),
//! [`publish`] (the cluster config and heartbeat a cluster keeps published for its readers).

pub mod access;
pub mod config;
pub mod failure;
pub mod kvstoremesh;
pub mod mesh;
pub mod metrics;
pub mod publish;
pub mod remote;
pub mod remote_cluster;
pub mod report;
pub mod validate;
