#!/usr/bin/env python3
"""Idle soak (issue 17): servers used briefly, left idle, then sent SIGTERM; each must exit fast.

    python3 scripts/idle_soak.py --bin target/release/corecast --servers 4 --idle-secs 1800

Starts `--servers` servers (alternately `--cores 2` and `--cores 1`) on free loopback ports and
uses each the way an operator trying it would: a POST /api/broadcast, a few WebSockets that join
a topic and leave, a burst of short connections. Then it leaves them alone for `--idle-secs`
(it only looks at /proc, never at their ports: any I/O would wake a core), sends SIGTERM to each
and times its exit. Prints a line per server and a summary; exits 1 if any took longer than
`--max-exit-secs` (a server still running after `--kill-after` seconds is killed). Standard
library only."""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from attacklib import upgrade  # noqa: E402


def masked_text(payload: bytes) -> bytes:
    """One masked client text frame (mask of zeros keeps the payload readable in captures)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload), 0, 0, 0, 0]) + payload


def use_briefly(addr) -> None:
    """A broadcast over the API, a few joined sockets, a burst of short connections."""
    c = http.client.HTTPConnection(*addr, timeout=10)
    body = json.dumps({"topic": "room:lobby", "event": "new_msg", "payload": {"body": "hi"}})
    c.request("POST", "/api/broadcast", body, {"Content-Type": "application/json"})
    c.getresponse().read()
    c.close()
    socks = []
    for i in range(8):
        s = upgrade(addr)
        s.sendall(masked_text(json.dumps(["1", str(i), "room:lobby", "phx_join", {}]).encode()))
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.close()
    for _ in range(500):
        socket.create_connection(addr, timeout=10).close()


def start(binary: str, cores: int):
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--cores", str(cores)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    line = proc.stdout.readline().decode()
    host, port = line.split()[3].rsplit(":", 1)
    return proc, (host, int(port))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/corecast")
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--idle-secs", type=float, default=1800)
    ap.add_argument("--max-exit-secs", type=float, default=2.0)
    ap.add_argument("--kill-after", type=float, default=20.0)
    a = ap.parse_args()

    servers = []
    for i in range(a.servers):
        cores = 2 if i % 2 == 0 else 1
        proc, addr = start(a.bin, cores)
        use_briefly(addr)
        servers.append((proc, addr, cores))
    print(f"{len(servers)} servers used and now idle for {a.idle_secs:.0f} s", flush=True)
    deadline = time.monotonic() + a.idle_secs
    while time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        for proc, addr, _ in servers:
            if proc.poll() is not None:
                print(f"server on {addr[1]} died while idle (rc {proc.returncode})")
                return 1
    worst = 0.0
    failed = 0
    for proc, addr, cores in servers:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=a.kill_after)
            took = time.monotonic() - t0
            state = "exited"
        except subprocess.TimeoutExpired:
            took = time.monotonic() - t0
            state = "STUCK (killed)"
            proc.kill()
            proc.wait()
        worst = max(worst, took)
        ok = state == "exited" and took <= a.max_exit_secs
        failed += 0 if ok else 1
        print(f"server port={addr[1]} cores={cores} {state} {took:.2f} s after SIGTERM"
              f" rc={proc.returncode}", flush=True)
    print(f"summary servers={len(servers)} idle_secs={a.idle_secs:.0f} worst_exit={worst:.2f}s "
          f"failed={failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
