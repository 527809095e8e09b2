//! `plexus lab up | down | status | stop | start` and the contexts the lab writes.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use plexus_lab::lab::{self, Bins, LabState};
use plexus_lab::spec::LabSpec;

use crate::config::{AgentRef, CliConfig, Context};

/// The lab directory: `$PLEXUS_LAB_DIR`, else `/run/plexus-lab`.
pub fn lab_dir() -> PathBuf {
    std::env::var_os("PLEXUS_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/plexus-lab".into())
}

fn progress(line: &str) {
    eprintln!("{line}");
}

/// The contexts of a lab's clusters.
pub fn contexts(lab: &LabState) -> Vec<Context> {
    lab.clusters
        .iter()
        .map(|c| Context {
            name: c.name.clone(),
            cluster_id: c.id,
            max_connected_clusters: 255,
            encryption: lab.encryption,
            state_dir: c.state_dir.clone(),
            etcd_endpoints: c.etcd_endpoints(),
            mesh_endpoints: vec![],
            apiserver: Some(format!("{}:9963", c.ip)),
            relay: Some(c.api_address()),
            clustermesh_dir: c.clustermesh_dir.clone(),
            kvstoremesh_dir: Some(c.kvstoremesh_dir()),
            kvstoremesh: true,
            agents: c
                .nodes
                .iter()
                .map(|n| AgentRef {
                    node: n.name.clone(),
                    address: Some(n.api_address()),
                    socket: Some(n.socket.clone()),
                })
                .collect(),
            netns: Some(lab.underlay.clone()),
            lab_dir: Some(lab.dir.clone()),
        })
        .collect()
}

/// `lab up`: builds the lab and writes its contexts. Returns the lab.
pub fn up(
    file: &Path,
    name: &str,
    wireguard_device: plexus_lab::wireguard::Device,
    config: &mut CliConfig,
    path: &Path,
) -> Result<LabState> {
    let mut spec = LabSpec::load(file)?;
    spec.wireguard_device = wireguard_device;
    let bins = Bins::beside_current_exe()?;
    let dir = lab_dir();
    let mut p = progress;
    let lab = match lab::up(name, &dir, &spec, &bins, &mut p) {
        Ok(lab) => lab,
        Err(err) => {
            eprintln!("❌ lab up failed: {err:#}; removing what was created");
            let _ = lab::down(&dir, &mut p);
            return Err(err);
        }
    };
    for c in contexts(&lab) {
        config.upsert(c);
    }
    if config.current_context.is_none()
        || !config
            .contexts
            .iter()
            .any(|c| Some(&c.name) == config.current_context.as_ref())
    {
        config.current_context = lab.clusters.first().map(|c| c.name.clone());
    }
    config.save(path)?;
    println!(
        "✅ lab is up: {} (contexts written to {})",
        lab.clusters
            .iter()
            .map(|c| format!("{} ({} nodes)", c.name, c.nodes.len()))
            .collect::<Vec<_>>()
            .join(", "),
        path.display()
    );
    Ok(lab)
}

/// `lab down`: removes the lab and its contexts.
pub fn down(config: &mut CliConfig, path: &Path) -> Result<()> {
    let dir = lab_dir();
    if let Ok(lab) = LabState::load(&dir) {
        config.contexts.retain(|c| {
            !lab.clusters
                .iter()
                .any(|l| l.name == c.name && c.lab_dir.as_deref() == Some(&lab.dir))
        });
        if config
            .current_context
            .as_ref()
            .is_some_and(|cur| !config.contexts.iter().any(|c| &c.name == cur))
        {
            config.current_context = config.contexts.first().map(|c| c.name.clone());
        }
        config.save(path)?;
    }
    let mut p = progress;
    lab::down(&dir, &mut p)
}

/// `lab status`.
pub fn status() -> Result<bool> {
    let dir = lab_dir();
    let rows = lab::status(&dir)?;
    let lab = LabState::load(&dir)?;
    println!(
        "lab {} in {} ({:?} routing{})",
        lab.name,
        dir.display(),
        lab.routing,
        match lab.encryption {
            plexus_lab::spec::Encryption::None => "",
            plexus_lab::spec::Encryption::Wireguard => ", WireGuard encryption",
        }
    );
    let mut all = true;
    for (cluster, what, alive) in rows {
        all &= alive;
        println!("  {} {cluster:<12} {what}", if alive { "✅" } else { "❌" });
    }
    Ok(all)
}

/// `lab stop CLUSTER`.
pub fn stop(cluster: &str) -> Result<()> {
    lab::stop(&lab_dir(), cluster).with_context(|| format!("stop cluster {cluster}"))?;
    println!("✅ cluster {cluster} is down (processes killed, nodes off the underlay)");
    Ok(())
}

/// `lab start CLUSTER`.
pub fn start(cluster: &str) -> Result<()> {
    let bins = Bins::beside_current_exe()?;
    let mut p = progress;
    lab::start(&lab_dir(), cluster, &bins, &mut p)
}
