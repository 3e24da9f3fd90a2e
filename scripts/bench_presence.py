#!/usr/bin/env python3
"""Presence join storm (issue 12), with the project's bench client (`corecast-bench presence`).

N sockets (default 10,000) join ONE presence topic (`room:storm`) at the fastest rate this machine
allows, from K client processes (default 4 x 2,500, each on its own slice of 127.0.0.2-250), all
starting at one common instant. Each socket keeps the presence state it is sent (presence_state,
then every presence_diff, by phx_ref) and notes when its view first holds all N keys. Reported:

- diffs the server published (`corecast_presence_diffs_total` when /metrics has it; the distinct
  diff texts the clients saw otherwise, and both when both exist),
- deliveries: presence_diff messages the clients received (and the server's delivery counter),
- time until every member's view agrees: the last socket's first full view, from the start,
- server RSS per presence entry: (RSS with every socket joined - RSS before) / N, for the
  presence topic and for the same storm on a plain topic (not in `presence`), and their
  difference (the presence entry without the socket),
- next to the computed cost of one diff per join: N diffs, N(N+1)/2 deliveries.

Each storm gets a fresh server (release build, `cores = 2`), on a free loopback port. Every wait
is bounded; everything started is stopped. Writes reports/presence/<UTC timestamp>/summary.json
(and the server logs, the clients' lines). Standard library only.

    python3 scripts/bench_presence.py [--sockets 10000] [--procs 4] [--skip-plain] [--no-build]
"""
import argparse
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
PRESENCE_TOPIC = "room:storm"
PLAIN_TOPIC = "plain:storm"


def log(msg):
    print(f"bench-presence: {msg}", file=sys.stderr, flush=True)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck  # utime + stime


def metrics(addr):
    """Every `corecast_*` sample of /metrics, summed over labels, as {name: value}."""
    out = {}
    try:
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError as e:
        log(f"/metrics: {e}")
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                pass
    return out


def presence_keys(addr, topic):
    try:
        with urllib.request.urlopen(f"http://{addr}/api/presence?topic={topic}", timeout=30) as r:
            return len(json.loads(r.read()))
    except (OSError, ValueError) as e:
        log(f"/api/presence: {e}")
        return None


def ip_slices(spec_lo, spec_hi, k):
    """Split 127.0.0.lo-127.0.0.hi into k contiguous ranges."""
    n = spec_hi - spec_lo + 1
    out, start = [], spec_lo
    for i in range(k):
        c = n // k + (1 if i < n % k else 0)
        out.append(f"127.0.0.{start}-127.0.0.{start + c - 1}")
        start += c
    return out


class Server:
    def __init__(self, binary, cfg_path, out_dir, label):
        self.out = open(os.path.join(out_dir, f"server-{label}.stdout"), "w+")
        self.err = open(os.path.join(out_dir, f"server-{label}.log"), "w")
        self.proc = subprocess.Popen([binary, "serve", "--config", cfg_path],
                                     stdout=self.out, stderr=self.err)
        self.addr = None
        for _ in range(100):
            self.out.seek(0)
            m = re.search(r"^corecast listening on (\S+)", self.out.read(), re.M)
            if m:
                self.addr = m.group(1)
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.err.name}")
            time.sleep(0.1)
        if not self.addr:
            self.stop()
            raise RuntimeError("server did not say where it listens within 10 s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.out.close()
        self.err.close()


class Client:
    """One `corecast-bench presence` process; its stdout lines are collected by a thread."""

    def __init__(self, cmd, log_path):
        self.err = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True)
        self.lines = {}
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            with self.cv:
                self.lines[v.get("event")] = v
                self.cv.notify_all()
        with self.cv:
            self.lines.setdefault("eof", True)
            self.cv.notify_all()

    def wait(self, event, deadline):
        with self.cv:
            while event not in self.lines and "eof" not in self.lines:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)
            return self.lines.get(event)

    def release(self):
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
        except OSError:
            pass

    def end(self, timeout):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"client pid {self.proc.pid} did not exit: killing it")
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.err.close()


def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    rank = min(len(sorted_vals), max(1, math.ceil(q * len(sorted_vals))))
    return sorted_vals[rank - 1]


