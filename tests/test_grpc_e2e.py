"""gRPC and HTTP/2 to upstreams through `fastproxy serve`: a real grpcio server
behind the proxy (h2c:// and TLS with ALPN h2), an HTTP/1.1 client sending
gRPC-framed calls (unary, server, client and bidirectional streaming; trailers
in the chunked trailer section), gRPC status on the proxy's own answers, many
calls multiplexed on few connections, a plain HTTP request to an h2c server
(the `h2` library's), and trailers through the HTTP/1.1 path."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes, Settings

from servers import Origin, ProxyProcess, Received, Reply

ProxyFactory = Callable[..., ProxyProcess]


# -- a grpcio server with a service defined without protoc (bytes in, bytes out) -------

class Service:
    """test.Echo: Unary, Fail, Stream (server streaming, waits for `go` after the
    first message), Collect (client streaming), Chat (bidirectional), Wait (waits
    on a barrier: calls in flight at once). Records each call's peer."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.go = threading.Event()
        self.barrier: threading.Barrier | None = None
        self.metadata: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.still_active: list[bool] = []
        self.serving = True
        self.cancelled = threading.Event()

    def _seen(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.peers.append(context.peer())
            self.metadata.append({k: v for k, v in context.invocation_metadata()
                                  if isinstance(v, str)})

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        context.set_trailing_metadata((("x-trailer", "t1"),))
        return b"echo:" + request

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        raise AssertionError("abort returns never")

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen(context)
        yield b"first"
        if not self.go.wait(10):
            yield b"timed out waiting"
            return
        for i in range(int(request)):
            yield b"msg%d" % i

    def collect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        return b"|".join(requests)

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen(context)
        for message in requests:
            yield b"re:" + message

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        assert self.barrier is not None
        self.barrier.wait(15)
        return request

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Answers after 3 s; records whether the call was still wanted then."""
        self._seen(context)
        time.sleep(3)
        self.still_active.append(context.is_active())
        return request

    def hold(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Sends one message, then waits (up to 10 s) for the call to be cancelled.
        A cancel that comes before grpcio resumes the generator (it waits for the
        first message's send to complete, which the cancel fails) is seen by the
        termination callback instead."""
        self._seen(context)
        finished = [False]
        context.add_callback(lambda: None if finished[0] else self.cancelled.set())
        yield b"first"
        deadline = time.monotonic() + 10
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not context.is_active():
            self.cancelled.set()
        finished[0] = True

    def health(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """grpc.health.v1.Health/Check, protobuf by hand: field 1 is the service."""
        service = request[2:2 + request[1]].decode() if request else ""
        if service not in ("", "test.Echo"):
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return b"\x08\x01" if self.serving else b"\x08\x02"

    def health_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(self.health)})

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("test.Echo", {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Wait": grpc.unary_unary_rpc_method_handler(self.wait),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "Hold": grpc.unary_stream_rpc_method_handler(self.hold),
        })


class GrpcServer:
    def __init__(self, credentials: grpc.ServerCredentials | None = None, port: int = 0,
                 options: list[tuple[str, Any]] | None = None) -> None:
        self.service = Service()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=40),
                                  options=options or [])
        self.server.add_generic_rpc_handlers((self.service.handler(),
                                              self.service.health_handler()))
        if credentials is None:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            self.port = self.server.add_secure_port(f"127.0.0.1:{port}", credentials)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait(5)


@pytest.fixture
def grpc_server() -> Iterator[GrpcServer]:
    server = GrpcServer()
    yield server
    server.stop()


# -- an HTTP/1.1 client speaking gRPC framing -------------------------------------------

def frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def unframe(data: bytes) -> list[bytes]:
    out = []
    while data:
        assert data[0] == 0, data
        (n,) = struct.unpack(">I", data[1:5])
        out.append(data[5:5 + n])
        data = data[5 + n:]
    return out


class Call:
    """One gRPC call as an HTTP/1.1 chunked POST on a raw socket."""

    def __init__(self, port: int, method: str, *, timeout: float = 15.0,
                 extra: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.sock.sendall(
            b"POST /test.Echo/%s HTTP/1.1\r\nHost: grpc.test\r\n"
            b"Content-Type: application/grpc\r\nTE: trailers\r\n%s"
            b"Transfer-Encoding: chunked\r\n\r\n" % (method.encode(), extra))
        self.status = 0
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.chunked = False
        self.done = False

    def send(self, message: bytes) -> None:
        data = frame(message)
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self, trailers: bytes = b"") -> None:
        self.sock.sendall(b"0\r\n" + trailers + b"\r\n")

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; had {self.buf!r}")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed mid-body")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self) -> int:
        self.status = int(self._line().split(b" ")[1])
        while line := self._line():
            name, _, value = line.decode().partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        if not self.chunked:
            self._exactly(int(self.headers.get("content-length", "0")))
            self.done = True
        return self.status

    def chunk(self) -> bytes | None:
        """The next chunk's data, or None at the end (trailers read)."""
        if self.done:
            return None
        size = int(self._line().split(b";")[0], 16)
        if size == 0:
            while line := self._line():
                name, _, value = line.decode().partition(":")
                self.trailers[name.strip().lower()] = value.strip()
            self.done = True
            return None
        data = self._exactly(size)
        assert self._exactly(2) == b"\r\n"
        return data

    def messages(self) -> list[bytes]:
        body = b""
        while (data := self.chunk()) is not None:
            body += data
        return unframe(body)

    def grpc_status(self) -> str | None:
        return self.trailers.get("grpc-status", self.headers.get("grpc-status"))

    def close(self) -> None:
        self.sock.close()


def last_log_line(proxy: ProxyProcess, timeout: float = 10.0) -> str:
    """The access log's last line, once there is one (the log is written per tick)."""
    deadline = time.monotonic() + timeout
    while not proxy.access_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = proxy.access_log()
    assert lines, "no access log line"
    return lines[-1]


