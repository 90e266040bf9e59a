"""TCP passthrough listeners (`mode = "tcp"`), end to end with real sockets: bytes
both ways (large, with a slow reader), half-close, reset, balancing, dead and
health-checked-down servers, max_conns, the idle timeout, access lists, SNI
routing with a real TLS client to TLS servers behind the proxy (passthrough: the
client verifies the server's own certificate), split ClientHellos, no or unknown
SNI, garbage, TLS terminated by the proxy, PROXY protocol in, the access log."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from servers import ProxyProcess, RssSampler, free_port


class TcpServer:
    """A threaded TCP (or TLS) server: greets with its name when `greet`, then echoes
    until the client's FIN, then sends its own FIN (so half-closes are visible)."""

    def __init__(self, name: bytes = b"s", *, greet: bool = True,
                 context: ssl.SSLContext | None = None, port: int = 0) -> None:
        self.name = name
        self.greet = greet
        self.context = context
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.active = 0
        self.peak = 0
        self.resets = 0
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.active += 1
                self.peak = max(self.peak, self.active)
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            if self.greet:
                conn.sendall(self.name + b"\n")
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            if self.context is None:
                conn.shutdown(socket.SHUT_WR)
            time.sleep(0.05)
        except ConnectionResetError:
            with self.lock:
                self.resets += 1
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
            with self.lock:
                self.active -= 1

    def stop(self) -> None:
        self.stopped = True
        self.sock.close()
        with self.lock:
            for conn in self.conns:
                try:
                    conn.close()
                except OSError:
                    pass


@pytest.fixture
def servers() -> Iterator[Callable[..., TcpServer]]:
    started: list[TcpServer] = []

    def make(name: bytes = b"s", **kw: object) -> TcpServer:
        server = TcpServer(name, **kw)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def tcp_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def make(body: str, *, port: int | None = None, extra: str = "",
             log_extra: str = "", probe_logged: bool = True) -> ProxyProcess:
        port = port or free_port()
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        text = (f'[server]\nworkers = 1\nshutdown_timeout = "3s"\n{extra}\n'
                f'[log]\naccess = "{workdir / "access.log"}"\nlevel = "info"\n{log_extra}\n'
                + body.replace("PORT", str(port)))
        proc = ProxyProcess(text, workdir, port)
        started.append(proc)
        proc.start()
        if probe_logged:
            # start() connected once to see the listener up: let that connection end
            # (it is logged when it has) before the test's own.
            assert wait_for(lambda: proc.access_log() != []), proc.log()
        return proc

    yield make
    for proc in started:
        proc.stop()
        assert "Traceback" not in proc.log(), proc.log()


def listener(upstream: str = "echo", more: str = "") -> str:
    return (f'[[listeners]]\naddress = "127.0.0.1:PORT"\nmode = "tcp"\n'
            f'upstream = "{upstream}"\n{more}\n')


def upstream(name: str, servers: list[str], more: str = "") -> str:
    quoted = ", ".join(s if s.startswith("{") else f'"{s}"' for s in servers)
    return f"[upstreams.{name}]\nservers = [{quoted}]\n{more}\n"


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket) -> bytes:
    parts = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# -- bytes both ways --------------------------------------------------------------------

def test_echo_both_ways_and_half_close(servers, tcp_proxy) -> None:
    server = servers(b"one")
    proxy = tcp_proxy(listener() + upstream("echo", [server.address]))
    with connect(proxy.port) as sock:
        assert read_line(sock) == b"one\n"
        sock.sendall(b"hello")
        assert sock.recv(100) == b"hello"
        # Our FIN reaches the server, which answers after it and then sends its own.
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b"last words"
    assert wait_for(lambda: proxy.access_log() != [])
    line = proxy.access_log()[-1]
    assert " tcp " in line and server.address in line and " closed " in line, line


