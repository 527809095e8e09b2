//! What the CNI plugin asks the agent: an address for a pod, then the pod's registration.

use serde::{Deserialize, Serialize};

use crate::types::ContainerPort;

/// `POST /v1/ipam`: reserve an address for a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IpamRequest {
    /// Who holds the address (the container id); asking again returns the same address.
    pub owner: String,
}

/// The answer to [`IpamRequest`]: how to configure the pod's interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IpamResponse {
    /// The pod's address (configured as a /32).
    pub ip: std::net::Ipv4Addr,
    /// The gateway (a link-scope route to it, then the default route through it); the agent's
    /// datapath answers ARP for it.
    pub gateway: std::net::Ipv4Addr,
    /// The pod interface's MTU (1450 in tunnel mode on a 1500 underlay).
    pub mtu: u32,
}

/// `PUT /v1/endpoint`: register a pod whose interface is configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointRequest {
    /// The container id (CNI_CONTAINERID).
    pub container_id: String,
    /// The pod's network namespace path (CNI_NETNS).
    pub netns: String,
    /// The interface inside the pod (CNI_IFNAME).
    pub ifname: String,
    /// The host-side veth.
    pub host_ifname: String,
    /// The host-side veth's MAC, `aa:bb:cc:dd:ee:ff`.
    pub host_mac: String,
    /// The pod interface's MAC.
    pub pod_mac: String,
    /// The pod's address (from [`IpamResponse`]).
    pub ip: std::net::Ipv4Addr,
    /// The pod's namespace (K8S_POD_NAMESPACE).
    pub namespace: String,
    /// The pod's name (K8S_POD_NAME).
    pub pod_name: String,
    /// The pod's labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The pod's named container ports, by name.
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, ContainerPort>,
    /// Where the pod's identity comes from: these fields, or the container runtime's state.
    #[serde(default)]
    pub workload: WorkloadSource,
}

/// Where the agent takes a pod's name, namespace and labels from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadSource {
    /// The request's `namespace`, `pod-name` and `labels` (the lab's CNI arguments).
    #[default]
    Request,
    /// podman's stored state, by `container-id` (the agent's `--podman-state` file): the
    /// container's (or its pod's) name and labels, the namespace from the label
    /// `io.kubernetes.pod.namespace`. The request's namespace, name and labels are ignored.
    Podman,
}

/// The answer to [`EndpointRequest`] and to `GET /v1/endpoint/<container-id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EndpointResponse {
    /// The endpoint id on this node.
    pub id: u16,
    /// Its security identity.
    pub identity: u32,
    /// Its address.
    pub ip: std::net::Ipv4Addr,
    /// The host-side veth.
    pub host_ifname: String,
}

/// An empty JSON object, the answer to deletions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}