def unary(port: int, method: str, message: bytes) -> Call:
    call = Call(port, method)
    try:
        call.send(message)
        call.end()
        call.head()
        call.body = call.messages()  # type: ignore[attr-defined]
    finally:
        call.close()
    return call


# -- h2c:// upstream ------------------------------------------------------------------

@pytest.fixture
def h2c_proxy(grpc_server: GrpcServer, make_proxy: ProxyFactory) -> ProxyProcess:
    return make_proxy({"grpc": [f"h2c://127.0.0.1:{grpc_server.port}"]})


def test_unary_call_with_trailers(h2c_proxy: ProxyProcess, grpc_server: GrpcServer) -> None:
    call = unary(h2c_proxy.port, "Unary", b"hello")
    assert call.status == 200
    assert call.headers["content-type"] == "application/grpc"
    assert call.chunked
    assert call.body == [b"echo:hello"]  # type: ignore[attr-defined]
    # The status and the custom metadata come in the chunked trailer section.
    assert call.trailers["grpc-status"] == "0"
    assert call.trailers["x-trailer"] == "t1"
    # The server saw the call as gRPC over HTTP/2, with the proxy's hop fields.
    assert grpc_server.service.metadata[0]["x-forwarded-for"] == "127.0.0.1"
    assert '"POST /test.Echo/Unary HTTP/1.1" 200 ' in last_log_line(h2c_proxy)


def test_grpc_responses_are_never_compressed(grpc_server: GrpcServer,
                                             make_proxy: ProxyFactory) -> None:
    """Even on a route whose compress types name application/grpc: gRPC clients
    do not undo an HTTP content-coding; the trailers stay."""
    routes = ('[[routes]]\nupstream = "grpc"\n'
              'compress = { types = ["application/grpc"], min_size = 0 }\n')
    proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{grpc_server.port}"]}, routes=routes)
    call = Call(proxy.port, "Unary", extra=b"Accept-Encoding: gzip\r\n")
    try:
        call.send(b"z" * 5000)
        call.end()
        assert call.head() == 200
        assert "content-encoding" not in call.headers
        assert call.messages() == [b"echo:" + b"z" * 5000]
        assert call.trailers["grpc-status"] == "0"
    finally:
        call.close()


def test_error_status_passes_through(h2c_proxy: ProxyProcess) -> None:
    call = unary(h2c_proxy.port, "Fail", b"x")
    assert call.status == 200
    assert call.grpc_status() == "5"  # NOT_FOUND, as the server said
    message = call.trailers.get("grpc-message", call.headers.get("grpc-message"))
    assert message == "no such thing"
    assert call.body == []  # type: ignore[attr-defined]


def test_server_streaming_messages_arrive_before_the_end(
        h2c_proxy: ProxyProcess, grpc_server: GrpcServer) -> None:
    call = Call(h2c_proxy.port, "Stream")
    try:
        call.send(b"3")
        call.end()
        assert call.head() == 200
        # The server holds the call open until we say so: the first message must
        # reach us through the proxy while the call is still going.
        first = call.chunk()
        assert first is not None and unframe(first) == [b"first"]
        assert not grpc_server.service.go.is_set()
        grpc_server.service.go.set()
        assert call.messages() == [b"msg0", b"msg1", b"msg2"]
        assert call.trailers["grpc-status"] == "0"
    finally:
        call.close()


def test_client_streaming(h2c_proxy: ProxyProcess) -> None:
    call = Call(h2c_proxy.port, "Collect")
    try:
        for part in (b"a", b"bb", b"ccc"):
            call.send(part)
            time.sleep(0.05)
        call.end()
        assert call.head() == 200
        assert call.messages() == [b"a|bb|ccc"]
        assert call.trailers["grpc-status"] == "0"
    finally:
        call.close()


def test_bidirectional_streaming_is_full_duplex(h2c_proxy: ProxyProcess) -> None:
    """Each reply comes back while the request body is still open."""
    call = Call(h2c_proxy.port, "Chat")
    try:
        call.send(b"one")
        assert call.head() == 200
        got = call.chunk()
        assert got is not None and unframe(got) == [b"re:one"]
        call.send(b"two")
        got = call.chunk()
        assert got is not None and unframe(got) == [b"re:two"]
        call.end()
        assert call.messages() == []
        assert call.trailers["grpc-status"] == "0"
    finally:
        call.close()


def test_many_calls_share_few_connections(h2c_proxy: ProxyProcess,
                                          grpc_server: GrpcServer) -> None:
    """20 calls at once (the server holds each until all 20 are in): multiplexed."""
    n = 20
    grpc_server.service.barrier = threading.Barrier(n)
    results: list[Call | BaseException] = []

    def one(i: int) -> None:
        try:
            results.append(unary(h2c_proxy.port, "Wait", b"%d" % i))
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    calls = [r for r in results if isinstance(r, Call)]
    assert len(calls) == n, results
    assert sorted(c.body[0] for c in calls) == sorted(b"%d" % i for i in range(n))  # type: ignore[attr-defined]
    assert all(c.trailers["grpc-status"] == "0" for c in calls)
    # All in flight at once, on one worker: one HTTP/2 connection carries them
    # (grpcio allows far more than 20 concurrent streams).
    assert len(set(grpc_server.service.peers)) == 1, set(grpc_server.service.peers)


def test_client_that_goes_away_resets_its_stream(h2c_proxy: ProxyProcess,
                                                  grpc_server: GrpcServer) -> None:
    call = Call(h2c_proxy.port, "Hold")
    call.send(b"")
    call.end()
    assert call.head() == 200
    first = call.chunk()
    assert first is not None and unframe(first) == [b"first"]
    # Cut (RST): a FIN alone is a half-close, after which a client still gets its
    # answer. The server learns it through RST_STREAM from the proxy.
    call.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    call.close()
    assert grpc_server.service.cancelled.wait(10)
    # The session goes on serving other calls.
    assert unary(h2c_proxy.port, "Unary", b"after").body == [b"echo:after"]  # type: ignore[attr-defined]
    assert len(set(grpc_server.service.peers)) == 1


