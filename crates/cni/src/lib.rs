//! `plexus-cni`: the Plexus CNI 1.0 plugin (CNI 0.4.0 configurations are accepted too).
//!
//! The container runtime runs the binary with `CNI_COMMAND` and friends in the environment and
//! the network configuration on stdin; [`run`] turns that into what to print and whether it
//! failed. ADD asks the node's agent for an address, creates a veth pair (host side `lxc…` in
//! the namespace the plugin runs in, peer inside the pod) and registers the endpoint; DEL undoes
//! it idempotently; CHECK verifies it. Modules:
//! - [`conf`]: environment variables and network configuration, validated;
//! - [`plugin`]: ADD/DEL/CHECK over the [`plugin::Agent`] and [`plugin::Network`] traits;
//! - [`agent`]: the real agent client; [`link`]: the real veth setup; [`netns`]: entering the
//!   pod's namespace;
//! - [`result`]: the JSON printed on stdout; [`error`]: CNI error codes.

pub mod agent;
pub mod conf;
pub mod error;
pub mod link;
pub mod netns;
pub mod plugin;
pub mod result;

use conf::{Command, DEFAULT_VERSION, Env, NetConf};
use error::CniError;
use plugin::{Agent, Network, Plugin};
use result::{ErrorResult, VersionResult};

/// What one invocation prints on stdout, and whether it succeeded (exit code 0, else 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The JSON to print (empty for a successful DEL or CHECK).
    pub stdout: String,
    /// Whether the operation succeeded.
    pub success: bool,
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // These types are plain structs of strings and numbers: serialization cannot fail, and
    // if it somehow did, printing nothing is still a valid (empty) answer.
    serde_json::to_string(value).unwrap_or_default()
}

fn failure(version: &str, err: &CniError) -> Outcome {
    Outcome {
        stdout: to_json(&ErrorResult::new(version, err)),
        success: false,
    }
}

/// Runs one invocation: `var` reads the environment, `stdin` is the network configuration.
/// Talks to the agent named by the configuration and changes the kernel's devices.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    run_with(var, stdin, |conf| {
        let agent = agent::AgentClient::new(conf.agent_socket.clone());
        Ok(Plugin::new(agent, link::KernelNetwork))
    })
}

/// [`run`] with the plugin built by `make` from the configuration (tests pass fakes).
pub fn run_with<A, N>(
    var: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    make: impl FnOnce(&NetConf) -> Result<Plugin<A, N>, CniError>,
) -> Outcome
where
    A: Agent,
    N: Network,
{
    let version = conf::version_hint(stdin).unwrap_or_else(|| DEFAULT_VERSION.to_string());
    let command = match Env::command(&var) {
        Ok(c) => c,
        Err(e) => return failure(&version, &e.into()),
    };
    if command == Command::Version {
        return Outcome {
            stdout: to_json(&VersionResult::default()),
            success: true,
        };
    }
    let outcome = (|| -> Result<String, CniError> {
        let conf = NetConf::parse(stdin)?;
        let env = Env::from_vars(&var)?;
        let plugin = make(&conf)?;
        match command {
            Command::Add => plugin.add(&env, &conf).map(|r| to_json(&r)),
            Command::Del => plugin.del(&env).map(|()| String::new()),
            Command::Check => plugin.check(&env, &conf).map(|()| String::new()),
            Command::Version => Ok(to_json(&VersionResult::default())),
        }
    })();
    match outcome {
        Ok(stdout) => Outcome {
            stdout,
            success: true,
        },
        Err(e) => failure(&version, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_plain(vars: &[(&str, &str)], stdin: &str) -> Outcome {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run_with(
            move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            stdin.as_bytes(),
            |_| -> Result<Plugin<agent::AgentClient, link::KernelNetwork>, CniError> {
                Err(CniError::new(error::OTHER, "no plugin in this test", ""))
            },
        )
    }

    fn error_of(outcome: &Outcome) -> serde_json::Value {
        assert!(!outcome.success);
        serde_json::from_str(&outcome.stdout).unwrap()
    }

    #[test]
    fn version_needs_nothing_else() {
        let out = run_plain(&[("CNI_COMMAND", "VERSION")], "");
        assert!(out.success);
        assert_eq!(
            out.stdout,
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#
        );
    }

    #[test]
    fn errors_have_cni_codes() {
        let good = r#"{"cniVersion":"1.0.0","name":"plexus","type":"plexus-cni"}"#;
        let e = error_of(&run_plain(&[], good));
        assert_eq!(
            (e["code"].as_u64(), e["msg"].as_str()),
            (Some(7), Some("CNI_COMMAND: missing"))
        );
        let e = error_of(&run_plain(
            &[("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"1.0.0"}"#,
        ));
        assert_eq!(e["code"], 4);
        assert!(e["msg"].as_str().unwrap().contains("name"), "{e}");
        let e = error_of(&run_plain(
            &[("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#,
        ));
        assert_eq!(e["code"], 1);
        assert_eq!(e["cniVersion"], "1.0.0");
        let e = error_of(&run_plain(&[("CNI_COMMAND", "ADD")], good));
        assert_eq!(e["code"], 7);
        assert!(
            e["msg"].as_str().unwrap().contains("CNI_CONTAINERID"),
            "{e}"
        );
    }
}
