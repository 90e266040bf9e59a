"""Real servers and processes for the tests: a scriptable origin server and the proxy.

`Origin` is an HTTP/1.1 server on 127.0.0.1 running in its own thread, with
its own small parser (independent of fastproxy's) so that what the proxy sends
is checked by a second reader. `ProxyProcess` runs `python -m fastproxy serve`
exactly as a user would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
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
    # The body exactly as framed on the wire (chunk sizes and CRLFs included);
    # empty when the origin streams request bodies (`Origin.stream_request_bodies`).
    wire_body: bytes = b""
    # Length and zlib.crc32 of the decoded body, also set when it is streamed.
    body_length: int = 0
    body_crc32: int = 0

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
    # `stream` sends the body piece by piece, draining after each one, so a peer
    # that does not read stalls the generator: with `stream_length` it is framed
    # by Content-Length, else chunked (or close-delimited with `close_delimited`).
    stream: Iterable[bytes | memoryview] | None = None
    stream_length: int | None = None
    # `reset`: after writing `raw` (if any), reset the connection (RST) instead of answering.
    reset: bool = False
    # `close_after`: close the connection right after a normal keep-alive response,
    # without announcing it (a server closing an idle keep-alive connection).
    close_after: bool = False


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


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]],
                     wire: bytearray | None = None) -> bytes:
    if wire is None:
        wire = bytearray()
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
            wire += size_line
            size = _chunk_size(size_line)
            if size == 0:
                trailer = await reader.readuntil(b"\r\n")
                wire += trailer
                if trailer != b"\r\n":
                    raise BadRequest("trailers are not expected")
                return bytes(body)
            data = await reader.readexactly(size)
            body += data
            wire += data
            crlf = await reader.readexactly(2)
            wire += crlf
            if crlf != b"\r\n":
                raise BadRequest("chunk not followed by CRLF")
    if cl:
        if len(cl) != 1 or not cl[0].isdigit():
            raise BadRequest(f"bad Content-Length {cl}")
        data = await reader.readexactly(int(cl[0]))
        wire += data
        return data
    return b""


def _chunk_size(size_line: bytes) -> int:
    digits = size_line[:-2]
    if not digits or any(c not in b"0123456789abcdefABCDEF" for c in digits):
        raise BadRequest(f"bad chunk size line {size_line!r} (extensions are not expected)")
    return int(digits, 16)


async def _stream_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]],
                       origin: Origin) -> tuple[int, int]:
    """Read a request body in pieces without keeping it: (length, crc32)."""
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    if te and cl:
        raise BadRequest("both Transfer-Encoding and Content-Length")
    if origin.body_read_delay:
        await asyncio.sleep(origin.body_read_delay)
    length = 0
    crc = 0

    async def take(n: int) -> None:
        nonlocal length, crc
        while n > 0:
            data = await reader.read(min(n, origin.body_read_size))
            if not data:
                raise asyncio.IncompleteReadError(b"", n)
            n -= len(data)
            length += len(data)
            crc = zlib.crc32(data, crc)
            origin.body_bytes_read += len(data)
            if origin.body_chunk_delay:
                await asyncio.sleep(origin.body_chunk_delay)

    if te:
        if te != ["chunked"]:
            raise BadRequest(f"unexpected Transfer-Encoding {te}")
        while True:
            size = _chunk_size(await reader.readuntil(b"\r\n"))
            if size == 0:
                if await reader.readuntil(b"\r\n") != b"\r\n":
                    raise BadRequest("trailers are not expected")
                return length, crc
            await take(size)
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest("chunk not followed by CRLF")
    if cl:
        if len(cl) != 1 or not cl[0].isdigit():
            raise BadRequest(f"bad Content-Length {cl}")
        await take(int(cl[0]))
    return length, crc


class Origin:
    """A scriptable HTTP/1.1 origin server on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, handler: Handler | None = None, name: str = "origin",
                 port: int = 0) -> None:
        self.handler = handler or (lambda req: Reply(body=f"{name} {req.target}".encode()))
        self.name = name
        self.port = port  # 0: chosen by the OS
        self.connections = 0
        self.requests: list[Received] = []
        self.raw = bytearray()
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # Request bodies: with `stream_request_bodies` they are read in pieces of
        # `body_read_size` and not kept (Received.body stays b""; body_length and
        # body_crc32 are set), after waiting `body_read_delay` and with
        # `body_chunk_delay` between pieces: a slow reader.
        self.stream_request_bodies = False
        self.body_read_delay = 0.0
        self.body_chunk_delay = 0.0
        self.body_read_size = 256 * 1024
        self.body_bytes_read = 0      # streamed request body bytes read so far
        self.stream_bytes_sent = 0    # `Reply.stream` body bytes written and drained so far

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Origin:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def main() -> None:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                          limit=1 << 20, reuse_address=True)
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
            # Handlers still waiting (a delayed reply, a hanging path) end here,
            # not as "Task was destroyed but it is pending" at interpreter exit.
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

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
                if self.stream_request_bodies:
                    length, crc = await _stream_body(reader, headers, self)
                    req = Received(method, target, version, headers, b"", conn_id,
                                   body_length=length, body_crc32=crc)
                else:
                    wire = bytearray()
                    body = await _read_body(reader, headers, wire)
                    self.raw += body
                    req = Received(method, target, version, headers, body, conn_id,
                                   wire_body=bytes(wire), body_length=len(body),
                                   body_crc32=zlib.crc32(body))
                self.requests.append(req)
                reply = self.handler(req)
                if asyncio.iscoroutine(reply):
                    reply = await reply
                assert isinstance(reply, Reply)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.reset:
                    if reply.raw:
                        writer.write(reply.raw)
                        await writer.drain()
                    sock = writer.get_extra_info("socket")
                    if sock is not None:  # linger 0: close() sends RST
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    writer.transport.abort()
                    return
                if reply.raw is not None:
                    writer.write(reply.raw)
                    await writer.drain()
                    if reply.close:
                        writer.close()
                        return
                    continue
                await self._send(writer, req, reply)
                if reply.close or reply.close_delimited or reply.close_after:
                    writer.close()
                    return
        except BadRequest as e:
            self.errors.append(str(e))
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
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
        if reply.stream is not None and reply.stream_length is not None:
            lines.append(f"Content-Length: {reply.stream_length}")
        elif (reply.stream is not None and not reply.close_delimited) or reply.chunks is not None:
            lines.append("Transfer-Encoding: chunked")
        elif reply.close_delimited:
            lines.append("Connection: close")
        elif reply.status not in (204, 304):
            lines.append(f"Content-Length: {len(reply.body)}")
        if reply.close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not no_body and reply.stream is None and reply.chunks is None:
            # Head and a plain body in one write, as nginx does for a small file: a
            # proxy reading fast then (on loopback) gets both in one read.
            writer.write(head + reply.body)
            await writer.drain()
            return
        writer.write(head)
        if not no_body and reply.stream is not None:
            chunked = reply.stream_length is None and not reply.close_delimited
            for piece in reply.stream:
                if chunked:
                    if piece:
                        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    writer.write(piece)
                await writer.drain()
                self.stream_bytes_sent += len(piece)
            if chunked:
                writer.write(b"0\r\n\r\n")
        elif not no_body:
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
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop())
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

    def access_log_text(self) -> str:
        return self.access_path.read_text(errors="replace") if self.access_path.exists() else ""

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

    def wait_worker_pids(self, count: int, timeout: float = 10.0) -> list[int]:
        """The worker PIDs once there are `count` of them (the listener accepts
        connections before the master has forked its workers)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.worker_pids()
            if len(pids) == count or time.monotonic() >= deadline:
                return pids
            time.sleep(0.02)

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
                upstream_extra: str = "", server_extra: str = "",
                shutdown_timeout: str = "5s") -> str:
    """A config with one listener on `port`, the given upstreams and a catch-all route
    to the first upstream unless `routes` is given. `extra` (whole tables such as
    [limits] or [timeouts]) is appended verbatim; `server_extra` goes into [server]
    and `upstream_extra` into every [upstreams.NAME]. A server may also be given as an
    `(address, weight)` tuple. `access_log` may be `Path("off")` for `access = "off"`."""
    out = [f"[server]\nworkers = {workers}\nshutdown_timeout = \"{shutdown_timeout}\"\n"
           f"{server_extra}\n",
           f"[log]\naccess = \"{access_log}\"\nlevel = \"info\"\n",
           f"[[listeners]]\naddress = \"127.0.0.1:{port}\"\n"]
    for name, servers in upstreams.items():
        quoted = ", ".join(f'"{s}"' if isinstance(s, str)
                           else f'{{ address = "{s[0]}", weight = {s[1]} }}' for s in servers)
        out.append(f"[upstreams.{name}]\nservers = [{quoted}]\n{upstream_extra}\n")
    if routes is None:
        routes = f"[[routes]]\nupstream = \"{next(iter(upstreams))}\"\n"
    out.append(routes)
    out.append(extra)
    return "\n".join(out)


@dataclass
class RawResponse:
    """One response as `RawClient` read it, with the exact bytes received."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    framing: str        # "none", "length", "chunked" or "close"
    complete: bool      # False when the connection ended before the body did
    wire_body: bytes = b""  # the body as framed on the wire

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header_names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]


