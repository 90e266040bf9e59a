"""The compiled cache index (_cache.CacheIndex) against an OrderedDict model."""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc
import weakref
from collections import OrderedDict
from typing import Any

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fastproxy._cache import CACHE_KEY_SEED, CacheIndex, cache_key


class Obj:
    """A value that can be watched with a weakref."""

    def __init__(self, tag: object = None) -> None:
        self.tag = tag

    def __repr__(self) -> str:
        return f"Obj({self.tag!r})"


class Model:
    """What CacheIndex should do, written plainly."""

    def __init__(self, budget: int, max_entries: int = 0) -> None:
        self.budget = budget
        self.max_entries = max_entries
        self.od: OrderedDict[int, tuple[Any, int]] = OrderedDict()
        self.used = 0
        self.evicted: list[tuple[int, Any]] = []

    def get(self, key: int) -> Any:
        if key not in self.od:
            return None
        self.od.move_to_end(key)
        return self.od[key][0]

    def peek(self, key: int) -> Any:
        return self.od[key][0] if key in self.od else None

    def put(self, key: int, value: Any, size: int) -> int:
        if key in self.od:
            self.used -= self.od.pop(key)[1]
        if size > self.budget:
            return 0
        while self.od and (self.used + size > self.budget
                           or (self.max_entries and len(self.od) >= self.max_entries)):
            k, (v, s) = self.od.popitem(last=False)
            self.used -= s
            self.evicted.append((k, v))
        self.od[key] = (value, size)
        self.used += size
        return 1

    def remove(self, key: int) -> bool:
        if key not in self.od:
            return False
        self.used -= self.od.pop(key)[1]
        return True

    def items(self) -> list[tuple[int, Any, int]]:
        return [(k, v, s) for k, (v, s) in self.od.items()]


def same_home_keys(index: CacheIndex, n: int, seed: int = 1) -> list[int]:
    """n distinct keys whose probes all start at the same slot (at the current capacity)."""
    rnd = random.Random(seed)
    target = index.home_slot(0)
    keys = [0]
    while len(keys) < n:
        k = rnd.getrandbits(64)
        if index.home_slot(k) == target and k not in keys:
            keys.append(k)
    return keys


def keys_with_home(index: CacheIndex, slot: int, n: int, seed: int = 2) -> list[int]:
    rnd = random.Random(seed)
    keys: list[int] = []
    while len(keys) < n:
        k = rnd.getrandbits(64)
        if index.home_slot(k) == slot:
            keys.append(k)
    return keys


# -- cache_key ----------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_cache_key_is_xxh3_with_the_fixed_seed(data: bytes) -> None:
    assert cache_key(data) == xxhash.xxh3_64_intdigest(data, seed=CACHE_KEY_SEED)


def test_cache_key_is_stable() -> None:
    # The disk tier names files by it: it must not change between releases.
    assert CACHE_KEY_SEED == 0x6661737463616368
    assert cache_key(b"GET example.com /") == xxhash.xxh3_64_intdigest(
        b"GET example.com /", seed=0x6661737463616368)


# -- basics -------------------------------------------------------------------------------


def test_put_get_peek_remove() -> None:
    c = CacheIndex(1000)
    a, b = Obj("a"), Obj("b")
    assert c.put(1, a, 100) == 1
    assert c.put(2, b, 200) == 1
    assert len(c) == 2 and c.bytes_used == 300
    assert 1 in c and 3 not in c
    assert c.get(1) is a and c.peek(2) is b
    assert c.get(3) is None and c.peek(3) is None
    assert c.size_of(2) == 200 and c.size_of(3) is None
    assert c.remove(1) is True
    assert c.remove(1) is False
    assert c.get(1) is None and len(c) == 1 and c.bytes_used == 200
    assert c.budget == 1000 and c.max_entries == 0 and c.evictions == 0
    c.check()


