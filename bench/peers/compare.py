#!/usr/bin/env python3
"""Combine the corecast-bench `broadcast` reports of scripts/peers.sh into one table and one
summary.json.

    compare.py OUT_DIR ELAPSED_SECS ROUNDS SERVER...

Reads OUT_DIR/<server>/ (one round) or OUT_DIR/<server>-r<k>/ (several): the bench's
summary.json and the script's peers-probe.json. With several rounds every figure is the median
over the rounds. Ratios are oriented so that > 1 means corecast is better. Standard library only.
"""

import json
import os
import statistics
import sys


def get(v, path):
    for k in path.split("/"):
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def num(v, path):
    x = get(v, path)
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def one_run(d):
    """The figures of one server in one round, from its report directory."""
    s = load(os.path.join(d, "summary.json"))
    probe = load(os.path.join(d, "peers-probe.json")) or {}
    lat = "results/delivery_latency/"
    r = {
        "dir": d,
        "ok": s is not None and probe.get("bench_exit") == 0 and get(s, "results") is not None,
        "deliveries_per_sec": num(s, "results/deliveries_per_sec"),
        "offered_deliveries_per_sec": num(s, "results/offered_deliveries_per_sec"),
        "achieved_rate": num(s, "results/achieved_rate"),
        "p50_ms": num(s, lat + "p50_ms"),
        "p99_ms": num(s, lat + "p99_ms"),
        "p99_9_ms": num(s, lat + "p99_9_ms"),
        "max_ms": num(s, lat + "max_ms"),
        "lost": num(s, "results/accounting/lost"),
        "duplicated": num(s, "results/accounting/duplicated"),
        "subscribers_joined": num(s, "results/subscribers_joined"),
    }
    # Memory per connection: the bench samples the server's VmRSS once every subscriber has
    # joined, before publishing (samples.before); the script took VmRSS when the server said
    # "listening on". The difference over the joined subscribers is the server's user-space
    # memory per idle joined connection. A figure from the bench itself wins if it has one.
    idle = probe.get("idle_rss_kib")
    joined_rss = num(s, "samples/before/server_rss_bytes")
    r["rss_per_connection_bytes"] = num(s, "memory/rss_per_connection_bytes")
    if r["rss_per_connection_bytes"] is None and idle is not None and joined_rss and r["subscribers_joined"]:
        r["rss_per_connection_bytes"] = (joined_rss - idle * 1024) / r["subscribers_joined"]
    r["idle_rss_bytes"] = None if idle is None else idle * 1024
    r["joined_rss_bytes"] = joined_rss
    peak = probe.get("peak_rss_kib")
    r["peak_rss_bytes"] = peak * 1024 if peak else None
    # CPU: the server's over the whole bench run, and per message the clients received.
    cpu = probe.get("server_cpu_secs")
    rx = num(s, "results/received/total")
    copies = num(s, "results/publisher_copies/received") or 0.0
    r["server_cpu_secs"] = cpu
    r["server_cpu_us_per_delivery"] = cpu * 1e6 / (rx + copies) if cpu is not None and rx else None
    r["bench_cpu_secs"] = probe.get("bench_cpu_secs")
    r["others_cpu_percent_during"] = probe.get("others_cpu_percent_during")
    r["machine_busy_percent_before"] = probe.get("machine_busy_percent_before")
    return r, s


# A round during which other processes used this share of the machine's CPU or more is
# "disturbed": left out of the medians unless every round was.
DISTURBED_PERCENT = 10


def disturbed(r):
    return (r.get("others_cpu_percent_during") or 0) >= DISTURBED_PERCENT


