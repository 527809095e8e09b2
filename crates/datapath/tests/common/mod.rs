//! Helpers shared by the datapath's kernel tests: a private bpffs, packet builders and
//! (in [`pods`]) pods as network namespaces.
#![allow(dead_code, clippy::unwrap_used)]

pub mod pods;

use std::{net::Ipv4Addr, path::Path, time::Duration};

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

/// The 16-bit one's complement sum of `data` added to `sum` (not folded).
fn ones_sum(mut sum: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The L4 checksum of `segment` (its checksum field included) under the IPv4 pseudo-header.
fn l4_sum(saddr: [u8; 4], daddr: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut sum = ones_sum(0, &saddr);
    sum = ones_sum(sum, &daddr);
    sum += u32::from(proto);
    sum += segment.len() as u32;
    fold(ones_sum(sum, segment))
}

/// Ethernet + IPv4 + TCP or UDP with `payload`, both checksums computed. `udp_csum`: false
/// leaves a UDP checksum of 0 ("none").
#[allow(clippy::too_many_arguments)]
pub fn l4_frame(
    proto: u8,
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    payload: &[u8],
    udp_csum: bool,
) -> Vec<u8> {
    let mut f = eth([0x0e, 0, 0, 0, 1, 1], [0x0a, 0, 0, 0, 0, 1], ETH_P_IP);
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    let csum_off = if proto == 6 {
        l4.extend_from_slice(&[
            0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff,
        ]);
        l4.extend_from_slice(&[0, 0, 0, 0]);
        16
    } else {
        let len = (8 + payload.len()) as u16;
        l4.extend_from_slice(&len.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        6
    };
    l4.extend_from_slice(payload);
    if proto == 6 || udp_csum {
        let mut c = !l4_sum(saddr.octets(), daddr.octets(), proto, &l4);
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
    }
    let total = (20 + l4.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&saddr.octets());
    ip.extend_from_slice(&daddr.octets());
    let c = !fold(ones_sum(0, &ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    f
}

/// The tuple of an Ethernet + IPv4 (20-byte header) + TCP/UDP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

pub fn tuple(f: &[u8]) -> Tuple {
    Tuple {
        saddr: Ipv4Addr::new(f[26], f[27], f[28], f[29]),
        daddr: Ipv4Addr::new(f[30], f[31], f[32], f[33]),
        sport: u16::from_be_bytes([f[34], f[35]]),
        dport: u16::from_be_bytes([f[36], f[37]]),
    }
}

/// Whether the IPv4 header checksum of the frame is valid.
pub fn ipv4_csum_ok(f: &[u8]) -> bool {
    fold(ones_sum(0, &f[14..34])) == 0xffff
}

/// The L4 checksum field of the frame.
pub fn l4_csum_field(f: &[u8]) -> u16 {
    let off = if f[23] == 6 { 34 + 16 } else { 34 + 6 };
    u16::from_be_bytes([f[off], f[off + 1]])
}

/// Whether the TCP or UDP checksum of the frame is valid (a UDP checksum of 0 is not).
pub fn l4_csum_ok(f: &[u8]) -> bool {
    let mut saddr = [0u8; 4];
    let mut daddr = [0u8; 4];
    saddr.copy_from_slice(&f[26..30]);
    daddr.copy_from_slice(&f[30..34]);
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    l4_csum_field(f) != 0 && l4_sum(saddr, daddr, f[23], &f[34..14 + total]) == 0xffff
}

/// The next monitor event, or a failure after 5 s.
pub async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<plexus_datapath::MonitorEvent>,
) -> plexus_datapath::MonitorEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no event within 5 s")
        .unwrap()
}

/// Every event the programs emitted before now, in order. A marker goes through the ring
/// buffer after them (an ARP request for an address other than the gateway, dropped by
/// `from_container` as unsupported); since one reader takes the buffer's records in order, all
/// earlier events have arrived once the marker has. So "no event" is asserted without waiting
/// for a silence.
pub async fn events_so_far(
    dp: &plexus_datapath::EbpfDatapath,
    rx: &mut tokio::sync::broadcast::Receiver<plexus_datapath::MonitorEvent>,
) -> Vec<plexus_datapath::MonitorEvent> {
    use plexus_datapath::{DropReason, EventKind};
    const MARKER_SENDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const MARKER_TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
    let marker = arp_request([0x0a, 0, 0, 0, 0, 0xee], MARKER_SENDER, MARKER_TARGET);
    dp.test_run(plexus_datapath::object::PROG_FROM_CONTAINER, &marker, 0)
        .unwrap();
    let mut events = Vec::new();
    loop {
        let ev = next_event(rx).await;
        if ev.kind == EventKind::Drop(DropReason::UnsupportedArp) {
            return events;
        }
        events.push(ev);
    }
}
