#!/usr/bin/env python3
"""Cache hits from the disk tier vs from the memory tier, end to end with wrk.

    python benchmarks/cache_disk.py                      # 3 rounds x 5 s per case
    python benchmarks/cache_disk.py --rounds 1 --duration 2 --body 65536

One fastproxy (1 worker, access log off; on CPU 0 with taskset when there are 2
CPUs, wrk on CPU 1) in front of a small stdlib origin on 127.0.0.1 that answers
every path with a body of --body bytes and `Cache-Control: max-age=3600`. Two
caches, two routes:

- `/mem/...`  -> `[caches.mem]`: memory only. After the warm-up every request is
  a memory hit.
- `/disk/...` -> `[caches.disk]`: `memory = "64k"` with `max_object = "1"`, so
  nothing is kept in memory and every request is a disk hit: a lookup in a
  reader thread (open, fstat, three preads, crc32, the JSON header, the stored
  response built), then the answer. The files are in the page cache (a warm
  disk: the same few files are read again and again).

wrk runs each case in turn (mem, disk, mem, disk...) with -t1 and
--connections (default 16) keep-alive connections; then a latency run with one
connection. Reported: medians of requests/s, p50/p99 latency, and requests per
CPU-second of the proxy (utime+stime of the master and worker, threads
included, from /proc/PID/stat). The origin is asked once per path (checked).
"""

from __future__ import annotations

import argparse
import http.server
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_origin(body: bytes) -> tuple[http.server.ThreadingHTTPServer, dict[str, int]]:
    asked: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            asked[self.path] = asked.get(self.path, 0) + 1
            self.send_response(200)
            self.send_header("Cache-Control", "max-age=3600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, asked


def config(port: int, origin: int, disk: Path) -> str:
    return f"""\
[server]
workers = 1
[log]
access = "off"
level = "warning"
[[listeners]]
address = "127.0.0.1:{port}"
[upstreams.origin]
servers = ["127.0.0.1:{origin}"]
[caches.mem]
memory = "64m"
[caches.disk]
memory = "64k"
max_object = "1"
disk = {{ path = "{disk}", size = "1g" }}
[[routes]]
match = {{ path_prefix = "/mem", whole_segments = true }}
upstream = "origin"
cache = "mem"
[[routes]]
match = {{ path_prefix = "/disk", whole_segments = true }}
upstream = "origin"
cache = "disk"
"""


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
    return total / CLK_TCK


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                  .encode())  # the Host wrk sends: the same cache key
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(port: int, path: str, seconds: int, connections: int, cpu: str | None,
        proxy_pids: list[int]) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
            f"http://127.0.0.1:{port}{path}"]
    if cpu is not None:
        argv = ["taskset", "-c", cpu, *argv]
    before = cpu_seconds(proxy_pids)
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         timeout=seconds + 30).stdout
    used = cpu_seconds(proxy_pids) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    p50 = re.search(r"\s50%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"\s99%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": _ms(p50), "p99": _ms(p99),
            "per_cpu": requests / used if used else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--body", type=int, default=1024, help="response body bytes")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed", file=sys.stderr)
        return 2
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    proxy_cpu, wrk_cpu = ("0", "1") if pin else (None, None)
    body = os.urandom(args.body)
    origin, asked = start_origin(body)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fastproxy-cache-disk-") as tmp:
        conf = Path(tmp) / "fastproxy.toml"
        conf.write_text(config(port, origin.server_address[1], Path(tmp) / "disk"))
        argv = [sys.executable, "-m", "fastproxy", "serve", str(conf)]
        if proxy_cpu is not None:
            argv = ["taskset", "-c", proxy_cpu, *argv]
        log = open(Path(tmp) / "proxy.log", "wb")  # noqa: SIM115 (closed below)
        proxy = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proxy.poll() is not None:
                        raise SystemExit("fastproxy did not start:\n"
                                         + (Path(tmp) / "proxy.log").read_text()) from None
                    time.sleep(0.05)
            for path in ("/mem/1", "/disk/1"):  # warm up: stored, then a hit
                assert get(port, path).endswith(body)
                time.sleep(0.3)  # the disk write lands
                hit = get(port, path)
                assert hit.endswith(body) and b"Cache-Status: fastproxy;hit" in hit, hit[:300]
            pids = [proxy.pid, *children(proxy.pid)]
            results: dict[str, list[dict[str, float]]] = {}
            for _ in range(args.rounds):
                for case, path, conns in (("memory hit", "/mem/1", args.connections),
                                          ("disk hit", "/disk/1", args.connections),
                                          ("memory hit, 1 conn", "/mem/1", 1),
                                          ("disk hit, 1 conn", "/disk/1", 1)):
                    results.setdefault(case, []).append(
                        wrk(port, path, args.duration, conns, wrk_cpu, pids))
            assert asked == {"/mem/1": 1, "/disk/1": 1}, asked
        finally:
            proxy.send_signal(signal.SIGTERM)
            try:
                proxy.wait(15)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
            log.close()
            origin.shutdown()
    print(f"{args.body}-byte body, {args.rounds} rounds x {args.duration} s, wrk -t1, "
          f"pinned: {pin}; medians")
    print("| case | req/s | p50 ms | p99 ms | req per CPU-s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for case, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {case} | {med['rps']:.0f} | {med['p50']:.3f} | {med['p99']:.3f} | "
              f"{med['per_cpu']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
