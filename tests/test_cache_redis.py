"""The Redis tier of the HTTP cache: separate proxy instances sharing one real
redis-server, in front of an origin that counts what it is asked (the count is
the proof of a hit)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from fastproxy import cachepolicy
from fastproxy._cache import cache_key
from fastproxy._httpcache import Stored
from fastproxy.config import ConfigError, parse_config
from fastproxy.diskcache import Corrupt, parse_entry, response_header, whole_file
from servers import (
    Origin,
    ProxyProcess,
    RawClient,
    RawResponse,
    Received,
    RedisServer,
    Reply,
    free_port,
    redis_server_path,
)

pytestmark = pytest.mark.skipif(redis_server_path() is None,
                                reason="redis-server is not installed (ci/test.sh installs it)")

PREFIX = b"fastproxy:cache:main:"
SMALL = b"s" * 11
MID = b"M" * (40 * 1024)    # over the memory tier's max_object (16k), within Redis' (64k)
BIG = b"B" * (100 * 1024)   # over both


class Site:
    """The origin: `asked` counts requests per path (and method)."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}
        self.version = 1
        self.lock = threading.Lock()

    def count(self, path: str) -> int:
        with self.lock:
            return self.asked.get(path, 0)

    def __call__(self, req: Received) -> Reply:
        path = req.target.split("?", 1)[0]
        name = path if req.method == "GET" else f"{req.method} {path}"
        with self.lock:
            self.asked[name] = self.asked.get(name, 0) + 1
        cc = [("Cache-Control", "max-age=600")]
        if req.method in ("PUT", "DELETE"):
            return Reply(405, [], b"no")
        if path.startswith("/small"):
            return Reply(200, [*cc, ("ETag", '"s"')], SMALL)
        if path == "/mid":
            return Reply(200, cc, MID)
        if path == "/big":
            return Reply(200, cc, BIG)
        if path == "/vary":
            lang = req.header("Accept-Language") or "none"
            return Reply(200, [*cc, ("Vary", "Accept-Language")], lang.encode())
        if path == "/swr":
            return Reply(200, [("Cache-Control", "max-age=100, stale-while-revalidate=30")],
                         b"swr")
        if path == "/aged":
            return Reply(200, [*cc, ("Age", "100")], b"aged")
        if path == "/short":  # revalidated with its ETag: fresh for longer then
            if req.header("If-None-Match") == '"s1"':
                return Reply(304, [*cc, ("ETag", '"s1"')], b"")
            return Reply(200, [("Cache-Control", "max-age=1"), ("ETag", '"s1"')], b"short")
        if path == "/versioned":
            if req.method == "POST":
                self.version += 1
                return Reply(204, [], b"")
            return Reply(200, cc, b"v%d" % self.version)
        return Reply(404, [], b"no")


def config_text(port: int, origin: str, redis: str, workers: int = 1) -> str:
    return (f'[server]\nworkers = {workers}\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[caches.main]\nmemory = "64k"\n{redis}\n'
            f'[upstreams.app]\nservers = ["{origin}"]\n'
            '[[routes]]\nupstream = "app"\ncache = "main"\n')


def tier(url: str, timeout: str = "2s", extra: str = "") -> str:
    """The `redis` key. Tests that are not about timeouts give Redis a generous
    one: a busy machine may stall a worker for longer than the default."""
    return f'redis = {{ url = "{url}", max_object = "64k", timeout = "{timeout}"{extra} }}'


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def site() -> Site:
    return Site()


@pytest.fixture
def pair(redis_server: RedisServer, make_origin: Callable[..., Origin], site: Site,
         tmp_path: Path) -> Iterator[tuple[ProxyProcess, ProxyProcess]]:
    """Two proxy instances (A and B) with the same Redis tier, one origin."""
    origin = make_origin(site, name="app")
    proxies = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            port = free_port()
            proxies.append(ProxyProcess(config_text(port, origin.address,
                                                    tier(redis_server.url)),
                                        tmp_path / name, port).start())
        yield proxies[0], proxies[1]
    finally:
        for proxy in proxies:
            proxy.stop()


def client(server: RedisServer) -> redis_py.Redis:
    return redis_py.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)


def get(port: int, path: str, headers: str = "", method: str = "GET") -> RawResponse:
    with RawClient(port, timeout=10) as raw:
        length = "Content-Length: 0\r\n" if method not in ("GET", "HEAD") else ""
        raw.send(f"{method} {path} HTTP/1.1\r\nHost: site\r\n{headers}{length}\r\n".encode())
        return raw.read_response(head_request=method == "HEAD")


