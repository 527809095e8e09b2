//! The CNI plugin's input: its environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`) as `NAME=value` lines, a blank line, then the network
//! configuration JSON on standard input.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use plexus_cni::conf::{Env, NetConf, parse_cni_args, validate_ifname, version_hint};

fuzz_target!(|data: &[u8]| {
    let (env, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (String::from_utf8_lossy(&data[..i]), &data[i + 2..]),
        None => (String::from_utf8_lossy(data), &[][..]),
    };
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let var = |name: &str| vars.get(name).map(|v| v.to_string());
    let _ = Env::from_vars(&var);
    for value in vars.values() {
        let _ = parse_cni_args(value);
        let _ = validate_ifname(value);
    }
    let _ = version_hint(stdin);
    let _ = NetConf::parse(stdin);
});
