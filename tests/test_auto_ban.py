"""[auto_ban]: a client refused too often is refused for a while, by every worker."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy._ratelimit import BanTable
from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, free_port


def test_ban_table_counts_refusals_in_a_sliding_window() -> None:
    table = BanTable(64, 10.0, 3, 60.0)
    assert [table.record(b"10.0.0.1", now=100.5) for _ in range(3)] == [0.0, 0.0, 60.0]
    assert table.remaining(b"10.0.0.1", now=130.5) == 30.0
    assert table.remaining(b"10.0.0.2", now=130.5) == 0.0  # others are not touched
    assert table.record(b"10.0.0.1", now=131.0) == 0.0  # refusals while banned don't count
    assert table.remaining(b"10.0.0.1", now=160.5) == 0.0  # the ban ends...
    assert table.record(b"10.0.0.1", now=161.0) == 0.0  # ...and counting starts afresh
    assert table.bans == 1
    # Across a fixed window's edge (110): the previous window's refusals count for
    # the part of it the sliding window still covers (at 112: 2 x 0.8 + 2 >= 3).
    assert [table.record(b"10.0.0.3", now=t) for t in (105.0, 109.0, 111.0, 112.0)] == [
        0, 0, 0, 60.0]
    # Spread out, the same refusals never ban: one every 6 s (under 2 per 10 s).
    assert not any(table.record(b"10.0.0.4", now=200.0 + 6 * i) for i in range(50))
    # Nor do old ones: 2 refusals, then 1 twenty seconds later.
    assert [table.record(b"10.0.0.5", now=t) for t in (300.0, 301.0, 321.0)] == [0, 0, 0]


def test_ban_table_is_bounded() -> None:
    table = BanTable(64, 10.0, 5, 60.0)
    for i in range(1000):  # far more live clients than slots: the oldest are taken over
        table.record(b"10.1.%d.%d" % (i // 256, i % 256), now=100.0)
    assert table.evictions > 0 and table.size == 64


def start(tmp_path: Path, origin: Origin, ban: str, workers: int = 2) -> ProxyProcess:
    port = free_port()
    text = (f'[server]\nworkers = {workers}\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            '[waf]\nrule_sets = ["sqli"]\n'
            f'[auto_ban]\n{ban}\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    return ProxyProcess(text, tmp_path, port).start()


def get(port: int, path: str) -> tuple[int, str | None]:
    # A new connection each time, so that both workers see the client.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Retry-After")
    finally:
        conn.close()


ATTACK = "/item?id=1%20UNION%20SELECT%20password%20FROM%20users"


def test_waf_blocks_ban_the_client_instance_wide(make_origin: Callable[..., Origin],
                                                 tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = start(tmp_path, origin, 'after = 5\nwindow = "1m"\nban_time = "2s"')
    try:
        proxy.wait_worker_pids(2)
        assert get(proxy.port, "/")[0] == 200
        assert [get(proxy.port, ATTACK)[0] for _ in range(5)] == [403] * 5
        # Banned now: even an ordinary request is refused, with Retry-After. (The
        # count is a sliding window estimated from two fixed ones: a burst that
        # straddles their edge may need one refusal more.)
        status, retry = get(proxy.port, "/")
        if status == 200:
            assert get(proxy.port, ATTACK)[0] == 403
            status, retry = get(proxy.port, "/")
        assert status == 403 and retry in ("1", "2")
        assert sum(get(proxy.port, "/")[0] == 403 for _ in range(10)) == 10
        time.sleep(2.2)
        assert get(proxy.port, "/")[0] == 200  # the ban is over
        assert "auto-ban: client 127.0.0.1 refused for 2 s" in proxy.log()
        assert sum(1 for r in origin.requests if r.target == "/") in (2, 3)
    finally:
        proxy.stop()


def test_4xx_answers_count_and_exempt_clients_are_never_banned(
        make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = start(tmp_path, origin, 'after = 3\non = ["404"]\nexempt = ["127.0.0.0/8"]',
                  workers=1)
    try:
        for _ in range(5):
            assert get(proxy.port, ATTACK)[0] == 403  # WAF blocks do not count here
        assert get(proxy.port, "/")[0] == 200
    finally:
        proxy.stop()
    (tmp_path / "second").mkdir()
    proxy = start(tmp_path / "second", origin, 'after = 3\non = ["4xx"]', workers=1)
    try:
        statuses = [get(proxy.port, ATTACK)[0] for _ in range(4)]
        assert statuses == [403, 403, 403, 403]
        assert get(proxy.port, "/")[0] == 403  # banned by the 4xx answers
        assert "auto-ban: client 127.0.0.1" in proxy.log()
    finally:
        proxy.stop()


def test_auto_ban_config() -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}}, "routes": [{"upstream": "a"}]}
    config = parse_config({**base, "auto_ban": {}})
    ban = config.auto_ban
    assert ban is not None and (ban.after, ban.window, ban.ban_time, ban.on) == (
        20, 60.0, 600.0, ("waf",))
    assert ban.statuses() == frozenset()
    assert parse_config({**base, "auto_ban": {"on": ["401", "429"]}}).auto_ban.statuses() == {
        401, 429}
    assert parse_config({**base}).auto_ban is None
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "auto_ban": {"after": 0, "on": ["waf", "500"], "window": "x",
                                           "exempt": ["nope"], "color": 1}})
    keys = sorted(i.key for i in info.value.errors)
    assert keys == ["auto_ban.after", "auto_ban.color", "auto_ban.exempt[0]", "auto_ban.on[1]",
                    "auto_ban.window"]
