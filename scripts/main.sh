#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: the lab walkthrough.
# It builds Plexus, brings up the lab of shared/examples/global-services (two clusters of two
# nodes), enables ClusterMesh with one shared CA and connects the clusters, deploys pods in both
# clusters, and shows pods reaching pods across nodes and clusters: which pod, node and cluster
# answered, with the source identity seen on the receiving node. It tears the lab down at the
# end; KEEP_LAB=1 leaves it up (then: plexus lab down).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== building"
cargo build --release --workspace --bins --locked 2>&1 | tail -1
P="$(pwd)/target/release/plexus"
lab_yaml="${LAB_YAML:-../shared/examples/global-services/lab.yaml}"
[ -f "$lab_yaml" ] || lab_yaml=examples/lab.yaml
work=$(mktemp -d)
export PLEXUS_LAB_DIR="${PLEXUS_LAB_DIR:-/run/plexus-lab}"
if [ "${KEEP_LAB:-0}" != 1 ]; then
  trap '"$P" lab down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fi
step() { echo; echo "== $*"; }
run() { echo "\$ plexus $*"; "$P" "$@"; }

step "1. bring up the lab ($lab_yaml)"
run lab up -f "$lab_yaml"
run lab status

step "2. enable ClusterMesh with one shared CA, connect cluster1 and cluster2"
run clustermesh enable --context cluster1
run clustermesh enable --context cluster2
run clustermesh connect --context cluster1 --destination-context cluster2
run clustermesh status --context cluster1 --wait --wait-duration 2m
run clustermesh status --context cluster2 --wait --wait-duration 2m

step "3. deploy rebel-base (2 replicas) and a client in both clusters"
for c in cluster1 cluster2; do
  cat > "$work/$c.yaml" <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: rebel-base}
spec:
  replicas: 2
  selector: {matchLabels: {name: rebel-base}}
  template:
    metadata: {labels: {name: rebel-base}}
    spec:
      containers:
      - {name: rebel-base, image: docker.io/nginx:1.15.8, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: x-wing, labels: {name: x-wing}}
spec:
  containers:
  - {name: x-wing, image: busybox, command: [sleep, "36000"]}
YAML
  run --context "$c" apply -f "$work/$c.yaml"
  run --context "$c" get pods
done
echo "  cluster DNS: the kube-dns pod, and the resolv.conf every pod sees"
run --context cluster1 get pods -n kube-system
run --context cluster1 exec x-wing -- cat /etc/resolv.conf

step "4. x-wing in cluster1 reaches every rebel-base pod, in both clusters, directly by IP"
for c in cluster1 cluster2; do
  for ip in $("$P" --context "$c" get pods | awk '/^rebel-base/ {print $2}'); do
    printf '  x-wing (cluster1) -> %-12s ' "$ip"
    "$P" --context cluster1 exec x-wing -- curl -s --max-time 5 "http://$ip/" || echo "(no answer)"
  done
done

step "5. what a cluster1 node knows about cluster2"
run --context cluster1 node list
run --context cluster1 identity list
run --context cluster1 bpf ipcache list

step "6. the receiving node sees the sender's identity (monitor --type trace on cluster2-node1)"
"$P" --context cluster2 --node cluster2-node1 monitor --type trace > "$work/monitor.txt" 2>/dev/null &
mon=$!
sleep 1
target=$("$P" --context cluster2 get pods -o json | awk '/"node": "cluster2-node1"/ {f=1} f && /"ip"/ {gsub(/[",]/,"",$2); print $2; exit}')
"$P" --context cluster1 exec x-wing -- ping -c 2 -W 2 "$target" >/dev/null || true
sleep 1
kill "$mon" 2>/dev/null || true
sed -n '1,6p' "$work/monitor.txt"

step "done"
if [ "${KEEP_LAB:-0}" = 1 ]; then
  echo "The lab is still up: try plexus --context cluster1 exec x-wing -- ping <ip>; plexus lab down removes it."
else
  echo "Removing the lab."
fi
