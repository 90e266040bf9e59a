"""Type stubs for the compiled fastproxy._hashring extension (ext/fastproxy/_hashring.pyx)."""

from collections.abc import Sequence
from typing import Any

from fastproxy._balance import Balancer

MAGLEV_PRIMES: tuple[int, ...]
MAX_RING_POINTS: int

class HashBalancer(Balancer):
    def __init__(
        self,
        peers: Sequence[Any],
        weights: Sequence[int] | None = None,
        *,
        names: Sequence[str] | None = None,
        factor: float = 0.0,
        **kwargs: Any,
    ) -> None: ...
    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def factor(self) -> float: ...
    @property
    def total_active(self) -> int: ...

class Ring(HashBalancer):
    def __init__(
        self,
        peers: Sequence[Any],
        weights: Sequence[int] | None = None,
        *,
        names: Sequence[str] | None = None,
        vnodes: int = 160,
        factor: float = 0.0,
        **kwargs: Any,
    ) -> None: ...
    @property
    def vnodes(self) -> int: ...
    def points(self) -> list[tuple[int, int]]: ...

class Maglev(HashBalancer):
    def __init__(
        self,
        peers: Sequence[Any],
        weights: Sequence[int] | None = None,
        *,
        names: Sequence[str] | None = None,
        table_size: int = 0,
        factor: float = 0.0,
        **kwargs: Any,
    ) -> None: ...
    @property
    def table_size(self) -> int: ...
    def lookup_table(self) -> list[int]: ...
