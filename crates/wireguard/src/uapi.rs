//! WireGuard's cross-platform userspace API (UAPI): the `get=1` / `set=1` text protocol on a
//! Unix socket (<https://www.wireguard.com/xplatform/>), both ends of it.
//!
//! The agent drives a device through [`UapiClient`]; the same client drives Debian's
//! `wireguard-go` (the bench does), and `wg show` / `wg set` drive our device, because both
//! speak this one protocol. Keys travel as lower-case hex in the protocol and print as standard
//! base64 everywhere else ([`Key`]'s `Display`/`FromStr`, the form `wg` shows and the Node's
//! `WireguardPubKey` holds). The server side ([`serve`], [`UapiHandler`]) parses a whole `set`
//! request before the device applies any of it, so a request with a bad line changes nothing
//! (wireguard-go applies lines as it reads them). Parse errors name the line number and key at
//! fault; a private or preshared key's value is never echoed into an error.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::keys::KEY_LEN;

/// The longest line either side accepts; the longest legal one (a 64-hex-digit key with its
/// name, or an IPv6 endpoint with a zone) is far below it.
const MAX_LINE: usize = 512;

/// The most lines one request or reply may have: bounds the memory a client of the socket (or a
/// misbehaving device) can make the other side spend (at most 128 MiB), while leaving room for
/// tens of thousands of peers (a peer takes about six lines).
const MAX_LINES: usize = 1 << 18;

/// The errno a device replies for a request it does not understand or refuses (EINVAL).
pub const EINVAL: i32 = 22;

/// A Curve25519 key: lower-case hex in the UAPI, standard base64 in `Display`, `FromStr` and the
/// Node's `WireguardPubKey`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Key(pub [u8; KEY_LEN]);

impl Key {
    /// The key as 64 lower-case hex digits, the UAPI's form.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(2 * KEY_LEN);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// A key from 64 hex digits (either case), the UAPI's form. The error says what is wrong,
    /// without echoing the text (it may be a private key).
    pub fn from_hex(text: &str) -> Result<Key, String> {
        let bytes = text.as_bytes();
        if bytes.len() != 2 * KEY_LEN {
            return Err(format!(
                "key is {} characters, expected {} hex digits",
                bytes.len(),
                2 * KEY_LEN
            ));
        }
        let mut key = [0u8; KEY_LEN];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or("key has a character that is not a hex digit")?;
            let lo = hex_val(pair[1]).ok_or("key has a character that is not a hex digit")?;
            key[i] = (hi << 4) | lo;
        }
        Ok(Key(key))
    }

    /// The key in standard base64, as `wg` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Whether every byte is zero: the UAPI's way of saying "no key" (for example
    /// `preshared_key=000…0` or `private_key=` cleared).
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_base64())
    }
}

impl FromStr for Key {
    type Err = String;

    /// A key in standard base64 (`wg genkey` / `wg pubkey` form, the Node's `WireguardPubKey`).
    fn from_str(s: &str) -> Result<Key, String> {
        let bytes = STANDARD
            .decode(s)
            .map_err(|e| format!("key is not base64 ({e})"))?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "key is {} bytes after base64 decoding, expected {KEY_LEN}",
                bytes.len()
            )
        })?;
        Ok(Key(key))
    }
}

impl From<boringtun::x25519::PublicKey> for Key {
    fn from(k: boringtun::x25519::PublicKey) -> Key {
        Key(k.to_bytes())
    }
}

/// One allowed-IPs entry: a prefix `addr/len`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AllowedIp {
    /// The prefix's address (host bits may be set; the device masks them).
    pub addr: IpAddr,
    /// The prefix length: at most 32 for IPv4, 128 for IPv6.
    pub len: u8,
}

impl AllowedIp {
    /// The prefix with its host bits cleared, as a device stores it.
    pub fn masked(&self) -> AllowedIp {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        AllowedIp {
            addr,
            len: self.len,
        }
    }

    /// Whether `ip` lies in this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let probe = AllowedIp {
            addr: ip,
            len: self.len,
        };
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                probe.masked().addr == self.masked().addr
            }
            _ => false,
        }
    }
}

impl fmt::Display for AllowedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for AllowedIp {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowedIp, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a prefix (expected address/length)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`{len}` is not a prefix length (0 to {max})"))?;
        Ok(AllowedIp { addr, len })
    }
}

/// A device's state as `get=1` reports it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// The device's private key, if one is set.
    pub private_key: Option<Key>,
    /// The device's public key: not in the protocol, derived from the private key by the client.
    pub public_key: Option<Key>,
    /// The UDP port the device listens on (0: none).
    pub listen_port: u16,
    /// The peers, in the device's order.
    pub peers: Vec<PeerInfo>,
}

impl fmt::Debug for DeviceInfo {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceInfo")
            .field("private_key", &self.private_key.map(|_| "(set)"))
            .field("public_key", &self.public_key)
            .field("listen_port", &self.listen_port)
            .field("peers", &self.peers)
            .finish()
    }
}

/// One peer as `get=1` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's public key.
    pub public_key: Key,
    /// Where the peer's packets go (and last came from).
    pub endpoint: Option<SocketAddr>,
    /// The prefixes routed to the peer and accepted from it.
    pub allowed_ips: Vec<AllowedIp>,
    /// When the last handshake completed, if one did.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Persistent keepalive interval in seconds (0: off).
    pub persistent_keepalive: u16,
}

