#!/usr/bin/env bash
# Installs the Debian packages that building and testing cgdrop need
# (`deps.sh bench`: and benchmarking it).
# As root it installs what is missing with apt-get; otherwise it prints the
# exact command to run. Safe to run again: it does nothing when all is there.
set -euo pipefail

# clang/llvm: compile bpf/cgdrop.bpf.c; libelf-dev, zlib1g-dev, pkg-config, gcc,
# make: build libbpf-sys's vendored libbpf; bpftool: gen-vmlinux.sh and tests
# (`bpftool cgroup show`); iproute2: veth/netns tests; curl: the README example;
# python3: tests/netprobe.py, the tests' traffic generator; util-linux: setpriv.
# netbase: /etc/services, for service names in --port and rules (`https`).
packages=(clang llvm gcc make pkg-config libelf-dev zlib1g-dev bpftool iproute2 curl python3 util-linux netbase)
# `deps.sh bench`: what `make bench` compares cgdrop with.
if [ "${1:-}" = bench ]; then
  packages+=(iperf3 nftables)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: missing packages: ${missing[*]}" >&2
  echo "deps.sh: run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
