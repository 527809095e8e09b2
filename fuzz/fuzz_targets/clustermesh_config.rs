//! A remote cluster's configuration file (`clustermesh-config/<cluster>`: endpoints and TLS
//! files, YAML): the file name on the first line, then its contents.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (name, contents) = plexus_fuzz::key_value(data);
    let Ok(contents) = std::str::from_utf8(contents) else {
        return;
    };
    let path = std::path::Path::new("/etc/plexus/clustermesh").join(&name);
    let _ = plexus_clustermesh::config::parse(&name, &path, contents);
});
