//! The built-in server a pod without a command runs on its container ports.
//!
//! It answers an HTTP request with `{"pod":..,"namespace":..,"node":..,"cluster":..}` (status
//! 200, `application/json`), any other TCP connection with the same JSON on one line, and each
//! UDP datagram with the JSON. With no ports it just waits. It listens on every address, or on
//! one ([`serve_on`]: the outside network's servers share a namespace, one per address).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};

/// Who answers.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Node.
    pub node: String,
    /// Cluster.
    pub cluster: String,
}

impl Identity {
    /// The JSON answer.
    pub fn json(&self) -> String {
        serde_json::json!({
            "pod": self.pod,
            "namespace": self.namespace,
            "node": self.node,
            "cluster": self.cluster,
        })
        .to_string()
    }
}

fn handle_tcp(mut s: std::net::TcpStream, body: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    let is_http = ["GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS "]
        .iter()
        .any(|m| head.starts_with(m));
    let reply = if is_http {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
            body.len() + 1
        )
    } else {
        format!("{body}\n")
    };
    let _ = s.write_all(reply.as_bytes());
}

/// Serves `ports` (`(port, "tcp"|"udp")`) on every address until killed.
pub fn serve(id: Identity, ports: Vec<(u16, String)>) -> Result<()> {
    serve_on(Ipv4Addr::UNSPECIFIED.into(), id, ports)
}

/// Serves `ports` on `address` until killed.
pub fn serve_on(address: IpAddr, id: Identity, ports: Vec<(u16, String)>) -> Result<()> {
    let body = id.json();
    let mut threads = Vec::new();
    for (port, proto) in ports {
        let body = body.clone();
        if proto.eq_ignore_ascii_case("udp") {
            let sock = UdpSocket::bind((address, port))
                .with_context(|| format!("bind udp {address}:{port}"))?;
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{body}\n").as_bytes(), from);
                }
            }));
        } else {
            let l = TcpListener::bind((address, port))
                .with_context(|| format!("bind tcp {address}:{port}"))?;
            threads.push(std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let body = body.clone();
                    std::thread::spawn(move || handle_tcp(s, &body));
                }
            }));
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
