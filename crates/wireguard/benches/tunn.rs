//! Throughput of the WireGuard core Plexus uses (boringtun 0.7.1's sans-IO `noise::Tunn`), one
//! thread, in memory: no TUN, no UDP socket, no syscalls, so this is the crypto core's own cost
//! and the ceiling of one core's share of a device loop.
//!
//! Two `Tunn`s (node A, node B) do a real handshake, then for each packet: copy the inner
//! IPv4/UDP packet into the caller's buffer (standing for the TUN read), encapsulate on A,
//! decapsulate the datagram on B (`enc+dec`: one core does both ends). Also encapsulate alone
//! (`enc`). Sizes: 1420 B (a full packet under a 1500 B underlay after WireGuard's overhead)
//! and 64 B (ACKs, request/response). Gbit/s counts inner-packet bytes.
//!
//! Baselines in the same run, so the figures compare across machines:
//! - `aead seal+open`: ring's ChaCha20-Poly1305 (the AEAD boringtun uses) sealing and opening
//!   the same bytes in place with the same TUN-read copy, and nothing else. `enc+dec` minus
//!   this is what WireGuard's framing, counters, replay window and session lookup cost;
//! - `memcpy`: the same per-packet copies without any crypto (the TUN-read copy plus one copy
//!   standing for the hand-over to B).
//!
//! A counting allocator reports heap allocations per packet (boringtun's are 0; this is one
//! reason it was chosen, see the crate doc).
//!
//! Sizes: `PLEXUS_BENCH_PACKETS_1420` (default 200,000), `PLEXUS_BENCH_PACKETS_64` (default
//! 1,000,000), `PLEXUS_BENCH_REPS` (default 7; best and median are printed).
//!
//! Run: `cargo bench -p plexus-wireguard --bench tunn`.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};
use plexus_wireguard::NodeKey;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// Counts heap allocations, so the bench shows whether the data path allocates per packet.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// The workspace denies unsafe code; a global allocator cannot be written without it, and this
// one only counts before delegating to the system allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

/// A valid IPv4/UDP packet of `size` bytes, 10.0.0.1 -> 10.0.0.2 (as a VXLAN datagram would
/// be: destination port 4789). `decapsulate` checks the IP header, so it must be well formed.
fn ipv4_packet(size: usize) -> Vec<u8> {
    assert!((28..=65535).contains(&size));
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let mut sum: u32 = (0..20)
        .step_by(2)
        .map(|i| u32::from(u16::from_be_bytes([p[i], p[i + 1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&4789u16.to_be_bytes());
    p[24..26].copy_from_slice(&((size - 20) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// Two tunnels after a completed handshake, and the caller-owned buffers of a device loop.
struct Pair {
    a: Tunn,
    b: Tunn,
    src: Vec<u8>,
    wire: Vec<u8>,
    out: Vec<u8>,
    aead: LessSafeKey,
}

impl Pair {
    /// Handshake in memory: initiation A -> B, response B -> A, keepalive A -> B (which
    /// confirms the session on B, so B accepts data).
    fn new() -> Pair {
        let ka = NodeKey::from_private_bytes([0x11; 32]);
        let kb = NodeKey::from_private_bytes([0x22; 32]);
        let mut a = Tunn::new(ka.secret().clone(), kb.public(), None, None, 1, None);
        let mut b = Tunn::new(kb.secret().clone(), ka.public(), None, None, 2, None);
        let (mut b1, mut b2, mut b3) = (vec![0u8; 2048], vec![0u8; 2048], vec![0u8; 2048]);
        let init = match a.format_handshake_initiation(&mut b1, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            r => panic!("handshake initiation: {r:?}"),
        };
        let resp = match b.decapsulate(None, &init, &mut b2) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            r => panic!("handshake response: {r:?}"),
        };
        let keepalive = match a.decapsulate(None, &resp, &mut b3) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            r => panic!("keepalive: {r:?}"),
        };
        match b.decapsulate(None, &keepalive, &mut b1) {
            TunnResult::Done => {}
            r => panic!("keepalive received: {r:?}"),
        }
        Pair {
            a,
            b,
            src: vec![0u8; 65536],
            wire: vec![0u8; 65536 + 32],
            out: vec![0u8; 65536],
            aead: LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[0x33; 32]).unwrap()),
        }
    }

    /// Encapsulate on A and decapsulate on B, `n` times; returns the bytes delivered to B's
    /// "TUN" (checked: every packet arrives whole).
    #[inline(never)]
    fn enc_dec(&mut self, payload: &[u8], n: usize) -> u64 {
        let len = payload.len();
        let mut delivered = 0u64;
        for _ in 0..n {
            self.src[..len].copy_from_slice(black_box(payload));
            let wlen = match self.a.encapsulate(&self.src[..len], &mut self.wire) {
                TunnResult::WriteToNetwork(p) => p.len(),
                r => panic!("encapsulate: {r:?}"),
            };
            match self
                .b
                .decapsulate(None, black_box(&self.wire[..wlen]), &mut self.out)
            {
                TunnResult::WriteToTunnelV4(p, _) => delivered += black_box(p).len() as u64,
                r => panic!("decapsulate: {r:?}"),
            }
        }
        delivered
    }

    /// Encapsulate on A only, `n` times; returns the datagram bytes.
    #[inline(never)]
    fn enc(&mut self, payload: &[u8], n: usize) -> u64 {
        let len = payload.len();
        let mut wire = 0u64;
        for _ in 0..n {
            self.src[..len].copy_from_slice(black_box(payload));
            match self.a.encapsulate(&self.src[..len], &mut self.wire) {
                TunnResult::WriteToNetwork(p) => wire += black_box(p).len() as u64,
                r => panic!("encapsulate: {r:?}"),
            }
        }
        wire
    }

    /// The AEAD baseline: the TUN-read copy, then ChaCha20-Poly1305 seal and open in place
    /// with a fresh nonce per packet (WireGuard's counter nonce), as one core doing both ends.
    #[inline(never)]
    fn aead(&mut self, payload: &[u8], n: usize) -> u64 {
        let len = payload.len();
        let mut opened = 0u64;
        for counter in 0..n as u64 {
            self.src[..len].copy_from_slice(black_box(payload));
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_le_bytes());
            let tag = self
                .aead
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut self.src[..len],
                )
                .unwrap();
            self.src[len..len + 16].copy_from_slice(tag.as_ref());
            let plain = self
                .aead
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    black_box(&mut self.src[..len + 16]),
                )
                .unwrap();
            opened += black_box(plain).len() as u64;
        }
        opened
    }

    /// The copy baseline: the TUN-read copy and one more copy of the same bytes, no crypto.
    #[inline(never)]
    fn memcpy(&mut self, payload: &[u8], n: usize) -> u64 {
        let len = payload.len();
        let mut moved = 0u64;
        for _ in 0..n {
            self.src[..len].copy_from_slice(black_box(payload));
            self.out[..len].copy_from_slice(black_box(&self.src[..len]));
            moved += black_box(&self.out[..len]).len() as u64;
        }
        moved
    }
}

