//! The proxy's sockets: the tokio shell around [`DnsProxy`], which stays pure logic.
//!
//! [`DnsProxyServer::start`] binds a UDP and a TCP socket on `127.0.0.1:<port>` with
//! `IP_TRANSPARENT` in the calling thread's network namespace (the node's): the datapath hands
//! them the DNS queries of the endpoints it redirects (`bpf_sk_assign`), unchanged, so
//! - a UDP query's original destination (the server the pod asked) comes with it
//!   (`IP_RECVORIGDSTADDR`), and the answer leaves from a transparent UDP socket bound to that
//!   address and port: the pod sees its server answer;
//! - an accepted TCP connection's local address is the original destination.
//!
//! Each query goes through [`DnsProxy::on_query`]: REFUSED goes back at once; an allowed query
//! goes to its server from an ordinary socket of the node (a fresh UDP socket per query, one TCP
//! connection per client connection). The server's response goes through
//! [`DnsProxy::on_response`]; a held one is released when the host ([`ProxyHost::apply`]) has
//! applied its changes, or after [`crate::ProxyConfig::hold_max`] in any case.
//!
//! Sockets made after `start` (the answers' transparent sockets, the forwarding sockets) are
//! made by one thread that stays in the namespace `start` was called in, so the tokio workers
//! may run in any namespace. It makes forwarding sockets ahead, a few dozen at a time, so a
//! query does not wait for it; each is used for one exchange.
//!
//! Input never panics the server: malformed queries, unsolicited responses and socket errors
//! are counted ([`ServerStats`]) and dropped. In-flight UDP forwards and TCP connections are
//! bounded ([`MAX_UDP_FORWARDS`], [`MAX_TCP_CONNECTIONS`]).

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn, bind,
    listen, recvmsg, setsockopt, socket, sockopt,
};
use plexus_model::identity::NumericIdentity;
use plexus_policy::Proto;
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use crate::learner::Change;
use crate::proxy::{DnsProxy, Flow, HoldId, QueryAction, ResponseAction};
use crate::rules::EndpointId;

/// The most UDP queries forwarded and not yet answered at once; more are dropped and counted.
pub const MAX_UDP_FORWARDS: usize = 1024;
/// The most TCP connections served at once; more are closed and counted.
pub const MAX_TCP_CONNECTIONS: usize = 1024;
/// A TCP connection with no message either way for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest DNS message (UDP datagram or TCP frame).
const MAX_MESSAGE: usize = 65535;
/// The most answer sockets (one per server address and port) kept open.
const MAX_REPLY_SOCKETS: usize = 256;

/// What the server needs from its host (the agent): narrow, with a fake in tests.
pub trait ProxyHost: Send + Sync + 'static {
    /// The local endpoint with this address (None: the query is dropped, counted).
    fn endpoint_of(&self, client: IpAddr) -> Option<EndpointId>;
    /// The security identity of a server address (the agent's ipcache lookup; world if unknown).
    fn identity_of(&self, server: IpAddr) -> NumericIdentity;
    /// Applies a held response's changes; the future resolves when the datapath has them
    /// (the server waits at most ProxyConfig::hold_max in any case, then releases).
    ///
    /// Called in the order the responses were learned from, never under the proxy's lock; the
    /// future is driven to completion even when the server stops waiting for it.
    fn apply(&self, changes: Vec<Change>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Where the server listens and how long it waits for servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The port on 127.0.0.1 (UDP and TCP) the datapath's redirect names.
    pub port: u16,
    /// How long a forwarded query waits for its server (UDP response, TCP connect).
    pub forward_timeout: Duration,
}

