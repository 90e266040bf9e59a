"""Request size limits per listener and per route, the minimum body rate, and the
WAF reading the start of request bodies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, RawClient, free_port


def post(port: int, target: str, body: bytes, ctype: str = "application/x-www-form-urlencoded",
         extra: str = "") -> tuple[int, bytes]:
    with RawClient(port) as client:
        client.send(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode()
                    + body)
        resp = client.read_response()
        return resp.status, resp.body


def chunked_post(port: int, target: str, pieces: list[bytes], ctype: str) -> int:
    with RawClient(port) as client:
        client.send(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                    "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
        for piece in pieces:
            client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        client.send(b"0\r\n\r\n")
        return client.read_response().status


# -- the WAF reads bodies ----------------------------------------------------------------

def waf_proxy(tmp_path: Path, origin: Origin, body_limit: str = "8k") -> ProxyProcess:
    port = free_port()
    text = (f'[log]\naccess = "off"\n[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[waf]\nbody_limit = "{body_limit}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    return ProxyProcess(text, tmp_path, port).start()


def test_waf_blocks_attacks_in_bodies(make_origin: Callable[..., Origin],
                                      tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = waf_proxy(tmp_path, origin)
    try:
        attack = b"user=admin&pass=x%27%20OR%20%271%27%3D%271"
        assert post(proxy.port, "/login", attack)[0] == 403
        xss = b'{"comment": "<script>alert(document.cookie)</script>"}'
        assert post(proxy.port, "/c", xss, "application/json")[0] == 403
        # Cut into chunks, split inside the pattern: the WAF sees the body as one.
        assert chunked_post(proxy.port, "/c", [b"name=x&q=1%27%20UNI", b"ON%20SELECT%20pas",
                                               b"sword%20FROM%20users--"],
                            "application/x-www-form-urlencoded") == 403
        assert not origin.requests  # nothing of the blocked ones went upstream
        # Ordinary bodies pass whole, also ones far longer than what is inspected.
        form = b"q=O%27Reilly+books&sort=price"
        assert post(proxy.port, "/search", form) == (200, b"app /search")
        big = b'{"text": "' + b"lorem ipsum " * 3000 + b'"}'
        assert post(proxy.port, "/doc", big, "application/json")[0] == 200
        assert chunked_post(proxy.port, "/doc", [big[:5000], big[5000:]],
                            "application/json") == 200
        got = [r.body for r in origin.requests]
        assert got == [form, big, big]
    finally:
        proxy.stop()
    assert "waf blocked sqli/" in proxy.log() and "waf blocked xss/" in proxy.log()


def test_waf_body_only_within_body_limit_and_not_binary(make_origin: Callable[..., Origin],
                                                        tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = waf_proxy(tmp_path, origin, body_limit="1k")
    try:
        attack = b"q=1%27%20UNION%20SELECT%20password%20FROM%20users--"
        assert post(proxy.port, "/a", attack)[0] == 403
        # Past the first 1 KiB the body is not read for attacks.
        assert post(proxy.port, "/a", b"pad=" + b"x" * 2000 + b"&" + attack)[0] == 200
        # A binary upload is neither held back nor inspected.
        assert post(proxy.port, "/a", attack, "application/octet-stream")[0] == 200
    finally:
        proxy.stop()


def test_waf_answers_expect_continue_before_reading_the_body(
        make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = waf_proxy(tmp_path, origin)
    try:
        for body, status in ((b"q=books", 200), (b"q=%3Cscript%3Ealert(1)%3C/script%3E", 403)):
            with RawClient(proxy.port) as client:
                client.send(b"POST /f HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                            b"Content-Type: application/x-www-form-urlencoded\r\n"
                            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
                assert client.read_response().status == 100
                client.send(body)
                assert client.read_response().status == status
        assert [r.body for r in origin.requests] == [b"q=books"]
    finally:
        proxy.stop()


def test_waf_body_limit_config() -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}}, "routes": [{"upstream": "a"}]}
    config = parse_config({**base, "waf": {"body_limit": "16k"}})
    assert config.waf is not None and config.waf.body_limit == 16384
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "waf": {"body_limit": "2m"}})
    assert [i.key for i in info.value.errors] == ["waf.body_limit"]


# -- sizes per listener and per route -----------------------------------------------------

def test_size_limits_per_listener_and_route(make_origin: Callable[..., Origin],
                                            tmp_path: Path) -> None:
    origin = make_origin(name="app")
    small, wide = free_port(), free_port()
    text = (f'[log]\naccess = "off"\n[limits]\nmax_body_bytes = "4k"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{small}"\nname = "small"\n'
            'max_body_bytes = "1k"\nmax_header_count = 5\n'
            f'[[listeners]]\naddress = "127.0.0.1:{wide}"\nname = "wide"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n'
            '[[routes]]\nmatch = { path_prefix = "/upload" }\nmax_body_bytes = "10k"\n'
            'upstream = "app"\n'
            '[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, small).start()
    try:
        body = b"x" * 2048
        assert post(small, "/form", body, "text/plain")[0] == 413
        assert post(wide, "/form", body, "text/plain")[0] == 200
        assert post(wide, "/form", b"x" * 5000, "text/plain")[0] == 413
        # The route's own limit wins on both listeners, above and below theirs.
        assert post(small, "/upload", b"x" * 8000, "text/plain")[0] == 200
        assert post(wide, "/upload", b"x" * 8000, "text/plain")[0] == 200
        assert post(small, "/upload", b"x" * 12000, "text/plain")[0] == 413
        # Chunked bodies are counted as they come.
        assert chunked_post(small, "/form", [b"x" * 700, b"x" * 700], "text/plain") == 413
        assert chunked_post(small, "/upload", [b"x" * 700, b"x" * 700], "text/plain") == 200
        # Header count: 5 on "small" (Host + Content-Type + Content-Length + Connection
        # + two more is over), 100 on "wide".
        extra = "X-A: 1\r\nX-B: 2\r\n"
        assert post(small, "/form", b"x", "text/plain", extra)[0] == 431
        assert post(wide, "/form", b"x", "text/plain", extra)[0] == 200
    finally:
        proxy.stop()


def test_size_limit_config_errors() -> None:
    base = {"upstreams": {"a": {"servers": ["127.0.0.1:2"]}}}
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "listeners": [{"address": "127.0.0.1:1", "max_body_bytes": "lots",
                                             "max_line_bytes": "4k",
                                             "max_header_bytes": "2k"}],
                      "routes": [{"upstream": "a", "max_body_bytes": -1}]})
    keys = sorted(i.key for i in info.value.errors)
    assert keys == ["listeners[0].max_body_bytes", "routes[0].max_body_bytes"]
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "listeners": [{"address": "127.0.0.1:1", "max_line_bytes": "4k",
                                             "max_header_bytes": "2k"}],
                      "routes": [{"upstream": "a"}]})
    assert [i.key for i in info.value.errors] == ["listeners[0].max_line_bytes"]
    with pytest.raises(ConfigError) as info:  # against the [limits] header size
        parse_config({**base, "limits": {"max_header_bytes": "16k"},
                      "listeners": [{"address": "127.0.0.1:1", "max_line_bytes": "32k"}],
                      "routes": [{"upstream": "a"}]})
    assert [i.key for i in info.value.errors] == ["listeners[0].max_line_bytes"]
    config = parse_config({**base, "listeners": [{"address": "127.0.0.1:1",
                                                  "max_body_bytes": 0}],
                           "routes": [{"upstream": "a", "max_body_bytes": "1g"}]})
    assert config.listeners[0].size(config.limits, "max_body_bytes") == 0
    assert config.listeners[0].size(config.limits, "max_header_count") == 100
    assert config.routes[0].max_body_bytes == 1 << 30


# -- minimum body rate ---------------------------------------------------------------------

def test_body_min_rate_cuts_a_trickle(make_origin: Callable[..., Origin],
                                      tmp_path: Path) -> None:
    origin = make_origin(name="app")
    port = free_port()
    text = (f'[log]\naccess = "off"\n[timeouts]\nbody = "1s"\nbody_min_rate = 100\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        # 2 bytes every 0.25 s (8 bytes/s): never a 1 s gap, but far below 100 bytes/s.
        # Allowed: 1 s + 1 s per 100 bytes received, so about 1.2 s in all.
        stop = threading.Event()
        with RawClient(port, timeout=10) as client:
            client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            started = time.monotonic()

            def trickle() -> None:
                for _ in range(40):  # at most 10 s
                    if stop.wait(0.25):
                        return
                    try:
                        client.send(b"ab")
                    except OSError:
                        return

            sender = threading.Thread(target=trickle)
            sender.start()
            try:
                status = client.read_response().status
                elapsed = time.monotonic() - started
            finally:
                stop.set()
                sender.join(5)
        assert status == 408
        assert 1.0 <= elapsed < 3.0, elapsed
        assert not any(r.target == "/slow" for r in origin.requests)
        # A body at a normal speed is untouched by the rule.
        with RawClient(port) as client:
            client.send(b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(4):
                client.send(b"a" * 250)
                time.sleep(0.2)
            assert client.read_response().status == 200
    finally:
        proxy.stop()
