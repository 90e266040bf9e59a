#!/usr/bin/env python3
"""Instructions per request (or per handshake) of fastproxy's and nginx's worker,
counted by valgrind's callgrind: a measure that does not depend on the load of the
machine, unlike CPU time (this VM has no hardware counters for `perf stat`).

    python benchmarks/instructions.py                          # 1k, tls-keepalive, tls-handshake
    python benchmarks/instructions.py --cases tls-keepalive --seconds 15 --connections 10
    python benchmarks/instructions.py --proxies fastproxy --cases tls-handshake,tls-resume
    python benchmarks/instructions.py --cases h2 --seconds 10   # HTTP/2 over TLS (h2load)

Same set-up as e2e.py (an upstream nginx; the proxies with its configurations,
the TLS listener included), except that each proxy runs as one process under
`valgrind --tool=callgrind`: nginx with `master_process off`, fastproxy's worker
in this script's `--worker CONFIG` mode (the master's set-up, then the worker's
loop, without a fork, so that `callgrind_control` can reach it). For each case
and proxy: a 2 s warm-up, a wait until the worker is idle, the counters zeroed, one
load of --seconds (wrk, or s_time as in e2e.py; 4 s_time processes), a dump; the
figure is the dump's total divided by the requests (or connections) the client
completed. For tls-handshake and tls-resume the number of SSL_new calls in the dump
(connections the server began) and the total per SSL_new are given too: the cost per
connection, whatever the client had finished by the end. Only user-space
instructions count (the kernel's work is not seen), and valgrind slows the proxy
about 50x, so wrk keeps fewer requests in flight than in e2e.py: compare the
proxies with each other and a change with its before, not with e2e.py's rates.
In tls-keepalive each wrk connection's handshake is in the count (--connections
handshakes over the whole run); use a long --seconds and few connections to make
that small. The `h2` case is HTTP/2 on the TLS listener (nginx with `http2` on it),
loaded by h2load `-c 2 -m 10 -n 250*seconds` (nghttp2-client): two handshakes in the count. Needs
valgrind (apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # the set-up and the process registry live there

# Under valgrind the s_time clients use almost no CPU: s_time then prints "inf".
e2e._S_TIME_DONE = re.compile(r"(\d+) connections in ([\d.]+)s; (?:[\d.]+|inf) "
                              r"connections/user sec, bytes read (\d+)")
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.M)
_FN = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")  # a function's id, named once


def worker_main(config_path: str) -> int:
    """fastproxy's worker in this process: what `serve` and the master do before
    forking a worker, then the worker's loop (SIGTERM stops it)."""
    from fastproxy import master
    from fastproxy.config import load_config

    config = load_config(config_path)
    master.setup_logging(config.log.level)
    contexts = master.tls_contexts(config)
    slot = [master.open_listener(listener) for listener in config.listeners]
    table = master.PeerTable(master.slot_layout(config.upstreams)[1])
    gen = master.Generation(1, config, [slot], table, contexts, None)
    return master.Supervisor(gen)._child_main(gen, 0)


