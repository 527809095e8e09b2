//! Plexus cluster DNS: the `kube-dns` of a Plexus cluster.
//!
//! It answers `A` queries for `<service>.<namespace>.svc.<domain>` (domain `cluster.local` by
//! default) with the service's ClusterIP, from the Service objects in the cluster's kvstore
//! (`plexus/objects/v1/services/<namespace>/<name>`). It is authoritative for the cluster
//! domain only and refuses every other name: there is no upstream to forward to.
//!
//! The pieces, each usable alone:
//! - [`records`]: the name table ([`ServiceRecords`]), pure and synchronous;
//! - [`watch`]: feeds the table from any [`plexus_kvstore::KvBackend`] and marks it synced;
//! - [`handler`]: the DNS decision ([`ClusterDns`]) as a hickory request handler;
//! - [`server`]: UDP and TCP listeners ([`DnsServer`]);
//! - [`zone`]: an authoritative server for one zone read from a zone file ([`ZoneDns`]), the
//!   lab's stand-in for DNS outside the cluster.
//!
//! The `plexus-dns` binary wires them to the cluster's etcd, or with `--zone-file` serves a
//! zone file instead.

pub mod handler;
pub mod records;
pub mod server;
pub mod watch;
pub mod zone;

pub use handler::{ClusterDns, DEFAULT_TTL};
pub use records::{Answer, DEFAULT_DOMAIN, DomainError, ServiceRecords};
pub use server::{DnsServer, ServeError};
pub use watch::{SharedRecords, follow_services, spawn_follow_services};
pub use zone::{Zone, ZoneDns, ZoneError};
