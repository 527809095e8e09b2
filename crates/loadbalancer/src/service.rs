//! The Service object (a subset of Kubernetes' `v1.Service`) and its global-service settings.
//!
//! Annotations, new and legacy names (the new one wins when both are set):
//! - `service.cilium.io/global` / `io.cilium/global-service`: `"true"` makes the service global;
//! - `service.cilium.io/shared` / `io.cilium/shared-service`: `"false"` keeps this cluster's
//!   backends to itself (default true for a global service);
//! - `service.cilium.io/affinity` / `io.cilium/service-affinity`: `local`, `remote` or `none`.
//!
//! Bad values are errors naming the service and the annotation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Object metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Name.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// A target port: a number or a container port name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name.
    Name(String),
}

/// One service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name (may be empty for a single port).
    #[serde(default)]
    pub name: String,
    /// The service's port.
    pub port: u16,
    /// The backends' port (default: `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<TargetPort>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "TCP".into()
}

/// The service spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Pods whose labels include all of these are backends.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// The service address (allocated when empty).
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
}

/// A Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Metadata.
    pub metadata: Metadata,
    /// Spec.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// Which backends a global service prefers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// No preference.
    #[default]
    None,
    /// This cluster's backends while any is healthy.
    Local,
    /// Other clusters' backends while any is healthy.
    Remote,
}

/// The global-service settings of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalConfig {
    /// Load-balances over every cluster's backends.
    pub global: bool,
    /// Offers this cluster's backends to the others.
    pub shared: bool,
    /// Preference.
    pub affinity: Affinity,
}

/// A bad annotation value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("service {service}: annotation {annotation}: {reason}")]
pub struct AnnotationError {
    /// `<namespace>/<name>`.
    pub service: String,
    /// The annotation at fault.
    pub annotation: String,
    /// Why.
    pub reason: String,
}

impl Service {
    /// `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    fn annotation<'a>(&'a self, new: &'a str, legacy: &'a str) -> Option<(&'a str, &'a str)> {
        let a = &self.metadata.annotations;
        a.get(new)
            .map(|v| (new, v.as_str()))
            .or_else(|| a.get(legacy).map(|v| (legacy, v.as_str())))
    }

    fn flag(&self, new: &str, legacy: &str, default: bool) -> Result<bool, AnnotationError> {
        match self.annotation(new, legacy) {
            None => Ok(default),
            Some((name, v)) => match v.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(AnnotationError {
                    service: self.key(),
                    annotation: name.into(),
                    reason: format!("{v:?} is not \"true\" or \"false\""),
                }),
            },
        }
    }

    /// The global-service settings from the annotations.
    pub fn global_config(&self) -> Result<GlobalConfig, AnnotationError> {
        let global = self.flag(
            "service.cilium.io/global",
            "io.cilium/global-service",
            false,
        )?;
        let shared = self.flag(
            "service.cilium.io/shared",
            "io.cilium/shared-service",
            global,
        )?;
        let affinity =
            match self.annotation("service.cilium.io/affinity", "io.cilium/service-affinity") {
                None => Affinity::None,
                Some((name, v)) => match v.to_ascii_lowercase().as_str() {
                    "local" => Affinity::Local,
                    "remote" => Affinity::Remote,
                    "none" | "" => Affinity::None,
                    _ => {
                        return Err(AnnotationError {
                            service: self.key(),
                            annotation: name.into(),
                            reason: format!("{v:?} is not local, remote or none"),
                        });
                    }
                },
            };
        Ok(GlobalConfig {
            global,
            shared: global && shared,
            affinity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(annotations: &[(&str, &str)]) -> Service {
        Service {
            metadata: Metadata {
                name: "rebel-base".into(),
                namespace: "default".into(),
                annotations: annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
            spec: ServiceSpec::default(),
        }
    }

    #[test]
    fn annotations_new_and_legacy_names() {
        assert_eq!(svc(&[]).global_config().unwrap(), GlobalConfig::default());
        let g = svc(&[("service.cilium.io/global", "true")])
            .global_config()
            .unwrap();
        assert!(g.global && g.shared);
        let g = svc(&[
            ("io.cilium/global-service", "true"),
            ("io.cilium/shared-service", "false"),
        ])
        .global_config()
        .unwrap();
        assert!(g.global && !g.shared);
        let g = svc(&[
            ("io.cilium/global-service", "true"),
            ("io.cilium/service-affinity", "local"),
        ])
        .global_config()
        .unwrap();
        assert_eq!(g.affinity, Affinity::Local);
        // The new name wins over the legacy one.
        let g = svc(&[
            ("service.cilium.io/global", "true"),
            ("service.cilium.io/shared", "true"),
            ("io.cilium/shared-service", "false"),
        ])
        .global_config()
        .unwrap();
        assert!(g.shared);
        let err = svc(&[("service.cilium.io/affinity", "nearby")])
            .global_config()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service default/rebel-base: annotation service.cilium.io/affinity: \"nearby\" is not local, remote or none"
        );
    }

    #[test]
    fn parses_kubernetes_json_with_named_target_ports() {
        let s: Service = serde_json::from_str(
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"db","annotations":{"service.cilium.io/global":"true"}},
               "spec":{"selector":{"app":"db"},"ports":[{"name":"sql","port":5432,"targetPort":"pg"},{"port":53,"protocol":"UDP","targetPort":5353}]}}"#,
        )
        .unwrap();
        assert_eq!(s.metadata.namespace, "default");
        assert_eq!(
            s.spec.ports[0].target_port,
            Some(TargetPort::Name("pg".into()))
        );
        assert_eq!(s.spec.ports[1].target_port, Some(TargetPort::Number(5353)));
        assert_eq!(s.spec.ports[0].protocol, "TCP");
    }
}
