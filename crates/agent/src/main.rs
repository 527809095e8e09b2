//! `plexus-agent`: the daemon of one node (see the `plexus_agent` library for what it does).

use anyhow::Result;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    plexus_kvstore::install_crypto_provider();
    // A bad flag, file or value ends the process here, naming the flag, the file and the key.
    let options = plexus_agent::Options::from_command_line()?;
    plexus_agent::run(options).await
}
