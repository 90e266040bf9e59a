"""Upstream failures end to end: retries, passive ejection, backups, max_conns
with its queue, the fast 503 when nothing is usable, and failover under load."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servers import Origin, ProxyProcess, Received, Reply, free_port

OriginFactory = Callable[..., Origin]


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """start_proxy(upstreams_and_routes_toml, workers=1): a proxy on a free port."""
    started: list[ProxyProcess] = []

    def start(body: str, workers: int = 1) -> ProxyProcess:
        port = free_port()
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        text = (f'[server]\nworkers = {workers}\nshutdown_timeout = "2s"\n\n'
                f'[log]\naccess = "{workdir / "access.log"}"\nlevel = "info"\n\n'
                f'[[listeners]]\naddress = "127.0.0.1:{port}"\n\n{body}\n')
        proc = ProxyProcess(text, workdir, port)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


def request(port: int, method: str = "GET", path: str = "/", body: bytes | None = None,
            timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": "example.com"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def dead_address() -> str:
    """An address where nothing listens: connections are refused."""
    return f"127.0.0.1:{free_port()}"


def upstream(servers: str, extra: str = "", name: str = "app") -> str:
    return (f"[upstreams.{name}]\nservers = [{servers}]\n{extra}\n"
            f'[[routes]]\nupstream = "{name}"\n')


NO_EJECT = "[upstreams.app.eject]\nfailures = 0\n"


# -- retries -----------------------------------------------------------------------------

def test_connect_failure_is_retried_for_every_method(make_origin: OriginFactory,
                                                     start_proxy: Callable[..., ProxyProcess]
                                                     ) -> None:
    live = make_origin(name="live")
    proxy = start_proxy(upstream(f'"{dead_address()}", "{live.address}"', NO_EJECT))
    # Round robin sends every other request to the dead server first.
    for i in range(6):
        assert request(proxy.port, "GET", f"/g{i}")[:1] == (200,)
        status, _, body = request(proxy.port, "POST", f"/p{i}", body=b"x" * 1000)
        assert status == 200, body
    assert len(live.requests) == 12
    assert all(r.body == b"x" * 1000 for r in live.requests if r.method == "POST")


def test_reset_before_response_is_retried_only_for_idempotent_methods(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess]) -> None:
    broken = make_origin(lambda req: Reply(reset=True), name="broken")
    good = make_origin(name="good")
    proxy = start_proxy(upstream(f'"{broken.address}", "{good.address}"', NO_EJECT))
    assert [request(proxy.port, "GET", f"/g{i}")[0] for i in range(6)] == [200] * 6
    assert [request(proxy.port, "DELETE", f"/d{i}")[0] for i in range(4)] == [200] * 4
    # POST may have had an effect: the one sent to the broken server is not repeated.
    posts = [request(proxy.port, "POST", f"/p{i}", body=b"data")[0] for i in range(4)]
    assert sorted(posts) == [200, 200, 502, 502]
    post_targets = [r.target for r in broken.requests + good.requests if r.method == "POST"]
    assert sorted(post_targets) == [f"/p{i}" for i in range(4)]  # each sent once


def test_status_retry_only_for_the_statuses_named(make_origin: OriginFactory,
                                                  start_proxy: Callable[..., ProxyProcess]
                                                  ) -> None:
    sick = make_origin(lambda req: Reply(status=503, body=b"sick"), name="sick")
    good = make_origin(name="good")
    servers = f'"{sick.address}", "{good.address}"'
    plain = start_proxy(upstream(servers, NO_EJECT))
    statuses = Counter(request(plain.port, "GET", f"/a{i}")[0] for i in range(6))
    assert statuses == {200: 3, 503: 3}  # by default a 503 is the server's answer

    retrying = start_proxy(upstream(servers, NO_EJECT + '[upstreams.app.retry]\non = ["503"]\n'))
    answers = [request(retrying.port, "GET", f"/b{i}") for i in range(6)]
    assert [a[0] for a in answers] == [200] * 6
    assert all(a[2].startswith(b"good ") for a in answers)
    # POST is not idempotent: its 503 goes to the client.
    assert sorted(request(retrying.port, "POST", f"/c{i}", body=b"")[0]
                  for i in range(2)) == [200, 503]


def test_per_try_timeout_moves_on_to_another_server(make_origin: OriginFactory,
                                                    start_proxy: Callable[..., ProxyProcess]
                                                    ) -> None:
    slow = make_origin(lambda req: Reply(delay=3.0, body=b"slow"), name="slow")
    fast = make_origin(name="fast")
    proxy = start_proxy(upstream(
        f'"{slow.address}", "{fast.address}"',
        NO_EJECT + '[upstreams.app.retry]\nper_try_timeout = "300ms"\non = ["timeout"]\n'))
    started = time.monotonic()
    results = [request(proxy.port, "GET", f"/t{i}") for i in range(2)]
    elapsed = time.monotonic() - started
    assert [r[0] for r in results] == [200, 200]
    assert all(r[2].startswith(b"fast ") for r in results)
    # Round robin asks the slow server first each time (the retry's pick moves
    # the rotation on to the fast one). The worker checks deadlines every
    # 0.25 s: a timed-out try costs < 1 s, far from the 3 s the server takes.
    assert len(slow.requests) == 2
    assert elapsed < 2.5


def test_a_kept_body_is_sent_again_and_a_bigger_one_is_not(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess]) -> None:
    broken = make_origin(lambda req: Reply(reset=True), name="broken")
    good = make_origin(name="good")
    proxy = start_proxy(upstream(f'"{broken.address}", "{good.address}"',
                                 NO_EJECT + '[upstreams.app.retry]\nbuffer = "4k"\n'))
    small = bytes(range(256)) * 12  # 3 KiB
    assert [request(proxy.port, "PUT", f"/s{i}", body=small)[0] for i in range(2)] == [200, 200]
    assert [r.body for r in good.requests] == [small, small]
    big = b"b" * 8192
    statuses = sorted(request(proxy.port, "PUT", f"/b{i}", body=big)[0] for i in range(2))
    assert statuses == [200, 502]  # the one the broken server took is not replayed


def test_retries_and_budget_limit_the_extra_tries(make_origin: OriginFactory,
                                                  start_proxy: Callable[..., ProxyProcess]
                                                  ) -> None:
    broken = [make_origin(lambda req: Reply(reset=True), name=f"b{i}") for i in range(3)]
    good = make_origin(name="good")
    servers = ", ".join(f'"{o.address}"' for o in [*broken, good])
    # retries = 1: a request that meets two broken servers fails.
    proxy = start_proxy(upstream(servers, NO_EJECT + "[upstreams.app.retry]\nretries = 1\n"))
    statuses = [request(proxy.port, "GET", f"/r{i}")[0] for i in range(8)]
    assert 502 in statuses and 200 in statuses
    tries = sum(len(o.requests) for o in [*broken, good])
    assert tries <= 2 * 8
    # budget = 0: nothing but connect failures is retried.
    for o in broken:
        o.requests.clear()
    good.requests.clear()
    nobudget = start_proxy(upstream(servers, NO_EJECT + "[upstreams.app.retry]\nbudget = 0\n"))
    statuses = [request(nobudget.port, "GET", f"/n{i}")[0] for i in range(8)]
    assert Counter(statuses) == {502: 6, 200: 2}
    assert sum(len(o.requests) for o in [*broken, good]) == 8


# -- passive checks, backups, no server ------------------------------------------------

def test_passive_ejection_and_probe(make_origin: OriginFactory,
                                    start_proxy: Callable[..., ProxyProcess]) -> None:
    bad = make_origin(lambda req: Reply(status=502, body=b"bad"), name="bad")
    good = make_origin(name="good")
    proxy = start_proxy(upstream(
        f'"{bad.address}", "{good.address}"',
        '[upstreams.app.eject]\nfailures = 2\ntime = "1s"\nmax_time = "10s"\n'))
    statuses = [request(proxy.port, "GET", f"/e{i}")[0] for i in range(12)]
    assert len(bad.requests) == 2  # then ejected: everything goes to the good one
    assert statuses.count(502) == 2 and statuses.count(200) == 10
    time.sleep(1.2)
    [request(proxy.port, "GET", f"/p{i}") for i in range(4)]
    assert len(bad.requests) == 3  # one probe after the ejection time, which fails
    time.sleep(1.2)  # the second ejection lasts 2 s
    [request(proxy.port, "GET", f"/q{i}") for i in range(4)]
    assert len(bad.requests) == 3


def test_backup_serves_only_while_no_primary_is_usable(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess]) -> None:
    primary = make_origin(name="primary")
    spare = make_origin(name="spare")
    port = primary.port
    proxy = start_proxy(upstream(
        f'"{primary.address}", {{ address = "{spare.address}", backup = true }}',
        '[upstreams.app.eject]\nfailures = 1\ntime = "1s"\n'))
    assert {request(proxy.port)[2].split()[0] for _ in range(5)} == {b"primary"}
    primary.stop()
    # The first request finds the primary refusing and is retried on the backup.
    assert {request(proxy.port)[2].split()[0] for _ in range(5)} == {b"spare"}
    revived = make_origin(name="primary", port=port)
    time.sleep(1.2)  # the ejection ends; the probe succeeds
    assert {request(proxy.port)[2].split()[0] for _ in range(5)} == {b"primary"}
    assert len(revived.requests) == 5 and len(spare.requests) == 5


def test_all_servers_down_gives_a_fast_503_without_connecting(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess]) -> None:
    sick = make_origin(lambda req: Reply(status=503), name="sick")
    proxy = start_proxy(upstream(f'"{sick.address}"',
                                 '[upstreams.app.eject]\nfailures = 2\ntime = "30s"\n'))
    assert [request(proxy.port)[0] for _ in range(2)] == [503, 503]  # the server's answers
    connections = sick.connections
    started = time.monotonic()
    for _ in range(20):
        status, headers, body = request(proxy.port)
        assert status == 503
        assert headers["retry-after"] == "1"
        assert body == b'no server of upstream "app" is available (all are down or ejected)\n'
    assert time.monotonic() - started < 2.0
    assert len(sick.requests) == 2 and sick.connections == connections


# -- max_conns and the queue ----------------------------------------------------------

def test_max_conns_queues_then_refuses(make_origin: OriginFactory,
                                       start_proxy: Callable[..., ProxyProcess]) -> None:
    slow = make_origin(lambda req: Reply(delay=0.6, body=b"done"), name="slow")
    proxy = start_proxy(upstream(f'{{ address = "{slow.address}", max_conns = 1 }}',
                                 'queue = 1\nqueue_timeout = "5s"\n'))
    results: dict[int, tuple[int, dict[str, str], bytes]] = {}

    def go(i: int) -> None:
        results[i] = request(proxy.port, "GET", f"/m{i}")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.1)  # in order: one in flight, one queued, one refused
    for t in threads:
        t.join(10)
    statuses = sorted(r[0] for r in results.values())
    assert statuses == [200, 200, 503]
    refused = next(r for r in results.values() if r[0] == 503)
    assert refused[1]["retry-after"] == "1"
    assert b"max_conns" in refused[2]
    # Never two at once on the server.
    assert len(slow.requests) == 2


def test_queue_timeout_answers_503(make_origin: OriginFactory,
                                   start_proxy: Callable[..., ProxyProcess]) -> None:
    slow = make_origin(lambda req: Reply(delay=2.0, body=b"done"), name="slow")
    proxy = start_proxy(upstream(f'{{ address = "{slow.address}", max_conns = 1 }}',
                                 'queue = 10\nqueue_timeout = "300ms"\n'))
    first = threading.Thread(target=request, args=(proxy.port,))
    first.start()
    time.sleep(0.2)
    started = time.monotonic()
    status, headers, _ = request(proxy.port, "GET", "/waits")
    waited = time.monotonic() - started
    first.join(10)
    assert status == 503 and headers["retry-after"] == "1"
    assert 0.25 <= waited < 1.5
    assert [r.target for r in slow.requests] == ["/"]


# -- failover under load, with active health checks -----------------------------------

class Load:
    """Closed-loop GETs from a few threads, bounded in time and count."""

    def __init__(self, port: int, threads: int = 3, limit: int = 20000,
                 seconds: float = 20.0) -> None:
        self.port = port
        self.results: list[tuple[float, int, bytes]] = []
        self.stop = threading.Event()
        self.deadline = time.monotonic() + seconds
        self.limit = limit
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while (not self.stop.is_set() and time.monotonic() < self.deadline
                   and len(self.results) < self.limit):
                try:
                    conn.request("GET", "/load", headers={"Host": "example.com"})
                    resp = conn.getresponse()
                    result = (time.monotonic(), resp.status, resp.read().split(b" ")[0])
                except (OSError, http.client.HTTPException) as e:
                    result = (time.monotonic(), 0, repr(e).encode())
                    conn.close()
                with self._lock:
                    self.results.append(result)
                time.sleep(0.002)
        finally:
            conn.close()


def test_failover_under_load(make_origin: OriginFactory,
                             start_proxy: Callable[..., ProxyProcess]) -> None:
    origins = [make_origin(name=n) for n in ("a", "b", "c")]
    port_b = origins[1].port
    proxy = start_proxy(upstream(
        ", ".join(f'"{o.address}"' for o in origins),
        'slow_start = "1s"\n'
        '[upstreams.app.health_check]\npath = "/health"\ninterval = "200ms"\n'
        'timeout = "200ms"\nrise = 2\nfall = 2\n'), workers=2)
    with Load(proxy.port) as load:
        time.sleep(1.0)
        killed_at = time.monotonic()
        origins[1].stop()
        time.sleep(2.0)
        revived = make_origin(name="b", port=port_b)
        revived_at = time.monotonic()
        time.sleep(3.0)
    results = load.results
    failures = [r for r in results if r[1] != 200]
    assert not failures, failures[:5]  # connect failures and resets are retried
    assert len(results) > 200
    during = Counter(r[2] for r in results if killed_at + 0.5 < r[0] < revived_at)
    assert b"b" not in during and during[b"a"] > 20 and during[b"c"] > 20
    back = [r for r in results if r[0] > revived_at and r[2] == b"b"]
    assert back and revived.requests, "the revived server got no traffic"
    # It comes back only after `rise` passing checks, 200 ms apart (the first may
    # come as soon as it listens).
    assert back[0][0] - revived_at > 0.15
    assert "is UP" in proxy.log() and "is DOWN" in proxy.log()
    # Slow start: in its first half second back it takes less than a fair third.
    first = back[0][0]
    early = Counter(r[2] for r in results if first <= r[0] < first + 0.4)
    assert early[b"b"] < sum(early.values()) / 3


def test_health_checked_server_never_gets_requests_while_down(
        make_origin: OriginFactory, start_proxy: Callable[..., ProxyProcess]) -> None:
    healthy = {"b": True}

    def b_handler(req: Received) -> Reply:
        if req.target == "/health":
            return Reply(status=200 if healthy["b"] else 500, body=b"health")
        return Reply(body=b"b " + req.target.encode())

    a = make_origin(name="a")
    b = make_origin(b_handler, name="b")
    proxy = start_proxy(upstream(
        f'"{a.address}", "{b.address}"',
        '[upstreams.app.health_check]\npath = "/health"\ninterval = "100ms"\n'
        'timeout = "100ms"\nrise = 1\nfall = 1\n'), workers=2)
    healthy["b"] = False
    deadline = time.monotonic() + 5
    while "is DOWN" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "is DOWN" in proxy.log()
    served = [request(proxy.port, "GET", f"/x{i}")[2].split()[0] for i in range(20)]
    assert set(served) == {b"a"}
    assert not [r for r in b.requests if r.target.startswith("/x")]