impl PeerInfo {
    /// A peer with only its public key (no endpoint, no allowed IPs, no traffic yet).
    pub fn new(public_key: Key) -> PeerInfo {
        PeerInfo {
            public_key,
            endpoint: None,
            allowed_ips: Vec::new(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            persistent_keepalive: 0,
        }
    }
}

/// A `set=1` request: only what is `Some` (or `true`) changes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SetDevice {
    /// A new private key (a zero key clears it).
    pub private_key: Option<Key>,
    /// A new UDP port (0: a random one).
    pub listen_port: Option<u16>,
    /// Remove every peer not in `peers` first.
    pub replace_peers: bool,
    /// Peers to add, change or remove.
    pub peers: Vec<SetPeer>,
}

impl fmt::Debug for SetDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetDevice")
            .field("private_key", &self.private_key.map(|_| "(set)"))
            .field("listen_port", &self.listen_port)
            .field("replace_peers", &self.replace_peers)
            .field("peers", &self.peers)
            .finish()
    }
}

/// One peer of a `set=1` request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SetPeer {
    /// The peer's public key (identifies it).
    pub public_key: Key,
    /// Remove the peer.
    pub remove: bool,
    /// Only change the peer if it exists; do not add it.
    pub update_only: bool,
    /// A new endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Replace the peer's allowed IPs by `allowed_ips` (otherwise they are added).
    pub replace_allowed_ips: bool,
    /// Allowed IPs to add (or to set, with `replace_allowed_ips`).
    pub allowed_ips: Vec<AllowedIp>,
    /// A new persistent keepalive interval in seconds (0: off).
    pub persistent_keepalive: Option<u16>,
}

impl SetPeer {
    /// A request that adds or changes the peer `public_key` and nothing else yet.
    pub fn new(public_key: Key) -> SetPeer {
        SetPeer {
            public_key,
            ..SetPeer::default()
        }
    }
}

/// A line of a request or reply that is not what the protocol allows. Names the line (1-based,
/// counting the `get=1`/`set=1` line) and its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("uapi line {line} ({key}): {reason}")]
pub struct ParseError {
    /// 1-based line number within the request or reply.
    pub line: usize,
    /// The line's key (the part before `=`), or the whole line if it has no `=`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a UAPI call failed. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// Connecting, reading or writing the socket failed (including a timeout).
    #[error("wireguard uapi socket {path}: {op}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The device answered with a non-zero errno.
    #[error("wireguard uapi socket {path}: the device refused the {request} request: errno={errno} ({})", io::Error::from_raw_os_error(*errno))]
    Errno {
        /// The socket.
        path: PathBuf,
        /// `get` or `set`.
        request: &'static str,
        /// The errno the device replied (made positive).
        errno: i32,
    },
    /// The device's reply is not valid protocol text.
    #[error("wireguard uapi socket {path}: bad reply: {source}")]
    Reply {
        /// The socket.
        path: PathBuf,
        /// The line at fault.
        source: ParseError,
    },
}

/// A client of one device's UAPI socket. Every call opens a new connection (as `wg` does), with
/// read and write timeouts, so a hung device fails the call instead of hanging the agent.
#[derive(Debug, Clone)]
pub struct UapiClient {
    path: PathBuf,
    timeout: Duration,
}

impl UapiClient {
    /// A client of the socket at `path`, with a 5 s timeout per read and write.
    pub fn new(path: impl Into<PathBuf>) -> UapiClient {
        UapiClient {
            path: path.into(),
            timeout: Duration::from_secs(5),
        }
    }

