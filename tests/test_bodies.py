"""Message bodies through the proxy: every framing in both directions, bodiless
responses, 100-continue, and large bodies streamed with bounded memory and
back-pressure in both directions."""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import pytest

from servers import (
    Origin,
    ProxyProcess,
    RawClient,
    Received,
    Reply,
    RssSampler,
    config_toml,
    free_port,
)

MiB = 1 << 20
UNLIMITED_BODY = "[limits]\nmax_body_bytes = 0\n"


def parse_chunked_strict(wire: bytes) -> list[bytes]:
    """The chunks of a chunked body that has no extensions and no trailers."""
    chunks: list[bytes] = []
    pos = 0
    while True:
        end = wire.index(b"\r\n", pos)
        size_text = wire[pos:end]
        assert size_text and all(c in b"0123456789abcdef" for c in size_text.lower()), size_text
        size = int(size_text, 16)
        pos = end + 2
        if size == 0:
            assert wire[pos:] == b"\r\n", f"trailer section not empty: {wire[pos:]!r}"
            return chunks
        chunks.append(wire[pos:pos + size])
        assert wire[pos + size:pos + size + 2] == b"\r\n"
        pos += size + 2


def echo(req: Received) -> Reply:
    return Reply(body=req.body, headers=[("X-Len", str(len(req.body)))])


# -- request bodies --------------------------------------------------------------------