def test_any_uint64_is_a_key() -> None:
    c = CacheIndex(10)
    for k in (0, 1, 2**63, 2**64 - 1):
        c.put(k, k, 1)
    assert [c.get(k) for k in (0, 1, 2**63, 2**64 - 1)] == [0, 1, 2**63, 2**64 - 1]
    with pytest.raises(OverflowError):
        c.put(-1, None, 1)
    with pytest.raises(OverflowError):
        c.get(2**64)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="budget"):
        CacheIndex(-1)
    with pytest.raises(ValueError, match="max_entries"):
        CacheIndex(10, -1)
    c = CacheIndex(10)
    with pytest.raises(ValueError, match="size"):
        c.put(1, None, -1)
    assert len(c) == 0


def test_replace_keeps_one_entry_and_charges_the_new_size() -> None:
    c = CacheIndex(1000)
    c.put(1, "old", 300)
    c.put(2, "two", 100)
    assert c.put(1, "new", 50) == 1
    assert len(c) == 2 and c.bytes_used == 150
    assert c.get(1) == "new"
    # A replaced entry becomes the most recently used.
    assert [k for k, _, _ in c.items_lru()] == [2, 1]
    assert c.evictions == 0
    c.check()


def test_budget_evicts_least_recently_used_first() -> None:
    c = CacheIndex(300)
    evicted: list[tuple[int, object]] = []
    c.on_evict = lambda k, v: evicted.append((k, v))
    for k in (1, 2, 3):
        c.put(k, f"v{k}", 100)
    c.get(1)            # order now 2, 3, 1
    c.peek(2)           # peek does not count as a use
    c.put(4, "v4", 150)  # needs 150 bytes: 2 and 3 go, in that order
    assert evicted == [(2, "v2"), (3, "v3")]
    assert [k for k, _, _ in c.items_lru()] == [1, 4]
    assert c.bytes_used == 250 and c.evictions == 2
    c.check()


def test_object_bigger_than_budget_is_not_stored() -> None:
    c = CacheIndex(100)
    c.put(1, "small", 60)
    assert c.put(2, "huge", 101) == 0
    assert 2 not in c and c.get(1) == "small" and c.evictions == 0
    assert c.put(3, "exact", 100) == 1      # exactly the budget fits, alone
    assert list(c.items_lru()) == [(3, "exact", 100)]
    # An oversized replacement drops the stored (now outdated) value.
    assert c.put(3, "huge", 500) == 0
    assert len(c) == 0 and c.bytes_used == 0
    c.check()


def test_zero_budget_stores_only_empty_entries() -> None:
    c = CacheIndex(0)
    assert c.put(1, "x", 1) == 0
    assert c.put(2, "y", 0) == 1
    assert c.get(2) == "y"


def test_max_entries() -> None:
    c = CacheIndex(10**9, max_entries=3)
    evicted: list[int] = []
    c.on_evict = lambda k, v: evicted.append(k)
    for k in range(1, 6):
        c.put(k, k, 1)
    assert evicted == [1, 2]
    assert [k for k, _, _ in c.items_lru()] == [3, 4, 5]
    c.put(4, "again", 1)      # a replacement evicts nothing
    assert evicted == [1, 2] and len(c) == 3
    c.check()


def test_on_evict_sees_the_entries_in_lru_order_and_a_consistent_index() -> None:
    c = CacheIndex(1000)
    objs = [Obj(i) for i in range(10)]
    for i, o in enumerate(objs):
        c.put(i, o, 100)
    for i in (3, 0, 7):
        c.get(i)
    seen: list[tuple[int, object]] = []

    def hook(key: int, value: object) -> None:
        c.check()
        assert key not in c
        seen.append((key, value))

    c.on_evict = hook
    c.put(100, Obj("big"), 450)      # five 100-byte entries must go
    assert seen == [(i, objs[i]) for i in (1, 2, 4, 5, 6)]
    c.check()


def test_on_evict_may_use_the_index() -> None:
    c = CacheIndex(300)
    for k in (1, 2, 3):
        c.put(k, k, 100)
    calls: list[int] = []

    def hook(key: int, value: object) -> None:
        calls.append(key)
        if key == 1:
            c.remove(3)               # the next victim, removed from inside the hook
            c.put(50, "from hook", 150)  # evicts 2: a nested hook call
        c.check()

    c.on_evict = hook
    assert c.put(4, 4, 100) == 1
    assert calls == [1, 2]
    assert [k for k, _, _ in c.items_lru()] == [4, 50]
    c.check()


