#!/usr/bin/env bash
# Phoenix's 2 M-connection scenario with Tsung (issue 14): `make tsung` runs this.
#
# Starts a corecast (release build, --cores 2, topics rooms:*) on a free loopback port, runs
# Debian's tsung with bench/tsung/phoenix_v1.xml against it (TSUNG_USERS users, default 3,000,
# arriving at TSUNG_RATE/s, default 300: each opens /socket/websocket without vsn, i.e. Phoenix
# V1 JSON, joins rooms:lobby, waits for the ok reply, idles 60 s with a heartbeat every 30 s,
# closes), turns tsung's log into its HTML report with tsung_stats.pl, prints the key figures
# and checks them against the server's /metrics (corecast_websockets, corecast_joins_total).
# Everything goes to reports/tsung/<UTC timestamp>/ (tsung's report: report.html, graph.html).
# Fails unless every user connected, every join and heartbeat got "status":"ok", tsung counted
# no error, and the server saw as many sockets and joins as tsung launched users.
#
#   TSUNG_USERS=3000 TSUNG_RATE=300  load (the box: 2 CPUs, 20,000 descriptors per process)
#   TSUNG_SCENARIO=v1                v1 (default) or v2: bench/tsung/phoenix_v2.xml, the same
#                                    session with vsn=2.0.0 and V2 array messages
#   TSUNG_MAX_SECS=300               tsung is killed after this long (the scenario's own bound
#                                    is 150 s: <load duration>)
#   CORECAST_BIN=path                run another build instead of building this checkout
#
# Tsung's client VMs run on this machine: bench/tsung/local-rsh stands in for ssh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

USERS=${TSUNG_USERS:-3000}
RATE=${TSUNG_RATE:-300}
SCENARIO=${TSUNG_SCENARIO:-v1}
MAX_SECS=${TSUNG_MAX_SECS:-300}
CORES=${TSUNG_SERVER_CORES:-2}

log() { echo "tsung.sh: $*" >&2; }

case $SCENARIO in
    v1 | v2) XML="$ROOT/bench/tsung/phoenix_$SCENARIO.xml" ;;
    *) log "TSUNG_SCENARIO must be v1 or v2, not $SCENARIO"; exit 2 ;;
esac
[[ $USERS =~ ^[0-9]+$ && $RATE =~ ^[0-9]+$ && $USERS -gt 0 && $RATE -gt 0 ]] ||
    { log "TSUNG_USERS and TSUNG_RATE must be positive integers"; exit 2; }

if ! command -v tsung >/dev/null; then
    log "installing tsung (apt)"
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q tsung >/dev/null ||
        { $SUDO apt-get update -q >/dev/null &&
            $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q tsung >/dev/null; }
fi
TSUNG_STATS=""
for f in /usr/lib/x86_64-linux-gnu/tsung/bin/tsung_stats.pl /usr/lib/tsung/bin/tsung_stats.pl \
    /usr/local/lib/tsung/bin/tsung_stats.pl; do
    [[ -x $f ]] && { TSUNG_STATS=$f; break; }
done
[[ -n $TSUNG_STATS ]] || TSUNG_STATS=$(dpkg -L tsung 2>/dev/null | grep '/tsung_stats.pl$' | head -n1 || true)
[[ -n $TSUNG_STATS ]] || { log "tsung_stats.pl not found"; exit 1; }

if [[ -n ${CORECAST_BIN:-} ]]; then
    SERVER_BIN=$CORECAST_BIN
else
    log "building (release)"
    cargo build --release -p corecast --bin corecast
    SERVER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/corecast"
fi
[[ -x $SERVER_BIN ]] || { log "no server binary at $SERVER_BIN"; exit 1; }

# One descriptor per socket, in the server and in the client VMs.
need=$((USERS + 200))
if [[ $(ulimit -n) != unlimited ]] && (($(ulimit -n) < need)); then
    ulimit -n "$need" 2>/dev/null || { log "ulimit -n is $(ulimit -n), $USERS users need $need"; exit 1; }
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT="$ROOT/reports/tsung/$stamp"
mkdir -p "$OUT"
SERVER_PID=""
TSUNG_PID=""

stop_pid() {  # stop_pid PID: TERM, wait up to 15 s, then KILL
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $TSUNG_PID ]] && kill -0 "$TSUNG_PID" 2>/dev/null; then
        # tsung runs in its own process group (setsid): the controller and its client VMs
        kill -TERM -- "-$TSUNG_PID" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$TSUNG_PID" 2>/dev/null || true
        wait "$TSUNG_PID" 2>/dev/null || true
    fi
    [[ -n $SERVER_PID ]] && stop_pid "$SERVER_PID"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$OUT/server.toml" <<EOF
