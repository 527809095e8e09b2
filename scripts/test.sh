#!/usr/bin/env bash
# Runs every Plexus test on a fresh Debian 12 machine, as root: set-up included.
# Unit tests, the shared kvstore suite against the in-memory store and real etcd processes
# (plain and mTLS), identity allocation on etcd, doc tests; then every fuzz target for
# PLEXUS_FUZZ_SECONDS each (default 10; 0 skips them), from its committed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Integration tests run the daemons and the CLI as processes: build every binary first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
fuzz_seconds=${PLEXUS_FUZZ_SECONDS:-10}
if ((fuzz_seconds > 0)); then
  ./scripts/fuzz.sh "$fuzz_seconds"
fi
