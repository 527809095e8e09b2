//! ADD, DEL and CHECK: the plugin's logic, over two narrow traits so it can be tested without a
//! kernel or an agent: [`Agent`] (the agent's API; [`crate::agent::AgentClient`] is the real one)
//! and [`Network`] (the veth pair; [`crate::link::KernelNetwork`] is the real one).
//!
//! Promises:
//! - ADD leaves nothing half-applied: when a step fails after the address was reserved, the
//!   veth (if this call created it) is deleted and the endpoint is deleted at the agent, which
//!   releases the address, before the error is returned. An existing host veth for the same
//!   container is never touched: ADD refuses it up front.
//! - DEL is idempotent: a missing veth, netns or endpoint is success.
//! - CHECK fails unless the agent knows the endpoint, the host veth exists and the pod
//!   interface holds the endpoint's address.

use std::net::Ipv4Addr;
use std::path::Path;

use plexus_agent_api::{
    ApiError, EndpointRequest, EndpointResponse, IpamRequest, IpamResponse, WorkloadSource,
};

use crate::conf::{Env, NetConf};
use crate::error::{CniError, INVALID_ENVIRONMENT, OTHER};
use crate::link::{LinkError, host_ifname};
use crate::result::{CniResult, Dns, Interface, IpConfig, Route};

/// The smallest MTU an IPv4 interface may have.
const MIN_MTU: u32 = 68;

/// The agent's API as the plugin uses it.
pub trait Agent {
    /// `POST /v1/ipam`.
    fn ipam(&self, req: &IpamRequest) -> Result<IpamResponse, ApiError>;
    /// `PUT /v1/endpoint`.
    fn put_endpoint(&self, req: &EndpointRequest) -> Result<EndpointResponse, ApiError>;
    /// `GET /v1/endpoint/<container-id>`.
    fn get_endpoint(&self, container_id: &str) -> Result<EndpointResponse, ApiError>;
    /// `DELETE /v1/endpoint/<container-id>`; succeeds for unknown endpoints.
    fn delete_endpoint(&self, container_id: &str) -> Result<(), ApiError>;
}

/// The MAC addresses of a configured veth pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Macs {
    /// The host side's.
    pub host: String,
    /// The pod side's.
    pub pod: String,
}

/// The veth pair's devices, as the plugin uses them.
pub trait Network {
    /// Whether the host-side device exists.
    fn link_exists(&self, host: &str) -> Result<bool, LinkError>;
    /// Creates `host` here and its peer `ifname` inside `netns`, both with `mtu`.
    fn create_veth(
        &self,
        host: &str,
        ifname: &str,
        netns: &Path,
        mtu: u32,
    ) -> Result<(), LinkError>;
    /// Configures the pod side (address, routes, up) and brings the host side up.
    fn configure(
        &self,
        host: &str,
        ifname: &str,
        netns: &Path,
        ip: Ipv4Addr,
        gateway: Ipv4Addr,
    ) -> Result<Macs, LinkError>;
    /// Deletes the host side (and with it the peer); `Ok(false)` when it did not exist.
    fn delete_link(&self, host: &str) -> Result<bool, LinkError>;
    /// The IPv4 addresses (CIDR form) of `ifname` inside `netns`.
    fn pod_addresses(&self, netns: &Path, ifname: &str) -> Result<Vec<String>, LinkError>;
}

/// The plugin: an agent and a network.
#[derive(Debug)]
pub struct Plugin<A, N> {
    agent: A,
    net: N,
}

fn netns_of(env: &Env) -> Result<&Path, CniError> {
    env.netns
        .as_deref()
        .ok_or_else(|| CniError::new(INVALID_ENVIRONMENT, "CNI_NETNS: missing", ""))
}

impl<A: Agent, N: Network> Plugin<A, N> {
    /// A plugin over `agent` and `net`.
    pub fn new(agent: A, net: N) -> Self {
        Self { agent, net }
    }

