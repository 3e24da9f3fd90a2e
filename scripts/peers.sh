#!/usr/bin/env bash
# make peers: the same corecast-bench `broadcast` scenario against corecast and three baselines a
# user might pick instead (bench/peers/: tokio + tokio-tungstenite, Go + gorilla/websocket,
# Node 20 + ws), one after the other on this machine, then one comparison table.
#
# Installs what is missing (Debian's golang-go and gorilla/websocket, `npm ci`), builds corecast,
# corecast-bench and the peers in release, runs each server on its own port, and writes
#   reports/peers/<UTC timestamp>/<server>-r<k>/  the bench's report of round k (summary.json,
#                                                 .hgrm, latency.png; <server>/ with 1 round)
#   reports/peers/<UTC timestamp>/summary.json  all four summaries, the parameters and the ratios
#                                               (the table and ratios come from bench/peers/compare.py)
#
# Every wait is bounded; servers are stopped on exit whatever happens.
# The servers run PEERS_ROUNDS (2) times in turn; the table shows each figure's median.
# Defaults: 5,000 subscribers over 10 topics, 10 publishers at 400 msg/s (200,000 deliveries/s
# offered), 3 s warm-up, 10 s measured: about 20 s a server, ~3 min in all once built.
# Knobs (environment): PEERS_SUBSCRIBERS, PEERS_TOPICS, PEERS_PUBLISHERS, PEERS_RATE,
# PEERS_VIA (socket|api), PEERS_WARMUP, PEERS_MEASURE, PEERS_DRAIN, PEERS_PAYLOAD,
# PEERS_WORKERS (bench worker processes holding the subscribers), PEERS_SERVERS (subset/order
# of "corecast tokio go node"), PEERS_PORT (first port), PEERS_QUIET_WAIT (seconds to wait for
# other processes to leave the CPUs before each run), PEERS_SKIP_BUILD=1 (use what is built).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS_DIR=$ROOT/bench/peers

SUBSCRIBERS=${PEERS_SUBSCRIBERS:-5000}
TOPICS=${PEERS_TOPICS:-10}
PUBLISHERS=${PEERS_PUBLISHERS:-10}
RATE=${PEERS_RATE:-400}
VIA=${PEERS_VIA:-socket}
WARMUP=${PEERS_WARMUP:-3}
MEASURE=${PEERS_MEASURE:-10}
DRAIN=${PEERS_DRAIN:-5}
PAYLOAD=${PEERS_PAYLOAD:-0}
WORKERS=${PEERS_WORKERS:-2}
QUIET_WAIT=${PEERS_QUIET_WAIT:-15}
ROUNDS=${PEERS_ROUNDS:-2}
SERVERS=${PEERS_SERVERS:-corecast tokio go node}
PORT0=${PEERS_PORT:-4100}
# Bounds: a server must say "listening on" within READY_SECS; one bench run may take at most
# BENCH_SECS; a server gets STOP_SECS after SIGTERM before SIGKILL.
READY_SECS=20
BENCH_SECS=$((WARMUP + MEASURE + DRAIN + SUBSCRIBERS / 500 + 60))
STOP_SECS=12

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/reports/peers/$STAMP
BENCH=$ROOT/target/release/corecast-bench
CORECAST=$ROOT/target/release/corecast
PEER_TOKIO=$PEERS_DIR/tokio/target/release/peer-tokio
PEER_GO=$PEERS_DIR/go/peer-go
PEER_NODE=$PEERS_DIR/node/server.js

