//! The Plexus wire model: what a cluster publishes in its kvstore and what it reads from peers.
//!
//! Keys and JSON values are Cilium ClusterMesh's (v1.16 and later), so a Plexus cluster and a
//! Cilium cluster can read each other's state. This crate promises:
//! - serde types that produce and accept exactly Cilium's JSON ([`node::Node`],
//!   [`ipcache::IpIdentityPair`], [`service::ClusterService`], [`config::CiliumClusterConfig`]);
//! - key builders and parsers for every prefix ([`keys`]), KVStoreMesh's cache included;
//! - validation of names, cluster ids, identity ranges and of every entry received from a remote
//!   cluster, with errors ([`ModelError`]) that name the key and field at fault.
//!
//! It does no IO.

pub mod apply;
pub mod cidr;
pub mod cluster;
pub mod config;
mod error;
pub mod identity;
pub mod ipcache;
pub mod keys;
pub mod labels;
pub mod node;
pub mod objects;
pub mod service;
pub mod time;

pub use error::ModelError;