def storm(args, bench_bin, server_bin, out_dir, label, topic, plain):
    """One fresh server, one storm of args.sockets sockets on `topic`; returns its figures."""
    cfg = os.path.join(out_dir, f"server-{label}.toml")
    with open(cfg, "w") as f:
        f.write(
            'listen = "127.0.0.1:0"\n'
            f"cores = {args.cores}\n"
            'presence = ["room:*"]\n'
            "presence_anonymous = true\n"
            f"presence_diff_window_ms = {args.window_ms}\n"
            f"max_messages_per_sec = {args.max_messages_per_sec}\n"
            f"idle_timeout_ms = {(args.agree_timeout + 120) * 1000}\n"
            f"handshake_timeout_ms = {args.handshake_timeout_ms}\n"
            + "".join(f"{line}\n" for line in args.server_config)
        )
    server = Server(server_bin, cfg, out_dir, label)
    clients = []
    try:
        pid = server.proc.pid
        log(f"{label}: server pid {pid} on {server.addr}, {args.sockets} sockets on {topic} "
            f"from {args.procs} processes")
        time.sleep(0.5)
        with open("/proc/loadavg") as f:
            loadavg = f.read().split()[:3]
        before = {"rss": rss_bytes(pid), "cpu": cpu_secs(pid), "metrics": metrics(server.addr)}
        n, k = args.sockets, args.procs
        counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
        slices = ip_slices(2, 250, k)
        start_ns = time.time_ns() + int(args.lead_secs * 1e9)
        first = 0
        url = f"ws://{server.addr}/socket/websocket?vsn=2.0.0"
        for i in range(k):
            cmd = [bench_bin, "presence", "--url", url, "-n", str(counts[i]),
                   "--first", str(first), "--index", str(i), "--source-ips", slices[i],
                   "--topic", topic, "--expect-keys", str(n), "--start-at-ns", str(start_ns),
                   "--max-inflight", str(args.inflight),
                   "--connect-timeout-ms", str(args.connect_timeout_ms), "--agree-timeout-secs",
                   str(args.agree_timeout), "--hold-secs", str(args.agree_timeout + 120)]
            if plain:
                cmd.append("--plain")
            if args.no_parse_cache:
                cmd.append("--no-parse-cache")
            clients.append(Client(cmd, os.path.join(out_dir, f"client-{label}-{i}.log")))
            first += counts[i]
        deadline = time.monotonic() + args.lead_secs + args.agree_timeout + 30
        ready = [c.wait("ready", deadline) for c in clients]
        if any(r is None for r in ready):
            raise RuntimeError(f"{label}: a client process gave no ready line "
                               f"(see {out_dir}/client-{label}-*.log)")
        time.sleep(args.settle_secs)
        after = {"rss": rss_bytes(pid), "cpu": cpu_secs(pid), "metrics": metrics(server.addr)}
        keys_on_server = None if plain else presence_keys(server.addr, topic)
        for c in clients:
            c.release()
        done = [c.wait("done", time.monotonic() + 30) for c in clients]
        for c in clients:
            c.end(10)
        clients = []
        out = summarize(args, label, topic, plain, start_ns, before, after, ready, done,
                        keys_on_server)
        out["loadavg_before"] = loadavg
        return out
    finally:
        for c in clients:
            c.release()
        for c in clients:
            c.end(10)
        server.stop()


