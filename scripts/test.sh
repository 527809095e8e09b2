#!/usr/bin/env bash
# Runs every Plexus test on a fresh Debian 12 machine, as root: set-up included.
# Unit tests, the shared kvstore suite against the in-memory store and real etcd processes
# (plain and mTLS), identity allocation on etcd, doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Integration tests run the daemons and the CLI as processes: build every binary first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
