//! Keys read from a kvstore (relative to their prefix, as a WatchStore hands them out), and
//! the prefixes and masks inside them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plexus_model::keys;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = keys::parse_node_key(text);
    let _ = keys::parse_service_key(text);
    let _ = keys::parse_ip_key(text);
    let _ = keys::parse_identity_id_key(text);
    let _ = keys::parse_identity_value_key(text);
    let _ = plexus_model::labels::Label::parse(text);
    if let Ok(cidr) = text.parse::<plexus_model::cidr::Cidr>() {
        let _ = cidr.network();
        let _ = cidr.mask_base64();
    }
    // A mask as ipcache entries carry it (base64), for both address families.
    for addr in ["10.0.0.0", "fd00::"] {
        if let Ok(addr) = addr.parse() {
            let _ = plexus_model::cidr::prefix_len_from_mask(addr, text);
        }
    }
    let _ = plexus_model::time::parse_rfc3339(text);
});
