"""One Redis server as one worker sees it: what the rate-limit store
(`fastproxy.redisstore`) and the cache's Redis tier (`fastproxy.rediscache`)
share.

- The URL is checked (`check_url`) and shown with its password masked.
- One redis-py asyncio client with a bounded pool: at most `max_connections`
  commands in flight (URL option, default 16); one that waits longer than
  `timeout` for a slot fails without counting as an outage (busy here, not down
  there).
- Every socket step (connect, read) has `timeout`; there are no retries: a
  failure opens a circuit breaker instead, so that a dead or hung server costs
  one `timeout` and then nothing: for `retry_after` seconds every call fails at
  once (`StoreUnavailable`) without touching the network; then one call probes
  the server (the others still fail at once) and closes the breaker if it works.
- One log line when the server goes away and one when it is back, never one per
  request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

T = TypeVar("T")

# Commands in flight (= connections) per link unless the URL sets max_connections.
DEFAULT_CONNECTIONS = 16

# What the URL may carry besides host, port, db and credentials. Timeouts and
# retries are the link's own (a URL must not turn the circuit breaker off).
_QUERY_KEYS = frozenset({"db", "protocol", "client_name", "max_connections", "socket_keepalive"})
_TLS_QUERY_KEYS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile",
                             "ssl_keyfile", "ssl_check_hostname", "ssl_min_version"})

# A network error, a timeout (TimeoutError is an OSError), or an error answer.
FAILURES = (RedisError, OSError)


class StoreUnavailable(Exception):
    """The server could not answer (now, or recently: the circuit breaker is open)."""


def check_url(url: str) -> str:
    """Raise ValueError (why) unless `url` names a Redis server a link can use;
    return it for logs, password masked. (No connection is made.)"""
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


class RedisLink:
    """A client of one Redis server for one event loop, with bounded connections,
    timeouts and a circuit breaker (see the module docstring). `what` names it in
    the log ("rate-limit store", "cache [caches.main] Redis").

    Counters: `calls` (of `run`), `errors` (StoreUnavailable raised, the fast ones
    included), `outages` (times the server went from up to down).
    """

    def __init__(self, url: str, *, timeout: float, retry_after: float, what: str,
                 log: logging.Logger) -> None:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if not (retry_after >= 0 and math.isfinite(retry_after)):
            raise ValueError(f"retry_after must be >= 0 seconds, not {retry_after!r}")
        self.url = check_url(url)  # password masked
        self._raw_url = url
        self.timeout = timeout
        self.retry_after = retry_after
        self.what = what
        self.log = log
        try:
            # No retries: a failure opens the circuit breaker instead (a retry
            # would double the time a dead server costs). RESP2 unless the URL
            # asks for 3: every server speaks it (no HELLO), whatever redis-py's
            # default is.
            self.redis = aioredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), health_check_interval=0, protocol=2,
                max_connections=DEFAULT_CONNECTIONS)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad Redis URL {self.url}: {exc}") from None
        # At most this many commands in flight, so at most this many connections:
        # a burst of requests must not open hundreds of connections at once
        # (their handshakes alone would outlast `timeout`). More wait for a slot.
        self.max_connections: int = self.redis.connection_pool.max_connections
        self.slots = asyncio.Semaphore(self.max_connections)
        self.calls = 0
        self.errors = 0
        self.outages = 0
        self.down = False
        self._down_since = 0.0
        self._retry_at = 0.0
        self._probing = False
        self._reason = ""

    def listener(self) -> aioredis.Redis:
        """A second client of the same server for a subscription (which keeps its
        connection): connects within `timeout`, no retries."""
        return aioredis.Redis.from_url(
            self._raw_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0, protocol=2,
            max_connections=2)

    def failing(self) -> bool:
        """The breaker is open and no probe may go now: a call would fail at once.
        (For callers that skip the work of making a call.)"""
        return self.down and (self._probing or time.monotonic() < self._retry_at)

    async def run(self, command: Callable[[], Awaitable[T]]) -> T:
        """`command()` awaited with a connection slot held; its result, or
        StoreUnavailable (a failure, a busy pool, or the breaker open)."""
        self.calls += 1
        probe = self.down and self._probe()
        slots = self.slots
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
                if self.down and not probe:  # it went down while this one waited
                    slots.release()
                    self.errors += 1
                    raise StoreUnavailable(f"{self.url}: {self._reason}")
            try:
                result = await command()
            except FAILURES as exc:
                self.errors += 1
                raise StoreUnavailable(f"{self.url}: {self._failed(exc)}") from exc
            finally:
                slots.release()
        finally:
            if probe:
                self._probing = False
        if self.down:
            self._recovered()
        return result

    def _probe(self) -> bool:
        """While down: raise StoreUnavailable at once, or, once retry_after has
        passed, return True: this call tries the server (one at a time)."""
        if self._probing or time.monotonic() < self._retry_at:
            self.errors += 1
            raise StoreUnavailable(f"{self.url}: {self._reason}")
        self._probing = True
        return True

    def _failed(self, exc: BaseException) -> str:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = time.monotonic()
        self._retry_at = now + self.retry_after
        self._reason = reason  # what the fast failures report
        if not self.down:
            self.down = True
            self._down_since = now
            self.outages += 1
            self.log.warning("%s %s is unavailable (%s); failing fast, retrying every %gs",
                             self.what, self.url, reason, self.retry_after)
        return reason

    def _recovered(self) -> None:
        self.down = False
        self.log.info("%s %s is back after %.1fs", self.what, self.url,
                      time.monotonic() - self._down_since)

    async def close(self) -> None:
        await self.redis.aclose()
