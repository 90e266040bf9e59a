"""The shared HTTP cache (RFC 9111) end to end: a real proxy with `cache = ...` on
a route, in front of an origin that counts what it is asked (the count is the
proof of a hit)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, RawClient, RawResponse, Received, Reply, free_port


class Site:
    """The origin: each path answers with its own caching rules; `asked` counts."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}
        self.fail = False
        self.version = 1
        self.lock = threading.Lock()

    def __call__(self, req: Received) -> Reply:
        path = req.target.split("?", 1)[0]
        with self.lock:
            self.asked[path] = self.asked.get(path, 0) + 1
            n = self.asked[path]
        if path == "/fresh":
            return Reply(200, [("Cache-Control", "max-age=60"), ("ETag", '"e1"'),
                               ("Content-Type", "text/plain")], b"hello world")
        if path == "/nostore":
            return Reply(200, [("Cache-Control", "no-store")], b"n%d" % n)
        if path == "/private":
            return Reply(200, [("Cache-Control", "private, max-age=60")], b"p%d" % n)
        if path == "/cookie":
            return Reply(200, [("Cache-Control", "max-age=60"), ("Set-Cookie", "a=1")], b"c")
        if path == "/vary":
            lang = req.header("Accept-Language") or "none"
            return Reply(200, [("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
                         lang.encode())
        if path == "/short":  # revalidated with its ETag
            if req.header("If-None-Match") == '"s1"':
                return Reply(304, [("Cache-Control", "max-age=1"), ("ETag", '"s1"')], b"")
            return Reply(200, [("Cache-Control", "max-age=1"), ("ETag", '"s1"')], b"short")
        if path == "/slow":
            return Reply(200, [("Cache-Control", "max-age=60")], b"slow", delay=1.0)
        if path == "/flaky":
            if self.fail:
                return Reply(503, [], b"down")
            return Reply(200, [("Cache-Control", "max-age=1, stale-if-error=60")], b"good")
        if path == "/versioned":
            if req.method == "POST":
                self.version += 1
                return Reply(204, [], b"")
            return Reply(200, [("Cache-Control", "max-age=60")], b"v%d" % self.version)
        if path == "/swr":
            return Reply(200, [("Cache-Control", "max-age=1, stale-while-revalidate=30")],
                         b"swr%d" % n)
        return Reply(404, [], b"no")


def start(tmp_path: Path, origin: Origin, cache: str = "", workers: int = 1) -> ProxyProcess:
    port = free_port()
    text = (f'[server]\nworkers = {workers}\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[caches.main]\nmemory = "8m"\n{cache}\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n'
            '[[routes]]\nupstream = "app"\ncache = "main"\n')
    return ProxyProcess(text, tmp_path, port).start()


def get(port: int, path: str, headers: str = "", method: str = "GET") -> RawResponse:
    with RawClient(port) as client:
        client.send(f"{method} {path} HTTP/1.1\r\nHost: site\r\n{headers}\r\n".encode())
        return client.read_response(head_request=method == "HEAD")


@pytest.fixture
def site() -> Site:
    return Site()


def test_hits_misses_and_what_is_not_stored(make_origin: Callable[..., Origin], site: Site,
                                            tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    try:
        first = get(proxy.port, "/fresh")
        assert first.status == 200 and first.body == b"hello world"
        status = first.header("Cache-Status")
        assert status.startswith("fastproxy;fwd=uri-miss;fwd-status=200;ttl=")
        assert status.endswith(";stored")
        for _ in range(3):
            hit = get(proxy.port, "/fresh")
            assert hit.status == 200 and hit.body == b"hello world"
            assert hit.header("Cache-Status").startswith("fastproxy;hit;ttl=")
            assert hit.header("Age") is not None and hit.header("ETag") == '"e1"'
        assert site.asked["/fresh"] == 1
        # HEAD is answered from the stored GET.
        head = get(proxy.port, "/fresh", method="HEAD")
        assert head.status == 200 and head.body == b"" and head.header("Content-Length") == "11"
        assert site.asked["/fresh"] == 1
        for path in ("/nostore", "/private", "/cookie"):
            get(proxy.port, path)
            again = get(proxy.port, path)
            assert site.asked[path] == 2, path
            assert "stored=?0" in again.header("Cache-Status")
        # A different query is a different key.
        get(proxy.port, "/fresh?x=1")
        assert site.asked["/fresh"] == 2
    finally:
        proxy.stop()


def test_vary_conditionals_and_ranges(make_origin: Callable[..., Origin], site: Site,
                                      tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    try:
        assert get(proxy.port, "/vary", "Accept-Language: fr\r\n").body == b"fr"
        assert get(proxy.port, "/vary", "Accept-Language: de\r\n").body == b"de"
        assert get(proxy.port, "/vary", "Accept-Language: fr\r\n").body == b"fr"
        assert get(proxy.port, "/vary", "Accept-Language: de\r\n").body == b"de"
        assert site.asked["/vary"] == 2
        get(proxy.port, "/fresh")
        not_modified = get(proxy.port, "/fresh", 'If-None-Match: "e1"\r\n')
        assert not_modified.status == 304 and not_modified.body == b""
        assert not_modified.header("ETag") == '"e1"'
        assert get(proxy.port, "/fresh", 'If-None-Match: "zz"\r\n').status == 200
        part = get(proxy.port, "/fresh", "Range: bytes=0-4\r\n")
        assert (part.status, part.body) == (206, b"hello")
        assert part.header("Content-Range") == "bytes 0-4/11"
        assert get(proxy.port, "/fresh", "Range: bytes=-5\r\n").body == b"world"
        assert get(proxy.port, "/fresh", "Range: bytes=50-\r\n").status == 416
        assert site.asked["/fresh"] == 1
        # A client's no-cache makes the cache ask again (and store the answer).
        get(proxy.port, "/fresh", "Cache-Control: no-cache\r\n")
        assert site.asked["/fresh"] == 2
        # only-if-cached with nothing stored: 504, the origin is not asked.
        assert get(proxy.port, "/absent", "Cache-Control: only-if-cached\r\n").status == 504
        assert "/absent" not in site.asked
    finally:
        proxy.stop()


def test_revalidation_and_stale_if_error(make_origin: Callable[..., Origin], site: Site,
                                         tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    try:
        assert get(proxy.port, "/short").body == b"short"
        time.sleep(1.2)  # stale now: revalidated with If-None-Match, the 304 refreshes it
        again = get(proxy.port, "/short")
        assert (again.status, again.body) == (200, b"short")
        assert again.header("Cache-Status").startswith("fastproxy;fwd=stale;fwd-status=304")
        after = get(proxy.port, "/short")  # fresh again (unless a slow machine took 1 s)
        assert after.body == b"short"
        assert after.header("Cache-Status").startswith(("fastproxy;hit", "fastproxy;fwd=stale"))
        assert site.asked["/short"] == (2 if "hit" in after.header("Cache-Status") else 3)
        assert get(proxy.port, "/flaky").body == b"good"
        time.sleep(1.2)
        site.fail = True  # the origin now fails: the stale copy answers
        stale = get(proxy.port, "/flaky")
        assert (stale.status, stale.body) == (200, b"good")
        assert "detail=stale-if-error" in stale.header("Cache-Status")
    finally:
        proxy.stop()


def test_stale_while_revalidate_refreshes_in_the_background(
        make_origin: Callable[..., Origin], site: Site, tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    try:
        assert get(proxy.port, "/swr").body == b"swr1"
        time.sleep(1.2)
        stale = get(proxy.port, "/swr")
        assert stale.body == b"swr1"  # served at once, stale
        assert "detail=stale-while-revalidate" in stale.header("Cache-Status")
        deadline = time.monotonic() + 5
        body = stale.body
        while body == b"swr1" and time.monotonic() < deadline:  # the refresh lands soon
            time.sleep(0.05)
            body = get(proxy.port, "/swr").body
        assert body == b"swr2"  # the background fetch's answer, stored
        assert site.asked["/swr"] >= 2
    finally:
        proxy.stop()


def test_concurrent_misses_collapse_into_one_fetch(make_origin: Callable[..., Origin],
                                                   site: Site, tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    results: list[RawResponse] = []
    lock = threading.Lock()
    ready = threading.Barrier(6, timeout=10)

    def one() -> None:
        with RawClient(proxy.port, timeout=10) as client:
            ready.wait()  # connected first, then all ask at once
            client.send(b"GET /slow HTTP/1.1\r\nHost: site\r\n\r\n")
            response = client.read_response()
        with lock:
            results.append(response)

    try:
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert [r.body for r in results] == [b"slow"] * 6
        assert site.asked["/slow"] == 1
        statuses = [r.header("Cache-Status") or "" for r in results]
        # One fetched; the others waited for it (or, on a very slow machine, came
        # after it and hit).
        assert sum("stored" in st and "collapsed" not in st for st in statuses) == 1
        assert all("collapsed" in st or st.startswith("fastproxy;hit") for st in statuses
                   if "stored" not in st or "collapsed" in st)
    finally:
        proxy.stop()


def test_unsafe_requests_invalidate(make_origin: Callable[..., Origin], site: Site,
                                    tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    try:
        get(proxy.port, "/fresh")
        get(proxy.port, "/fresh")
        assert site.asked["/fresh"] == 1
        with RawClient(proxy.port) as client:
            client.send(b"POST /fresh HTTP/1.1\r\nHost: site\r\nContent-Length: 2\r\n\r\nhi")
            assert client.read_response().status == 200
        get(proxy.port, "/fresh")
        assert site.asked["/fresh"] == 3  # the POST, then a miss
    finally:
        proxy.stop()


def test_invalidation_reaches_every_worker(make_origin: Callable[..., Origin], site: Site,
                                           tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin, workers=2)
    try:
        proxy.wait_worker_pids(2)
        # New connections spread over both workers: both store v1.
        assert {get(proxy.port, "/versioned").body for _ in range(20)} == {b"v1"}
        assert 1 <= site.asked["/versioned"] <= 2
        with RawClient(proxy.port) as client:
            client.send(b"POST /versioned HTTP/1.1\r\nHost: site\r\nContent-Length: 0\r\n\r\n")
            assert client.read_response().status == 204
        # Whichever worker answers, the old copy is gone.
        assert {get(proxy.port, "/versioned").body for _ in range(20)} == {b"v2"}
    finally:
        proxy.stop()


def test_cache_config() -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}}}
    config = parse_config({**base, "caches": {"main": {"memory": "1m", "valid": {"200": "5m"}}},
                           "routes": [{"upstream": "a", "cache": "main"}]})
    spec = config.caches["main"]
    assert spec.memory == 1 << 20 and spec.max_object == 1 << 18 and spec.valid == {200: 300.0}
    assert config.routes[0].cache == "main"
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "caches": {"main": {"memory": "1m", "max_object": "2m",
                                                  "redis": "http://127.0.0.1:1"},
                                         "other": {"valid": {"abc": "1m"}}},
                      "routes": [{"upstream": "a", "cache": "nope"},
                                 {"respond": {"body": "x"}, "cache": "other"}]})
    keys = sorted(i.key for i in info.value.errors)
    assert keys == ["caches.main.redis", "caches.other.valid", "routes[0].cache",
                    "routes[1].cache"]


def test_cache_explain(make_origin: Callable[..., Origin], site: Site, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    from fastproxy.cli import main

    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    config = str(tmp_path / "fastproxy.toml")
    try:
        assert main(["cache", "explain", config, "http://site/fresh"]) == 0
        out = capsys.readouterr().out
        assert "key:       http://site/fresh" in out
        assert "stored:    no (504 to only-if-cached" in out
        assert site.asked.get("/fresh", 0) == 0  # the proxy did not go upstream for it
        get(proxy.port, "/fresh")
        assert main(["cache", "explain", config, "http://site/fresh"]) == 0
        out = capsys.readouterr().out
        assert "response:  200" in out and "Cache-Status: fastproxy;hit" in out
        assert "freshness: 60 s from max-age" in out and "verdict:   fresh" in out
        assert site.asked["/fresh"] == 1
        assert main(["cache", "explain", config, "http://site/nostore", "--upstream"]) == 0
        out = capsys.readouterr().out
        assert "storable:  no (" in out and "no-store" in out
        assert main(["cache", "explain", config, "http://site/vary", "--upstream",
                     "-H", "Accept-Language: fr"]) == 0
        out = capsys.readouterr().out
        assert "vary:      accept-language -> this request's variant" in out
    finally:
        proxy.stop()
    assert main(["cache", "explain", config, "http://site/fresh"]) == 2  # nobody listens
    assert "cannot ask" in capsys.readouterr().err


def test_cache_explain_upstream_refuses_an_http2_server(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--upstream asks in HTTP/1.1: a route whose first server speaks HTTP/2 is named
    in a clear error, not sent bytes it cannot read."""
    from fastproxy.cli import main

    config = tmp_path / "fastproxy.toml"
    config.write_text(f'[[listeners]]\naddress = "127.0.0.1:{free_port()}"\n'
                      '[caches.c]\nmemory = "1m"\n'
                      '[upstreams.grpc]\nservers = ["h2c://127.0.0.1:9"]\n'
                      '[[routes]]\nupstream = "grpc"\ncache = "c"\n')
    assert main(["cache", "explain", str(config), "http://site/x", "--upstream"]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:9, speaks HTTP/2: --upstream asks HTTP/1.1 servers only" in err, err
