"""TLS end to end through `fastproxy serve`: termination with SNI, defaults,
client certificates, HSTS, the https redirect, https upstreams, reload of
certificates on SIGHUP, handshake-failure accounting and session resumption
across workers. Each test runs once per TLS engine ("openssl": fastproxy._tls,
"python": uvloop's SSL transport), which `tls_listener` writes into the config."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from servers import Origin, ProxyProcess, Received, Reply, free_port

OriginFactory = Callable[..., Origin]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA) -> Path:
    """site.pem/site.key for site.example and *.wild.example, other.pem for other.example,
    client CA and a client certificate for alice."""
    d = tmp_path / "certs"
    d.mkdir()
    site = ca.issue_cert("site.example", "*.wild.example")
    site.private_key_and_cert_chain_pem.write_to_path(str(d / "site-both.pem"))
    site.cert_chain_pems[0].write_to_path(str(d / "site.pem"))
    site.private_key_pem.write_to_path(str(d / "site.key"))
    other = ca.issue_cert("other.example")
    other.cert_chain_pems[0].write_to_path(str(d / "other.pem"))
    other.private_key_pem.write_to_path(str(d / "other.key"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client_ca = trustme.CA()
    client_ca.cert_pem.write_to_path(str(d / "client-ca.pem"))
    alice = client_ca.issue_cert("alice@example.com", common_name="alice")
    alice.private_key_and_cert_chain_pem.write_to_path(str(d / "alice.pem"))
    return d


_engine = {"name": "openssl"}


@pytest.fixture(autouse=True, params=["openssl", "python"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    _engine["name"] = request.param
    yield request.param
    _engine["name"] = "openssl"


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(listeners: str, rest: str, workers: int = 1) -> ProxyProcess:
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        text = (f'[server]\nworkers = {workers}\nshutdown_timeout = "5s"\n\n'
                f'[log]\naccess = "{workdir / "access.log"}"\nlevel = "info"\n\n'
                f"{listeners}\n{rest}\n")
        port = int(listeners.split("127.0.0.1:", 1)[1].split('"', 1)[0])
        proc = ProxyProcess(text, workdir, port)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


def tls_listener(port: int, certs: Path, extra: str = "") -> str:
    return (f'[[listeners]]\naddress = "127.0.0.1:{port}"\nname = "tls"\n'
            f"[listeners.tls]\ncertificates = ["
            f'{{ cert = "{certs}/site.pem", key = "{certs}/site.key" }}, '
            f'{{ cert = "{certs}/other.pem", key = "{certs}/other.key" }}]\n'
            f'engine = "{_engine["name"]}"\n{extra}\n')


def upstream(origin: Origin, name: str = "app") -> str:
    return f'[upstreams.{name}]\nservers = ["{origin.address}"]\n'


def client_context(certs: Path, **options: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    for k, v in options.items():
        setattr(ctx, k, v)
    return ctx


def https_get(port: int, host: str, path: str = "/", ctx: ssl.SSLContext | None = None,
              certs: Path | None = None, headers: str = "",
              session: ssl.SSLSession | None = None) -> tuple[bytes, Tls]:
    """One request over a fresh TLS connection; the whole response (Connection: close)
    and what the connection was."""
    assert ctx is not None or certs is not None
    ctx = ctx or client_context(certs)  # type: ignore[arg-type]
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=host, session=session)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
                 .encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    facts = Tls(sock.session, sock.session_reused)
    sock.close()
    return data, facts


class Tls:
    """The session of a finished connection and whether it was resumed."""

    def __init__(self, session: ssl.SSLSession | None, reused: bool) -> None:
        self.session = session
        self.reused = reused


def peer_names(port: int, host: str | None, certs: Path) -> list[str]:
    ctx = client_context(certs)
    if host is None:
        ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as sock:
        cert = sock.getpeercert()
        return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]


def test_https_request_sni_and_forwarded_proto(make_origin: OriginFactory, certs: Path,
                                               start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(name="app")
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs, 'hsts = "max-age=31536000"'),
                        upstream(origin) + '[[routes]]\nmatch = { path = "/hello" }\n'
                        'upstream = "app"\n')
    data, _ = https_get(port, "site.example", "/hello", certs=certs)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b"app /hello"
    assert b"\r\nStrict-Transport-Security: max-age=31536000" in head
    missing, _ = https_get(port, "site.example", "/nothing", certs=certs)  # a 404 made here
    assert missing.startswith(b"HTTP/1.1 404 ")
    assert b"\r\nStrict-Transport-Security: max-age=31536000\r\n" in missing
    assert origin.requests[-1].header("X-Forwarded-Proto") == "https"
    assert peer_names(port, "site.example", certs) == ["site.example", "*.wild.example"]
    assert peer_names(port, "a.wild.example", certs) == ["site.example", "*.wild.example"]
    assert peer_names(port, "other.example", certs) == ["other.example"]
    assert peer_names(port, None, certs) == ["site.example", "*.wild.example"]  # the default
    assert "https://127.0.0.1" in proxy.log()


def test_alpn_versions_and_ciphers(make_origin: OriginFactory, certs: Path,
                                   start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(name="app")
    port = free_port()
    start_proxy(tls_listener(port, certs), upstream(origin) + '[[routes]]\nupstream = "app"\n')
    ctx = client_context(certs)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="site.example") as sock:
        assert sock.selected_alpn_protocol() == "h2"  # HTTP/2 by default (test_h2_e2e)
        assert sock.version() == "TLSv1.3"
    ctx = client_context(certs)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="site.example") as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
    old = client_context(certs)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():  # the client side of the test is deliberately old
        warnings.simplefilter("ignore", DeprecationWarning)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(port, "site.example", ctx=old)
    tls12 = client_context(certs, maximum_version=ssl.TLSVersion.TLSv1_2)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            tls12.wrap_socket(raw, server_hostname="site.example") as sock:
        name, version, _ = sock.cipher()
        assert version == "TLSv1.2" and name.startswith("ECDHE-") and (
            "GCM" in name or "CHACHA20" in name)


def test_client_certificates_headers_and_routes(make_origin: OriginFactory, certs: Path,
                                                start_proxy: Callable[..., ProxyProcess]) -> None:
    general = make_origin(name="general")
    alices = make_origin(name="alices")
    port = free_port()
    listener = tls_listener(port, certs, (
        f'client_auth = "optional"\nclient_ca = "{certs}/client-ca.pem"\n'
        'client_cert_headers = { subject = "X-Client-Subject", '
        'fingerprint = "X-Client-Sha256", verify = "X-Client-Verify" }\n'))
    routes = ('[[routes]]\nmatch = { client_cert = { subject = { regex = "CN=alice" } } }\n'
              'upstream = "alices"\n[[routes]]\nupstream = "general"\n')
    start_proxy(listener, upstream(general, "general") + upstream(alices, "alices") + routes)
    # Without a certificate: the general route; a forged header does not pass.
    data, _ = https_get(port, "site.example", "/anon", certs=certs,
                        headers="X-Client-Subject: CN=admin\r\n")
    assert data.endswith(b"general /anon")
    received = general.requests[-1]
    assert received.header("X-Client-Subject") is None
    assert received.header("X-Client-Verify") == "NONE"
    # With alice's certificate: her route, and the verified facts upstream.
    ctx = client_context(certs)
    ctx.load_cert_chain(str(certs / "alice.pem"))
    data, _ = https_get(port, "site.example", "/me", ctx=ctx,
                           headers="X-Client-Subject: CN=admin\r\n")
    assert data.endswith(b"alices /me")
    got: Received = alices.requests[-1]
    assert got.header("X-Client-Verify") == "SUCCESS"
    subject = got.header("X-Client-Subject")
    assert subject is not None and "CN=alice" in subject
    assert [v for k, v in got.headers if k.lower() == "x-client-subject"] == [subject]
    fingerprint = got.header("X-Client-Sha256")
    assert fingerprint is not None and len(fingerprint) == 64


def test_client_certificate_required(make_origin: OriginFactory, certs: Path,
                                     start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(name="app")
    port = free_port()
    start_proxy(tls_listener(port, certs, f'client_auth = "required"\n'
                                          f'client_ca = "{certs}/client-ca.pem"\n'),
                upstream(origin) + '[[routes]]\nupstream = "app"\n')
    with pytest.raises((ssl.SSLError, ConnectionError)):
        data, _ = https_get(port, "site.example", certs=certs)
        assert not data  # TLS 1.3: the refusal may show as an empty read
        raise ConnectionError("refused after the handshake")
    ctx = client_context(certs)
    ctx.load_cert_chain(str(certs / "alice.pem"))
    data, _ = https_get(port, "site.example", "/ok", ctx=ctx)
    assert data.endswith(b"app /ok")
    assert not [r for r in origin.requests if r.target == "/"]


def test_https_redirect_listener(make_origin: OriginFactory, certs: Path,
                                 start_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(name="app")
    plain, secure = free_port(), free_port()
    listeners = (f'[[listeners]]\naddress = "127.0.0.1:{plain}"\nhttps_redirect = {secure}\n'
                 + tls_listener(secure, certs))
    proxy = start_proxy(listeners, upstream(origin) + '[[routes]]\nupstream = "app"\n')
    assert proxy.port == plain
    with socket.create_connection(("127.0.0.1", plain), timeout=5) as s:
        s.sendall(b"GET /a/b?x=1 HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 308 ")
    assert f"\r\nLocation: https://site.example:{secure}/a/b?x=1\r\n".encode() in data
    assert not origin.requests


# -- https upstreams ----------------------------------------------------------------------

class TlsOrigin:
    """An HTTPS origin on 127.0.0.1 answering "tls <path>" (own thread and loop)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.port = 0
        self.requests: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> TlsOrigin:
        ready = threading.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                writer.close()
                return
            self.requests.append(head)
            body = b"tls " + head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            writer.close()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def main() -> None:
                server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.context)
                self.port = server.sockets[0].getsockname()[1]
                ready.set()

            loop.run_until_complete(main())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)


