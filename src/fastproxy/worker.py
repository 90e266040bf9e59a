"""One worker process: a uvloop event loop serving its share of the listeners.

The worker builds the per-process state that requests share — the compiled
`Core` (limits, timeouts, open connections), the router, the upstream pools,
the clock and the access log — and runs the loop. Deadlines are checked by
one periodic tick instead of a timer per connection.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from typing import Any

import uvloop

from fastproxy import metrics
from fastproxy._actions import Template
from fastproxy._httpcache import Purges, RouteCache, SharedCounter, Stamps
from fastproxy._peers import PeerTable, slot_layout
from fastproxy._proxy import Core
from fastproxy._ratelimit import BanTable, ConnTable, LimitTable, RateLimit
from fastproxy._stats import LAYOUT, Stats
from fastproxy._stream import StreamHub, StreamListener
from fastproxy._tls import PlainServer, Poller, ServerContext, TlsAcceptor, TlsServer
from fastproxy._tops import Analytics
from fastproxy._url import IpSet
from fastproxy.accesslog import AccessLog
from fastproxy.clock import Clock
from fastproxy.config import Config, ListenerTls
from fastproxy.diskcache import DiskStore
from fastproxy.metrics import Layout
from fastproxy.proxyheader import ProxyHeaderGate
from fastproxy.resolver import Resolver
from fastproxy.responses import grpc_response, local_body_size, local_response
from fastproxy.routing import build_router, compile_access
from fastproxy.upstream import UpstreamGroup

log = logging.getLogger("fastproxy.worker")

TLS_FAILURES = LAYOUT["ST_TLS_FAILURES"]
TOP_K = 64  # entries per top list and worker (the dashboard's heavy hitters)
TICK = 0.25  # seconds between deadline checks: the resolution of every timeout
HANDSHAKE_REPORT = 10.0  # seconds between two summaries of failed TLS handshakes


class TlsListener:
    """What the compiled client connection needs of a TLS listener (Core.tls_listeners)."""

    __slots__ = ("hsts_line", "cert_headers", "cert_drop", "describe")

    def __init__(self, tls: ListenerTls) -> None:
        from fastproxy.tls import describe_peer_cert

        self.hsts_line = (f"Strict-Transport-Security: {tls.hsts}\r\n".encode()
                          if tls.hsts else None)
        self.cert_headers = tuple((field, name.lower().encode(), f"{name}: ".encode())
                                  for field, name in tls.client_cert_headers)
        self.cert_drop = tuple(name for _, name, _ in self.cert_headers)
        self.describe = describe_peer_cert


class Worker:
    def __init__(self, config: Config, sockets: list[socket.socket],
                 table: PeerTable | None = None, contexts: list[Any] | None = None,
                 limit_table: LimitTable | None = None,
                 conn_table: ConnTable | None = None,
                 ban_table: BanTable | None = None,
                 cache_stamps: Stamps | None = None,
                 cache_usage: Mapping[str, SharedCounter] | None = None,
                 cache_purges: Purges | None = None,
                 stats: Stats | None = None, layout: Layout | None = None,
                 stats_block: int = 0) -> None:
        self.config = config
        self.sockets = sockets
        # Each listener's server SSLContext (built by the master before forking, so
        # that all workers share the session-ticket keys), or None.
        self.contexts = contexts if contexts is not None else [None] * len(config.listeners)
        self.clock = Clock()
        self.access_log = AccessLog(config.log, self.clock)
        self.core = Core(config, None, self.access_log, self.clock, local_response,
                         local_body_size)
        self.core.grpc_local = grpc_response
        first, total = slot_layout(config.upstreams)
        # The servers' shared state (the master's, or one of our own when run alone).
        self.table = table if table is not None else PeerTable(total)
        self.groups = {name: UpstreamGroup(up, self.core, self.table, first[name])
                       for name, up in config.upstreams.items()}
        # Rate limits count in the instance's shared table (the master's), or in one
        # of our own when run alone.
        self.rate_limits: dict[str, Any] = {}  # RateLimit, or redisstore.StoreLimit
        if config.rate_limits:
            table_of_limits = limit_table or LimitTable(2 * config.limits.rate_limit_keys)
            self.rate_limits = {
                name: RateLimit(name, Template(spec.key) if spec.key is not None else None,
                                spec.rate, spec.burst, table_of_limits, spec.delay)
                for name, spec in config.rate_limits.items()}
            self._store_limits(config)
        # Each [caches.NAME]: this worker's memory tier and fills in flight.
        self.caches = {name: RouteCache(spec) for name, spec in config.caches.items()}
        stamps = None
        if self.caches:
            stamps = cache_stamps if cache_stamps is not None else Stamps(65536)
            for cache in self.caches.values():
                cache.set_stamps(stamps)
        # The disk tiers: files shared by the workers, written and read in threads.
        self.disks: list[DiskStore] = []
        for name, spec in config.caches.items():
            if spec.disk is not None:
                usage = (cache_usage or {}).get(name)
                disk = DiskStore(spec.disk.path, spec.disk.size, spec.disk.max_object, usage,
                                 stamps)
                self.caches[name].set_disk(disk)
                self.disks.append(disk)
        # The admin API's purges (the master's table; workers apply them lazily).
        if cache_purges is not None:
            for cache in self.caches.values():
                cache.set_purges(cache_purges)
        # The Redis tiers: responses shared with the other instances.
        self.redis_caches: list[Any] = []
        for name, spec in config.caches.items():
            if spec.redis is not None:
                from fastproxy.rediscache import RedisCache

                shared = RedisCache(spec.redis.url, name=name, prefix=spec.redis.prefix,
                                    max_object=spec.redis.max_object,
                                    timeout=spec.redis.timeout)
                self.caches[name].set_redis(shared)
                self.redis_caches.append(shared)
        self.core.router = build_router(config, self.groups, self.rate_limits, self.caches)
        # Metrics: this worker counts in its own block of the master's table.
        self.stats = stats if layout is not None else None
        if stats is not None and layout is not None:
            if stats_block:
                stats.use_block(stats_block)
            metrics.apply(layout, self.core, self.core.router, self.groups, self.caches, stats)
            if config.metrics.analytics:
                self.core.analytics = Analytics(TOP_K)
            self._tls_failures_at = layout.instance + TLS_FAILURES if layout.instance >= 0 else -1
        if config.server.trusted_proxies:
            self.core.trusted = IpSet(config.server.trusted_proxies)
        self.core.listener_access = [compile_access(listener.access)
                                     for listener in config.listeners]
        if config.limits.max_connections_per_ip:
            self.core.conn_table = conn_table if conn_table is not None else ConnTable(4096)
        if config.auto_ban is not None:
            ban = config.auto_ban
            self.core.set_auto_ban(
                ban_table if ban_table is not None else BanTable(
                    2 * ban.clients, ban.window, ban.after, ban.ban_time),
                IpSet(ban.exempt) if ban.exempt else None, "waf" in ban.on, ban.statuses())
        self.core.tls_listeners = [TlsListener(listener.tls) if listener.tls else None
                                   for listener in config.listeners]
        self.stream_hub = self._stream_hub(config)
        if any(listener.h2c or (listener.tls is not None and "h2" in listener.tls.alpn)
               for listener in config.listeners):
            from fastproxy.h2server import session_factory

            self.core.h2_factory = session_factory(self.core, config)
        self._handshake_failures = 0
        self.proxy_header_stats: dict[str, int] = {}  # "refused": bad or missing headers
        self._handshake_report = 0.0
        self._tops_at = 0.0  # when the top lists are published next
        self._upstream_tls(config)
        self._servers: list[Any] = []
        self._tls_servers: list[TlsServer] = []
        self._poller: Poller | None = None  # TLS listeners' sockets, without uvloop transports
        self._stopped: asyncio.Future[None] | None = None
        self._drain_deadline = 0.0
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in run()

    def _stream_hub(self, config: Config) -> StreamHub:
        """The tcp listeners' shared state (limits and metrics as the HTTP side's)."""
        hub = StreamHub(config, self.access_log)
        hub.http_clients = self.core.clients
        hub.http_core = self.core
        hub.conn_table = self.core.conn_table
        hub.stats = self.core.stats
        hub.stats_instance = self.core.stats_instance
        return hub

    def _stream_listener(self, index: int) -> StreamListener:
        """The protocol factory of a `mode = "tcp"` listener."""
        listener = self.config.listeners[index]
        tcp = listener.tcp
        assert tcp is not None
        groups = self.groups
        rules = None if tcp.sni is None else [(r.names, groups[r.upstream]) for r in tcp.sni]
        return StreamListener(self.stream_hub, listener.name,
                              groups[tcp.upstream] if tcp.upstream is not None else None,
                              rules, tcp.idle_timeout, tcp.client_hello_timeout,
                              tcp.client_hello_max_bytes, self.core.listener_access[index])

    def _store_limits(self, config: Config) -> None:
        """Limits with a `store` count in Redis (one client per store URL)."""
        stores: dict[tuple[str, float], Any] = {}
        for name, spec in config.rate_limits.items():
            if spec.store is None:
                continue
            from fastproxy.redisstore import RedisStore, StoreLimit

            where = (spec.store, spec.store_timeout)
            if where not in stores:
                stores[where] = RedisStore(spec.store, timeout=spec.store_timeout)
            local = self.rate_limits[name]
            self.rate_limits[name] = StoreLimit(name, local.key, spec.rate, spec.burst,
                                                spec.delay, stores[where],
                                                spec.on_store_error, local.lines)

    def _upstream_tls(self, config: Config) -> None:
        """One client SSLContext per upstream with https:// servers; HTTP/2 to the
        servers that speak it (h2c://, or every server with protocol = "h2")."""
        for name, upstream in config.upstreams.items():
            h2 = upstream.protocol == "h2"
            context = None
            if any(s.tls for s in upstream.servers):
                from fastproxy.tls import client_context

                context = client_context(upstream.tls, ("h2",) if h2 else ("http/1.1",))
            for server, pool in zip(upstream.servers, self.groups[name].pools, strict=True):
                if server.tls:
                    pool.set_tls(context, upstream.tls.sni or server.host)
                if h2 or server.h2:
                    from fastproxy.h2upstream import H2Upstream

                    pool.h2 = H2Upstream(self.core, server.port, pool.label,
                                         context if server.tls else None,
                                         upstream.tls.sni or server.host,
                                         upstream.connect_timeout, upstream.idle_timeout)

    def run(self) -> int:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        self.core.loop = loop
        self.stream_hub.loop = loop
        for disk in self.disks:
            disk.start(loop)
        for shared in self.redis_caches:
            shared.start(loop)
        # Everything made so far (config, modules) lives as long as the worker:
        # keep it out of the cyclic GC's generations.
        gc.freeze()
        try:
            loop.run_until_complete(self._main())
        finally:
            for disk in self.disks:
                disk.close()  # the writes queued (bounded) finish
            self.access_log.close()
            loop.close()
        return 0

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        for index, sock in enumerate(self.sockets):
            listener = self.config.listeners[index]
            factory: Callable[[], Any] = (self._stream_listener(index) if listener.mode == "tcp"
                                          else self.core.client_factory(index))
            server: asyncio.AbstractServer | TlsAcceptor
            if listener.proxy_protocol:
                server = await loop.create_server(
                    self._gate_factory(index, factory), sock=sock, backlog=1024)
            elif listener.tls is not None and isinstance(self.contexts[index], ServerContext):
                if os.environ.get("FASTPROXY_TLS_SOCKETS") == "uvloop":
                    # The sockets as uvloop's transports, TlsConnection as their protocol:
                    # for side-by-side benchmarks of the two (see docs/architecture.md).
                    server = await loop.create_server(self._tls_server(index, factory),
                                                      sock=sock, backlog=1024)
                else:
                    # The socket and its connections in our epoll set (_tls.Poller).
                    if self._poller is None:
                        self._poller = Poller(loop)
                    server = TlsAcceptor(self._poller, self._tls_server(index, factory), sock)
            elif listener.tls is not None:
                server = await loop.create_server(
                    factory, sock=sock, backlog=1024,
                    ssl=self.contexts[index], ssl_handshake_timeout=listener.tls.handshake_timeout)
            elif listener.mode == "tcp" or os.environ.get("FASTPROXY_PLAIN_SOCKETS") != "own":
                # TCP streams keep uvloop's transports, and so does plain HTTP unless
                # FASTPROXY_PLAIN_SOCKETS=own: our own sockets cost less per connection but
                # more per keep-alive request (the nested epoll set's wake-ups), see
                # docs/architecture.md and benchmarks/README.md.
                server = await loop.create_server(factory, sock=sock, backlog=1024)
            else:
                # Plain HTTP: the socket and its connections in our epoll set (_tls.Poller).
                if self._poller is None:
                    self._poller = Poller(loop)
                server = TlsAcceptor(self._poller, PlainServer(factory), sock)
            self._servers.append(server)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.shutdown)
        # logrotate renamed the files: open them again (the master forwards SIGUSR1).
        loop.add_signal_handler(signal.SIGUSR1, self.access_log.reopen)
        resolver = Resolver(loop)
        for group in self.groups.values():
            for pool in group.pools:
                resolver.watch(pool, group.config.resolve_interval)
        loop.call_later(TICK, self._tick)
        try:
            await self._stopped
        finally:
            resolver.stop()
            if self._poller is not None:
                self._poller.close()
            for shared in self.redis_caches:
                await shared.close()  # the writes queued get a moment to go out

    def _tls_server(self, index: int, factory: Callable[[], Any] | None = None) -> TlsServer:
        """The protocol factory of an `engine = "openssl"` listener (OpenSSL driven
        from C, fastproxy._tls), whose handshake deadlines the tick checks."""
        context = self.contexts[index]
        assert isinstance(context, ServerContext)
        server = context.server(factory or self.core.client_factory(index))
        self._tls_servers.append(server)
        return server

    def _gate_factory(self, index: int, factory: Callable[[], Any] | None = None
                      ) -> Callable[[], ProxyHeaderGate]:
        """Connections of a `proxy_protocol` listener: the PROXY header first."""
        listener = self.config.listeners[index]
        factory = factory or self.core.client_factory(index)
        context = self.contexts[index]
        if isinstance(context, ServerContext):
            context = self._tls_server(index, factory)
        handshake = listener.tls.handshake_timeout if listener.tls is not None else 0.0
        header = self.config.timeouts.header
        stats = self.proxy_header_stats

        def gate() -> ProxyHeaderGate:
            return ProxyHeaderGate(factory, context, handshake, header, stats)

        return gate

    def shutdown(self) -> None:
        """Stop accepting; finish what is in flight, up to shutdown_timeout."""
        core = self.core
        if core.closing:
            return
        core.closing = True
        self._drain_deadline = self.clock.now + self.config.server.shutdown_timeout
        for server in self._servers:
            server.close()
        core.close_idle_clients()
        for group in self.groups.values():
            for pool in group.pools:
                pool.close_idle()

    def _tick(self) -> None:
        clock = self.clock
        clock.tick()
        now = clock.now
        core = self.core
        core.expire(now)
        if self.stream_hub.conns:
            self.stream_hub.expire(now)
        for tls_server in self._tls_servers:
            tls_server.expire(now)
        self.access_log.flush()
        if self.stats is not None and self._tls_failures_at >= 0:
            self.stats.set(self._tls_failures_at, core.handshake_failures)
        if core.analytics is not None and now >= self._tops_at:
            self._tops_at = now + 1.0
            publish_tops(self.stats, core.analytics)
        for cache in self.caches.values():
            cache.poll_purges()  # so that the purges' ring never runs past this worker
        if core.handshake_failures != self._handshake_failures and now >= self._handshake_report:
            # A summary at most every 10 s: scanners and old clients fail handshakes
            # all day, and one line each would drown the log.
            log.info("TLS handshakes that failed or timed out: %d in the last %.0fs (%d in all)",
                     core.handshake_failures - self._handshake_failures, HANDSHAKE_REPORT,
                     core.handshake_failures)
            self._handshake_failures = core.handshake_failures
            self._handshake_report = now + HANDSHAKE_REPORT
        streams = self.stream_hub.conns
        if core.closing and ((not core.clients and not streams)
                             or now >= self._drain_deadline):
            if core.clients or streams:
                log.warning("shutdown timeout: cutting %d connections",
                            len(core.clients) + len(streams))
            core.abort_all()
            self.stream_hub.abort_all()
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(None)
            return
        self.loop.call_later(TICK, self._tick)


def publish_tops(stats: Stats | None, analytics: Analytics) -> None:
    """Put this worker's top lists where the admin process reads them (its note in
    the shared table). When they do not fit, the longest keys go first."""
    if stats is None:
        return
    snapshot = analytics.snapshot()
    data = json.dumps(snapshot, separators=(",", ":")).encode()
    while not stats.publish(data):
        # Too long (long paths or agents): keep the most counted half of each list.
        if not any(len(v) > 1 for v in snapshot.values()):
            return
        snapshot = {k: v[:max(1, len(v) // 2)] for k, v in snapshot.items()}
        data = json.dumps(snapshot, separators=(",", ":")).encode()
