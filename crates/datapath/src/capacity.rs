//! How many entries the datapath's sized maps hold, and what happens when one is full.
//!
//! The ipcache, the two load-balancing maps, conntrack and the policy map are sized from the
//! agent's configuration ([`MapSizes`], Cilium's `bpf-*-map-max` options); the defaults are
//! the sizes `bpf/lib/maps.h` declares. [`crate::EbpfDatapath::load_with`] sets them before the
//! maps are created.
//!
//! A map pinned by an earlier agent keeps the size it was created with: the kernel cannot
//! resize a map, and replacing it would mean a moment where the running programs see an empty
//! or half-copied map (connections losing their backends, pods their policy). So a pinned map
//! whose size differs from the configured one is kept and a warning is logged; the size takes
//! effect when the map is created again (a new pin directory, or the node's datapath
//! uninstalled). [`MapUsage::capacity`] always reports the size the kernel enforces.
//!
//! A write to a full map fails with the kernel's `E2BIG` (hash maps) or `ENOSPC` (LPM tries),
//! which the datapath reports as [`crate::DatapathError::MapFull`] naming the map; what the map
//! holds stays as it was. Conntrack is an LRU map: when full, the kernel evicts its least
//! recently used entries instead of refusing new ones.

use crate::object::{MAP_CT, MAP_IPCACHE, MAP_LB_BACKENDS, MAP_LB_SERVICES, MAP_POLICY};

/// The default of [`MapSizes::ipcache`] (`bpf-ipcache-map-max`).
pub const DEFAULT_IPCACHE_MAX: u32 = 512_000;
/// The default of [`MapSizes::lb`] (`bpf-lb-map-max`).
pub const DEFAULT_LB_MAX: u32 = 262_144;
/// The default of [`MapSizes::ct`] (`bpf-ct-global-max`).
pub const DEFAULT_CT_MAX: u32 = 262_144;
/// The default of [`MapSizes::policy`] (`bpf-policy-map-max`).
pub const DEFAULT_POLICY_MAX: u32 = 262_144;

/// The sizes (`max_entries`) of the configurable maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapSizes {
    /// `PLEXUS_IPCACHE`: prefixes of every endpoint, node and CIDR the node knows.
    pub ipcache: u32,
    /// `PLEXUS_LB_SERVICES` and `PLEXUS_LB_BACKENDS` each: a service takes one entry per
    /// frontend plus one per active backend slot; a backend one per (frontend, address).
    pub lb: u32,
    /// `PLEXUS_CT`: tracked connections (a load-balanced connection takes two entries).
    pub ct: u32,
    /// `PLEXUS_POLICY`: compiled policy entries of all local endpoints together.
    pub policy: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            ipcache: DEFAULT_IPCACHE_MAX,
            lb: DEFAULT_LB_MAX,
            ct: DEFAULT_CT_MAX,
            policy: DEFAULT_POLICY_MAX,
        }
    }
}

impl MapSizes {
    /// Each sized map with the size configured for it.
    pub fn per_map(&self) -> [(&'static str, u32); 5] {
        [
            (MAP_IPCACHE, self.ipcache),
            (MAP_LB_SERVICES, self.lb),
            (MAP_LB_BACKENDS, self.lb),
            (MAP_CT, self.ct),
            (MAP_POLICY, self.policy),
        ]
    }
}

/// How full one map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapUsage {
    /// The map's name (`PLEXUS_IPCACHE`, ...).
    pub map: &'static str,
    /// Entries it holds now.
    pub entries: u64,
    /// Entries it can hold (`max_entries` of the map the kernel has).
    pub capacity: u64,
}

/// Whether an errno from a map update means "the map is full".
pub(crate) fn is_full_errno(errno: i32) -> bool {
    errno == libc::E2BIG || errno == libc::ENOSPC
}
