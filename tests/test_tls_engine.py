"""The "openssl" TLS engine (fastproxy._tls) through `fastproxy serve`: what its
BIO layer must get right beyond a plain request (test_tls_e2e runs those with
both engines): pipelined requests, a client that half-closes, large bodies both
ways under back-pressure, one-record responses written straight to a socket that
stops taking them, refused renegotiation, the handshake timeout, malformed
handshakes, and no traceback in the log for any of it."""

from __future__ import annotations

import hashlib
import os
import random
import re
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

import pytest
import trustme

from servers import Origin, ProxyProcess, Received, Reply, answered, free_port, starve_descriptors

OriginFactory = Callable[..., Origin]
BIG = 8 * 1024 * 1024


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
def start_proxy(tmp_path: Path, certs: Path) -> Iterator[Callable[..., ProxyProcess]]:
    started: list[ProxyProcess] = []

    def start(origin: Origin, tls_extra: str = "", extra: str = "", server: str = "",
              address: str = "127.0.0.1:{port}") -> ProxyProcess:
        port = free_port()
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        text = (f'[server]\nworkers = 1\nshutdown_timeout = "5s"\n{server}\n'
                f'[log]\naccess = "off"\nlevel = "info"\n\n'
                f'[[listeners]]\naddress = "{address.format(port=port)}"\n'
                f'[listeners.tls]\ncertificates = [{{ cert = "{certs}/site.pem", '
                f'key = "{certs}/site.key" }}]\nengine = "openssl"\n{tls_extra}\n'
                f'[upstreams.app]\nservers = ["{origin.address}"]\n'
                f'[[routes]]\nupstream = "app"\n{extra.replace("{port}", str(port))}\n')
        proc = ProxyProcess(text, workdir, port)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        log = proc.log()
        proc.stop()
        assert "Traceback" not in log and "Fatal error" not in log, log


class BioClient:
    """A TLS client over memory BIOs on a raw socket, so that the test decides
    when each TLS and TCP event happens (close_notify, FIN)."""

    def __init__(self, port: int, certs: Path, timeout: float = 10.0) -> None:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="site.example")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._push()
                self._pull()
        self._push()

    def _push(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _pull(self) -> bool:
        data = self.sock.recv(1 << 16)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._push()

    def close_notify(self) -> None:
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._push()

    def read_all(self) -> bytes:
        """Plaintext until the server's close_notify or FIN."""
        out = bytearray()
        while True:
            try:
                chunk = self.tls.read(1 << 16)
                if not chunk:  # the server's close_notify
                    return bytes(out)
                out += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return bytes(out)
            if not self._pull():
                try:
                    out += self.tls.read(1 << 16)
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLWantReadError):
                    pass
                return bytes(out)

    def close(self) -> None:
        self.sock.close()


def https(port: int, certs: Path, request: bytes) -> bytes:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="site.example") as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
        return data


GET = b"GET /%d HTTP/1.1\r\nHost: site.example\r\n\r\n"


def test_pipelined_requests_in_one_record(make_origin: OriginFactory,
                                          start_proxy: Callable[..., ProxyProcess],
                                          certs: Path) -> None:
    proxy = start_proxy(make_origin(name="app"))
    client = BioClient(proxy.port, certs)
    try:
        client.send(b"".join(GET % i for i in range(20))
                    + b"GET /last HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n")
        data = client.read_all()
    finally:
        client.close()
    assert data.count(b"HTTP/1.1 200 ") == 21
    assert re.findall(rb"app /(?:\d+|last)", data) == [
        f"app /{i}".encode() for i in range(20)] + [b"app /last"]


@pytest.mark.parametrize("how", ["fin", "close_notify"])
def test_half_closed_client_gets_its_answer(make_origin: OriginFactory,
                                            start_proxy: Callable[..., ProxyProcess],
                                            certs: Path, how: str) -> None:
    origin = make_origin(lambda req: Reply(body=b"slow answer", delay=0.3))
    proxy = start_proxy(origin)
    client = BioClient(proxy.port, certs)
    try:
        client.send(GET % 1)
        if how == "close_notify":
            client.close_notify()
        client.sock.shutdown(socket.SHUT_WR)
        data = client.read_all()
    finally:
        client.close()
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"slow answer")


