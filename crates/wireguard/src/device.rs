//! The userspace WireGuard device: peers, cryptokey routing, and the data path between the TUN
//! link and the UDP socket, configured through the UAPI ([`crate::uapi::UapiHandler`]).
//!
//! Threads: one reads the TUN link and sends encrypted datagrams (outgoing), one receives
//! datagrams and writes decrypted packets to the TUN link (incoming), one runs the WireGuard
//! timers every 250 ms and resets the handshake rate limiter every second, and the caller serves
//! the UAPI. The configuration lives behind one `RwLock` that the data path only reads (once
//! per packet, uncontended); each peer's noise state (`boringtun::noise::Tunn`) and endpoint sit
//! behind that peer's own `Mutex`, so the two directions contend only when they touch the same
//! peer at the same instant.
//!
//! Outgoing, a packet goes to the peer whose allowed IPs hold the longest prefix of its
//! destination; incoming, a packet is delivered only if its source lies in the allowed IPs of
//! the peer that encrypted it (WireGuard's cryptokey routing); anything else is dropped.
//! Incoming datagrams are matched to their peer by receiver index (the 24-bit peer index we
//! gave that peer's `Tunn`, `receiver_idx >> 8`), and handshake initiations, which carry no
//! index of ours, by decrypting the initiator's static key (`parse_handshake_anon`) after the
//! rate limiter has checked their MAC. Nothing from the network or the socket can make the
//! device panic: malformed input is dropped or refused.
//!
//! Configuration (`set`) keeps what it can: the same private key again changes nothing; a peer
//! whose public key stays keeps its noise state (its sessions) when its endpoint, allowed IPs
//! or the `replace_peers` flag come along (`replace_peers` removes only the peers the request
//! does not name, unlike wireguard-go, which drops and re-creates all); a new private key keeps
//! the established sessions until each peer has done a handshake with the new key (see
//! `Previous`). A request is parsed whole and a new port bound before anything changes, so a
//! refused request changes nothing.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};

use crate::offload::{self, Coalescer, VNET_HDR_LEN, VnetHdr};
use crate::tun::Tun;
use crate::uapi::{AllowedIp, DeviceInfo, Key, PeerInfo, SetDevice, UapiHandler};

/// Handshake initiations per second before the device answers with cookies (boringtun's and
/// wireguard-go's figure).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// How often the timers run (WireGuard's timers have a granularity of this order).
const TIMER_TICK: Duration = Duration::from_millis(250);

/// Largest packet either direction handles: the TUN MTU cannot exceed 65535.
const MAX_PACKET: usize = 65536;

/// Room for WireGuard's data header and tag (32 bytes) and the largest handshake (148 bytes).
const OUT_BUF: usize = MAX_PACKET + 148;

/// `EADDRINUSE`, replied when `listen_port` cannot be bound.
const EADDRINUSE: i32 = 98;

/// Locks a mutex; a poisoned one (a thread panicked while holding it, which the data path does
/// not do) is used as is rather than spreading the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// One peer: its identity and configuration, its noise state, and its counters.
struct Peer {
    public: Key,
    core: Mutex<PeerCore>,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
}

struct PeerCore {
    /// `None` while the device has no private key.
    tunn: Option<Tunn>,
    /// The 24-bit index `tunn` puts in the top bits of our session indices.
    index: u32,
    /// The noise state of our previous private key, kept for a while after a key change
    /// (see [`Previous`]).
    previous: Option<Previous>,
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<AllowedIp>,
    keepalive: u16,
    /// When the last handshake with the peer completed (for `get`).
    last_handshake: Option<SystemTime>,
}

/// How long the sessions of a replaced private key may carry traffic: until the peer has done a
/// handshake with the new key, at most this long (sessions of the old key are at most this old
/// plus the rekey time, within WireGuard's 180 s reject limit).
const ROTATION_GRACE: Duration = Duration::from_secs(60);

/// A peer's noise state under our previous private key. When the private key changes, the
/// peer learns our new public key only later (the agent publishes it, the peer's agent updates
/// its device): until then a handshake with the new key cannot succeed, so the established
/// session of the old key keeps carrying the traffic in both directions (its receiver indices
/// still lead here), and a handshake with the new key is started alongside. The first
/// session of the new key ends it, as does [`ROTATION_GRACE`]. Key rotation so costs no gap
/// longer than the peers' own update.
struct Previous {
    tunn: Tunn,
    index: u32,
    since: Instant,
    /// When we last sent a handshake initiation with the new key.
    last_kick: Option<Instant>,
}

