//! Applies the core's WireGuard peers to the node's device, and strict mode's map to the
//! datapath.
//!
//! The device is its own process (`plexus-wireguard`, or any device that speaks WireGuard's
//! cross-platform UAPI, such as `wireguard-go`), started beside the agent and never by it: it
//! outlives agent restarts, so sessions survive them. The agent reaches it through the narrow
//! [`WireguardDevice`] trait (the real one is [`UapiClient`]; [`FakeDevice`] beside it for
//! tests) and syncs it as a difference: one `get`, then one `set` with only what differs
//! ([`diff`]: the private key, the port, peers to remove, change or add). Nothing else writes
//! the device's peers, so anything the agent did not ask for goes.
//!
//! Strict mode's `PLEXUS_WG_PEERS` map follows the device: a node is marked only after the
//! device accepted its peer, and unmarked before its peer is removed, so the datapath never
//! lets a pod's packet through towards a node the device cannot encrypt for.
//!
//! A restart never tears tunnels down: the agent records whose each peer it set is
//! ([`PeerRecord`], in the state dir), and a new agent removes a peer it does not want only
//! once that peer's cluster is settled (its nodes listed in full since the start, or the
//! remote drained): until then the core simply does not know that cluster's nodes yet.
//!
//! [`WireguardTask`] runs the sync in its own thread (UAPI calls block, with timeouts): on
//! every new desired state, on a key rotation, and every [`RESYNC`] (every [`RETRY`] while the
//! device is unreachable or refused a change). The periodic check is why a device that
//! restarted (and came back without key and peers) is set up again without anyone asking;
//! a `get` on a unix socket costs next to nothing. [`Wireguard`] is the handle the API uses:
//! status, the device's live state, and key rotation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use plexus_datapath::{Datapath, Prefix};
use plexus_wireguard::uapi::{AllowedIp, DeviceInfo, Key, SetDevice, SetPeer, UapiClient};
use plexus_wireguard::{NodeKey, WIREGUARD_PORT};

use crate::core::{WireguardPeer, WireguardPeers};

/// How often a healthy device is checked against the desired state.
pub const RESYNC: Duration = Duration::from_secs(5);
/// How soon a failed sync is tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// The node's WireGuard device, as the agent drives it. Errors are messages naming the socket.
pub trait WireguardDevice: Send + Sync {
    /// The device's state (`get=1`).
    fn get(&self) -> Result<DeviceInfo, String>;
    /// Changes the device (`set=1`).
    fn set(&self, request: &SetDevice) -> Result<(), String>;
}

impl WireguardDevice for UapiClient {
    fn get(&self) -> Result<DeviceInfo, String> {
        UapiClient::get(self).map_err(|e| e.to_string())
    }

    fn set(&self, request: &SetDevice) -> Result<(), String> {
        UapiClient::set(self, request).map_err(|e| e.to_string())
    }
}

/// An in-memory device that applies `set` requests as a UAPI device does, and can be made
/// unreachable (for tests of the agent's side).
#[derive(Debug, Default)]
pub struct FakeDevice {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    info: DeviceInfo,
    unreachable: bool,
    sets: Vec<SetDevice>,
}

impl FakeDevice {
    /// A reachable device without key, port or peers (as a freshly started one).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every call fail (the process is down) or succeed again.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
    }

    /// Forgets key, port and peers, as a restarted device does.
    pub fn restart(&self) {
        self.lock().info = DeviceInfo::default();
    }

    /// The `set` requests received so far.
    pub fn sets(&self) -> Vec<SetDevice> {
        self.lock().sets.clone()
    }

    /// The device's state.
    pub fn info(&self) -> DeviceInfo {
        self.lock().info.clone()
    }
}

impl WireguardDevice for FakeDevice {
    fn get(&self) -> Result<DeviceInfo, String> {
        let st = self.lock();
        if st.unreachable {
            return Err("fake device: connect: connection refused".into());
        }
        Ok(st.info.clone())
    }

