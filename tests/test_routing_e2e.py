"""Routing end to end (docs/routing-spec.md): one real proxy process with many routes,
three listeners and several real origin servers, driven by real clients.

One proxy serves the whole module (a start per test would dominate the run time).
Each origin answers "<name> <target>", so a response body tells which upstream got
the request and which target it was sent; `Origin.requests` shows what it received.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import requests

from servers import Origin, ProxyProcess, RawClient, RawResponse, Received, Reply, free_port

ORIGIN_NAMES = ["alpha", "beta", "gamma", "delta", "shop", "wild", "api", "rw"]

# What the "rw" origin answers: headers for the route's response edits to work on.
RW_REPLY_HEADERS = [("X-Powered-By", "Express"), ("X-Frame-Options", "SAMEORIGIN"),
                    ("Cache-Control", "public"), ("X-Keep", "1")]


# The headers of the "respond" route (a TOML inline table is written on one line).
RESPOND_HEADERS = '{ "Content-Type" = "text/plain; charset=utf-8", "X-Resp" = "yes" }'


def rw_handler(req: Received) -> Reply:
    return Reply(headers=list(RW_REPLY_HEADERS), body=f"rw {req.target}".encode())


def config_text(origins: dict[str, Origin], ports: dict[str, int], access_log: Path) -> str:
    third = f"127.0.0.1:{ports['third']}"
    upstreams = "\n".join(f'[upstreams.{name}]\nservers = ["{o.address}"]\n'
                          for name, o in origins.items())
    return f"""
[server]
workers = 1
shutdown_timeout = "2s"

[log]
access = "{access_log}"
level = "info"

[[listeners]]
address = "127.0.0.1:{ports['main']}"
name = "main"

[[listeners]]
address = "127.0.0.1:{ports['alt']}"
name = "alt"
default_host = "alt.example"

[[listeners]]
address = "{third}"

{upstreams}

# -- hosts, and file order across host and path conditions --------------------

[[routes]]
name = "order-first"
upstream = "alpha"
[routes.match]
path_prefix = "/order"

[[routes]]
name = "shop"
upstream = "shop"
[routes.match]
host = "shop.example"

[[routes]]
name = "special"
upstream = "gamma"
[routes.match]
host = "special.wild.example"

[[routes]]
name = "wild"
upstream = "wild"
[routes.match]
host = "*.wild.example"

[[routes]]
name = "late"            # after the wildcard that covers it: never used
upstream = "delta"
[routes.match]
host = "late.wild.example"

[[routes]]
name = "multi"
upstream = "beta"
[routes.match]
host = ["one.example", "two.example"]

[[routes]]
name = "alt-redirect"
redirect = {{ to = "http://{{host}}/landing{{path}}", status = 307 }}
[routes.match]
host = "alt.example"
path = "/dh-redirect"

[[routes]]
name = "alt-default"
upstream = "delta"
[routes.match]
host = "alt.example"
path_prefix = "/dh"

# -- paths ---------------------------------------------------------------------

[[routes]]
name = "api"
upstream = "api"
[routes.match]
path_prefix = "/api"
whole_segments = true

[[routes]]
name = "pre"
upstream = "alpha"
[routes.match]
path_prefix = "/pre"

[[routes]]
name = "exact"
upstream = "beta"
[routes.match]
path = "/exact"

[[routes]]
name = "exact-multi"
upstream = "gamma"
[routes.match]
path = ["/e1", "/e2"]

[[routes]]
name = "user"
upstream = "rw"
[routes.match]
path_regex = '^/u/(?P<uid>[0-9]+)$'
[routes.rewrite]
regex = '^/u/(?P<num>[0-9]+)$'
replace = "/users/{{num}}/profile"
set_query = {{ uid = "{{uid}}" }}
[routes.request_headers]
set = {{ "X-User" = "{{uid}}" }}

[[routes]]
name = "report"
redirect = {{ to = "/reports/{{year}}", status = 308 }}
[routes.match]
path_regex = 'report-(?P<year>[0-9]{{4}})\\.pdf$'

# -- methods, headers, query, client address, listener --------------------------

[[routes]]
name = "m-write"
upstream = "alpha"
[routes.match]
path = "/method"
methods = ["post", "PUT"]

[[routes]]
name = "m-read"
upstream = "beta"
[routes.match]
path = "/method"
methods = "GET"

[[routes]]
name = "hdr-canary"
upstream = "alpha"
[routes.match]
path = "/hdr"
headers = {{ "X-Env" = "canary" }}

[[routes]]
name = "hdr-debug"
upstream = "beta"
[routes.match]
path = "/hdr"
headers = {{ "X-Debug" = true }}