/// How often a handshake with the new key is retried while the old key's session is in use:
/// the peer accepts it only once it has our new key, and the sooner we then try, the sooner
/// the old session (which the peer dropped with our old key) is replaced.
const KICK_INTERVAL: Duration = Duration::from_millis(250);

impl PeerCore {
    /// After a key change, before the new key has a session: a handshake initiation with the
    /// new key if [`KICK_INTERVAL`] has passed since the last, to send to the peer.
    fn kick<'a>(&mut self, out: &'a mut [u8]) -> Option<&'a mut [u8]> {
        let prev = self.previous.as_mut()?;
        let current = self.tunn.as_mut()?;
        if has_session(current) || prev.last_kick.is_some_and(|t| t.elapsed() < KICK_INTERVAL) {
            return None;
        }
        prev.last_kick = Some(Instant::now());
        match current.format_handshake_initiation(out, true) {
            TunnResult::WriteToNetwork(init) => Some(init),
            _ => None,
        }
    }
}

/// Whether `tunn` has a current session to send with.
fn has_session(tunn: &Tunn) -> bool {
    tunn.time_since_last_handshake().is_some()
}

/// The device's own key pair and the handshake rate limiter bound to its public key.
struct OwnKey {
    secret: StaticSecret,
    public: PublicKey,
    rate_limiter: Arc<RateLimiter>,
}

/// The configuration the data path reads.
#[derive(Default)]
struct State {
    key: Option<Arc<OwnKey>>,
    listen_port: u16,
    socket: Option<Arc<Udp>>,
    peers: HashMap<Key, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    routes: RouteTable,
    next_index: u32,
}

/// Longest-prefix match over all peers' allowed IPs: one hash map per prefix length, probed
/// from the longest length present down (at most 33 or 129 probes, usually a handful).
#[derive(Default)]
struct RouteTable {
    v4: Vec<(u8, HashMap<u32, Arc<Peer>>)>,
    v6: Vec<(u8, HashMap<u128, Arc<Peer>>)>,
}

fn mask4(a: u32, len: u8) -> u32 {
    a & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask6(a: u128, len: u8) -> u128 {
    a & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl RouteTable {
    /// Builds the table; a prefix claimed by two peers goes to the later one (the UAPI moves a
    /// prefix to the peer that was given it last, and `set` removes it from the others first).
    fn build<'a>(peers: impl Iterator<Item = (&'a Arc<Peer>, &'a [AllowedIp])>) -> RouteTable {
        let mut v4: HashMap<u8, HashMap<u32, Arc<Peer>>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, Arc<Peer>>> = HashMap::new();
        for (peer, ips) in peers {
            for ip in ips {
                match ip.addr {
                    IpAddr::V4(a) => {
                        v4.entry(ip.len)
                            .or_default()
                            .insert(mask4(a.into(), ip.len), peer.clone());
                    }
                    IpAddr::V6(a) => {
                        v6.entry(ip.len)
                            .or_default()
                            .insert(mask6(a.into(), ip.len), peer.clone());
                    }
                }
            }
        }
        let mut t = RouteTable {
            v4: v4.into_iter().collect(),
            v6: v6.into_iter().collect(),
        };
        t.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        t.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        t
    }

    fn lookup(&self, ip: IpAddr) -> Option<&Arc<Peer>> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, m)| m.get(&mask4(a, *len)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, m)| m.get(&mask6(a, *len)))
            }
        }
    }
}

/// The device: a TUN link, a UDP socket once `listen_port` is set, and its peers.
pub struct Device {
    tun: Tun,
    state: RwLock<State>,
    stopping: AtomicBool,
}

impl Device {
    /// A device on an attached TUN link, with no key, port or peers yet. Start its threads
    /// with [`Device::start`].
    pub fn new(tun: Tun) -> Arc<Device> {
        // Random start, so a restarted device does not hand out the indices of its previous run
        // (a peer's stale packets then miss instead of hitting the wrong peer).
        let next_index = rand::random::<u32>() & 0x00ff_ffff;
        Arc::new(Device {
            tun,
            state: RwLock::new(State {
                next_index,
                ..State::default()
            }),
            stopping: AtomicBool::new(false),
        })
    }

    /// The TUN link.
    pub fn tun(&self) -> &Tun {
        &self.tun
    }

    /// Starts the outgoing, incoming and timer threads.
    pub fn start(self: &Arc<Device>) -> io::Result<()> {
        let d = self.clone();
        thread::Builder::new()
            .name("wg-tun-rx".into())
            .spawn(move || d.outgoing_loop())?;
        let d = self.clone();
        thread::Builder::new()
            .name("wg-udp-rx".into())
            .spawn(move || d.incoming_loop())?;
        let d = self.clone();
        thread::Builder::new()
            .name("wg-timers".into())
            .spawn(move || d.timer_loop())?;
        Ok(())
    }