def test_server_half_close_first(servers, tcp_proxy) -> None:
    """The server's FIN reaches the client, which can still send (and the server
    still reads) afterwards."""
    received: list[bytes] = []
    sock_srv = socket.socket()
    sock_srv.bind(("127.0.0.1", 0))  # listens once the proxy is up (its start-up probe must not
    # take the one connection served)
    port = sock_srv.getsockname()[1]

    def serve() -> None:
        conn, _ = sock_srv.accept()
        with conn:
            conn.sendall(b"bye")
            conn.shutdown(socket.SHUT_WR)
            received.append(read_all(conn))

    thread = threading.Thread(target=serve, daemon=True)
    try:
        proxy = tcp_proxy(listener() + upstream("echo", [f"127.0.0.1:{port}"]))
        sock_srv.listen(1)
        thread.start()
        with connect(proxy.port) as sock:
            assert read_all(sock) == b"bye"  # the FIN came through
            sock.sendall(b"after your fin")
            sock.shutdown(socket.SHUT_WR)
            thread.join(5)
        assert received == [b"after your fin"]
    finally:
        sock_srv.close()


def test_large_transfer_both_ways(servers, tcp_proxy) -> None:
    server = servers(greet=False)
    proxy = tcp_proxy(listener() + upstream("echo", [server.address]))
    payload = bytes(range(256)) * (32 * 1024 * 4)  # 32 MiB
    got = bytearray()
    with connect(proxy.port, timeout=30) as sock:
        def reader() -> None:
            while len(got) < len(payload):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                got.extend(chunk)

        thread = threading.Thread(target=reader)
        thread.start()
        sock.sendall(payload)
        thread.join(60)
    assert len(got) == len(payload)
    assert got == payload


def test_slow_reader_memory_bounded(servers, tcp_proxy) -> None:
    """A client that reads slowly: the server is held (back-pressure), the proxy
    does not buffer what the server would send."""
    total = 64 * 1024 * 1024
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))  # listens once the proxy is up (its start-up probe must not
    # take the one connection served)
    sent = [0]

    def flood() -> None:
        conn, _ = srv.accept()
        conn.settimeout(20)
        block = b"x" * 65536
        try:
            while sent[0] < total:
                conn.sendall(block)
                sent[0] += len(block)
        except OSError:
            pass
        finally:
            conn.close()

    try:
        proxy = tcp_proxy(listener() + upstream("echo", [f"127.0.0.1:{srv.getsockname()[1]}"]))
        srv.listen(1)
        threading.Thread(target=flood, daemon=True).start()
        workers = proxy.wait_worker_pids(1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", proxy.port))
        with sock, RssSampler(workers[0]) as rss:
            sock.recv(1000)
            time.sleep(1.0)  # nobody reads: everything stalls
            stalled = sent[0]
            time.sleep(0.5)
            assert sent[0] == stalled  # the server is held back
            assert stalled < total // 4, stalled  # socket buffers only, not the whole flood
            got = 0
            deadline = time.monotonic() + 60
            while got < total - 1000 and time.monotonic() < deadline:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
            assert got >= total - 1000
        assert rss.growth_mib < 16, rss.growth_mib
    finally:
        srv.close()


def test_client_reset_passed_to_server(servers, tcp_proxy) -> None:
    server = servers(b"r")
    proxy = tcp_proxy(listener() + upstream("echo", [server.address]))
    sock = connect(proxy.port)
    assert read_line(sock) == b"r\n"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    assert wait_for(lambda: server.resets == 1), server.resets
    assert wait_for(lambda: any("client_reset" in line for line in proxy.access_log()))


def test_server_reset_passed_to_client(tcp_proxy) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))  # listens once the proxy is up (its start-up probe must not
    # take the one connection served)

    def serve() -> None:
        conn, _ = srv.accept()
        conn.sendall(b"x")
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    try:
        proxy = tcp_proxy(listener() + upstream("echo", [f"127.0.0.1:{srv.getsockname()[1]}"]))
        srv.listen(1)
        threading.Thread(target=serve, daemon=True).start()
        with connect(proxy.port) as sock:
            assert sock.recv(1) == b"x"
            with pytest.raises(ConnectionResetError):
                sock.recv(10)
    finally:
        srv.close()