[[routes]]
name = "hdr-curl"
upstream = "gamma"
[routes.match]
path = "/hdr"
headers = {{ "User-Agent" = {{ regex = "^curl/" }} }}

[[routes]]
name = "hdr-absent"
upstream = "delta"
[routes.match]
path = "/hdr"
headers = {{ "X-Block" = false }}

[[routes]]
name = "all-of"
upstream = "alpha"
[routes.match]
path = "/all"
methods = "GET"
headers = {{ "X-A" = "1" }}
query = {{ b = true }}

[[routes]]
name = "q-debug"
upstream = "alpha"
[routes.match]
path = "/q"
query = {{ debug = true }}

[[routes]]
name = "q-v2"
upstream = "beta"
[routes.match]
path = "/q"
query = {{ v = "2" }}

[[routes]]
name = "ip-ten"
upstream = "alpha"
[routes.match]
path = "/ip"
client_ip = "10.0.0.0/8"

[[routes]]
name = "ip-loop"
upstream = "beta"
[routes.match]
path = "/ip"
client_ip = ["127.0.0.1/32", "::1"]

[[routes]]
name = "lis-alt"
upstream = "alpha"
[routes.match]
path = "/lis"
listener = "alt"

[[routes]]
name = "lis-third"
upstream = "gamma"
[routes.match]
path = "/lis"
listener = "{third}"

[[routes]]
name = "lis-main"
upstream = "beta"
[routes.match]
path = "/lis"
listener = ["main"]

# -- redirect and respond ---------------------------------------------------------

[[routes]]
name = "redirect-301"
redirect = {{ to = "https://{{host}}{{request_uri}}", status = 301 }}
[routes.match]
path = "/old"

[[routes]]
name = "redirect-default"
redirect = {{ to = "/new{{path}}" }}
[routes.match]
path_prefix = "/moved"
whole_segments = true

[[routes]]
name = "respond"
respond = {{ status = 202, body = "hello\\n", headers = {RESPOND_HEADERS} }}
[routes.match]
path = "/respond"
[routes.response_headers]
set = {{ "X-Frame-Options" = "DENY" }}

[[routes]]
name = "star"
upstream = "rw"
[routes.match]
host = "star.example"
[routes.rewrite]
host = "backend.internal"

[[routes]]
name = "nocontent"
respond = {{ status = 204 }}
[routes.match]
path = "/nocontent"

[[routes]]
name = "empty"
respond = {{}}
[routes.match]
path = "/empty"

# -- rewrites and header edits ------------------------------------------------------

[[routes]]
name = "strip"
upstream = "rw"
[routes.match]
path_prefix = "/strip"
whole_segments = true
[routes.rewrite]
strip_prefix = "/strip"

[[routes]]
name = "add"
upstream = "rw"
[routes.match]
path_prefix = "/add"
whole_segments = true
[routes.rewrite]
add_prefix = "/v2"

[[routes]]
name = "strip-add"
upstream = "rw"
[routes.match]
path_prefix = "/both-ends"
whole_segments = true
[routes.rewrite]
strip_prefix = "/both-ends"
add_prefix = "/v2"

[[routes]]
name = "legacy"
upstream = "rw"
[routes.match]
path_prefix = "/legacy/"
[routes.rewrite]
regex = '^/legacy/(?P<rest>.*)$'
replace = "/modern/{{rest}}"

[[routes]]
name = "dots"
upstream = "rw"
[routes.match]
path_prefix = "/dots/"
[routes.rewrite]
regex = '^/dots/(.*)$'
replace = "/x//{{1}}/%7e"

[[routes]]
name = "query-path"
upstream = "rw"
[routes.match]
path = "/query-path"
[routes.rewrite]
regex = '^/query-path$'
replace = "/search/{{query}}"

[[routes]]
name = "climb"
upstream = "rw"
[routes.match]
path_prefix = "/climb/"
[routes.rewrite]
regex = '^/climb/(.*)$'
replace = "/../{{1}}"

[[routes]]
name = "qs"
upstream = "rw"
[routes.match]
path = "/qs"
[routes.rewrite]
set_query = {{ version = "2" }}
remove_query = ["utm_source"]

[[routes]]
name = "host-override"
upstream = "rw"
[routes.match]
path = "/hostov"
[routes.rewrite]
host = "backend.internal"

