"""PROXY protocol v1/v2 sent to upstream servers (`proxy_protocol` on an upstream or
a server): every new connection starts with a header naming the client, idle
connections serve only the client their header named, health checks send LOCAL /
UNKNOWN, https:// servers get the header before the TLS handshake, WebSocket
tunnels too. The upstreams are a small server here that parses the header with
`_proxyproto.parse` and refuses connections without one, nginx with `listen ...
proxy_protocol`, and a fastproxy listener with `proxy_protocol = true`."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from fastproxy._proxyproto import ProxyProtocolError, build_v2, parse, tlv
from fastproxy.config import ConfigError, parse_config
from servers import ProxyProcess, RawClient, free_port

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class ProxiedOrigin:
    """An HTTP/1.1 origin on 127.0.0.1 whose connections must start with a PROXY
    header (else they are closed unanswered, as nginx and HAProxy do). Each
    response body is JSON: what the header of its connection said and the
    connection's number. Health checks (the User-Agent) are kept apart. An Upgrade
    request is answered 101 and the connection then echoes bytes."""

    def __init__(self) -> None:
        self.port = 0
        self.headers: list[bytes] = []  # the raw header of each connection, in order
        self.checks: list[tuple | None] = []  # the parsed header of each health check
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ProxiedOrigin:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def main() -> None:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        try:
            while True:
                try:
                    header = parse(buf)
                except ProxyProtocolError:
                    self.refused += 1
                    return
                if header is not None:
                    break
                data = await reader.read(4096)
                if not data:
                    self.refused += 1
                    return
                buf += data
            raw, buf = buf[:header[0]], buf[header[0]:]
            conn = len(self.headers)
            self.headers.append(raw)
            facts = {"conn": conn, "src": header[1] and header[1].decode(), "sport": header[2],
                     "dst": header[3] and header[3].decode(), "dport": header[4],
                     "v2": raw.startswith(V2_SIG)}
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await reader.read(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lower = head.lower()
                if b"user-agent: fastproxy-health-check" in lower:
                    self.checks.append(header[1:])
                if b"\r\nupgrade: websocket" in lower:
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\n\r\n" + json.dumps(facts).encode()
                                 + b"\n" + buf)
                    while data := await reader.read(65536):
                        writer.write(data)
                        await writer.drain()
                    return
                body = json.dumps(facts).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
def proxied() -> Iterator[ProxiedOrigin]:
    origin = ProxiedOrigin().start()
    yield origin
    origin.stop()


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[ProxyProcess] = []

    def start(body: str, listener: str = "127.0.0.1", server: str = "") -> ProxyProcess:
        port = free_port() if listener == "127.0.0.1" else free_port6()
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        host = f"[{listener}]" if ":" in listener else listener
        text = (f'[server]\nworkers = 1\nshutdown_timeout = "2s"\n{server}\n'
                f'[log]\naccess = "{workdir / "access.log"}"\nlevel = "info"\n'
                f'[[listeners]]\naddress = "{host}:{port}"\n{body}')
        proc = ProxyProcess(text, workdir, port)
        started.append(proc)
        if ":" in listener:
            proc.start_host = listener  # type: ignore[attr-defined]
            return start6(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
        assert "Traceback" not in proc.log(), proc.log()


def free_port6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


def start6(proc: ProxyProcess) -> ProxyProcess:
    """ProxyProcess.start, waiting on [::1] (its own wait dials 127.0.0.1)."""
    log = open(proc.log_path, "wb")  # noqa: SIM115  (closed by proc.stop)
    proc._log = log
    import sys
    proc.proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "serve",
                                  str(proc.config_path)], stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, proc.log()
        try:
            with socket.create_connection(("::1", proc.port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"fastproxy did not listen on [::1]:\n{proc.log()}")


def upstream(address: str, version: str, extra: str = "") -> str:
    return (f'[upstreams.app]\nservers = ["{address}"]\nproxy_protocol = "{version}"\n{extra}\n'
            '[[routes]]\nupstream = "app"\n')


def get(client: RawClient, path: str = "/", extra: str = "") -> dict:  # type: ignore[type-arg]
    client.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    response = client.read_response()
    assert response.status == 200, (response.status, response.body)
    return json.loads(response.body)  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_header_names_the_client_and_the_address_it_reached(
        proxied: ProxiedOrigin, start_proxy, version: str) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(upstream(proxied.address, version))
    with RawClient(proxy.port) as client:
        here = client.sock.getsockname()
        facts = get(client)
    assert facts["src"] == "127.0.0.1" and facts["sport"] == here[1]
    assert facts["dst"] == "127.0.0.1" and facts["dport"] == proxy.port
    raw = proxied.headers[facts["conn"]]
    if version == "v1":
        assert raw == b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n" % (here[1], proxy.port)
    else:
        assert facts["v2"] and raw[12:14] == b"\x21\x11"  # PROXY, TCP over IPv4
        assert len(raw) == 16 + 12


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ipv6_client(proxied: ProxiedOrigin, start_proxy,  # type: ignore[no-untyped-def]
                     version: str) -> None:
    try:
        proxy = start_proxy(upstream(proxied.address, version), listener="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with socket.create_connection(("::1", proxy.port), timeout=5) as sock:
        port = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data
    facts = json.loads(data.partition(b"\r\n\r\n")[2])
    assert (facts["src"], facts["sport"], facts["dst"], facts["dport"]) == \
        ("::1", port, "::1", proxy.port)
    raw = proxied.headers[facts["conn"]]
    if version == "v1":
        assert raw.startswith(b"PROXY TCP6 ::1 ::1 ")
    else:
        assert raw[12:14] == b"\x21\x21"  # PROXY, TCP over IPv6


def test_client_from_trusted_proxies_and_from_a_proxy_header(
        proxied: ProxiedOrigin, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(upstream(proxied.address, "v1"),
                        server='trusted_proxies = ["127.0.0.1/32"]')
    with RawClient(proxy.port) as client:
        facts = get(client, extra="X-Forwarded-For: 203.0.113.9\r\n")
        # The trusted proxy's header names no port: 0.
        assert (facts["src"], facts["sport"], facts["dport"]) == ("203.0.113.9", 0, proxy.port)
        # An IPv6 client behind the trusted proxy, reached over IPv4: one family (mapped).
        facts = get(client, extra="X-Forwarded-For: 2001:db8::7\r\n")
        assert (facts["src"], facts["dst"]) == ("2001:db8::7", "::ffff:127.0.0.1")
        assert proxied.headers[facts["conn"]].startswith(b"PROXY TCP6 2001:db8::7 ")
    # A listener that takes PROXY headers itself passes on what its header said.
    second = start_proxy('proxy_protocol = true\n' + upstream(proxied.address, "v2"))
    with RawClient(second.port) as client:
        client.send(b"PROXY TCP4 198.51.100.4 10.1.1.1 4444 8443\r\n")
        facts = get(client)
    assert (facts["src"], facts["sport"], facts["dst"], facts["dport"]) == \
        ("198.51.100.4", 4444, "10.1.1.1", 8443)


def test_idle_connections_serve_only_their_client(
        proxied: ProxiedOrigin, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(upstream(proxied.address, "v2"))
    a, b = RawClient(proxy.port), RawClient(proxy.port)
    try:
        ports = {"a": a.sock.getsockname()[1], "b": b.sock.getsockname()[1]}
        seen: dict[str, set[int]] = {"a": set(), "b": set()}
        for _ in range(3):
            for name, client in (("a", a), ("b", b)):
                facts = get(client)
                assert facts["sport"] == ports[name]  # never the other client's connection
                seen[name].add(facts["conn"])
        # Keep-alive still works, per client: one upstream connection each.
        assert len(seen["a"]) == 1 and len(seen["b"]) == 1 and seen["a"] != seen["b"]
        a.close()
        with RawClient(proxy.port) as c:  # a new client never gets a's idle connection
            facts = get(c)
            assert facts["sport"] == c.sock.getsockname()[1]
            assert facts["conn"] not in seen["a"] | seen["b"]
    finally:
        a.close()
        b.close()
    assert len(proxied.headers) == 3 and proxied.refused == 0


def test_keepalive_bound_holds_with_many_clients(
        proxied: ProxiedOrigin, start_proxy) -> None:  # type: ignore[no-untyped-def]
    """keepalive = 2: the least recently used client's idle connection makes room,
    so the latest clients keep theirs."""
    proxy = start_proxy(upstream(proxied.address, "v1", "keepalive = 2"))
    clients = [RawClient(proxy.port) for _ in range(4)]
    try:
        first = [get(c)["conn"] for c in clients]
        assert len(set(first)) == 4
        # The last two are still pooled (the first two were dropped for them) ...
        assert get(clients[3])["conn"] == first[3]
        assert get(clients[2])["conn"] == first[2]
        # ... the first two get new connections.
        assert get(clients[1])["conn"] not in first
        assert get(clients[0])["conn"] not in first
        assert len(proxied.headers) == 6
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("version,expected", [("v2", (None, 0, None, 0)),
                                              ("v1", (None, 0, None, 0))])
def test_health_checks_send_a_local_header(
        proxied: ProxiedOrigin, start_proxy, version: str,  # type: ignore[no-untyped-def]
        expected: tuple) -> None:  # type: ignore[type-arg]
    check = '[upstreams.app.health_check]\npath = "/health"\ninterval = "100ms"\n' \
            'timeout = "100ms"\nfall = 1\nrise = 1\n'
    proxy = start_proxy(f'[upstreams.app]\nservers = ["{proxied.address}"]\n'
                        f'proxy_protocol = "{version}"\n{check}\n'
                        '[[routes]]\nupstream = "app"\n')
    deadline = time.monotonic() + 10
    while len(proxied.checks) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(proxied.checks) >= 3
    assert all(c == expected for c in proxied.checks), proxied.checks
    assert proxied.refused == 0
    # Passing: the server stays usable (a failed check with fall = 1 would take it down).
    with RawClient(proxy.port) as client:
        assert get(client)["src"] == "127.0.0.1"
    if version == "v2":
        raw = proxied.headers[0]
        assert raw == V2_SIG + b"\x20\x00\x00\x00"  # LOCAL, UNSPEC, no addresses


def test_a_server_option_overrides_the_upstream(proxied: ProxiedOrigin, start_proxy,  # type: ignore[no-untyped-def]
                                                make_origin) -> None:  # type: ignore[no-untyped-def]
    plain = make_origin(name="plain")
    proxy = start_proxy(
        f'[upstreams.app]\nservers = [{{ address = "{proxied.address}" }},'
        f' {{ address = "{plain.address}", proxy_protocol = "off" }}]\nproxy_protocol = "v1"\n'
        '[[routes]]\nupstream = "app"\n')
    with RawClient(proxy.port) as client:
        bodies = []
        for _ in range(4):
            client.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            response = client.read_response()
            assert response.status == 200
            bodies.append(response.body)
    assert sum(b.startswith(b"plain ") for b in bodies) == 2  # round robin, no header there
    assert bytes(plain.raw).startswith(b"GET /x ") and b"PROXY" not in plain.raw
    assert plain.errors == []
    assert proxied.refused == 0 and len(proxied.headers) == 1


def test_websocket_tunnel_starts_with_the_header(
        proxied: ProxiedOrigin, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(upstream(proxied.address, "v1"))
    with RawClient(proxy.port) as client:
        port = client.sock.getsockname()[1]
        client.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        head = client.read_until(b"\r\n\r\n")
        assert head is not None and head.startswith(b"HTTP/1.1 101 ")
        facts = json.loads(client.read_until(b"\n") or b"")
        assert (facts["src"], facts["sport"]) == ("127.0.0.1", port)
        client.send(b"through the tunnel")
        assert client.read_exactly(18) == b"through the tunnel"


@pytest.mark.parametrize("engine", ["openssl", "python"])
def test_tls_listener_client(proxied: ProxiedOrigin, start_proxy,  # type: ignore[no-untyped-def]
                             tmp_path: Path, engine: str) -> None:
    """A client of a TLS listener: its TCP address and port, with either TLS engine."""
    ca = trustme.CA()
    leaf = ca.issue_cert("site.test")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "site.key"))
    proxy = start_proxy(
        f'[listeners.tls]\ncertificates = [{{ cert = "{tmp_path / "site.pem"}", '
        f'key = "{tmp_path / "site.key"}" }}]\nengine = "{engine}"\n'
        + upstream(proxied.address, "v1"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="site.test") as sock:
        port = sock.getsockname()[1]
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
            data = b""
            while b"}" not in data:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            facts = json.loads(data.partition(b"\r\n\r\n")[2])
            assert (facts["src"], facts["sport"], facts["dport"]) == \
                ("127.0.0.1", port, proxy.port)
    assert len(proxied.headers) == 1  # both requests on one upstream connection


def tlvs_of(raw: bytes) -> dict[int, bytes]:
    """The TLVs of a v2 PROXY header over TCP/IPv4 (after its 12 address bytes)."""
    out: dict[int, bytes] = {}
    end = 16 + int.from_bytes(raw[14:16], "big")
    assert end == len(raw)
    i = 16 + 12
    while i < end:
        n = int.from_bytes(raw[i + 1:i + 3], "big")
        out[raw[i]] = raw[i + 3:i + 3 + n]
        i += 3 + n
    assert i == end
    return out


def test_build_v2_with_tlvs_parses_back() -> None:
    tlvs = tlv(0x01, b"h2") + tlv(0x02, b"example.com")
    header = build_v2("192.0.2.1", 1000, "192.0.2.2", 443, tlvs)
    assert header.endswith(tlvs) and int.from_bytes(header[14:16], "big") == 12 + len(tlvs)
    assert parse(header + b"GET") == (len(header), b"192.0.2.1", 1000, b"192.0.2.2", 443)
    assert tlvs_of(header) == {0x01: b"h2", 0x02: b"example.com"}
    assert build_v2(None, 0, None, 0, tlvs) == V2_SIG + b"\x20\x00\x00\x00"  # LOCAL: none
    with pytest.raises(ValueError):
        build_v2("192.0.2.1", 1000, "192.0.2.2", 443, b"x" * 5000)
    with pytest.raises(ValueError):
        tlv(256, b"")


@pytest.mark.parametrize("engine", ["openssl", "python"])
def test_v2_tells_the_tls_facts_of_the_client(
        proxied: ProxiedOrigin, start_proxy, tmp_path: Path,  # type: ignore[no-untyped-def]
        engine: str) -> None:
    ca, client_ca = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("site.test")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "site.key"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
    alice = client_ca.issue_cert("alice@example.com", common_name="alice")
    alice.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "alice.pem"))
    proxy = start_proxy(
        f'[listeners.tls]\ncertificates = [{{ cert = "{tmp_path / "site.pem"}", '
        f'key = "{tmp_path / "site.key"}" }}]\nengine = "{engine}"\n'
        f'client_auth = "optional"\nclient_ca = "{tmp_path / "client-ca.pem"}"\n'
        + upstream(proxied.address, "v2"))
    for cert in (True, False):
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.set_alpn_protocols(["http/1.1"])
        context.maximum_version = ssl.TLSVersion.TLSv1_2 if cert else ssl.TLSVersion.TLSv1_3
        if cert:
            context.load_cert_chain(str(tmp_path / "alice.pem"))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="site.test") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            cipher = sock.cipher()[0]
        facts = json.loads(data.partition(b"\r\n\r\n")[2])
        tlvs = tlvs_of(proxied.headers[facts["conn"]])
        assert tlvs[0x01] == b"http/1.1"  # ALPN
        assert tlvs[0x02] == b"site.test"  # AUTHORITY (SNI)
        ssl_tlv = tlvs[0x20]
        sub = tlvs_of(b"\0" * 14 + (len(ssl_tlv) - 5 + 12).to_bytes(2, "big") + b"\0" * 12
                      + ssl_tlv[5:])
        assert sub[0x21] == (b"TLSv1.2" if cert else b"TLSv1.3")
        assert sub[0x23] == cipher.encode()
        if cert:
            assert ssl_tlv[:5] == b"\x03\0\0\0\0"  # SSL + certificate on the connection, verified
            assert sub[0x22] == b"alice"
        else:
            assert ssl_tlv[:5] == b"\x01\0\0\0\x01"  # SSL, no certificate
            assert 0x22 not in sub


# -- real peers: nginx (plain and TLS) and a fastproxy listener ---------------------------

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


class Nginx:
    """nginx answering with what its PROXY header said ($proxy_protocol_*), stopped by PID."""

    def __init__(self, prefix: Path, listen: str, tls: tuple[str, str] | None = None) -> None:
        self.prefix = prefix
        self.port = free_port()
        prefix.mkdir()
        temp = "".join(f"    {k}_temp_path {prefix}/tmp_{k};\n"
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        ssl_lines = (f"        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n"
                     if tls else "")
        (prefix / "nginx.conf").write_text(
            f"worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
            "events { worker_connections 64; }\n"
            f"http {{\n    access_log {prefix}/access.log;\n{temp}"
            f"    server {{\n        listen 127.0.0.1:{self.port} {listen};\n{ssl_lines}"
            "        location / { return 200 \"$proxy_protocol_addr $proxy_protocol_port "
            "$proxy_protocol_server_addr $proxy_protocol_server_port\"; }\n"
            "    }\n}\n")
        self.proc = subprocess.Popen(
            [NGINX or "nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
             "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (prefix / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _nginx_reading_headers(tmp_path: Path, tls: bool) -> tuple[Nginx, str, str]:
    """An nginx with `proxy_protocol` on its listener (and TLS, with a certificate from
    a test CA); the upstream keys that trust that CA, and the servers' scheme."""
    cert = None
    extra = ""
    scheme = ""
    if tls:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        cert = (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
        leaf.cert_chain_pems[0].write_to_path(cert[0])
        leaf.private_key_pem.write_to_path(cert[1])
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        extra = f'tls = {{ ca = "{tmp_path / "ca.pem"}" }}\n'
        scheme = "https://"
    return Nginx(tmp_path / "nginx", "ssl proxy_protocol" if tls else "proxy_protocol",
                 cert), extra, scheme


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_nginx_reads_the_header(tmp_path: Path, start_proxy,  # type: ignore[no-untyped-def]
                                version: str, tls: bool) -> None:
    nginx, extra, scheme = _nginx_reading_headers(tmp_path, tls)
    # Health checks too (over TLS to https://, after their header): with fall = 1, one
    # failed check would take the only server down and the requests below would get 503.
    extra += ('\n[upstreams.app.health_check]\npath = "/health"\ninterval = "100ms"\n'
              'timeout = "100ms"\nfall = 1\nrise = 1\n')
    try:
        proxy = start_proxy(upstream(f"{scheme}127.0.0.1:{nginx.port}", version, extra))
        log = tmp_path / "nginx" / "access.log"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                not log.exists() or log.read_text().count("fastproxy-health-check") < 3):
            time.sleep(0.05)
        checks = [line for line in log.read_text().splitlines() if "fastproxy-health-check" in line]
        assert len(checks) >= 3 and all('"GET /health HTTP/1.1" 200 ' in c for c in checks), checks
        with RawClient(proxy.port) as client:
            here = client.sock.getsockname()[1]
            for _ in range(2):
                client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                response = client.read_response()
                assert response.status == 200, (response.status, response.body,
                                                 (tmp_path / "nginx" / "error.log").read_text())
                assert response.body == b"127.0.0.1 %d 127.0.0.1 %d" % (here, proxy.port)
    finally:
        nginx.stop()


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_cache_explain_asks_the_upstream_as_the_proxy_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str, tls: bool) -> None:
    """`fastproxy cache explain --upstream` reaches the server as the proxy does: the
    PROXY header its config names first (v2 LOCAL / v1 UNKNOWN, as the health
    checks: no client), TLS to an https:// server. nginx with `proxy_protocol`
    closes a connection that does not start with one."""
    from fastproxy.cli import main

    nginx, extra, scheme = _nginx_reading_headers(tmp_path, tls)
    try:
        config = tmp_path / "fastproxy.toml"
        config.write_text(f'[[listeners]]\naddress = "127.0.0.1:{free_port()}"\n'
                          '[caches.c]\nmemory = "1m"\n'
                          f'[upstreams.app]\nservers = ["{scheme}127.0.0.1:{nginx.port}"]\n'
                          f'proxy_protocol = "{version}"\n{extra}'
                          '[[routes]]\nupstream = "app"\ncache = "c"\n')
        code = main(["cache", "explain", str(config), "http://site/explained", "--upstream"])
        out, err = capsys.readouterr()
        assert code == 0, (err, (tmp_path / "nginx" / "error.log").read_text())
        header = "v2 LOCAL" if version == "v2" else "v1 UNKNOWN"
        assert f"asked:     the upstream, 127.0.0.1:{nginx.port}: GET /explained (PROXY " \
               f"{header} header first{'; TLS, server name 127.0.0.1' if tls else ''})" in out
        assert "response:  200" in out, out
        log = tmp_path / "nginx" / "access.log"  # written once nginx is done: poll it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and '"GET /explained HTTP/1.1" 200 ' not in (
                log.read_text() if log.exists() else ""):
            time.sleep(0.05)
        assert '"GET /explained HTTP/1.1" 200 ' in log.read_text(), log.read_text()
    finally:
        nginx.stop()


