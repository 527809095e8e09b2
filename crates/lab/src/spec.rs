//! The lab file (`lab.yaml`): clusters, their ids, CIDRs and node counts, the routing mode.
//!
//! ```yaml
//! clusters:
//!   - name: cluster1
//!     id: 1
//!     podCIDR: 10.10.0.0/16
//!     serviceCIDR: 10.11.0.0/16
//!     nodes: 2
//!     etcd:              # optional: an etcd cluster of its own, given to the apiserver
//!       members: 3       # 1 (the default: the apiserver's own etcd), 3 or 5
//! routing: tunnel        # or: native
//! runtime: netns         # or: podman
//! encryption: wireguard  # or: none (the default)
//! outside:               # optional: a network outside every cluster ([`crate::outside`])
//!   zone: example.test   # the zone its DNS server is authoritative for
//!   servers: 4           # HTTP servers s1..s4.<zone> (default 4, at most 16)
//! certValidity: 8760h    # optional: lifetime of the certificates (default 1 year)
//! caValidity: 3y         # optional: lifetime of the lab's CA (default 3 years)
//! ```
//!
//! `runtime` says what runs the pods: `netns` (the default) makes each pod a network namespace
//! and a process of the lab's own; `podman` makes each pod a podman container on its node
//! ([`crate::podman`]). `encryption: wireguard` encrypts pod traffic between nodes with a
//! userspace WireGuard device per node (`plexus-wireguard`, see docs/encryption.md). Errors
//! name the file and the field; unknown fields and values are refused.
//!
//! `etcd.members` above 1 runs the cluster's etcd as a cluster of that many members in the
//! control-plane namespace, each at an address of its own (see [`crate::etcd`]); the apiserver,
//! the agents, the cluster DNS and other clusters' remote configurations get every member's
//! endpoint, as with an external etcd cluster in Cilium.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// A bad lab file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct SpecError {
    /// The file.
    pub file: String,
    /// What is wrong, naming the field.
    pub reason: String,
}

/// One cluster of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    /// Name.
    pub name: String,
    /// Id (1..=255).
    pub id: u32,
    /// Pod CIDR.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: String,
    /// Service CIDR.
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: String,
    /// Number of nodes.
    pub nodes: u32,
    /// The cluster's etcd (default: one member, run by the apiserver).
    #[serde(default, skip_serializing_if = "EtcdSpec::is_default")]
    pub etcd: EtcdSpec,
}

/// A cluster's etcd in the lab file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdSpec {
    /// How many members: 1 (the apiserver starts and supervises it), 3 or 5 (the lab runs an
    /// etcd cluster and gives the apiserver its endpoints).
    pub members: u8,
}

impl Default for EtcdSpec {
    fn default() -> Self {
        Self { members: 1 }
    }
}

impl EtcdSpec {
    /// Whether this is the default (left out of files).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Routing between nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// VXLAN.
    #[default]
    Tunnel,
    /// Native routes.
    Native,
}

/// What runs the lab's pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A network namespace and a process of the lab's own per pod.
    #[default]
    Netns,
    /// A podman container per pod, on its node's own podman ([`crate::podman`]).
    Podman,
}

impl Runtime {
    /// Whether this is the default (so state files written before the field existed read the
    /// same, and it is left out of them).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

pub use plexus_config::Encryption;

/// The lab's outside network ([`crate::outside`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutsideSpec {
    /// The zone of its authoritative DNS server, e.g. `example.test`.
    pub zone: String,
    /// How many HTTP servers (`s1`.. in the zone), 1..=16.
    #[serde(default = "default_outside_servers")]
    pub servers: u8,
}

fn default_outside_servers() -> u8 {
    4
}

/// The whole lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabSpec {
    /// Clusters.
    pub clusters: Vec<ClusterSpec>,
    /// Routing mode.
    #[serde(default)]
    pub routing: Routing,
    /// What runs the pods.
    #[serde(default)]
    pub runtime: Runtime,
    /// Encryption of pod traffic between nodes.
    #[serde(default)]
    pub encryption: Encryption,
    /// The outside network, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside: Option<OutsideSpec>,
    /// Lifetime of the lab's leaf certificates (a duration: `8760h`, `30d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_validity: Option<String>,
    /// Lifetime of the lab's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_validity: Option<String>,
    /// Which program is each node's WireGuard device: not in the lab file, set by `plexus lab
    /// up --wireguard-device` (hidden: for the benchmark's comparison only).
    #[serde(skip)]
    pub wireguard_device: crate::wireguard::Device,
}

/// `a.b.c.d/len` as (address, length).
pub(crate) fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (a, l) = s.split_once('/')?;
    let a: std::net::Ipv4Addr = a.parse().ok()?;
    let l: u8 = l.parse().ok()?;
    (l <= 32).then_some((u32::from(a), l))
}

