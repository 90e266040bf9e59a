"""Route actions (_actions): templates, rewrites, header edits, redirects and static answers,
run through the compiled router and head serializer as the proxy runs them."""

from __future__ import annotations

import re
import tomllib

import pytest

from fastproxy._actions import LocalAction, ProxyAction
from fastproxy._http import ResponseParser
from fastproxy._rewrite import build_request_head, build_response_head
from fastproxy._router import RequestContext, Router, new_context
from fastproxy.config import Config, parse_config
from fastproxy.routing import build_router
from test_router import HeadSink, parse

BASE = """
[[listeners]]
address = "127.0.0.1:8080"
name = "public"
[upstreams.app]
servers = ["127.0.0.1:9000"]
"""


def load(routes: str, extra: str = "") -> tuple[Config, Router]:
    config = parse_config(tomllib.loads(BASE + extra + routes))
    return config, build_router(config, {"app": "APP"})


def run(router: Router, method: str, target: str, host: str | None = "example.com",
        headers: tuple[tuple[str, str], ...] = (), ip: bytes = b"192.0.2.7",
        merge: bool = True) -> tuple[RequestContext, object]:
    head = parse(method, target, host, headers)
    ctx = new_context(head, merge, ip, b"http", 0, b"public")
    assert ctx.path is not None
    rule = router.route(ctx, ctx.host_header)
    assert rule is not None
    return ctx, rule.action


def upstream_request(router: Router, method: str, target: str, **kw: object) -> bytes:
    """The head the proxy would send upstream, as Exchange builds it."""
    ctx, action = run(router, method, target, **kw)  # type: ignore[arg-type]
    assert isinstance(action, ProxyAction)
    new_target = action.target_for(ctx) if action.rewrites else ctx.target
    host = action.upstream_host_for(ctx, ctx.host_header) if action.rewrites else ctx.host_header
    edits = action.request_edits
    drop, extra = (edits.drop, edits.render_for(ctx)) if edits is not None else ((), b"")
    return build_request_head(ctx.head, new_target, host, ctx.client_ip, b"http", b"", drop,
                              extra, ctx.host_header)


def first_line(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0]


def header_lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:]


# -- rewrites -----------------------------------------------------------------------------

@pytest.mark.parametrize(("rewrite", "target", "want"), [
    ('strip_prefix = "/api"', "/api/users?x=1", b"/users?x=1"),
    ('strip_prefix = "/api"', "/api", b"/"),
    ('strip_prefix = "/api"', "/api?x", b"/?x"),
    ('strip_prefix = "/api/"', "/api/v1", b"/v1"),
    ('strip_prefix = "/api"', "/other", b"/other"),            # no prefix: unchanged
    ('add_prefix = "/v2"', "/users", b"/v2/users"),
    ('add_prefix = "/v2/"', "/users", b"/v2/users"),
    ('strip_prefix = "/api"\nadd_prefix = "/internal"', "/api/x", b"/internal/x"),
    ("regex = '^/old/(.*)$'\nreplace = \"/new/{1}\"", "/old/a/b?q=1", b"/new/a/b?q=1"),
    ("regex = '^/old/(?P<rest>.*)$'\nreplace = \"/n/{rest}\"", "/old/z", b"/n/z"),
    ("regex = 'x'\nreplace = \"y\"", "/axbx", b"/aybx"),         # first match only
    ("regex = '^/old/(.*)$'\nreplace = \"/new/{1}\"", "/keep", b"/keep"),
    # The rewritten path is normalized again.
    ("regex = '^/a/(.*)$'\nreplace = \"/b//{1}/%7e\"", "/a/x", b"/b/x/~"),
    ('remove_query = ["utm_source", "utm_medium"]', "/p?utm_source=x&a=1&utm_medium=y",
     b"/p?a=1"),
    ('remove_query = ["a"]', "/p?a=1", b"/p"),
    ('set_query = { v = "2" }', "/p?v=1&a=b&v=3", b"/p?a=b&v=2"),
    ('set_query = { from = "{client_ip}" }', "/p", b"/p?from=192.0.2.7"),
    ('set_query = { q = "a b&c" }', "/p", b"/p?q=a%20b%26c"),
])
def test_rewrite_target(rewrite: str, target: str, want: bytes) -> None:
    _, router = load(f'[[routes]]\nupstream = "app"\n[routes.rewrite]\n{rewrite}\n')
    assert first_line(upstream_request(router, "GET", target)) == b"GET " + want + b" HTTP/1.1"


