//! The one rule for "already gone is fine".
//!
//! Removing something the datapath pinned or stored is idempotent: a pin file (map or link)
//! that is not there, a pinned link whose file vanished, or a map entry that is not there
//! means the work is done, not an error. The kernel and aya say "not there" as `ENOENT`
//! (an `io::ErrorKind::NotFound` from the file system, `MapError::KeyNotFound` or a syscall
//! error carrying `ENOENT` from a map); every other error is still an error, with the path or
//! map named. Callers use these helpers instead of deciding on their own, and check by
//! trying rather than with `exists()`, which could race with another process.

use std::{fs, io, path::Path};

use aya::maps::MapError;

use crate::DatapathError;

/// Whether a file-system error means "no such file" (a pin that is not there).
pub(crate) fn is_missing_file(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Whether a map error means "no such entry" (or, for `from_pin`, no such pinned map).
pub(crate) fn is_missing_entry(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => is_missing_file(&e.io_error),
        _ => false,
    }
}

/// Removes the pin (of a map or a link) at `path`, which for a link detaches it. `Ok(false)`:
/// nothing was pinned there.
pub(crate) fn remove_pin(path: &Path) -> Result<bool, DatapathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if is_missing_file(&e) => Ok(false),
        Err(source) => Err(DatapathError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The result of deleting an entry of `map`, with "no such entry" counted as done.
pub(crate) fn entry_removed(
    r: Result<(), MapError>,
    map: &'static str,
) -> Result<(), DatapathError> {
    match r {
        Err(e) if !is_missing_entry(&e) => Err(DatapathError::Map {
            map,
            source: Box::new(e),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_pin_twice_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pinned");
        fs::write(&pin, b"").unwrap();
        assert!(remove_pin(&pin).unwrap());
        assert!(!remove_pin(&pin).unwrap());
    }

    #[test]
    fn other_failures_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A directory is not removed by remove_file: a real error, not "missing".
        let err = remove_pin(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn only_not_found_counts_as_missing() {
        assert!(entry_removed(Err(MapError::KeyNotFound), "m").is_ok());
        let enoent = MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert!(entry_removed(Err(enoent), "m").is_ok());
        let eperm = MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        });
        let err = entry_removed(Err(eperm), "m").unwrap_err();
        assert!(err.to_string().contains("map m"), "{err}");
    }
}
