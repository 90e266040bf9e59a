"""The compiled router (_router) and balancer (_balance) against simple reference models."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._balance import RoundRobin
from fastproxy._router import Router, normalize_host
from fastproxy.config import Route, RouteMatch

# -- normalize_host -------------------------------------------------------------------


@pytest.mark.parametrize(("header", "want"), [
    (None, b""),
    (b"", b""),
    (b"Example.COM", b"example.com"),
    (b"example.com:8080", b"example.com"),
    (b"example.com.", b"example.com"),
    (b"EXAMPLE.com.:443", b"example.com"),
    (b"[::1]:8080", b"[::1]"),
    (b"[2001:DB8::1]", b"[2001:db8::1]"),
    (b"[::1", b"[::1"),  # no closing bracket: lower-cased as is
    (b"127.0.0.1:80", b"127.0.0.1"),
])
def test_normalize_host(header: bytes | None, want: bytes) -> None:
    assert normalize_host(header) == want


def ref_normalize(host: bytes | None) -> bytes:
    if not host:
        return b""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    if b":" in host:
        host = host[: host.rfind(b":")]
    return host.rstrip(b".").lower()


@given(st.binary(max_size=40) | st.none())
def test_normalize_host_matches_reference(host: bytes | None) -> None:
    assert normalize_host(host) == ref_normalize(host)


# -- Router ---------------------------------------------------------------------------


def routes(spec: list[tuple[str | None, str]]) -> list[Route]:
    return [Route(index=i, match=RouteMatch(host=h, path_prefix=p), upstream=f"u{i}")
            for i, (h, p) in enumerate(spec)]


def ref_route(spec: list[tuple[str | None, str]], host: bytes | None, path: bytes) -> str | None:
    by_host = any(h is not None for h, _ in spec)
    name = ref_normalize(host) if by_host else b""
    for i, (h, p) in enumerate(spec):
        if h is not None and h.encode() != name:
            continue
        if path.startswith(p.encode()):
            return f"u{i}"
    return None


def make_router(spec: list[tuple[str | None, str]]) -> Router:
    return Router(routes(spec), {f"u{i}": f"u{i}" for i in range(len(spec))})


def test_first_match_in_file_order() -> None:
    r = make_router([(None, "/api/v2"), (None, "/api"), (None, "/")])
    assert r.route(b"x", b"/api/v2/users") == "u0"
    assert r.route(b"x", b"/api/v1") == "u1"
    assert r.route(b"x", b"/apix") == "u1"  # a plain prefix, not segment-aware (yet)
    assert r.route(b"x", b"/") == "u2"
    assert not r.by_host


def test_host_rules_and_fallback() -> None:
    r = make_router([("a.example", "/"), ("b.example", "/static"), (None, "/")])
    assert r.by_host
    assert r.route(b"A.Example:8080", b"/x") == "u0"
    assert r.route(b"b.example.", b"/static/app.js") == "u1"
    assert r.route(b"b.example", b"/other") == "u2"
    assert r.route(None, b"/") == "u2"  # HTTP/1.0 without Host


def test_no_match_is_none() -> None:
    r = make_router([("a.example", "/"), (None, "/api")])
    assert r.route(b"b.example", b"/") is None
    assert r.match(b"b.example", b"/ap") is None


HOSTS = st.sampled_from(["a.example", "b.example", "c.example"])
PREFIXES = st.sampled_from(["/", "/a", "/a/b", "/b", "/ab"])


@settings(max_examples=300)
@given(spec=st.lists(st.tuples(st.none() | HOSTS, PREFIXES), min_size=1, max_size=8),
       host=st.none() | st.sampled_from([b"a.example", b"B.EXAMPLE:81", b"c.example.",
                                         b"d.example", b""]),
       path=st.sampled_from([b"/", b"/a", b"/a/", b"/a/b/c", b"/ab", b"/b", b"/c", b"*"]))
def test_router_matches_reference(spec: list[tuple[str | None, str]], host: bytes | None,
                                  path: bytes) -> None:
    assert make_router(spec).route(host, path) == ref_route(spec, host, path)


# -- RoundRobin -------------------------------------------------------------------------


def ref_smooth_wrr(weights: list[int], n: int) -> list[int]:
    """nginx's smooth weighted round robin, written plainly."""
    current = [0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(n):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


def test_weighted_sequence_is_interleaved() -> None:
    rr = RoundRobin(["a", "b", "c"], [5, 1, 1])
    assert [rr.pick() for _ in range(7)] == ["a", "a", "b", "a", "c", "a", "a"]


def test_single_peer() -> None:
    rr = RoundRobin(["only"], [3])
    assert [rr.pick() for _ in range(3)] == ["only"] * 3
    assert rr.peers == ["only"]


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_round_robin_matches_reference(weights: list[int]) -> None:
    n = 3 * sum(weights)
    rr = RoundRobin(list(range(len(weights))), weights)
    got = [rr.pick() for _ in range(n)]
    assert got == ref_smooth_wrr(weights, n)
    assert Counter(got) == {i: 3 * w for i, w in enumerate(weights)}


@pytest.mark.parametrize(("peers", "weights"), [([], []), (["a"], []), (["a", "b"], [1]),
                                                (["a"], [0]), (["a"], [-1])])
def test_round_robin_refuses_bad_input(peers: list[str], weights: list[int]) -> None:
    with pytest.raises(ValueError):
        RoundRobin(peers, weights)