@pytest.mark.parametrize(("replace", "target", "want"), [
    # What a template brings into the path stays in the path: "?", "#", spaces,
    # quotes are percent-encoded, so the request line keeps its shape.
    ('"/q/{1}/{query}"', "/old/a?x=1&y", b"/q/a/x=1&y?x=1&y"),
    ('"/q/{request_uri}"', "/old/a?x=1", b"/q/%2Fold%2Fa%3Fx=1?x=1"),
    ('"/q/{listener}"', "/old/a", b"/q/public"),
    ('"/q/{1}"', "/old/%C3%A9%20", b"/q/%C3%A9%20"),
])
def test_rewrite_replace_keeps_the_request_line_intact(replace: str, target: str,
                                                       want: bytes) -> None:
    _, router = load("[[routes]]\nupstream = \"app\"\n[routes.rewrite]\n"
                     f"regex = '^/old/(.*)$'\nreplace = {replace}\n")
    line = first_line(upstream_request(router, "GET", target))
    assert line == b"GET " + want + b" HTTP/1.1"


@pytest.mark.parametrize(("regex", "replace", "target"), [
    ("^/a/(.*)$", "/../{1}", "/a/x"),
    ("^/a/(.*)$", "/b/{1}/../c", "/a/x"),
    # A capture of part of a segment cannot make a dot segment either.
    ("^/x(.*)$", "/api/{1}", "/x../y"),
    ("^/x(.*)$", "/api/{1}", "/x%2E./y"),
])
def test_rewrite_making_a_dot_segment_is_refused(regex: str, replace: str, target: str) -> None:
    _, router = load("[[routes]]\nupstream = \"app\"\n[routes.rewrite]\n"
                     f"regex = '{regex}'\nreplace = \"{replace}\"\n")
    ctx, action = run(router, "GET", target)
    assert isinstance(action, ProxyAction)
    assert action.target_for(ctx) is None  # the proxy answers 400


def test_variables_stay_inside_one_segment() -> None:
    # {query} is the client's: its "/", "%" and dots cannot walk the path.
    _, router = load("[[routes]]\nupstream = \"app\"\n[routes.rewrite]\n"
                     "regex = '^/q(.*)$'\nreplace = \"/api/search/{query}\"\n")
    for target, want in [("/q?../../admin", b"/api/search/..%2F..%2Fadmin?../../admin"),
                         ("/q?p=%2e%2e/%2e%2e", b"/api/search/p=%252e%252e%2F%252e%252e"
                                                b"?p=%2e%2e/%2e%2e"),
                         ("/q?p=100%", b"/api/search/p=100%25?p=100%")]:
        ctx, action = run(router, "GET", target)
        assert isinstance(action, ProxyAction)
        assert action.target_for(ctx) == want
    ctx, action = run(router, "GET", "/q?..")
    assert isinstance(action, ProxyAction)
    assert action.target_for(ctx) is None  # a whole ".." segment: refused


def test_captures_of_the_match_regex_in_rewrites_and_host() -> None:
    _, router = load(
        "[[routes]]\nupstream = \"app\"\n[routes.match]\npath_regex = '^/t/(?P<tenant>[a-z]+)/'\n"
        '[routes.rewrite]\nstrip_prefix = "/t"\nhost = "{tenant}.internal"\n')
    head = upstream_request(router, "GET", "/t/acme/x")
    assert first_line(head) == b"GET /acme/x HTTP/1.1"
    assert b"Host: acme.internal" in header_lines(head)
    # X-Forwarded-Host keeps the host the client asked for.
    assert b"X-Forwarded-Host: example.com" in header_lines(head)


def test_forwarded_target_is_the_normalized_path_with_the_query_as_sent() -> None:
    _, router = load('[[routes]]\nupstream = "app"\n')
    head = upstream_request(router, "GET", "/a/%2e%2e//b/%7euser?x=%2e%2e&y")
    assert first_line(head) == b"GET /b/~user?x=%2e%2e&y HTTP/1.1"
    ctx, _ = run(router, "GET", "/plain?q")
    assert ctx.target == b"/plain?q"


# -- header edits -----------------------------------------------------------------------------

