"""Rate limits with `store = "redis://..."`: one limit across two proxy instances
sharing a real redis-server, and on_store_error when it goes away."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastproxy.config import ConfigError, parse_config
from servers import ProxyProcess, RedisServer, free_port, redis_server_path

pytestmark = pytest.mark.skipif(redis_server_path() is None,
                                reason="redis-server is not installed (ci/test.sh installs it)")


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def config(port: int, url: str) -> str:
    return (f'[server]\nworkers = 2\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[limits.shared]\nrate = "10/s"\nburst = 20\nstore = "{url}"\n'
            'store_timeout = "1s"\n'
            f'[limits.strict]\nkey = "route"\nrate = "1000/s"\nburst = 1000\nstore = "{url}"\n'
            'on_store_error = "deny"\nstore_timeout = "1s"\n'
            '[upstreams.unused]\nservers = ["127.0.0.1:9"]\n'
            '[[routes]]\nmatch = { path_prefix = "/strict" }\nlimits = ["strict"]\n'
            'respond = { body = "ok\\n" }\n'
            '[[routes]]\nlimits = ["shared"]\nrespond = { body = "ok\\n" }\n')


def get(port: int, path: str = "/") -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def test_one_limit_across_two_instances(redis: RedisServer, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    proxies = []
    for i, port in enumerate(ports):
        (tmp_path / str(i)).mkdir()
        proxies.append(ProxyProcess(config(port, redis.url), tmp_path / str(i), port))
    statuses: list[int] = []
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    refused: list[dict[str, str]] = []

    def client(port: int, n: int) -> None:
        for _ in range(n):
            sent = time.monotonic()
            status, headers = get(port)
            with lock:
                statuses.append(status)
                spans.append((sent, time.monotonic()))
                if status == 429 and not refused:
                    refused.append(headers)

    try:
        for proxy in proxies:
            proxy.start()
        # 4 clients, 2 on each instance, 60 requests each.
        threads = [threading.Thread(target=client, args=(ports[i % 2], 60)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(statuses) == 240
        allowed = statuses.count(200)
        widest = max(end for _, end in spans) - min(sent for sent, _ in spans)
        narrowest = max(sent for sent, _ in spans) - min(end for _, end in spans)
        # One allowance for both instances: the burst (21) once, plus the refill.
        assert 21 + int(narrowest * 10) - 1 <= allowed <= 21 + int(widest * 10) + 1, (
            allowed, narrowest, widest)
        assert statuses.count(429) == 240 - allowed
        assert refused[0]["ratelimit-policy"] == '"shared";q=21;w=3'
        assert refused[0]["retry-after"] == "1"

        # Redis goes away: "allow" lets requests through, "deny" answers 503.
        assert get(ports[0], "/strict")[0] == 200
        redis.stop()
        assert get(ports[0], "/strict")[0] == 503
        assert get(ports[1], "/strict")[0] == 503
        time.sleep(1.2)  # the shared limit's refill would allow ~12 more: it allows all
        assert [get(ports[0])[0] for _ in range(30)] == [200] * 30
        # Back: counted again (the key expired meanwhile, so the burst is whole).
        redis.start()
        time.sleep(1.2)  # the stores retry after their breaker's 1 s
        assert get(ports[1], "/strict")[0] == 200
        after = [get(ports[1])[0] for _ in range(30)]
        assert after.count(429) >= 5, after
    finally:
        for proxy in proxies:
            proxy.stop()
    logs = proxies[0].log() + proxies[1].log()
    assert "rate-limit store redis://127.0.0.1" in logs and "unavailable" in logs


def test_store_config(tmp_path: Path) -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}},
            "routes": [{"upstream": "a", "limits": ["x"]}]}
    config = parse_config({**base, "limits": {"x": {
        "rate": "5/s", "store": "redis://127.0.0.1:6379/0", "on_store_error": "deny",
        "store_timeout": "250ms"}}})
    spec = config.rate_limits["x"]
    assert (spec.store, spec.on_store_error, spec.store_timeout) == (
        "redis://127.0.0.1:6379/0", "deny", 0.25)
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "limits": {"x": {"rate": "5/s", "store": "http://x/",
                                               "on_store_error": "maybe"}}})
    assert sorted(i.key for i in info.value.errors) == ["limits.x.on_store_error",
                                                        "limits.x.store"]
    config = parse_config({**base, "limits": {"x": {"rate": "5/s", "on_store_error": "deny"}}})
    assert any("limits.x.on_store_error" in w for w in config.warnings)
