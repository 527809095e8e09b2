//! Records of the datapath's event ring buffer (trace, drop, translation and policy-verdict
//! events written by the BPF programs), as the agent's reader decodes them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = plexus_datapath::MonitorEvent::decode(data) {
        let _ = format!("{event:?}");
    }
});
