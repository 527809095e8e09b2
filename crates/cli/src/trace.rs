//! `policy trace --src [CLUSTER/]NS/POD --dst [CLUSTER/]NS/POD --dport P[/PROTO]`: whether a
//! connection from one pod to another passes policy, and the rule that decides it at each end,
//! in the spirit of `cilium policy trace`.
//!
//! Each end is evaluated by the agent that hosts the pod (found through the endpoint lists of
//! the context's nodes), with `GET /v1/policy/trace`: the egress side at the source pod's node
//! (the destination's identity from that node's ipcache, as its datapath looks it up), the
//! ingress side at the destination pod's node (the source's identity, as the tunnel carries
//! it). A connection passes when both ends allow it.

use anyhow::{Context as _, Result, bail};
use plexus_agent_api::types::{Direction, Verdict};
use plexus_agent_api::{
    Client, EndpointInfo, PeerIdentitySource, PolicyTrace, TraceDecision, TraceQuery,
};
use serde::Serialize;

use crate::config::{CliConfig, Context};
use crate::node::{agent, ask_error};

/// A pod as written on the command line: `[CLUSTER/]NS/POD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// The context (cluster) named, if any.
    pub cluster: Option<String>,
    /// The namespace.
    pub namespace: String,
    /// The pod.
    pub pod: String,
}

impl std::str::FromStr for PodRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("{s:?} is not [CLUSTER/]NAMESPACE/POD"));
        }
        match parts.as_slice() {
            [ns, pod] => Ok(Self {
                cluster: None,
                namespace: (*ns).to_string(),
                pod: (*pod).to_string(),
            }),
            [cluster, ns, pod] => Ok(Self {
                cluster: Some((*cluster).to_string()),
                namespace: (*ns).to_string(),
                pod: (*pod).to_string(),
            }),
            _ => Err(format!("{s:?} is not [CLUSTER/]NAMESPACE/POD")),
        }
    }
}

/// A destination port as written: a number or a port name, with an optional protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortArg {
    /// The number or the name.
    pub port: PortName,
    /// `TCP`, `UDP` or `SCTP`, when given.
    pub proto: Option<String>,
}

/// A port number or a named port of the destination pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortName {
    /// A number.
    Number(u16),
    /// A container port name.
    Name(String),
}

impl std::str::FromStr for PortArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (port, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, Some(proto)),
            None => (s, None),
        };
        let proto = match proto.map(str::to_ascii_uppercase).as_deref() {
            None => None,
            Some(p @ ("TCP" | "UDP" | "SCTP")) => Some(p.to_string()),
            Some(_) => return Err(format!("{s:?}: the protocol is TCP, UDP or SCTP")),
        };
        let port = if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() {
            PortName::Number(
                port.parse()
                    .map_err(|_| format!("{s:?}: a port number is 0-65535"))?,
            )
        } else if !port.is_empty()
            && port
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            PortName::Name(port.to_string())
        } else {
            return Err(format!(
                "{s:?} is not PORT[/PROTO] (a number or a port name)"
            ));
        };
        Ok(Self { port, proto })
    }
}

/// One end of a trace: the pod and where it runs.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct End {
    /// The context (cluster).
    pub cluster: String,
    /// The node hosting the pod.
    pub node: String,
    /// The pod's endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointInfo,
}

/// What `policy trace -o json` prints.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TraceReport {
    /// The source pod.
    pub src: End,
    /// The destination pod.
    pub dst: End,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The destination port.
    pub dport: u16,
    /// The egress side, at the source pod's node.
    pub egress: PolicyTrace,
    /// The ingress side, at the destination pod's node.
    pub ingress: PolicyTrace,
    /// Allow when both ends allow.
    pub verdict: Verdict,
}