    /// ADD: reserve an address, create and configure the veth pair, register the endpoint.
    pub fn add(&self, env: &Env, conf: &NetConf) -> Result<CniResult, CniError> {
        let netns = netns_of(env)?;
        let id = &env.container_id;
        let host = host_ifname(id);
        let exists = self
            .net
            .link_exists(&host)
            .map_err(|e| CniError::link("looking for the host veth", &e))?;
        if exists {
            return Err(CniError::new(
                OTHER,
                format!("host veth {host} of container {id} already exists"),
                "the container was added before; DEL it first",
            ));
        }
        let ipam = self
            .agent
            .ipam(&IpamRequest { owner: id.clone() })
            .map_err(|e| CniError::agent("requesting an address (POST /v1/ipam)", &e))?;
        let mut created = false;
        match self.add_links(env, conf, netns, &host, &ipam, &mut created) {
            Ok(result) => Ok(result),
            Err(mut err) => {
                let mut cleanup = Vec::new();
                if created && let Err(e) = self.net.delete_link(&host) {
                    cleanup.push(format!("deleting {host}: {e}"));
                }
                if let Err(e) = self.agent.delete_endpoint(id) {
                    cleanup.push(format!("releasing {}: {e}", ipam.ip));
                }
                if !cleanup.is_empty() {
                    let sep = if err.details.is_empty() { "" } else { "; " };
                    err.details =
                        format!("{}{sep}cleanup failed: {}", err.details, cleanup.join("; "));
                }
                Err(err)
            }
        }
    }

    fn add_links(
        &self,
        env: &Env,
        conf: &NetConf,
        netns: &Path,
        host: &str,
        ipam: &IpamResponse,
        created: &mut bool,
    ) -> Result<CniResult, CniError> {
        if ipam.mtu < MIN_MTU {
            return Err(CniError::new(
                OTHER,
                format!(
                    "the agent's MTU {} for {} is below {MIN_MTU}",
                    ipam.mtu, ipam.ip
                ),
                "",
            ));
        }
        self.net
            .create_veth(host, &env.ifname, netns, ipam.mtu)
            .map_err(|e| CniError::link("creating the veth pair", &e))?;
        *created = true;
        let macs = self
            .net
            .configure(host, &env.ifname, netns, ipam.ip, ipam.gateway)
            .map_err(|e| CniError::link("configuring the veth pair", &e))?;
        let netns_str = netns.to_string_lossy().into_owned();
        self.agent
            .put_endpoint(&EndpointRequest {
                container_id: env.container_id.clone(),
                netns: netns_str.clone(),
                ifname: env.ifname.clone(),
                host_ifname: host.to_string(),
                host_mac: macs.host.clone(),
                pod_mac: macs.pod.clone(),
                ip: ipam.ip,
                namespace: env.pod_namespace.clone(),
                pod_name: env.pod_name.clone(),
                // With podman the agent reads the labels from podman's state by container id.
                labels: match conf.workload {
                    WorkloadSource::Request => conf.labels.clone(),
                    WorkloadSource::Podman => Default::default(),
                },
                ports: conf.ports.clone(),
                workload: conf.workload,
            })
            .map_err(|e| CniError::agent("registering the endpoint (PUT /v1/endpoint)", &e))?;
        let v040 = conf.cni_version == "0.4.0";
        Ok(CniResult {
            cni_version: conf.cni_version.clone(),
            interfaces: vec![
                Interface {
                    name: host.to_string(),
                    mac: macs.host,
                    sandbox: None,
                },
                Interface {
                    name: env.ifname.clone(),
                    mac: macs.pod,
                    sandbox: Some(netns_str),
                },
            ],
            ips: vec![IpConfig {
                version: v040.then(|| "4".to_string()),
                address: format!("{}/32", ipam.ip),
                gateway: Some(ipam.gateway),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(ipam.gateway),
            }],
            dns: Dns::default(),
        })
    }

    /// DEL: delete the host veth if present, then the endpoint (releasing its address).
    pub fn del(&self, env: &Env) -> Result<(), CniError> {
        let id = &env.container_id;
        let host = host_ifname(id);
        self.net
            .delete_link(&host)
            .map_err(|e| CniError::link("deleting the host veth", &e))?;
        self.agent.delete_endpoint(id).map_err(|e| {
            CniError::agent(
                &format!("deleting endpoint {id} (DELETE /v1/endpoint/{id})"),
                &e,
            )
        })
    }

