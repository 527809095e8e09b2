//! Per-node commands: `status` (with its encryption and DNS proxy lines), `endpoint list|get`,
//! `node list`, `identity list`, `service list`, `policy get`, `fqdn cache list`,
//! `bpf ipcache list`, `bpf lb list`, `monitor`. They ask one
//! node's agent over its socket (`--node`, default the cluster's first node).

// Table headers are written as literals beside their column widths, for readability.
#![allow(clippy::print_literal, clippy::write_literal)]

use std::time::Duration;

use anyhow::{Context as _, Result};
use plexus_agent_api::types::Affinity;
use plexus_agent_api::{
    AgentStatus, ApiError, Client, DnsProxyStatus, EndpointDetail, EndpointInfo, ErrorKind,
    FqdnCacheEntry, IdentityInfo, IpcacheRow, LbRow, MonitorFilter, NodeInfo, PolicyInfo,
    ServiceInfo,
};
use serde::Serialize;

use crate::config::Context;

const TIMEOUT: Duration = Duration::from_secs(5);

/// The node named `node` (default: the context's first) and a client of its agent.
pub(crate) fn agent(ctx: &Context, node: Option<&str>) -> Result<(String, Client)> {
    let a = match node {
        Some(n) => ctx.agents.iter().find(|a| a.node == n).with_context(|| {
            format!(
                "no node {n} in context {} (nodes: {})",
                ctx.name,
                ctx.agents
                    .iter()
                    .map(|a| a.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?,
        None => ctx
            .agents
            .first()
            .with_context(|| format!("context {} lists no agents", ctx.name))?,
    };
    Ok((a.node.clone(), ctx.agent_client(a)?.with_timeout(TIMEOUT)))
}

/// An optional value as a table cell.
fn opt(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

/// What a node lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// `status`.
    Status,
    /// `endpoint list`.
    Endpoints,
    /// `node list`.
    Nodes,
    /// `identity list`.
    Identities,
    /// `service list`.
    Services,
    /// `policy get`.
    Policy,
    /// `fqdn cache list`.
    FqdnCache,
    /// `bpf ipcache list`.
    Ipcache,
    /// `bpf lb list`.
    Lb,
}

/// Prints `v` as JSON, or calls `table` to print it for people.
fn show<T: Serialize>(v: &T, json: bool, table: impl FnOnce(&T) -> Result<()>) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    } else {
        table(v)
    }
}

/// Runs one listing; prints a table or JSON.
pub async fn list(ctx: &Context, node: Option<&str>, what: Listing, json: bool) -> Result<()> {
    let (name, client) = agent(ctx, node)?;
    let asked = |e| ask_error(&name, e);
    match what {
        Listing::Status => show(&client.status().await.map_err(asked)?, json, print_status),
        Listing::Endpoints => show(&client.endpoints().await.map_err(asked)?, json, |v| {
            print_endpoints(&name, v)
        }),
        Listing::Nodes => show(&client.nodes().await.map_err(asked)?, json, |v| {
            print_nodes(&name, v)
        }),
        Listing::Identities => show(&client.identities().await.map_err(asked)?, json, |v| {
            print_identities(&name, v)
        }),
        Listing::Services => show(&client.services().await.map_err(asked)?, json, |v| {
            print_services(&name, v)
        }),
        Listing::Policy => show(&client.policy().await.map_err(asked)?, json, |v| {
            print_policies(&name, v)
        }),
        Listing::FqdnCache => show(&client.fqdn_cache().await.map_err(asked)?, json, |v| {
            print!("{}", fqdn_cache_table(&name, v));
            Ok(())
        }),
        Listing::Ipcache => show(&client.ipcache().await.map_err(asked)?, json, |v| {
            print_ipcache(&name, v)
        }),
        Listing::Lb => show(&client.lb().await.map_err(asked)?, json, |v| {
            print_lb(&name, v)
        }),
    }
}

fn print_status(v: &AgentStatus) -> Result<()> {
    println!("Cluster:   {} (id {})", v.cluster, v.cluster_id);
    println!("Node:      {} ({})", v.node, v.node_ip);
    println!("Pod CIDR:  {}", v.pod_cidr);
    println!("Routing:   {}", v.routing);
    println!("Datapath:  {}", v.datapath);
    println!("Endpoints: {}", v.endpoints);
    let (configured, ready) = v.remote_clusters;
    println!("ClusterMesh: {ready}/{configured} remote clusters ready");
    println!("{}", encryption_line(&v.encryption));
    println!("{}", dns_proxy_line(v.dns_proxy.as_ref()));
    for warning in &v.warnings {
        println!("Warning:   {warning}");
    }
    Ok(())
}

/// `DNS proxy: port 10053, 1 endpoint redirected, 12 queries (3 refused), 2 addresses
/// learned`, or `DNS proxy: Disabled` (no proxy on the node, or an agent that predates it).
fn dns_proxy_line(p: Option<&DnsProxyStatus>) -> String {
    let Some(p) = p else {
        return "DNS proxy: Disabled".to_string();
    };
    fn count(n: impl Into<u128> + Copy, one: &str, many: &str) -> String {
        let n: u128 = n.into();
        format!("{n} {}", if n == 1 { one } else { many })
    }
    let port = match p.port {
        Some(port) => format!("port {port}"),
        None => "not listening (no DNS rules yet)".to_string(),
    };
    let redirected = match p.redirected_endpoints {
        Some(n) => format!("{} redirected", count(n as u64, "endpoint", "endpoints")),
        None => "redirects unreadable".to_string(),
    };
    format!(
        "DNS proxy: {port}, {redirected}, {} ({} refused), {} learned",
        count(p.stats.queries, "query", "queries"),
        p.stats.refused,
        count(p.learned_addresses as u64, "address", "addresses"),
    )
}

/// `fqdn cache list` as a table, sorted by name and address (the agent sorts too; an older
/// or other agent may not).
fn fqdn_cache_table(name: &str, rows: &[FqdnCacheEntry]) -> String {
    use std::fmt::Write as _;
    let mut rows: Vec<&FqdnCacheEntry> = rows.iter().collect();
    rows.sort_by(|a, b| (&a.name, a.address).cmp(&(&b.name, b.address)));
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(32);
    let mut out = String::new();
    let _ = writeln!(out, "# fqdn cache of node {name}");
    let _ = writeln!(
        out,
        "{:<width$} {:<16} {:<10} {:<8} {}",
        "NAME", "ADDRESS", "IDENTITY", "TTL", "SELECTORS"
    );
    for r in rows {
        let identity = r
            .identity
            .map_or_else(|| "-".to_string(), |i| i.to_string());
        // 0: past its TTL, kept while connections use it (Cilium's "zombie").
        let ttl = if r.ttl == 0 {
            "expired".to_string()
        } else {
            format!("{}s", r.ttl)
        };
        let _ = writeln!(
            out,
            "{:<width$} {:<16} {:<10} {:<8} {}",
            r.name,
            r.address.to_string(),
            identity,
            ttl,
            r.selectors.join(",")
        );
    }
    out
}

/// `Encryption: WireGuard (userspace), N peers` or `Encryption: Disabled`.
fn encryption_line(e: &plexus_agent_api::EncryptionSummary) -> String {
    match e.mode {
        plexus_agent_api::EncryptionMode::Disabled => "Encryption: Disabled".to_string(),
        plexus_agent_api::EncryptionMode::Wireguard => format!(
            "Encryption: WireGuard (userspace), {} peer{}{}",
            e.peers,
            if e.peers == 1 { "" } else { "s" },
            if e.device_reachable {
                ""
            } else {
                " (device unreachable)"
            }
        ),
    }
}

fn print_endpoints(name: &str, rows: &[EndpointInfo]) -> Result<()> {
    println!("# node {name}");
    println!(
        "{:<6} {:<10} {:<16} {:<32} {}",
        "ID", "IDENTITY", "IPV4", "POD", "LABELS"
    );
    for r in rows {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<6} {:<10} {:<16} {:<32} {}",
            r.id,
            r.identity,
            r.ip,
            format!("{}/{}", r.namespace, r.pod),
            labels.join(",")
        );
    }
    Ok(())
}

