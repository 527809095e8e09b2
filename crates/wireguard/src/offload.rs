//! TUN offloads: the `virtio_net_hdr` in front of every packet of an `IFF_VNET_HDR` link, TCP
//! segmentation of the large packets the kernel hands over once TSO is on, and completion of
//! checksums it left partial.
//!
//! Why: with `TUNSETOFFLOAD` (checksum, TSO4, TSO6) the kernel's TCP sends one packet of up to
//! 64 KiB into the link instead of ~45 of MTU size, so the sending stack, the TUN read and our
//! per-packet bookkeeping run once per 64 KiB. We cut it into MTU-sized segments here, exactly as
//! a NIC would (sequence numbers, IPv4 ids, lengths, checksums, FIN/PSH only on the last
//! segment, CWR only on the first), encrypt each, and hand the datagrams to the kernel in one
//! `sendmsg` with UDP GSO. wireguard-go does the same on Linux since 2023.
//!
//! Everything here is bounds-checked: a header that does not fit the packet is an error (the
//! packet is dropped), never a panic.

/// Length of `struct virtio_net_hdr` (no `num_buffers`), the TUN default.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` to the end is still to be
/// computed and stored at `csum_start + csum_offset`.
const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into the GSO type.
const GSO_ECN: u8 = 0x80;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP segmentation (USO).
const GSO_UDP_L4: u8 = 5;
/// Most datagrams in one coalesced UDP packet (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_UDP_SEGMENTS: usize = 64;

/// A `struct virtio_net_hdr` (little-endian on the hosts we run on: the TUN default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers (a hint; we compute our own).
    pub hdr_len: u16,
    /// Segment payload size (the TCP MSS) for GSO packets.
    pub gso_size: u16,
    /// Where the partial checksum's range starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }
}

/// Ones' complement sum of `data` as native-endian 16-bit words, folded to 16 bits (RFC 1071:
/// the byte order cancels out if the result is stored with `to_ne_bytes`).
fn sum_ne(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_ne_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(u16::from_ne_bytes([rest[i], 0]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum bytes for the data summed into `acc` (complemented, in wire order).
fn finish(acc: u64) -> [u8; 2] {
    (!fold(acc)).to_ne_bytes()
}

/// Why a packet from the link could not be split (it is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The partial checksum's offsets lie outside the packet.
    #[error("partial checksum offsets outside the packet")]
    BadCsumOffsets,
    /// A GSO packet's IP or TCP header does not fit, or is not TCP.
    #[error("gso packet with a malformed ip/tcp header")]
    BadGsoHeaders,
    /// A GSO type we did not enable (UDP, for example).
    #[error("unsupported gso type {0}")]
    UnsupportedGso(u8),
    /// `gso_size` is zero.
    #[error("gso packet with gso_size 0")]
    ZeroGsoSize,
    /// A segment would not fit the scratch buffer.
    #[error("segment larger than the scratch buffer")]
    TooLarge,
}

/// Turns one packet read from the link (without its vnet header) into complete IP packets and
/// hands each to `emit`: a plain packet as it is (its checksum completed if the kernel left it
/// partial), a TSO packet cut into `gso_size` segments, built in `scratch`.
pub fn split(
    hdr: &VnetHdr,
    packet: &mut [u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<(), SplitError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                let start = usize::from(hdr.csum_start);
                let field = start + usize::from(hdr.csum_offset);
                if start >= packet.len() || field + 2 > packet.len() {
                    return Err(SplitError::BadCsumOffsets);
                }
                // The field holds the pseudo-header sum already (CHECKSUM_PARTIAL).
                let c = finish(sum_ne(&packet[start..], 0));
                packet[field..field + 2].copy_from_slice(&c);
            }
            emit(packet);
            Ok(())
        }
        GSO_TCPV4 => segment_tcp(hdr, packet, scratch, false, emit),
        GSO_TCPV6 => segment_tcp(hdr, packet, scratch, true, emit),
        GSO_UDP_L4 => segment_udp(hdr, packet, scratch, emit),
        other => Err(SplitError::UnsupportedGso(other)),
    }
}

