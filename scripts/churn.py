#!/usr/bin/env python3
"""Connection churn against a corecast build: does memory come back?

Starts `corecast serve` on a loopback port, then N client threads loop for a bounded time:
connect, upgrade to /socket/websocket, phx_join one of 7 topics, read the reply, close. The
server's anonymous memory (/proc/PID/smaps_rollup) is sampled every 10 s; growth after the
warm-up is reported per churn cycle. Exits 1 if that growth passes --max-bytes-per-cycle.

The warm-up (default 70 s) outlasts the 60 s idle timeout on purpose: a closed connection's
timer-wheel entry (8 B) stays until its deadline tick, so for the first 60 s memory grows with
close rate x 8 B per second of timeout, then holds (bounded, not a leak).

    python3 scripts/churn.py [--server target/release/corecast] [--secs 130] [--warmup 70]
"""

import argparse
import json
import os
import socket
import subprocess
import threading
import time

UPGRADE = (
    b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: churn\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
MASK = b"\x11\x22\x33\x44"


def text_frame(text: str) -> bytes:
    data = text.encode()
    assert len(data) < 126
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(data))
    return bytes([0x81, 0x80 | len(data)]) + MASK + masked


def anon_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    raise RuntimeError("no Anonymous line")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="target/release/corecast")
    ap.add_argument("--secs", type=int, default=130)
    ap.add_argument("--warmup", type=int, default=70)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--max-bytes-per-cycle", type=float, default=1.0)
    args = ap.parse_args()
    secs = max(args.warmup + 20, min(args.secs, 3600))

    server = subprocess.Popen(
        [args.server, "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = server.stdout.readline()
        host, port = line.split()[3].rsplit(":", 1)
        port = int(port)
        stop = threading.Event()
        cycles = [0] * args.threads
        errors = [0] * args.threads

        def worker(k: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    with socket.create_connection((host, port), timeout=5) as s:
                        s.sendall(UPGRADE)
                        if not s.recv(4096).startswith(b"HTTP/1.1 101"):
                            errors[k] += 1
                            continue
                        join = json.dumps([str(i), str(i), f"churn:{i % 7}", "phx_join", {}])
                        s.sendall(text_frame(join))
                        if b'"ok"' not in s.recv(4096):
                            errors[k] += 1
                            continue
                    cycles[k] += 1
                except OSError:
                    errors[k] += 1
                i += 1

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.threads)]
        for t in threads:
            t.start()
        start = time.time()
        samples = []
        while time.time() - start < secs:
            time.sleep(10)
            samples.append((round(time.time() - start), sum(cycles), anon_kib(server.pid)))
            print(f"churn: {samples[-1][0]:>4} s  cycles {samples[-1][1]:>9,}  "
                  f"server anon {samples[-1][2]:,} KiB", flush=True)
        stop.set()
        for t in threads:
            t.join()
    finally:
        server.terminate()
        server.wait(timeout=20)

    (_, c0, a0) = next(s for s in samples if s[0] >= args.warmup)
    (_, c1, a1) = samples[-1]
    per_cycle = (a1 - a0) * 1024 / max(1, c1 - c0)
    print(f"churn: {sum(cycles):,} cycles, {sum(errors)} errors; after {args.warmup} s of warm-up: "
          f"{a1 - a0:+,} KiB over {c1 - c0:,} cycles = {per_cycle:+.2f} B per cycle")
    return 0 if per_cycle <= args.max_bytes_per_cycle and sum(errors) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
