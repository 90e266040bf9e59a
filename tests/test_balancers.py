"""LeastConn, Random, P2C and Ewma (fastproxy._balance) against plain-Python models.

The random balancers take a `seed`; the models below replay the same splitmix64
stream, so for a given seed they must make exactly the same choices. The
distribution tests use fixed seeds too: they are deterministic, not flaky.
"""

from __future__ import annotations

import heapq
import math
import os
from bisect import bisect_right
from collections import Counter
from itertools import accumulate
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._balance import P2C, Balancer, Ewma, LeastConn, Random, RoundRobin

MASK = (1 << 64) - 1
PICKS = 100_000


class SplitMix64:
    """splitmix64, as the extension draws (Steele, Lea & Flood 2014)."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def test_splitmix_model_matches_published_values() -> None:
    # The first outputs for seed 1234567 in Vigna's splitmix64.c test.
    rng = SplitMix64(1234567)
    assert [rng.next() for _ in range(3)] == [
        6457827717110365317, 3203168211198807973, 9817491932198370423]


def counts(balancer: Balancer, picks: int = PICKS) -> list[int]:
    c = Counter(balancer.select_index() for _ in range(picks))
    return [c[i] for i in range(len(balancer.peers))]


def chi_square(observed: list[int], weights: list[int]) -> float:
    total, n = sum(weights), sum(observed)
    expected = [n * w / total for w in weights]
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))


# Upper critical values of chi-square at alpha = 0.001 (standard tables), by degrees
# of freedom. At that level a correct balancer fails one seed in a thousand; the
# seeds below are fixed, so a run is deterministic, and a skew of a few per cent at
# 100k picks lands far above these values (see the test with the wrong weights).
CHI_SQUARE_CRITICAL = {2: 13.816, 3: 16.266, 9: 27.877}


def test_chi_square_critical_values() -> None:
    assert CHI_SQUARE_CRITICAL[2] == pytest.approx(-2 * math.log(0.001), abs=1e-3)  # exact for df=2
    for df in (3, 9):  # Wilson-Hilferty with the normal 99.9 % quantile, within 2 %
        h = 2 / (9 * df)
        assert CHI_SQUARE_CRITICAL[df] == pytest.approx(df * (1 - h + 3.0902 * math.sqrt(h)) ** 3,
                                                        rel=0.02)


def load_with(balancer: Balancer, active: list[int]) -> None:
    for i, k in enumerate(active):
        for _ in range(k):
            balancer.start(i)


# -- distribution ----------------------------------------------------------------------------

DISTRIBUTION_WEIGHTS = [[5, 3, 2], list(range(1, 11)), [1, 1, 1, 1]]


@pytest.mark.parametrize("weights", DISTRIBUTION_WEIGHTS)
@pytest.mark.parametrize("make", [lambda p, w: Random(p, w, seed=7), RoundRobin,
                                  lambda p, w: P2C(p, w, seed=11)],
                         ids=["random", "round_robin", "p2c-equal-load-per-weight"])
def test_picks_follow_weights(make: Any, weights: list[int]) -> None:
    balancer = make(list(range(len(weights))), weights)
    # Static in-flight counts, the same per unit of weight: P2C's every pair ties
    # and the first drawn wins, so it must follow the weights as Random does.
    load_with(balancer, [3 * w for w in weights])
    got = counts(balancer)
    assert chi_square(got, weights) < CHI_SQUARE_CRITICAL[len(weights) - 1]
    for o, w in zip(got, weights, strict=True):
        expected = PICKS * w / sum(weights)
        if expected >= 15_000:  # 2 % is over 3 sigma from here on
            assert abs(o - expected) <= 0.02 * expected


def test_chi_square_catches_a_wrong_distribution() -> None:
    got = counts(Random(list(range(3)), [1, 1, 1], seed=7))
    assert chi_square(got, [5, 3, 2]) > CHI_SQUARE_CRITICAL[2]


def test_random_matches_model() -> None:
    weights = [4, 1, 7, 1, 2, 9]
    prefix = list(accumulate(weights))
    rng = SplitMix64(99)
    model = [bisect_right(prefix, rng.next() % prefix[-1]) for _ in range(2000)]
    balancer = Random(list(range(len(weights))), weights, seed=99)
    assert [balancer.select_index() for _ in range(2000)] == model


def test_unseeded_instances_differ() -> None:
    a, b = Random(list(range(1000))), Random(list(range(1000)))
    assert [a.select_index() for _ in range(20)] != [b.select_index() for _ in range(20)]


def test_forked_child_draws_differently() -> None:
    balancer = Random(list(range(1000)), seed=5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its draws and leave at once
        try:
            os.write(write, bytes(str([balancer.select_index() for _ in range(20)]), "ascii"))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child and child != str([balancer.select_index() for _ in range(20)])


@pytest.mark.parametrize("cls", [LeastConn, Random, P2C, Ewma, RoundRobin])
def test_one_peer_always_wins(cls: type[Balancer]) -> None:
    balancer = cls(["only"], [4])
    load_with(balancer, [9])
    assert {balancer.select_index() for _ in range(50)} == {0}
    assert balancer.pick() == "only"


@pytest.mark.parametrize("cls", [LeastConn, Random, P2C, Ewma])
@pytest.mark.parametrize(("peers", "weights"), [([], []), (["a", "b"], [1]), (["a"], [0])])
def test_bad_input_is_refused(cls: type[Balancer], peers: list[str], weights: list[int]) -> None:
    with pytest.raises(ValueError):
        cls(peers, weights)


@pytest.mark.parametrize("options", [{"decay": 0}, {"decay": -1}, {"penalty": -0.5},
                                     {"initial": 0}])
def test_ewma_refuses_bad_options(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Ewma(["a", "b"], **options)  # type: ignore[arg-type]


# -- LeastConn -------------------------------------------------------------------------------


class LeastConnModel:
    def __init__(self, weights: list[int]) -> None:
        self.weights = weights
        self.active = [0] * len(weights)
        self.start = 0

    def select(self) -> int:
        n, best = len(self.weights), self.start
        for k in range(1, n):
            i = (self.start + k) % n
            if self.active[i] * self.weights[best] < self.active[best] * self.weights[i]:
                best = i
        self.start = (best + 1) % n
        return best


def test_least_conn_ties_take_turns() -> None:
    balancer = LeastConn(list(range(7)))
    load_with(balancer, [3] * 7)
    got = counts(balancer, 70_000)
    assert got == [10_000] * 7
    assert [balancer.select_index() for _ in range(9)] == [0, 1, 2, 3, 4, 5, 6, 0, 1]


def test_least_conn_ties_among_some_alternate() -> None:
    balancer = LeastConn(list(range(6)))
    load_with(balancer, [1, 4, 4, 4, 4, 1])
    assert [balancer.select_index() for _ in range(6)] == [0, 5, 0, 5, 0, 5]


def test_least_conn_weighs_active() -> None:
    balancer = LeastConn(["a", "b"], [3, 1])
    load_with(balancer, [5, 2])  # 5/3 < 2/1
    assert balancer.pick() == "a"
    balancer.start(0)  # 6/3 == 2/1: a tie, and the scan now starts at b
    assert balancer.pick() == "b"
    balancer.start(0)  # 7/3 > 2/1
    assert {balancer.pick() for _ in range(5)} == {"b"}


@given(weights=st.lists(st.integers(1, 5), min_size=1, max_size=8), data=st.data())
def test_least_conn_picks_a_minimum(weights: list[int], data: st.DataObject) -> None:
    active = data.draw(st.lists(st.integers(0, 20), min_size=len(weights),
                                max_size=len(weights)))
    balancer = LeastConn(list(range(len(weights))), weights)
    load_with(balancer, active)
    for _ in range(len(weights) + 1):
        i = balancer.select_index()
        assert all(active[i] * w <= a * weights[i] for a, w in zip(active, weights, strict=True))


ops = st.lists(st.tuples(st.sampled_from(["pick", "finish", "fail", "start"]),
                         st.integers(0, 1000)), max_size=80)


@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=7), script=ops)
def test_least_conn_matches_model(weights: list[int], script: list[tuple[str, int]]) -> None:
    balancer, model = LeastConn(list(range(len(weights))), weights), LeastConnModel(weights)
    for op, x in script:
        if op == "pick":  # the proxy's path: select, then started
            i = balancer.select_index()
            assert i == model.select()
            balancer.start(i)
            model.active[i] += 1
        elif op == "start":
            i = x % len(weights)
            balancer.start(i)
            model.active[i] += 1
        else:  # finish or fail one peer; finishing an idle peer keeps it at 0
            i = x % len(weights)
            balancer.finish(i, -1.0 if op == "fail" else 0.01)
            model.active[i] = max(0, model.active[i] - 1)
        assert balancer.in_flight() == model.active


# -- P2C -------------------------------------------------------------------------------------


class P2CModel:
    def __init__(self, weights: list[int], seed: int) -> None:
        self.weights, self.rng = weights, SplitMix64(seed)
        self.prefix = list(accumulate(weights))
        self.active = [0] * len(weights)

    def select(self) -> int:
        w, total = self.weights, self.prefix[-1]
        if len(w) == 1:
            return 0
        a = bisect_right(self.prefix, self.rng.next() % total)
        r = self.rng.next() % (total - w[a])  # over the others' weight only
        b = bisect_right(self.prefix, r + w[a] if r >= self.prefix[a] - w[a] else r)
        assert b != a
        return b if self.active[b] * w[a] < self.active[a] * w[b] else a


@settings(max_examples=60)
@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=7), script=ops,
       seed=st.integers(0, MASK))
def test_p2c_matches_model(weights: list[int], script: list[tuple[str, int]], seed: int) -> None:
    balancer, model = P2C(list(range(len(weights))), weights, seed=seed), P2CModel(weights, seed)
    for op, x in script:
        if op == "pick":
            i = balancer.select_index()
            assert i == model.select()
            balancer.start(i)
            model.active[i] += 1
        elif op == "start":
            balancer.start(x % len(weights))
            model.active[x % len(weights)] += 1
        else:
            balancer.finish(x % len(weights), -1.0 if op == "fail" else 0.0)
            model.active[x % len(weights)] = max(0, model.active[x % len(weights)] - 1)


def test_p2c_draws_the_other_peer_under_skewed_weights() -> None:
    # Two peers are always both drawn, so the less loaded one wins every time,
    # however lopsided the weights (no retry loop for a distinct second draw).
    balancer = P2C(["big", "small"], [1000, 1], seed=3)
    load_with(balancer, [5000, 1])  # 5 per weight unit against 1
    assert {balancer.pick() for _ in range(2000)} == {"small"}


def test_p2c_starves_the_overloaded_peer() -> None:
    balancer = P2C(list(range(5)), seed=1)
    load_with(balancer, [50, 1, 2, 0, 1])
    got = counts(balancer, 10_000)
    assert got[0] == 0  # drawn about 4 in 10 times, never the lower of two
    assert got[3] > got[1] > got[2] > 0


# -- Ewma ------------------------------------------------------------------------------------


class EwmaModel:
    def __init__(self, weights: list[int], seed: int, decay: float = 10.0, penalty: float = 1.0,
                 initial: float = 0.01, now: float = 0.0) -> None:
        self.weights, self.rng = weights, SplitMix64(seed)
        self.decay, self.penalty = decay, penalty
        self.estimate = [initial] * len(weights)
        self.stamp = [now] * len(weights)
        self.active = [0] * len(weights)

    def cost(self, i: int, now: float) -> float:
        estimate, elapsed = self.estimate[i], now - self.stamp[i]
        if elapsed > 0:
            estimate *= math.exp(-elapsed / self.decay)
        return estimate * (self.active[i] + 1) / self.weights[i]

    def select(self, now: float) -> int:
        n = len(self.weights)
        if n == 1:
            return 0
        a = self.rng.next() % n
        b = self.rng.next() % (n - 1)
        b += b >= a
        return b if self.cost(b, now) < self.cost(a, now) else a

    def finish(self, i: int, seconds: float, now: float) -> None:
        self.active[i] = max(0, self.active[i] - 1)
        sample = seconds if seconds >= 0 else self.penalty
        if sample > self.estimate[i]:
            self.estimate[i] = sample
        else:
            elapsed = now - self.stamp[i]
            w = math.exp(-elapsed / self.decay) if elapsed > 0 else 1.0
            self.estimate[i] = self.estimate[i] * w + sample * (1 - w)
        self.stamp[i] = now


def frozen_ewma(n: int, weights: list[int] | None = None, **options: Any) -> Ewma:
    """An Ewma on a clock frozen at 0 (earlier than its construction)."""
    balancer = Ewma(list(range(n)), weights, **options)
    balancer.freeze_clock(0.0)
    for i in range(n):  # re-stamp every peer at t=0: a sample equal to its estimate
        balancer.finish(i, balancer.estimates()[i])
    return balancer


ewma_ops = st.lists(st.tuples(st.sampled_from(["pick", "finish", "fail", "wait"]),
                              st.integers(0, 1000), st.floats(0.0, 2.0)), max_size=60)


@settings(max_examples=60)
@given(weights=st.lists(st.integers(1, 4), min_size=1, max_size=6), script=ewma_ops,
       seed=st.integers(0, MASK))
def test_ewma_matches_model(weights: list[int], script: list[tuple[str, int, float]],
                            seed: int) -> None:
    n, now = len(weights), 0.0
    balancer = frozen_ewma(n, weights, decay=3.0, penalty=1.5, seed=seed)
    model = EwmaModel(weights, seed, decay=3.0, penalty=1.5)
    for op, x, value in script:
        if op == "wait":
            now += value
            balancer.freeze_clock(now)
        elif op == "pick":
            i = balancer.select_index()
            assert i == model.select(now)
            balancer.start(i)
            model.active[i] += 1
        else:
            seconds = -1.0 if op == "fail" else value / 10
            balancer.finish(x % n, seconds)
            model.finish(x % n, seconds, now)
        assert balancer.in_flight() == model.active
        assert balancer.estimates() == pytest.approx(model.estimate, rel=1e-12)


def test_ewma_peak_is_taken_at_once_and_decays_slowly() -> None:
    balancer = frozen_ewma(3, decay=10.0)
    balancer.finish(1, 0.5)
    assert balancer.estimates()[1] == 0.5
    balancer.freeze_clock(10.0)  # one decay time later, a fast sample
    balancer.finish(1, 0.01)
    assert balancer.estimates()[1] == pytest.approx(0.5 / math.e + 0.01 * (1 - 1 / math.e))
    balancer.finish(1, 0.01)  # no time has passed: no weight
    assert balancer.estimates()[1] == pytest.approx(0.5 / math.e + 0.01 * (1 - 1 / math.e))


def test_ewma_failure_raises_cost_and_is_forgiven_in_time() -> None:
    balancer = frozen_ewma(3, penalty=2.0)
    before = balancer.costs()
    balancer.start(2)
    balancer.finish(2, -1.0)
    assert balancer.estimates()[2] == 2.0
    assert balancer.costs()[2] > 100 * before[2]
    assert 2 not in {balancer.select_index() for _ in range(200)}
    balancer.freeze_clock(100.0)  # ten decay times idle: the failure is mostly forgotten
    assert balancer.costs()[2] < 2.0 * math.exp(-9)
    balancer.finish(0, 0.01)  # while the others kept serving
    balancer.finish(1, 0.01)
    assert 2 in {balancer.select_index() for _ in range(200)}


def test_ewma_cost_counts_in_flight_and_weight() -> None:
    balancer = frozen_ewma(2, [1, 4], initial=0.02)
    load_with(balancer, [1, 3])
    assert balancer.costs() == pytest.approx([0.02 * 2 / 1, 0.02 * 4 / 4])


def test_ewma_sends_little_to_a_slow_peer() -> None:
    """A discrete-event run: one request per millisecond, each ends after its peer's
    latency (100 ms for peer 0, 10 ms for the others)."""
    latency = [0.1, 0.01, 0.01, 0.01]
    balancer = frozen_ewma(4, seed=2)
    ends: list[tuple[float, int]] = []
    picked = [0] * 4
    for tick in range(10_000):
        now = tick * 0.001
        balancer.freeze_clock(now)
        while ends and ends[0][0] <= now:
            _, i = heapq.heappop(ends)
            balancer.finish(i, latency[i])
        i = balancer.select_index()
        balancer.start(i)
        picked[i] += 1
        heapq.heappush(ends, (now + latency[i], i))
    assert picked[0] < 0.05 * 10_000  # a fair share would be 25 %
    assert min(picked[1:]) > 0.25 * 10_000


def test_ewma_tries_new_peers() -> None:
    # Peers still at their initial estimate look cheap next to a known slow one.
    balancer = frozen_ewma(2, initial=0.005)
    balancer.finish(0, 0.2)
    load_with(balancer, [0, 5])  # 0.2 * 1 against 0.005 * 6
    assert {balancer.select_index() for _ in range(20)} == {1}


def test_ewma_nan_ends_a_request_without_a_sample() -> None:
    # The proxy reports NaN when the client left before the server answered.
    e = Ewma(["a", "b"], seed=1)
    e.freeze_clock(100.0)
    e.start(0)
    e.finish(0, 0.5)
    before = e.estimates()
    e.start(0)
    assert e.in_flight() == [1, 0]
    e.finish(0, float("nan"))
    assert e.in_flight() == [0, 0]
    assert e.estimates() == before
