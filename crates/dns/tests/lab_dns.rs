//! Cluster DNS in a real lab, as root: `lab up` runs the `kube-dns` pod in `kube-system`, which
//! reads the cluster's etcd from its pod network namespace and answers for services applied
//! afterwards; every pod (its process and `plexus exec`) sees its own resolv.conf over
//! `/etc/resolv.conf`; after `lab stop` and `lab start` kube-dns answers again; `lab down`
//! removes the pods, their resolv.conf files and namespaces.
//!
//! Service addresses are only reachable once the eBPF load balancer translates them, so the
//! queries go to the kube-dns pod's own address, from a client pod's network namespace.
//! The lab is named after `dnst` (namespaces `plx-dnst<pid>x<n>-*`), apart from every other lab.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use plexus_test_support::lab::{Lab, run_lab};

/// Asks `server` for the A record of `name` from network namespace `netns`.
fn ask_in(netns: &str, server: Ipv4Addr, name: &str) -> Option<Message> {
    let path = format!("/run/netns/{netns}");
    let name = name.to_string();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(
            Name::from_ascii(&name).unwrap(),
            RecordType::A,
        ));
        sock.send_to(&q.to_vec().unwrap(), SocketAddr::from((server, 53)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = sock.recv(&mut buf).ok()?;
        Some(Message::from_vec(&buf[..n]).unwrap())
    })
    .join()
    .unwrap()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

const APPS: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - port: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels:
    app: client
spec:
  containers:
  - name: client
    image: busybox
    command: [sh, -c, 'cat /etc/resolv.conf; exec sleep 3600']
";

#[test]
fn lab_pods_resolve_services_through_the_kube_dns_pod() {
    run_lab("dnst", Duration::from_secs(300), lab_pods_resolve_services);
}

fn lab_pods_resolve_services(mut lab: Lab) {
    assert!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0,
        "the lab test needs root (network namespaces)"
    );
    assert!(
        lab.netns().is_empty(),
        "namespaces of a lab {} already exist: {:?}",
        lab.name(),
        lab.netns()
    );
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let lab_file = lab.write(
        "lab.yaml",
        "clusters:\n- {name: dns1, id: 41, podCIDR: 10.130.0.0/16, serviceCIDR: 10.131.0.0/16, nodes: 2}\nrouting: tunnel\n",
    );
    lab.up(&lab_file, &[]);

    // kube-dns runs in kube-system on the first node, with its Service at .10.
    let pods = lab.json(&["get", "pods", "-n", "kube-system", "-o", "json"]);
    let dns_pod = pods
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["owner"] == "deployment/kube-dns")
        .unwrap_or_else(|| panic!("no kube-dns pod: {pods}"))
        .clone();
    assert_eq!(dns_pod["node"], "dns1-node1");
    assert_eq!(dns_pod["labels"]["k8s-app"], "kube-dns");
    let table = lab.ok(&["get", "pods", "-n", "kube-system"]);
    assert!(table.contains("kube-dns-"), "{table}");
    let dns_ip: Ipv4Addr = dns_pod["ip"].as_str().unwrap().parse().unwrap();
    let svc = lab.json(&[
        "get",
        "services",
        "kube-dns",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]);
    assert_eq!(svc[0]["spec"]["clusterIP"], "10.131.0.10", "{svc}");
    assert_eq!(svc[0]["spec"]["selector"]["k8s-app"], "kube-dns");

    // A service and a client pod applied afterwards.
    let apps = lab.write("apps.yaml", APPS);
    lab.ok(&["apply", "-f", apps.to_str().unwrap()]);
    let client = lab.json(&["get", "pods", "client", "-o", "json"]);
    let client_netns = client[0]["netns"].as_str().unwrap().to_string();

    // The service gets an address (not the DNS one) and kube-dns answers with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let web_ip: Ipv4Addr = loop {
        let svc = lab.json(&["get", "services", "web", "-o", "json"]);
        if let Some(ip) = svc[0]["spec"]["clusterIP"].as_str() {
            break ip.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "web never got an address: {svc}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(web_ip, Ipv4Addr::new(10, 131, 0, 10));
    let until_web_resolves = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = ask_in(&client_netns, dns_ip, "web.default.svc.cluster.local.");
            if let Some(m) = &m
                && m.metadata.response_code == ResponseCode::NoError
                && a_records(m) == vec![web_ip]
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: kube-dns ({dns_ip}) never answered web = {web_ip}: {m:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until_web_resolves("after apply");
    // glibc's resolver from the client pod, with the pod's search list but the kube-dns pod as
    // nameserver: a short name resolves through the search list.
    let resolv = lab.write(
        "to-dns-pod.resolv.conf",
        &format!("nameserver {dns_ip}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1 attempts:1\n"),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "nsenter"])
        .arg(format!("--net=/run/netns/{client_netns}"))
        .args([
            "--",
            "sh",
            "-c",
            r#"mount --bind "$1" /etc/resolv.conf && getent hosts web"#,
            "sh",
        ])
        .arg(&resolv)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("{web_ip} ")) && text.contains("web.default.svc.cluster.local"),
        "getent hosts web: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = ask_in(
        &client_netns,
        dns_ip,
        "kube-dns.kube-system.svc.cluster.local.",
    )
    .unwrap();
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 131, 0, 10)]);
    let m = ask_in(&client_netns, dns_ip, "nope.default.svc.cluster.local.").unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // The pod's own resolv.conf, for `exec` and for the pod's process (its log).
    let want = "nameserver 10.131.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n";
    let seen = lab.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert_eq!(seen, want);
    let seen = lab.ok(&[
        "exec",
        "-n",
        "kube-system",
        "deployment/kube-dns",
        "--",
        "cat",
        "/etc/resolv.conf",
    ]);
    assert!(
        seen.starts_with("nameserver 10.131.0.10\nsearch kube-system.svc.cluster.local "),
        "{seen}"
    );
    let log = lab.dir().join("dns1/pods/default-client.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("nameserver 10.131.0.10")
    {
        assert!(
            Instant::now() < deadline,
            "the client's process did not see its resolv.conf: {:?}",
            std::fs::read_to_string(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The host's file is untouched: the bind mounts live in the pods' mount namespaces.
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        host_resolv
    );
    let resolv_files = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir.join("dns1/pods"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.ends_with(".resolv.conf"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut files = resolv_files(lab.dir());
    files.sort();
    assert!(
        files.contains(&"default-client.resolv.conf".to_string()),
        "{files:?}"
    );

    // The cluster fails and comes back: kube-dns runs again and reaches etcd again.
    lab.ok(&["lab", "stop", "dns1"]);
    assert!(ask_in(&client_netns, dns_ip, "web.default.svc.cluster.local.").is_none());
    lab.ok(&["lab", "start", "dns1"]);
    until_web_resolves("after lab stop and start");
    let seen = lab.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert_eq!(seen, want);

    // Deleting the pod removes its resolv.conf; `lab down` removes everything.
    std::fs::write(
        &apps,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\nspec:\n  containers:\n  - name: client\n    command: [sleep, '1']\n",
    )
    .unwrap();
    lab.ok(&["delete", "-f", apps.to_str().unwrap()]);
    assert!(!resolv_files(lab.dir()).contains(&"default-client.resolv.conf".to_string()));
    lab.down();
    assert!(lab.netns().is_empty(), "{:?}", lab.netns());
    assert!(!lab.dir().exists());
}
