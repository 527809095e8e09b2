#!/usr/bin/env bash
# Chaos soak (as root): a 2 x 2 lab (tunnel routing) with the soak's workload
# (examples/chaos/soak.yaml: a global service, echo and client pods, a policy in each cluster),
# then `plexus lab chaos`: cross-cluster HTTP requests (pod addresses, the global service's
# address, its DNS name) and long TCP streams while agents, apiservers, etcd and kube-dns are
# SIGKILLed and brought back at random; then every node's ipcache, load-balancing, endpoints
# and policy are checked against the stores. See docs/reliability.md.
#
#   scripts/chaos.sh                 # 10 minutes, seed 1
#   scripts/chaos.sh 90s 17          # length and seed
#   CHAOS_ARGS="-o json" scripts/chaos.sh 10m 1 > report.json
#
# Exits with the soak's status: 0 when no failed request is left unexplained and every node
# equals the stores' truth. The lab is removed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10m}
seed=${2:-1}
./scripts/setup.sh >/dev/null
cargo build --workspace --bins --locked 2>&1 | tail -1 >&2
P="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/plexus"
work=$(mktemp -d)
export PLEXUS_LAB_DIR="$work/lab" PLEXUS_CONFIG="$work/config.yaml"
cleanup() {
  "$P" lab down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/lab.yaml" <<'LAB'
clusters:
- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}
- {name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 2}
routing: tunnel
LAB
echo "chaos soak: $duration, seed $seed, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$P" lab up -f "$work/lab.yaml" --name chaos --mesh >&2
for ctx in cluster1 cluster2; do
  "$P" --context "$ctx" apply -f examples/chaos/soak.yaml >&2
done
# shellcheck disable=SC2086 # CHAOS_ARGS is a list of flags
"$P" lab chaos --duration "$duration" --seed "$seed" ${CHAOS_ARGS:-}
