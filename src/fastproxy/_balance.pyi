"""Type stubs for the compiled fastproxy._balance extension (ext/fastproxy/_balance.pyx)."""

from collections.abc import Sequence
from typing import Any

class Balancer:
    peers: list[Any]
    def pick(self) -> Any: ...

class RoundRobin(Balancer):
    def __init__(self, peers: Sequence[Any], weights: Sequence[int]) -> None: ...
