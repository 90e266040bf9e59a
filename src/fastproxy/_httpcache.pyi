"""Type stubs for the compiled fastproxy._httpcache extension (ext/fastproxy/_httpcache.pyx)."""

from typing import Any

DEFAULT_KEY: str
PURGE_KINDS: dict[str, int]
PURGE_KIND_NAMES: dict[int, str]
PURGE_SLOTS: int
PURGE_TEXT_MAX: int
PURGE_NAME_MAX: int

class Purges:
    seq: int
    def __init__(self) -> None: ...
    def add(self, kind: str, text: bytes, cache: str = "", soft: bool = False,
            time: float | None = None) -> int: ...
    def since(self, after: int
              ) -> tuple[list[tuple[int, float, str, bool, str, bytes]], bool]: ...

class Stamps:
    size: int
    def __init__(self, size: int = 65536) -> None: ...
    def invalidate(self, key: int, now: float | None = None) -> None: ...
    def invalidated(self, key: int, fetched: float) -> bool: ...

def read_cached(path: bytes, limit: int) -> tuple[bytes, float, int] | bool | None: ...

class ContentHash:
    def __init__(self) -> None: ...
    def update(self, data: bytes | bytearray | memoryview) -> None: ...
    def digest(self) -> int: ...

class SharedCounter:
    value: int
    def __init__(self) -> None: ...
    def add(self, n: int) -> int: ...
    def set(self, n: int) -> None: ...

class Stored:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    request_time: float
    response_time: float
    fresh: Any
    fresh_until: float
    no_cache: bool
    initial_age: float
    variant: bytes
    prefix: bytes
    length_line: bytes
    size: int
    url: bytes | None
    tags: tuple[bytes, ...]
    purge_seq: int
    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 body: bytes, request_time: float, response_time: float, fresh: Any,
                 variant: bytes) -> None: ...
    def age(self, now: float) -> float: ...
    def expire(self, at: float) -> None: ...

class Variants:
    names: tuple[bytes, ...]
    entries: dict[bytes, Stored]
    size: int

class RouteCache:
    name: str
    index: Any
    template: Any
    policy: Any
    max_object: int
    lock_timeout: float
    debug: bool
    fills: dict[int, list[Any]]
    store_limit: int
    disk: Any
    redis: Any
    capture_limit: int
    def __init__(self, spec: Any) -> None: ...
    tag_headers: tuple[bytes, ...]
    def set_disk(self, disk: Any) -> None: ...
    def set_purges(self, purges: Purges) -> None: ...
    def poll_purges(self) -> None: ...
    def drop(self, primary: int) -> None: ...
    def set_redis(self, redis: Any) -> None: ...
    def forget_shared(self, primary: int) -> None: ...
    def invalidated_elsewhere(self, primary: int) -> None: ...
    def selects(self, stored: Stored, request_headers: list[tuple[bytes, bytes]]) -> bool: ...
    def adopt(self, primary: int, stored: Stored,
              names: tuple[bytes, ...]) -> Stored | None: ...
    def status_line(self, hit: bool = False, fwd: str | None = None,
                    fwd_status: int | None = None, ttl: float | None = None,
                    stored: bool | None = None, collapsed: bool | None = None,
                    key: bytes | None = None, detail: str | None = None) -> bytes: ...
    def invalidate(self, primary: int) -> None: ...
    def set_stamps(self, stamps: Stamps) -> None: ...
