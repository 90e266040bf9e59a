#!/usr/bin/env python3
"""HTTP/2 to clients: h2load against fastproxy and nginx (HTTP/2 on TLS), same upstream.

    python benchmarks/h2_bench.py                      # 3 rounds x 8 s each
    python benchmarks/h2_bench.py --rounds 1 --duration 4
    python benchmarks/h2_bench.py --profile /tmp/h2.txt   # + py-spy on fastproxy's worker

Everything listens on 127.0.0.1. One upstream nginx serves a 1 KiB file; in front of
it one nginx reverse proxy (`listen ... ssl http2`, the TLS policy of benchmarks/e2e.py)
and one fastproxy (1 worker each, a TLS listener with its defaults: ALPN h2 first),
both with pooled upstream keep-alive. h2load (nghttp2-client) runs against each in
turn (fastproxy, nginx, fastproxy, ...): `-c CONNECTIONS -m STREAMS -D SECONDS` for
1k.bin, bounded in time by -D and by a subprocess timeout. The proxy runs on CPU 0,
h2load and the upstream on CPU 1 (taskset, when there are 2 CPUs). Reported, medians
over the rounds: requests/s, requests per CPU-second of the proxy (utime + stime of
its processes, from /proc) and the ratios fastproxy / nginx, with the load average.
A round with any failed or errored request fails the run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e

PROXY_CPU, LOAD_CPU = "0", "1"


def nginx_h2_conf(prefix: Path, port: int, upstream_port: int, keepalive: int,
                  tls: e2e.TlsFiles) -> str:
    """The e2e nginx proxy with HTTP/2 on its TLS listener (nginx 1.22: on `listen`)."""
    conf = e2e.nginx_proxy_conf(prefix, free(), upstream_port, keepalive, tls, port)
    listen = f"listen 127.0.0.1:{port} ssl;"
    if listen not in conf:
        raise e2e.BenchError("the e2e nginx configuration changed: no TLS listen line")
    return conf.replace(listen, f"listen 127.0.0.1:{port} ssl http2;")


def free() -> int:
    return e2e.free_port()


def run_h2load(port: int, args: argparse.Namespace, cpu: str | None,
               case: str) -> tuple[float, int, str]:
    if case == "h2":
        shape = ["-c", str(args.connections), "-m", str(args.streams)]
    else:  # the same concurrency over HTTP/1.1 keep-alive connections (no pipelining)
        shape = ["--h1", "-c", str(args.connections * args.streams), "-m", "1"]
    argv = e2e.pinned(cpu, ["h2load", "-t", "1", *shape, "-D", str(args.duration),
                            f"https://127.0.0.1:{port}/1k.bin"])
    res = subprocess.run(argv, capture_output=True, text=True, timeout=args.duration + 60,
                         check=False)
    out = res.stdout
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored", out)
    rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if res.returncode != 0 or done is None or rps is None:
        raise e2e.BenchError(f"h2load failed ({res.returncode}):\n{out}\n{res.stderr}")
    if int(done.group(4)) or int(done.group(5)):
        raise e2e.BenchError(f"h2load saw failures:\n{out}")
    if f"Application protocol: {'h2' if case == 'h2' else 'http/1.1'}" not in out:
        raise e2e.BenchError(f"not HTTP/2:\n{out}")
    return float(rps.group(1)), int(done.group(3)), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per h2load run")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=10, help="h2load -m (per connection)")
    parser.add_argument("--profile", type=Path, help="py-spy record fastproxy's worker into it")
    parser.add_argument("--cases", default="h2,h1",
                        help="h2, and h1: the same load over HTTP/1.1 (h2load --h1), as a"
                             " reference for what the HTTP/2 layer costs")
    args = parser.parse_args()
    for tool in ("nginx", "h2load", "openssl"):
        if shutil.which(tool) is None:
            print(f"{tool} not found", file=sys.stderr)
            return 2
    cpus = len(os.sched_getaffinity(0))
    proxy_cpu = PROXY_CPU if cpus >= 2 and shutil.which("taskset") else None
    load_cpu = LOAD_CPU if proxy_cpu is not None else None
    with tempfile.TemporaryDirectory(prefix="h2bench-") as tmp:
        root = Path(tmp)
        www = root / "upstream" / "www"
        e2e.make_dirs(root, root / "upstream", www, root / "nginx", root / "fastproxy")
        e2e.write_files(www)
        upstream_port, nginx_port, fp_port = free(), free(), free()
        tls = e2e.make_certificate(root, "ecdsa", False)
        up = e2e.start_nginx("upstream", root / "upstream",
                             e2e.upstream_conf(root / "upstream", upstream_port), load_cpu)
        ngx = e2e.start_nginx("nginx", root / "nginx",
                              nginx_h2_conf(root / "nginx", nginx_port, upstream_port, 128, tls),
                              proxy_cpu)
        # As the nginx's keepalive_requests: h2load does not open a new connection
        # after a GOAWAY.
        conf = (e2e.fastproxy_conf(free(), upstream_port, 128, tls=tls, tls_port=fp_port)
                + f"\n[limits]\nmax_requests_per_connection = {e2e.KEEPALIVE_REQUESTS}\n")
        fp = e2e.start_fastproxy(root / "fastproxy", conf, proxy_cpu)
        try:
            e2e.wait_ready(up, upstream_port, root / "scratch")
            deadline = time.monotonic() + 30
            ready = {"fastproxy": fp_port, "nginx": nginx_port}
            while ready and time.monotonic() < deadline:
                for name, port in list(ready.items()):
                    res = subprocess.run(["h2load", "-n", "4", "-c", "1",
                                          f"https://127.0.0.1:{port}/1k.bin"],
                                         capture_output=True, text=True, timeout=15,
                                         check=False)
                    if "4 succeeded" in res.stdout and "Application protocol: h2" in res.stdout:
                        del ready[name]
                time.sleep(0.2)
            if ready:
                logs = {"fastproxy": fp.log_path, "nginx": root / "nginx" / "error.log"}
                raise e2e.BenchError(f"not answering over h2: {sorted(ready)}\n" + "\n".join(
                    e2e.tail(logs[name]) for name in ready))
            pids = {"fastproxy": e2e.proxy_processes(fp.proc.pid),
                    "nginx": e2e.proxy_processes(ngx.proc.pid)}
            ports = {"fastproxy": fp_port, "nginx": nginx_port}
            cases = args.cases.split(",")
            results: dict[str, list[tuple[float, float]]] = {
                f"{name} {case}": [] for case in cases for name in ("fastproxy", "nginx")}
            spy = None
            if args.profile is not None and shutil.which("py-spy"):
                worker = e2e.children(fp.proc.pid)[0]
                spy = subprocess.Popen(
                    ["py-spy", "record", "-p", str(worker), "-o", str(args.profile), "-f", "raw",
                     "-d", str(args.duration * args.rounds + 5), "-r", "200"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load = os.getloadavg()
            for rnd in range(args.rounds):
                for case in cases:
                    for name in (("fastproxy", "nginx") if rnd % 2 == 0
                                 else ("nginx", "fastproxy")):
                        before = e2e.cpu_seconds(pids[name])
                        rps, done, _ = run_h2load(ports[name], args, load_cpu, case)
                        cpu = e2e.cpu_seconds(pids[name]) - before
                        results[f"{name} {case}"].append(
                            (rps, done / cpu if cpu > 0 else float("nan")))
                        print(f"round {rnd + 1} {case} {name:9s} {rps:9.0f} req/s  "
                              f"{done / cpu if cpu else float('nan'):9.0f} req/CPU-s  "
                              f"(cpu {cpu:.2f} s, {done} requests)", flush=True)
            if spy is not None:
                spy.wait(timeout=args.duration * args.rounds + 60)
            after_load = os.getloadavg()
        finally:
            for item in (fp, ngx, up):
                e2e.PROCS.stop(item)
    med = {name: (statistics.median(r for r, _ in rows), statistics.median(c for _, c in rows))
           for name, rows in results.items()}
    print(f"\nh2load -c {args.connections} -m {args.streams} -D {args.duration} on 1k.bin, "
          f"{args.rounds} rounds, proxy on CPU {proxy_cpu}, load on CPU {load_cpu}")
    print(f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"after {after_load[0]:.2f} {after_load[1]:.2f} {after_load[2]:.2f}")
    for name, (rps, per_cpu) in med.items():
        print(f"{name:12s} median {rps:9.0f} req/s  {per_cpu:9.0f} req/CPU-s")
    for case in cases:
        fp, ngx = med[f"fastproxy {case}"], med[f"nginx {case}"]
        print(f"ratio fastproxy/nginx over {case}: req/s {fp[0] / ngx[0]:.2f}, "
              f"req/CPU-s {fp[1] / ngx[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
