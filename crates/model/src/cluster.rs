//! Cluster names, ids and the mesh-wide maximum number of connected clusters.

use crate::ModelError;

/// The largest number of clusters a mesh supports; every cluster of a mesh uses the same one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MaxConnectedClusters {
    /// 255 clusters, identities shifted by 16 bits (the default).
    #[default]
    Max255,
    /// 511 clusters, identities shifted by 15 bits.
    Max511,
}

impl MaxConnectedClusters {
    /// Parses 255 or 511.
    pub fn from_u32(value: u32) -> Result<Self, ModelError> {
        match value {
            255 => Ok(Self::Max255),
            511 => Ok(Self::Max511),
            other => Err(ModelError::Setting {
                what: "maxConnectedClusters",
                reason: format!("{other} is not supported (255 or 511)"),
            }),
        }
    }

    /// 255 or 511.
    pub fn as_u32(self) -> u32 {
        match self {
            Self::Max255 => 255,
            Self::Max511 => 511,
        }
    }

    /// The largest valid cluster id.
    pub fn max_cluster_id(self) -> u32 {
        self.as_u32()
    }

    /// How far a cluster id is shifted to form the high bits of its identities.
    pub fn identity_shift(self) -> u32 {
        match self {
            Self::Max255 => 16,
            Self::Max511 => 15,
        }
    }
}

/// Longest allowed cluster name.
pub const MAX_CLUSTER_NAME_LEN: usize = 32;

/// Checks a cluster name: at most 32 characters of `^([a-z0-9][-a-z0-9]*)?[a-z0-9]$`, and not
/// `default` when the cluster is meshed.
pub fn validate_cluster_name(name: &str, meshed: bool) -> Result<(), ModelError> {
    let err = |reason: &str| ModelError::ClusterName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(err("must not be empty"));
    }
    if name.len() > MAX_CLUSTER_NAME_LEN {
        return Err(err("must be at most 32 characters"));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !name.chars().all(|c| ok_char(c) || c == '-') {
        return Err(err(
            "must match ^([a-z0-9][-a-z0-9]*)?[a-z0-9]$ (lower-case letters, digits, '-')",
        ));
    }
    if !name.starts_with(ok_char) || !name.ends_with(ok_char) {
        return Err(err(
            "must match ^([a-z0-9][-a-z0-9]*)?[a-z0-9]$ (start and end with a letter or digit)",
        ));
    }
    if meshed && name == "default" {
        return Err(err("\"default\" cannot be used by a meshed cluster"));
    }
    Ok(())
}

/// Checks a cluster id of a meshed cluster: 1..=max (0 means "not meshed").
pub fn validate_cluster_id(id: u32, max: MaxConnectedClusters) -> Result<(), ModelError> {
    if id == 0 || id > max.max_cluster_id() {
        return Err(ModelError::ClusterId {
            id,
            reason: format!(
                "must be between 1 and {} (maxConnectedClusters {})",
                max.max_cluster_id(),
                max.as_u32()
            ),
        });
    }
    Ok(())
}

/// A meshed cluster's identity: its name, id and the mesh's maximum.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterInfo {
    /// Cluster name.
    pub name: String,
    /// Cluster id.
    pub id: u32,
    /// The mesh's maximum number of clusters.
    pub max: MaxConnectedClusters,
}

impl ClusterInfo {
    /// Validates and builds a cluster description.
    pub fn new(
        name: impl Into<String>,
        id: u32,
        max: MaxConnectedClusters,
    ) -> Result<Self, ModelError> {
        let name = name.into();
        validate_cluster_name(&name, true)?;
        validate_cluster_id(id, max)?;
        Ok(Self { name, id, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["cluster1", "a", "c-1", "0", &"a".repeat(32)] {
            validate_cluster_name(ok, true).unwrap();
        }
        for (bad, why) in [
            ("Cluster1", "lower-case"),
            ("-a", "start and end"),
            ("a-", "start and end"),
            ("a_b", "lower-case"),
            ("", "empty"),
            (&"a".repeat(33), "32 characters"),
            ("default", "meshed"),
        ] {
            let err = validate_cluster_name(bad, true).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
        validate_cluster_name("default", false).unwrap();
    }

    #[test]
    fn ids() {
        validate_cluster_id(1, MaxConnectedClusters::Max255).unwrap();
        validate_cluster_id(255, MaxConnectedClusters::Max255).unwrap();
        validate_cluster_id(511, MaxConnectedClusters::Max511).unwrap();
        assert!(validate_cluster_id(0, MaxConnectedClusters::Max255).is_err());
        let err = validate_cluster_id(256, MaxConnectedClusters::Max255).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid cluster id 256: must be between 1 and 255 (maxConnectedClusters 255)"
        );
        assert!(MaxConnectedClusters::from_u32(300).is_err());
        assert!(ClusterInfo::new("Bad", 1, MaxConnectedClusters::Max255).is_err());
    }
}
