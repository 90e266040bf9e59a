"""Requests that wait in a filter (WAF body inspection, a rate-limit delay, auth)
and how they end: retries keep the whole body, refusals give back what the
request held, bans count only real refusals. Regressions from a review."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy._ratelimit import BanTable, LimitTable
from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, RawClient, Reply, free_port


def recv_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def test_a_retry_replays_the_body_that_came_during_the_waf_wait(
        make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    failing = make_origin(lambda r: Reply(reset=True), name="a")
    good = make_origin(lambda r: Reply(body=b"len=%d" % len(r.body)), name="b")
    port = free_port()
    text = (f'[log]\naccess = "off"\n[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            '[waf]\nrule_sets = ["sqli"]\n'
            f'[upstreams.app]\nservers = ["{failing.address}", "{good.address}"]\n'
            'balance = "round_robin"\n[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        pieces = [bytes([97 + k]) * 5000 for k in range(4)]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        for framing in ("chunked", "length"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                head = (b"PUT /doc HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                        b"Connection: close\r\n")
                if framing == "chunked":
                    s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
                else:
                    s.sendall(head + b"Content-Length: 20000\r\n\r\n" + b"".join(pieces))
                assert recv_all(s).endswith(b"len=20000")
        assert [r.body for r in good.requests] == [b"".join(pieces)] * 2
    finally:
        proxy.stop()


def test_a_408_gives_back_its_in_flight_place(make_origin: Callable[..., Origin],
                                              tmp_path: Path) -> None:
    origin = make_origin(name="app")
    port = free_port()
    text = (f'[log]\naccess = "off"\n[limits]\nmax_in_flight = 2\n'
            f'[timeouts]\nbody = "500ms"\n[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        for _ in range(3):  # more slow bodies than max_in_flight, one after the other
            with RawClient(port, timeout=5) as client:
                client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
                assert client.read_response().status == 408
        with RawClient(port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.read_response().status == 200  # not 503: both places came back
    finally:
        proxy.stop()


def test_413_comes_before_100_continue(make_origin: Callable[..., Origin],
                                       tmp_path: Path) -> None:
    origin = make_origin(name="app")
    port = free_port()
    text = (f'[log]\naccess = "off"\n[limits]\nmax_body_bytes = "1k"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n[waf]\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        with RawClient(port) as client:
            client.send(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                        b"Expect: 100-continue\r\nContent-Length: 100000000\r\n\r\n")
            assert client.read_response().status == 413
    finally:
        proxy.stop()


def test_a_local_answer_after_a_held_body_drains_it(tmp_path: Path) -> None:
    port = free_port()
    text = (f'[log]\naccess = "off"\n[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            '[limits.slow]\nkey = "route"\nrate = "2/s"\nburst = 2\ndelay = 0\n'
            '[upstreams.unused]\nservers = ["127.0.0.1:9"]\n'
            '[[routes]]\nlimits = ["slow"]\nrespond = { body = "ok\\n" }\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        body = b"x" * 300_000
        with RawClient(port, timeout=10) as client:
            for i in range(2):  # the second is held 0.5 s with more than 64 KiB sent
                client.send(b"POST /p%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                            % (i, len(body)) + body)
                assert client.read_response().status == 200
            client.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.read_response().status in (200, 429)  # the connection still works
    finally:
        proxy.stop()


def test_a_client_that_goes_away_is_not_a_refusal(make_origin: Callable[..., Origin],
                                                  tmp_path: Path) -> None:
    slow = make_origin(lambda r: Reply(delay=1.0), name="slow")
    port = free_port()
    text = (f'[log]\naccess = "off"\n[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            '[auto_ban]\nafter = 2\non = ["4xx"]\n'
            f'[upstreams.app]\nservers = ["{slow.address}"]\n[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        for _ in range(3):  # each logged 499: not answered, so not counted
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.1)
        time.sleep(1.2)
        with RawClient(port) as client:
            client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.read_response().status == 200
    finally:
        proxy.stop()


def test_tables_find_a_key_past_a_free_slot() -> None:
    # 40 keys in 64 slots: many probe runs pass another key's slot first.
    keys = [b"10.0.0.%d" % i for i in range(40)]
    bans = BanTable(64, 1.0, 2, 5000.0)
    for key in keys[:20]:
        bans.record(key, now=100.0)  # counted once: stale a few seconds later
    for key in keys[20:]:
        bans.record(key, now=100.0)
        bans.record(key, now=100.0)  # banned until 5100
    assert bans.evictions == 0
    assert all(bans.remaining(key, now=1000.0) > 0 for key in keys[20:])
    for key in keys[20:]:  # a banned client's refusal must find its own slot, not a stale one
        bans.record(key, now=1000.0)
        assert bans.remaining(key, now=1000.0) > 0, key
    # Rate limits: a limited key's state is found past an idle slot before it.
    table = LimitTable(64)
    ids = [i * 7919 + 1 for i in range(40)]
    for i in ids[:20]:
        table.try_acquire(i, 1000.0, 0, now=10.0)  # idle again 1 ms later
    for i in ids[20:]:
        assert table.try_acquire(i, 1.0, 0, now=10.0)[0]  # next one allowed at 11.0
    assert table.evictions == 0
    for i in ids[20:]:
        assert not table.try_acquire(i, 1.0, 0, now=10.5)[0], i


def test_ban_windows_wrap() -> None:
    bans = BanTable(64, 0.001, 3, 60.0)
    edge = (1 << 32) * 0.001  # the 32-bit window number wraps here
    # Two refusals in the last window before the wrap, two in the first after it:
    # 2 x 0.8 + 2 >= 3 at the last one.
    times = (edge - 0.0005, edge - 0.0002, edge + 0.0001, edge + 0.0002)
    assert [bans.record(b"10.0.0.1", now=t) for t in times][-1] == 60.0


def test_settings_that_would_crash_a_worker_are_refused(tmp_path: Path) -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}}}
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    cases = [
        ({"routes": [{"upstream": "a", "max_body_bytes": "99999999999g"}]},
         "routes[0].max_body_bytes"),
        ({"routes": [{"upstream": "a", "forward_auth": {"url": "https://a/", "ca": "ca.pem"}}]},
         "routes[0].forward_auth.ca"),
        ({"limits": {"x": {"rate": "1/s", "store": "rediss://h/0?ssl_min_version=bogus"}},
          "routes": [{"upstream": "a", "limits": ["x"]}]}, "limits.x.store"),
        ({"waf": {"body_limit": "128k"}, "routes": [{"upstream": "a"}]}, "waf.body_limit"),
    ]
    for extra, key in cases:
        with pytest.raises(ConfigError) as info:
            parse_config({**base, **extra}, base_dir=str(tmp_path))
        assert [i.key for i in info.value.errors] == [key]
