//! The plugin's inputs: the CNI environment variables ([`Env`]) and the network configuration
//! read from stdin ([`NetConf`]).
//!
//! Parsing validates everything before any device or agent is touched, and every error names
//! the variable (`CNI_IFNAME`) or the configuration field (`args.cni.labels.app`) at fault.
//! Configuration keys (CNI 1.0 network configuration):
//! - `cniVersion` (required, `0.4.0` or `1.0.0`), `name` (required), `type` (required);
//! - `agent-socket`: the agent's API socket, default [`DEFAULT_AGENT_SOCKET`];
//! - `runtime`: `"podman"` when podman runs the workloads: the agent then reads each
//!   container's name and labels from podman's state, and the plugin sends only the container
//!   id (podman passes no labels to CNI); absent, the labels are the configuration's own;
//! - `args.cni.labels`: the pod's labels, an object of strings (the CNI conventions' `args`);
//! - `prevResult`: kept for CHECK.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

/// The CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["0.4.0", "1.0.0"];
/// The version of results and errors when the configuration gives none.
pub const DEFAULT_VERSION: &str = "1.0.0";
/// Where the agent's API socket is when the configuration does not say.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/plexus/agent.sock";
/// Linux limits interface names to 15 bytes.
pub const MAX_IFNAME_LEN: usize = 15;

/// Invalid input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    /// An environment variable is missing or invalid.
    #[error("{var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A network configuration field is missing or invalid.
    #[error("network configuration: {field}: {reason}")]
    Config {
        /// The field, as a dotted path.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration's `cniVersion` is not one this plugin speaks.
    #[error(
        "network configuration: cniVersion {version:?} is not supported (supported: 0.4.0, 1.0.0)"
    )]
    Version {
        /// The version asked for.
        version: String,
    },
}

fn env_err(var: &'static str, reason: impl Into<String>) -> ConfError {
    ConfError::Env {
        var,
        reason: reason.into(),
    }
}

fn conf_err(field: impl Into<String>, reason: impl Into<String>) -> ConfError {
    ConfError::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The CNI operation (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Connect a container to the network.
    Add,
    /// Disconnect it; idempotent.
    Del,
    /// Verify it is still connected as ADD left it.
    Check,
    /// Report the supported versions.
    Version,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Result<Self, ConfError> {
        match s {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "VERSION" => Ok(Self::Version),
            other => Err(env_err(
                "CNI_COMMAND",
                format!("unknown command {other:?} (expected ADD, DEL, CHECK or VERSION)"),
            )),
        }
    }
}

/// The CNI environment of one invocation (for ADD, DEL and CHECK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`: letters, digits, `_`, `.` and `-`.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace path; required for ADD and CHECK, optional for
    /// DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface to create inside the pod.
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`, `default` when absent.
    pub pod_namespace: String,
    /// `K8S_POD_NAME` from `CNI_ARGS`, the container id when absent.
    pub pod_name: String,
    /// `CNI_PATH`: where plugins live (unused: this plugin delegates to none).
    pub path: Vec<PathBuf>,
}

fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks an interface name the way the kernel does (`dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "{name:?} is longer than {MAX_IFNAME_LEN} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{name:?} contains '/', ':', whitespace or control characters"
        ));
    }
    Ok(())
}

/// Parses `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>, ConfError> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(env_err("CNI_ARGS", format!("{pair:?} is not KEY=VALUE")));
        };
        if k.is_empty() {
            return Err(env_err("CNI_ARGS", format!("{pair:?} has an empty key")));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

impl Env {
    /// Reads the CNI variables through `var` (in the binary, the process environment).
    ///
    /// `CNI_COMMAND` is read first and alone, so VERSION needs nothing else.
    pub fn command(var: &impl Fn(&str) -> Option<String>) -> Result<Command, ConfError> {
        match var("CNI_COMMAND") {
            Some(c) if !c.is_empty() => Command::parse(&c),
            _ => Err(env_err("CNI_COMMAND", "missing")),
        }
    }

    /// Reads and validates the variables of ADD, DEL and CHECK.
    pub fn from_vars(var: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfError> {
        let command = Self::command(var)?;
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let container_id =
            get("CNI_CONTAINERID").ok_or_else(|| env_err("CNI_CONTAINERID", "missing"))?;
        if !valid_container_id(&container_id) {
            return Err(env_err(
                "CNI_CONTAINERID",
                format!("{container_id:?} may only hold letters, digits, '_', '.' and '-'"),
            ));
        }
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if command != Command::Del && netns.is_none() {
            return Err(env_err("CNI_NETNS", "missing"));
        }
        let ifname = match get("CNI_IFNAME") {
            Some(n) => n,
            None if command == Command::Del => String::new(),
            None => return Err(env_err("CNI_IFNAME", "missing")),
        };
        if !ifname.is_empty() {
            validate_ifname(&ifname).map_err(|r| env_err("CNI_IFNAME", r))?;
        }
        let args = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
        let pod_namespace = args
            .get("K8S_POD_NAMESPACE")
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| "default".to_string());
        let pod_name = args
            .get("K8S_POD_NAME")
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| container_id.clone());
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            pod_namespace,
            pod_name,
            path,
        })
    }
}

