"""WebSocket and other protocol switches (Upgrade) through the proxy, end to end:
the handshake, frames both ways, back-pressure on a big transfer, closes from
either side, the idle timeout, refusals and non-101 answers, h2c."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import (
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    ProxyProcess,
    RssSampler,
    WebSocketOrigin,
    config_toml,
    free_port,
    ws_accept,
    ws_frame,
)

ROUTES = """
[limits.one]
rate = "1/m"
burst = 0

[[routes]]
match = { path_prefix = "/denied" }
access = { deny = ["127.0.0.1/32"] }
upstream = "backend"

[[routes]]
match = { path_prefix = "/limited" }
limits = ["one"]
upstream = "backend"

[[routes]]
match = { path_prefix = "/idle" }
tunnel_idle_timeout = "1s"
upstream = "backend"

[[routes]]
upstream = "backend"
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebSocketOrigin, ProxyProcess]]:
    workdir: Path = tmp_path_factory.mktemp("ws")
    origin = WebSocketOrigin().start()
    proxy: ProxyProcess | None = None
    try:
        port = free_port()
        proxy = ProxyProcess(config_toml({"backend": [origin.address]}, port,
                                         workdir / "access.log", routes=ROUTES), workdir, port)
        proxy.start()
        yield origin, proxy
        assert "Traceback" not in proxy.log(), proxy.log()
        # A switch is logged once, when it is made, with status 101.
        assert any(' 101 ' in line for line in proxy.access_log()), proxy.access_log()
    finally:
        if proxy is not None and proxy.proc is not None:
            proxy.stop()
        origin.stop()


