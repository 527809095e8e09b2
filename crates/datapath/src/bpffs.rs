//! bpffs mounts: where maps and links are pinned so that they outlive the agent; and the
//! cgroup2 mount that socket-level programs attach to.
//!
//! The agent calls [`ensure_bpffs`] on its pin directory before loading the datapath, and
//! [`ensure_cgroup2`] for the unified cgroup hierarchy (hosts that boot with cgroup v1 have none). A mount
//! made in a network namespace entered with `ip netns exec` is lost with its private `/sys`,
//! so callers should use a pin directory outside `/sys` (e.g. under `/run`).

use std::{io, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{FsType, statfs},
};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors of bpffs handling.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// The directory cannot be created or inspected.
    #[error("bpffs directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `mount -t bpf` failed.
    #[error("mounting bpffs on {path}: {source}")]
    Mount {
        /// The mount point.
        path: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The directory is not on a bpffs.
    #[error("{path} is not on a bpffs (mount one with `mount -t bpf bpf {path}`)")]
    NotBpffs {
        /// The directory.
        path: String,
    },
}

/// Whether `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let st = statfs(path).map_err(|e| BpffsError::Dir {
        path: path.display().to_string(),
        source: io::Error::from(e),
    })?;
    #[allow(clippy::unnecessary_cast)]
    let magic = FsType(BPF_FS_MAGIC as _);
    Ok(st.filesystem_type() == magic)
}

/// Creates `path` if needed and mounts a bpffs on it unless it already lies on one. Returns
/// whether it mounted.
pub fn ensure_bpffs(path: &Path) -> Result<bool, BpffsError> {
    ensure_fs(path, "bpf", BPF_FS_MAGIC)
}

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_MAGIC: i64 = 0x6367_7270;

/// Creates `path` if needed and mounts the cgroup2 hierarchy on it unless it already lies on
/// one. Returns whether it mounted.
pub fn ensure_cgroup2(path: &Path) -> Result<bool, BpffsError> {
    ensure_fs(path, "cgroup2", CGROUP2_MAGIC)
}

/// Mounts a `fstype` filesystem on `path` (created if needed) unless `path` already lies on a
/// filesystem with that magic number.
fn ensure_fs(path: &Path, fstype: &str, magic: i64) -> Result<bool, BpffsError> {
    let dir_err = |source| BpffsError::Dir {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path).map_err(dir_err)?;
    let st = statfs(path).map_err(|e| dir_err(io::Error::from(e)))?;
    #[allow(clippy::unnecessary_cast)]
    if st.filesystem_type() == FsType(magic as _) {
        return Ok(false);
    }
    mount(
        Some(fstype),
        path,
        Some(fstype),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BpffsError::Mount {
        path: path.display().to_string(),
        source,
    })?;
    Ok(true)
}

/// Fails unless `path` is a directory on a bpffs.
pub fn require_bpffs(path: &Path) -> Result<(), BpffsError> {
    if is_bpffs(path)? {
        Ok(())
    } else {
        Err(BpffsError::NotBpffs {
            path: path.display().to_string(),
        })
    }
}