listen = "127.0.0.1:0"
cores = $CORES
topics = ["rooms:*"]
EOF
"$SERVER_BIN" serve --config "$OUT/server.toml" >"$OUT/server.stdout" 2>"$OUT/server.log" &
SERVER_PID=$!
ADDR=""
for _ in $(seq 1 100); do
    ADDR=$(sed -n 's/^corecast listening on \([^ ]*\).*/\1/p' "$OUT/server.stdout" 2>/dev/null | head -n1)
    [[ -n $ADDR ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { log "server exited:"; cat "$OUT/server.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $ADDR ]] || { log "server did not say where it listens within 10 s"; exit 1; }
PORT=${ADDR##*:}
log "server $SERVER_BIN pid $SERVER_PID on $ADDR ($CORES cores)"

# metric NAME: the sum over cores of one /metrics counter or gauge
metric() {
    { curl -s --max-time 2 "http://$ADDR/metrics" || true; } |
        awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2; f = 1 } END { if (f) print s + 0; else print "NA" }'
}
[[ $(metric corecast_websockets) != NA ]] || { log "no corecast_websockets in /metrics"; exit 1; }

# The scenario with this run's port and load; the phase lasts as long as the arrivals need.
phase=$(((USERS + RATE - 1) / RATE + 5))
sed -e "s/port=\"4000\"/port=\"$PORT\"/" \
    -e "s/maxnumber=\"3000\"/maxnumber=\"$USERS\"/" \
    -e "s/arrivalrate=\"300\"/arrivalrate=\"$RATE\"/" \
    -e "s/<arrivalphase phase=\"1\" duration=\"60\"/<arrivalphase phase=\"1\" duration=\"$phase\"/" \
    "$XML" >"$OUT/scenario.xml"
grep -q "port=\"$PORT\"" "$OUT/scenario.xml" && grep -q "maxnumber=\"$USERS\"" "$OUT/scenario.xml" ||
    { log "could not set port/users in $XML"; exit 1; }

log "tsung: $USERS users at $RATE/s, scenario $SCENARIO ($XML), at most $MAX_SECS s"
# -n: no web GUI on :8091; -i: own node names, so another tsung on the box does not collide
setsid timeout --kill-after=10 "$MAX_SECS" tsung -n -i "cc$$" -r "$ROOT/bench/tsung/local-rsh" \
    -f "$OUT/scenario.xml" -l "$OUT/tsung" start >"$OUT/tsung.stdout" 2>&1 &
TSUNG_PID=$!

# While it runs: the server's peak of open sockets (and joins) from /metrics.
peak_ws=0
peak_t=0
t0=$(date +%s)
while kill -0 "$TSUNG_PID" 2>/dev/null; do
    ws=$(metric corecast_websockets)
    if [[ $ws != NA ]] && ((ws > peak_ws)); then
        peak_ws=$ws
        peak_t=$(($(date +%s) - t0))
    fi
    sleep 2
done
tsung_rc=0
wait "$TSUNG_PID" || tsung_rc=$?
TSUNG_PID=""
joins=$(metric corecast_joins_total)
ws_after=$(metric corecast_websockets)
curl -s --max-time 2 "http://$ADDR/metrics" >"$OUT/metrics.txt" || true
((tsung_rc == 0)) || log "tsung exited with $tsung_rc (124/137: killed after $MAX_SECS s)"

# tsung writes into <logdir>/YYYYMMDD-HHMM/: one run, so that directory is the report.
RUN_DIR=$(find "$OUT/tsung" -mindepth 1 -maxdepth 1 -type d | head -n1)
[[ -n $RUN_DIR && -f $RUN_DIR/tsung.log ]] || { log "tsung wrote no tsung.log:"; tail -20 "$OUT/tsung.stdout" >&2; exit 1; }
(cd "$RUN_DIR" && "$TSUNG_STATS" >"$OUT/tsung_stats.out" 2>&1) ||
    log "tsung_stats.pl failed (see $OUT/tsung_stats.out)"
ln -sfn "${RUN_DIR#"$OUT/"}/report.html" "$OUT/report.html"

rc=0
python3 - "$RUN_DIR/tsung.log" "$OUT/summary.json" "$USERS" "$peak_ws" "$peak_t" "$joins" "$ws_after" \
    "$tsung_rc" "$SCENARIO" "$RATE" "$SERVER_BIN" <<'PY' || rc=$?
import json, sys

log, out, users, peak_ws, peak_t, joins, ws_after, tsung_rc, scenario, rate, server = sys.argv[1:]
users = int(users)
samples, counters, gauges = {}, {}, {}
for line in open(log):
    if not line.startswith("stats: "):
        continue
    parts = line.split()
    name, vals = parts[1], parts[2:]
    if name.startswith("{"):  # per-node cpu/load/freemem
        continue
    v = [float(x) for x in vals]
    if len(v) == 7:  # count mean stddev max min mean_before count_before (this dump, then before)
        n, mean, _sd, mx, mn, mean0, n0 = v
        tot = n + n0
        samples[name] = {
            "count": int(tot),
            "mean_ms": (n * mean + n0 * mean0) / tot if tot else 0.0,
            "max_ms": mx,
            "min_ms": mn,
        }
    elif len(v) == 2:
        if name in ("users", "connected"):  # gauges: users = now, max; connected = delta, now
            g = gauges.setdefault(name, {"now": 0, "peak": 0})
            g["now"] = int(v[0] if name == "users" else v[1])
            g["peak"] = max(g["peak"], int(v[1] if name == "users" else v[1]))
        else:  # counters: this dump, total
            counters[name] = int(v[1])

errors = {k: c for k, c in counters.items() if k.startswith("error")}
def s(name):
    return samples.get(name, {"count": 0, "mean_ms": 0.0, "max_ms": 0.0, "min_ms": 0.0})

summary = {
    "scenario": scenario,
    "server": server,
    "users_planned": users,
    "arrival_rate_per_s": int(rate),
    "users_launched": counters.get("users_count", 0),
    "users_finished": counters.get("finish_users_count", 0),
    "peak_concurrent_users": gauges.get("users", {}).get("peak", 0),
    "peak_connected": gauges.get("connected", {}).get("peak", 0),
    "websocket_upgrades_ok": counters.get("websocket_succ", 0),
    "replies_matched_ok": counters.get("match", 0),
    "replies_not_matched": counters.get("nomatch", 0),
    "join_replies": s("tr_join")["count"],
    "heartbeat_replies": s("tr_heartbeat")["count"],
    "errors": errors,
    "tcp_connect": s("connect"),
    "ws_connect": s("tr_ws_connect"),
    "join": s("tr_join"),
    "heartbeat": s("tr_heartbeat"),
    "session": s("session"),
    "server_peak_websockets": int(peak_ws),
    "server_peak_at_s": int(peak_t),
    "server_joins_total": None if joins == "NA" else int(joins),
    "server_websockets_after": None if ws_after == "NA" else int(ws_after),
    "tsung_exit": int(tsung_rc),
}
json.dump(summary, open(out, "w"), indent=2)

def t(x):
    return f"mean {x['mean_ms']:8.2f} ms  max {x['max_ms']:8.2f} ms  (n={x['count']})"
hb_expected = 2 * users
print(f"tsung {scenario}: {users} users at {rate}/s against {server}")
print(f"  users launched      {summary['users_launched']}  (finished {summary['users_finished']}, peak concurrent {summary['peak_concurrent_users']})")
print(f"  connected (peak)    {summary['peak_connected']}  (websocket upgrades ok {summary['websocket_upgrades_ok']})")
print(f"  join replies        {summary['join_replies']}  heartbeat replies {summary['heartbeat_replies']}  \"status\":\"ok\" matched {summary['replies_matched_ok']}, not matched {summary['replies_not_matched']}")
print(f"  errors              {sum(errors.values())}" + (f"  {errors}" if errors else ""))
print(f"  TCP connect         {t(summary['tcp_connect'])}")
print(f"  WebSocket connect   {t(summary['ws_connect'])}")
print(f"  join -> reply       {t(summary['join'])}")
print(f"  heartbeat -> reply  {t(summary['heartbeat'])}")
print(f"  server /metrics     corecast_websockets peak {summary['server_peak_websockets']} (at {peak_t} s), "
      f"{summary['server_websockets_after']} after; corecast_joins_total {summary['server_joins_total']}")

fail = []
if summary["users_launched"] != users: fail.append("not every user was launched")
if summary["peak_connected"] != users: fail.append("not every user was connected at once")
if summary["join_replies"] != users: fail.append("join replies != users")
if summary["heartbeat_replies"] != hb_expected: fail.append("heartbeat replies != 2 x users")
if summary["replies_matched_ok"] != users + hb_expected or summary["replies_not_matched"]:
    fail.append('replies without "status":"ok"')
if errors: fail.append("tsung counted errors")
if summary["server_peak_websockets"] != users: fail.append("server's peak corecast_websockets != users")
if summary["server_joins_total"] != users: fail.append("server's corecast_joins_total != users")
if summary["server_websockets_after"] != 0: fail.append("sockets still open on the server after the run")
if summary["tsung_exit"] != 0: fail.append("tsung did not exit cleanly")
for f in fail:
    print(f"  FAIL: {f}")
sys.exit(1 if fail else 0)
PY
log "report: $OUT (tsung's: $OUT/report.html, graphs: ${RUN_DIR}/graph.html)"
exit "$rc"
