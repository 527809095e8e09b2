//! The DNS proxy server's real topology, shared by its test and benchmark: a node namespace
//! running the eBPF datapath, pod a (the client, endpoint 101) and pod b (its DNS server,
//! endpoint 102, serving the zone `example.test` with `plexus-dns`'s zone server on port 53),
//! a DNS policy from a real CiliumNetworkPolicy, and a fake host for the server.
//!
//! Everything created is named `<prefix>-*` with a random part and deleted by [`Lab`]'s drop,
//! also when the test fails.
#![allow(dead_code, clippy::unwrap_used)]

#[path = "../../../datapath/tests/common/mod.rs"]
mod dp;

pub use dp::Bpffs;
pub use dp::pods::{self, GATEWAY, Netns, NsThread, Pod, endpoint, ip, route_to};

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use plexus_datapath::{Datapath, EbpfDatapath, NodeConfig, RoutingMode};
use plexus_dnsproxy::{
    CacheConfig, Change, DnsProxy, DnsProxyServer, EndpointId, FqdnSelectors, Learner, ProxyConfig,
    ProxyHost, ServerConfig,
};
use plexus_model::identity::{NumericIdentity, ReservedIdentity};
use plexus_policy::{
    EndpointInfo, IdentityChange as SelectorChange, PolicyConfig, PolicyRepository, parse_documents,
};

/// The proxy's port on the node's 127.0.0.1.
pub const PROXY_PORT: u16 = 10053;
/// Client socket timeouts.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The node's own address (the forwarding sockets' source).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The client's endpoint id.
pub const CLIENT_EP: u16 = 101;
/// Security identities (cluster 1): the client and the DNS server.
pub const CLIENT_ID: NumericIdentity = NumericIdentity(65536 + 1);
pub const DNS_ID: NumericIdentity = NumericIdentity(65536 + 53);
/// The node-local identities the learner allocates from.
const FQDN_BASE: u32 = (1 << 24) + 0x8000;

/// The zone pod b serves.
pub const ZONE: &str = "$ORIGIN example.test.
$TTL 60
www       IN A 192.0.2.10
api       IN A 192.0.2.11
hold      IN A 192.0.2.12
deep.www  IN A 192.0.2.13
";

use plexus_dnsproxy::testing::{CLIENT_DNS_POLICY as POLICY, pod_labels as labels};

/// The proxy logic with the client's DNS rules resolved from [`POLICY`] by `plexus-policy`.
pub fn dns_proxy() -> Arc<Mutex<DnsProxy>> {
    let mut repo = PolicyRepository::new(PolicyConfig::new("cluster1"));
    repo.upsert_all(parse_documents(POLICY, "default").unwrap());
    let client = labels("client", "default");
    repo.update_identities([
        SelectorChange::Upsert(CLIENT_ID, client.clone()),
        SelectorChange::Upsert(DNS_ID, labels("kube-dns", "kube-system")),
    ]);
    let info = EndpointInfo {
        labels: client,
        named_ports: Default::default(),
    };
    let mut learner = Learner::new(CacheConfig::default(), FQDN_BASE..=FQDN_BASE + 100);
    learner.set_selectors(FqdnSelectors::new(["*.example.test"]));
    let mut proxy = DnsProxy::new(ProxyConfig::default(), learner);
    proxy.rules.set(
        EndpointId(u64::from(CLIENT_EP)),
        repo.resolve(&info),
        repo.resolve_dns(&info),
    );
    Arc::new(Mutex::new(proxy))
}

/// The server's host: the client's endpoint, the DNS server's identity; records what it is
/// asked to apply. With `hang` set its applies never finish.
pub struct FakeHost {
    endpoints: HashMap<IpAddr, EndpointId>,
    identities: HashMap<IpAddr, NumericIdentity>,
    /// Every change applied, in order.
    pub applied: Mutex<Vec<Change>>,
    /// Applies never finish (the hold_max case).
    pub hang: AtomicBool,
}

impl FakeHost {
    pub fn new(client: Ipv4Addr, server: Ipv4Addr) -> Self {
        Self {
            endpoints: [(IpAddr::V4(client), EndpointId(u64::from(CLIENT_EP)))].into(),
            identities: [(IpAddr::V4(server), DNS_ID)].into(),
            applied: Mutex::new(Vec::new()),
            hang: AtomicBool::new(false),
        }
    }
}

impl ProxyHost for FakeHost {
    fn endpoint_of(&self, client: IpAddr) -> Option<EndpointId> {
        self.endpoints.get(&client).copied()
    }

    fn identity_of(&self, server: IpAddr) -> NumericIdentity {
        self.identities
            .get(&server)
            .copied()
            .unwrap_or(ReservedIdentity::World.id())
    }

    fn apply(&self, changes: Vec<Change>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.applied.lock().unwrap().extend(changes);
        if self.hang.load(Ordering::SeqCst) {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async {})
        }
    }
}

