#![allow(clippy::unwrap_used)]
//! The built object holds the programs and maps the Rust side expects, and every program
//! passes the verifier of this kernel.

mod common;

use aya::{EbpfLoader, programs::SchedClassifier};
use plexus_datapath::object::{MAPS, PLEXUS_BPF_OBJECT, PROGRAMS};

#[test]
fn object_has_the_expected_programs_and_maps_and_they_verify() {
    let fs = common::Bpffs::new();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(fs.path())
        .load(PLEXUS_BPF_OBJECT)
        .unwrap();

    let mut programs: Vec<&str> = ebpf.programs().map(|(name, _)| name).collect();
    programs.sort_unstable();
    let mut expected = PROGRAMS.to_vec();
    expected.sort_unstable();
    assert_eq!(programs, expected);

    let mut maps: Vec<&str> = ebpf.maps().map(|(name, _)| name).collect();
    maps.sort_unstable();
    let mut expected = MAPS.to_vec();
    expected.sort_unstable();
    assert_eq!(maps, expected);

    for name in PROGRAMS {
        let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load()
            .unwrap_or_else(|e| panic!("{name} rejected by the verifier: {e:?}"));
    }
    // Every map is pinned by name in the given directory.
    for name in MAPS {
        assert!(fs.path().join(name).exists(), "{name} not pinned");
    }
}
