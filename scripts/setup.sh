#!/usr/bin/env bash
# Installs what building and testing Plexus needs on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are skipped quickly.
set -euo pipefail

packages=(
  etcd-server etcd-client     # the kvstore of every cluster (etcd 3.4), started by tests on loopback
  protobuf-compiler libprotobuf-dev  # protoc and its well-known types, for etcd-client's gRPC code
  openssl                     # certificate checks in tests
  clang llvm libbpf-dev bpftool  # eBPF programs of the datapath (bpftool: the object layout test)
  iproute2 iputils-ping       # network namespaces, veth and VXLAN for the lab
  iperf3 netcat-openbsd curl jq  # traffic in the lab's tests and benchmarks; jq for docs/install.md
  iptables                    # the load-balancer benchmark's kube-proxy-style baseline
  podman runc containernetworking-plugins catatonit  # containers as workloads: podman with its CNI
                              # backend, runc, and catatonit for the infra container of pods
  busybox-static              # the rootfs of the lab's locally built container image
  systemd                     # systemd-analyze checks the units of deploy/systemd
  wireguard-tools             # `wg genkey`/`wg pubkey`: crates/wireguard's key tests check against them
  wireguard-go tcpdump        # crates/wireguard's device tests: the interop peer and the underlay
                              # capture; scripts/bench-wg.sh and scripts/bench-lab.sh: the
                              # userspace baseline; the encryption e2e test's underlay capture
  prometheus                  # the metrics test scrapes a lab with a real Prometheus (started by the
                              # test itself, never as Debian's service)
  chromium                    # the web view's test (crates/cli/tests/web_view.rs): headless
                              # Chromium renders the page and dumps its DOM and a screenshot
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts no etcd or Prometheus of its own without systemd; make sure none is left running
# either way, so tests own every etcd on this machine (and start their own Prometheus).
for service in etcd prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl disable --now "$service" >/dev/null 2>&1 || true
  fi
done

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# cargo-fuzz runs the fuzz targets of fuzz/ (scripts/fuzz.sh) on this stable toolchain.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2 --quiet
fi
echo "setup: ok (etcd $(etcd --version | awk '/etcd Version/ {print $3}'), $(cargo --version))"