impl ServerConfig {
    /// The default port (the agent's `dns-proxy-port`).
    pub const DEFAULT_PORT: u16 = 10053;
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            port: Self::DEFAULT_PORT,
            forward_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `start` was called outside a tokio runtime.
    #[error("the DNS proxy server must start inside a tokio runtime")]
    NoRuntime,
    /// A listening socket could not be made.
    #[error("DNS proxy {proto} socket on {addr}: {source}")]
    Listen {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address.
        addr: SocketAddrV4,
        /// Why.
        source: io::Error,
    },
    /// The thread that makes the node's sockets could not start.
    #[error("DNS proxy socket thread (network namespace {path}): {source}")]
    Netns {
        /// The namespace file.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// The server's counters since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Queries received (UDP datagrams and TCP messages from clients).
    pub queries: u64,
    /// Queries sent on to their server.
    pub forwarded: u64,
    /// Queries answered REFUSED.
    pub refused: u64,
    /// Queries dropped as malformed (not a query, or no original destination).
    pub malformed: u64,
    /// Queries (or TCP connections) from an address that is no local endpoint.
    pub no_endpoint: u64,
    /// UDP queries or TCP connections dropped because too many were in flight.
    pub overloaded: u64,
    /// Responses passed on at once.
    pub delivered: u64,
    /// Responses held until their changes were applied.
    pub held: u64,
    /// Held responses released after `hold_max` before their changes were applied.
    pub hold_expired: u64,
    /// Responses dropped (malformed or unsolicited).
    pub responses_dropped: u64,
    /// Forwarding failures (socket, connect or send errors, server closed).
    pub forward_errors: u64,
    /// Forwarded queries whose server did not answer (or accept) within `forward_timeout`.
    pub forward_timeouts: u64,
    /// Answers that could not be sent to the client.
    pub send_errors: u64,
    /// TCP connections accepted.
    pub tcp_connections: u64,
}

#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    forwarded: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
    no_endpoint: AtomicU64,
    overloaded: AtomicU64,
    delivered: AtomicU64,
    held: AtomicU64,
    hold_expired: AtomicU64,
    responses_dropped: AtomicU64,
    forward_errors: AtomicU64,
    forward_timeouts: AtomicU64,
    send_errors: AtomicU64,
    tcp_connections: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            queries: g(&self.queries),
            forwarded: g(&self.forwarded),
            refused: g(&self.refused),
            malformed: g(&self.malformed),
            no_endpoint: g(&self.no_endpoint),
            overloaded: g(&self.overloaded),
            delivered: g(&self.delivered),
            held: g(&self.held),
            hold_expired: g(&self.hold_expired),
            responses_dropped: g(&self.responses_dropped),
            forward_errors: g(&self.forward_errors),
            forward_timeouts: g(&self.forward_timeouts),
            send_errors: g(&self.send_errors),
            tcp_connections: g(&self.tcp_connections),
        }
    }
}

/// A poisoned lock still guards consistent data here (every critical section is one call).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread in the server's network namespace that makes its sockets: a socket belongs to the
/// namespace of the thread that creates it, and tokio's workers may be elsewhere.
struct NodeSockets {
    jobs: std::sync::mpsc::Sender<Job>,
    /// Forwarding sockets made ahead (each used once), so a query does not wait for the
    /// thread.
    udp: Arc<Pool<std::net::UdpSocket>>,
    tcp: Arc<Pool<std::net::TcpStream>>,
}

/// Sockets made ahead by the socket thread.
struct Pool<T> {
    ready: Mutex<Vec<T>>,
    refilling: AtomicBool,
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self {
            ready: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
        }
    }
}

/// Sockets a pool holds after a refill.
const POOL_SIZE: usize = 64;
/// A pool below this many is refilled.
const POOL_LOW: usize = 16;

