//! `plexus-agent`: a thin daemon that wires the Plexus library crates together.
//!
//! The daemon's roles are built up issue by issue; today it only reports its version.

fn main() -> anyhow::Result<()> {
    println!("plexus-agent {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
