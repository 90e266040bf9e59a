"""Worker memory per idle keep-alive client connection, and RSS over a long run.

    python benchmarks/idle_memory.py [--connections 10000] [--requests 0]

Starts fastproxy (1 worker, access log off) in front of a small origin on
127.0.0.1, reads the worker's RSS, opens N client connections that each make
one request and then stay idle (keep-alive), reads the RSS again and prints
the difference per connection. With --requests R it then sends R more
requests over 50 keep-alive connections and prints the RSS every 10% of them
(the "flat after warm-up" check). Everything is bounded and stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_origin() -> int:
    """A keep-alive origin answering every request head with a 2-byte body."""
    ready = threading.Event()
    port = [0]

    class Origin(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                _, self.buf = self.buf.split(b"\r\n\r\n", 1)
                self.t.write(RESPONSE)  # type: ignore[attr-defined]

    def run() -> None:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(loop.create_server(Origin, "127.0.0.1", 0))
        port[0] = server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return port[0]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def one_request(sock: socket.socket) -> None:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    got = b""
    while not got.endswith(b"ok"):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("proxy closed the connection")
        got += chunk


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--requests", type=int, default=0)
    args = ap.parse_args()
    need = args.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    origin = start_origin()
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-mem-"))
    cfg = tmp / "fastproxy.toml"
    cfg.write_text(f"""
[server]
workers = 1
max_connections = {need}
[log]
access = "off"
level = "warning"
[timeouts]
keepalive = "10m"
[[listeners]]
address = "127.0.0.1:{port}"
[upstreams.origin]
servers = ["127.0.0.1:{origin}"]
[[routes]]
upstream = "origin"
""")
    proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "serve", str(cfg)],
                            stdin=subprocess.DEVNULL)
    socks: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 15
        worker = 0
        while time.monotonic() < deadline and not worker:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            worker = int(children[0]) if children else 0
            time.sleep(0.1)
        warm = socket.create_connection(("127.0.0.1", port))
        for _ in range(2000):  # warm-up: imports, pools, caches
            one_request(warm)
        time.sleep(0.5)
        before = rss_kib(worker)
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", port))
            one_request(s)
            socks.append(s)
        time.sleep(1.0)
        after = rss_kib(worker)
        per = (after - before) * 1024 / max(1, args.connections)
        print(f"worker RSS {before} KiB -> {after} KiB with {args.connections} idle "
              f"keep-alive connections: {per:.0f} bytes per connection")
        for s in socks:
            s.close()
        socks.clear()
        if args.requests:
            conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
            step = max(1, args.requests // 10)
            start = time.monotonic()
            for i in range(args.requests):
                one_request(conns[i % 50])
                if (i + 1) % step == 0:
                    print(f"  {i + 1:>9} requests: worker RSS {rss_kib(worker)} KiB "
                          f"({time.monotonic() - start:.0f} s)", flush=True)
            for c in conns:
                c.close()
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
