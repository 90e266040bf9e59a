"""Type stubs for the compiled fastproxy._router extension (ext/fastproxy/_router.pyx)."""

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, final

from fastproxy._http import MessageHead
from fastproxy.routeconf import Route

@final
class RequestContext:
    head: MessageHead | None
    host_header: bytes | None
    target: bytes | None
    path: bytes | None
    query: bytes
    has_query: bool
    client_ip: bytes
    scheme: bytes
    listener: int
    listener_name: bytes
    route_host: bytes | None
    captures: re.Match[bytes] | None
    tls: dict[str, str] | None
    def __init__(
        self,
        head: MessageHead | None = None,
        path: bytes = b"/",
        query: bytes = b"",
        has_query: bool = False,
        client_ip: bytes = b"127.0.0.1",
        scheme: bytes = b"http",
        listener: int = 0,
        listener_name: bytes = b"",
    ) -> None: ...
    @property
    def host(self) -> bytes: ...
    def host_name(self) -> bytes: ...
    def request_id(self) -> bytes: ...

def new_context(
    head: MessageHead,
    merge_slashes: bool,
    client_ip: bytes,
    scheme: bytes,
    listener: int,
    listener_name: bytes,
) -> RequestContext: ...

@final
class Rule:
    limits: tuple[Any, ...]
    access: tuple[Any, Any] | None
    auth: Any
    waf: Any
    max_body: int
    tunnel_idle: float
    forward_auth: Any
    cache: Any
    compress: Any
    index: int
    route: Route
    action: Any
    any_host: bool
    has_path: bool
    def __init__(self, route: Route, action: Any, listener_ids: Mapping[str, int]) -> None: ...
    def matches_host(self, host: bytes) -> bool: ...
    @property
    def trie_paths(self) -> list[tuple[bytes, int]]: ...

@final
class PathTable:
    def __init__(self, rules: tuple[Rule, ...]) -> None: ...
    def lookup(self, ctx: RequestContext) -> Rule | None: ...

@final
class Router:
    rules: tuple[Rule, ...]
    by_host: bool
    def __init__(
        self, rules: Iterable[Rule], listener_defaults: Sequence[bytes | None] = ()
    ) -> None: ...
    @property
    def table_count(self) -> int: ...
    def route(self, ctx: RequestContext, host_header: bytes | None) -> Rule | None: ...
    def explain(
        self, ctx: RequestContext, host_header: bytes | None
    ) -> tuple[list[tuple[Rule, int]], Rule | None]: ...
