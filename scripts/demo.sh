#!/usr/bin/env bash
# The README's first example, end to end on loopback (run as root, by `make demo`):
# a local HTTP server, a request that succeeds, the same request under
# `cgdrop run` failing at once, and cgdrop's counters. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CGDROP:-./target/release/cgdrop}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$dir" >/dev/null 2>&1 &
server=$!
# `cgdrop run` makes cgdrop's bpffs directory for its pins (and leaves it, empty:
# cgdrop never removes it while another cgdrop could be pinning into it); the
# demo removes it if it made it, as `make test` does (rmdir keeps one with pins).
pins=/sys/fs/bpf/cgdrop
pins_before=$([ -e "$pins" ] && echo yes || echo no)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$dir"
      [ "$pins_before" = no ] && rmdir "$pins" 2>/dev/null; true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done

url="http://127.0.0.1:$port/"
echo "== without cgdrop: curl $url"
curl -sS -o /dev/null -w 'HTTP %{http_code} in %{time_total}s\n' "$url"

echo "== with cgdrop: $bin run -- curl $url"
set +e
"$bin" run -- curl -sS -o /dev/null -m 5 -w 'HTTP %{http_code} in %{time_total}s\n' "$url"
status=$?
set -e
echo "== curl exited with $status (7: could not connect) at once, not after a time-out"
[ "$status" -eq 7 ]