impl NodeSockets {
    /// Starts the thread in the calling thread's namespace.
    fn start() -> Result<Self, ServerError> {
        const PATH: &str = "/proc/thread-self/ns/net";
        let err = |source| ServerError::Netns {
            path: PATH.into(),
            source,
        };
        let netns = File::open(PATH).map_err(err)?;
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("dnsproxy-sockets".into())
            .spawn(move || {
                // A new thread starts in its creator's namespace already; enter it only if not
                // (entering needs CAP_SYS_ADMIN).
                let entered = same_netns(&netns).and_then(|same| {
                    if same {
                        Ok(())
                    } else {
                        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(io::Error::from)
                    }
                });
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    for job in rx {
                        job();
                    }
                }
            })
            .map_err(err)?;
        ready_rx
            .recv()
            .map_err(|_| err(io::Error::other("the socket thread ended")))?
            .map_err(err)?;
        Ok(Self {
            jobs,
            udp: Arc::default(),
            tcp: Arc::default(),
        })
    }

    /// A fresh unconnected UDP socket of the namespace.
    async fn udp(&self) -> io::Result<std::net::UdpSocket> {
        self.take(&self.udp, udp_socket).await
    }

    /// A fresh unconnected TCP socket of the namespace.
    async fn tcp(&self) -> io::Result<std::net::TcpStream> {
        self.take(&self.tcp, tcp_socket).await
    }

    /// One socket of `pool` (made on the spot when it is empty), refilling it when low.
    async fn take<T: Send + 'static>(
        &self,
        pool: &Arc<Pool<T>>,
        make: fn() -> io::Result<T>,
    ) -> io::Result<T> {
        let (socket, left) = {
            let mut ready = lock(&pool.ready);
            (ready.pop(), ready.len())
        };
        if left < POOL_LOW && !pool.refilling.swap(true, Ordering::AcqRel) {
            let refill = pool.clone();
            let sent = self.jobs.send(Box::new(move || {
                let made: Vec<T> = (left..POOL_SIZE).map_while(|_| make().ok()).collect();
                lock(&refill.ready).extend(made);
                refill.refilling.store(false, Ordering::Release);
            }));
            if sent.is_err() {
                pool.refilling.store(false, Ordering::Release);
            }
        }
        match socket {
            Some(s) => Ok(s),
            None => self.run(make).await,
        }
    }

    /// Runs `f` in the namespace.
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<R> + Send + 'static,
    ) -> io::Result<R> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| io::Error::other("the DNS proxy's socket thread ended"))?;
        rx.await
            .map_err(|_| io::Error::other("the DNS proxy's socket thread ended"))?
    }
}

/// Whether the calling thread is in the namespace `netns`.
fn same_netns(netns: &File) -> io::Result<bool> {
    let mine = std::fs::metadata("/proc/thread-self/ns/net")?;
    let theirs = netns.metadata()?;
    Ok(mine.dev() == theirs.dev() && mine.ino() == theirs.ino())
}

/// A non-blocking socket of `ty` with IP_TRANSPARENT and SO_REUSEADDR, bound to `addr`.
fn transparent_socket(ty: SockType, addr: SocketAddrV4) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::IpTransparent, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    Ok(fd)
}

/// The mark of the proxy's forwarded queries (`SO_MARK`): in tunnel mode the node has no
/// route of its own to other nodes' pods, so the agent routes packets with this mark (under
/// mask `0xf00`) through a table of routes via the nodes' underlay addresses.
pub const FORWARD_MARK: u32 = 0x300;

/// A non-blocking TCP socket with [`FORWARD_MARK`], not yet connected.
fn tcp_socket() -> io::Result<std::net::TcpStream> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Mark, &FORWARD_MARK)?;
    Ok(std::net::TcpStream::from(fd))
}

/// A non-blocking UDP socket with [`FORWARD_MARK`], not yet bound: connecting it binds a
/// random port.
fn udp_socket() -> io::Result<std::net::UdpSocket> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Mark, &FORWARD_MARK)?;
    Ok(std::net::UdpSocket::from(fd))
}

/// What one response led to, decided under the locks.
enum Responded {
    Deliver(Vec<u8>),
    Hold(HoldId, Pin<Box<dyn Future<Output = ()> + Send>>),
    Dropped,
}

/// The state the server's tasks share.
struct Shared {
    config: ServerConfig,
    hold_max: Duration,
    proxy: Arc<Mutex<DnsProxy>>,
    host: Arc<dyn ProxyHost>,
    stats: Counters,
    sockets: NodeSockets,
    /// The answers' transparent UDP sockets, per server address.
    replies: Mutex<HashMap<SocketAddrV4, Arc<UdpSocket>>>,
    /// The writer of each TCP connection, by flow (for releases from the timer).
    tcp_writers: Mutex<HashMap<Flow, mpsc::Sender<Vec<u8>>>>,
    /// Taken around `on_response` and `host.apply`, so changes are applied in learning order.
    apply_order: Mutex<()>,
    /// Wakes the timer when a deadline may have come nearer.
    timer: Notify,
    /// Whether the timer sleeps until a deadline (a forwarded query's, 10 s away, then needs
    /// no wake-up: only an idle timer or a new hold does).
    timer_armed: AtomicBool,
}

