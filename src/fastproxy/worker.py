"""One worker process: a uvloop event loop serving its share of the listeners.

The worker owns the per-process state that requests share: the router, the
upstream pools, the clock, the access log, the open connections and their
deadlines. Deadlines are checked by one periodic tick instead of a timer per
connection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from typing import Any

import uvloop

from fastproxy.accesslog import AccessLog
from fastproxy.clock import Clock
from fastproxy.config import Config
from fastproxy.protocol import ClientConnection
from fastproxy.router import Router
from fastproxy.upstream import UpstreamConnection, UpstreamGroup

log = logging.getLogger("fastproxy.worker")

TICK = 0.25  # seconds between deadline checks: the resolution of every timeout


class Worker:
    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        self.config = config
        self.sockets = sockets
        self.clock = Clock()
        self.limits = config.limits
        self.timeouts = config.timeouts
        self.max_body = config.limits.max_body_bytes
        self.max_connections = config.server.max_connections
        self.via = b"1.1 fastproxy" if config.server.via else b""
        self.clients: set[ClientConnection] = set()
        self.upstream_conns: set[UpstreamConnection] = set()
        self.closing = False
        self.groups = {name: UpstreamGroup(up, self) for name, up in config.upstreams.items()}
        self.router: Router[UpstreamGroup] = Router(config.routes, self.groups)
        self.access_log = AccessLog(config.log, self.clock)
        self._servers: list[Any] = []
        self._stopped: asyncio.Future[None] | None = None
        self._drain_deadline = 0.0
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in run()

    def run(self) -> int:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        # Everything made so far (config, modules) lives as long as the worker:
        # keep it out of the cyclic GC's generations.
        gc.freeze()
        try:
            loop.run_until_complete(self._main())
        finally:
            self.access_log.close()
            loop.close()
        return 0

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        for sock in self.sockets:
            server = await loop.create_server(lambda: ClientConnection(self), sock=sock,
                                              backlog=1024)
            self._servers.append(server)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.shutdown)
        loop.call_later(TICK, self._tick)
        await self._stopped

    def shutdown(self) -> None:
        """Stop accepting; finish what is in flight, up to shutdown_timeout."""
        if self.closing:
            return
        self.closing = True
        self._drain_deadline = self.clock.now + self.config.server.shutdown_timeout
        for server in self._servers:
            server.close()
        for client in list(self.clients):
            if client.exchange is None and not client.closed:
                client.closed = True
                client.transport.close()
        for group in self.groups.values():
            for pool in group.pools:
                pool.close_idle()

    def _tick(self) -> None:
        clock = self.clock
        clock.tick()
        now = clock.now
        for client in [c for c in self.clients if c.deadline and c.deadline <= now]:
            client.timed_out()
        for conn in [c for c in self.upstream_conns if c.deadline and c.deadline <= now]:
            conn.timed_out()
        self.access_log.flush()
        if self.closing and (not self.clients or now >= self._drain_deadline):
            if self.clients:
                log.warning("shutdown timeout: cutting %d connections", len(self.clients))
            for client in list(self.clients):
                client.abort()
            for conn in list(self.upstream_conns):
                conn.abort()
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(None)
            return
        self.loop.call_later(TICK, self._tick)