    /// Asks the threads to stop (they notice within a timer tick, or at their next packet).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// TUN -> allowed-IPs lookup -> (segment) -> encrypt -> UDP (GSO batches).
    ///
    /// Reads what the link has queued, one packet after the other, encrypting into a batch for
    /// one peer; the batch goes out when the link has nothing more, when a packet for another
    /// peer comes, or when it is full. Under load one `sendmsg` so carries many datagrams;
    /// alone, a packet goes out at once.
    fn outgoing_loop(&self) {
        let mut buf = vec![0u8; VNET_HDR_LEN + MAX_PACKET];
        let mut scratch = vec![0u8; MAX_PACKET];
        let mut one = vec![0u8; OUT_BUF];
        let mut batch = Batch::default();
        // Whom the batch is for.
        let mut pending: Option<(Arc<Peer>, Arc<Udp>, SocketAddr)> = None;
        let flush = |batch: &mut Batch, pending: &mut Option<(Arc<Peer>, Arc<Udp>, SocketAddr)>| {
            if let Some((peer, socket, endpoint)) = pending.take() {
                batch.send(&socket, endpoint, &peer);
            }
            batch.clear();
        };
        while !self.stopping.load(Ordering::Relaxed) {
            let n = match self.tun.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    flush(&mut batch, &mut pending);
                    self.tun.wait_readable(500);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    flush(&mut batch, &mut pending);
                    tracing::warn!(link = self.tun.name(), error = %e, "reading the tun link");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Some(hdr) = VnetHdr::parse(&buf[..n]) else {
                continue;
            };
            let packet = &mut buf[VNET_HDR_LEN..n];
            let Some(dst) = Tunn::dst_address(packet) else {
                continue;
            };
            let (peer, socket) = {
                let st = read(&self.state);
                let Some(peer) = st.routes.lookup(dst) else {
                    continue;
                };
                (peer.clone(), st.socket.clone())
            };
            let Some(socket) = socket else {
                continue;
            };
            if pending
                .as_ref()
                .is_some_and(|(p, _, _)| !Arc::ptr_eq(p, &peer))
                || batch.data.len() >= BATCH_BYTES
            {
                flush(&mut batch, &mut pending);
            }
            let mut guard = lock(&peer.core);
            let core = &mut *guard;
            let Some(endpoint) = core.endpoint else {
                continue;
            };
            let Some(current) = core.tunn.as_ref() else {
                continue;
            };
            // After a key change: the old key's session carries the packet, and a handshake
            // with the new key is tried alongside.
            let use_previous = !has_session(current)
                && core
                    .previous
                    .as_ref()
                    .is_some_and(|p| p.since.elapsed() < ROTATION_GRACE);
            if use_previous && let Some(init) = core.kick(&mut one) {
                batch.push(init);
            }
            let tunn = match (use_previous, core.previous.as_mut(), core.tunn.as_mut()) {
                (true, Some(prev), _) => &mut prev.tunn,
                (_, _, Some(current)) => current,
                _ => continue,
            };
            let split = offload::split(&hdr, packet, &mut scratch, |segment| {
                match tunn.encapsulate(segment, &mut one) {
                    TunnResult::WriteToNetwork(data) => batch.push(data),
                    TunnResult::Err(e) => {
                        tracing::debug!(peer = %peer.public, error = ?e, "encapsulate");
                    }
                    _ => {}
                }
            });
            // Sent after the peer's lock is released, so the incoming thread is not held up.
            drop(guard);
            if let Err(e) = split {
                tracing::debug!(link = self.tun.name(), error = %e, "packet from the link dropped");
            }
            pending = Some((peer, socket, endpoint));
        }
    }

