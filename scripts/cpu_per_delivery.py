#!/usr/bin/env python3
"""make cpu-per-delivery: server CPU per delivery of a one-topic fan-out (issue 11).

The servers: corecast (release, default cores), the tokio-tungstenite baseline of
bench/peers/tokio, and the C floor of bench/peers/c_floor that only write()s the frames. All
three listen at once, each on a free loopback port; in every round, for each server in turn, a
fresh `cpu_per_delivery` (bench/src/bin/cpu_per_delivery) joins 5,000 subscribers to room:cpu,
sends 100 broadcasts of a 77-byte frame per way, waits until every subscriber has counted all
100, and reads the server's utime + stime from /proc before and after: CPU per delivery = that
/ 500,000. The ways:

  1 api-per-request  POST /api/broadcast, one TCP connection per request
  2 socket           one joined socket pushes the 100 messages back to back
  3 api-keepalive    POST /api/broadcast over one keep-alive connection, request after request;
                     when the server closes it (corecast answers `Connection: close`), the client
                     opens a new one and says how many it needed
  C floor            c-write: one write() of the frame per delivery; c-batch: the 100 frames in
                     one write() per socket (the floor of a server that coalesces)

Rounds take turns over the servers so that a noisy minute on a shared machine hits all of them;
the table gives the medians over ROUNDS, corecast/tokio against the goal (<= 0.5), the C floor,
the keep-alive connections each server needed, and how busy other processes kept the machine.
Prints the table and writes reports/cpu/<UTC timestamp>/summary.json (every measurement, each
client's raw output, the machine). Every wait is bounded, every server started is stopped (by
its pid) whatever happens; about three minutes once built.

Knobs (environment): CPU_SUBSCRIBERS (5000), CPU_MESSAGES (100), CPU_ROUNDS (5),
CPU_SERVERS ("corecast tokio c"), CPU_QUIET_WAIT (seconds to wait for other processes to leave
the CPUs before each client, 10), CPU_SKIP_BUILD=1 (use what is built), CARGO_TARGET_DIR.
"""

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
# bench/peers/tokio is its own workspace: its own target/ unless CARGO_TARGET_DIR says otherwise.
TOKIO_TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "bench/peers/tokio/target")
CORECAST = TARGET / "release/corecast"
CLIENT = TARGET / "release/cpu_per_delivery"
PEER_TOKIO = TOKIO_TARGET / "release/peer-tokio"
C_FLOOR = TARGET / "c_floor/c_floor"
C_SOURCE = ROOT / "bench/peers/c_floor/c_floor.c"

SUBSCRIBERS = int(os.environ.get("CPU_SUBSCRIBERS", "5000"))
MESSAGES = int(os.environ.get("CPU_MESSAGES", "100"))
ROUNDS = int(os.environ.get("CPU_ROUNDS", "5"))
SERVERS = os.environ.get("CPU_SERVERS", "corecast tokio c").split()
QUIET_WAIT = int(os.environ.get("CPU_QUIET_WAIT", "10"))
READY_SECS = 20
STOP_SECS = 12
CLIENT_SECS = 120

PHOENIX_WAYS = ["api-per-request", "socket", "api-keepalive"]
C_WAYS = ["c-write", "c-batch"]
WAY_TITLES = {
    "api-per-request": "1 one HTTP connection per POST",
    "socket": "2 pushed back to back by 1 socket",
    "api-keepalive": "3 one keep-alive HTTP connection",
    "c-write": "C floor: one write() per delivery",
    "c-batch": "C floor: one write() per socket",
}


def log(msg: str) -> None:
    print(f"cpu-per-delivery: {msg}", file=sys.stderr, flush=True)


# --- processes we start, stopped by pid whatever happens -------------------------------------
RUNNING: list[subprocess.Popen] = []


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_SECS)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} still up after {STOP_SECS}s: SIGKILL")
            proc.kill()
            proc.wait(5)
    if proc in RUNNING:
        RUNNING.remove(proc)


def stop_all(*_args) -> None:
    for p in list(RUNNING):
        stop(p)
    if _args:  # called as a signal handler
        sys.exit(130)


