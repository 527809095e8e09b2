//! Address management: a pod CIDR per node, an address per pod.
//!
//! - [`claim_node_cidr`] carves the cluster's pod CIDR into node CIDRs (a /24 each by
//!   default) and claims one for a node in the cluster's kvstore, under
//!   `plexus/ipam/v1/nodes/<cidr>` with a create-only transaction, so two nodes never get the
//!   same one; a node asking again gets the one it holds. Claims are not leased: a node keeps
//!   its CIDR across restarts.
//! - [`PodIpam`] hands out the addresses of one node CIDR: the first is the pods' gateway, the
//!   network and broadcast addresses are never used, and an owner (a container id) asking again
//!   gets the same address. It is a plain value the agent persists with its endpoints.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use plexus_kvstore::KvBackend;

/// The kvstore prefix of node CIDR claims.
pub const NODE_CIDRS_PREFIX: &str = "plexus/ipam/v1/nodes/";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A CIDR that cannot be used.
    #[error("invalid CIDR {cidr:?}: {reason}")]
    InvalidCidr {
        /// The text.
        cidr: String,
        /// Why.
        reason: String,
    },
    /// Every node CIDR is taken.
    #[error("pod CIDR {cidr} is exhausted: every /{size} is claimed by another node")]
    ClusterExhausted {
        /// The cluster's pod CIDR.
        cidr: String,
        /// Node CIDR size.
        size: u8,
    },
    /// Every address of the node CIDR is in use.
    #[error("node CIDR {0} has no free address")]
    NodeExhausted(String),
    /// The kvstore failed.
    #[error("claiming a node CIDR: {0}")]
    Kvstore(#[from] plexus_kvstore::Error),
}

/// An IPv4 CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr4 {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl std::fmt::Display for Cidr4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Cidr4 {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Self, IpamError> {
        let bad = |reason: &str| IpamError::InvalidCidr {
            cidr: s.to_string(),
            reason: reason.to_string(),
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| bad("expected a.b.c.d/len"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let len: u8 = len.parse().map_err(|_| bad("bad prefix length"))?;
        if len > 32 {
            return Err(bad("prefix length above 32"));
        }
        let cidr = Self { addr, len };
        if cidr.network() != addr {
            return Err(bad("host bits are set"));
        }
        Ok(cidr)
    }
}

impl Cidr4 {
    fn mask(self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        }
    }

    /// The network address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// Whether `ip` is inside.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Number of addresses.
    pub fn size(self) -> u64 {
        1u64 << (32 - self.len)
    }

    /// The `index`-th address.
    pub fn nth(self, index: u64) -> Option<Ipv4Addr> {
        (index < self.size()).then(|| Ipv4Addr::from(u32::from(self.network()) + index as u32))
    }

    /// The sub-CIDRs of length `len`, in order.
    pub fn subnets(self, len: u8) -> impl Iterator<Item = Cidr4> {
        let count = if len >= self.len && len <= 32 {
            1u64 << (len - self.len)
        } else {
            0
        };
        let base = u32::from(self.network());
        let step = if len == 32 { 1u64 } else { 1u64 << (32 - len) };
        (0..count).map(move |i| Cidr4 {
            addr: Ipv4Addr::from(base + (i * step) as u32),
            len,
        })
    }
}

/// Claims a node CIDR of length `size` from `cluster_cidr` for `node` (or returns the one it
/// holds).
pub async fn claim_node_cidr(
    kv: &dyn KvBackend,
    cluster_cidr: Cidr4,
    size: u8,
    node: &str,
) -> Result<Cidr4, IpamError> {
    if size < cluster_cidr.len || size > 30 {
        return Err(IpamError::InvalidCidr {
            cidr: format!("/{size}"),
            reason: format!(
                "node CIDRs must lie inside {cluster_cidr} and hold pods (/{}../30)",
                cluster_cidr.len
            ),
        });
    }
    let key = |c: Cidr4| format!("{NODE_CIDRS_PREFIX}{}-{}", c.addr, c.len);
    let held = kv.list_prefix(NODE_CIDRS_PREFIX).await?;
    let mut taken = std::collections::BTreeSet::new();
    for kv in &held.kvs {
        if kv.value == node.as_bytes() {
            for c in cluster_cidr.subnets(size) {
                if kv.key == key(c) {
                    return Ok(c);
                }
            }
        }
        taken.insert(kv.key.clone());
    }
    for c in cluster_cidr.subnets(size) {
        if taken.contains(&key(c)) {
            continue;
        }
        if kv
            .create_only(&key(c), node.as_bytes().to_vec(), None)
            .await?
        {
            return Ok(c);
        }
    }
    Err(IpamError::ClusterExhausted {
        cidr: cluster_cidr.to_string(),
        size,
    })
}

