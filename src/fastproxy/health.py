"""Active health checks: one prober per instance, its verdicts shared with every worker.

The checks run in one process of their own, forked by the master beside the
workers, not in each worker: with N workers, probing from every worker would
multiply the load on the upstream servers by N, and the workers could disagree
about a server for a while. The verdicts go into the `PeerTable`, the shared
memory segment the master mapped before forking, where every worker's
balancers read them on the request path with no message, lock or system call.

Each server is probed every `interval` (the servers of an upstream start a
fraction of the interval apart, so they are not all probed at once). A server
that is up goes down after `fall` failed probes in a row; a server that is down
comes back after `rise` passes in a row. The checker reads the current verdict
from the table, so a restarted checker carries on from where the last one was.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from dataclasses import dataclass
from typing import Any

import uvloop

from fastproxy._peers import PeerTable, slot_layout
from fastproxy._proxyproto import build_v1, build_v2
from fastproxy.config import Config, HealthCheck, ServerAddress

log = logging.getLogger("fastproxy.health")

HEAD_LIMIT = 16 * 1024  # a response head larger than this is malformed
BODY_LIMIT = 64 * 1024  # `body` is looked for in this much of the body at most
USER_AGENT = "fastproxy-health-check"

# An https:// server's checks: the upstream's client context, the name sent and verified.
TlsTarget = tuple[ssl.SSLContext, str]


class MalformedResponse(Exception):
    pass


# --------------------------------------------------------------------------
# One probe


async def probe(host: str, port: int, check: HealthCheck, proxy_header: bytes = b"",
                tls: TlsTarget | None = None) -> tuple[bool, str]:
    """Probe one server once: (passed, why it failed or "ok"), within check.timeout.
    `proxy_header` goes first (a server that expects the PROXY protocol); with `tls`
    (an https:// server: the upstream's client context and the name to verify), the
    request goes over TLS, after the header."""
    try:
        async with asyncio.timeout(check.timeout):
            return await _probe(host, port, check, proxy_header, tls)
    except TimeoutError:
        return False, f"timed out after {check.timeout:g}s"


def check_proxy_header(version: str) -> bytes:
    """What a health check sends first to a server with `proxy_protocol = version`:
    v2 LOCAL or v1 UNKNOWN (the check is the proxy's own connection, no client's: the
    server keeps the connection's addresses, as for HAProxy's check-send-proxy);
    nothing when "off"."""
    if version == "v2":
        return build_v2(None, 0, None, 0)
    if version == "v1":
        return build_v1(None, 0, None, 0)
    return b""


async def _probe(host: str, port: int, check: HealthCheck, proxy_header: bytes = b"",
                 tls: TlsTarget | None = None) -> tuple[bool, str]:
    if check.type == "tcp":
        return await _connect_probe(host, port)
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=HEAD_LIMIT)
    except ConnectionRefusedError:
        return False, "connect refused"
    except socket.gaierror as e:
        return False, f"cannot resolve {host}: {e.strerror}"
    except OSError as e:
        return False, f"connect failed: {e.strerror or e}"
    try:
        if tls is not None:
            if proxy_header:
                writer.write(proxy_header)  # in the clear, before the handshake
            try:
                await writer.start_tls(tls[0], server_hostname=tls[1])
            except ssl.SSLCertVerificationError as e:
                return False, f"TLS certificate verification failed: {e.verify_message or e}"
            except ssl.SSLError as e:
                return False, f"TLS handshake failed: {e.reason or e}"
            writer.write(_request(host, port, check))
        else:
            writer.write(proxy_header + _request(host, port, check))
        status, headers = await _read_head(reader)
        if not any(lo <= status <= hi for lo, hi in check.status):
            return False, f"status {status} not in {_ranges(check.status)}"
        if check.body is None:
            return True, "ok"
        body = b""
        if check.method != "HEAD" and status not in (204, 304):
            body = await _read_body(reader, headers)
        if check.body.encode() not in body:
            return False, f"body does not contain {check.body!r}"
        return True, "ok"
    except MalformedResponse as e:
        return False, f"malformed response: {e}"
    except asyncio.LimitOverrunError:
        return False, f"malformed response: a line longer than {HEAD_LIMIT // 1024} KiB"
    except asyncio.IncompleteReadError:
        return False, "connection closed before the response was complete"
    except OSError as e:
        return False, f"connection error: {e.strerror or e}"
    finally:
        writer.close()


async def _connect_probe(host: str, port: int) -> tuple[bool, str]:
    """type = "tcp": the server accepts a connection (closed at once, nothing sent)."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
    except ConnectionRefusedError:
        return False, "connect refused"
    except socket.gaierror as e:
        return False, f"cannot resolve {host}: {e.strerror}"
    except OSError as e:
        return False, f"connect failed: {e.strerror or e}"
    transport.close()
    return True, "ok"


def _request(host: str, port: int, check: HealthCheck) -> bytes:
    authority = check.host or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return (f"{check.method} {check.path} HTTP/1.1\r\nHost: {authority}\r\n"
            f"User-Agent: {USER_AGENT}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
            ).encode("latin-1")


def _ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, list[str]]]:
    """The final response head (interim 1xx ones are skipped): status and headers."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise MalformedResponse(f"head larger than {HEAD_LIMIT // 1024} KiB") from None
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if (version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3
                or not code.isdigit() or rest[3:4] not in (b"", b" ")):
            raise MalformedResponse(f"bad status line {lines[0][:80]!r}")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise MalformedResponse(f"bad header line {line[:80]!r}")
            headers.setdefault(name.decode("latin-1").lower(), []).append(
                value.strip().decode("latin-1"))
        return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, list[str]]) -> bytes:
    """Up to BODY_LIMIT bytes of the body, framed by chunked coding, Content-Length or
    the end of the connection."""
    codings = [c.strip().lower()
               for v in headers.get("transfer-encoding", ()) for c in v.split(",")]
    if codings:
        if codings[-1] != "chunked":
            return await _read_to_end(reader)
        body = bytearray()
        while len(body) < BODY_LIMIT:
            line = await reader.readuntil(b"\r\n")
            size = line[:-2].partition(b";")[0].strip()
            if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                raise MalformedResponse(f"bad chunk size line {line[:80]!r}")
            n = int(size, 16)
            if n == 0:
                break
            body += await reader.readexactly(min(n, BODY_LIMIT - len(body)))
            if len(body) < BODY_LIMIT and await reader.readexactly(2) != b"\r\n":
                raise MalformedResponse("chunk not followed by CRLF")
        return bytes(body)
    lengths = set(headers.get("content-length", ()))
    if not lengths:
        return await _read_to_end(reader)
    length = lengths.pop()
    if lengths or not (length.isascii() and length.isdigit()):
        raise MalformedResponse(f"bad Content-Length {headers['content-length']}")
    return await reader.readexactly(min(int(length), BODY_LIMIT))


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while len(body) < BODY_LIMIT:
        data = await reader.read(BODY_LIMIT - len(body))
        if not data:
            break
        body += data
    return bytes(body)


# --------------------------------------------------------------------------
# The checker process


async def probe_h2(host: str, port: int, check: HealthCheck, context: Any = None,
                   server_hostname: str | None = None) -> tuple[bool, str]:
    """probe() for an HTTP/2 server: the same request as one HTTP/2 stream, in
    cleartext (prior knowledge) or, with an SSLContext `context`, over TLS with
    ALPN h2; within check.timeout."""
    try:
        async with asyncio.timeout(check.timeout):
            return await _probe_h2(host, port, check, context, server_hostname)
    except TimeoutError:
        return False, f"timed out after {check.timeout:g}s"


async def _probe_h2(host: str, port: int, check: HealthCheck, context: Any,
                    server_hostname: str | None) -> tuple[bool, str]:
    from fastproxy._h2 import ClientConnection, H2ProtocolError, H2StreamClosed

    try:
        if context is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=server_hostname or host)
    except ConnectionRefusedError:
        return False, "connect refused"
    except socket.gaierror as e:
        return False, f"cannot resolve {host}: {e.strerror}"
    except ssl.SSLError as e:
        return False, f"TLS handshake failed: {e.reason or e}"
    except OSError as e:
        return False, f"connect failed: {e.strerror or e}"
    if context is not None:
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            writer.close()
            return False, "the server did not agree to HTTP/2 (ALPN h2)"
    answer = _ProbeStream()
    conn = ClientConnection(answer, BODY_LIMIT, BODY_LIMIT)
    answer.conn = conn
    authority = check.host or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        scheme = b"http" if context is None else b"https"
        grpc = check.grpc_service is not None
        headers = [(b":method", b"POST" if grpc else check.method.encode()), (b":scheme", scheme),
                   (b":authority", authority.encode("latin-1")),
                   (b":path", GRPC_HEALTH_PATH if grpc else check.path.encode("latin-1")),
                   (b"user-agent", USER_AGENT.encode())]
        if grpc:
            headers += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        sid = conn.open_stream(headers, end_stream=not grpc)
        if grpc:
            conn.send_data(sid, _grpc_health_request(check.grpc_service or ""), end_stream=True)
        writer.write(conn.data_to_send())
        while not answer.done:
            data = await reader.read(65536)
            if not data:
                return False, "connection closed before the response"
            conn.receive(data)
            writer.write(conn.data_to_send())
            if answer.failed:
                return False, answer.failed
    except (H2ProtocolError, H2StreamClosed, KeyError, ValueError) as e:
        return False, f"malformed HTTP/2 response: {e}"
    except OSError as e:
        return False, f"connection failed: {e.strerror or e}"
    finally:
        conn.stop()
        writer.close()
    status, grpc_status, body = answer.status, answer.grpc_status, bytes(answer.body)
    if check.grpc_service is not None:
        return _grpc_verdict(status, grpc_status, body)
    if not any(lo <= status <= hi for lo, hi in check.status):
        return False, f"status {status} not in {_ranges(check.status)}"
    if check.body is not None and check.body.encode() not in body:
        return False, f"body does not contain {check.body!r}"
    return True, "ok"


class _ProbeStream:
    """The handler of a probe's HTTP/2 connection (one stream): what came back."""

    def __init__(self) -> None:
        self.conn: Any = None
        self.status = 0
        self.grpc_status: bytes | None = None
        self.body = bytearray()
        self.done = False
        self.failed = ""

    def _fields(self, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == b":status":
                self.status = int(value)
            elif name == b"grpc-status":
                self.grpc_status = value

    def h2_response(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self._fields(headers)

    def h2_trailers(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._fields(headers)

    def h2_data(self, sid: int, data: bytes, size: int) -> None:
        self.conn.acknowledge(sid, size)
        if len(self.body) < BODY_LIMIT:
            self.body += data[:BODY_LIMIT - len(self.body)]

    def h2_end(self, sid: int) -> None:
        self.done = True

    def h2_reset(self, sid: int, code: int, remote: bool) -> None:
        self.failed = "the server reset the stream"

    def h2_goaway(self, code: int, last_stream_id: int) -> None:
        if code or last_stream_id < 1:
            self.failed = "the server reset the stream"

    def h2_window(self, sid: int) -> None:
        pass

    def h2_ping(self) -> None:
        pass

    def h2_settings(self) -> None:
        pass


GRPC_HEALTH_PATH = b"/grpc.health.v1.Health/Check"
_SERVING_STATES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _grpc_health_request(service: str) -> bytes:
    """A HealthCheckRequest{service} in a gRPC frame (protobuf: field 1, bytes)."""
    name = service.encode()
    message = b"\x0a" + bytes([len(name)]) + name if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _grpc_verdict(status: int, grpc_status: bytes | None, body: bytes) -> tuple[bool, str]:
    """A HealthCheckResponse: SERVING (field 1 = 1) with grpc-status 0 passes."""
    if status != 200:
        return False, f"HTTP status {status} (not a gRPC answer)"
    if grpc_status != b"0":
        return False, f"grpc-status {grpc_status.decode('latin-1') if grpc_status else 'missing'}"
    message = body[5:5 + int.from_bytes(body[1:5], "big")] if len(body) >= 5 else b""
    state = 0
    if len(message) >= 2 and message[0] == 0x08:
        state = message[1]
    if state != 1:
        return False, f"gRPC health status {_SERVING_STATES.get(state, state)}"
    return True, "ok"


@dataclass(eq=False)
class Target:
    """One server under active checks, and its passes or failures in a row."""

    upstream: str
    server: ServerAddress
    slot: int  # in the PeerTable
    check: HealthCheck
    offset: float  # seconds from the start to the first probe
    proxy_header: bytes = b""  # sent first (the server's proxy_protocol)
    tls: TlsTarget | None = None  # an https:// server: checked over TLS
    h2: bool = False  # probed over HTTP/2 (an h2c:// server, or protocol = "h2")
    context: Any = None  # with h2: the SSLContext (ALPN h2) of an https:// server
    server_hostname: str | None = None
    passes: int = 0
    failures: int = 0

    def __str__(self) -> str:
        return f"upstream {self.upstream}: server {self.server.address}"


class HealthChecker:
    """Probes every server of the upstreams that have a health_check and records
    the verdicts in the shared table."""

    def __init__(self, config: Config, table: PeerTable) -> None:
        self.table = table
        first, _ = slot_layout(config.upstreams)
        self.targets: list[Target] = []
        for name, upstream in config.upstreams.items():
            check = upstream.health_check
            if check is None:
                continue
            n = len(upstream.servers)
            context = h2_context = None
            if any(server.tls for server in upstream.servers):
                from fastproxy.tls import client_context

                if upstream.protocol == "h2":
                    h2_context = client_context(upstream.tls, ("h2",))
                else:
                    context = client_context(upstream.tls)
            self.targets += [
                Target(name, server, first[name] + j, check, j * check.interval / n,
                       check_proxy_header(upstream.server_proxy_protocol(server)),
                       (context, upstream.tls.sni or server.host)
                       if server.tls and context is not None else None,
                       h2=server.h2 or upstream.protocol == "h2",
                       context=h2_context if server.tls and upstream.protocol == "h2" else None,
                       server_hostname=upstream.tls.sni or server.host)
                for j, server in enumerate(upstream.servers)]

    def run(self) -> int:
        """The process's main: check until SIGTERM or SIGINT."""
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            loop.run_until_complete(self.serve(stop))
        finally:
            loop.close()
        return 0

    async def serve(self, stop: asyncio.Event) -> None:
        """Run every server's schedule until `stop` is set."""
        tasks = [asyncio.create_task(self._schedule(t)) for t in self.targets]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _schedule(self, target: Target) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(target.offset)
        due = loop.time()
        while True:
            await self.check(target)
            # Keep to the schedule; a probe slower than the interval delays the next one.
            due = max(due + target.check.interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def check(self, target: Target) -> None:
        """Probe once and record the result."""
        try:
            if target.h2 and target.check.type != "tcp":
                passed, reason = await probe_h2(target.server.host, target.server.port,
                                                target.check, target.context,
                                                target.server_hostname)
            else:
                passed, reason = await probe(target.server.host, target.server.port,
                                             target.check, target.proxy_header, target.tls)
        except Exception as e:  # a bug in a probe must not stop the checks
            log.exception("%s: probe failed", target)
            passed, reason = False, f"probe error: {e!r}"
        self.record(target, passed, reason)

    def record(self, target: Target, passed: bool, reason: str) -> None:
        up = self.table.is_up(target.slot)
        if passed:
            target.passes += 1
            target.failures = 0
            if not up and target.passes >= target.check.rise:
                self.table.set_health(target.slot, True)
                log.warning("%s is UP (%d checks passed)", target, target.passes)
            return
        target.failures += 1
        target.passes = 0
        if up and target.failures >= target.check.fall:
            self.table.set_health(target.slot, False)
            log.warning("%s is DOWN (%d checks failed: %s)", target, target.failures, reason)
        elif up:
            log.info("%s: check failed (%d of %d): %s", target, target.failures,
                     target.check.fall, reason)