fn print_nodes(name: &str, rows: &[NodeInfo]) -> Result<()> {
    println!("# as seen by node {name}");
    println!(
        "{:<16} {:<24} {:<16} {}",
        "CLUSTER", "NAME", "IPV4", "POD CIDR"
    );
    for r in rows {
        println!(
            "{:<16} {:<24} {:<16} {}{}",
            r.cluster,
            r.name,
            opt(r.ip.as_deref()),
            opt(r.pod_cidr.as_deref()),
            if r.local { "  (this node)" } else { "" }
        );
    }
    Ok(())
}

fn print_identities(name: &str, rows: &[IdentityInfo]) -> Result<()> {
    println!("# as seen by node {name}");
    println!("{:<10} {:<16} {}", "ID", "CLUSTER", "LABELS");
    for r in rows {
        println!("{:<10} {:<16} {}", r.id, r.cluster, r.labels);
    }
    Ok(())
}

/// `global[,unshared][,local|,remote]` or `local`.
fn service_mode(r: &ServiceInfo) -> String {
    if !r.global {
        return "local".to_string();
    }
    format!(
        "global{}{}",
        if r.shared { "" } else { ",unshared" },
        match r.affinity {
            Affinity::Local => ",local",
            Affinity::Remote => ",remote",
            Affinity::None => "",
        }
    )
}

