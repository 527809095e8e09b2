//! A service's backends from endpoints by selector, and the ClusterService it publishes.
//!
//! [`backends`] picks the ready endpoints of the service's namespace whose labels include the
//! selector, and resolves each service port's target port (a number, or a container port name
//! the pod must declare; a pod without that name is not a backend for that port).
//! [`cluster_service`] builds the `ClusterService` of WIRE-FORMAT.md for a global service:
//! frontends (the service address with its named ports), backends (address -> named target
//! ports), `shared` from the annotations. Services that are not global publish nothing.

use std::collections::BTreeMap;

use plexus_model::service::{ClusterService, PortConfig, PortConfiguration};

use crate::endpoint::EndpointRecord;
use crate::service::{AnnotationError, Service, TargetPort};

/// Backend addresses with their ports by port name.
pub type Backends = BTreeMap<String, PortConfiguration>;

fn port_name(name: &str) -> String {
    name.to_string()
}

/// The service's backends among `endpoints`.
pub fn backends<'a>(
    service: &Service,
    endpoints: impl IntoIterator<Item = &'a EndpointRecord>,
) -> Backends {
    let mut out = Backends::new();
    if service.spec.selector.is_empty() {
        return out; // no selector: backends are managed by hand, not selected
    }
    for ep in endpoints {
        if !ep.ready
            || ep.namespace != service.metadata.namespace
            || !service
                .spec
                .selector
                .iter()
                .all(|(k, v)| ep.labels.get(k) == Some(v))
        {
            continue;
        }
        let mut ports = PortConfiguration::new();
        for p in &service.spec.ports {
            let target = match &p.target_port {
                None => Some(p.port),
                Some(TargetPort::Number(n)) => Some(*n),
                Some(TargetPort::Name(name)) => ep
                    .ports
                    .get(name)
                    .filter(|cp| cp.protocol.eq_ignore_ascii_case(&p.protocol))
                    .map(|cp| cp.port),
            };
            if let Some(port) = target {
                ports.insert(
                    port_name(&p.name),
                    PortConfig {
                        protocol: p.protocol.to_ascii_uppercase(),
                        port,
                    },
                );
            }
        }
        if !ports.is_empty() {
            out.insert(ep.ip.to_string(), ports);
        }
    }
    out
}

/// The ClusterService a global service of cluster `cluster` (id `cluster_id`) publishes, or
/// `None` for a service that is not global or has no address yet.
pub fn cluster_service<'a>(
    cluster: &str,
    cluster_id: u32,
    service: &Service,
    endpoints: impl IntoIterator<Item = &'a EndpointRecord>,
) -> Result<Option<ClusterService>, AnnotationError> {
    let config = service.global_config()?;
    if !config.global {
        return Ok(None);
    }
    let Some(ip) = service.spec.cluster_ip.clone().filter(|ip| !ip.is_empty()) else {
        return Ok(None);
    };
    let frontend: PortConfiguration = service
        .spec
        .ports
        .iter()
        .map(|p| {
            (
                port_name(&p.name),
                PortConfig {
                    protocol: p.protocol.to_ascii_uppercase(),
                    port: p.port,
                },
            )
        })
        .collect();
    Ok(Some(ClusterService {
        cluster: cluster.to_string(),
        namespace: service.metadata.namespace.clone(),
        name: service.metadata.name.clone(),
        frontends: BTreeMap::from([(ip, frontend)]),
        backends: backends(service, endpoints),
        hostnames: BTreeMap::new(),
        zones: BTreeMap::new(),
        labels: service.metadata.labels.clone(),
        selector: service.spec.selector.clone(),
        include_external: true,
        shared: config.shared,
        cluster_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::ContainerPort;

    fn ep(pod: &str, ip: &str, app: &str, ready: bool) -> EndpointRecord {
        EndpointRecord {
            namespace: "default".into(),
            pod: pod.into(),
            ip: ip.parse().unwrap(),
            node: "n1".into(),
            labels: BTreeMap::from([("app".into(), app.into())]),
            ready,
            ports: BTreeMap::from([(
                "web".into(),
                ContainerPort {
                    port: 8080,
                    protocol: "TCP".into(),
                },
            )]),
        }
    }

    #[test]
    fn global_service_publishes_ready_selected_backends_as_literal_json() {
        let svc: Service = serde_json::from_str(
            r#"{"metadata":{"name":"rebel-base","annotations":{"service.cilium.io/global":"true"}},
                "spec":{"clusterIP":"10.11.0.10","selector":{"app":"rebel-base"},"ports":[{"name":"http","port":80,"targetPort":"web"}]}}"#,
        )
        .unwrap();
        let eps = [
            ep("a", "10.10.0.5", "rebel-base", true),
            ep("b", "10.10.1.7", "rebel-base", false),
            ep("c", "10.10.1.8", "x-wing", true),
        ];
        let cs = cluster_service("cluster1", 1, &svc, &eps).unwrap().unwrap();
        assert_eq!(
            serde_json::to_string(&cs).unwrap(),
            r#"{"cluster":"cluster1","namespace":"default","name":"rebel-base","frontends":{"10.11.0.10":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.10.0.5":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{},"selector":{"app":"rebel-base"},"includeExternal":true,"shared":true,"clusterID":1}"#
        );
        let mut local = svc.clone();
        local.metadata.annotations.clear();
        assert_eq!(cluster_service("cluster1", 1, &local, &eps).unwrap(), None);
        let mut unshared = svc;
        unshared
            .metadata
            .annotations
            .insert("io.cilium/shared-service".into(), "false".into());
        assert!(
            !cluster_service("cluster1", 1, &unshared, &eps)
                .unwrap()
                .unwrap()
                .shared
        );
    }
}
