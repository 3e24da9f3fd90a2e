#!/usr/bin/env python3
"""Cluster broadcast bench: 2 corecast nodes + nats-server on this machine, next to one node.

The `corecast-bench broadcast` scenario (bench/README.md), run twice in one go:

1. cluster: nats-server, node A and node B (`--nats-url`, `--cores 1` each, A pinned to the
   first allowed CPU and B to the second: a 1-core node pins its core to the first CPU it may
   use, so two unpinned 1-core nodes would share one CPU). Subscribers split half on A, half on
   B (worker process w connects to node w mod 2: `--subscriber-url A,B`), socket publishers on
   A only (`--publish-url A`). Latency, lost and duplicated are reported per node: on A the
   broadcast stays on its node, on B it went A -> NATS -> B.
2. single node: the same scenario with subscribers and publishers on one fresh node with no
   cluster config (`--cores 1`, pinned like A).

/metrics of both nodes (and nats-server's /varz, `-m PORT`) are read before and after the
cluster run and polled during it: NATS messages per broadcast = corecast_cluster_published_total
on A / broadcasts published on A (corecast_broadcasts_total), and corecast_cluster_received_total
on B per broadcast (expect 1 and 1; B publishes nothing, A receives nothing: no echo);
nats-server in_msgs and out_msgs per broadcast cross-check them (1 in from A, 1 out to B).

The bench client (its 2 worker processes and the publishers) runs unpinned on the same CPUs as
the servers: compare figures within one run. Every process started is stopped (also on failure
or Ctrl-C); every wait is bounded. Writes reports/cluster/<UTC>/summary.json (the bench's own
reports in 1-cluster/ and 2-single/, server logs). Standard library only.

    python3 scripts/bench_cluster.py [--build] [--subscribers 2000] [--topics 10]
        [--publishers 4] [--rate 200] [--measure-secs 10]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
WS_PATH = "/socket/websocket?vsn=2.0.0"

PROCS = []  # every Popen this script started, stopped at exit


def log(msg):
    print(f"bench-cluster: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def metrics(addr):
    """Every `corecast_*` sample of /metrics, summed over labels (cores, node): {name: value}."""
    out = {}
    try:
        _, text = http_get(f"http://{addr}/metrics")
    except OSError as e:
        log(f"/metrics of {addr}: {e}")
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


def varz(port, quiet=False):
    try:
        _, text = http_get(f"http://127.0.0.1:{port}/varz")
        return json.loads(text)
    except (OSError, ValueError) as e:
        if not quiet:
            log(f"nats /varz: {e}")
        return {}


def delta(before, after):
    return {k: after[k] - before.get(k, 0.0) for k in sorted(after) if after[k] != before.get(k, 0.0)}


def pinned(cpu):
    """preexec_fn: run the child on one CPU (None: leave it alone)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def start(cmd, log_path, cpu=None, stdout_path=None):
    """Start `cmd` in its own process group (stderr to `log_path`, stdout there too or to
    `stdout_path`), on CPU `cpu` if given; remembered in PROCS until stopped."""
    log_f = open(log_path, "wb")
    out_f = open(stdout_path, "wb") if stdout_path else log_f
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out_f, stderr=log_f,
                         preexec_fn=pinned(cpu), start_new_session=True)
    if out_f is not log_f:
        out_f.close()
    p.log_f = log_f
    PROCS.append(p)
    return p