def test_fastproxy_listener_behind_fastproxy_over_tls(
        tmp_path: Path, start_proxy, make_origin) -> None:  # type: ignore[no-untyped-def]
    """A second fastproxy with a TLS listener taking PROXY headers: the header goes
    before the handshake and names the first one's client (trusted_proxies there)."""
    origin = make_origin(name="app")
    ca = trustme.CA()
    leaf = ca.issue_cert("inner.test", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    inner = start_proxy(
        f'proxy_protocol = true\n[[listeners.tls.certificates]]\ncert = "{tmp_path / "cert.pem"}"\n'
        f'key = "{tmp_path / "key.pem"}"\n'
        f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    outer = start_proxy(upstream(f"https://127.0.0.1:{inner.port}", "v2",
                                 f'tls = {{ ca = "{tmp_path / "ca.pem"}", sni = "inner.test" }}'),
                        server='trusted_proxies = ["127.0.0.1/32"]')
    with RawClient(outer.port) as client:
        for ip in ("192.0.2.33", "192.0.2.34"):
            client.send(f"GET /t HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {ip}\r\n\r\n".encode())
            response = client.read_response()
            assert response.status == 200, response.body
            # inner's client is the one outer's header named: inner appends it to the
            # X-Forwarded-For that outer sent ("ip, 127.0.0.1").
            forwarded = origin.requests[-1].header("X-Forwarded-For") or ""
            assert forwarded.split(", ") == [ip, "127.0.0.1", ip], forwarded
    deadline = time.monotonic() + 10
    while "192.0.2.34 - -" not in inner.access_log_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # the log is written every tick
    assert "192.0.2.33 - -" in inner.access_log_text()


# -- configuration -------------------------------------------------------------------------

BASE = {"listeners": [{"address": "127.0.0.1:8080"}], "routes": [{"upstream": "app"}]}


def test_config_values_and_errors(tmp_path: Path) -> None:
    src = str(tmp_path / "fastproxy.toml")
    config = parse_config({**BASE, "upstreams": {"app": {
        "servers": ["127.0.0.1:1", {"address": "127.0.0.1:2", "proxy_protocol": "off"},
                    {"address": "https://127.0.0.1:3", "proxy_protocol": "v1"}],
        "proxy_protocol": "v2"}}}, src)
    app = config.upstreams["app"]
    assert [app.server_proxy_protocol(s) for s in app.servers] == ["v2", "off", "v1"]
    assert parse_config({**BASE, "upstreams": {"app": {"servers": ["127.0.0.1:1"]}}},
                        src).upstreams["app"].proxy_protocol == "off"
    for where, value in (("upstream", "v3"), ("upstream", True), ("server", "V2")):
        table: dict = {"servers": ["127.0.0.1:1"]}  # type: ignore[type-arg]
        if where == "upstream":
            table["proxy_protocol"] = value
            key = "upstreams.app.proxy_protocol"
        else:
            table["servers"] = [{"address": "127.0.0.1:1", "proxy_protocol": value}]
            key = "upstreams.app.servers[0].proxy_protocol"
        with pytest.raises(ConfigError) as info:
            parse_config({**BASE, "upstreams": {"app": table}}, src)
        errors = info.value.errors
        assert [(e.file, e.key) for e in errors] == [(src, key)], errors
        assert "off, v1, v2" in errors[0].reason or '"off", "v1" or "v2"' in errors[0].reason


def test_fastproxy_check_reports_a_bad_value(tmp_path: Path) -> None:
    import sys
    path = tmp_path / "bad.toml"
    path.write_text('[[listeners]]\naddress = "127.0.0.1:8080"\n'
                    '[upstreams.app]\nservers = ["127.0.0.1:9000"]\nproxy_protocol = "v9"\n'
                    '[[routes]]\nupstream = "app"\n')
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "upstreams.app.proxy_protocol" in text and "'v9'" in text and str(path) in text
    assert "Traceback" not in text
    examples = Path(__file__).resolve().parents[1] / "examples" / "protocols.toml"
    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", str(examples)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning" not in out.stderr and out.stdout.startswith("config OK:")


def test_http2_client_behind_a_proxy_header(proxied: ProxiedOrigin,
                                            start_proxy) -> None:  # type: ignore[no-untyped-def]
    """An HTTP/2 client (h2c) on a listener that takes PROXY headers: the header
    sent upstream names the client, port and destination its own header gave, as
    for an HTTP/1.1 client (a stream had the socket's port and address instead)."""
    import h2.config
    import h2.connection
    import h2.events

    proxy = start_proxy('proxy_protocol = true\nh2c = true\n' + upstream(proxied.address, "v1"))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                          (":authority", "x")], end_stream=True)
    body = b""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 198.51.100.4 10.1.1.1 4444 8443\r\n" + conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "closed before the answer"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
    facts = json.loads(body)
    assert (facts["src"], facts["sport"], facts["dst"], facts["dport"]) == \
        ("198.51.100.4", 4444, "10.1.1.1", 8443)
