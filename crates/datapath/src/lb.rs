//! Service load balancing: the frontends (service address, port, protocol) and the backends the
//! datapath translates them to.
//!
//! The agent hands the datapath one [`LbService`] per frontend: the *active* backends, among
//! which each new connection picks one, and the *inactive* ones, which take no new connection
//! but keep serving the connections already established to them (a cluster that became
//! unreachable, a standby side of an affinity). A backend in neither list is forgotten.
//!
//! The eBPF datapath picks an active backend at random per connection and keeps it in its
//! conntrack map (see `bpf/README.md`); the maps hold one id per frontend and one per
//! (frontend, backend), which survive an agent restart.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use crate::DatapathError;

/// Most backends one frontend may have (active and inactive together).
pub const MAX_BACKENDS_PER_SERVICE: usize = 65_535;

/// The transport protocol of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl L4Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// The protocol of an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for L4Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

impl FromStr for L4Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Without allocating: parsed once per backend of every service.
        if s.eq_ignore_ascii_case("TCP") {
            Ok(Self::Tcp)
        } else if s.eq_ignore_ascii_case("UDP") {
            Ok(Self::Udp)
        } else {
            Err(format!(
                "unsupported protocol {:?} (TCP or UDP)",
                s.to_ascii_uppercase()
            ))
        }
    }
}

/// What a pod connects to: a service address, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// The service address (ClusterIP).
    pub addr: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// The protocol.
    pub proto: L4Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// One frontend and its backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LbService {
    /// The frontend.
    pub frontend: Frontend,
    /// Backends that take new connections, in slot order.
    pub active: Vec<SocketAddrV4>,
    /// Backends that keep their established connections but take no new one.
    pub inactive: Vec<SocketAddrV4>,
}

impl LbService {
    /// Checks what both datapaths refuse: port 0, a backend listed twice, too many backends.
    pub fn validate(&self) -> Result<(), DatapathError> {
        let invalid = |reason: String| DatapathError::Invalid {
            what: format!("service {}", self.frontend),
            reason,
        };
        if self.frontend.port == 0 {
            return Err(invalid("port 0".into()));
        }
        let total = self.active.len() + self.inactive.len();
        if total > MAX_BACKENDS_PER_SERVICE {
            return Err(invalid(format!(
                "{total} backends, at most {MAX_BACKENDS_PER_SERVICE}"
            )));
        }
        // Sorted, duplicates are neighbours: cheaper than a hash set for 10,000 backends.
        let mut sorted: Vec<u64> = Vec::with_capacity(total);
        for b in self.active.iter().chain(&self.inactive) {
            if b.port() == 0 {
                return Err(invalid(format!("backend {b} has port 0")));
            }
            sorted.push(u64::from(u32::from(*b.ip())) << 16 | u64::from(b.port()));
        }
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            let b = SocketAddrV4::new(Ipv4Addr::from((w[0] >> 16) as u32), w[0] as u16);
            return Err(invalid(format!("backend {b} listed twice")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(active: &[&str], inactive: &[&str]) -> LbService {
        LbService {
            frontend: Frontend {
                addr: Ipv4Addr::new(10, 11, 0, 5),
                port: 80,
                proto: L4Proto::Tcp,
            },
            active: active.iter().map(|s| s.parse().unwrap()).collect(),
            inactive: inactive.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn services_are_validated() {
        assert!(svc(&["10.0.0.1:80"], &["10.0.0.2:80"]).validate().is_ok());
        let e = svc(&["10.0.0.1:80"], &["10.0.0.1:80"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.11.0.5:80/TCP") && e.contains("listed twice"),
            "{e}"
        );
        assert!(svc(&["10.0.0.1:0"], &[]).validate().is_err());
        let mut s = svc(&[], &[]);
        s.frontend.port = 0;
        assert!(s.validate().is_err());
        assert_eq!("udp".parse::<L4Proto>().unwrap(), L4Proto::Udp);
        assert!("sctp".parse::<L4Proto>().is_err());
    }
}
