"""Worker RSS over many TLS connections: the per-connection leak check of the
TLS engines.

    python benchmarks/tls_memory.py [--engine openssl] [--handshakes 20000] [--requests 200000]

Starts fastproxy (1 worker, access log off, TLS listener with a fresh ECDSA
certificate) in front of a small origin on 127.0.0.1. Then, in batches, full
handshakes with `openssl s_time -new` (8 clients in parallel, no request) until
--handshakes more were made, and malformed ClientHellos (every 10th connection
sends garbage after a real ClientHello); then --requests keep-alive requests with
wrk over TLS (when wrk is installed), with a reconnect every 100 requests. The
worker's RSS is printed after a warm-up and after each batch: a leak per
connection or per request shows as steady growth; a flat line is the pass.
Everything is bounded in count and time and stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from idle_memory import free_port, rss_kib, start_origin


def worker_pid(master: int, port: int) -> int:
    """The worker's PID once the master has forked it and the listener accepts."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return int(children[0])
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError("fastproxy did not start")


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "site.pem", directory / "site.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def handshakes(port: int, count: int) -> int:
    """About `count` full handshakes (s_time -new, 8 in parallel); the number made."""
    made = 0
    while made < count:
        procs = [subprocess.Popen(
            ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", "2",
             "-no-CApath", "-no-CAfile", "-no-CAstore"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(8)]
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            for line in out.splitlines():
                if "connections in" in line and "real seconds" in line:
                    made += int(line.split()[0])
    return made


def malformed(port: int, count: int) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for i in range(count):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outgoing.read()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(hello[: 10 + i % len(hello)] + os.urandom(64))
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("openssl", "python"), default="openssl")
    parser.add_argument("--handshakes", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    if shutil.which("openssl") is None:
        print("needs the openssl command", file=sys.stderr)
        return 2
    failed = False
    origin_port = start_origin()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_cert(Path(tmp))
        config = Path(tmp) / "fastproxy.toml"
        config.write_text(f"""\
[server]
workers = 1

[log]
access = "off"

[[listeners]]
address = "127.0.0.1:{port}"

[listeners.tls]
certificates = [ {{ cert = "{cert}", key = "{key}" }} ]
engine = "{args.engine}"

[upstreams.app]
servers = ["127.0.0.1:{origin_port}"]

[[routes]]
upstream = "app"
""")
        proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "serve", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            pid = worker_pid(proc.pid, port)
            handshakes(port, 2000)  # warm-up: allocator pools, caches
            base = rss_kib(pid)
            print(f"engine {args.engine}: worker RSS after warm-up {base / 1024:.1f} MiB")
            total = 0
            for batch in range(1, args.batches + 1):
                total += handshakes(port, args.handshakes // args.batches)
                malformed(port, 200)
                rss = rss_kib(pid)
                print(f"  after {total:6d} full handshakes + {200 * batch} malformed: "
                      f"{rss / 1024:.1f} MiB ({(rss - base) / 1024:+.1f})")
            if shutil.which("wrk") and args.requests:
                per_batch = args.requests // args.batches
                for batch in range(1, args.batches + 1):
                    seconds = max(1, per_batch // 15000)
                    subprocess.run(["wrk", "-t1", "-c50", f"-d{seconds}s",
                                    "-H", "Connection: keep-alive",
                                    f"https://127.0.0.1:{port}/"],
                                   check=True, capture_output=True, timeout=seconds + 30)
                    rss = rss_kib(pid)
                    print(f"  after wrk batch {batch} ({seconds}s keep-alive over TLS): "
                          f"{rss / 1024:.1f} MiB ({(rss - base) / 1024:+.1f})")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if "Traceback" in err:
                print(err)
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