def test_read_timeout_is_per_stream(grpc_server: GrpcServer, make_proxy: ProxyFactory) -> None:
    """No response head within read_timeout: DEADLINE_EXCEEDED for the client, and
    the stream is reset (the server sees the call cancelled); the connection stays."""
    proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{grpc_server.port}"]},
                       upstream_extra='read_timeout = "1s"\nretry = { retries = 0 }')
    call = unary(proxy.port, "Slow", b"x")
    assert call.status == 200
    assert call.headers["grpc-status"] == "4"
    deadline = time.monotonic() + 10
    while not grpc_server.service.still_active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert grpc_server.service.still_active == [False]
    assert unary(proxy.port, "Unary", b"again").body == [b"echo:again"]  # type: ignore[attr-defined]
    assert len(set(grpc_server.service.peers)) == 1


def test_connect_failure_goes_to_the_next_server(grpc_server: GrpcServer,
                                                 make_proxy: ProxyFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{dead}",
                                 f"h2c://127.0.0.1:{grpc_server.port}"]})
    for i in range(4):
        call = unary(proxy.port, "Unary", b"%d" % i)
        assert call.body == [b"echo:%d" % i]  # type: ignore[attr-defined]
        assert call.trailers["grpc-status"] == "0"


def test_a_new_session_after_the_server_restarts(make_proxy: ProxyFactory) -> None:
    server = GrpcServer()
    port = server.port
    try:
        proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{port}"]},
                           upstream_extra="eject = { failures = 0 }")
        assert unary(proxy.port, "Unary", b"1").body == [b"echo:1"]  # type: ignore[attr-defined]
    finally:
        server.stop()  # the proxy's HTTP/2 connection is closed under it
    server = GrpcServer(port=port)
    try:
        call = unary(proxy.port, "Unary", b"2")
        assert call.body == [b"echo:2"]  # type: ignore[attr-defined]
        assert call.trailers["grpc-status"] == "0"
    finally:
        server.stop()


def test_goaway_lets_the_calls_in_flight_finish(make_proxy: ProxyFactory) -> None:
    """A server stopping gracefully sends GOAWAY: the call in flight on that
    connection still completes through the proxy."""
    server = GrpcServer()
    try:
        proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{server.port}"]})
        call = Call(proxy.port, "Stream")
        try:
            call.send(b"2")
            call.end()
            assert call.head() == 200
            first = call.chunk()
            assert first is not None and unframe(first) == [b"first"]
            stopped = server.server.stop(grace=10)  # GOAWAY; waits for the call
            time.sleep(0.3)
            server.service.go.set()
            assert call.messages() == [b"msg0", b"msg1"]
            assert call.trailers["grpc-status"] == "0"
            assert stopped.wait(10)
        finally:
            call.close()
    finally:
        server.stop()


