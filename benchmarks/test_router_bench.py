"""Micro benchmarks of route matching (fastproxy._router): one `Router.route` call per op.

The routing issue's target: host + prefix matching stays flat (within 2x) from
10 to 1,000 routes. Compare `test_host_prefix[1000]` with `test_host_prefix[10]`
in one run (`python -m pytest benchmarks/test_router_bench.py --benchmark-only`).
"""

from __future__ import annotations

import ipaddress

import pytest

from fastproxy._http import MessageHead, RequestParser
from fastproxy._router import RequestContext, Router, Rule, new_context
from fastproxy.routeconf import Route, RouteMatch, ValueTest


class _Sink:
    head: MessageHead | None = None

    def on_head(self, head: MessageHead) -> None:
        self.head = head

    def on_body(self, data: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


def request(target: str, host: str) -> RequestContext:
    sink = _Sink()
    RequestParser(sink).feed(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
                             "User-Agent: bench\r\nAccept: */*\r\n\r\n".encode())
    assert sink.head is not None
    return new_context(sink.head, True, b"127.0.0.1", b"http", 0, b"l")


def match(**kw: object) -> RouteMatch:
    fields: dict[str, object] = dict(
        hosts=None, paths=(), path_prefixes=(), whole_segments=False, path_regex=None,
        methods=None, headers=(), query=(), client_ips=None, listeners=None)
    fields.update(kw)
    return RouteMatch(**fields)  # type: ignore[arg-type]


def router_of(matches: list[RouteMatch]) -> Router:
    rules = [Rule(Route(index=i, name=None, match=m, upstream=f"u{i}", redirect=None,
                        respond=None, rewrite=None, request_headers=None,
                        response_headers=None), i, {"l": 0})
             for i, m in enumerate(matches)]
    return Router(rules, ())


def host_prefix_routes(n: int) -> list[RouteMatch]:
    """n routes over n/10 sites (at least one), ten API prefixes each, a catch-all last."""
    sites = max(1, n // 10)
    out = [match(hosts=(f"site{i % sites}.example.com",),
                 path_prefixes=(f"/api/v{i // sites}/items",), whole_segments=True)
           for i in range(n - 1)]
    out.append(match(path_prefixes=("/",)))
    return out


def with_regexes(n: int) -> list[RouteMatch]:
    """As host_prefix_routes, but every tenth route also has a method, a header
    test, a client range, or (every 50th) is a regex route of its host."""
    out = host_prefix_routes(n)
    for i in range(0, n - 1, 10):
        m = out[i]
        if i % 50 == 0:
            out[i] = match(hosts=m.hosts, path_regex=rf"^/users/(?P<id>[0-9]+)/v{i}$")
        else:
            out[i] = match(hosts=m.hosts, path_prefixes=m.path_prefixes, methods=("GET", "HEAD"),
                           headers=(ValueTest("accept", "present", None),),
                           client_ips=(ipaddress.ip_network("127.0.0.0/8"),))
    return out


def test_catch_all(timed):
    router = router_of([match()])
    ctx = request("/index.html", "www.example.com")
    assert timed(lambda: router.route(ctx, ctx.host_header)).action == 0


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_host_prefix(timed, n):
    """The last route of the last site: a linear scan's worst case."""
    routes = host_prefix_routes(n)
    router = router_of(routes)
    want = n - 2
    site, version = want % max(1, n // 10), want // max(1, n // 10)
    ctx = request(f"/api/v{version}/items/42?page=2", f"Site{site}.Example.com:443")
    assert timed(lambda: router.route(ctx, ctx.host_header)).action == want


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_host_prefix_with_regexes(timed, n):
    routes = with_regexes(n)
    router = router_of(routes)
    want = n - 2
    site, version = want % max(1, n // 10), want // max(1, n // 10)
    ctx = request(f"/api/v{version}/items/42", f"site{site}.example.com")
    assert timed(lambda: router.route(ctx, ctx.host_header)).action == want


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_no_route_matches_host(timed, n):
    """An unknown host falls through to the catch-all."""
    router = router_of(host_prefix_routes(n))
    ctx = request("/api/v0/items", "unknown.example.net")
    assert timed(lambda: router.route(ctx, ctx.host_header)).action == n - 1
