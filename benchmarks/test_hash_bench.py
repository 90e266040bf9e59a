"""Micro benchmarks of consistent-hash selection (fastproxy._hashring): one select_index(key)
per op, through the Python wrapper (the proxy calls the C `select` directly).

`test_call_overhead` is the same wrapper on a one-peer RoundRobin, whose select returns at
once: the Python call's share of the other figures.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from fastproxy._balance import RoundRobin, key_hash
from fastproxy._hashring import HashBalancer, Maglev, Ring

Timed = Callable[[Callable[[], Any]], Any]
KEY = key_hash(b"/some/request/path?id=12345")


def loaded(b: HashBalancer, n: int) -> HashBalancer:
    """About 4 requests in flight per peer, placed by the balancer itself (so the bound
    binds here and there), plus the benchmark key's home peer full."""
    for j in range(4 * n):
        b.start(b.select_index(key_hash(b"load-%d" % j)))
    home = b.select_index(KEY)
    while b.select_index(KEY) == home:
        b.start(home)
    return b


@pytest.mark.parametrize("factor", [0.0, 1.25], ids=["unbounded", "bounded-1.25"])
@pytest.mark.parametrize("n", [10, 100, 1000])
@pytest.mark.parametrize("cls", [Ring, Maglev])
def test_select(timed: Timed, cls: type[HashBalancer], n: int, factor: float) -> None:
    b = cls(list(range(n)), factor=factor)
    if factor:
        loaded(b, n)
    assert timed(partial(b.select_index, KEY)) in range(n)


def test_call_overhead(timed: Timed) -> None:
    rr = RoundRobin([0])
    assert timed(partial(rr.select_index, KEY)) == 0


@pytest.mark.parametrize("n", [10, 100, 1000])
@pytest.mark.parametrize("cls", [Ring, Maglev])
def test_select_key_peer_down(timed: Timed, cls: type[HashBalancer], n: int) -> None:
    """The key's own peer is down: the pick walks on to the next one."""
    b = cls(list(range(n)))
    home = b.select_index(KEY)
    b.table.set_health(home, False)
    assert timed(partial(b.select_index, KEY)) not in (home, -1)
