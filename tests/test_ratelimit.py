"""Rate limits: GCRA in a shared-memory table, exact across workers, 429 answers."""

from __future__ import annotations

import http.client
import itertools
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from fastproxy._ratelimit import LimitTable, RateLimit
from fastproxy.config import ConfigError, parse_config
from servers import ProxyProcess, free_port


def test_gcra_allows_the_burst_then_the_rate() -> None:
    table = LimitTable(100)
    t = 1000.0
    allowed = [table.try_acquire(7, 10.0, 20, now=t)[0] for _ in range(30)]
    assert allowed == [True] * 21 + [False] * 9  # burst 20 + the one the rate allows
    ok, wait = table.try_acquire(7, 10.0, 20, now=t)
    assert not ok and wait == pytest.approx(0.1)
    assert table.try_acquire(7, 10.0, 20, now=t + 0.1)[0]
    assert not table.try_acquire(7, 10.0, 20, now=t + 0.1)[0]
    # Another key is independent.
    assert table.try_acquire(8, 10.0, 20, now=t)[0]
    # After 2.1 s of silence the whole burst is back.
    later = [table.try_acquire(7, 10.0, 20, now=t + 2.2)[0] for _ in range(22)]
    assert later.count(True) == 21


def test_workers_share_one_count() -> None:
    """Four processes take from the same key at the same instant: exactly the burst
    passes, however the updates interleave (compare-and-swap)."""
    table = LimitTable(1000)
    now = 5000.0
    read, write = os.pipe()
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            n = sum(table.try_acquire(42, 1.0, 199, now=now)[0] for _ in range(100))
            os.write(write, b"%d\n" % n)
            os._exit(0)
        pids.append(pid)
    try:
        os.close(write)
        data = b""
        while chunk := os.read(read, 100):
            data += chunk
    finally:
        for pid in pids:
            os.waitpid(pid, 0)
        os.close(read)
    assert sum(int(x) for x in data.split()) == 200


def test_idle_keys_free_their_slots_and_a_full_table_evicts() -> None:
    table = LimitTable(64)
    now = 100.0
    for key in range(1, 65):  # 64 live keys fill the table...
        table.try_acquire(key * 7919, 1.0, 0, now=now)
    assert table.evictions == 0 or table.evictions < 64
    before = table.evictions
    for key in range(1000, 1100):  # ...so new live keys take over the oldest
        table.try_acquire(key * 7919, 1.0, 0, now=now)
    assert table.evictions > before
    # One second later every key is idle again: new keys need no eviction.
    settled = table.evictions
    for key in range(5000, 5040):
        assert table.try_acquire(key * 7919, 1.0, 0, now=now + 1.5)[0]
    assert table.evictions == settled


def test_rate_limit_headers() -> None:
    limit = RateLimit("per_ip", None, 10.0, 2, LimitTable(64))
    answers = [limit.headers(b"1.2.3.4", now=10.0) for _ in range(4)]
    assert [a[0] for a in answers] == [True, True, True, False]
    lines = answers[3][1].decode()
    assert 'RateLimit-Policy: "per_ip";q=3;w=1' in lines
    assert 'RateLimit: "per_ip";r=0;t=1' in lines
    assert "Retry-After: 1" in lines
    assert 'RateLimit: "per_ip";r=2;t=1' in answers[0][1].decode()


def test_config_errors_name_the_key() -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}}}
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "limits": {"x": {"rate": "ten"}, "y": {"rate": "1/s",
                                                                      "key": "header:"}},
                      "routes": [{"upstream": "a", "limits": ["x", "nope"]}]})
    keys = {issue.key for issue in info.value.errors}
    assert keys == {"limits.x.rate", "limits.y.key", "routes[0].limits[1]"}


# -- end to end ---------------------------------------------------------------------------

def proxy_config(port: int) -> str:
    return (f'[server]\nworkers = 2\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            '[limits.per_ip]\nrate = "10/s"\nburst = 20\n'
            '[limits.per_key]\nkey = "header:X-Api-Key"\nrate = "1/s"\nburst = 1\n'
            '[upstreams.unused]\nservers = ["127.0.0.1:9"]\n'
            '[[routes]]\nmatch = { path_prefix = "/keyed" }\nlimits = ["per_key"]\n'
            'respond = { body = "ok\\n" }\n'
            '[[routes]]\nlimits = ["per_ip"]\nrespond = { body = "ok\\n" }\n')


