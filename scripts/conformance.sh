#!/usr/bin/env bash
# WebSocket conformance gate: runs the Autobahn TestSuite cases (via kosoku)
# against `corecast serve --config conformance/corecast.toml` (/echo) and compares with
# conformance/expected.txt.
#
#   scripts/conformance.sh            # run and gate (what `make conformance` does)
#   scripts/conformance.sh --update   # run and rewrite conformance/expected.txt
#
# Environment:
#   CORECAST_BIN            use this binary instead of `cargo build --release`
#   CONFORMANCE_PORT        port for the echo server (default 9001)
#   CONFORMANCE_TIMEOUT     seconds allowed for the kosoku run (default 900)
#   CONFORMANCE_START_WAIT  seconds to wait for the server to accept (default 20)
#   CONFORMANCE_PARALLEL    cases kosoku runs in parallel (default 4)
#   PYTHON                  interpreter used to create .venv (default python3)
#
# Output: reports/conformance/ (kosoku's index.json, per-case json+html,
# index.html, results.txt, kosoku.log, server.log).
set -euo pipefail

KOSOKU_VERSION=0.1.0
KOSOKU_CASES=517   # cases in kosoku 0.1.0's suite; fewer means the run broke

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

UPDATE=0
PORT="${CONFORMANCE_PORT:-9001}"
while [ $# -gt 0 ]; do
  case "$1" in
    --update) UPDATE=1 ;;
    --port) PORT="$2"; shift ;;
    --port=*) PORT="${1#--port=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "conformance: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TIMEOUT="${CONFORMANCE_TIMEOUT:-900}"
START_WAIT="${CONFORMANCE_START_WAIT:-20}"
PARALLEL="${CONFORMANCE_PARALLEL:-4}"
OUT=reports/conformance
VENV=.venv
PY="$VENV/bin/python"

log() { echo "conformance: $*"; }
die() { echo "conformance: FAIL: $*" >&2; exit 1; }

# 1. kosoku in .venv, pinned.
if [ ! -x "$PY" ]; then
  log "creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV" \
    || die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
fi
installed="$("$PY" -c 'import importlib.metadata as m; print(m.version("kosoku"))' 2>/dev/null || true)"
if [ "$installed" != "$KOSOKU_VERSION" ] || [ ! -x "$VENV/bin/kosoku" ]; then
  log "installing kosoku==$KOSOKU_VERSION into $VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check "kosoku==$KOSOKU_VERSION" \
    || die "pip install kosoku==$KOSOKU_VERSION failed"
fi

# 2. The server binary.
if [ -n "${CORECAST_BIN:-}" ]; then
  BIN="$CORECAST_BIN"
else
  log "cargo build --release"
  cargo build --release
  BIN=target/release/corecast
fi
[ -x "$BIN" ] || die "server binary $BIN not found or not executable"

# 3. Start the echo server.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

rm -rf "$OUT"
mkdir -p "$OUT"
port_open "$PORT" && die "127.0.0.1:$PORT already accepts connections; stop that process or set CONFORMANCE_PORT"

SERVER_PID=""
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# conformance/corecast.toml: /echo, 2 cores, 16 MiB messages, no rate limit, room for 4 cases
# of 16 MiB at once in the partial-message budget.
SERVER_CMD=("$BIN" serve --config conformance/corecast.toml --listen "127.0.0.1:$PORT")
log "starting: ${SERVER_CMD[*]}"
"${SERVER_CMD[@]}" >"$OUT/server.log" 2>&1 &
SERVER_PID=$!

tries=$((START_WAIT * 5))   # 0.2 s apart
until port_open "$PORT"; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    wait "$SERVER_PID" && rc=0 || rc=$?
    SERVER_PID=""
    echo "--- $OUT/server.log (tail) ---" >&2; tail -n 30 "$OUT/server.log" >&2 || true
    die "server exited (status $rc) before accepting on 127.0.0.1:$PORT"
  fi
  tries=$((tries - 1))
  if [ "$tries" -le 0 ]; then
    echo "--- $OUT/server.log (tail) ---" >&2; tail -n 30 "$OUT/server.log" >&2 || true
    die "server did not accept on 127.0.0.1:$PORT within ${START_WAIT}s"
  fi
  sleep 0.2
done
log "server up on 127.0.0.1:$PORT (pid $SERVER_PID)"

# 4. Run the suite. kosoku exits 1 whenever any case is not OK/NON-STRICT/
# INFORMATIONAL (including the permessage-deflate cases we allow to be
# UNIMPLEMENTED), so its exit code is not the verdict: index.json is.
URL="ws://127.0.0.1:$PORT/echo"
log "running kosoku $KOSOKU_VERSION (-p $PARALLEL, timeout ${TIMEOUT}s) against $URL"
start=$SECONDS
krc=0
timeout --kill-after=10 "$TIMEOUT" "$VENV/bin/kosoku" -p "$PARALLEL" -o "$OUT" "$URL" \
  >"$OUT/kosoku.log" 2>&1 || krc=$?
log "kosoku finished in $((SECONDS - start))s (exit $krc; log in $OUT/kosoku.log)"

server_died=0
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  server_died=1
  wait "$SERVER_PID" && src=0 || src=$?
  SERVER_PID=""
  echo "conformance: corecast exited (status $src) during the run; --- $OUT/server.log (tail) ---" >&2
  tail -n 30 "$OUT/server.log" >&2 || true
fi
stop_server

case "$krc" in
  0|1) ;;
  124|137) echo "conformance: kosoku timed out after ${TIMEOUT}s" >&2 ;;
  *) echo "conformance: kosoku exited $krc; --- $OUT/kosoku.log (tail) ---" >&2
     tail -n 30 "$OUT/kosoku.log" >&2 || true ;;
esac

# 5. Summarise and gate.
check=("$PY" scripts/conformance_check.py --reports "$OUT" --expected conformance/expected.txt
       --results "$OUT/results.txt" --min-cases "$KOSOKU_CASES"
       --header "kosoku $KOSOKU_VERSION against: corecast serve --config conformance/corecast.toml")
[ "$UPDATE" = 1 ] && check+=(--update)
crc=0
"${check[@]}" || crc=$?
[ ! -f "$OUT/index.html" ] || log "report: $OUT/index.html"
[ "$server_died" = 0 ] || die "corecast exited during the run (see $OUT/server.log)"
exit "$crc"
