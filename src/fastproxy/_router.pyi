"""Type stubs for the compiled fastproxy._router extension (ext/fastproxy/_router.pyx)."""

from collections.abc import Mapping, Sequence
from typing import Any

from fastproxy.config import Route

def normalize_host(host: bytes | None) -> bytes: ...

class Router:
    by_host: bool
    def __init__(self, routes: Sequence[Route], targets: Mapping[str, Any]) -> None: ...
    def route(self, host_header: bytes | None, path: bytes) -> Any: ...
    def match(self, host: bytes, path: bytes) -> Any: ...
