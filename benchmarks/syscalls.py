#!/usr/bin/env python3
"""System calls per request of each proxy's worker, counted with `strace -c`.

    python benchmarks/syscalls.py                # cases 1k and close, 3 s each
    python benchmarks/syscalls.py --cases 1k,64k --duration 5

Same set-up as e2e.py (upstream nginx, nginx and fastproxy with 1 worker, on
127.0.0.1, pinned the same way); strace attaches to one worker at a time while
wrk runs, so the rates are far below the real ones, but the counts per request
are what matters here. Needs strace and ptrace rights (root is enough).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # the set-up and the process registry live there

_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def count(worker: int, port: int, case: str, seconds: int, out: Path,
          cpus: tuple[str | None, str | None]) -> tuple[int, dict[str, int]]:
    path, close, _ = e2e.CASES[case]
    tracer = e2e.PROCS.start("strace", ["strace", "-c", "-f", "-o", str(out), "-p", str(worker)],
                             out.with_suffix(".log"), signal.SIGINT)
    try:
        time.sleep(0.5)  # let strace attach
        wrk_args = argparse.Namespace(threads=1, connections=50)
        result, _, _ = e2e.run_wrk(port, path, close, seconds, wrk_args, cpus[1])
    finally:
        e2e.PROCS.stop(tracer)
    calls = {}
    for line in out.read_text().splitlines():
        m = _ROW.match(line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    return result.requests, calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="1k,close", help=f"from: {', '.join(e2e.CASES)}")
    p.add_argument("--duration", type=int, default=3, help="seconds per traced run")
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if any(c not in e2e.CASES for c in cases) or shutil.which("strace") is None:
        p.error("unknown case, or strace is not installed")
    signal.signal(signal.SIGTERM, e2e._on_signal)
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    cpus = (e2e.PROXY_CPU, e2e.LOAD_CPU) if pin else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-syscalls-"))
    try:
        os.chmod(tmp, 0o755)
        up, ngx, fp = tmp / "upstream", tmp / "nginx", tmp / "fastproxy"
        for d in (up, ngx, fp, up / "www"):
            d.mkdir()
            os.chmod(d, 0o755)
        for name, size in e2e.FILES.items():
            (up / "www" / name[1:]).write_bytes(b"x" * size)
            os.chmod(up / "www" / name[1:], 0o644)
        scratch = tmp / "check.bin"
        up_port, ngx_port, fp_port = e2e.free_port(), e2e.free_port(), e2e.free_port()
        upstream = e2e.start_nginx("upstream nginx", up, e2e.upstream_conf(up, up_port), cpus[1])
        e2e.wait_ready(upstream, up_port, scratch)
        servers = {
            "fastproxy": (e2e.start_fastproxy(fp, e2e.fastproxy_conf(fp_port, up_port, 32),
                                              cpus[0]), fp_port),
            "nginx": (e2e.start_nginx("nginx", ngx, e2e.nginx_proxy_conf(ngx, ngx_port, up_port,
                                                                         32), cpus[0]), ngx_port),
        }
        for item, port in servers.values():
            e2e.wait_ready(item, port, scratch)
        print("| case | proxy | syscalls per request | the main ones per request |")
        print("| --- | --- | ---: | --- |")
        for case in cases:
            for name, (item, port) in servers.items():
                workers = e2e.children(item.proc.pid)
                item.extra_pids = tuple(workers)
                n, calls = count(workers[-1], port, case, args.duration, tmp / f"{name}-{case}",
                                 cpus)
                main_ones = ", ".join(f"{k} {v / n:.2f}" for k, v in
                                      sorted(calls.items(), key=lambda kv: -kv[1])
                                      if v / n >= 0.05)
                print(f"| {case} | {name} | {sum(calls.values()) / n:.2f} | {main_ones} |")
    except e2e.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        e2e.PROCS.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