impl Shared {
    /// A response from the server of `flow`: learn, and pass on, hold or drop.
    fn on_response(&self, flow: Flow, bytes: &[u8]) -> Responded {
        let _order = lock(&self.apply_order);
        let (action, errors) = lock(&self.proxy).on_response(flow, bytes, Instant::now());
        for e in errors {
            warn!(client = %flow.client, server = %flow.server, "DNS proxy: {e}");
        }
        match action {
            ResponseAction::Deliver(bytes) => {
                inc(&self.stats.delivered);
                Responded::Deliver(bytes)
            }
            ResponseAction::Hold { id, changes } => {
                inc(&self.stats.held);
                self.timer.notify_one();
                Responded::Hold(id, self.host.apply(changes))
            }
            ResponseAction::Drop(reason) => {
                inc(&self.stats.responses_dropped);
                debug!(client = %flow.client, server = %flow.server, ?reason, "DNS proxy: response dropped");
                Responded::Dropped
            }
        }
    }

    /// Waits for a hold's changes (at most `hold_max`), then sends its response.
    async fn release(&self, id: HoldId, apply: Pin<Box<dyn Future<Output = ()> + Send>>) {
        // Spawned, so the host's work finishes even if the wait below gives up.
        let applied = tokio::spawn(apply);
        let in_time = tokio::time::timeout(self.hold_max, applied).await.is_ok();
        let release = lock(&self.proxy).applied(id);
        if let Some(r) = release {
            if !in_time {
                inc(&self.stats.hold_expired);
            }
            self.deliver(&r.flow, r.bytes).await;
        }
    }

    /// Sends `bytes` to the client of `flow`: from the server's address (UDP) or through its
    /// connection's writer (TCP).
    async fn deliver(&self, flow: &Flow, bytes: Vec<u8>) {
        match flow.proto {
            Proto::Udp => self.send_udp(flow.server, flow.client, &bytes).await,
            _ => {
                let writer = lock(&self.tcp_writers).get(flow).cloned();
                match writer {
                    Some(w) if w.send(bytes).await.is_ok() => {}
                    _ => inc(&self.stats.send_errors),
                }
            }
        }
    }

    /// Sends a UDP answer to `client` from `server` (a transparent socket bound to it).
    async fn send_udp(&self, server: SocketAddr, client: SocketAddr, bytes: &[u8]) {
        let SocketAddr::V4(server) = server else {
            inc(&self.stats.send_errors);
            return;
        };
        let socket = match self.reply_socket(server).await {
            Ok(s) => s,
            Err(e) => {
                inc(&self.stats.send_errors);
                warn!(%server, "DNS proxy: answer socket: {e}");
                return;
            }
        };
        if let Err(e) = socket.send_to(bytes, client).await {
            inc(&self.stats.send_errors);
            warn!(%server, %client, "DNS proxy: sending the answer: {e}");
        }
    }

    /// The transparent socket bound to `server`, made on first use.
    async fn reply_socket(&self, server: SocketAddrV4) -> io::Result<Arc<UdpSocket>> {
        if let Some(s) = lock(&self.replies).get(&server) {
            return Ok(s.clone());
        }
        let fd = self
            .sockets
            .run(move || transparent_socket(SockType::Datagram, server))
            .await?;
        let socket = Arc::new(UdpSocket::from_std(std::net::UdpSocket::from(fd))?);
        let mut replies = lock(&self.replies);
        if replies.len() >= MAX_REPLY_SOCKETS {
            replies.clear();
        }
        Ok(replies.entry(server).or_insert(socket).clone())
    }

    /// The flow of a query from `client` to `server`, or None (counted) for a non-endpoint.
    fn flow(&self, client: SocketAddr, server: SocketAddr, proto: Proto) -> Option<Flow> {
        let Some(endpoint) = self.host.endpoint_of(client.ip()) else {
            inc(&self.stats.no_endpoint);
            debug!(%client, %server, "DNS proxy: query from no local endpoint dropped");
            return None;
        };
        Some(Flow {
            endpoint,
            client,
            server,
            server_identity: self.host.identity_of(server.ip()),
            proto,
        })
    }