def test_request_header_edits() -> None:
    _, router = load(
        '[[routes]]\nupstream = "app"\n[routes.request_headers]\n'
        'remove = ["X-Debug", "cookie"]\n'
        'set = { "X-Real-IP" = "{client_ip}", "X-Env" = "prod" }\n'
        'add = { "X-Tag" = "{method} {path}" }\n')
    head = upstream_request(router, "POST", "/x?y", headers=(
        ("X-Debug", "1"), ("Cookie", "a=b"), ("X-Env", "dev"), ("X-Env", "qa"),
        ("X-Tag", "old"), ("Accept", "*/*")))
    lines = header_lines(head)
    assert not any(line.lower().startswith((b"x-debug", b"cookie")) for line in lines)
    assert [line for line in lines if line.startswith(b"X-Env")] == [b"X-Env: prod"]
    assert b"X-Real-IP: 192.0.2.7" in lines
    assert [line for line in lines if line.startswith(b"X-Tag")] == [b"X-Tag: old",
                                                                     b"X-Tag: POST /x"]
    assert b"Accept: */*" in lines


def test_request_id_is_per_request() -> None:
    _, router = load('[[routes]]\nupstream = "app"\n[routes.request_headers]\n'
                     'set = { "X-Request-Id" = "{request_id}" }\n')
    ids = set()
    for _ in range(3):
        head = upstream_request(router, "GET", "/")
        found = [line for line in header_lines(head) if line.startswith(b"X-Request-Id: ")]
        assert len(found) == 1
        value = found[0].split(b": ", 1)[1]
        assert re.fullmatch(rb"[0-9a-f]{32}", value)
        ids.add(value)
    assert len(ids) == 3


def test_response_header_edits() -> None:
    _, router = load('[[routes]]\nupstream = "app"\n[routes.response_headers]\n'
                     'remove = ["X-Powered-By", "server"]\n'
                     'set = { "X-Frame-Options" = "DENY" }\nadd = { "X-Served-For" = "{host}" }\n')
    ctx, action = run(router, "GET", "/", host="Example.com:80")
    assert isinstance(action, ProxyAction) and action.response_edits is not None
    keep = HeadSink()
    ResponseParser(keep).feed(b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nX-Powered-By: php\r\n"
                              b"X-Frame-Options: SAMEORIGIN\r\nContent-Length: 0\r\n\r\n")
    edits = action.response_edits
    out = build_response_head(keep.head, 0, True, 1, b"", edits.drop, edits.render_for(ctx))
    lines = header_lines(out)
    assert b"X-Frame-Options: DENY" in lines and b"X-Frame-Options: SAMEORIGIN" not in lines
    assert not any(line.startswith((b"Server", b"X-Powered-By")) for line in lines)
    assert b"X-Served-For: example.com" in lines


# -- local answers ------------------------------------------------------------------------------

DATE = b"Sun, 29 Nov 2026 12:00:00 GMT"


def answer(router: Router, method: str, target: str, keep: bool = True, **kw: object) -> bytes:
    ctx, action = run(router, method, target, **kw)  # type: ignore[arg-type]
    assert isinstance(action, LocalAction)
    return action.answer_for(ctx, DATE, keep, method == "HEAD")


def test_redirect() -> None:
    _, router = load('[[routes]]\n'
                     'redirect = { to = "https://{host}{request_uri}", status = 301 }\n')
    out = answer(router, "GET", "/a/b?x=1", host="Example.com:8080")
    assert out.startswith(b"HTTP/1.1 301 Moved Permanently\r\n")
    assert b"\r\nLocation: https://example.com/a/b?x=1\r\n" in out
    assert b"\r\nContent-Length: 0\r\n" in out
    assert out.endswith(b"Date: " + DATE + b"\r\n\r\n")


def test_redirect_default_status_is_302() -> None:
    _, router = load('[[routes]]\nredirect = { to = "/elsewhere" }\n')
    assert answer(router, "GET", "/").startswith(b"HTTP/1.1 302 Found\r\n")


def test_respond_with_body_headers_and_keep_alive() -> None:
    _, router = load('[[routes]]\nrespond = { status = 200, body = "ok {path}\\n", '
                     'headers = { "Cache-Control" = "no-store" } }\n')
    out = answer(router, "GET", "/healthz")
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"ok /healthz\n"
    assert b"\r\nContent-Length: 12\r\n" in head + b"\r\n"
    assert b"\r\nCache-Control: no-store" in head
    assert b"\r\nContent-Type: text/plain; charset=utf-8" in head
    assert b"\r\nConnection: keep-alive" in head
    closing = answer(router, "GET", "/healthz", keep=False)
    assert b"\r\nConnection: close\r\n" in closing