def test_large_bodies_both_ways_under_back_pressure(make_origin: OriginFactory,
                                                    start_proxy: Callable[..., ProxyProcess],
                                                    certs: Path) -> None:
    payload = random.Random(7).randbytes(BIG)

    def handler(req: Received) -> Reply:
        if req.method == "POST":
            return Reply(body=f"{req.body_length} {req.body_crc32}".encode())
        return Reply(stream=(payload[i:i + 65536] for i in range(0, BIG, 65536)),
                     stream_length=BIG)

    origin = make_origin(handler)
    origin.stream_request_bodies = True
    origin.body_read_delay = 0.5  # the upstream holds the body back: the client's reading pauses
    origin.body_chunk_delay = 0.01
    proxy = start_proxy(origin)

    upload = https(proxy.port, certs, b"POST /up HTTP/1.1\r\nHost: site.example\r\n"
                   b"Connection: close\r\nContent-Length: %d\r\n\r\n" % BIG + payload)
    assert upload.startswith(b"HTTP/1.1 200"), upload[:200]
    assert upload.endswith(f"{BIG} {zlib.crc32(payload)}".encode())

    # A client that does not read for a while: the proxy's writes pause and resume.
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", proxy.port))
    with ctx.wrap_socket(raw, server_hostname="site.example") as sock:
        sock.sendall(b"GET /down HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n")
        time.sleep(1.0)
        data = bytearray()
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == BIG and hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()


