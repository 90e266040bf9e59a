"""Consistent hashing (fastproxy._hashring): Ring and Maglev against plain Python models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._balance import key_hash
from fastproxy._hashring import HashBalancer, Maglev, Ring

KEYS = [key_hash(b"key-%d" % j) for j in range(20_000)]
U64 = st.integers(min_value=0, max_value=2**64 - 1)
SMALL_PRIMES = [61, 127, 251, 1009, 4099]  # >= 12 peers * weight 5

# -- plain Python models --------------------------------------------------------------

Room = Callable[[int], bool]


def ref_ring(names: Sequence[str], weights: Sequence[int], vnodes: int) -> list[tuple[int, int]]:
    """Every peer's vnodes * weight points, hashed from its name, sorted."""
    return sorted(
        (xxhash.xxh3_64_intdigest(f"{name}#{r}".encode()), i)
        for i, (name, w) in enumerate(zip(names, weights, strict=True))
        for r in range(vnodes * w)
    )


def ref_ring_select(points: list[tuple[int, int]], key: int, room: Room | None = None) -> int:
    """The first point at or after key (wrapping), then on to the first peer with room."""
    start = bisect_left(points, (key, -1)) % len(points)
    for step in range(len(points)):
        peer = points[(start + step) % len(points)][1]
        if room is None or room(peer):
            return peer
    return points[start][1]


def ref_maglev(names: Sequence[str], weights: Sequence[int], m: int) -> list[int]:
    """Maglev's population (Eisenbud et al., pseudo-code 1), peer i taking weights[i]
    turns a round, in the order of the names."""
    offset = [xxhash.xxh3_64_intdigest(n.encode(), seed=1) % m for n in names]
    skip = [xxhash.xxh3_64_intdigest(n.encode(), seed=2) % (m - 1) + 1 for n in names]
    nxt = [0] * len(names)
    entry = [-1] * m
    filled = 0
    while True:
        for i in sorted(range(len(names)), key=lambda i: names[i]):
            for _ in range(weights[i]):
                c = (offset[i] + nxt[i] * skip[i]) % m
                while entry[c] >= 0:
                    nxt[i] += 1
                    c = (offset[i] + nxt[i] * skip[i]) % m
                entry[c] = i
                nxt[i] += 1
                filled += 1
                if filled == m:
                    return entry


def ref_maglev_select(table: list[int], key: int, room: Room | None = None) -> int:
    m = len(table)
    for step in range(m):
        peer = table[(key + step) % m]
        if room is None or room(peer):
            return peer
    return table[key % m]


def ref_room(active: list[int], weights: Sequence[int], factor: float) -> Room:
    """HAProxy's bound: active + 1 <= ceil(factor * (total + 1) * w / W), in the
    module's order of float operations."""
    total, tw = sum(active), sum(weights)
    return lambda i: active[i] + 1 <= math.ceil((total + 1) * (factor * weights[i] / tw))


def names_of(n: int, prefix: str = "srv") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def mapping(balancer: HashBalancer, keys: list[int] = KEYS) -> list[str]:
    return [balancer.names[balancer.select_index(k)] for k in keys]


# -- the key hash -----------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_key_hash_is_xxh3_64(data: bytes) -> None:
    assert key_hash(data) == xxhash.xxh3_64_intdigest(data)


@pytest.mark.parametrize("cls", [Ring, Maglev])
def test_pick_key_hashes_the_key(cls: type[HashBalancer]) -> None:
    b = cls(["a", "b", "c", "d"])
    for j in range(200):
        key = b"/path/%d" % j
        assert b.pick_key(key) == b.peers[b.select_index(xxhash.xxh3_64_intdigest(key))]


# -- against the models -----------------------------------------------------------------

weights_st = st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(weights_st, st.integers(min_value=1, max_value=40), st.lists(U64, max_size=30), st.data())
def test_ring_matches_model(weights: list[int], vnodes: int, keys: list[int],
                            data: st.DataObject) -> None:
    names = data.draw(st.sampled_from([None, names_of(len(weights), "ü-")]))
    ring = Ring(list(range(len(weights))), weights, names=names, vnodes=vnodes)
    points = ref_ring(ring.names, weights, vnodes)
    assert ring.points() == points
    # Keys on and right beside points, and the ends of the range.
    extra = [h + d for h, _ in data.draw(st.lists(st.sampled_from(points), max_size=10))
             for d in (-1, 0, 1)]
    for key in [*keys, *extra, 0, 2**64 - 1]:
        key %= 2**64
        assert ring.select_index(key) == ref_ring_select(points, key)