/// `plexus-dns` serving [`ZONE`] on port 53 in a pod, on a thread of its own; stopped on drop.
struct ZoneServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl ZoneServer {
    fn start(netns: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let zone = dir.path().join("example.test.zone");
        std::fs::write(&zone, ZONE).unwrap();
        let path = format!("/run/netns/{netns}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let handler = plexus_dns::ZoneDns::load(&zone, "example.test").unwrap();
                let server = plexus_dns::DnsServer::bind(([0, 0, 0, 0], 53).into(), handler)
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                let _ = stopped.await;
                server.shutdown().await.unwrap();
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the zone server did not start");
        Self {
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for ZoneServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The topology; deleted on drop (in order: servers, datapath, namespaces, bpffs).
pub struct Lab {
    zone: Option<ZoneServer>,
    pub client: NsThread,
    pub node: NsThread,
    pub dp: Option<Arc<EbpfDatapath>>,
    pub a: Pod,
    pub b: Pod,
    pin_dir: std::path::PathBuf,
    nets: Netns,
    fs: Bpffs,
}

impl Lab {
    /// Builds it, `prefix` naming everything (a random part is added).
    pub fn new(prefix: &str) -> Self {
        let fs = Bpffs::new();
        let prefix = format!("{prefix}-{:08x}", rand::random::<u32>());
        let mut nets = Netns::default();
        let node_ns = nets.add(format!("{prefix}-node"));
        ip(&["-n", &node_ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &node_ns,
            "addr",
            "add",
            &format!("{NODE_IP}/32"),
            "dev",
            "lo",
        ]);
        let a = pods::make_pod(
            &mut nets,
            &node_ns,
            &prefix,
            1,
            Ipv4Addr::new(10, 60, 1, 11),
        );
        let b = pods::make_pod(
            &mut nets,
            &node_ns,
            &prefix,
            2,
            Ipv4Addr::new(10, 60, 1, 12),
        );
        route_to(&node_ns, &a);
        route_to(&node_ns, &b);
        let node = NsThread::enter(&node_ns);
        let pin_dir = fs.path().join("node");
        let config = NodeConfig {
            node_ip: NODE_IP,
            routing: RoutingMode::Tunnel,
            gateway_ip: GATEWAY,
            cluster_id: 1,
            tunnel_ifname: "plexus_vxlan".into(),
            pin_dir: pin_dir.clone(),
            encryption: Default::default(),
        };
        let (ep_a, ep_b) = (
            endpoint(&a, CLIENT_EP, CLIENT_ID.0),
            endpoint(&b, 102, DNS_ID.0),
        );
        let dp = node.run(move || {
            let dp = EbpfDatapath::load(config).unwrap();
            dp.upsert_endpoint(&ep_a).unwrap();
            dp.upsert_endpoint(&ep_b).unwrap();
            Arc::new(dp)
        });
        let client = NsThread::enter(&a.ns);
        let zone = ZoneServer::start(&b.ns);
        Self {
            zone: Some(zone),
            client,
            node,
            dp: Some(dp),
            a,
            b,
            pin_dir,
            nets,
            fs,
        }
    }

    /// Redirects the client's DNS queries to the proxy port, or not.
    pub fn redirect(&self, on: bool) {
        let dp = self.dp.clone().unwrap();
        self.node.run(move || {
            dp.set_dns_redirect(CLIENT_EP, on.then_some(PROXY_PORT))
                .unwrap()
        });
    }

    /// Starts the proxy server in the node's namespace on `runtime`.
    pub fn start_proxy(
        &self,
        runtime: &tokio::runtime::Handle,
        proxy: Arc<Mutex<DnsProxy>>,
        host: Arc<FakeHost>,
    ) -> DnsProxyServer {
        let runtime = runtime.clone();
        self.node.run(move || {
            let _guard = runtime.enter();
            let config = ServerConfig {
                port: PROXY_PORT,
                forward_timeout: Duration::from_secs(5),
            };
            DnsProxyServer::start(config, proxy, host).unwrap()
        })
    }

    /// A UDP socket in the client pod.
    pub fn client_udp(&self) -> UdpSocket {
        let s = self.client.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s
    }

    /// A TCP connection from the client pod to the DNS server's port 53.
    pub fn client_tcp(&self) -> TcpStream {
        let addr = SocketAddr::V4(SocketAddrV4::new(self.b.ip, 53));
        let conn = self
            .client
            .run(move || TcpStream::connect_timeout(&addr, TIMEOUT).unwrap());
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        conn
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.zone.take();
        if let Some(dp) = self.dp.take() {
            drop(dp);
            if let Err(e) = EbpfDatapath::uninstall(&self.pin_dir) {
                eprintln!("uninstalling the datapath: {e}");
            }
        }
    }
}

/// An A query for `name` with message id `id`.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Looks `name` up over UDP on `socket` at `server`:53: the response and where it came from.
pub fn lookup_udp(
    socket: &UdpSocket,
    server: Ipv4Addr,
    id: u16,
    name: &str,
) -> (Message, SocketAddr) {
    socket
        .send_to(&query(id, name), SocketAddrV4::new(server, 53))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no UDP answer for {name}: {e}"));
        let m = Message::from_vec(&buf[..n]).unwrap();
        // A late answer to an earlier query is not this one's.
        if m.metadata.id == id {
            return (m, from);
        }
    }
}

/// Looks `name` up over TCP on `conn`.
pub fn lookup_tcp(conn: &mut TcpStream, id: u16, name: &str) -> Message {
    let q = query(id, name);
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    conn.write_all(&frame).unwrap();
    let mut len = [0u8; 2];
    conn.read_exact(&mut len)
        .unwrap_or_else(|e| panic!("no TCP answer for {name}: {e}"));
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

/// The A addresses of a response.
pub fn addresses(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}