class RawClient:
    """A blocking socket client that writes exact bytes and reads responses strictly."""

    def __init__(self, port: int, timeout: float = 5.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read more into the buffer; False at end of stream (FIN or reset)."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_until(self, sep: bytes, limit: int = 1 << 20) -> bytes | None:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                return self._take(i + len(sep))
            if len(self.buf) > limit or not self._fill():
                return None

    def read_exactly(self, n: int) -> bytes:
        """Up to `n` bytes: fewer only if the connection ended."""
        while len(self.buf) < n and self._fill():
            pass
        return self._take(min(n, len(self.buf)))

    def read_all(self) -> bytes:
        """Everything until the peer closes."""
        while self._fill():
            pass
        return self._take(len(self.buf))

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the peer closes (nothing more is buffered or arrives first)."""
        if self.buf:
            return False
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(old)

    def read_response(self, head_request: bool = False) -> RawResponse:
        """Read one response (a 1xx too: call again for the final one)."""
        head = self.read_until(b"\r\n\r\n")
        if head is None:
            raise ConnectionError(f"connection ended before a response head: {bytes(self.buf)!r}")
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status_s, _, reason = rest.partition(b" ")
        status = int(status_s)
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or name != name.strip():
                raise ValueError(f"bad response header line {line!r}")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        resp = RawResponse(version.decode(), status, reason.decode("latin-1"), headers,
                           b"", head, "none", True)
        te = resp.header_all("transfer-encoding")
        cl = resp.header_all("content-length")
        if head_request or status < 200 or status in (204, 304):
            return resp
        wire = bytearray()
        if te:
            if te != ["chunked"]:
                raise ValueError(f"unexpected Transfer-Encoding {te}")
            resp.framing = "chunked"
            body = bytearray()
            while True:
                size_line = self.read_until(b"\r\n")
                if size_line is None:
                    resp.complete = False
                    wire += self._take(len(self.buf))
                    break
                wire += size_line
                size = int(size_line[:-2], 16)
                if size == 0:
                    # The trailer section: field lines up to an empty line.
                    while True:
                        trailer = self.read_until(b"\r\n")
                        if trailer is None:
                            resp.complete = False
                            break
                        wire += trailer
                        if trailer == b"\r\n":
                            break
                    break
                data = self.read_exactly(size + 2)
                wire += data
                body += data[:size]
                if len(data) < size + 2:
                    resp.complete = False
                    break
                if data[size:] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
            resp.body = bytes(body)
        elif cl:
            resp.framing = "length"
            n = int(cl[0])
            data = self.read_exactly(n)
            wire += data
            resp.body = data
            resp.complete = len(data) == n
        else:
            resp.framing = "close"
            data = self.read_all()
            wire += data
            resp.body = data
        resp.wire_body = bytes(wire)
        resp.raw = head + bytes(wire)
        return resp


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RssSampler:
    """Samples a process's VmRSS every 20 ms in a thread (for at most `limit` s)."""

    def __init__(self, pid: int, limit: float = 60.0) -> None:
        self.pid = pid
        self.limit = limit
        self.start_kib = rss_kib(pid)
        self.max_kib = self.start_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.wait(0.02) and time.monotonic() < deadline:
            try:
                self.max_kib = max(self.max_kib, rss_kib(self.pid))
            except OSError:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth_mib(self) -> float:
        return (self.max_kib - self.start_kib) / 1024


@contextlib.contextmanager
def origin_and_proxy(workdir: Path, handler: Handler | None = None,
                     **options: object) -> Iterator[tuple[Origin, ProxyProcess]]:
    """An origin and a proxy in front of it, for module-scoped fixtures (a proxy per
    test would dominate the run time of tests that only send requests). `options`
    go to `config_toml`. Both are stopped on exit, also on failure."""
    origin = Origin(handler).start()
    proxy: ProxyProcess | None = None
    try:
        port = free_port()
        proxy = ProxyProcess(config_toml({"backend": [origin.address]}, port,
                                         workdir / "access.log", **options),  # type: ignore[arg-type]
                             workdir, port)
        proxy.start()
        yield origin, proxy
    finally:
        if proxy is not None and proxy.proc is not None:
            proxy.stop()
        origin.stop()


def redis_server_path() -> str | None:
    """The redis-server executable, or None when it is not installed."""
    import shutil

    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server",
                      "/usr/sbin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class RedisServer:
    """A private redis-server on 127.0.0.1 (no persistence, its own temporary
    directory), stopped by its PID. `stop()` then `start()` restarts it on the
    same port. As a context manager it is stopped, and its directory removed,
    on exit (also on failure)."""

    def __init__(self, port: int = 0, executable: str | None = None) -> None:
        import tempfile

        exe = executable or redis_server_path()
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.executable = exe
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="fastproxy-redis-"))
        self.unix_socket = self.dir / "redis.sock"
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it and wait until it answers PING. A port chosen here may be
        taken by someone else before redis-server binds it: then try another."""
        choose = self.port == 0
        for _ in range(5):
            if choose:
                self.port = free_port()
            if self._start_once(timeout):
                return self
            if not choose:
                break
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{self.log()}")

    def _start_once(self, timeout: float) -> bool:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                 "--unixsocket", str(self.unix_socket), "--unixsocketperm", "700",
                 "--daemonize", "no", "--protected-mode", "yes"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self.ping():
                return True
            time.sleep(0.02)
        self.stop()
        return False

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        import shutil

        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- WebSocket (RFC 6455) ----------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE = 1, 2, 8


def ws_accept(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())


def ws_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame; masked when `mask` (4 bytes) is given (a client's frames are)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    if mask == bytes(4):
        return head + mask + payload  # (a zero mask leaves the payload as it is: big tests)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def ws_read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(opcode, unmasked payload) of the next frame."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n)
    if mask is not None and mask != bytes(4):
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


class WebSocketOrigin:
    """A WebSocket origin on 127.0.0.1 in its own thread, with its own HTTP reader.

    Paths: /echo (frames echoed; a close frame is answered and the connection
    closed; the text "bye" makes the origin close first), /big?N (N bytes sent in
    64 KiB binary frames as fast as the connection takes them, then a close),
    /sink?N (reads N bytes of frames slowly, then sends the text "done"),
    /plain (no switch: 200 with a body, keep-alive), /deny (403, keep-alive).
    Every request head is kept in `heads`; `events` records what each tunnel saw
    ("close-frame", "eof", "closed-by-origin")."""

    def __init__(self) -> None:
        self.port = 0
        self.heads: list[bytes] = []
        self.events: list[str] = []
        self.big_sent = 0
        self.sink_read = 0
        self._origin = Origin()  # its thread-and-loop machinery, with our handler

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> WebSocketOrigin:
        origin = self._origin
        origin._serve = self._serve  # type: ignore[method-assign]
        origin.start()
        self.port = origin.port
        return self

    def stop(self) -> None:
        self._origin.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._origin._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                fields = {k.strip().lower(): v.strip() for k, _, v in
                          (line.partition(":") for line in lines[1:] if line)}
                path, _, query = target.partition("?")
                if path in ("/plain", "/deny") or "upgrade" not in fields:
                    status = b"403 Forbidden" if path == "/deny" else b"200 OK"
                    body = b"not switched " + path.encode()
                    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n"
                                 % len(body) + body)
                    await writer.drain()
                    continue
                accept = ws_accept(fields["sec-websocket-key"].encode())
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                             + b"\r\n\r\n")
                await writer.drain()
                if path == "/big":
                    await self._send_big(writer, int(query))
                elif path == "/sink":
                    await self._slow_sink(reader, writer, int(query))
                else:
                    await self._echo(reader, writer)
                return
        finally:
            self._origin._writers.discard(writer)
            writer.close()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                opcode, payload = await ws_read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.events.append("eof")
                return
            if opcode == OP_CLOSE:
                self.events.append("close-frame")
                writer.write(ws_frame(OP_CLOSE, payload))
                await writer.drain()
                return
            if opcode == OP_TEXT and payload == b"bye":
                writer.write(ws_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
                await writer.drain()
                self.events.append("closed-by-origin")
                return
            writer.write(ws_frame(opcode, payload))
            await writer.drain()

    async def _slow_sink(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         total: int) -> None:
        while self.sink_read < total:
            _, payload = await ws_read_frame(reader)
            self.sink_read += len(payload)
            if self.sink_read % (1 << 20) == 0:
                await asyncio.sleep(0.03)
        writer.write(ws_frame(OP_TEXT, b"done"))
        await writer.drain()

    async def _send_big(self, writer: asyncio.StreamWriter, total: int) -> None:
        piece = ws_frame(OP_BINARY, b"\xab" * 65536)
        while self.big_sent < total:
            writer.write(piece)
            await writer.drain()
            self.big_sent += 65536
        writer.write(ws_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        await writer.drain()


def answered(send: Callable[[], bytes], suffix: bytes,
             errors: tuple[type[BaseException], ...], seconds: float = 10.0) -> bytes:
    """`send()` again every 0.1 s (one of `errors` counting as no answer) until what it
    returns ends with `suffix` or `seconds` have passed; the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            data = send()
        except errors:
            data = b""
        if data.endswith(suffix) or time.monotonic() > deadline:
            return data
        time.sleep(0.1)


def starve_descriptors(proxy: ProxyProcess, worker: int, expect: str) -> None:
    """Let `worker` have only two descriptors more than it uses, connect 12 clients
    (more than it may accept: the rest wait in the backlog) until its log says `expect`,
    then close them and give the limit back."""
    import resource

    limits = resource.prlimit(worker, resource.RLIMIT_NOFILE)
    used = len(os.listdir(f"/proc/{worker}/fd"))
    clients = []
    try:
        resource.prlimit(worker, resource.RLIMIT_NOFILE, (used + 2, limits[1]))
        for _ in range(12):
            clients.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=10))
        deadline = time.monotonic() + 10
        while "Too many open files" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert expect in proxy.log(), proxy.log()
    finally:
        for client in clients:
            client.close()
        resource.prlimit(worker, resource.RLIMIT_NOFILE, limits)
