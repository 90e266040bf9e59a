"""Fixtures for the micro benchmarks.

The benchmarks live outside `tests/` (pyproject's `testpaths`), so a plain
`pytest` or `pytest tests` never collects them; run them with
`python -m pytest benchmarks --benchmark-only`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from bench_messages import CountingHandler

ROUND_SECONDS = 20e-6  # each timed round makes enough calls to last about this long
TOTAL_SECONDS = 0.8  # and there are enough rounds to take about this long


@pytest.fixture
def handler() -> CountingHandler:
    return CountingHandler()


@pytest.fixture
def timed(benchmark: Any) -> Callable[[Callable[[], Any]], Any]:
    """benchmark.pedantic with several calls per round.

    With one call per round (what plain `benchmark(fn)` picks for sub-microsecond
    functions) the timer's own cost, tens of nanoseconds, is a good part of the
    figure. Returns what `fn` returned.
    """

    def run(fn: Callable[[], Any]) -> Any:
        calls = 200
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call = max((time.perf_counter() - start) / calls, 1e-8)
        iterations = max(1, math.ceil(ROUND_SECONDS / per_call))
        rounds = min(20000, max(50, int(TOTAL_SECONDS / (per_call * iterations))))
        return benchmark.pedantic(fn, iterations=iterations, rounds=rounds, warmup_rounds=5)

    return run
