//! [`FakeLookup`]: a [`FlowLookup`] of plain maps, for tests of the decoder and the pipeline.
//!
//! Exact matches only (no longest-prefix match, no policy evaluation): a test states what the
//! agent would know about each address, identity, service and denial.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use plexus_flow::{Policy, Service, TrafficDirection};

use super::decode::{Denial, EndpointMeta, FlowLookup, IdentityMeta, IpMeta, PolicyQuery};

/// A lookup that answers from maps a test fills.
#[derive(Clone, Debug, Default)]
pub struct FakeLookup {
    /// Local endpoints by id.
    pub endpoints: HashMap<u16, EndpointMeta>,
    /// Addresses (exact).
    pub ips: HashMap<Ipv4Addr, IpMeta>,
    /// Identities.
    pub identities: HashMap<u32, IdentityMeta>,
    /// Service frontends by (address, IP protocol number).
    pub services: HashMap<(SocketAddrV4, u8), Service>,
    /// Backend addresses' clusters.
    pub backends: HashMap<Ipv4Addr, String>,
    /// Denials by (endpoint, direction, peer identity, port).
    pub denials: HashMap<(u16, TrafficDirection, u32, u16), Denial>,
    /// Allowing policies by (endpoint, direction, peer identity, port).
    pub allows: HashMap<(u16, TrafficDirection, u32, u16), Vec<Policy>>,
}

fn key(q: &PolicyQuery) -> (u16, TrafficDirection, u32, u16) {
    (q.endpoint, q.direction, q.peer_identity, q.port)
}

impl FlowLookup for FakeLookup {
    fn endpoint(&self, id: u16) -> Option<EndpointMeta> {
        self.endpoints.get(&id).cloned()
    }

    fn ip(&self, ip: Ipv4Addr) -> Option<IpMeta> {
        self.ips.get(&ip).cloned()
    }

    fn identity(&self, id: u32) -> Option<IdentityMeta> {
        self.identities.get(&id).cloned()
    }

    fn service(&self, frontend: SocketAddrV4, protocol: u8) -> Option<Service> {
        self.services.get(&(frontend, protocol)).cloned()
    }

    fn backend_cluster(&self, backend: Ipv4Addr) -> Option<String> {
        self.backends.get(&backend).cloned()
    }

    fn denied_by(&self, query: &PolicyQuery) -> Option<Denial> {
        self.denials.get(&key(query)).cloned()
    }

    fn allowed_by(&self, query: &PolicyQuery) -> Vec<Policy> {
        self.allows.get(&key(query)).cloned().unwrap_or_default()
    }
}
