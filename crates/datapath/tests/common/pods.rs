//! Pods on a node made of network namespaces: one namespace per node, one per pod, joined by a
//! veth pair whose host side runs the datapath. Namespaces are entered with `setns` from a
//! dedicated thread ([`NsThread`]), never with `ip netns exec` (which remounts /sys).
//! Everything is deleted by guards, also when a test fails.

use std::{fs::File, net::Ipv4Addr, process::Command, sync::mpsc, thread, time::Duration};

use nix::sched::{CloneFlags, setns};
use plexus_datapath::Endpoint;

/// The pods' gateway (answered by the datapath's ARP responder).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 60, 1, 1);

/// Runs `ip` with `args`, failing the test on error.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces deleted on drop.
#[derive(Default)]
pub struct Netns {
    names: Vec<String>,
}

impl Netns {
    /// Creates the namespace `name` (which the caller makes unique).
    pub fn add(&mut self, name: String) -> String {
        ip(&["netns", "add", &name]);
        self.names.push(name.clone());
        name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in self.names.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that lives in one network namespace (entered with setns) and runs closures there.
/// Sockets it creates belong to that namespace and may be used from any thread afterwards.
pub struct NsThread {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl NsThread {
    pub fn enter(netns: &str) -> Self {
        let path = format!("/run/netns/{netns}");
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            let file = File::open(&path).unwrap();
            ready_tx
                .send(setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()))
                .unwrap();
            for job in rx {
                job();
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        Self {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Runs `f` in the namespace; fails the test after 60 s.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .unwrap()
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .unwrap();
        rx.recv_timeout(Duration::from_secs(60))
            .expect("namespace job did not finish within 60 s")
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One pod: its namespace, address and the veth pair to the node.
pub struct Pod {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub host_if: String,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Creates pod number `n` (namespace `<prefix>-pod<n>`, host veth `lxc<n>` in `node`) with
/// address `pod_ip`/32 and a default route via [`GATEWAY`].
pub fn make_pod(nets: &mut Netns, node: &str, prefix: &str, n: u8, pod_ip: Ipv4Addr) -> Pod {
    let pod = Pod {
        ns: nets.add(format!("{prefix}-pod{n}")),
        ip: pod_ip,
        host_if: format!("lxc{n}"),
        pod_mac: [0x0a, 0x58, 0, 0, 0, n],
        host_mac: [0x0e, 0x58, 0, 0, 1, n],
    };
    let (host_mac, pod_mac) = (mac_str(pod.host_mac), mac_str(pod.pod_mac));
    let addr = format!("{}/32", pod.ip);
    let gw = GATEWAY.to_string();
    ip(&[
        "-n",
        node,
        "link",
        "add",
        &pod.host_if,
        "address",
        &host_mac,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pod.ns,
    ]);
    ip(&[
        "-n", &pod.ns, "link", "set", "eth0", "address", &pod_mac, "mtu", "1450",
    ]);
    ip(&["-n", &pod.ns, "addr", "add", &addr, "dev", "eth0"]);
    ip(&["-n", &pod.ns, "link", "set", "lo", "up"]);
    ip(&["-n", &pod.ns, "link", "set", "eth0", "up"]);
    ip(&[
        "-n", &pod.ns, "route", "add", &gw, "dev", "eth0", "scope", "link",
    ]);
    ip(&[
        "-n", &pod.ns, "route", "add", "default", "via", &gw, "dev", "eth0",
    ]);
    ip(&["-n", node, "link", "set", &pod.host_if, "up"]);
    pod
}

/// Routes the node's own packets to `pod` (as the agent does for its endpoints).
pub fn route_to(node_ns: &str, pod: &Pod) {
    let ip_addr = format!("{}/32", pod.ip);
    ip(&["-n", node_ns, "route", "add", &ip_addr, "dev", &pod.host_if]);
    ip(&[
        "-n",
        node_ns,
        "neigh",
        "replace",
        &pod.ip.to_string(),
        "lladdr",
        &mac_str(pod.pod_mac),
        "dev",
        &pod.host_if,
        "nud",
        "permanent",
    ]);
}

/// The endpoint of `pod` for the datapath.
pub fn endpoint(pod: &Pod, id: u16, identity: u32) -> Endpoint {
    Endpoint {
        id,
        ipv4: pod.ip,
        host_ifname: pod.host_if.clone(),
        host_ifindex: 0,
        pod_mac: pod.pod_mac,
        host_mac: pod.host_mac,
        identity,
    }
}

/// Two node namespaces `<prefix>-n1` and `<prefix>-n2` joined by one veth pair `ul0` (the
/// underlay) with addresses 192.168.77.1 and .2/24: their names and addresses.
pub fn two_nodes(nets: &mut Netns, prefix: &str) -> ((String, Ipv4Addr), (String, Ipv4Addr)) {
    let n1 = nets.add(format!("{prefix}-n1"));
    let n2 = nets.add(format!("{prefix}-n2"));
    let (ip1, ip2) = (
        Ipv4Addr::new(192, 168, 77, 1),
        Ipv4Addr::new(192, 168, 77, 2),
    );
    ip(&[
        "-n", &n1, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &n2,
    ]);
    for (ns, addr) in [(&n1, ip1), (&n2, ip2)] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "ul0"]);
        ip(&["-n", ns, "link", "set", "ul0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ((n1, ip1), (n2, ip2))
}