# --- build ------------------------------------------------------------------------------------
def run(cmd: list, **kw) -> None:
    log(" ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def build() -> None:
    run(["cargo", "build", "--release", "-q", "-p", "corecast", "-p", "corecast-bench"])
    run(["cargo", "build", "--release", "-q", "--manifest-path", "bench/peers/tokio/Cargo.toml"])
    C_FLOOR.parent.mkdir(parents=True, exist_ok=True)
    run(["gcc", "-O2", "-Wall", "-Wextra", "-o", C_FLOOR, C_SOURCE])
    run([C_FLOOR, "--self-test"], stdout=subprocess.DEVNULL)


# --- the machine --------------------------------------------------------------------------------
def machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    return total - v[3] - v[4], total


def busy_percent(secs: float = 1.0) -> int:
    b0, t0 = machine_ticks()
    time.sleep(secs)
    b1, t1 = machine_ticks()
    return (b1 - b0) * 100 // max(t1 - t0, 1)


def wait_quiet() -> int:
    """Wait (bounded) until the machine is under 15% busy; returns the last reading."""
    busy = busy_percent()
    start = time.monotonic()
    if busy >= 15:
        log(f"machine {busy}% busy (other processes); waiting up to {QUIET_WAIT}s")
    while busy >= 15 and time.monotonic() - start < QUIET_WAIT:
        busy = busy_percent()
    return busy


def machine() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def tokio_versions() -> str:
    lock = (ROOT / "bench/peers/tokio/Cargo.lock").read_text()
    def ver(name: str) -> str:
        i = lock.find(f'name = "{name}"\nversion = "')
        return lock[i:].split('"')[3] if i >= 0 else "?"
    return f"tokio {ver('tokio')}, tokio-tungstenite {ver('tokio-tungstenite')}"


# --- one server ------------------------------------------------------------------------------
def server_cmd(name: str) -> tuple[list, list]:
    """Command line and ways of a server; every one listens on a free port (":0")."""
    if name == "corecast":
        return [CORECAST, "serve", "--listen", "127.0.0.1:0"], PHOENIX_WAYS
    if name == "tokio":
        return [PEER_TOKIO, "--listen", "127.0.0.1:0"], PHOENIX_WAYS
    if name == "c":
        return [C_FLOOR, "--listen", "127.0.0.1:0", "--lifetime", "600"], C_WAYS
    raise SystemExit(f"unknown server {name!r} (corecast, tokio, c)")


def wait_listening(proc: subprocess.Popen, log_path: Path) -> str | None:
    deadline = time.monotonic() + READY_SECS
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log_path.read_text(errors="replace").splitlines():
            if "listening on" in line:
                return line.split("listening on", 1)[1].split()[0]
        time.sleep(0.05)
    return None


def start_server(name: str, out: Path) -> dict:
    cmd, ways = server_cmd(name)
    log(f"{name}: {' '.join(str(c) for c in cmd)}")
    server_log = out / f"{name}.server.log"
    with open(server_log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    RUNNING.append(proc)
    result = {"server": name, "command": [str(c) for c in cmd], "ways": ways, "proc": proc,
              "runs": []}
    addr = wait_listening(proc, server_log)
    if addr is None:
        result["error"] = f"not listening within {READY_SECS}s (see {server_log.name})"
        stop(proc)
    else:
        result["addr"] = addr
        log(f"{name}: listening on {addr}, pid {proc.pid}")
    return result


def run_client(result: dict, round_: int, out: Path) -> None:
    """One round against one server: a fresh client opens the subscribers, measures each way."""
    name, proc = result["server"], result["proc"]
    busy = wait_quiet()
    client = [CLIENT, "--addr", result["addr"], "--server-pid", str(proc.pid),
              "-n", str(SUBSCRIBERS), "--messages", str(MESSAGES),
              "--rounds", "1", "--ways", ",".join(result["ways"]),
              "--lifetime-secs", str(CLIENT_SECS - 10)]
    if name == "c":
        client += ["--heartbeat-secs", "0"]  # the floor reads nothing after the join
    log(f"{name} round {round_}: {' '.join(str(c) for c in client)}")
    base = out / f"{name}-r{round_}"
    try:
        with open(f"{base}.client.log", "w") as err:
            r = subprocess.run(client, stdout=subprocess.PIPE, stderr=err, text=True,
                               timeout=CLIENT_SECS)
    except subprocess.TimeoutExpired:
        result["error"] = f"round {round_}: client not done within {CLIENT_SECS}s"
        return
    Path(f"{base}.json").write_text(r.stdout)
    if r.returncode != 0:
        result["error"] = f"round {round_}: client exited {r.returncode} (see {base.name}.client.log)"
        Path(f"{base}.server-state.txt").write_text(server_state(proc.pid, result["addr"]))
        return
    got = json.loads(r.stdout)
    got["busy_before_percent"] = busy
    got["server_rss_kib"] = rss_kib(proc.pid)
    for m in got["measurements"]:
        m["round"] = round_
    result["runs"].append(got)


def server_state(pid: int, addr: str) -> str:
    """What a failed round leaves to look at: the server's threads (state, CPU ticks, where they
    sleep), its listening sockets' accept queues and socket counts, and its /metrics."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
            wchan = (task / "wchan").read_text()
            lines.append(f"{(task / 'comm').read_text().strip()} state {stat[0]} "
                         f"utime {stat[11]} stime {stat[12]} wchan {wchan}")
        except OSError:
            pass
    for cmd in (["ss", "-ltn"], ["ss", "-s"],
                ["curl", "-s", "-m", "3", f"http://{addr}/metrics"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            lines.append(f"$ {' '.join(cmd)}\n{r.stdout}")
        except (OSError, subprocess.TimeoutExpired) as e:
            lines.append(f"$ {' '.join(cmd)}: {e}")
    return "\n".join(lines) + "\n"


def measurements(result: dict) -> list:
    return [m for run in result.get("runs", []) for m in run["measurements"]]


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


# --- the table -------------------------------------------------------------------------------
def per_way(result: dict) -> dict:
    """way -> median and samples of us per delivery, and what the publisher saw."""
    ways: dict[str, dict] = {}
    for m in measurements(result):
        w = ways.setdefault(m["way"], {"samples": [], "complete": True, "publisher": [],
                                      "other_cores": []})
        w["samples"].append(m["us_per_delivery"])
        w["complete"] &= bool(m["complete"])
        w["publisher"].append(m["publisher"])
        c = m["cpu"]
        # Cores kept busy by everything else on the machine (another build, say) meanwhile.
        wall = max(m["all_delivered_ms"] / 1e3, 1e-3)
        w["other_cores"].append(max(0.0, c["machine_busy_s"] - c["exec_s"] - c["client_s"]) / wall)
    for w in ways.values():
        w["median_us"] = statistics.median(w["samples"])
        w["min_us"], w["max_us"] = min(w["samples"]), max(w["samples"])
        p = w["publisher"][-1]
        w["connections_per_round"] = p["connections"]
        w["close_headers_per_round"] = p["close_headers"]
        w["reused_closed_per_round"] = p["reused_closed"]
        w["other_cores_median"] = statistics.median(w["other_cores"])
        del w["publisher"]
    return ways


def fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(results: dict) -> tuple[list[str], list[dict]]:
    ways = {name: per_way(r) for name, r in results.items()}
    cc, tk, c = ways.get("corecast", {}), ways.get("tokio", {}), ways.get("c", {})
    c_write = c.get("c-write", {}).get("median_us")
    c_batch = c.get("c-batch", {}).get("median_us")
    lines = [
        f"Server CPU per delivery, us (utime+stime / {SUBSCRIBERS:,} x {MESSAGES} deliveries, "
        f"77-byte frame; median of {ROUNDS}, min-max in brackets)",
        "",
        f"{'way':<36}{'corecast':>22}{'tokio':>22}{'corecast/tokio':>16}{'goal <= 0.5':>13}",
    ]
    rows = []
    for way in PHOENIX_WAYS:
        a, b = cc.get(way), tk.get(way)
        ratio = a["median_us"] / b["median_us"] if a and b and b["median_us"] > 0 else None
        cell = (lambda w: "-" if not w else
                f"{w['median_us']:.3f} [{w['min_us']:.2f}-{w['max_us']:.2f}]"
                + ("" if w["complete"] else " !"))
        met = "-" if ratio is None else ("met" if ratio <= 0.5 else "NOT met")
        lines.append(f"{WAY_TITLES[way]:<36}{cell(a):>22}{cell(b):>22}{fmt(ratio):>16}{met:>13}")
        rows.append({"way": way, "corecast_us": a and a["median_us"],
                     "tokio_us": b and b["median_us"], "corecast_over_tokio": ratio,
                     "goal_met": None if ratio is None else ratio <= 0.5})
    lines.append("")
    lines.append(f"C floor, same client: one write() per delivery {fmt(c_write, 3)} us; "
                 f"the {MESSAGES} frames in one write() per socket {fmt(c_batch, 3)} us")
    if c_write:
        for name, w in (("corecast", cc), ("tokio", tk)):
            if w.get("api-per-request"):
                lines.append(f"  way 1 / C write floor: {name} "
                             f"{w['api-per-request']['median_us'] / c_write:.2f}")
    for name, w in (("corecast", cc), ("tokio", tk)):
        k = w.get("api-keepalive")
        if k:
            how = (f"{k['connections_per_round']} TCP connections for {MESSAGES} requests "
                   f"({k['close_headers_per_round']} answered Connection: close, "
                   f"{k['reused_closed_per_round']} found closed on reuse)")
            note = "" if k["connections_per_round"] <= 1 else " -> cannot keep the connection"
            lines.append(f"way 3, {name}: {how}{note}")
    for name, r in results.items():
        if "error" in r:
            lines.append(f"ERROR {name}: {r['error']}")
        for way, w in ways.get(name, {}).items():
            if not w["complete"]:
                lines.append(f"WARNING {name} {way}: a measurement did not get every delivery "
                             f"(see summary.json)")
    noise = {name: max(w["other_cores_median"] for w in ws.values())
             for name, ws in ways.items() if ws}
    if noise:
        lines.append("other processes during the measurements (median cores busy, worst way): "
                     + ", ".join(f"{n} {v:.2f}" for n, v in noise.items())
                     + f" of {os.cpu_count()}"
                     + (" -- WARNING: a shared, busy machine" if max(noise.values()) > 0.3 else ""))
    return lines, rows


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_all)
    if os.environ.get("CPU_SKIP_BUILD") != "1":
        build()
    for f in (CORECAST, CLIENT, PEER_TOKIO, C_FLOOR):
        if not f.exists():
            raise SystemExit(f"{f} is missing (run without CPU_SKIP_BUILD=1)")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "reports/cpu" / stamp
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        # Every server up at once (idle ones cost nothing measurable), the rounds taking turns
        # over them, so a noisy minute on this shared machine hits all of them alike.
        for name in SERVERS:
            results[name] = start_server(name, out)
        for k in range(ROUNDS):
            for r in results.values():
                if "error" not in r:
                    run_client(r, k, out)
    finally:
        stop_all()
    for r in results.values():
        del r["proc"]
    lines, rows = table(results)
    versions = {
        "corecast": subprocess.run([CORECAST, "--version"], capture_output=True,
                                   text=True).stdout.strip(),
        "tokio": tokio_versions(),
        "c": subprocess.run(["gcc", "--version"], capture_output=True,
                            text=True).stdout.splitlines()[0],
    }
    summary = {
        "scenario": {"subscribers": SUBSCRIBERS, "messages": MESSAGES, "rounds": ROUNDS,
                     "frame_bytes": 77, "topic": "room:cpu", "event": "new_msg",
                     "cpu": "sum of the server threads' run time (/proc/PID/task/*/schedstat, "
                            "ns) = utime + stime; /proc/PID/stat ticks beside it"},
        "machine": machine(),
        "commit": git("rev-parse", "HEAD"),
        "versions": versions,
        "table": rows,
        "per_way": {name: per_way(r) for name, r in results.items()},
        "servers": results,
        "text": lines,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))
    print(f"\nreport: {out.relative_to(ROOT)}/summary.json")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
