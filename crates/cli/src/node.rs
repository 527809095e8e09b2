//! Per-node commands: `status`, `endpoint list|get`, `node list`, `identity list`,
//! `service list`, `policy get`, `bpf ipcache list`, `bpf lb list`, `monitor`. They ask one
//! node's agent over its socket (`--node`, default the cluster's first node).

// Table headers are written as literals beside their column widths, for readability.
#![allow(clippy::print_literal)]

use std::time::Duration;

use anyhow::{Context as _, Result};
use plexus_agent_api::Endpoint;
use serde_json::Value;

use crate::config::Context;

const TIMEOUT: Duration = Duration::from_secs(5);

fn agent(ctx: &Context, node: Option<&str>) -> Result<(String, Endpoint)> {
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
    Ok((a.node.clone(), Endpoint::Unix(a.socket.clone())))
}

async fn fetch(ctx: &Context, node: Option<&str>, path: &str) -> Result<(String, Value)> {
    let (name, ep) = agent(ctx, node)?;
    let v = plexus_agent_api::get_json(&ep, path, TIMEOUT).await?;
    Ok((name, v))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Runs one listing; prints a table or JSON.
pub async fn list(ctx: &Context, node: Option<&str>, what: &str, json: bool) -> Result<()> {
    let path = match what {
        "status" => "/v1/status",
        "endpoint" => "/v1/endpoints",
        "node" => "/v1/nodes",
        "identity" => "/v1/identities",
        "ipcache" => "/v1/bpf/ipcache",
        "lb" => "/v1/bpf/lb",
        "service" => "/v1/services",
        "policy" => "/v1/policy",
        other => anyhow::bail!("unknown listing {other}"),
    };
    let (name, v) = fetch(ctx, node, path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows = v.as_array().cloned().unwrap_or_default();
    match what {
        "status" => {
            println!(
                "Cluster:   {} (id {})",
                s(&v["cluster"]),
                s(&v["cluster-id"])
            );
            println!("Node:      {} ({})", s(&v["node"]), s(&v["node-ip"]));
            println!("Pod CIDR:  {}", s(&v["pod-cidr"]));
            println!("Routing:   {}", s(&v["routing"]));
            println!("Datapath:  {}", s(&v["datapath"]));
            println!("Endpoints: {}", s(&v["endpoints"]));
            println!(
                "ClusterMesh: {}/{} remote clusters ready",
                s(&v["remote-clusters"][1]),
                s(&v["remote-clusters"][0])
            );
        }
        "endpoint" => {
            println!("# node {name}");
            println!(
                "{:<6} {:<10} {:<16} {:<32} {}",
                "ID", "IDENTITY", "IPV4", "POD", "LABELS"
            );
            for r in rows {
                let labels: Vec<String> = r["labels"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
                    .unwrap_or_default();
                println!(
                    "{:<6} {:<10} {:<16} {:<32} {}",
                    s(&r["id"]),
                    s(&r["identity"]),
                    s(&r["ip"]),
                    format!("{}/{}", s(&r["namespace"]), s(&r["pod"])),
                    labels.join(",")
                );
            }
        }
        "node" => {
            println!("# as seen by node {name}");
            println!(
                "{:<16} {:<24} {:<16} {}",
                "CLUSTER", "NAME", "IPV4", "POD CIDR"
            );
            for r in rows {
                println!(
                    "{:<16} {:<24} {:<16} {}{}",
                    s(&r["cluster"]),
                    s(&r["name"]),
                    s(&r["ip"]),
                    s(&r["pod-cidr"]),
                    if r["local"] == true {
                        "  (this node)"
                    } else {
                        ""
                    }
                );
            }
        }
        "identity" => {
            println!("# as seen by node {name}");
            println!("{:<10} {:<16} {}", "ID", "CLUSTER", "LABELS");
            for r in rows {
                println!(
                    "{:<10} {:<16} {}",
                    s(&r["id"]),
                    s(&r["cluster"]),
                    s(&r["labels"])
                );
            }
        }
        "service" => {
            println!("# as seen by node {name}");
            println!(
                "{:<28} {:<26} {:<14} {}",
                "SERVICE", "FRONTEND", "MODE", "BACKENDS"
            );
            for r in rows {
                let ip = s(&r["cluster-ip"]);
                let ports: Vec<String> = r["ports"]
                    .as_object()
                    .map(|m| m.values().map(s).collect())
                    .unwrap_or_default();
                let mode = if r["global"] == true {
                    format!(
                        "global{}{}",
                        if r["shared"] == true { "" } else { ",unshared" },
                        match r["affinity"].as_str() {
                            Some("local") => ",local",
                            Some("remote") => ",remote",
                            _ => "",
                        }
                    )
                } else {
                    "local".to_string()
                };
                let backends: Vec<String> = r["backends"]["candidates"]
                    .as_array()
                    .map(|cs| {
                        cs.iter()
                            .map(|c| {
                                let port = c["ports"]
                                    .as_object()
                                    .and_then(|m| m.values().next())
                                    .map(|p| s(&p["Port"]))
                                    .unwrap_or_default();
                                format!(
                                    "{}:{} ({}, {})",
                                    s(&c["ip"]),
                                    port,
                                    s(&c["cluster"]),
                                    s(&c["state"])
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let frontend = format!("{ip}:{}", ports.join(","));
                let service = format!("{}/{}", s(&r["namespace"]), s(&r["name"]));
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
        }
        "policy" => {
            println!("# policies held by node {name}");
            if rows.is_empty() {
                println!("(none)");
            }
            for r in rows {
                let ns = s(&r["namespace"]);
                let at = if ns.is_empty() {
                    String::new()
                } else {
                    format!("{ns}/")
                };
                println!("{} {at}{}", s(&r["kind"]), s(&r["name"]));
                let spec = serde_json::to_string_pretty(&r["object"]["spec"])?;
                for line in spec.lines() {
                    println!("    {line}");
                }
            }
        }
        "lb" => {
            println!("# bpf lb of node {name}");
            println!("{:<24} {}", "SERVICE ADDRESS", "BACKEND ADDRESS (SLOT)");
            for r in rows {
                let frontend = s(&r["frontend"]);
                let strs = |k: &str| -> Vec<String> {
                    r[k].as_array()
                        .map(|a| a.iter().map(s).collect())
                        .unwrap_or_default()
                };
                let mut lines: Vec<String> = strs("active")
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{b} ({})", i + 1))
                    .collect();
                lines.extend(strs("inactive").iter().map(|b| format!("{b} (inactive)")));
                if lines.is_empty() {
                    lines.push("- (no backend: new connections are dropped)".into());
                }
                for (i, line) in lines.iter().enumerate() {
                    let f = if i == 0 { frontend.as_str() } else { "" };
                    println!("{f:<24} {line}");
                }
            }
        }
        _ => {
            println!("# bpf ipcache of node {name}");
            println!(
                "{:<20} {:<10} {:<16} {}",
                "PREFIX", "IDENTITY", "TUNNEL", "CLUSTER-ID"
            );
            for r in rows {
                println!(
                    "{:<20} {:<10} {:<16} {}",
                    s(&r["prefix"]),
                    s(&r["identity"]),
                    s(&r["tunnel-endpoint"]),
                    s(&r["cluster-id"])
                );
            }
        }
    }
    Ok(())
}

/// `endpoint get ID`: the endpoint on `node`, or on whichever node of the cluster has it.
pub async fn endpoint_get(ctx: &Context, node: Option<&str>, id: &str, json: bool) -> Result<()> {
    let nodes: Vec<String> = match node {
        Some(n) => vec![n.to_string()],
        None => ctx.agents.iter().map(|a| a.node.clone()).collect(),
    };
    let mut errors = Vec::new();
    for n in &nodes {
        let (_, ep) = agent(ctx, Some(n))?;
        match plexus_agent_api::get_json(&ep, &format!("/v1/endpoints/{id}"), TIMEOUT).await {
            Ok(v) => return print_endpoint(n, &v, json),
            Err(e) => errors.push(format!("{n}: {e:#}")),
        }
    }
    anyhow::bail!(
        "endpoint {id} not found in cluster {}: {}",
        ctx.name,
        errors.join("; ")
    )
}

fn print_endpoint(node: &str, v: &Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let e = &v["endpoint"];
    println!("Endpoint:   {} on node {node}", s(&e["id"]));
    println!("Pod:        {}/{}", s(&e["namespace"]), s(&e["pod"]));
    println!("Address:    {}", s(&e["ip"]));
    println!(
        "Identity:   {} {}",
        s(&e["identity"]),
        s(&v["identity-labels"])
    );
    let p = &v["policy"];
    let mode = |k: &str| {
        if p[k] == true {
            "enforced (default deny)"
        } else {
            "not enforced"
        }
    };
    println!("Ingress:    {}", mode("ingress-enforced"));
    println!("Egress:     {}", mode("egress-enforced"));
    let entries = p["entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        return Ok(());
    }
    println!();
    println!(
        "{:<8} {:<8} {:<10} {:<6} {:<12} {}",
        "DIR", "VERDICT", "PEER", "PROTO", "PORTS", "PEER LABELS"
    );
    for r in entries {
        println!(
            "{:<8} {:<8} {:<10} {:<6} {:<12} {}",
            s(&r["direction"]),
            s(&r["verdict"]),
            s(&r["peer"]),
            s(&r["protocol"]),
            s(&r["ports"]),
            r["peer-labels"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `monitor [--type drop|trace]`: prints events as they come, until interrupted.
pub async fn monitor(ctx: &Context, node: Option<&str>, kind: Option<&str>) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (name, ep) = agent(ctx, node)?;
    let Endpoint::Unix(socket) = ep else {
        anyhow::bail!("monitor needs the agent's socket");
    };
    let mut stream = tokio::net::UnixStream::connect(&socket)
        .await
        .with_context(|| format!("connect to the agent of {name} at {}", socket.display()))?;
    let query = kind.map(|k| format!("?type={k}")).unwrap_or_default();
    stream
        .write_all(format!("GET /v1/monitor{query} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())
        .await?;
    eprintln!("Listening for events on node {name}... Press Ctrl-C to quit");
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut body = false;
    while let Some(line) = lines.next_line().await? {
        if !body {
            body = line.is_empty();
            continue;
        }
        println!("{line}");
    }
    Ok(())
}
