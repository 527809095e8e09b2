//! Compiles `bpf/plexus.c` into `plexus.bpf.o` in `OUT_DIR` with clang (`-target bpf`).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let bpf_dir = PathBuf::from("bpf");
    rerun_for_dir(&bpf_dir);
    println!("cargo:rerun-if-env-changed=PLEXUS_CLANG");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join("plexus.bpf.o");
    let clang = env::var("PLEXUS_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let status = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-Wall",
            "-Werror",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
        ])
        .arg(bpf_dir.join("plexus.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {clang} to build the BPF object (apt-get install clang libbpf-dev): {e}"
            )
        });
    assert!(status.success(), "{clang} failed to compile bpf/plexus.c");
}

fn rerun_for_dir(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rerun_for_dir(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
