"""Prometheus metrics at /metrics on the admin API: the counters equal the traffic
sent, over two workers; histograms are consistent; what a dead worker counted is
kept; gauges follow what is open. The exposition is parsed by prometheus_client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import fastproxy
from fastproxy import metrics
from fastproxy._stats import LAYOUT, Stats
from servers import Origin, ProxyProcess, RawClient, Received, Reply, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Site:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()

    def __call__(self, req: Received) -> Reply:
        path = req.target.split("?", 1)[0]
        if path == "/slow":
            self.release.wait(20)
        if path == "/cached":
            return Reply(200, [("Cache-Control", "max-age=60")], b"cached")
        if path == "/boom":
            return Reply(503, [], b"down")
        return Reply(200, [("Content-Type", "text/plain")], b"x" * 100)


def start(tmp_path: Path, origin: Origin, workers: int = 2) -> tuple[ProxyProcess, int]:
    port, admin = free_port(), free_port()
    text = (f'[server]\nworkers = {workers}\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[admin]\naddress = "127.0.0.1:{admin}"\n'
            '[metrics]\nbuckets = ["1ms", "10ms", "100ms", "1s", "10s"]\n'
            '[caches.c]\nmemory = "1m"\n'
            '[limits.tight]\nrate = "1/m"\nburst = 0\nkey = "{header.x-who}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n'
            '[[routes]]\nname = "cached"\nmatch = { path = "/cached" }\nupstream = "app"\n'
            'cache = "c"\n'
            '[[routes]]\nname = "limited"\nmatch = { path = "/limited" }\nupstream = "app"\n'
            'limits = ["tight"]\n'
            '[[routes]]\nname = "api"\nmatch = { path_prefix = "/api" }\nupstream = "app"\n'
            '[[routes]]\nmatch = { path_prefix = "/" }\nupstream = "app"\n')
    return ProxyProcess(text, tmp_path, port).start(), admin


def scrape(admin: int) -> tuple[Samples, str]:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        text = resp.read().decode()
        assert resp.status == 200, text
        assert resp.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    finally:
        conn.close()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def send(port: int, method: str, path: str, headers: str = "", body: bytes = b"") -> int:
    with RawClient(port) as client:
        extra = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        client.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}{extra}\r\n".encode()
                    + body)
        return client.read_response(head_request=method == "HEAD").status


def test_counters_equal_the_traffic_over_two_workers(make_origin: Callable[..., Origin],
                                                     tmp_path: Path) -> None:
    origin = make_origin(Site(), name="app")
    proxy, admin = start(tmp_path, origin)
    try:
        for i in range(30):
            assert send(proxy.port, "GET", f"/api/{i}") == 200
        for _ in range(10):
            assert send(proxy.port, "POST", "/api/items", body=b"0123456789") == 200
        for _ in range(4):
            assert send(proxy.port, "HEAD", "/page") == 200
        for _ in range(3):
            assert send(proxy.port, "GET", "/boom") == 503
        statuses = [send(proxy.port, "GET", "/cached") for _ in range(12)]
        assert statuses == [200] * 12
        limited = [send(proxy.port, "GET", "/limited", "X-Who: me\r\n") for _ in range(3)]
        assert limited == [200, 429, 429]
        # A request the proxy cannot parse: 400, counted as a connection only.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"BAD\r\n\r\n")
            while s.recv(4096):
                pass

        samples, _ = scrape(admin)
        req = "fastproxy_http_requests_total"
        assert value(samples, req, route="api", method="GET", status_class="2xx") == 30
        assert value(samples, req, route="api", method="POST", status_class="2xx") == 10
        assert value(samples, req, route="routes[3]", method="HEAD", status_class="2xx") == 4
        assert value(samples, req, route="routes[3]", method="GET", status_class="5xx") == 3
        assert value(samples, req, route="cached", method="GET", status_class="2xx") == 12
        assert value(samples, req, route="limited", method="GET", status_class="2xx") == 1
        assert value(samples, req, route="limited", method="GET", status_class="4xx") == 2
        assert value(samples, "fastproxy_rate_limited_total") == 2

        # Histograms: +Inf equals the count, buckets never go down, count = requests.
        hist = "fastproxy_http_request_duration_seconds"
        for route, total in (("api", 40), ("routes[3]", 7), ("cached", 12)):
            count = value(samples, hist + "_count", route=route)
            assert count == total, route
            buckets = [value(samples, hist + "_bucket", route=route, le=le)
                       for le in ("0.001", "0.01", "0.1", "1.0", "10.0", "+Inf")]
            assert buckets == sorted(buckets) and buckets[-1] == count, buckets
            assert 0 < value(samples, hist + "_sum", route=route) < 10 * count

        # The cache: the first request of each worker missed, the rest hit.
        hits = value(samples, "fastproxy_cache_requests_total", cache="c", result="hit")
        misses = value(samples, "fastproxy_cache_requests_total", cache="c", result="miss")
        assert hits + misses == 12 and 1 <= misses <= 2, (hits, misses)

        # Upstream: every proxied request once (not the hits, not the 429s).
        sent_upstream = 30 + 10 + 4 + 3 + misses + 1
        ok = value(samples, "fastproxy_upstream_responses_total", upstream="app",
                   status_class="2xx")
        bad = value(samples, "fastproxy_upstream_responses_total", upstream="app",
                    status_class="5xx")
        assert (ok, bad) == (sent_upstream - 3, 3)
        assert value(samples, "fastproxy_upstream_server_requests_total", upstream="app",
                     server=origin.address) == sent_upstream
        assert value(samples, "fastproxy_upstream_server_in_flight", upstream="app",
                     server=origin.address) == 0
        assert value(samples, "fastproxy_upstream_server_up", upstream="app",
                     server=origin.address) == 1
        assert value(samples, "fastproxy_upstream_response_duration_seconds_count",
                     upstream="app") == sent_upstream

        # Connections: one per request above, the bad one, and the one that
        # ProxyProcess.start made to see the port open; all closed by now (give
        # the workers a moment to see the last close).
        conns = 30 + 10 + 4 + 3 + 12 + 3 + 1 + 1
        for _ in range(50):
            samples, _ = scrape(admin)
            if value(samples, "fastproxy_connections_closed_total") == conns:
                break
            time.sleep(0.05)
        assert value(samples, "fastproxy_connections_accepted_total") == conns
        assert value(samples, "fastproxy_connections_closed_total") == conns
        assert value(samples, "fastproxy_connections_open") == 0
        assert value(samples, "fastproxy_bytes_received_total") == 10 * 10
        assert value(samples, "fastproxy_bytes_sent_total") >= 30 * 100 + 10 * 100
        assert value(samples, "fastproxy_processes", role="worker") == 2
        assert value(samples, "fastproxy_info", version=fastproxy.__version__) == 1
    finally:
        proxy.stop()


def test_gauges_and_what_a_dead_worker_counted(make_origin: Callable[..., Origin],
                                               tmp_path: Path) -> None:
    site = Site()
    origin = make_origin(site, name="app")
    proxy, admin = start(tmp_path, origin, workers=1)
    held: list[RawClient] = []
    try:
        for i in range(20):
            assert send(proxy.port, "GET", f"/api/{i}") == 200
        site.release.clear()
        for _ in range(3):  # three requests held at the server
            client = RawClient(proxy.port)
            client.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(client)
        for _ in range(100):
            samples, _ = scrape(admin)
            if value(samples, "fastproxy_upstream_server_in_flight", upstream="app",
                     server=origin.address) == 3:
                break
            time.sleep(0.05)
        assert value(samples, "fastproxy_upstream_server_in_flight", upstream="app",
                     server=origin.address) == 3
        assert value(samples, "fastproxy_connections_open") == 3
        # The worker dies with them: its counts stay, its gauges go.
        workers = proxy.worker_pids()
        status = _admin_status(admin)
        pid = next(w["pid"] for w in status["workers"] if w["slot"] == 0)
        assert pid in workers
        os.kill(pid, signal.SIGKILL)
        site.release.set()
        for client in held:
            client.close()
        for _ in range(200):
            status = _admin_status(admin)
            pids = [w["pid"] for w in status["workers"] if w["slot"] == 0]
            if pids and pids[0] != pid:
                break
            time.sleep(0.05)
        assert send(proxy.port, "GET", "/api/after") == 200
        for _ in range(50):  # the worker sees the client's close a moment later
            samples, _ = scrape(admin)
            if value(samples, "fastproxy_connections_open") == 0:
                break
            time.sleep(0.05)
        assert value(samples, "fastproxy_http_requests_total", route="api", method="GET",
                     status_class="2xx") == 21
        assert value(samples, "fastproxy_upstream_server_in_flight", upstream="app",
                     server=origin.address) == 0
        assert value(samples, "fastproxy_connections_open") == 0
        assert value(samples, "fastproxy_connections_accepted_total") == 1 + 20 + 3 + 1
    finally:
        site.release.set()
        for client in held:
            client.close()
        proxy.stop()


def _admin_status(admin: int) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        conn.request("GET", "/status")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_metrics_can_be_turned_off(make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    origin = make_origin(Site(), name="app")
    port, admin = free_port(), free_port()
    text = (f'[log]\naccess = "off"\n[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[admin]\naddress = "127.0.0.1:{admin}"\n[metrics]\nenabled = false\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        assert send(proxy.port, "GET", "/") == 200
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 404 and b"metrics are off" in resp.read()
        conn.close()
    finally:
        proxy.stop()


# -- the table and the layout ------------------------------------------------------------

def test_layout_numbers_agree_with_the_hot_path() -> None:
    assert [LAYOUT[f"ST_{n}"] for n in ("ACCEPTED", "CLOSED", "OPEN", "BYTES_IN", "BYTES_OUT",
                                        "WAF", "RATE_LIMITED", "TLS_FAILURES",
                                        "TLS_HANDSHAKES", "DENIED")] == \
        list(range(len(metrics.INSTANCE)))
    assert metrics.INSTANCE.index("connections_open") == LAYOUT["ST_OPEN"]
    assert [LAYOUT["SV_REQUESTS"], LAYOUT["SV_FAILURES"], LAYOUT["SV_IN_FLIGHT"]] == \
        [metrics.SERVER.index(n) for n in ("requests", "failures", "in_flight")]
    assert LAYOUT["ROUTE_COUNTS"] == metrics.ROUTE_COUNTS
    assert LAYOUT["UP_COUNTS"] == metrics.UPSTREAM_COUNTS == LAYOUT["UP_FAILURES"] + 1
    assert [LAYOUT[f"CA_{n.upper()}"] for n in metrics.CACHE_RESULTS] == [0, 1, 2, 3]


def test_stats_blocks_histograms_and_retire() -> None:
    stats = Stats(64, 3, [1000, 10000])
    assert stats.histogram_size == 5
    stats.use_block(1)
    stats.add(0, 5)
    stats.add(1, 2)
    stats.observe_us(10, 500)      # <= 1ms
    stats.observe_us(10, 5000)     # <= 10ms
    stats.observe_us(10, 50000)    # +Inf
    stats.use_block(2)
    stats.add(0, 1)
    stats.add(1, 1)
    totals = stats.totals()
    assert totals[:2] == [6, 3]
    assert totals[10:15] == [1, 1, 1, 55500, 3]
    gauges = bytearray(64)
    gauges[1] = 1  # series 1 is a gauge
    stats.retire(1, bytes(gauges))
    assert stats.totals()[:2] == [6, 1]  # block 1's gauge went with it
    assert stats.totals()[10:15] == [1, 1, 1, 55500, 3]
    with pytest.raises(IndexError):
        stats.use_block(0)
    with pytest.raises(ValueError):
        Stats(8, 2, [10, 5])


def test_registry_keeps_series_across_configs_and_fills_up() -> None:
    registry = metrics.Registry(100)
    a = registry.series(("route", "a"), 40)
    b = registry.series(("route", "b"), 40, gauges=[3])
    assert (a, b) == (0, 40) and registry.series(("route", "a"), 40) == 0
    assert registry.gauges[43] == 1 and registry.gauges[3] == 0
    assert registry.series(("route", "c"), 40) == -1 and registry.full


def test_tls_handshakes_and_access_denials_are_counted(make_origin: Callable[..., Origin],
                                                       tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("site.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "site.key"))
    origin = make_origin(Site(), name="app")
    port, admin = free_port(), free_port()
    text = (f'[server]\nworkers = 1\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n[listeners.tls]\n'
            f'certificates = [{{ cert = "{tmp_path}/site.pem", key = "{tmp_path}/site.key" }}]\n'
            f'[admin]\naddress = "127.0.0.1:{admin}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n'
            '[[routes]]\nmatch = { path_prefix = "/private" }\nupstream = "app"\n'
            'access = { deny = ["127.0.0.1"] }\n'
            '[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        for path, expect in (("/a", 200), ("/b", 200), ("/private/x", 403)):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname="site.example") as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: site.example\r\n"
                          "Connection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            assert data.startswith(f"HTTP/1.1 {expect} ".encode()), data[:60]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"not a TLS hello\r\n\r\n" * 4)  # a handshake that fails
            s.recv(100)
        for _ in range(50):
            samples, _ = scrape(admin)
            if value(samples, "fastproxy_tls_handshake_failures_total") >= 1:
                break
            time.sleep(0.1)  # (the worker counts failures on its tick)
        assert value(samples, "fastproxy_tls_handshakes_total") == 3
        assert value(samples, "fastproxy_tls_handshake_failures_total") >= 1
        assert value(samples, "fastproxy_access_denied_total") == 1
    finally:
        proxy.stop()


_SHARED_BLOCK_SCRIPT = r'''
import os, sys, tomllib
from fastproxy import metrics
from fastproxy._peers import PeerTable, slot_layout
from fastproxy.config import parse_config
from fastproxy.master import Generation, Supervisor

path = sys.argv[1]
config = parse_config(tomllib.loads(open(path).read()), path)
stats = metrics.new_stats(config, 1)
gen = Generation(2, config, [[]], PeerTable(slot_layout(config.upstreams)[1]), [], None,
                 None, None, stats)
sup = Supervisor(gen, stats)
opened = gen.layout.instance + metrics.INSTANCE.index("connections_open")
accepted = gen.layout.instance + metrics.INSTANCE.index("connections_accepted")
last = stats[0].blocks - 1
# Reloads ran out of blocks: an old worker (generation 1, draining) and a new one
# count in the same block. The new one has a connection open.
old = os.fork()
if old == 0:
    os._exit(0)
hold, keep = os.pipe()
live = os.fork()
if live == 0:
    os.read(hold, 1)  # until killed
    os._exit(0)
sup.pids = {old: (1, 0), live: (2, 0)}
sup.blocks = {old: last, live: last}
sup.free_blocks = []
stats[0].use_block(last)
stats[0].add(accepted, 5)
stats[0].add(opened, 1)
os.waitid(os.P_PID, old, os.WEXITED | os.WNOWAIT)
sup._reap()  # the old worker is gone: the new one still counts in the block
totals = stats[0].totals()
print(totals[opened], totals[accepted], last in sup.free_blocks)
stats[0].add(opened, -1)  # the live worker's connection closes
print(stats[0].totals()[opened])
os.kill(live, 9)
os.waitid(os.P_PID, live, os.WEXITED | os.WNOWAIT)
sup._reap()
totals = stats[0].totals()
print(totals[opened], totals[accepted], last in sup.free_blocks)
'''


def test_a_shared_block_is_not_emptied_while_a_worker_still_counts_in_it(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "f.toml"
    path.write_text('[[listeners]]\naddress = "127.0.0.1:1"\n[admin]\naddress = "127.0.0.1:2"\n'
                    '[upstreams.app]\nservers = ["127.0.0.1:3"]\n'
                    '[[routes]]\nupstream = "app"\n')
    done = subprocess.run([sys.executable, "-c", _SHARED_BLOCK_SCRIPT, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    # Before the last user of the block is gone, nothing of it is folded away...
    assert lines[0] == "1 5 False", done.stdout
    assert lines[1] == "0", done.stdout  # ... so the gauge never goes below zero
    # ... and when it is, the counts stay (in block 0) and the block is free again.
    assert lines[2] == "0 5 True", done.stdout
