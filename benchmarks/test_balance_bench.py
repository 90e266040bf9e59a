"""Micro benchmarks of load-balancer selection (fastproxy._balance): one pick() per op."""

from __future__ import annotations

import pytest

from fastproxy._balance import P2C, Ewma, LeastConn, Random, RoundRobin


@pytest.mark.parametrize("weights", [[1], [1, 1, 1], [5, 3, 1, 1, 1, 1, 1, 1]],
                         ids=["1-peer", "3-peers", "8-peers-weighted"])
def test_round_robin_pick(timed, weights):
    rr = RoundRobin(list(range(len(weights))), weights)
    assert timed(rr.pick) in range(len(weights))


# select_index() is the def wrapper the tests use: each op is one Python call (tens
# of ns) around the C select() the proxy calls directly. The in-flight counts are
# static and uneven (i % 7) so that least_conn/p2c/ewma compare real differences.

ALGORITHMS = {
    "round_robin": lambda peers: RoundRobin(peers),
    "least_conn": lambda peers: LeastConn(peers),
    "random": lambda peers: Random(peers, [1 + i % 3 for i in range(len(peers))]),
    "p2c": lambda peers: P2C(peers, [1 + i % 3 for i in range(len(peers))]),
    "ewma": lambda peers: Ewma(peers),
}


@pytest.mark.parametrize("size", [10, 100, 1000])
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_select_index(timed, algorithm, size):
    balancer = ALGORITHMS[algorithm](list(range(size)))
    for i in range(size):
        for _ in range(1 + i % 7):
            balancer.start(i)
    assert timed(balancer.select_index) in range(size)


# Degraded: a tenth of the peers down (their weight 0 after the first pick rebuilt
# the view), and, for the ramp, one peer in slow start, which makes every pick
# read the clock and rebuild the weights every 50 ms.

@pytest.mark.parametrize("size", [10, 100, 1000])
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_select_index_some_down(timed, algorithm, size):
    balancer = ALGORITHMS[algorithm](list(range(size)))
    for i in range(0, size, 10):
        balancer.table.set_health(i, False)
    for i in range(size):
        for _ in range(1 + i % 7):
            balancer.start(i)
    assert timed(balancer.select_index) % 10 != 0


@pytest.mark.parametrize("algorithm", ["round_robin", "least_conn", "p2c"])
def test_select_index_slow_start(timed, algorithm):
    peers = list(range(100))
    balancer = type(ALGORITHMS[algorithm](peers))(peers, slow_start=3600.0)
    balancer.table.set_health(5, False)
    balancer.table.set_health(5, True)  # ramping up for the next hour
    assert timed(balancer.select_index) in range(100)
