"""Rate-limit state in Redis, so that one limit holds across several instances.

The same GCRA as the shared-memory table (`_ratelimit.RateLimit.check`), run by
one Lua script on the Redis server: one round trip per check, atomic, and on
the server's clock (`TIME`), so instances whose clocks disagree still agree on
every key. A key's state is its TAT ("theoretical arrival time"); it expires
when the TAT passes (a key past its TAT holds no state), so idle keys vanish.

A dead Redis must not slow every request down: after a failure the store fails
fast (`StoreUnavailable` without touching the network) for `retry_after`
seconds; then one check probes it again. The caller decides what a failed check
means (`on_store_error = "allow" | "deny"`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("fastproxy.ratelimit")

# KEYS[1]: the key; ARGV: interval, tolerance (ns). Returns {wait, remaining,
# reset, now_s, now_us}: wait 0 = allowed, else ns until one request would be;
# remaining: requests left now; reset: ns until the quota is whole again; the
# server's clock (for tests and tools).
#
# Lua numbers are doubles, exact up to 2^53 only, and ns since the epoch are
# ~2^60: so the TAT is stored as its decimal digits (ns since the epoch) and all
# arithmetic is on d = TAT - now, which stays below tolerance + interval (exact
# while that is below 2^53 ns, 104 days). The key expires when the TAT passes.
GCRA_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now_s = tonumber(clock[1])
local now_ns = tonumber(clock[2]) * 1000
local d = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local s, ns = string.match(stored, '^(%d+)(%d%d%d%d%d%d%d%d%d)$')
  if s then
    d = (tonumber(s) - now_s) * 1000000000 + (tonumber(ns) - now_ns)
  end
end
if d < 0 then d = 0 end
if d > tolerance then
  return {d - tolerance, 0, d, now_s, clock[2]}
end
d = d + interval
local room = tolerance - d
local remaining = 0
if room >= 0 then
  remaining = math.floor(room / interval)
  if remaining * interval > room then
    remaining = remaining - 1
  elseif (remaining + 1) * interval <= room then
    remaining = remaining + 1
  end
  remaining = remaining + 1
end
local total = now_ns + d
local carry = math.floor(total / 1000000000)
redis.call('SET', KEYS[1],
           string.format('%d%09d', now_s + carry, total - carry * 1000000000),
           'PX', string.format('%d', math.ceil(d / 1000000)))
return {0, remaining, d, now_s, clock[2]}
"""

PREFIX = b"fastproxy:rl:"
# Checks in flight (= connections) per store unless the URL sets max_connections:
# a check holds a connection for one round trip, so a few keep up with a worker.
DEFAULT_CONNECTIONS = 16
# Printable ASCII without spaces, short: kept as is in the Redis key (readable
# in redis-cli). Anything else is hashed. A limit name may not hold ':' (it ends
# at the first one); a key may, being last. '#' starts only hashed parts.
_PLAIN_KEY = re.compile(rb"[!-~]{1,128}")
_PLAIN_LIMIT = re.compile(rb"[!-9;-~]{1,128}")

# What the URL may carry besides host, port, db and credentials. Timeouts and
# retries are the store's own (a URL must not turn the circuit breaker off).
_QUERY_KEYS = frozenset({"db", "protocol", "client_name", "max_connections", "socket_keepalive"})
_TLS_QUERY_KEYS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile",
                             "ssl_keyfile", "ssl_check_hostname", "ssl_min_version"})

# A network error, a timeout (TimeoutError is an OSError), or an error answer.
_FAILURES = (RedisError, OSError)


class StoreUnavailable(Exception):
    """The store could not answer (now, or recently: the circuit breaker is open)."""


def key_part(raw: bytes, plain: re.Pattern[bytes] = _PLAIN_KEY) -> bytes:
    """`raw` as it goes into a Redis key: itself when short and printable (and
    not starting with '#'), else '#' and the hex of a 128-bit BLAKE2b. A
    cryptographic hash because keys come from clients: none can craft a key that
    lands on another client's counter."""
    if plain.fullmatch(raw) is not None and raw[0] != 0x23:
        return raw
    return b"#" + hashlib.blake2b(raw, digest_size=16).hexdigest().encode()


def limit_prefix(limit: str) -> bytes:
    return PREFIX + key_part(limit.encode(), _PLAIN_LIMIT) + b":"


def redis_key(limit: str, key: bytes) -> bytes:
    """The Redis key of `key` under `limit`: fastproxy:rl:LIMIT:KEY."""
    return limit_prefix(limit) + key_part(key)


def check_url(url: str) -> str:
    """Raise ValueError (why) unless `url` names a Redis server this store can use;
    return it for logs, password masked. (No connection is made.)"""
    return _parse_url(url)


