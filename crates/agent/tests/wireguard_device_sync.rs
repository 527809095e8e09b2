//! The agent's side of the WireGuard device, against the in-memory device and datapath: the
//! device is synced as a difference (one `set` with only what differs, nothing when it is in
//! sync), set up again after it restarted, retried while it is unreachable; strict mode's map
//! marks a node only once the device has its peer and unmarks it before the peer goes.
//! (`tests/wireguard_real_device.rs` runs the same against `plexus-wireguard` in a netns.)

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use plexus_agent::core::{WireguardPeer, WireguardPeers};
use plexus_agent::shell::wireguard::{FakeDevice, WireguardSync, diff};
use plexus_datapath::{Datapath, Encryption, FakeDatapath, Prefix};
use plexus_wireguard::NodeKey;
use plexus_wireguard::uapi::Key;

const K_M1: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
const K_M2: &str = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=";

fn key(b64: &str) -> Key {
    b64.parse().unwrap()
}

fn peer(k: &str, node: &str, ip: &str, allowed: &str) -> (Key, WireguardPeer) {
    let node_ip: Ipv4Addr = ip.parse().unwrap();
    (
        key(k),
        WireguardPeer {
            public_key: key(k),
            cluster: "c2".into(),
            node: node.into(),
            node_ip,
            endpoint: std::net::SocketAddrV4::new(node_ip, 51871),
            allowed_ips: vec![allowed.parse::<Prefix>().unwrap()],
        },
    )
}

fn two_peers() -> WireguardPeers {
    [
        peer(K_M1, "m1", "192.168.2.1", "192.168.2.1/32"),
        peer(K_M2, "m2", "192.168.2.2", "192.168.2.2/32"),
    ]
    .into()
}

struct Fixture {
    device: Arc<FakeDevice>,
    datapath: Arc<FakeDatapath>,
    sync: WireguardSync,
    private: NodeKey,
}

fn fixture() -> Fixture {
    let device = Arc::new(FakeDevice::new());
    let datapath = Arc::new(FakeDatapath::with_encryption(
        "192.168.1.1".parse().unwrap(),
        Encryption {
            enabled: true,
            strict: true,
        },
    ));
    let private = NodeKey::from_private_bytes([7; 32]);
    let sync = WireguardSync::new(device.clone(), datapath.clone(), private.private_key());
    Fixture {
        device,
        datapath,
        sync,
        private,
    }
}

/// Both clusters listed: peers not desired may go.
fn settled() -> BTreeSet<String> {
    ["c1".to_string(), "c2".to_string()].into()
}

fn marked(dp: &FakeDatapath) -> BTreeSet<Ipv4Addr> {
    dp.encrypted_nodes().unwrap()
}

fn ips(list: &[&str]) -> BTreeSet<Ipv4Addr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn the_first_sync_sets_key_port_and_peers_in_one_request() {
    let mut f = fixture();
    f.sync.set_desired(two_peers(), vec![], settled());
    f.sync.sync().unwrap();
    let sets = f.device.sets();
    assert_eq!(sets.len(), 1);
    // The request as the device reads it (keys in hex, removals first, then the peers).
    assert_eq!(
        sets[0].to_uapi(),
        format!(
            "set=1\nprivate_key={}\nlisten_port=51871\n\
             public_key={}\nendpoint=192.168.2.1:51871\nreplace_allowed_ips=true\nallowed_ip=192.168.2.1/32\n\
             public_key={}\nendpoint=192.168.2.2:51871\nreplace_allowed_ips=true\nallowed_ip=192.168.2.2/32\n\n",
            f.private.private_key().to_hex(),
            key(K_M1).to_hex(),
            key(K_M2).to_hex(),
        ),
        "{:?}",
        sets[0]
    );
    assert_eq!(
        f.device.info().public_key,
        Some(f.private.public_key()),
        "the device answers to the node's published key"
    );
    assert_eq!(marked(&f.datapath), ips(&["192.168.2.1", "192.168.2.2"]));
    assert!(f.sync.status().reachable);
    assert_eq!(f.sync.status().peers, 2);

    // In sync: a check changes nothing.
    f.sync.sync().unwrap();
    assert_eq!(f.device.sets().len(), 1);
}

#[test]
fn a_peer_goes_from_the_map_before_it_goes_from_the_device() {
    let mut f = fixture();
    f.sync.set_desired(two_peers(), vec![], settled());
    f.sync.sync().unwrap();
    // m2 is gone; the device does not answer yet.
    f.device.set_unreachable(true);
    f.sync.set_desired(
        [peer(K_M1, "m1", "192.168.2.1", "192.168.2.1/32")].into(),
        vec![],
        settled(),
    );
    let err = f.sync.sync().unwrap_err();
    assert!(err.contains("connection refused"), "{err}");
    assert!(!f.sync.status().reachable);
    assert_eq!(
        marked(&f.datapath),
        ips(&["192.168.2.1"]),
        "strict mode stops traffic to m2 even while its peer is still on the device"
    );
    assert_eq!(f.device.info().peers.len(), 2);
    // The device is back: the peer goes, in a request that only removes it.
    f.device.set_unreachable(false);
    f.sync.sync().unwrap();
    let last = f.device.sets().pop().unwrap();
    assert_eq!(
        last.to_uapi(),
        format!("set=1\npublic_key={}\nremove=true\n\n", key(K_M2).to_hex())
    );
    assert_eq!(f.device.info().peers.len(), 1);
}

