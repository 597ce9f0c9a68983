#!/usr/bin/env bash
# Regenerates include/vmlinux.h from the running kernel's BTF (`make vmlinux`).
# The header is committed so that building cgdrop does not need the build host's
# BTF; CO-RE relocations adapt the object to whatever kernel loads it.
set -euo pipefail
btf=${1:-/sys/kernel/btf/vmlinux}
out=$(dirname "$0")/../include/vmlinux.h
[ -r "$btf" ] || { echo "gen-vmlinux.sh: $btf not readable: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y)" >&2; exit 1; }
bpftool btf dump file "$btf" format c > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -l < "$out") lines)"