# -- balancing --------------------------------------------------------------------------

def test_round_robin_across_two_servers(servers, tcp_proxy) -> None:
    a, b = servers(b"a"), servers(b"b")
    proxy = tcp_proxy(listener() + upstream("echo", [a.address, b.address]))
    names = []
    for _ in range(6):
        with connect(proxy.port) as sock:
            names.append(read_line(sock))
    assert sorted(names) == [b"a\n"] * 3 + [b"b\n"] * 3


def test_hash_keeps_a_client_on_one_server(servers, tcp_proxy) -> None:
    a, b = servers(b"a"), servers(b"b")
    proxy = tcp_proxy(listener() + upstream("echo", [a.address, b.address],
                                            'balance = "maglev"'))
    names = set()
    for _ in range(6):
        with connect(proxy.port) as sock:
            names.add(read_line(sock))
    assert len(names) == 1


def test_dead_server_skipped(servers, tcp_proxy) -> None:
    live = servers(b"live")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens
    proxy = tcp_proxy(listener() + upstream("echo", [dead, live.address]))
    for _ in range(4):
        with connect(proxy.port) as sock:
            assert read_line(sock) == b"live\n"
    assert "connect failed" in proxy.log()


def test_every_server_dead_closes_the_client(tcp_proxy) -> None:
    proxy = tcp_proxy(listener() + upstream("echo", [f"127.0.0.1:{free_port()}"]))
    with connect(proxy.port) as sock:
        assert read_all(sock) == b""
    assert wait_for(lambda: any("connect_failed" in line for line in proxy.access_log()))


def test_health_check_down_server_skipped(servers, tcp_proxy) -> None:
    a = servers(b"a")
    # b accepts connections (so a connect would work) but its health check fails:
    # the check probes a port nothing listens on... via a server that closes.
    b = servers(b"b")
    b.stop()  # down: nothing listens any more
    proxy = tcp_proxy(listener() + upstream(
        "echo", [a.address, b.address],
        'health_check = { type = "tcp", interval = "200ms", timeout = "100ms", fall = 1 }\n'
        'eject = { failures = 0 }'))
    assert wait_for(lambda: "is DOWN" in proxy.log(), 10), proxy.log()
    for _ in range(4):
        with connect(proxy.port) as sock:
            assert read_line(sock) == b"a\n"
    # Nothing tried b after its verdict: no connect failure logged for it.
    assert f"upstream {b.address}: connect" not in proxy.log().split("is DOWN", 1)[1]


def test_max_conns_respected(servers, tcp_proxy) -> None:
    a = servers(b"a")
    proxy = tcp_proxy(listener() + upstream(
        "echo", [f'{{ address = "{a.address}", max_conns = 2 }}']))
    assert wait_for(lambda: a.accepted == 1 and a.active == 0)  # the start-up probe is gone
    held = [connect(proxy.port) for _ in range(2)]
    try:
        for sock in held:
            assert read_line(sock) == b"a\n"
        with connect(proxy.port) as third:
            assert read_all(third) == b""  # refused: closed
        assert a.peak == 2
        assert "max_conns" in proxy.log()
    finally:
        for sock in held:
            sock.close()
    # Room again once one leaves.
    assert wait_for(lambda: a.active == 0)
    with connect(proxy.port) as sock:
        assert read_line(sock) == b"a\n"


def test_backup_used_when_primary_dead(servers, tcp_proxy) -> None:
    backup = servers(b"backup")
    proxy = tcp_proxy(listener() + upstream(
        "echo", [f"127.0.0.1:{free_port()}", f'{{ address = "{backup.address}", backup = true }}']))
    with connect(proxy.port) as sock:
        assert read_line(sock) == b"backup\n"


# -- timeouts and limits ----------------------------------------------------------------

