"""Response compression end to end: a real proxy with `compress` on a route in front
of a real origin; bodies decoded with the reference libraries (zlib/gzip, brotli,
zstandard)."""

from __future__ import annotations

import gzip
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import brotli
import pytest
import zstandard

from servers import (
    Origin,
    ProxyProcess,
    RawClient,
    RawResponse,
    Received,
    Reply,
    RssSampler,
    free_port,
)

MiB = 1 << 20
HTML = (b"<!doctype html><html><head><title>t</title></head><body>"
        + b"".join(b"<p class='row'>row %d of a typical page, some text</p>\n" % i
                   for i in range(400)) + b"</body></html>")
JSON = b'{"items": [' + b", ".join(b'{"id": %d, "name": "item %d"}' % (i, i)
                                   for i in range(600)) + b"]}"


HUGE = b"".join(b"<tr><td>%d</td><td>%s</td></tr>\n" % (i, os.urandom(8).hex().encode())
                for i in range(80_000))  # ~3.4 MiB, compresses about 2:1


def assert_framing(r: RawResponse, http10: bool = False) -> None:
    """A compressed response: with its compressed length when the whole body came in
    the read that brought the head, else chunked (HTTP/1.0: ended by the close)."""
    if r.header("Content-Length") is not None:
        assert r.framing == "length" and int(r.header("Content-Length")) == len(r.body)
        assert r.header("Transfer-Encoding") is None
    else:
        assert r.framing == ("close" if http10 else "chunked")


def decode(coding: str | None, data: bytes) -> bytes:
    if coding is None:
        return data
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise AssertionError(coding)


class Site:
    def __init__(self) -> None:
        self.asked: dict[str, int] = {}
        self.lock = threading.Lock()
        self.release = threading.Event()  # /events: the last event waits for it
        self.first_sent = threading.Event()

    def events(self) -> Iterator[bytes]:
        yield b"data: first event\n\n"
        self.first_sent.set()
        self.release.wait(10)
        yield b"data: last event\n\n"

    def __call__(self, req: Received) -> Reply:
        path = req.target.split("?", 1)[0]
        with self.lock:
            self.asked[path] = self.asked.get(path, 0) + 1
        html = [("Content-Type", "text/html; charset=utf-8")]
        if path == "/page":
            return Reply(200, [*html, ("ETag", '"v1"'), ("Accept-Ranges", "bytes"),
                               ("Vary", "Origin")], HTML)
        if path == "/api":
            return Reply(200, [("Content-Type", "application/json")], JSON)
        if path == "/chunked":
            return Reply(200, html, chunks=[HTML[:5000], HTML[5000:]])
        if path == "/close":
            return Reply(200, html, HTML, close_delimited=True)
        if path == "/png":
            return Reply(200, [("Content-Type", "image/png")], HTML)
        if path == "/untyped":
            return Reply(200, [], HTML)
        if path == "/small":
            return Reply(200, html, b"<p>tiny</p>")
        if path == "/encoded":
            return Reply(200, [*html, ("Content-Encoding", "gzip")], gzip.compress(HTML))
        if path == "/notransform":
            return Reply(200, [*html, ("Cache-Control", "no-transform")], HTML)
        if path == "/nocontent":
            return Reply(204, html, b"")
        if path == "/notmodified":
            return Reply(304, [*html, ("ETag", '"v1"')], b"")
        if path == "/partial":
            return Reply(206, [*html, ("Content-Range", "bytes 0-99/%d" % len(HTML))],
                         HTML[:100])
        if path == "/error":
            return Reply(404, html, HTML)
        if path == "/events":
            return Reply(200, [("Content-Type", "text/event-stream"),
                               ("Cache-Control", "no-cache")], stream=self.events())
        if path == "/cached":
            return Reply(200, [*html, ("Cache-Control", "max-age=60"), ("ETag", '"c1"')],
                         HTML)
        if path == "/cached-json":
            return Reply(200, [("Content-Type", "application/json"),
                               ("Cache-Control", "max-age=60")], JSON)
        if path == "/cached-huge":
            return Reply(200, [*html, ("Cache-Control", "max-age=60")], HUGE)
        if path == "/cached-big":
            return Reply(200, [*html, ("Cache-Control", "max-age=60")], HTML * 20)
        return Reply(404, [], b"no")