    fn set(&self, request: &SetDevice) -> Result<(), String> {
        let mut st = self.lock();
        if st.unreachable {
            return Err("fake device: connect: connection refused".into());
        }
        st.sets.push(request.clone());
        let info = &mut st.info;
        if let Some(k) = request.private_key {
            info.private_key = Some(k);
            info.public_key = Some(NodeKey::from_private_bytes(k.0).public_key());
        }
        if let Some(p) = request.listen_port {
            info.listen_port = p;
        }
        if request.replace_peers {
            info.peers.clear();
        }
        for p in &request.peers {
            let pos = info.peers.iter().position(|q| q.public_key == p.public_key);
            if p.remove {
                if let Some(i) = pos {
                    info.peers.remove(i);
                }
                continue;
            }
            let i = match pos {
                Some(i) => i,
                None if p.update_only => continue,
                None => {
                    info.peers
                        .push(plexus_wireguard::uapi::PeerInfo::new(p.public_key));
                    info.peers.len() - 1
                }
            };
            let peer = &mut info.peers[i];
            if let Some(e) = p.endpoint {
                peer.endpoint = Some(e);
            }
            if p.replace_allowed_ips {
                peer.allowed_ips.clear();
            }
            peer.allowed_ips.extend(p.allowed_ips.iter().copied());
            if let Some(k) = p.persistent_keepalive {
                peer.persistent_keepalive = k;
            }
        }
        Ok(())
    }
}

fn allowed(p: &Prefix) -> AllowedIp {
    AllowedIp {
        addr: IpAddr::V4(p.addr),
        len: p.len,
    }
}

/// The one `set` request that turns the device's state `info` into the desired one (private
/// key `private_key`, port [`WIREGUARD_PORT`], the peers `desired`, and no other peer but
/// those in `keep`); `None` when the device is as desired. Peers to remove come first, so a
/// prefix moving from a stale peer to a new one is never claimed twice.
pub fn diff(
    info: &DeviceInfo,
    private_key: Key,
    desired: &WireguardPeers,
    keep: &BTreeSet<Key>,
) -> Option<SetDevice> {
    let mut req = SetDevice::default();
    if info.private_key != Some(private_key) {
        req.private_key = Some(private_key);
    }
    if info.listen_port != WIREGUARD_PORT {
        req.listen_port = Some(WIREGUARD_PORT);
    }
    for peer in &info.peers {
        if !desired.contains_key(&peer.public_key) && !keep.contains(&peer.public_key) {
            req.peers.push(SetPeer {
                remove: true,
                ..SetPeer::new(peer.public_key)
            });
        }
    }
    for (key, want) in desired {
        let want_ips: BTreeSet<(IpAddr, u8)> = want
            .allowed_ips
            .iter()
            .map(|p| (IpAddr::V4(p.addr), p.len))
            .collect();
        let endpoint = SocketAddr::V4(want.endpoint);
        let same = info
            .peers
            .iter()
            .find(|p| p.public_key == *key)
            .is_some_and(|p| {
                let ips: BTreeSet<(IpAddr, u8)> = p
                    .allowed_ips
                    .iter()
                    .map(|a| {
                        let m = a.masked();
                        (m.addr, m.len)
                    })
                    .collect();
                p.endpoint == Some(endpoint) && ips == want_ips
            });
        if !same {
            req.peers.push(SetPeer {
                endpoint: Some(endpoint),
                replace_allowed_ips: true,
                allowed_ips: want.allowed_ips.iter().map(allowed).collect(),
                ..SetPeer::new(*key)
            });
        }
    }
    (req.private_key.is_some() || req.listen_port.is_some() || !req.peers.is_empty()).then_some(req)
}

/// The kernel around the device (MTU, up, policy routing, routes into it), set up again
/// whenever the device is new (first seen, or re-created under another index).
pub trait WireguardKernel: Send {
    /// Makes sure the kernel is set up for the device, with `routes` (native mode's pod CIDRs)
    /// routed into it.
    fn ensure(&mut self, routes: &[Prefix]) -> Result<(), String>;
}

/// The node's kernel (see [`crate::netcmd::wireguard_setup`]).
#[derive(Debug)]
pub struct KernelSetup {
    /// Tunnel mode (policy routing of VXLAN packets) or native mode (pod CIDR routes).
    pub tunnel: bool,
    /// The node's underlay address (source of the VXLAN packets).
    pub node_ip: Ipv4Addr,
    /// The device's MTU.
    pub mtu: u32,
    /// The device's index when last set up, and the routes installed then.
    done: Option<(u32, Vec<Prefix>)>,
}

