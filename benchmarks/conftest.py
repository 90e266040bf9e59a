"""Shared inputs for the micro benchmarks: typical messages and a minimal parser handler.

The benchmarks live outside `tests/` (pyproject's `testpaths`), so a plain
`pytest` or `pytest tests` never collects them; run them with
`python -m pytest benchmarks --benchmark-only`.
"""

from __future__ import annotations

import pytest

from bench_messages import CountingHandler


@pytest.fixture
def handler() -> CountingHandler:
    return CountingHandler()
