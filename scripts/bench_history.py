#!/usr/bin/env python3
"""History bench (issue 16): broadcast throughput and latency with history on vs off, A/B in one
run against one server, and the memory one kept publication costs.

One `corecast serve --cores 2` with `[[history]] pattern = "hist:*"` (size 100, ttl 300 s).
The `corecast-bench broadcast` scenario (bench/README.md) runs ROUNDS times on each side,
alternating off, on, off, on...: `--topic-prefix bench:` (ordinary topics: no sequencer, no ring)
and `--topic-prefix hist:` (history topics: every publication goes to its topic's home core, is
sequenced, gets its `_pos`, is kept in every core's ring). Same server process, same
subscribers count, same publishers and rate: the difference is the history. The figures of each
side are the median over its rounds.

Then memory: ENTRIES_TOPICS history topics are filled to their size through POST
/api/broadcast with payloads of PAYLOAD bytes; RSS before and after (the server's
/proc/PID/status) and corecast_history_entries / corecast_history_bytes give the bytes per
publication kept (every core keeps its own ring of the same shared buffers).

The bench client runs on the same 2 CPUs as the server: compare within one run. Every process
started is stopped (also on failure or Ctrl-C); every wait is bounded. Writes
reports/history/<UTC>/summary.json. Standard library only.

    python3 scripts/bench_history.py [--build] [--rounds 2] [--subscribers 1000] [--measure-secs 8]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cluster as bc  # noqa: E402  (its process, metrics and bench-client helpers)

CONFIG = """
max_messages_per_sec = 100000
[[history]]
pattern = "hist:*"
size = 100
ttl_secs = 300
"""


def log(msg):
    print(f"bench-history: {msg}", file=sys.stderr, flush=True)


def start_server(server_bin, out_dir):
    cfg = os.path.join(out_dir, "corecast.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    stdout_path = os.path.join(out_dir, "server.stdout")
    p = bc.start([server_bin, "serve", "--listen", "127.0.0.1:0", "--cores", "2", "--config", cfg],
                 os.path.join(out_dir, "server.log"), stdout_path=stdout_path)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"server exited ({p.returncode}): see server.log")
        with open(stdout_path) as f:
            line = f.read()
        if line.startswith("corecast listening on "):
            addr = line.split()[3]
            if bc.metrics(addr):
                log(f"server pid {p.pid} on {addr}")
                return p, addr
        time.sleep(0.1)
    raise RuntimeError("server not listening within 15 s")


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def broadcast_batch(addr, items):
    req = urllib.request.Request(f"http://{addr}/api/broadcast", data=json.dumps(items).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 202, r.status


def run_round(args, bench_bin, out_dir, addr, pid, label, prefix):
    report = os.path.join(out_dir, label)
    cmd = [bench_bin, "broadcast", "--url", bc.ws(addr), "--server-pid", str(pid),
           "--label", label, "--report", report, "--topic-prefix", prefix,
           "--subscribers", str(args.subscribers), "--topics", str(args.topics),
           "--publishers", str(args.publishers), "--via", "socket", "--rate", str(args.rate),
           "--connect-rate", str(args.connect_rate), "--warmup-secs", str(args.warmup_secs),
           "--measure-secs", str(args.measure_secs), "--drain-secs", str(args.drain_secs),
           "--workers", "2", "--source-ips", args.source_ips]
    limit = (args.subscribers / args.connect_rate * 2 + args.warmup_secs + args.measure_secs
             + args.drain_secs + 90)
    log(f"{label}: " + " ".join(cmd[1:]))
    p = bc.start(cmd, os.path.join(out_dir, f"{label}.bench.log"),
                 stdout_path=os.path.join(out_dir, f"{label}.bench.stdout"))
    try:
        rc = p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        bc.stop(p)
        raise RuntimeError(f"{label}: bench client timed out after {limit:.0f} s")
    bc.stop(p)
    if rc != 0:
        raise RuntimeError(f"{label}: bench client exited {rc}: see {label}.bench.log")
    with open(os.path.join(report, "summary.json")) as f:
        return bc.scenario_row(label, json.load(f)["results"])


def median_row(rows):
    out = {"rounds": len(rows)}
    for k in ("deliveries_per_sec", "p50_ms", "p99_ms", "p99_9_ms", "max_ms"):
        out[k] = statistics.median(r[k] for r in rows)
    for k in ("expected", "delivered", "lost", "duplicated", "reordered"):
        out[k] = sum(r[k] for r in rows)
    return out


def memory(args, addr, pid):
    """Fill `topics` history topics to their size (100) with `payload`-byte payloads."""
    before_rss, before = rss(pid), bc.metrics(addr)
    pad = "x" * max(0, args.payload - 12)
    per_topic = 100
    for t in range(args.entries_topics):
        items = [{"topic": f"hist:mem:{t}", "event": "m", "payload": {"n": n, "x": pad}}
                 for n in range(per_topic)]
        broadcast_batch(addr, items)
    time.sleep(0.5)  # two ticks: the gauges are fresh
    after_rss, after = rss(pid), bc.metrics(addr)
    published = args.entries_topics * per_topic
    entries = after.get("corecast_history_entries", 0) - before.get("corecast_history_entries", 0)
    hbytes = after.get("corecast_history_bytes", 0) - before.get("corecast_history_bytes", 0)
    return {
        "topics": args.entries_topics, "publications_kept": published, "payload_bytes": args.payload,
        "ring_entries_all_cores": entries,
        "rss_delta_bytes": after_rss - before_rss,
        "rss_per_publication_kept": (after_rss - before_rss) / published,
        "counted_bytes_per_entry": hbytes / entries if entries else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", action="store_true", help="cargo build --release first")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per side (alternating)")
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--topics", type=int, default=10)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=500.0, help="messages/s per publisher")
    ap.add_argument("--connect-rate", type=float, default=2000.0)
    ap.add_argument("--warmup-secs", type=int, default=2)
    ap.add_argument("--measure-secs", type=int, default=8)
    ap.add_argument("--drain-secs", type=int, default=3)
    ap.add_argument("--source-ips", default="127.0.0.2-127.0.0.250")
    ap.add_argument("--entries-topics", type=int, default=1000)
    ap.add_argument("--payload", type=int, default=100, help="payload bytes for the memory part")
    ap.add_argument("--report-dir", default=os.path.join(bc.ROOT, "reports", "history"))
    args = ap.parse_args()
    server_bin = os.environ.get("BENCH_SERVER_BIN", os.path.join(bc.TARGET, "release", "corecast"))
    bench_bin = os.path.join(bc.TARGET, "release", "corecast-bench")
    if args.build or not (os.path.exists(server_bin) and os.path.exists(bench_bin)):
        log("building (release)")
        subprocess.run(["cargo", "build", "--release", "-p", "corecast", "-p", "corecast-bench"],
                       cwd=bc.ROOT, check=True, timeout=3600)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = os.path.join(args.report_dir, stamp)
    os.makedirs(out_dir, exist_ok=True)
    try:
        server, addr = start_server(server_bin, out_dir)
        sides = {"off": [], "on": []}
        for i in range(args.rounds):
            for side, prefix in (("off", "bench:"), ("on", "hist:")):
                label = f"{i + 1}-{side}"
                sides[side].append(run_round(args, bench_bin, out_dir, addr, server.pid, label, prefix))
        mem = memory(args, addr, server.pid)
        final = bc.metrics(addr)
        bc.stop(server)
    finally:
        bc.stop_all()
    summary = {
        "command": "make bench-history",
        "args": vars(args),
        "off": median_row(sides["off"]), "on": median_row(sides["on"]),
        "rounds": sides, "memory": mem,
        "server_history_entries_at_end": final.get("corecast_history_entries"),
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nhistory A/B ({args.rounds} rounds per side, medians; {args.subscribers} subscribers, "
          f"{args.topics} topics, {args.publishers} socket publishers x {args.rate:.0f}/s, 2 cores)")
    print(f"{'':5} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
          f"{'lost':>6} {'dup':>5} {'reord':>6}")
    for side in ("off", "on"):
        r = summary[side]
        print(f"{side:5} {r['deliveries_per_sec']:>13,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['p99_9_ms']:>9.2f} {r['lost']:>6} {r['duplicated']:>5} {r['reordered']:>6}")
    for side in ("off", "on"):
        each = ", ".join(f"{r['p99_ms']:.2f}" for r in sides[side])
        print(f"{side:5} p99 ms per round: {each}")
    print(f"memory: {mem['publications_kept']} publications of {mem['payload_bytes']} B payload "
          f"kept ({mem['ring_entries_all_cores']:.0f} ring entries over the cores): "
          f"RSS +{mem['rss_delta_bytes']:,} B = {mem['rss_per_publication_kept']:.0f} B per "
          f"publication kept; counted {mem['counted_bytes_per_entry']:.0f} B per ring entry")
    print(f"report: {out_dir}/summary.json")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        bc.stop_all()
        sys.exit(130)
