//! `plexus observe`: flows of every node of the mesh, in the shape of `hubble observe`.
//!
//! The flags are `plexus_flow`'s observe flags ([`plexus_flow::observe::FLAGS`]), given to
//! [`plexus_flow::ObserveBuilder`] in the order they appear on the command line, because
//! `--not` negates the flag that follows it: clap's [`ArgMatches::indices_of`] gives each
//! value's position. The request goes to the context's relay (the apiserver's API, mutual TLS
//! with the context's admin certificate), or with `--node N` to that node's agent, as
//! `GET /v1/flows?request=<FlowRequest JSON>`; the answer is JSON lines of
//! [`FlowResponse`].
//!
//! Output: compact lines (default), `-o table`, or `-o json` (the lines as received). The
//! relay's `node_status` lines become a tally on stderr, `N/M nodes`, naming the nodes it could
//! not reach, as `hubble status` counts them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches};
use plexus_agent_api::Client;
use plexus_flow::{
    FlowRequest, FlowResponse, NodeState, ObserveBuilder, OutputFormat, PrintOptions, ResponseKind,
    print,
};

use crate::config::Context;

/// How long the relay or agent may take to answer the request's head (the stream itself
/// lasts as long as it lasts).
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);

/// One observe flag: its long name, its short name, and its help.
struct FlagSpec {
    long: &'static str,
    short: Option<char>,
    help: &'static str,
}

const fn spec(long: &'static str, short: Option<char>, help: &'static str) -> FlagSpec {
    FlagSpec { long, short, help }
}

/// The help of every flag of [`plexus_flow::observe::FLAGS`], in the order `--help` lists
/// them.
const SPECS: &[FlagSpec] = &[
    spec(
        "not",
        None,
        "Negate the next filter flag (it goes to the blacklist)",
    ),
    spec("pod", None, "Flows from or to pods [namespace/]name-prefix"),
    spec("from-pod", None, "Flows from pods [namespace/]name-prefix"),
    spec("to-pod", None, "Flows to pods [namespace/]name-prefix"),
    spec("namespace", Some('n'), "Flows from or to this namespace"),
    spec("from-namespace", None, "Flows from this namespace"),
    spec("to-namespace", None, "Flows to this namespace"),
    spec("ip", None, "Flows from or to this address or CIDR"),
    spec("from-ip", None, "Flows from this address or CIDR"),
    spec("to-ip", None, "Flows to this address or CIDR"),
    spec(
        "label",
        None,
        "Flows from or to endpoints with these labels (app=x,k8s:tier=db)",
    ),
    spec("from-label", None, "Flows from endpoints with these labels"),
    spec("to-label", None, "Flows to endpoints with these labels"),
    spec(
        "service",
        None,
        "Flows from or to services [namespace/]name-prefix",
    ),
    spec("from-service", None, "Flows from services"),
    spec("to-service", None, "Flows to services"),
    spec(
        "identity",
        None,
        "Flows from or to this security identity (number or reserved name)",
    ),
    spec("from-identity", None, "Flows from this security identity"),
    spec("to-identity", None, "Flows to this security identity"),
    spec("cluster", None, "Flows from or to this cluster"),
    spec("from-cluster", None, "Flows from this cluster"),
    spec("to-cluster", None, "Flows to this cluster"),
    spec("port", None, "Flows from or to this L4 port"),
    spec("from-port", None, "Flows from this L4 port"),
    spec("to-port", None, "Flows to this L4 port"),
    spec(
        "verdict",
        None,
        "FORWARDED, DROPPED, TRANSLATED, ... (any case)",
    ),
    spec(
        "type",
        Some('t'),
        "drop, trace[:point], translation, policy-verdict, or TYPE[:SUB-TYPE] numbers",
    ),
    spec("protocol", None, "tcp, udp, sctp, icmp, icmpv4, icmpv6"),
    spec(
        "node-name",
        None,
        "Flows seen by nodes cluster/node (globs: c1/n*, c1/)",
    ),
    spec("traffic-direction", None, "ingress or egress"),
    spec(
        "last",
        None,
        "The last N flows (default 20 without --since, --follow or --all)",
    ),
    spec("all", None, "Every flow the nodes keep"),
    spec("follow", Some('f'), "Keep streaming new flows"),
    spec(
        "since",
        None,
        "Flows since a time (RFC 3339) or a duration ago (5m, 1h30m)",
    ),
];