@pytest.fixture
def tls_origin(ca: trustme.CA) -> Iterator[TlsOrigin]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("backend.internal", "127.0.0.1").configure_cert(ctx)
    origin = TlsOrigin(ctx).start()
    yield origin
    origin.stop()


def plain_listener(port: int) -> str:
    return f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'


def plain_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_https_upstream_verified(tls_origin: TlsOrigin, certs: Path,
                                 start_proxy: Callable[..., ProxyProcess]) -> None:
    port = free_port()
    start_proxy(plain_listener(port),
                f'[upstreams.app]\nservers = ["https://127.0.0.1:{tls_origin.port}"]\n'
                f'[upstreams.app.tls]\nca = "{certs}/ca.pem"\nsni = "backend.internal"\n'
                '[[routes]]\nupstream = "app"\n')
    data = plain_get(port, "/secure")
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"tls /secure")


def test_https_upstream_verification_failure_is_502(tls_origin: TlsOrigin, certs: Path,
                                                    start_proxy: Callable[..., ProxyProcess]
                                                    ) -> None:
    port = free_port()
    # The system CAs do not know the test CA.
    proxy = start_proxy(plain_listener(port),
                        f'[upstreams.app]\nservers = ["https://127.0.0.1:{tls_origin.port}"]\n'
                        '[[routes]]\nupstream = "app"\n')
    data = plain_get(port, "/x")
    assert data.startswith(b"HTTP/1.1 502 ")
    assert "TLS certificate verification failed" in proxy.log()
    assert not tls_origin.requests


