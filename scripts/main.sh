#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: set-up, then the kvstore benchmarks against
# a real etcd started on loopback (put -> watch latency, WatchStore ingest vs plain JSON decoding).
# It prints the figures recorded in BENCHMARKS.md. The lab walkthrough replaces this job once the
# lab exists.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo bench --locked -p plexus-kvstore --bench kvstore "$@"
