//! A zone file given to `plexus-dns --zone-file`: the origin on the first line, then the file.
#![no_main]
use hickory_proto::rr::{DNSClass, Name, RecordType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (origin, text) = plexus_fuzz::key_value(data);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Ok(zone) = plexus_dns::Zone::parse(text, &origin, "fuzz.zone")
        && let Ok(name) = Name::from_ascii(format!("www.{origin}"))
    {
        let _ = zone.respond(&name, RecordType::A, DNSClass::IN);
    }
});
