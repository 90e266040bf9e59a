"""Real servers and processes for the tests: a scriptable origin server and the proxy.

`Origin` is an HTTP/1.1 server on 127.0.0.1 running in its own thread, with
its own small parser (independent of fastproxy's) so that what the proxy sends
is checked by a second reader. `ProxyProcess` runs `python -m fastproxy serve`
exactly as a user would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Received:
    """One request as the origin server read it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    conn_id: int

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


@dataclass
class Reply:
    """What the origin answers. `chunks` sends a chunked body; `close_delimited`
    sends the body without length and closes; `raw` replaces everything."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"ok"
    chunks: list[bytes] | None = None
    close_delimited: bool = False
    delay: float = 0.0
    raw: bytes | None = None
    close: bool = False


Handler = Callable[[Received], "Reply | Awaitable[Reply]"]


class BadRequest(Exception):
    pass


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def _parse_head(data: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = data[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(f"bad request line {lines[0]!r}")
    method, target, version = (p.decode("latin-1") for p in parts)
    headers = []
    for line in lines[1:]:
        if b"\n" in line or b"\r" in line or line[:1] in (b" ", b"\t"):
            raise BadRequest(f"bad header line {line!r}")
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {line!r}")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return method, target, version, headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    if te and cl:
        raise BadRequest("both Transfer-Encoding and Content-Length")
    if te:
        if te != ["chunked"]:
            raise BadRequest(f"unexpected Transfer-Encoding {te}")
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line[:-2], 16)
            if size == 0:
                trailer = await reader.readuntil(b"\r\n")
                if trailer != b"\r\n":
                    raise BadRequest("trailers are not expected")
                return bytes(body)
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest("chunk not followed by CRLF")
    if cl:
        if len(cl) != 1 or not cl[0].isdigit():
            raise BadRequest(f"bad Content-Length {cl}")
        return await reader.readexactly(int(cl[0]))
    return b""


class Origin:
    """A scriptable HTTP/1.1 origin server on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, handler: Handler | None = None, name: str = "origin") -> None:
        self.handler = handler or (lambda req: Reply(body=f"{name} {req.target}".encode()))
        self.name = name
        self.port = 0
        self.connections = 0
        self.requests: list[Received] = []
        self.raw = bytearray()
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Origin:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def main() -> None:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                          limit=1 << 20)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            loop.run_until_complete(main())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"origin-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("origin server did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await _read_head(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.raw += head
                method, target, version, headers = _parse_head(head)
                body = await _read_body(reader, headers)
                self.raw += body
                req = Received(method, target, version, headers, body, conn_id)
                self.requests.append(req)
                reply = self.handler(req)
                if asyncio.iscoroutine(reply):
                    reply = await reply
                assert isinstance(reply, Reply)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.raw is not None:
                    writer.write(reply.raw)
                    await writer.drain()
                    if reply.close:
                        writer.close()
                        return
                    continue
                await self._send(writer, req, reply)
                if reply.close or reply.close_delimited:
                    writer.close()
                    return
        except BadRequest as e:
            self.errors.append(str(e))
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)

    async def _send(self, writer: asyncio.StreamWriter, req: Received, reply: Reply) -> None:
        from http import HTTPStatus

        phrase = HTTPStatus(reply.status).phrase
        lines = [f"HTTP/1.1 {reply.status} {phrase}"]
        lines += [f"{k}: {v}" for k, v in reply.headers]
        no_body = req.method == "HEAD" or reply.status in (204, 304) or reply.status < 200
        if reply.chunks is not None:
            lines.append("Transfer-Encoding: chunked")
        elif reply.close_delimited:
            lines.append("Connection: close")
        elif reply.status not in (204, 304):
            lines.append(f"Content-Length: {len(reply.body)}")
        if reply.close:
            lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not no_body:
            if reply.chunks is not None:
                for chunk in reply.chunks:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(reply.body)
        await writer.drain()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyProcess:
    """`python -m fastproxy serve CONFIG` in a subprocess, stopped by its PID."""

    def __init__(self, config_text: str, tmp: Path, port: int) -> None:
        self.port = port
        self.config_path = tmp / "fastproxy.toml"
        self.config_path.write_text(config_text)
        self.log_path = tmp / "fastproxy.log"
        self.access_path = tmp / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> ProxyProcess:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", "serve", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fastproxy exited {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fastproxy did not listen in time:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access_log(self) -> list[str]:
        if not self.access_path.exists():
            return []
        return self.access_path.read_text(errors="replace").splitlines()

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        workers = self.worker_pids()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in workers:  # the master reaps them; make sure none outlived it
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            os.kill(pid, signal.SIGKILL)
        self._log.close()
        return proc.returncode


def config_toml(upstreams: dict[str, list[str]], port: int, access_log: Path, *,
                workers: int = 1, extra: str = "", routes: str | None = None,
                upstream_extra: str = "", server_extra: str = "") -> str:
    """A config with one listener on `port`, the given upstreams and a catch-all route
    to the first upstream unless `routes` is given. `extra` (whole tables such as
    [limits] or [timeouts]) is appended verbatim; `server_extra` goes into [server]
    and `upstream_extra` into every [upstreams.NAME]."""
    out = [f"[server]\nworkers = {workers}\nshutdown_timeout = \"5s\"\n{server_extra}\n",
           f"[log]\naccess = \"{access_log}\"\nlevel = \"info\"\n",
           f"[[listeners]]\naddress = \"127.0.0.1:{port}\"\n"]
    for name, servers in upstreams.items():
        quoted = ", ".join(f'"{s}"' for s in servers)
        out.append(f"[upstreams.{name}]\nservers = [{quoted}]\n{upstream_extra}\n")
    if routes is None:
        routes = f"[[routes]]\nupstream = \"{next(iter(upstreams))}\"\n"
    out.append(routes)
    out.append(extra)
    return "\n".join(out)
