"""Smooth weighted round robin (as nginx does it): the minimal balancer for now."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class RoundRobin(Generic[T]):
    """Picks peers in proportion to their weights, interleaved (a,b,a,c,a,b...)."""

    __slots__ = ("_peers", "_weights", "_current", "_total")

    def __init__(self, peers: Sequence[T], weights: Sequence[int]) -> None:
        if not peers or len(peers) != len(weights):
            raise ValueError("need one weight per peer")
        self._peers = list(peers)
        self._weights = list(weights)
        self._current = [0] * len(peers)
        self._total = sum(weights)

    def pick(self) -> T:
        if len(self._peers) == 1:
            return self._peers[0]
        best = 0
        current = self._current
        for i, w in enumerate(self._weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self._peers[best]
