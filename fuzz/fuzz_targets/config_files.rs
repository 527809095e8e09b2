//! The daemons' configuration files (agent, apiserver and DNS server YAML), read as `--config` reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plexus_config::agent::AgentConfig;
use plexus_config::apiserver::ApiServerConfig;
use plexus_config::dns::DnsConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/etc/plexus/config.yaml");
    if let Ok(config) = plexus_config::from_yaml::<AgentConfig>(text, path) {
        let _ = plexus_config::to_yaml(&config);
    }
    if let Ok(config) = plexus_config::from_yaml::<ApiServerConfig>(text, path) {
        let _ = plexus_config::to_yaml(&config);
    }
    if let Ok(config) = plexus_config::from_yaml::<DnsConfig>(text, path) {
        let _ = plexus_config::to_yaml(&config);
    }
});