/// The addresses of one node CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIpam {
    cidr: Cidr4,
    owners: BTreeMap<Ipv4Addr, String>,
}

impl PodIpam {
    /// An allocator for `cidr` with nothing allocated.
    pub fn new(cidr: Cidr4) -> Self {
        Self {
            cidr,
            owners: BTreeMap::new(),
        }
    }

    /// The pods' gateway: the first address after the network address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.cidr.nth(1).unwrap_or(self.cidr.addr)
    }

    /// The CIDR.
    pub fn cidr(&self) -> Cidr4 {
        self.cidr
    }

    /// An address for `owner` (the same one if it has one).
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some((ip, _)) = self.owners.iter().find(|(_, o)| *o == owner) {
            return Ok(*ip);
        }
        // Skip network, gateway and broadcast.
        for i in 2..self.cidr.size().saturating_sub(1) {
            if let Some(ip) = self.cidr.nth(i)
                && !self.owners.contains_key(&ip)
            {
                self.owners.insert(ip, owner.to_string());
                return Ok(ip);
            }
        }
        Err(IpamError::NodeExhausted(self.cidr.to_string()))
    }

    /// Marks `ip` as `owner`'s (restoring state after a restart).
    pub fn restore(&mut self, ip: Ipv4Addr, owner: &str) {
        if self.cidr.contains(ip) {
            self.owners.insert(ip, owner.to_string());
        }
    }

    /// Releases `owner`'s address; returns it.
    pub fn release(&mut self, owner: &str) -> Option<Ipv4Addr> {
        let ip = self
            .owners
            .iter()
            .find(|(_, o)| *o == owner)
            .map(|(ip, _)| *ip)?;
        self.owners.remove(&ip);
        Some(ip)
    }

    /// Addresses in use.
    pub fn used(&self) -> usize {
        self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_kvstore::MemoryBackend;

    #[test]
    fn pod_addresses_skip_gateway_and_are_stable_per_owner() {
        let mut ipam = PodIpam::new("10.10.3.0/30".parse().unwrap());
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 10, 3, 1));
        let a = ipam.allocate("c1").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 10, 3, 2));
        assert_eq!(ipam.allocate("c1").unwrap(), a);
        assert!(matches!(
            ipam.allocate("c2"),
            Err(IpamError::NodeExhausted(_))
        ));
        assert_eq!(ipam.release("c1"), Some(a));
        assert_eq!(ipam.allocate("c2").unwrap(), a);
        assert!("10.10.3.1/24".parse::<Cidr4>().is_err(), "host bits");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn node_cidrs_are_claimed_once_per_node() {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let kv = MemoryBackend::new();
            let cluster: Cidr4 = "10.10.0.0/23".parse().unwrap();
            let a = claim_node_cidr(&kv, cluster, 24, "n1").await.unwrap();
            let b = claim_node_cidr(&kv, cluster, 24, "n2").await.unwrap();
            assert_eq!(
                (a.to_string().as_str(), b.to_string().as_str()),
                ("10.10.0.0/24", "10.10.1.0/24")
            );
            assert_eq!(
                claim_node_cidr(&kv, cluster, 24, "n1").await.unwrap(),
                a,
                "held one returned"
            );
            assert!(matches!(
                claim_node_cidr(&kv, cluster, 24, "n3").await,
                Err(IpamError::ClusterExhausted { .. })
            ));
        })
        .await
        .unwrap();
    }
}