def test_one_record_responses_while_the_client_does_not_read(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess],
        certs: Path) -> None:
    """Responses that fit in one record go from OpenSSL's buffer to the socket; when
    the kernel takes only part of one (the client reads nothing for a while), the
    rest and everything after it must go through the transport, in order."""
    count, size = 400, 12000  # 4.8 MB of one-record responses

    def handler(req: Received) -> Reply:
        n = int(req.target.strip("/"))
        return Reply(body=(b"%06d" % n) * (size // 6))

    proxy = start_proxy(make_origin(handler))
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", proxy.port))
    with ctx.wrap_socket(raw, server_hostname="site.example") as sock:
        sock.sendall(b"".join(GET % i for i in range(count - 1))
                     + b"GET /%d HTTP/1.1\r\nHost: site.example\r\nConnection: close\r\n\r\n"
                     % (count - 1))
        time.sleep(1.0)  # the proxy fills the socket buffers and queues the rest
        data = bytearray()
        while chunk := sock.recv(1 << 16):
            data += chunk
    bodies = re.findall(rb"HTTP/1\.1 200 [^\r]*\r\n(?:[^\r]+\r\n)*\r\n", bytes(data))
    assert len(bodies) == count
    rest = bytes(data)
    for i in range(count):
        head, _, rest = rest.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (i, head[:100])
        body, rest = rest[:size], rest[size:]
        assert body == (b"%06d" % i) * (size // 6), i
    assert rest == b""


def test_keep_alive_requests_and_both_versions(make_origin: OriginFactory,
                                               start_proxy: Callable[..., ProxyProcess],
                                               certs: Path) -> None:
    proxy = start_proxy(make_origin(name="app"))
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        ctx.maximum_version = version
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="site.example") as sock:
            for i in range(50):
                sock.sendall(GET % i)
                data = b""
                while not data.endswith(f"app /{i}".encode()):
                    chunk = sock.recv(4096)
                    assert chunk, data
                    data += chunk


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_renegotiation_is_refused(make_origin: OriginFactory,
                                  start_proxy: Callable[..., ProxyProcess],
                                  certs: Path) -> None:
    proxy = start_proxy(make_origin(name="app"))
    # s_client reads "R" at the start of a line as "renegotiate now" (TLS 1.2).
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-tls1_2",
         "-servername", "site.example", "-CAfile", str(certs / "ca.pem")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"GET /1 HTTP/1.1\r\nHost: site.example\r\n\r\n")
        proc.stdin.flush()
        time.sleep(0.5)
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        time.sleep(0.5)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert b"app /1" in out
    assert b"RENEGOTIATING" in out and b"no renegotiation" in out
    assert b"app /3" in https(proxy.port, certs,
                              b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def client_hello(certs: Path) -> bytes:
    """The first flight of a real client (a TLS 1.3 ClientHello)."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="site.example")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_handshake_timeout_closes_a_stalled_handshake(make_origin: OriginFactory,
                                                      start_proxy: Callable[..., ProxyProcess],
                                                      certs: Path) -> None:
    proxy = start_proxy(make_origin(name="app"), 'handshake_timeout = "500ms"')
    hello = client_hello(certs)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(hello[:20])  # part of a ClientHello, then nothing
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.3 < time.monotonic() - started < 3.0
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(hello)  # a whole ClientHello, then nothing
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert data.startswith(b"\x16\x03")  # the server's flight came, then the close
    assert b"app /1" in https(proxy.port, certs,
                              b"GET /1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def test_malformed_handshakes_close_only_that_connection(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess],
        certs: Path) -> None:
    proxy = start_proxy(make_origin(name="app"))
    workers = proxy.wait_worker_pids(1)
    hello = client_hello(certs)
    rng = random.Random(1)
    cases = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello",
             b"\x16\x03\x01\xff\xff" + b"\x00" * 100, b"\x15\x03\x03\x00\x02\x02\x28",
             bytes(300)]
    for _ in range(150):  # ClientHellos with a few bytes changed, cut or extended
        mutated = bytearray(hello)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        if rng.random() < 0.3:
            mutated = mutated[:rng.randrange(5, len(mutated))]
        cases.append(bytes(mutated))
    for data in cases:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    assert proxy.wait_worker_pids(1) == workers  # no worker died
    assert b"app /1" in https(proxy.port, certs,
                              b"GET /1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def test_many_connections_at_once(make_origin: OriginFactory,
                                  start_proxy: Callable[..., ProxyProcess],
                                  certs: Path) -> None:
    proxy = start_proxy(make_origin(name="app"))
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            for i in range(10):
                data = https(proxy.port, certs, b"GET /%d-%d HTTP/1.1\r\nHost: x\r\n"
                             b"Connection: close\r\n\r\n" % (n, i))
                assert data.endswith(b"app /%d-%d" % (n, i)), data
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert os.path.exists(proxy.log_path)



def read_response(client: BioClient, end: bytes) -> bytes:
    """Plaintext on a kept-alive connection until it ends with `end`."""
    out = b""
    while not out.endswith(end):
        try:
            out += client.tls.read(1 << 16)
        except ssl.SSLWantReadError:
            assert client._pull(), out
    return out


def test_max_connections_cuts_the_connection_over_the_limit(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess],
        certs: Path) -> None:
    proxy = start_proxy(make_origin(name="app"), server="max_connections = 2")
    first, second = BioClient(proxy.port, certs), BioClient(proxy.port, certs)
    try:
        for n, client in enumerate((first, second)):
            client.send(GET % n)
            assert read_response(client, b"app /%d" % n).startswith(b"HTTP/1.1 200 ")
        third = BioClient(proxy.port, certs)  # the handshake completes, then it is cut
        try:
            try:
                third.send(GET % 3)
                data = third.read_all()
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            assert data == b""
        finally:
            third.close()
        first.send(GET % 4)  # the two inside the limit are served on
        assert read_response(first, b"app /4").startswith(b"HTTP/1.1 200 ")
    finally:
        first.close()
        second.close()
    # Once the worker has seen them go, a new connection is served again.
    data = answered(lambda: https(proxy.port, certs, b"GET /again HTTP/1.1\r\nHost: x\r\n"
                                  b"Connection: close\r\n\r\n"),
                    b"app /again", (ConnectionResetError, ssl.SSLError))
    assert data.endswith(b"app /again"), data


def test_ipv6_client_address(make_origin: OriginFactory,
                             start_proxy: Callable[..., ProxyProcess], certs: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    origin = make_origin(name="app")
    # TLS on [::1]; the same port on 127.0.0.1, plain, tells the fixture the proxy is up.
    proxy = start_proxy(origin, address="[::1]:{port}",
                        extra='[[listeners]]\naddress = "127.0.0.1:{port}"\n')
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with socket.create_connection(("::1", proxy.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="site.example") as sock:
        sock.sendall(b"GET /six HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"app /six"), data
    assert origin.requests[-1].header("X-Forwarded-For") == "::1"


def test_stop_finishes_a_request_in_flight_and_closes_idle_connections(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess],
        certs: Path) -> None:
    origin = make_origin(lambda req: Reply(body=b"late answer", delay=1.0)
                         if req.target == "/slow" else Reply(body=b"quick"))
    proxy = start_proxy(origin)
    idle, busy = BioClient(proxy.port, certs), BioClient(proxy.port, certs)
    try:
        idle.send(GET % 1)
        assert read_response(idle, b"quick").startswith(b"HTTP/1.1 200 ")
        busy.send(b"GET /slow HTTP/1.1\r\nHost: site.example\r\n\r\n")
        while not origin.requests or origin.requests[-1].target != "/slow":
            time.sleep(0.02)  # the request is at the origin: in flight
        os.kill(proxy.pid, signal.SIGTERM)
        assert idle.read_all() == b""  # closed at once, with nothing sent
        data = busy.read_all()
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"late answer"), data
    finally:
        idle.close()
        busy.close()
    assert proxy.proc is not None and proxy.proc.wait(10) == 0


def test_out_of_descriptors_pauses_accepting_then_serves_again(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess],
        certs: Path) -> None:
    proxy = start_proxy(make_origin(name="app"))
    assert https(proxy.port, certs, b"GET /before HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n").endswith(b"app /before")
    (worker,) = proxy.worker_pids()
    starve_descriptors(proxy, worker, "accept on a TLS listener: Too many open files")
    # Its own retry picks the listener up again.
    data = answered(lambda: https(proxy.port, certs, b"GET /after HTTP/1.1\r\nHost: x\r\n"
                                  b"Connection: close\r\n\r\n"),
                    b"app /after", (OSError, ssl.SSLError))
    assert data.endswith(b"app /after"), data
    assert proxy.log().count("accept on a TLS listener") == 1  # one line, not one per retry
    assert proxy.worker_pids() == [worker]
