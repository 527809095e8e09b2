//! The device's persistent TUN link (`/dev/net/tun`, `IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`, with
//! checksum and TCP segmentation offload: see [`crate::offload`]).
//!
//! The link is made persistent (`TUNSETPERSIST`): it outlives the process. If the device dies,
//! the link, its addresses and the routes through it stay, and packets routed into it are
//! dropped (the link has no carrier without a process attached): traffic fails closed instead of
//! leaving in the clear by another route. A restarted device opens the same name again and the
//! kernel attaches it to the existing link, so the routes need not be re-created. Removing the
//! link is an explicit step ([`Tun::delete`]: clear the persist flag and close).
//!
//! The ioctls need `unsafe` (a `struct ifreq` passed by pointer); it is confined to this module.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

/// `IFF_TUN`: layer-3 packets, no Ethernet header.
const IFF_TUN: libc::c_short = 0x0001;
/// `IFF_NO_PI`: no 4-byte packet-information prefix before each packet.
const IFF_NO_PI: libc::c_short = 0x1000;
/// `IFF_VNET_HDR`: a `virtio_net_hdr` before each packet, for the offloads.
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`: we accept partial checksums and TCP packets of up to
/// 64 KiB (see [`crate::offload`]).
const OFFLOADS: libc::c_ulong = 0x01 | 0x02 | 0x04;

/// `struct ifreq` as `TUNSETIFF` reads it: the name and the flags; the union's other members
/// are not used but the kernel copies the whole struct.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

// `_IOW('T', 202, int)` and `_IOW('T', 203, int)` from <linux/if_tun.h> (TUNSETIFF takes a
// `struct ifreq *` nonetheless).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;

/// `ioctl(fd, TUNSETPERSIST, on)`.
fn tunsetpersist(fd: libc::c_int, on: libc::c_int) -> nix::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; a bad fd is an error, not UB.
    let r = unsafe { libc::ioctl(fd, TUNSETPERSIST, libc::c_ulong::from(on.unsigned_abs())) };
    nix::errno::Errno::result(r).map(drop)
}

/// `ioctl(fd, TUNSETOFFLOAD, flags)`.
fn tunsetoffload(fd: libc::c_int, flags: libc::c_ulong) -> nix::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; a bad fd is an error, not UB.
    let r = unsafe { libc::ioctl(fd, TUNSETOFFLOAD, flags) };
    nix::errno::Errno::result(r).map(drop)
}

/// `ioctl(fd, TUNSETIFF, req)`.
fn tunsetiff(fd: libc::c_int, req: &mut IfReq) -> nix::Result<()> {
    // SAFETY: `req` is a properly laid out, initialized `struct ifreq` that outlives the call
    // (the kernel writes the chosen name back into it).
    let r = unsafe { libc::ioctl(fd, TUNSETIFF, req as *mut IfReq) };
    nix::errno::Errno::result(r).map(drop)
}

/// Why the TUN link could not be opened, made persistent or removed. Names the link.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The interface name is empty, too long or has a NUL.
    #[error("tun link name `{0}`: must be 1 to 15 bytes without NUL")]
    BadName(String),
    /// Opening `/dev/net/tun` failed.
    #[error("tun link {name}: open /dev/net/tun: {source}")]
    Open {
        /// The link.
        name: String,
        /// The underlying error.
        source: io::Error,
    },
    /// An ioctl failed (`EBUSY` from `TUNSETIFF`: another process has the link attached).
    #[error("tun link {name}: {op}: {source}")]
    Ioctl {
        /// The link.
        name: String,
        /// The ioctl.
        op: &'static str,
        /// The underlying error.
        source: nix::Error,
    },
}

/// An attached TUN link: read a packet, write a packet (one per call, whole IP packets).
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
    offloads: bool,
}

impl Tun {
    /// Creates the persistent TUN link `name`, or attaches to it if it exists (a restart).
    pub fn open_persistent(name: &str) -> Result<Tun, TunError> {
        let tun = Tun::attach(name)?;
        tunsetpersist(tun.file.as_raw_fd(), 1).map_err(|source| TunError::Ioctl {
            name: name.into(),
            op: "TUNSETPERSIST",
            source,
        })?;
        Ok(tun)
    }

    /// Removes the persistent link `name`: attaches to it, clears the persist flag, and closes,
    /// which deletes the link (and its routes). Fails with `EBUSY` while a device has it open.
    pub fn delete(name: &str) -> Result<(), TunError> {
        let tun = Tun::attach(name)?;
        tun.unpersist()
    }

    /// Clears the persist flag of this attached link, so it goes away when `self` is dropped
    /// (the device's `--delete-on-exit`).
    pub fn unpersist(&self) -> Result<(), TunError> {
        tunsetpersist(self.file.as_raw_fd(), 0).map_err(|source| TunError::Ioctl {
            name: self.name.clone(),
            op: "TUNSETPERSIST 0",
            source,
        })?;
        Ok(())
    }

    fn attach(name: &str) -> Result<Tun, TunError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(TunError::BadName(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|source| TunError::Open {
                name: name.into(),
                source,
            })?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        tunsetiff(file.as_raw_fd(), &mut req).map_err(|source| TunError::Ioctl {
            name: name.into(),
            op: "TUNSETIFF",
            source,
        })?;
        // Without offloads the link still works, one MTU-sized packet per read.
        let offloads = tunsetoffload(file.as_raw_fd(), OFFLOADS).is_ok();
        // Non-blocking reads, so the device can read what is queued in one go and send it as
        // one batch ([`Tun::wait_readable`] waits for more).
        nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|source| TunError::Ioctl {
            name: name.into(),
            op: "fcntl O_NONBLOCK",
            source,
        })?;
        Ok(Tun {
            file,
            name: name.into(),
            offloads,
        })
    }

    /// Whether the kernel accepted TSO and checksum offload on the link.
    pub fn offloads(&self) -> bool {
        self.offloads
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet into `buf`, preceded by its `virtio_net_hdr`
    /// ([`crate::offload::VNET_HDR_LEN`] bytes); returns the length of both. `WouldBlock` when
    /// no packet is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Waits until a packet can be read, at most `timeout_ms`.
    pub fn wait_readable(&self, timeout_ms: u16) {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, timeout_ms);
    }

    /// Writes one packet, which must be preceded by a `virtio_net_hdr` (zeros: a plain packet
    /// with a complete checksum).
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        (&self.file).write(packet)
    }
}