    /// The same client with another timeout per read and write.
    pub fn with_timeout(mut self, timeout: Duration) -> UapiClient {
        self.timeout = timeout;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's state (`get=1`). `public_key` is derived from the private key.
    pub fn get(&self) -> Result<DeviceInfo, UapiError> {
        let reply = self.exchange("get=1\n\n", "get")?;
        let mut info = DeviceInfo::parse_uapi(&reply).map_err(|source| self.reply_err(source))?;
        info.public_key = info.private_key.map(|k| {
            Key::from(boringtun::x25519::PublicKey::from(
                &boringtun::x25519::StaticSecret::from(k.0),
            ))
        });
        Ok(info)
    }

    /// Changes the device (`set=1`).
    pub fn set(&self, request: &SetDevice) -> Result<(), UapiError> {
        let reply = self.exchange(&request.to_uapi(), "set")?;
        parse_errno_only(&reply).map_err(|source| self.reply_err(source))?;
        Ok(())
    }

    fn reply_err(&self, source: ParseError) -> UapiError {
        UapiError::Reply {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends `request`, reads the reply up to its blank line and checks its `errno=`; returns the
    /// reply's lines before `errno=`.
    fn exchange(&self, request: &str, name: &'static str) -> Result<String, UapiError> {
        let io_err = |op| {
            move |source| UapiError::Io {
                path: self.path.clone(),
                op,
                source,
            }
        };
        let mut stream = UnixStream::connect(&self.path).map_err(io_err("connect"))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(io_err("set timeout"))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(io_err("set timeout"))?;
        stream
            .write_all(request.as_bytes())
            .map_err(io_err("write request"))?;
        let mut reader = BufReader::new(stream);
        let mut body = String::new();
        let mut lines = 0;
        loop {
            let line = read_line(&mut reader).map_err(io_err("read reply"))?;
            let Some(line) = line else {
                return Err(io_err("read reply")(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the device closed the connection before the reply's blank line",
                )));
            };
            lines += 1;
            if line.is_empty() {
                // A reply without errno= is caught by the caller's parse.
                return Err(self.reply_err(ParseError {
                    line: lines,
                    key: String::new(),
                    reason: "reply ends without an errno= line".into(),
                }));
            }
            if let Some(value) = line.strip_prefix("errno=") {
                let errno = parse_errno(value).map_err(|reason| {
                    self.reply_err(ParseError {
                        line: lines,
                        key: "errno".into(),
                        reason,
                    })
                })?;
                if errno != 0 {
                    return Err(UapiError::Errno {
                        path: self.path.clone(),
                        request: name,
                        errno,
                    });
                }
                // Consume the reply's closing blank line: closing a Unix socket with unread
                // data resets the connection under the device.
                let _ = read_line(&mut reader);
                body.push_str(&line);
                body.push('\n');
                return Ok(body);
            }
            if lines > MAX_LINES {
                return Err(self.reply_err(ParseError {
                    line: lines,
                    key: String::new(),
                    reason: format!("reply longer than {MAX_LINES} lines"),
                }));
            }
            body.push_str(&line);
            body.push('\n');
        }
    }
}

/// Parses an `errno=` value. Devices write it negative (wireguard-go's `errno=-22`, which is
/// what `wg` expects: it prints the negated value's `strerror`); a positive one is read the
/// same, the magnitude is the errno.
fn parse_errno(value: &str) -> Result<i32, String> {
    value
        .parse::<i64>()
        .ok()
        .and_then(|n| i32::try_from(n.unsigned_abs()).ok())
        .ok_or_else(|| format!("`{value}` is not a number"))
}

fn parse_errno_only(reply: &str) -> Result<(), ParseError> {
    for (i, line) in reply.lines().enumerate() {
        if !line.starts_with("errno=") {
            return Err(ParseError {
                line: i + 1,
                key: key_of(line).into(),
                reason: "unexpected line in a set reply (expected only errno=)".into(),
            });
        }
    }
    Ok(())
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes, without its `\n`; `None` at
/// end of stream before any byte.
fn read_line<R: BufRead>(reader: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if buf.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line longer than {MAX_LINE} bytes"),
            ));
        }
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a line",
        ));
    }
    buf.pop();
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

fn key_of(line: &str) -> &str {
    line.split_once('=').map_or(line, |(k, _)| k)
}

/// Splits `key=value`, or says the line has no `=`.
fn split_line(line_no: usize, line: &str) -> Result<(&str, &str), ParseError> {
    line.split_once('=').ok_or_else(|| ParseError {
        line: line_no,
        key: line.into(),
        reason: "not a key=value line".into(),
    })
}

fn bad(line: usize, key: &str, reason: impl Into<String>) -> ParseError {
    ParseError {
        line,
        key: key.into(),
        reason: reason.into(),
    }
}

/// A value that must be a number of type `T`.
fn number<T: FromStr>(line: usize, key: &str, value: &str) -> Result<T, ParseError> {
    value
        .parse()
        .map_err(|_| bad(line, key, format!("`{value}` is not a valid number")))
}

fn boolean(line: usize, key: &str, value: &str) -> Result<bool, ParseError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(line, key, format!("`{value}` is not true or false"))),
    }
}

fn key_value(line: usize, key: &str, value: &str) -> Result<Key, ParseError> {
    Key::from_hex(value).map_err(|reason| bad(line, key, reason))
}

fn endpoint(line: usize, key: &str, value: &str) -> Result<SocketAddr, ParseError> {
    value
        .parse()
        .map_err(|_| bad(line, key, format!("`{value}` is not an ip:port endpoint")))
}

fn allowed_ip(line: usize, key: &str, value: &str) -> Result<AllowedIp, ParseError> {
    value
        .parse()
        .map_err(|reason: String| bad(line, key, reason))
}

impl DeviceInfo {
    /// The reply to `get=1`, up to and including `errno=0` (the caller adds the blank line).
    pub fn to_uapi(&self) -> String {
        let mut s = String::new();
        if let Some(k) = &self.private_key {
            s.push_str(&format!("private_key={}\n", k.to_hex()));
        }
        if self.listen_port != 0 {
            s.push_str(&format!("listen_port={}\n", self.listen_port));
        }
        for p in &self.peers {
            s.push_str(&format!("public_key={}\n", p.public_key.to_hex()));
            s.push_str("protocol_version=1\n");
            if let Some(e) = p.endpoint {
                s.push_str(&format!("endpoint={e}\n"));
            }
            let (sec, nsec) = p
                .last_handshake
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
            s.push_str(&format!("last_handshake_time_sec={sec}\n"));
            s.push_str(&format!("last_handshake_time_nsec={nsec}\n"));
            s.push_str(&format!("tx_bytes={}\n", p.tx_bytes));
            s.push_str(&format!("rx_bytes={}\n", p.rx_bytes));
            s.push_str(&format!(
                "persistent_keepalive_interval={}\n",
                p.persistent_keepalive
            ));
            for a in &p.allowed_ips {
                s.push_str(&format!("allowed_ip={a}\n"));
            }
        }
        s.push_str("errno=0\n");
        s
    }

