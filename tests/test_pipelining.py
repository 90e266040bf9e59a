"""Pipelined requests (RFC 9112 §9.3.2): several requests in one write are all
answered, in the order they were sent, whatever the upstream timing."""

from __future__ import annotations

import time
from collections.abc import Callable

from servers import Origin, ProxyProcess, RawClient, Received, Reply, RssSampler


def echo(req: Received) -> Reply:
    return Reply(body=f"{req.method} {req.target} [{req.body.decode()}]".encode(),
                 headers=[("X-Target", req.target)])


def test_pipelined_gets_answered_in_order(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(echo)
    proxy = make_proxy({"backend": [origin.address]})
    paths = [f"/p{i}" for i in range(10)]
    with RawClient(proxy.port) as c:
        c.send(b"".join(f"GET {p} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode() for p in paths))
        got = [c.read_response() for _ in paths]
        assert [(r.status, r.header("X-Target"), r.body) for r in got] == [
            (200, p, f"GET {p} []".encode()) for p in paths]
        # Nothing but these ten responses came back: the bytes are exactly them, in order.
        assert c.buf == b""
        c.send(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().body == b"GET /after []"
    assert [q.target for q in origin.requests] == [*paths, "/after"]


def test_pipelined_requests_with_bodies(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(echo)
    proxy = make_proxy({"backend": [origin.address]})
    batch = (
        b"POST /one HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /two HTTP/1.1\r\nHost: a.test\r\n\r\n"
        b"PUT /three HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        b"POST /four HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nGET /x HTTP"
        b"DELETE /five HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n"
    )
    expected = [
        (200, "/one", b"POST /one [hello]"),
        (200, "/two", b"GET /two []"),
        (200, "/three", b"PUT /three [abcdefg]"),
        (200, "/four", b"POST /four [GET /x HTTP]"),
        (200, "/five", b"DELETE /five []"),
    ]
    with RawClient(proxy.port) as c:
        c.send(batch)
        got = [c.read_response() for _ in expected]
        assert [(r.status, r.header("X-Target"), r.body) for r in got] == expected
        assert c.buf == b""
    assert [(q.method, q.target, q.body) for q in origin.requests] == [
        ("POST", "/one", b"hello"), ("GET", "/two", b""), ("PUT", "/three", b"abcdefg"),
        ("POST", "/four", b"GET /x HTTP"), ("DELETE", "/five", b"")]


def test_pipelined_request_after_a_slow_one_waits_its_turn(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    def handler(req: Received) -> Reply:
        return Reply(body=req.target.encode(), delay=0.6 if req.target == "/slow" else 0.0)

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        start = time.monotonic()
        c.send(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n"
               b"GET /fast1 HTTP/1.1\r\nHost: a.test\r\n\r\n"
               b"GET /fast2 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        first = c.read_response()
        elapsed = time.monotonic() - start
        rest = [c.read_response() for _ in range(2)]
        assert [first.body] + [r.body for r in rest] == [b"/slow", b"/fast1", b"/fast2"]
        assert elapsed >= 0.55
        # The slow response is whole and framed correctly, followed directly by the next.
        assert first.raw.endswith(b"\r\n\r\n/slow")
        assert first.header("Content-Length") == "5"
    assert [q.target for q in origin.requests] == ["/slow", "/fast1", "/fast2"]


def test_pipelined_requests_after_slow_one_then_close(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    # Every byte received is accounted for: response 1, 2, 3 back to back, then the
    # close asked for by the last request; nothing is interleaved or left over.
    def handler(req: Received) -> Reply:
        return Reply(body=req.target.encode(), delay=0.4 if req.target == "/a" else 0.0)

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n"
               b"GET /bb HTTP/1.1\r\nHost: a.test\r\n\r\n"
               b"GET /ccc HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        got = [c.read_response() for _ in range(3)]
        assert [(r.status, r.body, r.framing, r.complete) for r in got] == [
            (200, b"/a", "length", True), (200, b"/bb", "length", True),
            (200, b"/ccc", "length", True)]
        assert [r.header("Connection") for r in got] == [None, None, "close"]
        assert all(r.raw.startswith(b"HTTP/1.1 200 OK\r\n") for r in got)
        assert c.buf == b""
        assert c.closed_by_peer(5)
    assert [q.target for q in origin.requests] == ["/a", "/bb", "/ccc"]


def mixed(req: Received) -> Reply:
    if req.target == "/chunked":
        return Reply(chunks=[b"ch", b"unk", b"ed"])
    if req.target == "/close":
        return Reply(body=b"close-delimited", close_delimited=True)
    if req.target == "/204":
        return Reply(status=204, body=b"")
    if req.target == "/reset":
        return Reply(reset=True)
    return Reply(body=f"{req.method} {req.target}".encode())


def test_pipelined_requests_with_every_response_framing(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(mixed)
    proxy = make_proxy({"backend": [origin.address]})
    reqs = [("GET", "/length"), ("HEAD", "/length"), ("GET", "/chunked"), ("GET", "/204"),
            ("GET", "/close"), ("HEAD", "/chunked"), ("GET", "/last")]
    with RawClient(proxy.port) as c:
        c.send(b"".join(f"{m} {t} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode() for m, t in reqs))
        got = [c.read_response(head_request=m == "HEAD") for m, _ in reqs]
        assert [(r.status, r.body) for r in got] == [
            (200, b"GET /length"), (200, b""), (200, b"chunked"), (204, b""),
            (200, b"close-delimited"), (200, b""), (200, b"GET /last")]
        assert [r.framing for r in got] == [
            "length", "none", "chunked", "none", "chunked", "none", "length"]
        assert got[1].header("Content-Length") == str(len(b"HEAD /length"))
        assert c.buf == b""
    assert [(q.method, q.target) for q in origin.requests] == reqs


def test_pipelined_request_after_upstream_failure(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(mixed)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"GET /reset HTTP/1.1\r\nHost: a.test\r\n\r\n"
               b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n"
               b"POST /post HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\r\nhi")
        got = [c.read_response() for _ in range(3)]
        assert [(r.status, r.body) for r in got] == [
            (502, b"502 Bad Gateway\n"), (200, b"GET /next"), (200, b"POST /post")]
        assert c.buf == b""
    assert [q.target for q in origin.requests] == ["/reset", "/next", "/post"]
    assert origin.requests[2].body == b"hi"


def test_pipelined_responses_respect_client_back_pressure(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    # A client pipelines many requests for large responses and reads nothing.
    # The proxy may fill the socket buffers towards the client (a few MiB), then
    # must stop: it should neither fetch every response from the origin nor hold
    # them in its memory. Each response (250 kB) arrives in a single read, so the
    # one that fills the buffers also completes while the client is paused; the
    # pipelined requests after it start with the client already paused.
    body = bytes(range(250)) * 1000
    n = 240  # 60 MB of responses in all
    origin = make_origin(lambda req: Reply(body=body, headers=[("X-Target", req.target)]))
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"GET /warm HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().status == 200
    [pid] = proxy.wait_worker_pids(1)
    with RssSampler(pid) as rss, RawClient(proxy.port, rcvbuf=4096, timeout=20) as c:
        c.send(b"".join(b"GET /r%d HTTP/1.1\r\nHost: a.test\r\n\r\n" % i for i in range(n)))
        # Wait until the proxy stops fetching: no new request at the origin for 0.75 s
        # (at most 10 s; a proxy without back-pressure fetches all of them).
        fetched, steady, deadline = -1, 0, time.monotonic() + 10
        while steady < 3 and time.monotonic() < deadline:
            time.sleep(0.25)
            now_fetched = len(origin.requests) - 1
            steady = steady + 1 if now_fetched == fetched else 0
            fetched = now_fetched
        growth_while_stalled = rss.growth_mib
        for i in range(n):
            r = c.read_response()
            assert (r.status, r.header("X-Target"), r.body == body) == (200, f"/r{i}", True)
    # With back-pressure only what the socket buffers hold is fetched: 13 responses
    # (3 MB) and RSS +0.1 MiB, measured with the proxy patched to pause a new
    # exchange's upstream reads while the client is paused. Without it every
    # response is fetched and what the sockets cannot take sits in the worker's
    # memory (measured: 240 of 240, RSS +55 MiB).
    stats = f"{fetched} of {n} responses fetched, RSS +{growth_while_stalled:.1f} MiB"
    assert fetched < n // 2, stats
    assert growth_while_stalled < 16, stats


def test_bytes_after_a_response_never_answer_the_next_pipelined_request(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    """The origin answers HEAD /a and, in the same write, appends a whole extra
    response. The connection must not be handed to the pipelined GET /b while those
    bytes are still being read: /b gets the origin's real answer, never 'smuggled'."""
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

    def handler(req: Received) -> Reply:
        if req.target == "/a":
            return Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + extra)
        return Reply(body=b"real " + req.target.encode())

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    for _ in range(5):
        with RawClient(proxy.port) as c:
            c.send(b"HEAD /a HTTP/1.1\r\nHost: a.test\r\n\r\n"
                   b"GET /b HTTP/1.1\r\nHost: a.test\r\n\r\n")
            first = c.read_response(head_request=True)
            second = c.read_response()
            assert first.status == 200
            assert (second.status, second.body) == (200, b"real /b")



def test_pipelined_request_in_a_read_of_its_own_waits_its_turn(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    """The next request sent (in a write of its own) while the previous one is at
    the upstream: answered after it. (It started a second exchange at once, whose
    response went out first: each client got the other request's answer.)"""
    def handler(req: Received) -> Reply:
        return Reply(body=f"{req.target}".encode(), delay=0.5 if req.target == "/slow" else 0.0)

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n")
        deadline = time.monotonic() + 10
        while not origin.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [q.target for q in origin.requests] == ["/slow"]
        c.send(b"GET /fast HTTP/1.1\r\nHost: a.test\r\n\r\n")
        first, second = c.read_response(), c.read_response()
        assert (first.body, second.body) == (b"/slow", b"/fast")
        assert c.buf == b""