    /// A query on `flow`: counted, decided.
    fn on_query(&self, flow: Flow, bytes: &[u8]) -> QueryAction {
        inc(&self.stats.queries);
        let action = lock(&self.proxy).on_query(flow, bytes, Instant::now());
        match &action {
            QueryAction::Forward(_) => {
                inc(&self.stats.forwarded);
                debug!(client = %flow.client, server = %flow.server, proto = ?flow.proto, "DNS proxy: query forwarded");
                if !self.timer_armed.load(Ordering::Acquire) {
                    self.timer.notify_one();
                }
            }
            QueryAction::Reply { reason, .. } => {
                inc(&self.stats.refused);
                debug!(client = %flow.client, server = %flow.server, proto = ?flow.proto, ?reason, "DNS proxy: query refused");
            }
            QueryAction::Drop(e) => {
                inc(&self.stats.malformed);
                debug!(client = %flow.client, server = %flow.server, "DNS proxy: query dropped: {e}");
            }
        }
        action
    }
}

/// The node's DNS proxy on 127.0.0.1:`port`, UDP and TCP, until shut down or dropped.
pub struct DnsProxyServer {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    local: SocketAddrV4,
}

impl DnsProxyServer {
    /// Binds UDP + TCP transparent sockets on 127.0.0.1:port in the calling thread's network
    /// namespace (the agent runs in the node's netns), and serves on the current tokio runtime
    /// until dropped or shut down.
    pub fn start(
        config: ServerConfig,
        proxy: Arc<Mutex<DnsProxy>>,
        host: Arc<dyn ProxyHost>,
    ) -> Result<Self, ServerError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ServerError::NoRuntime)?;
        let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, config.port);
        let listen_err = |proto| {
            move |source| ServerError::Listen {
                proto,
                addr: local,
                source,
            }
        };
        let udp = transparent_socket(SockType::Datagram, local)
            .and_then(|fd| {
                setsockopt(&fd, sockopt::Ipv4OrigDstAddr, &true)?;
                Ok(fd)
            })
            .map_err(listen_err("udp"))?;
        let tcp = transparent_socket(SockType::Stream, local)
            .and_then(|fd| {
                listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
                Ok(fd)
            })
            .map_err(listen_err("tcp"))?;
        let sockets = NodeSockets::start()?;
        let _guard = runtime.enter();
        let udp = UdpSocket::from_std(std::net::UdpSocket::from(udp)).map_err(listen_err("udp"))?;
        let tcp =
            TcpListener::from_std(std::net::TcpListener::from(tcp)).map_err(listen_err("tcp"))?;
        let hold_max = lock(&proxy).config().hold_max;
        let shared = Arc::new(Shared {
            config,
            hold_max,
            proxy,
            host,
            stats: Counters::default(),
            sockets,
            replies: Mutex::new(HashMap::new()),
            tcp_writers: Mutex::new(HashMap::new()),
            apply_order: Mutex::new(()),
            timer: Notify::new(),
            timer_armed: AtomicBool::new(false),
        });
        let tasks = vec![
            runtime.spawn(udp_loop(shared.clone(), udp)),
            runtime.spawn(tcp_loop(shared.clone(), tcp)),
            runtime.spawn(timer_loop(shared.clone())),
        ];
        Ok(Self {
            shared,
            tasks,
            local,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// Its counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats.snapshot()
    }

    /// Closes the sockets (after which the datapath falls back to the servers) and ends every
    /// exchange in flight.
    pub async fn shutdown(mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            // Cancelled: its sockets are closed once this returns.
            let _ = t.await;
        }
    }
}

impl Drop for DnsProxyServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One datagram from the transparent socket: its length, the client, the original
/// destination (None if the kernel gave none).
fn recv_query(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SockaddrIn, Option<SockaddrIn>)> {
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
    let orig = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::Ipv4OrigDstAddr(a) => Some(SockaddrIn::from(a)),
        _ => None,
    });
    let client = msg
        .address
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    Ok((msg.bytes, client, orig))
}