log() { printf 'peers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- cleanup: only the processes this script started, by pid -------------------------------
SERVER_PID=""
SAMPLER_PID=""
BENCH_PID=""
stop_pid() { # pid, seconds to wait after SIGTERM
    local pid=$1 secs=$2 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still up after ${secs}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$BENCH_PID" 5
    stop_pid "$SAMPLER_PID" 1
    stop_pid "$SERVER_PID" "$STOP_SECS"
    BENCH_PID=""
    SAMPLER_PID=""
    SERVER_PID=""
}
trap cleanup EXIT
trap 'log "error: line $LINENO exited $?"' ERR
trap 'exit 130' INT TERM

# --- install and build ----------------------------------------------------------------------
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

install_deps() {
    local need=()
    command -v go >/dev/null || need+=(golang-go)
    [[ -d /usr/share/gocode/src/github.com/gorilla/websocket ]] ||
        need+=(golang-github-gorilla-websocket-dev)
    if ((${#need[@]})); then
        log "apt-get install ${need[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    command -v node >/dev/null || die "node (20 or newer) is needed for the Node peer"
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    ((major >= 20)) || die "node $major found; the Node peer needs 20 or newer"
    if [[ ! -f $PEERS_DIR/node/node_modules/ws/package.json ||
        $PEERS_DIR/node/package-lock.json -nt $PEERS_DIR/node/node_modules/.package-lock.json ]]; then
        log "npm ci (bench/peers/node)"
        (cd "$PEERS_DIR/node" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
    fi
}

build() {
    log "cargo build --release (corecast, corecast-bench)"
    cargo build --release -q -p corecast -p corecast-bench
    log "cargo build --release (bench/peers/tokio, its own workspace)"
    cargo build --release -q --manifest-path "$PEERS_DIR/tokio/Cargo.toml"
    log "go build (bench/peers/go, Debian's gorilla/websocket, offline)"
    (cd "$PEERS_DIR/go" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS="" \
        go build -o peer-go .)
}

if [[ ${PEERS_SKIP_BUILD:-0} != 1 ]]; then
    install_deps
    build
fi
for f in "$BENCH" "$CORECAST" "$PEER_TOKIO" "$PEER_GO" "$PEER_NODE"; do
    [[ -e $f ]] || die "$f is missing (run without PEERS_SKIP_BUILD=1)"
done
"$BENCH" broadcast --help >/dev/null 2>&1 || die "corecast-bench has no broadcast scenario yet"

# --- one server ------------------------------------------------------------------------------
# server_cmd NAME ADDR: prints the command line, one word per line.
server_cmd() {
    case $1 in
    corecast) printf '%s\n' "$CORECAST" serve --listen "$2" ;;
    tokio) printf '%s\n' "$PEER_TOKIO" --listen "$2" ;;
    go) printf '%s\n' "$PEER_GO" --listen "$2" ;;
    node) printf '%s\n' node "$PEER_NODE" --listen "$2" ;;
    *) die "unknown server $1" ;;
    esac
}

server_version() {
    local lock=$PEERS_DIR/tokio/Cargo.lock
    case $1 in
    corecast) "$CORECAST" --version 2>/dev/null | head -1 || echo corecast ;;
    tokio) printf 'tokio %s, tokio-tungstenite %s, rustc %s' \
        "$(grep -A1 '^name = "tokio"$' "$lock" | sed -n 's/version = "\(.*\)"/\1/p')" \
        "$(grep -A1 '^name = "tokio-tungstenite"$' "$lock" | sed -n 's/version = "\(.*\)"/\1/p')" \
        "$(rustc --version | cut -d' ' -f2)" ;;
    go) printf '%s, gorilla/websocket %s (Debian), GOMAXPROCS default (%s)' \
        "$(go version | cut -d' ' -f3)" \
        "$(dpkg-query -W -f='${Version}' golang-github-gorilla-websocket-dev 2>/dev/null || echo '?')" \
        "$(nproc)" ;;
    node) printf 'node %s, ws %s, one thread' "$(node --version)" \
        "$(node -p "require('$PEERS_DIR/node/node_modules/ws/package.json').version")" ;;
    esac
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true; }

# CPU time of a process (utime + stime), in clock ticks; fields after the ")" of the comm.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || true; }

# "pid ppid ticks start" of every user-space process (kernel threads, children of pid 2, left out).
proc_snapshot() {
    local f
    for f in /proc/[0-9]*/stat; do
        sed 's/^\([0-9]*\) .*) /\1 /' "$f" 2>/dev/null || true # it may have exited
    done | awk '$3 != 2 && $1 != 2 {print $1, $3, $13 + $14, $21}'
}