def test_a_server_that_is_not_http2_is_a_connect_failure(make_proxy: ProxyFactory) -> None:
    """An h2c:// address where an HTTP/1.1 server listens: its answer to the
    preface is not HTTP/2, the connect fails (logged), the client gets
    UNAVAILABLE."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{port}"]})
        call = unary(proxy.port, "Unary", b"x")
        assert call.status == 200
        assert call.headers["grpc-status"] == "14"
        deadline = time.monotonic() + 5
        while "HTTP/2" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "connect failed: the server answered in HTTP/1.x: not an HTTP/2 server" \
            in proxy.log()
        assert "Traceback" not in proxy.log()
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _get_status(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0


def test_a_silent_server_is_a_connect_failure_and_closed(make_proxy: ProxyFactory) -> None:
    """An h2c:// server that accepts but never sends its SETTINGS: each request
    times out connecting (504) and the proxy closes that connection. (Its session
    stayed listed with a cancelled `ready`: every later request to the server
    raised CancelledError in the worker, and each socket stayed open.)"""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)  # read nothing, say nothing

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{port}"]},
                           upstream_extra='connect_timeout = "300ms"')
        statuses = [_get_status(proxy.port) for _ in range(4)]
        assert statuses == [504] * 4, (statuses, proxy.log())
        assert len(accepted) == 4
        # Each timed-out session is closed by the proxy: the server reads EOF.
        deadline = time.monotonic() + 5
        open_ = list(accepted)
        while open_ and time.monotonic() < deadline:
            for conn in list(open_):
                conn.settimeout(0.05)
                try:
                    while conn.recv(65536):
                        pass
                    open_.remove(conn)  # EOF
                except TimeoutError:
                    pass
                except OSError:
                    open_.remove(conn)
        assert not open_, f"{len(open_)} of 4 connections left open by the proxy"
        assert "Traceback" not in proxy.log()
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()


# -- gRPC status on the proxy's own answers ---------------------------------------------

def test_upstream_down_is_unavailable(make_proxy: ProxyFactory) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens once closed
    proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{dead}"]})
    call = unary(proxy.port, "Unary", b"x")
    assert call.status == 200
    assert call.headers["content-type"] == "application/grpc"
    assert call.headers["grpc-status"] == "14"  # UNAVAILABLE
    assert "502" in call.headers["grpc-message"]
    assert call.headers["content-length"] == "0"
    # The access log keeps what the proxy meant.
    assert '"POST /test.Echo/Unary HTTP/1.1" 502 ' in last_log_line(proxy)


def test_proxy_errors_carry_grpc_status(grpc_server: GrpcServer,
                                        make_proxy: ProxyFactory) -> None:
    routes = ('[[routes]]\nmatch = { path_prefix = "/test.Echo/" }\nupstream = "grpc"\n'
              "max_body_bytes = 64\n")
    proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{grpc_server.port}"]}, routes=routes)
    # No route: UNIMPLEMENTED.
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    with sock:
        sock.sendall(b"POST /other.Svc/M HTTP/1.1\r\nHost: g\r\nContent-Type: application/grpc"
                     b"+proto\r\nContent-Length: 5\r\n\r\n" + frame(b""))
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert b"\r\ngrpc-status: 12\r\n" in data
    # A body over the route's max_body: RESOURCE_EXHAUSTED.
    call = Call(proxy.port, "Unary")
    try:
        call.send(b"x" * 200)
        call.end()
        assert call.head() == 200
        assert call.headers["grpc-status"] == "8"
    finally:
        call.close()
    # A non-gRPC request to the same place keeps its HTTP status.
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    with sock:
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: g\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 404 ")


def test_refusals_carry_grpc_status(grpc_server: GrpcServer, make_proxy: ProxyFactory) -> None:
    """403 (access list), 401 (basic auth, its challenge kept), 429 (rate limit,
    Retry-After kept) as gRPC statuses 7, 16 and 8."""
    from fastproxy.auth import hash_password

    secret = hash_password("pw", iterations=10_000)
    address = f"h2c://127.0.0.1:{grpc_server.port}"
    routes = (
        '[[routes]]\nmatch = { path = "/test.Echo/Fail" }\nupstream = "grpc"\n'
        'access = { deny = ["127.0.0.0/8"] }\n'
        '[[routes]]\nmatch = { path = "/test.Echo/Collect" }\nupstream = "grpc"\n'
        f'basic_auth = {{ realm = "rpc", users = {{ alice = "{secret}" }} }}\n'
        '[[routes]]\nmatch = { path = "/test.Echo/Unary" }\nupstream = "grpc"\n'
        'limits = ["one"]\n'
        '[limits.one]\nkey = "client_ip"\nrate = "1/m"\nburst = 0\n')
    proxy = make_proxy({"grpc": [address]}, routes=routes)
    denied = unary(proxy.port, "Fail", b"x")
    assert (denied.status, denied.headers["grpc-status"]) == (200, "7")
    unauthorized = unary(proxy.port, "Collect", b"x")
    assert unauthorized.headers["grpc-status"] == "16"
    assert unauthorized.headers["www-authenticate"].startswith('Basic realm="rpc"')
    assert unary(proxy.port, "Unary", b"1").trailers["grpc-status"] == "0"
    limited = unary(proxy.port, "Unary", b"2")
    assert limited.headers["grpc-status"] == "8"
    assert "retry-after" in limited.headers
    assert limited.headers["content-type"] == "application/grpc"


# -- TLS upstream with ALPN h2 --------------------------------------------------------------

def test_tls_upstream_with_alpn_h2(tmp_path: Path, make_proxy: ProxyFactory) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    credentials = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), b"".join(c.bytes() for c in cert.cert_chain_pems))])
    server = GrpcServer(credentials)
    try:
        proxy = make_proxy({"grpc": [f"https://127.0.0.1:{server.port}"]},
                           upstream_extra=f'protocol = "h2"\ntls = {{ ca = "{tmp_path}/ca.pem" }}')
        call = unary(proxy.port, "Unary", b"secure")
        assert call.status == 200
        assert call.body == [b"echo:secure"]  # type: ignore[attr-defined]
        assert call.trailers["grpc-status"] == "0"
        assert call.trailers["x-trailer"] == "t1"
        # The active health check speaks HTTP/2 over TLS to it too.
        assert asyncio.run(h2_tls_probe(server.port, tmp_path / "ca.pem")) == (True, "ok")
    finally:
        server.stop()


async def h2_tls_probe(port: int, ca: Path) -> tuple[bool, str]:
    from fastproxy.config import HealthCheck, UpstreamTls
    from fastproxy.health import probe_h2
    from fastproxy.tls import client_context

    context = client_context(UpstreamTls(ca=str(ca)), ("h2",))
    return await probe_h2("127.0.0.1", port, HealthCheck(grpc_service=""), context,
                          "127.0.0.1")


def test_tls_upstream_without_h2_is_a_connect_failure(
        tmp_path: Path, make_proxy: ProxyFactory) -> None:
    """An https:// server that does not offer h2 in ALPN (here: an HTTP/1.1-only TLS
    server) fails the connect: 502, as UNAVAILABLE for a gRPC client."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    tls.recv(1024)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        proxy = make_proxy({"grpc": [f"https://127.0.0.1:{port}"]},
                           upstream_extra=f'protocol = "h2"\ntls = {{ ca = "{tmp_path}/ca.pem" }}')
        call = unary(proxy.port, "Unary", b"x")
        assert call.headers["grpc-status"] == "14"
        assert "did not agree to HTTP/2" in proxy.log()
        assert asyncio.run(h2_tls_probe(port, tmp_path / "ca.pem")) == (
            False, "the server did not agree to HTTP/2 (ALPN h2)")
    finally:
        stop.set()
        thread.join(5)
        listener.close()


# -- a plain HTTP request to an h2c server ------------------------------------------------

