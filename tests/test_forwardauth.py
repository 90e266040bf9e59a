"""Forward auth client: a real auth service on 127.0.0.1, the client on uvloop."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest
import uvloop

from fastproxy.forwardauth import Decision, ForwardAuth
from servers import Origin, Received, Reply, free_port

T = TypeVar("T")
MakeOrigin = Callable[..., Origin]

CLIENT_IP = b"203.0.113.7"
HEADERS: list[tuple[bytes, bytes]] = [
    (b"Host", b"app.example"),
    (b"User-Agent", b"pytest"),
    (b"Cookie", b"sid=abc"),
    (b"Authorization", b"Bearer t0k3n"),
]


def run(coro: Awaitable[T]) -> T:
    return uvloop.run(coro)  # type: ignore[arg-type]


def with_auth(url: str, body: Callable[[ForwardAuth], Awaitable[T]], **options: Any) -> T:
    """Run `body(ForwardAuth(url, **options))` on a uvloop loop, closing it even on failure."""

    async def main() -> T:
        fa = ForwardAuth(url, **options)
        try:
            return await body(fa)
        finally:
            await fa.close()

    return run(main())


async def ask(fa: ForwardAuth, headers: Sequence[tuple[bytes, bytes]] = HEADERS,
              **fields: bytes) -> Decision:
    args = {"method": b"POST", "uri": b"/app/page?x=1", "host": b"app.example",
            "proto": b"https", "client_ip": CLIENT_IP}
    args.update(fields)
    return await fa.check(args["method"], args["uri"], args["host"], args["proto"],
                          args["client_ip"], headers)


def url(origin: Origin, path: str = "/verify") -> str:
    return f"http://{origin.address}{path}"


def header_count(req: Received, name: str) -> int:
    return req.header_names().count(name.lower())


# -- allowed


def test_allow_copies_listed_headers_and_names_them_for_dropping(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200, headers=[
        ("X-User", "alice"), ("X-Groups", "admins"), ("X-Groups", "dev"), ("X-Other", "no"),
        ("X-Empty", "")], body=b"ignored"))

    async def body(fa: ForwardAuth) -> Decision:
        return await ask(fa)

    d = with_auth(url(origin), body, copy_headers=["X-User", "x-groups", "X-Email", "X-Empty"])
    assert d.allowed and d.status == 200 and d.response == b""
    assert d.upstream_lines == b"X-User: alice\r\nx-groups: admins\r\nx-groups: dev\r\n"
    # Always all of them, also the ones the service did not send: no forged X-Email.
    assert d.drop == (b"x-user", b"x-groups", b"x-email", b"x-empty")


def test_allow_counts_and_no_log_when_healthy(make_origin: MakeOrigin,
                                              caplog: pytest.LogCaptureFixture) -> None:
    origin = make_origin(lambda req: Reply(204, body=b""))

    async def body(fa: ForwardAuth) -> ForwardAuth:
        for _ in range(3):
            assert (await ask(fa)).allowed
        return fa

    with caplog.at_level(logging.DEBUG, logger="fastproxy.auth"):
        fa = with_auth(url(origin), body)
    assert (fa.checks, fa.allowed, fa.denied, fa.errors) == (3, 3, 0, 0)
    assert not [r for r in caplog.records if r.name == "fastproxy.auth"]


# -- what the auth service receives


def test_request_line_host_and_forwarded_fields(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200))
    with_auth(url(origin, "/verify?rd=https%3A%2F%2Fapp"), ask)
    (req,) = origin.requests
    assert (req.method, req.target, req.version) == ("GET", "/verify?rd=https%3A%2F%2Fapp",
                                                     "HTTP/1.1")
    assert req.body == b"" and req.header("content-length") is None
    assert req.header("host") == origin.address
    assert req.header("x-forwarded-method") == "POST"
    assert req.header("x-forwarded-proto") == "https"
    assert req.header("x-forwarded-host") == "app.example"
    assert req.header("x-forwarded-uri") == "/app/page?x=1"
    assert req.header("x-forwarded-for") == "203.0.113.7"
    assert req.header("x-real-ip") == "203.0.113.7"
    assert req.header("cookie") == "sid=abc"
    assert req.header("authorization") == "Bearer t0k3n"
    assert req.header("user-agent") == "pytest"
    for name in ("host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-uri"):
        assert header_count(req, name) == 1


def test_absolute_form_target_is_sent_in_origin_form(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200))

    async def body(fa: ForwardAuth) -> None:
        await ask(fa, uri=b"http://app.example/a/b?c=d")
        await ask(fa, uri=b"HTTPS://app.example")

    with_auth(url(origin), body)
    assert [r.header("x-forwarded-uri") for r in origin.requests] == ["/a/b?c=d", "/"]


def test_client_forwarded_fields_are_never_passed(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200))
    forged = [*HEADERS,
              (b"X-Forwarded-For", b"6.6.6.6"), (b"x-forwarded-host", b"evil.example"),
              (b"X-Forwarded-Proto", b"http"), (b"X-Forwarded-Uri", b"/public"),
              (b"X-Forwarded-Method", b"GET"), (b"X-Forwarded-Prefix", b"/admin"),
              (b"X-Forwarded-Port", b"80"), (b"Forwarded", b"for=6.6.6.6"),
              (b"X-Real-IP", b"6.6.6.6")]

    async def body(fa: ForwardAuth) -> None:
        await ask(fa, forged)

    with_auth(url(origin), body)
    (req,) = origin.requests
    assert req.header("x-forwarded-for") == "203.0.113.7"
    assert req.header("x-forwarded-host") == "app.example"
    assert req.header("x-forwarded-proto") == "https"
    assert req.header("x-forwarded-uri") == "/app/page?x=1"
    assert req.header("x-forwarded-method") == "POST"
    assert req.header("x-real-ip") == "203.0.113.7"
    for name in ("x-forwarded-prefix", "x-forwarded-port", "forwarded"):
        assert req.header(name) is None
    for name in ("x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-uri",
                 "x-forwarded-method", "x-real-ip"):
        assert header_count(req, name) == 1
    assert "6.6.6.6" not in origin.raw.decode("latin-1")


def test_hop_by_hop_and_framing_fields_are_not_sent(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200))
    hop = [*HEADERS,
           (b"Connection", b"keep-alive, X-Secret"), (b"X-Secret", b"s"),
           (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"), (b"Trailer", b"X-T"),
           (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"websocket"),
           (b"Proxy-Authorization", b"Basic eA=="), (b"Proxy-Connection", b"keep-alive"),
           (b"Content-Length", b"5"), (b"Expect", b"100-continue"), (b"X-Kept", b"yes")]

    async def body(fa: ForwardAuth) -> None:
        await ask(fa, hop)

    with_auth(url(origin), body)
    (req,) = origin.requests
    names = set(req.header_names())
    for name in ("connection", "x-secret", "keep-alive", "te", "trailer", "transfer-encoding",
                 "upgrade", "proxy-authorization", "proxy-connection", "content-length",
                 "expect"):
        assert name not in names
    assert req.header("x-kept") == "yes" and req.header("host") == origin.address


def test_request_headers_list_is_honoured(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200))
    headers = [*HEADERS, (b"x-CUSTOM", b"1"), (b"Connection", b"x-custom")]

    async def body(fa: ForwardAuth) -> None:
        await ask(fa)
        await ask(fa, headers)

    with_auth(url(origin), body, request_headers=["authorization", "X-Custom"])
    first, second = origin.requests
    assert first.header("authorization") == "Bearer t0k3n"
    assert first.header("cookie") is None and first.header("user-agent") is None
    assert first.header("x-forwarded-for") == "203.0.113.7"  # always ours
    assert second.header("x-custom") is None  # named by Connection: hop-by-hop


def test_client_field_with_control_characters_is_not_sent(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200))
    headers = [*HEADERS, (b"X-Evil", b"a\r\nX-Injected: 1"), (b"X-Nul", b"a\x00b"),
               (b"Bad Name", b"x")]

    async def body(fa: ForwardAuth) -> None:
        assert (await ask(fa, headers)).allowed
        with pytest.raises(ValueError):
            await ask(fa, host=b"app.example\r\nX-Injected: 1")

    with_auth(url(origin), body)
    (req,) = origin.requests
    assert req.header("x-injected") is None and req.header("x-evil") is None
    assert req.header("x-nul") is None and not origin.errors


# -- refused: the auth service's answer, relayed


def test_deny_401_relayed_byte_exact(make_origin: MakeOrigin) -> None:
    payload = b"no entry \x00\xff\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    origin = make_origin(lambda req: Reply(401, headers=[
        ("WWW-Authenticate", 'Basic realm="app"'), ("X-Trace", "t1")], body=payload))

    async def body(fa: ForwardAuth) -> tuple[Decision, ForwardAuth]:
        return await ask(fa), fa

    d, fa = with_auth(url(origin), body, copy_headers=["X-Trace"])
    assert not d.allowed and d.status == 401
    assert d.response == (b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="app"\r\n'
                          b"X-Trace: t1\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    assert d.upstream_lines == b"" and d.drop == ()
    assert (fa.checks, fa.allowed, fa.denied, fa.errors) == (1, 0, 1, 0)


def test_redirect_302_relayed_without_hop_by_hop_fields(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(302, headers=[
        ("Location", "https://login.example/?rd=%2Fapp"), ("Set-Cookie", "csrf=1; HttpOnly"),
        ("Connection", "X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic")], body=b""))

    async def body(fa: ForwardAuth) -> Decision:
        return await ask(fa)

    d = with_auth(url(origin), body)
    assert not d.allowed and d.status == 302
    assert d.response == (b"HTTP/1.1 302 Found\r\nLocation: https://login.example/?rd=%2Fapp\r\n"
                          b"Set-Cookie: csrf=1; HttpOnly\r\nContent-Length: 0\r\n\r\n")


def test_304_relayed_without_content_length(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(304, headers=[("ETag", '"x"')], body=b""))

    async def body(fa: ForwardAuth) -> Decision:
        return await ask(fa)

    d = with_auth(url(origin), body)
    assert d.response == b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'


def test_interim_answer_before_the_final_one(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(raw=(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")))

    async def body(fa: ForwardAuth) -> Decision:
        return await ask(fa)

    d = with_auth(url(origin), body)
    assert d.status == 403
    assert d.response == b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope"


def test_chunked_answers(make_origin: MakeOrigin) -> None:
    def handler(req: Received) -> Reply:
        if req.header("x-case") == "deny":
            return Reply(403, headers=[("X-Why", "no")], chunks=[b"ab", b"cde"])
        return Reply(raw=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-User: bob\r\n\r\n"
                         b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\nX-User: mallory\r\n\r\n")

    origin = make_origin(handler)

    async def body(fa: ForwardAuth) -> tuple[Decision, Decision, Decision]:
        return (await ask(fa, [(b"X-Case", b"deny")]), await ask(fa), await ask(fa))

    denied, allowed, again = with_auth(url(origin), body, copy_headers=["X-User"])
    assert denied.status == 403
    assert denied.response == (b"HTTP/1.1 403 Forbidden\r\nX-Why: no\r\n"
                               b"Content-Length: 5\r\n\r\nabcde")
    assert allowed.allowed and allowed.upstream_lines == b"X-User: bob\r\n"  # trailers ignored
    assert again.allowed
    assert origin.connections == 1  # chunked answers keep the connection


def test_close_delimited_answer(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(401, body=b"bye", close_delimited=True))

    async def body(fa: ForwardAuth) -> list[Decision]:
        return [await ask(fa), await ask(fa)]

    first, second = with_auth(url(origin), body)
    for d in (first, second):
        assert d.response == b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 3\r\n\r\nbye"
    assert origin.connections == 2


# -- connections


def test_keep_alive_reuses_one_connection(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200, headers=[("X-User", "a")]))

    async def body(fa: ForwardAuth) -> ForwardAuth:
        for _ in range(5):
            assert (await ask(fa)).allowed
        return fa

    fa = with_auth(url(origin), body, copy_headers=["X-User"])
    assert origin.connections == 1
    assert (fa.connects, fa.reused, fa.retries) == (1, 4, 0)


def test_concurrent_checks_and_bounded_idle_pool(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200, delay=0.05))

    async def body(fa: ForwardAuth) -> int:
        decisions = await asyncio.gather(*(ask(fa) for _ in range(8)))
        assert all(d.allowed for d in decisions)
        return fa.idle_connections

    assert with_auth(url(origin), body, max_idle=2) == 2
    assert origin.connections == 8


def test_server_closing_kept_alive_connections(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200, close_after=True))

    async def body(fa: ForwardAuth) -> None:
        for _ in range(3):
            assert (await ask(fa)).allowed
            await asyncio.sleep(0.05)  # the close arrives while the connection is idle

    with_auth(url(origin), body)
    assert origin.connections == 3


@pytest.mark.parametrize("broken", [Reply(raw=b"", close=True), Reply(reset=True)],
                         ids=["closed", "reset"])
def test_stale_pooled_connection_is_retried_once(make_origin: MakeOrigin, broken: Reply) -> None:
    # The second request on connection 1 finds it gone: the server closes (or
    # resets) it instead of answering, as one closing an idle connection does.
    def handler(req: Received) -> Reply:
        if req.conn_id == 1 and sum(r.conn_id == 1 for r in origin.requests) == 2:
            return broken
        return Reply(200, headers=[("X-User", "u")])

    origin = make_origin(handler)

    async def body(fa: ForwardAuth) -> ForwardAuth:
        for _ in range(3):
            d = await ask(fa)
            assert d.allowed and d.upstream_lines == b"X-User: u\r\n"
        return fa

    fa = with_auth(url(origin), body, copy_headers=["X-User"])
    assert origin.connections == 2
    assert (fa.retries, fa.errors, fa.allowed) == (1, 0, 3)


def test_fresh_connection_closed_without_answer_is_an_error(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(raw=b"", close=True))

    async def body(fa: ForwardAuth) -> tuple[Decision, ForwardAuth]:
        return await ask(fa), fa

    d, fa = with_auth(url(origin), body)
    assert not d.allowed and d.status == 503
    assert origin.connections == 1 and fa.retries == 0


def test_close_stops_pooling(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200))

    async def body(fa: ForwardAuth) -> int:
        assert (await ask(fa)).allowed
        assert fa.idle_connections == 1
        await fa.close()
        assert fa.idle_connections == 0
        assert (await ask(fa)).allowed  # still works, but not kept
        return fa.idle_connections

    assert with_auth(url(origin), body) == 0
    assert origin.connections == 2


def test_cancelled_check_drops_its_connection(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(200, delay=0.5 if req.header("x-slow") else 0))

    async def body(fa: ForwardAuth) -> Decision:
        task = asyncio.ensure_future(ask(fa, [(b"X-Slow", b"1")]))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fa.idle_connections == 0
        return await ask(fa)

    assert with_auth(url(origin), body).allowed
    assert origin.connections == 2


# -- errors: fail closed


def local_answer(d: Decision) -> tuple[int, bytes]:
    head, _, body = d.response.partition(b"\r\n\r\n")
    length = [line for line in head.split(b"\r\n") if line.startswith(b"Content-Length: ")]
    assert length == [b"Content-Length: %d" % len(body)]
    return d.status, head.split(b"\r\n")[0]


def test_unreachable_service_is_503_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()

    async def body(fa: ForwardAuth) -> tuple[list[Decision], ForwardAuth]:
        return [await ask(fa) for _ in range(3)], fa

    with caplog.at_level(logging.WARNING, logger="fastproxy.auth"):
        decisions, fa = with_auth(f"http://127.0.0.1:{port}/verify", body)
    for d in decisions:
        assert not d.allowed and d.upstream_lines == b""
        assert local_answer(d) == (503, b"HTTP/1.1 503 Service Unavailable")
    assert (fa.checks, fa.errors, fa.allowed, fa.denied) == (3, 3, 0, 0)
    records = [r for r in caplog.records if r.name == "fastproxy.auth"]
    assert len(records) == 1  # one line, not one per request
    assert records[0].levelno == logging.WARNING and "503" in records[0].getMessage()


def test_service_that_never_answers_is_504(make_origin: MakeOrigin,
                                           caplog: pytest.LogCaptureFixture) -> None:
    origin = make_origin(lambda req: Reply(200, delay=30))

    async def body(fa: ForwardAuth) -> tuple[Decision, float]:
        start = time.monotonic()
        d = await ask(fa)
        return d, time.monotonic() - start

    with caplog.at_level(logging.WARNING, logger="fastproxy.auth"):
        d, elapsed = with_auth(url(origin), body, timeout=0.3)
    assert local_answer(d) == (504, b"HTTP/1.1 504 Gateway Timeout")
    assert 0.25 <= elapsed < 2.0
    assert any("504" in r.getMessage() for r in caplog.records if r.name == "fastproxy.auth")


def test_answer_stalling_mid_body_is_504(make_origin: MakeOrigin) -> None:
    origin = make_origin(lambda req: Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))

    async def body(fa: ForwardAuth) -> Decision:
        return await ask(fa)

    assert with_auth(url(origin), body, timeout=0.3).status == 504


MALFORMED = {
    "garbage": b"HELLO\r\n\r\n",
    "http2": b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "status 600": b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "bad length": b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\na",
    "length and chunked": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "gzip coding": b"HTTP/1.1 401 No\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "bad chunk size": (b"HTTP/1.1 401 No\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nabc\r\n0\r\n\r\n"),
    "switching protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    "head too large": (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (16 * 1024)
                       + b"\r\nContent-Length: 0\r\n\r\n"),
    "too many fields": (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-F%d: 1\r\n" % i for i in range(100))
                        + b"Content-Length: 0\r\n\r\n"),
    "cut body": b"HTTP/1.1 401 No\r\nContent-Length: 10\r\n\r\nabc",
    "cut head": b"HTTP/1.1 200 OK\r\nX-User: a",
    "cut chunk": b"HTTP/1.1 401 No\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_answer_is_503(make_origin: MakeOrigin, raw: bytes) -> None:
    origin = make_origin(lambda req: Reply(raw=raw, close=True))

    async def body(fa: ForwardAuth) -> tuple[Decision, ForwardAuth]:
        return await ask(fa), fa

    d, fa = with_auth(url(origin), body, copy_headers=["X-User"])
    assert not d.allowed
    assert local_answer(d) == (503, b"HTTP/1.1 503 Service Unavailable")
    assert fa.errors == 1


def test_header_limits_are_inclusive(make_origin: MakeOrigin) -> None:
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(99))
    origin = make_origin(lambda req: Reply(raw=b"HTTP/1.1 200 OK\r\n" + fields
                                           + b"Content-Length: 0\r\n\r\n"))

    async def body(fa: ForwardAuth) -> Decision:
        return await ask(fa)

    assert with_auth(url(origin), body).allowed  # 100 fields


@pytest.mark.parametrize("size,ok", [(100, True), (101, False)])
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_body_limit(make_origin: MakeOrigin, framing: str, size: int, ok: bool) -> None:
    payload = b"x" * size

    def handler(req: Received) -> Reply:
        if framing == "chunked":
            return Reply(401, chunks=[payload[:60], payload[60:]])
        return Reply(401, body=payload, close_delimited=framing == "close")

    origin = make_origin(handler)

    async def body(fa: ForwardAuth) -> Decision:
        return await ask(fa)

    d = with_auth(url(origin), body, max_body=100)
    if ok:
        assert d.status == 401 and d.response.endswith(b"Content-Length: 100\r\n\r\n" + payload)
    else:
        assert local_answer(d) == (503, b"HTTP/1.1 503 Service Unavailable")


INJECTIONS = {
    "obs-fold": b"X-User: alice\r\n X-Admin: 1\r\n",
    "bare LF": b"X-User: alice\nX-Admin: 1\r\n",
    "bare CR": b"X-User: alice\rX-Admin: 1\r\n",
    "NUL": b"X-User: alice\x00X-Admin: 1\r\n",
}


@pytest.mark.parametrize("field", list(INJECTIONS.values()), ids=list(INJECTIONS))
def test_crlf_injection_in_a_copied_value_is_impossible(make_origin: MakeOrigin,
                                                        field: bytes) -> None:
    origin = make_origin(lambda req: Reply(
        raw=b"HTTP/1.1 200 OK\r\n" + field + b"Content-Length: 0\r\n\r\n"))

    async def body(fa: ForwardAuth) -> Decision:
        return await ask(fa)

    d = with_auth(url(origin), body, copy_headers=["X-User"])
    assert not d.allowed and d.status == 503 and b"X-Admin" not in d.response


# -- configuration


@pytest.mark.parametrize("bad", [
    "ftp://127.0.0.1/verify", "127.0.0.1:9000/verify", "http://", "http:///verify",
    "http://user:pw@127.0.0.1/verify", "http://127.0.0.1:0/", "http://127.0.0.1:70000/",
    "http://127.0.0.1:x/", "http://127.0.0.1/a b", "http://127.0.0.1/#frag",
    "http://127.0.0.1/caf\u00e9", "http://127.0.0.1/\r\nX: 1",
])
def test_bad_url_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="forward auth url"):
        ForwardAuth(bad)


def test_good_urls() -> None:
    fa = ForwardAuth("http://127.0.0.1:9000/verify?x=1")
    assert (fa.host, fa.port, fa.tls) == ("127.0.0.1", 9000, False)
    fa = ForwardAuth("HTTPS://Auth.Example")
    assert (fa.host, fa.port, fa.tls) == ("auth.example", 443, True)
    fa = ForwardAuth("http://[::1]:8080/v")
    assert (fa.host, fa.port) == ("::1", 8080)


@pytest.mark.parametrize("options", [
    {"copy_headers": ["Content-Length"]}, {"copy_headers": ["Transfer-Encoding"]},
    {"copy_headers": ["Host"]}, {"copy_headers": ["X-Forwarded-For"]},
    {"copy_headers": ["Proxy-Authorization"]}, {"copy_headers": ["bad name"]},
    {"copy_headers": "X-User"}, {"request_headers": ["Host"]},
    {"request_headers": ["X-Forwarded-For"]}, {"request_headers": ["Connection"]},
    {"request_headers": ["Forwarded"]}, {"timeout": 0}, {"max_body": -1},
    {"ssl_context": ssl.create_default_context()},
])
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ForwardAuth("http://127.0.0.1:9000/verify", **options)


# -- TLS


def test_https_with_a_private_ca() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    seen: list[bytes] = []
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            for _ in range(10):
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\nX-User: tls-user\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> tuple[list[Decision], Decision]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        good = ForwardAuth(f"https://127.0.0.1:{port}/verify", ssl_context=client_ctx,
                           copy_headers=["X-User"])
        untrusted = ForwardAuth(f"https://127.0.0.1:{port}/verify",
                                ssl_context=ssl.create_default_context())
        try:
            decisions = [await ask(good) for _ in range(2)]
            refused = await ask(untrusted)
        finally:
            await good.close()
            await untrusted.close()
            server.close()
            await server.wait_closed()
        return decisions, refused

    decisions, refused = run(main())
    assert all(d.allowed and d.upstream_lines == b"X-User: tls-user\r\n" for d in decisions)
    # The untrusted client gave up in the handshake, before the server's callback.
    assert seen[0].startswith(b"GET /verify HTTP/1.1\r\n") and connections == 1
    assert local_answer(refused) == (503, b"HTTP/1.1 503 Service Unavailable")
