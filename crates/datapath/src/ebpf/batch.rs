//! Batched map writes: `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux >= 5.6, hash
//! and array maps), which aya 0.14 does not wrap.
//!
//! One syscall writes a whole array of entries instead of one syscall per entry; programming a
//! frontend with 10,000 backends goes from 20,000 syscalls to a handful. The kernel applies the
//! entries of a batch one after the other, in array order, each as atomically as a single
//! update, so a batch is only a cheaper way to make the same writes: callers batch writes that
//! do not depend on each other (see `services.rs` for the load balancer's steps).
//!
//! Fallback: on a kernel or map type without batch operations (the syscall fails with
//! `EINVAL` before writing anything, or `ENOTSUPP`/`EOPNOTSUPP`), the same entries are written
//! one syscall each, and the process remembers not to try batches again.
//!
//! Deleting follows the datapath's rule that "already gone is fine" (`missing.rs`): an entry
//! that is not there is skipped and the batch goes on with the next one.
//!
//! Errors are aya's [`MapError::SyscallError`], naming the command (`bpf_map_update_batch`,
//! `bpf_map_delete_batch`, or the per-entry ones of the fallback), so that the callers' mapping
//! to [`crate::DatapathError`] (full map, map named) applies unchanged.
#![allow(unsafe_code)]

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    Pod,
    maps::{MapData, MapError},
    sys::SyscallError,
};

/// `enum bpf_cmd` values of <linux/bpf.h>.
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// `ENOTSUPP`, the kernel-internal "not supported" some map types return to user space.
const ENOTSUPP: i32 = 524;

/// Set once a batch command was refused as unsupported: later writes go one entry at a time.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The `batch` member of `union bpf_attr` (`BPF_MAP_*_BATCH`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: entries given; out: entries processed.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The member of `union bpf_attr` of `BPF_MAP_UPDATE_ELEM` and `BPF_MAP_DELETE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a valid, writable `repr(C)` prefix of `union bpf_attr` for `cmd`, of
    // the size passed (the kernel treats the members it does not get as zero); the pointers in
    // it reference buffers the caller keeps alive and sized for the map for the whole call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<A>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn syscall_error(call: &'static str, io_error: io::Error) -> MapError {
    MapError::SyscallError(SyscallError { call, io_error })
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

fn is_missing(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// Whether batch commands were found unsupported (the writes go one entry at a time).
pub(crate) fn fallen_back() -> bool {
    UNSUPPORTED.load(Ordering::Relaxed)
}

/// Inserts or replaces (`BPF_ANY`) `keys[i]` -> `values[i]` in `map`, in order. The caller
/// guarantees that `K` and `V` have the map's key and value sizes (aya's typed maps check it).
pub(crate) fn update<K: Pod, V: Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> Result<(), MapError> {
    debug_assert_eq!(keys.len(), values.len(), "one value per key");
    let n = keys.len().min(values.len());
    let (keys, values) = (&keys[..n], &values[..n]);
    let fd = map.fd().as_fd();
    let mut done = 0;
    while done < keys.len() && !fallen_back() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: u32::try_from(keys.len() - done).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        match sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            Ok(()) => done += attr.count as usize,
            Err(e) => {
                let processed = attr.count as usize;
                done += processed;
                if processed == 0 && unsupported(&e) {
                    UNSUPPORTED.store(true, Ordering::Relaxed);
                    tracing::info!(error = %e, "map batch operations not supported: writing one entry per syscall");
                } else if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(syscall_error("bpf_map_update_batch", e));
                }
            }
        }
    }
    for (k, v) in keys[done..].iter().zip(&values[done..]) {
        update_elem(fd, k, v).map_err(|e| syscall_error("bpf_map_update_elem", e))?;
    }
    Ok(())
}

/// Deletes `keys` from `map`, in order; a key that is not there is skipped.
pub(crate) fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<(), MapError> {
    let fd = map.fd().as_fd();
    let mut done = 0;
    while done < keys.len() && !fallen_back() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            count: u32::try_from(keys.len() - done).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        match sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => done += attr.count as usize,
            Err(e) => {
                let processed = attr.count as usize;
                done += processed;
                if is_missing(&e) {
                    // `keys[done]` is gone already: done too.
                    done += 1;
                } else if processed == 0 && unsupported(&e) {
                    UNSUPPORTED.store(true, Ordering::Relaxed);
                    tracing::info!(error = %e, "map batch operations not supported: writing one entry per syscall");
                } else if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(syscall_error("bpf_map_delete_batch", e));
                }
            }
        }
    }
    for k in &keys[done.min(keys.len())..] {
        match delete_elem(fd, k) {
            Err(e) if !is_missing(&e) => return Err(syscall_error("bpf_map_delete_elem", e)),
            _ => {}
        }
    }
    Ok(())
}

fn update_elem<K: Pod, V: Pod>(fd: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_ref(value) as u64,
        ..ElemAttr::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

fn delete_elem<K: Pod>(fd: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: std::ptr::from_ref(key) as u64,
        ..ElemAttr::default()
    };
    sys_bpf(BPF_MAP_DELETE_ELEM, &mut attr)
}