    /// Parses a `get=1` reply (its lines before the blank line; a final `errno=0` is allowed).
    /// Keys this client does not know (`fwmark`, `preshared_key`, …) are skipped, so a newer
    /// device's reply still parses; known keys with bad values are errors naming the line.
    pub fn parse_uapi(text: &str) -> Result<DeviceInfo, ParseError> {
        let mut info = DeviceInfo::default();
        let mut handshake_sec: Option<u64> = None;
        let mut handshake_nsec: u32 = 0;
        let finish_peer = |info: &mut DeviceInfo, sec: &mut Option<u64>, nsec: &mut u32| {
            if let Some(p) = info.peers.last_mut() {
                p.last_handshake = match sec.take() {
                    Some(0) | None if *nsec == 0 => None,
                    s => Some(UNIX_EPOCH + Duration::new(s.unwrap_or(0), (*nsec).min(999_999_999))),
                };
            }
            *nsec = 0;
        };
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.is_empty() {
                break;
            }
            let (key, value) = split_line(n, line)?;
            let in_peer = !info.peers.is_empty();
            match key {
                "private_key" if !in_peer => {
                    let k = key_value(n, key, value)?;
                    info.private_key = (!k.is_zero()).then_some(k);
                }
                "listen_port" if !in_peer => info.listen_port = number(n, key, value)?,
                "public_key" => {
                    finish_peer(&mut info, &mut handshake_sec, &mut handshake_nsec);
                    info.peers.push(PeerInfo::new(key_value(n, key, value)?));
                }
                "errno" => {
                    let errno = parse_errno(value).map_err(|r| bad(n, key, r))?;
                    if errno != 0 {
                        return Err(bad(n, key, format!("the device replied errno={errno}")));
                    }
                }
                _ if !in_peer => {}
                _ => {
                    let p = info
                        .peers
                        .last_mut()
                        .ok_or_else(|| bad(n, key, "no peer"))?;
                    match key {
                        "endpoint" => p.endpoint = Some(endpoint(n, key, value)?),
                        "allowed_ip" => p.allowed_ips.push(allowed_ip(n, key, value)?),
                        "last_handshake_time_sec" => handshake_sec = Some(number(n, key, value)?),
                        "last_handshake_time_nsec" => {
                            handshake_nsec = number::<u64>(n, key, value)?
                                .try_into()
                                .map_err(|_| bad(n, key, "more than a second of nanoseconds"))?
                        }
                        "rx_bytes" => p.rx_bytes = number(n, key, value)?,
                        "tx_bytes" => p.tx_bytes = number(n, key, value)?,
                        "persistent_keepalive_interval" => {
                            p.persistent_keepalive = number(n, key, value)?
                        }
                        _ => {}
                    }
                }
            }
        }
        finish_peer(&mut info, &mut handshake_sec, &mut handshake_nsec);
        Ok(info)
    }
}

impl SetDevice {
    /// The request text, from `set=1` to its closing blank line.
    pub fn to_uapi(&self) -> String {
        let mut s = String::from("set=1\n");
        if let Some(k) = &self.private_key {
            s.push_str(&format!("private_key={}\n", k.to_hex()));
        }
        if let Some(p) = self.listen_port {
            s.push_str(&format!("listen_port={p}\n"));
        }
        if self.replace_peers {
            s.push_str("replace_peers=true\n");
        }
        for p in &self.peers {
            s.push_str(&format!("public_key={}\n", p.public_key.to_hex()));
            if p.remove {
                s.push_str("remove=true\n");
            }
            if p.update_only {
                s.push_str("update_only=true\n");
            }
            if let Some(e) = p.endpoint {
                s.push_str(&format!("endpoint={e}\n"));
            }
            if let Some(k) = p.persistent_keepalive {
                s.push_str(&format!("persistent_keepalive_interval={k}\n"));
            }
            if p.replace_allowed_ips {
                s.push_str("replace_allowed_ips=true\n");
            }
            for a in &p.allowed_ips {
                s.push_str(&format!("allowed_ip={a}\n"));
            }
        }
        s.push('\n');
        s
    }

    /// Parses a `set=1` request's lines after `set=1` (up to a blank line). `line_offset` is the
    /// number of lines before them (1 for the `set=1` line), so errors count from the request's
    /// start. Unknown keys, and features this device lacks (a non-zero `fwmark` or
    /// `preshared_key`, a protocol version other than 1), are errors.
    pub fn parse_uapi(text: &str, line_offset: usize) -> Result<SetDevice, ParseError> {
        let mut req = SetDevice::default();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1 + line_offset;
            if line.is_empty() {
                break;
            }
            let (key, value) = split_line(n, line)?;
            let peer = req.peers.last_mut();
            match (key, peer) {
                ("private_key", None) => req.private_key = Some(key_value(n, key, value)?),
                ("listen_port", None) => req.listen_port = Some(number(n, key, value)?),
                ("fwmark", None) => {
                    if !value.is_empty() && number::<u32>(n, key, value)? != 0 {
                        return Err(bad(n, key, "this device does not support fwmark"));
                    }
                }
                ("replace_peers", None) => req.replace_peers = boolean(n, key, value)?,
                ("public_key", _) => req.peers.push(SetPeer::new(key_value(n, key, value)?)),
                (_, None) => return Err(bad(n, key, "unknown device key")),
                (_, Some(p)) => match key {
                    "remove" => p.remove = boolean(n, key, value)?,
                    "update_only" => p.update_only = boolean(n, key, value)?,
                    "endpoint" => p.endpoint = Some(endpoint(n, key, value)?),
                    "persistent_keepalive_interval" => {
                        p.persistent_keepalive = Some(number(n, key, value)?)
                    }
                    "replace_allowed_ips" => p.replace_allowed_ips = boolean(n, key, value)?,
                    "allowed_ip" => p.allowed_ips.push(allowed_ip(n, key, value)?),
                    "preshared_key" => {
                        if !key_value(n, key, value)?.is_zero() {
                            return Err(bad(n, key, "this device does not support preshared keys"));
                        }
                    }
                    "protocol_version" => {
                        if value != "1" {
                            return Err(bad(
                                n,
                                key,
                                format!("protocol version `{value}` is not supported (only 1)"),
                            ));
                        }
                    }
                    _ => return Err(bad(n, key, "unknown peer key")),
                },
            }
        }
        Ok(req)
    }
}