def test_idle_timeout(servers, tcp_proxy) -> None:
    a = servers(b"a")
    proxy = tcp_proxy(listener(more='idle_timeout = "1s"') + upstream("echo", [a.address]))
    with connect(proxy.port, timeout=10) as sock:
        assert read_line(sock) == b"a\n"
        # Activity keeps it open past the timeout...
        for _ in range(4):
            time.sleep(0.4)
            sock.sendall(b"ping")
            assert sock.recv(10) == b"ping"
        # ... silence closes it.
        start = time.monotonic()
        assert read_all(sock) == b""
        waited = time.monotonic() - start
    assert 0.7 < waited < 5, waited
    assert wait_for(lambda: any("idle_timeout" in line for line in proxy.access_log()))


def test_access_list_refuses(servers, tcp_proxy) -> None:
    a = servers(b"a")
    proxy = tcp_proxy(listener(more='access = { deny = ["127.0.0.0/8"] }')
                      + upstream("echo", [a.address]))
    with connect(proxy.port) as sock:
        assert read_all(sock) == b""
    assert a.accepted == 0
    assert wait_for(lambda: any("denied" in line for line in proxy.access_log()))


def test_connections_per_client_limit(servers, tcp_proxy) -> None:
    a = servers(b"a")
    proxy = tcp_proxy(listener() + upstream("echo", [a.address])
                      + "[limits]\nmax_connections_per_ip = 1\n")
    with connect(proxy.port) as first:
        assert read_line(first) == b"a\n"
        with connect(proxy.port) as second:
            assert read_all(second) == b""
    assert wait_for(lambda: a.active == 0)
    with connect(proxy.port) as again:
        assert read_line(again) == b"a\n"


def test_proxy_protocol_in(servers, tcp_proxy) -> None:
    a = servers(b"a")
    proxy = tcp_proxy(listener(more="proxy_protocol = true") + upstream("echo", [a.address]),
                      probe_logged=False)
    with connect(proxy.port) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nafter")
        assert read_line(sock) == b"a\n"
        assert sock.recv(10) == b"after"  # the header is not forwarded
    assert wait_for(lambda: any(line.startswith("192.0.2.7 ") for line in proxy.access_log()))


def test_json_access_log(servers, tcp_proxy) -> None:
    a = servers(b"a")
    proxy = tcp_proxy(listener() + upstream("echo", [a.address]), log_extra='format = "json"')
    with connect(proxy.port) as sock:
        assert read_line(sock) == b"a\n"
        sock.sendall(b"12345")
        assert sock.recv(5) == b"12345"
    assert wait_for(lambda: any('"bytes_in":5' in line for line in proxy.access_log()))
    record = json.loads(next(line for line in proxy.access_log() if '"bytes_in":5' in line))
    assert record["kind"] == "tcp" and record["server"] == a.address
    assert record["bytes_out"] == 7 and record["end"] == "closed"
    assert record["listener"] == f"127.0.0.1:{proxy.port}" and record["upstream"] == "echo"


# -- SNI routing (passthrough) ----------------------------------------------------------

@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(servers, ca: trustme.CA, name: str) -> TcpServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(context)
    return servers(name.encode(), context=context)


