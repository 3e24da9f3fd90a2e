#!/usr/bin/env bash
# Issue 5's design question, measured: user-space bytes per idle joined connection of corecast
# (a glommio task per socket, readiness from the core's own io_uring) against the floor of that
# design (one io_uring, a multishot POLL_ADD per socket, no task, no channels), same client, same
# count, one run.
#   bash scripts/uring-compare.sh [CONNECTIONS]   (default 19000)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-19000}"
cargo build --release -p corecast -p corecast-bench
BENCH=target/release/corecast-bench
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
target/release/uring_idle 127.0.0.1:4700 >/dev/null 2>&1 & pids+=($!)
target/release/corecast serve --listen 127.0.0.1:4701 --cores 1 >/dev/null 2>&1 & pids+=($!)
sleep 1
out=reports/uring-compare/$(date -u +%Y%m%dT%H%M%SZ)
for spec in "${pids[0]} 4700 multishot-poll" "${pids[1]} 4701 corecast"; do
  read -r pid port name <<<"$spec"
  echo "== $name (pid $pid)"
  timeout 180 "$BENCH" connect --url "ws://127.0.0.1:$port/socket/websocket?vsn=2.0.0" -n "$N" \
    --rate 4000 --topics 100 --hold-secs 3 --workers 2 --source-ips 127.0.0.2-127.0.0.250 \
    --server-pid "$pid" --no-metrics --report "$out/$name" 2>&1 |
    grep -E "joined / asked|RSS per|Slab per|p50 / p99"
done
