"""forward_auth on a route, end to end: a real auth service decides, the proxy
passes the request on with the service's headers, or relays its answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, RawClient, Received, Reply, free_port


def auth_service(req: Received) -> Reply:
    cookie = req.header("Cookie") or ""
    if "session=alice" in cookie:
        return Reply(200, [("X-User", "alice"), ("X-Groups", "admin")], b"")
    if req.header("Authorization") == "Bearer api-token":
        return Reply(204, [("X-User", "robot")], b"")
    if (req.header("X-Forwarded-Uri") or "").startswith("/api/"):
        return Reply(401, [("WWW-Authenticate", 'Bearer realm="api"')], b"token needed\n")
    return Reply(302, [("Location", "https://login.example/?rd=x"),
                       ("Set-Cookie", "flow=1; Path=/")], b"")


def start(tmp_path: Path, app: Origin, auth_address: str) -> ProxyProcess:
    port = free_port()
    text = (f'[log]\naccess = "off"\n[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[upstreams.app]\nservers = ["{app.address}"]\n'
            '[[routes]]\nmatch = { path_prefix = "/public" }\nupstream = "app"\n'
            '[[routes]]\nupstream = "app"\n'
            f'forward_auth = {{ url = "http://{auth_address}/verify?app=1", timeout = "2s", '
            'copy_headers = ["X-User"] }\n')
    return ProxyProcess(text, tmp_path, port).start()


def request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    with RawClient(port) as client:
        client.send(head.encode() + body)
        resp = client.read_response(head_request=head.startswith("HEAD"))
        return resp.status, {k.lower(): v for k, v in resp.headers}, resp.body


def test_forward_auth_allows_with_its_headers(make_origin: Callable[..., Origin],
                                             tmp_path: Path) -> None:
    app = make_origin(name="app")
    auth = make_origin(auth_service, name="auth")
    proxy = start(tmp_path, app, auth.address)
    try:
        status, _, body = request(
            proxy.port, "GET /page?x=1 HTTP/1.1\r\nHost: site\r\nCookie: session=alice\r\n"
                        "X-User: mallory\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        assert (status, body) == (200, b"app /page?x=1")
        seen = app.requests[-1]
        # The service's X-User replaced the client's; X-Groups was not asked for.
        assert [v for k, v in seen.headers if k.lower() == "x-user"] == ["alice"]
        assert seen.header("X-Groups") is None and seen.header("Cookie") == "session=alice"
        asked = auth.requests[-1]
        assert (asked.method, asked.target) == ("GET", "/verify?app=1")
        assert asked.header("X-Forwarded-Uri") == "/page?x=1"
        assert asked.header("X-Forwarded-Method") == "GET"
        assert asked.header("X-Forwarded-Host") == "site"
        assert asked.header("X-Forwarded-Proto") == "http"
        assert asked.header("X-Forwarded-For") == "127.0.0.1"  # not the client's claim
        # A request body waits for the verdict and then goes up whole.
        body_in = b"name=value&" * 500
        status, _, _ = request(
            proxy.port, "POST /form HTTP/1.1\r\nHost: site\r\nAuthorization: Bearer api-token"
                        f"\r\nContent-Length: {len(body_in)}\r\n\r\n", body_in)
        assert status == 200
        assert app.requests[-1].body == body_in and app.requests[-1].header("X-User") == "robot"
        assert auth.requests[-1].body == b""  # the service never gets the body
        # Routes without forward_auth do not ask.
        asked_before = len(auth.requests)
        assert request(proxy.port, "GET /public/a HTTP/1.1\r\nHost: site\r\n\r\n")[0] == 200
        assert len(auth.requests) == asked_before
    finally:
        proxy.stop()


def test_forward_auth_relays_refusals(make_origin: Callable[..., Origin],
                                      tmp_path: Path) -> None:
    app = make_origin(name="app")
    auth = make_origin(auth_service, name="auth")
    proxy = start(tmp_path, app, auth.address)
    try:
        status, headers, body = request(proxy.port, "GET /page HTTP/1.1\r\nHost: site\r\n\r\n")
        assert status == 302 and headers["location"] == "https://login.example/?rd=x"
        assert headers["set-cookie"] == "flow=1; Path=/" and body == b""
        status, headers, body = request(proxy.port,
                                        "GET /api/items HTTP/1.1\r\nHost: site\r\n\r\n")
        assert (status, body) == (401, b"token needed\n")
        assert headers["www-authenticate"] == 'Bearer realm="api"'
        assert headers["content-length"] == str(len(body))
        status, headers, body = request(proxy.port,
                                        "HEAD /api/items HTTP/1.1\r\nHost: site\r\n\r\n")
        assert (status, body) == (401, b"")
        # The same connection goes on after a refusal (keep-alive).
        with RawClient(proxy.port) as client:
            for _ in range(2):
                client.send(b"GET /api/x HTTP/1.1\r\nHost: site\r\n\r\n")
                assert client.read_response().status == 401
        # A refused POST: the body is never sent upstream.
        status, _, _ = request(proxy.port, "POST /api/x HTTP/1.1\r\nHost: site\r\n"
                                           "Content-Length: 5\r\n\r\n", b"hello")
        assert status == 401
        assert not any(r.target.startswith(("/api", "/page")) for r in app.requests)
    finally:
        proxy.stop()


def test_forward_auth_fails_closed(make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    app = make_origin(name="app")
    proxy = start(tmp_path, app, f"127.0.0.1:{free_port()}")  # nobody listens there
    try:
        status, _, body = request(proxy.port, "GET /page HTTP/1.1\r\nHost: site\r\n"
                                              "Cookie: session=alice\r\n\r\n")
        assert status == 503 and not app.requests
        assert body == b"authentication service unavailable\n"
    finally:
        proxy.stop()
    assert "forward auth" in proxy.log().lower() or "auth" in proxy.log()


def test_forward_auth_config_errors(tmp_path: Path) -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}}}

    def errors(spec: object) -> list[str]:
        with pytest.raises(ConfigError) as info:
            parse_config({**base, "routes": [{"upstream": "a", "forward_auth": spec}]},
                         base_dir=str(tmp_path))
        return sorted(i.key for i in info.value.errors)

    where = "routes[0].forward_auth"
    assert errors({}) == [f"{where}.url"]
    assert errors({"url": "ftp://x/"}) == [f"{where}.url"]
    assert errors({"url": "http://a/", "timeout": "0s", "copy_headers": "X-User"}) == [
        f"{where}.copy_headers", f"{where}.timeout"]
    assert errors({"url": "http://a/", "copy_headers": ["Content-Length"]}) == [
        f"{where}.copy_headers"]
    assert errors({"url": "http://a/", "ca": "ca.pem"}) == [f"{where}.ca"]
    assert errors({"url": "http://a/", "colour": 1}) == [f"{where}.colour"]
    config = parse_config({**base, "routes": [{"upstream": "a", "forward_auth": {
        "url": "http://127.0.0.1:9/v", "copy_headers": ["X-User"],
        "request_headers": ["Cookie"]}}]})
    spec = config.routes[0].forward_auth
    assert spec is not None and spec.copy_headers == ("X-User",)
    assert spec.request_headers == ("Cookie",) and spec.timeout == 5.0