def test_on_evict_error_is_raised_after_every_hook() -> None:
    c = CacheIndex(300)
    for k in (1, 2, 3):
        c.put(k, k, 100)
    seen: list[int] = []

    def hook(key: int, value: object) -> None:
        seen.append(key)
        raise RuntimeError(f"disk full {key}")

    c.on_evict = hook
    with pytest.raises(RuntimeError, match="disk full 1") as info:
        c.put(4, 4, 250)
    assert seen == [1, 2, 3]
    assert c.get(4) == 4 and len(c) == 1    # stored all the same
    assert any("disk full 2" in note for note in info.value.__notes__)
    c.check()


def test_on_evict_not_called_for_replace_remove_clear() -> None:
    c = CacheIndex(1000)
    seen: list[int] = []
    c.on_evict = lambda k, v: seen.append(k)
    c.put(1, "a", 10)
    c.put(1, "b", 10)
    c.remove(1)
    c.put(2, "c", 10)
    c.put(2, "too big", 10**6)
    c.put(3, "d", 10)
    c.clear()
    assert seen == [] and c.evictions == 0


def test_items_lru_and_clear() -> None:
    c = CacheIndex(10**6)
    for k in range(100):
        c.put(k, str(k), k)
    c.get(5)
    items = list(c.items_lru())
    assert [k for k, _, _ in items] == [*range(5), *range(6, 100), 5]
    assert items[0] == (0, "0", 0) and items[-1] == (5, "5", 5)
    big = c.capacity
    assert big >= 128
    c.clear()
    assert len(c) == 0 and c.bytes_used == 0 and list(c.items_lru()) == []
    assert c.capacity == 16 and c.memory == 16 * 32
    c.put(1, "again", 1)
    assert c.get(1) == "again"
    c.check()


def test_growth_keeps_everything() -> None:
    c = CacheIndex(10**12)
    rnd = random.Random(5)
    keys = [rnd.getrandbits(64) for _ in range(50_000)]
    for i, k in enumerate(keys):
        c.put(k, i, 1)
    assert len(c) == len(set(keys))
    assert c.capacity * 3 // 4 >= len(c) > c.capacity * 3 // 8
    c.check()
    assert all(c.peek(k) == i for i, k in enumerate(keys))
    # The LRU order survived every rehash.
    assert [k for k, _, _ in c.items_lru()] == keys
    for k in keys[::2]:
        assert c.remove(k)
    c.check()
    assert all(c.peek(k) == i for i, k in enumerate(keys) if i % 2)


# -- probing and deletion -----------------------------------------------------------------


def test_keys_equal_modulo_table_size_do_not_cluster() -> None:
    """Home slots are a seeded mix of the key, not its low bits: keys that a client
    could make equal in their low bits spread over the table."""
    c = CacheIndex(10**9)
    for i in range(1000):
        c.put(i << 32, i, 1)
    cap = c.capacity
    homes = {c.home_slot(i << 32) for i in range(1000)}
    assert len(homes) > 600          # ~ cap (1 - e^(-1000/cap)) distinct homes
    assert cap == 2048
    c.check()
    # Two tables place the same key differently.
    d = CacheIndex(10)
    assert [d.home_slot(k) for k in range(64)] != [c.home_slot(k) for k in range(64)]


def test_colliding_keys_probe_and_delete() -> None:
    c = CacheIndex(10**6)
    assert c.capacity == 16
    keys = same_home_keys(c, 10)
    for i, k in enumerate(keys):
        c.put(k, i, 1)
    assert c.capacity == 16          # 10 entries < 12 (3/4 of 16): no rehash
    c.check()
    assert [c.get(k) for k in keys] == list(range(10))
    # Remove from the middle, the front and the end of the cluster; the rest stay
    # reachable, with no gap in front of any of them (backward shift).
    for k in (keys[4], keys[0], keys[9], keys[1]):
        assert c.remove(k)
        c.check()
        assert k not in c
    left = [k for k in keys if k not in (keys[4], keys[0], keys[9], keys[1])]
    assert all(k in c for k in left)
    for k in left:
        assert c.remove(k)
        c.check()
    assert len(c) == 0


