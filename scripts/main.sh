#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: set-up, then the benchmarks against real
# etcd processes started on loopback: kvstore (put -> watch latency, WatchStore ingest vs plain
# JSON decoding) and clustermesh (propagation direct and through KVStoreMesh, 100k resync, memory
# per remote entry). It prints the figures recorded in BENCHMARKS.md. The lab walkthrough replaces
# this job once the lab exists.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo bench --locked -p plexus-kvstore --bench kvstore
cargo bench --locked -p plexus-clustermesh --bench clustermesh
