//! Services and load balancing, including global services across clusters.
//!
//! Today: [`service`] (the Kubernetes-shaped Service object of kvstore mode and the global
//! service annotations, new and legacy names), [`endpoint`] (the endpoint records agents
//! publish) and [`cluster_service`] (a service's backends from endpoints by selector, and the
//! ClusterService a global, shared service publishes for the other clusters) and [`select`]
//! (which backends, local and remote, take new connections: global, shared, affinity and
//! reachability). The datapath tables come with the services issue.

pub mod cluster_service;
pub mod endpoint;
pub mod select;
pub mod service;

/// The kvstore prefix of Service objects: `plexus/objects/v1/services/<namespace>/<name>`.
pub const SERVICES_PREFIX: &str = "plexus/objects/v1/services/";
/// The kvstore prefix of endpoint records: `plexus/endpoints/v1/<namespace>/<pod>`.
pub const ENDPOINTS_PREFIX: &str = "plexus/endpoints/v1/";
/// The kvstore prefix of computed backends: `plexus/state/backends/v1/<namespace>/<name>`.
pub const BACKENDS_PREFIX: &str = "plexus/state/backends/v1/";
