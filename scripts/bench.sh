#!/usr/bin/env bash
# Benchmark corecast on this machine with corecast-bench (bench/): `make bench` runs this.
#
#   1. connect:   as many idle joined connections as the descriptor limit allows (~19,000 here),
#                 held past one heartbeat: server RSS and kernel slab per connection, connect
#                 rate, connect+join latency.
#   2. broadcast: 5,000 subscribers over 10 topics, 4 socket publishers at 250 msgs/s
#                 (125,000 deliveries/s, below this box's knee): delivery latency (also split
#                 same core / across cores), deliveries/s, lost and duplicated messages.
#   3. fanout:    10,000 subscribers on ONE topic, publishers via POST /api/broadcast (one
#                 keep-alive connection each, so their order is kept: reordered 0) at a rate
#                 that saturates the box: the fan-out rate (deliveries/s).
#
# One server (release build, every core) serves all three; reports go to
# reports/bench/<UTC timestamp>/ and a summary table is printed at the end.
# Server and load generator share this machine's cores, so compare figures within one run.
#
# BENCH_SERVER_BIN=path benchmarks another build (e.g. the previous commit) with the same load.
# Every size, rate and duration can be overridden from the environment (BENCH_*), so a bigger
# box can reuse this script, e.g. for two million connections:
#   BENCH_CONNECTIONS=2000000 BENCH_SERVER_NOFILE=2100000 BENCH_PER_PROCESS=250000 \
#   BENCH_CONNECT_RATE=20000 bash scripts/bench.sh
# (the client processes then need about 8 KiB of RAM per connection: run them elsewhere or
# budget for it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CONNECTIONS=${BENCH_CONNECTIONS:-19000}      # clamped to what the server's fd limit allows
CONNECT_RATE=${BENCH_CONNECT_RATE:-2500}     # connection attempts per second
CONNECT_TOPICS=${BENCH_CONNECT_TOPICS:-100}
HOLD_SECS=${BENCH_HOLD_SECS:-32}             # > 30 s: every socket sends one heartbeat
HEARTBEAT_SECS=${BENCH_HEARTBEAT_SECS:-30}
BCAST_SUBSCRIBERS=${BENCH_BCAST_SUBSCRIBERS:-5000}
BCAST_TOPICS=${BENCH_BCAST_TOPICS:-10}
BCAST_PUBLISHERS=${BENCH_BCAST_PUBLISHERS:-4}
BCAST_RATE=${BENCH_BCAST_RATE:-250}          # msgs/s, all publishers (x 500 subscribers each)
FANOUT_SUBSCRIBERS=${BENCH_FANOUT_SUBSCRIBERS:-10000}
FANOUT_PUBLISHERS=${BENCH_FANOUT_PUBLISHERS:-4}
FANOUT_RATE=${BENCH_FANOUT_RATE:-60}         # msgs/s; x subscribers = offered deliveries/s
WARMUP_SECS=${BENCH_WARMUP_SECS:-3}
MEASURE_SECS=${BENCH_MEASURE_SECS:-10}
DRAIN_SECS=${BENCH_DRAIN_SECS:-10}
PAUSE_SECS=${BENCH_PAUSE_SECS:-10}           # between scenarios: let the last one's sockets go
WORKERS=${BENCH_WORKERS:-2}                  # client processes (raised as needed)
PER_PROCESS=${BENCH_PER_PROCESS:-18000}      # client sockets per process, under its fd limit
SOURCE_IPS=${BENCH_SOURCE_IPS:-127.0.0.2-127.0.0.250}
SERVER_CORES=${BENCH_SERVER_CORES:-0}        # 0: every CPU
SERVER_NOFILE=${BENCH_SERVER_NOFILE:-}       # raise the server's fd limit first (needs privilege)
FD_MARGIN=${BENCH_FD_MARGIN:-1000}           # descriptors the server keeps for itself
REPORT_ROOT=${BENCH_REPORT_DIR:-reports/bench}
FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf

log() { printf 'bench: %s\n' "$*" >&2; }

# The PNG plots need a TTF font at run time.
if [[ ! -f $FONT ]]; then
    log "installing fonts-dejavu-core for the plots"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core
    fi
fi

log "building (release)"
cargo build --release -p corecast -p corecast-bench
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"  # where cargo just built (CARGO_TARGET_DIR if set)
SERVER_BIN="${BENCH_SERVER_BIN:-$TARGET/release/corecast}"  # another build, for A/B runs
BENCH_BIN="$TARGET/release/corecast-bench"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/$REPORT_ROOT/$stamp"
mkdir -p "$OUT"
TMP=$(mktemp -d)
SERVER_PID=""

