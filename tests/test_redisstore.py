"""RedisStore against a real redis-server: the shared-memory GCRA, on Redis.

Each test starts its own redis-server on 127.0.0.1 (no persistence), stopped
even on failure. Two RedisStore objects on one server stand for two proxy
instances. Values are compared with a plain Python model of
`_ratelimit.RateLimit.check` and with the compiled RateLimit itself, on the
Redis server's clock (`check_timed` returns it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import socket
import statistics
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import redis
import uvloop

from fastproxy._ratelimit import LimitTable, RateLimit
from fastproxy.redisstore import RedisStore, StoreUnavailable, redis_key
from servers import RedisServer, free_port, redis_server_path

pytestmark = pytest.mark.skipif(
    redis_server_path() is None,
    reason="redis-server is not installed (ci/test.sh installs it: apt-get install redis-server)")

LOGGER = "fastproxy.ratelimit"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def store_for(url: str, **options: Any) -> RedisStore:
    """A store for the tests that are not about timeouts: a generous timeout, as
    a busy CI machine may stall the event loop for longer than the default."""
    options.setdefault("timeout", 2.0)
    return RedisStore(url, **options)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return uvloop.run(coro)


def raw_client(server: RedisServer) -> Any:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)


def gcra(rate: float, burst: int) -> tuple[int, int]:
    """(interval, tolerance) in ns, as RateLimit computes them."""
    interval = max(1, int(1e9 / rate))
    return interval, burst * interval


class Model:
    """RateLimit.check (ext/fastproxy/_ratelimit.pyx), transcribed: one key."""

    def __init__(self, interval: int, tolerance: int) -> None:
        self.interval = interval
        self.tolerance = tolerance
        self.tat = 0

    def check(self, now: int) -> tuple[int, int, int]:
        t = max(self.tat, now)
        if t - now > self.tolerance:
            wait, tat = t - now - self.tolerance, t
        else:
            wait, tat = 0, t + self.interval
            self.tat = tat
        room = now + self.tolerance - tat
        remaining = room // self.interval + 1 if wait == 0 and room >= 0 else 0
        return wait, remaining, max(0, tat - now)


# --- the GCRA ---------------------------------------------------------------

def test_two_instances_share_exact_allowance(redis_server: RedisServer) -> None:
    """Rate 10/s, burst 20, 100 back-to-back checks through two stores: 21
    allowed at once, plus one per 100 ms that passed between the first check and
    the last (on the server's clock, and within the client's measured spans)."""
    interval, tolerance = gcra(10, 20)

    async def main() -> tuple[list[tuple[int, int, int, int]], float, float]:
        a, b = store_for(redis_server.url), store_for(redis_server.url)
        try:
            out = []
            first_start = time.monotonic()
            out.append(await a.check_timed("api", b"10.0.0.1", interval, tolerance))
            first_end = time.monotonic()
            for i in range(1, 99):
                out.append(await (a if i % 2 == 0 else b).check_timed(
                    "api", b"10.0.0.1", interval, tolerance))
            last_start = time.monotonic()
            out.append(await b.check_timed("api", b"10.0.0.1", interval, tolerance))
            last_end = time.monotonic()
            assert a.checks == 50 and b.checks == 50 and a.errors == b.errors == 0
            return out, last_start - first_end, last_end - first_start
        finally:
            await a.close()
            await b.close()

    results, span_min, span_max = run(main())
    allowed = sum(1 for wait, *_ in results if wait == 0)
    assert [wait for wait, *_ in results[:21]] == [0] * 21
    assert results[0][1] == 20  # remaining after the first: the whole burst
    server_span = results[-1][3] - results[0][3]
    # Exact when no two checks were an interval apart (a stall right before the
    # last check could leave one refill unclaimed).
    gaps = [b[3] - a[3] for a, b in itertools.pairwise(results)]
    exact = 21 + server_span // interval
    if max(gaps) < interval:
        assert allowed == exact
    else:
        assert exact - 1 <= allowed <= exact
    assert 21 + math.floor(max(0.0, span_min) * 10) - 1 <= allowed <= \
        21 + math.floor(span_max * 10) + 1


def test_values_equal_shared_memory_ratelimit(redis_server: RedisServer) -> None:
    """(wait, remaining, reset) from Redis equal, to the ns, what the model of
    RateLimit.check gives at the same (server) times; the compiled RateLimit
    renders the same header lines and LimitTable gives the same waits."""
    rate, burst = 30.0, 3  # interval 33333333 ns: not a whole number of µs
    interval, tolerance = gcra(rate, burst)
    rng = random.Random(7)
    gaps = [rng.choice((0.0, 0.0, 0.005, 0.02, 0.04)) for _ in range(60)]

    async def main() -> list[tuple[int, int, int, int]]:
        a, b = store_for(redis_server.url), store_for(redis_server.url)
        try:
            out = []
            for i, gap in enumerate(gaps):
                await asyncio.sleep(gap)
                out.append(await (a, b)[i % 2].check_timed("cmp", b"k", interval, tolerance))
            return out
        finally:
            await a.close()
            await b.close()

    results = run(main())
    model = Model(interval, tolerance)
    limit = RateLimit("cmp", None, rate, burst, LimitTable(64))
    table = LimitTable(64)
    base = results[0][3] - 10**10  # the compiled tables start at 0: shift times to 10 s on
    for wait, remaining, reset, now in results:
        assert (wait, remaining, reset) == model.check(now)
        at = (now - base + 0.5) / 1e9  # seconds that truncate back to the same ns
        allowed, lines = limit.headers(b"k", now=at)
        assert allowed == (wait == 0)
        assert limit.lines(wait, remaining, reset) == lines
        ok, waited = table.try_acquire(1, rate, burst, now=at)
        assert ok == (wait == 0) and round(waited * 1e9) == wait
    assert {r[0] == 0 for r in results} == {True, False}  # both outcomes were seen
    assert len({r[1] for r in results}) > 2


def test_concurrent_checks_never_double_spend(redis_server: RedisServer) -> None:
    """200 checks at once through two stores (many pooled connections each):
    exactly the quota is allowed (one refill takes 10 s, far longer than this)."""
    interval, tolerance = gcra(0.1, 49)

    async def main() -> list[tuple[int, int, int]]:
        a, b = store_for(redis_server.url), store_for(redis_server.url)
        try:
            return await asyncio.gather(*(
                (a, b)[i % 2].check("c", b"k", interval, tolerance) for i in range(200)))
        finally:
            await a.close()
            await b.close()

    results = run(main())
    assert sum(1 for wait, *_ in results if wait == 0) == 50
    # Each allowed one saw a different number left: 49 down to 0.
    assert sorted(r[1] for r in results if r[0] == 0) == list(range(50))


def test_keys_and_limits_are_independent(redis_server: RedisServer) -> None:
    interval, tolerance = gcra(1, 2)
    long_key = b"x" * 500
    binary_key = b"\x00\xff tab\t"

    async def main() -> None:
        store = store_for(redis_server.url)
        try:
            for _ in range(3):
                assert (await store.check("a", b"k1", interval, tolerance))[0] == 0
            wait, remaining, _ = await store.check("a", b"k1", interval, tolerance)
            assert wait > 0 and remaining == 0
            # Another key, another limit with the same key: untouched.
            assert await store.check("a", b"k2", interval, tolerance) == (0, 2, interval)
            assert await store.check("b", b"k1", interval, tolerance) == (0, 2, interval)
            # A limit name holding ':' cannot reach another limit's keys.
            assert (await store.check("a:k1", b"", interval, tolerance))[0] == 0
            for key in (long_key, binary_key, b"#k1", b""):
                assert await store.check("a", key, interval, tolerance) == (0, 2, interval)
            assert store.errors == 0
        finally:
            await store.close()

    run(main())
    keys = set(raw_client(redis_server).keys("*"))
    assert {b"fastproxy:rl:a:k1", b"fastproxy:rl:a:k2", b"fastproxy:rl:b:k1"} <= keys
    assert redis_key("a", b"k1") == b"fastproxy:rl:a:k1"
    for key in (long_key, binary_key, b"#k1", b""):
        hashed = redis_key("a", key)
        assert hashed in keys and hashed.startswith(b"fastproxy:rl:a:#")
        assert len(hashed) == len(b"fastproxy:rl:a:#") + 32 and hashed.isascii()
    assert redis_key("a:k1", b"").startswith(b"fastproxy:rl:#")
    assert len(keys) == 8


def test_keys_expire_when_idle(redis_server: RedisServer) -> None:
    """A key's TTL runs out when its TAT passes (a key past its TAT holds no
    state), so idle keys vanish."""
    interval, tolerance = gcra(2, 4)  # TAT at most 2.5 s ahead
    client = raw_client(redis_server)

    async def main() -> None:
        store = store_for(redis_server.url)
        try:
            for _ in range(2):
                await store.check("ttl", b"a", interval, tolerance)
            ttl_ms = client.pttl(redis_key("ttl", b"a"))
            assert 0 < ttl_ms <= math.ceil((interval * 2) / 1e6)
            for _ in range(10):  # fills up, then denied: never past tolerance + interval
                await store.check("ttl", b"a", interval, tolerance)
            ttl_ms = client.pttl(redis_key("ttl", b"a"))
            assert 0 < ttl_ms <= math.ceil((tolerance + interval) / 1e6)
            assert 0 < client.ttl(redis_key("ttl", b"a")) <= math.ceil((tolerance + interval) / 1e9)
            # A fast limit's key is gone soon after its last request.
            fast_interval, fast_tolerance = gcra(100, 1)
            await store.check("ttl", b"b", fast_interval, fast_tolerance)
            deadline = time.monotonic() + 2.0
            while client.exists(redis_key("ttl", b"b")) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            assert not client.exists(redis_key("ttl", b"b"))
            # ... and a fresh start is what the key gets afterwards.
            assert await store.check("ttl", b"b", fast_interval, fast_tolerance) == \
                (0, 1, fast_interval)
        finally:
            await store.close()

    run(main())


def test_script_reloaded_after_flush(redis_server: RedisServer) -> None:
    """EVALSHA, and on NOSCRIPT (a restarted or flushed server) load it again."""
    interval, tolerance = gcra(10, 5)

    async def main() -> None:
        store = store_for(redis_server.url)
        try:
            assert (await store.check("s", b"k", interval, tolerance))[0] == 0
            raw_client(redis_server).script_flush()
            assert (await store.check("s", b"k", interval, tolerance))[:2] == (0, 4)
            assert store.errors == 0 and store.outages == 0
        finally:
            await store.close()

    run(main())


def test_unix_socket_url(redis_server: RedisServer) -> None:
    interval, tolerance = gcra(1, 1)

    async def main() -> None:
        tcp = store_for(redis_server.url)
        unix = store_for(f"unix://{redis_server.unix_socket}?db=0")
        try:
            assert (await tcp.check("u", b"k", interval, tolerance))[:2] == (0, 1)
            assert (await unix.check("u", b"k", interval, tolerance))[:2] == (0, 0)
            assert (await tcp.check("u", b"k", interval, tolerance))[0] > 0
        finally:
            await tcp.close()
            await unix.close()

    run(main())


# --- failures -----------------------------------------------------------------

def warnings_and_infos(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    records = [r for r in caplog.records if r.name == LOGGER]
    return ([r.getMessage() for r in records if r.levelno == logging.WARNING],
            [r.getMessage() for r in records if r.levelno == logging.INFO])


async def fast_failures(store: RedisStore, count: int) -> list[float]:
    """Seconds each of `count` checks took to raise StoreUnavailable."""
    took = []
    for _ in range(count):
        start = time.perf_counter()
        with pytest.raises(StoreUnavailable):
            await store.check("api", b"k", 10**8, 10**9)
        took.append(time.perf_counter() - start)
    return took


def test_outage_fails_fast_then_recovers(redis_server: RedisServer,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    timeout, retry_after = 0.5, 1.0

    async def main() -> None:
        store = RedisStore(redis_server.url, timeout=timeout, retry_after=retry_after)
        try:
            assert (await store.check("api", b"k", 10**8, 10**9))[0] == 0
            redis_server.stop()
            start = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await store.check("api", b"k", 10**8, 10**9)
            failed_at = time.monotonic()
            assert failed_at - start < timeout + 0.3
            assert str(redis_server.port) in str(info.value)
            assert (store.checks, store.errors, store.outages) == (2, 1, 1)
            took = await fast_failures(store, 50)
            # No network attempt: a connection attempt to a stopped server would
            # at least cost a syscall round; these are a flag test and a raise.
            assert statistics.median(took) < 0.001 and max(took) < timeout / 2
            assert (store.checks, store.errors, store.outages) == (52, 51, 1)

            redis_server.start()  # same port
            if time.monotonic() < failed_at + retry_after - 0.1:
                with pytest.raises(StoreUnavailable):  # still inside retry_after
                    await store.check("api", b"k", 10**8, 10**9)
                assert store.errors == 52
            await asyncio.sleep(max(0.0, failed_at + retry_after - time.monotonic()) + 0.01)
            assert (await store.check("api", b"k", 10**8, 10**9))[0] == 0
            assert (await store.check("api", b"k", 10**8, 10**9))[0] == 0
            assert store.outages == 1 and store.errors in (51, 52)
        finally:
            await store.close()

    run(main())
    warnings, infos = warnings_and_infos(caplog)
    assert len(warnings) == 1, warnings
    assert redis_server.url in warnings[0] and "ConnectionError" in warnings[0]
    assert len(infos) == 1 and redis_server.url in infos[0] and "back" in infos[0]


class Blackhole:
    """A TCP listener that accepts connections and never answers (a hung
    Redis): every command on it times out. Counts the connections it gets."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.02)
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

    def accepted(self, settle: float = 0.1) -> int:
        time.sleep(settle)  # let the accept thread catch up
        return len(self.conns)

    def __enter__(self) -> Blackhole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_timeout_then_no_network_during_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    """A Redis that never answers costs one `timeout` (connect + command at most),
    then nothing: no connection is made until retry_after has passed, and then
    one probe goes out while concurrent checks fail fast."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    timeout, retry_after = 0.2, 0.6

    async def main(hole: Blackhole) -> None:
        store = RedisStore(f"redis://127.0.0.1:{hole.port}/0", timeout=timeout,
                           retry_after=retry_after)
        try:
            start = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await store.check("api", b"k", 10**8, 10**9)
            failed_at = time.monotonic()
            assert timeout * 0.9 <= failed_at - start < 2 * timeout + 0.3
            assert "Timeout" in str(info.value)
            assert hole.accepted() == 1
            took = await fast_failures(store, 20)
            assert statistics.median(took) < 0.001 and max(took) < timeout / 2
            assert hole.accepted() == 1  # no network attempt at all
            await asyncio.sleep(max(0.0, failed_at + retry_after - time.monotonic()) + 0.01)
            # Half-open: one probe, the nine others fail at once.
            results = await asyncio.gather(
                *(store.check("api", b"k", 10**8, 10**9) for _ in range(10)),
                return_exceptions=True)
            assert all(isinstance(r, StoreUnavailable) for r in results)
            assert hole.accepted() == 2
            assert (store.checks, store.errors, store.outages) == (31, 31, 1)
        finally:
            await store.close()

    with Blackhole() as hole:
        run(main(hole))
    warnings, infos = warnings_and_infos(caplog)
    assert len(warnings) == 1 and "Timeout" in warnings[0] and infos == []


def test_redis_error_answer_is_unavailable(redis_server: RedisServer,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """An error answer (here WRONGTYPE: the key holds a list) is a failure too."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = raw_client(redis_server)
    client.rpush(redis_key("api", b"k"), b"not a TAT")

    async def main() -> None:
        store = store_for(redis_server.url, retry_after=0.05)
        try:
            with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
                await store.check("api", b"k", 10**8, 10**9)
            client.delete(redis_key("api", b"k"))
            await asyncio.sleep(0.06)
            assert (await store.check("api", b"k", 10**8, 10**9))[0] == 0
            assert (store.checks, store.errors, store.outages) == (2, 1, 1)
        finally:
            await store.close()

    run(main())
    warnings, infos = warnings_and_infos(caplog)
    assert len(warnings) == 1 and "WRONGTYPE" in warnings[0] and len(infos) == 1


