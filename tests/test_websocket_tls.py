"""WebSocket through TLS listeners, with both TLS engines ("openssl": fastproxy._tls,
"python": uvloop's SSL transport): echo, a large message, the close handshake,
back-pressure with a slow reader and a slow origin, and the tunnelled bytes in the
metrics and the access log line written when the tunnel closes."""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from servers import (
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    ProxyProcess,
    RssSampler,
    WebSocketOrigin,
    free_port,
    ws_accept,
    ws_frame,
)
from test_websocket_e2e import WsClient, new_key, wait_for

Setup = tuple[WebSocketOrigin, ProxyProcess, ssl.SSLContext, int]


@pytest.fixture(scope="module", params=["openssl", "python"])
def wss(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    engine = request.param
    workdir: Path = tmp_path_factory.mktemp(f"wss-{engine}")
    ca = trustme.CA()
    leaf = ca.issue_cert("ws.example")
    leaf.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(workdir / "key.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    origin = WebSocketOrigin().start()
    proxy: ProxyProcess | None = None
    try:
        port, admin = free_port(), free_port()
        text = (f'[server]\nworkers = 1\nshutdown_timeout = "2s"\n'
                f'[log]\naccess = "{workdir / "access.log"}"\nlevel = "info"\n'
                f'[admin]\naddress = "127.0.0.1:{admin}"\n'
                f'[[listeners]]\naddress = "127.0.0.1:{port}"\n[listeners.tls]\n'
                f'certificates = [{{ cert = "{workdir / "cert.pem"}", '
                f'key = "{workdir / "key.pem"}" }}]\nengine = "{engine}"\n'
                f'[upstreams.backend]\nservers = ["{origin.address}"]\n'
                '[[routes]]\nupstream = "backend"\n')
        proxy = ProxyProcess(text, workdir, port)
        proxy.start()
        yield origin, proxy, context, admin
        assert "Traceback" not in proxy.log(), proxy.log()
    finally:
        if proxy is not None and proxy.proc is not None:
            proxy.stop()
        origin.stop()


class TlsWsClient(WsClient):
    def __init__(self, port: int, context: ssl.SSLContext, rcvbuf: int = 0) -> None:
        raw = socket.socket()
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", port))
        self.sock = context.wrap_socket(raw, server_hostname="ws.example")
        self.buf = b""

    def at_eof(self) -> bool:
        try:
            return super().at_eof()
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return True


def handshake(setup: Setup, path: str = "/echo", rcvbuf: int = 0) -> TlsWsClient:
    _, proxy, context, _ = setup
    client = TlsWsClient(proxy.port, context, rcvbuf)
    key = new_key()
    status, fields, _ = client.request(path, key)
    assert status == 101, (status, fields)
    assert fields["sec-websocket-accept"] == ws_accept(key).decode()
    assert "strict-transport-security" not in fields or fields["strict-transport-security"]
    return client


def metric(admin: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = [float(m.group(1)) for m in
              re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)]
    assert values, f"no {name} in /metrics"
    return int(sum(values))


def test_echo_and_large_message(wss: Setup) -> None:
    client = handshake(wss)
    for opcode, payload in [(OP_TEXT, b"hello"), (OP_BINARY, bytes(range(256)) * 3),
                            (OP_BINARY, os.urandom(3 << 20)), (OP_TEXT, "\u00e9t\u00e9".encode())]:
        client.send(opcode, payload)
        assert client.recv() == (opcode, payload)
    client.close()


def test_close_handshake_from_the_client(wss: Setup) -> None:
    origin = wss[0]
    client = handshake(wss)
    before = origin.events.count("close-frame")
    client.send(OP_CLOSE, (1000).to_bytes(2, "big"))
    assert client.recv() == (OP_CLOSE, (1000).to_bytes(2, "big"))
    assert client.at_eof()  # the origin closed after its close frame; passed on
    assert origin.events.count("close-frame") == before + 1
    client.close()


def test_close_from_the_origin_and_client_disconnect(wss: Setup) -> None:
    origin = wss[0]
    client = handshake(wss)
    client.send(OP_TEXT, b"bye")
    assert client.recv() == (OP_CLOSE, (1000).to_bytes(2, "big"))
    assert client.at_eof()
    client.close()
    client = handshake(wss)
    client.send(OP_TEXT, b"ping")
    assert client.recv() == (OP_TEXT, b"ping")
    before = origin.events.count("eof")
    client.sock.close()  # no close frame, no close_notify: the TCP connection just ends
    assert wait_for(lambda: origin.events.count("eof") == before + 1)


def test_big_transfer_to_slow_client_is_bounded(wss: Setup) -> None:
    origin, proxy, _, _ = wss
    total = 32 << 20
    worker = proxy.wait_worker_pids(1)[0]
    client = handshake(wss, f"/big?{total}", rcvbuf=65536)
    got = lead = 0
    with RssSampler(worker, limit=120) as rss:
        while True:
            opcode, payload = client.recv()
            if opcode == OP_CLOSE:
                break
            assert opcode == OP_BINARY
            got += len(payload)
            if got % (1 << 20) == 0:
                time.sleep(0.03)  # a slow reader
                lead = max(lead, origin.big_sent - got)
                # The origin is ahead only by what the buffers hold (TLS adds its own).
                assert origin.big_sent - got < 24 << 20, (origin.big_sent, got)
    assert got == total
    print(f"RSS growth {rss.growth_mib:.1f} MiB, origin ahead by at most {lead >> 10} KiB")
    assert rss.growth_mib < 8, f"proxy RSS grew {rss.growth_mib:.1f} MiB"
    assert client.at_eof()
    client.close()


def test_big_upload_to_slow_origin_is_bounded(wss: Setup) -> None:
    origin, proxy, _, _ = wss
    total = 32 << 20
    worker = proxy.wait_worker_pids(1)[0]
    client = handshake(wss, f"/sink?{total}")
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


def test_tunnelled_bytes_are_counted_and_logged_at_close(wss: Setup) -> None:
    _, proxy, _, admin = wss
    before_in = metric(admin, "fastproxy_bytes_received_total")
    before_out = metric(admin, "fastproxy_bytes_sent_total")
    lines_before = len(proxy.access_log())
    client = handshake(wss, "/echo?count")
    payload = os.urandom(100_000)
    client.send(OP_BINARY, payload)
    assert client.recv() == (OP_BINARY, payload)
    # While the tunnel is open its line is not written yet (nginx logs it at the end too).
    time.sleep(0.3)
    assert not any("/echo?count" in line for line in proxy.access_log()[lines_before:])
    client.send(OP_CLOSE, (1000).to_bytes(2, "big"))
    assert client.recv()[0] == OP_CLOSE
    assert client.at_eof()
    client.close()
    assert wait_for(lambda: any("/echo?count" in line for line in proxy.access_log()))
    line = next(line for line in proxy.access_log() if "/echo?count" in line)
    # combined: "GET ..." 101 <bytes sent to the client: the 101 head and every frame>
    sent = int(line.split('" 101 ', 1)[1].split(" ", 1)[0])
    assert 100_000 < sent < 101_000, line
    # The instance's byte counters include the tunnel, both ways (masked frames in).
    assert wait_for(lambda: metric(admin, "fastproxy_bytes_sent_total") - before_out > 100_000)
    assert metric(admin, "fastproxy_bytes_received_total") - before_in > 100_000
