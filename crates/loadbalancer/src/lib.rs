//! Services and load balancing, including global services across clusters.
//!
//! This crate will compute the backends of each service from local endpoints and from the
//! ClusterService entries of remote clusters, apply the global/shared/affinity semantics and
//! backend reachability, and hand service and backend tables to the datapath.
