//! The soak's traffic: HTTP requests in a loop from client pods to the other cluster's pods,
//! to the global service and to its DNS name; long TCP streams between pods of different
//! clusters with a gap monitor. Every request runs on a thread that entered the client pod's
//! network namespace, so it takes the pod's path through the datapath as a pod's process
//! would; results go to one shared [`Log`].

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::classify::{Cause, Failure, Probe};
use super::plan::humantime_serde_secs;
use crate::sys;

/// How long one request may take (connect, then answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between two requests of one client.
const REQUEST_PAUSE: Duration = Duration::from_millis(100);
/// The pause between two round trips of a stream.
const STREAM_PAUSE: Duration = Duration::from_millis(100);
/// The port of the soak's stream echo servers (in the echo pods).
pub const STREAM_PORT: u16 = 7000;

/// What the traffic threads found.
#[derive(Debug, Default)]
pub struct Log {
    /// Requests that succeeded, by probe.
    pub ok: std::collections::BTreeMap<Probe, u64>,
    /// Failed requests.
    pub failures: Vec<Failure>,
    /// Streams' figures, by stream name.
    pub streams: std::collections::BTreeMap<String, StreamStats>,
}

/// One long stream's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamStats {
    /// Round trips that came back.
    pub round_trips: u64,
    /// Times the connection broke (and was opened again).
    pub breaks: u64,
    /// The longest time between two round trips that came back.
    #[serde(with = "humantime_serde_secs")]
    pub longest_gap: Duration,
    /// When that gap ended, from the soak's start.
    #[serde(with = "humantime_serde_secs")]
    pub longest_gap_end: Duration,
}

/// A client pod of the soak.
#[derive(Clone, Debug)]
pub struct Client {
    /// Its cluster.
    pub cluster: String,
    /// Its node.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// The echo pods of the other clusters it asks (by address).
    pub pods: Vec<Ipv4Addr>,
    /// The echo pods' port it asks them on.
    pub pod_port: u16,
    /// The global service's address in its cluster.
    pub service: Ipv4Addr,
    /// Its cluster's DNS server.
    pub dns: Ipv4Addr,
    /// The global service's DNS name.
    pub name: String,
}

/// Runs traffic until [`Traffic::stop`].
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    /// What was found so far.
    pub log: Arc<Mutex<Log>>,
}