fn overlaps(a: (u32, u8), b: (u32, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

impl LabSpec {
    /// The certificate lifetimes asked for (defaults for those not given; the values were
    /// checked by [`LabSpec::parse`]).
    pub fn validity(&self) -> plexus_pki::Validity {
        let default = plexus_pki::Validity::default();
        let parse = |v: &Option<String>, d| {
            v.as_deref()
                .and_then(|v| humantime::parse_duration(v).ok())
                .unwrap_or(d)
        };
        plexus_pki::Validity {
            ca: parse(&self.ca_validity, default.ca),
            leaf: parse(&self.cert_validity, default.leaf),
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates `text` (from `file`).
    pub fn parse(file: &str, text: &str) -> Result<Self, SpecError> {
        let err = |reason: String| SpecError {
            file: file.to_string(),
            reason,
        };
        let spec: LabSpec = serde_norway::from_str(text).map_err(|e| err(e.to_string()))?;
        for (field, value) in [
            ("certValidity", &spec.cert_validity),
            ("caValidity", &spec.ca_validity),
        ] {
            if let Some(v) = value {
                match humantime::parse_duration(v) {
                    Ok(d) if d.as_secs() > 0 => {}
                    Ok(_) => return Err(err(format!("{field}: {v:?} is not a lifetime"))),
                    Err(e) => return Err(err(format!("{field}: {v:?}: {e}"))),
                }
            }
        }
        if spec.clusters.is_empty() {
            return Err(err("clusters: at least one cluster is needed".into()));
        }
        let mut cidrs: Vec<(String, (u32, u8))> = Vec::new();
        for (i, c) in spec.clusters.iter().enumerate() {
            let at = format!("clusters[{i}] ({})", c.name);
            if c.name.is_empty()
                || c.name.len() > 16
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            {
                return Err(err(format!(
                    "{at}: name must be 1-16 characters of a-z, 0-9 and -"
                )));
            }
            if spec.clusters[..i].iter().any(|o| o.name == c.name) {
                return Err(err(format!("{at}: name is used twice")));
            }
            if c.id == 0 || c.id > 255 {
                return Err(err(format!("{at}: id {} is not in 1..=255", c.id)));
            }
            if let Some(o) = spec.clusters[..i].iter().find(|o| o.id == c.id) {
                return Err(err(format!(
                    "{at}: id {} is already used by {}",
                    c.id, o.name
                )));
            }
            if c.nodes == 0 || c.nodes > 16 {
                return Err(err(format!("{at}: nodes must be 1..=16")));
            }
            if ![1, 3, 5].contains(&c.etcd.members) {
                return Err(err(format!(
                    "{at}: etcd.members must be 1, 3 or 5 (a quorum survives the loss of a member only with 3 or more), not {}",
                    c.etcd.members
                )));
            }
            for (field, value) in [("podCIDR", &c.pod_cidr), ("serviceCIDR", &c.service_cidr)] {
                let parsed = parse_cidr(value)
                    .ok_or_else(|| err(format!("{at}: {field}: {value:?} is not an IPv4 CIDR")))?;
                if let Some((other, _)) = cidrs.iter().find(|(_, o)| overlaps(*o, parsed)) {
                    return Err(err(format!("{at}: {field} {value} overlaps {other}")));
                }
                cidrs.push((format!("{}.{field}", c.name), parsed));
            }
            // The cluster DNS service takes the 10th address of the service CIDR.
            if parse_cidr(&c.service_cidr).is_some_and(|(_, len)| len > 28) {
                return Err(err(format!(
                    "{at}: serviceCIDR {} is too small: the cluster DNS service takes its 10th address (use /28 or larger)",
                    c.service_cidr
                )));
            }
            let pod = parse_cidr(&c.pod_cidr).map(|p| p.1).unwrap_or(32);
            if pod > 24 || (1u64 << (24 - pod)) < u64::from(c.nodes) {
                return Err(err(format!(
                    "{at}: podCIDR {} is too small for {} nodes of a /24 each",
                    c.pod_cidr, c.nodes
                )));
            }
        }
        if let Some(o) = &spec.outside {
            let zone = o.zone.trim_end_matches('.');
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if zone.is_empty() || !zone.split('.').all(label_ok) {
                return Err(err(format!(
                    "outside.zone: {:?} is not a DNS name (labels of a-z, 0-9 and -)",
                    o.zone
                )));
            }
            if o.servers == 0 || o.servers > 16 {
                return Err(err(format!(
                    "outside.servers: {} is not in 1..=16",
                    o.servers
                )));
            }
            // Its namespace is plx-<lab>-outside, as a cluster of that name's would be.
            if spec.clusters.iter().any(|c| c.name == "outside") {
                return Err(err(
                    "outside: a cluster is named \"outside\", the outside network's name".into(),
                ));
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_parse_and_bad_files_name_the_field() {
        // The walkthroughs' lab files, as copied into examples/.
        let path = format!(
            "{}/../../examples/global-services/lab.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let spec = LabSpec::load(Path::new(&path)).unwrap();
        assert_eq!(spec.clusters.len(), 2);
        assert_eq!(spec.routing, Routing::Tunnel);
        assert_eq!(spec.runtime, Runtime::Netns, "the default runtime");
        let protected_db = "clusters:
  - name: cluster1
    id: 101
    podCIDR: 10.60.0.0/16
    serviceCIDR: 10.61.0.0/16
    nodes: 2
  - name: cluster2
    id: 102
    podCIDR: 10.70.0.0/16
    serviceCIDR: 10.71.0.0/16
    nodes: 2
routing: native
";
        let spec = LabSpec::parse("lab.yaml", protected_db).unwrap();
        assert_eq!((spec.clusters[1].id, spec.routing), (102, Routing::Native));
        let bad = |text: &str| LabSpec::parse("lab.yaml", text).unwrap_err().to_string();
        let base = "clusters:\n- {name: c1, id: 1, podCIDR: 10.1.0.0/16, serviceCIDR: 10.2.0.0/16, nodes: 2}\n";
        assert!(LabSpec::parse("lab.yaml", base).is_ok());
        assert!(bad(&format!("{base}- {{name: c2, id: 1, podCIDR: 10.3.0.0/16, serviceCIDR: 10.4.0.0/16, nodes: 1}}\n")).contains("id 1 is already used by c1"));
        assert!(bad(&format!("{base}- {{name: c2, id: 2, podCIDR: 10.1.128.0/17, serviceCIDR: 10.4.0.0/16, nodes: 1}}\n")).contains("podCIDR 10.1.128.0/17 overlaps c1.podCIDR"));
        assert!(bad("clusters:\n- {name: c1, id: 1, podCIDR: nope, serviceCIDR: 10.2.0.0/16, nodes: 2}\n").contains("podCIDR: \"nope\""));
        assert!(bad("clusters: []\nroutes: tunnel\n").contains("routes"));
        // etcd members: 1 (default), 3 or 5.
        assert_eq!(spec.clusters[0].etcd.members, 1, "the default etcd");
        let three = base.replace("nodes: 2}", "nodes: 2, etcd: {members: 3}}");
        assert_eq!(
            LabSpec::parse("lab.yaml", &three).unwrap().clusters[0]
                .etcd
                .members,
            3
        );
        let err = bad(&base.replace("nodes: 2}", "nodes: 2, etcd: {members: 2}}"));
        assert!(err.contains("etcd.members must be 1, 3 or 5"), "{err}");
        let err = bad(&base.replace("nodes: 2}", "nodes: 2, etcd: {nodes: 3}}"));
        assert!(err.contains("nodes"), "{err}");
        let podman = LabSpec::parse("lab.yaml", &format!("{base}runtime: podman\n")).unwrap();
        assert_eq!(podman.runtime, Runtime::Podman);
        let err = bad(&format!("{base}runtime: docker\n"));
        assert!(err.contains("runtime") && err.contains("podman"), "{err}");
        assert_eq!(spec.encryption, Encryption::None, "the default encryption");
        let wg = LabSpec::parse("lab.yaml", &format!("{base}encryption: wireguard\n")).unwrap();
        assert_eq!(wg.encryption, Encryption::Wireguard);
        // Certificate lifetimes: defaults, durations, and bad values naming the field.
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(spec.validity(), plexus_pki::Validity::default());
        let short = LabSpec::parse(
            "lab.yaml",
            &format!("{base}certValidity: 240h\ncaValidity: 30d\n"),
        )
        .unwrap();
        assert_eq!(
            short.validity(),
            plexus_pki::Validity {
                ca: day * 30,
                leaf: day * 10
            }
        );
        let err = bad(&format!("{base}certValidity: soon\n"));
        assert!(err.contains("certValidity: \"soon\""), "{err}");
        assert!(bad(&format!("{base}caValidity: 0s\n")).contains("caValidity"));
        let outside = LabSpec::parse(
            "lab.yaml",
            &format!("{base}outside: {{zone: example.test}}\n"),
        )
        .unwrap();
        assert_eq!(
            outside.outside,
            Some(OutsideSpec {
                zone: "example.test".into(),
                servers: 4
            })
        );
        assert_eq!(spec.outside, None);
        assert!(
            bad(&format!("{base}outside: {{zone: 'bad name'}}\n"))
                .contains("outside.zone: \"bad name\" is not a DNS name")
        );
        assert!(
            bad(&format!("{base}outside: {{zone: a.test, servers: 17}}\n"))
                .contains("outside.servers: 17 is not in 1..=16")
        );
        assert!(bad(&format!("{base}outside: {{zone: a.test, port: 1}}\n")).contains("port"));
        let err = bad(&format!("{base}encryption: ipsec\n"));
        assert!(
            err.contains("encryption") && err.contains("ipsec") && err.contains("wireguard"),
            "{err}"
        );
    }
}