def tls_client(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


SNI = """
sni = [
  { names = ["a.example.com"], upstream = "a" },
  { names = ["*.b.example.com"], upstream = "b" },
]
client_hello_timeout = "1s"
"""


@pytest.fixture
def sni_setup(servers, tcp_proxy, ca) -> tuple[ProxyProcess, TcpServer, TcpServer, TcpServer]:
    a = tls_server(servers, ca, "a.example.com")
    b = tls_server(servers, ca, "x.b.example.com")
    d = tls_server(servers, ca, "default.example.com")
    proxy = tcp_proxy(listener("d", SNI) + upstream("a", [a.address])
                      + upstream("b", [b.address]) + upstream("d", [d.address]))
    return proxy, a, b, d


def tls_exchange(port: int, ca: trustme.CA, name: str | None,
                 check: str | None = None) -> tuple[bytes, dict]:
    context = tls_client(ca)
    if name is None:
        context.check_hostname = False
    with connect(port) as raw, context.wrap_socket(raw, server_hostname=name) as sock:
        cert = sock.getpeercert()
        greeting = read_line(sock)
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    return greeting, cert


def cert_names(cert: dict) -> list[str]:
    return [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]


def test_sni_routes_to_the_servers_own_certificate(sni_setup, ca) -> None:
    proxy, _a, _b, _d = sni_setup
    greeting, cert = tls_exchange(proxy.port, ca, "a.example.com")
    assert greeting == b"a.example.com\n" and cert_names(cert) == ["a.example.com"]
    greeting, cert = tls_exchange(proxy.port, ca, "x.b.example.com")
    assert greeting == b"x.b.example.com\n" and cert_names(cert) == ["x.b.example.com"]
    # Upper case: names are compared without case.
    greeting, _ = tls_exchange(proxy.port, ca, "A.EXAMPLE.COM")
    assert greeting == b"a.example.com\n"


def test_sni_unknown_and_missing_go_to_the_default(sni_setup, ca) -> None:
    proxy, a, b, d = sni_setup
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_exchange(proxy.port, ca, "other.example.com")  # reached d, whose name differs
    assert wait_for(lambda: d.accepted == 1)
    greeting, _cert = tls_exchange(proxy.port, ca, None)  # no SNI at all
    assert greeting == b"default.example.com\n"
    assert a.accepted == 0 and b.accepted == 0


def test_sni_without_default_closes(servers, tcp_proxy, ca) -> None:
    a = tls_server(servers, ca, "a.example.com")
    proxy = tcp_proxy('[[listeners]]\naddress = "127.0.0.1:PORT"\nmode = "tcp"\n'
                      'sni = [{ names = ["a.example.com"], upstream = "a" }]\n'
                      + upstream("a", [a.address]))
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        tls_exchange(proxy.port, ca, "nope.example.com")
    assert a.accepted == 0
    assert "no upstream for server name nope.example.com" in proxy.log()


def test_client_hello_split_in_pieces(sni_setup, ca) -> None:
    """The ClientHello in single-byte TCP writes, then re-cut into several TLS
    records: the proxy waits for all of it and passes it on unchanged."""
    proxy, a, _b, d = sni_setup
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    obj = tls_client(ca).wrap_bio(incoming, outgoing, server_hostname="a.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 22
    body = hello[5:]
    # Three records of the same handshake message.
    cuts = [0, 7, 100, len(body)]
    records = b"".join(hello[:3] + struct.pack("!H", cuts[i + 1] - cuts[i])
                       + body[cuts[i]:cuts[i + 1]] for i in range(3))
    with connect(proxy.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(records)):
            sock.send(records[i:i + 1])
            if i % 50 == 0:
                time.sleep(0.001)
        # The server (a.example.com) got a ClientHello cut into records and answers it:
        # OpenSSL accepts a handshake message spread over records.
        data = sock.recv(5)
        assert data[:1] == b"\x16", data  # its ServerHello
    assert wait_for(lambda: a.accepted == 1)
    assert d.accepted == 0


def test_garbage_first_bytes_close(sni_setup) -> None:
    proxy, a, b, d = sni_setup
    with connect(proxy.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        assert read_all(sock) == b""
    with connect(proxy.port) as sock:
        # A handshake record whose message is not a ClientHello.
        sock.sendall(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
        assert read_all(sock) == b""
    for _ in range(3):
        with connect(proxy.port) as sock:
            sock.sendall(b"\x00garbage")
            assert read_all(sock) == b""
    assert a.accepted == b.accepted == d.accepted == 0
    # Logged, but at most once per 10 s and kind (scanners must not drown the log).
    assert proxy.log().count("not a TLS ClientHello") == 1
    assert proxy.log().count("malformed TLS ClientHello") == 1
    assert wait_for(lambda: sum("bad_hello" in line for line in proxy.access_log()) >= 5)


def test_client_hello_timeout(sni_setup) -> None:
    proxy, _a, _b, _d = sni_setup
    with connect(proxy.port) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of one, then nothing
        start = time.monotonic()
        assert read_all(sock) == b""
        assert time.monotonic() - start < 5
    assert "no whole ClientHello within 1 s" in proxy.log()


def test_client_hello_too_big(servers, tcp_proxy, ca) -> None:
    a = tls_server(servers, ca, "a.example.com")
    proxy = tcp_proxy(listener("a", 'sni = [{ names = ["a.example.com"], upstream = "a" }]\n'
                                    "client_hello_max_bytes = 512")
                      + upstream("a", [a.address]))
    with connect(proxy.port) as sock:
        sock.sendall(b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc")  # announces ~16 KiB
        assert read_all(sock) == b""
    assert "ClientHello larger than 512 bytes" in proxy.log()


# -- TLS terminated by the proxy --------------------------------------------------------

@pytest.mark.parametrize("engine", ["openssl", "python"])
def test_tls_terminated_then_plain_bytes(servers, tcp_proxy, ca, tmp_path, engine) -> None:
    a = servers(b"plain")
    cert = ca.issue_cert("proxy.example.com")
    cert_path, key_path = tmp_path / f"c{engine}.pem", tmp_path / f"k{engine}.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    proxy = tcp_proxy(listener(more=f'tls = {{ certificates = [{{ cert = "{cert_path}", '
                                    f'key = "{key_path}" }}], engine = "{engine}" }}')
                      + upstream("echo", [a.address]), probe_logged=False)
    context = tls_client(ca)
    with connect(proxy.port) as raw, \
            context.wrap_socket(raw, server_hostname="proxy.example.com") as sock:
        assert cert_names(sock.getpeercert()) == ["proxy.example.com"]
        assert read_line(sock) == b"plain\n"
        sock.sendall(b"through")
        assert sock.recv(7) == b"through"


@pytest.mark.parametrize("engine", ["openssl", "python"])
def test_tls_terminated_after_a_proxy_header(servers, tcp_proxy, ca, tmp_path, engine) -> None:
    """proxy_protocol = true with tls: the PROXY header in the clear, then the TLS
    handshake, then plain bytes to the server; the header's address is logged."""
    a = servers(b"plain")
    cert = ca.issue_cert("proxy.example.com")
    cert_path, key_path = tmp_path / f"pc{engine}.pem", tmp_path / f"pk{engine}.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    proxy = tcp_proxy(listener(more=f'proxy_protocol = true\ntls = {{ certificates = [{{ '
                                    f'cert = "{cert_path}", key = "{key_path}" }}], '
                                    f'engine = "{engine}" }}')
                      + upstream("echo", [a.address]), probe_logged=False)
    context = tls_client(ca)
    with connect(proxy.port) as raw:
        raw.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 5555 443\r\n")
        with context.wrap_socket(raw, server_hostname="proxy.example.com") as sock:
            assert read_line(sock) == b"plain\n"
            sock.sendall(b"through")
            assert sock.recv(7) == b"through"
    assert wait_for(lambda: any(line.startswith("192.0.2.9 ") for line in proxy.access_log()))
    assert "Traceback" not in proxy.log()


# -- shutdown -----------------------------------------------------------------------------

def test_graceful_shutdown_lets_a_tunnel_finish(servers, tcp_proxy) -> None:
    a = servers(b"a")
    proxy = tcp_proxy(listener() + upstream("echo", [a.address]))
    with connect(proxy.port) as sock:
        assert read_line(sock) == b"a\n"
        proxy.signal(15)
        time.sleep(0.5)
        sock.sendall(b"still here")
        assert sock.recv(10) == b"still here"
    assert proxy.wait(10) == 0


# -- metrics -------------------------------------------------------------------------------

def test_metrics_count_connections_bytes_and_servers(servers, tcp_proxy) -> None:
    import http.client

    from prometheus_client.parser import text_string_to_metric_families

    a = servers(b"a")
    dead = f"127.0.0.1:{free_port()}"
    admin = free_port()
    proxy = tcp_proxy(listener() + upstream("echo", [a.address, dead])
                      + f'[admin]\naddress = "127.0.0.1:{admin}"\n')

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    assert wait_for(lambda: admin_up(admin))
    before = scrape()
    held = connect(proxy.port)
    try:
        assert read_line(held) == b"a\n"
        for _ in range(3):
            with connect(proxy.port) as sock:
                assert read_line(sock) == b"a\n"
                sock.sendall(b"x" * 1000)
                got = b""
                while len(got) < 1000:
                    got += sock.recv(1000)
        time.sleep(0.3)
        now = scrape()
    finally:
        held.close()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return now.get(key, 0.0) - before.get(key, 0.0)

    assert delta("fastproxy_connections_accepted_total") == 4
    assert delta("fastproxy_connections_closed_total") == 3
    assert now[("fastproxy_connections_open", ())] == 1
    assert delta("fastproxy_bytes_received_total") == 3000
    assert delta("fastproxy_bytes_sent_total") == 3000 + 4 * 2
    assert delta("fastproxy_upstream_server_requests_total", upstream="echo",
                 server=a.address) == 4
    # Round robin sent some to the dead server first: failed connects, then a.
    assert delta("fastproxy_upstream_server_failures_total", upstream="echo",
                 server=dead) >= 1
    assert now[("fastproxy_upstream_server_in_flight", (("server", a.address),
                                                        ("upstream", "echo")))] == 1


def admin_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_connect_timeout_moves_to_the_next_server(servers, tcp_proxy) -> None:
    """A server whose accept queue is full drops our SYN: the connect times out after
    the upstream's connect_timeout and the next server takes the connection."""
    live = servers(b"live")
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill its accept queue; later SYNs are dropped
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(stuck.getsockname())
            fillers.append(f)
        time.sleep(0.1)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(stuck.getsockname())
            pytest.skip("this kernel completes connects to a full accept queue")
        except (TimeoutError, OSError):
            pass
        finally:
            probe.close()
        address = f"127.0.0.1:{stuck.getsockname()[1]}"
        proxy = tcp_proxy(listener() + upstream("echo", [address, live.address],
                                                'connect_timeout = "300ms"\n'
                                                "eject = { failures = 0 }"))
        for _ in range(2):  # round robin: one of these starts with the stuck server
            with connect(proxy.port) as sock:
                assert read_line(sock) == b"live\n"
        assert "connect timed out" in proxy.log()
    finally:
        for f in fillers:
            f.close()
        stuck.close()


def test_reload_keeps_open_connections(servers, tcp_proxy) -> None:
    a, b = servers(b"a"), servers(b"b")
    proxy = tcp_proxy(listener() + upstream("echo", [a.address]))
    with connect(proxy.port) as old:
        assert read_line(old) == b"a\n"
        proxy.config_path.write_text(proxy.config_path.read_text().replace(a.address,
                                                                           b.address))
        proxy.signal(1)  # SIGHUP
        assert wait_for(lambda: "reload" in proxy.log().lower() and
                        len(proxy.worker_pids()) >= 1, 10)

        def new_one() -> bool:
            with connect(proxy.port) as sock:
                return read_line(sock) == b"b\n"

        assert wait_for(new_one, 10)
        old.sendall(b"still the old one")  # its worker drains, the tunnel goes on
        assert old.recv(100) == b"still the old one"


def test_admin_drain_moves_new_connections(servers, tcp_proxy) -> None:
    import http.client

    a, b = servers(b"a"), servers(b"b")
    admin = free_port()
    proxy = tcp_proxy(listener() + upstream("echo", [a.address, b.address])
                      + f'[admin]\naddress = "127.0.0.1:{admin}"\n')
    assert wait_for(lambda: admin_up(admin))
    held = connect(proxy.port)
    try:
        first = read_line(held)
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        conn.request("POST", "/servers/state", body=json.dumps(
            {"upstream": "echo", "server": a.address, "state": "drain"}).encode())
        assert conn.getresponse().status == 200
        conn.close()
        for _ in range(4):
            with connect(proxy.port) as sock:
                assert read_line(sock) == b"b\n"
        # A connection that was on a goes on.
        held.sendall(b"ping")
        assert held.recv(4) == b"ping"
        assert first in (b"a\n", b"b\n")
    finally:
        held.close()


def test_sni_after_a_proxy_protocol_header(servers, tcp_proxy, ca) -> None:
    a = tls_server(servers, ca, "a.example.com")
    proxy = tcp_proxy(listener("a", 'sni = [{ names = ["a.example.com"], upstream = "a" }]\n'
                                    "proxy_protocol = true") + upstream("a", [a.address]),
                      probe_logged=False)
    with connect(proxy.port) as raw:
        raw.sendall(b"PROXY TCP4 198.51.100.9 127.0.0.1 4000 443\r\n")
        with tls_client(ca).wrap_socket(raw, server_hostname="a.example.com") as sock:
            assert cert_names(sock.getpeercert()) == ["a.example.com"]
            assert read_line(sock) == b"a.example.com\n"
    assert wait_for(lambda: any(line.startswith("198.51.100.9 ") and "sni=a.example.com" in line
                                for line in proxy.access_log()))


def test_many_connections_at_once(servers, tcp_proxy) -> None:
    """200 clients at once, each with its own bytes: all echoed, none mixed up, and
    every connection is over (and logged) afterwards."""
    import concurrent.futures

    a = servers(b"a", greet=False)
    proxy = tcp_proxy(listener() + upstream("echo", [a.address]))

    def one(i: int) -> bool:
        payload = (b"%05d" % i) * 2000
        with connect(proxy.port, timeout=20) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return read_all(sock) == payload

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(200)))
    assert all(results)
    assert wait_for(lambda: len(proxy.access_log()) >= 201, 10)
    assert sum(" closed " in line for line in proxy.access_log()) >= 200