def dump_total(pid: int, out_dir: Path, timeout: float = 60.0) -> tuple[int, Path]:
    """Ask callgrind in `pid` for a dump: the instructions counted since the last
    zeroing, and the dump's file."""
    before = set(out_dir.glob(f"cg.{pid}.*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, timeout=120,
                   check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = set(out_dir.glob(f"cg.{pid}.*")) - before
        if new:
            time.sleep(0.3)  # written in one go, but give it a moment
            newest = max(new, key=os.path.getmtime)
            m = _TOTAL.search(newest.read_text(errors="replace"))
            if m:
                return int(m.group(1)), newest
        time.sleep(0.1)
    raise e2e.BenchError(f"callgrind in {pid} wrote no dump within {timeout:.0f}s")


def h2_count(pid: int, out_dir: Path, port: int, seconds: int) -> tuple[int, Path, int]:
    """The h2 case: a warm-up, then h2load with a request count (about `seconds` under
    valgrind; a timed run would cut the requests in flight at its end, which h2load
    counts as failures); (instructions, the dump, requests)."""

    def load(requests: int) -> int:
        argv = e2e.pinned(e2e.LOAD_CPU, ["h2load", "-t", "1", "-c", "2", "-m", "10", "-n",
                                          str(requests), f"https://127.0.0.1:{port}/1k.bin"])
        res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 10 + 120,
                             check=False)
        m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", res.stdout)
        if res.returncode != 0 or m is None or int(m.group(2)) != requests \
                or "Application protocol: h2" not in res.stdout:
            raise e2e.BenchError(f"h2load failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        return int(m.group(2))

    load(200)  # warm-up
    settle(pid)
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, timeout=120,
                   check=False)
    time.sleep(0.2)
    done = load(250 * seconds)
    time.sleep(0.5)  # the last responses are out
    total, dump = dump_total(pid, out_dir)
    return total, dump, done


def calls_to(dump: Path, function: str) -> int:
    """How many calls to `function` the callgrind dump records (all callers)."""
    names: dict[str, str] = {}
    target = False
    total = 0
    for line in dump.read_text(errors="replace").splitlines():
        m = _FN.match(line)
        if m:
            kind, ident, name = m.groups()
            if name:
                names[ident] = name
            if kind == "cfn":
                target = names.get(ident) == function
        elif target and line.startswith("calls="):
            total += int(line[6:].split()[0])
    return total


def settle(pid: int, limit: float = 20.0) -> None:
    """Wait until the worker is idle (under 5 % of a CPU over 0.5 s, up to `limit` s):
    under valgrind it may still be working through the warm-up's last connections
    (the accept backlog, their close), which must not land in the count."""
    def cpu_ns() -> int:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])

    deadline = time.monotonic() + limit
    before = cpu_ns()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_ns()
        if now - before < 0.05 * 0.5e9:
            return
        before = now


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="1k,tls-keepalive,tls-handshake",
                   help=f"from: 1k, 64k, h2, {', '.join(e2e.TLS_CASES)}")
    p.add_argument("--proxies", default="fastproxy,nginx")
    p.add_argument("--seconds", type=int, default=6, help="load per measurement")
    p.add_argument("--connections", type=int, default=50, help="wrk -c")
    p.add_argument("--keep", metavar="DIR", type=Path,
                   help="keep each load's callgrind dump here as CASE-PROXY.cg "
                        "(for callgrind_annotate)")
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    proxies = [x for x in args.proxies.split(",") if x]
    if any(c not in ("1k", "64k", "h2", *e2e.TLS_CASES) for c in cases) or \
            any(x not in ("fastproxy", "nginx") for x in proxies):
        p.error("unknown case or proxy")
    for tool in ("valgrind", "callgrind_control", "wrk", "nginx", "openssl",
                 *(("h2load",) if "h2" in cases else ())):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed")
    signal.signal(signal.SIGTERM, e2e._on_signal)
    load = argparse.Namespace(threads=1, connections=args.connections, tls_clients=4,
                              duration=args.seconds)
    tmp = Path(tempfile.mkdtemp(prefix="fastproxy-instructions-"))
    try:
        bench = e2e.bench_setup(tmp, proxies)
        dirs, scratch, tls, up_port = bench.dirs, bench.scratch, bench.tls, bench.up_port
        ports, tls_ports = bench.ports, bench.tls_ports
        grind = ["taskset", "-c", e2e.PROXY_CPU, "valgrind", "--tool=callgrind",
                 f"--callgrind-out-file={tmp}/cg.%p"]
        servers = {}
        for name in proxies:
            d = dirs[name]
            if name == "nginx":
                conf = d / "nginx.conf"
                text = e2e.nginx_proxy_conf(d, ports[name], up_port, 128, tls, tls_ports[name])
                if "h2" in cases:  # HTTP/2 on its TLS listener too (as in h2_bench.py)
                    listen = f"listen 127.0.0.1:{tls_ports[name]} ssl;"
                    text = text.replace(listen, listen.replace(" ssl;", " ssl http2;"))
                conf.write_text(text)
                argv = [*grind, "nginx", "-p", str(d), "-e", str(d / "error.log"), "-c",
                        str(conf), "-g", "daemon off; master_process off;"]
            else:
                conf = d / "fastproxy.toml"
                conf.write_text(e2e.fastproxy_conf(ports[name], up_port, 128, tls=tls,
                                                   tls_port=tls_ports[name]))
                argv = [*grind, sys.executable, str(Path(__file__).resolve()), "--worker",
                        str(conf)]
            servers[name] = e2e.PROCS.start(name, argv, d / "stdout.log", signal.SIGTERM)
        for name in proxies:
            e2e.wait_ready(servers[name], ports[name], scratch, timeout=300)
        print(f"callgrind; proxy on CPU {e2e.PROXY_CPU}, clients and upstream on CPU "
              f"{e2e.LOAD_CPU}; wrk -t1 -c{args.connections}, {args.seconds} s per load; "
              f"s_time x4")
        print("| case | proxy | requests (conns) | instructions per request (conn) "
              "| SSL_new calls | instructions per SSL_new |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for case in cases:
            case_ports = tls_ports if case in e2e.TLS_CASES or case == "h2" else ports
            for name in proxies:
                pid = servers[name].proc.pid
                if case == "h2":
                    total, dump, done = h2_count(pid, tmp, case_ports[name], args.seconds)
                    if args.keep is not None:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(dump, args.keep / f"{case}-{name}.cg")
                    print(f"| {case} | {name} | {done:,} | {total / done:,.0f} | | |", flush=True)
                    continue
                e2e.run_load(case, case_ports[name], 2, load, e2e.LOAD_CPU)  # warm-up
                settle(pid)
                subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True,
                               timeout=120, check=False)
                time.sleep(0.2)
                result, raw, _, marks = e2e.run_load(case, case_ports[name], args.seconds, load,
                                                     e2e.LOAD_CPU)
                e2e.check_load(f"{case}/{name}", case, result, raw, marks)
                time.sleep(0.5)  # the last responses are out
                total, dump = dump_total(pid, tmp)
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(dump, args.keep / f"{case}-{name}.cg")
                made = calls_to(dump, "SSL_new") if case in ("tls-handshake", "tls-resume") \
                    else 0
                per_made = f"{total / made:,.0f}" if made else ""
                print(f"| {case} | {name} | {result.requests:,} | "
                      f"{total / result.requests:,.0f} | {made:,} | {per_made} |", flush=True)
    except e2e.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        e2e.PROCS.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