fn print_services(name: &str, rows: &[ServiceInfo]) -> Result<()> {
    println!("# as seen by node {name}");
    println!(
        "{:<28} {:<26} {:<14} {}",
        "SERVICE", "FRONTEND", "MODE", "BACKENDS"
    );
    for r in rows {
        let ports: Vec<&str> = r.ports.values().map(String::as_str).collect();
        let mode = service_mode(r);
        let backends: Vec<String> = r
            .backends
            .candidates
            .iter()
            .map(|c| {
                let port = c
                    .ports
                    .values()
                    .next()
                    .map(|p| p.port.to_string())
                    .unwrap_or_default();
                format!("{}:{} ({}, {})", c.ip, port, c.cluster, c.state)
            })
            .collect();
        let frontend = format!("{}:{}", opt(r.cluster_ip.as_deref()), ports.join(","));
        let service = format!("{}/{}", r.namespace, r.name);
        let mut first = true;
        for b in backends
            .iter()
            .map(String::as_str)
            .chain(backends.is_empty().then_some("-"))
        {
            if first {
                println!("{service:<28} {frontend:<26} {mode:<14} {b}");
                first = false;
            } else {
                println!("{:<28} {:<26} {:<14} {b}", "", "", "");
            }
        }
    }
    Ok(())
}

fn print_policies(name: &str, rows: &[PolicyInfo]) -> Result<()> {
    println!("# policies held by node {name}");
    if rows.is_empty() {
        println!("(none)");
    }
    for r in rows {
        let at = if r.namespace.is_empty() {
            String::new()
        } else {
            format!("{}/", r.namespace)
        };
        println!("{} {at}{}", r.kind, r.name);
        let spec = match (&r.object.spec, &r.object.specs) {
            (Some(spec), _) => serde_json::to_string_pretty(spec)?,
            (None, Some(specs)) => serde_json::to_string_pretty(specs)?,
            (None, None) => "null".to_string(),
        };
        for line in spec.lines() {
            println!("    {line}");
        }
    }
    Ok(())
}