def stop(p, grace=12.0):
    """SIGTERM the process group we started, SIGKILL it if it is still there after `grace`."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"pid {p.pid} did not stop in {grace:.0f} s: SIGKILL")
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)
    if p in PROCS:
        PROCS.remove(p)
    p.log_f.close()


def stop_all():
    for p in list(reversed(PROCS)):
        try:
            stop(p)
        except Exception as e:  # keep stopping the others
            log(f"stopping pid {p.pid}: {e}")


def nats_bin():
    for b in ("nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        path = shutil.which(b) or (b if os.path.exists(b) else None)
        if path:
            return path
    sys.exit("bench-cluster: nats-server is not installed (apt-get install nats-server)")


def start_nats(out_dir):
    port, mon = free_port(), free_port()
    p = start([nats_bin(), "-a", "127.0.0.1", "-p", str(port), "-m", str(mon)],
              os.path.join(out_dir, "nats-server.log"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"nats-server exited ({p.returncode}): see nats-server.log")
        if varz(mon, quiet=True).get("server_id"):
            return p, port, mon
        time.sleep(0.1)
    raise RuntimeError("nats-server did not answer /varz within 10 s")


def start_node(server_bin, out_dir, name, cpu, nats_port=None):
    """A fresh `corecast serve --cores 1` on a free port (`--listen 127.0.0.1:0`); returns (proc,
    addr). A cluster node is ready once /metrics says it is connected to NATS."""
    cmd = [server_bin, "serve", "--listen", "127.0.0.1:0", "--cores", "1"]
    if nats_port is not None:
        cmd += ["--nats-url", f"nats://127.0.0.1:{nats_port}", "--node", name]
    stdout_path = os.path.join(out_dir, f"{name}.stdout")
    p = start(cmd, os.path.join(out_dir, f"{name}.log"), cpu=cpu, stdout_path=stdout_path)
    deadline = time.monotonic() + 15
    addr = None
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"node {name} exited ({p.returncode}): see {name}.log")
        if addr is None:
            with open(stdout_path) as f:
                m = re.search(r"^corecast listening on (\S+)", f.read(), re.M)
            addr = m.group(1) if m else None
        if addr is not None:
            m = metrics(addr)
            if nats_port is None and m or m.get("corecast_cluster_connected") == 1.0:
                log(f"node {name}: pid {p.pid} on {addr}, CPU {cpu}"
                    + (f", NATS 127.0.0.1:{nats_port}" if nats_port else ""))
                return p, addr
        time.sleep(0.1)
    raise RuntimeError(f"node {name} not ready (listening, and connected to NATS) within 15 s")


def ws(addr):
    return f"ws://{addr}{WS_PATH}"


class Poller:
    """Polls /metrics of some nodes every 0.5 s in a thread: the highest value of some gauges."""

    def __init__(self, addrs, names):
        self.addrs, self.names = addrs, names
        self.max = {a: {n: 0.0 for n in names} for a in addrs}
        self.done = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.done.wait(0.5):
            for a in self.addrs:
                m = metrics(a)
                for n in self.names:
                    self.max[a][n] = max(self.max[a][n], m.get(n, 0.0))

    def finish(self):
        self.done.set()
        self.t.join(timeout=15)
        return self.max


def run_bench(args, bench_bin, out_dir, label, url, server_pid, publish_url=None, sub_urls=None):
    """One `corecast-bench broadcast`, bounded; returns its summary.json."""
    report = os.path.join(out_dir, label)
    cmd = [bench_bin, "broadcast", "--url", url, "--server-pid", str(server_pid),
           "--label", label, "--report", report,
           "--subscribers", str(args.subscribers), "--topics", str(args.topics),
           "--publishers", str(args.publishers), "--via", "socket", "--rate", str(args.rate),
           "--connect-rate", str(args.connect_rate), "--warmup-secs", str(args.warmup_secs),
           "--measure-secs", str(args.measure_secs), "--drain-secs", str(args.drain_secs),
           "--workers", "2", "--source-ips", args.source_ips]
    if publish_url:
        cmd += ["--publish-url", publish_url]
    if sub_urls:
        cmd += ["--subscriber-url", ",".join(sub_urls)]
    limit = (args.subscribers / args.connect_rate * 2 + args.warmup_secs + args.measure_secs
             + args.drain_secs + 90)
    log(f"{label}: " + " ".join(cmd[1:]))
    p = start(cmd, os.path.join(out_dir, f"{label}.bench.log"),
              stdout_path=os.path.join(out_dir, f"{label}.bench.stdout"))
    try:
        rc = p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        log(f"{label}: the bench client did not finish within {limit:.0f} s: stopping it")
        stop(p)
        raise RuntimeError(f"{label}: bench client timed out")
    stop(p)
    if rc != 0:
        raise RuntimeError(f"{label}: bench client exited {rc}: see {label}.bench.log")
    with open(os.path.join(report, "summary.json")) as f:
        return json.load(f)


def scenario_row(name, r):
    """A table row from a bench summary's `results` or one of its `by_subscriber_url`."""
    lat, acc = r["delivery_latency"], r["accounting"]
    return {
        "name": name,
        "subscribers": r["subscribers_joined"],
        "deliveries_per_sec": r["deliveries_per_sec"],
        "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "p99_9_ms": lat["p99_9_ms"],
        "max_ms": lat["max_ms"],
        "expected": acc["expected"], "delivered": acc["delivered"], "lost": acc["lost"],
        "duplicated": acc["duplicated"], "reordered": r["reordered"],
    }


