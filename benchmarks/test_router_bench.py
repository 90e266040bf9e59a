"""Micro benchmarks of route matching (fastproxy._router): one route() call per op."""

from __future__ import annotations

import pytest

from fastproxy._router import Router
from fastproxy.config import Route, RouteMatch


def make_router(spec: list[tuple[str | None, str]]) -> Router:
    routes = [Route(index=i, match=RouteMatch(host=h, path_prefix=p), upstream=f"u{i}")
              for i, (h, p) in enumerate(spec)]
    return Router(routes, {f"u{i}": f"u{i}" for i in range(len(spec))})


def test_route_catch_all(timed):
    router = make_router([(None, "/")])
    assert timed(lambda: router.route(b"www.example.com", b"/index.html")) == "u0"


@pytest.mark.parametrize("n", [10, 100])
def test_route_host_and_prefix_last_of_n(timed, n):
    # The worst case of the linear scan: the request matches the last route.
    router = make_router([(f"site{i}.example.com", f"/app{i}") for i in range(n)])
    host = f"Site{n - 1}.example.com:443".encode()
    path = f"/app{n - 1}/users/42".encode()
    assert timed(lambda: router.route(host, path)) == f"u{n - 1}"
