//! `plexus host ...`: setting up a host (not a lab node) to run workloads with Plexus.
//!
//! `install-cni` writes the CNI network podman uses (`podman run --network plexus`): a
//! configuration list `<dir>/<name>.conflist` whose one plugin is `plexus-cni` with
//! `"runtime": "podman"` and the local agent's socket, and, when asked, puts the `plexus-cni`
//! binary into the directory where podman looks for plugins (podman runs the binary named by
//! the plugin's `type`). Files are written through a rename, so podman never reads half of one.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

/// What `install-cni` did (its `-o json` output).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstallCni {
    /// The network's name (`podman run --network NAME`).
    pub network: String,
    /// The configuration list written.
    pub file: PathBuf,
    /// The agent's socket the plugin talks to.
    pub agent_socket: PathBuf,
    /// Where the plugin binary was installed, if asked.
    pub plugin: Option<PathBuf>,
}

/// Writes `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("plexus-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// `plexus host install-cni`.
pub fn install_cni(
    dir: &Path,
    name: &str,
    agent_socket: &Path,
    cni_bin_dir: Option<&Path>,
    plugin_source: Option<&Path>,
) -> Result<InstallCni> {
    plexus_cni::conf::validate_network_name(name).context("--name")?;
    if !agent_socket.is_absolute() {
        bail!(
            "--agent-socket {}: must be an absolute path (the plugin runs in the runtime's working directory)",
            agent_socket.display()
        );
    }
    let plugin = match cni_bin_dir {
        None => None,
        Some(bin_dir) => {
            let source = match plugin_source {
                Some(p) => p.to_path_buf(),
                None => std::env::current_exe()
                    .context("locate the plexus binary")?
                    .with_file_name(plexus_cni::conf::PLUGIN_TYPE),
            };
            let bytes = std::fs::read(&source).with_context(|| {
                format!(
                    "read the CNI plugin {} (install plexus-cni beside plexus, or give --cni-plugin)",
                    source.display()
                )
            })?;
            std::fs::create_dir_all(bin_dir)
                .with_context(|| format!("create {}", bin_dir.display()))?;
            let target = bin_dir.join(plexus_cni::conf::PLUGIN_TYPE);
            write_atomic(&target, &bytes, 0o755)?;
            Some(target)
        }
    };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let file = dir.join(format!("{name}.conflist"));
    let list = plexus_cni::conf::podman_conflist(name, agent_socket);
    let mut text = serde_json::to_vec_pretty(&list).context("encode the network")?;
    text.push(b'\n');
    write_atomic(&file, &text, 0o644)?;
    Ok(InstallCni {
        network: name.to_string(),
        file,
        agent_socket: agent_socket.to_path_buf(),
        plugin,
    })
}

/// Prints what `install-cni` did, for people or as JSON.
pub fn print_install_cni(done: &InstallCni, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(done)?);
        return Ok(());
    }
    println!(
        "✅ CNI network {} written to {} (agent socket {})",
        done.network,
        done.file.display(),
        done.agent_socket.display()
    );
    if let Some(p) = &done.plugin {
        println!("✅ CNI plugin installed as {}", p.display());
    }
    println!(
        "   run containers with: podman run --network {} ...",
        done.network
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_network_and_the_plugin() {
        let tmp = tempfile::tempdir().unwrap();
        let plugin_src = tmp.path().join("plexus-cni-build");
        std::fs::write(&plugin_src, b"#!binary").unwrap();
        let done = install_cni(
            &tmp.path().join("net.d"),
            "mesh",
            Path::new("/run/plexus/agent.sock"),
            Some(&tmp.path().join("bin")),
            Some(&plugin_src),
        )
        .unwrap();
        assert_eq!(done.file, tmp.path().join("net.d/mesh.conflist"));
        let list: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&done.file).unwrap()).unwrap();
        assert_eq!(list["name"], "mesh");
        assert_eq!(list["plugins"][0]["type"], "plexus-cni");
        assert_eq!(list["plugins"][0]["runtime"], "podman");
        assert_eq!(list["plugins"][0]["agent-socket"], "/run/plexus/agent.sock");
        let installed = done.plugin.unwrap();
        assert_eq!(installed, tmp.path().join("bin/plexus-cni"));
        assert_eq!(std::fs::read(&installed).unwrap(), b"#!binary");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn bad_input_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = Path::new("/run/plexus/agent.sock");
        let err = install_cni(tmp.path(), "a/b", sock, None, None).unwrap_err();
        assert!(format!("{err:#}").contains("--name"), "{err:#}");
        let err = install_cni(tmp.path(), "n", Path::new("agent.sock"), None, None).unwrap_err();
        assert!(format!("{err:#}").contains("--agent-socket"), "{err:#}");
        let missing = tmp.path().join("no-plugin");
        let err = install_cni(tmp.path(), "n", sock, Some(tmp.path()), Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-plugin"), "{err}");
        assert!(!tmp.path().join("n.conflist").exists());
    }
}
