//! An identity published by a remote cluster (`cilium/state/identities/v1/id/<id>`, value:
//! its labels in the kvstore form `source:key=value;...`): key line, then the value.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, value) = plexus_fuzz::key_value(data);
    let decode = plexus_clustermesh::validate::identity_decoder(plexus_fuzz::remote());
    let _ = decode(&key, value);
    if let Ok(text) = std::str::from_utf8(value)
        && let Ok(labels) = plexus_model::labels::Labels::parse(text)
    {
        let _ = labels.to_kvstore_string();
        let _ = labels.cluster();
    }
    let _ = plexus_model::keys::parse_identity_value_key(&key);
    let _ = key.parse::<plexus_model::identity::NumericIdentity>();
});