impl Traffic {
    /// Starts with nothing running; `start` is the soak's time zero.
    pub fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            log: Arc::new(Mutex::new(Log::default())),
        }
    }

    /// A client's request loop: each round asks every other cluster's echo pod, the service's
    /// address and the service's name.
    pub fn client(&mut self, c: Client, start: Instant) {
        let stop = self.stop.clone();
        let log = self.log.clone();
        let ns = c.netns.clone();
        self.threads.push(sys::spawn_in_netns(&ns, move || {
            while !stop.load(Ordering::Relaxed) {
                for pod in &c.pods {
                    let at = start.elapsed();
                    let r = http_get(*pod, c.pod_port);
                    record(&log, &c, at, Probe::Pod, format!("{pod}:{}", c.pod_port), r);
                }
                let at = start.elapsed();
                let r = http_get(c.service, 80);
                record(&log, &c, at, Probe::Service, c.service.to_string(), r);
                let at = start.elapsed();
                match resolve_a(c.dns, &c.name) {
                    Ok(ip) => {
                        record(&log, &c, at, Probe::Dns, c.dns.to_string(), Ok(()));
                        let at = start.elapsed();
                        record(
                            &log,
                            &c,
                            at,
                            Probe::DnsHttp,
                            ip.to_string(),
                            http_get(ip, 80),
                        );
                    }
                    Err(cause) => record(&log, &c, at, Probe::Dns, c.dns.to_string(), Err(cause)),
                }
                std::thread::sleep(REQUEST_PAUSE);
            }
            Ok(())
        }));
    }

    /// An echo server on `ip`:[`STREAM_PORT`] in namespace `netns` (an echo pod's).
    pub fn stream_server(&mut self, netns: &str, ip: Ipv4Addr) {
        let stop = self.stop.clone();
        self.threads.push(sys::spawn_in_netns(netns, move || {
            let listener = TcpListener::bind((ip, STREAM_PORT))?;
            listener.set_nonblocking(true)?;
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let stop = stop.clone();
                        conns.push(std::thread::spawn(move || echo(s, &stop)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
            Ok(())
        }));
    }

    /// A long stream from client `c` to `to`:[`STREAM_PORT`]: a round trip every 100 ms; a
    /// broken connection is opened again. The gap monitor keeps the longest time between two
    /// round trips that came back.
    pub fn stream(&mut self, c: Client, to: Ipv4Addr, start: Instant) {
        let stop = self.stop.clone();
        let log = self.log.clone();
        let name = format!("{} -> {to}", c.node);
        let ns = c.netns.clone();
        self.threads.push(sys::spawn_in_netns(&ns, move || {
            let addr = SocketAddr::from((to, STREAM_PORT));
            let mut last_ok = start.elapsed();
            let mut seq: u64 = 0;
            let mut conn: Option<TcpStream> = None;
            let mut broke_at: Option<Duration> = None;
            while !stop.load(Ordering::Relaxed) {
                let at = start.elapsed();
                let result = (|| -> Result<(), Cause> {
                    if conn.is_none() {
                        let s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
                            .map_err(|e| Cause::of(&e, true))?;
                        s.set_read_timeout(Some(REQUEST_TIMEOUT))
                            .map_err(|e| Cause::of(&e, false))?;
                        s.set_nodelay(true).map_err(|e| Cause::of(&e, false))?;
                        conn = Some(s);
                    }
                    let Some(s) = conn.as_mut() else {
                        return Err(Cause::BadAnswer);
                    };
                    seq += 1;
                    s.write_all(&seq.to_be_bytes())
                        .map_err(|e| Cause::of(&e, false))?;
                    let mut back = [0u8; 8];
                    s.read_exact(&mut back).map_err(|e| Cause::of(&e, false))?;
                    if u64::from_be_bytes(back) != seq {
                        return Err(Cause::BadAnswer);
                    }
                    Ok(())
                })();
                let now = start.elapsed();
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                let stats = log.streams.entry(name.clone()).or_default();
                match result {
                    Ok(()) => {
                        stats.round_trips += 1;
                        if broke_at.take().is_some() {
                            stats.breaks += 1;
                        }
                        if now - last_ok > stats.longest_gap {
                            stats.longest_gap = now - last_ok;
                            stats.longest_gap_end = now;
                        }
                        last_ok = now;
                        *log.ok.entry(Probe::Stream).or_default() += 1;
                    }
                    Err(cause) => {
                        conn = None;
                        broke_at.get_or_insert(at);
                        log.failures.push(Failure {
                            at,
                            probe: Probe::Stream,
                            client_cluster: c.cluster.clone(),
                            client_node: c.node.clone(),
                            target: to.to_string(),
                            cause,
                        });
                    }
                }
                drop(log);
                std::thread::sleep(STREAM_PAUSE);
            }
            Ok(())
        }));
    }

    /// Stops every thread and waits for them; the first thread's error, if any (a namespace
    /// that could not be entered, a port that could not be bound).
    pub fn stop(self) -> Result<Log> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
                Err(_) => {
                    if first.is_ok() {
                        first = Err(anyhow::anyhow!("a traffic thread panicked"));
                    }
                }
            }
        }
        first?;
        let log = std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(log)
    }
}

impl Default for Traffic {
    fn default() -> Self {
        Self::new()
    }
}

fn record(
    log: &Mutex<Log>,
    c: &Client,
    at: Duration,
    probe: Probe,
    target: String,
    result: Result<(), Cause>,
) {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(()) => *log.ok.entry(probe).or_default() += 1,
        Err(cause) => log.failures.push(Failure {
            at,
            probe,
            client_cluster: c.cluster.clone(),
            client_node: c.node.clone(),
            target,
            cause,
        }),
    }
}

/// Echoes what arrives until the peer closes or the soak stops.
fn echo(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// `GET /` on `ip`:`port`: the built-in pod server's JSON answer, or why not.
pub fn http_get(ip: Ipv4Addr, port: u16) -> Result<(), Cause> {
    let addr = SocketAddr::from((ip, port));
    let mut s =
        TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(|e| Cause::of(&e, true))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| Cause::of(&e, false))?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| Cause::of(&e, false))?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .map_err(|e| Cause::of(&e, false))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .map_err(|e| Cause::of(&e, false))?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") && text.contains("\"cluster\"") {
        Ok(())
    } else if answer.is_empty() {
        Err(Cause::Reset)
    } else {
        Err(Cause::BadAnswer)
    }
}

/// Asks `server` for the `A` record of `name` (one try, [`REQUEST_TIMEOUT`]): its first
/// address.
pub fn resolve_a(server: Ipv4Addr, name: &str) -> Result<Ipv4Addr, Cause> {
    let ask = || -> std::io::Result<Vec<u8>> {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        sock.send_to(&crate::dns::a_query(name), (server, 53))?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    };
    let answer = ask().map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Cause::DnsTimeout,
        _ => Cause::Other(format!("dns: {e}")),
    })?;
    crate::dns::first_a(&answer).ok_or(Cause::DnsNoAddress)
}