#[derive(Clone, Copy)]
enum Mode {
    EncDec,
    Enc,
    Aead,
    Memcpy,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::EncDec => "enc+dec",
            Mode::Enc => "enc",
            Mode::Aead => "aead seal+open",
            Mode::Memcpy => "memcpy",
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap())
        .unwrap_or(default)
}

fn main() {
    let reps = env_or("PLEXUS_BENCH_REPS", 7);
    let sizes = [
        (1420usize, env_or("PLEXUS_BENCH_PACKETS_1420", 200_000)),
        (64, env_or("PLEXUS_BENCH_PACKETS_64", 1_000_000)),
    ];
    let modes = [Mode::EncDec, Mode::Enc, Mode::Aead, Mode::Memcpy];
    let mut pair = Pair::new();

    println!(
        "wireguard core (boringtun 0.7.1 noise::Tunn), one thread, in memory, {} cpus\n\
         baselines in the same run: aead seal+open (ring ChaCha20-Poly1305 alone, same bytes), memcpy",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (size, n) in sizes {
        let payload = ipv4_packet(size);
        // Warm-up: caches, branch predictors, CPU frequency.
        pair.enc_dec(&payload, n / 10);
        pair.enc(&payload, n / 10);
        pair.aead(&payload, n / 10);
        println!("\n{size} B packets, {n} per rep, {reps} reps (best / median)");
        println!(
            "  {:<20} {:>9} {:>9} {:>8} {:>8} {:>9} {:>11}",
            "", "Gbit/s", "(median)", "Mpps", "(median)", "ns/pkt", "allocs/pkt"
        );
        // Reps interleave the modes, so background load spreads evenly over them.
        let mut secs: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        let mut allocs = vec![0u64; modes.len()];
        for _ in 0..reps {
            for (i, mode) in modes.iter().enumerate() {
                let before = ALLOCS.load(Ordering::Relaxed);
                let start = Instant::now();
                let bytes = match mode {
                    Mode::EncDec => pair.enc_dec(&payload, n),
                    Mode::Enc => pair.enc(&payload, n),
                    Mode::Aead => pair.aead(&payload, n),
                    Mode::Memcpy => pair.memcpy(&payload, n),
                };
                secs[i].push(start.elapsed().as_secs_f64());
                allocs[i] += ALLOCS.load(Ordering::Relaxed) - before;
                let expected = match mode {
                    Mode::Enc => (n * (size + 32)) as u64,
                    _ => (n * size) as u64,
                };
                assert_eq!(bytes, expected, "{}: bytes moved", mode.name());
            }
        }
        for (i, mode) in modes.iter().enumerate() {
            let s = &mut secs[i];
            s.sort_by(f64::total_cmp);
            let (best, median) = (s[0], s[s.len() / 2]);
            let bits = (n * size * 8) as f64;
            println!(
                "  {:<20} {:>9.2} {:>9.2} {:>8.2} {:>8.2} {:>9.0} {:>11.2}",
                mode.name(),
                bits / best / 1e9,
                bits / median / 1e9,
                n as f64 / best / 1e6,
                n as f64 / median / 1e6,
                median / n as f64 * 1e9,
                allocs[i] as f64 / (n * reps) as f64,
            );
        }
    }
}
