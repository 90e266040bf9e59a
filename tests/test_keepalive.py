"""Keep-alive on both sides: client connections carry many requests, upstream
connections are pooled and reused, and a pooled connection that the origin
closed is replaced without the client noticing; idle client connections time out."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import requests

from servers import Origin, ProxyProcess, RawClient, Received, Reply


def get(path: str, host: str = "example.test", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


# -- client side ------------------------------------------------------------------

def test_many_requests_on_one_client_connection(origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        for i in range(50):
            c.send(get(f"/r{i}"))
            r = c.read_response()
            assert (r.status, r.body, r.complete) == (200, f"origin /r{i}".encode(), True)
            assert r.header("Connection") is None  # HTTP/1.1: persistent by default
    assert [q.target for q in origin.requests] == [f"/r{i}" for i in range(50)]


def test_connection_close_from_client_is_honoured(origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        c.send(get("/a"))
        assert c.read_response().body == b"origin /a"
        c.send(get("/b", extra="Connection: close\r\n"))
        r = c.read_response()
        assert (r.status, r.body) == (200, b"origin /b")
        assert r.header("Connection") == "close"
        assert c.closed_by_peer(5)
    # The client's Connection header is hop-by-hop: the origin never sees it.
    assert origin.requests[-1].header("Connection") is None


def test_http10_client_without_keepalive_gets_answer_and_close(
        origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        c.send(b"GET /old HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body, r.complete) == (200, b"origin /old", True)
        assert r.header("Connection") == "close"
        assert c.closed_by_peer(5)
    req = origin.requests[-1]
    assert (req.target, req.version) == ("/old", "HTTP/1.1")


def test_http10_client_with_keepalive_stays_open(origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        for i in range(3):
            c.send(f"GET /k{i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            r = c.read_response()
            assert (r.status, r.body, r.complete) == (200, f"origin /k{i}".encode(), True)
            assert r.header("Connection") == "keep-alive"
            assert r.header("Content-Length") == str(len(r.body))
        # The last one without keep-alive: answered, then closed.
        c.send(b"GET /last HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"origin /last")
        assert r.header("Connection") == "close"
        assert c.closed_by_peer(5)
    assert [q.target for q in origin.requests] == ["/k0", "/k1", "/k2", "/last"]


def test_half_closed_client_gets_answer_then_close(origin: Origin, proxy: ProxyProcess) -> None:
    # A client that shuts down its sending side after a complete request still gets
    # the answer; nothing more can come from it, so the connection is then closed
    # (rather than kept idle until the keep-alive timeout, 75 s by default).
    with RawClient(proxy.port) as c:
        c.send(get("/half"))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response()
        assert (r.status, r.body, r.complete) == (200, b"origin /half", True)
        assert c.closed_by_peer(3)


def test_keepalive_timeout_after_response_sent_under_back_pressure(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    # The last response completes while the client's socket buffers are full (the
    # client pipelined requests and read nothing for a while). Once the client has
    # read everything, the connection is idle and the keepalive timeout applies.
    body = b"z" * 250_000
    origin = make_origin(lambda req: Reply(body=body))
    proxy = make_proxy({"backend": [origin.address]}, extra='[timeouts]\nkeepalive = "1s"\n')
    with RawClient(proxy.port, rcvbuf=4096, timeout=20) as c:
        c.send(get("/r") * 40)  # 10 MB of responses: more than the socket buffers hold
        time.sleep(1.0)
        for _ in range(40):
            r = c.read_response()
            assert (r.status, r.body == body) == (200, True)
        idle_since = time.monotonic()
        closed = c.closed_by_peer(3)
        idle = time.monotonic() - idle_since
    assert closed, "idle keep-alive connection still open 3 s after the response (keepalive 1 s)"
    assert idle < 2.0


def test_keepalive_timeout_closes_idle_connection(
        origin: Origin, make_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = make_proxy({"backend": [origin.address]}, extra='[timeouts]\nkeepalive = "1s"\n')
    with RawClient(proxy.port) as c:
        c.send(get("/a"))
        assert c.read_response().status == 200
        idle_since = time.monotonic()
        assert c.closed_by_peer(4)
        assert 0.7 <= time.monotonic() - idle_since < 2.0


# -- upstream side ------------------------------------------------------------------

def test_upstream_connection_reused_across_client_connections(
        origin: Origin, proxy: ProxyProcess) -> None:
    for conn in range(4):
        with requests.Session() as s:
            for i in range(5):
                r = s.get(proxy.url(f"/c{conn}/{i}"), timeout=5)
                assert (r.status_code, r.text) == (200, f"origin /c{conn}/{i}")
    assert len(origin.requests) == 20
    assert origin.connections == 1
    assert {q.conn_id for q in origin.requests} == {1}


def test_upstream_pool_disabled_with_keepalive_0(
        origin: Origin, make_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = make_proxy({"backend": [origin.address]}, upstream_extra="keepalive = 0")
    with requests.Session() as s:
        for i in range(4):
            assert s.get(proxy.url(f"/n{i}"), timeout=5).text == f"origin /n{i}"
    assert [q.conn_id for q in origin.requests] == [1, 2, 3, 4]


def test_idle_pooled_connection_closed_after_idle_timeout(
        origin: Origin, make_proxy: Callable[..., ProxyProcess]) -> None:
    proxy = make_proxy({"backend": [origin.address]}, upstream_extra='idle_timeout = "500ms"')
    with requests.Session() as s:
        assert s.get(proxy.url("/a"), timeout=5).text == "origin /a"
        assert s.get(proxy.url("/b"), timeout=5).text == "origin /b"
        time.sleep(1.2)  # idle_timeout plus the 0.25 s deadline tick, with margin
        assert s.get(proxy.url("/c"), timeout=5).text == "origin /c"
    assert [(q.target, q.conn_id) for q in origin.requests] == [("/a", 1), ("/b", 1), ("/c", 2)]


def test_upstream_connection_close_opens_a_new_connection(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    def handler(req: Received) -> Reply:
        return Reply(body=req.target.encode(), close=req.target == "/closing")

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        for path in ("/first", "/closing", "/after", "/again"):
            c.send(get(path))
            r = c.read_response()
            assert (r.status, r.body, r.complete) == (200, path.encode(), True)
            # The upstream's Connection: close is not passed on to the client.
            assert r.header("Connection") is None
    assert [(q.target, q.conn_id) for q in origin.requests] == [
        ("/first", 1), ("/closing", 1), ("/after", 2), ("/again", 2)]
    assert origin.connections == 2


def test_connection_close_among_the_trailers_is_not_reused(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    """A `Connection: close` in a chunked answer's trailer section: the parser (llhttp)
    takes no more bytes on that connection, so it must not go back to the pool (the
    next request on it got a 502: "Data after `Connection: close`"). Both ways:
    from the upstream, and from a client's chunked request."""
    def handler(req: Received) -> Reply:
        if req.target == "/trailed":
            return Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"2\r\nok\r\n0\r\nConnection: close\r\nX-T: 1\r\n\r\n")
        return Reply(body=req.target.encode())

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        for path in ("/trailed", "/after", "/again"):
            c.send(get(path))
            r = c.read_response()
            assert (r.status, r.complete) == (200, True), (path, r.status, r.body, proxy.log())
            if path == "/trailed":  # the other trailer field passes
                assert r.wire_body.endswith(b"0\r\nX-T: 1\r\n\r\n"), r.wire_body
    assert [(q.target, q.conn_id) for q in origin.requests] == [
        ("/trailed", 1), ("/after", 2), ("/again", 2)]
    with RawClient(proxy.port) as c:
        c.send(b"POST /posted HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\nhi\r\n0\r\nConnection: close\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, (r.status, r.body)
        # The client's connection can take no more: the proxy closes it after the answer.
        c.sock.settimeout(5)
        assert c.sock.recv(100) == b""
    assert "Traceback" not in proxy.log()


def test_pooled_connection_closed_by_origin_while_idle_is_replaced(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    # The origin answers with a keep-alive response, then closes the connection
    # at once (as a server does when its keep-alive timeout expires).
    origin = make_origin(lambda req: Reply(body=req.target.encode(), close_after=True))
    proxy = make_proxy({"backend": [origin.address]})
    with requests.Session() as s:
        for i in range(5):
            r = s.get(proxy.url(f"/idle{i}"), timeout=5)
            assert (r.status_code, r.text) == (200, f"/idle{i}")
    assert [q.conn_id for q in origin.requests] == [1, 2, 3, 4, 5]


def test_pooled_connection_closed_when_request_arrives_is_retried_for_get(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    # Deterministic race: the origin reads the next request on a reused
    # connection and closes without a byte of answer, as a server does whose
    # keep-alive timeout fired just as the request arrived.
    def handler(req: Received) -> Reply:
        if req.target == "/second" and req.conn_id == 1:
            return Reply(raw=b"", close=True)
        return Reply(body=req.target.encode())

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(get("/first"))
        assert c.read_response().body == b"/first"
        c.send(get("/second"))
        r = c.read_response()
        assert (r.status, r.body) == (200, b"/second")
    assert [(q.target, q.conn_id) for q in origin.requests] == [
        ("/first", 1), ("/second", 1), ("/second", 2)]


def test_pooled_connection_reset_when_request_arrives_is_retried_for_get(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    def handler(req: Received) -> Reply:
        if req.target == "/second" and req.conn_id == 1:
            return Reply(reset=True)
        return Reply(body=req.target.encode())

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    with requests.Session() as s:
        assert s.get(proxy.url("/first"), timeout=5).text == "/first"
        r = s.get(proxy.url("/second"), timeout=5)
        assert (r.status_code, r.text) == (200, "/second")
    assert [(q.target, q.conn_id) for q in origin.requests] == [
        ("/first", 1), ("/second", 1), ("/second", 2)]


def test_post_on_pooled_connection_closed_by_origin_is_not_retried(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    # A POST that may have reached the origin must not be sent twice (GUIDE §6).
    def handler(req: Received) -> Reply:
        if req.method == "POST":
            return Reply(raw=b"", close=True)
        return Reply(body=req.target.encode())

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(get("/warm"))
        assert c.read_response().body == b"/warm"
        c.send(b"POST /pay HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\nabc")
        r = c.read_response()
        assert r.status == 502
    posts = [q for q in origin.requests if q.method == "POST"]
    assert [(q.target, q.body, q.conn_id) for q in posts] == [("/pay", b"abc", 1)]