def sent_total(summary):
    pubs = summary["results"]["publishers"]
    return int(sum(pubs["sent_measured"]) + sum(pubs["sent_warmup"]))


def cluster_run(args, server_bin, bench_bin, out_dir, cpus):
    nats, nats_port, mon = start_nats(out_dir)
    a, addr_a = start_node(server_bin, out_dir, "node-a", cpus[0], nats_port)
    b, addr_b = start_node(server_bin, out_dir, "node-b", cpus[1], nats_port)
    before = {"a": metrics(addr_a), "b": metrics(addr_b), "nats": varz(mon)}
    poll = Poller([addr_a, addr_b], ["corecast_cluster_subscriptions", "corecast_connections"])
    try:
        s = run_bench(args, bench_bin, out_dir, "1-cluster", ws(addr_a), a.pid,
                      publish_url=ws(addr_a), sub_urls=[ws(addr_a), ws(addr_b)])
    finally:
        peak = poll.finish()
    time.sleep(0.5)  # the last NATS messages and counters settle
    after = {"a": metrics(addr_a), "b": metrics(addr_b), "nats": varz(mon)}
    for p in (b, a, nats):
        stop(p)
    da, db = delta(before["a"], after["a"]), delta(before["b"], after["b"])
    nv = {k: after["nats"].get(k, 0) - before["nats"].get(k, 0)
          for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}
    broadcasts_a = da.get("corecast_broadcasts_total", 0.0)
    sent = sent_total(s)
    per = lambda v: (v / broadcasts_a) if broadcasts_a else None  # noqa: E731
    nats_fig = {
        "broadcasts_published_on_a": broadcasts_a,
        "broadcasts_sent_by_client": sent,
        "broadcasts_published_on_b": db.get("corecast_broadcasts_total", 0.0),
        "a_cluster_published_total": da.get("corecast_cluster_published_total", 0.0),
        "a_cluster_received_total": da.get("corecast_cluster_received_total", 0.0),
        "b_cluster_published_total": db.get("corecast_cluster_published_total", 0.0),
        "b_cluster_received_total": db.get("corecast_cluster_received_total", 0.0),
        "a_cluster_dropped_total": da.get("corecast_cluster_dropped_total", 0.0),
        "a_cluster_unreachable_total": da.get("corecast_cluster_unreachable_total", 0.0),
        "nats_publishes_per_broadcast_a": per(da.get("corecast_cluster_published_total", 0.0)),
        "nats_received_per_broadcast_b": per(db.get("corecast_cluster_received_total", 0.0)),
        "nats_varz_delta": nv,
        "nats_in_msgs_per_broadcast": per(nv["in_msgs"]),
        "nats_out_msgs_per_broadcast": per(nv["out_msgs"]),
        "cluster_subscriptions_peak": {"a": peak[addr_a]["corecast_cluster_subscriptions"],
                                       "b": peak[addr_b]["corecast_cluster_subscriptions"]},
        "connections_peak": {"a": peak[addr_a]["corecast_connections"],
                             "b": peak[addr_b]["corecast_connections"]},
        "deliveries_total": {"a": da.get("corecast_deliveries_total", 0.0),
                             "b": db.get("corecast_deliveries_total", 0.0)},
    }
    by = s["results"]["by_subscriber_url"]
    rows = [scenario_row("cluster: all subscribers", s["results"])]
    names = {ws(addr_a): "  on A (same node)", ws(addr_b): "  on B (across nodes)"}
    rows += [scenario_row(names.get(u["url"], u["url"]), u) for u in by]
    return {"nodes": {"a": addr_a, "b": addr_b, "nats": f"127.0.0.1:{nats_port}",
                      "nats_monitor": f"127.0.0.1:{mon}"},
            "rows": rows, "nats": nats_fig, "metrics_delta": {"a": da, "b": db},
            "offered_deliveries_per_sec": s["results"]["offered_deliveries_per_sec"],
            "achieved_rate": s["results"]["achieved_rate"],
            "publisher_errors": s["results"]["publishers"]["errors"],
            "subscriber_drops": s["results"]["subscriber_drops"],
            "subscriber_failures": s["results"]["subscriber_failures"]}