CONFIG = """
[server]
workers = 1
[log]
access = "off"
[[listeners]]
address = "127.0.0.1:{port}"
[caches.main]
memory = "16m"
[upstreams.app]
servers = ["{origin}"]
[[routes]]
match = {{ path_prefix = "/cached" }}
upstream = "app"
cache = "main"
compress = true
[[routes]]
match = {{ path_prefix = "/gz" }}
upstream = "app"
compress = {{ algorithms = ["gzip"], level = {{ gzip = 1 }}, min_size = 100 }}
rewrite = {{ strip_prefix = "/gz" }}
[[routes]]
match = {{ path_prefix = "/plain" }}
upstream = "app"
rewrite = {{ strip_prefix = "/plain" }}
[[routes]]
upstream = "app"
compress = true
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, ProxyProcess]]:
    site = Site()
    origin = Origin(site, name="app").start()
    proxy: ProxyProcess | None = None
    try:
        port = free_port()
        proxy = ProxyProcess(CONFIG.format(port=port, origin=origin.address),
                             tmp_path_factory.mktemp("compress"), port).start()
        yield site, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        origin.stop()


def get(port: int, path: str, accept: str | None = None, method: str = "GET",
        extra: str = "", version: str = "1.1") -> RawResponse:
    headers = f"Accept-Encoding: {accept}\r\n" if accept is not None else ""
    with RawClient(port) as client:
        client.send(f"{method} {path} HTTP/{version}\r\nHost: site\r\n{headers}{extra}"
                    "\r\n".encode())
        return client.read_response(head_request=method == "HEAD")


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("path,body", [("/page", HTML), ("/api", JSON), ("/chunked", HTML),
                                       ("/close", HTML), ("/error", HTML)])
def test_round_trip(setup: tuple[Site, ProxyProcess], coding: str, path: str,
                    body: bytes) -> None:
    _, proxy = setup
    r = get(proxy.port, path, coding)
    assert r.header("Content-Encoding") == coding
    assert_framing(r)
    assert "accept-encoding" in r.header("Vary").lower()
    assert decode(coding, r.body) == body
    assert len(r.body) < len(body) / 3


def test_headers_rewritten(setup: tuple[Site, ProxyProcess]) -> None:
    _, proxy = setup
    r = get(proxy.port, "/page", "gzip, br")
    assert r.header("Content-Encoding") == "br"  # the server's order decides ties
    assert r.header("ETag") == 'W/"v1"'  # weakened, as nginx does
    assert r.header("Accept-Ranges") is None
    assert r.header_all("Vary") == ["Origin, Accept-Encoding"]  # merged, one field
    # The origin writes head and body in one write (one loopback segment): one read
    # for the proxy, which then knows the compressed length.
    framings = {get(proxy.port, "/page", "zstd").framing for _ in range(10)}
    assert "length" in framings, framings
    plain = get(proxy.port, "/page")
    assert plain.header("Content-Encoding") is None and plain.body == HTML
    assert plain.header("Content-Length") == str(len(HTML))
    assert plain.header("ETag") == '"v1"' and plain.header("Accept-Ranges") == "bytes"
    assert plain.header_all("Vary") == ["Origin, Accept-Encoding"]
    # HTTP/1.0: no chunked; the body ends with the connection.
    old = get(proxy.port, "/page", "gzip", version="1.0")
    assert old.header("Content-Encoding") == "gzip" and old.header("Connection") == "close"
    assert_framing(old, http10=True)
    assert gzip.decompress(old.body) == HTML


@pytest.mark.parametrize("accept,coding", [
    ("gzip", "gzip"),
    ("gzip, deflate, br, zstd", "zstd"),
    ("br;q=0.9, gzip", "gzip"),
    ("gzip;q=0, br", "br"),
    ("*", "zstd"),
    ("*;q=0.5, zstd;q=0", "br"),
    ("identity", None),
    ("identity;q=0", None),
    ("deflate, compress", None),
    ("gzip;q=0", None),
    ("GZip ; Q=0.5", "gzip"),
    ("gzip;q=2", None),
    ("", None),
])
def test_negotiation(setup: tuple[Site, ProxyProcess], accept: str, coding: str | None) -> None:
    _, proxy = setup
    r = get(proxy.port, "/page", accept)
    assert r.header("Content-Encoding") == coding
    assert decode(coding, r.body) == HTML


def test_route_settings(setup: tuple[Site, ProxyProcess]) -> None:
    _, proxy = setup
    r = get(proxy.port, "/gz/page", "br, zstd, gzip;q=0.1")
    assert r.header("Content-Encoding") == "gzip"  # the only one the route offers
    assert gzip.decompress(r.body) == HTML
    level1 = len(r.body)
    default = len(get(proxy.port, "/page", "gzip").body)  # level 5
    assert level1 > default
    r = get(proxy.port, "/gz/small", "gzip")  # 11 bytes < min_size 100
    assert r.header("Content-Encoding") is None and r.header("Vary") is None
    r = get(proxy.port, "/plain/page", "gzip")  # no compress on that route
    assert r.header("Content-Encoding") is None and r.header("Vary") == "Origin"
    assert r.body == HTML


@pytest.mark.parametrize("path,method,extra", [
    ("/png", "GET", ""),            # not a compressible type
    ("/untyped", "GET", ""),        # no Content-Type
    ("/small", "GET", ""),          # under min_size
    ("/encoded", "GET", ""),        # already encoded by the upstream
    ("/notransform", "GET", ""),    # Cache-Control: no-transform
    ("/nocontent", "GET", ""),
    ("/notmodified", "GET", ""),
    ("/partial", "GET", ""),        # a range response
    ("/page", "HEAD", ""),
    ("/page", "GET", "Cache-Control: no-transform\r\n"),
])
def test_not_compressed(setup: tuple[Site, ProxyProcess], path: str, method: str,
                        extra: str) -> None:
    _, proxy = setup
    r = get(proxy.port, path, "gzip, br, zstd", method=method, extra=extra)
    if path == "/encoded":
        assert r.header("Content-Encoding") == "gzip"
        assert gzip.decompress(r.body) == HTML  # passed on untouched
        return
    assert r.header("Content-Encoding") is None
    if r.status == 200 and method == "GET":
        assert len(r.body) == int(r.header("Content-Length"))


def test_streaming_flush(setup: tuple[Site, ProxyProcess]) -> None:
    """Each upstream read goes out as soon as it is handled: the client decodes the
    first event while the upstream still holds the last one back."""
    site, proxy = setup
    site.release.clear()
    with RawClient(proxy.port, timeout=10) as client:
        client.send(b"GET /events HTTP/1.1\r\nHost: site\r\nAccept-Encoding: gzip\r\n\r\n")
        head = client.read_until(b"\r\n\r\n")
        assert head is not None and b"\r\nContent-Encoding: gzip\r\n" in head
        assert b"\r\nTransfer-Encoding: chunked\r\n" in head
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        seen = b""
        while b"first event" not in seen:
            size_line = client.read_until(b"\r\n")
            assert size_line is not None, "stream ended before the first event"
            size = int(size_line, 16)
            assert size > 0, "stream ended before the first event"
            data = client.read_exactly(size + 2)
            seen += decoder.decompress(data[:size])
        assert seen == b"data: first event\n\n"
        assert not site.release.is_set()  # the upstream has not sent the last one yet
        site.release.set()
        rest = client
        tail = b""
        while True:
            size_line = rest.read_until(b"\r\n")
            assert size_line is not None
            size = int(size_line, 16)
            if size == 0:
                break
            data = rest.read_exactly(size + 2)
            tail += decoder.decompress(data[:size])
        assert tail + decoder.flush() == b"data: last event\n\n"
        assert decoder.eof


def test_large_body_bounded_memory(make_origin: Callable[..., Origin],
                                   tmp_path: Path) -> None:
    """64 MiB streamed through gzip: the worker's memory does not follow the body."""
    total = 64 * MiB
    block = os.urandom(48 * 1024).hex().encode()  # text that compresses about 2:1

    def stream() -> Iterator[bytes]:
        sent = 0
        while sent < total:
            piece = block[:min(len(block), total - sent)]
            sent += len(piece)
            yield piece

    origin = make_origin(lambda req: Reply(200, [("Content-Type", "text/plain")],
                                           stream=stream(), stream_length=total)
                         if req.target == "/big" else Reply(200, [], b"ok"))
    port = free_port()
    text = CONFIG.format(port=port, origin=origin.address)
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        get(proxy.port, "/small", "gzip")
        [pid] = proxy.wait_worker_pids(1)
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        got = 0
        with RssSampler(pid) as rss, RawClient(proxy.port, timeout=30) as client:
            client.send(b"GET /big HTTP/1.1\r\nHost: site\r\nAccept-Encoding: gzip\r\n\r\n")
            head = client.read_until(b"\r\n\r\n")
            assert head is not None and b"Content-Encoding: gzip" in head
            wire = 0
            while True:
                size_line = client.read_until(b"\r\n")
                assert size_line is not None
                size = int(size_line, 16)
                if size == 0:
                    break
                data = client.read_exactly(size + 2)
                wire += size
                got += len(decoder.decompress(data[:size]))
        assert got == total and decoder.eof
        assert wire < total * 0.7
        assert rss.growth_mib < 40, (rss.start_kib, rss.max_kib)
    finally:
        proxy.stop()


