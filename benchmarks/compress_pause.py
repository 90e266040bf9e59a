#!/usr/bin/env python3
"""How long compression holds a worker's event loop: the latency of tiny requests
while the same worker compresses a big response.

    python benchmarks/compress_pause.py                 # 32 MiB, each coding once
    python benchmarks/compress_pause.py --size 8 --repeat 3

One fastproxy (1 worker, access log off; on CPU 0 with taskset when there are 2
CPUs, the rest on CPU 1) in front of a stdlib origin on 127.0.0.1 that answers
`/big` and `/cached/big` with --size MiB of HTML-like text (about 3:1 with gzip)
in one write. Routes: `/small` answered by the proxy itself (`respond`: the probe
measures the worker's loop, not the origin), `/cached/...` with a memory cache
and `compress = true`, the rest with `compress = true` (default levels: gzip
5, br 4, zstd 3).

For each case a probe thread sends `/small` on one keep-alive connection, one
request after the other, and records each request's time, while the main
thread downloads the big response (reading as fast as it can):

- `identity`: no Accept-Encoding (nothing is compressed: the baseline);
- `gzip`, `br`, `zstd`: compressed on the fly, one upstream read at a time
  (the worker compresses what one read brought, then the loop runs again);
- `cached-gzip` ...: the response is in the cache (identity) and this is the
  first request for it in that coding: it is encoded in 64 KiB slices, one
  per loop iteration.

The probe's maximum is the worst pause a request saw (its own round trip
included, ~0.1 ms). Every load is bounded by its size; every process started
here is stopped by PID.
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page(size: int) -> bytes:
    rows = []
    total = 0
    i = 0
    while total < size:
        row = (b"<tr><td>%d</td><td class='c%d'>%s</td><td>text text</td></tr>\n"
               % (i, i % 17, os.urandom(6).hex().encode()))
        rows.append(row)
        total += len(row)
        i += 1
    return b"".join(rows)[:size]


def start_origin(big: bytes) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            body = b"x" * 100 if self.path == "/small" else big
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            if self.path.startswith("/cached/"):
                self.send_header("Cache-Control", "max-age=3600")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


CONFIG = """
[server]
workers = 1
[log]
access = "off"
level = "warning"
[[listeners]]
address = "127.0.0.1:{port}"
[caches.main]
memory = "512m"
max_object = "128m"
[upstreams.origin]
servers = ["127.0.0.1:{origin}"]
[[routes]]
match = {{ path = "/small" }}
respond = {{ status = 200, body = "a small answer made by the proxy itself" }}
[[routes]]
match = {{ path_prefix = "/cached" }}
upstream = "origin"
cache = "main"
compress = true
[[routes]]
upstream = "origin"
compress = true
"""


def request(sock: socket.socket, path: str, accept: str | None) -> int:
    """One request on a keep-alive connection; the body length read."""
    extra = f"Accept-Encoding: {accept}\r\n" if accept else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\n{extra}\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the head")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    fields = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
              for line in head.split(b"\r\n")[1:]}
    if b"content-length" in fields:
        n = int(fields[b"content-length"])
        got = len(rest)
        while got < n:
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed mid-body")
            got += len(data)
        return n
    # chunked: read until the last chunk (the body is not decoded, only counted)
    data = rest
    total = 0
    while True:
        while b"\r\n" not in data:
            data += sock.recv(1 << 20)
        line, _, data = data.partition(b"\r\n")
        size = int(line, 16)
        while len(data) < size + 2:
            more = sock.recv(1 << 20)
            if not more:
                raise ConnectionError("closed mid-body")
            data += more
        data = data[size + 2:]
        total += size
        if size == 0:
            return total


def probe(port: int, stop: threading.Event, times: list[float]) -> None:
    while not stop.is_set():
        # A new connection every 500 requests (keep-alive connections have a cap).
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for _ in range(500):
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                request(sock, "/small", None)
                times.append(time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32, help="MiB of the big response (default 32)")
    p.add_argument("--repeat", type=int, default=1, help="runs per case (default 1)")
    args = p.parse_args()
    pin = (os.cpu_count() or 1) >= 2
    big = page(args.size << 20)
    origin = start_origin(big)
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-pause-"))
    conf = tmp / "fastproxy.toml"
    conf.write_text(CONFIG.format(port=port, origin=origin.server_address[1]))
    argv = [sys.executable, "-m", "fastproxy", "serve", str(conf)]
    if pin:
        argv = ["taskset", "-c", "0", *argv]
        os.sched_setaffinity(0, {1})
    log = open(tmp / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    request(s, "/small", None)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((tmp / "log").read_text()) from None
                time.sleep(0.1)
        print(f"load: {os.getloadavg()[0]:.2f}; body {args.size} MiB; pinned: {pin}")
        print("| case | download s | probe requests | probe p50 ms | p99 ms | max ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        cases: list[tuple[str, str, str | None]] = [
            ("identity", "/big", None), ("gzip", "/big", "gzip"), ("br", "/big", "br"),
            ("zstd", "/big", "zstd")]
        for run in range(args.repeat):
            fill = f"/cached/big{run}"
            with socket.create_connection(("127.0.0.1", port)) as s:
                request(s, fill, None)  # stored as identity
            cases_run = cases + [(f"cached-{c}", fill, c) for c in ("gzip", "br", "zstd")]
            for name, path, accept in cases_run:
                times: list[float] = []
                stop = threading.Event()
                t = threading.Thread(target=probe, args=(port, stop, times))
                with socket.create_connection(("127.0.0.1", port)) as s:
                    t.start()
                    time.sleep(0.2)
                    t0 = time.perf_counter()
                    request(s, path, accept)
                    took = time.perf_counter() - t0
                    stop.set()
                    t.join(10)
                ms = sorted(x * 1000 for x in times)
                print(f"| {name} | {took:.2f} | {len(ms)} | {statistics.median(ms):.2f} | "
                      f"{ms[int(len(ms) * 0.99) - 1]:.2f} | {ms[-1]:.2f} |")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        origin.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
