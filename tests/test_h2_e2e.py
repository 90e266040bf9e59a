"""HTTP/2 to clients through `fastproxy serve`: ALPN h2 on TLS listeners (both TLS
engines), h2c with prior knowledge, multiplexed requests with httpx and h2load,
request and response bodies under flow control, local answers, the cache, and one
test per defence (rapid reset, CONTINUATION flood, PING and SETTINGS floods,
concurrent streams, header list size, HPACK bomb, zero window, malformed frames,
idle timeout, graceful shutdown). The raw-frame tests drive the `h2` library as a
client, or write frames by hand, over real sockets."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest
import trustme
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from servers import Origin, ProxyProcess, Received, Reply, free_port, rss_kib

OriginFactory = Callable[..., Origin]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA) -> Path:
    d = tmp_path / "certs"
    d.mkdir()
    site = ca.issue_cert("site.example")
    site.cert_chain_pems[0].write_to_path(str(d / "site.pem"))
    site.private_key_pem.write_to_path(str(d / "site.key"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return d


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(listener: str, rest: str, port: int, limits: str = "",
              timeouts: str = "") -> ProxyProcess:
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        text = (f'[server]\nworkers = 1\nshutdown_timeout = "5s"\n\n'
                f'[log]\naccess = "{workdir / "access.log"}"\nlevel = "info"\n\n'
                f"[limits]\n{limits}\n[timeouts]\n{timeouts}\n{listener}\n{rest}\n")
        proc = ProxyProcess(text, workdir, port)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


def tls_listener(port: int, certs: Path, engine: str = "openssl", extra: str = "") -> str:
    return (f'[[listeners]]\naddress = "127.0.0.1:{port}"\n{extra}\n'
            f'[listeners.tls]\ncertificates = [{{ cert = "{certs}/site.pem", '
            f'key = "{certs}/site.key" }}]\nengine = "{engine}"\n')


def app(origin: Origin, routes: str = "") -> str:
    return (f'[upstreams.app]\nservers = ["{origin.address}"]\n{routes}'
            '[[routes]]\nmatch = { path_prefix = "/" }\nupstream = "app"\n')


def client_context(certs: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.set_alpn_protocols(["h2"])
    return ctx


# -- a raw HTTP/2 client ------------------------------------------------------------

class RawH2:
    """The `h2` library as a client over a real (TLS or plain) socket."""

    def __init__(self, port: int, certs: Path | None, settings: dict[int, int] | None = None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if certs is not None:
            self.sock: socket.socket = client_context(certs).wrap_socket(
                raw, server_hostname="site.example")
            assert self.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        else:
            self.sock = raw
        # The client does not check what it sends: the tests send malformed requests.
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, split_outbound_cookies=False))
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.send()
        self.events: list[h2.events.Event] = []
        self.closed = False

    def send(self, extra: bytes = b"") -> None:
        self.sock.sendall(self.conn.data_to_send() + extra)

    def request(self, path: str, end: bool = True, extra: list[tuple[str, str]] | None = None,
                method: str = "GET") -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "https"),
                   (":authority", "site.example"), *(extra or [])]
        self.conn.send_headers(sid, headers, end_stream=end)
        self.send()
        return sid

    def read(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        """Read and handle frames until `until()` or the server closes."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; events so far: {self.events[-5:]}"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                return
            events = self.conn.receive_data(data)
            if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                # h2 stops at a GOAWAY; a graceful one lets the streams below its
                # last stream id finish, so keep reading them.
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            for ev in events:
                if isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self.events.extend(events)
            out = self.conn.data_to_send()
            if out:
                try:
                    self.sock.sendall(out)
                except OSError:
                    pass

    def of(self, kind: type, sid: int | None = None) -> list:
        return [e for e in self.events if isinstance(e, kind)
                and (sid is None or getattr(e, "stream_id", None) == sid)]

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        found = self.of(h2.events.ConnectionTerminated)
        return found[0] if found else None

    def until_closed(self, timeout: float = 10.0) -> None:
        self.read(lambda: self.closed, timeout)

    def response(self, sid: int, timeout: float = 10.0) -> tuple[int, dict[bytes, bytes], bytes]:
        self.read(lambda: bool(self.of(h2.events.StreamEnded, sid) or self.of(
            h2.events.StreamReset, sid)), timeout)
        got = self.of(h2.events.ResponseReceived, sid)
        assert got, f"stream {sid}: no response: {self.events[-5:]}"
        headers = dict(got[0].headers)
        body = b"".join(e.data for e in self.of(h2.events.DataReceived, sid))
        return int(headers[b":status"]), headers, body

    def close(self) -> None:
        self.sock.close()