# -- reload, failures, resumption -------------------------------------------------------

def test_sighup_swaps_the_certificate_and_open_requests_finish(
        make_origin: OriginFactory, certs: Path, ca: trustme.CA,
        start_proxy: Callable[..., ProxyProcess]) -> None:
    slow = make_origin(lambda req: Reply(delay=2.0 if req.target == "/slow" else 0.0,
                                         body=b"done " + req.target.encode()), name="slow")
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs),
                        upstream(slow) + '[[routes]]\nupstream = "app"\n')
    assert peer_names(port, "site.example", certs) == ["site.example", "*.wild.example"]
    result: dict[str, bytes] = {}

    def long_request() -> None:
        result["slow"] = https_get(port, "site.example", "/slow", certs=certs)[0]

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(0.5)  # the request is with the upstream
    renewed = ca.issue_cert("site.example", "renewed.example")
    renewed.cert_chain_pems[0].write_to_path(str(certs / "site.pem"))
    renewed.private_key_pem.write_to_path(str(certs / "site.key"))
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "renewed.example" in peer_names(port, "site.example", certs):
            break
        time.sleep(0.1)
    assert peer_names(port, "site.example", certs) == ["site.example", "renewed.example"]
    t.join(10)
    assert result["slow"].startswith(b"HTTP/1.1 200 OK") and result["slow"].endswith(b"done /slow")

    # A broken key: the reload is refused and the running certificate stays.
    (certs / "site.key").write_text(
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload failed" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "reload failed" in proxy.log()
    assert "site.key" in proxy.log()
    assert peer_names(port, "site.example", certs) == ["site.example", "renewed.example"]
    data, _ = https_get(port, "site.example", "/after", certs=certs)
    assert data.endswith(b"done /after")


def test_failed_handshakes_are_counted_in_a_summary(make_origin: OriginFactory, certs: Path,
                                                    start_proxy: Callable[..., ProxyProcess]
                                                    ) -> None:
    origin = make_origin(name="app")
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs, 'handshake_timeout = "500ms"'),
                        upstream(origin) + '[[routes]]\nupstream = "app"\n')
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
            try:
                s.recv(100)
            except OSError:
                pass
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # says nothing
    try:
        deadline = time.monotonic() + 10
        while "TLS handshakes that failed" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert idle.recv(100) == b""  # closed after the handshake timeout
    finally:
        idle.close()
    lines = [line for line in proxy.log().splitlines() if "TLS handshakes that failed" in line]
    assert len(lines) == 1  # one summary, not a line per failure
    data, _ = https_get(port, "site.example", "/still", certs=certs)
    assert data.endswith(b"app /still")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_sessions_resume_across_workers(make_origin: OriginFactory, certs: Path,
                                        start_proxy: Callable[..., ProxyProcess],
                                        version: ssl.TLSVersion) -> None:
    origin = make_origin(name="app")
    port = free_port()
    proxy = start_proxy(tls_listener(port, certs), upstream(origin)
                        + '[[routes]]\nupstream = "app"\n', workers=2)
    proxy.wait_worker_pids(2)
    ctx = client_context(certs, maximum_version=version)
    _, first = https_get(port, "site.example", "/0", ctx=ctx)
    session = first.session
    assert session is not None
    reused = 0
    for i in range(30):
        _, sock = https_get(port, "site.example", f"/{i}", ctx=ctx, session=session)
        reused += sock.reused
        session = sock.session or session
    # The kernel spreads the 30 connections over both workers; every one resumes.
    assert reused == 30
    assert len({r.conn_id for r in origin.requests}) >= 1


