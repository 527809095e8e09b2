#!/usr/bin/env bash
# Lab benchmark (as root): pod-to-pod TCP throughput (iperf3, one stream) and 1-byte TCP
# request/response rate, across nodes and across clusters, in tunnel and in native mode,
# beside the same topology routed by the kernel without Plexus's programs, in the same run:
# "kernel" pods are plain veth namespaces on the same node namespaces, reached through kernel
# routes (native) or through a kernel VXLAN device between the two nodes (tunnel).
# Then encryption (issue 13), side by side in the same run, between pods on two nodes of one
# cluster: unencrypted, with Plexus's WireGuard (plexus-wireguard per node), and with Debian's
# wireguard-go as the device carrying the same pod traffic between the same node namespaces
# (`lab up --wireguard-device wireguard-go`), each with the CPU time it costs.
# Then flows (issue 14): the same pods with the agents' flow pipeline on and off
# (`enable-flows`), alternating on/off/on/off in one lab, with the agents' CPU time.
# Seconds per measurement: PLEXUS_BENCH_SECONDS (default 5). Parts: PLEXUS_BENCH_PARTS
# (default "datapath encryption flows"); modes of the encryption part: PLEXUS_BENCH_MODES (default
# "tunnel native").
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
cargo build --release --workspace --bins --locked 2>&1 | tail -1
P="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/plexus"
work=$(mktemp -d)
export PLEXUS_LAB_DIR="$work/lab" PLEXUS_CONFIG="$work/config.yaml"
secs=${PLEXUS_BENCH_SECONDS:-5}
parts=${PLEXUS_BENCH_PARTS:-datapath encryption flows}
ip_of() { "$P" --context "$1" get pods "$2" -o json | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p'; }

cleanup() {
  "$P" lab down >/dev/null 2>&1 || true
  for ns in plx-bench-ka plx-bench-kb plx-bench-kc; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

gbps() { awk '/sender/ {for (i=1;i<=NF;i++) if ($i ~ /bits\/sec/) {v=$(i-1); u=$i}} END {if (u ~ /^G/) print v; else if (u ~ /^M/) printf "%.2f\n", v/1000; else print v}'; }

# A plain "pod" on node namespace $1: namespace $2, address $3, MTU $4; no Plexus program on it.
kernel_pod() {
  local node=$1 ns=$2 ip=$3 mtu=$4 host="k${2##*-}"
  ip netns add "$ns"
  ip -n "$node" link add "$host" mtu "$mtu" type veth peer name eth0 mtu "$mtu" netns "$ns"
  ip -n "$node" addr add 169.254.1.1/32 dev "$host"
  ip -n "$node" link set "$host" up
  ip -n "$node" route add "$ip/32" dev "$host"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$ip/32" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add 169.254.1.1 dev eth0 scope link
  ip -n "$ns" route add default via 169.254.1.1 dev eth0
}

measure() { # $1 label, $2 run-in-client command prefix (array name), $3 target ip
  local label=$1 target=$3; shift 3
  local tput rr
  tput=$("$@" iperf3 -c "$target" -t "$secs" -f g | gbps)
  rr=$("$@" "$P" lab bench-rr --to "$target:7000" --seconds "$secs")
  printf '  %-44s %8s Gbit/s %10s trans/s\n' "$label" "$tput" "$rr"
}

echo "lab benchmark: ${secs}s per figure, $(nproc) cores, kernel $(uname -r)"
for mode in tunnel native; do
  [[ " $parts " == *" datapath "* ]] || break
  cat > "$work/lab.yaml" <<EOF
clusters:
- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}
- {name: cluster2, id: 2, podCIDR: 10.20.0.0/16, serviceCIDR: 10.21.0.0/16, nodes: 2}
routing: $mode
EOF
  "$P" lab up -f "$work/lab.yaml" --mesh --name bench >/dev/null 2>&1
  for c in cluster1 cluster2; do
    node=$([ "$c" = cluster1 ] && echo cluster1-node2 || echo cluster2-node1)
    cat > "$work/$c.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: $node
  containers:
  - {name: iperf, image: iperf3, command: [iperf3, -s]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  nodeName: $node
  containers:
  - {name: echo, image: echo, command: ["$P", lab, bench-echo, --port, "7000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: $c-node1
  containers:
  - {name: client, image: busybox, command: [sleep, "3600"]}
EOF
    "$P" --context "$c" apply -f "$work/$c.yaml" >/dev/null
  done
  s1=$(ip_of cluster1 server); e1=$(ip_of cluster1 echo); s2=$(ip_of cluster2 server); e2=$(ip_of cluster2 echo)
  sleep 1
  echo
  echo "$mode mode                                       throughput       request/response"
  # The echo pods have their own addresses: measure against each pod's own service.
  tput=$("$P" --context cluster1 exec client -- iperf3 -c "$s1" -t "$secs" -f g | gbps)
  rr=$("$P" --context cluster1 exec client -- "$P" lab bench-rr --to "$e1:7000" --seconds "$secs")
  printf '  %-44s %8s Gbit/s %10s trans/s\n' "Plexus, pod -> pod across nodes" "$tput" "$rr"
  tput=$("$P" --context cluster1 exec client -- iperf3 -c "$s2" -t "$secs" -f g | gbps)
  rr=$("$P" --context cluster1 exec client -- "$P" lab bench-rr --to "$e2:7000" --seconds "$secs")
  printf '  %-44s %8s Gbit/s %10s trans/s\n' "Plexus, pod -> pod across clusters" "$tput" "$rr"

  # Kernel baseline on the same node namespaces.
  n1=plx-bench-cluster1-n1; n2=plx-bench-cluster1-n2; m1=plx-bench-cluster2-n1
  mtu=$([ "$mode" = tunnel ] && echo 1450 || echo 1500)
  kernel_pod "$n1" plx-bench-ka 10.250.1.2 "$mtu"
  kernel_pod "$n2" plx-bench-kb 10.250.2.2 "$mtu"
  kernel_pod "$m1" plx-bench-kc 10.250.3.2 "$mtu"
  if [ "$mode" = native ]; then
    ip -n "$n1" route add 10.250.2.2/32 via 172.31.1.12
    ip -n "$n2" route add 10.250.1.2/32 via 172.31.1.11
    ip -n "$n1" route add 10.250.3.2/32 via 172.31.2.11
    ip -n "$m1" route add 10.250.1.2/32 via 172.31.1.11
  else
    # Point-to-point kernel VXLAN links (port 4789; Plexus's device uses 8472).
    vx() { # node, name, local, remote, vni, addr/30, peer addr, route
      ip -n "$1" link add "$2" type vxlan id "$5" local "$3" remote "$4" dstport 4789 dev eth0
      ip -n "$1" addr add "$6" dev "$2"; ip -n "$1" link set "$2" up
      ip -n "$1" route add "$8/32" via "$7" dev "$2"
    }
    vx "$n1" kvx12 172.31.1.11 172.31.1.12 100 10.251.0.1/30 10.251.0.2 10.250.2.2
    vx "$n2" kvx21 172.31.1.12 172.31.1.11 100 10.251.0.2/30 10.251.0.1 10.250.1.2
    vx "$n1" kvx13 172.31.1.11 172.31.2.11 101 10.251.0.5/30 10.251.0.6 10.250.3.2
    vx "$m1" kvx31 172.31.2.11 172.31.1.11 101 10.251.0.6/30 10.251.0.5 10.250.1.2
  fi
  for ns in plx-bench-kb plx-bench-kc; do
    nsenter --net=/run/netns/$ns iperf3 -s -D >/dev/null
    nsenter --net=/run/netns/$ns "$P" lab bench-echo --port 7000 >/dev/null 2>&1 &
  done
  sleep 1
  measure "kernel, plain veth pods across nodes" x 10.250.2.2 nsenter --net=/run/netns/plx-bench-ka
  measure "kernel, plain veth pods across clusters" x 10.250.3.2 nsenter --net=/run/netns/plx-bench-ka
  for ns in plx-bench-kb plx-bench-kc; do
    ip netns pids "$ns" | xargs -r kill 2>/dev/null || true
  done
  for ns in plx-bench-ka plx-bench-kb plx-bench-kc; do ip netns del "$ns"; done
  "$P" lab down >/dev/null 2>&1
done

# Encryption: unencrypted, plexus-wireguard and wireguard-go between the same two nodes.
hz=$(getconf CLK_TCK)
# The benchmark's pods on cluster1: an iperf3 server and a 1-byte TCP echo server on
# cluster1-node2, a client on cluster1-node1 (the encryption and flows parts).
bench_pods() {
  sed "s#PLEXUS#$P#" > "$work/pods.yaml" <<'PODS'
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  nodeName: cluster1-node2
  containers:
  - {name: iperf, image: iperf3, command: [iperf3, -s]}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  nodeName: cluster1-node2
  containers:
  - {name: echo, image: echo, command: ["PLEXUS", lab, bench-echo, --port, "7000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeName: cluster1-node1
  containers:
  - {name: client, image: busybox, command: [sleep, "3600"]}
PODS
  "$P" --context cluster1 apply -f "$work/pods.yaml" >/dev/null
}

# Busy jiffies of the whole machine (user, nice, system, irq, softirq): the kernel's share of a
# userspace tunnel (TUN, UDP, softirq) is charged to no process of its own.
busy() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }
# utime+stime of processes (the WireGuard devices), in jiffies.
jiffies_of() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
# CPU seconds per Gbit moved, i.e. (CPU s per s) per Gbit/s: $1 jiffies, $2 Gbit/s.
per_gbit() { awk -v j="$1" -v hz="$hz" -v g="$2" -v s="$secs" 'BEGIN {printf "%.2f", j/hz/(g*s)}'; }
# CPU microseconds per transaction: $1 jiffies, $2 trans/s.
per_tx() { awk -v j="$1" -v hz="$hz" -v r="$2" -v s="$secs" 'BEGIN {printf "%.0f", j/hz*1e6/(r*s)}'; }
if [[ " $parts " == *" encryption "* ]]; then
# One row: $1 label, $2 device pids (a list, may be empty), $3 iperf3 server, $4 echo address.
measure_enc() {
  local label=$1 devs=$2 server=$3 echo=$4 b0 d0 b1 d1 tput rr all_g dev_g all_t dev_t
  b0=$(busy); d0=$(jiffies_of $devs)
  tput=$("$P" --context cluster1 exec client -- iperf3 -c "$server" -t "$secs" -f g | gbps)
  b1=$(busy); d1=$(jiffies_of $devs)
  all_g=$(per_gbit $((b1 - b0)) "$tput"); dev_g=$(per_gbit $((d1 - d0)) "$tput")
  b0=$(busy); d0=$(jiffies_of $devs)
  rr=$("$P" --context cluster1 exec client -- "$P" lab bench-rr --to "$echo:7000" --seconds "$secs")
  b1=$(busy); d1=$(jiffies_of $devs)
  all_t=$(per_tx $((b1 - b0)) "$rr"); dev_t=$(per_tx $((d1 - d0)) "$rr")
  printf '  %-24s %6s Gbit/s  %5s %5s    %7s trans/s  %5s %5s\n' \
    "$label" "$tput" "$all_g" "$dev_g" "$rr" "$all_t" "$dev_t"
}

echo
echo "encryption: pod on cluster1-node1 -> pod on cluster1-node2"
echo "CPU: whole machine (all) and the two WireGuard device processes (dev)"
for mode in ${PLEXUS_BENCH_MODES:-tunnel native}; do
  echo
  echo "$mode mode                 throughput   CPU s/Gbit     request/response  CPU us/trans"
  echo "                                           all   dev                          all   dev"
  for variant in none plexus wireguard-go; do
    enc=wireguard; device=plexus
    case $variant in
      none) enc=none; label="unencrypted" ;;
      plexus) label="Plexus WireGuard" ;;
      wireguard-go) device=wireguard-go; label="wireguard-go (Debian)" ;;
    esac
    printf 'clusters:\n- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}\nrouting: %s\nencryption: %s\n' \
      "$mode" "$enc" > "$work/lab.yaml"
    "$P" lab up -f "$work/lab.yaml" --name bench --wireguard-device "$device" >/dev/null 2>&1
    bench_pods
    server=$(ip_of cluster1 server); echo_ip=$(ip_of cluster1 echo)
    devs=$(jq -r '[.clusters[].nodes[]["wireguard-pid"] // empty | tostring] | join(" ")' "$PLEXUS_LAB_DIR/lab.json")
    # The first packets wait for the WireGuard handshake: measure once a ping passes.
    for _ in $(seq 50); do
      "$P" --context cluster1 exec client -- ping -c 1 -W 1 "$server" >/dev/null 2>&1 && break
      sleep 0.2
    done
    measure_enc "$label" "$devs" "$server" "$echo_ip"
    "$P" lab down >/dev/null 2>&1
  done
done
fi

[[ " $parts " == *" flows "* ]] || exit 0
echo
echo "flows: pod on cluster1-node1 -> pod on cluster1-node2 (tunnel), agents' flows on and off"
echo "agent CPU: utime+stime of the two agents over the measurement"
echo
echo "flows   TCP throughput  agent CPU s   UDP 1200 B throughput  agent CPU s   request/response  agent CPU s"
printf 'clusters:\n- {name: cluster1, id: 1, podCIDR: 10.10.0.0/16, serviceCIDR: 10.11.0.0/16, nodes: 2}\nrouting: tunnel\n' > "$work/lab.yaml"
"$P" lab up -f "$work/lab.yaml" --name bench >/dev/null 2>&1
bench_pods
server=$(ip_of cluster1 server); echo_ip=$(ip_of cluster1 echo)
agents() { jq -r '[.clusters[].nodes[]["agent-pid"] // empty | tostring] | join(" ")' "$PLEXUS_LAB_DIR/lab.json"; }
cpu_s() { awk -v j="$1" -v hz="$hz" 'BEGIN {printf "%.2f", j/hz}'; }
for flows in true false true false; do
  "$P" lab agent-options cluster1 "enable-flows=$flows" >/dev/null
  for _ in $(seq 50); do
    "$P" --context cluster1 exec client -- ping -c 1 -W 1 "$server" >/dev/null 2>&1 && break
    sleep 0.2
  done
  pids=$(agents)
  a0=$(jiffies_of $pids)
  tput=$("$P" --context cluster1 exec client -- iperf3 -c "$server" -t "$secs" -f g | gbps)
  a1=$(jiffies_of $pids)
  udp=$("$P" --context cluster1 exec client -- iperf3 -u -b 2G -l 1200 -c "$server" -t "$secs" -f g | gbps)
  a2=$(jiffies_of $pids)
  rr=$("$P" --context cluster1 exec client -- "$P" lab bench-rr --to "$echo_ip:7000" --seconds "$secs")
  a3=$(jiffies_of $pids)
  printf '%-6s %9s Gbit/s %10s %14s Gbit/s %14s %12s trans/s %10s\n' "$([[ $flows == true ]] && echo on || echo off)" \
    "$tput" "$(cpu_s $((a1 - a0)))" "$udp" "$(cpu_s $((a2 - a1)))" "$rr" "$(cpu_s $((a3 - a2)))"
done
"$P" lab down >/dev/null 2>&1