/// `plexus observe`'s arguments: the flags in command-line order, and how to print.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObserveArgs {
    /// `(flag, value)` in the order given (switches have `""`).
    pub flags: Vec<(String, String)>,
    /// `-o`.
    pub output: OutputFormat,
    /// `--print-node-name`.
    pub print_node_name: bool,
}

impl Args for ObserveArgs {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        // After the global flags (--config, --context, --node) in --help, in SPECS' order.
        for (i, s) in SPECS.iter().enumerate() {
            let mut arg = Arg::new(s.long)
                .long(s.long)
                .help(s.help)
                .display_order(100 + i);
            if let Some(c) = s.short {
                arg = arg.short(c);
            }
            arg = if plexus_flow::observe::takes_value(s.long) {
                arg.action(ArgAction::Append)
                    .num_args(1)
                    .allow_hyphen_values(false)
                    .value_name("VALUE")
            } else {
                // A switch that may repeat (`--not`): appended like an option without a value,
                // so every occurrence keeps its index (a counted flag keeps only one).
                arg.action(ArgAction::Append)
                    .num_args(0)
                    .default_missing_value("")
            };
            cmd = cmd.arg(arg);
        }
        cmd.arg(
            Arg::new("output")
                .short('o')
                .long("output")
                .help("compact, table or json (the FlowResponse lines as received)")
                .display_order(200)
                .default_value("compact")
                .value_parser(|s: &str| s.parse::<OutputFormat>()),
        )
        .arg(
            Arg::new("print-node-name")
                .long("print-node-name")
                .help("Show the node (cluster/node) of each flow")
                .display_order(201)
                .action(ArgAction::SetTrue),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ObserveArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags: Vec<(usize, String, String)> = Vec::new();
        for s in SPECS {
            if m.value_source(s.long) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            let Some(indices) = m.indices_of(s.long) else {
                continue;
            };
            {
                let values = m.get_many::<String>(s.long).into_iter().flatten().cloned();
                for (i, v) in indices.zip(values) {
                    flags.push((i, s.long.to_string(), v));
                }
            }
        }
        flags.sort_by_key(|(i, _, _)| *i);
        Ok(Self {
            flags: flags.into_iter().map(|(_, f, v)| (f, v)).collect(),
            output: m
                .get_one::<OutputFormat>("output")
                .copied()
                .unwrap_or_default(),
            print_node_name: m.get_flag("print-node-name"),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl ObserveArgs {
    /// The request the flags describe (errors name the flag).
    pub fn request(&self, now: chrono::DateTime<chrono::Utc>) -> Result<FlowRequest> {
        ObserveBuilder::from_pairs(
            now,
            self.flags.iter().map(|(f, v)| (f.as_str(), v.as_str())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// The nodes a relay reported on, from its `node_status` lines.
#[derive(Debug, Default)]
pub struct NodeTally {
    connected: BTreeSet<String>,
    /// Unreachable nodes (or clusters) with the relay's message.
    unavailable: BTreeMap<String, String>,
    /// Whether a status arrived since the tally was last printed.
    changed: bool,
}

impl NodeTally {
    /// Takes one `node_status` line into account.
    pub fn update(&mut self, state: NodeState, nodes: &[String], message: &str) {
        for n in nodes {
            match state {
                NodeState::Connected => {
                    self.unavailable.remove(n);
                    self.connected.insert(n.clone());
                }
                NodeState::Unavailable | NodeState::Error => {
                    self.connected.remove(n);
                    self.unavailable.insert(n.clone(), message.to_string());
                }
                NodeState::Gone => {
                    self.connected.remove(n);
                    self.unavailable.remove(n);
                }
                NodeState::Unknown => {}
            }
        }
        self.changed = true;
    }

    /// `3/4 nodes (unavailable: c2/n1: connection refused)`, or `None` when nothing changed
    /// since the last call.
    pub fn take_line(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let total = self.connected.len() + self.unavailable.len();
        let mut line = format!("{}/{total} nodes", self.connected.len());
        if !self.unavailable.is_empty() {
            let names: Vec<String> = self
                .unavailable
                .iter()
                .map(|(n, m)| {
                    if m.is_empty() {
                        n.clone()
                    } else {
                        format!("{n}: {m}")
                    }
                })
                .collect();
            line.push_str(&format!(" (unavailable: {})", names.join("; ")));
        }
        Some(line)
    }
}

/// Prints a stream of responses as they come: flows and lost events on `out`, the node tally
/// on `err`. Returns when the stream ends.
pub struct Printer<O, E> {
    format: OutputFormat,
    opts: PrintOptions,
    out: O,
    err: E,
    tally: NodeTally,
    /// Table rows seen (the header goes before the first).
    rows: usize,
    /// Table output of a bounded stream: aligned once at the end.
    table: Vec<FlowResponse>,
    follow: bool,
}

impl<O: std::io::Write, E: std::io::Write> Printer<O, E> {
    /// A printer in `format`; a following table is printed row by row.
    pub fn new(format: OutputFormat, opts: PrintOptions, follow: bool, out: O, err: E) -> Self {
        Self {
            format,
            opts,
            out,
            err,
            tally: NodeTally::default(),
            rows: 0,
            table: Vec::new(),
            follow,
        }
    }

    fn flush_tally(&mut self) -> std::io::Result<()> {
        if let Some(line) = self.tally.take_line() {
            writeln!(self.err, "{line}")?;
        }
        Ok(())
    }

    /// Handles one line.
    pub fn line(&mut self, resp: FlowResponse) -> std::io::Result<()> {
        if let ResponseKind::NodeStatus(s) = &resp.kind {
            self.tally.update(s.state_change, &s.node_names, &s.message);
            if self.format == OutputFormat::Json {
                writeln!(self.out, "{}", print::json(&resp))?;
            }
            // A later status (a node lost mid-stream) is reported at once; the first ones wait
            // for the relay's whole report, which comes before the flows.
            return Ok(());
        }
        self.flush_tally()?;
        match self.format {
            OutputFormat::Json => writeln!(self.out, "{}", print::json(&resp))?,
            OutputFormat::Compact => writeln!(self.out, "{}", print::compact(&resp, &self.opts))?,
            OutputFormat::Table if self.follow => {
                let text = print::table(std::slice::from_ref(&resp), &self.opts);
                // The table of one row: its header, then the row.
                let mut lines = text.lines();
                let header = lines.next().unwrap_or_default();
                if self.rows == 0 {
                    writeln!(self.out, "{header}")?;
                }
                for l in lines {
                    writeln!(self.out, "{l}")?;
                }
                self.rows += 1;
            }
            OutputFormat::Table => self.table.push(resp),
        }
        self.out.flush()
    }

    /// The end of the stream: the aligned table, and the last tally.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.flush_tally()?;
        if self.format == OutputFormat::Table && !self.follow {
            write!(self.out, "{}", print::table(&self.table, &self.opts))?;
        }
        self.out.flush()
    }

    /// A status line that arrived and has not been printed yet is printed now (the stream is
    /// quiet, following).
    pub fn idle(&mut self) -> std::io::Result<()> {
        self.flush_tally()
    }
}

/// The flow path of a request.
pub fn flows_path(req: &FlowRequest) -> String {
    format!("/v1/flows?request={}", req.to_query_value())
}

/// `plexus observe`: asks the relay (or `node`'s agent) and prints until the stream ends.
pub async fn observe(ctx: &Context, node: Option<&str>, args: &ObserveArgs) -> Result<()> {
    let req = args.request(chrono::Utc::now())?;
    let (what, client): (String, Client) = match node {
        Some(n) => {
            let (name, client) = crate::node::agent(ctx, Some(n))?;
            (format!("the agent of node {name}"), client)
        }
        None => (
            format!("the relay of context {}", ctx.name),
            ctx.relay_client()?,
        ),
    };
    let client = client.with_timeout(HEAD_TIMEOUT);
    let path = flows_path(&req);
    let mut lines = client
        .lines::<FlowResponse>(&path)
        .await
        .with_context(|| format!("ask {what} for flows"))?;
    let opts = PrintOptions {
        node_name: args.print_node_name,
    };
    let mut printer = Printer::new(
        args.output,
        opts,
        req.follow,
        std::io::stdout().lock(),
        std::io::stderr(),
    );
    loop {
        let next = if req.follow {
            // While following, a status that arrived just before a quiet spell is not held
            // back until the next flow.
            match tokio::time::timeout(Duration::from_secs(1), lines.next()).await {
                Ok(n) => n,
                Err(_) => {
                    printer.idle()?;
                    continue;
                }
            }
        } else {
            lines.next().await
        };
        match next {
            Some(Ok(resp)) => printer.line(resp)?,
            Some(Err(e)) => {
                printer.finish()?;
                return Err(e).with_context(|| format!("read flows from {what}"));
            }
            None => break,
        }
    }
    printer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(flatten)]
        args: ObserveArgs,
    }

    #[test]
    fn every_builder_flag_has_a_cli_flag() {
        let ours: Vec<&str> = SPECS.iter().map(|s| s.long).collect();
        assert_eq!(ours, plexus_flow::observe::FLAGS);
        Cmd::command().debug_assert();
    }

    #[test]
    fn flags_keep_their_command_line_order() {
        let cmd = Cmd::try_parse_from([
            "observe",
            "--not",
            "--to-pod",
            "default/db",
            "-n",
            "kube-system",
            "--verdict",
            "DROPPED",
            "--not",
            "--verdict",
            "FORWARDED",
            "-f",
            "-t",
            "drop",
            "-o",
            "json",
        ])
        .unwrap();
        let flags: Vec<(&str, &str)> = cmd
            .args
            .flags
            .iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            flags,
            [
                ("not", ""),
                ("to-pod", "default/db"),
                ("namespace", "kube-system"),
                ("verdict", "DROPPED"),
                ("not", ""),
                ("verdict", "FORWARDED"),
                ("follow", ""),
                ("type", "drop"),
            ]
        );
        assert_eq!(cmd.args.output, OutputFormat::Json);
        let req = cmd.args.request(chrono::Utc::now()).unwrap();
        assert!(req.follow);
        // Both negated flags went to the blacklist (Hubble ANDs them in one filter); the rest
        // to the whitelist.
        assert_eq!(req.blacklist.len(), 1, "{req:?}");
        assert_eq!(req.blacklist[0].destination_pod, ["default/db"]);
        assert_eq!(req.blacklist[0].verdict, [plexus_flow::Verdict::Forwarded]);
        assert!(
            req.whitelist
                .iter()
                .all(|f| f.destination_pod != ["default/db"]
                    && f.verdict == [plexus_flow::Verdict::Dropped])
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let now = chrono::Utc::now();
        for (argv, flag) in [
            (vec!["observe", "--from-ip", "10.0.0.300"], "--from-ip"),
            (vec!["observe", "--verdict", "LOST"], "--verdict"),
            (vec!["observe", "-t", "bogus"], "--type"),
            (vec!["observe", "--since", "yesterday"], "--since"),
            (vec!["observe", "--last", "many"], "--last"),
            (vec!["observe", "--not", "-f"], "--not"),
        ] {
            let cmd = Cmd::try_parse_from(&argv).unwrap();
            let err = cmd.args.request(now).unwrap_err().to_string();
            assert!(err.contains(flag), "{argv:?}: {err}");
        }
        let err = Cmd::try_parse_from(["observe", "-o", "yaml"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--output") && err.contains("yaml"), "{err}");
    }

    #[test]
    fn the_tally_names_unreachable_nodes() {
        let mut t = NodeTally::default();
        assert_eq!(t.take_line(), None);
        t.update(
            NodeState::Connected,
            &["c1/n1".into(), "c1/n2".into(), "c2/n1".into()],
            "",
        );
        t.update(
            NodeState::Unavailable,
            &["c2/n2".into()],
            "connection refused",
        );
        assert_eq!(
            t.take_line().unwrap(),
            "3/4 nodes (unavailable: c2/n2: connection refused)"
        );
        assert_eq!(t.take_line(), None);
        t.update(NodeState::Connected, &["c2/n2".into()], "");
        assert_eq!(t.take_line().unwrap(), "4/4 nodes");
    }
}
