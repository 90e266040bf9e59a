#!/usr/bin/env python3
"""CPU time per TLS handshake and per keep-alive TLS request of fastproxy's worker with
its TLS sockets in its own epoll set (the default, `_tls.Poller`) and with them as
uvloop transports (`FASTPROXY_TLS_SOCKETS=uvloop`), and of nginx's worker, side by side.

    python benchmarks/tls_sockets.py                      # tls-handshake,tls-keepalive, 6 rounds
    python benchmarks/tls_sockets.py --cases tls-handshake --rounds 10 --seconds 4
    python benchmarks/tls_sockets.py --plain              # 1k,64k,close over plain HTTP

With `--plain` the same for plain-HTTP listeners: their sockets in the epoll set
(`_tls.PlainConnection`, `FASTPROXY_PLAIN_SOCKETS=own`; "fastproxy") against uvloop's
transports (`FASTPROXY_PLAIN_SOCKETS=uvloop`, the default; "fastproxy-uvloop"), with
e2e.py's plain cases.

Same set-up as e2e.py (its configurations, an upstream nginx and the clients on CPU 1,
the proxies on CPU 0, one worker each, all three running at once). Each round runs the
case's load against each proxy in turn (the order rotates from round to round), and
reads the CPU time of that proxy's worker from /proc/PID/schedstat (nanoseconds, not
the 10 ms ticks of /proc/PID/stat) before and after: CPU per handshake or request is
that time over what the client completed. Alternating the proxies within seconds of
each other puts them under the same load from other processes on a shared machine;
the medians of the rounds and their ratios are printed, and the median of each
round's own ratio to nginx (less moved by load that changes between rounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # the set-up and the process registry live there

VARIANTS = ("fastproxy", "fastproxy-uvloop", "nginx")


def cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def worker_of(item: e2e.Started, timeout: float = 15.0) -> int:
    """The PID of the one worker process of `item` (nginx also has cache helpers)."""
    deadline = time.monotonic() + timeout
    while True:
        kids = e2e.children(item.proc.pid)
        item.extra_pids = tuple(kids)
        found = []
        for pid in kids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if item.name != "nginx" or b"worker process" in cmdline:
                found.append(pid)
        if len(found) == 1:
            return found[0]
        if item.proc.poll() is not None or time.monotonic() > deadline:
            raise e2e.BenchError(f"{item.name}: expected 1 worker, found {found}")
        time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=None,
                   help="from: tls-handshake, tls-keepalive, tls-resume (default: the first "
                        "two); with --plain from 1k, 64k, close (default: all three)")
    p.add_argument("--plain", action="store_true",
                   help="plain HTTP listeners: FASTPROXY_PLAIN_SOCKETS instead of "
                        "FASTPROXY_TLS_SOCKETS")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=int, default=4, help="load per proxy and round")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (tls-keepalive)")
    p.add_argument("--tls-clients", type=int, default=e2e.TLS_CLIENTS,
                   help="openssl s_time processes (tls-handshake, tls-resume)")
    args = p.parse_args()
    known = ("1k", "64k", "close") if args.plain else tuple(e2e.TLS_CASES)
    if args.cases is None:
        args.cases = "1k,64k,close" if args.plain else "tls-handshake,tls-keepalive"
    switch = "FASTPROXY_PLAIN_SOCKETS" if args.plain else "FASTPROXY_TLS_SOCKETS"
    cases = [c for c in args.cases.split(",") if c]
    if any(c not in known for c in cases) or args.rounds < 1 or args.seconds < 1:
        p.error("unknown case, or rounds/seconds below 1")
    for tool in ("wrk", "nginx", "openssl"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed")
    signal.signal(signal.SIGTERM, e2e._on_signal)
    load = argparse.Namespace(threads=1, connections=args.connections,
                              tls_clients=args.tls_clients, duration=args.seconds)
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-tls-sockets-"))
    try:
        bench = e2e.bench_setup(tmp, VARIANTS)
        dirs, scratch, tls, up_port = bench.dirs, bench.scratch, bench.tls, bench.up_port
        ports, tls_ports = bench.ports, bench.tls_ports
        servers = {}
        for name in VARIANTS:
            d = dirs[name]
            if name == "nginx":
                servers[name] = e2e.start_nginx(
                    name, d, e2e.nginx_proxy_conf(d, ports[name], up_port, 128, tls,
                                                  tls_ports[name]), e2e.PROXY_CPU)
                continue
            conf = e2e.fastproxy_conf(ports[name], up_port, 128, tls=tls,
                                      tls_port=tls_ports[name])
            saved = os.environ.pop(switch, None)
            if name == "fastproxy-uvloop":
                os.environ[switch] = "uvloop"
            elif args.plain:
                os.environ[switch] = "own"  # (plain HTTP's default is uvloop's transports)
            try:
                servers[name] = e2e.start_fastproxy(d, conf, e2e.PROXY_CPU)
            finally:
                os.environ.pop(switch, None)
                if saved is not None:
                    os.environ[switch] = saved
        workers = {}
        for name in VARIANTS:
            e2e.wait_ready(servers[name], ports[name], scratch)
            workers[name] = worker_of(servers[name])
        with open("/proc/loadavg") as f:
            loadavg = " ".join(f.read().split()[:3])
        print(f"schedstat CPU of each proxy's worker (CPU {e2e.PROXY_CPU}); clients and "
              f"upstream on CPU {e2e.LOAD_CPU}; {args.rounds} rounds x {args.seconds} s; "
              f"wrk -t1 -c{args.connections}, s_time x{args.tls_clients}; "
              f"load average at start {loadavg}")
        load_ports = ports if args.plain else tls_ports
        for case in cases:
            for name in VARIANTS:  # warm-up
                e2e.run_load(case, load_ports[name], 2, load, e2e.LOAD_CPU)
            per: dict[str, list[float]] = {name: [] for name in VARIANTS}
            for r in range(args.rounds):
                order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
                for name in order:
                    before = cpu_ns(workers[name])
                    result, raw, _, marks = e2e.run_load(case, load_ports[name], args.seconds,
                                                         load, e2e.LOAD_CPU)
                    used = cpu_ns(workers[name]) - before
                    e2e.check_load(f"{case}/{name}", case, result, raw, marks)
                    per[name].append(used / 1000 / result.requests)
                print(f"  {case} round {r + 1}: " + ", ".join(
                    f"{name} {per[name][-1]:.2f} us" for name in VARIANTS), flush=True)
            med = {name: statistics.median(v) for name, v in per.items()}
            unit = "handshake" if case in ("tls-handshake", "tls-resume") else "request"
            print(f"\n| {case}: CPU per {unit}"
                  " (median) | fastproxy | fastproxy-uvloop | nginx |")
            print("| --- | ---: | ---: | ---: |")
            print(f"| µs | {med['fastproxy']:.2f} | {med['fastproxy-uvloop']:.2f} | "
                  f"{med['nginx']:.2f} |")
            print(f"| nginx / this (per CPU-s vs nginx) | "
                  f"{med['nginx'] / med['fastproxy']:.3f} | "
                  f"{med['nginx'] / med['fastproxy-uvloop']:.3f} | 1 |")
            # Within a round the three loads run seconds apart, so a ratio per round
            # is less moved by other processes' load changing between rounds.
            own = [n / f for f, n in zip(per["fastproxy"], per["nginx"], strict=True)]
            old = [n / f for f, n in zip(per["fastproxy-uvloop"], per["nginx"], strict=True)]
            print(f"| nginx / this, per round | {' '.join(f'{x:.3f}' for x in own)} | "
                  f"{' '.join(f'{x:.3f}' for x in old)} | |")
            print(f"| median of the rounds' ratios | **{statistics.median(own):.3f}** | "
                  f"{statistics.median(old):.3f} | 1 |")
            rounds = [(u / o) for o, u in zip(per["fastproxy"], per["fastproxy-uvloop"],
                                              strict=True)]
            print(f"| uvloop / own, per round | "
                  f"{' '.join(f'{x:.3f}' for x in rounds)} | | |\n", flush=True)
    except e2e.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        e2e.PROCS.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    with open("/proc/loadavg") as f:
        print(f"load average at the end {' '.join(f.read().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