impl KernelSetup {
    /// A kernel not set up yet.
    pub fn new(tunnel: bool, node_ip: Ipv4Addr, mtu: u32) -> Self {
        Self {
            tunnel,
            node_ip,
            mtu,
            done: None,
        }
    }
}

impl WireguardKernel for KernelSetup {
    fn ensure(&mut self, routes: &[Prefix]) -> Result<(), String> {
        let dev = crate::netcmd::WIREGUARD_DEVICE;
        let index = plexus_netlink::blocking(|nl| async move { nl.ifindex(dev).await }).ok();
        if let (Some(index), Some((done, installed))) = (index, &self.done)
            && *done == index
            && installed.as_slice() == routes
        {
            return Ok(());
        }
        let index = crate::netcmd::wireguard_setup(self.tunnel, self.node_ip, self.mtu)
            .map_err(|e| format!("{e:#}"))?;
        for dst in routes {
            crate::netcmd::route_to_device(&dst.to_string(), dev).map_err(|e| format!("{e:#}"))?;
        }
        tracing::info!(
            device = dev,
            index,
            mtu = self.mtu,
            routes = routes.len(),
            "WireGuard device set up"
        );
        self.done = Some((index, routes.to_vec()));
        Ok(())
    }
}

/// What the API reports of the device, as the last sync saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// Whether the last call to the device succeeded.
    pub reachable: bool,
    /// The last failure (unreachable, or a refused change), if the last sync failed.
    pub error: Option<String>,
    /// When the device last matched the desired state.
    pub last_synced: Option<SystemTime>,
    /// How many peers are configured on the device (as of the last sync).
    pub peers: usize,
}

/// What the agent remembers of a peer it set on the device: whose it is. Kept in the state dir
/// (`wireguard-peers.json`), so a restarted agent knows which cluster each of the device's
/// peers belongs to and keeps it until that cluster's nodes are listed again.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PeerRecord {
    /// The node's cluster.
    pub cluster: String,
    /// The node.
    pub node: String,
    /// Its underlay address.
    pub node_ip: Ipv4Addr,
}

/// The records by public key (base64), as the state file holds them.
type Records = BTreeMap<Key, PeerRecord>;

fn load_records(path: &std::path::Path) -> Records {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Records::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "reading the WireGuard peer records");
            return Records::new();
        }
    };
    let raw: BTreeMap<String, PeerRecord> = match serde_json::from_slice(&text) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "WireGuard peer records not valid: ignored");
            return Records::new();
        }
    };
    raw.into_iter()
        .filter_map(|(k, v)| Some((k.parse::<Key>().ok()?, v)))
        .collect()
}