def test_cache_stores_identity_and_encodes_once(setup: tuple[Site, ProxyProcess]) -> None:
    """The upstream is asked once; every coding is served from the stored response,
    and a coding's bytes are the same on every hit (kept, not made again)."""
    site, proxy = setup
    first = get(proxy.port, "/cached", "gzip")
    assert first.header("Content-Encoding") == "gzip"
    assert_framing(first)
    assert gzip.decompress(first.body) == HTML
    assert first.header("ETag") == 'W/"c1"'
    seen: dict[str | None, bytes] = {}
    for _ in range(3):
        for accept, coding in (("gzip", "gzip"), ("br", "br"), ("zstd", "zstd"),
                               (None, None)):
            r = get(proxy.port, "/cached", accept)
            assert r.header("Cache-Status").startswith("fastproxy;hit")
            assert r.header("Content-Encoding") == coding
            assert r.header("Content-Length") == str(len(r.body)) and r.framing == "length"
            assert "Accept-Encoding" in r.header("Vary")
            assert decode(coding, r.body) == HTML
            if coding is not None:
                assert r.header("ETag") == 'W/"c1"' and r.header("Accept-Ranges") is None
            else:
                assert r.header("ETag") == '"c1"'
            assert seen.setdefault(coding, r.body) == r.body
    assert seen["gzip"] == first.body  # the fill's encoding is the stored gzip variant
    assert site.asked["/cached"] == 1
    # A client's own validator (the weak ETag it got) is answered from the cache.
    r = get(proxy.port, "/cached", "gzip", extra='If-None-Match: W/"c1"\r\n')
    assert r.status == 304 and site.asked["/cached"] == 1
    assert r.header("ETag") == 'W/"c1"' and "Accept-Encoding" in r.header("Vary")
    r = get(proxy.port, "/cached", None, extra='If-None-Match: "c1"\r\n')
    assert r.status == 304 and r.header("ETag") == '"c1"'
    # A range of the stored identity body is served as identity.
    r = get(proxy.port, "/cached", "gzip", extra="Range: bytes=0-9\r\n")
    assert r.status == 206 and r.body == HTML[:10] and r.header("Content-Encoding") is None
    # HEAD from the cache: identity headers, and Vary.
    r = get(proxy.port, "/cached", "gzip", method="HEAD")
    assert r.header("Content-Encoding") is None and "Accept-Encoding" in r.header("Vary")


