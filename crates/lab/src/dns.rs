//! Cluster DNS in the lab: every cluster runs `plexus-dns` as the `kube-dns` pod, and every pod
//! resolves through it.
//!
//! On `lab up`, [`deploy`] gives each cluster, like a Kubernetes installer's DNS add-on:
//! - the Service `kube-system/kube-dns` (selector `k8s-app: kube-dns`, ports 53/UDP `dns` and
//!   53/TCP `dns-tcp`) with the conventional address, the 10th of the service CIDR
//!   ([`dns_ip`], e.g. 10.11.0.10), written to the cluster's etcd where the apiserver honors
//!   it;
//! - the Deployment `kube-system/kube-dns` (one replica, on the cluster's first node) whose pod
//!   runs `plexus-dns` with the cluster's etcd endpoint and the client certificate the agents
//!   use; `lab up` waits until it answers.
//!
//! Every pod gets a resolv.conf ([`resolv_conf`]): `nameserver <dns_ip>`, the search list
//! `<namespace>.svc.<domain> svc.<domain> <domain>` and `options ndots:5`. Lab pods are
//! processes in a network namespace without a mount namespace of their own, so the pod's
//! process and `plexus exec` run in a private mount namespace where that file is bind-mounted
//! over `/etc/resolv.conf` ([`crate::sys::pod_command`]).

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use plexus_loadbalancer::SERVICES_PREFIX;
use plexus_loadbalancer::service::{Metadata, Service, ServicePort, ServiceSpec};

use crate::lab::{Bins, ClusterState, LabState};
use crate::sys;
use crate::workload::{self, Container, ContainerPort, PodSpec, Workload};

/// The namespace of the cluster DNS.
pub const NAMESPACE: &str = "kube-system";
/// The name of its Service and Deployment.
pub const NAME: &str = "kube-dns";
/// The label key and value of its pods (the Service's selector).
pub const LABEL: (&str, &str) = ("k8s-app", "kube-dns");
/// The cluster domain.
pub const DOMAIN: &str = "cluster.local";