fn save_records(path: &std::path::Path, records: &Records) -> Result<(), String> {
    let raw: BTreeMap<String, &PeerRecord> =
        records.iter().map(|(k, v)| (k.to_string(), v)).collect();
    let bytes = serde_json::to_vec_pretty(&raw).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// The sync's state: the desired peers and key, what the datapath's strict-mode map holds.
pub struct WireguardSync {
    device: Arc<dyn WireguardDevice>,
    datapath: Arc<dyn Datapath>,
    private_key: Key,
    desired: WireguardPeers,
    /// Native mode's pod CIDRs routed into the device.
    routes: Vec<Prefix>,
    /// The clusters whose peers may go when not desired (see
    /// [`crate::core::NodeCore::settled_clusters`]).
    settled: BTreeSet<String>,
    /// Whose each peer set on the device is, and where that is kept.
    records: Records,
    records_file: Option<PathBuf>,
    /// The kernel around the device (none in tests of the device alone).
    kernel: Option<Box<dyn WireguardKernel>>,
    /// Node addresses in `PLEXUS_WG_PEERS` (read back from the pinned map at start).
    marked: BTreeSet<Ipv4Addr>,
    status: SyncStatus,
}

impl WireguardSync {
    /// A sync towards `device` with `private_key`, continuing from what `datapath`'s map holds.
    pub fn new(
        device: Arc<dyn WireguardDevice>,
        datapath: Arc<dyn Datapath>,
        private_key: Key,
    ) -> Self {
        let marked = datapath.encrypted_nodes().unwrap_or_else(|err| {
            tracing::warn!(error = %err, "reading the datapath's WireGuard peer map");
            BTreeSet::new()
        });
        Self {
            device,
            datapath,
            private_key,
            desired: WireguardPeers::new(),
            routes: Vec::new(),
            settled: BTreeSet::new(),
            records: Records::new(),
            records_file: None,
            kernel: None,
            marked,
            status: SyncStatus::default(),
        }
    }

    /// Remembers whose each peer is in `file` (read now, written after each change).
    pub fn with_records(mut self, file: PathBuf) -> Self {
        self.records = load_records(&file);
        self.records_file = Some(file);
        self
    }

    /// Also sets up the kernel around the device on every sync (when needed).
    pub fn with_kernel(mut self, kernel: Box<dyn WireguardKernel>) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// Sets the peers the node wants, the pod CIDRs routed into the device, and the clusters
    /// whose other peers may go (applied on the next [`WireguardSync::sync`]). A peer the
    /// agent set earlier (recorded) for a cluster not in `settled` stays, with its node still
    /// marked; a peer nobody recorded goes.
    pub fn set_desired(
        &mut self,
        desired: WireguardPeers,
        routes: Vec<Prefix>,
        settled: BTreeSet<String>,
    ) {
        self.desired = desired;
        self.routes = routes;
        self.settled = settled;
    }

    /// Sets the device's private key (applied on the next sync).
    pub fn set_private_key(&mut self, key: Key) {
        self.private_key = key;
    }

    /// The last sync's outcome.
    pub fn status(&self) -> &SyncStatus {
        &self.status
    }

    /// The desired peers.
    pub fn desired(&self) -> &WireguardPeers {
        &self.desired
    }

    /// One pass: unmark nodes without a desired peer, read the device, set what differs, mark
    /// the desired peers' nodes. Err when the device could not be read or refused the change
    /// (the datapath then keeps what it had, minus the unmarked nodes).
    pub fn sync(&mut self) -> Result<(), String> {
        let result = self.sync_inner();
        match &result {
            Ok(peers) => {
                if !self.status.reachable || self.status.error.is_some() {
                    tracing::info!(peers, "WireGuard device in sync");
                }
                self.status = SyncStatus {
                    reachable: true,
                    error: None,
                    last_synced: Some(SystemTime::now()),
                    peers: *peers,
                };
            }
            Err((reachable, err)) => {
                if self.status.error.as_ref() != Some(err) {
                    tracing::warn!(error = %err, "WireGuard device not in sync");
                }
                self.status.reachable = *reachable;
                self.status.error = Some(err.clone());
            }
        }
        result.map(|_| ()).map_err(|(_, e)| e)
    }

    fn sync_inner(&mut self) -> Result<usize, (bool, String)> {
        // A node publishing this node's own key (a copied key file) cannot be a peer: a device
        // refuses a peer with its own key, and the whole request with it.
        let own = NodeKey::from_private_bytes(self.private_key.0).public_key();
        if let Some(p) = self.desired.remove(&own) {
            tracing::warn!(cluster = %p.cluster, node = %p.node, key = %own, "a node publishes this node's own WireGuard key: not a peer");
        }
        // Peers of clusters not listed yet stay, and so do their nodes' marks.
        let kept: Records = self
            .records
            .iter()
            .filter(|(k, r)| !self.desired.contains_key(*k) && !self.settled.contains(&r.cluster))
            .map(|(k, r)| (*k, r.clone()))
            .collect();
        let keep: BTreeSet<Key> = kept.keys().copied().collect();
        let wanted: BTreeSet<Ipv4Addr> = self
            .desired
            .values()
            .map(|p| p.node_ip)
            .chain(kept.values().map(|r| r.node_ip))
            .collect();
        // Before a peer goes from the device: traffic to its node stops at the datapath.
        for node in self.marked.clone().difference(&wanted) {
            match self.datapath.remove_encrypted_node(*node) {
                Ok(()) => {
                    self.marked.remove(node);
                }
                Err(e) => return Err((true, format!("unmark node {node}: {e}"))),
            }
        }
        let info = self.device.get().map_err(|e| (false, e))?;
        if let Some(kernel) = &mut self.kernel {
            kernel.ensure(&self.routes).map_err(|e| (true, e))?;
        }
        if let Some(req) = diff(&info, self.private_key, &self.desired, &keep) {
            let (removed, changed) =
                req.peers.iter().fold(
                    (0, 0),
                    |(r, c), p| if p.remove { (r + 1, c) } else { (r, c + 1) },
                );
            self.device.set(&req).map_err(|e| (true, e))?;
            tracing::info!(
                key = req.private_key.is_some(),
                port = ?req.listen_port,
                removed,
                added_or_changed = changed,
                kept = keep.len(),
                "WireGuard device updated"
            );
        }
        // Whose the device's peers are now, for the next agent.
        let on_device: BTreeSet<Key> = info.peers.iter().map(|p| p.public_key).collect();
        let mut records: Records = kept
            .into_iter()
            .filter(|(k, _)| on_device.contains(k))
            .collect();
        records.extend(self.desired.iter().map(|(k, p)| {
            (
                *k,
                PeerRecord {
                    cluster: p.cluster.clone(),
                    node: p.node.clone(),
                    node_ip: p.node_ip,
                },
            )
        }));
        if records != self.records {
            if let Some(file) = &self.records_file {
                save_records(file, &records).map_err(|e| (true, e))?;
            }
            self.records = records;
        }
        // The device accepted every desired peer: their nodes may receive pod traffic.
        let desired_nodes: BTreeSet<Ipv4Addr> = self.desired.values().map(|p| p.node_ip).collect();
        for node in desired_nodes.difference(&self.marked.clone()) {
            match self.datapath.upsert_encrypted_node(*node) {
                Ok(()) => {
                    self.marked.insert(*node);
                }
                Err(e) => return Err((true, format!("mark node {node}: {e}"))),
            }
        }
        Ok(self.desired.len())
    }
}

/// What wakes the sync thread.
enum Wake {
    Desired(WireguardPeers, Vec<Prefix>, BTreeSet<String>),
    Key(Key, std::sync::mpsc::Sender<Result<(), String>>),
}

/// The API's handle on the node's WireGuard: status, live device state, key rotation.
pub struct Wireguard {
    device: Arc<dyn WireguardDevice>,
    key_file: PathBuf,
    socket: PathBuf,
    strict: bool,
    public_key: Mutex<Key>,
    shared: Arc<Mutex<Shared>>,
    tx: std::sync::mpsc::Sender<Wake>,
    /// Publishes this node's `Node` with a new public key.
    publish: Box<dyn Fn(Key) + Send + Sync>,
}

/// What the sync thread shares with the handle.
#[derive(Default)]
struct Shared {
    status: SyncStatus,
    desired: BTreeMap<Key, WireguardPeer>,
}

/// The sync thread's side, built with [`Wireguard::start`].
pub struct WireguardTask {
    sync: WireguardSync,
    rx: std::sync::mpsc::Receiver<Wake>,
    shared: Arc<Mutex<Shared>>,
}

/// What [`Wireguard::start`] needs.
pub struct WireguardConfig {
    /// The device.
    pub device: Arc<dyn WireguardDevice>,
    /// The datapath (strict mode's map).
    pub datapath: Arc<dyn Datapath>,
    /// The node's key pair.
    pub key: NodeKey,
    /// Where the key is kept (rotation replaces it).
    pub key_file: PathBuf,
    /// The device's UAPI socket (reported).
    pub socket: PathBuf,
    /// Strict mode (reported).
    pub strict: bool,
    /// Publishes this node's `Node` with a new public key.
    pub publish: Box<dyn Fn(Key) + Send + Sync>,
    /// The kernel around the device (none with the fake datapath).
    pub kernel: Option<Box<dyn WireguardKernel>>,
    /// Where the agent remembers whose each of the device's peers is (none: not kept).
    pub records_file: Option<PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Wireguard {
    /// The handle and the sync thread's state; run the latter with [`WireguardTask::run`].
    pub fn start(config: WireguardConfig) -> (Arc<Self>, WireguardTask) {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut sync = WireguardSync::new(
            config.device.clone(),
            config.datapath,
            config.key.private_key(),
        );
        if let Some(kernel) = config.kernel {
            sync = sync.with_kernel(kernel);
        }
        if let Some(file) = config.records_file {
            sync = sync.with_records(file);
        }
        let handle = Arc::new(Self {
            device: config.device,
            key_file: config.key_file,
            socket: config.socket,
            strict: config.strict,
            public_key: Mutex::new(config.key.public_key()),
            shared: shared.clone(),
            tx,
            publish: config.publish,
        });
        (handle, WireguardTask { sync, rx, shared })
    }

    /// Hands the desired peers, native mode's encrypted routes and the settled clusters to
    /// the sync thread (see [`WireguardSync::set_desired`]).
    pub fn set_desired(
        &self,
        desired: WireguardPeers,
        routes: Vec<Prefix>,
        settled: BTreeSet<String>,
    ) {
        // A send fails only once the thread is gone (the agent is stopping).
        let _ = self.tx.send(Wake::Desired(desired, routes, settled));
    }

    /// This node's public key.
    pub fn public_key(&self) -> Key {
        *lock(&self.public_key)
    }

    /// The UAPI socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Whether strict mode is on.
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The last sync's outcome.
    pub fn status(&self) -> SyncStatus {
        lock(&self.shared).status.clone()
    }

    /// The desired peers, by key.
    pub fn desired(&self) -> BTreeMap<Key, WireguardPeer> {
        lock(&self.shared).desired.clone()
    }

    /// The device's live state (blocking: one UAPI `get`).
    pub fn device_info(&self) -> Result<DeviceInfo, String> {
        self.device.get()
    }

    /// Rotates the node's key (blocking): a new key replaces the file, the device gets it
    /// (the sync thread applies it at once and this waits for that, at most `limit`), then
    /// the Node is published with the new public key, so peers learn it only once the device
    /// answers to it. Returns the new public key; an error when the file could not be written
    /// (nothing changed) or the device did not take the key within `limit` (it gets it when it
    /// is reachable again; the Node is published anyway, since the key file holds the new key
    /// and a restarted device will be given it).
    pub fn rotate_key(&self, limit: Duration) -> Result<Key, String> {
        let key = NodeKey::rotate(&self.key_file).map_err(|e| e.to_string())?;
        let public = key.public_key();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let applied = match self.tx.send(Wake::Key(key.private_key(), done_tx)) {
            Ok(()) => match done_rx.recv_timeout(limit) {
                Ok(r) => r,
                Err(_) => Err(format!("the device did not take the key within {limit:?}")),
            },
            Err(_) => Err("the WireGuard sync is not running".to_string()),
        };
        *lock(&self.public_key) = public;
        (self.publish)(public);
        tracing::info!(public_key = %public, "WireGuard key rotated");
        applied.map(|()| public)
    }
}

impl WireguardTask {
    /// Syncs until the handle is dropped. Blocking: run it on its own thread.
    pub fn run(mut self) {
        let mut next = Duration::ZERO;
        loop {
            // Key rotations waiting for the device to take their key.
            let mut waiting = Vec::new();
            let mut take = |sync: &mut WireguardSync, wake: Wake| match wake {
                Wake::Desired(d, r, settled) => sync.set_desired(d, r, settled),
                Wake::Key(k, done) => {
                    sync.set_private_key(k);
                    waiting.push(done);
                }
            };
            match self.rx.recv_timeout(next) {
                Ok(wake) => take(&mut self.sync, wake),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            // Everything that queued up meanwhile is applied in the same pass.
            while let Ok(wake) = self.rx.try_recv() {
                take(&mut self.sync, wake);
            }
            let result = self.sync.sync();
            self.publish();
            for done in waiting {
                let _ = done.send(result.clone());
            }
            next = if result.is_ok() { RESYNC } else { RETRY };
        }
    }

    fn publish(&self) {
        let mut shared = lock(&self.shared);
        shared.status = self.sync.status().clone();
        shared.desired = self.sync.desired().clone();
    }
}
