//! Clients for the lab's outside network, run from a pod's (or any) network namespace: DNS
//! lookups over UDP or TCP to a given server, and `GET /` to an outside HTTP server.
//!
//! Each call runs in a thread that enters only the network namespace (`setns`), so nothing of
//! the caller's mount namespace changes. Errors are strings that say what failed, for
//! `eventually` and assertion messages.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// The outside network's DNS server.
pub const DNS: Ipv4Addr = Ipv4Addr::new(172, 31, 254, 1);

/// Runs `f` in network namespace `netns` (by name, `/run/netns/<netns>`).
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("the thread in {netns} panicked"))
}

/// How a lookup travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One datagram each way.
    Udp,
    /// A connection with length-prefixed messages.
    Tcp,
}

/// What a DNS server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The response code.
    pub code: ResponseCode,
    /// The A records of the answer section.
    pub addresses: Vec<Ipv4Addr>,
    /// Where the answer came from (UDP; the connected address for TCP).
    pub from: SocketAddr,
}

/// Asks `server:53` for the A records of `name`, once, waiting at most `timeout`; run it inside
/// the namespace of the asker (see [`lookup_in`]).
pub fn lookup(
    server: Ipv4Addr,
    name: &str,
    transport: Transport,
    timeout: Duration,
) -> Result<Answer, String> {
    let mut q = Message::query();
    q.metadata.id = rand_id();
    q.metadata.recursion_desired = true;
    let qname = Name::from_ascii(name).map_err(|e| format!("{name}: {e}"))?;
    q.add_query(Query::query(qname, RecordType::A));
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let to = SocketAddr::from((server, 53));
    let (reply, from) = match transport {
        Transport::Udp => {
            let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            sock.send_to(&bytes, to)
                .map_err(|e| format!("send to {to}: {e}"))?;
            let mut buf = [0u8; 4096];
            let (n, from) = sock
                .recv_from(&mut buf)
                .map_err(|e| format!("{name}: no answer from {to}: {e}"))?;
            (buf[..n].to_vec(), from)
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&to, timeout)
                .map_err(|e| format!("connect {to}: {e}"))?;
            s.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let len = u16::try_from(bytes.len()).map_err(|e| e.to_string())?;
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            s.write_all(&framed)
                .map_err(|e| format!("send to {to}: {e}"))?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)
                .map_err(|e| format!("{name}: no answer from {to} over TCP: {e}"))?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf).map_err(|e| e.to_string())?;
            (buf, to)
        }
    };
    let m = Message::from_vec(&reply).map_err(|e| format!("{name}: bad answer: {e}"))?;
    if m.metadata.id != q.metadata.id {
        return Err(format!("{name}: answer with another id"));
    }
    Ok(Answer {
        code: m.metadata.response_code,
        addresses: m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
        from,
    })
}

fn rand_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u16
}

/// [`lookup`] from network namespace `netns`.
pub fn lookup_in(
    netns: &str,
    server: Ipv4Addr,
    name: &str,
    transport: Transport,
) -> Result<Answer, String> {
    let name = name.to_string();
    in_netns(netns, move || {
        lookup(server, &name, transport, Duration::from_secs(1))
    })
}

/// The A records `name` resolves to at the outside's DNS server, asked over UDP from `netns`;
/// an error when no NOERROR answer comes.
pub fn resolve_in(netns: &str, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let a = lookup_in(netns, DNS, name, Transport::Udp)?;
    if a.code != ResponseCode::NoError {
        return Err(format!("{name}: {:?}", a.code));
    }
    Ok(a.addresses)
}

/// `GET /` to `ip:80` from `netns`: the answering server's JSON.
pub fn http_in(netns: &str, ip: Ipv4Addr) -> Result<serde_json::Value, String> {
    in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((ip, 80)), Duration::from_secs(2))
            .map_err(|e| format!("connect {ip}:80: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: outside\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .ok_or_else(|| format!("not HTTP: {text:?}"))?;
        serde_json::from_str(body.trim()).map_err(|e| format!("{e}: {body:?}"))
    })
}
