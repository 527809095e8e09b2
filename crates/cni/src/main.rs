//! `plexus-cni`: the Plexus CNI 1.0 plugin binary, run by the container runtime.
//!
//! Reads `CNI_COMMAND` (ADD, DEL, CHECK, VERSION), `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS` and `CNI_PATH` from the environment and the network configuration from stdin,
//! prints the result (or a CNI error) on stdout and exits 0 (or 1). The logic is in the
//! `plexus_cni` library.

use std::io::Read;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = Vec::new();
    // VERSION may be run with no stdin at all; the other commands need the configuration.
    if command != "VERSION" {
        std::io::stdin()
            .read_to_end(&mut stdin)
            .context("reading the network configuration from stdin")?;
    }
    let outcome = plexus_cni::run(|name| std::env::var(name).ok(), &stdin);
    println!("{}", outcome.stdout);
    if !outcome.success {
        std::process::exit(1);
    }
    Ok(())
}