def summarize(args, label, topic, plain, start_ns, before, after, ready, done, keys_on_server):
    n = args.sockets
    tot = lambda key: sum(r.get(key, 0) for r in ready)
    full = sorted(us for r in ready for us in r["full_view_us"])
    joins = sorted(us for r in ready for us in r["join_us"])
    failures, drops = {}, {}
    for r in ready:
        for k, v in r["failures"].items():
            failures[k] = failures.get(k, 0) + v
        for k, v in r["drops"].items():
            drops[k] = drops.get(k, 0) + v
    mb, ma = before["metrics"], after["metrics"]
    moved = {k: ma[k] - mb.get(k, 0.0) for k in sorted(ma) if ma[k] != mb.get(k, 0.0)}
    ms = lambda us: None if us is None else round(us / 1000.0, 1)
    joined = tot("joined")
    rss_delta = after["rss"] - before["rss"]
    out = {
        "label": label,
        "topic": topic,
        "plain": plain,
        "sockets": n,
        "client_processes": len(ready),
        "start_at_ns": start_ns,
        "joined": joined,
        "failed": tot("failed"),
        "failures": failures,
        "drops_before_ready": drops,
        "timed_out_processes": sum(1 for r in ready if r["timed_out"]),
        "last_join_ms": ms(joins[-1] if joins else None),
        "join_p50_ms": ms(pct(joins, 0.5)),
        "full_views": len(full),
        "time_to_agreement_ms": ms(full[-1]) if len(full) == joined == n else None,
        "full_view_p50_ms": ms(pct(full, 0.5)),
        "full_view_p99_ms": ms(pct(full, 0.99)),
        "full_view_max_ms": ms(full[-1] if full else None),
        "diffs_received": tot("diffs_received"),
        "diff_bytes_received": tot("diff_bytes_received"),
        "states_received": tot("states_received"),
        "state_bytes_received": tot("state_bytes_received"),
        "bytes_received": tot("bytes_received"),
        "diffs_before_state": tot("diffs_before_state"),
        "malformed": tot("malformed"),
        "views_over_expected": tot("views_over_expected"),
        "max_keys_seen": max(r["max_keys_seen"] for r in ready),
        "distinct_diffs_seen_by_one_process": max(r["diff_cache"]["misses"] for r in ready)
        if not args.no_parse_cache else None,
        "diffs_between_ready_and_stop": sum((d or {}).get("diffs_between_ready_and_stop", 0)
                                            for d in done),
        "presence_keys_on_server": keys_on_server,
        "server_rss_before_bytes": before["rss"],
        "server_rss_after_bytes": after["rss"],
        "server_rss_per_socket_bytes": rss_delta / joined if joined else None,
        "server_cpu_secs": round(after["cpu"] - before["cpu"], 2),
        "client_rss_bytes": sum(r.get("client_rss_bytes") or 0 for r in ready),
        "server_counters_moved": moved,
        "per_process": [{k: v for k, v in r.items() if k not in ("join_us", "full_view_us")}
                        for r in ready],
        "done": done,
    }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=int, default=int(os.environ.get("PRESENCE_SOCKETS", 10000)))
    ap.add_argument("--procs", type=int, default=int(os.environ.get("PRESENCE_PROCS", 4)))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--window-ms", type=int, default=100)
    ap.add_argument("--max-messages-per-sec", type=int, default=100000)
    ap.add_argument("--inflight", type=int, default=500, help="connects in flight per process")
    ap.add_argument("--connect-timeout-ms", type=int, default=60000,
                    help="client bound on connect + upgrade + join reply")
    ap.add_argument("--handshake-timeout-ms", type=int, default=60000,
                    help="server's handshake_timeout_ms (default config: 10,000)")
    ap.add_argument("--agree-timeout", type=int, default=120, help="seconds, per storm")
    ap.add_argument("--lead-secs", type=float, default=2.0, help="start processes, then storm")
    ap.add_argument("--settle-secs", type=float, default=2.0, help="before sampling the server")
    ap.add_argument("--pause-secs", type=float, default=5.0, help="between the two storms")
    ap.add_argument("--server-config", action="append", default=[],
                    help="an extra TOML line for the server's config (repeatable)")
    ap.add_argument("--no-parse-cache", action="store_true",
                    help="clients parse every diff and state on its socket")
    ap.add_argument("--skip-plain", action="store_true", help="no plain-topic baseline storm")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--report-root", default=os.path.join(ROOT, "reports", "presence"))
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and args.sockets + 500 > hard:
        sys.exit(f"bench-presence: {args.sockets} sockets do not fit the server's {hard} descriptors")
    if hard != resource.RLIM_INFINITY and -(-args.sockets // args.procs) + 500 > hard:
        sys.exit("bench-presence: too many sockets per client process for the descriptor limit")

    if not args.no_build:
        log("building (release)")
        subprocess.run(["cargo", "build", "--release", "-p", "corecast", "-p", "corecast-bench"],
                       cwd=ROOT, check=True, timeout=1800)
    server_bin = os.path.join(TARGET, "release", "corecast")
    bench_bin = os.path.join(TARGET, "release", "corecast-bench")

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = os.path.join(args.report_root, stamp)
    os.makedirs(out_dir, exist_ok=True)

    runs = {}
    runs["presence"] = storm(args, bench_bin, server_bin, out_dir, "presence", PRESENCE_TOPIC,
                             False)
    if not args.skip_plain:
        time.sleep(args.pause_secs)
        runs["plain"] = storm(args, bench_bin, server_bin, out_dir, "plain", PLAIN_TOPIC, True)

    n = args.sockets
    p = runs["presence"]
    moved = p["server_counters_moved"]
    published = moved.get("corecast_presence_diffs_total")
    server_deliveries = moved.get("corecast_deliveries_total")
    one_per_join = {"diffs": n, "deliveries": n * (n + 1) // 2}
    # One diff per join: diff k goes to the k members joined by then; its frame carries one
    # entry of the shape this run's diffs had (bytes per delivered entry, measured).
    entries_delivered = n * n  # every member learns every key once through diffs or the state
    frame_one = len('[null,null,"%s","presence_diff",{"joins":{"%s":{"metas":[{"phx_ref":"%s"}]}},'
                    '"leaves":{}}]' % (PRESENCE_TOPIC, "k" * 16, "r" * 16))
    one_per_join["diff_bytes"] = one_per_join["deliveries"] * frame_one
    one_per_join["diff_frame_bytes"] = frame_one
    per_entry = None
    if "plain" in runs and p["server_rss_per_socket_bytes"] and runs["plain"]["server_rss_per_socket_bytes"]:
        per_entry = p["server_rss_per_socket_bytes"] - runs["plain"]["server_rss_per_socket_bytes"]
    summary = {
        "what": "presence join storm: N sockets join one presence topic as fast as allowed",
        "utc": stamp,
        "machine": {"cpus": os.cpu_count(), "nofile_hard": hard, "kernel": os.uname().release},
        "server_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True).stdout.strip(),
        "params": {k: v for k, v in vars(args).items()},
        "figures": {
            "sockets": n,
            "diffs_published": published,
            "distinct_diffs_seen_by_clients": p["distinct_diffs_seen_by_one_process"],
            "deliveries_diffs_received": p["diffs_received"],
            "server_deliveries_counter": server_deliveries,
            "time_to_agreement_ms": p["time_to_agreement_ms"],
            "last_join_ms": p["last_join_ms"],
            "full_view_p50_ms": p["full_view_p50_ms"],
            "diff_bytes_received": p["diff_bytes_received"],
            "state_bytes_received": p["state_bytes_received"],
            "server_rss_per_entry_bytes_presence_topic": p["server_rss_per_socket_bytes"],
            "server_rss_per_entry_bytes_plain_topic": runs.get("plain", {}).get("server_rss_per_socket_bytes"),
            "server_rss_per_presence_entry_bytes": per_entry,
            "one_diff_per_join_computed": one_per_join,
            "deliveries_saved_factor": (one_per_join["deliveries"] / p["diffs_received"])
            if p["diffs_received"] else None,
            "entries_every_member_learns": entries_delivered,
        },
        "runs": runs,
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print_table(summary, out_dir)


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}"
    return f"{v:,}{unit}"


def print_table(s, out_dir):
    f = s["figures"]
    runs = s["runs"]
    p = runs["presence"]
    rows = [
        ("sockets (presence keys)", fmt(f["sockets"])),
        ("joined / failed", f"{fmt(p['joined'])} / {fmt(p['failed'])} {p['failures'] or ''}"),
        ("last join reply", fmt(p["last_join_ms"], " ms")),
        ("diffs published (server)", fmt(f["diffs_published"])),
        ("distinct diffs seen (client)", fmt(f["distinct_diffs_seen_by_clients"])),
        ("deliveries (diffs received)", fmt(f["deliveries_diffs_received"])),
        ("server deliveries counter", fmt(f["server_deliveries_counter"])),
        ("diff bytes received", fmt(f["diff_bytes_received"])),
        ("presence_state bytes received", fmt(f["state_bytes_received"])),
        ("time to agreement (max)", fmt(f["time_to_agreement_ms"], " ms")),
        ("first full view p50", fmt(f["full_view_p50_ms"], " ms")),
        ("server RSS/socket, presence topic", fmt(f["server_rss_per_entry_bytes_presence_topic"], " B")),
        ("server RSS/socket, plain topic", fmt(f["server_rss_per_entry_bytes_plain_topic"], " B")),
        ("server RSS per presence entry", fmt(f["server_rss_per_presence_entry_bytes"], " B")),
        ("server CPU, presence storm", fmt(p["server_cpu_secs"], " s")),
        ("server CPU, plain storm", fmt(runs.get("plain", {}).get("server_cpu_secs"), " s")),
        ("one diff per join: diffs", fmt(f["one_diff_per_join_computed"]["diffs"])),
        ("one diff per join: deliveries", fmt(f["one_diff_per_join_computed"]["deliveries"])),
        ("one diff per join: diff bytes", fmt(f["one_diff_per_join_computed"]["diff_bytes"])),
        ("deliveries saved (factor)", fmt(f["deliveries_saved_factor"], "x")),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"\npresence join storm ({s['utc']}, commit {s['server_commit']})")
    for name, val in rows:
        print(f"  {name:<{w}}  {val}")
    extra = {k: p[k] for k in ("drops_before_ready", "diffs_before_state", "malformed",
                               "views_over_expected", "max_keys_seen", "presence_keys_on_server",
                               "timed_out_processes")}
    print(f"  checks: {json.dumps(extra)}")
    print(f"  report: {os.path.relpath(os.path.join(out_dir, 'summary.json'), ROOT)}")


if __name__ == "__main__":
    main()
