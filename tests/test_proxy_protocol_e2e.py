"""Listeners with `proxy_protocol = true`: the client address comes from the
PROXY v1/v2 header a load balancer sends first, on plain and TLS listeners."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from fastproxy._proxyproto import build_v1, build_v2
from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, free_port


def start(tmp_path: Path, origin: Origin, listener_extra: str = "", tls: str = "",
          header_timeout: str = "2s") -> ProxyProcess:
    port = free_port()
    text = (f'[log]\naccess = "{tmp_path / "access.log"}"\nlevel = "info"\n'
            f'[timeouts]\nheader = "{header_timeout}"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\nproxy_protocol = true\n'
            f'{listener_extra}\n{tls}\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    return ProxyProcess(text, tmp_path, port).start()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` in one write, return everything until the proxy closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


GET = b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def test_the_header_names_the_client(make_origin: Callable[..., Origin],
                                     tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = start(tmp_path, origin)
    try:
        # v1, in the same write as the request.
        out = exchange(proxy.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n" + GET)
        assert out.startswith(b"HTTP/1.1 200")
        assert origin.requests[-1].header("X-Forwarded-For") == "203.0.113.7"
        # v2, IPv6.
        out = exchange(proxy.port, build_v2("2001:db8::5", 40000, "2001:db8::1", 443) + GET)
        assert out.startswith(b"HTTP/1.1 200")
        assert origin.requests[-1].header("X-Forwarded-For") == "2001:db8::5"
        # LOCAL (the balancer's own health check): the TCP peer's address stays.
        out = exchange(proxy.port, build_v2(None, 0, None, 0) + GET)
        assert out.startswith(b"HTTP/1.1 200")
        assert origin.requests[-1].header("X-Forwarded-For") == "127.0.0.1"
        # The header may come in pieces, ahead of the request.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            header = build_v1("198.51.100.9", 1234, "10.0.0.1", 80)
            s.sendall(header[:9])
            time.sleep(0.05)
            s.sendall(header[9:])
            time.sleep(0.05)
            s.sendall(GET)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert origin.requests[-1].header("X-Forwarded-For") == "198.51.100.9"
    finally:
        proxy.stop()
    log = (tmp_path / "access.log").read_text()
    assert "203.0.113.7 - -" in log and "2001:db8::5 - -" in log


def test_missing_or_bad_headers_close_the_connection(make_origin: Callable[..., Origin],
                                                     tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = start(tmp_path, origin, header_timeout="1s")
    try:
        assert exchange(proxy.port, GET) == b""  # no header: closed, nothing read as HTTP
        assert exchange(proxy.port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n" + GET) == b""
        assert exchange(proxy.port, b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n" + GET) == b""
        # Nothing at all: closed at the header timeout.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            assert s.recv(100) == b""
        assert 0.8 < time.monotonic() - started < 3.0
        assert not origin.requests
        # The listener still serves good connections.
        assert exchange(proxy.port, build_v1("192.0.2.1", 1, "10.0.0.1", 80) + GET).startswith(
            b"HTTP/1.1 200")
    finally:
        proxy.stop()
    assert "port 99999" in proxy.log() or "PROXY v1" in proxy.log()


def test_access_lists_see_the_header_address(make_origin: Callable[..., Origin],
                                             tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = start(tmp_path, origin, '[listeners.access]\ndeny = ["203.0.113.0/24"]')
    try:
        assert exchange(proxy.port, build_v1("203.0.113.7", 1, "10.0.0.1", 80) + GET) \
            .startswith(b"HTTP/1.1 403")
        assert exchange(proxy.port, build_v1("198.51.100.7", 1, "10.0.0.1", 80) + GET) \
            .startswith(b"HTTP/1.1 200")
    finally:
        proxy.stop()


@pytest.mark.parametrize("engine", ["openssl", "python"])
@pytest.mark.parametrize("together", [False, True], ids=["apart", "same-write"])
def test_tls_after_the_header(make_origin: Callable[..., Origin], tmp_path: Path,
                              together: bool, engine: str) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("site.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "site.key"))
    origin = make_origin(name="app")
    tls = (f'[listeners.tls]\ncertificates = [{{ cert = "{tmp_path}/site.pem", '
           f'key = "{tmp_path}/site.key" }}]\nengine = "{engine}"\n')
    proxy = start(tmp_path, origin, tls=tls)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    try:
        # A memory-BIO client, so that the header and the ClientHello can share a write.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls_client = ctx.wrap_bio(incoming, outgoing, server_hostname="site.example")
            header = build_v2("203.0.113.50", 4242, "10.0.0.1", 443)
            if not together:
                s.sendall(header)
                time.sleep(0.05)
            first = True
            while True:
                try:
                    tls_client.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                data = outgoing.read()
                s.sendall(header + data if first and together else data)
                first = False
                received = s.recv(65536)
                assert received, "closed during the handshake"
                incoming.write(received)
            if outgoing.pending:
                s.sendall(outgoing.read())
            tls_client.write(GET)
            s.sendall(outgoing.read())
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"app /who"):
                received = s.recv(65536)
                if not received:
                    break
                incoming.write(received)
                # One read may hold several records (the head and the body, the
                # session tickets): take all of them before waiting on the socket.
                try:
                    while chunk := tls_client.read(65536):
                        answer += chunk
                except ssl.SSLWantReadError:
                    continue
                except ssl.SSLZeroReturnError:
                    break
                break  # b"": the proxy's close_notify came
        assert answer.startswith(b"HTTP/1.1 200"), answer
        seen = origin.requests[-1]
        assert seen.header("X-Forwarded-For") == "203.0.113.50"
        assert seen.header("X-Forwarded-Proto") == "https"
    finally:
        proxy.stop()


def test_proxy_protocol_config() -> None:
    base = {"upstreams": {"a": {"servers": ["127.0.0.1:2"]}}, "routes": [{"upstream": "a"}]}
    config = parse_config({**base, "listeners": [{"address": "127.0.0.1:1",
                                                  "proxy_protocol": True}]})
    assert config.listeners[0].proxy_protocol
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "listeners": [{"address": "127.0.0.1:1",
                                             "proxy_protocol": "yes"}]})
    assert [i.key for i in info.value.errors] == ["listeners[0].proxy_protocol"]