def key_of(path: str) -> bytes:
    return PREFIX + b"%016x" % cache_key(b"http://site" + path.encode())


def wait_for(check: Callable[[], object], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def entry(r: redis_py.Redis, key: bytes) -> tuple[list[Any], bytes] | None:
    """The header fields and body of a value in Redis; None when there is none
    or it is not whole."""
    value = r.get(key)
    try:
        return parse_entry(value) if value is not None else None
    except Corrupt:
        return None


def status(response: RawResponse) -> str:
    return response.header("Cache-Status") or ""


def redis_hit(response: RawResponse) -> bool:
    return status(response).startswith("fastproxy;hit") and "detail=redis" in status(response)


def filled(proxy: ProxyProcess, server: RedisServer, path: str, headers: str = "") -> None:
    """GET `path` through `proxy` (a miss that is stored) and wait until its write
    reached Redis. Writes go out in order, so everything stored before is there too."""
    first = get(proxy.port, path, headers)
    assert first.status == 200 and status(first).endswith(";stored"), status(first)
    assert wait_for(lambda: client(server).exists(key_of(path)))


# -- end to end ----------------------------------------------------------------------------


def test_one_instance_fills_the_other_hits(pair: tuple[ProxyProcess, ProxyProcess],
                                           redis_server: RedisServer, site: Site) -> None:
    a, b = pair
    filled(a, redis_server, "/small")
    # B has never seen it: a hit from Redis, the origin is not asked again.
    hit = get(b.port, "/small")
    assert hit.status == 200 and hit.body == SMALL and redis_hit(hit), status(hit)
    assert hit.header("ETag") == '"s"' and int(hit.header("Age") or "-1") >= 0
    # Adopted into B's memory: the next one is a memory hit.
    again = get(b.port, "/small")
    assert again.body == SMALL and status(again).startswith("fastproxy;hit;ttl=")
    assert "detail" not in status(again)
    # Conditionals and HEAD are answered from a Redis copy as from any other.
    filled(a, redis_server, "/small2")
    assert get(b.port, "/small2", 'If-None-Match: "s"\r\n').status == 304
    assert site.count("/small") == 1 and site.count("/small2") == 1

    # Within the Redis max_object (64k) but over the memory tier's (16k): kept in
    # Redis only, and a hit there for both instances.
    filled(a, redis_server, "/mid")
    for proxy in (a, b, a):
        mid = get(proxy.port, "/mid")
        assert mid.body == MID and redis_hit(mid), status(mid)
    assert site.count("/mid") == 1
    # Over the Redis max_object: never written to Redis.
    first = get(a.port, "/big")
    assert first.body == BIG and "stored=?0" in status(first), status(first)
    filled(a, redis_server, "/small3")  # written after /big would have been
    assert not client(redis_server).exists(key_of("/big"))
    assert get(b.port, "/big").body == BIG and site.count("/big") == 2


def test_entries_expire_when_they_can_no_longer_be_served(
        pair: tuple[ProxyProcess, ProxyProcess], redis_server: RedisServer) -> None:
    a, _ = pair
    r = client(redis_server)
    filled(a, redis_server, "/small")  # max-age=600
    filled(a, redis_server, "/swr")    # max-age=100, stale-while-revalidate=30
    filled(a, redis_server, "/aged")   # max-age=600, Age: 100
    assert 590_000 <= r.pttl(key_of("/small")) <= 600_000
    assert 120_000 <= r.pttl(key_of("/swr")) <= 130_000
    assert 490_000 <= r.pttl(key_of("/aged")) <= 500_000
    # The value is the disk tier's format, with the key text in its header.
    fields, body = parse_entry(r.get(key_of("/small")) or b"")
    assert body == SMALL and fields[1] == "r" and fields[2] == "http://site/small"


def test_vary_variants(pair: tuple[ProxyProcess, ProxyProcess], redis_server: RedisServer,
                       site: Site) -> None:
    a, b = pair
    r = client(redis_server)
    filled(a, redis_server, "/vary", "Accept-Language: en\r\n")
    assert get(a.port, "/vary", "Accept-Language: fr\r\n").body == b"fr"
    # The primary key holds the Vary record, the hash one field per variant.
    assert wait_for(lambda: r.hlen(key_of("/vary") + b":v") == 2)
    fields, _ = parse_entry(r.get(key_of("/vary")) or b"")
    assert fields[1] == "v" and fields[3] == ["accept-language"]
    assert 590_000 <= r.pttl(key_of("/vary") + b":v") <= 600_000
    for lang in ("en", "fr"):
        hit = get(b.port, "/vary", f"Accept-Language: {lang}\r\n")
        assert hit.body == lang.encode() and redis_hit(hit), status(hit)
    assert site.count("/vary") == 2
    # A variant nobody stored: a miss (a vary-miss), fetched and added.
    other = get(b.port, "/vary", "Accept-Language: de\r\n")
    assert other.body == b"de" and "fwd=vary-miss" in status(other), status(other)
    assert site.count("/vary") == 3
    assert wait_for(lambda: r.hlen(key_of("/vary") + b":v") == 3)


def test_invalidation_through_one_instance_reaches_redis(
        pair: tuple[ProxyProcess, ProxyProcess], redis_server: RedisServer,
        site: Site) -> None:
    a, b = pair
    r = client(redis_server)
    filled(a, redis_server, "/versioned")
    filled(a, redis_server, "/vary", "Accept-Language: en\r\n")
    assert get(a.port, "/versioned", method="POST").status == 204
    assert get(a.port, "/vary", method="DELETE").status == 405  # not a success: kept
    assert wait_for(lambda: not r.exists(key_of("/versioned")))
    assert r.exists(key_of("/vary")) and r.exists(key_of("/vary") + b":v")
    # A POST that succeeds removes the Vary record and every variant.
    assert get(a.port, "/vary", method="POST").status == 200
    assert wait_for(lambda: not r.exists(key_of("/vary"), key_of("/vary") + b":v"))
    # B never had it in memory: it finds nothing in Redis and fetches the new version.
    fresh = get(b.port, "/versioned")
    assert fresh.body == b"v2" and "fwd=uri-miss" in status(fresh)
    # And the answer B stored is shared again.
    assert wait_for(lambda: r.exists(key_of("/versioned")))
    assert get(a.port, "/versioned").body == b"v2"
    assert site.count("/versioned") == 2

    # B has v2 in its memory now (a hit there). A POST through A: B hears of it
    # through Redis and drops its own copy too.
    assert status(get(b.port, "/versioned")).startswith("fastproxy;hit;ttl=")
    assert get(a.port, "/versioned", method="POST").status == 204
    assert wait_for(lambda: get(b.port, "/versioned").body == b"v3", 5.0)
    assert site.count("/versioned") == 3


def test_a_304_refreshes_the_redis_copy(pair: tuple[ProxyProcess, ProxyProcess],
                                        redis_server: RedisServer, site: Site) -> None:
    a, b = pair
    r = client(redis_server)
    filled(a, redis_server, "/short")  # max-age=1, ETag
    first_time = parse_entry(r.get(key_of("/short")) or b"")[0][9]
    assert r.pttl(key_of("/short")) <= 1000
    time.sleep(1.2)
    again = get(a.port, "/short")  # stale: revalidated, 304 with max-age=600
    assert again.body == b"short" and "fwd=stale;fwd-status=304" in status(again)

    assert wait_for(lambda: (now := entry(r, key_of("/short"))) is not None
                    and now[0][9] > first_time)
    fields, body = parse_entry(r.get(key_of("/short")) or b"")
    assert body == b"short" and "max-age=600" in fields[7]
    assert 590_000 <= r.pttl(key_of("/short")) <= 600_000
    hit = get(b.port, "/short")
    assert hit.body == b"short" and redis_hit(hit), status(hit)
    assert site.count("/short") == 2  # the 200, then the 304


def test_a_corrupt_or_foreign_value_is_a_miss(pair: tuple[ProxyProcess, ProxyProcess],
                                              redis_server: RedisServer, site: Site) -> None:
    a, b = pair
    r = client(redis_server)
    filled(a, redis_server, "/small")
    value = r.get(key_of("/small")) or b""
    # One byte of the body changed: the checksum fails.
    r.set(key_of("/small"), value[:10] + b"X" + value[11:])
    miss = get(b.port, "/small")
    assert miss.body == SMALL and "fwd=uri-miss" in status(miss), status(miss)
    assert site.count("/small") == 2
    # B stored its own answer (after deleting the bad one): whole again.
    assert wait_for(lambda: (whole := entry(r, key_of("/small"))) is not None
                    and whole[1] == SMALL)
    # Not our format at all.
    filled(a, redis_server, "/small2")
    r.set(key_of("/small2"), b"hello")
    assert "fwd=uri-miss" in status(get(b.port, "/small2"))
    # A whole value for another key under this key's hash: a miss, left alone.
    fresh = cachepolicy.Freshness(600.0, "max-age", 0.0)
    other = Stored(200, b"OK", [(b"Content-Type", b"text/plain")], b"other", time.time(),
                   time.time(), fresh, b"")
    foreign = b"".join(whole_file(b"other", response_header(b"http://elsewhere/x", other, ())))
    r.set(key_of("/small3"), foreign)
    answer = get(b.port, "/small3")
    assert answer.body == SMALL and "fwd=uri-miss" in status(answer)
    assert site.count("/small2") == 2 and site.count("/small3") == 1
    b.stop()
    assert "cache [caches.main] Redis: ignored" in b.log() and "checksum" in b.log()


def test_redis_stopped_then_back(pair: tuple[ProxyProcess, ProxyProcess],
                                 redis_server: RedisServer, site: Site) -> None:
    a, b = pair
    filled(a, redis_server, "/small")
    redis_server.stop()
    # Every request is answered, from the upstream, without waiting on Redis.
    spans = []
    for i in range(20):
        start = time.monotonic()
        answer = get(b.port, f"/small{i}")
        spans.append(time.monotonic() - start)
        assert answer.status == 200 and answer.body == SMALL
    assert max(spans) < 1.5, spans  # the tier's timeout is 2s: no request waited for it
    assert site.count("/small0") == 1
    redis_server.start()  # same port, empty
    # Back within the breaker's retry_after (1 s): a fill through A is shared again.
    time.sleep(1.2)
    ok = False
    for attempt in range(20):  # the first requests may still find the breaker open
        path = f"/small-back{attempt}"
        get(a.port, path)
        if wait_for(lambda p=path: client(redis_server).exists(key_of(p)), 0.5):
            hit = get(b.port, path)
            assert redis_hit(hit) and hit.body == SMALL, status(hit)
            ok = True
            break
    assert ok
    a.stop()
    b.stop()
    logs = b.log()
    assert logs.count("cache [caches.main] Redis redis://127.0.0.1") >= 1
    assert logs.count("is unavailable") == 1, logs  # one line for the outage, not per request
    assert "is back" in logs


class Blackhole:
    """A TCP listener that accepts connections and never answers (a hung Redis)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.conns.append(conn)

    def __enter__(self) -> Blackhole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_a_hung_redis_costs_one_timeout(make_origin: Callable[..., Origin], site: Site,
                                        tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    with Blackhole() as hole:
        port = free_port()
        proxy = ProxyProcess(config_text(port, origin.address, tier(
            f"redis://127.0.0.1:{hole.port}/0", timeout="200ms")), tmp_path, port).start()
        try:
            spans = []
            start = time.monotonic()
            for i in range(30):
                sent = time.monotonic()
                answer = get(port, f"/small{i}")
                spans.append(time.monotonic() - sent)
                assert answer.status == 200 and answer.body == SMALL
            elapsed = time.monotonic() - start
            # A lookup waits at most the timeout (connect, then the command); the
            # breaker then answers "miss" at once until its retry_after (1 s) passes,
            # when one request probes again. Connections: one probe and one try of the
            # invalidation listener per retry_after, at most.
            assert max(spans) < 1.5, spans
            assert sorted(spans)[len(spans) // 2] < 0.15, spans
            assert len(hole.conns) <= 2 * (elapsed / 1.0 + 2), (len(hole.conns), elapsed)
        finally:
            proxy.stop()
    assert proxy.log().count("is unavailable") == 1


def test_concurrent_misses_wait_for_one_redis_lookup(
        pair: tuple[ProxyProcess, ProxyProcess], redis_server: RedisServer,
        site: Site) -> None:
    a, b = pair
    r = client(redis_server)
    filled(b, redis_server, "/small")
    get(a.port, "/small2")  # A's connection to Redis is made
    before = int(r.info("commandstats").get("cmdstat_get", {}).get("calls", 0))
    # Redis holds every command for a while: A's lookup is in flight meanwhile.
    pause = 1.0
    r.execute_command("CLIENT", "PAUSE", int(pause * 1000), "ALL")
    paused_at = time.monotonic()
    answers: list[tuple[RawResponse, float]] = []
    lock = threading.Lock()

    def one() -> None:
        response = get(a.port, "/small")
        with lock:
            answers.append((response, time.monotonic()))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    sent_within = time.monotonic() - paused_at
    assert len(answers) == 8 and all(resp.body == SMALL for resp, _ in answers)
    # All of them were answered after the pause: they were all waiting during it.
    assert all(done >= paused_at + pause * 0.9 for _, done in answers), sent_within
    after = int(r.info("commandstats").get("cmdstat_get", {}).get("calls", 0))
    assert after - before == 1  # one lookup for eight requests
    assert sum(1 for resp, _ in answers if redis_hit(resp)) >= 1
    assert site.count("/small") == 1  # B's fill only


def test_two_workers_and_a_dead_url_at_start(make_origin: Callable[..., Origin], site: Site,
                                             tmp_path: Path) -> None:
    """A Redis that is not there when the proxy starts: it starts and serves."""
    origin = make_origin(site, name="app")
    port = free_port()
    proxy = ProxyProcess(config_text(port, origin.address,
                                     tier(f"redis://127.0.0.1:{free_port()}/0"), workers=2),
                         tmp_path, port).start()
    try:
        for _ in range(4):
            assert get(port, "/small").body == SMALL
        assert site.count("/small") <= 2  # one fill per worker at most
    finally:
        proxy.stop()


# -- config ----------------------------------------------------------------------------------


def test_redis_config(tmp_path: Path) -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}},
            "routes": [{"upstream": "a", "cache": "main"}]}

    def cache(redis: object, **more: object) -> dict[str, object]:
        return {**base, "caches": {"main": {"memory": "1m", "redis": redis, **more}}}

    spec = parse_config(cache("redis://127.0.0.1:6379/0")).caches["main"].redis
    assert spec is not None
    assert (spec.url, spec.max_object, spec.timeout, spec.prefix) == (
        "redis://127.0.0.1:6379/0", 1 << 20, 0.1, "fastproxy:cache:main:")
    spec = parse_config(cache({"url": "unix:///run/redis.sock", "max_object": "4m",
                               "timeout": "50ms", "prefix": "edge:"})).caches["main"].redis
    assert spec is not None
    assert (spec.max_object, spec.timeout, spec.prefix) == (4 << 20, 0.05, "edge:")
    # Responses up to the largest tier's max_object are stored by some tier.
    config = parse_config(cache({"url": "redis://h/0", "max_object": "2m"}))
    assert config.caches["main"].store_limit == 2 << 20

    bad = [
        ("http://127.0.0.1:6379", "caches.main.redis", "must start with redis://"),
        ("redis://127.0.0.1:6379/zero", "caches.main.redis", "database number"),
        (5, "caches.main.redis", "expected a table like \"redis://"),
        ({"max_object": "1m"}, "caches.main.redis.url", "missing required key"),
        ({"url": "redis://h/0", "max_object": "1g"}, "caches.main.redis.max_object",
         "must be from"),
        ({"url": "redis://h/0", "max_object": 0}, "caches.main.redis.max_object", ""),
        ({"url": "redis://h/0", "timeout": "20s"}, "caches.main.redis.timeout",
         "from 1ms to 10s"),
        ({"url": "redis://h/0", "timeout": "0s"}, "caches.main.redis.timeout", "greater than 0"),
        ({"url": "redis://h/0", "prefix": "has space"}, "caches.main.redis.prefix",
         "printable ASCII"),
        ({"url": "redis://h/0", "prefix": ""}, "caches.main.redis.prefix", "printable ASCII"),
        ({"url": "redis://h/0", "colour": "blue"}, "caches.main.redis.colour", "unknown key"),
        ({"url": "redis://h/0?socket_timeout=1"}, "caches.main.redis.url", "sets timeouts"),
    ]
    path = tmp_path / "fastproxy.toml"
    for value, key, reason in bad:
        with pytest.raises(ConfigError) as info:
            parse_config(cache(value), str(path))
        issues = [(i.key, i.reason) for i in info.value.errors]
        assert any(k == key and reason in r for k, r in issues), (value, issues)
        assert str(path) in str(info.value)


def test_cache_explain_shows_the_redis_key(pair: tuple[ProxyProcess, ProxyProcess],
                                          redis_server: RedisServer,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from fastproxy.cli import main

    a, _ = pair
    filled(a, redis_server, "/small")
    filled(a, redis_server, "/vary", "Accept-Language: en\r\n")
    config = str(a.config_path)
    assert main(["cache", "explain", config, "http://site/small"]) == 0
    out = capsys.readouterr().out
    assert f"; redis {redis_server.url})" in out
    assert f"redis:     {key_of('/small').decode()} (stored, expires in 6" in out
    assert main(["cache", "explain", config, "http://site/vary"]) == 0
    out = capsys.readouterr().out
    assert f"redis:     {key_of('/vary').decode()} (a Vary record and 1 variant(s)" in out
    assert main(["cache", "explain", config, "http://site/nothing"]) == 0
    assert f"redis:     {key_of('/nothing').decode()} (not in Redis)" in capsys.readouterr().out
    redis_server.stop()
    assert main(["cache", "explain", config, "http://site/small"]) == 0
    assert "(cannot ask Redis: ConnectionError" in capsys.readouterr().out


# -- the tier in one process -------------------------------------------------------------------


def test_purge_and_deletes_kept_while_redis_is_down(redis_server: RedisServer) -> None:
    """`purge` deletes a primary key's entries and says how many; a delete that
    could not be sent (Redis down) is sent once Redis answers again."""
    import asyncio

    import uvloop

    from fastproxy.rediscache import RedisCache
    from fastproxy.redislink import StoreUnavailable

    r = client(redis_server)
    fresh = cachepolicy.Freshness(600.0, "max-age", 0.0)

    async def main() -> None:
        cache = RedisCache(redis_server.url, name="main", prefix="t:", max_object=1 << 20,
                           timeout=1.0, retry_after=0.2)
        cache.start(asyncio.get_running_loop())
        try:
            stored = Stored(200, b"OK", [], b"body", time.time(), time.time(), fresh, b"")
            written: list[bool] = []
            cache.write(7, b"http://k/7", stored, (), written.append)
            assert written == []  # never from within the call
            for _ in range(200):
                if written:
                    break
                await asyncio.sleep(0.01)
            assert written == [True] and 590_000 <= r.pttl(b"t:0000000000000007") <= 600_000
            found = await cache.lookup(7, b"http://k/7", [])
            assert isinstance(found, tuple) and found[0].body == b"body"
            assert await cache.lookup(7, b"http://other", []) is None  # key text differs
            assert await cache.purge(7) == 1 and not r.exists(b"t:0000000000000007")

            redis_server.stop()
            with pytest.raises(StoreUnavailable):
                await cache.purge(8)  # not sent: kept
            cache.remove(9)
            assert not cache.read(9, b"http://k/9", [], lambda found: None)  # breaker open
            redis_server.start()  # same port, empty
            client(redis_server).set(b"t:0000000000000008", b"old")
            client(redis_server).set(b"t:0000000000000009:v", b"old")
            for _ in range(300):
                if not client(redis_server).exists(b"t:0000000000000008",
                                                   b"t:0000000000000009:v"):
                    break
                await asyncio.sleep(0.01)
            assert not client(redis_server).exists(b"t:0000000000000008",
                                                   b"t:0000000000000009:v")
        finally:
            await cache.close()

    uvloop.run(main())


def test_a_purge_removes_the_redis_copy_too(redis_server: RedisServer,
                                            make_origin: Callable[..., Origin], site: Site,
                                            tmp_path: Path) -> None:
    """Purged through A's admin API: A drops it from Redis (when it meets it), so B
    (which heard the deletion) and A fetch the new version."""
    import json
    import urllib.request

    origin = make_origin(site, name="app")
    admin = free_port()
    proxies = []
    try:
        for name, extra in (("a", f'[admin]\naddress = "127.0.0.1:{admin}"\n'), ("b", "")):
            (tmp_path / name).mkdir()
            port = free_port()
            proxies.append(ProxyProcess(config_text(port, origin.address,
                                                    tier(redis_server.url)) + extra,
                                        tmp_path / name, port).start())
        a, b = proxies
        filled(a, redis_server, "/versioned")
        assert get(b.port, "/versioned").body == b"v1"  # B has it in memory now
        site.version = 2
        request = urllib.request.Request(
            f"http://127.0.0.1:{admin}/cache/purge", method="POST",
            data=json.dumps({"url": "http://site/versioned"}).encode())
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["purged"] == "url"
        assert get(a.port, "/versioned").body == b"v2"
        assert site.count("/versioned") == 2
        # The old copy left Redis and B's memory (B heard the deletion).
        assert wait_for(lambda: get(b.port, "/versioned").body == b"v2")
    finally:
        for proxy in proxies:
            proxy.stop()