class WsClient:
    """A WebSocket client on a raw socket (masked frames, RFC 6455)."""

    def __init__(self, port: int, rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def request(self, path: str, key: bytes, upgrade: str = "websocket",
                extra: str = "") -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, Upgrade\r\n"
            f"Upgrade: {upgrade}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\n{extra}\r\n".encode())
        return self.read_response()

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (line.partition(":") for line in lines[1:])}
        body = b""
        if "content-length" in fields:
            n = int(fields["content-length"])
            while len(self.buf) < n:
                self._more()
            body, self.buf = self.buf[:n], self.buf[n:]
        return status, fields, body

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(ws_frame(opcode, payload, os.urandom(4)))

    def recv(self) -> tuple[int, bytes]:
        b0, b1 = self._take(2)
        assert not b1 & 0x80, "a server's frames are not masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._take(2), "big")
        elif n == 127:
            n = int.from_bytes(self._take(8), "big")
        return b0 & 0x0F, self._take(n)

    def at_eof(self) -> bool:
        """True once the proxy closed its side (FIN), after what was left is read."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def handshake(proxy: ProxyProcess, path: str = "/echo", **kw: int) -> WsClient:
    client = WsClient(proxy.port, **kw)
    key = new_key()
    status, fields, _ = client.request(path, key)
    assert status == 101, (status, fields)
    assert fields["upgrade"].lower() == "websocket"
    assert "upgrade" in fields["connection"].lower()
    assert fields["sec-websocket-accept"] == ws_accept(key).decode()
    return client


def wait_for(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


def test_handshake_passes_upgrade_and_key(ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    origin, proxy = ws
    client = WsClient(proxy.port)
    key = new_key()
    before = len(origin.heads)
    status, fields, _ = client.request("/echo?hs", key)
    assert status == 101
    assert fields["sec-websocket-accept"] == ws_accept(key).decode()
    head = origin.heads[before].decode("latin-1").lower()
    assert "\r\nupgrade: websocket\r\n" in head
    assert "\r\nconnection: upgrade\r\n" in head
    assert f"\r\nsec-websocket-key: {key.decode().lower()}\r\n" in head
    client.close()


def test_text_and_binary_frames_echo(ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    _, proxy = ws
    client = handshake(proxy)
    for opcode, payload in [(OP_TEXT, b"hello"), (OP_BINARY, bytes(range(256)) * 3),
                            (OP_BINARY, os.urandom(200_000)), (OP_TEXT, "\u00e9t\u00e9".encode())]:
        client.send(opcode, payload)
        assert client.recv() == (opcode, payload)
    client.close()


def test_client_close_reaches_origin(ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    origin, proxy = ws
    client = handshake(proxy)
    before = origin.events.count("close-frame")
    client.send(OP_CLOSE, (1000).to_bytes(2, "big"))
    assert client.recv() == (OP_CLOSE, (1000).to_bytes(2, "big"))
    assert client.at_eof()  # the origin closed after its close frame; the proxy passed it on
    assert origin.events.count("close-frame") == before + 1
    client.close()


def test_client_disconnect_closes_origin_side(ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    origin, proxy = ws
    client = handshake(proxy)
    client.send(OP_TEXT, b"ping")
    assert client.recv() == (OP_TEXT, b"ping")
    before = origin.events.count("eof")
    client.close()  # no close frame: the TCP connection just ends
    assert wait_for(lambda: origin.events.count("eof") == before + 1)


def test_origin_close_reaches_client(ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    _, proxy = ws
    client = handshake(proxy)
    client.send(OP_TEXT, b"bye")
    assert client.recv() == (OP_CLOSE, (1000).to_bytes(2, "big"))
    assert client.at_eof()
    client.close()


def test_idle_timeout_closes_both(ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    origin, proxy = ws
    client = handshake(proxy, "/idle")
    client.send(OP_TEXT, b"x")
    assert client.recv() == (OP_TEXT, b"x")
    before = origin.events.count("eof")
    start = time.monotonic()
    client.sock.settimeout(15)
    assert client.at_eof()
    quiet = time.monotonic() - start
    assert quiet >= 0.9, f"closed after {quiet:.2f} s of quiet, before the 1 s idle timeout"
    assert wait_for(lambda: origin.events.count("eof") == before + 1)
    client.close()
    # The default route (60 s) keeps a quiet tunnel open meanwhile.
    other = handshake(proxy)
    time.sleep(1.5)
    other.send(OP_TEXT, b"still here")
    assert other.recv() == (OP_TEXT, b"still here")
    other.close()


@pytest.mark.parametrize("path,status", [("/plain", 200), ("/deny", 403)])
def test_non_101_answer_is_a_normal_response(ws: tuple[WebSocketOrigin, ProxyProcess],
                                             path: str, status: int) -> None:
    _, proxy = ws
    client = WsClient(proxy.port)
    got, fields, body = client.request(path, new_key())
    assert got == status
    assert body == b"not switched " + path.encode()
    assert "upgrade" not in fields
    # The connection stays usable for the next request (keep-alive).
    client.sock.sendall(b"GET /plain HTTP/1.1\r\nHost: test\r\n\r\n")
    got, _, body = client.read_response()
    assert (got, body) == (200, b"not switched /plain")
    client.close()


def test_h2c_is_forwarded_without_upgrade(ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    origin, proxy = ws
    client = WsClient(proxy.port)
    before = len(origin.heads)
    status, _, body = client.request("/h2c", new_key(), upgrade="h2c",
                                     extra="HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")
    assert status == 200
    assert body == b"not switched /h2c"  # the origin saw no Upgrade
    head = origin.heads[before].decode("latin-1").lower()
    assert "upgrade" not in head and "http2-settings" not in head
    client.sock.sendall(b"GET /plain HTTP/1.1\r\nHost: test\r\n\r\n")
    assert client.read_response()[0] == 200
    client.close()


def test_access_rules_and_limits_apply_to_the_handshake(
        ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    origin, proxy = ws
    before = len(origin.heads)
    client = WsClient(proxy.port)
    status, _, _ = client.request("/denied", new_key())
    assert status == 403
    client.close()
    assert len(origin.heads) == before
    first = handshake(proxy, "/limited")  # the one request the limit allows
    first.close()
    client = WsClient(proxy.port)
    status, _, _ = client.request("/limited", new_key())
    assert status == 429
    client.close()
    assert len(origin.heads) == before + 1


def test_big_transfer_to_slow_client_is_bounded(ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    origin, proxy = ws
    total = 32 << 20
    worker = proxy.wait_worker_pids(1)[0]
    client = handshake(proxy, f"/big?{total}", rcvbuf=65536)
    got = lead = 0
    with RssSampler(worker, limit=120) as rss:
        while True:
            opcode, payload = client.recv()
            if opcode == OP_CLOSE:
                break
            assert opcode == OP_BINARY
            got += len(payload)
            if got % (1 << 20) == 0:
                time.sleep(0.03)  # a slow reader: about 1 s for the whole transfer
                # The origin can be ahead of us only by what the buffers hold.
                lead = max(lead, origin.big_sent - got)
                assert origin.big_sent - got < 24 << 20, (origin.big_sent, got)
    assert got == total
    print(f"RSS growth {rss.growth_mib:.1f} MiB, origin ahead by at most {lead >> 10} KiB")
    assert rss.growth_mib < 8, f"proxy RSS grew {rss.growth_mib:.1f} MiB"
    assert client.at_eof()
    client.close()


def test_big_upload_to_slow_origin_is_bounded(ws: tuple[WebSocketOrigin, ProxyProcess]) -> None:
    origin, proxy = ws
    total = 32 << 20
    worker = proxy.wait_worker_pids(1)[0]
    client = handshake(proxy, f"/sink?{total}")
    frame = ws_frame(OP_BINARY, b"\xcd" * 65536, bytes(4))
    sent = lead = 0
    with RssSampler(worker, limit=120) as rss:
        while sent < total:
            client.sock.sendall(frame)  # blocks while the proxy holds our side
            sent += 65536
            lead = max(lead, sent - origin.sink_read)
        assert client.recv() == (OP_TEXT, b"done")
    assert origin.sink_read == total
    print(f"RSS growth {rss.growth_mib:.1f} MiB, client ahead by at most {lead >> 10} KiB")
    assert rss.growth_mib < 8, f"proxy RSS grew {rss.growth_mib:.1f} MiB"
    client.close()