/// The address of the DNS service: the 10th of the service CIDR.
pub fn dns_ip(service_cidr: &str) -> Result<Ipv4Addr> {
    let (addr, len) = crate::spec::parse_cidr(service_cidr)
        .with_context(|| format!("service CIDR {service_cidr:?} is not an IPv4 CIDR"))?;
    if len > 28 {
        bail!("service CIDR {service_cidr} is too small for the DNS service (its 10th address)");
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok(Ipv4Addr::from((addr & mask) + 10))
}

/// The search list of a pod in `namespace`: its namespace's services first.
pub fn search_list(namespace: &str) -> Vec<String> {
    vec![
        format!("{namespace}.svc.{DOMAIN}"),
        format!("svc.{DOMAIN}"),
        DOMAIN.to_string(),
    ]
}

/// The resolv.conf of a pod in `namespace`.
pub fn resolv_conf(dns: Ipv4Addr, namespace: &str) -> String {
    format!(
        "nameserver {dns}\nsearch {}\noptions ndots:5\n",
        search_list(namespace).join(" ")
    )
}

/// The Service object of the cluster DNS.
pub fn service(dns: Ipv4Addr) -> Service {
    let port = |name: &str, protocol: &str| ServicePort {
        name: name.into(),
        port: 53,
        target_port: None,
        protocol: protocol.into(),
    };
    Service {
        metadata: Metadata {
            name: NAME.into(),
            namespace: NAMESPACE.into(),
            labels: [(LABEL.0.to_string(), LABEL.1.to_string())].into(),
            annotations: Default::default(),
        },
        spec: ServiceSpec {
            selector: [(LABEL.0.to_string(), LABEL.1.to_string())].into(),
            ports: vec![port("dns", "UDP"), port("dns-tcp", "TCP")],
            cluster_ip: Some(dns.to_string()),
        },
    }
}

/// The Deployment of the cluster DNS: one `plexus-dns` pod on the cluster's first node.
pub fn workload(c: &ClusterState, bins: &Bins) -> Result<Workload> {
    let node = c
        .nodes
        .first()
        .with_context(|| format!("cluster {} has no nodes", c.name))?;
    let pki = c.state_dir.join("pki");
    let command = vec![
        bins.dns.display().to_string(),
        format!("--etcd-endpoints={}", c.etcd_endpoints().join(",")),
        format!("--etcd-ca={}", pki.join("ca.crt").display()),
        format!("--etcd-cert={}", pki.join("admin.crt").display()),
        format!("--etcd-key={}", pki.join("admin.key").display()),
        "--listen=0.0.0.0:53".to_string(),
        format!("--domain={DOMAIN}"),
    ];
    let port = |name: &str, protocol: &str| ContainerPort {
        container_port: 53,
        protocol: protocol.into(),
        name: Some(name.into()),
    };
    Ok(Workload {
        kind: "Deployment".into(),
        namespace: NAMESPACE.into(),
        name: NAME.into(),
        replicas: 1,
        labels: [(LABEL.0.to_string(), LABEL.1.to_string())].into(),
        annotations: Default::default(),
        spec: PodSpec {
            containers: vec![Container {
                name: "plexus-dns".into(),
                image: "plexus-dns".into(),
                command,
                args: vec![],
                ports: vec![port("dns", "UDP"), port("dns-tcp", "TCP")],
            }],
            node_name: Some(node.name.clone()),
        },
        // A process of the lab's with the host's binary and certificate files, whatever runs
        // the other pods.
        runtime: Some(crate::spec::Runtime::Netns),
    })
}

/// Writes the DNS Service into cluster `c`'s etcd (from its control-plane namespace).
fn store_service(c: &ClusterState, dns: Ipv4Addr) -> Result<()> {
    let svc = service(dns);
    crate::kv::write(
        c,
        vec![plexus_kvstore::Op::Put {
            key: format!("{SERVICES_PREFIX}{}", svc.key()),
            value: serde_json::to_vec(&svc)?,
            lease: None,
        }],
    )
}

/// A minimal DNS query (id 0x504c, recursion desired) for an `A` record of `name`.
pub(crate) fn a_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x50, 0x4c, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The first `A` record's address in a DNS answer to [`a_query`] (NOERROR, id 0x504c), if any.
pub(crate) fn first_a(msg: &[u8]) -> Option<Ipv4Addr> {
    if msg.len() < 12 || msg[0..2] != [0x50, 0x4c] || msg[3] & 0x0f != 0 {
        return None;
    }
    let questions = u16::from_be_bytes([msg[4], msg[5]]);
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    // Skips a name: labels up to the root, or a compression pointer.
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *msg.get(i)? as usize;
            if len == 0 {
                return Some(i + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            i += 1 + len;
        }
    };
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(i)? + 4;
    }
    for _ in 0..answers {
        i = skip_name(i)?;
        let rr = msg.get(i..i + 10)?;
        let (rtype, len) = (
            u16::from_be_bytes([rr[0], rr[1]]),
            u16::from_be_bytes([rr[8], rr[9]]) as usize,
        );
        let data = msg.get(i + 10..i + 10 + len)?;
        if rtype == 1 && len == 4 {
            return Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    None
}

/// Asks `server` (from the current namespace) for the `A` record of `name`: whether it
/// answered NOERROR with at least one answer.
fn answers(server: Ipv4Addr, name: &str) -> bool {
    let ask = || -> std::io::Result<bool> {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        sock.send_to(&a_query(name), (server, 53))?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf)?;
        let rcode = buf[3] & 0x0f;
        let ancount = u16::from_be_bytes([buf[6], buf[7]]);
        Ok(n >= 12 && buf[0..2] == [0x50, 0x4c] && rcode == 0 && ancount > 0)
    };
    ask().unwrap_or(false)
}

/// Gives cluster `c` its DNS: the Service, the `kube-dns` pod, and waits until the pod answers
/// for its own service name.
pub fn deploy(lab: &LabState, c: &ClusterState, bins: &Bins) -> Result<()> {
    let dns = dns_ip(&c.service_cidr)?;
    store_service(c, dns)?;
    workload::apply(
        lab,
        &c.name,
        vec![workload(c, bins)?],
        vec![NAMESPACE.to_string()],
        bins,
    )?;
    let pod = workload::find_pod(lab, &c.name, NAMESPACE, &format!("deployment/{NAME}"))?;
    let ip: Ipv4Addr = pod
        .ip
        .parse()
        .with_context(|| format!("kube-dns pod address {:?}", pod.ip))?;
    let log = lab
        .dir
        .join(&c.name)
        .join("pods")
        .join(format!("{NAMESPACE}-{}.log", pod.name));
    let name = format!("{NAME}.{NAMESPACE}.svc.{DOMAIN}");
    sys::wait_until(
        &format!(
            "kube-dns of {} answering on {ip} (log: {})",
            c.name,
            log.display()
        ),
        Duration::from_secs(60),
        || {
            let name = name.clone();
            sys::in_netns(&pod.netns, move || Ok(answers(ip, &name))).unwrap_or(false)
        },
    )
}

/// Writes the resolv.conf of a pod of cluster `c` in `namespace` to `path`.
pub fn write_resolv_conf(c: &ClusterState, namespace: &str, path: &Path) -> Result<()> {
    let dns = dns_ip(&c.service_cidr)?;
    std::fs::write(path, resolv_conf(dns, namespace))
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_address_is_the_tenth_of_the_service_cidr() {
        assert_eq!(
            dns_ip("10.11.0.0/16").unwrap(),
            Ipv4Addr::new(10, 11, 0, 10)
        );
        assert_eq!(
            dns_ip("10.11.5.7/24").unwrap(),
            Ipv4Addr::new(10, 11, 5, 10)
        );
        assert!(dns_ip("10.11.0.0/29").is_err());
        assert!(dns_ip("nope").is_err());
    }

    #[test]
    fn resolv_conf_searches_the_pod_namespace_first() {
        assert_eq!(
            resolv_conf(Ipv4Addr::new(10, 11, 0, 10), "default"),
            "nameserver 10.11.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn the_service_asks_for_the_dns_address_and_selects_kube_dns_pods() {
        let svc = service(Ipv4Addr::new(10, 11, 0, 10));
        let json = serde_json::to_value(&svc).unwrap();
        assert_eq!(json["metadata"]["namespace"], "kube-system");
        assert_eq!(json["spec"]["clusterIP"], "10.11.0.10");
        assert_eq!(json["spec"]["selector"]["k8s-app"], "kube-dns");
        assert_eq!(json["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(json["spec"]["ports"][0]["name"], "dns");
        assert_eq!(json["spec"]["ports"][1]["protocol"], "TCP");
        assert_eq!(json["spec"]["ports"][1]["name"], "dns-tcp");
    }

    #[test]
    fn the_first_address_of_an_answer_is_read() {
        let q = a_query("chaos-echo.default.svc.cluster.local.");
        let mut msg = q.clone();
        msg[2] = 0x81;
        msg[3] = 0x80;
        msg[7] = 2; // two answers: a CNAME-like record first, then the A record
        msg.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 2, 0xc0, 12]);
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 11, 0, 42]);
        assert_eq!(first_a(&msg), Some(Ipv4Addr::new(10, 11, 0, 42)));
        // NXDOMAIN, a truncated message, another id.
        let mut nx = msg.clone();
        nx[3] = 0x83;
        assert_eq!(first_a(&nx), None);
        assert_eq!(first_a(&msg[..msg.len() - 2]), None);
        let mut other = msg.clone();
        other[0] = 0;
        assert_eq!(first_a(&other), None);
        assert_eq!(first_a(&q), None);
    }

    #[test]
    fn the_query_is_a_well_formed_a_question() {
        let q = a_query("kube-dns.kube-system.svc.cluster.local.");
        assert_eq!(&q[..12], &[0x50, 0x4c, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(q[12], 8);
        assert_eq!(&q[13..21], b"kube-dns");
        assert_eq!(&q[q.len() - 5..], &[0, 0, 1, 0, 1]);
    }
}