/// The network configuration, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// `cniVersion`: one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// `name`: the network's name.
    pub name: String,
    /// `type`: the plugin's name.
    pub plugin_type: String,
    /// `agent-socket`.
    pub agent_socket: PathBuf,
    /// `runtime`: where the agent takes the workload's identity from.
    pub workload: plexus_agent_api::WorkloadSource,
    /// `args.cni.labels`.
    pub labels: BTreeMap<String, String>,
    /// `args.cni.ports`: named container ports, `{"http": {"port": 80, "protocol": "TCP"}}`.
    pub ports: BTreeMap<String, plexus_agent_api::ContainerPort>,
    /// `prevResult`, as given.
    pub prev_result: Option<Value>,
}

fn required_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<&'a str, ConfError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(conf_err(field, "missing")),
        Some(Value::String(s)) if s.is_empty() => Err(conf_err(field, "is empty")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(conf_err(field, format!("must be a string, not {other}"))),
    }
}

/// The `cniVersion` of a configuration if it can be read at all, for the version of an error
/// printed when the rest does not parse.
pub fn version_hint(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let version = v.get("cniVersion")?.as_str()?;
    SUPPORTED_VERSIONS
        .contains(&version)
        .then(|| version.to_string())
}

impl NetConf {
    /// Parses and validates the configuration JSON.
    pub fn parse(stdin: &[u8]) -> Result<Self, ConfError> {
        let value: Value = serde_json::from_slice(stdin)
            .map_err(|e| conf_err("(stdin)", format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(conf_err("(stdin)", "must be a JSON object"));
        };
        let cni_version = required_str(&obj, "cniVersion")?.to_string();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(ConfError::Version {
                version: cni_version,
            });
        }
        let name = required_str(&obj, "name")?.to_string();
        validate_network_name(&name)?;
        let plugin_type = required_str(&obj, "type")?.to_string();
        let agent_socket = match obj.get("agent-socket") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_AGENT_SOCKET),
            Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
            Some(Value::String(s)) => {
                return Err(conf_err(
                    "agent-socket",
                    format!("{s:?} is not an absolute path"),
                ));
            }
            Some(other) => {
                return Err(conf_err(
                    "agent-socket",
                    format!("must be a string, not {other}"),
                ));
            }
        };
        let workload = match obj.get("runtime") {
            None | Some(Value::Null) => plexus_agent_api::WorkloadSource::Request,
            Some(Value::String(s)) if s == "podman" => plexus_agent_api::WorkloadSource::Podman,
            Some(other) => {
                return Err(conf_err(
                    "runtime",
                    format!("must be \"podman\" or absent, not {other}"),
                ));
            }
        };
        let labels = parse_labels(obj.get("args"))?;
        let ports = parse_ports(obj.get("args"))?;
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(conf_err(
                    "prevResult",
                    format!("must be an object, not {other}"),
                ));
            }
        };
        Ok(Self {
            cni_version,
            name,
            plugin_type,
            agent_socket,
            workload,
            labels,
            ports,
            prev_result,
        })
    }
}

/// The CNI network configuration list (`<name>.conflist`) of a podman network served by this
/// plugin: one plugin of type `plexus-cni` with `"runtime": "podman"`, talking to the agent on
/// `agent_socket`. The container runtime adds `name` and `cniVersion` to the plugin's object
/// before it runs the plugin.
pub fn podman_conflist(name: &str, agent_socket: &std::path::Path) -> Value {
    serde_json::json!({
        "cniVersion": DEFAULT_VERSION,
        "name": name,
        "plugins": [{
            "type": PLUGIN_TYPE,
            "runtime": "podman",
            "agent-socket": agent_socket.display().to_string(),
        }],
    })
}

/// The plugin's binary name, which is the `type` of its network configurations.
pub const PLUGIN_TYPE: &str = "plexus-cni";

/// Checks a network name as [`NetConf::parse`] does.
pub fn validate_network_name(name: &str) -> Result<(), ConfError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(conf_err(
            "name",
            format!("{name:?} may only hold letters, digits, '_', '.' and '-'"),
        ));
    }
    Ok(())
}

