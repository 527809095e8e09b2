//! The CLI's configuration file: one context per cluster, like a kubeconfig.
//!
//! `$PLEXUS_CONFIG`, else `~/.plexus/config.yaml`:
//!
//! ```yaml
//! current-context: cluster1
//! contexts:
//! - name: cluster1                 # the cluster's name
//!   cluster-id: 1
//!   max-connected-clusters: 255    # optional
//!   encryption: wireguard          # optional: none (default) or wireguard, as its agents run
//!   state-dir: /var/lib/plexus/cluster1   # certificates under pki/
//!   etcd-endpoints: [https://127.0.0.1:2379]   # how the CLI reaches the cluster's etcd
//!   mesh-endpoints: [https://10.0.0.1:2379]    # how other clusters reach it (default: etcd-endpoints)
//!   apiserver: 127.0.0.1:9963      # the apiserver's status address
//!   relay: 10.0.0.1:4245           # the apiserver's API (mutual TLS): flow relay, web view
//!   clustermesh-dir: /var/lib/plexus/cluster1/clustermesh   # where its agents read remote configs
//!   kvstoremesh-dir: /var/lib/plexus/cluster1/kvstoremesh   # optional: KVStoreMesh's remote configs
//!   kvstoremesh: false             # optional: connect its agents to remotes directly anyway
//!   agents:                        # the nodes' agents
//!   - node: node1
//!     address: 10.0.0.11:9965      # the agent's API on TCP (mutual TLS, the admin certificate)
//!     socket: /run/plexus/cluster1/node1/agent.sock   # or its local socket (used without address)
//!   netns: plexus-lab-underlay     # optional: network namespace to reach the cluster from
//!   lab-dir: /run/plexus-lab       # optional: the lab that runs the cluster's pods
//! ```
//!
//! A context is named after its cluster. Errors name the file and the context.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// One node's agent: its TCP address (mutual TLS with the context's admin certificate), or its
/// local socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AgentRef {
    /// Node name.
    pub node: String,
    /// Its API on TCP with mutual TLS, `host:port` (the agent's `--api-listen`); used when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its API socket, for a CLI on the node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

fn default_max() -> u32 {
    255
}

pub use plexus_config::Encryption;