fn print_lb(name: &str, rows: &[LbRow]) -> Result<()> {
    println!("# bpf lb of node {name}");
    println!("{:<24} {}", "SERVICE ADDRESS", "BACKEND ADDRESS (SLOT)");
    for r in rows {
        let mut lines: Vec<String> = r
            .active
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{b} ({})", i + 1))
            .collect();
        lines.extend(r.inactive.iter().map(|b| format!("{b} (inactive)")));
        if lines.is_empty() {
            lines.push("- (no backend: new connections are dropped)".into());
        }
        for (i, line) in lines.iter().enumerate() {
            let f = if i == 0 { r.frontend.as_str() } else { "" };
            println!("{f:<24} {line}");
        }
    }
    Ok(())
}

fn print_ipcache(name: &str, rows: &[IpcacheRow]) -> Result<()> {
    println!("# bpf ipcache of node {name}");
    println!(
        "{:<20} {:<10} {:<16} {}",
        "PREFIX", "IDENTITY", "TUNNEL", "CLUSTER-ID"
    );
    for r in rows {
        println!(
            "{:<20} {:<10} {:<16} {}",
            r.prefix,
            r.identity,
            opt(r.tunnel_endpoint.as_deref()),
            r.cluster_id
        );
    }
    Ok(())
}

/// `endpoint get ID`: the endpoint on `node`, or on whichever node of the cluster has it.
pub async fn endpoint_get(ctx: &Context, node: Option<&str>, id: &str, json: bool) -> Result<()> {
    let nodes: Vec<String> = match node {
        Some(n) => vec![n.to_string()],
        None => ctx.agents.iter().map(|a| a.node.clone()).collect(),
    };
    // Nodes that do not have it say so; any other failure is reported with its hint, since
    // the endpoint may be on that node.
    let mut failures = Vec::new();
    for n in &nodes {
        let (_, client) = agent(ctx, Some(n))?;
        match client.endpoint(id).await {
            Ok(v) => return print_endpoint(n, &v, json),
            Err(e) if e.kind() == Some(ErrorKind::NotFound) => {}
            Err(e) => failures.push(format!("{:#}", ask_error(n, e))),
        }
    }
    if failures.is_empty() {
        anyhow::bail!(
            "endpoint {id} not found on any node of cluster {} ({})",
            ctx.name,
            nodes.join(", ")
        )
    }
    anyhow::bail!(
        "endpoint {id} not found in cluster {}; not every node answered: {}",
        ctx.name,
        failures.join("; ")
    )
}

