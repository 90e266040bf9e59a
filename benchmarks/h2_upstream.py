#!/usr/bin/env python3
"""The cost of a request through fastproxy to an HTTP/2 (h2c) upstream, next to
the same request to an HTTP/1.1 upstream, measured side by side in one run.

    python benchmarks/h2_upstream.py                  # 3000 calls per case, 3 rounds
    python benchmarks/h2_upstream.py --calls 1000 --rounds 1

The cases, each from one HTTP/1.1 keep-alive client connection (sequential calls,
so this measures the per-request cost, not concurrency):
  grpc-h2c   a gRPC unary call (framed POST, te: trailers) to a grpcio server
             behind an h2c:// upstream; the answer comes chunked with trailers
  post-h1    a POST of the same size to a small asyncio HTTP/1.1 server that
             answers with the same body size
The figure reported is the worker's CPU time per request (utime+stime from
/proc/PID/stat before and after), which depends little on the machine's load;
the requests/s are shown too but move with the load (see `uptime`). Everything
listens on 127.0.0.1; each case is bounded by --calls and 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grpc_server() -> tuple[grpc.Server, int]:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def h1_server(body: bytes) -> tuple[asyncio.AbstractEventLoop, int]:
    """Answers every request (head and Content-Length body read) with `body`."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port = [0]
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port[0] = server.sockets[0].getsockname()[1]
        ready.set()

    def run() -> None:
        loop.run_until_complete(main())
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return loop, port[0]


class Client:
    """One keep-alive HTTP/1.1 connection; reads chunked or Content-Length answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.closing = False

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(self, data: bytes) -> tuple[int, bytes, dict[bytes, bytes]]:
        self.sock.sendall(data)
        status = int(self._line().split()[1])
        headers = {}
        while line := self._line():
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        trailers: dict[bytes, bytes] = {}
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int(self._line(), 16)
                if size == 0:
                    while line := self._line():
                        name, _, value = line.partition(b":")
                        trailers[name.strip().lower()] = value.strip()
                    break
                body += self._take(size)
                self._take(2)
        else:
            body = self._take(int(headers.get(b"content-length", b"0")))
        self.closing = headers.get(b"connection") == b"close"  # max_requests_per_connection
        return status, body, trailers


def run_case(proxy_port: int, worker: int, request: bytes, calls: int,
             check: callable) -> tuple[float, float]:  # type: ignore[valid-type]
    client = Client(proxy_port)
    for _ in range(50):  # warm-up: connections made, code paths hot
        check(*client.request(request))
        if client.closing:
            client.sock.close()
            client = Client(proxy_port)
    cpu0, t0 = cpu_seconds(worker), time.monotonic()
    done = 0
    while done < calls and time.monotonic() - t0 < 60:
        check(*client.request(request))
        done += 1
        if client.closing:
            client.sock.close()
            client = Client(proxy_port)
    cpu1, t1 = cpu_seconds(worker), time.monotonic()
    client.sock.close()
    return (cpu1 - cpu0) / done * 1e6, done / (t1 - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=100, help="message bytes")
    args = parser.parse_args()
    message = b"m" * args.size
    framed = b"\x00" + struct.pack(">I", len(message)) + message
    server, grpc_port = grpc_server()
    _, h1_port = h1_server(framed)
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="h2bench-"))
    config = tmp / "fastproxy.toml"
    config.write_text(
        f'[server]\nworkers = 1\n[log]\naccess = "off"\n'
        f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
        f'[upstreams.grpc]\nservers = ["h2c://127.0.0.1:{grpc_port}"]\n'
        f'[upstreams.h1]\nservers = ["127.0.0.1:{h1_port}"]\n'
        f'[[routes]]\nupstream = "grpc"\nmatch = {{ path_prefix = "/bench." }}\n'
        f'[[routes]]\nupstream = "h1"\n')
    log = open(tmp / "fastproxy.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "serve", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        time.sleep(0.5)
        worker = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        grpc_request = (b"POST /bench.Echo/Unary HTTP/1.1\r\nHost: b\r\n"
                        b"Content-Type: application/grpc\r\nTE: trailers\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(framed) + framed)
        h1_request = (b"POST /echo HTTP/1.1\r\nHost: b\r\n"
                      b"Content-Type: application/octet-stream\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(framed) + framed)

        def grpc_ok(status: int, body: bytes, trailers: dict[bytes, bytes]) -> None:
            assert status == 200 and body == framed and trailers[b"grpc-status"] == b"0"

        def h1_ok(status: int, body: bytes, trailers: dict[bytes, bytes]) -> None:
            assert status == 200 and body == framed

        results: dict[str, list[tuple[float, float]]] = {"grpc-h2c": [], "post-h1": []}
        for _ in range(args.rounds):
            results["grpc-h2c"].append(run_case(port, worker, grpc_request, args.calls, grpc_ok))
            results["post-h1"].append(run_case(port, worker, h1_request, args.calls, h1_ok))
        print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min); "
              f"{args.calls} calls x {args.rounds} rounds, {len(framed)}-byte bodies")
        print(f"{'case':10} {'worker CPU us/request (median)':>32} {'requests/s (median)':>22}")
        for name, rows in results.items():
            cpu = statistics.median(r[0] for r in rows)
            rate = statistics.median(r[1] for r in rows)
            print(f"{name:10} {cpu:32.1f} {rate:22.0f}")
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