/// How to reach one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    /// The cluster's name.
    pub name: String,
    /// The cluster's id.
    pub cluster_id: u32,
    /// 255 or 511.
    #[serde(default = "default_max")]
    pub max_connected_clusters: u32,
    /// Encryption of pod traffic between the cluster's nodes (its agents' `enable-wireguard`).
    #[serde(default, skip_serializing_if = "Encryption::is_none")]
    pub encryption: Encryption,
    /// Where the cluster's certificates live (`pki/`).
    pub state_dir: PathBuf,
    /// The cluster's etcd, as the CLI reaches it.
    pub etcd_endpoints: Vec<String>,
    /// The cluster's etcd, as other clusters reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mesh_endpoints: Vec<String>,
    /// The apiserver's HTTP address (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<String>,
    /// The apiserver's API on TCP with mutual TLS (`host:port`, its `--api-listen`): the flow
    /// relay and the web view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Where the cluster's agents read remote-cluster configurations.
    pub clustermesh_dir: PathBuf,
    /// Where the cluster's KVStoreMesh (its apiserver's `--kvstoremesh-config`) reads
    /// remote-cluster configurations, when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvstoremesh_dir: Option<PathBuf>,
    /// Whether `clustermesh connect` makes the agents read remote clusters through KVStoreMesh
    /// (when `kvstoremesh_dir` is set; the default, as in Cilium since 1.16) or directly
    /// (`clustermesh enable --enable-kvstoremesh=false`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub kvstoremesh: bool,
    /// The nodes' agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentRef>,
    /// A network namespace to enter before talking to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The lab the cluster belongs to (pods are run by the lab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab_dir: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Context {
    /// KVStoreMesh's configuration directory when the agents read remote clusters through it:
    /// it runs (`kvstoremesh_dir`) and is not turned off (`kvstoremesh`).
    pub fn kvstoremesh(&self) -> Option<&Path> {
        self.kvstoremesh_dir.as_deref().filter(|_| self.kvstoremesh)
    }

    /// The certificate directory.
    pub fn pki(&self) -> plexus_pki::cluster::ClusterPki {
        plexus_pki::cluster::ClusterPki::new(self.state_dir.join("pki"), &self.name)
    }

    /// A client of `agent`'s API: over TCP with mutual TLS as the cluster's admin when the
    /// agent has an address, else on its socket.
    pub fn agent_client(&self, agent: &AgentRef) -> Result<plexus_agent_api::Client> {
        use plexus_agent_api::{Client, Endpoint};
        if let Some(addr) = &agent.address {
            let admin = self.pki().admin();
            let config = plexus_agent_api::tls::client_config(
                &admin.ca,
                Some((admin.cert.as_path(), admin.key.as_path())),
            )
            .with_context(|| {
                format!(
                    "the admin certificate of context {} for the agent of {} at {addr}",
                    self.name, agent.node
                )
            })?;
            return Ok(Client::new(Endpoint::Tls {
                addr: addr.clone(),
                config,
            }));
        }
        match &agent.socket {
            Some(socket) => Ok(Client::new(Endpoint::Unix(socket.clone()))),
            None => bail!(
                "context {}: the agent of {} has neither an address nor a socket",
                self.name,
                agent.node
            ),
        }
    }

    /// The relay's address (`relay:`), or an error saying the context has none.
    pub fn relay_address(&self) -> Result<&str> {
        self.relay.as_deref().with_context(|| {
            format!(
                "context {} names no relay (relay: HOST:PORT, the apiserver's API address)",
                self.name
            )
        })
    }

    /// A client of the relay (the apiserver's API, mutual TLS with the admin certificate).
    pub fn relay_client(&self) -> Result<plexus_agent_api::Client> {
        let addr = self.relay_address()?;
        let admin = self.pki().admin();
        let config = plexus_agent_api::tls::client_config(
            &admin.ca,
            Some((admin.cert.as_path(), admin.key.as_path())),
        )
        .with_context(|| {
            format!(
                "the admin certificate of context {} for the relay at {addr}",
                self.name
            )
        })?;
        Ok(plexus_agent_api::Client::new(
            plexus_agent_api::Endpoint::Tls {
                addr: addr.to_string(),
                config,
            },
        ))
    }

    /// A client of the apiserver's HTTP endpoints, if the context names it.
    pub fn apiserver_client(&self) -> Option<plexus_agent_api::Client> {
        self.apiserver.as_ref().map(|addr| {
            plexus_agent_api::Client::new(plexus_agent_api::Endpoint::Tcp(addr.clone()))
        })
    }

    /// How peers reach the cluster's etcd.
    pub fn mesh_endpoints(&self) -> &[String] {
        if self.mesh_endpoints.is_empty() {
            &self.etcd_endpoints
        } else {
            &self.mesh_endpoints
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CliConfig {
    /// The context used without `--context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Every context.
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// The config file's path: `$PLEXUS_CONFIG`, else `~/.plexus/config.yaml`.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PLEXUS_CONFIG") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".plexus").join("config.yaml")
}

impl CliConfig {
    /// Reads the file; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let config: Self = serde_norway::from_str(&text)
            .with_context(|| format!("{}: not a valid plexus configuration", path.display()))?;
        for (i, c) in config.contexts.iter().enumerate() {
            if config.contexts[..i].iter().any(|o| o.name == c.name) {
                bail!("{}: context {:?} appears twice", path.display(), c.name);
            }
        }
        Ok(config)
    }

    /// Writes the file (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let text = serde_norway::to_string(self)?;
        write_atomic(path, text.as_bytes(), 0o600)
    }

    /// The context named `name`, or the current one.
    pub fn context(&self, name: Option<&str>, path: &Path) -> Result<&Context> {
        let name = match name.or(self.current_context.as_deref()) {
            Some(n) => n,
            None => bail!(
                "no --context given and no current-context in {}",
                path.display()
            ),
        };
        self.contexts
            .iter()
            .find(|c| c.name == name)
            .with_context(|| {
                let known: Vec<&str> = self.contexts.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "context {name:?} not found in {} (known: {})",
                    path.display(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })
    }

    /// Adds or replaces a context.
    pub fn upsert(&mut self, context: Context) {
        match self.contexts.iter_mut().find(|c| c.name == context.name) {
            Some(c) => *c = context,
            None => self.contexts.push(context),
        }
    }
}

/// Writes `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    // Hidden while being written: the clustermesh directory scanner skips dot files.
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        assert_eq!(CliConfig::load(&path).unwrap(), CliConfig::default());
        let mut config = CliConfig::default();
        config.upsert(Context {
            name: "c1".into(),
            cluster_id: 1,
            max_connected_clusters: 255,
            encryption: Encryption::Wireguard,
            state_dir: "/tmp/c1".into(),
            etcd_endpoints: vec!["https://127.0.0.1:2379".into()],
            mesh_endpoints: vec![],
            apiserver: None,
            relay: None,
            clustermesh_dir: "/tmp/c1/clustermesh".into(),
            kvstoremesh_dir: None,
            kvstoremesh: true,
            agents: vec![
                AgentRef {
                    node: "n1".into(),
                    address: Some("10.0.0.11:9965".into()),
                    socket: None,
                },
                AgentRef {
                    node: "n2".into(),
                    address: None,
                    socket: Some("/run/plexus/n2.sock".into()),
                },
                AgentRef {
                    node: "n3".into(),
                    address: None,
                    socket: None,
                },
            ],
            netns: None,
            lab_dir: None,
        });
        config.current_context = Some("c1".into());
        config.save(&path).unwrap();
        let back = CliConfig::load(&path).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.context(None, &path).unwrap().name, "c1");
        let c1 = back.context(None, &path).unwrap();
        // n1's address needs the admin certificate, which this context does not have.
        let err = format!("{:#}", c1.agent_client(&c1.agents[0]).unwrap_err());
        assert!(
            err.contains("admin certificate") && err.contains("n1"),
            "{err}"
        );
        assert_eq!(
            c1.agent_client(&c1.agents[1]).unwrap().target().to_string(),
            "unix:/run/plexus/n2.sock"
        );
        let err = format!("{:#}", c1.relay_client().unwrap_err());
        assert!(
            err.contains("names no relay") && err.contains("c1"),
            "{err}"
        );
        let err = c1.agent_client(&c1.agents[2]).unwrap_err().to_string();
        assert!(err.contains("neither an address nor a socket"), "{err}");
        let err = back.context(Some("c9"), &path).unwrap_err().to_string();
        assert!(err.contains("c9") && err.contains("known: c1"), "{err}");

        std::fs::write(&path, "contexts:\n- name: c1\n  cluster-idd: 1\n").unwrap();
        let err = format!("{:#}", CliConfig::load(&path).unwrap_err());
        assert!(
            err.contains("config.yaml") && err.contains("cluster-idd"),
            "{err}"
        );
    }
}