class H2Origin:
    """A small cleartext HTTP/2 server on the `h2` library: GET answers with a
    Content-Length body naming the path; POST echoes the body (no length)."""

    def __init__(self) -> None:
        self.requests: list[dict[bytes, bytes]] = []
        self.trailers: list[dict[bytes, bytes]] = []
        self.connections = 0
        self.big_size = 64 * 1024 * 1024
        self.big_sent = 0
        self.received = 0  # request body bytes
        self.hold_acks = False  # do not open the proxy's window (a server that stalls)
        self.max_streams = 0  # SETTINGS_MAX_CONCURRENT_STREAMS (0: h2's default, -1: 0)
        self.closed = 0  # connections that ended
        self.refuse = 0  # streams answered RST_STREAM REFUSED_STREAM (-1: all)
        self.refused = 0
        self.refuse_late = False  # refuse at the end of the request body, not at its head
        self.goaway_at = 0  # the request on this stream id gets GOAWAY(last = id - 2)
        self.settings_delay = 0.0  # seconds before the server's SETTINGS
        self.peak_streams = 0  # the most streams open at once on one connection
        self.bodies: list[bytes] = []  # request bodies, as they ended
        self.protocols: list[_H2OriginProtocol] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.port = 0

        async def main() -> None:
            server = await self.loop.create_server(lambda: _H2OriginProtocol(self),
                                                   "127.0.0.1", 0)
            self.server = server
            self.port = server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            self.loop.run_until_complete(main())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def release(self) -> None:
        """Acknowledge what was held, and everything from now on."""
        def go() -> None:
            self.hold_acks = False
            for protocol in self.protocols:
                protocol.ack_all()
        self.loop.call_soon_threadsafe(go)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _H2OriginProtocol(asyncio.Protocol):
    def __init__(self, origin: H2Origin) -> None:
        self.origin = origin
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.bodies: dict[int, bytearray] = {}
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.big: tuple[int, int] | None = None
        self.unacked: list[tuple[int, int]] = []
        self.active: set[int] = set()
        self.started = False
        self.early = b""
        origin.protocols.append(self)

    def ack_all(self) -> None:
        for flow, sid in self.unacked:
            self.conn.acknowledge_received_data(flow, sid)
        self.unacked = []
        self.transport.write(self.conn.data_to_send())

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.origin.connections += 1
        if self.origin.settings_delay:
            asyncio.get_running_loop().call_later(self.origin.settings_delay, self.start)
        else:
            self.start()

    def start(self) -> None:
        if self.origin.max_streams:
            self.conn.local_settings = Settings(
                client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS:
                                              max(0, self.origin.max_streams)})
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())
        self.started = True
        if self.early:
            self.data_received(self.early)

    def done(self, sid: int) -> None:
        self.active.discard(sid)

    def connection_lost(self, exc: Exception | None) -> None:
        self.origin.closed += 1

    def refusing(self) -> bool:
        return bool(self.origin.refuse) and (self.origin.refuse < 0
                                             or self.origin.refused < self.origin.refuse)

    def refuse(self, sid: int) -> None:
        self.origin.refused += 1
        self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        self.done(sid)

    def data_received(self, data: bytes) -> None:
        if not self.started:
            self.early += data  # read once our SETTINGS are out
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                head = dict(event.headers)
                sid = event.stream_id
                self.heads[sid] = head
                self.bodies[sid] = bytearray()
                self.origin.requests.append(head)
                self.active.add(sid)
                self.origin.peak_streams = max(self.origin.peak_streams, len(self.active))
                if self.refusing() and not self.origin.refuse_late:
                    self.refuse(sid)
                elif sid == self.origin.goaway_at:
                    # Written raw: h2 would take no frame after its own GOAWAY, and the
                    # streams below still get their answers.
                    self.transport.write(self.conn.data_to_send())
                    self.transport.write(struct.pack(">I", 8)[1:] + b"\x07\x00" + b"\0" * 4
                                         + struct.pack(">II", sid - 2, 0))
                    self.done(sid)
            elif isinstance(event, DataReceived):
                self.bodies[event.stream_id] += event.data
                self.origin.received += len(event.data)
                if self.origin.hold_acks:
                    self.unacked.append((event.flow_controlled_length, event.stream_id))
                else:
                    self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                        event.stream_id)
            elif isinstance(event, WindowUpdated):
                self.send_big()
            elif isinstance(event, TrailersReceived):
                self.origin.trailers.append(dict(event.headers))
            elif isinstance(event, StreamEnded):
                if event.stream_id in self.active and self.origin.refuse_late \
                        and self.refusing():
                    self.refuse(event.stream_id)
                if event.stream_id in self.active:
                    self.origin.bodies.append(bytes(self.bodies[event.stream_id]))
                    self.answer(event.stream_id)
            elif isinstance(event, StreamReset):
                self.done(event.stream_id)
        self.transport.write(self.conn.data_to_send())

    def send_big(self) -> None:
        """Sends what the proxy's windows allow of the big body (the rest on
        WINDOW_UPDATE), counting it in origin.big_sent."""
        if self.big is None:
            return
        sid, left = self.big
        while left:
            n = min(left, self.conn.local_flow_control_window(sid),
                    self.conn.max_outbound_frame_size)
            if n <= 0:
                break
            self.conn.send_data(sid, b"b" * n)
            left -= n
            self.origin.big_sent += n
        if not left:
            self.conn.end_stream(sid)
            self.done(sid)
            self.big = None
        else:
            self.big = (sid, left)

    def answer_later(self, sid: int) -> None:
        self.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"4")])
        self.conn.send_data(sid, b"slow", end_stream=True)
        self.done(sid)
        self.transport.write(self.conn.data_to_send())

    def answer(self, sid: int) -> None:
        head = self.heads[sid]
        if head[b":path"] == b"/slow":  # answered 0.5 s later
            asyncio.get_running_loop().call_later(0.5, self.answer_later, sid)
            return
        if head[b":path"] == b"/badname":  # a field name HTTP/2 forbids (upper case)
            self.conn.config.normalize_outbound_headers = False
            self.conn.config.validate_outbound_headers = False
            self.conn.send_headers(sid, [(b":status", b"200"), (b"X-Upper", b"1"),
                                         (b"content-length", b"2")])
            self.conn.send_data(sid, b"ok", end_stream=True)
            self.done(sid)
            return
        if head[b":path"] == b"/big":
            self.conn.send_headers(sid, [(b":status", b"200")])
            self.big = (sid, self.origin.big_size)
            self.send_big()
            return
        if head[b":method"] == b"GET":
            body = b"h2 says " + head[b":path"]
            self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain"),
                                         (b"content-length", str(len(body)).encode())])
            self.conn.send_data(sid, body, end_stream=True)
            self.done(sid)
        else:
            self.conn.send_headers(sid, [(b":status", b"201"), (b"x-len",
                                                                str(len(self.bodies[sid])).encode())])
            # Echoed when it fits the proxy's window (256 KiB), in frames.
            body = bytes(self.bodies[sid]) if len(self.bodies[sid]) <= 200_000 else b""
            for i in range(0, len(body), 16384):
                self.conn.send_data(sid, body[i:i + 16384])
            self.conn.end_stream(sid)
            self.done(sid)


