"""An upstream that fails, at each point of an exchange: the client gets a 502 or
504 when nothing was answered yet, a visibly cut response otherwise, and the
worker goes on serving."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from servers import (
    Origin,
    ProxyProcess,
    RawClient,
    Received,
    Reply,
    free_port,
    origin_and_proxy,
)

CUT_LENGTH = (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Cut: yes\r\n\r\n" + b"a" * 100)
CUT_CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n")


def faulty(req: Received) -> Reply:
    if req.target == "/cut-length":
        return Reply(raw=CUT_LENGTH, close=True)
    if req.target == "/cut-chunked":
        return Reply(raw=CUT_CHUNKED, close=True)
    if req.target == "/cut-chunked-midchunk":
        return Reply(raw=CUT_CHUNKED + b"10\r\nonly-part", close=True)
    if req.target == "/cut-length-reset":
        return Reply(raw=CUT_LENGTH, reset=True)
    if req.target == "/garbage":
        return Reply(raw=b"this is not HTTP at all\r\n\r\n", close=True)
    if req.target == "/garbage-status":
        return Reply(raw=b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", close=True)
    if req.target == "/reset":
        return Reply(reset=True)
    if req.target == "/close-silently":
        return Reply(raw=b"", close=True)
    if req.target == "/hang":
        return Reply(delay=30.0)
    return Reply(body=f"ok {req.target}".encode())


@pytest.fixture(scope="module")
def faulty_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Origin, ProxyProcess]]:
    """One `faulty` origin and its proxy, shared by the tests of this module that
    use them (each failure is per request; the tests check the worker survives)."""
    with origin_and_proxy(tmp_path_factory.mktemp("faulty-proxy"), faulty,
                          upstream_extra='read_timeout = "1s"') as pair:
        yield pair


@pytest.fixture
def faulty_origin(faulty_pair: tuple[Origin, ProxyProcess]) -> Origin:
    return faulty_pair[0]


@pytest.fixture
def faulty_proxy(faulty_pair: tuple[Origin, ProxyProcess]) -> ProxyProcess:
    return faulty_pair[1]


def assert_worker_serves(proxy: ProxyProcess, workers_before: list[int]) -> None:
    assert len(workers_before) == 1
    with RawClient(proxy.port) as c:
        c.send(b"GET /healthy HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"ok /healthy")
    assert proxy.worker_pids() == workers_before  # the same worker, not a restarted one


# -- mid-response failures -----------------------------------------------------------

def test_content_length_response_cut_short(faulty_proxy: ProxyProcess) -> None:
    workers = faulty_proxy.wait_worker_pids(1)
    assert len(workers) == 1
    with RawClient(faulty_proxy.port) as c:
        c.send(b"GET /cut-length HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.header("Content-Length") == "1000"
        assert r.header("X-Cut") == "yes"
        assert r.framing == "length"
        assert not r.complete
        assert r.body == b"a" * 100
        assert c.closed_by_peer(5)
    assert_worker_serves(faulty_proxy, workers)


def test_content_length_response_reset_mid_body(faulty_proxy: ProxyProcess) -> None:
    workers = faulty_proxy.wait_worker_pids(1)
    with RawClient(faulty_proxy.port) as c:
        c.send(b"GET /cut-length-reset HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.header("Content-Length"), r.complete) == (200, "1000", False)
        assert len(r.body) < 1000
    assert_worker_serves(faulty_proxy, workers)


@pytest.mark.parametrize("path", ["/cut-chunked", "/cut-chunked-midchunk"])
def test_chunked_response_cut_short(faulty_proxy: ProxyProcess, path: str) -> None:
    workers = faulty_proxy.wait_worker_pids(1)
    with RawClient(faulty_proxy.port) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        r = c.read_response()
        assert r.status == 200
        assert r.framing == "chunked"
        assert not r.complete  # no last chunk: the client can tell it was cut
        assert not r.wire_body.endswith(b"0\r\n\r\n")
        assert r.body.startswith(b"hello world")
        assert c.closed_by_peer(5)
    assert_worker_serves(faulty_proxy, workers)


def test_http10_client_close_delimited_cut_is_not_length_framed(
        faulty_proxy: ProxyProcess) -> None:
    # An HTTP/1.0 client of a cut chunked response gets a close-delimited body:
    # what arrived before the cut, and no made-up Content-Length.
    workers = faulty_proxy.wait_worker_pids(1)
    with RawClient(faulty_proxy.port) as c:
        c.send(b"GET /cut-chunked HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.framing == "close"
        assert r.header("Content-Length") is None
        assert r.body == b"hello world"
    assert_worker_serves(faulty_proxy, workers)


# -- failures before any response ------------------------------------------------------

@pytest.mark.parametrize("path", ["/garbage", "/garbage-status"])
def test_garbage_instead_of_status_line_is_502(faulty_proxy: ProxyProcess, path: str) -> None:
    workers = faulty_proxy.wait_worker_pids(1)
    with RawClient(faulty_proxy.port) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        r = c.read_response()
        assert r.status == 502
        assert r.body == b"502 Bad Gateway\n"
        assert b"not HTTP" not in r.raw
        # The client connection is not at fault: it stays usable.
        c.send(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().body == b"ok /after"
    assert_worker_serves(faulty_proxy, workers)


@pytest.mark.parametrize("path", ["/reset", "/close-silently"])
def test_upstream_reset_or_close_before_responding_is_502(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess],
        path: str) -> None:
    # Own proxy: the upstream connection is fresh, not a pooled one (which would
    # rightly be retried once for a GET, see test_keepalive).
    origin = make_origin(faulty)
    proxy = make_proxy({"backend": [origin.address]})
    workers = proxy.wait_worker_pids(1)
    with RawClient(proxy.port) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        r = c.read_response()
        assert (r.status, r.body) == (502, b"502 Bad Gateway\n")
    # A fresh connection that failed is not retried: the origin saw it once.
    assert [q.target for q in origin.requests] == [path]
    assert_worker_serves(proxy, workers)


def test_connection_refused_is_502(make_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = make_proxy({"backend": [f"127.0.0.1:{free_port()}"]})
    workers = proxy.wait_worker_pids(1)
    start = time.monotonic()
    r = requests.get(proxy.url("/x"), timeout=5)
    assert r.status_code == 502
    assert r.text == "502 Bad Gateway\n"
    assert time.monotonic() - start < 2
    r = requests.get(proxy.url("/y"), timeout=5)
    assert r.status_code == 502
    assert len(workers) == 1
    assert proxy.worker_pids() == workers


def test_upstream_never_answers_is_504_within_read_timeout(
        faulty_origin: Origin, faulty_proxy: ProxyProcess) -> None:
    workers = faulty_proxy.wait_worker_pids(1)
    with RawClient(faulty_proxy.port, timeout=10) as c:
        start = time.monotonic()
        c.send(b"GET /hang HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        elapsed = time.monotonic() - start
        assert (r.status, r.body) == (504, b"504 Gateway Timeout\n")
        # read_timeout is 1 s; deadlines are checked every 0.25 s.
        assert 0.9 <= elapsed < 2.5
        c.send(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().body == b"ok /after"
    assert_worker_serves(faulty_proxy, workers)


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full, so that a SYN to it is dropped.

    Linux drops a SYN for a listener whose accept queue is full (it does not
    refuse it), so connecting hangs until the client gives up: a connect timeout
    on loopback. With listen(0) the queue holds one connection; we fill it and
    check that a further connect does hang before using it.
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(2):
            s = socket.socket()
            s.setblocking(False)
            fillers.append(s)
            s.connect_ex(("127.0.0.1", port))
        time.sleep(0.1)
        probe = socket.socket()
        fillers.append(probe)
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            pass
        else:
            pytest.fail("could not fill the accept queue: a connect succeeded")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_connect_timeout_is_504(blackhole: int, make_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = make_proxy({"backend": [f"127.0.0.1:{blackhole}"]},
                       upstream_extra='connect_timeout = "500ms"')
    start = time.monotonic()
    r = requests.get(proxy.url("/x"), timeout=10)
    elapsed = time.monotonic() - start
    assert (r.status_code, r.text) == (504, "504 Gateway Timeout\n")
    assert 0.4 <= elapsed < 2.0


def test_connect_timeout_then_next_server(
        blackhole: int, origin: Origin, make_proxy: Callable[..., ProxyProcess]) -> None:
    # Nothing was sent to the server that timed out: the next one takes the request.
    proxy = make_proxy({"backend": [f"127.0.0.1:{blackhole}", origin.address]},
                       upstream_extra='connect_timeout = "300ms"')
    with requests.Session() as s:
        for i in range(4):
            r = s.get(proxy.url(f"/t{i}"), timeout=10)
            assert (r.status_code, r.text) == (200, f"origin /t{i}")


def test_refused_server_is_skipped(
        origin: Origin, make_proxy: Callable[..., ProxyProcess]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    proxy = make_proxy({"backend": [dead, origin.address]})
    with requests.Session() as s:
        for i in range(10):
            r = s.get(proxy.url(f"/r{i}"), timeout=5)
            assert (r.status_code, r.text) == (200, f"origin /r{i}")
    for i in range(6):  # new client connections too
        r = requests.get(proxy.url(f"/n{i}"), timeout=5)
        assert (r.status_code, r.text) == (200, f"origin /n{i}")
    assert [q.target for q in origin.requests] == (
        [f"/r{i}" for i in range(10)] + [f"/n{i}" for i in range(6)])


def test_all_servers_refuse_is_502(make_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = make_proxy({"backend": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]})
    r = requests.get(proxy.url("/x"), timeout=5)
    assert (r.status_code, r.text) == (502, "502 Bad Gateway\n")


def test_upstream_that_stops_reading_the_body_is_504_within_send_timeout(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    """send_timeout bounds how long the upstream may stall reading our request;
    read_timeout (long here) must not be what ends it."""
    origin = make_origin()
    origin.stream_request_bodies = True
    origin.body_read_delay = 30.0  # reads the head, then nothing for the whole test
    proxy = make_proxy({"backend": [origin.address]},
                       upstream_extra='send_timeout = "1s"\nread_timeout = "20s"',
                       extra='[limits]\nmax_body_bytes = 0\n')
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    total = 256 * 1024 * 1024
    sock.sendall(b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n" % total)

    def upload() -> None:
        chunk = b"u" * 65536
        try:
            for _ in range(total // len(chunk)):
                sock.sendall(chunk)
        except OSError:
            pass  # the proxy gave up on the request and closed

    sender = threading.Thread(target=upload, daemon=True)
    start = time.monotonic()
    sender.start()
    try:
        got = b""
        while b"\r\n\r\n" not in got:
            data = sock.recv(65536)
            if not data:
                break
            got += data
        elapsed = time.monotonic() - start
        assert got.startswith(b"HTTP/1.1 504 "), got[:200]
        assert elapsed < 10, elapsed
    finally:
        sock.close()
        sender.join(10)