@settings(max_examples=200, deadline=None)
@given(weights_st, st.sampled_from(SMALL_PRIMES), st.lists(U64, max_size=30), st.data())
def test_maglev_matches_model(weights: list[int], m: int, keys: list[int],
                              data: st.DataObject) -> None:
    names = data.draw(st.sampled_from([None, names_of(len(weights), "ü-")]))
    mg = Maglev(list(range(len(weights))), weights, names=names, table_size=m)
    table = ref_maglev(mg.names, weights, m)
    assert mg.lookup_table() == table
    for key in [*keys, 0, 2**64 - 1]:
        assert mg.select_index(key) == ref_maglev_select(table, key)


def test_maglev_default_table_matches_model() -> None:
    weights = [1, 2, 3, 1, 1]
    mg = Maglev(list(range(5)), weights)
    assert mg.table_size == 65537
    assert mg.lookup_table() == ref_maglev(mg.names, weights, 65537)
    assert Maglev(list(range(700))).table_size == 131101  # > 100 * peers


# Few distinct keys too, so that some peers fill up and picks walk on.
ops_st = st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=3) | U64),
                  max_size=80)


@settings(max_examples=200, deadline=None)
@given(weights_st, st.sampled_from([1.01, 1.25, 1.5, 2.0, 3.0]), ops_st,
       st.booleans(), st.sampled_from(SMALL_PRIMES))
def test_bounded_load_matches_model(weights: list[int], factor: float,
                                    ops: list[tuple[bool, int]], use_ring: bool, m: int) -> None:
    """Interleaved picks (each started) and finishes against the model's walk."""
    n = len(weights)
    b: HashBalancer
    if use_ring:
        b = Ring(list(range(n)), weights, vnodes=8, factor=factor)
        points = ref_ring(b.names, weights, 8)
    else:
        b = Maglev(list(range(n)), weights, table_size=m, factor=factor)
        table = ref_maglev(b.names, weights, m)
    active = [0] * n
    for pick, key in ops:
        if pick or not any(active):
            room = ref_room(active, weights, factor)
            want = ref_ring_select(points, key, room) if use_ring else \
                ref_maglev_select(table, key, room)
            got = b.select_index(key)
            assert got == want
            assert room(got)
            b.start(got)
            active[got] += 1
        else:
            i = key % n
            b.finish(i)
            active[i] = max(0, active[i] - 1)
        assert b.in_flight() == active
        assert b.total_active == sum(active)


# -- consistency ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Ring, Maglev])
@pytest.mark.parametrize("n", [5, 10, 20, 50])
def test_adding_or_removing_a_peer_moves_few_keys(cls: type[HashBalancer], n: int) -> None:
    names = names_of(n)
    before = mapping(cls(names, names=names))
    bound = 1.3 / n * len(KEYS)

    grown = [*names, f"srv{n}"]
    after = mapping(cls(grown, names=grown))
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert 0 < len(moved) <= bound
    if cls is Ring:  # a ring moves only what the new peer takes
        assert {b for _, b in moved} == {f"srv{n}"}

    gone = names[n // 2]
    shrunk = [x for x in names if x != gone]
    after = mapping(cls(shrunk, names=shrunk))
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert 0 < len(moved) <= bound
    assert gone in {a for a, _ in moved}
    if cls is Ring:  # ... or what the removed one had
        assert {a for a, _ in moved} == {gone}


@pytest.mark.parametrize("cls", [Ring, Maglev])
def test_names_not_positions_place_peers(cls: type[HashBalancer]) -> None:
    names = names_of(8)
    shuffled = names[3:] + names[:3]
    assert mapping(cls(names, names=names)) == mapping(cls(shuffled, names=shuffled))


SCRIPT = """
import json, sys
from fastproxy._balance import key_hash
from fastproxy._hashring import Maglev, Ring
names = ["srv%d" % i for i in range(7)]
keys = [key_hash(b"key-%d" % j) for j in range(2000)]
balancers = [c(names, [1, 2, 1, 1, 3, 1, 1], names=names) for c in (Ring, Maglev)]
print(json.dumps({type(b).__name__: [b.select_index(k) for k in keys] for b in balancers}))
"""


def test_same_key_same_peer_in_a_fresh_instance_and_another_process() -> None:
    names = names_of(7)
    weights = [1, 2, 1, 1, 3, 1, 1]
    keys = KEYS[:2000]
    first, fresh = ([c(names, weights, names=names) for c in (Ring, Maglev)] for _ in range(2))
    here = {type(b).__name__: [b.select_index(k) for k in keys] for b in first}
    assert here == {type(b).__name__: [b.select_index(k) for k in keys] for b in fresh}
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, env=env, timeout=60)
    assert json.loads(out.stdout) == here


