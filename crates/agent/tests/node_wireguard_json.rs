//! The Node an agent publishes, as the literal JSON under `cilium/state/nodes/v1/<cluster>/<node>`:
//! with WireGuard on, `WireguardPubKey` holds the node's public key (standard base64, as `wg
//! pubkey` prints it) and `EncryptionKey` is 255, Cilium's `wgTypes.StaticEncryptKey`; without
//! it both stay empty, so Cilium peers read either the same way. The key is the one kept in the
//! state dir, generated once.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use plexus_agent::Options;
use plexus_agent::daemon::{WIREGUARD_KEY_FILE, own_node};
use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};
use plexus_wireguard::NodeKey;

fn options(state_dir: &Path, wireguard: bool) -> Options {
    let yaml = format!(
        "cluster-name: cluster1\ncluster-id: 1\nnode-name: node-1\nnode-ip: 172.18.0.3\n\
         pod-cidr: 10.10.0.0/16\nstate-dir: {}\netcd-endpoints: https://10.0.0.10:2379\n\
         clustermesh-config: /etc/plexus/clustermesh\napi-socket: /run/plexus/agent.sock\n\
         enable-wireguard: {wireguard}\n",
        state_dir.display()
    );
    let file = Path::new("/etc/plexus/agent.yaml");
    Options::resolve(plexus_config::from_yaml(&yaml, file).unwrap(), Some(file)).unwrap()
}

fn node_json(o: &Options, key: Option<&str>) -> serde_json::Value {
    let cluster = ClusterInfo::new("cluster1", 1, MaxConnectedClusters::Max255).unwrap();
    let node = own_node(
        o,
        &cluster,
        "10.10.1.0/24".parse().unwrap(),
        "10.10.1.1".parse().unwrap(),
        key,
    );
    serde_json::from_slice(&serde_json::to_vec(&node).unwrap()).unwrap()
}

fn expected(key: &str, encryption_key: u8) -> serde_json::Value {
    serde_json::from_str(&format!(
        r#"{{"Name":"node-1","Cluster":"cluster1",
 "IPAddresses":[{{"Type":"InternalIP","IP":"172.18.0.3"}},{{"Type":"CiliumInternalIP","IP":"10.10.1.1"}}],
 "IPv4AllocCIDR":{{"IP":"10.10.1.0","Mask":"////AA=="}},"IPv4SecondaryAllocCIDRs":null,
 "IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"",
 "IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":1,"Source":"","EncryptionKey":{encryption_key},
 "Labels":{{}},"Annotations":{{}},"WireguardPubKey":"{key}","BootID":""}}"#
    ))
    .unwrap()
}

#[test]
fn with_wireguard_the_node_publishes_its_key_and_cilium_static_encrypt_key() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(dir.path(), true);
    assert!(o.enable_wireguard);
    let key_file = o.state_dir.join(WIREGUARD_KEY_FILE);
    assert_eq!(key_file, dir.path().join("plexus_wg0.key"));
    let key = NodeKey::load_or_create(&key_file).unwrap();
    let public = key.public_base64();
    assert_eq!(node_json(&o, Some(&public)), expected(&public, 255));

    // The published key is the file's, as `wg pubkey` derives it.
    let mut wg = Command::new("wg")
        .arg("pubkey")
        .stdin(std::fs::File::open(&key_file).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(wg.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(wg.wait().unwrap().success());
    assert_eq!(out.trim(), public);
    // The next start reads the same key.
    assert_eq!(
        NodeKey::load_or_create(&key_file).unwrap().public_base64(),
        public
    );
}

#[test]
fn without_wireguard_the_node_has_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let o = options(dir.path(), false);
    assert_eq!(node_json(&o, None), expected("", 0));
}
