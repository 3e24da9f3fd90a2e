#!/usr/bin/env python3
"""Body-buffering attack against a corecast build: does a request body cost memory?

Starts `corecast serve` on a loopback port, then opens --conns connections that each send
`GET /health` with `Content-Length: --body` and stream that body in 64 KiB writes (one thread,
non-blocking sockets, bounded by --secs), all but its last --withhold bytes (default 1, so a
server that buffers bodies holds every one until its handshake timeout). The server's RSS (/proc/PID/status VmRSS) is sampled
every 20 ms. Prints one JSON line: RSS before, at its peak and after (all sockets closed, then
--settle seconds), how long the peak took, and the statuses the server answered with.
With --api the requests are `POST /api/broadcast` (application/json, from loopback: allowed),
so a body-reading server has to buffer them: its per-core body budget bounds that.

    python3 scripts/body_attack.py [--server target/release/corecast] [--conns 300]
                                   [--body 1048576] [--withhold 1] [--secs 20] [--settle 2] [--api]
"""

import argparse
import json
import selectors
import socket
import threading
import time

from attacklib import rss_kib, server

CHUNK = 64 * 1024


def rss_bytes(pid: int) -> int:
    return rss_kib(pid) * 1024


class Sampler(threading.Thread):
    """Keeps the peak RSS (and when it was reached) until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.peak_at = pid, rss_bytes(pid), 0.0
        self.start_time, self.done = time.monotonic(), threading.Event()

    def run(self):
        while not self.done.wait(0.02):
            rss = rss_bytes(self.pid)
            if rss > self.peak:
                self.peak, self.peak_at = rss, time.monotonic() - self.start_time


def attack(addr, conns: int, body: int, withhold: int, secs: float, api: bool) -> dict:
    if api:
        start = "POST /api/broadcast HTTP/1.1\r\nContent-Type: application/json\r\n"
    else:
        start = "GET /health HTTP/1.1\r\n"
    head = f"{start}Host: x\r\nContent-Length: {body}\r\n\r\n".encode()
    chunk = b"x" * CHUNK
    sel = selectors.DefaultSelector()
    left, answers, socks = {}, {}, []
    for _ in range(conns):
        s = socket.create_connection(addr)
        s.sendall(head)
        s.setblocking(False)
        socks.append(s)
        left[s] = max(body - withhold, 0)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + secs
    first_answer = None
    started = time.monotonic()
    while sel.get_map() and time.monotonic() < deadline:
        for key, ev in sel.select(timeout=0.1):
            s = key.fileobj
            if ev & selectors.EVENT_READ:
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    data = b""
                if data:
                    if s not in answers:
                        answers[s] = data.split(b" ", 2)[1].decode(errors="replace")
                        first_answer = first_answer or time.monotonic() - started
                    continue
                if data == b"":
                    # The server is done sending; an attacker keeps streaming its body anyway.
                    if left[s] > 0:
                        sel.modify(s, selectors.EVENT_WRITE)
                    else:
                        sel.unregister(s)
                    continue
            if ev & selectors.EVENT_WRITE and left.get(s, 0) > 0:
                try:
                    left[s] -= s.send(chunk[: min(CHUNK, left[s])])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    left[s] = 0  # reset: the server dropped the connection
                if left[s] <= 0 and s in sel.get_map():
                    if key.events == selectors.EVENT_WRITE:
                        sel.unregister(s)
                    else:
                        sel.modify(s, selectors.EVENT_READ)
    statuses = {}
    for s in socks:
        code = answers.get(s, "none")
        statuses[code] = statuses.get(code, 0) + 1
        s.close()
    return {
        "statuses": statuses,
        "body_bytes_unsent": sum(left.values()),
        "first_answer_s": None if first_answer is None else round(first_answer, 3),
        "attack_s": round(time.monotonic() - started, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="target/release/corecast")
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--body", type=int, default=1 << 20)
    ap.add_argument("--withhold", type=int, default=1)
    ap.add_argument("--secs", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--api", action="store_true", help="POST /api/broadcast instead")
    args = ap.parse_args()
    conns, secs = min(args.conns, 5000), min(args.secs, 120.0)

    with server(args.server) as (proc, (host, port)):
        time.sleep(0.3)
        before = rss_bytes(proc.pid)
        sampler = Sampler(proc.pid)
        sampler.start()
        result = attack((host, int(port)), conns, args.body, args.withhold, secs, args.api)
        time.sleep(args.settle)
        sampler.done.set()
        sampler.join()
        mib = lambda b: round(b / (1 << 20), 1)  # noqa: E731
        result.update(
            conns=conns,
            body=args.body,
            withheld=args.withhold,
            request="POST /api/broadcast" if args.api else "GET /health",
            rss_before_mib=mib(before),
            rss_peak_mib=mib(sampler.peak),
            peak_at_s=round(sampler.peak_at, 2),
            rss_after_mib=mib(rss_bytes(proc.pid)),
        )
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
