"""Header rewriting in both directions (RFC 9110 §7.6): hop-by-hop fields are
dropped, forwarding fields are set or appended, everything else is kept in
order, duplicates included."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from servers import Origin, ProxyProcess, RawClient, Received, Reply, origin_and_proxy

HOP_BY_HOP = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Origin, ProxyProcess]]:
    """One default origin and proxy for the tests below that only send requests
    (starting a proxy per test dominates their run time); each test uses its own
    request targets and finds its requests by target."""
    with origin_and_proxy(tmp_path_factory.mktemp("headers-proxy")) as pair:
        yield pair


@pytest.fixture
def origin(shared: tuple[Origin, ProxyProcess]) -> Origin:
    return shared[0]


@pytest.fixture
def proxy(shared: tuple[Origin, ProxyProcess]) -> ProxyProcess:
    return shared[1]


def received(origin: Origin, target: str) -> Received:
    """The one request the origin received for `target`."""
    found = [q for q in origin.requests if q.target == target]
    assert len(found) == 1, f"{len(found)} requests for {target}"
    return found[0]


def test_request_hop_by_hop_headers_removed(origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        c.send(b"GET /h HTTP/1.1\r\n"
               b"Host: app.test\r\n"
               b"Connection: keep-alive, X-Secret, upgrade\r\n"
               b"Connection: x-other-secret\r\n"
               b"Keep-Alive: timeout=5\r\n"
               b"Proxy-Connection: keep-alive\r\n"
               b"TE: trailers\r\n"
               b"Trailer: X-Checksum\r\n"
               b"Upgrade: h2c\r\n"  # never passed on (a WebSocket one is: test_websocket_e2e)
               b"X-Secret: do-not-forward\r\n"
               b"X-Other-Secret: nor-this\r\n"
               b"X-Kept: yes\r\n"
               b"\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"origin /h")
        # Upgrade was not acted upon: the connection is still plain HTTP.
        c.send(b"GET /h-next HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert c.read_response().body == b"origin /h-next"
    req = received(origin, "/h")
    names = req.header_names()
    for name in [*HOP_BY_HOP, "x-secret", "x-other-secret"]:
        assert name not in names, name
    assert req.header("X-Kept") == "yes"
    assert req.version == "HTTP/1.1"


def test_request_forwarding_headers(origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        c.send(b"GET /fw HTTP/1.1\r\n"
               b"Host: App.Test:8443\r\n"
               b"X-Forwarded-For: 1.2.3.4\r\n"
               b"X-Forwarded-Proto: https\r\n"
               b"X-Forwarded-Host: evil.test\r\n"
               b"Via: 1.0 edge\r\n"
               b"\r\n")
        assert c.read_response().status == 200
    req = received(origin, "/fw")
    assert req.header("Host") == "App.Test:8443"
    assert req.header("X-Forwarded-For") == "1.2.3.4, 127.0.0.1"
    assert req.header("X-Forwarded-Proto") == "http"
    assert req.header("X-Forwarded-Host") == "App.Test:8443"
    assert req.header("Via") == "1.0 edge, 1.1 fastproxy"
    names = req.header_names()
    for name in ("host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via"):
        assert names.count(name) == 1, name


def test_request_several_xff_and_via_fields_combined(origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        c.send(b"GET /xff2 HTTP/1.1\r\nHost: a.test\r\n"
               b"X-Forwarded-For: 1.2.3.4\r\nVia: 1.1 a\r\n"
               b"X-Forwarded-For: 5.6.7.8, 9.9.9.9\r\nVia: 1.1 b\r\n\r\n")
        assert c.read_response().status == 200
    req = received(origin, "/xff2")
    assert [v for k, v in req.headers if k.lower() == "x-forwarded-for"] == [
        "1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"]
    assert [v for k, v in req.headers if k.lower() == "via"] == ["1.1 a, 1.1 b, 1.1 fastproxy"]


def test_request_end_to_end_headers_and_duplicates_kept_in_order(
        origin: Origin, proxy: ProxyProcess) -> None:
    sent = [
        ("Accept", "text/html"),
        ("X-Dup", "first"),
        ("Cookie", "a=1"),
        ("X-Dup", "second"),
        ("User-Agent", "raw-test/1.0"),
        ("Cookie", "b=2"),
        ("X-Empty", ""),
        ("X-Dup", "third, with comma"),
        ("Authorization", "Bearer abc"),
    ]
    head = "GET /e2e HTTP/1.1\r\nHost: a.test\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in sent) + "\r\n"
    with RawClient(proxy.port) as c:
        c.send(head.encode())
        assert c.read_response().status == 200
    req = received(origin, "/e2e")
    added = {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via"}
    assert [(k, v) for k, v in req.headers if k.lower() not in added] == sent
    assert req.headers[0] == ("Host", "a.test")


def test_response_headers_rewritten(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    def handler(req: Received) -> Reply:
        return Reply(body=b"resp", headers=[
            ("Server", "origin-server/2.0"),
            ("Date", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ("Connection", "keep-alive, X-Hop"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"),
            ("Trailer", "X-Sum"),
            ("X-Hop", "hidden"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
            ("Via", "1.1 origin-cache"),
            ("X-End", "kept"),
        ])

    origin = make_origin(handler)
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"GET /r HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"resp")
        c.send(b"GET /r2 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response().body == b"resp"  # still usable
    names = r.header_names()
    for name in [*HOP_BY_HOP, "x-hop"]:
        assert name not in names, name
    assert r.header("Server") == "origin-server/2.0"
    assert r.header("Date") == "Tue, 01 Jan 2030 00:00:00 GMT"
    assert r.header_all("Set-Cookie") == ["a=1", "b=2"]
    assert r.header_all("Via") == ["1.1 origin-cache, 1.1 fastproxy"]
    assert r.header("X-End") == "kept"
    assert r.header("Content-Length") == "4"
    assert [(k, v) for k, v in r.headers
            if k.lower() in ("server", "date", "set-cookie", "x-end")] == [
        ("Server", "origin-server/2.0"), ("Date", "Tue, 01 Jan 2030 00:00:00 GMT"),
        ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-End", "kept")]


def test_response_via_added(origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        c.send(b"GET /via HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
    assert r.header_all("Via") == ["1.1 fastproxy"]


def test_via_false_removes_our_via(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    origin = make_origin(lambda req: Reply(body=b"x", headers=[("Via", "1.1 upstream-cache")]))
    plain = make_origin(name="plain")
    proxy = make_proxy({"backend": [origin.address], "plain": [plain.address]},
                       server_extra="via = false",
                       routes='[[routes]]\nmatch = { path_prefix = "/plain" }\nupstream = "plain"\n'
                              '[[routes]]\nupstream = "backend"\n')
    with RawClient(proxy.port) as c:
        c.send(b"GET /a HTTP/1.1\r\nHost: a.test\r\nVia: 1.0 client-side\r\n\r\n")
        r = c.read_response()
        # Other hops' Via entries are passed on; ours is not added.
        assert r.header_all("Via") == ["1.1 upstream-cache"]
        c.send(b"GET /plain HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r2 = c.read_response()
        assert r2.body == b"plain /plain"
        assert "via" not in r2.header_names()
    assert origin.requests[0].header("Via") == "1.0 client-side"
    assert "via" not in plain.requests[0].header_names()


def test_absolute_form_target(origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        c.send(b"GET http://example.com/x?q=1 HTTP/1.1\r\nHost: ignored.test\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"origin /x?q=1")
        c.send(b"GET http://example.org:8080 HTTP/1.1\r\nHost: example.org:8080\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"origin /")
    first = received(origin, "/x?q=1")
    assert (first.header("Host"), first.header("X-Forwarded-Host")) == (
        "example.com", "example.com")
    assert first.header_names().count("host") == 1
    second = [q for q in origin.requests if q.header("Host") == "example.org:8080"]
    assert [q.target for q in second] == ["/"]


def test_absolute_form_target_without_path_keeps_query(origin: Origin,
                                                       proxy: ProxyProcess) -> None:
    # RFC 3986 §3.2: the authority ends at "/", "?" or "#"; "http://host?q" is a
    # valid absolute-form target (path-abempty is empty) for the resource "/?q".
    with RawClient(proxy.port) as c:
        c.send(b"GET http://example.net?q=2 HTTP/1.1\r\nHost: example.net\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"origin /?q=2")
    req = received(origin, "/?q=2")
    assert req.header("Host") == "example.net"


def test_http10_request_without_host_gets_one(origin: Origin, proxy: ProxyProcess) -> None:
    with RawClient(proxy.port) as c:
        c.send(b"GET /nohost HTTP/1.0\r\n\r\n")
        assert c.read_response().status == 200
    req = received(origin, "/nohost")
    # An HTTP/1.1 request must carry Host: the proxy supplies the server's address.
    assert req.header("Host") == origin.address
    assert req.version == "HTTP/1.1"


def test_every_header_named_in_connection_is_removed(origin: Origin, proxy: ProxyProcess) -> None:
    # RFC 9110 §7.6.1: a proxy MUST remove every field the Connection header names,
    # however many there are (or refuse the request; it must not pass them on).
    names = [f"X-Hop-{i:02d}" for i in range(24)]
    head = ("GET /many HTTP/1.1\r\nHost: a.test\r\n"
            f"Connection: {', '.join(names)}\r\n"
            + "".join(f"{n}: secret-{n}\r\n" for n in names)
            + "X-Kept: yes\r\n\r\n")
    with RawClient(proxy.port) as c:
        c.send(head.encode())
        r = c.read_response()
    assert r.status == 200
    req = received(origin, "/many")
    leaked = [n for n in names if req.header(n) is not None]
    assert leaked == []
    assert req.header("X-Kept") == "yes"


def test_every_header_named_in_response_connection_is_removed(
        make_origin: Callable[..., Origin], make_proxy: Callable[..., ProxyProcess]) -> None:
    names = [f"X-Hop-{i:02d}" for i in range(24)]
    origin = make_origin(lambda req: Reply(body=b"r", headers=[
        ("Connection", ", ".join(names))] + [(n, "secret") for n in names] + [("X-Kept", "yes")]))
    proxy = make_proxy({"backend": [origin.address]})
    with RawClient(proxy.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    assert [n for n in names if r.header(n) is not None] == []
    assert r.header("X-Kept") == "yes"


def test_long_forwarding_chains_appended(origin: Origin, proxy: ProxyProcess) -> None:
    chain = ", ".join(f"10.0.{i}.{i}" for i in range(60))  # ~650 bytes
    vias = ", ".join(f"1.1 hop{i}.example.net" for i in range(30))
    with RawClient(proxy.port) as c:
        c.send(f"GET /chains HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: {chain}\r\n"
               f"Via: {vias}\r\n\r\n".encode())
        assert c.read_response().status == 200
    req = received(origin, "/chains")
    assert req.header("X-Forwarded-For") == chain + ", 127.0.0.1"
    assert req.header("Via") == vias + ", 1.1 fastproxy"