def test_cluster_wrapping_around_the_end_of_the_table() -> None:
    c = CacheIndex(10**6)
    last = keys_with_home(c, 15, 4)
    first = keys_with_home(c, 0, 3, seed=3)
    for k in last + first:
        c.put(k, k, 1)
    c.check()
    assert c.capacity == 16
    for k in (last[0], first[0], last[2]):
        c.remove(k)
        c.check()
    for k in (last[1], last[3], first[1], first[2]):
        assert c.peek(k) == k


@given(st.permutations(range(11)), st.integers(0, 15))
@settings(max_examples=200, deadline=None)
def test_any_removal_order_in_a_full_cluster(order: list[int], start: int) -> None:
    c = CacheIndex(10**6)
    keys = keys_with_home(c, start, 6, seed=start) + keys_with_home(
        c, (start + 2) % 16, 5, seed=start + 100)
    for k in keys:
        c.put(k, k, 1)
    c.get(keys[3])
    model = Model(10**6)
    for k in keys:
        model.put(k, k, 1)
    model.get(keys[3])
    for i in order:
        assert c.remove(keys[i]) == model.remove(keys[i])
        c.check()
        assert list(c.items_lru()) == model.items()


# -- reference counts ---------------------------------------------------------------------


def test_values_are_freed_after_eviction_removal_replace_and_clear() -> None:
    c = CacheIndex(220)
    a, b, d, e = Obj("a"), Obj("b"), Obj("d"), Obj("e")
    refs = {name: weakref.ref(o) for name, o in (("a", a), ("b", b), ("d", d), ("e", e))}
    c.put(1, a, 100)
    c.put(2, b, 100)
    c.put(3, d, 10)
    c.put(4, e, 10)
    del a, b, d, e
    gc.collect()
    assert all(r() is not None for r in refs.values())
    c.put(5, Obj("f"), 150)           # evicts a (1) and b (2)
    assert refs["a"]() is None and refs["b"]() is None
    c.remove(3)
    assert refs["d"]() is None
    c.put(4, Obj("e2"), 10)           # replace
    assert refs["e"]() is None
    g = Obj("g")
    rg = weakref.ref(g)
    c.put(6, g, 1)
    del g
    c.clear()
    assert rg() is None


def test_values_are_freed_with_the_index() -> None:
    c = CacheIndex(100)
    o = Obj()
    r = weakref.ref(o)
    c.put(1, o, 1)
    del o
    assert r() is not None
    del c
    gc.collect()
    assert r() is None


def test_oversized_value_is_not_kept() -> None:
    c = CacheIndex(10)
    o = Obj()
    before = sys.getrefcount(o)
    assert c.put(1, o, 11) == 0
    assert sys.getrefcount(o) == before


def test_get_and_peek_do_not_leak_references() -> None:
    c = CacheIndex(100)
    o = Obj()
    c.put(1, o, 1)
    c.put(2, Obj(), 1)
    before = sys.getrefcount(o)
    for _ in range(1000):
        c.get(1)
        c.peek(1)
        c.get(2)
        c.get(3)
    assert sys.getrefcount(o) == before
    c.put(1, o, 1)                    # replaced by itself
    assert sys.getrefcount(o) == before
    c.remove(1)
    assert sys.getrefcount(o) == before - 1


