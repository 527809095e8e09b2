#!/usr/bin/env bash
# Throughput of the userspace WireGuard device, side by side: a pair of `plexus-wireguard`
# devices against a pair of Debian's `wireguard-go`, each pair in two network namespaces joined
# by a veth, tunnel MTU 1420, iperf3 through the tunnel: TCP (one stream, then 4 streams), then
# full-size UDP datagrams sent as fast as possible (goodput: what arrived), then TCP across a
# VXLAN overlay whose outer packets go through the tunnel (the agent's tunnel mode).
# Prints Gbit/s and the CPU the two device processes used (user+system, in cores), and cores per
# Gbit/s (lower is better). Background jobs are started with nsenter directly (not through a
# shell function), so $! is the device's own pid (nsenter, unshare and sh all exec). Run as root; uses namespaces named wgbench-<pid>-*, removed at exit.
#
#   scripts/bench-wg.sh [seconds]      (default 10 s per run)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -q -p plexus-wireguard --bin plexus-wireguard
dev_bin=$CARGO_TARGET_DIR/release/plexus-wireguard
command -v wireguard-go >/dev/null || { echo "wireguard-go missing (scripts/setup.sh)" >&2; exit 1; }

tag=wgbench-$$
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$tag-a" 2>/dev/null || true
  ip netns del "$tag-b" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$tag-$ns" "$@"; }
# `wg` against side $1's socket: a private mount namespace with $tmp/$1/run over /run.
wg_at() { local side=$1; shift; in_ns "$side" unshare --mount --propagation private \
  sh -c "mount --bind $tmp/$side/run /run && exec wg $*"; }

cpu_ticks() { # utime+stime of a pid, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

setup_netns() {
  for s in a b; do
    ip netns del "$tag-$s" 2>/dev/null || true
    ip netns add "$tag-$s"
    in_ns $s ip link set lo up
    rm -rf "${tmp:?}/$s"; mkdir -p "$tmp/$s/run/wireguard"
    (umask 077; wg genkey > "$tmp/$s/key")
  done
  in_ns a ip link add va type veth peer name vb netns "$tag-b"
  in_ns a ip addr add 192.168.78.1/24 dev va; in_ns a ip link set va up
  in_ns b ip addr add 192.168.78.2/24 dev vb; in_ns b ip link set vb up
}

start_device() { # $1 impl, $2 side
  local impl=$1 s=$2
  if [ "$impl" = plexus ]; then
    nsenter --net="/run/netns/$tag-$s" "$dev_bin" --interface wg0 --socket "$tmp/$s/run/wireguard/wg0.sock" \
      >"$tmp/$s.log" 2>&1 &
  else
    nsenter --net="/run/netns/$tag-$s" unshare --mount --propagation private sh -c \
      "mount --bind $tmp/$s/run /run && WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 exec wireguard-go -f wg0" \
      >"$tmp/$s.log" 2>&1 &
  fi
  pids+=($!)
  for _ in $(seq 100); do [ -S "$tmp/$s/run/wireguard/wg0.sock" ] && break; sleep 0.1; done
}

configure() { # $1 side, $2 peer side, $3 own tunnel ip, $4 peer tunnel ip, $5 peer underlay
  local s=$1 p=$2
  wg_at "$s" set wg0 private-key "$tmp/$s/key" listen-port 51871 \
    peer "$(wg pubkey < "$tmp/$p/key")" endpoint "$5:51871" allowed-ips "$4/32,$5/32"
  in_ns "$s" ip addr add "$3/24" dev wg0
  in_ns "$s" ip link set wg0 mtu 1420 up
  # Tunnel mode as the agent sets it up: VXLAN between the underlay addresses, its outer
  # packets (UDP 8472) steered into the WireGuard link by a policy rule.
  local me=$6 overlay=$7
  for k in all default wg0; do in_ns "$s" sysctl -q -w "net.ipv4.conf.$k.rp_filter=0"; done
  in_ns "$s" ip link add vx0 type vxlan id 42 local "$me" remote "$5" dstport 8472
  in_ns "$s" ip link set vx0 mtu 1370 up
  in_ns "$s" ip addr add "$overlay/24" dev vx0
  in_ns "$s" ip rule add ipproto udp dport 8472 lookup 100
  in_ns "$s" ip route add default dev wg0 table 100
}

run_pair() { # $1 impl; prints one line per iperf3 run
  local impl=$1
  setup_netns
  pids=()
  start_device "$impl" a
  local pa=${pids[-1]}
  start_device "$impl" b
  local pb=${pids[-1]}
  # wireguard-go's pid is that of the `unshare … exec` chain: the same process after the execs.
  configure a b 10.78.0.1 10.78.0.2 192.168.78.2 192.168.78.1 10.79.0.1
  configure b a 10.78.0.2 10.78.0.1 192.168.78.1 192.168.78.2 10.79.0.2
  in_ns a ping -q -c 3 -i 0.2 -W 2 10.78.0.2 >/dev/null
  nsenter --net="/run/netns/$tag-b" iperf3 -s -p 5201 >/dev/null 2>&1 &
  pids+=($!)
  sleep 0.3
  local hz; hz=$(getconf CLK_TCK)
  for run in tcp:1 tcp:4 udp:1 vxlan:1; do
    local proto=${run%%:*} streams=${run##*:}
    local c0; c0=$(( $(cpu_ticks "$pa") + $(cpu_ticks "$pb") ))
    local t0; t0=$(date +%s.%N)
    local bps
    if [ "$proto" = tcp ]; then
      bps=$(in_ns a iperf3 -c 10.78.0.2 -p 5201 -t "$secs" -P "$streams" -J \
        | jq '.end.sum_received.bits_per_second')
    elif [ "$proto" = vxlan ]; then
      # TCP across the VXLAN overlay, whose outer packets the device encrypts (tunnel mode).
      bps=$(in_ns a iperf3 -c 10.79.0.2 -p 5201 -t "$secs" -P "$streams" -J \
        | jq '.end.sum_received.bits_per_second')
    else
      # Full-size UDP datagrams as fast as the sender goes: one packet per TUN read and write,
      # no TCP offloads (the case of VXLAN traffic in tunnel mode). Counts what arrived.
      bps=$(in_ns a iperf3 -c 10.78.0.2 -p 5201 -t "$secs" -u -b 0 -l 1392 -J 2>/dev/null \
        | jq '.end.sum.bits_per_second * (100 - .end.sum.lost_percent) / 100')
    fi
    local t1; t1=$(date +%s.%N)
    local c1; c1=$(( $(cpu_ticks "$pa") + $(cpu_ticks "$pb") ))
    awk -v impl="$impl" -v st="$proto x$streams" -v bps="$bps" -v c="$((c1 - c0))" -v hz="$hz" \
      -v t0="$t0" -v t1="$t1" 'BEGIN {
        g = bps / 1e9; cores = c / hz / (t1 - t0);
        printf "%-16s %7s %10.2f %12.2f %14.2f\n", impl, st, g, cores, (g > 0 ? cores / g : 0) }'
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  ip netns del "$tag-a"; ip netns del "$tag-b"
}

printf "%-16s %7s %10s %12s %14s\n" device traffic Gbit/s "cpu (cores)" "cores/Gbit/s"
run_pair plexus
run_pair wireguard-go
