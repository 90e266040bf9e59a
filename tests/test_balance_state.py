"""The balancers and the shared server state (fastproxy._peers.PeerTable).

Every algorithm (RoundRobin, LeastConn, Random, P2C, Ewma, Ring, Maglev) must
skip a server that is down (active checks) or ejected (passive checks), map its
peers to arbitrary table slots, see a change made by another balancer or another
process, honour max_conns (ALL_BUSY when every usable peer is full), pick a
retry among the peers not tried yet, ramp a returning peer up (slow start; not
the hashing ones) and eject a peer after failures in a row, with doubling
ejections. A hypothesis test replays random scripts against a plain model.

The random balancers get fixed seeds, so the counts below are deterministic. The
waits are short (ejections of 0.02..0.2 s, a slow start of 0.4 s) and bounded.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._balance import (
    P2C,
    Balancer,
    Ewma,
    LeastConn,
    Random,
    RetryBudget,
    RoundRobin,
    key_hash,
)
from fastproxy._hashring import HashBalancer, Maglev, Ring
from fastproxy._peers import PeerTable

NO_PEER = -1  # select_index: no peer is usable (all down or ejected)
ALL_BUSY = -3  # select_index: every usable peer is at its max_conns

UNKEYED = ["round_robin", "least_conn", "random", "p2c", "ewma"]
KEYED = ["ring", "maglev"]
ALGOS = UNKEYED + KEYED
LOAD_AWARE = {"least_conn", "p2c", "ewma"}

KEYS = [key_hash(b"key-%d" % j) for j in range(20_000)]
FEW_KEYS = KEYS[:2_000]
RAMP_SCALE = 100  # _balance.RAMP_SCALE: weights are kept x100 while slow start applies
SLOW = 0.4  # the slow start of the tests, seconds


def make(algo: str, weights: Sequence[int], **options: Any) -> Balancer:
    """A balancer of `algo` over peers "p0".."pN-1" (seeded when it draws)."""
    peers = [f"p{i}" for i in range(len(weights))]
    w = list(weights)
    if algo == "round_robin":
        return RoundRobin(peers, w, **options)
    if algo == "least_conn":
        return LeastConn(peers, w, **options)
    if algo == "ring":
        return Ring(peers, w, **options)
    if algo == "maglev":
        return Maglev(peers, w, **options)
    options.setdefault("seed", 20240611)
    if algo == "random":
        return Random(peers, w, **options)
    if algo == "p2c":
        return P2C(peers, w, **options)
    if algo == "ewma":
        balancer = Ewma(peers, w, **options)
        balancer.freeze_clock(100.0)  # no idle decay: equal samples keep equal estimates
        return balancer
    raise AssertionError(algo)


def picks(balancer: Balancer, keys: Iterable[int] = FEW_KEYS) -> Counter[int]:
    """select_index over `keys`, nothing started (a peer's load does not change)."""
    return Counter(balancer.select_index(k) for k in keys)


def spread(balancer: Balancer, algo: str, keys: Iterable[int] = KEYS,
           in_flight: int = 100) -> Counter[int]:
    """One pick per key; for the load-aware algorithms each pick is started and the
    oldest one finished once `in_flight` are running, so their choices follow the
    weights (idle, least_conn takes turns whatever the weights)."""
    got: Counter[int] = Counter()
    running: deque[int] = deque()
    for k in keys:
        i = balancer.select_index(k)
        got[i] += 1
        if algo in LOAD_AWARE and i >= 0:
            balancer.start(i)
            running.append(i)
            if len(running) > in_flight:
                balancer.finish(running.popleft(), 0.01)
    while running:
        balancer.finish(running.popleft(), 0.01)
    return got


def shares(got: Counter[int], n: int) -> list[float]:
    total = sum(got.values())
    return [got[i] / total for i in range(n)]


def expected_shares(weights: Sequence[int], down: Iterable[int] = ()) -> list[float]:
    off = set(down)
    live = sum(w for i, w in enumerate(weights) if i not in off)
    return [0.0 if i in off else w / live for i, w in enumerate(weights)]


def chi_square(observed: Sequence[int], weights: Sequence[float]) -> float:
    total, n = sum(weights), sum(observed)
    return sum((o - n * w / total) ** 2 / (n * w / total)
               for o, w in zip(observed, weights, strict=True))


def wait_until(predicate: Any, timeout: float = 2.0, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def full_weights(weights: Sequence[int], algo: str, slow_start: float) -> list[int]:
    """What current_weights() reports for peers at full weight."""
    scale = RAMP_SCALE if slow_start > 0 and algo in UNKEYED else 1
    return [w * scale for w in weights]


def key_for(balancer: Balancer, peer: int, keys: Iterable[int] = KEYS) -> int:
    """A key that `balancer` sends to `peer` now."""
    for k in keys:
        if balancer.select_index(k) == peer:
            return k
    raise AssertionError(f"no key for peer {peer}")


# -- 1. a peer that is down ---------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_down_peer_is_never_chosen_and_the_rest_follow_the_weights(algo: str) -> None:
    weights = [3, 1, 2, 4]
    table = PeerTable(4)
    balancer = make(algo, weights, table=table)
    before = [balancer.select_index(k) for k in FEW_KEYS]
    assert table.set_health(2, False) is True
    assert table.set_health(2, False) is False  # no change
    got = spread(balancer, algo)
    assert got[2] == 0
    assert set(got) == {0, 1, 3}
    assert balancer.live == 3
    assert balancer.current_weights() == [3, 1, 0, 4]
    want = expected_shares(weights, down=[2])
    tolerance = 0.02 if algo in UNKEYED else 0.03
    assert shares(got, 4) == pytest.approx(want, abs=tolerance)
    if algo in ("round_robin", "random"):
        # Chi-square at alpha = 0.001 with 2 degrees of freedom (fixed seed: deterministic).
        assert chi_square([got[0], got[1], got[3]], [3, 1, 4]) < 13.816

    # Back up: chosen again at once, at its full weight (no slow start configured).
    assert table.set_health(2, True) is True
    got = spread(balancer, algo)
    assert balancer.live == 4
    assert balancer.current_weights() == weights
    assert shares(got, 4) == pytest.approx(expected_shares(weights), abs=tolerance)
    if algo in KEYED:
        assert [balancer.select_index(k) for k in FEW_KEYS] == before


@pytest.mark.parametrize("algo", ALGOS)
def test_pick_and_pick_key_skip_a_down_peer(algo: str) -> None:
    table = PeerTable(3)
    balancer = make(algo, [1, 1, 1], table=table)
    table.set_health(0, False)
    assert {balancer.pick() for _ in range(300)} <= {"p1", "p2"}
    assert {balancer.pick_key(b"k%d" % j) for j in range(300)} == {"p1", "p2"}


# -- 2. every peer down -------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_all_down_gives_no_peer_and_one_back_gets_everything(algo: str) -> None:
    table = PeerTable(4)
    balancer = make(algo, [2, 1, 3, 1], table=table)
    for slot in range(4):
        table.set_health(slot, False)
    assert set(picks(balancer, KEYS[:500])) == {NO_PEER}
    assert balancer.live == 0
    assert balancer.current_weights() == [0, 0, 0, 0]
    assert balancer.pick() is None
    assert balancer.pick_key(b"anything") is None
    assert balancer.select_other(KEYS[0], []) == NO_PEER

    table.set_health(1, True)
    assert set(spread(balancer, algo, KEYS[:2_000])) == {1}
    assert balancer.live == 1
    assert balancer.pick() == "p1"

    for slot in range(4):
        table.set_health(slot, True)
    assert set(spread(balancer, algo, KEYS[:2_000])) == {0, 1, 2, 3}


@pytest.mark.parametrize("algo", ALGOS)
def test_all_ejected_gives_no_peer(algo: str) -> None:
    table = PeerTable(2)
    balancer = make(algo, [1, 1], table=table)
    table.eject_for(0, 5.0, 5.0)
    table.eject_for(1, 5.0, 5.0)
    assert set(picks(balancer, KEYS[:200])) == {NO_PEER}
    table.set_health(0, False)
    table.set_health(0, True)  # back up: the ejection is over
    assert set(picks(balancer, KEYS[:200])) == {0}


# -- 3. slots, sharing, another process ---------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_peers_map_to_arbitrary_slots(algo: str) -> None:
    table = PeerTable(10)
    balancer = make(algo, [1, 1, 1], table=table, slots=[7, 2, 5])
    assert set(spread(balancer, algo, FEW_KEYS)) == {0, 1, 2}
    for other in (0, 1, 3, 4, 6, 8, 9):  # slots of no peer of ours
        table.set_health(other, False)
        table.eject_for(other, 5.0, 5.0)
    assert set(spread(balancer, algo, FEW_KEYS)) == {0, 1, 2}
    assert balancer.live == 3

    table.set_health(2, False)  # peer 1
    assert set(spread(balancer, algo, FEW_KEYS)) == {0, 2}
    table.eject_for(7, 5.0, 5.0)  # peer 0
    assert set(spread(balancer, algo, FEW_KEYS)) == {2}
    table.set_health(5, False)  # peer 2: none left
    assert balancer.select_index(KEYS[0]) == NO_PEER
    table.set_health(2, True)
    assert set(spread(balancer, algo, FEW_KEYS)) == {1}


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("options", [
    {"slots": [0, 10]}, {"slots": [0, -1]}, {"slots": [0]}, {"slots": [0, 1, 2]},
])
def test_bad_slots_are_refused(algo: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make(algo, [1, 1], table=PeerTable(10), **options)


@pytest.mark.parametrize("algo", ALGOS)
def test_two_balancers_on_one_table_both_see_a_change(algo: str) -> None:
    table = PeerTable(10)
    first = make(algo, [1, 1, 1], table=table, slots=[7, 2, 5])
    second = make(algo, [1, 2], table=table, slots=[5, 7])
    assert set(spread(first, algo, FEW_KEYS)) == {0, 1, 2}
    assert set(spread(second, algo, FEW_KEYS)) == {0, 1}

    table.set_health(5, False)
    assert set(spread(first, algo, FEW_KEYS)) == {0, 1}
    assert set(spread(second, algo, FEW_KEYS)) == {1}

    # An ejection reported through one balancer is seen by the other.
    ejecting = make(algo, [1], table=table, slots=[7], eject=(1, 5.0, 5.0))
    ejecting.outcome(0, False)
    assert table.state(7)["ejections"] == 1
    assert set(spread(first, algo, FEW_KEYS)) == {1}
    assert set(picks(second)) == {NO_PEER}

    table.set_health(5, True)
    assert set(picks(second)) == {0}
    assert set(spread(first, algo, FEW_KEYS)) == {1, 2}


@pytest.mark.parametrize("algo", ALGOS)
def test_a_change_made_in_a_forked_child_is_seen_by_the_parent(algo: str) -> None:
    table = PeerTable(10)
    balancer = make(algo, [1, 1, 1], table=table, slots=[7, 2, 5])
    assert set(picks(balancer)) == {0, 1, 2}  # the view is built before the fork
    version = table.version
    pid = os.fork()
    if pid == 0:  # the child: change the shared state, then leave without cleanup
        code = 1
        try:
            table.set_health(7, False)
            table.eject_for(2, 5.0, 5.0)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert table.version == version + 2
    assert not table.is_up(7)
    assert table.state(2)["ejections"] == 1
    assert table.state(2)["ejected_for"] > 4.0
    assert set(spread(balancer, algo, FEW_KEYS)) == {2}
    assert balancer.live == 1


@pytest.mark.parametrize("algo", ALGOS)
def test_ejection_expiry_is_noticed_without_a_version_change(algo: str) -> None:
    # The end of an ejection bumps no version: every balancer must recheck by itself.
    table = PeerTable(3)
    first = make(algo, [1, 1, 1], table=table)
    second = make(algo, [1, 1, 1], table=table)
    table.eject_for(1, 0.05, 0.05)
    assert 1 not in spread(first, algo, FEW_KEYS)
    assert 1 not in spread(second, algo, FEW_KEYS)
    version = table.version
    time.sleep(0.07)
    assert table.version == version
    assert 1 in spread(first, algo, FEW_KEYS)
    assert 1 in spread(second, algo, FEW_KEYS)


# -- 4. consistent hashing when a peer is down --------------------------------------------


@pytest.mark.parametrize("algo", KEYED)
@pytest.mark.parametrize(("n", "down"), [(5, 0), (5, 3), (9, 8), (13, 6), (20, 11)])
def test_hashing_moves_only_the_down_peers_keys(algo: str, n: int, down: int) -> None:
    weights = [1 + (i * 7) % 3 for i in range(n)]
    table = PeerTable(n)
    balancer = make(algo, weights, table=table)
    keys = KEYS[:10_000]
    before = [balancer.select_index(k) for k in keys]
    assert down in before
    table.set_health(down, False)
    after = [balancer.select_index(k) for k in keys]
    for b, a in zip(before, after, strict=True):
        assert a != down
        if b != down:
            assert a == b  # a key whose peer is still up keeps it
    moved = Counter(a for b, a in zip(before, after, strict=True) if b == down)
    assert len(moved) > 1  # the down peer's keys spread over several peers
    assert max(moved.values()) < sum(moved.values()) * 0.9
    table.set_health(down, True)  # it gets its own keys back
    assert [balancer.select_index(k) for k in keys] == before


@pytest.mark.parametrize("algo", KEYED)
@pytest.mark.parametrize(("n", "down"), [(5, 2), (8, 0), (12, 11), (20, 7)])
@pytest.mark.parametrize("hot", [False, True])
def test_bounded_load_with_a_peer_down(algo: str, n: int, down: int, hot: bool) -> None:
    factor = 1.25
    table = PeerTable(n)
    balancer = make(algo, [1] * n, table=table, factor=factor)
    table.set_health(down, False)
    live = n - 1
    batch = 400 * live  # average 400 per live peer, so factor * average is a whole number
    keys = [KEYS[0]] * batch if hot else KEYS[:batch]
    for k in keys:
        i = balancer.select_index(k)
        assert i >= 0 and i != down
        balancer.start(i)
    active = balancer.in_flight()
    assert active[down] == 0
    assert isinstance(balancer, HashBalancer)
    assert sum(active) == batch == balancer.total_active
    average = batch / live
    assert max(active) <= factor * average
    if hot:  # one key: its load is spread, not all on one peer
        assert sum(1 for a in active if a > 0) >= 2


# -- 5. max_conns -------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_max_conns_skips_full_peers_and_zero_means_no_limit(algo: str) -> None:
    table = PeerTable(3)
    balancer = make(algo, [1, 1, 1], table=table, max_conns=[1, 1, 0])
    balancer.start(0)  # peer 0 is at its limit
    got = picks(balancer)
    assert 0 not in got and set(got) <= {1, 2}
    balancer.start(1)  # so is peer 1
    for k in KEYS[:300]:  # peer 2 has no limit: never full
        assert balancer.select_index(k) == 2
        balancer.start(2)
    assert balancer.in_flight() == [1, 1, 300]
    balancer.finish(0)
    got = picks(balancer)
    assert set(got) <= {0, 2} and 0 in got
    if algo == "least_conn":
        assert set(got) == {0}  # the idle one


@pytest.mark.parametrize("algo", ALGOS)
def test_all_usable_peers_full_gives_all_busy(algo: str) -> None:
    table = PeerTable(3)
    balancer = make(algo, [1, 1, 1], table=table, max_conns=[1, 1, 0])
    table.set_health(2, False)  # the unlimited peer is down
    balancer.start(0)
    balancer.start(1)
    assert set(picks(balancer, KEYS[:300])) == {ALL_BUSY}
    assert balancer.select_other(KEYS[0], []) == NO_PEER
    assert balancer.pick() is None
    balancer.finish(1)  # room again
    assert set(picks(balancer, KEYS[:300])) == {1}
    balancer.start(1)
    table.set_health(2, True)
    assert set(picks(balancer, KEYS[:300])) == {2}
    # A peer with room that is down does not count: none usable is NO_PEER, not ALL_BUSY.
    for slot in range(3):
        table.set_health(slot, False)
    assert balancer.select_index(KEYS[0]) == NO_PEER


@pytest.mark.parametrize("algo", ALGOS)
def test_max_conns_counts_requests_on_a_peer_that_was_down(algo: str) -> None:
    table = PeerTable(2)
    balancer = make(algo, [1, 1], table=table, max_conns=[2, 2])
    balancer.start(0)
    balancer.start(0)
    table.set_health(0, False)
    table.set_health(0, True)  # still two in flight: still full
    assert set(picks(balancer, KEYS[:200])) == {1}


@pytest.mark.parametrize("algo", KEYED)
def test_a_full_keyed_peer_hands_over_to_the_next_live_peer_in_order(algo: str) -> None:
    table = PeerTable(4)
    balancer = make(algo, [1, 1, 1, 1], table=table, max_conns=[1, 1, 1, 1])
    key0, key3 = key_for(balancer, 0), key_for(balancer, 3)
    balancer.start(0)
    assert balancer.select_index(key0) == 1
    table.set_health(1, False)
    assert balancer.select_index(key0) == 2  # the next *live* peer with room
    balancer.start(3)
    assert balancer.select_index(key3) == 2  # wraps around: 0 is full, 1 is down
    balancer.start(2)
    assert balancer.select_index(key3) == ALL_BUSY
    balancer.finish(0)
    assert balancer.select_index(key3) == 0


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("max_conns", [[1], [1, 1, 1], [0, -1]])
def test_bad_max_conns_are_refused(algo: str, max_conns: list[int]) -> None:
    with pytest.raises(ValueError):
        make(algo, [1, 1], max_conns=max_conns)


# -- 6. select_other (retries) ------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS)
def test_select_other_never_returns_a_tried_or_unusable_peer(algo: str) -> None:
    table = PeerTable(5)
    balancer = make(algo, [1, 2, 1, 3, 1], table=table, max_conns=[0, 0, 0, 0, 1])
    table.set_health(3, False)
    balancer.start(4)  # full
    usable = {0, 1, 2}
    rng = random.Random(5)
    for k in KEYS[:2_000]:
        tried = {j for j in range(5) if rng.random() < 0.4}
        got = balancer.select_other(k, tried)
        if usable <= tried:
            assert got == NO_PEER
        else:
            assert got in usable - tried
    for k in KEYS[:100]:
        assert balancer.select_other(k, [0, 1, 2]) == NO_PEER
        assert balancer.select_other(k, (2, 0, 1, 3, 4)) == NO_PEER
        assert balancer.select_other(k, [0, 1]) == 2
        assert balancer.select_other(k, [1, 2]) == 0


@pytest.mark.parametrize("algo", ALGOS)
def test_select_other_spreads_over_the_untried_peers(algo: str) -> None:
    balancer = make(algo, [1, 1, 1, 1])
    got = Counter(balancer.select_other(k, [0]) for k in KEYS[:4_000])
    assert set(got) == {1, 2, 3}


@pytest.mark.parametrize("algo", KEYED)
def test_select_other_keeps_the_keys_peer_when_not_tried(algo: str) -> None:
    table = PeerTable(6)
    balancer = make(algo, [1, 2, 1, 1, 3, 1], table=table)
    table.set_health(5, False)
    for k in KEYS[:3_000]:
        own = balancer.select_index(k)
        assert balancer.select_other(k, []) == own
        assert balancer.select_other(k, [j for j in range(6) if j != own]) == own
        other = balancer.select_other(k, [own])
        assert other not in (own, 5) and other >= 0


# -- 7. slow start ------------------------------------------------------------------------


def ramp_bounds(full: int, up_for: float) -> tuple[int, int]:
    """The weight of a peer `up_for` seconds after its return, as the last rebuild
    (at most 50 ms ago, plus slack for a slow machine) computed it."""

    def at(since: float) -> int:
        if since >= SLOW:
            return full
        step = max(0, math.floor(since * RAMP_SCALE / SLOW))
        return max(1, full * (step + 1) // RAMP_SCALE)

    return at(up_for - 0.08) - 1, at(up_for) + 1


@pytest.mark.parametrize("algo", UNKEYED)
def test_slow_start_ramps_a_returning_peer_up(algo: str) -> None:
    weights = [1, 2, 1]
    table = PeerTable(3)
    balancer = make(algo, weights, table=table, slow_start=SLOW)
    full = full_weights(weights, algo, SLOW)
    assert balancer.current_weights() == full  # at startup: no ramp
    balancer.select_index()
    assert balancer.current_weights() == full
    assert table.set_health(1, True) is False  # up already: not a return, no ramp
    balancer.select_index()
    assert balancer.current_weights() == full

    table.set_health(1, False)
    balancer.select_index()
    assert balancer.current_weights() == [full[0], 0, full[2]]
    table.set_health(1, True)
    balancer.select_index()
    first = balancer.current_weights()
    assert first[0] == full[0] and first[2] == full[2]  # the others keep theirs
    assert 1 <= first[1] <= full[1] // 10

    seen = [first[1]]
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        time.sleep(0.07)
        balancer.select_index()
        current = balancer.current_weights()
        up_for = table.state(1)["up_for"]
        assert current[0] == full[0] and current[2] == full[2]
        low, high = ramp_bounds(full[1], up_for)
        assert low <= current[1] <= high, (up_for, current)
        seen.append(current[1])
        if up_for > SLOW + 0.06:
            break
    assert seen == sorted(seen)  # it only grows (each sample is checked against the clock)
    assert seen[0] < seen[-1] == full[1]


@pytest.mark.parametrize("algo", ["round_robin", "random", "p2c"])
def test_a_ramping_peer_gets_clearly_fewer_picks(algo: str) -> None:
    table = PeerTable(2)
    balancer = make(algo, [1, 1], table=table, slow_start=SLOW)
    table.set_health(1, False)
    balancer.select_index()
    table.set_health(1, True)
    early = Counter(balancer.select_index() for _ in range(2_000))  # a few ms into the ramp
    assert early[0] + early[1] == 2_000
    assert 1 <= early[1] < 0.15 * 2_000
    time.sleep(SLOW + 0.06)
    late = Counter(balancer.select_index() for _ in range(2_000))
    assert late[1] == pytest.approx(1_000, abs=100)


@pytest.mark.parametrize("algo", UNKEYED)
def test_slow_start_after_a_passed_probe(algo: str) -> None:
    weights = [1, 1]
    table = PeerTable(2)
    balancer = make(algo, weights, table=table, slow_start=SLOW, eject=(1, 0.05, 1.0))
    full = full_weights(weights, algo, SLOW)
    balancer.outcome(1, False)
    balancer.select_index()
    assert balancer.current_weights() == [full[0], 0]
    time.sleep(0.07)
    balancer.select_index()
    assert balancer.current_weights() == full  # on probation: back, not yet forgiven
    balancer.outcome(1, True)  # the probe passed: it returns, and ramps up
    assert table.state(1)["ejections"] == 0
    balancer.select_index()
    assert 1 <= balancer.current_weights()[1] <= full[1] // 10


@pytest.mark.parametrize("algo", UNKEYED)
def test_slow_start_off_means_full_weight_at_once(algo: str) -> None:
    table = PeerTable(2)
    balancer = make(algo, [2, 3], table=table)
    table.set_health(0, False)
    balancer.select_index()
    table.set_health(0, True)
    balancer.select_index()
    assert balancer.current_weights() == [2, 3]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("slow_start", [-1.0, math.nan])
def test_bad_slow_start_is_refused(algo: str, slow_start: float) -> None:
    with pytest.raises(ValueError):
        make(algo, [1, 1], slow_start=slow_start)


# Ring and Maglev do not ramp (and do not scale their weights) with slow_start > 0.
# (Once they did: the base __cinit__ asked a cdef method that the subclass's
# override had not replaced yet.)
@pytest.mark.parametrize("algo", KEYED)
def test_hashing_balancers_do_not_ramp(algo: str) -> None:
    weights = [1, 2, 1]
    table = PeerTable(3)
    balancer = make(algo, weights, table=table, slow_start=SLOW)
    balancer.select_index(KEYS[0])
    assert balancer.current_weights() == weights
    table.set_health(1, False)
    balancer.select_index(KEYS[0])
    table.set_health(1, True)
    balancer.select_index(KEYS[0])
    assert balancer.current_weights() == weights  # full at once


# Same cause: with slow_start > 0 a Ring had RAMP_SCALE times the points and Maglev a
# table 100 times larger, so keys mapped differently than without slow_start.
@pytest.mark.parametrize("algo", KEYED)
def test_slow_start_does_not_change_the_hash_layout(algo: str) -> None:
    weights = [1, 2, 1]
    options: dict[str, Any] = {"vnodes": 10} if algo == "ring" else {}
    plain = make(algo, weights, **options)
    ramped = make(algo, weights, slow_start=SLOW, **options)
    if isinstance(plain, Ring):
        assert isinstance(ramped, Ring)
        assert len(ramped.points()) == len(plain.points()) == 10 * sum(weights)
    else:
        assert isinstance(plain, Maglev) and isinstance(ramped, Maglev)
        assert ramped.table_size == plain.table_size
    assert [ramped.select_index(k) for k in FEW_KEYS] == [plain.select_index(k)
                                                          for k in FEW_KEYS]


# -- 8. passive checks: ejection ----------------------------------------------------------


def chosen(balancer: Balancer, algo: str) -> set[int]:
    return set(spread(balancer, algo, FEW_KEYS))


@pytest.mark.parametrize("algo", ALGOS)
def test_ejection_after_failures_in_a_row(algo: str) -> None:
    table = PeerTable(4)
    balancer = make(algo, [1, 1, 1], table=table, slots=[3, 0, 2], eject=(3, 0.2, 1.0))
    # Two failures and a success: the count starts again.
    balancer.outcome(1, False)
    balancer.outcome(1, False)
    balancer.outcome(1, True)
    balancer.outcome(1, False)
    balancer.outcome(1, False)
    assert table.state(0)["ejections"] == 0
    assert chosen(balancer, algo) == {0, 1, 2}

    balancer.outcome(1, False)  # the third in a row
    state = table.state(0)
    assert state["ejections"] == 1
    assert 0.15 < state["ejected_for"] <= 0.2
    assert chosen(balancer, algo) == {0, 2}
    assert balancer.live == 2
    assert balancer.current_weights() == [1, 0, 1]

    for _ in range(5):  # answers to requests sent before the ejection: not counted
        balancer.outcome(1, False)
    later = table.state(0)
    assert later["ejections"] == 1
    assert later["ejected_for"] <= state["ejected_for"]

    assert wait_until(lambda: table.state(0)["ejected_for"] == 0.0, timeout=1.0)
    assert chosen(balancer, algo) == {0, 1, 2}  # on probation: chosen again
    assert table.state(0)["ejections"] == 1

    balancer.outcome(1, False)  # one failure on probation: ejected again, twice as long
    state = table.state(0)
    assert state["ejections"] == 2
    assert 0.35 < state["ejected_for"] <= 0.4
    assert chosen(balancer, algo) == {0, 2}

    # The active checks take it down and back up: the ejection is over.
    table.set_health(0, False)
    table.set_health(0, True)
    assert table.state(0)["ejections"] == 0
    assert table.state(0)["ejected_for"] == 0.0
    assert chosen(balancer, algo) == {0, 1, 2}
    balancer.outcome(1, False)  # not on probation any more: one failure is not enough
    balancer.outcome(1, False)
    assert table.state(0)["ejections"] == 0


@pytest.mark.parametrize("algo", ALGOS)
def test_a_success_on_probation_forgives(algo: str) -> None:
    table = PeerTable(3)
    balancer = make(algo, [1, 1, 1], table=table, eject=(3, 0.05, 1.0))
    for _ in range(3):
        balancer.outcome(2, False)
    assert table.state(2)["ejections"] == 1
    assert wait_until(lambda: table.state(2)["ejected_for"] == 0.0, timeout=1.0)
    assert 2 in chosen(balancer, algo)
    balancer.outcome(2, True)  # the probe passed
    assert table.state(2)["ejections"] == 0
    balancer.outcome(2, False)  # forgiven: one failure does not eject
    balancer.outcome(2, False)
    assert table.state(2)["ejections"] == 0
    assert 2 in chosen(balancer, algo)
    balancer.outcome(2, False)  # three do, for the first time again (not doubled)
    state = table.state(2)
    assert state["ejections"] == 1
    assert 0.03 < state["ejected_for"] <= 0.05


@pytest.mark.parametrize("algo", ALGOS)
def test_ejections_double_up_to_max_time(algo: str) -> None:
    table = PeerTable(2)
    balancer = make(algo, [1, 1], table=table, eject=(1, 0.025, 0.09))
    spans = []
    for _ in range(5):
        balancer.outcome(0, False)
        spans.append(table.state(0)["ejected_for"])
        assert chosen(balancer, algo) == {1}
        assert wait_until(lambda: table.state(0)["ejected_for"] == 0.0, timeout=1.0)
        assert 0 in chosen(balancer, algo)
    assert table.state(0)["ejections"] == 5
    for got, want in zip(spans, [0.025, 0.05, 0.09, 0.09, 0.09], strict=True):
        assert want - 0.02 < got <= want


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("eject", [None, (0, 0.0, 0.0), (0, 1.0, 2.0)])
def test_no_ejection_when_failures_is_zero(algo: str, eject: Any) -> None:
    table = PeerTable(2)
    balancer = make(algo, [1, 1], table=table, eject=eject)
    for _ in range(100):
        balancer.outcome(0, False)
    assert table.state(0) == {"up": True, "ejections": 0, "ejected_for": 0.0, "up_for": None,
                              "admin": "enabled"}
    assert chosen(balancer, algo) == {0, 1}


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("eject", [(-1, 1.0, 1.0), (3, 0.0, 1.0), (3, 2.0, 1.0), (3, -1.0, 1.0)])
def test_bad_eject_is_refused(algo: str, eject: tuple[int, float, float]) -> None:
    with pytest.raises(ValueError):
        make(algo, [1, 1], eject=eject)


@pytest.mark.parametrize("algo", ALGOS)
def test_failures_are_counted_per_peer(algo: str) -> None:
    table = PeerTable(3)
    balancer = make(algo, [1, 1, 1], table=table, eject=(3, 5.0, 5.0))
    for _ in range(2):
        balancer.outcome(0, False)
        balancer.outcome(1, False)
    balancer.outcome(2, True)
    assert [table.state(i)["ejections"] for i in range(3)] == [0, 0, 0]
    balancer.outcome(0, False)
    assert [table.state(i)["ejections"] for i in range(3)] == [1, 0, 0]
    assert chosen(balancer, algo) == {1, 2}


# A success reported while the peer is still ejected (the answer to a request sent
# before the ejection) does not forgive it: only the probe after the ejection does
# (the docs: "When that time is over, one request probes it: if it succeeds the
# server is forgiven").
@pytest.mark.parametrize("algo", ALGOS)
def test_a_success_while_ejected_does_not_forgive(algo: str) -> None:
    table = PeerTable(2)
    balancer = make(algo, [1, 1], table=table, eject=(3, 0.05, 1.0))
    for _ in range(3):
        balancer.outcome(0, False)
    assert table.state(0)["ejections"] == 1
    balancer.outcome(0, True)  # a late answer to a request sent before the ejection
    assert table.state(0)["ejections"] == 1
    assert table.state(0)["up_for"] is None  # it has not returned: no slow start yet
    assert wait_until(lambda: table.state(0)["ejected_for"] == 0.0, timeout=1.0)
    balancer.outcome(0, False)  # the probe fails: ejected again, twice as long
    state = table.state(0)
    assert state["ejections"] == 2
    assert 0.08 < state["ejected_for"] <= 0.1


# -- 9. random scripts against a plain model ----------------------------------------------


class Model:
    """What the shared state and the balancer should say: usability, in flight."""

    def __init__(self, n: int, max_conns: list[int], failures: int) -> None:
        self.up = [True] * n
        self.ejected = [False] * n  # the ejections of the property test never end
        self.ejections = [0] * n
        self.fails = [0] * n
        self.active = [0] * n
        self.max_conns = max_conns
        self.failures = failures

    def usable(self) -> list[int]:
        return [i for i in range(len(self.up)) if self.up[i] and not self.ejected[i]]

    def room(self, i: int) -> bool:
        return self.max_conns[i] == 0 or self.active[i] < self.max_conns[i]

    def set_health(self, i: int, up: bool) -> bool:
        if self.up[i] == up:
            return False
        self.up[i] = up
        if up:
            self.ejected[i] = False
            self.ejections[i] = 0
        return True

    def outcome(self, i: int, ok: bool) -> None:
        if ok:
            self.fails[i] = 0
            return
        if self.failures == 0 or self.ejected[i]:
            return
        self.fails[i] += 1
        if self.fails[i] >= self.failures or self.ejections[i]:
            self.fails[i] = 0
            self.ejections[i] += 1
            self.ejected[i] = True


PEER = st.integers(0, 5)  # taken modulo the number of peers
OPS = st.lists(st.one_of(
    st.tuples(st.just("health"), PEER, st.booleans()),
    st.tuples(st.just("start"), PEER),
    st.tuples(st.just("finish"), PEER),
    st.tuples(st.just("outcome"), PEER, st.booleans()),
    st.tuples(st.just("pick"), st.integers(0, 2**64 - 1), st.booleans()),
    st.tuples(st.just("pick"), st.integers(0, 2**64 - 1), st.booleans()),
    st.tuples(st.just("other"), st.integers(0, 2**64 - 1), st.sets(PEER, max_size=6)),
), max_size=60)


@pytest.mark.parametrize("algo", ALGOS)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), script=OPS)
def test_random_scripts_match_the_model(algo: str, data: st.DataObject,
                                        script: list[tuple[Any, ...]]) -> None:
    n = data.draw(st.integers(1, 6), label="n")
    weights = data.draw(st.lists(st.integers(1, 4), min_size=n, max_size=n), label="weights")
    max_conns = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="max_conns")
    failures = data.draw(st.integers(0, 3), label="failures")
    size = n + data.draw(st.integers(0, 3), label="spare slots")
    slots = data.draw(st.permutations(range(size)), label="slots")[:n]
    options: dict[str, Any] = {"max_conns": max_conns,
                               "eject": (failures, 60.0, 60.0) if failures else None}
    factor = 0.0
    if algo == "ring":
        options["vnodes"] = 20
    if algo == "maglev":
        options["table_size"] = 1009
    if algo in KEYED:
        factor = data.draw(st.sampled_from([0.0, 1.25, 2.0]), label="factor")
        options["factor"] = factor
    if algo in UNKEYED:
        options["slow_start"] = data.draw(st.sampled_from([0.0, 30.0]), label="slow_start")
    table = PeerTable(size)
    balancer = make(algo, weights, table=table, slots=slots, **options)
    # The keyed algorithms' own choice, from a twin that never changes.
    twin = make(algo, weights, **{k: v for k, v in options.items() if k in ("vnodes",
                                                                            "table_size")})
    model = Model(n, max_conns, failures)

    for op in script:
        kind = op[0]
        if kind == "health":
            i = op[1] % n
            assert table.set_health(slots[i], op[2]) is model.set_health(i, op[2])
        elif kind == "start":
            balancer.start(op[1] % n)
            model.active[op[1] % n] += 1
        elif kind == "finish":
            i = op[1] % n
            balancer.finish(i, 0.01)
            model.active[i] = max(0, model.active[i] - 1)
        elif kind == "outcome":
            i = op[1] % n
            balancer.outcome(i, op[2])
            model.outcome(i, op[2])
        elif kind == "pick":
            got = balancer.select_index(op[1])
            usable = model.usable()
            with_room = [i for i in usable if model.room(i)]
            assert balancer.live == len(usable)
            if not usable:
                assert got == NO_PEER
            elif not with_room:
                assert got == ALL_BUSY
            else:
                assert got in with_room
                own = twin.select_index(op[1])
                if algo in KEYED and factor == 0.0 and own in with_room:
                    assert got == own  # the key keeps its peer while it can take it
                if op[2]:
                    balancer.start(got)
                    model.active[got] += 1
        else:
            tried = {p % n for p in op[2]}
            got = balancer.select_other(op[1], tried)
            candidates = [i for i in model.usable() if model.room(i) and i not in tried]
            if candidates:
                assert got in candidates
            else:
                assert got == NO_PEER
        assert balancer.in_flight() == model.active
        for i in range(n):
            state = table.state(slots[i])
            assert state["up"] == model.up[i]
            assert (state["ejected_for"] > 0) == model.ejected[i]
        if isinstance(balancer, HashBalancer):
            assert balancer.total_active == sum(model.active)


# -- 10. retry budget ---------------------------------------------------------------------


def test_retry_budget_bounds_retries_to_the_ratio() -> None:
    budget = RetryBudget(0.2, 10.0)
    assert budget.tokens == 10.0
    assert sum(budget.take_retry() for _ in range(50)) == 10  # the initial burst
    assert budget.take_retry() is False
    allowed = 0
    for _ in range(1000):
        budget.add_request()
        while budget.take_retry():  # retry as often as allowed
            allowed += 1
    assert 195 <= allowed <= 200


def test_retry_budget_ratio_zero_never_retries() -> None:
    budget = RetryBudget(0.0, 10.0)
    assert budget.tokens == 0.0
    for _ in range(1000):
        budget.add_request()
        assert budget.take_retry() is False


def test_retry_budget_holds_at_most_its_capacity() -> None:
    budget = RetryBudget(1.0, 5.0)
    for _ in range(100):
        budget.add_request()
    assert budget.tokens == 5.0
    assert sum(budget.take_retry() for _ in range(100)) == 5
    budget.add_request()
    assert budget.take_retry() is True
    assert budget.take_retry() is False
    default = RetryBudget(0.5)
    assert default.capacity == 10.0
    assert sum(default.take_retry() for _ in range(20)) == 10


@pytest.mark.parametrize(("ratio", "capacity"), [(-0.1, 10.0), (1.5, 10.0), (0.2, 0.5),
                                                 (math.nan, 10.0), (0.2, math.nan)])
def test_retry_budget_refuses_bad_values(ratio: float, capacity: float) -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio, capacity)


# -- the module's interface ---------------------------------------------------------------



@pytest.mark.parametrize("algo", ALGOS)
def test_drained_and_disabled_servers_get_no_new_requests(algo: str) -> None:
    table = PeerTable(3)
    balancer = make(algo, [1, 1, 1], table=table)
    assert chosen(balancer, algo) == {0, 1, 2}
    assert table.set_admin(0, "drain") and table.set_admin(2, "disabled")
    assert not table.set_admin(2, "disabled")  # no change
    assert chosen(balancer, algo) == {1}
    assert table.state(0)["admin"] == "drain" and table.state(0)["up"]
    table.set_admin(1, "drain")
    assert set(picks(balancer, KEYS[:200])) == {NO_PEER}
    for i in range(3):
        table.set_admin(i, "enabled")
    assert chosen(balancer, algo) == {0, 1, 2}
    with pytest.raises(ValueError):
        table.set_admin(0, "maintenance")