fn v4(a: SockaddrIn) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port()))
}

/// Reads the redirected UDP queries and starts their exchanges.
async fn udp_loop(shared: Arc<Shared>, socket: UdpSocket) {
    let mut exchanges = JoinSet::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let fd = socket.as_raw_fd();
    loop {
        tokio::select! {
            // Cancel-safe: the receive runs only once the socket is readable, and completes.
            got = socket.async_io(Interest::READABLE, || recv_query(fd, &mut buf)) => {
                let (n, client, orig) = match got {
                    Ok(got) => got,
                    Err(e) => {
                        warn!("DNS proxy: UDP receive: {e}");
                        continue;
                    }
                };
                let (client, Some(orig)) = (v4(client), orig) else {
                    inc(&shared.stats.queries);
                    inc(&shared.stats.malformed);
                    debug!(%client, "DNS proxy: UDP query without its original destination");
                    continue;
                };
                let server = v4(orig);
                if exchanges.len() >= MAX_UDP_FORWARDS {
                    inc(&shared.stats.queries);
                    inc(&shared.stats.overloaded);
                    debug!(%client, %server, "DNS proxy: too many UDP queries in flight, dropped");
                    continue;
                }
                let Some(flow) = shared.flow(client, server, Proto::Udp) else {
                    inc(&shared.stats.queries);
                    continue;
                };
                match shared.on_query(flow, &buf[..n]) {
                    QueryAction::Forward(query) => {
                        exchanges.spawn(forward_udp(shared.clone(), flow, query));
                    }
                    QueryAction::Reply { bytes, .. } => {
                        let shared = shared.clone();
                        exchanges.spawn(async move { shared.send_udp(server, client, &bytes).await });
                    }
                    QueryAction::Drop(_) => {}
                }
            }
            Some(_) = exchanges.join_next(), if !exchanges.is_empty() => {}
        }
    }
}

/// Sends a query to its server from a fresh socket and handles the response.
async fn forward_udp(shared: Arc<Shared>, flow: Flow, query: Vec<u8>) {
    let server = flow.server;
    let socket = async {
        let socket = UdpSocket::from_std(shared.sockets.udp().await?)?;
        socket.connect(server).await?;
        socket.send(&query).await?;
        Ok::<_, io::Error>(socket)
    };
    let socket = match socket.await {
        Ok(s) => s,
        Err(e) => {
            inc(&shared.stats.forward_errors);
            warn!(%server, "DNS proxy: forwarding over UDP: {e}");
            return;
        }
    };
    let deadline = tokio::time::Instant::now() + shared.config.forward_timeout;
    // Room for the largest datagram, never zeroed: `recv_buf_from` fills it from empty.
    let mut buf = Vec::with_capacity(MAX_MESSAGE);
    loop {
        buf.clear();
        match tokio::time::timeout_at(deadline, socket.recv_buf_from(&mut buf)).await {
            Err(_) => {
                inc(&shared.stats.forward_timeouts);
                debug!(%server, client = %flow.client, "DNS proxy: no UDP response in time");
                return;
            }
            Ok(Err(e)) => {
                inc(&shared.stats.forward_errors);
                debug!(%server, "DNS proxy: UDP response: {e}");
                return;
            }
            // Another sender's datagram: not the answer.
            Ok(Ok((_, from))) if from != server => {}
            Ok(Ok(_)) => match shared.on_response(flow, &buf) {
                Responded::Deliver(bytes) => {
                    return shared.send_udp(server, flow.client, &bytes).await;
                }
                Responded::Hold(id, apply) => return shared.release(id, apply).await,
                // Not the response to this query: keep waiting for it.
                Responded::Dropped => {}
            },
        }
    }
}

/// Accepts the redirected TCP connections.
async fn tcp_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    inc(&shared.stats.tcp_connections);
                    if conns.len() >= MAX_TCP_CONNECTIONS {
                        inc(&shared.stats.overloaded);
                        debug!(%client, "DNS proxy: too many TCP connections, closed");
                        continue;
                    }
                    conns.spawn(tcp_conn(shared.clone(), stream, client));
                }
                Err(e) => {
                    warn!("DNS proxy: TCP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Removes a connection's writer from the map when the connection ends, also when cancelled.
struct WriterEntry<'a> {
    shared: &'a Shared,
    flow: Flow,
}

impl Drop for WriterEntry<'_> {
    fn drop(&mut self) {
        lock(&self.shared.tcp_writers).remove(&self.flow);
    }
}

