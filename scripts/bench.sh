#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, on a fresh Debian 12 machine, as root: kvstore (put -> watch
# latency, WatchStore ingest), clustermesh (propagation direct and through KVStoreMesh, 100k
# resync, memory per remote entry, ingest of a global service with 10,000 backends), the scale
# bench (250 simulated remotes through KVStoreMesh to one eBPF agent), the load
# balancer (connection set-up latency with 100 to 30,000 services beside kube-proxy's iptables
# DNAT), policy (per-packet lookup cost, recompute when 10,000 identities arrive), the agent's
# reconciliation latency (on change beside a 200 ms tick), the agent process's memory per remote
# ipcache entry and after a drain, the WireGuard core (encapsulate and
# decapsulate in memory, beside the AEAD alone and a copy), the WireGuard device (plexus-wireguard
# beside wireguard-go through iperf3 between two netns), then the lab
# (pod-to-pod throughput and request/response, tunnel and native, beside kernel routing).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo bench --locked -p plexus-kvstore --bench kvstore
cargo bench --locked -p plexus-clustermesh --bench clustermesh
# The scale bench needs the agent built with the bench profile beside it.
cargo build --locked --release -p plexus-agent --bin plexus-agent
cargo bench --locked -p plexus-lab --bench scale
cargo bench --locked -p plexus-datapath --bench lb_connect
cargo bench --locked -p plexus-datapath --bench lb_program
cargo bench --locked -p plexus-datapath --bench policy_lookup
cargo bench --locked -p plexus-policy --bench policy
cargo bench --locked -p plexus-agent --bench reconcile
cargo bench --locked -p plexus-agent --bench memory
cargo bench --locked -p plexus-agent --bench service_ingest
cargo bench --locked -p plexus-wireguard --bench tunn
./scripts/bench-wg.sh
./scripts/bench-lab.sh
