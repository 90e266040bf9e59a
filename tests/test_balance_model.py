"""The compiled balancer (_balance) against a simple reference model."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastproxy._balance import RoundRobin

# -- RoundRobin -------------------------------------------------------------------------


def ref_smooth_wrr(weights: list[int], n: int) -> list[int]:
    """nginx's smooth weighted round robin, written plainly."""
    current = [0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(n):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


def test_weighted_sequence_is_interleaved() -> None:
    rr = RoundRobin(["a", "b", "c"], [5, 1, 1])
    assert [rr.pick() for _ in range(7)] == ["a", "a", "b", "a", "c", "a", "a"]


def test_single_peer() -> None:
    rr = RoundRobin(["only"], [3])
    assert [rr.pick() for _ in range(3)] == ["only"] * 3
    assert rr.peers == ["only"]


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_round_robin_matches_reference(weights: list[int]) -> None:
    n = 3 * sum(weights)
    rr = RoundRobin(list(range(len(weights))), weights)
    got = [rr.pick() for _ in range(n)]
    assert got == ref_smooth_wrr(weights, n)
    assert Counter(got) == {i: 3 * w for i, w in enumerate(weights)}


@pytest.mark.parametrize(("peers", "weights"), [([], []), (["a"], []), (["a", "b"], [1]),
                                                (["a"], [0]), (["a"], [-1])])
def test_round_robin_refuses_bad_input(peers: list[str], weights: list[int]) -> None:
    with pytest.raises(ValueError):
        RoundRobin(peers, weights)
