"""Micro benchmarks of the cache index (fastproxy._cache) at 1M entries.

Every round makes OPS = 1,000,000 operations, so the round times that
pytest-benchmark prints in milliseconds read as nanoseconds per operation.
Keys are random 64-bit values (what xxh3 gives) and each round visits them in
random order, so nearly every lookup misses the CPU caches: the worst case, not
the hot-set case of a real cache. Values are distinct objects, as responses are.

- `*_c`: a C loop over the C methods (`bench_get`, `bench_peek`, `bench_put`), the
  cost the proxy pays;
- `*_python`: `map(index.get, keys)`, one Python call per op through the wrapper;
- `test_dict_get_hit_python`: the same with a dict of the same size, for scale.
"""

from __future__ import annotations

import os
import random
from array import array
from collections import deque
from itertools import repeat
from typing import Any

import pytest

from fastproxy._cache import CacheIndex, bench_get, bench_peek, bench_put

OPS = 1_000_000
ROUNDS = 7
SIZE = 1000  # bytes charged per entry


def random_keys(n: int) -> array:
    return array("Q", os.urandom(8 * n))


class Loaded:
    def __init__(self, entries: int) -> None:
        self.keys = random_keys(entries)
        self.values = [object() for _ in range(entries)]
        self.index = CacheIndex(entries * SIZE)
        put = self.index.put
        for k, v in zip(self.keys, self.values, strict=True):
            put(k, v, SIZE)
        assert len(self.index) == entries  # (no duplicate among random 64-bit keys)
        order = list(self.keys)
        random.Random(1).shuffle(order)
        self.hits = array("Q", order[:OPS])
        self.misses = random_keys(OPS)


_loaded: dict[int, Loaded] = {}


def loaded(entries: int) -> Loaded:
    if entries not in _loaded:
        _loaded.clear()
        _loaded[entries] = Loaded(entries)
    return _loaded[entries]


def per_op(benchmark: Any, results: list[float]) -> None:
    """ns per op as the C loop timed itself (the warm-up round left out)."""
    results = sorted(results[1:])
    benchmark.extra_info["ns_per_op_median"] = results[len(results) // 2]
    benchmark.extra_info["ns_per_op_min"] = results[0]


@pytest.mark.parametrize("entries", [1_000_000, 1_500_000], ids=["1M", "1.5M"])
def test_get_hit_c(benchmark: Any, entries: int) -> None:
    """1M: the table is 2^21 slots, 48 % full; 1.5M: 72 %, just below a doubling."""
    d = loaded(entries)
    results: list[float] = []

    def run() -> None:
        ns, hits = bench_get(d.index, d.hits, OPS)
        assert hits == OPS
        results.append(ns)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    per_op(benchmark, results)


def test_get_miss_c(benchmark: Any) -> None:
    d = loaded(1_000_000)
    results: list[float] = []

    def run() -> None:
        ns, hits = bench_get(d.index, d.misses, OPS)
        assert hits == 0
        results.append(ns)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    per_op(benchmark, results)


def test_peek_hit_c(benchmark: Any) -> None:
    d = loaded(1_000_000)
    results: list[float] = []

    def run() -> None:
        ns, hits = bench_peek(d.index, d.hits, OPS)
        assert hits == OPS
        results.append(ns)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    per_op(benchmark, results)


def test_get_hit_python(benchmark: Any) -> None:
    d = loaded(1_000_000)
    keys = list(d.hits)
    benchmark.pedantic(lambda: deque(map(d.index.get, keys), maxlen=0),
                       rounds=ROUNDS, warmup_rounds=1)


def test_get_miss_python(benchmark: Any) -> None:
    d = loaded(1_000_000)
    keys = list(d.misses)
    benchmark.pedantic(lambda: deque(map(d.index.get, keys), maxlen=0),
                       rounds=ROUNDS, warmup_rounds=1)


def test_dict_get_hit_python(benchmark: Any) -> None:
    d = loaded(1_000_000)
    table = dict(zip(d.keys, d.values, strict=True))
    keys = list(d.hits)
    benchmark.pedantic(lambda: deque(map(table.get, keys), maxlen=0),
                       rounds=ROUNDS, warmup_rounds=1)


def test_put_evicting_c(benchmark: Any) -> None:
    """Each put of a new key into the full index evicts the least recently used."""
    d = loaded(1_000_000)
    index = d.index
    value = object()
    results: list[float] = []

    def run(keys: array) -> None:
        before = index.evictions
        results.append(bench_put(index, keys, value, SIZE))
        assert index.evictions - before == OPS
        assert len(index) == 1_000_000

    benchmark.pedantic(run, setup=lambda: ((random_keys(OPS),), {}), rounds=ROUNDS,
                       warmup_rounds=1)
    per_op(benchmark, results)
    _loaded.clear()  # its hit keys are gone now


def test_put_evicting_python(benchmark: Any) -> None:
    d = loaded(1_000_000)
    index = d.index
    value = object()

    def run(keys: list[int]) -> None:
        deque(map(index.put, keys, repeat(value), repeat(SIZE)), maxlen=0)

    benchmark.pedantic(run, setup=lambda: ((list(random_keys(OPS)),), {}), rounds=ROUNDS,
                       warmup_rounds=1)
    assert len(index) == 1_000_000
    _loaded.clear()
