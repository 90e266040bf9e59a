"""Micro benchmarks of load-balancer selection (fastproxy._balance): one pick() per op."""

from __future__ import annotations

import pytest

from fastproxy._balance import RoundRobin


@pytest.mark.parametrize("weights", [[1], [1, 1, 1], [5, 3, 1, 1, 1, 1, 1, 1]],
                         ids=["1-peer", "3-peers", "8-peers-weighted"])
def test_round_robin_pick(timed, weights):
    rr = RoundRobin(list(range(len(weights))), weights)
    assert timed(rr.pick) in range(len(weights))
