//! Request/response measurement for the lab's benchmarks.
//!
//! [`echo_server`] answers each byte with one byte on every TCP connection; [`rr`] sends one
//! byte and waits for the answer, over one connection, for a given time, and reports the
//! transactions per second (like netperf's TCP_RR with 1-byte messages).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Serves the echo on `port` until killed.
pub fn echo_server(port: u16) -> Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind tcp/{port}"))?;
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = s;
            let _ = s.set_nodelay(true);
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                if s.write_all(&b).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Transactions per second against `addr` for `duration`.
pub fn rr(addr: &str, duration: Duration) -> Result<f64> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [7u8; 1];
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < duration {
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
