//! `plexus-agent`: the daemon of one node (see the `plexus_agent` library for what it does).

use anyhow::Result;

fn main() -> Result<()> {
    // Before any thread starts: the allocator's arenas are set up per thread.
    plexus_agent::shell::memory::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> Result<()> {
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
