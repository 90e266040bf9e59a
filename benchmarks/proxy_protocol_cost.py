"""The cost of sending the PROXY protocol to the upstream: fastproxy to a plain
upstream nginx, and with `proxy_protocol = "v1"` / `"v2"` to an nginx that reads
it (`listen ... proxy_protocol`), side by side in one run.

    python benchmarks/proxy_protocol_cost.py                 # 3 rounds x 5 s per variant
    python benchmarks/proxy_protocol_cost.py --rounds 1 --duration 3

The set-up of analytics_cost.py (e2e.py's helpers): one worker on CPU 0, wrk
(-t1 -c16, keep-alive, GET /1k.bin) and the upstream nginx on CPU 1. With the
PROXY protocol, idle upstream connections are reused only for the same client
connection, so each of wrk's 16 connections keeps its own upstream connection:
the variants differ by the per-request lookup (`ServerPool.take_for`) and the
header made once per connection. Reported: medians of requests/s and of
requests per CPU-second of the proxy, and each variant's ratio to "plain".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # the helpers of the end-to-end benchmark

VARIANTS = ("plain", "v1", "v2")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    args = p.parse_args()
    wrk_args = argparse.Namespace(threads=1, connections=16)
    cpus = (e2e.PROXY_CPU, e2e.LOAD_CPU)
    with tempfile.TemporaryDirectory(prefix="fp-ppbench-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # nginx workers may run as an unprivileged user
        ports: dict[str, int] = {}
        upstreams = []
        try:
            for kind in ("plain", "pp"):
                prefix = root / f"upstream-{kind}"
                www = prefix / "www"
                e2e.make_dirs(prefix, www)
                e2e.write_files(www)
                port = ports[kind] = e2e.free_port()
                conf = e2e.upstream_conf(prefix, port)
                if kind == "pp":
                    conf = conf.replace(f"listen 127.0.0.1:{port};",
                                        f"listen 127.0.0.1:{port} proxy_protocol;")
                started = e2e.start_nginx(f"upstream-{kind}", prefix, conf, cpus[1])
                upstreams.append(started)
            e2e.wait_ready(upstreams[0], ports["plain"], root / "scratch")
            results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
            for rnd in range(args.rounds):
                for name in VARIANTS:
                    prefix = root / f"{name}-{rnd}"
                    prefix.mkdir()
                    port = e2e.free_port()
                    conf = e2e.fastproxy_conf(port, ports["plain" if name == "plain" else "pp"],
                                              64)
                    if name != "plain":
                        conf = conf.replace("keepalive = 64\n",
                                            f'keepalive = 64\nproxy_protocol = "{name}"\n', 1)
                    started = e2e.start_fastproxy(prefix, conf, cpus[0])
                    try:
                        e2e.wait_ready(started, port, prefix / "scratch")
                        e2e.run_wrk(port, "/1k.bin", False, 1, wrk_args, cpus[1])  # warm-up
                        pids = e2e.process_tree(started.proc.pid)
                        before = e2e.cpu_seconds(pids)
                        result, raw, _ = e2e.run_wrk(port, "/1k.bin", False, args.duration,
                                                     wrk_args, cpus[1])
                        cpu = e2e.cpu_seconds(pids) - before
                        e2e.check_run(name, result, raw, 1024)
                    finally:
                        e2e.PROCS.stop(started)
                    results[name].append((result.rps, result.requests / cpu))
                    print(f"round {rnd + 1} {name:6} {result.rps:9.0f} req/s "
                          f"{result.requests / cpu:9.0f} req/CPU-s", flush=True)
        finally:
            for started in upstreams:
                e2e.PROCS.stop(started)
    print(f"\nload average: {os.getloadavg()}  ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"{'variant':8} {'req/s':>9} {'ratio':>6} {'req/CPU-s':>10} {'ratio':>6}")
    base_rps = statistics.median(r[0] for r in results["plain"])
    base_cpu = statistics.median(r[1] for r in results["plain"])
    for name, runs in results.items():
        rps = statistics.median(r[0] for r in runs)
        per_cpu = statistics.median(r[1] for r in runs)
        print(f"{name:8} {rps:9.0f} {rps / base_rps:6.2f} {per_cpu:10.0f} "
              f"{per_cpu / base_cpu:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
