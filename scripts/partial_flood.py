#!/usr/bin/env python3
"""Partial-message attack against a corecast build: how much memory can pinging sockets hold?

Starts `corecast serve` (its defaults, 2 cores) on a loopback port. N sockets upgrade to
/socket/websocket, each sends the first fragment of a binary message (FIN clear, --bytes of
payload) that it never finishes, then only pings every --ping-every seconds. The server's RSS
(/proc/PID/status VmRSS) is sampled every 0.5 s: before the attack, its peak while the sockets
ping for --secs, and after the client has closed every socket. Prints one JSON line.

Without bounds the server holds N x --bytes for as long as the pings go on. With them it holds
at most max_partial_bytes_per_core per core (the rest are closed with 1013) and closes the
others with 1008 once message_timeout_ms has passed.

    python3 scripts/partial_flood.py [--server target/release/corecast] [--sockets 200]
                                     [--bytes 1000000] [--secs 45] [--ping-every 5]
"""

import argparse
import json
import socket
import time

from attacklib import rss_kib, server, upgrade

MASK = b"\x00\x00\x00\x00"  # a zero mask: the payload goes out as it is (valid, and cheap)
PING = bytes([0x89, 0x80]) + MASK


def first_fragment(n: int) -> bytes:
    """A masked binary frame with FIN clear: the start of a message that never ends."""
    if n < 126:
        head = bytes([0x02, 0x80 | n])
    elif n < 65536:
        head = bytes([0x02, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x02, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + MASK + b"\x07" * n


def close_codes(s: socket.socket, into: dict) -> bool:
    """Read what the server sent; count a close frame's code. True once the socket is done."""
    try:
        data = s.recv(1 << 16)
    except BlockingIOError:
        return False
    except OSError:
        into["reset"] = into.get("reset", 0) + 1
        return True
    if not data:
        into["eof"] = into.get("eof", 0) + 1
        return True
    i = data.find(b"\x88")  # a server close frame: 0x88, length, code
    if i >= 0 and len(data) >= i + 4:
        code = str(int.from_bytes(data[i + 2 : i + 4], "big"))
        into[code] = into.get(code, 0) + 1
        return True
    return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="target/release/corecast")
    ap.add_argument("--sockets", type=int, default=200)
    ap.add_argument("--bytes", type=int, default=1_000_000)
    ap.add_argument("--secs", type=float, default=45)
    ap.add_argument("--ping-every", type=float, default=5)
    args = ap.parse_args()

    with server(args.server, "--cores", "2") as (proc, addr):
        time.sleep(1)
        before = rss_kib(proc.pid)
        frag = first_fragment(args.bytes)
        socks = []
        for _ in range(args.sockets):
            s = upgrade(addr)
            try:
                s.sendall(frag)
            except OSError:
                pass  # closed by the server mid-send (its budget)
            s.setblocking(False)
            socks.append(s)
        peak = rss_kib(proc.pid)
        codes = {}
        open_socks = list(socks)
        start = time.monotonic()
        next_ping = start
        open_at_end = 0
        while time.monotonic() - start < args.secs:
            if time.monotonic() >= next_ping:
                for s in open_socks:
                    try:
                        s.send(PING)
                    except OSError:
                        pass
                next_ping += args.ping_every
            open_socks = [s for s in open_socks if not close_codes(s, codes)]
            peak = max(peak, rss_kib(proc.pid))
            time.sleep(0.5)
        held = rss_kib(proc.pid)
        open_at_end = len(open_socks)
        for s in socks:
            s.close()
        time.sleep(3)
        after = rss_kib(proc.pid)
        print(
            json.dumps(
                {
                    "server": args.server,
                    "sockets": args.sockets,
                    "fragment_bytes": args.bytes,
                    "secs": args.secs,
                    "rss_mib_before": round(before / 1024, 1),
                    "rss_mib_peak": round(peak / 1024, 1),
                    "rss_mib_at_end_of_pings": round(held / 1024, 1),
                    "rss_mib_after_close": round(after / 1024, 1),
                    "closed_by_server": codes,
                    "still_open_at_end": open_at_end,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
