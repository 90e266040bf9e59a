"""The compiled route matcher (_router) against a plain-Python reference model.

The reference reads the config objects directly, condition by condition, in
file order; the compiled router must pick the same route for every request,
and its linear explain path (`Rule.check`) must agree with both.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._http import MessageHead, RequestParser
from fastproxy._router import Router, Rule, new_context
from fastproxy._url import normalize_path
from fastproxy.routeconf import Route, RouteMatch, ValueTest


class HeadSink:
    """A parser handler that keeps the last head (request or response)."""

    head: MessageHead | None = None

    def on_head(self, head: MessageHead) -> None:
        self.head = head

    def on_body(self, data: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


def parse(method: str, target: str, host: str | None, headers: Sequence[tuple[str, str]] = (),
          version: str = "1.1") -> MessageHead:
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    sink = HeadSink()
    RequestParser(sink).feed(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert sink.head is not None
    return sink.head


def match(**kw: object) -> RouteMatch:
    fields: dict[str, object] = dict(
        hosts=None, paths=(), path_prefixes=(), whole_segments=False, path_regex=None,
        methods=None, headers=(), query=(), client_ips=None, listeners=None)
    fields.update(kw)
    return RouteMatch(**fields)  # type: ignore[arg-type]


def route(index: int, m: RouteMatch) -> Route:
    return Route(index=index, name=None, match=m, upstream=f"u{index}", redirect=None,
                 respond=None, rewrite=None, request_headers=None, response_headers=None)


LISTENERS = {"public": 0, "admin": 1}


def make_router(matches: Sequence[RouteMatch], defaults: Sequence[bytes | None] = ()) -> Router:
    return Router([Rule(route(i, m), i, LISTENERS) for i, m in enumerate(matches)], defaults)


def decide(router: Router, head: MessageHead, *, ip: str = "127.0.0.1",
           listener: int = 0) -> int | None:
    """The compiled router's choice (the action is the route index), checked
    against the linear explain path."""
    ctx = new_context(head, True, ip.encode(), b"http", listener, b"l")
    assert ctx.path is not None
    rule = router.route(ctx, ctx.host_header)
    steps, fast = router.explain(ctx, ctx.host_header)
    linear = steps[-1][0] if steps and steps[-1][1] == 0 else None
    assert fast is rule
    assert linear is rule, (steps, rule)
    return None if rule is None else rule.action


# -- the reference model ------------------------------------------------------------------


def ref_host(header: bytes | None) -> str:
    if not header:
        return ""
    text = header.decode("latin-1")
    if text.startswith("["):
        end = text.find("]")
        return (text[: end + 1] if end > 0 else text).lower()
    return text.rpartition(":")[0].rstrip(".").lower() if ":" in text else text.rstrip(".").lower()


def ref_host_ok(hosts: tuple[str, ...] | None, host: str) -> bool:
    if hosts is None:
        return True
    for h in hosts:
        if h.startswith("*."):
            if host.endswith(h[1:]) and len(host) > len(h) - 1:
                return True
        elif h == host:
            return True
    return False


def ref_test(test: ValueTest, values: list[str]) -> bool:
    if test.kind == "present":
        return bool(values)
    if test.kind == "absent":
        return not values
    if test.kind == "equals":
        return test.value in values
    assert test.value is not None
    return any(re.search(test.value, v) for v in values)


def ref_route(matches: Sequence[RouteMatch], head: MessageHead, ip: str = "127.0.0.1",
              listener: int = 0, defaults: Sequence[bytes | None] = ()) -> int | None:
    raw_path, _, query = head.target.decode().partition("?")
    norm = normalize_path(raw_path.encode(), True)
    assert norm is not None
    path = norm.decode()
    host = ref_host(head.host)
    if all(m.hosts is None or not ref_host_ok(m.hosts, host) for m in matches):
        default = defaults[listener] if listener < len(defaults) else None
        if default is not None:
            host = default.decode()
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    names = {v: k for k, v in LISTENERS.items()}
    for i, m in enumerate(matches):
        if not ref_host_ok(m.hosts, host):
            continue
        if m.paths and path not in m.paths:
            continue
        if m.path_prefixes and not any(
                path.startswith(p) and (not m.whole_segments or p.endswith("/")
                                        or len(path) == len(p) or path[len(p)] == "/")
                for p in m.path_prefixes):
            continue
        if m.path_regex is not None and not re.search(m.path_regex, path):
            continue
        if m.methods is not None and head.method.decode() not in m.methods:
            continue
        if not all(ref_test(t, [v.decode() for v in head.get_all(t.name.encode())])
                   for t in m.headers):
            continue
        if not all(ref_test(t, [v for k, v in pairs if k == t.name][:1]) for t in m.query):
            continue
        if m.client_ips is not None and not any(address in n for n in m.client_ips):
            continue
        if m.listeners is not None and names[listener] not in m.listeners:
            continue
        return i
    return None


# -- tables ----------------------------------------------------------------------------------

TABLE_ROUTES = [
    match(hosts=("api.example.com",), path_prefixes=("/v1",), whole_segments=True),   # 0
    match(hosts=("*.example.com",), paths=("/healthz",)),                              # 1
    match(hosts=("*.example.com", "example.org"), path_regex=r"^/u/(?P<id>[0-9]+)$"),  # 2
    match(path_prefixes=("/static/", "/assets"), methods=("GET", "HEAD")),             # 3
    match(path_prefixes=("/api",), headers=(ValueTest("x-env", "equals", "canary"),)),  # 4
    match(path_prefixes=("/api",), query=(ValueTest("debug", "present", None),)),     # 5
    match(path_prefixes=("/admin",), client_ips=(ipaddress.ip_network("10.0.0.0/8"),)),  # 6
    match(path_prefixes=("/admin",), listeners=("admin",)),                           # 7
    match(hosts=("[::1]",)),                                                          # 8
    match(paths=("/exact",)),                                                         # 9
    match(headers=(ValueTest("user-agent", "regex", "^curl/"),)),                     # 10
    match(path_prefixes=("/",), headers=(ValueTest("x-block", "absent", None),)),     # 11
]


@pytest.mark.parametrize(("method", "target", "host", "headers", "ip", "listener", "want"), [
    ("GET", "/v1", "api.example.com", (), "127.0.0.1", 0, 0),
    ("GET", "/v1/users", "API.Example.COM.:8443", (), "127.0.0.1", 0, 0),
    ("GET", "/v1x", "api.example.com", (), "127.0.0.1", 0, 11),          # whole segments
    ("GET", "/healthz", "a.b.example.com", (), "127.0.0.1", 0, 1),        # wildcard, 2 labels
    ("GET", "/healthz", "example.com", (), "127.0.0.1", 0, 11),           # not the bare domain
    ("GET", "/u/42", "www.example.com", (), "127.0.0.1", 0, 2),
    ("GET", "/u/42", "example.org", (), "127.0.0.1", 0, 2),
    ("GET", "/u/42x", "example.org", (), "127.0.0.1", 0, 11),
    ("GET", "/static/app.js", "x", (), "127.0.0.1", 0, 3),
    ("POST", "/static/app.js", "x", (), "127.0.0.1", 0, 11),             # method
    ("HEAD", "/assetsfoo", "x", (), "127.0.0.1", 0, 3),                   # bytewise prefix
    ("GET", "/api/x", "x", (("X-Env", "canary"),), "127.0.0.1", 0, 4),
    ("GET", "/api/x", "x", (("X-Env", "prod"), ("X-Env", "canary")), "127.0.0.1", 0, 4),
    ("GET", "/api/x", "x", (("X-Env", "Canary"),), "127.0.0.1", 0, 11),   # values exact
    ("GET", "/api/x?debug", "x", (), "127.0.0.1", 0, 5),
    ("GET", "/api/x?a=1&debug=0", "x", (), "127.0.0.1", 0, 5),
    ("GET", "/api/x?debugx=1", "x", (), "127.0.0.1", 0, 11),
    ("GET", "/admin", "x", (), "10.1.2.3", 0, 6),
    ("GET", "/admin", "x", (), "::ffff:10.1.2.3", 0, 6),                  # mapped IPv4
    ("GET", "/admin", "x", (), "192.168.0.1", 1, 7),                     # listener
    ("GET", "/admin", "x", (), "192.168.0.1", 0, 11),
    ("GET", "/anything", "[::1]:8080", (), "127.0.0.1", 0, 8),
    ("GET", "/exact", "x", (), "127.0.0.1", 0, 9),
    ("GET", "/exact/", "x", (), "127.0.0.1", 0, 11),
    ("GET", "/%65xact", "x", (), "127.0.0.1", 0, 9),                      # %65 = "e"
    ("GET", "/a/../exact", "x", (), "127.0.0.1", 0, 9),                   # dot segments
    ("GET", "//exact", "x", (), "127.0.0.1", 0, 9),                       # merged slashes
    ("GET", "/%2e%2e/x/..%2Fexact", "x", (), "127.0.0.1", 0, None),       # see below
    ("GET", "/x", "x", (("User-Agent", "curl/8.0"),), "127.0.0.1", 0, 10),
    ("GET", "/x", "x", (("X-Block", "1"),), "127.0.0.1", 0, None),        # nothing left
])
def test_table(method: str, target: str, host: str, headers: tuple[tuple[str, str], ...],
               ip: str, listener: int, want: int | None) -> None:
    head = parse(method, target, host, headers)
    if target.startswith("/%2e%2e/"):  # ".." above the root: refused before routing
        assert new_context(head, True, ip.encode(), b"http", 0, b"l").path is None
        return
    router = make_router(TABLE_ROUTES)
    assert decide(router, head, ip=ip, listener=listener) == want
    assert ref_route(TABLE_ROUTES, head, ip, listener) == want


def test_captures_are_set_for_the_winner() -> None:
    router = make_router(TABLE_ROUTES)
    ctx = new_context(parse("GET", "/u/7", "w.example.com"), True, b"1.1.1.1", b"http", 0, b"")
    rule = router.route(ctx, ctx.host_header)
    assert rule is not None and rule.action == 2
    assert ctx.captures.group("id") == b"7"


def test_listener_default_host() -> None:
    matches = [match(hosts=("a.example",), path_prefixes=("/",)),
               match(hosts=("b.example",), path_prefixes=("/",))]
    router = make_router(matches, defaults=[b"b.example", None])
    # An unknown or missing host is routed as the listener's default ...
    assert decide(router, parse("GET", "/", "unknown.example")) == 1
    assert decide(router, parse("GET", "/", None, version="1.0")) == 1
    ctx = new_context(parse("GET", "/", "unknown.example"), True, b"1.1.1.1", b"http", 0, b"")
    router.route(ctx, ctx.host_header)
    assert (ctx.route_host, ctx.host) == (b"b.example", b"unknown.example")
    # ... a known one is not, and a listener without a default finds nothing.
    assert decide(router, parse("GET", "/", "A.example")) == 0
    assert decide(router, parse("GET", "/", "unknown.example"), listener=1) is None


def test_first_match_in_file_order_beats_longer_prefix() -> None:
    router = make_router([match(path_prefixes=("/api",)), match(path_prefixes=("/api/v2",))])
    assert decide(router, parse("GET", "/api/v2/x", "h")) == 0


def test_host_classes_are_shared() -> None:
    # Hosts with the same candidate rules share one table.
    matches = [match(hosts=(f"h{i}.example",), path_prefixes=("/",)) for i in range(50)]
    matches.append(match(path_prefixes=("/",)))
    router = make_router(matches)
    assert router.table_count == 51
    same = make_router([match(hosts=("a.example", "b.example"))])
    assert same.table_count == 2  # the any-host table and one shared by both names


# -- the property ---------------------------------------------------------------------------

HOSTS = ["a.com", "b.a.com", "*.a.com", "*.b.a.com", "c.org", "[::1]"]
PATHS = ["/", "/a", "/a/", "/a/b", "/ab", "/b", "/a/b/c"]

hosts_st = st.none() | st.lists(st.sampled_from(HOSTS), min_size=1, max_size=3,
                                unique=True).map(tuple)
test_st = st.builds(
    ValueTest,
    st.sampled_from(["x-a", "x-b"]),
    st.sampled_from(["present", "absent", "equals", "regex"]),
    st.sampled_from(["1", "2"]),
).map(lambda t: ValueTest(t.name, t.kind, None if t.kind in ("present", "absent")
                          else (t.value if t.kind == "equals" else f"^{t.value}")))
query_st = test_st.map(lambda t: ValueTest(t.name[2:], t.kind, t.value))


@st.composite
def matches_st(draw: st.DrawFn) -> RouteMatch:
    kind = draw(st.sampled_from(["none", "exact", "prefix", "regex"]))
    return match(
        hosts=draw(hosts_st),
        paths=tuple(draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2)))
        if kind == "exact" else (),
        path_prefixes=tuple(draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2)))
        if kind == "prefix" else (),
        whole_segments=draw(st.booleans()) if kind == "prefix" else False,
        path_regex=draw(st.sampled_from([r"^/a", r"b$", r"/a/(b)"])) if kind == "regex" else None,
        methods=draw(st.none() | st.just(("GET",)) | st.just(("POST", "PUT"))),
        headers=tuple(draw(st.lists(test_st, max_size=1))),
        query=tuple(draw(st.lists(query_st, max_size=1))),
        client_ips=draw(st.none() | st.just((ipaddress.ip_network("127.0.0.0/8"),))),
        listeners=draw(st.none() | st.just(("admin",))),
    )


@settings(max_examples=400, deadline=None)
@given(matches=st.lists(matches_st(), min_size=1, max_size=8),
       method=st.sampled_from(["GET", "POST", "DELETE"]),
       host=st.sampled_from(["a.com", "B.A.COM:80", "x.b.a.com.", "zz.a.com", "c.org",
                             "d.net", "[::1]:1"]) | st.none(),
       path=st.sampled_from([*PATHS, "/a/b/c/d", "/abc", "//a", "/a/./b", "/c"]),
       query=st.sampled_from(["", "?a=1", "?b=2&a", "?c"]),
       headers=st.lists(st.tuples(st.sampled_from(["X-A", "x-b"]), st.sampled_from(["1", "2"])),
                        max_size=2),
       ip=st.sampled_from(["127.0.0.1", "10.0.0.1"]),
       listener=st.sampled_from([0, 1]),
       default=st.none() | st.sampled_from([b"a.com", b"q.a.com", b"nowhere"]))
def test_compiled_router_matches_reference(
        matches: list[RouteMatch], method: str, host: str | None, path: str, query: str,
        headers: list[tuple[str, str]], ip: str, listener: int, default: bytes | None) -> None:
    head = parse(method, path + query, host, headers, version="1.1" if host else "1.0")
    defaults = [default, None]
    router = make_router(matches, defaults)
    assert decide(router, head, ip=ip, listener=listener) == ref_route(
        matches, head, ip, listener, defaults)


def test_misuse_from_python_is_an_error_not_a_crash() -> None:
    from fastproxy._router import PathTable, RequestContext

    with pytest.raises(TypeError):
        Router([object()])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        PathTable((object(),))  # type: ignore[arg-type]
    ctx = new_context(parse("GET", "/x", "h"), True, b"1.1.1.1", b"http", 0, b"")
    assert PathTable.__new__(PathTable).lookup(ctx) is None  # an empty trie
    router = make_router([match(hosts=("h",))], defaults=[b"h"])
    ctx.listener = -1  # no such listener: no default host, no crash
    assert router.route(ctx, b"other") is None
    empty = RequestContext()
    empty.path = None
    with pytest.raises(ValueError):
        router.route(empty, b"h")


# -- TLS conditions -----------------------------------------------------------------------

ALICE = {"subject": "CN=alice,O=Example", "issuer": "CN=Example CA", "verify": "SUCCESS",
         "fingerprint": "ab" * 32, "serial": "1F"}


def decide_tls(router: Router, tls: dict[str, str] | None) -> int | None:
    ctx = new_context(parse("GET", "/x", "example.com"), True, b"127.0.0.1",
                      b"https" if tls is not None else b"http", 0, b"l")
    ctx.tls = tls
    rule = router.route(ctx, ctx.host_header)
    steps, fast = router.explain(ctx, ctx.host_header)
    assert fast is rule
    linear = steps[-1][0] if steps and steps[-1][1] == 0 else None
    assert linear is rule
    return None if rule is None else rule.action


def test_tls_and_client_certificate_conditions() -> None:
    router = make_router([
        match(client_cert=(ValueTest("subject", "regex", "CN=alice"),
                           ValueTest("verify", "equals", "SUCCESS"))),
        match(tls=True, client_cert=(ValueTest("fingerprint", "present", None),)),
        match(tls=True),
        match(tls=False),
    ])
    assert decide_tls(router, ALICE) == 0
    assert decide_tls(router, {**ALICE, "subject": "CN=bob"}) == 1
    assert decide_tls(router, {"verify": "NONE"}) == 2      # TLS without a certificate
    assert decide_tls(router, None) == 3                    # plain HTTP


def test_route_explain_names_the_tls_condition(tmp_path: Path) -> None:
    from fastproxy.config import parse_config
    from fastproxy.routing import explain

    config = parse_config({
        "listeners": [{"address": "127.0.0.1:8080"}],
        "upstreams": {"a": {"servers": ["127.0.0.1:9000"]}},
        "routes": [
            {"match": {"client_cert": {"subject": "CN=alice"}}, "upstream": "a"},
            {"match": {"tls": True}, "upstream": "a"},
            {"upstream": "a"},
        ],
    }, str(tmp_path / "c.toml"))
    text = "\n".join(explain(config, "GET", "http://example.com/"))
    assert "client certificate subject" in text and "the request is not over TLS" in text
