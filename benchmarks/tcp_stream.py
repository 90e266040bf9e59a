"""TCP passthrough: fastproxy's `mode = "tcp"` against nginx's `stream` proxy, in one run.

Both proxies relay TCP (nothing parsed) to the same upstream nginx serving files
over HTTP; wrk drives HTTP through them. Cases:

  small    keep-alive GETs of a 1 KiB file: many small messages each way
  bulk     keep-alive GETs of a 1 MiB file: throughput
  connect  GETs of a 1 KiB file with `Connection: close`: one TCP connection per
           request (accept, pick a server, connect, relay, two closes)

Each proxy runs one worker. Besides requests/s (which depends on what else the
machine is doing) the script reports the CPU time the proxy's processes used
during the run (utime + stime from /proc) and requests per CPU-second of the
proxy, the measure to compare on a busy machine; the ratio is fastproxy's over
nginx's, from the same run.

    python benchmarks/tcp_stream.py [--duration 5] [--connections 32] [--rounds 1]
                                    [--cpu 0] [--load-cpu 1]

Needs nginx with the stream module (Debian: libnginx-mod-stream) and wrk. Every
process it starts is stopped by its PID; every load run is bounded in time.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
CASES = {"small": ("/1k", False), "bulk": ("/1m", False), "connect": ("/1k", True)}
STARTED: list[subprocess.Popen[bytes]] = []


def stop_all() -> None:
    for proc in STARTED:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


atexit.register(stop_all)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    STARTED.append(proc)
    return proc


def nginx_conf(prefix: Path, body: str, modules: str = "") -> str:
    return (f"{modules}worker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log warn;\nevents {{ worker_connections 4096; }}\n"
            + body)


def start_nginx(prefix: Path, conf: str, cpu: str | None) -> subprocess.Popen[bytes]:
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(conf)
    return start(pinned(cpu, ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
                              "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]),
                 prefix / "stdout.log")


def tree_cpu(pid: int) -> float:
    """utime + stime (seconds) of `pid` and its children (the workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def wrk(port: int, path: str, close: bool, duration: float, connections: int,
        cpu: str | None) -> tuple[float, float]:
    """(requests/s, bytes/s) from one wrk run."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(pinned(cpu, [*argv, f"http://127.0.0.1:{port}{path}"]),
                         capture_output=True, text=True, timeout=duration + 30, check=False)
    text = out.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    rate = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
    if rps is None or rate is None:
        raise SystemExit(f"wrk failed:\n{out.stdout}{out.stderr}")
    if errors is not None:
        print(f"  (wrk: {errors.group(0)})")
    unit = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[rate.group(2)]
    return float(rps.group(1)), float(rate.group(1)) * unit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="each case, alternating proxies")
    ap.add_argument("--cpu", default=None, help="taskset CPU list for the proxies")
    ap.add_argument("--load-cpu", default=None, help="taskset CPU list for wrk and the upstream")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        print("needs wrk and nginx", file=sys.stderr)
        return 2
    if not os.path.exists(STREAM_MODULE):
        print(f"needs nginx's stream module ({STREAM_MODULE}; Debian: libnginx-mod-stream)",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fastproxy-tcpbench-"))
    up_port, ng_port, fp_port = free_port(), free_port(), free_port()
    www = work / "www"
    www.mkdir()
    (www / "1k").write_bytes(os.urandom(1024))
    (www / "1m").write_bytes(os.urandom(1024 * 1024))
    for path in (work, www, www / "1k", www / "1m"):  # nginx's workers may run as nobody
        path.chmod(0o755 if path.is_dir() else 0o644)
    upstream = start_nginx(work / "upstream", nginx_conf(work / "upstream", f"""\
http {{
    access_log off;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    sendfile on;
    server {{ listen 127.0.0.1:{up_port} backlog=4096; root {www}; }}
}}
"""), args.load_cpu)
    wait_listening(up_port, upstream, "upstream nginx")
    stream = start_nginx(work / "stream", nginx_conf(work / "stream", f"""\
stream {{
    upstream backend {{ server 127.0.0.1:{up_port}; }}
    server {{
        listen 127.0.0.1:{ng_port} backlog=4096;
        proxy_pass backend;
        proxy_timeout 10m;
    }}
}}
""", f"load_module {STREAM_MODULE};\n"), args.cpu)
    wait_listening(ng_port, stream, "nginx stream")
    (work / "fastproxy.toml").write_text(f"""\
[server]
workers = 1
[log]
access = "off"
[[listeners]]
address = "127.0.0.1:{fp_port}"
mode = "tcp"
upstream = "backend"
[upstreams.backend]
servers = ["127.0.0.1:{up_port}"]
""")
    fastproxy = start(pinned(args.cpu, [sys.executable, "-m", "fastproxy", "serve",
                                        str(work / "fastproxy.toml")]),
                      work / "fastproxy.log")
    wait_listening(fp_port, fastproxy, "fastproxy")
    time.sleep(0.5)  # the worker forked
    proxies = {"nginx-stream": (ng_port, stream.pid), "fastproxy-tcp": (fp_port, fastproxy.pid)}
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1/5 min), "
          f"{os.cpu_count()} CPUs; {args.connections} connections, {args.duration:g} s a run")
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for case in args.cases.split(","):
        path, close = CASES[case]
        for _ in range(args.rounds):
            for name, (port, pid) in proxies.items():
                wrk(port, path, close, 1.0, args.connections, args.load_cpu)  # warm up
                cpu0 = tree_cpu(pid)
                rps, bps = wrk(port, path, close, args.duration, args.connections,
                               args.load_cpu)
                cpu = tree_cpu(pid) - cpu0
                results.setdefault((case, name), []).append((rps, bps, cpu))
    print(f"{'case':8} {'proxy':14} {'req/s':>9} {'MB/s':>8} {'proxy CPU s':>11} "
          f"{'req/CPU-s':>10} {'MB/CPU-s':>9}")
    for case in args.cases.split(","):
        per_cpu = {}
        for name in proxies:
            runs = results[(case, name)]
            rps = sum(r[0] for r in runs) / len(runs)
            bps = sum(r[1] for r in runs) / len(runs)
            cpu = sum(r[2] for r in runs)
            requests = sum(r[0] for r in runs) * args.duration
            per_cpu[name] = requests / cpu if cpu else float("nan")
            mb_cpu = sum(r[1] for r in runs) * args.duration / 1024**2 / cpu if cpu else 0
            print(f"{case:8} {name:14} {rps:9.0f} {bps / 1024**2:8.1f} {cpu:11.2f} "
                  f"{per_cpu[name]:10.0f} {mb_cpu:9.0f}")
        print(f"{case:8} ratio fastproxy/nginx per CPU-second: "
              f"{per_cpu['fastproxy-tcp'] / per_cpu['nginx-stream']:.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    stop_all()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
