//! `plexus-wireguard`: the node's userspace WireGuard device (issue 13), one process per node.
//!
//! It owns a persistent TUN link (`--interface`, default `plexus_wg0`) and serves WireGuard's
//! cross-platform UAPI on a Unix socket (`--socket`, default `/run/wireguard/<interface>.sock`,
//! where `wg show <interface>` looks), exactly like wireguard-go: the agent (or `wg set`)
//! configures the key, port and peers through it. The device outlives agent restarts, so
//! sessions survive them.
//!
//! On SIGTERM or SIGINT it removes its socket and exits; the TUN link stays (persistent), so the
//! routes through it keep sending packets into a link without carrier, where they are dropped:
//! the node fails closed rather than in the clear, and a restarted device re-attaches to the
//! link. To remove the link at teardown, run the device with `--delete-on-exit`, or run
//! `plexus-wireguard --interface <name> delete` after it stopped.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::{Mode, umask};
use plexus_wireguard::device::Device;
use plexus_wireguard::tun::Tun;
use plexus_wireguard::uapi;

#[derive(Parser, Debug)]
#[command(
    name = "plexus-wireguard",
    version,
    about = "Userspace WireGuard device (UAPI on a Unix socket, persistent TUN link)"
)]
struct Args {
    /// The TUN link's name.
    #[arg(long, default_value = "plexus_wg0")]
    interface: String,
    /// The UAPI socket [default: /run/wireguard/<interface>.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Remove the TUN link when the device exits (instead of leaving it, persistent).
    #[arg(long)]
    delete_on_exit: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Remove the persistent TUN link (and a stale socket) and exit; fails while a device runs.
    Delete,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(io::stderr)
        .init();
    let args = Args::parse();
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/wireguard/{}.sock", args.interface)));

    if let Some(Command::Delete) = args.command {
        Tun::delete(&args.interface).context("deleting the tun link")?;
        remove_stale_socket(&socket)?;
        tracing::info!(link = %args.interface, "tun link deleted");
        return Ok(());
    }

    // Signals are taken by sigwait in this thread only: block them before any thread starts,
    // so every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;

    let listener = bind_socket(&socket)?;
    let tun = Tun::open_persistent(&args.interface).context("opening the tun link")?;
    let device = Device::new(tun);
    device.start().context("starting the device's threads")?;

    let dev = device.clone();
    let sock_name = socket.clone();
    std::thread::Builder::new()
        .name("wg-uapi".into())
        .spawn(move || serve_uapi(listener, dev, &sock_name))
        .context("starting the uapi thread")?;
    tracing::info!(link = %args.interface, socket = %socket.display(), "device up");

    let signal = signals.wait().context("waiting for a signal")?;
    tracing::info!(?signal, "stopping");
    device.stop();
    if let Err(e) = fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), error = %e, "removing the uapi socket");
    }
    if args.delete_on_exit {
        device
            .tun()
            .unpersist()
            .context("clearing the tun link's persist flag")?;
        tracing::info!(link = %args.interface, "tun link removed (--delete-on-exit)");
    }
    // The threads block in reads; exiting the process ends them (and closes the link's fd,
    // which deletes the link if it is no longer persistent).
    std::process::exit(0);
}

/// Serves UAPI connections one after the other (requests are short; a client that stalls is
/// cut off by the timeouts), so `set` requests never interleave.
fn serve_uapi(listener: UnixListener, device: Arc<Device>, path: &Path) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "accepting a uapi connection");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let timeout = Some(Duration::from_secs(5));
        if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
            continue;
        }
        if let Err(e) = uapi::serve(stream, &*device) {
            tracing::warn!(socket = %path.display(), error = %e, "uapi request");
        }
    }
}

/// Binds the UAPI socket: its directory created with mode 0700 if missing, a stale socket from
/// a crashed run removed, the socket itself mode 0600 (it hands out the private key).
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    remove_stale_socket(path)?;
    // The umask makes the socket 0600 from its creation; set exactly afterwards as well.
    let old = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    umask(old);
    let listener =
        listener.with_context(|| format!("binding the uapi socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))?;
    Ok(listener)
}

/// Removes a socket file nobody listens on; refuses if a device still serves it, or if the path
/// is not a socket.
fn remove_stale_socket(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; not touching it",
            path.display()
        );
    }
    if UnixStream::connect(path).is_ok() {
        bail!("{}: another device is serving this socket", path.display());
    }
    fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))
}