[[routes]]
name = "hdrs"
upstream = "rw"
[routes.match]
path = "/hdrs"
[routes.request_headers]
remove = ["X-Debug"]
set = {{ "X-Real-IP" = "{{client_ip}}", "X-Request-Id" = "{{request_id}}" }}
add = {{ "X-Tag" = "a" }}
[routes.response_headers]
remove = ["X-Powered-By"]
set = {{ "X-Frame-Options" = "DENY", "X-Request-Id" = "{{request_id}}" }}
add = {{ "Cache-Control" = "no-store" }}
"""


@dataclass
class Setup:
    origins: dict[str, Origin]
    proxy: ProxyProcess
    ports: dict[str, int]

    @property
    def port(self) -> int:
        return self.ports["main"]


def _wait_listening(port: int, proxy: ProxyProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"port {port} not listening:\n{proxy.log()}") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("routing")
    origins: dict[str, Origin] = {}
    proxy: ProxyProcess | None = None
    try:
        for name in ORIGIN_NAMES:
            origins[name] = Origin(rw_handler if name == "rw" else None, name).start()
        ports = {"main": free_port(), "alt": free_port(), "third": free_port()}
        text = config_text(origins, ports, workdir / "access.log")
        proxy = ProxyProcess(text, workdir, ports["main"])
        proxy.start()
        _wait_listening(ports["alt"], proxy)
        _wait_listening(ports["third"], proxy)
        yield Setup(origins, proxy, ports)
    finally:
        if proxy is not None and proxy.proc is not None:
            proxy.stop()
        for origin in origins.values():
            origin.stop()


# -- helpers ----------------------------------------------------------------------------


def request_bytes(target: str | bytes, host: str | None = "test.example", method: str = "GET",
                  headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
                  version: str = "HTTP/1.1") -> bytes:
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [method.encode() + b" " + target + b" " + version.encode()]
    if host is not None:
        lines.append(b"Host: " + host.encode())
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def send(env: Setup, target: str | bytes, host: str | None = "test.example",
         method: str = "GET", headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
         port: int | None = None, version: str = "HTTP/1.1") -> RawResponse:
    """One request on a fresh connection, exact bytes; the response as read."""
    with RawClient(port or env.port) as c:
        c.send(request_bytes(target, host, method, headers, body, version))
        return c.read_response(head_request=method == "HEAD")


def served_by(resp: RawResponse) -> tuple[int, str]:
    """(status, "<origin name> <target>") of a proxied answer."""
    return resp.status, resp.body.decode("latin-1")


def assert_closed_cleanly(c: RawClient) -> None:
    """The peer ends the connection with a FIN (no more bytes, no reset)."""
    assert not c.buf, f"unexpected bytes after the response: {bytes(c.buf)!r}"
    try:
        data = c.sock.recv(4096)
    except ConnectionResetError:
        pytest.fail("connection reset instead of closed")
    except TimeoutError:
        pytest.fail("connection not closed by the proxy")
    assert data == b"", f"unexpected bytes after the response: {data!r}"


class BoundRawClient(RawClient):
    """A RawClient whose socket is bound to a given local address before connecting."""

    def __init__(self, port: int, source: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.buf = bytearray()
        self.eof = False


def all_values(req: Received, name: str) -> list[str]:
    return [v for k, v in req.headers if k.lower() == name.lower()]


# -- the config is valid as written -------------------------------------------------------


def test_config_is_accepted_by_check(env: Setup) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fastproxy", "check", str(env.proxy.config_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 listeners" in out.stdout + out.stderr


# -- host --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["shop.example", "SHOP.Example", "shop.example:8080",
                                  "shop.example.", "Shop.EXAMPLE.:1234"])
def test_exact_host(env: Setup, host: str) -> None:
    assert served_by(send(env, "/x?y=1", host=host)) == (200, "shop /x?y=1")


@pytest.mark.parametrize("host", ["a.wild.example", "a.b.wild.example", "A.Wild.EXAMPLE.:80",
                                  "late.wild.example"])
def test_wildcard_host(env: Setup, host: str) -> None:
    # late.wild.example has its own route, but after the wildcard: first match wins.
    assert served_by(send(env, "/w", host=host)) == (200, "wild /w")


def test_exact_host_before_wildcard_wins(env: Setup) -> None:
    assert served_by(send(env, "/w", host="Special.Wild.Example")) == (200, "gamma /w")


@pytest.mark.parametrize("host", ["wild.example", "xwild.example", "shop.example.com",
                                  "example", "wild.example.org"])
def test_host_not_matched(env: Setup, host: str) -> None:
    # "*.wild.example" needs one label or more before ".wild.example".
    assert send(env, "/h", host=host).status == 404


@pytest.mark.parametrize("host", ["one.example", "TWO.example:99"])
def test_host_array(env: Setup, host: str) -> None:
    assert served_by(send(env, "/m", host=host)) == (200, "beta /m")


def test_first_match_in_file_order_across_host_and_path(env: Setup) -> None:
    # "/order" (no host condition) comes before the shop.example route.
    assert served_by(send(env, "/order/1", host="shop.example")) == (200, "alpha /order/1")
    assert served_by(send(env, "/other", host="shop.example")) == (200, "shop /other")


def test_path_routes_apply_to_unnamed_hosts(env: Setup) -> None:
    assert served_by(send(env, "/api/x", host="unknown.example")) == (200, "api /api/x")


def test_absolute_form_target_routes_by_its_authority(env: Setup) -> None:
    # RFC 9112 3.2.2: the authority of an absolute-form target wins over Host.
    resp = send(env, "http://Shop.Example:81/x//y?z", host="other.example")
    assert served_by(resp) == (200, "shop /x/y?z")
    assert all_values(env.origins["shop"].requests[-1], "Host") == ["Shop.Example:81"]


# -- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/api", "/api/", "/api/x/y", "/api?z=1"])
def test_path_prefix_whole_segments_matches(env: Setup, target: str) -> None:
    assert served_by(send(env, target)) == (200, f"api {target}")
    assert env.origins["api"].requests[-1].target == target


@pytest.mark.parametrize("target", ["/apix", "/apix/y", "/ap", "/API/x"])
def test_path_prefix_whole_segments_refuses(env: Setup, target: str) -> None:
    assert send(env, target).status == 404


@pytest.mark.parametrize("target", ["/pre", "/prefix", "/pre/x"])
def test_path_prefix_bytewise(env: Setup, target: str) -> None:
    assert served_by(send(env, target)) == (200, f"alpha {target}")


def test_exact_path(env: Setup) -> None:
    assert served_by(send(env, "/exact")) == (200, "beta /exact")
    assert served_by(send(env, "/exact?q=1")) == (200, "beta /exact?q=1")
    assert served_by(send(env, "/e1")) == (200, "gamma /e1")
    assert served_by(send(env, "/e2")) == (200, "gamma /e2")
    for target in ["/exact/", "/exactly", "/exact/x", "/e3"]:
        assert send(env, target).status == 404, target


def test_regex_capture_used_in_rewrite(env: Setup) -> None:
    resp = send(env, "/u/42?keep=1")
    assert resp.status == 200
    req = env.origins["rw"].requests[-1]
    path, _, query = req.target.partition("?")
    assert path == "/users/42/profile"
    assert parse_qsl(query, keep_blank_values=True) == [("keep", "1"), ("uid", "42")]
    assert req.header("X-User") == "42"
    assert resp.body.decode() == f"rw {req.target}"
    for target in ["/u/abc", "/u/42/x", "/u/"]:
        assert send(env, target).status == 404, target


def test_regex_is_searched_and_capture_used_in_redirect(env: Setup) -> None:
    resp = send(env, "/files/2024/report-2024.pdf?x=1")
    assert resp.status == 308
    assert resp.header("Location") == "/reports/2024"
    assert send(env, "/files/report-24.pdf").status == 404


# -- method, headers, query -----------------------------------------------------------------


def test_method(env: Setup) -> None:
    assert served_by(send(env, "/method", method="POST", body=b"x")) == (200, "alpha /method")
    assert env.origins["alpha"].requests[-1].body == b"x"
    assert served_by(send(env, "/method", method="PUT", body=b"y")) == (200, "alpha /method")
    assert served_by(send(env, "/method")) == (200, "beta /method")
    assert send(env, "/method", method="DELETE").status == 404
    assert send(env, "/method", method="PATCH", body=b"z").status == 404


@pytest.mark.parametrize(("headers", "want"), [
    ((("X-Env", "canary"),), "alpha"),
    ((("x-env", "  canary  "),), "alpha"),        # name case-insensitive, OWS not part of value
    ((("X-Env", "Canary"),), "delta"),            # value: exact, case-sensitive
    ((("X-Env", "canary2"),), "delta"),
    ((("X-Debug", ""),), "beta"),                 # present, even empty
    ((("X-DEBUG", "1"),), "beta"),
    ((("User-Agent", "curl/8.5.0"),), "gamma"),
    ((("User-Agent", "Mozilla curl/8"),), "delta"),  # regex anchored by the config
    ((), "delta"),
])
def test_header_conditions(env: Setup, headers: tuple[tuple[str, str], ...], want: str) -> None:
    assert served_by(send(env, "/hdr", headers=headers)) == (200, f"{want} /hdr")


def test_header_false_means_absent(env: Setup) -> None:
    assert send(env, "/hdr", headers=(("X-Block", "1"),)).status == 404


def test_all_conditions_must_hold(env: Setup) -> None:
    assert served_by(send(env, "/all?b", headers=(("X-A", "1"),))) == (200, "alpha /all?b")
    assert send(env, "/all?b", headers=(("X-A", "2"),)).status == 404
    assert send(env, "/all", headers=(("X-A", "1"),)).status == 404
    assert send(env, "/all?b=1", method="POST", headers=(("X-A", "1"),), body=b"x").status == 404


@pytest.mark.parametrize(("target", "want"), [
    ("/q?debug", "alpha"),
    ("/q?debug=0", "alpha"),
    ("/q?a=1&debug=yes&v=2", "alpha"),
    ("/q?v=2", "beta"),
    ("/q?x=1&v=2", "beta"),
    ("/q?v=%32", "beta"),            # decoded arguments
    ("/q?%76=2", "beta"),
])
def test_query_conditions(env: Setup, target: str, want: str) -> None:
    assert served_by(send(env, target)) == (200, f"{want} {target}")


@pytest.mark.parametrize("target", ["/q", "/q?v=3", "/q?v=22", "/q?V=2", "/q?debugx=1"])
def test_query_not_matched(env: Setup, target: str) -> None:
    assert send(env, target).status == 404


# -- client address and listener ---------------------------------------------------------------


def test_client_ip(env: Setup) -> None:
    # From 127.0.0.1: not 10.0.0.0/8, but 127.0.0.1/32.
    assert served_by(send(env, "/ip")) == (200, "beta /ip")
    # From 127.0.0.2 (still loopback): neither.
    with BoundRawClient(env.port, "127.0.0.2") as c:
        c.send(request_bytes("/ip"))
        assert c.read_response().status == 404
        c.send(request_bytes("/api/from2"))
        resp = c.read_response()
    assert served_by(resp) == (200, "api /api/from2")
    assert env.origins["api"].requests[-1].header("X-Forwarded-For") == "127.0.0.2"


def test_listener_names(env: Setup) -> None:
    assert served_by(send(env, "/lis", port=env.ports["main"])) == (200, "beta /lis")
    assert served_by(send(env, "/lis", port=env.ports["alt"])) == (200, "alpha /lis")
    # No name given: the listener is named by its address.
    assert served_by(send(env, "/lis", port=env.ports["third"])) == (200, "gamma /lis")


def test_default_host_of_a_listener(env: Setup) -> None:
    # A host no route names is routed as alt.example on the "alt" listener only.
    assert served_by(send(env, "/dh/x", host="unknown.example", port=env.ports["alt"])) \
        == (200, "delta /dh/x")
    assert served_by(send(env, "/dh/x", host="127.0.0.1", port=env.ports["alt"])) \
        == (200, "delta /dh/x")
    assert send(env, "/dh/x", host="unknown.example", port=env.ports["main"]).status == 404
    assert send(env, "/dh/x", host="unknown.example", port=env.ports["third"]).status == 404
    # A host that a route names keeps its own routes.
    assert served_by(send(env, "/dh/x", host="shop.example", port=env.ports["alt"])) \
        == (200, "shop /dh/x")
    # Path routes without a host still apply there.
    assert served_by(send(env, "/api/1", host="unknown.example", port=env.ports["alt"])) \
        == (200, "api /api/1")


def test_default_host_when_the_request_has_none(env: Setup) -> None:
    resp = send(env, "/dh-redirect", host=None, version="HTTP/1.0", port=env.ports["alt"])
    assert resp.status == 307
    assert resp.header("Location") == "http://alt.example/landing/dh-redirect"
    assert send(env, "/dh-redirect", host=None, version="HTTP/1.0").status == 404


# -- no match, invalid paths -------------------------------------------------------------------


def test_no_route_is_404_and_the_connection_stays_usable(env: Setup) -> None:
    with RawClient(env.port) as c:
        c.send(request_bytes("/nothing/here"))
        resp = c.read_response()
        assert resp.status == 404
        assert resp.complete
        c.send(request_bytes("/api/after-404"))
        assert served_by(c.read_response()) == (200, "api /api/after-404")


@pytest.mark.parametrize("target", ["/..", "/../api/x", "/api/../../x", "/a/%2e%2e/%2E%2E/x",
                                    "/%zz", "/api/%zz", "/api/%2", "/api/%", "/api/%g0"])
def test_bad_path_is_400_and_closed_cleanly(env: Setup, target: str) -> None:
    api_before = len(env.origins["api"].requests)
    with RawClient(env.port) as c:
        c.send(request_bytes(target))
        resp = c.read_response()
        assert resp.status == 400
        assert resp.complete
        assert_closed_cleanly(c)
    assert len(env.origins["api"].requests) == api_before


# -- path normalization ------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "forwarded"), [
    ("/a/%2e%2e/api/x", "/api/x"),
    ("/a/%2E%2E/api/x", "/api/x"),
    ("//api//x", "/api/x"),
    ("///api///x///", "/api/x/"),
    ("/api/./x/../y", "/api/y"),
    ("/x/../api", "/api"),
    ("/%61pi/%7euser", "/api/~user"),          # unreserved escapes decoded
    ("/api/a%2Fb", "/api/a%2Fb"),              # an encoded slash stays encoded
    ("/api/a%2fb", "/api/a%2Fb"),              # ... with upper-case hex
    ("/api/..%2Fx", "/api/..%2Fx"),            # "..%2F" is an ordinary segment
    ("/api/a%20b", "/api/a%20b"),
    ("//api//x?b=%2e%2e&a=1//2&c=%zz", "/api/x?b=%2e%2e&a=1//2&c=%zz"),  # query unchanged
    ("/a/../api/x?", "/api/x?"),
])
def test_normalized_path_forwarded(env: Setup, target: str, forwarded: str) -> None:
    resp = send(env, target)
    assert served_by(resp) == (200, f"api {forwarded}")
    assert env.origins["api"].requests[-1].target == forwarded


# -- redirect -------------------------------------------------------------------------------


def test_redirect_with_status_and_template(env: Setup) -> None:
    r = requests.get(f"http://127.0.0.1:{env.port}/old?a=1&b=%2F", allow_redirects=False,
                     headers={"Host": "Example.ORG:8080"}, timeout=5)
    assert r.status_code == 301
    assert r.headers["Location"] == "https://example.org/old?a=1&b=%2F"
    r = requests.get(f"http://127.0.0.1:{env.port}/old", allow_redirects=False,
                     headers={"Host": "www.example.net."}, timeout=5)
    assert r.status_code == 301
    assert r.headers["Location"] == "https://www.example.net/old"


def test_redirect_uses_the_normalized_path(env: Setup) -> None:
    resp = send(env, "//x/..//old?q=%2e", host="example.org")
    assert resp.status == 301
    assert resp.header("Location") == "https://example.org/old?q=%2e"


def test_redirect_default_status_is_302(env: Setup) -> None:
    r = requests.get(f"http://127.0.0.1:{env.port}/moved/a/b?x=1", allow_redirects=False,
                     timeout=5)
    assert r.status_code == 302
    assert r.headers["Location"] == "/new/moved/a/b"
    assert send(env, "/movedx").status == 404


def test_redirect_to_head_has_no_body(env: Setup) -> None:
    with RawClient(env.port) as c:
        c.send(request_bytes("/moved/x", method="HEAD") + request_bytes("/moved/y"))
        head = c.read_response(head_request=True)
        assert (head.status, head.header("Location")) == (302, "/new/moved/x")
        resp = c.read_response()
        assert (resp.status, resp.header("Location")) == (302, "/new/moved/y")


def test_redirect_keeps_the_connection(env: Setup) -> None:
    with RawClient(env.port) as c:
        for _ in range(2):
            c.send(request_bytes("/moved", host="h.example"))
            resp = c.read_response()
            assert resp.status == 302
            assert resp.complete
            assert resp.header("Location") == "/new/moved"
        c.send(request_bytes("/api/after-redirect"))
        assert served_by(c.read_response()) == (200, "api /api/after-redirect")


# -- respond --------------------------------------------------------------------------------


def test_respond(env: Setup) -> None:
    resp = send(env, "/respond")
    assert resp.status == 202
    assert resp.framing == "length"
    assert resp.body == b"hello\n"
    assert resp.header_all("Content-Length") == ["6"]
    assert resp.header("Content-Type") == "text/plain; charset=utf-8"
    assert resp.header("X-Resp") == "yes"
    assert resp.header_all("X-Frame-Options") == ["DENY"]


def test_respond_with_requests(env: Setup) -> None:
    r = requests.get(f"http://127.0.0.1:{env.port}/respond", timeout=5)
    assert r.status_code == 202
    assert r.content == b"hello\n"
    assert r.headers["X-Resp"] == "yes"


def test_respond_head_has_no_body(env: Setup) -> None:
    with RawClient(env.port) as c:
        c.send(request_bytes("/respond", method="HEAD"))
        head = c.read_response(head_request=True)
        assert head.status == 202
        assert head.header_all("Content-Length") == ["6"]
        assert head.header("X-Resp") == "yes"
        # Nothing after the head: the next response on this connection starts right away.
        c.send(request_bytes("/respond"))
        resp = c.read_response()
        assert resp.status == 202
        assert resp.body == b"hello\n"


def test_respond_keep_alive(env: Setup) -> None:
    with RawClient(env.port) as c:
        for _ in range(3):
            c.send(request_bytes("/respond"))
            resp = c.read_response()
            assert (resp.status, resp.body, resp.complete) == (202, b"hello\n", True)
            assert resp.header("Connection") != "close"
        c.send(request_bytes("/api/same-conn"))
        assert served_by(c.read_response()) == (200, "api /api/same-conn")


def test_respond_pipelined(env: Setup) -> None:
    with RawClient(env.port) as c:
        c.send(request_bytes("/respond") + request_bytes("/respond", method="HEAD")
               + request_bytes("/api/pipelined") + request_bytes("/respond"))
        assert c.read_response().body == b"hello\n"
        assert c.read_response(head_request=True).status == 202
        assert served_by(c.read_response()) == (200, "api /api/pipelined")
        assert c.read_response().body == b"hello\n"


def test_respond_http10_closes(env: Setup) -> None:
    with RawClient(env.port) as c:
        c.send(request_bytes("/respond", version="HTTP/1.0"))
        resp = c.read_response()
        assert (resp.status, resp.body) == (202, b"hello\n")
        assert resp.header("Connection") == "close"
        assert_closed_cleanly(c)


def test_respond_to_post_with_body(env: Setup) -> None:
    with RawClient(env.port) as c:
        c.send(request_bytes("/respond", method="POST", body=b"a body of some bytes"))
        resp = c.read_response()
        assert (resp.status, resp.body) == (202, b"hello\n")
        c.send(request_bytes("/respond"))
        resp = c.read_response()
        assert (resp.status, resp.body) == (202, b"hello\n")
        c.send(request_bytes("/api/after-post"))
        assert served_by(c.read_response()) == (200, "api /api/after-post")


def test_respond_to_post_with_body_sent_late(env: Setup) -> None:
    body = b"0123456789" * 100
    with RawClient(env.port) as c:
        head = (b"POST /respond HTTP/1.1\r\nHost: t.example\r\nContent-Length: %d\r\n\r\n"
                % len(body))
        c.send(head + body[:300])
        time.sleep(0.1)
        # The rest of the body and the next request together: the body must be
        # dropped exactly, not parsed as a request.
        c.send(body[300:] + request_bytes("/respond", method="HEAD"))
        first = c.read_response()
        assert (first.status, first.body) == (202, b"hello\n")
        second = c.read_response(head_request=True)
        assert second.status == 202
        c.send(request_bytes("/api/after-late-body"))
        assert served_by(c.read_response()) == (200, "api /api/after-late-body")


def test_respond_to_chunked_post(env: Setup) -> None:
    with RawClient(env.port) as c:
        c.send(b"POST /respond HTTP/1.1\r\nHost: t.example\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        resp = c.read_response()
        assert (resp.status, resp.body) == (202, b"hello\n")
        c.send(request_bytes("/api/after-chunked"))
        assert served_by(c.read_response()) == (200, "api /api/after-chunked")


def test_respond_204_has_no_body_and_no_length(env: Setup) -> None:
    with RawClient(env.port) as c:
        c.send(request_bytes("/nocontent"))
        resp = c.read_response()
        assert resp.status == 204
        assert resp.header("Content-Length") is None
        assert resp.header("Transfer-Encoding") is None
        c.send(request_bytes("/respond"))
        assert c.read_response().body == b"hello\n"


def test_respond_defaults(env: Setup) -> None:
    with RawClient(env.port) as c:
        c.send(request_bytes("/empty"))
        resp = c.read_response()
        assert resp.status == 200
        assert resp.header_all("Content-Length") == ["0"]
        assert resp.body == b""
        c.send(request_bytes("/empty"))
        assert c.read_response().status == 200


# -- rewrites --------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "forwarded"), [
    ("/strip/a/b?x=1", "/a/b?x=1"),
    ("/strip", "/"),
    ("/strip/", "/"),
    ("/strip//a", "/a"),
    ("/add/x?y", "/v2/add/x?y"),
    ("/add", "/v2/add"),
    ("/both-ends/x", "/v2/x"),
    ("/both-ends", "/v2/"),
    ("/legacy/a/b?c=d", "/modern/a/b?c=d"),
    ("/dots/y/z", "/x/y/z/~"),                   # the rewritten path is normalized again
    ("/query-path?../admin", "/search/..%2Fadmin?../admin"),  # a variable is one segment
])
def test_path_rewrites(env: Setup, target: str, forwarded: str) -> None:
    resp = send(env, target)
    assert served_by(resp) == (200, f"rw {forwarded}")
    assert env.origins["rw"].requests[-1].target == forwarded


@pytest.mark.parametrize("target", ["/climb/x", "/query-path?.."])
def test_rewrite_making_a_dot_segment_is_400(env: Setup, target: str) -> None:
    before = len(env.origins["rw"].requests)
    with RawClient(env.port) as c:
        c.send(request_bytes(target))
        resp = c.read_response()
        assert resp.status == 400
        assert_closed_cleanly(c)
    assert len(env.origins["rw"].requests) == before


@pytest.mark.parametrize(("target", "query"), [
    ("/qs", [("version", "2")]),
    ("/qs?a=1", [("a", "1"), ("version", "2")]),
    ("/qs?utm_source=x&a=1&utm_source=y&b=%2F", [("a", "1"), ("b", "/"), ("version", "2")]),
    # Every argument of that name goes; the new one is appended (tests/test_actions.py).
    ("/qs?version=1&a=1", [("a", "1"), ("version", "2")]),
    ("/qs?version=1&a=1&version=3", [("a", "1"), ("version", "2")]),
    ("/qs?version=2", [("version", "2")]),
])
def test_query_rewrites(env: Setup, target: str, query: list[tuple[str, str]]) -> None:
    assert send(env, target).status == 200
    got = env.origins["rw"].requests[-1].target
    path, _, q = got.partition("?")
    assert path == "/qs"
    assert parse_qsl(q, keep_blank_values=True) == query
    assert "utm_source" not in got


def test_query_rewrite_keeps_other_arguments_bytes(env: Setup) -> None:
    assert send(env, "/qs?b=%2F&c=x+y").status == 200
    got = env.origins["rw"].requests[-1].target
    assert got.startswith("/qs?b=%2F&c=x+y")


def test_host_override(env: Setup) -> None:
    assert send(env, "/hostov", host="front.example").status == 200
    req = env.origins["rw"].requests[-1]
    assert all_values(req, "Host") == ["backend.internal"]
    # Without a rewrite, the client's Host goes upstream.
    assert send(env, "/strip/h", host="front.example").status == 200
    assert all_values(env.origins["rw"].requests[-1], "Host") == ["front.example"]


def test_request_header_edits(env: Setup) -> None:
    resp = send(env, "/hdrs", headers=(("X-Debug", "1"), ("X-Real-IP", "6.6.6.6"),
                                       ("X-Tag", "client"), ("X-Request-Id", "forged")))
    assert resp.status == 200
    req = env.origins["rw"].requests[-1]
    assert all_values(req, "X-Debug") == []
    assert all_values(req, "X-Real-IP") == ["127.0.0.1"]
    assert all_values(req, "X-Tag") == ["client", "a"]
    ids = all_values(req, "X-Request-Id")
    assert len(ids) == 1
    assert re.fullmatch(r"[0-9a-f]{32}", ids[0]), ids
    # Generated once per request: the response header shows the same id.
    assert resp.header_all("X-Request-Id") == ids


def test_request_id_differs_per_request(env: Setup) -> None:
    seen = set()
    with RawClient(env.port) as c:
        for _ in range(5):
            c.send(request_bytes("/hdrs"))
            assert c.read_response().status == 200
            seen.add(env.origins["rw"].requests[-1].header("X-Request-Id"))
    assert len(seen) == 5
    assert all(v is not None and re.fullmatch(r"[0-9a-f]{32}", v) for v in seen)


def test_response_header_edits(env: Setup) -> None:
    resp = send(env, "/hdrs")
    assert resp.status == 200
    assert resp.header_all("X-Powered-By") == []
    assert resp.header_all("X-Frame-Options") == ["DENY"]
    assert resp.header_all("Cache-Control") == ["public", "no-store"]
    assert resp.header_all("X-Keep") == ["1"]
    # A route without response edits passes the origin's headers through.
    resp = send(env, "/strip/x")
    assert resp.header_all("X-Powered-By") == ["Express"]
    assert resp.header_all("X-Frame-Options") == ["SAMEORIGIN"]


def test_response_header_edits_with_requests(env: Setup) -> None:
    r = requests.get(f"http://127.0.0.1:{env.port}/hdrs", timeout=5)
    assert r.status_code == 200
    assert "X-Powered-By" not in r.headers
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.text.startswith("rw /hdrs")


def test_proxy_log_has_no_tracebacks(env: Setup) -> None:
    log = env.proxy.log()
    assert "Traceback" not in log, log


def test_options_star_keeps_its_target_and_gets_the_rewritten_host(env: Setup) -> None:
    resp = send(env, "*", host="star.example", method="OPTIONS")
    assert resp.status == 200
    req = env.origins["rw"].requests[-1]
    assert (req.method, req.target) == ("OPTIONS", "*")
    assert req.header("Host") == "backend.internal"
    assert req.header("X-Forwarded-Host") == "star.example"


def test_respond_to_expect_continue_closes_instead_of_waiting(env: Setup) -> None:
    # The client announces a body and waits for "100 Continue", which a static
    # answer never sends: the answer says close and the connection ends, so the
    # body it may still send is not read as the next request.
    with RawClient(env.port) as c:
        c.send(b"POST /respond HTTP/1.1\r\nHost: t.example\r\nContent-Length: 10\r\n"
               b"Expect: 100-continue\r\n\r\n")
        resp = c.read_response()
        assert (resp.status, resp.body) == (202, b"hello\n")
        assert resp.header("Connection") == "close"
        assert_closed_cleanly(c)
