//! A cluster's encryption mode, as its lab file and the CLI's contexts name it.
//!
//! The agents run it (`enable-wireguard`); the lab and the CLI's contexts record it, so that
//! `plexus clustermesh connect` can refuse to mesh an encrypted cluster with an unencrypted
//! one, and `plexus node join` can write agents that match their cluster.

use serde::{Deserialize, Serialize};

/// Encryption of pod traffic between a cluster's nodes. Clusters of one mesh must agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Pod traffic between nodes travels as it is (VXLAN or routed).
    #[default]
    None,
    /// WireGuard between every pair of nodes, across clusters too: a `plexus-wireguard` device
    /// per node, driven by its agent (`enable-wireguard`).
    Wireguard,
}

impl Encryption {
    /// Whether this is `none`, the default (left out of the files, which then read as before).
    pub fn is_none(&self) -> bool {
        *self == Self::None
    }

    /// The name in the files.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Wireguard => "wireguard",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_files() {
        for (e, name) in [
            (Encryption::None, "none"),
            (Encryption::Wireguard, "wireguard"),
        ] {
            assert_eq!(e.as_str(), name);
            assert_eq!(serde_norway::to_string(&e).unwrap().trim(), name);
            assert_eq!(serde_norway::from_str::<Encryption>(name).unwrap(), e);
        }
        let err = serde_norway::from_str::<Encryption>("ipsec").unwrap_err();
        assert!(err.to_string().contains("unknown variant `ipsec`"), "{err}");
    }
}