def single_run(args, server_bin, bench_bin, out_dir, cpus):
    n, addr = start_node(server_bin, out_dir, "node-single", cpus[0])
    before = metrics(addr)
    try:
        s = run_bench(args, bench_bin, out_dir, "2-single", ws(addr), n.pid)
    finally:
        after = metrics(addr)
        stop(n)
    return {"node": addr, "rows": [scenario_row("single node", s["results"])],
            "metrics_delta": delta(before, after),
            "offered_deliveries_per_sec": s["results"]["offered_deliveries_per_sec"],
            "achieved_rate": s["results"]["achieved_rate"],
            "publisher_errors": s["results"]["publishers"]["errors"],
            "subscriber_drops": s["results"]["subscriber_drops"],
            "subscriber_failures": s["results"]["subscriber_failures"]}


def ratio(v):
    return "-" if v is None else f"{v:.3f}"


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.{nd}f}"
    return f"{int(v):,}"


def table(summary):
    p = summary["params"]
    lines = [
        f"corecast cluster bench {summary['utc']}: {p['subscribers']:,} subscribers over "
        f"{p['topics']} topics, {p['publishers']} socket publishers on A at {p['rate']:g} msgs/s, "
        f"{p['warmup_secs']} s warm-up + {p['measure_secs']} s measured; nodes --cores 1 "
        f"(A and single on CPU {p['cpus'][0]}, B on CPU {p['cpus'][1]}), "
        f"{summary['machine']['cpus']} CPUs shared with the bench client",
        "",
        f"{'':28} {'subs':>6} {'deliveries/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}"
        f" {'max ms':>8} {'expected':>10} {'lost':>6} {'dup':>5} {'reord':>6}",
    ]
    for r in summary["cluster"]["rows"] + summary["single"]["rows"]:
        lines.append(
            f"{r['name']:28} {fmt(r['subscribers']):>6} {fmt(r['deliveries_per_sec'], 0):>13}"
            f" {fmt(r['p50_ms'], 3):>8} {fmt(r['p99_ms'], 3):>8} {fmt(r['p99_9_ms'], 3):>9}"
            f" {fmt(r['max_ms'], 3):>8} {fmt(r['expected']):>10} {fmt(r['lost']):>6}"
            f" {fmt(r['duplicated']):>5} {fmt(r['reordered']):>6}")
    n = summary["cluster"]["nats"]
    v = n["nats_varz_delta"]
    lines += [
        "",
        f"offered deliveries/s: cluster {fmt(summary['cluster']['offered_deliveries_per_sec'], 0)},"
        f" single {fmt(summary['single']['offered_deliveries_per_sec'], 0)}",
        f"broadcasts published on A (corecast_broadcasts_total): {fmt(n['broadcasts_published_on_a'])}"
        f" (client sent {fmt(n['broadcasts_sent_by_client'])}, warm-up included);"
        f" on B: {fmt(n['broadcasts_published_on_b'])}",
        f"NATS publishes per broadcast, A (cluster_published_total): "
        f"{ratio(n['nats_publishes_per_broadcast_a'])}   B published: {fmt(n['b_cluster_published_total'])}",
        f"NATS messages received per broadcast, B (cluster_received_total): "
        f"{ratio(n['nats_received_per_broadcast_b'])}   A received: {fmt(n['a_cluster_received_total'])}",
        f"nats-server /varz: in_msgs {fmt(v['in_msgs'])} ({ratio(n['nats_in_msgs_per_broadcast'])}"
        f" per broadcast), out_msgs {fmt(v['out_msgs'])} ({ratio(n['nats_out_msgs_per_broadcast'])}"
        f" per broadcast)",
        f"cluster_subscriptions (peak during the run): A {fmt(n['cluster_subscriptions_peak']['a'])},"
        f" B {fmt(n['cluster_subscriptions_peak']['b'])}; cluster dropped {fmt(n['a_cluster_dropped_total'])},"
        f" unreachable {fmt(n['a_cluster_unreachable_total'])}",
        f"server deliveries_total (publisher copies and warm-up included): A"
        f" {fmt(n['deliveries_total']['a'])}, B {fmt(n['deliveries_total']['b'])}, single"
        f" {fmt(summary['single']['metrics_delta'].get('corecast_deliveries_total'))}",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", action="store_true",
                    help="cargo build --release the server and the bench client first "
                         "(also done when a binary is missing)")
    ap.add_argument("--subscribers", type=int, default=2000)
    ap.add_argument("--topics", type=int, default=10)
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=200.0,
                    help="broadcasts/s, all publishers together (max_messages_per_sec is 200 "
                         "per socket: keep rate/publishers under it)")
    ap.add_argument("--connect-rate", type=float, default=2000.0)
    ap.add_argument("--warmup-secs", type=int, default=2)
    ap.add_argument("--measure-secs", type=int, default=10)
    ap.add_argument("--drain-secs", type=int, default=5)
    ap.add_argument("--source-ips", default="127.0.0.2-127.0.0.250")
    ap.add_argument("--skip-single", action="store_true", help="only the cluster run")
    ap.add_argument("--report-dir", default=os.path.join(ROOT, "reports", "cluster"))
    args = ap.parse_args()
    if args.rate / args.publishers > 200:
        log("warning: over 200 msgs/s per publisher socket: the server closes it (1008)")

    server_bin = os.environ.get("BENCH_SERVER_BIN", os.path.join(TARGET, "release", "corecast"))
    bench_bin = os.path.join(TARGET, "release", "corecast-bench")
    if args.build or not (os.path.exists(server_bin) and os.path.exists(bench_bin)):
        log("building (release)")
        subprocess.run(["cargo", "build", "--release", "-p", "corecast", "-p", "corecast-bench"],
                       cwd=ROOT, check=True, timeout=1800)
    allowed = sorted(os.sched_getaffinity(0))
    cpus = [allowed[0], allowed[1 % len(allowed)]]
    if len(allowed) < 2:
        log("only one CPU: both nodes share it")

    utc = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = os.path.join(args.report_dir, utc)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.monotonic()

    def on_signal(sig, _frame):
        raise SystemExit(f"bench-cluster: signal {sig}: stopping")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster = cluster_run(args, server_bin, bench_bin, out_dir, cpus)
        single = None
        if not args.skip_single:
            time.sleep(2)  # the cluster run's sockets go
            single = single_run(args, server_bin, bench_bin, out_dir, cpus)
    finally:
        stop_all()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    summary = {
        "utc": utc,
        "commit": commit,
        "server_bin": server_bin,
        "params": {k: getattr(args, k) for k in ("subscribers", "topics", "publishers", "rate",
                                                 "connect_rate", "warmup_secs", "measure_secs",
                                                 "drain_secs", "source_ips")}
        | {"via": "socket", "server_cores_per_node": 1, "cpus": cpus, "client_workers": 2},
        "machine": {"cpus": os.cpu_count(), "allowed_cpus": allowed,
                    "loadavg": open("/proc/loadavg").read().split()[:3]},
        "cluster": cluster,
        "single": single or {"rows": [], "metrics_delta": {}, "offered_deliveries_per_sec": None},
        "elapsed_secs": round(time.monotonic() - t0, 1),
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    text = table(summary)
    with open(os.path.join(out_dir, "table.txt"), "w") as f:
        f.write(text + "\n")
    print(text)
    log(f"took {summary['elapsed_secs']} s; report in {os.path.relpath(out_dir, ROOT)}")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