def _parse_url(url: str) -> str:
    """Raise ValueError (why) unless `url` names a Redis server this store can use;
    return it for logs, password masked."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad Redis URL {url!r}: {exc}") from None
    scheme = parts.scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"Redis URL must start with redis://, rediss:// or unix://, "
                         f"not {scheme + '://' if scheme else repr(url)}")
    if parts.fragment:
        raise ValueError("a Redis URL has no #fragment")
    if scheme == "unix":
        if parts.hostname or port is not None:
            raise ValueError("unix:// takes a socket path, no host: unix:///run/redis.sock")
        if not parts.path or parts.path == "/":
            raise ValueError("unix:// needs the socket path: unix:///run/redis.sock")
    else:
        if not parts.hostname:
            raise ValueError(f"{scheme}:// needs a host: {scheme}://127.0.0.1:6379/0")
        if port == 0:
            raise ValueError("Redis URL port must be 1-65535")
        db = parts.path.removeprefix("/")
        if db and not (db.isascii() and db.isdigit()):
            raise ValueError(f"Redis URL path must be a database number (/0), not {parts.path!r}")
    allowed = _QUERY_KEYS | (_TLS_QUERY_KEYS if scheme == "rediss" else frozenset())
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"bad Redis URL query {parts.query!r}") from None
    for name, value in query:
        if name in ("password", "username"):
            continue
        if name not in allowed:
            hint = (" (the store sets timeouts and retries itself)"
                    if "timeout" in name or "retry" in name or name == "health_check_interval"
                    else " (ssl_* needs rediss://)" if name in _TLS_QUERY_KEYS else "")
            raise ValueError(f"Redis URL option {name!r} is not supported{hint}")
        if name in ("db", "max_connections", "protocol") and not (
                value.isascii() and value.isdigit()):
            raise ValueError(f"Redis URL option {name} must be a number, not {value!r}")
        if name == "max_connections" and int(value) < 1:
            raise ValueError("Redis URL option max_connections must be at least 1")
        if name == "protocol" and value not in ("2", "3"):
            raise ValueError(f"Redis URL option protocol must be 2 or 3, not {value!r}")
    # The URL without its password, for logs and errors.
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    shown = [(k, "***" if k == "password" else v) for k, v in query]
    return f"{scheme}://{netloc}{parts.path}" + (f"?{urlencode(shown, safe='*')}" if shown else "")


class RedisStore:
    """GCRA rate-limit checks against one Redis server (pooled connections).

    Counters: `checks` (calls of `check`), `errors` (StoreUnavailable raised,
    the fast ones included), `outages` (times the store went from up to down).
    At most `max_connections` checks are in flight (URL option, default 16);
    one that waits longer than `timeout` for a slot raises StoreUnavailable
    without counting as an outage. One store per event loop (per worker).
    """

    def __init__(self, url: str, *, timeout: float = 0.1, retry_after: float = 1.0) -> None:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if not (retry_after >= 0 and math.isfinite(retry_after)):
            raise ValueError(f"retry_after must be >= 0 seconds, not {retry_after!r}")
        self.url = _parse_url(url)  # password masked
        self.timeout = timeout
        self.retry_after = retry_after
        try:
            # No retries: a failure opens the circuit breaker instead (a retry
            # would double the time a dead server costs). RESP2 unless the URL
            # asks for 3: every server speaks it (no HELLO), whatever redis-py's
            # default is, and a flat array of integers needs nothing more.
            self._redis = aioredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), health_check_interval=0, protocol=2,
                max_connections=DEFAULT_CONNECTIONS)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad Redis URL {self.url}: {exc}") from None
        # At most this many checks in flight, so at most this many connections:
        # a burst of requests must not open hundreds of connections at once
        # (their handshakes alone would outlast `timeout`). More wait for a slot.
        self.max_connections: int = self._redis.connection_pool.max_connections
        self._slots = asyncio.Semaphore(self.max_connections)
        self._script = self._redis.register_script(GCRA_SCRIPT)
        self._limits: dict[str, bytes] = {}
        self.checks = 0
        self.errors = 0
        self.outages = 0
        self._down = False
        self._down_since = 0.0
        self._retry_at = 0.0
        self._probing = False
        self._reason = ""

    async def check(self, limit: str, key: bytes, interval_ns: int,
                    tolerance_ns: int) -> tuple[int, int, int]:
        """(wait_ns, remaining, reset_ns) for one request of `key` under `limit`:
        wait 0 = allowed (and counted), else ns until one would be; remaining:
        requests left now; reset: ns until the quota is whole again. Exactly
        `RateLimit.check`, on the Redis server's clock. Raises StoreUnavailable."""
        reply = await self._run(limit, key, interval_ns, tolerance_ns)
        return reply[0], reply[1], reply[2]

    async def check_timed(self, limit: str, key: bytes, interval_ns: int,
                          tolerance_ns: int) -> tuple[int, int, int, int]:
        """`check`, plus the Redis server's clock (ns since the epoch) it used
        (for tests and tools)."""
        r = await self._run(limit, key, interval_ns, tolerance_ns)
        return r[0], r[1], r[2], int(r[3]) * 1_000_000_000 + int(r[4]) * 1000

    async def _run(self, limit: str, key: bytes, interval_ns: int,
                   tolerance_ns: int) -> list[Any]:
        self.checks += 1
        probe = self._down and self._probe()
        prefix = self._limits.get(limit)
        if prefix is None:
            prefix = self._prefix(limit)
        slots = self._slots
        try:
            if not slots.locked():
                await slots.acquire()  # returns at once
            else:
                try:
                    async with asyncio.timeout(self.timeout):
                        await slots.acquire()
                except TimeoutError:
                    # Busy here, not down there: no outage, the breaker stays shut.
                    self.errors += 1
                    raise StoreUnavailable(
                        f"{self.url}: all {self.max_connections} connections busy for "
                        f"{self.timeout:g}s") from None
                if self._down and not probe:  # it went down while this one waited
                    slots.release()
                    self.errors += 1
                    raise StoreUnavailable(f"{self.url}: {self._reason}")
            try:
                reply: list[Any] = await self._script(
                    keys=(prefix + key_part(key),), args=(interval_ns, tolerance_ns))
            except _FAILURES as exc:
                self.errors += 1
                raise StoreUnavailable(f"{self.url}: {self._failed(exc)}") from exc
            finally:
                slots.release()
        finally:
            if probe:
                self._probing = False
        if self._down:
            self._recovered()
        return reply

    def _probe(self) -> bool:
        """While down: raise StoreUnavailable at once, or, once retry_after has
        passed, return True: this check tries the server (one at a time)."""
        if self._probing or time.monotonic() < self._retry_at:
            self.errors += 1
            raise StoreUnavailable(f"{self.url}: {self._reason}")
        self._probing = True
        return True

    def _prefix(self, limit: str) -> bytes:
        prefix = limit_prefix(limit)
        if len(self._limits) < 1024:  # limits are configured: a few names
            self._limits[limit] = prefix
        return prefix

    def _failed(self, exc: BaseException) -> str:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = time.monotonic()
        self._retry_at = now + self.retry_after
        self._reason = reason  # what the fast failures report
        if not self._down:
            self._down = True
            self._down_since = now
            self.outages += 1
            log.warning("rate-limit store %s is unavailable (%s); failing fast, "
                        "retrying every %gs", self.url, reason, self.retry_after)
        return reason

    def _recovered(self) -> None:
        self._down = False
        log.info("rate-limit store %s is back after %.1fs", self.url,
                 time.monotonic() - self._down_since)

    async def close(self) -> None:
        await self._redis.aclose()


