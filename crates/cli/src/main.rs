//! `plexus`: the command-line tool of a Plexus mesh, in the shape of cilium-cli.
//!
//! Commands grow issue by issue; today: `clustermesh enable | connect | disconnect | status`
//! and `context list | use`. Contexts live in the configuration file of [`config`].

mod clustermesh;
mod config;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::CliConfig;

/// plexus: multi-cluster networking.
#[derive(Parser, Debug)]
#[command(name = "plexus", version)]
struct Cli {
    /// Configuration file (default: $PLEXUS_CONFIG, else ~/.plexus/config.yaml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The context (cluster) to act on; default: the current context.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enable, connect and inspect the mesh.
    Clustermesh {
        #[command(subcommand)]
        command: MeshCommand,
    },
    /// List or switch contexts.
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// For people.
    Text,
    /// For programs.
    Json,
}

#[derive(Subcommand, Debug)]
enum MeshCommand {
    /// Give the cluster a CA and certificates, and set up its etcd users and roles.
    Enable {
        /// Create a CA when the cluster has none.
        #[arg(long)]
        create_ca: bool,
        /// Share the CA of another context (as Cilium users copy the cilium-ca secret).
        #[arg(long, value_name = "CONTEXT", conflicts_with = "create_ca")]
        ca_from_context: Option<String>,
    },
    /// Connect the cluster and another one, both directions.
    Connect {
        /// The other cluster's context.
        #[arg(long)]
        destination_context: String,
    },
    /// Disconnect the cluster and another one, both directions.
    Disconnect {
        /// The other cluster's context.
        #[arg(long)]
        destination_context: String,
    },
    /// Show the mesh as the cluster sees it.
    Status {
        /// Wait until every node is connected to every remote cluster.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait_duration: Duration,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum ContextCommand {
    /// List the contexts.
    List,
    /// Make a context the current one.
    Use {
        /// The context.
        name: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    plexus_kvstore::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(err) => {
            eprintln!("Error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<bool> {
    let path = cli.config.clone().unwrap_or_else(config::default_path);
    let mut cfg = CliConfig::load(&path)?;
    let ctx = cli.context.as_deref();
    match cli.command {
        Command::Clustermesh { command } => match command {
            MeshCommand::Enable {
                create_ca,
                ca_from_context,
            } => clustermesh::enable(&cfg, &path, ctx, create_ca, ca_from_context.as_deref())
                .await
                .map(|()| true),
            MeshCommand::Connect {
                destination_context,
            } => clustermesh::connect(&cfg, &path, ctx, &destination_context)
                .await
                .map(|()| true),
            MeshCommand::Disconnect {
                destination_context,
            } => clustermesh::disconnect(&cfg, &path, ctx, &destination_context)
                .await
                .map(|()| true),
            MeshCommand::Status {
                wait,
                wait_duration,
                output,
            } => {
                clustermesh::status(
                    &cfg,
                    &path,
                    ctx,
                    wait.then_some(wait_duration),
                    output == Output::Json,
                )
                .await?;
                Ok(true)
            }
        },
        Command::Context { command } => match command {
            ContextCommand::List => {
                for c in &cfg.contexts {
                    let current = cfg.current_context.as_deref() == Some(c.name.as_str());
                    println!(
                        "{} {:<16} id {:<4} etcd {}",
                        if current { "*" } else { " " },
                        c.name,
                        c.cluster_id,
                        c.etcd_endpoints.join(",")
                    );
                }
                Ok(true)
            }
            ContextCommand::Use { name } => {
                cfg.context(Some(&name), &path)?;
                cfg.current_context = Some(name.clone());
                cfg.save(&path)?;
                println!("current context: {name}");
                Ok(true)
            }
        },
    }
}