/// Cuts a USO packet into datagrams of `gso_size` bytes of payload, each with its lengths and
/// checksums complete.
fn segment_udp(
    hdr: &VnetHdr,
    packet: &[u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<(), SplitError> {
    let bad = SplitError::BadGsoHeaders;
    let v6 = packet.first().ok_or(bad)? >> 4 == 6;
    let ip_len = if v6 {
        if packet.len() < 48 || packet[6] != IPPROTO_UDP {
            return Err(bad);
        }
        40
    } else {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        if packet[0] >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 || packet[9] != IPPROTO_UDP {
            return Err(bad);
        }
        ihl
    };
    let hl = ip_len + 8;
    let size = usize::from(hdr.gso_size);
    if size == 0 {
        return Err(SplitError::ZeroGsoSize);
    }
    let payload = &packet[hl..];
    let id0 = u16::from_be_bytes([packet[4], packet[5]]);
    let n = payload.len().div_ceil(size).max(1);
    for i in 0..n {
        let off = i * size;
        let chunk = &payload[off.min(payload.len())..(off + size).min(payload.len())];
        let len = hl + chunk.len();
        let seg = scratch.get_mut(..len).ok_or(SplitError::TooLarge)?;
        seg[..hl].copy_from_slice(&packet[..hl]);
        seg[hl..].copy_from_slice(chunk);
        let udp_len = 8 + chunk.len();
        let t = ip_len;
        seg[t + 4..t + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        seg[t + 6..t + 8].copy_from_slice(&[0, 0]);
        let mut acc;
        if v6 {
            seg[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            acc = sum_ne(&seg[8..40], 0);
            let l = (udp_len as u32).to_be_bytes();
            acc = sum_ne(&[l[0], l[1], l[2], l[3], 0, 0, 0, IPPROTO_UDP], acc);
        } else {
            seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            seg[10..12].copy_from_slice(&[0, 0]);
            let c = finish(sum_ne(&seg[..ip_len], 0));
            seg[10..12].copy_from_slice(&c);
            acc = sum_ne(&seg[12..20], 0);
            let l = (udp_len as u16).to_be_bytes();
            acc = sum_ne(&[0, IPPROTO_UDP, l[0], l[1]], acc);
        }
        acc = sum_ne(&seg[t..], acc);
        let mut c = finish(acc);
        if c == [0, 0] {
            c = [0xff, 0xff]; // a computed zero is sent as all ones (zero means "none")
        }
        seg[t + 6..t + 8].copy_from_slice(&c);
        emit(seg);
    }
    Ok(())
}

fn segment_tcp(
    hdr: &VnetHdr,
    packet: &[u8],
    scratch: &mut [u8],
    v6: bool,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), SplitError> {
    let bad = SplitError::BadGsoHeaders;
    let ip_len = if v6 {
        if packet.len() < 40 || packet[0] >> 4 != 6 || packet[6] != IPPROTO_TCP {
            return Err(bad);
        }
        40
    } else {
        let ihl = usize::from(packet.first().ok_or(bad)? & 0x0f) * 4;
        if packet[0] >> 4 != 4 || ihl < 20 || packet.len() < ihl || packet[9] != IPPROTO_TCP {
            return Err(bad);
        }
        ihl
    };
    let doff = usize::from(packet.get(ip_len + 12).ok_or(bad)? >> 4) * 4;
    let hl = ip_len + doff;
    if doff < 20 || packet.len() < hl {
        return Err(bad);
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(SplitError::ZeroGsoSize);
    }
    let payload = &packet[hl..];
    let seq0 = u32::from_be_bytes([
        packet[ip_len + 4],
        packet[ip_len + 5],
        packet[ip_len + 6],
        packet[ip_len + 7],
    ]);
    let id0 = u16::from_be_bytes([packet[4], packet[5]]);
    let flags0 = packet[ip_len + 13];
    let n = payload.len().div_ceil(mss).max(1);
    for i in 0..n {
        let off = i * mss;
        let chunk = &payload[off.min(payload.len())..(off + mss).min(payload.len())];
        let len = hl + chunk.len();
        let seg = scratch.get_mut(..len).ok_or(SplitError::TooLarge)?;
        seg[..hl].copy_from_slice(&packet[..hl]);
        seg[hl..].copy_from_slice(chunk);
        let tcp_len = doff + chunk.len();
        if v6 {
            seg[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        } else {
            seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            seg[10..12].copy_from_slice(&[0, 0]);
            let c = finish(sum_ne(&seg[..ip_len], 0));
            seg[10..12].copy_from_slice(&c);
        }
        let t = ip_len;
        seg[t + 4..t + 8].copy_from_slice(&seq0.wrapping_add(off as u32).to_be_bytes());
        let mut flags = flags0;
        if i + 1 < n {
            flags &= !(0x01 | 0x08); // FIN and PSH only on the last segment
        }
        if i > 0 {
            flags &= !0x80; // CWR only on the first
        }
        seg[t + 13] = flags;
        seg[t + 16..t + 18].copy_from_slice(&[0, 0]);
        // Pseudo-header: addresses, protocol, TCP length.
        let (src, dst) = if v6 {
            (8..24, 24..40)
        } else {
            (12..16, 16..20)
        };
        let mut acc = sum_ne(&seg[src], 0);
        acc = sum_ne(&seg[dst], acc);
        let tail = if v6 {
            let l = (tcp_len as u32).to_be_bytes();
            [l[0], l[1], l[2], l[3], 0, 0, 0, IPPROTO_TCP]
        } else {
            let l = (tcp_len as u16).to_be_bytes();
            [0, IPPROTO_TCP, l[0], l[1], 0, 0, 0, 0]
        };
        acc = sum_ne(&tail, acc);
        acc = sum_ne(&seg[t..], acc);
        let c = finish(acc);
        seg[t + 16..t + 18].copy_from_slice(&c);
        emit(seg);
    }
    Ok(())
}

/// Most bytes of one coalesced IP packet (the IPv4 total length field's limit).
const MAX_COALESCED: usize = 65_535;

/// Coalesces consecutive TCP segments of one flow, as decrypted from one batch of datagrams,
/// into one large packet written to the link with a GSO vnet header (the receive side of TSO,
/// what the kernel's GRO does on a NIC): the kernel's TCP then handles one packet per batch
/// instead of one per segment. Consecutive UDP datagrams of one flow and one size (VXLAN's
/// outer packets in tunnel mode, for example) are coalesced the same way as one USO packet, so
/// they cost one write instead of one each; the kernel splits them again on delivery. Anything
/// that does not continue the current run (another flow, other flags or options, a gap in the
/// sequence, another protocol) ends the run and goes out as is.
///
/// The buffer keeps [`VNET_HDR_LEN`] bytes in front of the packet for the header.
pub struct Coalescer {
    buf: Vec<u8>,
    /// Segments in `buf` (0: empty).
    count: usize,
    v6: bool,
    udp: bool,
    ip_len: usize,
    hdr_len: usize,
    seg_size: usize,
    next_seq: u32,
    /// A shorter segment or a PSH ended the run: nothing more may join.
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            buf: Vec::with_capacity(VNET_HDR_LEN + MAX_COALESCED),
            count: 0,
            v6: false,
            udp: false,
            ip_len: 0,
            hdr_len: 0,
            seg_size: 0,
            next_seq: 0,
            closed: false,
        }
    }
}

/// The parts of a TCP segment or UDP datagram that decide whether it can join a run.
struct TcpSeg {
    v6: bool,
    udp: bool,
    ip_len: usize,
    hdr_len: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// A plain TCP data segment (ACK, maybe PSH) or UDP datagram with a payload (no options on
/// IPv4, no extension headers on IPv6, not fragmented), or `None`.
fn tcp_seg(p: &[u8]) -> Option<TcpSeg> {
    let v = p.first()? >> 4;
    let (v6, ip_len, total) = match v {
        4 => {
            // ihl 5 only; no fragment offset or MF.
            if p[0] & 0x0f != 5
                || p.len() < 20
                || (p[9] != IPPROTO_TCP && p[9] != IPPROTO_UDP)
                || p[6] & 0x3f != 0
                || p[7] != 0
            {
                return None;
            }
            (false, 20, usize::from(u16::from_be_bytes([p[2], p[3]])))
        }
        6 => {
            if p.len() < 40 || (p[6] != IPPROTO_TCP && p[6] != IPPROTO_UDP) {
                return None;
            }
            (true, 40, 40 + usize::from(u16::from_be_bytes([p[4], p[5]])))
        }
        _ => return None,
    };
    if total != p.len() {
        return None;
    }
    let proto = if v6 { p[6] } else { p[9] };
    if proto == IPPROTO_UDP {
        let udp_len = usize::from(u16::from_be_bytes([
            *p.get(ip_len + 4)?,
            *p.get(ip_len + 5)?,
        ]));
        if udp_len != p.len() - ip_len || udp_len <= 8 {
            return None;
        }
        return Some(TcpSeg {
            v6,
            udp: true,
            ip_len,
            hdr_len: ip_len + 8,
            seq: 0,
            flags: 0,
            payload: udp_len - 8,
        });
    }
    let doff = usize::from(p.get(ip_len + 12)? >> 4) * 4;
    let hdr_len = ip_len + doff;
    if doff < 20 || p.len() <= hdr_len {
        return None;
    }
    let flags = p[ip_len + 13];
    if flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    let t = ip_len;
    Some(TcpSeg {
        v6,
        udp: false,
        ip_len,
        hdr_len,
        seq: u32::from_be_bytes([p[t + 4], p[t + 5], p[t + 6], p[t + 7]]),
        flags,
        payload: p.len() - hdr_len,
    })
}

impl Coalescer {
    /// Adds a decrypted packet; writes out whatever it cannot join to (`write` gets a whole
    /// frame: vnet header and packet).
    pub fn push(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8])) {
        let Some(seg) = tcp_seg(packet) else {
            self.flush(write);
            self.write_plain(packet, write);
            return;
        };
        if self.count > 0 && self.joins(&seg, packet) {
            self.buf.extend_from_slice(&packet[seg.hdr_len..]);
            self.count += 1;
            self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
            if seg.udp {
                if seg.payload < self.seg_size || self.count >= MAX_UDP_SEGMENTS {
                    self.closed = true;
                }
                return;
            }
            if seg.flags & TCP_PSH != 0 {
                // Carry the PSH onto the merged header.
                let f = VNET_HDR_LEN + self.ip_len + 13;
                self.buf[f] |= TCP_PSH;
                self.closed = true;
            }
            if seg.payload < self.seg_size {
                self.closed = true;
            }
            return;
        }
        self.flush(write);
        self.buf.clear();
        self.buf.resize(VNET_HDR_LEN, 0);
        self.buf.extend_from_slice(packet);
        self.count = 1;
        self.v6 = seg.v6;
        self.udp = seg.udp;
        self.ip_len = seg.ip_len;
        self.hdr_len = seg.hdr_len;
        self.seg_size = seg.payload;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        self.closed = seg.flags & TCP_PSH != 0;
    }

    fn joins(&self, seg: &TcpSeg, p: &[u8]) -> bool {
        if self.closed
            || seg.v6 != self.v6
            || seg.udp != self.udp
            || seg.hdr_len != self.hdr_len
            || (!seg.udp && seg.seq != self.next_seq)
            || seg.payload > self.seg_size
            || self.buf.len() - VNET_HDR_LEN + seg.payload > MAX_COALESCED
        {
            return false;
        }
        let h = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.hdr_len];
        let t = self.ip_len;
        let ip_same = if self.v6 {
            h[..4] == p[..4] && h[6..40] == p[6..40]
        } else {
            // version/ihl/tos, flags, ttl/protocol, addresses
            h[..2] == p[..2] && h[6..10] == p[6..10] && h[12..20] == p[12..20]
        };
        if self.udp {
            // ports
            return ip_same && h[t..t + 4] == p[t..t + 4];
        }
        // ports, ack, flags other than PSH, window, options (timestamps included)
        ip_same
            && h[t..t + 4] == p[t..t + 4]
            && h[t + 8..t + 13] == p[t + 8..t + 13]
            && h[t + 13] & !TCP_PSH == p[t + 13] & !TCP_PSH
            && h[t + 14..t + 16] == p[t + 14..t + 16]
            && h[t + 20..self.hdr_len] == p[t + 20..self.hdr_len]
    }

    /// Writes out the current run: one segment as is, several as one GSO packet.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        match self.count {
            0 => {}
            1 => write(&self.buf),
            _ => {
                let len = self.buf.len() - VNET_HDR_LEN;
                let t = self.ip_len;
                let p = &mut self.buf[VNET_HDR_LEN..];
                let l4_len = len - t;
                let (proto, csum_offset) = if self.udp {
                    (IPPROTO_UDP, 6)
                } else {
                    (IPPROTO_TCP, 16)
                };
                if self.udp {
                    p[t + 4..t + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                }
                let mut acc;
                if self.v6 {
                    p[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                    acc = sum_ne(&p[8..40], 0);
                    let l = (l4_len as u32).to_be_bytes();
                    acc = sum_ne(&[l[0], l[1], l[2], l[3], 0, 0, 0, proto], acc);
                } else {
                    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                    p[10..12].copy_from_slice(&[0, 0]);
                    let c = finish(sum_ne(&p[..20], 0));
                    p[10..12].copy_from_slice(&c);
                    acc = sum_ne(&p[12..20], 0);
                    let l = (l4_len as u16).to_be_bytes();
                    acc = sum_ne(&[0, proto, l[0], l[1]], acc);
                }
                // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented.
                p[t + csum_offset..t + csum_offset + 2].copy_from_slice(&fold(acc).to_ne_bytes());
                let gso = match (self.udp, self.v6) {
                    (true, _) => GSO_UDP_L4,
                    (false, true) => GSO_TCPV6,
                    (false, false) => GSO_TCPV4,
                };
                let hdr = [F_NEEDS_CSUM, gso];
                self.buf[..2].copy_from_slice(&hdr);
                self.buf[2..4].copy_from_slice(&(self.hdr_len as u16).to_le_bytes());
                self.buf[4..6].copy_from_slice(&(self.seg_size as u16).to_le_bytes());
                self.buf[6..8].copy_from_slice(&(t as u16).to_le_bytes());
                self.buf[8..10].copy_from_slice(&(csum_offset as u16).to_le_bytes());
                write(&self.buf);
            }
        }
        self.count = 0;
        self.buf.clear();
    }

    fn write_plain(&mut self, packet: &[u8], write: &mut impl FnMut(&[u8])) {
        self.buf.clear();
        self.buf.resize(VNET_HDR_LEN, 0);
        self.buf.extend_from_slice(packet);
        write(&self.buf);
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verifies a checksum the receiver's way: the sum over the covered bytes (checksum field
    /// included) must be all ones.
    fn valid(acc: u64) -> bool {
        fold(acc) == 0xffff
    }

    fn tcp_ok(seg: &[u8], v6: bool) -> bool {
        let (ip_len, src, dst) = if v6 {
            (40, 8..24, 24..40)
        } else {
            (usize::from(seg[0] & 15) * 4, 12..16, 16..20)
        };
        let tcp_len = seg.len() - ip_len;
        let mut acc = sum_ne(&seg[src], 0);
        acc = sum_ne(&seg[dst], acc);
        let l = (tcp_len as u32).to_be_bytes();
        acc = sum_ne(&[0, 0, 0, IPPROTO_TCP, l[0], l[1], l[2], l[3]], acc);
        valid(sum_ne(&seg[ip_len..], acc))
    }

    fn tso_v4(payload: usize, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
        p[8] = 64;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        p
    }

    #[test]
    fn tso_v4_packet_is_cut_into_valid_segments() {
        let mut p = tso_v4(3000, 0x80 | 0x10 | 0x08 | 0x01); // CWR ACK PSH FIN
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1380,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut scratch = vec![0u8; 2000];
        let mut segs = Vec::new();
        split(&hdr, &mut p, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(
            segs.iter().map(Vec::len).collect::<Vec<_>>(),
            [1420, 1420, 280]
        );
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                0xfffeu16.wrapping_add(i as u16)
            );
            assert!(valid(sum_ne(&s[..20], 0)), "ip checksum of segment {i}");
            assert!(tcp_ok(s, false), "tcp checksum of segment {i}");
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 0xffff_ff00u32.wrapping_add(1380 * i as u32));
            let f = s[33];
            assert_eq!(f & 0x10, 0x10);
            assert_eq!(f & 0x80 != 0, i == 0, "CWR on {i}");
            assert_eq!(f & 0x09 != 0, i == 2, "FIN/PSH on {i}");
            payload.extend_from_slice(&s[40..]);
        }
        assert_eq!(payload, tso_v4(3000, 0)[40..]);
    }

    #[test]
    fn tso_v6_packet_is_cut_into_valid_segments() {
        let payload = 2500;
        let mut p = vec![0u8; 60 + payload];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
        p[6] = IPPROTO_TCP;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
        p[52] = 5 << 4;
        p[53] = 0x10;
        for (i, b) in p[60..].iter_mut().enumerate() {
            *b = (i * 13) as u8;
        }
        let hdr = VnetHdr {
            gso_type: GSO_TCPV6,
            gso_size: 1000,
            ..VnetHdr::default()
        };
        let mut scratch = vec![0u8; 2000];
        let mut segs = Vec::new();
        split(&hdr, &mut p, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(
            segs.iter().map(Vec::len).collect::<Vec<_>>(),
            [1060, 1060, 560]
        );
        for s in &segs {
            assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
            assert!(tcp_ok(s, true));
        }
    }

    #[test]
    fn partial_checksum_is_completed() {
        // A UDP packet whose checksum field holds the pseudo-header sum, as the kernel leaves it.
        let mut p = vec![0u8; 20 + 8 + 11];
        p[0] = 0x45;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[24..26].copy_from_slice(&19u16.to_be_bytes());
        p[28..].copy_from_slice(b"hello world");
        let mut acc = sum_ne(&p[12..20], 0);
        acc = sum_ne(&[0, 17, 0, 19], acc);
        let pseudo = fold(acc).to_ne_bytes();
        p[26..28].copy_from_slice(&pseudo);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let mut out = Vec::new();
        split(&hdr, &mut p, &mut [], |s| out = s.to_vec()).unwrap();
        let mut acc = sum_ne(&out[12..20], 0);
        acc = sum_ne(&[0, 17, 0, 19], acc);
        assert!(valid(sum_ne(&out[20..], acc)));
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        let gso = |t, size| VnetHdr {
            gso_type: t,
            gso_size: size,
            ..VnetHdr::default()
        };
        let mut scratch = vec![0u8; 100];
        for (hdr, mut p) in [
            (gso(GSO_TCPV4, 1000), vec![]),
            (gso(GSO_TCPV4, 1000), vec![0x4f; 30]),
            (gso(GSO_TCPV4, 1000), vec![0x45; 20]),
            (gso(GSO_TCPV6, 1000), vec![0x60; 39]),
            (gso(GSO_TCPV4, 0), tso_v4(100, 0)),
            (gso(GSO_TCPV4, 1000), tso_v4(1000, 0)),
            (gso(3, 1000), tso_v4(100, 0)),
            (
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    csum_start: 60,
                    csum_offset: 0,
                    ..VnetHdr::default()
                },
                vec![0; 20],
            ),
        ] {
            assert!(
                split(&hdr, &mut p, &mut scratch, |_| {}).is_err(),
                "{hdr:?}"
            );
        }
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
    }

    /// Segments a TSO packet, then coalesces the segments again: one GSO frame whose packet,
    /// once the kernel segments it, is the original.
    #[test]
    fn segments_coalesce_back_into_one_gso_frame() {
        let mut p = tso_v4(5000, 0x10 | 0x08);
        let hdr = VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 1380,
            ..VnetHdr::default()
        };
        let mut scratch = vec![0u8; 2000];
        let mut segs = Vec::new();
        split(&hdr, &mut p, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 4);
        let mut c = Coalescer::default();
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut w = |f: &[u8]| frames.push(f.to_vec());
        for s in &segs {
            c.push(s, &mut w);
        }
        c.flush(&mut w);
        assert_eq!(frames.len(), 1);
        let f = &frames[0];
        let h = VnetHdr::parse(f).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 40,
                gso_size: 1380,
                csum_start: 20,
                csum_offset: 16
            }
        );
        let pkt = &f[VNET_HDR_LEN..];
        assert_eq!(pkt.len(), 5040);
        assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]), 5040);
        assert!(valid(sum_ne(&pkt[..20], 0)));
        assert_eq!(pkt[33], 0x18, "PSH of the last segment kept");
        assert_eq!(&pkt[40..], &tso_v4(5000, 0)[40..]);
        // And the kernel's way back: segmenting the frame again gives the same segments.
        let mut again = Vec::new();
        let mut pkt = pkt.to_vec();
        split(&h, &mut pkt, &mut scratch, |s| again.push(s.to_vec())).unwrap();
        assert_eq!(again, segs);
    }

    #[test]
    fn other_flows_gaps_and_non_tcp_end_a_run() {
        let mut c = Coalescer::default();
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut w = |f: &[u8]| frames.push(f.to_vec());
        let seg = |seq: u32, port: u16, len: usize| {
            let mut p = tso_v4(len, 0x10);
            p[24..28].copy_from_slice(&seq.to_be_bytes());
            p[20..22].copy_from_slice(&port.to_be_bytes());
            p
        };
        c.push(&seg(0, 1, 100), &mut w);
        c.push(&seg(100, 1, 100), &mut w); // joins
        c.push(&seg(300, 1, 100), &mut w); // gap: new run
        c.push(&seg(400, 2, 100), &mut w); // other flow: new run
        c.push(&[0x45, 0, 0, 20], &mut w); // not TCP: out as is
        c.push(&seg(500, 2, 100), &mut w);
        c.push(&seg(600, 2, 50), &mut w); // shorter: joins and closes
        c.push(&seg(650, 2, 50), &mut w); // closed: new run
        c.flush(&mut w);
        let kinds: Vec<(u8, usize)> = frames
            .iter()
            .map(|f| (f[1], f.len() - VNET_HDR_LEN))
            .collect();
        assert_eq!(
            kinds,
            [
                (GSO_TCPV4, 240),
                (GSO_NONE, 140),
                (GSO_NONE, 140),
                (GSO_NONE, 4),
                (GSO_TCPV4, 190),
                (GSO_NONE, 90)
            ]
        );
    }

    fn udp_v4(payload: usize, sport: u16, fill: u8) -> Vec<u8> {
        let mut p = vec![0u8; 28 + payload];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((28 + payload) as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = IPPROTO_UDP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&8472u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        for b in &mut p[28..] {
            *b = fill;
        }
        // A complete checksum, as the sender's kernel computed it.
        let mut acc = sum_ne(&p[12..20], 0);
        let l = ((8 + payload) as u16).to_be_bytes();
        acc = sum_ne(&[0, IPPROTO_UDP, l[0], l[1]], acc);
        let c = finish(sum_ne(&p[20..], acc));
        p[26..28].copy_from_slice(&c);
        let c = finish(sum_ne(&p[..20], 0));
        p[10..12].copy_from_slice(&c);
        p
    }

    fn udp_ok(seg: &[u8]) -> bool {
        let udp_len = seg.len() - 20;
        let mut acc = sum_ne(&seg[12..20], 0);
        let l = (udp_len as u16).to_be_bytes();
        acc = sum_ne(&[0, IPPROTO_UDP, l[0], l[1]], acc);
        valid(sum_ne(&seg[20..], acc)) && valid(sum_ne(&seg[..20], 0))
    }

    #[test]
    fn udp_datagrams_coalesce_into_one_uso_frame_and_split_back() {
        let dgrams: Vec<Vec<u8>> = (0..5)
            .map(|i| udp_v4(if i == 4 { 300 } else { 1000 }, 4000, i as u8))
            .collect();
        let mut c = Coalescer::default();
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut w = |f: &[u8]| frames.push(f.to_vec());
        for d in &dgrams {
            c.push(d, &mut w);
        }
        c.push(&udp_v4(1000, 4000, 9), &mut w); // after the shorter one: a new run
        c.push(&udp_v4(1000, 4001, 9), &mut w); // another flow
        c.flush(&mut w);
        assert_eq!(frames.len(), 3);
        let h = VnetHdr::parse(&frames[0]).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_UDP_L4,
                hdr_len: 28,
                gso_size: 1000,
                csum_start: 20,
                csum_offset: 6
            }
        );
        assert_eq!(frames[0].len() - VNET_HDR_LEN, 28 + 4300);
        assert_eq!(VnetHdr::parse(&frames[1]).unwrap().gso_type, GSO_NONE);
        // The kernel's way back (and our fallback): the same datagrams, checksums valid.
        let mut pkt = frames[0][VNET_HDR_LEN..].to_vec();
        let mut scratch = vec![0u8; 2000];
        let mut again = Vec::new();
        split(&h, &mut pkt, &mut scratch, |s| again.push(s.to_vec())).unwrap();
        assert_eq!(again.len(), 5);
        for (a, d) in again.iter().zip(&dgrams) {
            assert!(udp_ok(a));
            assert_eq!(a[28..], d[28..]);
            assert_eq!(a.len(), d.len());
        }
        // At most 64 datagrams per run.
        let mut c = Coalescer::default();
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut w = |f: &[u8]| frames.push(f.to_vec());
        for _ in 0..70 {
            c.push(&udp_v4(100, 1, 0), &mut w);
        }
        c.flush(&mut w);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].len() - VNET_HDR_LEN, 28 + 64 * 100);
    }
}
