#!/usr/bin/env bash
# Usage: run_in_cgroup.sh CGROUP CMD [ARGS...]
# Runs CMD inside CGROUP (a path inside a cgroup2 mount, or relative to the
# cgroup2 root), for users who manage the cgdrop policy separately (cgdrop pin).
# The shell moves itself into the cgroup and then execs CMD, so CMD and all its
# sockets belong to the cgroup from the start.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CGROUP CMD [ARGS...]" >&2
  exit 2
fi
cg=$1
shift
if [ "${cg#/}" = "$cg" ]; then
  root=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
  if [ -z "$root" ]; then
    echo "run_in_cgroup.sh: no cgroup2 filesystem is mounted" >&2
    exit 1
  fi
  cg=$root/$cg
fi
if [ ! -w "$cg/cgroup.procs" ]; then
  echo "run_in_cgroup.sh: $cg is not a cgroup v2 directory we can join (missing, or not root?)" >&2
  exit 1
fi
echo $$ > "$cg/cgroup.procs"
exec "$@"