def test_respond_head_request_has_no_body_but_the_length() -> None:
    _, router = load('[[routes]]\nrespond = { body = "hello" }\n')
    out = answer(router, "HEAD", "/")
    assert out.endswith(b"\r\n\r\n")
    assert b"\r\nContent-Length: 5\r\n" in out


def test_respond_own_content_type_and_response_edits() -> None:
    _, router = load('[[routes]]\nrespond = { status = 503, body = "{{}}", headers = '
                     '{ "Content-Type" = "application/json" } }\n'
                     '[routes.response_headers]\nremove = ["Server"]\n'
                     'add = { "Retry-After" = "30" }\n')
    out = answer(router, "GET", "/")
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Content-Type: application/json" in out
    assert b"text/plain" not in out
    assert b"Server:" not in out
    assert b"\r\nRetry-After: 30\r\n" in out
    assert out.endswith(b"\r\n\r\n{}")


def test_respond_204_has_no_body_or_length() -> None:
    _, router = load('[[routes]]\nrespond = { status = 204 }\n')
    out = answer(router, "GET", "/")
    assert out.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"Content-Length" not in out
    assert out.endswith(b"\r\n\r\n")


def test_template_variables() -> None:
    _, router = load(
        '[[routes]]\nrespond = { body = "{method}|{scheme}|{host}|{path}|{query}|'
        '{request_uri}|{client_ip}|{listener}|{{x}}" }\n')
    out = answer(router, "GET", "/a/./b?q=1", host="EX.com.")
    assert out.endswith(b"GET|http|ex.com|/a/b|q=1|/a/b?q=1|192.0.2.7|public|{x}")


def test_route_fields_replace_the_built_in_ones() -> None:
    # Never two Server, Date or Content-Type fields in an answer made here.
    _, router = load('[[routes]]\nrespond = { body = "x", headers = { "Server" = "mine", '
                     '"Date" = "Thu, 01 Jan 2026 00:00:00 GMT" } }\n'
                     '[routes.response_headers]\nadd = { "Content-Type" = "text/html" }\n')
    head = answer(router, "GET", "/").partition(b"\r\n\r\n")[0].lower()
    for name in (b"server", b"date", b"content-type"):
        assert head.count(b"\r\n" + name + b":") == 1, name
    assert b"\r\nserver: mine" in head and b"\r\ncontent-type: text/html" in head


def test_respond_205_has_a_zero_length_and_no_body() -> None:
    _, router = load('[[routes]]\nrespond = { status = 205 }\n')
    out = answer(router, "GET", "/")
    assert out.startswith(b"HTTP/1.1 205 Reset Content\r\n")
    assert b"\r\nContent-Length: 0\r\n" in out
    assert out.endswith(b"\r\n\r\n")


def test_redirect_location_cannot_carry_a_backslash() -> None:
    # "/\evil.com" in a Location is "//evil.com" to a browser: the path's
    # backslash arrives percent-encoded.
    _, router = load("[[routes]]\nmatch = { path_regex = '^/old(/.*)$' }\n"
                     'redirect = { to = "{1}" }\n')
    out = answer(router, "GET", "/old/\\evil.com")
    assert b"\r\nLocation: /%5Cevil.com\r\n" in out


def test_header_cookie_and_query_variables() -> None:
    _, router = load('[[routes]]\nrespond = { body = "{header.X-User}|{cookie.sid}|{query.v}|'
                     '{header.missing}|{cookie.none}|{query.none}" }\n')
    out = answer(router, "GET", "/?v=a%20b&v=2", headers=(
        ("x-user", "alice"), ("Cookie", "theme=dark; sid=abc123 ; x=1")))
    assert out.endswith(b"\r\n\r\nalice|abc123|a b|||")


def test_a_decoded_query_value_cannot_split_a_header() -> None:
    _, router = load('[[routes]]\nupstream = "app"\n[routes.request_headers]\n'
                     'set = { "X-V" = "{query.v}" }\n')
    head = upstream_request(router, "GET", "/?v=a%0D%0AX-Evil:%201")
    lines = header_lines(head)
    assert b"X-V: a%0D%0AX-Evil:%201" in lines  # ":" is a path character
    assert not any(line.startswith(b"X-Evil") for line in lines)