#[test]
fn nothing_is_marked_before_the_device_has_the_peer() {
    let mut f = fixture();
    f.device.set_unreachable(true);
    f.sync.set_desired(two_peers(), vec![], settled());
    assert!(f.sync.sync().is_err());
    assert!(marked(&f.datapath).is_empty());
    f.datapath
        .upsert_ipcache(
            "10.2.1.0/24".parse().unwrap(),
            plexus_datapath::IpcacheValue {
                identity: 5000,
                tunnel_endpoint: Some("192.168.2.1".parse().unwrap()),
                cluster_id: 2,
            },
        )
        .unwrap();
    let pod_on_m1 = "10.2.1.7".parse().unwrap();
    assert!(f.datapath.strict_drop(pod_on_m1));
    f.device.set_unreachable(false);
    f.sync.sync().unwrap();
    assert_eq!(marked(&f.datapath), ips(&["192.168.2.1", "192.168.2.2"]));
    assert!(!f.datapath.strict_drop(pod_on_m1));
}

#[test]
fn a_restarted_device_is_set_up_again_and_stale_or_changed_peers_are_fixed() {
    let mut f = fixture();
    f.sync.set_desired(two_peers(), vec![], settled());
    f.sync.sync().unwrap();
    f.device.restart();
    f.sync.sync().unwrap();
    let info = f.device.info();
    assert_eq!(info.listen_port, 51871);
    assert_eq!(info.private_key, Some(f.private.private_key()));
    assert_eq!(info.peers.len(), 2);

    // Someone added a peer by hand and moved m1: the agent's desired state wins.
    let stranger: Key = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28="
        .parse()
        .unwrap();
    use plexus_agent::shell::wireguard::WireguardDevice;
    f.device
        .set(&plexus_wireguard::uapi::SetDevice {
            peers: vec![
                plexus_wireguard::uapi::SetPeer::new(stranger),
                plexus_wireguard::uapi::SetPeer {
                    endpoint: Some("10.9.9.9:1".parse().unwrap()),
                    ..plexus_wireguard::uapi::SetPeer::new(key(K_M1))
                },
            ],
            ..Default::default()
        })
        .unwrap();
    let want = diff(
        &f.device.info(),
        f.private.private_key(),
        &two_peers(),
        &BTreeSet::new(),
    )
    .unwrap();
    assert_eq!(
        want.to_uapi(),
        format!(
            "set=1\npublic_key={}\nremove=true\npublic_key={}\nendpoint=192.168.2.1:51871\n\
             replace_allowed_ips=true\nallowed_ip=192.168.2.1/32\n\n",
            stranger.to_hex(),
            key(K_M1).to_hex()
        )
    );
    f.sync.sync().unwrap();
    assert_eq!(
        diff(
            &f.device.info(),
            f.private.private_key(),
            &two_peers(),
            &BTreeSet::new(),
        ),
        None
    );
}

#[test]
fn a_new_private_key_is_all_a_rotation_changes_on_the_device() {
    let mut f = fixture();
    f.sync.set_desired(two_peers(), vec![], settled());
    f.sync.sync().unwrap();
    let next = NodeKey::from_private_bytes([9; 32]);
    f.sync.set_private_key(next.private_key());
    f.sync.sync().unwrap();
    assert_eq!(
        f.device.sets().pop().unwrap().to_uapi(),
        format!("set=1\nprivate_key={}\n\n", next.private_key().to_hex())
    );
    assert_eq!(f.device.info().public_key, Some(next.public_key()));
    assert_eq!(f.device.info().peers.len(), 2, "peers untouched");
}

