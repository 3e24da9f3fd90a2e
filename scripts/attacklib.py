"""What the attack scripts (attack_refs.py, body_attack.py, partial_flood.py) share: a server
process on a free loopback port, its RSS, and a raw WebSocket upgrade. Standard library only."""
import contextlib
import socket
import subprocess

UPGRADE = (
    b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def rss_kib(pid: int) -> int:
    """VmRSS of `pid`, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS line")


@contextlib.contextmanager
def server(binary: str, *extra: str):
    """`binary serve --listen 127.0.0.1:0 extra...`; yields (process, (host, port)) and stops it."""
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        line = proc.stdout.readline().decode()
        host, port = line.split()[3].rsplit(":", 1)
        yield proc, (host, int(port))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def upgrade(addr, timeout: float = 10) -> socket.socket:
    """A socket upgraded on /socket/websocket?vsn=2.0.0 (blocking, `timeout`)."""
    s = socket.create_connection(addr, timeout=timeout)
    s.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.split(b"\r\n")[0].decode(errors="replace"))
    return s