fn parse_ports(
    args: Option<&Value>,
) -> Result<BTreeMap<String, plexus_agent_api::ContainerPort>, ConfError> {
    let mut out = BTreeMap::new();
    let Some(Value::Object(ports)) = args.and_then(|a| a.get("cni")).and_then(|c| c.get("ports"))
    else {
        return match args.and_then(|a| a.get("cni")).and_then(|c| c.get("ports")) {
            None | Some(Value::Null) => Ok(out),
            Some(other) => Err(conf_err(
                "args.cni.ports",
                format!("must be an object, not {other}"),
            )),
        };
    };
    for (name, v) in ports {
        let field = format!("args.cni.ports.{name}");
        let port = v
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| conf_err(format!("{field}.port"), "must be a port number 1-65535"))?;
        let protocol = match v.get("protocol") {
            None | Some(Value::Null) => "TCP".to_string(),
            Some(Value::String(p)) if ["TCP", "UDP", "SCTP"].contains(&p.as_str()) => p.clone(),
            Some(other) => {
                return Err(conf_err(
                    format!("{field}.protocol"),
                    format!("must be TCP, UDP or SCTP, not {other}"),
                ));
            }
        };
        out.insert(
            name.clone(),
            plexus_agent_api::ContainerPort { port, protocol },
        );
    }
    Ok(out)
}

