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

import hashlib
import logging
import re
from typing import Any

from fastproxy.redislink import RedisLink, StoreUnavailable

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
# Printable ASCII without spaces, short: kept as is in the Redis key (readable
# in redis-cli). Anything else is hashed. A limit name may not hold ':' (it ends
# at the first one); a key may, being last. '#' starts only hashed parts.
_PLAIN_KEY = re.compile(rb"[!-~]{1,128}")
_PLAIN_LIMIT = re.compile(rb"[!-9;-~]{1,128}")

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


class RedisStore:
    """GCRA rate-limit checks against one Redis server, through a `RedisLink`
    (bounded connections, `timeout`, the circuit breaker; see fastproxy.redislink).

    Counters: `checks` (calls of `check`), `errors` (StoreUnavailable raised,
    the fast ones included), `outages` (times the store went from up to down).
    At most `max_connections` checks are in flight (URL option, default 16);
    one that waits longer than `timeout` for a slot raises StoreUnavailable
    without counting as an outage. One store per event loop (per worker).
    """

    def __init__(self, url: str, *, timeout: float = 0.1, retry_after: float = 1.0) -> None:
        self.link = RedisLink(url, timeout=timeout, retry_after=retry_after,
                              what="rate-limit store", log=log)
        self._script = self.link.redis.register_script(GCRA_SCRIPT)
        self._limits: dict[str, bytes] = {}

    url = property(lambda self: self.link.url)  # password masked
    timeout = property(lambda self: self.link.timeout)
    retry_after = property(lambda self: self.link.retry_after)
    max_connections = property(lambda self: self.link.max_connections)
    _slots = property(lambda self: self.link.slots)
    checks = property(lambda self: self.link.calls)
    errors = property(lambda self: self.link.errors)
    outages = property(lambda self: self.link.outages)

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
        prefix = self._limits.get(limit)
        if prefix is None:
            prefix = self._prefix(limit)
        keys = (prefix + key_part(key),)
        args = (interval_ns, tolerance_ns)
        reply: list[Any] = await self.link.run(lambda: self._script(keys=keys, args=args))
        return reply

    def _prefix(self, limit: str) -> bytes:
        prefix = limit_prefix(limit)
        if len(self._limits) < 1024:  # limits are configured: a few names
            self._limits[limit] = prefix
        return prefix

    async def close(self) -> None:
        await self.link.close()


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