/// What a device does with UAPI requests; [`serve`] speaks the protocol around it.
pub trait UapiHandler {
    /// The device's state, for `get=1`.
    fn get(&self) -> DeviceInfo;
    /// Applies a parsed `set=1` request; on failure, the errno to reply (and a message the
    /// device may log).
    fn set(&self, request: SetDevice) -> Result<(), (i32, String)>;
}

/// Serves UAPI requests on one connection until the client closes it: reads `get=1` or `set=1`
/// requests, replies to each, and returns on end of stream. A request the handler cannot parse
/// gets `errno=-22` (EINVAL, negative as wireguard-go and `wg` have it) and closes the connection, since the rest of the stream can no longer be
/// framed. Errors are returned for the caller to log; nothing panics on bad input.
pub fn serve<S: Read + Write>(stream: S, handler: &dyn UapiHandler) -> Result<(), ServeError> {
    let mut reader = BufReader::new(stream);
    loop {
        let first = match read_line(&mut reader) {
            Ok(Some(line)) => line,
            // The client hung up between requests.
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(ServeError::Io(e)),
        };
        match first.as_str() {
            "get=1" => {
                let blank = read_line(&mut reader).map_err(ServeError::Io)?;
                if blank.as_deref() != Some("") {
                    reply(reader.get_mut(), &format!("errno=-{EINVAL}\n"))?;
                    return Err(ServeError::Request(bad(
                        2,
                        blank.as_deref().map_or("", key_of),
                        "get=1 takes no arguments (expected a blank line)",
                    )));
                }
                reply(reader.get_mut(), &handler.get().to_uapi())?;
            }
            "set=1" => {
                let mut body = String::new();
                let mut lines = 0;
                loop {
                    let Some(line) = read_line(&mut reader).map_err(ServeError::Io)? else {
                        return Err(ServeError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before the set request's blank line",
                        )));
                    };
                    if line.is_empty() {
                        break;
                    }
                    lines += 1;
                    if lines > MAX_LINES {
                        reply(reader.get_mut(), &format!("errno=-{EINVAL}\n"))?;
                        return Err(ServeError::Request(bad(
                            lines + 1,
                            "",
                            format!("request longer than {MAX_LINES} lines"),
                        )));
                    }
                    body.push_str(&line);
                    body.push('\n');
                }
                match SetDevice::parse_uapi(&body, 1) {
                    Ok(req) => match handler.set(req) {
                        Ok(()) => reply(reader.get_mut(), "errno=0\n")?,
                        Err((errno, msg)) => {
                            reply(reader.get_mut(), &format!("errno=-{errno}\n"))?;
                            return Err(ServeError::Refused {
                                errno,
                                message: msg,
                            });
                        }
                    },
                    Err(e) => {
                        reply(reader.get_mut(), &format!("errno=-{EINVAL}\n"))?;
                        return Err(ServeError::Request(e));
                    }
                }
            }
            other => {
                reply(reader.get_mut(), &format!("errno=-{EINVAL}\n"))?;
                return Err(ServeError::Request(bad(
                    1,
                    key_of(other),
                    "unknown operation (expected get=1 or set=1)",
                )));
            }
        }
    }
}

fn reply<W: Write>(w: &mut W, text: &str) -> Result<(), ServeError> {
    w.write_all(text.as_bytes())
        .and_then(|()| w.write_all(b"\n"))
        .and_then(|()| w.flush())
        .map_err(ServeError::Io)
}

