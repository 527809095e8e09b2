//! Helpers shared by the fuzz targets of `fuzz_targets/`.
//!
//! Each target feeds one parser of remote data or of user input with the fuzzer's bytes; the
//! only property checked is that the parser returns (a value or an error) without panicking,
//! hanging or exhausting memory. Inputs that need a key and a value are written as the key on
//! the first line and the value after it, so the committed corpus stays readable.

use plexus_model::cluster::{ClusterInfo, MaxConnectedClusters};

/// Splits `data` at its first newline: the key (lossy UTF-8) and the value (raw bytes).
pub fn key_value(data: &[u8]) -> (String, &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => (String::from_utf8_lossy(data).into_owned(), &[]),
    }
}

/// The remote cluster every remote-data target decodes for: `cluster2`, id 2, of a 255-cluster
/// mesh (the seeds in `corpus/` are written for it).
pub fn remote() -> ClusterInfo {
    ClusterInfo::new("cluster2", 2, MaxConnectedClusters::Max255)
        .unwrap_or_else(|e| panic!("fixed remote cluster is valid: {e}"))
}
