#!/usr/bin/env python3
"""Long-poll sessions (issue 14): what a session costs, and how fast a broadcast reaches pollers.

1. Memory: a fresh server (`--cores 2`), N long-poll sessions (default 5,000) opened with
   `GET /socket/longpoll?vsn=2.0.0`, each joining `room:lp` with one POST; server RSS before and
   after, per session. Next to it, the same N joined WebSocket sockets on another fresh server
   (one raw client socket each), per socket: a session holds no socket, but its slot, task and
   registry entry, and what it keeps queued between polls.
2. Latency: P pollers (default 200) keep one poll each waiting (phoenix.js's loop: poll, answer,
   poll again), the API broadcasts B messages (default 200, 20 a second), each with its send time;
   the time from the broadcast to each poller's answer: p50/p99/max, and deliveries counted.

Connections are plain sockets from this process (standard library only), on loopback. Every wait
is bounded; both servers are stopped. Prints one JSON summary and writes it to
reports/longpoll/<UTC timestamp>.json.

    python3 scripts/bench_longpoll.py [--sessions 5000] [--pollers 200] [--broadcasts 200] [--no-build]
"""
import argparse
import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def log(msg):
    print(f"bench-longpoll: {msg}", file=sys.stderr, flush=True)


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start_server(binary, extra=()):
    cfg = os.path.join("/tmp", f"bench-longpoll-{os.getpid()}.toml")
    with open(cfg, "w") as f:
        f.write("max_longpoll_sessions = 1000000\nmax_messages_per_sec = 0\nhttp_keepalive_ms = 30000\n")
        f.write("idle_timeout_ms = 600000\nlongpoll_window_ms = 20000\n")
        for line in extra:
            f.write(line + "\n")
    p = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--cores", "2", "--config", cfg],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 15
    while time.time() < deadline:
        line = p.stdout.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            return p, int(m.group(1))
    p.kill()
    raise SystemExit("server did not start")


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()


class Http:
    """One kept-alive HTTP/1.1 connection, requests one at a time."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def send(self, method, path, body=b"", ctype="application/x-ndjson"):
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
        if method == "POST":
            head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        self.s.sendall(head.encode() + b"\r\n" + body)

    def read(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        head, rest = self.buf.split(b"\r\n\r\n", 1)
        n = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        while len(rest) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            rest += chunk
        self.buf = rest[n:]
        return json.loads(rest[:n])

    def call(self, method, path, body=b""):
        self.send(method, path, body)
        return self.read()


def open_session(port, topic):
    c = Http(port)
    r = c.call("GET", "/socket/longpoll?vsn=2.0.0")
    assert r["status"] == 410, r
    tok = r["token"]
    join = f'["1","1","{topic}","phx_join",{{}}]'.encode()
    assert c.call("POST", f"/socket/longpoll?vsn=2.0.0&token={tok}", join)["status"] == 200
    r = c.call("GET", f"/socket/longpoll?vsn=2.0.0&token={tok}")  # the join reply
    assert r["status"] == 200 and "phx_reply" in r["messages"][0], r
    return c, tok


def memory(binary, n):
    p, port = start_server(binary)
    try:
        time.sleep(0.5)
        before = rss(p.pid)
        conns = []
        for i in range(n):
            c, tok = open_session(port, "room:lp")
            c.s.close()  # the session stays: it has no socket
            conns.append(tok)
        time.sleep(1.0)
        after = rss(p.pid)
        lp = (after - before) / n
    finally:
        stop(p)
    # The same number of joined WebSocket sockets.
    p, port = start_server(binary)
    socks = []
    try:
        time.sleep(0.5)
        before = rss(p.pid)
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(
                b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            got = b""
            while b"\r\n\r\n" not in got:
                got += s.recv(4096)
            payload = b'["1","1","room:lp","phx_join",{}]'
            mask = b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
            s.recv(4096)
            socks.append(s)
        time.sleep(1.0)
        ws = (rss(p.pid) - before) / n
    finally:
        for s in socks:
            s.close()
        stop(p)
    return {"sessions": n, "rss_per_session_bytes": round(lp), "rss_per_websocket_bytes": round(ws)}


def latency(binary, pollers, broadcasts):
    p, port = start_server(binary)
    try:
        sess = [open_session(port, "room:lat") for _ in range(pollers)]
        for c, tok in sess:
            c.send("GET", f"/socket/longpoll?vsn=2.0.0&token={tok}")
        api = Http(port)
        by_fd = {c.s.fileno(): (c, tok) for c, tok in sess}
        lat, got = [], 0
        sent, next_at = 0, time.time()
        deadline = time.time() + broadcasts / 20 + 30
        while (sent < broadcasts or got < sent * pollers) and time.time() < deadline:
            now = time.time()
            if sent < broadcasts and now >= next_at:
                body = json.dumps({"topic": "room:lat", "event": "t", "payload": {"at": now}})
                api.send("POST", "/api/broadcast", body.encode())
                api.s.settimeout(30)
                api.read()
                sent += 1
                next_at += 0.05
            r, _, _ = select.select(list(by_fd), [], [], 0.005)
            for fd in r:
                c, tok = by_fd[fd]
                ans = c.read()
                t = time.time()
                for m in ans.get("messages", []):
                    msg = json.loads(m)
                    if msg[3] == "t":
                        got += 1
                        lat.append((t - msg[4]["at"]) * 1000)
                c.send("GET", f"/socket/longpoll?vsn=2.0.0&token={tok}")
        lat.sort()
        q = lambda f: round(lat[min(len(lat) - 1, int(f * len(lat)))], 2) if lat else None
        return {"pollers": pollers, "broadcasts": sent, "deliveries": got,
                "expected": sent * pollers, "p50_ms": q(0.5), "p99_ms": q(0.99),
                "max_ms": round(lat[-1], 2) if lat else None}
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=5000)
    ap.add_argument("--pollers", type=int, default=200)
    ap.add_argument("--broadcasts", type=int, default=200)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(TARGET, "release", "corecast")
    log(f"memory: {a.sessions} sessions, then {a.sessions} WebSockets")
    mem = memory(binary, a.sessions)
    log(f"latency: {a.pollers} pollers, {a.broadcasts} broadcasts")
    lat = latency(binary, a.pollers, a.broadcasts)
    out = {"memory": mem, "latency": lat}
    print(json.dumps(out, indent=2))
    d = os.path.join(ROOT, "reports", "longpoll")
    os.makedirs(d, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with open(os.path.join(d, f"{stamp}.json"), "w") as f:
        json.dump(out, f, indent=2)
    ok = lat["deliveries"] == lat["expected"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