/// Why serving a UAPI connection stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading or writing the connection failed, or it broke off mid-request.
    #[error("uapi connection: {0}")]
    Io(io::Error),
    /// The request was not valid protocol text (the client got errno=-22).
    #[error("uapi request refused: {0}")]
    Request(ParseError),
    /// The device refused a well-formed request.
    #[error("uapi set refused with errno={errno}: {message}")]
    Refused {
        /// The errno replied.
        errno: i32,
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Mutex;

    use super::*;

    fn k(b: u8) -> Key {
        Key([b; 32])
    }

    const HEX_01: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const HEX_02: &str = "0202020202020202020202020202020202020202020202020202020202020202";
    const HEX_03: &str = "0303030303030303030303030303030303030303030303030303030303030303";

    #[test]
    fn key_forms() {
        let key = Key([0xab; 32]);
        assert_eq!(key.to_hex(), "ab".repeat(32));
        assert_eq!(Key::from_hex(&"AB".repeat(32)).unwrap(), key);
        assert_eq!(
            key.to_string(),
            "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="
        );
        assert_eq!(
            "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="
                .parse::<Key>()
                .unwrap(),
            key
        );
        assert!(Key::from_hex("abc").unwrap_err().contains("3 characters"));
        assert!(Key::from_hex(&"zz".repeat(32)).unwrap_err().contains("hex"));
        assert!("AAAA".parse::<Key>().unwrap_err().contains("3 bytes"));
        assert!("!!".parse::<Key>().unwrap_err().contains("not base64"));
        // The wg-quick example key: base64 and hex of the same bytes.
        let b64 = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        let key: Key = b64.parse().unwrap();
        assert_eq!(
            key.to_hex(),
            "c809f3e5317e9575c9b5ed78b638b7ce530dabe85ddab614220241801ddf0669"
        );
    }

    #[test]
    fn allowed_ip_parse_and_match() {
        let a: AllowedIp = "10.1.2.3/16".parse().unwrap();
        assert_eq!(a.masked().to_string(), "10.1.0.0/16");
        assert!(a.contains(Ipv4Addr::new(10, 1, 200, 1).into()));
        assert!(!a.contains(Ipv4Addr::new(10, 2, 0, 1).into()));
        assert!(!a.contains(Ipv6Addr::LOCALHOST.into()));
        let z: AllowedIp = "0.0.0.0/0".parse().unwrap();
        assert!(z.contains(Ipv4Addr::new(1, 2, 3, 4).into()));
        let v6: AllowedIp = "fd00::1/128".parse().unwrap();
        assert!(v6.contains("fd00::1".parse().unwrap()));
        assert!(
            "10.0.0.0/33"
                .parse::<AllowedIp>()
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!(
            "fd00::/129"
                .parse::<AllowedIp>()
                .unwrap_err()
                .contains("0 to 128")
        );
        assert!(
            "10.0.0.0"
                .parse::<AllowedIp>()
                .unwrap_err()
                .contains("not a prefix")
        );
        assert!(
            "x/8"
                .parse::<AllowedIp>()
                .unwrap_err()
                .contains("not an IP")
        );
    }

    #[test]
    fn set_request_serializes_to_protocol_text() {
        let req = SetDevice {
            private_key: Some(k(1)),
            listen_port: Some(51871),
            replace_peers: true,
            peers: vec![
                SetPeer {
                    endpoint: Some("192.0.2.2:51871".parse().unwrap()),
                    replace_allowed_ips: true,
                    allowed_ips: vec!["10.0.0.2/32".parse().unwrap(), "fd00::/64".parse().unwrap()],
                    persistent_keepalive: Some(25),
                    ..SetPeer::new(k(2))
                },
                SetPeer {
                    remove: true,
                    ..SetPeer::new(k(3))
                },
                SetPeer {
                    update_only: true,
                    endpoint: Some("[fd00::3]:51871".parse().unwrap()),
                    ..SetPeer::new(k(1))
                },
            ],
        };
        let text = req.to_uapi();
        let expected = format!(
            "set=1\n\
             private_key={HEX_01}\n\
             listen_port=51871\n\
             replace_peers=true\n\
             public_key={HEX_02}\n\
             endpoint=192.0.2.2:51871\n\
             persistent_keepalive_interval=25\n\
             replace_allowed_ips=true\n\
             allowed_ip=10.0.0.2/32\n\
             allowed_ip=fd00::/64\n\
             public_key={HEX_03}\n\
             remove=true\n\
             public_key={HEX_01}\n\
             update_only=true\n\
             endpoint=[fd00::3]:51871\n\
             \n"
        );
        assert_eq!(text, expected);
        // And the device side parses it back into the same request.
        let body = text.strip_prefix("set=1\n").unwrap();
        assert_eq!(SetDevice::parse_uapi(body, 1).unwrap(), req);
        // An empty request is just the frame.
        assert_eq!(SetDevice::default().to_uapi(), "set=1\n\n");
    }

    #[test]
    fn set_request_as_wg_sends_it_parses() {
        // What `wg set plexus_wg0 listen-port 51871 private-key k peer P allowed-ips ...` sends.
        let body = format!(
            "private_key={HEX_01}\n\
             listen_port=51871\n\
             fwmark=0\n\
             public_key={HEX_02}\n\
             preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
             protocol_version=1\n\
             endpoint=10.9.0.2:51871\n\
             replace_allowed_ips=true\n\
             allowed_ip=10.0.0.2/32\n"
        );
        let req = SetDevice::parse_uapi(&body, 1).unwrap();
        assert_eq!(req.private_key, Some(k(1)));
        assert_eq!(req.listen_port, Some(51871));
        assert_eq!(req.peers.len(), 1);
        assert_eq!(req.peers[0].public_key, k(2));
        assert!(req.peers[0].replace_allowed_ips);
        assert_eq!(
            req.peers[0].allowed_ips,
            vec!["10.0.0.2/32".parse().unwrap()]
        );
    }

    #[test]
    fn set_request_errors_name_the_line_and_key() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "listen_port=70000\n",
                2,
                "listen_port",
                "`70000` is not a valid number",
            ),
            ("bogus=1\n", 2, "bogus", "unknown device key"),
            ("private_key=123\n", 2, "private_key", "3 characters"),
            (
                "no equals sign\n",
                2,
                "no equals sign",
                "not a key=value line",
            ),
            (
                &format!("public_key={HEX_02}\nallowed_ip=10.0.0.0/40\n"),
                3,
                "allowed_ip",
                "0 to 32",
            ),
            (
                &format!("public_key={HEX_02}\nendpoint=nohost\n"),
                3,
                "endpoint",
                "not an ip:port endpoint",
            ),
            (
                &format!("public_key={HEX_02}\nremove=yes\n"),
                3,
                "remove",
                "not true or false",
            ),
            (
                &format!("public_key={HEX_02}\npreshared_key={HEX_03}\n"),
                3,
                "preshared_key",
                "preshared",
            ),
            (
                &format!("public_key={HEX_02}\nlisten_port=1\n"),
                3,
                "listen_port",
                "unknown peer key",
            ),
            ("fwmark=7\n", 2, "fwmark", "fwmark"),
        ];
        for (body, line, key, reason) in cases {
            let err = SetDevice::parse_uapi(body, 1).unwrap_err();
            assert_eq!(err.line, *line, "{body:?}: {err}");
            assert_eq!(err.key, *key, "{body:?}: {err}");
            assert!(err.reason.contains(reason), "{body:?}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("line {line}")) && msg.contains(key),
                "{msg}"
            );
        }
        // A private key's value never appears in an error.
        let err =
            SetDevice::parse_uapi(&format!("private_key={}zz\n", &HEX_01[2..]), 1).unwrap_err();
        assert!(!err.to_string().contains(&HEX_01[2..]), "{err}");
    }

    #[test]
    fn get_reply_parses_from_protocol_text() {
        // A wireguard-go reply: fwmark, preshared_key and protocol_version are skipped.
        let text = format!(
            "private_key={HEX_01}\n\
             listen_port=51871\n\
             fwmark=0\n\
             public_key={HEX_02}\n\
             preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n\
             protocol_version=1\n\
             endpoint=192.0.2.2:51871\n\
             last_handshake_time_sec=1765000000\n\
             last_handshake_time_nsec=500\n\
             tx_bytes=1000\n\
             rx_bytes=2000\n\
             persistent_keepalive_interval=0\n\
             allowed_ip=10.0.0.2/32\n\
             allowed_ip=10.1.0.0/16\n\
             public_key={HEX_03}\n\
             protocol_version=1\n\
             last_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\n\
             tx_bytes=0\n\
             rx_bytes=0\n\
             persistent_keepalive_interval=25\n\
             errno=0\n"
        );
        let info = DeviceInfo::parse_uapi(&text).unwrap();
        assert_eq!(info.private_key, Some(k(1)));
        assert_eq!(info.listen_port, 51871);
        assert_eq!(info.peers.len(), 2);
        let p = &info.peers[0];
        assert_eq!(p.public_key, k(2));
        assert_eq!(p.endpoint, Some("192.0.2.2:51871".parse().unwrap()));
        assert_eq!(
            p.last_handshake,
            Some(UNIX_EPOCH + Duration::new(1_765_000_000, 500))
        );
        assert_eq!((p.tx_bytes, p.rx_bytes), (1000, 2000));
        assert_eq!(p.allowed_ips.len(), 2);
        let q = &info.peers[1];
        assert_eq!(q.last_handshake, None);
        assert_eq!(q.endpoint, None);
        assert_eq!(q.persistent_keepalive, 25);
        assert!(q.allowed_ips.is_empty());
    }

    #[test]
    fn get_reply_serializes_to_protocol_text_and_back() {
        let info = DeviceInfo {
            private_key: Some(k(1)),
            public_key: None,
            listen_port: 51871,
            peers: vec![PeerInfo {
                endpoint: Some("[fd00::2]:51871".parse().unwrap()),
                allowed_ips: vec!["10.0.0.2/32".parse().unwrap()],
                last_handshake: Some(UNIX_EPOCH + Duration::new(1_765_000_000, 7)),
                rx_bytes: 5,
                tx_bytes: 6,
                persistent_keepalive: 0,
                ..PeerInfo::new(k(2))
            }],
        };
        let text = info.to_uapi();
        assert_eq!(
            text,
            format!(
                "private_key={HEX_01}\n\
                 listen_port=51871\n\
                 public_key={HEX_02}\n\
                 protocol_version=1\n\
                 endpoint=[fd00::2]:51871\n\
                 last_handshake_time_sec=1765000000\n\
                 last_handshake_time_nsec=7\n\
                 tx_bytes=6\n\
                 rx_bytes=5\n\
                 persistent_keepalive_interval=0\n\
                 allowed_ip=10.0.0.2/32\n\
                 errno=0\n"
            )
        );
        assert_eq!(DeviceInfo::parse_uapi(&text).unwrap(), info);
        // A device without key, port or peers answers just errno=0.
        assert_eq!(DeviceInfo::default().to_uapi(), "errno=0\n");
    }

    #[test]
    fn get_reply_errors_name_the_line_and_key() {
        let text = format!("listen_port=51871\npublic_key={HEX_02}\nrx_bytes=lots\nerrno=0\n");
        let err = DeviceInfo::parse_uapi(&text).unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (3, "rx_bytes"));
        assert!(
            err.to_string().contains("`lots` is not a valid number"),
            "{err}"
        );
        let err = DeviceInfo::parse_uapi("public_key=xyz\n").unwrap_err();
        assert_eq!((err.line, err.key.as_str()), (1, "public_key"));
    }

    /// A fake device: records set requests, answers get with a fixed state.
    struct Fake {
        info: DeviceInfo,
        sets: Mutex<Vec<SetDevice>>,
        refuse: Option<i32>,
    }

    impl UapiHandler for Fake {
        fn get(&self) -> DeviceInfo {
            self.info.clone()
        }
        fn set(&self, request: SetDevice) -> Result<(), (i32, String)> {
            if let Some(e) = self.refuse {
                return Err((e, "refused".into()));
            }
            self.sets.lock().unwrap().push(request);
            Ok(())
        }
    }

    /// Runs `serve` over an in-memory stream: returns what it wrote and its result.
    fn serve_text(input: &str, fake: &Fake) -> (String, Result<(), ServeError>) {
        struct Duplex<'a> {
            input: &'a [u8],
            output: Vec<u8>,
        }
        impl Read for Duplex<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.input.read(buf)
            }
        }
        impl Write for Duplex<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.output.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut d = Duplex {
            input: input.as_bytes(),
            output: Vec::new(),
        };
        let r = serve(&mut d, fake);
        (String::from_utf8(d.output).unwrap(), r)
    }

    fn fake() -> Fake {
        Fake {
            info: DeviceInfo {
                listen_port: 51871,
                ..DeviceInfo::default()
            },
            sets: Mutex::new(Vec::new()),
            refuse: None,
        }
    }

    #[test]
    fn server_answers_get_and_set_on_one_connection() {
        let f = fake();
        let input =
            format!("get=1\n\nset=1\npublic_key={HEX_02}\nallowed_ip=10.0.0.2/32\n\nget=1\n\n");
        let (out, r) = serve_text(&input, &f);
        r.unwrap();
        assert_eq!(
            out,
            "listen_port=51871\nerrno=0\n\nerrno=0\n\nlisten_port=51871\nerrno=0\n\n"
        );
        let sets = f.sets.lock().unwrap();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].peers[0].public_key, k(2));
    }

    #[test]
    fn server_refuses_bad_requests_with_einval_and_applies_nothing() {
        let f = fake();
        let input = format!("set=1\npublic_key={HEX_02}\nallowed_ip=10.0.0.2/32\nbogus=1\n\n");
        let (out, r) = serve_text(&input, &f);
        assert_eq!(out, "errno=-22\n\n");
        match r.unwrap_err() {
            ServeError::Request(e) => {
                assert_eq!((e.line, e.key.as_str()), (4, "bogus"));
            }
            other => panic!("{other:?}"),
        }
        assert!(f.sets.lock().unwrap().is_empty(), "a bad request applied");

        let (out, r) = serve_text("delete=1\n\n", &f);
        assert_eq!(out, "errno=-22\n\n");
        assert!(r.unwrap_err().to_string().contains("delete"));

        let (out, r) = serve_text("get=1\nfoo=bar\n\n", &f);
        assert_eq!(out, "errno=-22\n\n");
        assert!(r.is_err());

        // A line too long, binary junk, a request cut off: errors, no panic.
        let long = format!("set=1\n{}\n\n", "a".repeat(10_000));
        assert!(serve_text(&long, &f).1.is_err());
        assert!(serve_text("set=1\n\u{0}\u{1}\n\n", &f).1.is_err());
        assert!(serve_text("set=1\nlisten_port=1", &f).1.is_err());
        assert!(serve_text("", &f).1.is_ok());

        let refusing = Fake {
            refuse: Some(98),
            ..fake()
        };
        let (out, r) = serve_text("set=1\nlisten_port=1\n\n", &refusing);
        assert_eq!(out, "errno=-98\n\n");
        assert!(matches!(r, Err(ServeError::Refused { errno: 98, .. })));
    }

    #[test]
    fn client_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let secret = boringtun::x25519::StaticSecret::from([7u8; 32]);
        let public = Key::from(boringtun::x25519::PublicKey::from(&secret));
        let server = std::thread::spawn(move || {
            let f = Fake {
                info: DeviceInfo {
                    private_key: Some(Key([7u8; 32])),
                    ..fake().info
                },
                ..fake()
            };
            for _ in 0..2 {
                let (s, _) = listener.accept().unwrap();
                serve(s, &f).unwrap();
            }
            let (s, _) = listener.accept().unwrap();
            // A device refusing the request with a positive errno: read the same.
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            r.get_mut().write_all(b"errno=22\n\n").unwrap();
            f.sets.into_inner().unwrap()
        });
        let client = UapiClient::new(&path).with_timeout(Duration::from_secs(10));
        let info = client.get().unwrap();
        assert_eq!(info.listen_port, 51871);
        assert_eq!(info.public_key, Some(public));
        let req = SetDevice {
            listen_port: Some(1234),
            ..SetDevice::default()
        };
        client.set(&req).unwrap();
        let err = client.set(&req).unwrap_err();
        assert!(matches!(err, UapiError::Errno { errno: 22, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(path.to_str().unwrap()) && msg.contains("errno=22"),
            "{msg}"
        );
        assert_eq!(server.join().unwrap(), vec![req]);

        // Nothing listening: the error names the socket.
        drop(dir);
        let err = client.get().unwrap_err();
        assert!(err.to_string().contains("wg.sock"), "{err}");
    }
}