cleanup() {
    local rc=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT INT TERM

# The server holds one descriptor per connection: stay under its limit.
if [[ -n $SERVER_NOFILE ]]; then
    ulimit -n "$SERVER_NOFILE"
fi
server_fds=$(ulimit -n)
if [[ $server_fds != unlimited ]] && ((CONNECTIONS > server_fds - FD_MARGIN)); then
    log "connect: $CONNECTIONS connections do not fit the server's $server_fds descriptors;" \
        "using $((server_fds - FD_MARGIN))"
    CONNECTIONS=$((server_fds - FD_MARGIN))
fi

cat >"$TMP/corecast.toml" <<EOF
listen = "127.0.0.1:0"
cores = $SERVER_CORES
idle_timeout_ms = $(((HOLD_SECS + HEARTBEAT_SECS + 60) * 1000))
EOF
cp "$TMP/corecast.toml" "$OUT/server.toml"

"$SERVER_BIN" serve --config "$TMP/corecast.toml" >"$OUT/server.stdout" 2>"$OUT/server.log" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 100); do
    ADDR=$(sed -n 's/^corecast listening on \([^ ]*\).*/\1/p' "$OUT/server.stdout" 2>/dev/null | head -n1)
    [[ -n $ADDR ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { log "server exited:"; cat "$OUT/server.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $ADDR ]] || { log "server did not say where it listens within 10 s"; exit 1; }
log "server pid $SERVER_PID listening on $ADDR"

export BENCH_URL="ws://$ADDR/socket/websocket?vsn=2.0.0"
export BENCH_SERVER_VERSION
BENCH_SERVER_VERSION=$("$SERVER_BIN" --version 2>/dev/null || echo unknown)
export BENCH_SERVER_COMMIT
BENCH_SERVER_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! GIT_OPTIONAL_LOCKS=0 git diff-index --quiet HEAD -- 2>/dev/null; then
    BENCH_SERVER_COMMIT="$BENCH_SERVER_COMMIT-dirty"
fi
if [[ -n ${BENCH_SERVER_BIN:-} ]]; then
    BENCH_SERVER_COMMIT="$SERVER_BIN"  # another build: name it by its path, not this checkout
fi

# Each scenario bounds its own waits; `timeout` is the backstop.
ramp_secs() { echo $(($1 / CONNECT_RATE + 1)); }
connect_limit=$(($(ramp_secs "$CONNECTIONS") * 2 + HOLD_SECS + 120))
bcast_limit=$(($(ramp_secs "$BCAST_SUBSCRIBERS") * 2 + WARMUP_SECS + MEASURE_SECS + DRAIN_SECS + 120))
fanout_limit=$(($(ramp_secs "$FANOUT_SUBSCRIBERS") * 2 + WARMUP_SECS + MEASURE_SECS + DRAIN_SECS + 120))

common=(--server-pid "$SERVER_PID" --source-ips "$SOURCE_IPS" --workers "$WORKERS"
    --per-process "$PER_PROCESS" --heartbeat-secs "$HEARTBEAT_SECS" --font "$FONT")
started=$SECONDS

log "1/3 connect: $CONNECTIONS connections at $CONNECT_RATE/s, hold ${HOLD_SECS}s"
timeout -k 10 "$connect_limit" "$BENCH_BIN" connect "${common[@]}" --report "$OUT/1-connect" \
    --connections "$CONNECTIONS" --rate "$CONNECT_RATE" --topics "$CONNECT_TOPICS" \
    --hold-secs "$HOLD_SECS"

sleep "$PAUSE_SECS"
log "2/3 broadcast: $BCAST_SUBSCRIBERS subscribers, $BCAST_TOPICS topics, $BCAST_PUBLISHERS socket publishers, $BCAST_RATE msgs/s"
# Each socket publisher pushes BCAST_RATE / BCAST_PUBLISHERS a second; the server's default
# max_messages_per_sec (200) closes a faster one with 1008 (the config above leaves it at its
# default: the bench measures the server as shipped).
if ((BCAST_RATE > 200 * BCAST_PUBLISHERS)); then
    log "warning: $BCAST_RATE msgs/s from $BCAST_PUBLISHERS publishers is over 200/s per socket (max_messages_per_sec): raise BENCH_BCAST_PUBLISHERS"
fi
timeout -k 10 "$bcast_limit" "$BENCH_BIN" broadcast "${common[@]}" --report "$OUT/2-broadcast" --label broadcast \
    --subscribers "$BCAST_SUBSCRIBERS" --topics "$BCAST_TOPICS" \
    --publishers "$BCAST_PUBLISHERS" --via socket --rate "$BCAST_RATE" \
    --connect-rate "$CONNECT_RATE" --warmup-secs "$WARMUP_SECS" \
    --measure-secs "$MEASURE_SECS" --drain-secs "$DRAIN_SECS"

sleep "$PAUSE_SECS"
log "3/3 fanout: $FANOUT_SUBSCRIBERS subscribers on one topic, $FANOUT_PUBLISHERS API publishers, $FANOUT_RATE msgs/s"
timeout -k 10 "$fanout_limit" "$BENCH_BIN" broadcast "${common[@]}" --report "$OUT/3-fanout" --label fanout \
    --subscribers "$FANOUT_SUBSCRIBERS" --topics 1 \
    --publishers "$FANOUT_PUBLISHERS" --via api --rate "$FANOUT_RATE" \
    --connect-rate "$CONNECT_RATE" --warmup-secs "$WARMUP_SECS" \
    --measure-secs "$MEASURE_SECS" --drain-secs "$DRAIN_SECS"

log "scenarios took $((SECONDS - started)) s; reports in ${OUT#"$ROOT"/}"
echo
"$BENCH_BIN" table "$OUT" | tee "$OUT/table.txt"