# -- PROXY protocol to the servers ------------------------------------------------------

def test_proxy_header_to_the_server(servers, tcp_proxy) -> None:
    """`proxy_protocol` on the upstream: each connection to the server starts with a
    header naming the client and the address it reached (HAProxy's send-proxy)."""
    from fastproxy._proxyproto import parse
    a = servers(b"a", greet=False)  # echoes everything, the header included
    proxy = tcp_proxy(listener() + upstream("echo", [a.address], 'proxy_protocol = "v1"'))
    with connect(proxy.port) as sock:
        sock.sendall(b"hello")
        data = b""
        while not data.endswith(b"hello"):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        header = parse(data)
        assert header is not None, data
        assert data.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ")
        assert header[1:] == (b"127.0.0.1", sock.getsockname()[1], b"127.0.0.1", proxy.port)
        assert data[header[0]:] == b"hello"


def test_proxy_header_in_passed_on_to_the_server(servers, tcp_proxy) -> None:
    """A client named by the listener's PROXY header is the one named to the server
    (v2 here), with the port and destination that header gave."""
    from fastproxy._proxyproto import parse
    a = servers(b"a", greet=False)
    proxy = tcp_proxy(listener(more="proxy_protocol = true")
                      + upstream("echo", [a.address], 'proxy_protocol = "v2"'),
                      probe_logged=False)
    with connect(proxy.port) as sock:
        sock.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 443\r\nhi")
        data = b""
        while not data.endswith(b"hi"):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"\r\n\r\n\x00\r\nQUIT\n")  # the v2 signature
        header = parse(data)
        assert header is not None
        assert header[1:] == (b"192.0.2.7", 5555, b"198.51.100.1", 443)
        assert data[header[0]:] == b"hi"
