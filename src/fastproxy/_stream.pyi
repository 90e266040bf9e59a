"""Type stubs for the compiled fastproxy._stream extension (ext/fastproxy/_stream.pyx)."""

import asyncio
from typing import Any

HELLO_RESULTS: dict[str, int]
END_NAMES: tuple[str, ...]

class HelloReader:
    limit: int
    result: int
    records: int
    def __init__(self, limit: int = 16384) -> None: ...
    def feed(self, data: bytes) -> str: ...
    @property
    def server_name(self) -> bytes | None: ...

def parse_client_hello(chunks: Any) -> tuple[str, bytes | None]: ...

class StreamHub:
    conns: set[Any]
    closing: bool
    stats: Any
    stats_instance: int
    conn_table: Any
    http_clients: Any
    http_core: Any
    loop: asyncio.AbstractEventLoop | None
    refused_per_ip: int
    bad_hellos: int
    def __init__(self, config: Any, access_log: Any) -> None: ...
    def expire(self, now: float) -> None: ...
    def abort_all(self) -> None: ...

class StreamListener:
    name: str
    def __init__(self, hub: StreamHub, name: str, default: Any,
                 sni_rules: list[tuple[tuple[str, ...], Any]] | None, idle: float,
                 hello_timeout: float, hello_max: int, access: Any) -> None: ...
    def __call__(self) -> StreamClient: ...
    def route(self, name: bytes | None) -> Any: ...

class StreamClient(asyncio.Protocol):
    ip: bytes
    deadline: float
    active: bool
    connect_time: float
    bytes_in: int
    bytes_out: int
    server_name: bytes | None
    def __init__(self, listener: StreamListener) -> None: ...
    def set_peer(self, ip: bytes, port: int = 0, dst_ip: bytes | None = None,
                 dst_port: int = 0) -> None: ...
    @property
    def listener_name(self) -> str: ...
    @property
    def upstream_name(self) -> str | None: ...
    @property
    def server(self) -> str | None: ...
    @property
    def how(self) -> str: ...
    @property
    def duration(self) -> float: ...

class StreamUpstream(asyncio.Protocol): ...
