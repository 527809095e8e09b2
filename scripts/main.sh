#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: the global-services walkthrough
# (examples/global-services/README.md) end to end. It builds Plexus, brings up the lab (two
# clusters of two nodes), enables ClusterMesh with one shared CA and connects the clusters,
# applies the walkthrough's files, and at each step sends requests `curl rebel-base` from x-wing
# and prints which cluster answered, in what share: both clusters, shared=false, affinity local
# (and its fallback), the cross-cluster policy (drops shown by the monitor and as flows through
# the relay, `plexus observe`), the failover when
# cluster2 stops and its return. It tears the lab down at
# the end; KEEP_LAB=1 leaves it up (then: plexus lab down).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== building"
cargo build --release --workspace --bins --locked 2>&1 | tail -1
P="$(pwd)/target/release/plexus"
ex=examples/global-services
export PLEXUS_LAB_DIR="${PLEXUS_LAB_DIR:-/run/plexus-lab}"
if [ "${KEEP_LAB:-0}" != 1 ]; then
  trap '"$P" lab down >/dev/null 2>&1 || true' EXIT
fi
step() { echo; echo "== $*"; }
run() { echo "\$ plexus $*"; "$P" "$@"; }

# ask CONTEXT N: N requests `curl rebel-base` from x-wing; prints the first answers and the share
# of each cluster (and of failed requests).
ask() {
  local ctx=$1 n=$2 out
  echo "\$ plexus --context $ctx exec deployment/x-wing -- curl -s rebel-base   # $n times"
  out=$("$P" --context "$ctx" exec deployment/x-wing -- sh -c \
    "for i in \$(seq $n); do curl -s --max-time 2 rebel-base || printf '{\"cluster\":\"(failed)\"}'; echo; done")
  # awk reads all of its input (head would close the pipe early, and pipefail would end the
  # script on the writer's SIGPIPE).
  echo "$out" | awk 'NF && shown < 3 { print "  " $0; shown++ }'
  echo "$out" | grep -o '"cluster":"[^"]*"' | cut -d'"' -f4 | sort | uniq -c |
    awk -v n="$n" '{printf "  %-10s answered %3d of %d (%d%%)\n", $2, $1, n, 100*$1/n}'
}

step "1. bring up the lab ($ex/lab.yaml)"
run lab up -f "$ex/lab.yaml"
run lab status

step "2. enable ClusterMesh with one shared CA, connect cluster1 and cluster2"
run clustermesh enable --context cluster1
run clustermesh enable --context cluster2
run clustermesh connect --context cluster1 --destination-context cluster2
run clustermesh status --context cluster1 --wait --wait-duration 2m
run clustermesh status --context cluster2 --wait --wait-duration 2m

step "3. rebel-base (global) and x-wing in both clusters; both clusters answer"
run --context cluster1 apply -f "$ex/cluster1.yaml"
run --context cluster2 apply -f "$ex/cluster2.yaml"
run --context cluster1 get pods
run --context cluster1 get pods -n kube-system
# Wait until cluster1 sees cluster2's backends.
for _ in $(seq 60); do
  "$P" --context cluster1 service list -o json | grep -q '"cluster": "cluster2"' && break
  sleep 1
done
echo "  cluster DNS: the kube-dns pod, and the resolv.conf every pod sees"
run --context cluster1 exec deployment/x-wing -- cat /etc/resolv.conf
run --context cluster1 service list
run --context cluster1 bpf lb list
ask cluster1 100
ask cluster2 100

step "4. io.cilium/shared-service=false on rebel-base in cluster1"
run --context cluster1 annotate service rebel-base io.cilium/shared-service=false
sleep 3
echo "cluster1 still uses both clusters:"
ask cluster1 20
echo "cluster2 now keeps to itself:"
ask cluster2 20
run --context cluster1 annotate service rebel-base io.cilium/shared-service-
sleep 3
echo "both again:"
ask cluster2 20

step "5. io.cilium/service-affinity=local on rebel-base in cluster1"
run --context cluster1 annotate service rebel-base io.cilium/service-affinity=local
sleep 3
ask cluster1 20
run --context cluster1 service list
echo "without local backends, cluster2 serves:"
run --context cluster1 delete deployment rebel-base
sleep 3
ask cluster1 20
echo "the rebel-base deployment again (only it: applying the Service would reset its annotations):"
awk 'BEGIN{RS="\n---\n"} /kind: Deployment/ && /name: rebel-base/' "$ex/cluster1.yaml" > /tmp/plexus-rebel-base.yaml
run --context cluster1 apply -f /tmp/plexus-rebel-base.yaml
sleep 3
echo "local backends are back: cluster1 serves alone again"
ask cluster1 20
run --context cluster1 annotate service rebel-base io.cilium/service-affinity-
sleep 3
ask cluster1 20

step "6. the cross-cluster policy (networkpolicy.yaml) in both clusters"
node=$("$P" --context cluster1 get pods | awk '/^x-wing/ {print $3}')
"$P" --context cluster1 --node "$node" monitor --type drop > /tmp/plexus-drops.txt 2>/dev/null &
mon=$!
run --context cluster1 apply -f "$ex/networkpolicy.yaml"
run --context cluster2 apply -f "$ex/networkpolicy.yaml"
sleep 3
echo "x-wing in cluster1 may reach rebel-base in cluster2 only; DNS still answers (allow-dns):"
ask cluster1 20
kill "$mon" 2>/dev/null || true
echo "the drops on $node, as monitor --type drop prints them:"
awk '/Policy denied/ && shown < 3 { print "  " $0; shown++ }' /tmp/plexus-drops.txt
run --context cluster1 endpoint get "$("$P" --context cluster1 get pods | awk '/^x-wing/ {print $1}')"
echo "the same drops as flows, from every node of both clusters through cluster1's relay:"
run --context cluster1 observe --verdict DROPPED --to-cluster cluster1 --last 3
echo "x-wing's service translations: the frontend and the backend each one chose, with its cluster:"
run --context cluster1 observe --from-pod default/x-wing --type translation --last 4
echo "removing the policies again (step 7 wants cluster1's backends):"
run --context cluster1 delete -f "$ex/networkpolicy.yaml"
run --context cluster2 delete -f "$ex/networkpolicy.yaml"
sleep 2

step "7. cluster2 goes down: within 10 s every new request is served by cluster1"
run lab stop cluster2
start=$(date +%s)
for _ in $(seq 30); do
  out=$("$P" --context cluster1 exec deployment/x-wing -- sh -c \
    'for i in $(seq 5); do curl -s --max-time 1 rebel-base || echo failed; echo; done')
  if ! echo "$out" | grep -q 'failed\|cluster2'; then break; fi
  sleep 0.5
done
echo "  every request served by cluster1 $(( $(date +%s) - start )) s after the stop"
ask cluster1 20
run clustermesh status --context cluster1
run lab start cluster2
run clustermesh status --context cluster1 --wait --wait-duration 2m
for _ in $(seq 60); do
  "$P" --context cluster1 exec deployment/x-wing -- sh -c \
    'for i in $(seq 10); do curl -s --max-time 1 rebel-base; echo; done' | grep -q cluster2 && break
  sleep 1
done
echo "cluster2 is back:"
ask cluster1 100

step "done"
if [ "${KEEP_LAB:-0}" = 1 ]; then
  echo "The lab is still up: try plexus --context cluster1 exec deployment/x-wing -- curl rebel-base; plexus lab down removes it."
else
  echo "Removing the lab."
fi