# CPU ticks used between two snapshots by processes other than this script, its children and the
# server (another build on a 2-core box skews every figure): deltas for processes in both,
# whole lives for processes started since the first (their start time is after it).
others_ticks() { # before-file after-file server-pid
    awk -v me=$$ -v srv="$3" '
        NR == FNR {t[$1] = $3; if ($4 > s0) s0 = $4; next}
        $1 == me || $2 == me || $1 == srv {next}
        ($1 in t) {d += $3 - t[$1]; next}
        $4 >= s0 {d += $3}
        END {print d + 0}' "$1" "$2"
}

# CPU time of this shell's waited-for children (the bench and its workers), in clock ticks.
children_ticks() { sed 's/^.*) //' "/proc/$$/stat" | awk '{print $14 + $15}'; }

# Whole-machine CPU from /proc/stat, in ticks: "busy total".
machine_ticks() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }

# Percent of the machine's CPU in use over the next second (by anything: nothing of ours runs).
busy_percent() {
    local b0 t0 b1 t1
    read -r b0 t0 < <(machine_ticks)
    sleep 1
    read -r b1 t1 < <(machine_ticks)
    echo $(((b1 - b0) * 100 / (t1 - t0 > 0 ? t1 - t0 : 1)))
}

# Wait (at most QUIET_WAIT s) until other processes use under 15% of the machine; prints the
# last reading. Another build on a 2-core box skews every figure, so the run records it.
wait_quiet() {
    local i busy
    for ((i = 0; i <= QUIET_WAIT; i++)); do
        busy=$(busy_percent)
        ((busy < 15)) && break
        ((i == 0)) && log "machine busy (${busy}% CPU used by other processes); waiting up to ${QUIET_WAIT}s"
    done
    echo "$busy"
}