def test_cache_first_fill_identity_then_codings(setup: tuple[Site, ProxyProcess]) -> None:
    site, proxy = setup
    first = get(proxy.port, "/cached-json")
    assert first.header("Content-Encoding") is None and first.body == JSON
    for coding in ("zstd", "br", "gzip", "zstd"):
        r = get(proxy.port, "/cached-json", coding)
        assert r.header("Content-Encoding") == coding and decode(coding, r.body) == JSON
    big = get(proxy.port, "/cached-big", "br")
    assert decode("br", big.body) == HTML * 20
    again = get(proxy.port, "/cached-big", "br")
    assert again.body == big.body and again.header("Cache-Status").startswith("fastproxy;hit")
    assert site.asked["/cached-json"] == 1 and site.asked["/cached-big"] == 1


def test_cache_big_body_encoded_in_slices(setup: tuple[Site, ProxyProcess]) -> None:
    """A big stored body is encoded in slices on its first request in a coding (sent
    chunked as it is made, a slow reader included), then kept: later hits send the
    kept bytes with a Content-Length."""
    site, proxy = setup
    first = get(proxy.port, "/cached-huge")  # fills the cache with identity
    assert first.body == HUGE and first.header("Content-Encoding") is None
    # A client that goes away in the middle of the encoding does no harm.
    with RawClient(proxy.port) as client:
        client.send(b"GET /cached-huge HTTP/1.1\r\nHost: site\r\nAccept-Encoding: zstd\r\n\r\n")
        assert client.read_until(b"\r\n\r\n") is not None
    # A slow reader: the slices wait for the client to read.
    with RawClient(proxy.port, timeout=20, rcvbuf=16384) as client:
        client.send(b"GET /cached-huge HTTP/1.1\r\nHost: site\r\nAccept-Encoding: gzip\r\n\r\n")
        time.sleep(0.5)
        r = client.read_response()
    assert r.framing == "chunked" and r.header("Content-Encoding") == "gzip"
    assert r.header("Cache-Status").startswith("fastproxy;hit")
    assert gzip.decompress(r.body) == HUGE
    assert len(r.wire_body) > len(r.body) + 40  # several chunks, not one
    again = get(proxy.port, "/cached-huge", "gzip")
    assert again.framing == "length" and again.body == r.body  # kept, not made again
    made = get(proxy.port, "/cached-huge", "br")
    kept = get(proxy.port, "/cached-huge", "br")
    assert made.framing == "chunked" and kept.framing == "length"
    assert decode("br", kept.body) == HUGE and kept.body == made.body
    # (zstd: the client that went away may or may not have seen its encoding finish)
    made = get(proxy.port, "/cached-huge", "zstd")
    kept = get(proxy.port, "/cached-huge", "zstd")
    assert kept.framing == "length" and decode("zstd", kept.body) == HUGE
    assert decode("zstd", made.body) == HUGE
    old = get(proxy.port, "/cached-huge", "gzip", version="1.0")
    assert old.framing == "length" and old.body == r.body
    # HTTP/1.0 while the coding is made: the end of the body is the connection's.
    get(proxy.port, "/cached-huge?v=2")
    old = get(proxy.port, "/cached-huge?v=2", "br", version="1.0")
    assert old.framing == "close" and decode("br", old.body) == HUGE
    assert old.header("Connection") == "close"
    assert site.asked["/cached-huge"] == 2  # (once per query)
