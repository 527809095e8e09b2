//! Helpers shared by the datapath's kernel tests: a private bpffs and packet builders.
#![allow(dead_code, clippy::unwrap_used)]

use std::{net::Ipv4Addr, path::Path};

use nix::mount::{MntFlags, umount2};

/// A bpffs mounted on a fresh directory under /run, unmounted and removed on drop (also when
/// the test panics).
pub struct Bpffs {
    dir: Option<tempfile::TempDir>,
}

impl Bpffs {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("plexus-test-")
            .tempdir_in("/run")
            .unwrap();
        let mounted = plexus_datapath::bpffs::ensure_bpffs(dir.path()).unwrap();
        assert!(mounted, "a fresh directory should not be on a bpffs yet");
        Self { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            // Unmounting drops the pins: pinned links detach, pinned maps go.
            if let Err(e) = umount2(dir.path(), MntFlags::MNT_DETACH) {
                eprintln!("unmounting {}: {e}", dir.path().display());
            }
            drop(dir);
        }
    }
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;

pub fn eth(dst: [u8; 6], src: [u8; 6], proto: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

/// Ethernet + IPv4 + TCP (no payload). Checksums are left zero: the programs do not check them.
pub fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, ETH_P_IP);
    let total_len: u16 = 20 + 20;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total_len.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&saddr.octets());
    f.extend_from_slice(&daddr.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// A broadcast ARP request: who has `target`? tell `sender_ip` (at `sender_mac`).
pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = eth([0xff; 6], sender_mac, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}