/// Reads 2-byte-length-prefixed DNS messages; cancel-safe (a read either completes into the
/// buffer or does not happen).
struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }

    /// The next message, or None at the end of the stream.
    async fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let [hi, lo, rest @ ..] = self.buf.as_slice() {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                if rest.len() >= len {
                    let msg = rest[..len].to_vec();
                    self.buf.drain(..2 + len);
                    return Ok(Some(msg));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Writes a length-prefixed message.
async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::other(format!("DNS message of {} bytes", msg.len())))?;
    let mut frame = Vec::with_capacity(2 + msg.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(msg);
    w.write_all(&frame).await
}

/// One client connection: its queries to a connection of its own to the server, the answers
/// back through one writer (so messages never interleave).
async fn tcp_conn(shared: Arc<Shared>, client_conn: TcpStream, client: SocketAddr) {
    let server = match client_conn.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(%client, "DNS proxy: TCP original destination: {e}");
            return;
        }
    };
    let Some(flow) = shared.flow(client, server, Proto::Tcp) else {
        return;
    };
    let upstream = async {
        let socket = TcpSocket::from_std_stream(shared.sockets.tcp().await?);
        socket.connect(server).await
    };
    let upstream = match tokio::time::timeout(shared.config.forward_timeout, upstream).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            inc(&shared.stats.forward_errors);
            warn!(%server, %client, "DNS proxy: connecting over TCP: {e}");
            return;
        }
        Err(_) => {
            inc(&shared.stats.forward_timeouts);
            debug!(%server, %client, "DNS proxy: TCP connect timed out");
            return;
        }
    };
    let (client_read, mut client_write) = client_conn.into_split();
    let (upstream_read, mut upstream_write) = upstream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    lock(&shared.tcp_writers).insert(flow, tx.clone());
    let _entry = WriterEntry {
        shared: &shared,
        flow,
    };
    // The held answers of this connection, cancelled with it.
    let mut tasks = JoinSet::new();
    let mut writer = AbortOnDrop({
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = write_frame(&mut client_write, &msg).await {
                    inc(&shared.stats.send_errors);
                    debug!(%client, "DNS proxy: TCP answer: {e}");
                    return;
                }
            }
            let _ = client_write.shutdown().await;
        })
    });
    let mut from_client = FrameReader::new(client_read);
    let mut from_server = FrameReader::new(upstream_read);
    // Forwarded queries not answered yet, and held answers not sent yet: a client that
    // closed its sending side still gets them.
    let mut outstanding = 0usize;
    let mut client_done = false;
    let idle = tokio::time::sleep(TCP_IDLE_TIMEOUT);
    tokio::pin!(idle);
    loop {
        if client_done && outstanding == 0 {
            break;
        }
        tokio::select! {
            msg = from_client.next(), if !client_done => match msg {
                Ok(Some(query)) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + TCP_IDLE_TIMEOUT);
                    match shared.on_query(flow, &query) {
                        QueryAction::Forward(query) => {
                            if let Err(e) = write_frame(&mut upstream_write, &query).await {
                                inc(&shared.stats.forward_errors);
                                debug!(%server, "DNS proxy: TCP forward: {e}");
                                break;
                            }
                            outstanding += 1;
                        }
                        QueryAction::Reply { bytes, .. } => {
                            if tx.send(bytes).await.is_err() {
                                break;
                            }
                        }
                        QueryAction::Drop(_) => {}
                    }
                }
                Ok(None) => client_done = true,
                Err(e) => {
                    debug!(%client, "DNS proxy: TCP read: {e}");
                    break;
                }
            },
            msg = from_server.next() => match msg {
                Ok(Some(response)) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + TCP_IDLE_TIMEOUT);
                    match shared.on_response(flow, &response) {
                        Responded::Deliver(bytes) => {
                            outstanding = outstanding.saturating_sub(1);
                            if tx.send(bytes).await.is_err() {
                                break;
                            }
                        }
                        Responded::Hold(id, apply) => {
                            // The hold task's completion settles it below.
                            let shared = shared.clone();
                            tasks.spawn(async move { shared.release(id, apply).await });
                        }
                        Responded::Dropped => {}
                    }
                }
                Ok(None) => {
                    if outstanding > 0 {
                        inc(&shared.stats.forward_errors);
                    }
                    break;
                }
                Err(e) => {
                    inc(&shared.stats.forward_errors);
                    debug!(%server, "DNS proxy: TCP response: {e}");
                    break;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                // A held answer went out.
                outstanding = outstanding.saturating_sub(1);
            }
            () = &mut idle => {
                debug!(%client, %server, "DNS proxy: TCP connection idle, closed");
                break;
            }
        }
    }
    // Let the writer send what is queued, then close the client's side.
    drop(_entry);
    drop(tx);
    let _ = upstream_write.shutdown().await;
    let _ = tokio::time::timeout(shared.config.forward_timeout, &mut writer.0).await;
}

