//! A global service published by a remote cluster (`cilium/state/services/v1/<cluster>/<ns>/
//! <name>`, a ClusterService): key line, then the JSON value, through the consumer's decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = plexus_fuzz::key_value(data);
    let decode = plexus_clustermesh::validate::service_decoder(plexus_fuzz::remote());
    if let Ok(svc) = decode(&key, value) {
        let _ = serde_json::to_vec(&svc);
    }
});