/// Finds pod `ns/pod` on the nodes of `ctx`: its node, a client of that node's agent, and its
/// endpoint.
async fn find_pod(ctx: &Context, r: &PodRef) -> Result<(End, Client)> {
    let mut failures = Vec::new();
    for a in &ctx.agents {
        let (node, client) = agent(ctx, Some(&a.node))?;
        match client.endpoints().await {
            Ok(list) => {
                if let Some(e) = list
                    .into_iter()
                    .find(|e| e.namespace == r.namespace && e.pod == r.pod)
                {
                    let end = End {
                        cluster: ctx.name.clone(),
                        node,
                        endpoint: e,
                    };
                    return Ok((end, client));
                }
            }
            Err(e) => failures.push(format!("{:#}", ask_error(&node, e))),
        }
    }
    let nodes: Vec<&str> = ctx.agents.iter().map(|a| a.node.as_str()).collect();
    if failures.is_empty() {
        bail!(
            "pod {}/{} not found on any node of cluster {} ({})",
            r.namespace,
            r.pod,
            ctx.name,
            nodes.join(", ")
        )
    }
    bail!(
        "pod {}/{} not found in cluster {}; not every node answered: {}",
        r.namespace,
        r.pod,
        ctx.name,
        failures.join("; ")
    )
}

/// The port number and protocol of `port` towards `dst`: a name is looked up in the
/// destination pod's named ports (its protocol unless one is given, which must agree).
fn resolve_port(port: &PortArg, dst: &End) -> Result<(u16, String)> {
    match &port.port {
        PortName::Number(n) => Ok((*n, port.proto.clone().unwrap_or_else(|| "TCP".into()))),
        PortName::Name(name) => {
            let e = &dst.endpoint;
            let Some(p) = e.ports.get(name) else {
                let known: Vec<&str> = e.ports.keys().map(String::as_str).collect();
                bail!(
                    "pod {}/{} has no port named {name} (its named ports: {})",
                    e.namespace,
                    e.pod,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            };
            let proto = p.protocol.to_ascii_uppercase();
            if let Some(given) = &port.proto
                && *given != proto
            {
                bail!(
                    "port {name} of pod {}/{} is {}/{proto}, not {given}",
                    e.namespace,
                    e.pod,
                    p.port
                );
            }
            Ok((p.port, proto))
        }
    }
}

/// The context a pod reference names (default: `default_ctx`), reachable from the network
/// namespace the CLI is in.
fn context_of<'a>(
    cfg: &'a CliConfig,
    path: &std::path::Path,
    r: &PodRef,
    default_ctx: &'a Context,
) -> Result<&'a Context> {
    let ctx = match &r.cluster {
        None => default_ctx,
        Some(c) => cfg.context(Some(c), path)?,
    };
    if ctx.netns != default_ctx.netns {
        bail!(
            "context {} is reached from network namespace {} and context {} from {}: trace \
             between them with --context {}",
            ctx.name,
            ctx.netns.as_deref().unwrap_or("(the host's)"),
            default_ctx.name,
            default_ctx.netns.as_deref().unwrap_or("(the host's)"),
            ctx.name
        );
    }
    Ok(ctx)
}

