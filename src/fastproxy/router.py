"""First-match route table (the minimal form; a compiled matcher replaces it later)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

from fastproxy.config import Route

T = TypeVar("T")


def normalize_host(host: bytes | None) -> bytes:
    """Lower-case host name without port or trailing dot (b"" when absent)."""
    if not host:
        return b""
    if host[:1] == b"[":  # IPv6 literal
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    colon = host.rfind(b":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(b".").lower()


class Router(Generic[T]):
    """Routes in file order; `match` returns the target of the first that matches."""

    __slots__ = ("_table", "by_host")

    def __init__(self, routes: Sequence[Route], targets: Mapping[str, T]) -> None:
        self._table = tuple(
            (
                r.match.host.encode("idna") if r.match.host else None,
                r.match.path_prefix.encode(),
                targets[r.upstream],
            )
            for r in routes
        )
        # Without host rules the Host header need not be normalized per request.
        self.by_host = any(host is not None for host, _, _ in self._table)

    def match(self, host: bytes, path: bytes) -> T | None:
        for want_host, prefix, target in self._table:
            if want_host is not None and want_host != host:
                continue
            if path.startswith(prefix):
                return target
        return None