/// Key rotation through the API's handle, with the sync thread running: the file holds the new
/// key, the device answers to it, and only then is the Node published with it; a device that
/// does not answer gets the key later (the Node is published anyway: the file holds it).
#[test]
fn rotation_writes_the_file_sets_the_device_then_publishes() {
    use plexus_agent::shell::wireguard::{Wireguard, WireguardConfig};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("plexus_wg0.key");
    let key = NodeKey::load_or_create(&key_file).unwrap();
    let device = Arc::new(FakeDevice::new());
    /// Each published key, with the key the device held at that moment.
    type Published = Arc<Mutex<Vec<(Key, Option<Key>)>>>;
    let published: Published = Arc::default();
    let (handle, task) = Wireguard::start(WireguardConfig {
        device: device.clone(),
        datapath: Arc::new(FakeDatapath::new()),
        key,
        key_file: key_file.clone(),
        socket: "/run/wireguard/plexus_wg0.sock".into(),
        strict: true,
        publish: {
            let (published, device) = (published.clone(), device.clone());
            // What the device holds at the moment the Node is published.
            Box::new(move |k| {
                published
                    .lock()
                    .unwrap()
                    .push((k, device.info().public_key))
            })
        },
        kernel: None,
        records_file: None,
    });
    let thread = std::thread::spawn(move || task.run());
    handle.set_desired(two_peers(), vec![], settled());
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.status().peers != 2 {
        assert!(Instant::now() < deadline, "the sync thread never synced");
        std::thread::sleep(Duration::from_millis(10));
    }
    let old = handle.public_key();
    assert_eq!(device.info().public_key, Some(old));

    let new = handle.rotate_key(Duration::from_secs(5)).unwrap();
    assert_ne!(new, old);
    assert_eq!(handle.public_key(), new);
    assert_eq!(NodeKey::load(&key_file).unwrap().public_key(), new);
    assert_eq!(device.info().public_key, Some(new));
    assert_eq!(
        published.lock().unwrap().clone(),
        vec![(new, Some(new))],
        "published once the device answers to the new key"
    );
    assert_eq!(device.info().peers.len(), 2, "peers untouched");

    device.set_unreachable(true);
    let err = handle.rotate_key(Duration::from_secs(5)).unwrap_err();
    assert!(err.contains("connection refused"), "{err}");
    let newer = handle.public_key();
    assert_ne!(newer, new);
    assert_eq!(NodeKey::load(&key_file).unwrap().public_key(), newer);
    device.set_unreachable(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while device.info().public_key != Some(newer) {
        assert!(Instant::now() < deadline, "the device never got the key");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(handle);
    thread.join().unwrap();
}

/// A restarted agent starts with an empty desired state: it must not remove the peers (and
/// so the sessions) of clusters whose nodes it has not listed yet. It knows whose each peer is
/// from its predecessor's records; a peer nobody recorded goes at once.
#[test]
fn a_restarted_agent_keeps_the_peers_of_clusters_it_has_not_listed_yet() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("wireguard-peers.json");
    let mut f = fixture();
    f.sync = WireguardSync::new(
        f.device.clone(),
        f.datapath.clone(),
        f.private.private_key(),
    )
    .with_records(records.clone());
    f.sync.set_desired(two_peers(), vec![], settled());
    f.sync.sync().unwrap();
    let text = std::fs::read_to_string(&records).unwrap();
    assert!(text.contains(r#""node": "m2""#), "{text}");
    // Someone's own peer, which no agent recorded.
    let stranger: Key = "aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28="
        .parse()
        .unwrap();
    use plexus_agent::shell::wireguard::WireguardDevice;
    f.device
        .set(&plexus_wireguard::uapi::SetDevice {
            peers: vec![plexus_wireguard::uapi::SetPeer::new(stranger)],
            ..Default::default()
        })
        .unwrap();
    let sets = f.device.sets().len();

    // The next agent: only its own cluster listed, c2's nodes not yet.
    let mut next = WireguardSync::new(
        f.device.clone(),
        f.datapath.clone(),
        f.private.private_key(),
    )
    .with_records(records.clone());
    next.set_desired(WireguardPeers::new(), vec![], ["c1".to_string()].into());
    next.sync().unwrap();
    assert_eq!(
        f.device.sets()[sets..]
            .iter()
            .map(|r| r.to_uapi())
            .collect::<Vec<_>>(),
        vec![format!(
            "set=1\npublic_key={}\nremove=true\n\n",
            stranger.to_hex()
        )],
        "only the stranger goes"
    );
    assert_eq!(marked(&f.datapath), ips(&["192.168.2.1", "192.168.2.2"]));

    // c2 lists m1 (m2 vanished meanwhile): m2 stays until c2 has synced.
    next.set_desired(
        [peer(K_M1, "m1", "192.168.2.1", "192.168.2.1/32")].into(),
        vec![],
        ["c1".to_string()].into(),
    );
    next.sync().unwrap();
    assert_eq!(f.device.info().peers.len(), 2);
    next.set_desired(
        [peer(K_M1, "m1", "192.168.2.1", "192.168.2.1/32")].into(),
        vec![],
        settled(),
    );
    next.sync().unwrap();
    let info = f.device.info();
    assert_eq!(info.peers.len(), 1);
    assert_eq!(info.peers[0].public_key, key(K_M1));
    assert_eq!(marked(&f.datapath), ips(&["192.168.2.1"]));
    let text = std::fs::read_to_string(&records).unwrap();
    assert!(!text.contains(r#""node": "m2""#), "{text}");
}

/// A node that publishes this node's own key (a copied key file) is no peer: the device would
/// refuse the whole request, and the other peers with it.
#[test]
fn a_node_with_this_nodes_own_key_is_no_peer() {
    let mut f = fixture();
    let mut desired = two_peers();
    let own = f.private.public_key();
    let (_, mut twin) = peer(K_M1, "twin", "192.168.2.9", "192.168.2.9/32");
    twin.public_key = own;
    desired.insert(own, twin);
    f.sync.set_desired(desired, vec![], settled());
    f.sync.sync().unwrap();
    let keys: Vec<Key> = f.device.info().peers.iter().map(|p| p.public_key).collect();
    assert_eq!(keys, vec![key(K_M1), key(K_M2)]);
    assert_eq!(marked(&f.datapath), ips(&["192.168.2.1", "192.168.2.2"]));
}