def test_connections_bounded_and_busy_is_no_outage(redis_server: RedisServer,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """max_connections bounds the checks in flight, hence the connections; a
    check that finds every slot busy for `timeout` fails without an outage."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    interval, tolerance = gcra(0.1, 49)
    client = raw_client(redis_server)

    async def main() -> None:
        store = store_for(redis_server.url + "?max_connections=2&client_name=fp-bounded")
        busy = RedisStore(redis_server.url + "?max_connections=2", timeout=0.2)
        try:
            assert store.max_connections == 2
            results = await asyncio.gather(
                *(store.check("c", b"k", interval, tolerance) for _ in range(200)))
            assert sum(1 for wait, *_ in results if wait == 0) == 50
            names = [c["name"] for c in client.client_list()]
            assert 1 <= names.count("fp-bounded") <= 2
            for _ in range(2):  # every slot taken (as by two hung checks)
                await busy._slots.acquire()
            start = time.monotonic()
            with pytest.raises(StoreUnavailable, match="busy"):
                await busy.check("c", b"k2", interval, tolerance)
            assert 0.15 <= time.monotonic() - start < 1.0
            assert (busy.errors, busy.outages) == (1, 0)
            busy._slots.release()
            assert (await busy.check("c", b"k2", interval, tolerance))[0] == 0
        finally:
            await store.close()
            await busy.close()

    run(main())
    assert warnings_and_infos(caplog) == ([], [])


def test_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = free_port()  # closed: connection refused

    async def main() -> None:
        for url in (f"redis://user:s3cret@127.0.0.1:{port}/0",
                    f"redis://127.0.0.1:{port}/0?password=s3cret"):
            store = RedisStore(url)
            try:
                assert "s3cret" not in store.url and "***" in store.url
                with pytest.raises(StoreUnavailable) as info:
                    await store.check("api", b"k", 10**8, 10**9)
                assert "s3cret" not in str(info.value)
            finally:
                await store.close()

    run(main())
    warnings, _ = warnings_and_infos(caplog)
    assert len(warnings) == 2
    assert f"redis://user:***@127.0.0.1:{port}/0" in warnings[0]
    assert all("s3cret" not in w for w in warnings)


@pytest.mark.parametrize(("url", "reason"), [
    ("", "must start with redis://"),
    ("http://127.0.0.1:6379/0", "not http://"),
    ("localhost:6379", "must start with"),
    ("redis://", "needs a host"),
    ("redis://:6379/0", "needs a host"),
    ("redis://127.0.0.1:99999/0", "out of range"),
    ("redis://127.0.0.1:port/0", "bad Redis URL"),
    ("redis://127.0.0.1:0/0", "1-65535"),
    ("redis://127.0.0.1:6379/zero", "database number"),
    ("redis://127.0.0.1:6379/0?db=x", "must be a number"),
    ("redis://127.0.0.1:6379/0?socket_timeout=5", "sets timeouts"),
    ("redis://127.0.0.1:6379/0?retry_on_timeout=yes", "sets timeouts and retries"),
    ("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.pem", "needs rediss://"),
    ("redis://127.0.0.1:6379/0?colour=blue", "'colour' is not supported"),
    ("redis://127.0.0.1:6379/0?max_connections=0", "at least 1"),
    ("redis://127.0.0.1:6379/0?protocol=4", "2 or 3"),
    ("redis://127.0.0.1:6379/0#frag", "fragment"),
    ("unix://", "socket path"),
    ("unix://host/run/redis.sock", "no host"),
])
def test_bad_url_rejected(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        RedisStore(url)


def test_good_urls_and_bad_settings() -> None:
    for url in ("redis://127.0.0.1:6379/0", "redis://localhost", "rediss://r.example:6380/2",
                "rediss://h/0?ssl_cert_reqs=required", "unix:///run/redis.sock?db=1",
                "redis://[::1]:6379/0"):
        RedisStore(url)  # builds a client; connects on the first check only
    with pytest.raises(ValueError, match="timeout"):
        RedisStore("redis://127.0.0.1/0", timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        RedisStore("redis://127.0.0.1/0", timeout=float("nan"))
    with pytest.raises(ValueError, match="retry_after"):
        RedisStore("redis://127.0.0.1/0", retry_after=-1)
