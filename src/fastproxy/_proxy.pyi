"""Type stubs for the compiled fastproxy._proxy extension (ext/fastproxy/_proxy.pyx)."""

import asyncio
from collections.abc import Callable
from typing import Any

from fastproxy._actions import Template
from fastproxy._balance import Balancer, RetryBudget
from fastproxy._http import MessageHead
from fastproxy._router import RequestContext, Router, Rule
from fastproxy.config import Config, Upstream

class Core:
    loop: asyncio.AbstractEventLoop
    clients: set[ClientConnection]
    upstream_conns: set[UpstreamConnection]
    closing: bool
    router: Router | None
    analytics: Any  # fastproxy._tops.Analytics or None
    stats: Any  # fastproxy._stats.Stats or None
    stats_instance: int
    grpc_local: Callable[[int, bytes], bytes] | None
    def __init__(self, config: Config, router: Router | None, access_log: Any, clock: Any,
                 local_response: Callable[..., bytes],
                 local_body_size: Callable[[int], int]) -> None: ...
    tls_listeners: list[Any]
    # HTTP/2 sessions: (outer client, its transport, first bytes or None) -> session
    h2_factory: Callable[[ClientConnection, Any, bytes | None], Any] | None
    h2_streams: int
    handshake_failures: int
    in_flight: int
    shed: int
    refused_per_ip: int
    conn_table: Any
    trusted: Any
    listener_access: list[Any]
    bans: Any
    banned: int
    def set_tracing(self, tracing: Any) -> None: ...
    def set_auto_ban(self, table: Any, exempt: Any, waf: bool, statuses: Any) -> None: ...
    def new_queue(self, capacity: int, timeout: float) -> WaitQueue: ...
    def client_factory(self, listener: int) -> Callable[[], ClientConnection]: ...
    def expire(self, now: float) -> None: ...
    def close_idle_clients(self) -> None: ...
    def abort_all(self) -> None: ...

def trailer_fields(trailers: bytes | None) -> list[tuple[bytes, bytes]]: ...

class ClientConnection(asyncio.Protocol):
    transport: Any
    exchange: Exchange | None
    ip: bytes
    proto: bytes
    listener: int
    def __init__(self, core: Core, listener: int = 0) -> None: ...
    def set_peer(self, ip: bytes, port: int = 0, dst_ip: bytes | None = None,
                 dst_port: int = 0) -> None: ...
    stream: bool  # one HTTP/2 stream (fastproxy.h2server)
    def set_stream(self, ip: bytes, outer: ClientConnection | None = None) -> None: ...
    def h2_wait(self, seconds: float) -> None: ...
    def h2_close(self, abort: bool) -> None: ...

class Exchange:
    client: ClientConnection
    head: MessageHead
    target: bytes
    host: bytes | None
    status: int
    sent: int
    upstream_label: str
    ctx: RequestContext | None
    rule: Rule | None
    req_bytes: int
    t_start: float
    connect_time: float
    upstream_time: float
    upstream_status: int
    traceparent: bytes | None
    @property
    def request_id(self) -> bytes | None: ...
    @property
    def trace_id(self) -> bytes | None: ...
    @property
    def span_id(self) -> bytes | None: ...
    @property
    def cache_status(self) -> str | None: ...

def _trace_test(incoming: bytes | None) -> tuple[bool, bytes]: ...
def _request_id_test(value: bytes) -> bool: ...

class UpstreamConnection(asyncio.Protocol):
    pool: ServerPool
    def __init__(self, pool: ServerPool) -> None: ...

class ServerPool:
    core: Core
    host: str
    port: int
    weight: int
    label: str
    connects: int
    reuses: int
    addresses: tuple[str, ...]
    proxy_protocol: int  # the PROXY header version sent first (0: none)
    h2: Any  # fastproxy.h2upstream.H2Upstream or None
    def __init__(self, upstream: Upstream, host: str, port: int, weight: int,
                 core: Core) -> None: ...
    def set_addresses(self, addresses: list[str] | tuple[str, ...]) -> None: ...
    def set_tls(self, context: Any, server_hostname: str) -> None: ...
    def set_proxy_protocol(self, version: str) -> None: ...
    @property
    def tls(self) -> bool: ...
    def close_idle(self) -> None: ...

class WaitQueue:
    capacity: int
    timeout: float
    def __len__(self) -> int: ...

class GroupBase:
    balancer: Balancer
    backup: Balancer | None
    budget: RetryBudget
    hash_key: Template | None
    sticky_cookie: bytes | None
    sticky_values: tuple[bytes, ...]
    sticky_peers: dict[bytes, int]
    sticky_lines: tuple[bytes, ...]
    retries: int
    retry_on: frozenset[str]
    retry_reset: bool
    retry_timeout: bool
    retry_statuses: frozenset[int]
    retry_buffer: int
    waiting: WaitQueue | None
    busy: bytes
    unavailable: bytes
    stats_base: int