@pytest.fixture
def h2_origin() -> Iterator[H2Origin]:
    origin = H2Origin()
    yield origin
    origin.stop()


def test_plain_http_to_an_h2c_server(h2_origin: H2Origin, make_proxy: ProxyFactory) -> None:
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]})
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    with sock:
        sock.sendall(b"GET /a/b?c=1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        data = b""
        while b"h2 says" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\ncontent-length: 16\r\n" in data.lower()
        assert data.endswith(b"\r\n\r\nh2 says /a/b?c=1")
        # A body with Content-Length, on the same client connection (keep-alive).
        body = b"z" * 100_000
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 201 Created\r\n")
        assert b"\r\nx-len: 100000\r\n" in data.lower()
        # A chunked body with a trailer section: the trailers go as trailing HEADERS.
        sock.sendall(b"POST /t HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\nX-Sum: 7\r\nTrailer: x\r\n\r\n")
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert h2_origin.trailers == [{b"x-sum": b"7"}]  # framing fields dropped
    head = h2_origin.requests[0]
    assert head[b":authority"] == b"app.test"
    assert head[b":scheme"] == b"http"
    assert head[b"te"] == b"trailers"
    assert b"connection" not in head and b"host" not in head
    assert h2_origin.connections == 1  # both requests on one HTTP/2 connection


def test_slow_client_holds_back_its_stream(h2_origin: H2Origin,
                                           make_proxy: ProxyFactory) -> None:
    """A client that does not read: the proxy stops opening the stream's window, so
    the server stops within the socket buffers and one window, not at 64 MiB; once
    the client reads, the whole body comes through."""
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]})
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    with sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
        # The server sends as long as windows let it; wait until that stops.
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sent = h2_origin.big_sent
            if sent != last:
                last, stable_since = sent, time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                break
            time.sleep(0.05)
        assert 0 < h2_origin.big_sent < 32 * 1024 * 1024, h2_origin.big_sent
        # Now read everything: chunked, 64 MiB of b"b".
        total = 0
        data = b""
        while True:
            chunk = sock.recv(1 << 20)
            assert chunk
            data += chunk
            if b"\r\n\r\n" in data:
                break
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        buf = rest
        while True:
            while b"\r\n" not in buf:
                buf += sock.recv(1 << 20)
            line, _, buf = buf.partition(b"\r\n")
            size = int(line, 16)
            while len(buf) < size + 2:
                more = sock.recv(1 << 20)
                assert more
                buf += more
            if size == 0:
                break
            total += size
            buf = buf[size + 2:]
    assert total == h2_origin.big_size == h2_origin.big_sent


def test_server_that_stalls_holds_the_uploading_client(h2_origin: H2Origin,
                                                       make_proxy: ProxyFactory) -> None:
    """The server does not open its window: the proxy sends one window, keeps at
    most a little more, and stops reading the client; the client's upload stalls
    far before 64 MiB. Once the server reads, the whole body arrives."""
    h2_origin.hold_acks = True
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]},
                       upstream_extra='send_timeout = "30s"')
    size = 64 * 1024 * 1024
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sent = [0]
    failed: list[BaseException] = []

    def upload() -> None:
        try:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n"
                         % size)
            piece = b"u" * 65536
            while sent[0] < size:
                sock.sendall(piece)
                sent[0] += len(piece)
        except BaseException as exc:  # reported below
            failed.append(exc)

    thread = threading.Thread(target=upload, daemon=True)
    with sock:
        thread.start()
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if sent[0] != last:
                last, stable_since = sent[0], time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                break
            time.sleep(0.05)
        assert h2_origin.received <= 65535  # the server's initial window, not more
        assert sent[0] < 32 * 1024 * 1024, sent[0]  # the client is held back
        h2_origin.release()
        thread.join(30)
        assert not failed and sent[0] == size
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"\r\nx-len: %d\r\n" % size in data.lower()