    /// CHECK: the agent knows the endpoint, the host veth exists, the pod interface holds the
    /// address (and the one of `prevResult`, when given).
    pub fn check(&self, env: &Env, conf: &NetConf) -> Result<(), CniError> {
        let netns = netns_of(env)?;
        let id = &env.container_id;
        let host = host_ifname(id);
        let ep = self.agent.get_endpoint(id).map_err(|e| {
            CniError::agent(
                &format!("looking up endpoint {id} (GET /v1/endpoint/{id})"),
                &e,
            )
        })?;
        if ep.host_ifname != host {
            return Err(CniError::new(
                OTHER,
                format!(
                    "endpoint {id}: the agent has host veth {}, expected {host}",
                    ep.host_ifname
                ),
                "",
            ));
        }
        let exists = self
            .net
            .link_exists(&host)
            .map_err(|e| CniError::link("looking for the host veth", &e))?;
        if !exists {
            return Err(CniError::new(
                OTHER,
                format!("host veth {host} of container {id} is missing"),
                "",
            ));
        }
        let want = format!("{}/32", ep.ip);
        let have = self.net.pod_addresses(netns, &env.ifname).map_err(|e| {
            CniError::link(
                &format!(
                    "reading the addresses of {} in {}",
                    env.ifname,
                    netns.display()
                ),
                &e,
            )
        })?;
        if !have.contains(&want) {
            return Err(CniError::new(
                OTHER,
                format!(
                    "device {} in {} lacks address {want}",
                    env.ifname,
                    netns.display()
                ),
                format!("it has [{}]", have.join(", ")),
            ));
        }
        if let Some(prev) = &conf.prev_result {
            let listed = prev["ips"]
                .as_array()
                .is_some_and(|ips| ips.iter().any(|i| i["address"] == want.as_str()));
            if !listed {
                return Err(CniError::new(
                    OTHER,
                    format!("prevResult.ips does not list the endpoint's address {want}"),
                    "",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::conf::Command;

    #[derive(Default)]
    struct FakeAgent {
        unreachable: bool,
        fail_put: bool,
        leases: Mutex<BTreeMap<String, Ipv4Addr>>,
        endpoints: Mutex<BTreeMap<String, EndpointRequest>>,
    }

    fn unreachable() -> ApiError {
        ApiError::Unreachable {
            endpoint: "unix:/fake".into(),
            reason: "connection refused".into(),
        }
    }

    impl Agent for FakeAgent {
        fn ipam(&self, req: &IpamRequest) -> Result<IpamResponse, ApiError> {
            if self.unreachable {
                return Err(unreachable());
            }
            let mut leases = self.leases.lock().unwrap();
            let n = leases.len() as u8;
            let ip = *leases
                .entry(req.owner.clone())
                .or_insert(Ipv4Addr::new(10, 1, 0, 10 + n));
            Ok(IpamResponse {
                ip,
                gateway: Ipv4Addr::new(10, 1, 0, 1),
                mtu: 1450,
            })
        }
        fn put_endpoint(&self, req: &EndpointRequest) -> Result<EndpointResponse, ApiError> {
            if self.fail_put {
                return Err(ApiError::Server {
                    endpoint: "unix:/fake".into(),
                    path: "/v1/endpoint".into(),
                    status: 500,
                    kind: plexus_agent_api::ErrorKind::Internal,
                    message: "boom".into(),
                });
            }
            self.endpoints
                .lock()
                .unwrap()
                .insert(req.container_id.clone(), req.clone());
            Ok(EndpointResponse {
                id: 1,
                identity: 1000,
                ip: req.ip,
                host_ifname: req.host_ifname.clone(),
            })
        }
        fn get_endpoint(&self, id: &str) -> Result<EndpointResponse, ApiError> {
            let eps = self.endpoints.lock().unwrap();
            let ep = eps.get(id).ok_or_else(|| ApiError::Server {
                endpoint: "unix:/fake".into(),
                path: format!("/v1/endpoint/{id}"),
                status: 404,
                kind: plexus_agent_api::ErrorKind::NotFound,
                message: "unknown".into(),
            })?;
            Ok(EndpointResponse {
                id: 1,
                identity: 1000,
                ip: ep.ip,
                host_ifname: ep.host_ifname.clone(),
            })
        }
        fn delete_endpoint(&self, id: &str) -> Result<(), ApiError> {
            if self.unreachable {
                return Err(unreachable());
            }
            self.endpoints.lock().unwrap().remove(id);
            self.leases.lock().unwrap().remove(id);
            Ok(())
        }
    }

    /// Devices: host name -> (pod ifname, pod addresses).
    #[derive(Default)]
    struct FakeNet {
        fail_configure: bool,
        links: Mutex<BTreeMap<String, (String, Vec<String>)>>,
    }

    impl Network for FakeNet {
        fn link_exists(&self, host: &str) -> Result<bool, LinkError> {
            Ok(self.links.lock().unwrap().contains_key(host))
        }
        fn create_veth(&self, host: &str, ifname: &str, _: &Path, _: u32) -> Result<(), LinkError> {
            self.links
                .lock()
                .unwrap()
                .insert(host.into(), (ifname.into(), vec![]));
            Ok(())
        }
        fn configure(
            &self,
            host: &str,
            ifname: &str,
            _: &Path,
            ip: Ipv4Addr,
            _: Ipv4Addr,
        ) -> Result<Macs, LinkError> {
            if self.fail_configure {
                return Err(LinkError::Device {
                    device: ifname.into(),
                    reason: "`ip addr add` failed".into(),
                });
            }
            self.links
                .lock()
                .unwrap()
                .get_mut(host)
                .unwrap()
                .1
                .push(format!("{ip}/32"));
            Ok(Macs {
                host: "02:00:00:00:00:01".into(),
                pod: "02:00:00:00:00:02".into(),
            })
        }
        fn delete_link(&self, host: &str) -> Result<bool, LinkError> {
            Ok(self.links.lock().unwrap().remove(host).is_some())
        }
        fn pod_addresses(&self, _: &Path, ifname: &str) -> Result<Vec<String>, LinkError> {
            self.links
                .lock()
                .unwrap()
                .values()
                .find(|(n, _)| n == ifname)
                .map(|(_, a)| a.clone())
                .ok_or_else(|| LinkError::Device {
                    device: ifname.into(),
                    reason: "does not exist".into(),
                })
        }
    }

    fn env(command: Command) -> Env {
        Env {
            command,
            container_id: "c0ffee".into(),
            netns: Some(PathBuf::from("/run/netns/pod")),
            ifname: "eth0".into(),
            pod_namespace: "web".into(),
            pod_name: "front-0".into(),
            path: vec![],
        }
    }

    fn conf() -> NetConf {
        NetConf::parse(br#"{"cniVersion":"1.0.0","name":"plexus","type":"plexus-cni","args":{"cni":{"labels":{"app":"x"}}}}"#)
            .unwrap()
    }

    #[test]
    fn add_check_del() {
        let plugin = Plugin::new(FakeAgent::default(), FakeNet::default());
        let result = plugin.add(&env(Command::Add), &conf()).unwrap();
        let host = host_ifname("c0ffee");
        assert_eq!(result.interfaces[0].name, host);
        assert_eq!(
            result.interfaces[1].sandbox.as_deref(),
            Some("/run/netns/pod")
        );
        assert_eq!(result.ips[0].address, "10.1.0.10/32");
        assert_eq!(result.ips[0].version, None);
        let ep = plugin.agent.endpoints.lock().unwrap()["c0ffee"].clone();
        assert_eq!(ep.labels.get("app").map(String::as_str), Some("x"));
        assert_eq!(
            (ep.namespace.as_str(), ep.pod_name.as_str()),
            ("web", "front-0")
        );
        assert_eq!(ep.host_ifname, host);
        assert_eq!(ep.pod_mac, "02:00:00:00:00:02");

        plugin.check(&env(Command::Check), &conf()).unwrap();
        let mut with_prev = conf();
        with_prev.prev_result = Some(serde_json::to_value(&result).unwrap());
        plugin.check(&env(Command::Check), &with_prev).unwrap();

        plugin.del(&env(Command::Del)).unwrap();
        assert!(plugin.net.links.lock().unwrap().is_empty());
        assert!(plugin.agent.leases.lock().unwrap().is_empty());
        plugin.del(&env(Command::Del)).unwrap();
        let err = plugin.check(&env(Command::Check), &conf()).unwrap_err();
        assert!(err.msg.contains("c0ffee"), "{err}");
    }

    #[test]
    fn add_refuses_an_existing_veth_and_leaves_it() {
        let plugin = Plugin::new(FakeAgent::default(), FakeNet::default());
        plugin.add(&env(Command::Add), &conf()).unwrap();
        let err = plugin.add(&env(Command::Add), &conf()).unwrap_err();
        assert!(err.msg.contains("already exists"), "{err}");
        assert_eq!(plugin.net.links.lock().unwrap().len(), 1);
        assert_eq!(plugin.agent.leases.lock().unwrap().len(), 1);
    }

    #[test]
    fn unreachable_agent_is_try_again_later() {
        let agent = FakeAgent {
            unreachable: true,
            ..FakeAgent::default()
        };
        let plugin = Plugin::new(agent, FakeNet::default());
        let err = plugin.add(&env(Command::Add), &conf()).unwrap_err();
        assert_eq!(err.code, 11);
        assert!(err.msg.contains("/v1/ipam"), "{err}");
        assert!(plugin.net.links.lock().unwrap().is_empty());
    }

    #[test]
    fn failed_configuration_rolls_back() {
        let net = FakeNet {
            fail_configure: true,
            ..FakeNet::default()
        };
        let plugin = Plugin::new(FakeAgent::default(), net);
        let err = plugin.add(&env(Command::Add), &conf()).unwrap_err();
        assert_eq!(err.code, 999);
        assert!(err.msg.contains("eth0"), "{err}");
        assert!(plugin.net.links.lock().unwrap().is_empty());
        assert!(plugin.agent.leases.lock().unwrap().is_empty());
    }

    #[test]
    fn failed_registration_rolls_back() {
        let agent = FakeAgent {
            fail_put: true,
            ..FakeAgent::default()
        };
        let plugin = Plugin::new(agent, FakeNet::default());
        let err = plugin.add(&env(Command::Add), &conf()).unwrap_err();
        assert!(err.msg.contains("PUT /v1/endpoint"), "{err}");
        assert!(err.msg.ends_with("the agent refused: boom"), "{err}");
        assert!(err.details.contains("500"), "{err}");
        assert!(plugin.net.links.lock().unwrap().is_empty());
        assert!(plugin.agent.leases.lock().unwrap().is_empty());
    }

    #[test]
    fn check_finds_a_missing_veth_and_address() {
        let plugin = Plugin::new(FakeAgent::default(), FakeNet::default());
        plugin.add(&env(Command::Add), &conf()).unwrap();
        let host = host_ifname("c0ffee");
        plugin
            .net
            .links
            .lock()
            .unwrap()
            .get_mut(&host)
            .unwrap()
            .1
            .clear();
        let err = plugin.check(&env(Command::Check), &conf()).unwrap_err();
        assert!(err.msg.contains("lacks address 10.1.0.10/32"), "{err}");
        plugin.net.links.lock().unwrap().remove(&host);
        let err = plugin.check(&env(Command::Check), &conf()).unwrap_err();
        assert!(err.msg.contains(&host), "{err}");
    }

    #[test]
    fn podman_networks_send_no_labels() {
        let plugin = Plugin::new(FakeAgent::default(), FakeNet::default());
        let mut c = conf();
        c.workload = WorkloadSource::Podman;
        plugin.add(&env(Command::Add), &c).unwrap();
        let ep = plugin.agent.endpoints.lock().unwrap()["c0ffee"].clone();
        assert_eq!(ep.workload, WorkloadSource::Podman);
        assert!(ep.labels.is_empty(), "{ep:?}");
        assert_eq!(ep.container_id, "c0ffee");
    }

    #[test]
    fn unreachable_agent_names_its_socket() {
        let agent = FakeAgent {
            unreachable: true,
            ..FakeAgent::default()
        };
        let plugin = Plugin::new(agent, FakeNet::default());
        let err = plugin.add(&env(Command::Add), &conf()).unwrap_err();
        assert_eq!(
            err.msg,
            "requesting an address (POST /v1/ipam): the agent is unreachable at unix:/fake"
        );
    }

    #[test]
    fn v040_results_carry_ip_versions() {
        let plugin = Plugin::new(FakeAgent::default(), FakeNet::default());
        let mut c = conf();
        c.cni_version = "0.4.0".into();
        let result = plugin.add(&env(Command::Add), &c).unwrap();
        assert_eq!(result.cni_version, "0.4.0");
        assert_eq!(result.ips[0].version.as_deref(), Some("4"));
    }
}
