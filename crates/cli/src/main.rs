//! `plexus`: the command-line tool.
fn main() -> anyhow::Result<()> {
    println!("plexus {}", env!("CARGO_PKG_VERSION"));
    Ok(())
}
