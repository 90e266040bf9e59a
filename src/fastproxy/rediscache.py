"""The Redis tier of the HTTP cache: responses shared by a cluster of proxies.

A `[caches.NAME]` with `redis = "redis://..."` looks in Redis after its memory
(and disk) tier missed, and writes every response it stores (up to the tier's
`max_object`) to Redis too, so that a response one proxy fetched is a hit in
the others. Keys, under the tier's prefix (default ``fastproxy:cache:NAME:``)::

    PREFIX<16 hex>      a string: the response (no Vary), or the Vary record
    PREFIX<16 hex>:v    a hash: one field per variant, <16 hex> of its secondary key

The 16 hex digits are the primary key's hash (`_cache.cache_key`, as the disk
tier's file names). Values are the disk tier's file format
(`diskcache.whole_file`: magic, body, JSON header, lengths and checksum), with
the key text in the header: a value whose checksum fails is a logged miss (and
is deleted); one whose key text differs is another key with the same hash, a
miss. Every key expires (PX) when its response can no longer be served: the
freshness lifetime plus the stale-while-revalidate / stale-if-error window,
minus its age now (at least MIN_TTL, at most MAX_TTL); the Vary record and the
variants' hash live as long as their longest-lived variant.

Nothing here waits for Redis on behalf of a client beyond one `timeout`:

- Lookups run as tasks on the worker's loop (`read` -> `done(found)`), through
  a `redislink.RedisLink` (bounded connections, timeout, circuit breaker):
  Redis down or slow is a miss, and while the breaker is open `read` says so at
  once without a task.
- Invalidations reach the other instances: the delete is followed by a PUBLISH
  of the primary key's hash on PREFIX``invalidate``, which every worker of every
  instance subscribes to; one that hears of another's invalidation drops its own
  copies (memory, through the shared invalidation stamps, and disk). A worker that
  is not connected when it is published does not hear it: its copies live until
  they are stale.
- Writes and deletes go into a queue (bounded in bytes) that one writer task
  sends in order, in pipelined batches on one connection, after the response
  went to the client. A store and a later invalidation of the same key therefore
  reach Redis in that order. Deletes that could not be sent are retried once
  Redis answers again (up to LOST_DELETES of them).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from fastproxy import cachepolicy
from fastproxy._cache import cache_key
from fastproxy._httpcache import Stored
from fastproxy.diskcache import (
    RESPONSE,
    VARY_MISS,
    VARY_RECORD,
    Corrupt,
    Found,
    parse_entry,
    response_header,
    stored_from,
    vary_header,
    whole_file,
)
from fastproxy.redislink import FAILURES, RedisLink, StoreUnavailable

log = logging.getLogger("fastproxy.cache")

DEFAULT_PREFIX = "fastproxy:cache:{name}:"
MIN_TTL = 1.0  # seconds a stored key lives at least (a response stale when stored)
MAX_TTL = 30 * 86400.0  # ... and at most
WRITE_QUEUE = 64 * 1024 * 1024  # bytes waiting for the writer, per tier and worker
BATCH_BYTES = 4 * 1024 * 1024  # one pipelined batch of writes holds about this much
LOST_DELETES = 10_000  # deletes kept for a retry while Redis cannot be reached
LOG_EVERY = 10.0  # seconds between two log lines about bad values or failed writes
RETRY_AFTER = 1.0  # the circuit breaker: seconds before Redis is tried again
CLOSE_WAIT = 2.0  # seconds a stopping worker gives its queued writes

# KEYS[1]: the primary key, KEYS[2]: the variants' hash. ARGV: ttl (ms), the
# value, the variant's field ("" for a response without Vary), the Vary record.
# A response without Vary replaces what was there (and drops the variants); a
# variant goes into the hash, under a Vary record naming the same fields (a
# record naming others is replaced, its variants dropped). Expiry only grows.
STORE_SCRIPT = """
local ttl = tonumber(ARGV[1])
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
  redis.call('DEL', KEYS[2])
  return 1