FAILED=()
run_one() { # name port report-dir
    local name=$1 port=$2 addr="127.0.0.1:$2" dir=$3 i t0=$SECONDS
    mkdir -p "$dir"
    local busy_before
    busy_before=$(wait_quiet)
    local -a cmd
    mapfile -t cmd < <(server_cmd "$name" "$addr")
    log "$name: ${cmd[*]}"
    "${cmd[@]}" >"$dir/server.log" 2>&1 &
    SERVER_PID=$!
    for ((i = 0; i < READY_SECS * 10; i++)); do
        grep -q 'listening on' "$dir/server.log" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q 'listening on' "$dir/server.log"; then
        log "$name: not ready within ${READY_SECS}s; its log:"
        tail -20 "$dir/server.log" >&2 || true
        cleanup
        FAILED+=("$name")
        return 0
    fi
    local idle_kib
    idle_kib=$(rss_kib "$SERVER_PID")
    # Our own look at the server's memory (every 0.5 s, bounded), beside the bench's.
    (
        for ((i = 0; i < BENCH_SECS * 2; i++)); do
            kill -0 "$SERVER_PID" 2>/dev/null || exit 0
            echo "$(date +%s.%N) $(rss_kib "$SERVER_PID")"
            sleep 0.5
        done
    ) >"$dir/rss.log" 2>/dev/null &
    SAMPLER_PID=$!

    local -a metrics=()
    if [[ $name == corecast ]]; then
        metrics=(--server-commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)")
    else
        metrics=(--no-metrics)
    fi
    local rc=0 cpu0 cpu1 mb0 mt0 mb1 mt1 ch0 ch1 others
    cpu0=$(cpu_ticks "$SERVER_PID")
    ch0=$(children_ticks)
    proc_snapshot >"$dir/.procs0"
    read -r mb0 mt0 < <(machine_ticks)
    timeout -k 5 "$BENCH_SECS" "$BENCH" broadcast \
        --url "ws://$addr/socket/websocket?vsn=2.0.0" \
        --label "$name" \
        --server-pid "$SERVER_PID" "${metrics[@]}" \
        --server-version "$(server_version "$name")" \
        --subscribers "$SUBSCRIBERS" --topics "$TOPICS" \
        --publishers "$PUBLISHERS" --rate "$RATE" --via "$VIA" \
        --warmup-secs "$WARMUP" --measure-secs "$MEASURE" --drain-secs "$DRAIN" \
        --payload-bytes "$PAYLOAD" --workers "$WORKERS" \
        --report "$dir" >"$dir/bench.log" 2>&1 &
    # In the background and waited for, so a signal to this script is handled at once.
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    cpu1=$(cpu_ticks "$SERVER_PID")
    read -r mb1 mt1 < <(machine_ticks)
    ch1=$(children_ticks)
    proc_snapshot >"$dir/.procs1"
    others=$(others_ticks "$dir/.procs0" "$dir/.procs1" "$SERVER_PID")
    rm -f "$dir/.procs0" "$dir/.procs1"
    local peak_kib
    peak_kib=$(awk '$2 > m {m = $2} END {print m + 0}' "$dir/rss.log")
    local hz
    hz=$(getconf CLK_TCK)
    printf '{"idle_rss_kib": %s, "peak_rss_kib": %s, "bench_exit": %s, "pid": %s, %s, %s, %s}\n' \
        "${idle_kib:-null}" "${peak_kib:-null}" "$rc" "$SERVER_PID" \
        "\"server_cpu_secs\": $(awk -v a="${cpu0:-0}" -v b="${cpu1:-0}" -v h="$hz" 'BEGIN {print (b - a) / h}')" \
        "\"machine_busy_percent_during\": $(((mb1 - mb0) * 100 / (mt1 - mt0 > 0 ? mt1 - mt0 : 1))), \"bench_cpu_secs\": $(awk -v a="$ch0" -v b="$ch1" -v h="$hz" 'BEGIN {print (b - a) / h}'), \"others_cpu_percent_during\": $((others * 100 / (mt1 - mt0 > 0 ? mt1 - mt0 : 1)))" \
        "\"machine_busy_percent_before\": ${busy_before:-null}" >"$dir/peers-probe.json"
    if ((rc != 0)); then
        log "$name: corecast-bench exited $rc; last lines:"
        tail -15 "$dir/bench.log" >&2 || true
        FAILED+=("$name")
    fi
    cleanup
    log "$name: done in $((SECONDS - t0)) s ($(grep -h 'deliveries/s  ' "$dir/bench.log" 2>/dev/null | tr -s ' ' | cut -d' ' -f2-))"
    # Let the kernel retire the closed sockets before the next server starts.
    sleep 2
}

mkdir -p "$OUT"
log "reports in $OUT"
log "scenario: $SUBSCRIBERS subscribers / $TOPICS topics, $PUBLISHERS publishers at $RATE msg/s" \
    "via $VIA, warm-up ${WARMUP}s, measure ${MEASURE}s, drain <= ${DRAIN}s"
START=$(date +%s)
for ((round = 1; round <= ROUNDS; round++)); do
    for name in $SERVERS; do
        case $name in # a fixed port per server, whatever the order
        corecast) port=$PORT0 ;;
        tokio) port=$((PORT0 + 1)) ;;
        go) port=$((PORT0 + 2)) ;;
        node) port=$((PORT0 + 3)) ;;
        *) die "unknown server $name (known: corecast tokio go node)" ;;
        esac
        dir=$OUT/$name
        ((ROUNDS == 1)) || dir=$OUT/$name-r$round
        run_one "$name" "$port" "$dir"
    done
done
ELAPSED=$(($(date +%s) - START))

# --- the table and the combined summary -------------------------------------------------------
rc=0
# shellcheck disable=SC2086 # SERVERS is a word list
python3 "$PEERS_DIR/compare.py" "$OUT" "$ELAPSED" "$ROUNDS" $SERVERS || rc=$?
if ((${#FAILED[@]})); then
    log "failed: ${FAILED[*]}"
    rc=1
fi
exit "$rc"
