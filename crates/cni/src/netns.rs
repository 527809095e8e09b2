//! Running code inside another network namespace, entered by path.
//!
//! [`run_in`] opens the namespace file (`/run/netns/<name>`, `/proc/<pid>/ns/net`, a CNI_NETNS)
//! and calls `setns(2)` on a dedicated thread, so the caller's thread never changes namespace
//! and nothing remounts `/sys` (unlike `ip netns exec`). Processes spawned from inside the
//! closure inherit the namespace; `/sys` still shows the caller's namespace, so code inside
//! should ask the kernel through sockets (netlink, `ip`) rather than read `/sys/class/net`.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Entering a network namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file could not be opened (it does not exist, most likely).
    #[error("network namespace {}: {source}", path.display())]
    Open {
        /// The namespace path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `setns` refused the file (not a network namespace, or no privilege).
    #[error("network namespace {}: setns: {source}", path.display())]
    Setns {
        /// The namespace path.
        path: PathBuf,
        /// Why.
        source: nix::Error,
    },
    /// The closure panicked.
    #[error("network namespace {}: the thread running inside it panicked", path.display())]
    Panicked {
        /// The namespace path.
        path: PathBuf,
    },
}

/// Runs `f` on a new thread inside the network namespace at `path` and returns its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked {
            path: path.to_path_buf(),
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_named() {
        let err = run_in(Path::new("/nonexistent/netns"), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }

    #[test]
    fn a_file_that_is_no_namespace_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = run_in(file.path(), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Setns { .. }), "{err}");
    }
}
