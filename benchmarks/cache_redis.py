#!/usr/bin/env python3
"""Cache hits from the Redis tier vs from the memory tier: CPU per request.

    python benchmarks/cache_redis.py                     # 3 rounds x 3000 requests per case
    python benchmarks/cache_redis.py --rounds 1 --requests 1000 --body 65536

One fastproxy (1 worker, access log off) in front of the stdlib origin of
cache_disk.py (every path: a body of --body bytes, `Cache-Control: max-age=3600`)
and a private redis-server on 127.0.0.1 (no persistence, stopped by its PID).
Two caches, two routes:

- `/mem/...`   -> memory only: after the warm-up every request is a memory hit.
- `/redis/...` -> `memory = "64k"`, `max_object = "1"`, `redis = { max_object =
  "1m" }`: nothing is kept in memory, so every request is a Redis hit (a GET,
  the checksum, the JSON header, the stored response built, then the answer).

A client sends the requests one after the other on one keep-alive connection
(so the figure is per request, not a throughput under load; the machine's load
changes it less). Reported per case (medians of the rounds): microseconds of
CPU per request in the proxy (utime+stime of its worker, from /proc/PID/stat)
and in redis-server, and the wall time per request. The origin is asked once
per path (checked).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cache_disk import children, cpu_seconds, free_port, start_origin


def config(port: int, origin: int, redis_port: int) -> str:
    return (f'[server]\nworkers = 1\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            '[caches.mem]\nmemory = "64m"\n'
            '[caches.shared]\nmemory = "64k"\nmax_object = "1"\n'
            f'redis = {{ url = "redis://127.0.0.1:{redis_port}/0", max_object = "1m", '
            'timeout = "1s" }\n'
            f'[upstreams.app]\nservers = ["127.0.0.1:{origin}"]\n'
            '[[routes]]\nmatch = { path_prefix = "/mem" }\nupstream = "app"\ncache = "mem"\n'
            '[[routes]]\nmatch = { path_prefix = "/redis" }\nupstream = "app"\n'
            'cache = "shared"\n')


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.connect()
            conn.close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def run_case(conn: http.client.HTTPConnection, path: str, n: int, worker: int,
             redis_pid: int) -> tuple[float, float, float]:
    """(proxy CPU us, redis CPU us, wall us) per request."""
    cpu0, red0, wall0 = cpu_seconds([worker]), cpu_seconds([redis_pid]), time.perf_counter()
    for _ in range(n):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status}")
    wall = time.perf_counter() - wall0
    return ((cpu_seconds([worker]) - cpu0) / n * 1e6, (cpu_seconds([redis_pid]) - red0) / n * 1e6,
            wall / n * 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--body", type=int, default=1024)
    args = parser.parse_args()
    body = b"x" * args.body
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-bench-redis-"))
    origin, asked = start_origin(body)
    redis_proc, redis_port = start_redis(tmp)
    port = free_port()
    (tmp / "fastproxy.toml").write_text(config(port, origin.server_address[1], redis_port))
    proxy = subprocess.Popen([sys.executable, "-m", "fastproxy", "serve",
                              str(tmp / "fastproxy.toml")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not children(proxy.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        worker = children(proxy.pid)[0]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for path in ("/mem/a", "/redis/a"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
        time.sleep(0.5)  # the Redis write goes out after the answer
        conn.request("GET", "/redis/a")
        resp = conn.getresponse()
        resp.read()
        status = resp.getheader("Cache-Status") or ""
        if "detail=redis" not in status:
            raise RuntimeError(f"not a Redis hit: {status}")
        results: dict[str, list[tuple[float, float, float]]] = {"memory": [], "redis": []}
        for _ in range(args.rounds):
            results["memory"].append(run_case(conn, "/mem/a", args.requests, worker,
                                              redis_proc.pid))
            results["redis"].append(run_case(conn, "/redis/a", args.requests, worker,
                                             redis_proc.pid))
        if asked != {"/mem/a": 1, "/redis/a": 1}:
            raise RuntimeError(f"the origin was asked {asked}")
        print(f"body {args.body} B, {args.rounds} x {args.requests} requests per case, "
              f"load {os.getloadavg()[0]:.2f}")
        for case, rows in results.items():
            proxy_us = statistics.median(r[0] for r in rows)
            redis_us = statistics.median(r[1] for r in rows)
            wall_us = statistics.median(r[2] for r in rows)
            print(f"{case:7} hit: proxy {proxy_us:6.1f} us CPU/req ({1e6 / proxy_us:8.0f} "
                  f"req per CPU-s), redis-server {redis_us:5.1f} us CPU/req, "
                  f"wall {wall_us:6.1f} us/req")
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(15)
        redis_proc.terminate()
        redis_proc.wait(10)
        origin.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
