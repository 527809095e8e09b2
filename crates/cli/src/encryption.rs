//! `plexus encryption status|rotate-key`: the WireGuard encryption of a cluster's nodes.
//!
//! Both ask each node's agent (`GET /v1/encryption`, `POST /v1/encryption/rotate-key`), every
//! node of the context's cluster by default, one node with `--node`. `status -o json` prints a
//! JSON array of `plexus_agent_api::EncryptionReport`, one per node, in the context's node
//! order; `rotate-key` rotates one node after the other, so the cluster never loses every
//! tunnel at once. A node whose agent does not answer is reported on stderr and makes the
//! command fail after the others were asked.

// Table headers are written as literals beside their column widths, for readability.
#![allow(clippy::print_literal)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use plexus_agent_api::{EncryptionMode, EncryptionReport, RotateKeyReport};

use crate::config::Context;
use crate::node::{agent, ask_error};

/// A rotation waits for the device; give the agent time to answer.
const ROTATE_TIMEOUT: Duration = Duration::from_secs(15);

/// The nodes asked: `node`, or every node of the context.
fn nodes(ctx: &Context, node: Option<&str>) -> Vec<String> {
    match node {
        Some(n) => vec![n.to_string()],
        None => ctx.agents.iter().map(|a| a.node.clone()).collect(),
    }
}

/// `encryption status`: each node's key, port and peers.
pub async fn status(ctx: &Context, node: Option<&str>, json: bool) -> Result<()> {
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for n in nodes(ctx, node) {
        let (name, client) = agent(ctx, Some(&n))?;
        match client.encryption().await {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("{:#}", ask_error(&name, e));
                failed.push(name);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for (i, r) in reports.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print_report(r, now);
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("no answer from the agent of {}", failed.join(", "));
    }
    Ok(())
}

/// `1.5 KiB`, `3.2 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// How long ago Unix second `then` was, seen at `now`.
fn ago(then: Option<u64>, now: u64) -> String {
    match then {
        None => "never".into(),
        Some(t) => {
            let s = now.saturating_sub(t);
            match s {
                0..=119 => format!("{s}s ago"),
                120..=7199 => format!("{}m ago", s / 60),
                _ => format!("{}h ago", s / 3600),
            }
        }
    }
}

fn print_report(r: &EncryptionReport, now: u64) {
    println!("# node {} ({}, {})", r.node, r.cluster, r.node_ip);
    if r.mode == EncryptionMode::Disabled {
        println!("Encryption:  Disabled");
        return;
    }
    println!(
        "Encryption:  WireGuard (userspace){}",
        if r.strict { ", strict mode" } else { "" }
    );
    println!("Public key:  {}", r.public_key.as_deref().unwrap_or("-"));
    println!(
        "Port:        {}",
        r.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    );
    let device = match (&r.device_reachable, &r.device_error) {
        (true, None) => "reachable, in sync".to_string(),
        (true, Some(e)) => format!("reachable, not in sync: {e}"),
        (false, e) => format!("unreachable: {}", e.as_deref().unwrap_or("?")),
    };
    println!(
        "Device:      {} ({})",
        device,
        r.socket.as_deref().unwrap_or("-")
    );
    println!(
        "Peers:       {}",
        r.peers.iter().filter(|p| p.configured).count()
    );
    if r.peers.is_empty() {
        return;
    }
    println!(
        "{:<28} {:<22} {:<20} {:<15} {:<11} {:<11} {}",
        "PEER", "ENDPOINT", "ALLOWED IPS", "LAST HANDSHAKE", "RX", "TX", "KEY"
    );
    for p in &r.peers {
        let peer = match (&p.cluster, &p.node) {
            (Some(c), Some(n)) => format!("{c}/{n}"),
            _ => "(unknown node)".into(),
        };
        let state = match (p.configured, p.desired) {
            (true, true) => "",
            (false, _) => " (not configured yet)",
            (true, false) => " (stale, going)",
        };
        println!(
            "{:<28} {:<22} {:<20} {:<15} {:<11} {:<11} {}{state}",
            peer,
            p.endpoint.as_deref().unwrap_or("-"),
            p.allowed_ips.join(","),
            ago(p.last_handshake, now),
            bytes(p.rx_bytes),
            bytes(p.tx_bytes),
            p.public_key
        );
    }
}

/// `encryption rotate-key`: a new key for each node asked, one after the other.
pub async fn rotate_key(ctx: &Context, node: Option<&str>, json: bool) -> Result<()> {
    let mut done: Vec<RotateKeyReport> = Vec::new();
    let mut failed = Vec::new();
    for n in nodes(ctx, node) {
        let (name, client) = agent(ctx, Some(&n))?;
        match client.with_timeout(ROTATE_TIMEOUT).rotate_key().await {
            Ok(r) => {
                if !json {
                    match &r.device_error {
                        None => println!(
                            "✅ {}: new key {} (was {}), set on the device and published",
                            r.node, r.public_key, r.old_public_key
                        ),
                        Some(e) => println!(
                            "⚠️  {}: new key {} published, but the device did not take it yet ({e}); it gets it when it answers again",
                            r.node, r.public_key
                        ),
                    }
                }
                done.push(r);
            }
            Err(e) => {
                eprintln!("{:#}", ask_error(&name, e));
                failed.push(name);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    }
    if !failed.is_empty() {
        anyhow::bail!("the key of {} was not rotated", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(ago(None, 100), "never");
        assert_eq!(ago(Some(97), 100), "3s ago");
        assert_eq!(ago(Some(0), 600), "10m ago");
        assert_eq!(ago(Some(0), 7200), "2h ago");
    }
}