/// A task cancelled when this is dropped (with the connection that owns it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Releases the holds past `hold_max` and forgets timed-out queries, when due.
async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let next = {
            // Stored under the proxy's lock: a query forwarded after it sees it, one before is
            // in `next`; a wake-up after this point is kept (notify_one stores a permit).
            let proxy = lock(&shared.proxy);
            let next = proxy.next_deadline();
            shared.timer_armed.store(next.is_some(), Ordering::Release);
            next
        };
        let notified = shared.timer.notified();
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.into()) => {}
                    () = notified => continue,
                }
            }
            None => {
                notified.await;
                continue;
            }
        }
        let releases = lock(&shared.proxy).poll(Instant::now());
        for r in releases {
            inc(&shared.stats.hold_expired);
            shared.deliver(&r.flow, r.bytes).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncWriteExt;

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn frames_are_read_whole_however_the_bytes_arrive() {
        let (mut tx, rx) = tokio::io::duplex(8);
        let mut frames = FrameReader::new(rx);
        let writer = tokio::spawn(async move {
            // Two messages in one write, then one split inside its length and its body.
            tx.write_all(&[0, 2, 1, 2, 0, 1, 3]).await.unwrap();
            tx.write_all(&[0]).await.unwrap();
            tx.write_all(&[3, 4]).await.unwrap();
            tx.write_all(&[5, 6]).await.unwrap();
            // An empty message, then the end inside a frame.
            tx.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        });
        let mut got = Vec::new();
        while let Some(m) = tokio::time::timeout(LIMIT, frames.next())
            .await
            .unwrap()
            .unwrap()
        {
            got.push(m);
        }
        writer.await.unwrap();
        assert_eq!(got, vec![vec![1, 2], vec![3], vec![4, 5, 6], vec![]]);
    }

    #[tokio::test]
    async fn frames_are_written_with_their_length() {
        let mut out = Vec::new();
        tokio::time::timeout(LIMIT, write_frame(&mut out, &[7, 8, 9]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, [0, 3, 7, 8, 9]);
        let too_long = vec![0u8; 70_000];
        assert!(write_frame(&mut out, &too_long).await.is_err());
    }

    #[test]
    fn start_needs_a_runtime() {
        let proxy = DnsProxy::new(
            crate::ProxyConfig::default(),
            crate::Learner::new(crate::CacheConfig::default(), 1..=2),
        );
        struct NoHost;
        impl ProxyHost for NoHost {
            fn endpoint_of(&self, _: IpAddr) -> Option<EndpointId> {
                None
            }
            fn identity_of(&self, _: IpAddr) -> NumericIdentity {
                NumericIdentity(2)
            }
            fn apply(&self, _: Vec<Change>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
                Box::pin(async {})
            }
        }
        let err = DnsProxyServer::start(
            ServerConfig::default(),
            Arc::new(Mutex::new(proxy)),
            Arc::new(NoHost),
        )
        .err()
        .unwrap();
        assert!(matches!(err, ServerError::NoRuntime), "{err}");
    }
}
