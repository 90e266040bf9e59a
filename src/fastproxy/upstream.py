"""Upstream servers: keep-alive connection pools and the upstream-side protocol.

An `UpstreamConnection` belongs to one `ServerPool`. While it carries a request
it forwards the parsed response to its current owner (an exchange in
proxy.py, seen here only through the `ResponseSink` methods); between requests
it sits idle in its pool, newest first, until reused or timed out.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any, Protocol

from fastproxy._http import HttpParseError, MessageHead, ResponseParser
from fastproxy.balancer import RoundRobin
from fastproxy.config import Upstream

log = logging.getLogger("fastproxy.upstream")


class ResponseSink(Protocol):
    """What an upstream connection reports to whoever is using it."""

    def upstream_head(self, head: MessageHead) -> None: ...
    def upstream_body(self, data: Any) -> None: ...
    def upstream_complete(self) -> None: ...
    def upstream_read_done(self) -> None: ...
    def upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None: ...
    def upstream_failed(self, status: int, reason: str) -> None: ...
    def upstream_write_paused(self, paused: bool) -> None: ...


class Registry(Protocol):
    """The worker-wide view a pool needs: the loop, open connections, shutdown."""

    loop: asyncio.AbstractEventLoop
    upstream_conns: set[UpstreamConnection]
    closing: bool


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "pool", "transport", "parser", "sink", "deadline", "reused", "got_bytes",
        "closed", "read_paused", "write_paused", "in_read", "parked",
    )

    def __init__(self, pool: ServerPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(self)
        self.sink: ResponseSink | None = None
        self.deadline = 0.0
        self.reused = False
        self.got_bytes = False
        self.closed = False
        self.read_paused = False
        self.write_paused = False
        self.in_read = False   # inside data_received
        self.parked = False    # released during that read: pool it once the read is done

    # -- owner side ---------------------------------------------------------
    def attach(self, sink: ResponseSink, head_request: bool) -> None:
        self.sink = sink
        self.got_bytes = False
        self.parser.expect_no_body(head_request)
        self.deadline = monotonic() + self.pool.upstream.read_timeout

    def touch(self) -> None:
        """Progress on the request side: push the read deadline out."""
        if not self.write_paused:
            self.deadline = monotonic() + self.pool.upstream.read_timeout

    def release(self, reusable: bool) -> None:
        """The exchange is over: back to the pool, or closed."""
        self.sink = None
        if self.read_paused:
            self.set_reading(True)
        if reusable and not self.closed:
            if self.in_read:
                # Not into the pool before the rest of this read is checked: a
                # pipelined request could otherwise take it and be answered with
                # bytes the upstream sent before it saw that request.
                self.parked = True
            else:
                self.pool.put(self)
        else:
            self.close()

    def send(self, data: Any) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def send_all(self, parts: Any) -> None:
        if not self.closed:
            self.transport.writelines(parts)  # type: ignore[union-attr]

    def set_reading(self, on: bool) -> None:
        if self.transport is None or self.closed:
            return
        if on and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
            self.touch()
        elif not on and not self.read_paused:
            # Held back by a slow client: its send timeout applies, not our read timeout.
            self.read_paused = True
            self.transport.pause_reading()
            self.deadline = 0.0

    def close(self) -> None:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def timed_out(self) -> None:
        sink = self.sink
        if sink is None:  # idle in the pool for too long
            self.pool.discard(self)
            self.close()
            return
        self.abort()
        sink.upstream_failed(504, "upstream timed out")

    # -- asyncio.Protocol -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.registry.upstream_conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.sink is None:
            # Nothing was asked: an idle connection must stay silent.
            self.pool.discard(self)
            self.abort()
            return
        self.got_bytes = True
        self.deadline = monotonic() + self.pool.upstream.read_timeout
        parser = self.parser
        self.in_read = True
        try:
            while True:
                try:
                    n = parser.feed(data)
                except HttpParseError as e:
                    self._fail(e.reason)
                    return
                if n == len(data):
                    sink = self.sink
                    if sink is not None:
                        sink.upstream_read_done()
                    break
                data = data[n:]
                if self.sink is None:
                    # Bytes after the end of the response: the upstream cannot be trusted.
                    self.parked = False
                    self.abort()
                    return
        finally:
            self.in_read = False
        if self.parked:
            self.parked = False
            if not self.closed:
                self.pool.put(self)

    def eof_received(self) -> bool:
        sink = self.sink
        if sink is not None and self.got_bytes and self.parser.message_needs_eof:
            try:
                self.parser.feed_eof()  # completes a close-delimited body
            except HttpParseError as e:
                self._fail(e.reason)
        # The transport closes now; connection_lost comes later. Stop writes and
        # pooling from this moment (uvloop raises on writes to a closed handle).
        self.closed = True
        self.pool.discard(self)
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.pool.discard(self)
        self.pool.registry.upstream_conns.discard(self)
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.upstream_lost(self, exc)
        self.parser = None  # type: ignore[assignment]  # holds our bound methods: break the cycle

    def pause_writing(self) -> None:
        # The upstream stalls reading our request: send_timeout runs from now.
        self.write_paused = True
        self.deadline = monotonic() + self.pool.upstream.send_timeout
        if self.sink is not None:
            self.sink.upstream_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.deadline = monotonic() + self.pool.upstream.read_timeout
        if self.sink is not None:
            self.sink.upstream_write_paused(False)

    # -- parser handler -----------------------------------------------------
    # The sink may let go in the middle of one feed (the client went away):
    # the rest of that chunk is then dropped.
    def on_head(self, head: MessageHead) -> None:
        if self.sink is not None:
            self.sink.upstream_head(head)

    def on_body(self, data: Any) -> None:
        if self.sink is not None:
            self.sink.upstream_body(data)

    def on_message_complete(self) -> None:
        if self.sink is not None:
            self.sink.upstream_complete()

    def _fail(self, reason: str) -> None:
        sink = self.sink
        self.abort()
        if sink is not None:
            sink.upstream_failed(502, reason)


class ConnectWaiter(Protocol):
    def connected(self, conn: UpstreamConnection) -> None: ...
    def connect_failed(self, pool: ServerPool, exc: BaseException, timed_out: bool) -> None: ...


class ServerPool:
    """One upstream server: its address, idle connections and reuse counters."""

    __slots__ = ("upstream", "registry", "host", "port", "weight", "label", "idle",
                 "connects", "reuses")

    def __init__(self, upstream: Upstream, host: str, port: int, weight: int,
                 registry: Registry) -> None:
        self.upstream = upstream
        self.registry = registry
        self.host = host
        self.port = port
        self.weight = weight
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.idle: list[UpstreamConnection] = []
        self.connects = 0
        self.reuses = 0

    def take(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                self.reuses += 1
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        if len(self.idle) >= self.upstream.keepalive or self.registry.closing:
            conn.close()
            return
        conn.deadline = monotonic() + self.upstream.idle_timeout
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def connect(self, waiter: ConnectWaiter) -> None:
        """Open a new connection; report to `waiter` (no coroutine when pooled)."""
        self.connects += 1
        self.registry.loop.create_task(self._connect(waiter))

    async def _connect(self, waiter: ConnectWaiter) -> None:
        loop = self.registry.loop
        try:
            async with asyncio.timeout(self.upstream.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port)
        except TimeoutError as e:
            waiter.connect_failed(self, e, True)
            return
        except OSError as e:
            waiter.connect_failed(self, e, False)
            return
        waiter.connected(conn)

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().close()


class UpstreamGroup:
    """A named upstream: its servers and the balancer choosing among them."""

    __slots__ = ("config", "pools", "balancer", "name")

    def __init__(self, config: Upstream, registry: Registry) -> None:
        self.config = config
        self.name = config.name
        self.pools = [ServerPool(config, s.host, s.port, s.weight, registry)
                      for s in config.servers]
        self.balancer = RoundRobin(self.pools, [s.weight for s in config.servers])

    def pick(self) -> ServerPool:
        return self.balancer.pick()