class StoreLimit:
    """A `[limits.NAME]` with `store`: the shared-memory GCRA of `RateLimit`, kept in
    Redis so that every instance sharing the server spends the same allowances.

    `check` gives what `RateLimit.check` gives: (wait, remaining, reset, hold) in ns.
    When the store cannot answer, `on_store_error` decides: "allow" lets the request
    through uncounted, "deny" makes `check` return None (the proxy answers 503);
    either way the event is counted (`store_errors`) and the store logs the outage.
    """

    __slots__ = ("name", "key", "store", "interval", "tolerance", "delay_free", "deny",
                 "store_errors", "_lines")

    def __init__(self, name: str, key: Any, rate: float, burst: int, delay: int,
                 store: RedisStore, on_store_error: str, lines: Any) -> None:
        if on_store_error not in ("allow", "deny"):
            raise ValueError('on_store_error is "allow" or "deny"')
        self.name = name
        self.key = key  # an _actions.Template, or None for one count per route
        self.store = store
        self.interval = max(1, int(1e9 / rate))  # as RateLimit rounds it
        self.tolerance = burst * self.interval
        self.delay_free = delay * self.interval if delay >= 0 else -1
        self.deny = on_store_error == "deny"
        self.store_errors = 0
        self._lines = lines  # RateLimit.lines of the same limit: the header fields

    async def check(self, key: bytes) -> tuple[int, int, int, int] | None:
        try:
            wait, remaining, reset = await self.store.check(self.name, key, self.interval,
                                                            self.tolerance)
        except StoreUnavailable:
            self.store_errors += 1
            return None if self.deny else (0, 0, 0, 0)
        hold = 0
        if wait == 0 and self.delay_free >= 0:
            hold = max(0, reset - self.interval - self.delay_free)
        return wait, remaining, reset, hold

    def lines(self, wait: int, remaining: int, reset: int) -> bytes:
        return bytes(self._lines(wait, remaining, reset))


async def check_limits(pairs: list[tuple[Any, bytes]]) -> tuple[Any, ...]:
    """Check (limit, key) pairs in order, the way the request path checks a route's
    limits, for routes with a store limit among them (shared-memory ones are
    checked here too, to keep the order). Returns ("refused", limit, wait,
    remaining, reset), ("unavailable", limit) or ("passed", longest hold in ns)."""
    longest = 0
    for limit, key in pairs:
        if isinstance(limit, StoreLimit):
            got = await limit.check(key)
            if got is None:
                return ("unavailable", limit)
        else:
            got = limit.check_now(key)
        wait, remaining, reset, hold = got
        if wait:
            return ("refused", limit, wait, remaining, reset)
        longest = max(longest, hold)
    return ("passed", longest)
