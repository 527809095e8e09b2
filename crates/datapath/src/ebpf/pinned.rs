//! Read-only access to a running datapath's pinned ipcache map, for tools outside the agent.
//!
//! [`PinnedIpcache`] opens `PLEXUS_IPCACHE` from the agent's pin directory and answers lookups
//! and counts without going through the agent: the scale harness (`plexus-lab`'s `scale`
//! bench) polls it for the entry an etcd write must produce, as the programs would see it. It
//! never writes; the agent owns the map. A lookup is the programs' own longest-prefix match.

use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{
    MapData,
    lpm_trie::{Key, LpmTrie},
};

use super::{map_err, missing};
use crate::{DatapathError, IpcacheValue, Prefix, abi, abi::IpcacheBytes, object::MAP_IPCACHE};

/// A second handle of the pinned ipcache map.
pub struct PinnedIpcache {
    map: LpmTrie<MapData, [u8; 4], IpcacheBytes>,
}

impl std::fmt::Debug for PinnedIpcache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedIpcache").finish_non_exhaustive()
    }
}

impl PinnedIpcache {
    /// Opens `<pin_dir>/PLEXUS_IPCACHE` (the agent's `<state dir>/bpffs`).
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let data = MapData::from_pin(pin_dir.join(MAP_IPCACHE)).map_err(map_err(MAP_IPCACHE))?;
        let map = aya::maps::Map::LpmTrie(data)
            .try_into()
            .map_err(map_err(MAP_IPCACHE))?;
        Ok(Self { map })
    }

    /// The entry the programs find for `addr` (longest prefix match), if any.
    pub fn lookup(&self, addr: Ipv4Addr) -> Result<Option<IpcacheValue>, DatapathError> {
        let key = Key::new(32, addr.octets());
        match self.map.get(&key, 0) {
            Ok(v) => Ok(Some(abi::decode_ipcache(&v))),
            Err(e) if missing::is_missing_entry(&e) => Ok(None),
            Err(e) => Err(map_err(MAP_IPCACHE)(e)),
        }
    }

    /// Every entry (walks the whole map: for counts, not for hot loops).
    pub fn entries(&self) -> Result<Vec<(Prefix, IpcacheValue)>, DatapathError> {
        let mut all = Vec::new();
        for item in self.map.iter() {
            let (key, value) = item.map_err(map_err(MAP_IPCACHE))?;
            let prefix = Prefix {
                addr: Ipv4Addr::from(key.data()),
                len: u8::try_from(key.prefix_len()).unwrap_or(32),
            };
            all.push((prefix, abi::decode_ipcache(&value)));
        }
        Ok(all)
    }
}
