"""The proxy forwards a request and its answer, end to end."""

import requests

from servers import Origin, ProxyProcess


def test_get_through_proxy(origin: Origin, proxy: ProxyProcess) -> None:
    r = requests.get(proxy.url("/hello?x=1"), timeout=5)
    assert r.status_code == 200
    assert r.text == "origin /hello?x=1"
    assert r.headers["Via"] == "1.1 fastproxy"
    req = origin.requests[-1]
    assert req.target == "/hello?x=1"
    assert req.header("X-Forwarded-For") == "127.0.0.1"
    assert req.header("X-Forwarded-Proto") == "http"
    assert req.header("Host") == f"127.0.0.1:{proxy.port}"