def test_access_log_tls_fields(make_origin: OriginFactory, certs: Path, tmp_path: Path) -> None:
    """tls_version and tls_sni in access lines (both engines); "-" on a plain listener."""
    origin = make_origin(name="app")
    port, plain = free_port(), free_port()
    text = (f'[log]\naccess = "{tmp_path / "tls.log"}"\nformat = "{{tls_version}} '
            f'{{tls_sni}} {{path}}"\n\n{tls_listener(port, certs)}\n'
            f'[[listeners]]\naddress = "127.0.0.1:{plain}"\n'
            f'{upstream(origin)}[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port)
    try:
        proxy.start()
        tls13 = client_context(certs)
        tls12 = client_context(certs, maximum_version=ssl.TLSVersion.TLSv1_2)
        https_get(port, "site.example", "/one", ctx=tls13)
        https_get(port, "a.wild.example", "/two", ctx=tls12)
        with socket.create_connection(("127.0.0.1", plain), timeout=5) as s:
            s.sendall(b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
        deadline = time.monotonic() + 5
        lines: list[str] = []
        while len(lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            lines = (tmp_path / "tls.log").read_text().splitlines()
        assert sorted(lines) == ["- - /three", "TLSv1.2 a.wild.example /two",
                                 "TLSv1.3 site.example /one"]
    finally:
        proxy.stop()
