//! An ipcache entry published by a remote cluster (`cilium/state/ip/v1/default/<ip>`): key
//! line, then the JSON value, through the consumer's decoder and into a datapath entry.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = plexus_fuzz::key_value(data);
    let decode = plexus_clustermesh::validate::ipcache_decoder(plexus_fuzz::remote());
    if let Ok(pair) = decode(&key, value) {
        let _ = plexus_ipcache::from_pair(&pair, 2);
        let _ = pair.identity();
    }
    // The raw decoder alone, whatever the key: every accessor must answer.
    if let Ok(pair) = plexus_model::ipcache::IpIdentityPair::from_json(&key, value) {
        let _ = pair.prefix();
        let _ = pair.key_suffix();
        let _ = pair.tunnel_endpoint();
    }
});