# -- functional ---------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["openssl", "python"])
def test_multiplexed_requests_reach_the_upstream(make_origin: OriginFactory, certs: Path,
                                                 start_proxy: Callable[..., ProxyProcess],
                                                 engine: str) -> None:
    origin = make_origin(name="app")
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs, engine), app(origin), port)

    async def main() -> list[httpx.Response]:
        async with h2_client(certs) as client:
            return await asyncio.gather(*(
                client.get(f"https://127.0.0.1:{port}/item/{i}", headers={"X-N": str(i)},
                           extensions=SNI)
                for i in range(40)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 40
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert [r.text for r in responses] == [f"app /item/{i}" for i in range(40)]
    by_n = {req.header("X-N"): req for req in origin.requests}
    assert sorted(by_n, key=int) == [str(i) for i in range(40)]
    for i, req in by_n.items():
        assert req.target == f"/item/{i}" and req.version == "HTTP/1.1"
        assert req.header("Host") == "site.example"
        assert req.header("X-Forwarded-Proto") == "https"
    _wait_for(lambda: len(proxy.access_log()) >= 40)
    assert all('HTTP/2.0"' in line for line in proxy.access_log())


@pytest.mark.parametrize("engine", ["openssl", "python"])
def test_streams_carry_the_connections_tls_facts(make_origin: OriginFactory, certs: Path,
                                                 start_proxy: Callable[..., ProxyProcess],
                                                 engine: str) -> None:
    """Every stream of one TLS connection gets its handshake's facts: the client
    certificate's headers and route match, X-Forwarded-Proto and HSTS."""
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(certs / "client-ca.pem"))
    client_ca.issue_cert("alice@example.com", common_name="alice") \
        .private_key_and_cert_chain_pem.write_to_path(str(certs / "alice.pem"))
    general, alices = make_origin(name="general"), make_origin(name="alices")
    port = free_port()
    listener = tls_listener(port, certs, engine, "") + (
        f'client_auth = "optional"\nclient_ca = "{certs}/client-ca.pem"\n'
        'client_cert_headers = { subject = "X-Client-Subject", verify = "X-Client-Verify" }\n'
        'hsts = "max-age=600"\n')
    rest = (f'[upstreams.general]\nservers = ["{general.address}"]\n'
            f'[upstreams.alices]\nservers = ["{alices.address}"]\n'
            '[[routes]]\nmatch = { client_cert = { subject = { regex = "CN=alice" } } }\n'
            'upstream = "alices"\n[[routes]]\nupstream = "general"\n')
    start_proxy(listener, rest, port)

    async def main(cert: bool) -> list[httpx.Response]:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        if cert:
            ctx.load_cert_chain(str(certs / "alice.pem"))
        async with httpx.AsyncClient(http2=True, verify=ctx,
                                     headers={"Host": "site.example"}) as client:
            return await asyncio.gather(*(
                client.get(f"https://127.0.0.1:{port}/s/{i}", extensions=SNI,
                           headers={"X-Client-Subject": "CN=forged"})
                for i in range(12)))

    for cert, origin, verify in ((True, alices, "SUCCESS"), (False, general, "NONE")):
        responses = asyncio.run(main(cert))
        assert {r.http_version for r in responses} == {"HTTP/2"}
        assert [r.text for r in responses] == [f"{origin.name} /s/{i}" for i in range(12)]
        assert {r.headers.get("strict-transport-security") for r in responses} == {
            "max-age=600"}
        got = [r for r in origin.requests if r.target.startswith("/s/")]
        assert len(got) == 12
        for req in got:
            assert req.header("X-Forwarded-Proto") == "https"
            assert req.header("X-Client-Verify") == verify
            subjects = [v for k, v in req.headers if k.lower() == "x-client-subject"]
            if cert:  # the verified subject only, never the forged one
                assert len(subjects) == 1 and "CN=alice" in subjects[0], subjects
            else:
                assert subjects == [], subjects


def h2_client(certs: Path, **options: object) -> httpx.AsyncClient:
    """httpx over HTTP/2 to 127.0.0.1, with site.example as SNI and :authority."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    return httpx.AsyncClient(http2=True, verify=ctx, headers={"Host": "site.example"},
                             **options)  # type: ignore[arg-type]


SNI = {"sni_hostname": "site.example"}


def _wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert check()


@pytest.mark.parametrize("engine", ["openssl", "python"])
def test_bodies_both_ways_under_flow_control(make_origin: OriginFactory, certs: Path,
                                             start_proxy: Callable[..., ProxyProcess],
                                             engine: str) -> None:
    big = bytes(range(256)) * (12 * 4096)  # 12 MiB: many times every window

    def handler(req: Received) -> Reply:
        if req.target == "/big":
            return Reply(200, [("Content-Type", "application/octet-stream")], big)
        if req.target == "/chunked":
            return Reply(200, [], chunks=[b"a" * 70000, b"b" * 70000, b"c"])
        return Reply(200, [], b"%d %d %s" % (req.body_length, req.body_crc32,
                                             (req.header("Transfer-Encoding") or "-").encode()))

    origin = make_origin(handler)
    origin.stream_request_bodies = True
    port = free_port()
    start_proxy(tls_listener(port, certs, engine), app(origin), port)

    async def upload() -> object:
        for _ in range(40):
            yield b"x" * 65536

    async def main() -> list[httpx.Response]:
        async with h2_client(certs, timeout=30) as client:
            base = f"https://127.0.0.1:{port}"
            return list(await asyncio.gather(
                client.get(base + "/big", extensions=SNI),
                client.get(base + "/chunked", extensions=SNI),
                client.post(base + "/up-stream", content=upload(), extensions=SNI),
                client.post(base + "/up-length", content=b"y" * 3_000_000, extensions=SNI),
            ))

    big_r, chunked_r, streamed_r, length_r = asyncio.run(main())
    assert big_r.http_version == "HTTP/2" and big_r.content == big
    assert chunked_r.content == b"a" * 70000 + b"b" * 70000 + b"c"
    streamed = b"x" * 65536 * 40
    assert streamed_r.text == f"{len(streamed)} {zlib.crc32(streamed)} chunked"
    assert length_r.text == f"3000000 {zlib.crc32(b'y' * 3_000_000)} -"


def test_local_answers_cache_and_head(make_origin: OriginFactory, certs: Path,
                                      start_proxy: Callable[..., ProxyProcess]) -> None:
    def handler(req: Received) -> Reply:
        if req.target == "/cached":
            return Reply(200, [("Cache-Control", "max-age=60")], b"once %d" % len(origin.requests))
        return Reply(200, [], b"hello")

    origin = make_origin(handler)
    port = free_port()
    routes = ('[caches.main]\nmemory = "8m"\n[limits.one]\nrate = "1/m"\nburst = 0\n'
              '[[routes]]\nmatch = { path_prefix = "/cached" }\nupstream = "app"\n'
              'cache = "main"\n'
              '[[routes]]\nmatch = { path_prefix = "/limited" }\nupstream = "app"\n'
              'limits = ["one"]\n'
              '[[routes]]\nmatch = { path_prefix = "/small" }\nupstream = "app"\n'
              'max_body_bytes = "1k"\n'
              '[[routes]]\nmatch = { path_prefix = "/redirect" }\n'
              'redirect = { to = "https://elsewhere.example/", status = 301 }\n')
    text = (f'[upstreams.app]\nservers = ["{origin.address}"]\n{routes}'
            '[[routes]]\nmatch = { path_prefix = "/app" }\nupstream = "app"\n')
    start_proxy(tls_listener(port, certs), text, port)
    client = RawH2(port, certs)
    try:
        statuses = {}
        for path in ("/nothing", "/limited", "/limited", "/redirect", "/app"):
            statuses.setdefault(path, []).append(client.response(client.request(path))[0])
        assert statuses == {"/nothing": [404], "/limited": [200, 429], "/redirect": [301],
                            "/app": [200]}
        status, _, _ = client.response(client.request(
            "/small", end=False, method="POST", extra=[("content-length", "5000")]))
        assert status == 413
        first = client.response(client.request("/cached"))
        second = client.response(client.request("/cached"))
        assert first[0] == second[0] == 200 and first[2] == second[2]
        assert first[2].startswith(b"once ")
        assert b"hit" in second[1].get(b"cache-status", b"")
        head = client.response(client.request("/app", method="HEAD"))
        assert head[0] == 200 and head[2] == b"" and head[1][b"content-length"] == b"5"
        assert not client.goaway()
    finally:
        client.close()


def test_h2c_prior_knowledge_and_plain_http1(make_origin: OriginFactory,
                                             start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(name="app")
    port = free_port()
    listener = f'[[listeners]]\naddress = "127.0.0.1:{port}"\nh2c = true\n'
    proxy = start_proxy(listener, app(origin), port)
    client = RawH2(port, None)
    try:
        status, _, body = client.response(client.request("/h2c"))
        assert (status, body) == (200, b"app /h2c")
        assert origin.requests[-1].header("X-Forwarded-Proto") == "http"
    finally:
        client.close()
    # HTTP/1.1 still works on the same listener, and an Upgrade to h2c is not honoured.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        data = b""
        while not data.endswith(b"app /one") and (chunk := sock.recv(65536)):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"app /one")
    assert origin.requests[-1].header("Upgrade") is None
    _wait_for(lambda: len(proxy.access_log()) >= 2)
    assert 'HTTP/2.0"' in proxy.access_log()[0] and 'HTTP/1.1"' in proxy.access_log()[1]


# An HTTP/1.1 upstream's chunked answer whose trailer section holds fields that pass
# and fields that are never passed on (framing, routing, authentication, content
# format, cookies, the connection's own).
TRAILED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
           b"Trailer: X-Checksum, Grpc-Status\r\n\r\n5\r\nhello\r\n0\r\n"
           b"X-Checksum: abc123\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n"
           b"Set-Cookie: late=1\r\nAuthorization: Basic eDp5\r\nHost: elsewhere\r\n"
           b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\n"
           b"Upgrade: h2c\r\nTE: trailers\r\nTrailer: X-Other\r\n"
           b"Grpc-Status: 0\r\nX-Last:  spaced  \r\n\r\n")
TRAILERS_PASSED = [(b"x-checksum", b"abc123"), (b"grpc-status", b"0"), (b"x-last", b"spaced")]


def test_upstream_trailers_reach_h2_and_http1_clients_alike(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess]) -> None:
    """The trailer section of an HTTP/1.1 upstream's chunked answer: an HTTP/2 client
    gets it as trailing HEADERS, an HTTP/1.1 client in the last chunk, with the same
    fields (the same filter for both)."""
    origin = make_origin(lambda req: Reply(raw=TRAILED), name="app")
    port = free_port()
    listener = f'[[listeners]]\naddress = "127.0.0.1:{port}"\nh2c = true\n'
    proxy = start_proxy(listener, app(origin), port)
    client = RawH2(port, None)
    try:
        sid = client.request("/t", extra=[("te", "trailers")])
        client.read(lambda: bool(client.of(h2.events.StreamEnded, sid) or client.of(
            h2.events.StreamReset, sid)))
        assert not client.of(h2.events.StreamReset, sid), proxy.log()
        status, headers, body = client.response(sid)
        assert (status, body) == (200, b"hello"), proxy.log()
        assert headers[b"content-type"] == b"text/plain"
        [trailers] = client.of(h2.events.TrailersReceived, sid)
        assert list(trailers.headers) == TRAILERS_PASSED
    finally:
        client.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /t HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        data = b""
        while not (b"hello\r\n0\r\n" in data and data.endswith(b"\r\n\r\n")):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = b""
            assert chunk, f"the answer so far: {data!r} {proxy.log()}"
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in head, data
    assert rest == b"5\r\nhello\r\n0\r\nX-Checksum: abc123\r\nGrpc-Status: 0\r\n" \
        b"X-Last: spaced\r\n\r\n", rest
    assert "Traceback" not in proxy.log()


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) missing")
def test_h2load_multiplexed_run(make_origin: OriginFactory, certs: Path,
                                start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(name="app")
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port)
    worker = proxy.wait_worker_pids(1)[0]
    rss = []
    for _ in range(4):
        out = subprocess.run(["h2load", "-c", "4", "-m", "10", "-n", "3000",
                              f"https://127.0.0.1:{port}/load"],
                             capture_output=True, text=True, timeout=120)
        assert "3000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout + out.stderr
        assert "Application protocol: h2" in out.stdout
        rss.append(rss_kib(worker))
    # A finished connection is freed at once (its h2 state used to wait for a full
    # collection of the cyclic GC: about 200 KiB more per round of 3000 streams).
    assert rss[-1] - rss[0] < 300, rss


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) missing")
def test_pipelined_http1_over_tls_keeps_the_worker(make_origin: OriginFactory, certs: Path,
                                                   start_proxy: Callable[..., ProxyProcess]
                                                   ) -> None:
    # HTTP/1.1 with 10 pipelined requests per connection over TLS: the worker used to
    # crash (an exchange freed in the middle of upstream_complete).
    origin = make_origin(name="app")
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port)
    out = subprocess.run(["h2load", "--h1", "-c", "4", "-m", "10", "-n", "2000",
                          f"https://127.0.0.1:{port}/pipelined"],
                         capture_output=True, text=True, timeout=120)
    assert "2000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout + out.stderr
    assert "died" not in proxy.log()


# -- defences -----------------------------------------------------------------------

def test_rapid_reset_gets_goaway(make_origin: OriginFactory, certs: Path,
                                 start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(lambda req: Reply(200, [], b"slow", delay=2.0))
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port,
                        limits="h2_max_resets = 20")
    client = RawH2(port, certs)
    try:
        for _ in range(60):
            sid = client.request("/r")
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
            client.send()
        client.until_closed()
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        client.close()
    assert "rapid reset" in proxy.log() and "Traceback" not in proxy.log()


def test_continuation_flood_is_bounded(make_origin: OriginFactory, certs: Path,
                                       start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin()
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port)
    client = RawH2(port, certs)
    sent = 0
    try:
        block = client.conn.encoder.encode([(b":method", b"GET"), (b":path", b"/"),
                                            (b":scheme", b"https"),
                                            (b":authority", b"site.example")])
        client.sock.sendall(HeadersFrame(1, data=block).serialize())  # no END_HEADERS
        filler = ContinuationFrame(1, data=b"\x40\x01a\x01b" * 3000).serialize()  # 15 KB each
        try:
            for _ in range(400):  # 6 MB unless the server stops it
                client.sock.sendall(filler)
                sent += len(filler)
        except OSError:
            pass
        client.until_closed()
    finally:
        client.close()
    # Refused by the header-block bound (about the header list size), not by h2's
    # own 64-frame one (PROTOCOL_ERROR); what followed was read and dropped.
    assert client.closed and sent > 0
    goaway = client.goaway()
    assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert "header block over the header list size" in proxy.log()
    assert not origin.requests and "Traceback" not in proxy.log()


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_control_frame_floods_get_goaway(make_origin: OriginFactory, certs: Path,
                                         start_proxy: Callable[..., ProxyProcess],
                                         kind: str) -> None:
    origin = make_origin()
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port,
                        limits="h2_max_control_frames = 50")
    client = RawH2(port, certs)
    try:
        frame = (PingFrame(0, opaque_data=b"12345678") if kind == "ping"
                 else SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 10}))
        client.sock.sendall(frame.serialize() * 300)  # in one write: well within a second
        client.until_closed()
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        client.close()
    assert "PING/SETTINGS" in proxy.log()


@pytest.mark.parametrize("kind", ["empty DATA", "WINDOW_UPDATE"])
def test_empty_data_and_window_update_floods_get_goaway(
        make_origin: OriginFactory, certs: Path, start_proxy: Callable[..., ProxyProcess],
        kind: str) -> None:
    """Frames that ask for no answer but cost work count with PING and SETTINGS:
    empty DATA frames without END_STREAM (CVE-2019-9518) and WINDOW_UPDATEs that
    no DATA sent to the client explains."""
    origin = make_origin()
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port,
                        limits="h2_max_control_frames = 50")
    client = RawH2(port, certs)
    try:
        sid = client.request("/upload", end=False, method="POST")  # a body to come
        if kind == "empty DATA":
            frames = DataFrame(sid, data=b"").serialize() * 300
        else:
            frames = (WindowUpdateFrame(0, window_increment=1).serialize()
                      + WindowUpdateFrame(sid, window_increment=1).serialize()) * 150
        client.sock.sendall(frames)  # in one write: well within a second
        client.until_closed()
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        client.close()
    assert f"too many {kind} frames" in proxy.log()
    assert "Traceback" not in proxy.log()


def test_window_updates_for_data_sent_are_not_a_flood(
        make_origin: OriginFactory, certs: Path,
        start_proxy: Callable[..., ProxyProcess]) -> None:
    """A client that gives back every 4 KiB it reads, on the stream and on the
    connection (as some clients do), sends far more WINDOW_UPDATEs a second than
    h2_max_control_frames: they answer DATA the proxy sent, and are not counted."""
    big = bytes(range(256)) * (4 * 4096)  # 4 MiB
    origin = make_origin(lambda req: Reply(200, [], big))
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port,
                        limits="h2_max_control_frames = 10")
    client = RawH2(port, certs)
    conn = client.conn
    try:
        sid = client.request("/big")
        got = bytearray()
        updates = 0
        ended = False
        deadline = time.monotonic() + 30
        while not ended:
            assert time.monotonic() < deadline, f"timed out after {len(got)} bytes"
            client.sock.settimeout(max(0.1, deadline - time.monotonic()))
            data = client.sock.recv(65536)
            assert data, f"closed after {len(got)} bytes: {proxy.log()[-500:]}"
            events = conn.receive_data(data)
            # (no stream updates once the stream's end is among them: h2 has closed it)
            ending = any(isinstance(ev, h2.events.StreamEnded) for ev in events)
            for ev in events:
                if isinstance(ev, h2.events.DataReceived):
                    got += ev.data
                    left = ev.flow_controlled_length
                    while left > 0:
                        piece = min(left, 4096)
                        left -= piece
                        conn.increment_flow_control_window(piece)
                        updates += 1
                        if not ending:
                            conn.increment_flow_control_window(piece, sid)
                            updates += 1
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset,
                                     h2.events.ConnectionTerminated)):
                    assert isinstance(ev, h2.events.StreamEnded), ev
                    ended = True
            client.sock.sendall(conn.data_to_send())
        assert bytes(got) == big
        assert updates > 1000
    finally:
        client.close()
    assert "too many" not in proxy.log()


def test_streams_over_the_limit_are_refused(make_origin: OriginFactory, certs: Path,
                                            start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(lambda req: Reply(200, [], b"late", delay=0.5))
    port = free_port()
    start_proxy(tls_listener(port, certs), app(origin), port,
                limits="h2_max_concurrent_streams = 4")
    client = RawH2(port, certs)
    try:
        client.read(lambda: bool(client.of(h2.events.RemoteSettingsChanged)))
        assert client.conn.remote_settings.max_concurrent_streams == 4
        # Past the advertised limit on purpose (a client that ignores it):
        client.conn.remote_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})
        sids = [client.request(f"/s{i}") for i in range(6)]
        for sid in sids:
            client.read(lambda sid=sid: bool(client.of(h2.events.StreamEnded, sid)
                                             or client.of(h2.events.StreamReset, sid)))
        refused = [sid for sid in sids if client.of(h2.events.StreamReset, sid)]
        answered = [sid for sid in sids if client.of(h2.events.StreamEnded, sid)]
        assert len(answered) == 4 and len(refused) == 2
        assert all(client.of(h2.events.StreamReset, sid)[0].error_code
                   == ErrorCodes.REFUSED_STREAM for sid in refused)
        # The connection goes on.
        assert client.response(client.request("/after"))[0] == 200
    finally:
        client.close()


def test_header_list_limits_and_hpack_bomb(make_origin: OriginFactory, certs: Path,
                                           start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin()
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port,
                        limits='max_header_bytes = "4k"\nmax_line_bytes = "2k"')
    client = RawH2(port, certs)
    try:
        client.read(lambda: bool(client.of(h2.events.RemoteSettingsChanged)))
        assert client.conn.remote_settings.max_header_list_size == 4096
        # A little over the HTTP/1.1 head limit: the request parser answers 431.
        status, _, _ = client.response(client.request("/a", extra=[("x-big", "v" * 4500)]))
        assert status == 431
    finally:
        client.close()
    # An HPACK bomb: one big field in the dynamic table, then referenced many times
    # (small on the wire, 400 KB decoded): a connection error, nothing forwarded.
    client = RawH2(port, certs)
    try:
        first = client.request("/b", extra=[("x-bomb", "z" * 3000)])
        client.response(first)
        before = len(origin.requests)
        client.request("/c", extra=[("x-bomb", "z" * 3000)] * 150)
        client.until_closed()
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code in (ErrorCodes.ENHANCE_YOUR_CALM,
                                                            ErrorCodes.PROTOCOL_ERROR)
        assert len(origin.requests) == before
    finally:
        client.close()
    assert "Traceback" not in proxy.log()


def test_zero_window_reader_is_bounded_and_timed_out(make_origin: OriginFactory, certs: Path,
                                                     start_proxy: Callable[..., ProxyProcess]
                                                     ) -> None:
    piece = b"q" * 65536

    def handler(req: Received) -> Reply:
        return Reply(200, [], stream=(piece for _ in range(1024)), stream_length=64 << 20)

    origin = make_origin(handler)
    port = free_port()
    start_proxy(tls_listener(port, certs), app(origin), port, timeouts='send = "1s"')
    # The client's windows stay shut: nothing of the body may be sent.
    client = RawH2(port, certs, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    try:
        sid = client.request("/big")
        client.read(lambda: bool(client.of(h2.events.StreamReset, sid)), timeout=15)
        assert client.of(h2.events.ResponseReceived, sid)
        assert not client.of(h2.events.DataReceived, sid)
        # What the origin could send is bounded by the buffers (the proxy's stream
        # buffer and the sockets'), far below the 64 MiB body.
        assert origin.stream_bytes_sent < 16 << 20
        assert not client.goaway()  # a stream error: the connection goes on
    finally:
        client.close()


def test_malformed_frames_get_protocol_error(make_origin: OriginFactory, certs: Path,
                                             start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin()
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port)
    for junk in (b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"12345678",  # PING on a stream
                 b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # window +0
                 b"\x00\x00\x00\x01\x05\x00\x00\x00\x02",  # HEADERS, even stream id
                 b"\xff" * 64):  # not a frame at all
        client = RawH2(port, certs)
        try:
            client.sock.sendall(junk)
            client.until_closed(timeout=5)
            goaway = client.goaway()
            assert goaway is not None and goaway.error_code != ErrorCodes.NO_ERROR, junk
        finally:
            client.close()
    assert "Traceback" not in proxy.log() and "Error" not in proxy.log().replace(
        "connection error", "")


@pytest.mark.parametrize("fields", [
    [(":method", "GET"), (":path", "/a"), (":scheme", "https"), ("X-Upper", "1")],
    [(":method", "GET"), (":path", "/a"), (":scheme", "https"), ("connection", "close")],
    [(":method", "GET"), (":path", "/a"), (":scheme", "https"), ("te", "gzip")],
    [(":method", "GET"), (":path", "/a"), (":scheme", "https"), ("x-pad", " padded")],
    [(":method", "GET"), (":scheme", "https")],  # no :path
    [(":method", "GET"), (":path", "/a b"), (":scheme", "https")],
    [(":method", "GET"), (":path", "/a"), ("x-early", "1"), (":scheme", "https")],
    [(":method", "GET"), (":path", "/a"), (":scheme", "https"), (":protocol", "websocket")],
    [(":method", "GET"), (":path", "/a"), (":scheme", "https"), ("host", "other.example")],
], ids=["uppercase", "connection", "te", "whitespace", "no-path", "space-in-path",
        "pseudo-late", "unknown-pseudo", "host-differs"])
def test_malformed_requests_are_stream_errors(make_origin: OriginFactory, certs: Path,
                                              start_proxy: Callable[..., ProxyProcess],
                                              fields: list[tuple[str, str]]) -> None:
    origin = make_origin()
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port)
    client = RawH2(port, certs)
    try:
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in fields]
                                 + [(b":authority", b"site.example")] * (
                                     ":authority" not in dict(fields)), end_stream=True)
        client.send()
        client.read(lambda: bool(client.of(h2.events.StreamReset, sid)) or client.closed)
        reset = client.of(h2.events.StreamReset, sid)
        assert reset and reset[0].error_code == ErrorCodes.PROTOCOL_ERROR
        assert client.response(client.request("/fine"))[0] == 200  # the connection goes on
        assert [r.target for r in origin.requests] == ["/fine"]
    finally:
        client.close()
    assert "malformed request" in proxy.log() and "Traceback" not in proxy.log()


def test_body_longer_than_content_length_is_refused(make_origin: OriginFactory, certs: Path,
                                                    start_proxy: Callable[..., ProxyProcess]
                                                    ) -> None:
    origin = make_origin()
    port = free_port()
    start_proxy(tls_listener(port, certs), app(origin), port)
    client = RawH2(port, certs)
    try:
        sid = client.request("/post", end=False, method="POST",
                             extra=[("content-length", "5")])
        # What an HTTP/1.1 reading of the bytes would take for a second request:
        client.conn.send_data(sid, b"hello" + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
                              end_stream=True)
        client.send()
        client.read(lambda: bool(client.of(h2.events.StreamReset, sid)) or client.closed)
        reset = client.of(h2.events.StreamReset, sid)
        goaway = client.goaway()
        assert (reset and reset[0].error_code == ErrorCodes.PROTOCOL_ERROR) or (
            goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR)
    finally:
        client.close()
    time.sleep(0.3)
    assert all(r.target != "/smuggled" for r in origin.requests)


def test_requests_per_connection_end_with_goaway(make_origin: OriginFactory, certs: Path,
                                                 start_proxy: Callable[..., ProxyProcess]
                                                 ) -> None:
    origin = make_origin(name="app")
    port = free_port()
    start_proxy(tls_listener(port, certs), app(origin), port,
                limits="max_requests_per_connection = 3")
    client = RawH2(port, certs)
    try:
        sids = [client.request(f"/n{i}") for i in range(3)]
        assert [client.response(sid)[0] for sid in sids] == [200, 200, 200]
        client.until_closed()
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.NO_ERROR
        assert goaway.last_stream_id == sids[-1]
    finally:
        client.close()


def test_client_goaway_still_gets_its_answers(make_origin: OriginFactory, certs: Path,
                                              start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(lambda req: Reply(200, [], b"late answer", delay=0.5))
    port = free_port()
    start_proxy(tls_listener(port, certs), app(origin), port)
    client = RawH2(port, certs)
    try:
        sid = client.request("/late")
        client.conn.close_connection()  # GOAWAY NO_ERROR: no new streams from us
        client.send()
        client.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        status, _, body = client.response(sid)
        assert (status, body) == (200, b"late answer")
        client.until_closed()  # then the proxy closes
    finally:
        client.close()


def test_frames_after_a_client_goaway_are_still_taken(
        make_origin: OriginFactory, certs: Path,
        start_proxy: Callable[..., ProxyProcess]) -> None:
    """A client's GOAWAY followed, in the same write, by its SETTINGS ACK (the
    server's SETTINGS crossed the GOAWAY): the ACK is a legal frame on an open
    connection, and the stream in flight is still answered."""
    origin = make_origin(lambda req: Reply(200, [], b"late answer", delay=0.5))
    port = free_port()
    start_proxy(tls_listener(port, certs), app(origin), port)
    client = RawH2(port, certs)
    try:
        sid = client.request("/late")
        # The server's SETTINGS: h2 queues our ACK; keep it back for now.
        while not client.of(h2.events.RemoteSettingsChanged):
            data = client.sock.recv(65536)
            assert data, "closed"
            client.events.extend(client.conn.receive_data(data))
        ack = client.conn.data_to_send()
        assert ack
        client.conn.close_connection()  # GOAWAY NO_ERROR
        goaway = client.conn.data_to_send()
        client.sock.sendall(goaway + ack)
        client.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        status, _, body = client.response(sid)
        assert (status, body) == (200, b"late answer")
        terminated = client.goaway()
        assert terminated is None or terminated.error_code == ErrorCodes.NO_ERROR
        client.until_closed()
    finally:
        client.close()


def test_client_goaway_with_more_frames_in_the_same_read(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess]) -> None:
    """A client's graceful GOAWAY followed by other frames (here a PING, as a
    client's WINDOW_UPDATE or SETTINGS ack may follow) in one read: the streams
    it opened are still answered (h2 had closed its state at the GOAWAY, the next
    frame was a PROTOCOL_ERROR and the answer was lost)."""
    origin = make_origin(lambda req: Reply(200, [], b"late answer", delay=0.3))
    port = free_port()
    listener = f'[[listeners]]\naddress = "127.0.0.1:{port}"\nh2c = true\n'
    start_proxy(listener, app(origin), port)
    client = RawH2.__new__(RawH2)
    client.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.events = []
    client.closed = False
    try:
        client.conn.initiate_connection()
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(sid, [(":method", "GET"), (":path", "/late"),
                                       (":scheme", "http"), (":authority", "x")],
                                 end_stream=True)
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 0
        goaway.error_code = 0
        ping = PingFrame(0)
        ping.opaque_data = b"12345678"
        client.sock.sendall(client.conn.data_to_send() + goaway.serialize() + ping.serialize())
        client.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        status, _, body = client.response(sid)
        assert (status, body) == (200, b"late answer")
        client.until_closed()  # then the proxy closes
        end = client.goaway()
        assert end is None or end.error_code == ErrorCodes.NO_ERROR, end
    finally:
        client.close()


def test_reset_and_goaway_with_unknown_error_codes(
        make_origin: OriginFactory, certs: Path,
        start_proxy: Callable[..., ProxyProcess]) -> None:
    """Error codes are 32-bit and unknown ones are legal (RFC 9113 7): a client's
    RST_STREAM with code 0xffffffff resets that stream only (the next request on
    the connection is answered), and its GOAWAY with one ends the connection,
    never with a traceback."""
    origin = make_origin(lambda req: Reply(200, [], b"answer " + req.target.encode(), delay=0.3))
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port)
    client = RawH2(port, certs)
    try:
        sid = client.request("/reset-me")
        client.sock.sendall(RstStreamFrame(sid, error_code=0xFFFFFFFF).serialize())
        client.conn.reset_stream(sid)  # (h2's own state: the stream is over)
        client.conn.data_to_send()  # (already said, with the code above)
        sid = client.request("/next")
        status, _, body = client.response(sid)
        assert (status, body) == (200, b"answer /next")
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 0
        goaway.error_code = 0xFFFFFFFF
        client.sock.sendall(goaway.serialize())
        client.until_closed()
    finally:
        client.close()
    assert "Traceback" not in proxy.log(), proxy.log()


def test_close_delimited_and_empty_answers(make_origin: OriginFactory, certs: Path,
                                          start_proxy: Callable[..., ProxyProcess]) -> None:
    """Upstream answers without a length (read to the close), with an empty chunked
    body, and a 204: each stream gets its whole answer and END_STREAM."""
    big = bytes(range(256)) * 1000

    def handler(req: Received) -> Reply:
        if req.target == "/eof":
            return Reply(200, [], big, close_delimited=True)
        if req.target == "/empty-chunked":
            return Reply(200, [], chunks=[])
        return Reply(204, [], b"")

    origin = make_origin(handler)
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port)
    client = RawH2(port, certs)
    try:
        for path, status, body in (("/eof", 200, big), ("/empty-chunked", 200, b""),
                                   ("/none", 204, b"")):
            sid = client.request(path)
            got = client.response(sid)
            assert (got[0], got[2]) == (status, body), path
            assert client.of(h2.events.StreamEnded, sid), path
    finally:
        client.close()
    assert "Traceback" not in proxy.log(), proxy.log()


def test_idle_connection_closes_after_keepalive(make_origin: OriginFactory, certs: Path,
                                                start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin()
    port = free_port()
    start_proxy(tls_listener(port, certs), app(origin), port, timeouts='keepalive = "1s"')
    client = RawH2(port, certs)
    try:
        assert client.response(client.request("/one"))[0] == 200
        started = time.monotonic()
        client.until_closed(timeout=10)
        assert time.monotonic() - started >= 0.7  # not before the timeout (tick: 0.25 s)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.NO_ERROR
    finally:
        client.close()


def test_graceful_shutdown_finishes_streams_in_flight(make_origin: OriginFactory, certs: Path,
                                                      start_proxy: Callable[..., ProxyProcess]
                                                      ) -> None:
    origin = make_origin(lambda req: Reply(200, [], b"finished", delay=1.0))
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port)
    client = RawH2(port, certs)
    try:
        sid = client.request("/slow")
        _wait_for(lambda: len(origin.requests) == 1)
        proxy.signal(signal.SIGTERM)
        status, _, body = client.response(sid)
        assert (status, body) == (200, b"finished")
        client.until_closed()
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.NO_ERROR
        assert goaway.last_stream_id == sid
        assert proxy.wait(10) == 0
    finally:
        client.close()


def test_h2_streams_do_not_count_as_connections(make_origin: OriginFactory,
                                                tmp_path: Path) -> None:
    """[server] max_connections counts client connections: the streams of one
    HTTP/2 connection in flight do not fill it (they were each counted, so one
    client with a few streams open had every other client's connection cut)."""
    gate = threading.Event()

    async def slow(req: Received) -> Reply:
        deadline = time.monotonic() + 10
        while not gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return Reply(body=b"slow")

    origin = make_origin(slow)
    port = free_port()
    text = (f'[server]\nworkers = 1\nshutdown_timeout = "2s"\nmax_connections = 4\n\n'
            f'[log]\naccess = "{tmp_path / "access.log"}"\nlevel = "info"\n\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\nh2c = true\n\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n\n'
            '[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        conn.initiate_connection()
        for _ in range(6):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                    (":authority", "x")], end_stream=True)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + 10
        while len(origin.requests) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(origin.requests) == 6  # six streams in flight on one connection
        # A second client connection (the worker holds 1 of 4): served.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as other:
            other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            gate.set()
            data = b""
            while True:
                try:
                    chunk = other.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    break
                data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
        sock.close()
    finally:
        gate.set()
        proxy.stop()


@pytest.mark.parametrize("engine", ["openssl", "python"])
def test_alpn_h2_after_a_proxy_header(make_origin: OriginFactory, certs: Path,
                                      start_proxy: Callable[..., ProxyProcess],
                                      engine: str) -> None:
    """A TLS listener with proxy_protocol = true: the PROXY header, then the TLS
    handshake choosing h2 by ALPN; the stream is answered and the header's
    address is the client's (X-Forwarded-For upstream)."""
    origin = make_origin()
    port = free_port()
    start_proxy(tls_listener(port, certs, engine, extra="proxy_protocol = true"), app(origin),
                port)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(b"PROXY TCP4 192.0.2.44 127.0.0.1 5555 443\r\n")
    client = RawH2.__new__(RawH2)
    client.sock = client_context(certs).wrap_socket(raw, server_hostname="site.example")
    assert client.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
    client.conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    client.events = []
    client.closed = False
    try:
        client.conn.initiate_connection()
        client.send()
        status, _, _ = client.response(client.request("/pp"))
        assert status == 200
        assert dict(origin.requests[-1].headers)["X-Forwarded-For"] == "192.0.2.44"
    finally:
        client.close()


def test_reload_lets_a_stream_finish_and_serves_new_connections(
        make_origin: OriginFactory, certs: Path,
        start_proxy: Callable[..., ProxyProcess]) -> None:
    """SIGHUP (reload) with an HTTP/2 stream in flight: the old worker sends GOAWAY,
    the stream gets its answer, and a new connection is served by the new worker."""
    origin = make_origin(lambda req: Reply(200, [], b"late", delay=1.0 if req.target == "/late"
                                           else 0.0))
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), app(origin), port)
    old = proxy.wait_worker_pids(1)
    client = RawH2(port, certs)
    try:
        sid = client.request("/late")
        deadline = time.monotonic() + 10
        while not origin.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.signal(signal.SIGHUP)
        status, _, body = client.response(sid)
        assert (status, body) == (200, b"late")
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ErrorCodes.NO_ERROR
    finally:
        client.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = proxy.worker_pids()
        if pids and not set(pids) & set(old):
            break
        time.sleep(0.05)
    fresh = RawH2(port, certs)
    try:
        assert fresh.response(fresh.request("/new"))[0] == 200
    finally:
        fresh.close()
    assert "Traceback" not in proxy.log()