def test_request_body_content_length(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(echo)
    proxy = make_proxy({"backend": [origin.address]})
    body = bytes(range(256)) * 40
    with RawClient(proxy.port) as c:
        c.send(b"POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % len(body))
        c.send(body[:1000])
        time.sleep(0.05)
        c.send(body[1000:])
        r = c.read_response()
        assert (r.status, r.body) == (200, body)
        c.send(b"POST /empty HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n")
        assert c.read_response().body == b""
    req, empty = origin.requests
    assert req.body == body
    assert req.wire_body == body
    assert req.header("Content-Length") == str(len(body))
    assert req.header("Transfer-Encoding") is None
    assert empty.header("Content-Length") == "0"
    assert empty.body == b""


def test_request_body_chunked_rechunked_without_extensions_or_trailers(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(echo)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"POST /ch HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n"
               b"Trailer: X-Sum\r\n\r\n"
               b"4;name=value\r\nWiki\r\n"
               b"5;ext;other=\"quoted\"\r\npedia\r\n"
               b"E\r\n in\r\n\r\nchunks.\r\n"
               b"0;last=1\r\nX-Sum: 123\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"Wikipedia in\r\n\r\nchunks.")
        # The trailer section was consumed with the request: the connection is in sync.
        c.send(b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().status == 200
    req = origin.requests[0]
    assert origin.errors == []
    assert req.body == b"Wikipedia in\r\n\r\nchunks."
    assert req.header("Transfer-Encoding") == "chunked"
    assert req.header("Content-Length") is None
    assert "trailer" not in req.header_names()
    assert b";" not in req.wire_body.split(b"\r\n", 1)[0]
    assert b"".join(parse_chunked_strict(req.wire_body)) == req.body
    assert b"X-Sum" not in req.wire_body


def test_request_body_chunked_sent_in_pieces(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(echo)
    proxy = make_proxy({"backend": [origin.address]})
    pieces = [b"POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n",
              b"1", b"0\r\n0123456", b"789abcdef\r\n", b"3\r\nx", b"yz\r\n0\r", b"\n\r\n"]
    with RawClient(proxy.port) as c:
        for piece in pieces:
            c.send(piece)
            time.sleep(0.02)
        r = c.read_response()
        assert (r.status, r.body) == (200, b"0123456789abcdefxyz")
    req = origin.requests[0]
    assert b"".join(parse_chunked_strict(req.wire_body)) == b"0123456789abcdefxyz"


# -- response bodies -------------------------------------------------------------------

def body_for(req: Received) -> Reply:
    if req.target == "/length":
        return Reply(body=b"L" * 3000)
    if req.target == "/chunked":
        return Reply(chunks=[b"first ", b"second ", b"x" * 5000])
    if req.target == "/close":
        return Reply(body=b"until close " * 100, close_delimited=True)
    if req.target == "/empty-close":
        return Reply(body=b"", close_delimited=True)
    if req.target == "/204":
        return Reply(status=204, body=b"")
    if req.target == "/304":
        # A 304 may carry the Content-Length of the representation (RFC 9110 §8.6):
        # it still has no body.
        return Reply(raw=b'HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: "v1"\r\n\r\n')
    return Reply(body=f"body of {req.method} {req.target}".encode())


@pytest.fixture(scope="module")
def bodies_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One origin (`body_for`) and proxy shared by the response-framing tests, which
    only read responses (starting a proxy per test dominates their run time)."""
    origin = Origin(body_for).start()
    proxy: ProxyProcess | None = None
    try:
        workdir = tmp_path_factory.mktemp("bodies-proxy")
        port = free_port()
        proxy = ProxyProcess(config_toml({"backend": [origin.address]}, port,
                                         workdir / "access.log"), workdir, port)
        proxy.start()
        yield proxy
    finally:
        if proxy is not None and proxy.proc is not None:
            proxy.stop()
        origin.stop()


def test_response_content_length_passed_through(bodies_proxy: ProxyProcess) -> None:
    with RawClient(bodies_proxy.port) as c:
        c.send(b"GET /length HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.framing, r.complete, r.body) == (200, "length", True, b"L" * 3000)
        assert r.header("Content-Length") == "3000"
        assert r.header("Transfer-Encoding") is None


def test_response_chunked_to_http11_client(bodies_proxy: ProxyProcess) -> None:
    with RawClient(bodies_proxy.port) as c:
        c.send(b"GET /chunked HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.framing, r.complete) == (200, "chunked", True)
        assert r.body == b"first second " + b"x" * 5000
        assert r.header("Content-Length") is None
        assert r.header_all("Transfer-Encoding") == ["chunked"]
        assert b"".join(parse_chunked_strict(r.wire_body)) == r.body
        c.send(b"GET /length HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().body == b"L" * 3000


def test_response_chunked_to_http10_client_is_close_delimited(
        bodies_proxy: ProxyProcess) -> None:
    with RawClient(bodies_proxy.port) as c:
        c.send(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        # HTTP/1.0 has no chunked coding: the body ends with the connection.
        assert (r.status, r.framing, r.body) == (200, "close", b"first second " + b"x" * 5000)
        assert r.header("Transfer-Encoding") is None
        assert r.header("Connection") == "close"


def test_close_delimited_response_rechunked_for_http11_client(
        bodies_proxy: ProxyProcess) -> None:
    with RawClient(bodies_proxy.port) as c:
        for path, body in (("/close", b"until close " * 100), ("/empty-close", b"")):
            c.send(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
            r = c.read_response()
            assert (r.status, r.framing, r.complete, r.body) == (200, "chunked", True, body)
            assert r.header("Connection") is None  # the client connection stays open
            assert r.wire_body.endswith(b"0\r\n\r\n")
        c.send(b"GET /length HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().body == b"L" * 3000


def test_close_delimited_response_to_http10_client(bodies_proxy: ProxyProcess) -> None:
    with RawClient(bodies_proxy.port) as c:
        c.send(b"GET /close HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.framing, r.body) == (200, "close", b"until close " * 100)
        assert r.header("Content-Length") is None
        assert r.header("Transfer-Encoding") is None
        assert r.header("Connection") == "close"


def test_head_response_has_no_body(bodies_proxy: ProxyProcess) -> None:
    with RawClient(bodies_proxy.port) as c:
        for _ in range(2):
            c.send(b"HEAD /length HTTP/1.1\r\nHost: a.test\r\n\r\n")
            r = c.read_response(head_request=True)
            assert r.status == 200
            assert r.header("Content-Length") == "3000"
            assert r.raw.endswith(b"\r\n\r\n")
            c.send(b"GET /thing HTTP/1.1\r\nHost: a.test\r\n\r\n")
            r = c.read_response()
            assert r.body == b"body of GET /thing"
        assert c.buf == b""
        c.send(b"HEAD /chunked HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response(head_request=True)
        assert r.status == 200
        c.send(b"GET /thing HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().body == b"body of GET /thing"


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(bodies_proxy: ProxyProcess, status: int) -> None:
    with RawClient(bodies_proxy.port) as c:
        for _ in range(2):
            c.send(f"GET /{status} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == status
            assert r.header("Transfer-Encoding") is None
            assert r.raw.endswith(b"\r\n\r\n")
            if status == 304:
                assert r.header("Content-Length") == "1234"
                assert r.header("ETag") == '"v1"'
            else:
                assert r.header("Content-Length") is None
            c.send(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n")
            assert c.read_response().body == b"body of GET /after"
        assert c.buf == b""


# -- 100-continue ----------------------------------------------------------------------

def test_expect_100_continue(make_origin: Callable[..., Origin],
                             make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(echo)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"PUT /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n"
               b"Expect: 100-continue\r\n\r\n")
        interim = c.read_response()  # times out (fails) if no 100 comes without the body
        assert interim.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert c.buf == b""
        c.send(b"hello world")
        final = c.read_response()
        assert (final.status, final.body) == (200, b"hello world")
        assert c.buf == b""
    req = origin.requests[0]
    assert req.body == b"hello world"
    assert req.header("Expect") is None


def test_upstream_interim_100_not_forwarded_twice(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(lambda req: Reply(
        raw=b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"))
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n"
               b"Expect: 100-continue\r\n\r\n")
        assert c.read_response().status == 100
        c.send(b"ok")
        final = c.read_response()
        assert (final.status, final.body) == (201, b"done")
        c.send(b"POST /y HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nok")
        # Without Expect the client gets no 100 at all, even though the upstream sends one.
        final = c.read_response()
        assert (final.status, final.body) == (201, b"done")


# -- large bodies and memory -------------------------------------------------------------

# The worker streams: its RSS must not grow with the body size. Measured growth
# (VmRSS peak minus VmRSS after warm-up, worker at ~25 MiB) is under 1 MiB for
# 100-200 MiB bodies, back-pressure stalls included: socket buffers live in the
# kernel, not in the RSS. 20 MiB leaves a wide margin for allocator noise while
# buffering a whole body (100+ MiB), or even a fifth of one, fails clearly.
MAX_RSS_GROWTH_MIB = 20


@pytest.fixture(scope="module")
def pattern() -> bytes:
    return os.urandom(MiB + 4096)


def pieces(pattern: bytes, total: int, size: int = MiB) -> Iterator[memoryview]:
    """`total` bytes in pieces of `size`, each a different slice of `pattern`."""
    view = memoryview(pattern)
    sent = 0
    i = 0
    while sent < total:
        n = min(size, total - sent)
        off = (i * 997) % 4096
        yield view[off:off + n]
        sent += n
        i += 1


def crc_of(pattern: bytes, total: int, size: int = MiB) -> int:
    crc = 0
    for p in pieces(pattern, total, size):
        crc = zlib.crc32(p, crc)
    return crc


def warm_up(proxy: ProxyProcess) -> int:
    """One small request so the worker has imported and allocated what it needs."""
    with RawClient(proxy.port) as c:
        for _ in range(3):
            c.send(b"POST /warm HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello")
            assert c.read_response().status == 200
    [pid] = proxy.wait_worker_pids(1)
    return pid


def test_200mb_upload_streamed(make_origin: Callable[..., Origin],
                               make_proxy: Callable[..., ProxyProcess],
                               pattern: bytes) -> None:
    total = 200 * MiB
    origin = make_origin(lambda req: Reply(body=f"{req.body_length} {req.body_crc32}".encode()))
    origin.stream_request_bodies = True
    proxy = make_proxy({"backend": [origin.address]}, extra=UNLIMITED_BODY)
    pid = warm_up(proxy)
    start = time.monotonic()
    with RssSampler(pid) as rss, RawClient(proxy.port, timeout=30) as c:
        c.send(b"POST /big HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % total)
        for p in pieces(pattern, total):
            c.send(p)
        r = c.read_response()
    elapsed = time.monotonic() - start
    assert r.status == 200
    assert r.body == f"{total} {crc_of(pattern, total)}".encode()
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB, (rss.start_kib, rss.max_kib)
    assert elapsed < 20


def test_200mb_download_streamed(make_origin: Callable[..., Origin],
                                 make_proxy: Callable[..., ProxyProcess],
                                 pattern: bytes) -> None:
    total = 200 * MiB
    origin = make_origin(lambda req: Reply(stream=pieces(pattern, total), stream_length=total)
                         if req.target == "/big" else Reply())
    proxy = make_proxy({"backend": [origin.address]})
    pid = warm_up(proxy)
    start = time.monotonic()
    with RssSampler(pid) as rss, RawClient(proxy.port, timeout=30) as c:
        c.send(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        head = c.read_until(b"\r\n\r\n")
        assert head is not None and head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nContent-Length: %d\r\n" % total in head
        got, crc = len(c.buf), zlib.crc32(c.buf)
        c.buf.clear()
        buf = bytearray(MiB)
        view = memoryview(buf)
        while got < total:
            n = c.sock.recv_into(view)
            assert n, f"connection closed after {got} bytes"
            crc = zlib.crc32(view[:n], crc)
            got += n
    elapsed = time.monotonic() - start
    assert got == total
    assert crc == crc_of(pattern, total)
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB, (rss.start_kib, rss.max_kib)
    assert elapsed < 20


def test_slow_client_back_pressure(make_origin: Callable[..., Origin],
                                   make_proxy: Callable[..., ProxyProcess],
                                   pattern: bytes) -> None:
    total = 100 * MiB
    origin = make_origin(lambda req: Reply(stream=pieces(pattern, total, 256 * 1024),
                                           stream_length=total)
                         if req.target == "/big" else Reply())
    proxy = make_proxy({"backend": [origin.address]})
    pid = warm_up(proxy)
    with RssSampler(pid) as rss, RawClient(proxy.port, timeout=30) as c:
        c.send(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        time.sleep(1.0)
        written_1s = origin.stream_bytes_sent
        time.sleep(1.0)
        written_2s = origin.stream_bytes_sent
        # Kernel socket buffers on both sides of the proxy hold some of it (their
        # autotuned sizes reach a few MiB each; measured 8-13 MiB in all); the rest
        # must wait for the client.
        assert written_2s < 32 * MiB, written_2s
        assert written_2s - written_1s < 2 * MiB, (written_1s, written_2s)  # stalled
        head = c.read_until(b"\r\n\r\n")
        assert head is not None and b"\r\nContent-Length: %d\r\n" % total in head
        got, crc = len(c.buf), zlib.crc32(c.buf)
        c.buf.clear()
        buf = bytearray(MiB)
        view = memoryview(buf)
        slow_until = time.monotonic() + 1.0
        while got < total:
            want = 16 * 1024 if time.monotonic() < slow_until else MiB
            n = c.sock.recv_into(view, want)
            assert n, f"connection closed after {got} bytes"
            crc = zlib.crc32(view[:n], crc)
            got += n
            if want < MiB:
                time.sleep(0.002)  # about 8 MiB/s: slower than the origin can send
    assert got == total
    assert crc == crc_of(pattern, total, 256 * 1024)
    assert origin.stream_bytes_sent == total
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB, (rss.start_kib, rss.max_kib)


def test_slow_upstream_reader_back_pressure(make_origin: Callable[..., Origin],
                                            make_proxy: Callable[..., ProxyProcess],
                                            pattern: bytes) -> None:
    total = 100 * MiB
    origin = make_origin(lambda req: Reply(body=f"{req.body_length} {req.body_crc32}".encode()))
    origin.stream_request_bodies = True
    proxy = make_proxy({"backend": [origin.address]}, extra=UNLIMITED_BODY)
    pid = warm_up(proxy)
    origin.body_read_delay = 2.0   # reads nothing of the body for 2 s, then all of it
    origin.body_bytes_read = 0
    sent = 0
    failure: list[BaseException] = []

    def upload(c: RawClient) -> None:
        nonlocal sent
        try:
            for p in pieces(pattern, total, 64 * 1024):
                c.send(p)
                sent += len(p)
        except BaseException as e:  # reported by the main thread
            failure.append(e)

    with RssSampler(pid) as rss, RawClient(proxy.port, timeout=30) as c:
        c.send(b"POST /big HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % total)
        uploader = threading.Thread(target=upload, args=(c,), daemon=True)
        uploader.start()
        time.sleep(1.0)
        sent_1s = sent
        time.sleep(0.8)
        sent_2s = sent
        assert origin.body_bytes_read == 0
        # Socket buffers (client -> proxy -> origin) hold some (measured 10-12 MiB);
        # the proxy stops reading from the client until the origin reads.
        assert sent_2s < 32 * MiB, sent_2s
        assert sent_2s - sent_1s < 2 * MiB, (sent_1s, sent_2s)  # stalled
        uploader.join(30)
        assert not uploader.is_alive()
        assert failure == []
        r = c.read_response()
    assert (r.status, r.body) == (200, f"{total} {crc_of(pattern, total, 64 * 1024)}".encode())
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB, (rss.start_kib, rss.max_kib)


def test_expect_100_continue_chunked_body(make_origin: Callable[..., Origin],
                                          make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(echo)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n"
               b"Expect: 100-continue\r\n\r\n")
        assert c.read_response().raw == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        final = c.read_response()
        assert (final.status, final.body) == (200, b"abcde")
    assert origin.requests[0].header("Expect") is None
    assert origin.requests[0].body == b"abcde"


def test_expect_100_continue_body_sent_without_waiting(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    # A client may send the body at once; a 100 may or may not come, but exactly
    # one final response does, and the connection stays in sync.
    origin = make_origin(echo)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        for _ in range(2):
            c.send(b"PUT /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n"
                   b"Expect: 100-continue\r\n\r\nhello")
            r = c.read_response()
            if r.status == 100:
                r = c.read_response()
            assert (r.status, r.body) == (200, b"hello")
        c.send(b"GET /plain HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"")
    assert [q.body for q in origin.requests] == [b"hello", b"hello", b""]


def read_chunked_streaming(c: RawClient) -> tuple[int, int]:
    """Read a chunked body piece by piece: (length, crc32), without keeping it."""
    length = crc = 0
    while True:
        line = c.read_until(b"\r\n")
        assert line is not None, f"connection ended after {length} bytes"
        size = int(line[:-2], 16)
        if size == 0:
            assert c.read_until(b"\r\n") == b"\r\n"
            return length, crc
        while size:
            data = c.read_exactly(min(size, MiB))
            assert data, f"connection ended after {length} bytes"
            size -= len(data)
            length += len(data)
            crc = zlib.crc32(data, crc)
        assert c.read_exactly(2) == b"\r\n"


@pytest.mark.parametrize("origin_framing", ["chunked", "close"])
def test_large_response_reframed_as_chunked(make_origin: Callable[..., Origin],
                                            make_proxy: Callable[..., ProxyProcess],
                                            pattern: bytes, origin_framing: str) -> None:
    total = 50 * MiB
    origin = make_origin(lambda req: Reply(stream=pieces(pattern, total, 300_000),
                                           close_delimited=origin_framing == "close")
                         if req.target == "/big" else Reply())
    proxy = make_proxy({"backend": [origin.address]})
    pid = warm_up(proxy)
    with RssSampler(pid) as rss, RawClient(proxy.port, timeout=30) as c:
        c.send(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        head = c.read_until(b"\r\n\r\n")
        assert head is not None and head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nTransfer-Encoding: chunked\r\n" in head
        assert b"Content-Length" not in head
        assert read_chunked_streaming(c) == (total, crc_of(pattern, total, 300_000))
        c.send(b"GET /small HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().body == b"ok"
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB, (rss.start_kib, rss.max_kib)


def test_large_chunked_upload_rechunked(make_origin: Callable[..., Origin],
                                        make_proxy: Callable[..., ProxyProcess],
                                        pattern: bytes) -> None:
    total = 50 * MiB
    origin = make_origin(lambda req: Reply(body=f"{req.body_length} {req.body_crc32}".encode()))
    origin.stream_request_bodies = True
    proxy = make_proxy({"backend": [origin.address]}, extra=UNLIMITED_BODY)
    pid = warm_up(proxy)
    with RssSampler(pid) as rss, RawClient(proxy.port, timeout=30) as c:
        c.send(b"POST /big HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, p in enumerate(pieces(pattern, total, 700_001)):
            c.send(b"%x;n=%d\r\n" % (len(p), i))  # extensions are dropped on the way
            c.send(p)
            c.send(b"\r\n")
        c.send(b"0\r\n\r\n")
        r = c.read_response()
    assert (r.status, r.body) == (200, f"{total} {crc_of(pattern, total, 700_001)}".encode())
    assert origin.errors == []  # the origin refuses chunk extensions: none arrived
    assert rss.growth_mib < MAX_RSS_GROWTH_MIB, (rss.start_kib, rss.max_kib)


def test_many_small_chunks_to_a_slow_client_keep_their_order(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    """An upstream read with many chunks makes more output pieces than one direct
    writev takes, so it goes through the transport; while the transport still
    holds bytes for a slow client, every later write must queue behind them."""
    # Runs of small chunks (many output pieces per upstream read: through the
    # transport) between large ones (few pieces per read: written directly).
    pieces_ = [(b"%07d|" % i).ljust(64 * 1024 if i % 10 == 9 else 150, b".")
               for i in range(4000)]
    origin = make_origin(lambda req: Reply(stream=iter(pieces_))
                         if req.target == "/many" else Reply())
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port, timeout=30, rcvbuf=16 * 1024) as c:
        c.send(b"GET /many HTTP/1.1\r\nHost: a.test\r\n\r\n")
        time.sleep(1.0)  # the client's buffers fill; the proxy queues and pauses the upstream
        head = c.read_until(b"\r\n\r\n")
        assert head is not None and b"\r\nTransfer-Encoding: chunked\r\n" in head
        wire = bytearray(c.buf)
        c.buf.clear()
        slow_until = time.monotonic() + 1.0
        while not wire.endswith(b"\r\n0\r\n\r\n"):
            data = c.sock.recv(4096 if time.monotonic() < slow_until else 1 << 20)
            assert data, f"connection closed after {len(wire)} bytes"
            wire += data
            if time.monotonic() < slow_until:
                time.sleep(0.005)
    body = b"".join(parse_chunked_strict(bytes(wire)))
    assert len(body) == sum(map(len, pieces_))
    assert body == b"".join(pieces_)
