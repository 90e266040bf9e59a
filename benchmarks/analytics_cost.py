"""The cost of the dashboard's per-request analytics (top paths, clients, user
agents): fastproxy without metrics, with metrics ([admin], analytics = false),
and with metrics and analytics, side by side in one run.

    python benchmarks/analytics_cost.py                 # 3 rounds x 5 s per variant
    python benchmarks/analytics_cost.py --rounds 1 --duration 3

The set-up of access_log.py (e2e.py's helpers): one worker on CPU 0, wrk (-t1
-c16, keep-alive, GET /1k.bin) and the upstream nginx on CPU 1; the variants
run in turn in each round. Reported: medians of requests/s and of requests per
CPU-second of the proxy, and each variant's ratio to "metrics" (the target:
metrics+analytics >= 0.95 of metrics).
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

VARIANTS: dict[str, str | None] = {
    "off": None,  # no [admin]: nothing counted
    "metrics": "[metrics]\nanalytics = false\n",
    "metrics+analytics": "[metrics]\nanalytics = true\n",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5)
    args = p.parse_args()
    wrk_args = argparse.Namespace(threads=1, connections=16)
    cpus = (e2e.PROXY_CPU, e2e.LOAD_CPU)
    with tempfile.TemporaryDirectory(prefix="fp-anbench-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # nginx workers may run as an unprivileged user
        www = root / "upstream" / "www"
        e2e.make_dirs(root / "upstream", www)
        e2e.write_files(www)
        up_port = e2e.free_port()
        upstream = e2e.start_nginx("upstream", root / "upstream",
                                   e2e.upstream_conf(root / "upstream", up_port), cpus[1])
        e2e.wait_ready(upstream, up_port, root / "scratch")
        results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for rnd in range(args.rounds):
            for name, extra in VARIANTS.items():
                prefix = root / f"{name}-{rnd}"
                prefix.mkdir()
                port = e2e.free_port()
                conf = e2e.fastproxy_conf(port, up_port, 64)
                if extra is not None:
                    conf += f'\n[admin]\naddress = "127.0.0.1:{e2e.free_port()}"\n' + extra
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
                print(f"round {rnd + 1} {name:18} {result.rps:9.0f} req/s "
                      f"{result.requests / cpu:9.0f} req/CPU-s", flush=True)
        e2e.PROCS.stop(upstream)
    print(f"\nload average: {os.getloadavg()}  ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"{'variant':18} {'req/s':>9} {'ratio':>6} {'req/CPU-s':>10} {'ratio':>6}")
    base_rps = statistics.median(r[0] for r in results["metrics"])
    base_cpu = statistics.median(r[1] for r in results["metrics"])
    for name, runs in results.items():
        rps = statistics.median(r[0] for r in runs)
        per_cpu = statistics.median(r[1] for r in runs)
        print(f"{name:18} {rps:9.0f} {rps / base_rps:6.2f} {per_cpu:10.0f} "
              f"{per_cpu / base_cpu:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