    /// Sends `data` to the peer's endpoint, counting it.
    fn send(&self, peer: &Peer, socket: Option<&Udp>, endpoint: Option<SocketAddr>, data: &[u8]) {
        let (Some(socket), Some(endpoint)) = (socket, endpoint) else {
            return;
        };
        match socket.send_to(data, endpoint) {
            Ok(n) => {
                peer.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(peer = %peer.public, %endpoint, error = %e, "send"),
        }
    }

    /// UDP -> demux -> decrypt -> source check -> TUN.
    fn incoming_loop(&self) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut out = vec![0u8; OUT_BUF];
        let mut coalescer = Coalescer::default();
        while !self.stopping.load(Ordering::Relaxed) {
            let Some(socket) = read(&self.state).socket.clone() else {
                thread::sleep(TIMER_TICK);
                continue;
            };
            let (n, from, seg) = match socket.recv_segments(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // ICMP errors surface here (ECONNREFUSED from an earlier send): harmless.
                    tracing::debug!(error = %e, "udp receive");
                    continue;
                }
            };
            for datagram in buf[..n].chunks(seg) {
                let c = self.tun.offloads().then_some(&mut coalescer);
                self.handle_datagram(&socket, datagram, from, &mut out, c);
            }
            coalescer.flush(&mut |f| self.write_tun(f));
        }
    }

    /// Handles one datagram. `frame` is the output buffer: its first [`VNET_HDR_LEN`] bytes
    /// stay zero (the vnet header of a plain packet), the decrypted packet goes after them.
    /// With a `coalescer`, decrypted TCP segments are handed to it instead of written one by
    /// one (the caller flushes it after the batch).
    fn handle_datagram(
        &self,
        socket: &Udp,
        datagram: &[u8],
        from: SocketAddr,
        frame: &mut [u8],
        coalescer: Option<&mut Coalescer>,
    ) {
        let (_, out) = frame.split_at_mut(VNET_HDR_LEN);
        let handshake: bool;
        // The peer index the packet is addressed to (all but initiations).
        let mut index = None;
        let peer = {
            let st = read(&self.state);
            let Some(key) = st.key.clone() else {
                return;
            };
            let packet = match key
                .rate_limiter
                .verify_packet(Some(from.ip()), datagram, out)
            {
                Ok(p) => p,
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    // Under load: a cookie reply instead of a handshake.
                    let _ = socket.send_to(cookie, from);
                    return;
                }
                Err(_) => return,
            };
            handshake = matches!(
                packet,
                Packet::HandshakeInit(_) | Packet::HandshakeResponse(_)
            );
            let peer = match packet {
                Packet::HandshakeInit(ref init) => {
                    let Ok(half) = parse_handshake_anon(&key.secret, &key.public, init) else {
                        return;
                    };
                    st.peers.get(&Key(half.peer_static_public))
                }
                Packet::HandshakeResponse(ref p) => {
                    index = Some(p.receiver_idx >> 8);
                    st.by_index.get(&(p.receiver_idx >> 8))
                }
                Packet::PacketCookieReply(ref p) => {
                    index = Some(p.receiver_idx >> 8);
                    st.by_index.get(&(p.receiver_idx >> 8))
                }
                Packet::PacketData(ref p) => {
                    index = Some(p.receiver_idx >> 8);
                    st.by_index.get(&(p.receiver_idx >> 8))
                }
            };
            let Some(peer) = peer else {
                return;
            };
            peer.clone()
        };
        let mut guard = lock(&peer.core);
        let core = &mut *guard;
        // Addressed to a session of our previous key (after a key change): that state.
        let tunn = match core.previous.as_mut() {
            Some(prev) if index == Some(prev.index) => &mut prev.tunn,
            _ => match core.tunn.as_mut() {
                Some(t) => t,
                None => return,
            },
        };
        let mut deliver: Option<(usize, IpAddr)> = None;
        match tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::debug!(peer = %peer.public, %from, error = ?e, "decapsulate");
                return;
            }
            TunnResult::WriteToNetwork(reply) => {
                let _ = socket
                    .send_to(reply, from)
                    .map(|n| peer.tx_bytes.fetch_add(n as u64, Ordering::Relaxed));
                // Packets queued while the handshake ran go out now.
                while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], out) {
                    let _ = socket
                        .send_to(p, from)
                        .map(|n| peer.tx_bytes.fetch_add(n as u64, Ordering::Relaxed));
                }
            }
            TunnResult::WriteToTunnelV4(p, src) => deliver = Some((p.len(), src.into())),
            TunnResult::WriteToTunnelV6(p, src) => deliver = Some((p.len(), src.into())),
        }
        // Authenticated: the peer is at `from` now (roaming).
        core.endpoint = Some(from);
        if handshake {
            // A valid initiation (answered) or response completes a handshake.
            core.last_handshake = Some(SystemTime::now());
        }
        drop(guard);
        peer.rx_bytes
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        if let Some((len, src)) = deliver {
            let allowed = read(&self.state)
                .routes
                .lookup(src)
                .is_some_and(|p| Arc::ptr_eq(p, &peer));
            if !allowed {
                tracing::debug!(peer = %peer.public, %src, "source not in the peer's allowed ips");
                return;
            }
            match coalescer {
                Some(c) => c.push(&frame[VNET_HDR_LEN..VNET_HDR_LEN + len], &mut |f| {
                    self.write_tun(f)
                }),
                None => self.write_tun(&frame[..VNET_HDR_LEN + len]),
            }
        }
    }

    /// Writes one frame (vnet header and packet) to the link. Should the kernel refuse a
    /// coalesced (GSO) frame, its segments are written one by one instead, so no data is lost.
    fn write_tun(&self, frame: &[u8]) {
        let Err(e) = self.tun.send(frame) else {
            return;
        };
        tracing::debug!(link = self.tun.name(), error = %e, "writing the tun link");
        let Some(hdr) = VnetHdr::parse(frame).filter(|h| h.gso_type != 0) else {
            return;
        };
        let mut packet = frame[VNET_HDR_LEN..].to_vec();
        let mut scratch = vec![0u8; MAX_PACKET];
        let _ = offload::split(&hdr, &mut packet, &mut scratch, |segment| {
            let mut plain = vec![0u8; VNET_HDR_LEN];
            plain.extend_from_slice(segment);
            if let Err(e) = self.tun.send(&plain) {
                tracing::debug!(link = self.tun.name(), error = %e, "writing the tun link");
            }
        });
    }

    /// Every 250 ms: each peer's timers (handshake retries, keepalives, rekeying, expiry); every
    /// second: the handshake rate limiter's count.
    fn timer_loop(&self) {
        let mut out = vec![0u8; OUT_BUF];
        let mut last_reset = Instant::now();
        while !self.stopping.load(Ordering::Relaxed) {
            thread::sleep(TIMER_TICK);
            let (peers, socket, key) = {
                let st = read(&self.state);
                (
                    st.peers.values().cloned().collect::<Vec<_>>(),
                    st.socket.clone(),
                    st.key.clone(),
                )
            };
            if last_reset.elapsed() >= Duration::from_secs(1) {
                if let Some(k) = &key {
                    k.rate_limiter.reset_count();
                }
                last_reset = Instant::now();
            }
            for peer in peers {
                let mut core = lock(&peer.core);
                let endpoint = core.endpoint;
                // The previous key's state ends with the new key's first session, or its time.
                if core.previous.as_ref().is_some_and(|p| {
                    p.since.elapsed() >= ROTATION_GRACE
                        || core.tunn.as_ref().is_some_and(has_session)
                }) {
                    core.previous = None;
                }
                if let Some(init) = core.kick(&mut out) {
                    let n = init.len();
                    drop(core);
                    self.send(&peer, socket.as_deref(), endpoint, &out[..n]);
                    continue;
                }
                let Some(tunn) = core.tunn.as_mut() else {
                    continue;
                };
                if let TunnResult::WriteToNetwork(p) = tunn.update_timers(&mut out) {
                    drop(core);
                    self.send(&peer, socket.as_deref(), endpoint, p);
                }
            }
        }
    }

    /// A new `Tunn` for a peer, or `None` without a private key.
    fn new_tunn(
        key: Option<&OwnKey>,
        peer_public: &Key,
        index: u32,
        keepalive: u16,
    ) -> Option<Tunn> {
        let key = key?;
        Some(Tunn::new(
            key.secret.clone(),
            PublicKey::from(peer_public.0),
            None,
            (keepalive != 0).then_some(keepalive),
            index,
            Some(key.rate_limiter.clone()),
        ))
    }

    /// Applies a parsed `set` request. Binds a new port first, so a port in use refuses the
    /// whole request and changes nothing.
    fn apply(&self, req: SetDevice) -> Result<(), (i32, String)> {
        let mut st = write(&self.state);

        let new_socket = match req.listen_port {
            Some(port) if port != st.listen_port || st.socket.is_none() => {
                let s = bind_udp(port).map_err(|e| {
                    (
                        e.raw_os_error().unwrap_or(EADDRINUSE),
                        format!("binding udp port {port}: {e}"),
                    )
                })?;
                Some(s)
            }
            _ => None,
        };
        if let Some(s) = new_socket {
            st.listen_port = s
                .socket
                .local_addr()
                .map(|a| a.port())
                .map_err(|e| (EADDRINUSE, format!("udp socket address: {e}")))?;
            st.socket = Some(Arc::new(s));
        }

        if let Some(k) = req.private_key {
            let same = st
                .key
                .as_ref()
                .is_some_and(|own| own.secret.to_bytes() == k.0);
            if k.is_zero() {
                st.key = None;
                for p in st.peers.values() {
                    let mut core = lock(&p.core);
                    core.tunn = None;
                    core.previous = None;
                }
            } else if !same {
                let secret = StaticSecret::from(k.0);
                let public = PublicKey::from(&secret);
                let own = Arc::new(OwnKey {
                    rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
                    secret,
                    public,
                });
                // A peer with our own public key cannot be talked to (the kernel drops it too).
                st.peers.remove(&Key(public.to_bytes()));
                let peers: Vec<Arc<Peer>> = st.peers.values().cloned().collect();
                for p in peers {
                    // A fresh index, so packets for the old key's sessions still find them.
                    let index = alloc_index(&mut st);
                    let mut core = lock(&p.core);
                    let old_index = core.index;
                    // (Two changes in a row without a new session keep the older state.)
                    core.previous = match core.tunn.take().filter(has_session) {
                        Some(tunn) => Some(Previous {
                            tunn,
                            index: old_index,
                            since: Instant::now(),
                            last_kick: None,
                        }),
                        None => core.previous.take(),
                    };
                    core.index = index;
                    core.tunn = Device::new_tunn(Some(&own), &p.public, index, core.keepalive);
                }
                st.key = Some(own);
            }
        }

        if req.replace_peers {
            let keep: std::collections::HashSet<Key> = req
                .peers
                .iter()
                .filter(|p| !p.remove)
                .map(|p| p.public_key)
                .collect();
            st.peers.retain(|k, _| keep.contains(k));
        }

        for sp in req.peers {
            if sp.remove {
                st.peers.remove(&sp.public_key);
                continue;
            }
            if st
                .key
                .as_ref()
                .is_some_and(|own| own.public.to_bytes() == sp.public_key.0)
            {
                continue;
            }
            let peer = match st.peers.get(&sp.public_key) {
                Some(p) => p.clone(),
                None if sp.update_only => continue,
                None => {
                    let index = alloc_index(&mut st);
                    let tunn = Device::new_tunn(st.key.as_deref(), &sp.public_key, index, 0);
                    let p = Arc::new(Peer {
                        public: sp.public_key,
                        core: Mutex::new(PeerCore {
                            tunn,
                            index,
                            previous: None,
                            endpoint: None,
                            allowed_ips: Vec::new(),
                            keepalive: 0,
                            last_handshake: None,
                        }),
                        rx_bytes: AtomicU64::new(0),
                        tx_bytes: AtomicU64::new(0),
                    });
                    st.peers.insert(sp.public_key, p.clone());
                    p
                }
            };
            let mut core = lock(&peer.core);
            if let Some(e) = sp.endpoint {
                core.endpoint = Some(SocketAddr::new(e.ip().to_canonical(), e.port()));
            }
            if let Some(ka) = sp.persistent_keepalive
                && ka != core.keepalive
            {
                // boringtun fixes the keepalive at construction: a new Tunn (a new handshake).
                core.keepalive = ka;
                core.tunn = Device::new_tunn(st.key.as_deref(), &peer.public, core.index, ka);
            }
            if sp.replace_allowed_ips {
                core.allowed_ips.clear();
            }
            for ip in sp.allowed_ips {
                let ip = ip.masked();
                if !core.allowed_ips.contains(&ip) {
                    core.allowed_ips.push(ip);
                }
                // A prefix belongs to one peer: taking it here takes it from the others.
                for other in st.peers.values() {
                    if !Arc::ptr_eq(other, &peer) {
                        lock(&other.core).allowed_ips.retain(|a| *a != ip);
                    }
                }
            }
        }

        // Rebuild the indices and the route table from the peers as they now are.
        let peers: Vec<(Arc<Peer>, Vec<AllowedIp>)> = st
            .peers
            .values()
            .map(|p| (p.clone(), lock(&p.core).allowed_ips.clone()))
            .collect();
        st.by_index = HashMap::new();
        for (p, _) in &peers {
            let core = lock(&p.core);
            st.by_index.insert(core.index, p.clone());
            if let Some(prev) = &core.previous {
                st.by_index.insert(prev.index, p.clone());
            }
        }
        st.routes = RouteTable::build(peers.iter().map(|(p, ips)| (p, ips.as_slice())));
        Ok(())
    }

    fn info(&self) -> DeviceInfo {
        let st = read(&self.state);
        let mut peers: Vec<PeerInfo> = st
            .peers
            .values()
            .map(|p| {
                let core = lock(&p.core);
                // Only while the Tunn still has a session: a new key or an expired session
                // shows no handshake, as with wireguard-go.
                let last_handshake = core.last_handshake.filter(|_| {
                    core.tunn.as_ref().is_some_and(has_session) || core.previous.is_some()
                });
                PeerInfo {
                    public_key: p.public,
                    endpoint: core.endpoint,
                    allowed_ips: core.allowed_ips.clone(),
                    last_handshake,
                    rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                    tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
                    persistent_keepalive: core.keepalive,
                }
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        DeviceInfo {
            private_key: st.key.as_ref().map(|k| Key(k.secret.to_bytes())),
            public_key: st.key.as_ref().map(|k| Key(k.public.to_bytes())),
            listen_port: st.listen_port,
            peers,
        }
    }
}

impl UapiHandler for Device {
    fn get(&self) -> DeviceInfo {
        self.info()
    }

    fn set(&self, request: SetDevice) -> Result<(), (i32, String)> {
        let before: std::collections::HashSet<Key> =
            read(&self.state).peers.keys().copied().collect();
        self.apply(request)?;
        self.greet_new_peers(&before);
        Ok(())
    }
}

impl Device {
    /// A peer added with an endpoint gets a handshake initiation at once, not on its first
    /// packet. After a key rotation the rotating node's own initiation may have been refused by
    /// a peer that did not know its new key yet (and is retried only after 5 s), while the peer
    /// that just learned the key may have nothing to send (a TCP receiver): its initiation
    /// closes that gap.
    fn greet_new_peers(&self, before: &std::collections::HashSet<Key>) {
        let (peers, socket) = {
            let st = read(&self.state);
            let new: Vec<Arc<Peer>> = st
                .peers
                .iter()
                .filter(|(k, _)| !before.contains(*k))
                .map(|(_, p)| p.clone())
                .collect();
            (new, st.socket.clone())
        };
        let mut out = vec![0u8; OUT_BUF];
        for peer in peers {
            let mut core = lock(&peer.core);
            let endpoint = core.endpoint;
            let Some(tunn) = core.tunn.as_mut() else {
                continue;
            };
            if endpoint.is_none() {
                continue;
            }
            if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut out, false)
            {
                drop(core);
                self.send(&peer, socket.as_deref(), endpoint, p);
            }
        }
    }
}