def loop_peak(fn: Any, keys: list[int]) -> int:
    """Traced bytes allocated at once, at most, while calling fn on every key
    (an allocation on each call shows even when freed at once)."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for k in keys:
            fn(k)
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_get_and_peek_allocate_nothing() -> None:
    c = CacheIndex(10**9)
    rnd = random.Random(4)
    keys = [rnd.getrandbits(64) for _ in range(2000)]
    for k in keys[:1000]:
        c.put(k, Obj(k), 10)
    baseline = loop_peak(bool, keys)      # the loop's own iterator
    assert loop_peak(c.get, keys) == baseline     # 1000 hits, 1000 misses
    assert loop_peak(c.peek, keys) == baseline
    assert loop_peak(lambda k: k + 1, keys) > baseline    # the check sees an int made


def test_destructor_may_use_the_index() -> None:
    """A value freed on eviction runs code that calls back into the index."""
    c = CacheIndex(100)
    log: list[tuple[int, bool]] = []

    class Noisy:
        def __init__(self, key: int) -> None:
            self.key = key

        def __del__(self) -> None:
            c.check()
            log.append((self.key, self.key in c))
            c.put(1000 + self.key, "tomb", 1)

    c.put(1, Noisy(1), 60)
    c.put(2, Noisy(2), 40)
    # 3 evicts 1; 1's destructor stores 1001, which evicts 2, whose destructor
    # stores 1002: each runs once the index is consistent, and none is stored twice.
    c.put(3, "x", 60)
    assert log == [(1, False), (2, False)]
    assert [k for k, _, _ in c.items_lru()] == [3, 1001, 1002]
    assert c.evictions == 2
    c.check()


# -- the model ----------------------------------------------------------------------------


@given(
    budget=st.integers(0, 400),
    max_entries=st.sampled_from([0, 0, 1, 3, 8]),
    ops=st.lists(
        st.tuples(st.sampled_from(["get", "peek", "put", "put", "remove"]),
                  st.integers(0, 30), st.integers(0, 120)),
        max_size=200),
)
@settings(max_examples=300, deadline=None)
def test_matches_ordered_dict_model(budget: int, max_entries: int,
                                    ops: list[tuple[str, int, int]]) -> None:
    c = CacheIndex(budget, max_entries)
    m = Model(budget, max_entries)
    evicted: list[tuple[int, Any]] = []
    c.on_evict = lambda k, v: evicted.append((k, v))
    for n, (op, key, size) in enumerate(ops):
        if op == "put":
            v = Obj(n)
            assert c.put(key, v, size) == m.put(key, v, size)
        elif op == "get":
            assert c.get(key) is m.get(key)
        elif op == "peek":
            assert c.peek(key) is m.peek(key)
        else:
            assert c.remove(key) == m.remove(key)
        assert len(c) == len(m.od)
        assert c.bytes_used == m.used <= budget
    c.check()
    assert list(c.items_lru()) == m.items()
    assert evicted == m.evicted
    assert c.evictions == len(m.evicted)


class CacheMachine(RuleBasedStateMachine):
    """Random get/peek/put/remove over a few keys, some of them sharing a home slot
    (at the first capacity), with growth and backward-shift deletion in between."""

    def __init__(self) -> None:
        super().__init__()
        self.c = CacheIndex(2000, 0)
        self.m = Model(2000, 0)
        self.evicted: list[tuple[int, Any]] = []
        self.c.on_evict = lambda k, v: self.evicted.append((k, v))
        self.keys = [*same_home_keys(self.c, 8, seed=9), *range(1, 40)]
        self.n = 0

    key = st.integers(0, 46)

    @rule(i=key, size=st.integers(0, 300))
    def put(self, i: int, size: int) -> None:
        self.n += 1
        v = Obj(self.n)
        k = self.keys[i]
        assert self.c.put(k, v, size) == self.m.put(k, v, size)

    @rule(i=key, size=st.integers(0, 30))
    def put_small(self, i: int, size: int) -> None:
        self.put(i, size)

    @rule(i=key)
    def get(self, i: int) -> None:
        assert self.c.get(self.keys[i]) is self.m.get(self.keys[i])

    @rule(i=key)
    def peek(self, i: int) -> None:
        assert self.c.peek(self.keys[i]) is self.m.peek(self.keys[i])

    @rule(i=key)
    def remove(self, i: int) -> None:
        assert self.c.remove(self.keys[i]) == self.m.remove(self.keys[i])

    @precondition(lambda self: len(self.m.od) > 20)
    @rule()
    def clear(self) -> None:
        self.c.clear()
        self.m.od.clear()
        self.m.used = 0

    @invariant()
    def same_contents(self) -> None:
        self.c.check()
        assert list(self.c.items_lru()) == self.m.items()
        assert self.c.bytes_used == self.m.used <= 2000
        assert self.evicted == self.m.evicted


CacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60,
                                          deadline=None)
TestCacheMachine = CacheMachine.TestCase
