"""Type stubs for the compiled fastproxy._compress extension (ext/fastproxy/_compress.pyx)."""

from collections.abc import Iterable, Mapping
from typing import Any

NAMES: dict[str, int]
LEVELS: dict[str, tuple[int, int]]
DEFAULT_LEVELS: dict[str, int]
DEFAULT_ALGORITHMS: tuple[str, ...]
DEFAULT_MIN_SIZE: int
DEFAULT_TYPES: tuple[str, ...]

def negotiate_header(value: str | bytes | None,
                     codings: Iterable[str] = ...) -> str | None: ...
def compress(name: str, level: int, body: bytes) -> bytes: ...

class Encoder:
    coding: int
    taken_in: int
    def py_feed(self, data: bytes | bytearray | memoryview) -> None: ...
    def py_take(self, final: bool = False) -> bytes: ...
    def py_release(self) -> None: ...

class Policy:
    codings: tuple[int, ...]
    min_size: int
    def __init__(self, algorithms: Iterable[str] = ..., levels: Mapping[str, int] | None = None,
                 min_size: int = 256, types: Iterable[str] = ...) -> None: ...
    def level(self, name: str) -> int: ...
    def decide_fields(self, status: int, fields: list[tuple[bytes, bytes]], length: int,
                      head: bool = False, request_fields: object = None) -> int: ...
    def new_encoder(self, name: str, length: int = -1) -> Encoder: ...

class StoredForm:
    compressible: bool
    vary_prefix: bytes | None
    enc_prefix: bytes | None
    bodies: dict[int, bytes]
    def encoded(self, cache: Any, primary: int, stored: Any, policy: Policy,
                name: str) -> bytes: ...

def form_of(stored: Any, policy: Policy) -> StoredForm: ...

def zlib_version() -> str: ...