/// A 24-bit peer index no peer uses now (current or previous key).
fn alloc_index(st: &mut State) -> u32 {
    loop {
        let i = st.next_index & 0x00ff_ffff;
        st.next_index = st.next_index.wrapping_add(1);
        if !st.by_index.contains_key(&i) {
            return i;
        }
    }
}

/// Binds the device's UDP socket: dual-stack `[::]:port`, or `0.0.0.0:port` where IPv6 is off.
/// A receive timeout lets the incoming thread notice a rebind and a stop.
fn bind_udp(port: u16) -> io::Result<Udp> {
    let (socket, v6) = match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)) {
        Ok(s) => (s, true),
        Err(_) => (UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?, false),
    };
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    // Coalesced receives (UDP GRO); without it, one datagram per receive.
    let _ = setsockopt(&socket, sockopt::UdpGroSegment, &true);
    Ok(Udp {
        socket,
        v6,
        gso: AtomicBool::new(true),
    })
}

/// The device's UDP socket, whether it is a dual-stack IPv6 one, and whether UDP GSO works.
struct Udp {
    socket: UdpSocket,
    v6: bool,
    gso: AtomicBool,
}

/// The encrypted datagrams of one read from the link, back to back, sent in GSO batches.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    lens: Vec<usize>,
}