def median_row(runs):
    """Median of every numeric figure over the undisturbed rounds (all rounds if none is)."""
    used = [r for r in runs if not disturbed(r)] or runs
    out = {
        "ok": all(r["ok"] for r in runs),
        "rounds": len(runs),
        "rounds_used": len(used),
        "all_disturbed": len(used) == len(runs) and any(disturbed(r) for r in runs),
    }
    for k in runs[0]:
        if k in ("ok", "dir"):
            continue
        xs = [r[k] for r in used if isinstance(r.get(k), (int, float))]
        out[k] = statistics.median(xs) if xs else None
    return out


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def main():
    out, elapsed, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    names = sys.argv[4:]
    rows, per_server, first_summary = [], {}, None
    for n in names:
        dirs = [os.path.join(out, n)] if rounds == 1 else [
            os.path.join(out, f"{n}-r{k}") for k in range(1, rounds + 1)]
        runs, summaries = [], []
        for d in dirs:
            r, s = one_run(d)
            runs.append(r)
            summaries.append(s)
            first_summary = first_summary or s
        row = median_row(runs)
        row["server"] = n
        rows.append(row)
        per_server[n] = {"rounds": runs, "bench_summaries": summaries}

    base = next((r for r in rows if r["server"] == "corecast"), None)
    for r in rows:
        if base is None or r is base:
            continue
        # All three oriented so that > 1 means corecast is better.
        r["ratio_deliveries_corecast_over_peer"] = ratio(base["deliveries_per_sec"], r["deliveries_per_sec"])
        r["ratio_p99_peer_over_corecast"] = ratio(r["p99_ms"], base["p99_ms"])
        r["ratio_rss_per_conn_peer_over_corecast"] = ratio(
            r["rss_per_connection_bytes"], base["rss_per_connection_bytes"])

    hdr = ["server", "rounds", "deliv/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "lost", "dup",
           "RSS/conn", "peak RSS", "CPU s", "CPU us/deliv", "deliv cc/peer", "p99 peer/cc",
           "RSS peer/cc"]
    table = [hdr]
    for r in rows:
        rss = r["rss_per_connection_bytes"]
        peak = r["peak_rss_bytes"]
        is_base = r is base
        table.append([
            r["server"] + ("" if r["ok"] else " (FAILED)"),
            f"{r['rounds_used']}/{r['rounds']}" + ("!" if r["all_disturbed"] else ""),
            fmt(r["deliveries_per_sec"], 0), fmt(r["p50_ms"]), fmt(r["p99_ms"]),
            fmt(r["p99_9_ms"]), fmt(r["max_ms"]), fmt(r["lost"], 0), fmt(r["duplicated"], 0),
            "n/a" if rss is None else f"{rss / 1024:,.1f} KiB",
            "n/a" if peak is None else f"{peak / 2**20:,.0f} MiB",
            fmt(r["server_cpu_secs"], 1), fmt(r["server_cpu_us_per_delivery"]),
            "-" if is_base else fmt(r.get("ratio_deliveries_corecast_over_peer")),
            "-" if is_base else fmt(r.get("ratio_p99_peer_over_corecast")),
            "-" if is_base else fmt(r.get("ratio_rss_per_conn_peer_over_corecast")),
        ])
    w = [max(len(row[i]) for row in table) for i in range(len(hdr))]
    lines = ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(row))
             for row in table]
    lines.insert(1, "-" * len(lines[0]))
    p = get(first_summary, "params") or {}
    m = get(first_summary, "machine") or {}
    print()
    print(f"broadcast: {p.get('subscribers')} subscribers / {p.get('topics')} topics, "
          f"{p.get('publishers')} publishers at {p.get('rate')} msg/s via {p.get('via')}, "
          f"{p.get('measure_secs')} s measured; {m.get('cpu_model')} ({m.get('cores')} cores), "
          f"kernel {m.get('kernel')}" + (f"; medians over undisturbed rounds of {rounds}" if rounds > 1 else ""))
    print("\n".join(lines))
    print("ratios: > 1 means corecast is better (deliv/s corecast/peer; p99 and RSS/conn peer/corecast)")
    print("RSS/conn: (server VmRSS once all subscribers joined - VmRSS at start) / subscribers; "
          "peak RSS: highest VmRSS sampled every 0.5 s")
    print("CPU s: server user+system CPU over the whole bench run (ramp included); "
          "CPU us/deliv: that over every message the clients received")
    print(f"rounds: used/run; a round during which other processes took >= {DISTURBED_PERCENT}% "
          "of the machine's CPU is left out of the medians unless all were (marked !)")
    noisy = [r["server"] for r in rows if r["all_disturbed"]]
    if noisy:
        print("WARNING: every round of " + ", ".join(noisy) + " ran while other processes used "
              "the CPUs; those figures are skewed")
    print(f"total {elapsed} s; reports in {out}")

    combined = {
        # Not "broadcast": keeps `corecast-bench table` from reading this file as one run.
        "scenario": "peers",
        "params": p,
        "machine": m,
        # corecast's, so `corecast-bench table` names the server under test in its header.
        "server": next((get(x, "server") for x in per_server.get("corecast", {}).get("bench_summaries", [])
                        if get(x, "server")), None),
        "rounds": rounds,
        "elapsed_secs": elapsed,
        "ratios_note": "every ratio > 1 means corecast is better: deliveries/s corecast/peer, "
                       "p99 latency peer/corecast, RSS per connection peer/corecast",
        "table": rows,
        "servers": per_server,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(combined, f, indent=2)
        f.write("\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