end
local record = ARGV[4]
if redis.call('STRLEN', KEYS[1]) ~= string.len(record)
    or redis.call('GET', KEYS[1]) ~= record then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], record, 'PX', ttl)
elseif redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[2])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
"""


def serve_ttl(stored: Stored, now: float) -> float:
    """Seconds `stored` may still be served (and so kept in Redis): its freshness
    lifetime, plus the longer of its stale-while-revalidate and stale-if-error
    windows unless it must be revalidated, minus its age; within MIN_TTL..MAX_TTL."""
    fresh = stored.fresh
    window = 0.0 if fresh.must_revalidate else max(fresh.stale_while_revalidate,
                                                   fresh.stale_if_error)
    left = fresh.lifetime + window - stored.age(now)
    return min(MAX_TTL, max(MIN_TTL, left)) if math.isfinite(left) else MAX_TTL


def variant_field(variant: bytes) -> bytes:
    return b"%016x" % cache_key(variant)


class _Op:
    """One write or delete waiting for the writer task."""

    __slots__ = ("primary", "args", "size", "done", "future", "publish")

    def __init__(self, primary: int, args: tuple[Any, ...] | None, size: int,
                 done: Callable[[bool], None] | None = None,
                 future: asyncio.Future[int] | None = None, publish: bool = False) -> None:
        self.primary = primary
        self.publish = publish  # a delete the other instances hear of
        self.args = args  # the store script's ARGV; None: a delete
        self.size = size
        self.done = done
        self.future = future


class RedisCache:
    """The Redis tier of one [caches.NAME] in one worker. Every method is called
    on the worker's loop (after `start`)."""

    def __init__(self, url: str, *, name: str, prefix: str, max_object: int,
                 timeout: float, retry_after: float = RETRY_AFTER) -> None:
        self.name = name
        self.link = RedisLink(url, timeout=timeout, retry_after=retry_after,
                              what=f"cache [caches.{name}] Redis", log=log)
        self.redis = self.link.redis
        self.prefix = prefix.encode()
        self.max_object = max_object
        self.channel = self.prefix + b"invalidate"
        self.instance = os.urandom(8).hex().encode()  # this worker, in what it publishes
        # Called with a primary key another instance invalidated (RouteCache sets it).
        self.on_invalidate: Callable[[int], None] | None = None
        self._store = self.redis.register_script(STORE_SCRIPT)
        self._listener: asyncio.Task[None] | None = None
        self.loop: Any = None
        self._queue: deque[_Op] = deque()
        self._queued = 0  # bytes in the queue
        self._lost: dict[int, None] = {}  # primaries whose delete could not be sent (ordered)
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._logged: dict[str, float] = {}
        self._quiet: dict[str, int] = {}
        # Counters, for tests and later metrics.
        self.stats = {"hits": 0, "misses": 0, "vary_misses": 0, "collisions": 0, "corrupt": 0,
                      "errors": 0, "skipped": 0, "writes": 0, "write_errors": 0, "dropped": 0,
                      "deletes": 0, "heard": 0}

    def keys(self, primary: int) -> tuple[bytes, bytes]:
        """The Redis keys of a primary key: its response or Vary record, its variants."""
        base = self.prefix + b"%016x" % primary
        return base, base + b":v"

    def start(self, loop: Any) -> None:
        self.loop = loop
        self._wake = asyncio.Event()
        self._writer = loop.create_task(self._write_loop())
        self._listener = loop.create_task(self._listen())

    async def close(self, wait: float = CLOSE_WAIT) -> None:
        """Give the queued writes up to `wait` seconds, then stop."""
        deadline = time.monotonic() + wait
        while (self._queue or self._lost) and not self.link.failing() \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):  # stopping: whatever it did ends
                pass
            self._listener = None
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("cache [caches.%s] Redis writer failed", self.name)
            self._writer = None
        for op in self._queue:
            self._settle(op, False, 0)
        self._queue.clear()
        await self.link.close()

    # -- lookups ----------------------------------------------------------------------

    def read(self, primary: int, key: bytes, request_headers: list[tuple[bytes, bytes]],
             done: Callable[[Found], None]) -> bool:
        """Look `key` up; `done(found)` is called on the loop: (Stored, Vary names),
        VARY_MISS (a Vary record without this request's variant) or None. False
        (and no call) when Redis is known to be down: a miss now."""
        if self.link.failing() or self.loop is None:
            self.stats["skipped"] += 1
            return False
        task = self.loop.create_task(self.lookup(primary, key, request_headers))
        task.add_done_callback(lambda t: self._read_done(t, done))
        return True

    def _read_done(self, task: asyncio.Task[Found], done: Callable[[Found], None]) -> None:
        found: Found = None
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                found = task.result()
            else:  # a broken lookup is a miss, never a crash
                log.error("cache [caches.%s] Redis lookup failed", self.name, exc_info=exc)
        done(found)

    async def lookup(self, primary: int, key: bytes,
                     request_headers: Sequence[tuple[bytes, bytes]]) -> Found:
        """The stored response for this request and its Vary names; VARY_MISS; None."""
        stats = self.stats
        base, variants = self.keys(primary)
        redis = self.redis
        try:
            data = await self.link.run(lambda: redis.get(base))
        except StoreUnavailable:
            stats["errors"] += 1
            return None
        found = self._decode(data, base, key, primary)
        if found is None:
            stats["misses"] += 1
            return None
        fields, body = found
        if fields[1] == VARY_RECORD:
            try:
                names = tuple(n.encode("latin-1") for n in fields[3])
            except (AttributeError, TypeError, UnicodeError):
                self._bad(primary, base, "bad Vary record")
                return None
            variant = cachepolicy.secondary_key(names, request_headers)
            field = variant_field(variant)
            try:
                data = await self.link.run(lambda: redis.hget(variants, field))
            except StoreUnavailable:
                stats["errors"] += 1
                return None
            found = self._decode(data, variants + b" " + field, key, primary)
            if found is None or found[0][1] != RESPONSE or found[0][3] != variant.decode(
                    "latin-1"):
                stats["vary_misses"] += 1
                return VARY_MISS
            fields, body = found
        try:
            result = stored_from(fields, body)
        except (IndexError, TypeError, ValueError, AttributeError) as e:
            self._bad(primary, base, f"bad header fields: {e!r}")
            return None
        stats["hits"] += 1
        return result

    def _decode(self, data: bytes | None, where: bytes, key: bytes,
                primary: int) -> tuple[list[Any], bytes] | None:
        """The header fields and body of a value, or None (none, corrupt, another key)."""
        if data is None:
            return None
        try:
            fields, body = parse_entry(data)
        except Corrupt as e:
            self._bad(primary, where, str(e))
            return None
        if fields[2] != key.decode("latin-1"):
            self.stats["collisions"] += 1  # another key with the same hash: it stays
            return None
        return fields, body

    def _bad(self, primary: int, where: bytes, why: str) -> None:
        """A value that is not ours or is damaged: a miss, logged, and deleted."""
        self.stats["corrupt"] += 1
        self._log("corrupt", logging.WARNING, "cache [caches.%s] Redis: ignored %s: %s "
                  "(deleted)", self.name, where.decode("latin-1"), why)
        self._submit(_Op(primary, None, 0))

    # -- writes -----------------------------------------------------------------------

    def write(self, primary: int, key: bytes, stored: Stored, names: Sequence[bytes],
              done: Callable[[bool], None] | None = None) -> None:
        """Store `stored` (the response to `key`, varying on `names`) in Redis, after
        the writes queued before it. `done(ok)` is called on the loop once it is
        written or refused (never from within this call)."""
        if len(stored.body) > self.max_object or self.link.failing() or self._writer is None:
            self.stats["dropped"] += 1
            self._later(done, False)
            return
        ttl = max(1, int(serve_ttl(stored, time.time()) * 1000))
        value = b"".join(whole_file(stored.body, response_header(key, stored, names)))
        if names:
            record = b"".join(whole_file(b"", vary_header(key, names)))
            args = (ttl, value, variant_field(stored.variant), record)
        else:
            args = (ttl, value, b"", b"")
        size = len(value) + len(args[3])
        if self._queued + size > WRITE_QUEUE:
            self.stats["dropped"] += 1
            self._log("dropped", logging.WARNING, "cache [caches.%s] Redis: writes are %d "
                      "bytes behind; not storing more until they are sent", self.name,
                      self._queued)
            self._later(done, False)
            return
        self._submit(_Op(primary, args, size, done))

    def remove(self, primary: int) -> None:
        """Delete a primary key's entries (the response or Vary record, and every
        variant), after the writes queued before, and tell the other instances
        (they drop their copies). Purging and invalidation use it."""
        self._submit(_Op(primary, None, 0, publish=True))

    async def purge(self, primary: int) -> int:
        """`remove`, awaited: the number of Redis keys deleted (0, 1 or 2). Raises
        StoreUnavailable when Redis could not be reached (then it is retried later)."""
        future: asyncio.Future[int] = self.loop.create_future()
        self._submit(_Op(primary, None, 0, future=future, publish=True))
        return await future

    def _later(self, done: Callable[[bool], None] | None, ok: bool) -> None:
        if done is not None:
            if self.loop is not None:
                self.loop.call_soon(done, ok)
            else:
                done(ok)

    def _submit(self, op: _Op) -> None:
        if self._writer is None:  # not started, or closed
            if op.args is None:
                self._lose(op.primary)
            self._settle(op, False, 0)
            return
        self._queue.append(op)
        self._queued += op.size
        assert self._wake is not None
        self._wake.set()

    def _lose(self, primary: int) -> None:
        """A delete that could not be sent: kept for a retry (the oldest are given up)."""
        self._lost.pop(primary, None)
        self._lost[primary] = None
        if len(self._lost) > LOST_DELETES:
            del self._lost[next(iter(self._lost))]
            self._log("lost", logging.ERROR, "cache [caches.%s] Redis: more than %d deletes "
                      "could not be sent; the oldest are given up (their entries expire "
                      "by their TTL)", self.name, LOST_DELETES)

    def _settle(self, op: _Op, ok: bool, deleted: int) -> None:
        if op.done is not None:
            op.done(ok)
        if op.future is not None and not op.future.done():
            if ok:
                op.future.set_result(deleted)
            else:
                op.future.set_exception(StoreUnavailable(
                    f"{self.link.url}: the delete was not sent (it is retried later)"))

    async def _write_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            if not self._queue:
                wake.clear()
                if self._lost:  # retried when Redis answers again
                    try:
                        async with asyncio.timeout(self.link.retry_after or 0.1):
                            await wake.wait()
                    except TimeoutError:
                        pass
                else:
                    await wake.wait()
            if self.link.failing():
                self._drop_queue()
                if not self._lost:
                    continue
                await asyncio.sleep(0.05)
                continue
            batch = self._take_batch()
            if batch:
                try:
                    await self._send(batch)
                except Exception:  # a bug here must not stop the writes for good
                    log.exception("cache [caches.%s] Redis writer failed", self.name)
                    for op in batch:
                        self._settle(op, False, 0)
            await asyncio.sleep(0)  # let the loop serve requests between batches

    def _drop_queue(self) -> None:
        """Redis is down: writes are dropped (a miss later), deletes kept to retry."""
        while self._queue:
            op = self._queue.popleft()
            self._queued -= op.size
            if op.args is None:
                self._lose(op.primary)
            else:
                self.stats["dropped"] += 1
            self._settle(op, False, 0)

    def _take_batch(self) -> list[_Op]:
        batch: list[_Op] = []
        size = 0
        while self._lost and len(batch) < 256:
            primary = next(iter(self._lost))
            del self._lost[primary]
            batch.append(_Op(primary, None, 0, publish=True))
        while self._queue and (not batch or size + self._queue[0].size <= BATCH_BYTES):
            op = self._queue.popleft()
            self._queued -= op.size
            size += op.size
            batch.append(op)
        return batch

    async def _send(self, batch: list[_Op]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for op in batch:
            base, variants = self.keys(op.primary)
            if op.args is None:
                pipe.delete(base, variants)
                if op.publish:
                    pipe.publish(self.channel, b"%016x %s" % (op.primary, self.instance))
            else:
                await self._store(keys=(base, variants), args=op.args, client=pipe)  # queued
        try:
            results = await self.link.run(lambda: pipe.execute(raise_on_error=False))
        except StoreUnavailable as e:
            for op in batch:
                if op.args is None:
                    self._lose(op.primary)
                else:
                    self.stats["write_errors"] += 1
                self._settle(op, False, 0)
            self._log("write", logging.WARNING, "cache [caches.%s] Redis: %d writes not "
                      "sent: %s", self.name, len(batch), e)
            return
        finally:
            await pipe.reset()
        results = iter(results)
        for op in batch:
            result = next(results)
            if op.args is None and op.publish:
                next(results)  # PUBLISH: how many heard it
            ok = not isinstance(result, Exception)
            if not ok:  # an error answer for this key only (say, another program's data)
                self.stats["write_errors"] += 1
                self._log("answer", logging.WARNING, "cache [caches.%s] Redis refused a "
                          "write of %s: %s", self.name,
                          self.keys(op.primary)[0].decode("latin-1"), result)
            elif op.args is None:
                self.stats["deletes"] += 1
            else:
                self.stats["writes"] += 1
            self._settle(op, ok, int(result) if ok and op.args is None else 0)

    # -- invalidations from the other instances ------------------------------------------

    async def _listen(self) -> None:
        """Hear the invalidations published by the other workers and instances (a
        connection of its own, re-made after a failure every retry_after)."""
        client = self.link.listener()
        deaf = False  # logged that it is not hearing them (once, until it is again)
        try:
            while True:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(self.channel)
                    if deaf:
                        deaf = False
                        log.info("cache [caches.%s] Redis: hearing invalidations again",
                                 self.name)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._heard(message["data"])
                except FAILURES as e:
                    if not deaf:
                        deaf = True
                        log.info("cache [caches.%s] Redis: not hearing other instances' "
                                 "invalidations (%s); trying again every %gs", self.name, e,
                                 max(self.link.retry_after, 0.1))
                except Exception:
                    log.exception("cache [caches.%s] Redis: invalidation listener failed",
                                  self.name)
                finally:
                    try:
                        await pubsub.aclose()
                    except FAILURES:
                        pass
                await asyncio.sleep(max(self.link.retry_after, 0.1))
        finally:
            await client.aclose()

    def _heard(self, data: bytes) -> None:
        hex_key, _, sender = data.partition(b" ")
        if sender == self.instance or len(hex_key) != 16 or self.on_invalidate is None:
            return
        try:
            primary = int(hex_key, 16)
        except ValueError:
            return
        self.stats["heard"] += 1
        self.on_invalidate(primary)

    def _log(self, kind: str, level: int, message: str, *args: Any) -> None:
        """Log at most one line of a kind every LOG_EVERY seconds (with how many
        were left out), so a broken Redis or a flood of bad values cannot flood the log."""
        now = time.monotonic()
        if now < self._logged.get(kind, 0.0):
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        self._logged[kind] = now + LOG_EVERY
        quiet = self._quiet.pop(kind, 0)
        if quiet:
            message += " (and %d more like it in the last %gs)"
            args = (*args, quiet, LOG_EVERY)
        log.log(level, message, *args)
