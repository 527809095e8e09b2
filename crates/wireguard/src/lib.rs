//! The node's userspace WireGuard (issue 13).
//!
//! Each node encrypts pod traffic to other nodes, in its own cluster and in remote ones, with
//! WireGuard in userspace (this machine, and many hosts without Kubernetes, have no WireGuard
//! kernel module). The crate has the node's static key pair ([`keys`]), WireGuard's
//! cross-platform UAPI text protocol, client and server side ([`uapi`]), and the device the
//! `plexus-wireguard` binary runs: a persistent TUN link ([`tun`]) and the data path between it
//! and UDP port 51871 ([`device`]), configured through the UAPI like wireguard-go, with the
//! TUN offloads and UDP GSO/GRO that make it faster than wireguard-go ([`offload`];
//! `scripts/bench-wg.sh` and BENCHMARKS.md compare the two).
//!
//! Why boringtun 0.7.1's sans-IO `noise::Tunn`, after comparing it with gotatun 0.10.2 (Mullvad's
//! fork) and defguard_boringtun 0.7.1 on throughput here, API and licence:
//! - **licence:** BSD-3-Clause, so it can be vendored or patched (for example to hand session
//!   state to a restarted agent). gotatun, the most active fork, is MPL-2.0 (file-level
//!   copyleft) for new code;
//! - **API:** `encapsulate`/`decapsulate` work on caller-owned slices and allocate nothing per
//!   packet, which fits a device loop reading batches (`recvmmsg`, TUN offloads) into its own
//!   buffers. gotatun 0.10 owns its packets (`BytesMut` from a pool behind a `Mutex`) and
//!   allocates once per encapsulated packet;
//! - **speed:** measured on this machine (2 vCPU EPYC, one thread, in memory, medians of the
//!   quietest run): encapsulate+decapsulate of 1420 B packets 6.34 Gbit/s (0.56 Mpps) against
//!   gotatun 0.10.2's 5.72 Gbit/s (aws-lc-rs) and 5.68 (ring); of 64 B packets 2.32 Mpps against
//!   1.68 Mpps (28 % fewer packets/s for gotatun, with either crypto backend). Encapsulate alone
//!   at 1420 B: 12.66 against 10.95 Gbit/s. (The three-way comparison was a one-off bench
//!   that built all three crates side by side, the same loop as this crate's bench.)
//!   This crate's own bench (`cargo bench -p plexus-wireguard --bench tunn`) measures the core
//!   as we use it, beside the AEAD alone and a plain copy of the same bytes;
//! - **footprint:** 52 crates with ring (which rustls already brings), no tokio, no C build.
//!
//! Fallback: `defguard_boringtun` 0.7.x (BSD-3, same `noise::Tunn` API, newer RustCrypto
//! dependencies, measured within noise of boringtun) replaces it with a one-line
//! `package = "defguard_boringtun"` rename in the workspace's Cargo.toml, should Cloudflare's
//! crate go quiet again or a security fix land only in the forks. boringtun 0.7.1 depends on
//! pre-release RustCrypto crates, hence the exact `=0.7.1` pin and the committed Cargo.lock.

pub mod device;
pub mod keys;
pub mod offload;
pub mod tun;
pub mod uapi;

pub use keys::{KeyError, NodeKey};
pub use uapi::{Key, UapiClient, UapiError};

/// WireGuard's UDP port on every node, the one Cilium uses.
pub const WIREGUARD_PORT: u16 = 51871;