# -- weights ----------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "tolerance"), [(Ring, 0.15), (Maglev, 0.05)])
def test_weights_set_the_share_of_keys(cls: type[HashBalancer], tolerance: float) -> None:
    b = cls(["a", "b", "c"], [1, 2, 3])
    counts = Counter(b.select_index(k) for k in KEYS)
    for i, w in enumerate([1, 2, 3]):
        want = len(KEYS) * w / 6
        assert abs(counts[i] - want) <= tolerance * want, (i, counts)


def test_maglev_table_share_follows_weights() -> None:
    mg = Maglev(list(range(4)), [1, 2, 3, 10])
    counts = Counter(mg.lookup_table())
    for i, w in enumerate([1, 2, 3, 10]):
        assert abs(counts[i] / mg.table_size - w / 16) <= 0.01 * w / 16


# -- bounded load -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Ring, Maglev])
@pytest.mark.parametrize("weights", [[1] * 8, [1, 2, 3, 1, 1]])
def test_bounded_load_spreads_a_hot_key(cls: type[HashBalancer], weights: list[int]) -> None:
    factor = 1.25
    b = cls(list(range(len(weights))), weights, factor=factor)
    hot = key_hash(b"the-hot-key")
    home = b.select_index(hot)
    tw = sum(weights)
    for total in range(1, 10_001):
        b.start(b.select_index(hot))
        if total % 500 == 0:
            active = b.in_flight()
            assert sum(active) == total == b.total_active
            # max / avg (per unit of weight) <= factor, plus one request of rounding
            for i, w in enumerate(weights):
                assert active[i] <= math.ceil(factor * total * w / tw), (total, active)
            assert max(a / w for a, w in zip(active, weights, strict=True)) <= \
                factor * total / tw + 1
    assert b.in_flight()[home] == max(b.in_flight())  # the home peer fills first
    # Once load drains, the key goes home again.
    for i, a in enumerate(b.in_flight()):
        for _ in range(a):
            b.finish(i)
    assert b.total_active == 0
    assert b.select_index(hot) == home


@pytest.mark.parametrize("cls", [Ring, Maglev])
def test_without_a_factor_a_hot_key_stays_home(cls: type[HashBalancer]) -> None:
    b = cls(list(range(8)))
    hot = key_hash(b"the-hot-key")
    for _ in range(1000):
        b.start(b.select_index(hot))
    assert sorted(b.in_flight()) == [0] * 7 + [1000]


@pytest.mark.parametrize("cls", [Ring, Maglev])
def test_finish_on_an_idle_peer_keeps_the_count(cls: type[HashBalancer]) -> None:
    b = cls(["a", "b"], factor=1.5)
    b.start(0)
    b.finish(1)
    b.finish(1, -1.0)
    assert (b.in_flight(), b.total_active) == ([1, 0], 1)
    b.finish(0)
    b.finish(0)
    assert (b.in_flight(), b.total_active) == ([0, 0], 0)


# -- refused input ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Ring, Maglev])
@pytest.mark.parametrize("kwargs", [{"factor": 0.5}, {"factor": 1.0}, {"factor": -2.0},
                                    {"names": ["a"]}, {"names": ["a", "a"]},
                                    {"weights": [1, 0]}, {"weights": [1]}])
def test_refuses_bad_input(cls: type[HashBalancer], kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        cls(["p", "q"], **kwargs)  # type: ignore[arg-type]


def test_refuses_bad_sizes() -> None:
    with pytest.raises(TypeError):
        Ring(["p"], names=[1])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        Ring([])
    with pytest.raises(ValueError):
        Ring(["p"], vnodes=0)
    for m in (100, 1, 2, 3):  # not prime, or smaller than the total weight
        with pytest.raises(ValueError):
            Maglev(["p", "q", "r", "s"], table_size=m)
    assert Maglev(["p", "q"], table_size=5).lookup_table().count(-1) == 0
