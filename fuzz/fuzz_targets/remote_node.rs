//! A node entry published by a remote cluster (`cilium/state/nodes/v1/<cluster>/<node>`):
//! key line, then the JSON value, through the consumer's decoder and into ipcache entries.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = plexus_fuzz::key_value(data);
    let decode = plexus_clustermesh::validate::node_decoder(plexus_fuzz::remote());
    if let Ok(node) = decode(&key, value) {
        let _ = plexus_ipcache::from_node(&node, 2, false);
        let _ = node.internal_ip();
    }
});