fn parse_labels(args: Option<&Value>) -> Result<BTreeMap<String, String>, ConfError> {
    let mut labels = BTreeMap::new();
    let mut at = args;
    for (field, key) in [("args", "cni"), ("args.cni", "labels")] {
        match at {
            None | Some(Value::Null) => return Ok(labels),
            Some(Value::Object(o)) => at = o.get(key),
            Some(other) => return Err(conf_err(field, format!("must be an object, not {other}"))),
        }
    }
    match at {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                if k.is_empty() {
                    return Err(conf_err("args.cni.labels", "has an empty key"));
                }
                match v {
                    Value::String(s) => {
                        labels.insert(k.clone(), s.clone());
                    }
                    other => {
                        return Err(conf_err(
                            format!("args.cni.labels.{k}"),
                            format!("must be a string, not {other}"),
                        ));
                    }
                }
            }
        }
        Some(other) => {
            return Err(conf_err(
                "args.cni.labels",
                format!("must be an object, not {other}"),
            ));
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=front-0",
        ),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn named_ports_are_parsed_and_checked() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"plexus","type":"plexus-cni",
                "args":{"cni":{"ports":{"http":{"port":8080},"dns":{"port":53,"protocol":"UDP"}}}}}"#,
        )
        .unwrap();
        assert_eq!(conf.ports["http"].port, 8080);
        assert_eq!(conf.ports["http"].protocol, "TCP");
        assert_eq!(conf.ports["dns"].protocol, "UDP");
        for (bad, field) in [
            (r#"{"http":{"port":0}}"#, "args.cni.ports.http.port"),
            (r#"{"http":{"port":"80"}}"#, "args.cni.ports.http.port"),
            (
                r#"{"http":{"port":80,"protocol":"ICMP"}}"#,
                "args.cni.ports.http.protocol",
            ),
            (r#"[1]"#, "args.cni.ports"),
        ] {
            let text = format!(
                r#"{{"cniVersion":"1.0.0","name":"plexus","type":"plexus-cni","args":{{"cni":{{"ports":{bad}}}}}}}"#
            );
            let err = NetConf::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn runtime_podman_is_parsed_and_checked() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"plexus","type":"plexus-cni","runtime":"podman"}"#,
        )
        .unwrap();
        assert_eq!(conf.workload, plexus_agent_api::WorkloadSource::Podman);
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"plexus","type":"plexus-cni"}"#)
            .unwrap();
        assert_eq!(conf.workload, plexus_agent_api::WorkloadSource::Request);
        let err = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"plexus","type":"plexus-cni","runtime":"docker"}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "network configuration: runtime: must be \"podman\" or absent, not \"docker\""
        );
    }

    #[test]
    fn the_podman_conflist_parses_as_the_runtime_passes_it() {
        let list = podman_conflist("plexus", std::path::Path::new("/run/plexus/agent.sock"));
        // libcni gives each plugin the list's name and version.
        let mut plugin = list["plugins"][0].clone();
        plugin["name"] = list["name"].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        let conf = NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        assert_eq!(conf.workload, plexus_agent_api::WorkloadSource::Podman);
        assert_eq!(conf.plugin_type, "plexus-cni");
        assert_eq!(conf.agent_socket, PathBuf::from("/run/plexus/agent.sock"));
        assert!(validate_network_name("a/b").is_err());
    }

    #[test]
    fn env_add_is_parsed() {
        let env = Env::from_vars(&vars(ADD)).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.container_id, "abc123");
        assert_eq!(env.netns, Some(PathBuf::from("/run/netns/pod")));
        assert_eq!(env.ifname, "eth0");
        assert_eq!(env.pod_namespace, "web");
        assert_eq!(env.pod_name, "front-0");
        assert_eq!(env.path.len(), 2);
    }

    #[test]
    fn env_defaults_pod_identity() {
        let env = Env::from_vars(&vars(&ADD[..4])).unwrap();
        assert_eq!(env.pod_namespace, "default");
        assert_eq!(env.pod_name, "abc123");
    }

    #[test]
    fn env_del_needs_only_the_container() {
        let env =
            Env::from_vars(&vars(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "x")])).unwrap();
        assert_eq!(env.command, Command::Del);
        assert_eq!(env.netns, None);
    }

    fn env_error(pairs: &[(&str, &str)]) -> ConfError {
        Env::from_vars(&vars(pairs)).unwrap_err()
    }

    fn with(over: (&'static str, &'static str)) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = ADD.iter().filter(|(k, _)| *k != over.0).copied().collect();
        v.push(over);
        v
    }

    fn without(var: &str) -> Vec<(&'static str, &'static str)> {
        ADD.iter().filter(|(k, _)| *k != var).copied().collect()
    }

    #[test]
    fn env_errors_name_the_variable() {
        for (pairs, var, needle) in [
            (without("CNI_COMMAND"), "CNI_COMMAND", "missing"),
            (
                with(("CNI_COMMAND", "UP")),
                "CNI_COMMAND",
                "unknown command",
            ),
            (without("CNI_CONTAINERID"), "CNI_CONTAINERID", "missing"),
            (
                with(("CNI_CONTAINERID", "a/b")),
                "CNI_CONTAINERID",
                "letters",
            ),
            (without("CNI_NETNS"), "CNI_NETNS", "missing"),
            (without("CNI_IFNAME"), "CNI_IFNAME", "missing"),
            (
                with(("CNI_IFNAME", "a-very-long-ifname")),
                "CNI_IFNAME",
                "longer than 15",
            ),
            (with(("CNI_IFNAME", "et/h0")), "CNI_IFNAME", "contains"),
            (
                with(("CNI_ARGS", "K8S_POD_NAME")),
                "CNI_ARGS",
                "not KEY=VALUE",
            ),
        ] {
            match env_error(&pairs) {
                ConfError::Env { var: v, reason } => {
                    assert_eq!(v, var);
                    assert!(reason.contains(needle), "{var}: {reason}");
                }
                other => panic!("{var}: {other:?}"),
            }
        }
    }

    #[test]
    fn full_config_is_parsed() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"plexus","type":"plexus-cni",
                "agent-socket":"/run/plexus/c1/n1/agent.sock",
                "args":{"cni":{"labels":{"app":"x","tier":"web"}}},
                "prevResult":{"cniVersion":"1.0.0","ips":[]}}"#,
        )
        .unwrap();
        assert_eq!(conf.cni_version, "1.0.0");
        assert_eq!(conf.name, "plexus");
        assert_eq!(conf.plugin_type, "plexus-cni");
        assert_eq!(
            conf.agent_socket,
            PathBuf::from("/run/plexus/c1/n1/agent.sock")
        );
        assert_eq!(conf.labels.get("app").map(String::as_str), Some("x"));
        assert_eq!(conf.labels.len(), 2);
        assert!(conf.prev_result.is_some());
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let conf =
            NetConf::parse(br#"{"cniVersion":"0.4.0","name":"n","type":"plexus-cni"}"#).unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        assert!(conf.labels.is_empty());
        assert_eq!(conf.prev_result, None);
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (json, field, needle) in [
            ("not json", "(stdin)", "not valid JSON"),
            ("[1]", "(stdin)", "object"),
            (r#"{"name":"n","type":"t"}"#, "cniVersion", "missing"),
            (r#"{"cniVersion":"1.0.0","type":"t"}"#, "name", "missing"),
            (
                r#"{"cniVersion":"1.0.0","name":"a b","type":"t"}"#,
                "name",
                "letters",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "type", "missing"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":3}"#,
                "type",
                "string",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","agent-socket":"rel.sock"}"#,
                "agent-socket",
                "absolute",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","args":{"cni":{"labels":{"app":1}}}}"#,
                "args.cni.labels.app",
                "string",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","args":{"cni":{"labels":[]}}}"#,
                "args.cni.labels",
                "object",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","args":{"cni":"x"}}"#,
                "args.cni",
                "object",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":1}"#,
                "prevResult",
                "object",
            ),
        ] {
            match NetConf::parse(json.as_bytes()).unwrap_err() {
                ConfError::Config { field: f, reason } => {
                    assert_eq!(f, field, "{json}");
                    assert!(reason.contains(needle), "{json}: {reason}");
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn unsupported_version_is_its_own_error() {
        let err = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#).unwrap_err();
        assert_eq!(
            err,
            ConfError::Version {
                version: "0.3.1".into()
            }
        );
        assert_eq!(
            version_hint(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(version_hint(br#"{"cniVersion":"0.3.1"}"#), None);
    }
}
