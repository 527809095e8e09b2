//! The lab: a whole mesh of clusters built out of network namespaces on one Linux host.
//!
//! This crate will create the underlay namespace, one namespace per node, an etcd, an apiserver
//! and agents per cluster, and pods through the real CNI plugin, and remove all of it again.
