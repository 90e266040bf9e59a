"""Type stubs for the compiled fastproxy._balance extension (ext/fastproxy/_balance.pyx)."""

from collections.abc import Iterable, Sequence
from typing import Any

from fastproxy._peers import PeerTable

NO_PEER: int
ALL_BUSY: int

def key_hash(key: bytes) -> int: ...

class RetryBudget:
    ratio: float
    capacity: float
    tokens: float
    def __init__(self, ratio: float, capacity: float = 10.0) -> None: ...
    def add_request(self) -> None: ...
    def take_retry(self) -> bool: ...

class Balancer:
    peers: list[Any]
    live: int
    table: PeerTable
    def __init__(
        self,
        peers: Sequence[Any],
        weights: Sequence[int] | None = None,
        *,
        table: PeerTable | None = None,
        slots: Sequence[int] | None = None,
        max_conns: Sequence[int] | None = None,
        slow_start: float = 0.0,
        eject: tuple[int, float, float] | None = None,
        **kwargs: Any,
    ) -> None: ...
    def pick(self) -> Any: ...
    def pick_key(self, key: bytes) -> Any: ...
    def select_index(self, key: int = 0) -> int: ...
    def select_other(self, key: int, tried: Iterable[int]) -> int: ...
    def start(self, i: int) -> None: ...
    def finish(self, i: int, seconds: float = 0.0) -> None: ...
    def outcome(self, i: int, ok: bool) -> None: ...
    def in_flight(self) -> list[int]: ...
    def current_weights(self) -> list[int]: ...

class RoundRobin(Balancer): ...

class LeastConn(Balancer): ...

class WeightedDraw(Balancer):
    def __init__(
        self,
        peers: Sequence[Any],
        weights: Sequence[int] | None = None,
        *,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None: ...

class Random(WeightedDraw): ...
class P2C(WeightedDraw): ...

class Ewma(Balancer):
    def __init__(
        self,
        peers: Sequence[Any],
        weights: Sequence[int] | None = None,
        *,
        decay: float = 10.0,
        penalty: float = 1.0,
        initial: float = 0.01,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None: ...
    def freeze_clock(self, now: float | None = None) -> None: ...
    def estimates(self) -> list[float]: ...
    def costs(self) -> list[float]: ...