fn print_endpoint(node: &str, v: &EndpointDetail, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let e = &v.endpoint;
    println!("Endpoint:   {} on node {node}", e.id);
    println!("Pod:        {}/{}", e.namespace, e.pod);
    println!("Address:    {}", e.ip);
    println!(
        "Identity:   {} {}",
        e.identity,
        opt(v.identity_labels.as_deref())
    );
    let mode = |enforced: bool| {
        if enforced {
            "enforced (default deny)"
        } else {
            "not enforced"
        }
    };
    println!("Ingress:    {}", mode(v.policy.ingress_enforced));
    println!("Egress:     {}", mode(v.policy.egress_enforced));
    if v.policy.entries.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "{:<8} {:<8} {:<10} {:<6} {:<12} {}",
        "DIR", "VERDICT", "PEER", "PROTO", "PORTS", "PEER LABELS"
    );
    for r in &v.policy.entries {
        println!(
            "{:<8} {:<8} {:<10} {:<6} {:<12} {}",
            r.direction.to_string(),
            r.verdict.to_string(),
            r.peer,
            r.protocol,
            r.ports,
            r.peer_labels.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// `monitor [--type drop|trace|translation|policy-verdict]`: prints events as they come, until
/// interrupted.
pub async fn monitor(ctx: &Context, node: Option<&str>, kind: Option<MonitorFilter>) -> Result<()> {
    let (name, client) = agent(ctx, node)?;
    let mut events = client
        .monitor(kind)
        .await
        .map_err(|e| ask_error(&name, e))?;
    eprintln!("Listening for events on node {name}... Press Ctrl-C to quit");
    while let Some(message) = events.next().await {
        println!("{}", message.map_err(|e| ask_error(&name, e))?);
    }
    Ok(())
}

/// What to try after a failed call to the agent of `node`, from the kind of failure.
pub fn agent_hint(err: &ApiError, node: &str) -> String {
    match err {
        ApiError::Unreachable { .. } => format!("is plexus-agent running on node {node}?"),
        ApiError::Server { kind, .. } => match kind {
            ErrorKind::NotFound => format!("node {node} has no such object"),
            ErrorKind::Invalid => {
                "the agent refused the request: are the CLI and the agent the same version?"
                    .to_string()
            }
            ErrorKind::Forbidden => format!(
                "the context's certificate may only read: writes need the cluster's admin certificate (admin-<cluster>) or the agent's local socket on {node}"
            ),
            ErrorKind::Unavailable => {
                format!("the agent of {node} is not ready yet: try again shortly")
            }
            ErrorKind::Internal => format!("the agent of {node} failed: see its log"),
        },
        ApiError::Decode { .. } => {
            "the agent's answer is not understood: are the CLI and the agent the same version?"
                .to_string()
        }
        ApiError::Runtime(_) => "the CLI could not start its API client".to_string(),
    }
}

/// An agent call's error, with what to try.
pub(crate) fn ask_error(node: &str, err: ApiError) -> anyhow::Error {
    let hint = agent_hint(&err, node);
    anyhow::Error::new(err).context(format!("ask the agent of node {node} (hint: {hint})"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fqdn_cache_table_sorts_and_marks_expired_addresses() {
        let rows: Vec<FqdnCacheEntry> = serde_json::from_value(serde_json::json!([
            {"name": "www.example.test", "address": "172.31.254.12", "identity": 25_165_825,
             "selectors": ["*3.example.test", "www.example.test"], "ttl": 27},
            {"name": "s3.example.test", "address": "172.31.254.13", "identity": 25_165_824,
             "selectors": ["*3.example.test"], "ttl": 0},
            {"name": "www.example.test", "address": "172.31.254.11", "identity": null,
             "selectors": [], "ttl": 3}
        ]))
        .unwrap();
        let table = fqdn_cache_table("n1", &rows);
        let lines: Vec<Vec<&str>> = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            [
                vec!["NAME", "ADDRESS", "IDENTITY", "TTL", "SELECTORS"],
                vec![
                    "s3.example.test",
                    "172.31.254.13",
                    "25165824",
                    "expired",
                    "*3.example.test"
                ],
                vec!["www.example.test", "172.31.254.11", "-", "3s"],
                vec![
                    "www.example.test",
                    "172.31.254.12",
                    "25165825",
                    "27s",
                    "*3.example.test,www.example.test"
                ],
            ],
            "{table}"
        );
        assert!(table.starts_with("# fqdn cache of node n1\n"), "{table}");
    }

    #[test]
    fn dns_proxy_line_reads_the_status() {
        assert_eq!(dns_proxy_line(None), "DNS proxy: Disabled");
        let mut p: DnsProxyStatus = serde_json::from_value(serde_json::json!({
            "port": 10053, "redirected-endpoints": 1, "learned-names": 3,
            "learned-addresses": 2,
            "stats": {"queries": 12, "forwarded": 9, "refused": 3, "malformed": 0,
                      "no-endpoint": 0, "overloaded": 0, "delivered": 5, "held": 4,
                      "hold-expired": 0, "responses-dropped": 0, "forward-errors": 0,
                      "forward-timeouts": 0, "send-errors": 0, "tcp-connections": 1}
        }))
        .unwrap();
        assert_eq!(
            dns_proxy_line(Some(&p)),
            "DNS proxy: port 10053, 1 endpoint redirected, 12 queries (3 refused), 2 addresses learned"
        );
        p.port = None;
        p.redirected_endpoints = Some(0);
        p.stats.queries = 1;
        p.learned_addresses = 1;
        assert_eq!(
            dns_proxy_line(Some(&p)),
            "DNS proxy: not listening (no DNS rules yet), 0 endpoints redirected, 1 query (3 refused), 1 address learned"
        );
    }
}