/// Runs the trace and prints it.
pub async fn run(
    cfg: &CliConfig,
    path: &std::path::Path,
    ctx_name: Option<&str>,
    src: &PodRef,
    dst: &PodRef,
    port: &PortArg,
    json: bool,
) -> Result<()> {
    let default_ctx = cfg.context(ctx_name, path)?;
    let src_ctx = context_of(cfg, path, src, default_ctx)?;
    let dst_ctx = context_of(cfg, path, dst, default_ctx)?;
    let (src_end, src_client) = find_pod(src_ctx, src).await?;
    let (dst_end, dst_client) = find_pod(dst_ctx, dst).await?;
    let (dport, protocol) = resolve_port(port, &dst_end)?;
    let name = |e: &End| format!("{}/{}", e.endpoint.namespace, e.endpoint.pod);
    let egress = src_client
        .policy_trace(&TraceQuery {
            endpoint: name(&src_end),
            direction: Direction::Egress,
            // The datapath looks the destination up in the node's ipcache.
            peer_identity: None,
            peer_ip: Some(dst_end.endpoint.ip),
            proto: protocol.clone(),
            dport,
        })
        .await
        .map_err(|e| ask_error(&src_end.node, e))
        .with_context(|| format!("trace egress at {}", name(&src_end)))?;
    let ingress = dst_client
        .policy_trace(&TraceQuery {
            endpoint: name(&dst_end),
            direction: Direction::Ingress,
            // The tunnel carries the sender's identity.
            peer_identity: Some(src_end.endpoint.identity),
            peer_ip: Some(src_end.endpoint.ip),
            proto: protocol.clone(),
            dport,
        })
        .await
        .map_err(|e| ask_error(&dst_end.node, e))
        .with_context(|| format!("trace ingress at {}", name(&dst_end)))?;
    let verdict = if egress.verdict == Verdict::Allow && ingress.verdict == Verdict::Allow {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    let report = TraceReport {
        src: src_end,
        dst: dst_end,
        protocol,
        dport,
        egress,
        ingress,
        verdict,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "ALLOWED",
        Verdict::Deny => "DENIED",
    }
}

fn pod_name(e: &End) -> String {
    format!("{}/{}", e.endpoint.namespace, e.endpoint.pod)
}

/// What decided one side, for people.
fn side(t: &PolicyTrace, at: &str) -> Vec<String> {
    let policies = |list: &[plexus_agent_api::PolicyRef]| {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rule = |r: &plexus_agent_api::TraceRule| {
        format!(
            "{}  {}  {}",
            r.policy,
            r.location,
            if r.entry.verdict == Verdict::Deny {
                "deny rule"
            } else {
                r.match_kind.as_str()
            }
        )
    };
    let mut out = match t.decision {
        TraceDecision::NoPolicy => vec![format!("no policy selects {at}")],
        TraceDecision::NotEnforced => vec![format!(
            "not enforced: no policy selecting {at} enforces {} ({})",
            t.direction,
            policies(&t.selecting)
        )],
        TraceDecision::Allowed | TraceDecision::DenyRule => t.rules.iter().map(rule).collect(),
        TraceDecision::DefaultDeny => vec![format!(
            "default deny: {} {} {at}, no rule allows",
            policies(&t.enforcing),
            if t.enforcing.len() == 1 {
                "selects"
            } else {
                "select"
            }
        )],
    };
    if out.is_empty() {
        // An allow or deny without rules cannot come from a consistent agent; say what it said.
        out.push(format!("{:?}", t.decision));
    }
    out
}

/// Notes on the identity a side used, when it is not the peer pod's own, or unknown there.
fn notes(report: &TraceReport) -> Vec<String> {
    let mut out = Vec::new();
    for (t, peer) in [
        (&report.egress, &report.dst),
        (&report.ingress, &report.src),
    ] {
        let p = &peer.endpoint;
        if t.peer_identity != p.identity {
            let what = format!("{} ({}, identity {})", p.ip, pod_name(peer), p.identity);
            out.push(match t.peer_identity_source {
                PeerIdentitySource::World => format!(
                    "note: node {} of {} has no ipcache entry for {what}, so its datapath sees \
                     world: is the mesh connected?",
                    t.node, t.cluster
                ),
                _ => format!(
                    "note: node {} of {} maps {what} to identity {}",
                    t.node, t.cluster, t.peer_identity
                ),
            });
        }
        if t.peer_labels.is_none() {
            out.push(format!(
                "note: node {} of {} does not know identity {} (no selector matches it there)",
                t.node, t.cluster, t.peer_identity
            ));
        }
    }
    out
}

/// The report for people:
///
/// ```text
/// x/a (cluster1, identity 12345, 10.1.0.5) -> y/b (cluster2, identity 23456, 10.2.0.7) TCP/80
/// egress  at x/a   ALLOWED  CiliumNetworkPolicy x/allow-out  egress[0]  L3-L4
/// ingress at y/b   DENIED   default deny: NetworkPolicy y/deny-all selects y/b, no rule allows
/// verdict: DENIED
/// ```
pub fn render(report: &TraceReport) -> String {
    let end = |e: &End| {
        format!(
            "{} ({}, identity {}, {})",
            pod_name(e),
            e.cluster,
            e.endpoint.identity,
            e.endpoint.ip
        )
    };
    let mut out = format!(
        "{} -> {} {}/{}\n",
        end(&report.src),
        end(&report.dst),
        report.protocol,
        report.dport
    );
    let (src, dst) = (pod_name(&report.src), pod_name(&report.dst));
    let width = src.len().max(dst.len());
    for (t, at) in [(&report.egress, &src), (&report.ingress, &dst)] {
        let head = format!(
            "{:<7} at {at:<width$}  {:<8}",
            t.direction.to_string(),
            verdict_word(t.verdict)
        );
        for (i, line) in side(t, at).iter().enumerate() {
            if i == 0 {
                out.push_str(&format!("{head} {line}\n"));
            } else {
                out.push_str(&format!("{:<w$} {line}\n", "", w = head.len()));
            }
        }
    }
    for n in notes(report) {
        out.push_str(&n);
        out.push('\n');
    }
    out.push_str(&format!("verdict: {}\n", verdict_word(report.verdict)));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use plexus_agent_api::types::PolicyEntry;
    use plexus_agent_api::{PolicyRef, TraceEndpoint, TraceRule};

    #[test]
    fn pods_and_ports_parse() {
        let p: PodRef = "cluster2/y/b".parse().unwrap();
        assert_eq!(p.cluster.as_deref(), Some("cluster2"));
        assert_eq!((p.namespace.as_str(), p.pod.as_str()), ("y", "b"));
        let p: PodRef = "x/a".parse().unwrap();
        assert_eq!(p.cluster, None);
        for bad in ["a", "a/b/c/d", "/a", "x//a"] {
            assert!(bad.parse::<PodRef>().is_err(), "{bad}");
        }
        let p: PortArg = "80".parse().unwrap();
        assert_eq!((p.port, p.proto), (PortName::Number(80), None));
        let p: PortArg = "53/udp".parse().unwrap();
        assert_eq!(
            (p.port, p.proto.as_deref()),
            (PortName::Number(53), Some("UDP"))
        );
        let p: PortArg = "serve-80-tcp".parse().unwrap();
        assert_eq!(p.port, PortName::Name("serve-80-tcp".into()));
        for bad in ["70000", "80/icmp", "", "Http", "80/"] {
            assert!(bad.parse::<PortArg>().is_err(), "{bad}");
        }
    }

    fn end(cluster: &str, ns: &str, pod: &str, ip: [u8; 4], identity: u32) -> End {
        End {
            cluster: cluster.into(),
            node: format!("{cluster}-n1"),
            endpoint: EndpointInfo {
                container_id: "c".into(),
                id: 7,
                ip: ip.into(),
                host_ifname: "lxc".into(),
                host_mac: "m".into(),
                pod_mac: "m".into(),
                namespace: ns.into(),
                pod: pod.into(),
                labels: Default::default(),
                namespace_labels: None,
                registered_labels: None,
                identity,
                ports: [(
                    "http".to_string(),
                    plexus_agent_api::ContainerPort {
                        port: 8080,
                        protocol: "TCP".into(),
                    },
                )]
                .into(),
            },
        }
    }

    fn trace(at: &End, direction: Direction, peer: u32, decision: TraceDecision) -> PolicyTrace {
        let verdict = match decision {
            TraceDecision::DenyRule | TraceDecision::DefaultDeny => Verdict::Deny,
            _ => Verdict::Allow,
        };
        PolicyTrace {
            node: at.node.clone(),
            cluster: at.cluster.clone(),
            endpoint: TraceEndpoint {
                id: at.endpoint.id,
                namespace: at.endpoint.namespace.clone(),
                pod: at.endpoint.pod.clone(),
                ip: at.endpoint.ip,
                identity: at.endpoint.identity,
            },
            direction,
            peer_identity: peer,
            peer_identity_source: PeerIdentitySource::Ipcache,
            peer_labels: Some("k8s:app=x".into()),
            peer_ip: None,
            ipcache_identity: Some(peer),
            protocol: "TCP".into(),
            dport: 80,
            verdict,
            enforced: true,
            decision,
            match_kind: None,
            rules: Vec::new(),
            enforcing: Vec::new(),
            selecting: Vec::new(),
        }
    }

    fn policy(kind: &str, ns: &str, name: &str) -> PolicyRef {
        PolicyRef {
            kind: kind.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_report_for_people() {
        let src = end("cluster1", "x", "a", [10, 1, 0, 5], 12345);
        let dst = end("cluster2", "y", "b", [10, 2, 0, 7], 23456);
        let mut egress = trace(&src, Direction::Egress, 23456, TraceDecision::Allowed);
        egress.rules.push(TraceRule {
            policy: policy("CiliumNetworkPolicy", "x", "allow-out"),
            rule: "spec".into(),
            section: "egress".into(),
            index: 0,
            location: "egress[0]".into(),
            entry: PolicyEntry {
                direction: plexus_agent_api::types::Direction::Egress,
                verdict: Verdict::Allow,
                peer: "23456".into(),
                peer_labels: None,
                protocol: "TCP".into(),
                ports: "80".into(),
            },
            match_kind: "L3-L4".into(),
        });
        let mut ingress = trace(&dst, Direction::Ingress, 12345, TraceDecision::DefaultDeny);
        ingress
            .enforcing
            .push(policy("NetworkPolicy", "y", "deny-all"));
        let report = TraceReport {
            src,
            dst,
            protocol: "TCP".into(),
            dport: 80,
            egress,
            ingress,
            verdict: Verdict::Deny,
        };
        assert_eq!(
            render(&report),
            "x/a (cluster1, identity 12345, 10.1.0.5) -> y/b (cluster2, identity 23456, 10.2.0.7) TCP/80\n\
             egress  at x/a  ALLOWED  CiliumNetworkPolicy x/allow-out  egress[0]  L3-L4\n\
             ingress at y/b  DENIED   default deny: NetworkPolicy y/deny-all selects y/b, no rule allows\n\
             verdict: DENIED\n"
        );
    }

    #[test]
    fn notes_name_an_identity_the_node_does_not_see() {
        let src = end("cluster1", "x", "a", [10, 1, 0, 5], 12345);
        let dst = end("cluster2", "y", "b", [10, 2, 0, 7], 23456);
        let mut egress = trace(&src, Direction::Egress, 2, TraceDecision::NoPolicy);
        egress.peer_identity_source = PeerIdentitySource::World;
        // Natively routed: the receiving node's ipcache has another identity, unknown there.
        let mut ingress = trace(&dst, Direction::Ingress, 999, TraceDecision::NoPolicy);
        ingress.peer_labels = None;
        let report = TraceReport {
            src,
            dst,
            protocol: "TCP".into(),
            dport: 80,
            egress,
            ingress,
            verdict: Verdict::Allow,
        };
        let text = render(&report);
        assert!(
            text.contains(
                "note: node cluster1-n1 of cluster1 has no ipcache entry for 10.2.0.7 (y/b, identity 23456), so its datapath sees world"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "note: node cluster2-n1 of cluster2 maps 10.1.0.5 (x/a, identity 12345) to identity 999\n\
                 note: node cluster2-n1 of cluster2 does not know identity 999 (no selector matches it there)"
            ),
            "{text}"
        );
        assert!(text.contains("egress  at x/a  ALLOWED  no policy selects x/a"));
        assert!(text.ends_with("verdict: ALLOWED\n"));
    }

    #[test]
    fn named_ports_resolve_on_the_destination() {
        let dst = end("cluster2", "y", "b", [10, 2, 0, 7], 23456);
        let port = |s: &str| resolve_port(&s.parse().unwrap(), &dst);
        assert_eq!(port("http").unwrap(), (8080, "TCP".to_string()));
        assert_eq!(port("81/udp").unwrap(), (81, "UDP".to_string()));
        assert_eq!(port("81").unwrap(), (81, "TCP".to_string()));
        let err = port("dns").unwrap_err().to_string();
        assert_eq!(err, "pod y/b has no port named dns (its named ports: http)");
        let err = port("http/udp").unwrap_err().to_string();
        assert_eq!(err, "port http of pod y/b is 8080/TCP, not UDP");
    }
}
