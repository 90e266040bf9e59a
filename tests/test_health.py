"""Active health checks: one probe against real servers, the rise/fall verdicts in the
shared PeerTable, and the one health-check process per instance that the master runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from fastproxy._peers import PeerTable, slot_layout
from fastproxy.config import Config, HealthCheck, parse_config
from fastproxy.health import HealthChecker, _request, probe
from servers import Origin, ProxyProcess, Received, Reply, free_port

T = TypeVar("T")
OriginFactory = Callable[..., Origin]
ProxyFactory = Callable[..., ProxyProcess]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def check_probe(port: int, connect_to: str = "127.0.0.1", **check: Any) -> tuple[bool, str]:
    return run(probe(connect_to, port, HealthCheck(**check)))


# --------------------------------------------------------------------------
# One probe


def test_probe_passes_on_200_and_sends_the_request_head(origin: Origin) -> None:
    assert check_probe(origin.port, path="/healthz?deep=1") == (True, "ok")
    [req] = origin.requests
    assert (req.method, req.target, req.version) == ("GET", "/healthz?deep=1", "HTTP/1.1")
    assert req.headers == [("Host", f"127.0.0.1:{origin.port}"),
                           ("User-Agent", "fastproxy-health-check"),
                           ("Connection", "close"), ("Accept", "*/*")]


def test_probe_sends_the_configured_host(origin: Origin) -> None:
    assert check_probe(origin.port, host="health.example") == (True, "ok")
    assert origin.requests[0].header("Host") == "health.example"


def test_probe_resolves_a_host_name(origin: Origin) -> None:
    assert check_probe(origin.port, connect_to="localhost") == (True, "ok")
    assert origin.requests[0].header("Host") == f"localhost:{origin.port}"


def test_host_header_of_an_ipv6_server_is_bracketed() -> None:
    head = _request("::1", 8080, HealthCheck(method="HEAD", path="/h"))
    assert head.startswith(b"HEAD /h HTTP/1.1\r\nHost: [::1]:8080\r\n")


def test_probe_fails_on_500(make_origin: OriginFactory) -> None:
    origin = make_origin(lambda req: Reply(status=500, body=b"broken"))
    assert check_probe(origin.port) == (False, "status 500 not in 200-399")


@pytest.mark.parametrize(("status", "passed"), [(200, True), (204, True), (205, False),
                                                (302, False), (418, True), (503, False)])
def test_probe_status_ranges(make_origin: OriginFactory, status: int, passed: bool) -> None:
    origin = make_origin(lambda req: Reply(status=status, body=b""))
    result = check_probe(origin.port, status=((200, 204), (418, 418)))
    assert result == (True, "ok") if passed else (False, f"status {status} not in 200-204, 418")


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_probe_finds_the_body_substring(make_origin: OriginFactory, framing: str) -> None:
    text = "status: all good ✓".encode()
    reply = {"length": Reply(body=text),
             # the substring spans chunks, and a multi-byte character is split
             "chunked": Reply(chunks=[text[:9], text[9:-2], text[-2:]]),
             "close": Reply(body=text, close_delimited=True)}[framing]
    origin = make_origin(lambda req: reply)
    assert check_probe(origin.port, body="all good ✓", timeout=2.0) == (True, "ok")
    assert check_probe(origin.port, body="healthy", timeout=2.0) == (
        False, "body does not contain 'healthy'")


def test_probe_reads_at_most_64k_of_the_body(make_origin: OriginFactory) -> None:
    origin = make_origin(lambda req: Reply(chunks=[b"x" * 60000, b"y" * 60000, b"late"]))
    assert check_probe(origin.port, body="xy") == (True, "ok")
    assert check_probe(origin.port, body="late") == (False, "body does not contain 'late'")


def test_head_probe_does_not_wait_for_a_body(make_origin: OriginFactory) -> None:
    # The origin answers HEAD with a Content-Length and no body: a probe that waited
    # for those bytes would time out instead.
    origin = make_origin(lambda req: Reply(body=b"ok"))
    assert check_probe(origin.port, method="HEAD") == (True, "ok")
    started = time.monotonic()
    assert check_probe(origin.port, method="HEAD", body="ok", timeout=3.0) == (
        False, "body does not contain 'ok'")
    assert time.monotonic() - started < 1.5
    assert [r.method for r in origin.requests] == ["HEAD", "HEAD"]


def test_probe_times_out(make_origin: OriginFactory) -> None:
    async def never(req: Received) -> Reply:
        await asyncio.sleep(60)  # cancelled when the origin stops
        return Reply()

    origin = make_origin(never)
    started = time.monotonic()
    assert check_probe(origin.port, timeout=0.3) == (False, "timed out after 0.3s")
    assert 0.25 <= time.monotonic() - started < 1.5


def test_probe_of_a_closed_port_is_refused() -> None:
    assert check_probe(free_port()) == (False, "connect refused")


@pytest.mark.parametrize(("raw", "reason"), [
    (b"garbage\r\n\r\n", "malformed response: bad status line b'garbage'"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed response: bad status line b'HTTP/1.1 2000 OK'"),
    (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed response: bad header line b'no colon'"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
     "malformed response: head larger than 16 KiB"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\nok",
     "malformed response: bad Content-Length ['1x']"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     "malformed response: bad chunk size line b'zz\\r\\n'"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;" + b"x" * 20000 + b"\r\nok",
     "malformed response: a line longer than 16 KiB"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
     "connection closed before the response was complete"),
])
def test_probe_of_a_malformed_response(make_origin: OriginFactory, raw: bytes,
                                       reason: str) -> None:
    origin = make_origin(lambda req: Reply(raw=raw, close=True))
    assert check_probe(origin.port, body="ok") == (False, reason)


def test_interim_responses_are_skipped(make_origin: OriginFactory) -> None:
    raw = (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    origin = make_origin(lambda req: Reply(raw=raw, close=True))
    assert check_probe(origin.port, body="ok") == (True, "ok")


# --------------------------------------------------------------------------
# The checker: schedules, rise and fall, the shared table


def make_config(upstreams: dict[str, list[str]], checks: dict[str, dict[str, Any]]) -> Config:
    """A config with these upstreams; `checks` holds their health_check tables."""
    return parse_config({
        "listeners": [{"address": "127.0.0.1:8080"}],
        "upstreams": {name: {"servers": servers}
                      | ({"health_check": checks[name]} if name in checks else {})
                      for name, servers in upstreams.items()},
        "routes": [{"upstream": next(iter(upstreams))}],
    })


def make_checker(config: Config) -> tuple[HealthChecker, PeerTable]:
    table = PeerTable(slot_layout(config.upstreams)[1])
    return HealthChecker(config, table), table


def test_targets_follow_the_slot_layout_and_are_spread_over_the_interval() -> None:
    config = make_config({"web": ["127.0.0.1:1", "127.0.0.1:2"],
                          "api": ["127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:5"]},
                         {"api": {"interval": "3s"}})
    checker, _ = make_checker(config)
    assert [(t.upstream, t.server.port, t.slot, t.offset) for t in checker.targets] == [
        ("api", 3, 2, 0.0), ("api", 4, 3, 1.0), ("api", 5, 4, 2.0)]
    assert all(t.check is config.upstreams["api"].health_check for t in checker.targets)


def test_rise_and_fall_thresholds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastproxy.health")
    config = make_config({"api": ["127.0.0.1:9001", "127.0.0.1:9002"]},
                         {"api": {"rise": 2, "fall": 3}})
    checker, table = make_checker(config)
    target = checker.targets[1]
    version = table.version

    def feed(results: str) -> None:
        for r in results:
            checker.record(target, r == "+", "connect refused")

    feed("--+--")  # a pass in between resets the failures
    assert table.is_up(1) and table.version == version
    feed("-")
    assert not table.is_up(1) and table.version == version + 1
    assert table.is_up(0)
    feed("+-+-+")  # passes must be in a row, too
    assert not table.is_up(1)
    feed("+")
    assert table.is_up(1) and table.version == version + 2
    assert table.state(1)["up_for"] < 1.0  # back from down: slow start begins now
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "upstream api: server 127.0.0.1:9002 is DOWN (3 checks failed: connect refused)",
        "upstream api: server 127.0.0.1:9002 is UP (2 checks passed)"]


def test_a_restarted_checker_starts_from_the_table() -> None:
    config = make_config({"api": ["127.0.0.1:9001"]}, {"api": {"rise": 2, "fall": 2}})
    checker, table = make_checker(config)
    table.set_health(0, False)  # what the previous checker found
    checker.record(checker.targets[0], True, "ok")
    assert not table.is_up(0)
    checker.record(checker.targets[0], True, "ok")
    assert table.is_up(0)


async def until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@contextlib.asynccontextmanager
async def running(checker: HealthChecker) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(checker.serve(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def test_server_goes_down_and_comes_back(make_origin: OriginFactory,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastproxy.health")
    status = {"code": 200}
    flaky = make_origin(lambda req: Reply(status=status["code"]))
    steady = make_origin()
    refused = f"127.0.0.1:{free_port()}"
    check = {"path": "/health", "interval": "100ms", "timeout": "100ms", "rise": 2, "fall": 2}
    config = make_config({"api": [flaky.address, steady.address, refused]}, {"api": check})
    checker, table = make_checker(config)

    async def scenario() -> None:
        async with running(checker):
            assert await until(lambda: not table.is_up(2), 3), "the refused server stays up"
            assert table.is_up(0) and table.is_up(1)
            status["code"] = 503
            failing_since = len(flaky.requests)
            assert await until(lambda: not table.is_up(0), 3), "the failing server stays up"
            assert len(flaky.requests) - failing_since >= 2
            status["code"] = 200
            passing_since = len(flaky.requests)
            assert await until(lambda: table.is_up(0), 3), "the server does not come back"
            assert len(flaky.requests) - passing_since >= 2
            assert table.is_up(1) and not table.is_up(2)

    run(scenario())
    assert {r.target for r in flaky.requests + steady.requests} == {"/health"}
    assert len(steady.requests) >= 4  # every 0.1 s, not only once
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"upstream api: server {refused} is DOWN (2 checks failed: connect refused)" \
        in warnings
    assert (f"upstream api: server {flaky.address} is DOWN (2 checks failed: "
            "status 503 not in 200-399)") in warnings
    assert f"upstream api: server {flaky.address} is UP (2 checks passed)" in warnings


def test_a_probe_that_raises_counts_as_a_failure(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    async def broken(host: str, port: int, check: HealthCheck, *options: Any) -> tuple[bool, str]:
        calls.append(port)
        raise RuntimeError("bug")

    monkeypatch.setattr("fastproxy.health.probe", broken)
    config = make_config({"api": ["127.0.0.1:9001"]},
                         {"api": {"interval": "50ms", "timeout": "50ms", "fall": 2}})
    checker, table = make_checker(config)

    async def scenario() -> None:
        async with running(checker):
            assert await until(lambda: len(calls) >= 4, 3), calls

    run(scenario())
    assert not table.is_up(0)
    assert "probe error: RuntimeError('bug')" in caplog.text


def test_checker_only_probes_upstreams_with_checks(make_origin: OriginFactory) -> None:
    checked, unchecked = make_origin(), make_origin()
    config = make_config({"web": [unchecked.address], "api": [checked.address]},
                         {"api": {"interval": "50ms", "timeout": "50ms"}})
    checker, _ = make_checker(config)

    async def scenario() -> None:
        async with running(checker):
            assert await until(lambda: len(checked.requests) >= 3, 3)

    run(scenario())
    assert unchecked.requests == []


# --------------------------------------------------------------------------
# The process: one checker per instance, supervised by the master


HEALTH_CHECK = 'health_check = { path = "/health", interval = "250ms", timeout = "250ms", ' \
               'rise = 1, fall = 1 }'
STARTED = re.compile(r"health checker (\d+) started")


def checker_pids(proxy: ProxyProcess) -> list[int]:
    return [int(pid) for pid in STARTED.findall(proxy.log())]


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def probes(origin: Origin) -> int:
    return sum(r.target == "/health" for r in origin.requests)


def test_one_checker_per_instance_restarted_when_killed(origin: Origin,
                                                        make_proxy: ProxyFactory) -> None:
    proxy = make_proxy({"backend": [origin.address]}, workers=2, upstream_extra=HEALTH_CHECK)
    assert wait_for(lambda: len(checker_pids(proxy)) == 1, 10), proxy.log()
    [checker] = checker_pids(proxy)
    children = proxy.wait_worker_pids(3)
    assert len(children) == 3 and checker in children, (children, proxy.log())

    # Probes every 0.25 s from one process, not one per worker (2 workers would double them).
    assert wait_for(lambda: probes(origin) >= 1, 5)
    before = probes(origin)
    time.sleep(2.0)
    assert 4 <= probes(origin) - before <= 12, (probes(origin) - before, proxy.log())

    os.kill(checker, signal.SIGKILL)  # the checker this test's proxy started
    assert wait_for(lambda: len(checker_pids(proxy)) == 2, 10), proxy.log()
    assert re.search(rf"health checker {checker} died \(signal 9\)", proxy.log())
    replacement = checker_pids(proxy)[1]
    assert replacement != checker and replacement in proxy.worker_pids()
    resumed = probes(origin)
    assert wait_for(lambda: probes(origin) >= resumed + 2, 5)
    assert proxy.stop() == 0
    assert f"health checker {replacement} exited (0)" in proxy.log()


def test_no_checker_without_health_checks(origin: Origin, make_proxy: ProxyFactory) -> None:
    proxy = make_proxy({"backend": [origin.address]}, workers=2)
    assert len(proxy.wait_worker_pids(2)) == 2
    time.sleep(0.5)
    assert len(proxy.worker_pids()) == 2
    assert "health checker" not in proxy.log()


def test_workers_skip_a_server_the_checker_took_down(make_origin: OriginFactory,
                                                     make_proxy: ProxyFactory) -> None:
    def handler(name: str, healthy: bool) -> Callable[[Received], Reply]:
        def answer(req: Received) -> Reply:
            if req.target == "/health":
                return Reply(status=200 if healthy else 503)
            return Reply(body=name.encode())
        return answer

    sick = make_origin(handler("sick", False), "sick")
    well = make_origin(handler("well", True), "well")
    proxy = make_proxy({"backend": [sick.address, well.address]}, workers=2,
                       upstream_extra=HEALTH_CHECK)
    assert wait_for(lambda: "is DOWN" in proxy.log(), 10), proxy.log()
    bodies = set()
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        bodies.add(data.partition(b"\r\n\r\n")[2])
    assert bodies == {b"well"}, proxy.log()
    assert all(r.target == "/health" for r in sick.requests)


def test_probe_of_an_https_server_uses_tls() -> None:
    import ssl

    import trustme

    from test_tls_e2e import TlsOrigin

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("backend.internal", "127.0.0.1").configure_cert(server_ctx)
    origin = TlsOrigin(server_ctx).start()
    try:
        good = ssl.create_default_context()
        ca.configure_trust(good)
        assert run(probe("127.0.0.1", origin.port, HealthCheck(),
                         tls=(good, "backend.internal"))) == (True, "ok")
        assert origin.requests[-1].startswith(b"GET / HTTP/1.1\r\n")
        passed, reason = run(probe("127.0.0.1", origin.port, HealthCheck(),
                                   tls=(ssl.create_default_context(), "backend.internal")))
        assert not passed and reason.startswith("TLS certificate verification failed"), reason
        # Plain HTTP to the TLS port (what checks did before) fails.
        assert not run(probe("127.0.0.1", origin.port, HealthCheck()))[0]
    finally:
        origin.stop()