def test_a_second_connection_at_the_stream_limit(h2_origin: H2Origin,
                                                  make_proxy: ProxyFactory) -> None:
    """The server allows 2 streams per connection: 5 requests at once take 3."""
    h2_origin.max_streams = 2
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]})
    bodies: list[bytes] = []

    def one() -> None:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
            data = b""
            while not data.endswith(b"slow"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            bodies.append(data)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(bodies) == 5 and all(b.startswith(b"HTTP/1.1 200 OK") for b in bodies), bodies
    assert h2_origin.connections == 3


def _request(port: int, raw: bytes, until: bytes = b"") -> bytes:
    """One request on a new connection; the answer up to `until` or the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(raw)
        data = b""
        while not (until and until in data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_a_response_field_name_http2_forbids_is_a_bad_response(
        h2_origin: H2Origin, make_proxy: ProxyFactory) -> None:
    """An upper-case field name from an HTTP/2 server makes the response malformed
    (RFC 9113 8.2.1), which a proxy must not forward (8.1.1): 502. (Upper-case
    Transfer-Encoding would also slip past the framing fields we drop.)"""
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]})
    data = _request(proxy.port, b"GET /badname HTTP/1.1\r\nHost: app.test\r\n"
                    b"Connection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 502 "), data[:200]
    data = _request(proxy.port, b"GET /fine HTTP/1.1\r\nHost: app.test\r\n"
                    b"Connection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"h2 says /fine")


def test_grpc_server_stream_limit_is_respected(make_proxy: ProxyFactory) -> None:
    """A grpcio server allowing one stream per connection: three calls that must
    be in flight at once (a barrier in the service) each get a connection of
    their own, and all succeed."""
    server = GrpcServer(options=[("grpc.max_concurrent_streams", 1)])
    try:
        server.service.barrier = threading.Barrier(3)
        proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{server.port}"]})
        results: list[Call] = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            unary(proxy.port, "Wait", b"%d" % i))) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(c.body[0] for c in results) == [b"0", b"1", b"2"]  # type: ignore[attr-defined]
        assert all(c.trailers["grpc-status"] == "0" for c in results)
        assert len(set(server.service.peers)) == 3  # three connections from the proxy
    finally:
        server.stop()


def test_a_connection_that_never_carries_a_stream_is_closed(
        h2_origin: H2Origin, make_proxy: ProxyFactory) -> None:
    """A server that allows no stream (SETTINGS_MAX_CONCURRENT_STREAMS 0): a
    connect failure (502, logged), its connection closed at once (four stayed
    open before, one per attempt)."""
    h2_origin.max_streams = -1
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]},
                       upstream_extra='idle_timeout = "300ms"')
    data = _request(proxy.port, b"GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 502 "), data[:200]
    assert h2_origin.connections == 1 and not h2_origin.requests  # no second try there
    assert "allows no HTTP/2 streams" in proxy.log()
    deadline = time.monotonic() + 10
    while h2_origin.closed < h2_origin.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h2_origin.closed == h2_origin.connections


def test_refused_stream_is_sent_again(h2_origin: H2Origin, make_proxy: ProxyFactory) -> None:
    """RST_STREAM REFUSED_STREAM: the server did not act on the request, so even a
    POST goes once more, with its whole body, and succeeds."""
    h2_origin.refuse = 1
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]})
    body = b"0123456789" * 300
    data = _request(proxy.port, b"POST /up HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert data.startswith(b"HTTP/1.1 201 Created\r\n"), data[:200]
    assert b"\r\nx-len: 3000\r\n" in data.lower()
    assert h2_origin.refused == 1
    assert len(h2_origin.requests) == 2
    assert h2_origin.bodies == [body]
    assert "refused the stream" in proxy.log()


def test_refused_stream_goes_to_another_server(h2_origin: H2Origin,
                                               make_proxy: ProxyFactory) -> None:
    """With two servers, the second try of a refused stream goes to the other one
    (and the refusing server is not counted as failed: no eject)."""
    refusing = H2Origin()
    try:
        refusing.refuse = -1
        proxy = make_proxy({"app": [f"h2c://127.0.0.1:{refusing.port}",
                                    f"h2c://127.0.0.1:{h2_origin.port}"]},
                           upstream_extra="eject = { failures = 1 }")
        for i in range(4):
            data = _request(proxy.port, b"GET /n%d HTTP/1.1\r\nHost: app.test\r\n"
                            b"Connection: close\r\n\r\n" % i, b"says /n%d" % i)
            assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"says /n%d" % i), data
        assert refusing.refused >= 2  # still picked: never ejected
        assert [r[b":path"] for r in h2_origin.requests] == [b"/n0", b"/n1", b"/n2", b"/n3"]
    finally:
        refusing.stop()


def test_refused_twice_is_unavailable(h2_origin: H2Origin, make_proxy: ProxyFactory) -> None:
    """A server that refuses every stream: one more try, then 502 (gRPC:
    grpc-status 14 UNAVAILABLE)."""
    h2_origin.refuse = -1
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]})
    call = unary(proxy.port, "Unary", b"x")
    assert call.status == 200
    assert call.headers["grpc-status"] == "14"
    assert h2_origin.refused == 2
    data = _request(proxy.port, b"GET /a HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 502 "), data[:200]
    assert h2_origin.refused == 4


def test_refused_with_a_body_too_big_to_keep_is_not_sent_again(
        h2_origin: H2Origin, make_proxy: ProxyFactory) -> None:
    """Refused once the whole 200 KB body was sent: over what is kept for a
    replay (64 KiB), so no second try: 502."""
    h2_origin.refuse = 1
    h2_origin.refuse_late = True  # at the end of the request body
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]})
    body = b"z" * 200_000
    data = _request(proxy.port, b"POST /up HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert data.startswith(b"HTTP/1.1 502 "), data[:200]
    assert h2_origin.refused == 1 and len(h2_origin.requests) == 1


def test_goaway_refuses_a_stream_that_goes_to_a_new_connection(
        h2_origin: H2Origin, make_proxy: ProxyFactory) -> None:
    """Stream 1 in flight; stream 3 gets GOAWAY(last stream 1): stream 1 is
    answered on the old connection; the request of stream 3, never processed,
    goes on a new connection (the old one takes no new streams)."""
    h2_origin.goaway_at = 3
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]})
    results: list[bytes] = []
    slow = threading.Thread(target=lambda: results.append(_request(
        proxy.port, b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n", b"slow")))
    slow.start()
    deadline = time.monotonic() + 10
    while not h2_origin.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h2_origin.requests
    data = _request(proxy.port, b"GET /b HTTP/1.1\r\nHost: app.test\r\n\r\n", b"says /b")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"h2 says /b"), data
    slow.join(15)
    assert results and results[0].startswith(b"HTTP/1.1 200 OK") and results[0].endswith(b"slow")
    assert [r[b":path"] for r in h2_origin.requests] == [b"/slow", b"/b", b"/b"]
    assert h2_origin.connections == 2
    # And the next request goes on the new connection (stream 3 there: no GOAWAY now).
    h2_origin.goaway_at = 0
    data = _request(proxy.port, b"GET /c HTTP/1.1\r\nHost: app.test\r\n\r\n", b"says /c")
    assert data.endswith(b"h2 says /c")
    assert h2_origin.connections == 2


def test_no_more_streams_than_the_server_allows(h2_origin: H2Origin,
                                                make_proxy: ProxyFactory) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS 1, sent 0.3 s late: no stream before the
    server's SETTINGS, never two at once on a connection; the requests beyond
    the limit go on new connections (as Envoy does)."""
    h2_origin.max_streams = 1
    h2_origin.settings_delay = 0.3
    proxy = make_proxy({"app": [f"h2c://127.0.0.1:{h2_origin.port}"]})
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(_request(
        proxy.port, b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n", b"slow")))
        for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 3 and all(r.startswith(b"HTTP/1.1 200 OK") for r in results), results
    assert h2_origin.peak_streams == 1
    assert h2_origin.connections == 3


# -- trailers through the HTTP/1.1 path ---------------------------------------------------

def test_http1_response_trailers_pass(make_origin: Callable[..., Origin],
                                      make_proxy: ProxyFactory) -> None:
    """A chunked response's trailer section reaches the client (framing fields
    dropped). (Request trailers still go to HTTP/1.1 servers as before: none, see
    test_bodies; to HTTP/2 servers they go, see test_plain_http_to_an_h2c_server.)"""
    def handler(req: Received) -> Reply:
        return Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: text/plain\r\n\r\n5\r\nhello\r\n"
                         b"0\r\nX-Checksum: abc\r\nTrailer: x\r\n\r\n")

    origin = make_origin(handler)
    proxy = make_proxy({"app": [origin.address]})
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    with sock:
        sock.sendall(b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"0\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"  # framing fields dropped


# -- active health checks over h2c ------------------------------------------------------

def test_grpc_health_check(grpc_server: GrpcServer) -> None:
    from fastproxy.config import HealthCheck
    from fastproxy.health import probe_h2

    def check(service: str) -> tuple[bool, str]:
        return asyncio.run(probe_h2("127.0.0.1", grpc_server.port,
                                    HealthCheck(grpc_service=service)))

    assert check("") == (True, "ok")
    assert check("test.Echo") == (True, "ok")
    assert check("other.Svc") == (False, "grpc-status 5")
    grpc_server.service.serving = False
    assert check("test.Echo") == (False, "gRPC health status NOT_SERVING")


def test_grpc_health_check_marks_a_server_down(grpc_server: GrpcServer,
                                               make_proxy: ProxyFactory) -> None:
    """Through the health checker process: NOT_SERVING takes the server out
    (503 -> UNAVAILABLE for the client), SERVING brings it back."""
    proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{grpc_server.port}"]},
                       upstream_extra='health_check = { grpc_service = "test.Echo", '
                                      'interval = "200ms", timeout = "150ms", rise = 1, '
                                      "fall = 1 }")
    assert unary(proxy.port, "Unary", b"1").trailers["grpc-status"] == "0"
    grpc_server.service.serving = False
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = unary(proxy.port, "Unary", b"x").grpc_status()
        if status == "14":
            break
        time.sleep(0.1)
    assert status == "14"
    assert "is DOWN" in proxy.log() and "NOT_SERVING" in proxy.log()
    grpc_server.service.serving = True
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = unary(proxy.port, "Unary", b"y").grpc_status()
        if status == "0":
            break
        time.sleep(0.1)
    assert status == "0"


def test_grpc_health_check_needs_http2(tmp_path: Path) -> None:
    from fastproxy.config import ConfigError, load_config

    path = tmp_path / "c.toml"
    path.write_text('[[listeners]]\naddress = "127.0.0.1:8080"\n'
                    '[upstreams.a]\nservers = ["127.0.0.1:9000"]\n'
                    'health_check = { grpc_service = "" }\n'
                    '[[routes]]\nupstream = "a"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "upstreams.a.health_check.grpc_service" in str(info.value)
    assert "needs HTTP/2 servers" in str(info.value)


def test_health_probe_over_h2c(h2_origin: H2Origin) -> None:
    from fastproxy.config import HealthCheck
    from fastproxy.health import probe_h2

    ok = asyncio.run(probe_h2("127.0.0.1", h2_origin.port,
                              HealthCheck(path="/healthz", body="says /healthz")))
    assert ok == (True, "ok")
    assert h2_origin.requests[-1][b":path"] == b"/healthz"
    bad = asyncio.run(probe_h2("127.0.0.1", h2_origin.port,
                               HealthCheck(path="/x", status=((204, 204),))))
    assert bad == (False, "status 200 not in 204")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    assert asyncio.run(probe_h2("127.0.0.1", dead, HealthCheck())) == (False, "connect refused")


def test_responses_with_trailers_are_not_cached(make_origin: Callable[..., Origin],
                                                make_proxy: ProxyFactory) -> None:
    """A cacheable response with a trailer section is passed on (trailers and all)
    but not stored: the next request goes to the origin again. One without
    trailers on the same route is stored (the cache works here)."""
    def handler(req: Received) -> Reply:
        if req.target == "/plain":
            return Reply(headers=[("Cache-Control", "max-age=60")], body=b"plain")
        return Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                         b"Cache-Control: max-age=60\r\n\r\n4\r\nbody\r\n"
                         b"0\r\nX-Digest: 42\r\n\r\n")

    origin = make_origin(handler)
    routes = '[[routes]]\nupstream = "app"\ncache = "c"\n'
    proxy = make_proxy({"app": [origin.address]}, routes=routes,
                       extra='[caches.c]\nmemory = "1m"\n')
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        with sock:
            sock.sendall(b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.endswith(b"\r\n\r\n4\r\nbody\r\n0\r\nX-Digest: 42\r\n\r\n"), data
    assert [r.target for r in origin.requests] == ["/t", "/t"]
    for _ in range(2):
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        with sock:
            sock.sendall(b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.endswith(b"plain")
    assert [r.target for r in origin.requests] == ["/t", "/t", "/plain"]


def test_graceful_stop_lets_a_call_in_flight_finish(grpc_server: GrpcServer,
                                                    make_proxy: ProxyFactory) -> None:
    """SIGTERM while a call is at an h2c:// server: the call gets its answer and
    status over its HTTP/2 session, then the proxy exits cleanly."""
    proxy = make_proxy({"grpc": [f"h2c://127.0.0.1:{grpc_server.port}"]})
    result: list[Call] = []
    thread = threading.Thread(target=lambda: result.append(unary(proxy.port, "Slow", b"s")))
    thread.start()
    deadline = time.monotonic() + 10
    while not grpc_server.service.peers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert grpc_server.service.peers
    proxy.signal(15)
    thread.join(15)
    assert result and result[0].status == 200
    assert result[0].trailers.get("grpc-status") == "0"
    assert result[0].body == [b"s"]  # type: ignore[attr-defined]
    assert proxy.wait(10) == 0
    assert "Traceback" not in proxy.log()
