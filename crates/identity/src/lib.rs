//! Security identities in kvstore mode: labels -> numeric id, shared by every node of a cluster.
//!
//! The layout is Cilium's kvstore allocator (`cilium/state/identities/v1/`):
//! - master key `id/<id>` -> the label string, without a lease: the identity itself;
//! - value key `value/<labels>/<node>` -> the decimal id, under the node's lease: "this node
//!   uses the identity".
//!
//! The crate promises, for any number of agents racing on one etcd, with no locks:
//! - the same labels always get the same id while any node references it, and no id ever
//!   serves two label sets (both enforced by etcd transactions, see [`allocator`]);
//! - ids lie inside the cluster's range and are never reserved (< 256) or node-local;
//! - ids that no node references any more are deleted by [`gc`] after a grace period, never
//!   while a node still references them.

pub mod allocator;
pub mod gc;

pub use allocator::{AllocatorError, IdentityAllocator};
pub use gc::{GcPlanner, IdentityGc};