/// Most segments the kernel takes in one UDP GSO send (`UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one UDP GSO send: the payload of one maximal UDP datagram.
const GSO_MAX_BYTES: usize = 65_000;
/// A batch is sent once it holds this much (a few GSO sends), even if the link has more.
const BATCH_BYTES: usize = 64 << 10;

impl Batch {
    fn clear(&mut self) {
        self.data.clear();
        self.lens.clear();
    }

    fn push(&mut self, datagram: &[u8]) {
        self.data.extend_from_slice(datagram);
        self.lens.push(datagram.len());
    }

    /// Sends the datagrams: runs of equal size (the last of a run may be shorter) go out in one
    /// `sendmsg` with `UDP_SEGMENT`.
    fn send(&self, socket: &Udp, to: SocketAddr, peer: &Peer) {
        let mut start = 0; // byte offset of the run
        let mut i = 0;
        while i < self.lens.len() {
            let seg = self.lens[i];
            let mut end = start + seg;
            let mut j = i + 1;
            while j < self.lens.len()
                && j - i < GSO_MAX_SEGMENTS
                && self.lens[j] <= seg
                && end + self.lens[j] <= GSO_MAX_BYTES
            {
                end += self.lens[j];
                j += 1;
                if self.lens[j - 1] < seg {
                    break; // a shorter datagram ends a run
                }
            }
            match socket.send_segments(&self.data[start..end], seg, to) {
                Ok(n) => {
                    peer.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(peer = %peer.public, %to, error = %e, "send"),
            }
            start = end;
            i = j;
        }
    }
}

impl Udp {
    /// Sends `data`, datagrams of `seg` bytes back to back (the last may be shorter): one
    /// `sendmsg` with UDP GSO when there are several and the kernel supports it, else one
    /// `sendto` each. Returns the bytes sent.
    fn send_segments(&self, data: &[u8], seg: usize, to: SocketAddr) -> io::Result<usize> {
        if data.len() > seg && self.gso.load(Ordering::Relaxed) {
            let addr = SockaddrStorage::from(self.wire_addr(to));
            let seg16 = u16::try_from(seg).unwrap_or(u16::MAX);
            let cmsg = [ControlMessage::UdpGsoSegments(&seg16)];
            match sendmsg(
                self.socket.as_raw_fd(),
                &[IoSlice::new(data)],
                &cmsg,
                MsgFlags::empty(),
                Some(&addr),
            ) {
                Ok(n) => return Ok(n),
                // No GSO on this kernel or path: from now on, one datagram per send.
                Err(Errno::EIO | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => {
                    tracing::info!("udp gso refused by the kernel; sending datagrams one by one");
                    self.gso.store(false, Ordering::Relaxed);
                }
                // This batch only (datagrams larger than the path MTU, for one): one by one.
                Err(Errno::EINVAL) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut sent = 0;
        for d in data.chunks(seg.max(1)) {
            sent += self.send_to(d, to)?;
        }
        Ok(sent)
    }

    fn wire_addr(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => to,
        }
    }

    /// Sends one datagram; IPv4 endpoints go as v4-mapped addresses on a dual-stack socket.
    fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(data, self.wire_addr(to))
    }

    /// Receives datagrams into `buf`: several from one sender back to back when UDP GRO
    /// coalesced them. Returns the bytes, the sender, and the size of each datagram (the last
    /// may be shorter).
    fn recv_segments(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
        let mut cmsg = nix::cmsg_space!(i32);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let n = msg.bytes;
        let seg = msg
            .cmsgs()
            .ok()
            .and_then(|mut c| {
                c.find_map(|c| match c {
                    ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok(),
                    _ => None,
                })
            })
            .filter(|s| *s > 0)
            .unwrap_or(n.max(1));
        let from = msg
            .address
            .and_then(|a| {
                a.as_sockaddr_in6()
                    .map(|a| SocketAddr::V6(std::net::SocketAddrV6::from(*a)))
                    .or_else(|| {
                        a.as_sockaddr_in()
                            .map(|a| SocketAddr::V4(std::net::SocketAddrV4::from(*a)))
                    })
            })
            .ok_or_else(|| io::Error::other("datagram without a sender address"))?;
        Ok((
            n,
            SocketAddr::new(from.ip().to_canonical(), from.port()),
            seg,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(b: u8) -> Arc<Peer> {
        Arc::new(Peer {
            public: Key([b; 32]),
            core: Mutex::new(PeerCore {
                tunn: None,
                index: u32::from(b),
                previous: None,
                endpoint: None,
                allowed_ips: Vec::new(),
                keepalive: 0,
                last_handshake: None,
            }),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        })
    }

    fn ips(list: &[&str]) -> Vec<AllowedIp> {
        list.iter()
            .map(|s| s.parse::<AllowedIp>().unwrap().masked())
            .collect()
    }

    #[test]
    fn longest_prefix_wins() {
        let (a, b, c) = (peer(1), peer(2), peer(3));
        let (ia, ib, ic) = (
            ips(&["0.0.0.0/0", "fd00::/8"]),
            ips(&["10.0.0.0/8", "fd00:1::/32"]),
            ips(&["10.1.2.3/32", "10.1.0.0/16", "fd00:1::5/128"]),
        );
        let t = RouteTable::build(
            [
                (&a, ia.as_slice()),
                (&b, ib.as_slice()),
                (&c, ic.as_slice()),
            ]
            .into_iter(),
        );
        let who = |ip: &str| t.lookup(ip.parse().unwrap()).map(|p| p.public.0[0]);
        assert_eq!(who("10.1.2.3"), Some(3));
        assert_eq!(who("10.1.9.9"), Some(3));
        assert_eq!(who("10.2.0.1"), Some(2));
        assert_eq!(who("192.0.2.1"), Some(1));
        assert_eq!(who("fd00:1::5"), Some(3));
        assert_eq!(who("fd00:1::6"), Some(2));
        assert_eq!(who("fd01::1"), Some(1));
        assert_eq!(who("2001:db8::1"), None);
        let empty = RouteTable::default();
        assert!(empty.lookup("10.0.0.1".parse().unwrap()).is_none());
    }
}