def test_limit_holds_across_two_workers(tmp_path: Path) -> None:
    port = free_port()
    proxy = ProxyProcess(proxy_config(port), tmp_path, port).start()
    statuses: list[int] = []
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    refused: list[dict[str, str]] = []

    def client(n: int) -> None:
        # A new connection per request, so the kernel spreads them over both workers.
        for _ in range(n):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                sent = time.monotonic()
                conn.request("GET", "/", headers={"Connection": "close"})
                resp = conn.getresponse()
                resp.read()
                with lock:
                    statuses.append(resp.status)
                    spans.append((sent, time.monotonic()))
                    if resp.status == 429 and len(refused) < 1:
                        refused.append({k.lower(): v for k, v in resp.getheaders()})
            finally:
                conn.close()

    try:
        proxy.wait_worker_pids(2)
        threads = [threading.Thread(target=client, args=(125,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(statuses) == 500
        allowed = statuses.count(200)
        # The bucket starts full (21) and refills at 10/s while requests keep coming: at
        # most what refilled between the first send and the last answer, at least what
        # refilled between the first answer and the last send (the clients never pause).
        widest = max(end for _, end in spans) - min(sent for sent, _ in spans)
        narrowest = max(sent for sent, _ in spans) - min(end for _, end in spans)
        assert 21 + int(narrowest * 10) - 1 <= allowed <= 21 + int(widest * 10) + 1, (
            allowed, narrowest, widest)
        assert statuses.count(429) == 500 - allowed
        assert refused[0]["retry-after"] == "1"
        assert refused[0]["ratelimit-policy"] == '"per_ip";q=21;w=3'
        assert refused[0]["ratelimit"].startswith('"per_ip";r=0;t=')
        # Keys are independent: two API keys each get their own burst.
        for key in ("alpha", "beta"):
            got = []
            for _ in range(3):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/keyed", headers={"X-Api-Key": key})
                got.append(conn.getresponse().status)
                conn.close()
            assert got == [200, 200, 429]
        # No key at all: not limited by a key-less bucket.
        for _ in range(4):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/keyed")
            assert conn.getresponse().status == 200
            conn.close()
    finally:
        proxy.stop()


def test_delay_holds_the_excess_at_the_rate() -> None:
    # 10/s, burst 5, the first 2 excess requests at once (nginx: burst=5 delay=2).
    limit = RateLimit("held", None, 10.0, 5, LimitTable(64), 2)
    got = [limit.hold(b"k", now=50.0) for _ in range(7)]
    assert [ok for ok, _ in got] == [True] * 6 + [False]
    assert [round(held, 3) for _, held in got[:6]] == [0, 0, 0, 0.1, 0.2, 0.3]
    # Without a delay nothing is held (nodelay), with delay 0 every excess request is.
    assert RateLimit("n", None, 10.0, 5, LimitTable(64)).hold(b"k", now=1.0) == (True, 0.0)
    eager = RateLimit("d0", None, 10.0, 5, LimitTable(64), 0)
    assert [round(eager.hold(b"k", now=1.0)[1], 3) for _ in range(3)] == [0, 0.1, 0.2]
    with pytest.raises(ValueError):
        RateLimit("bad", None, 10.0, 5, LimitTable(64), 6)


def test_delay_mode_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    text = (f'[log]\naccess = "off"\n[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            '[limits.paced]\nkey = "route"\nrate = "4/s"\nburst = 4\ndelay = 0\n'
            '[upstreams.unused]\nservers = ["127.0.0.1:9"]\n'
            '[[routes]]\nlimits = ["paced"]\nrespond = { body = "ok\\n" }\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    done: list[tuple[int, float]] = []
    lock = threading.Lock()
    ready = threading.Barrier(7, timeout=10)

    def one() -> None:
        # Connected first, then all sent at once: the 7 arrive well within one
        # interval (250 ms) even on a busy machine.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            ready.wait()
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            with lock:
                done.append((int(data.split(b" ", 2)[1]), time.monotonic()))

    try:
        threads = [threading.Thread(target=one) for _ in range(7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        statuses = sorted(status for status, _ in done)
        # 1 + burst 4 pass, spaced 250 ms apart; the 2 beyond are refused at once.
        assert statuses == [200] * 5 + [429] * 2
        first = min(at for _, at in done)
        passed = sorted(at - first for status, at in done if status == 200)
        refused = [at - first for status, at in done if status == 429]
        assert passed[-1] >= 0.9 and max(refused) < passed[-1] - 0.5, (passed, refused)
        gaps = [b - a for a, b in itertools.pairwise(passed)]
        assert all(0.1 < gap < 0.6 for gap in gaps[1:]), gaps
    finally:
        proxy.stop()


def test_delay_config() -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}},
            "routes": [{"upstream": "a", "limits": ["x"]}]}
    config = parse_config({**base, "limits": {"x": {"rate": "5/s", "burst": 10, "delay": 3}}})
    assert config.rate_limits["x"].delay == 3
    assert parse_config({**base, "limits": {"x": {"rate": "5/s"}}}).rate_limits["x"].delay == -1
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "limits": {"x": {"rate": "5/s", "burst": 2, "delay": 3}}})
    assert [(i.key, "burst" in i.reason) for i in info.value.errors] == [("limits.x.delay", True)]
