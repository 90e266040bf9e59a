"""The dashboard's sampler and its math, against simple models: quantiles from
histogram buckets against a sorted list of the observations' bucket positions,
per-second differences of real shared counters (`_stats.Stats`), windows summed
in steps, and the query string of /api/stats."""

from __future__ import annotations

import bisect
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy import metrics
from fastproxy._stats import Stats
from fastproxy.dashboard import MAX_POINTS, Sampler, parse_window, quantile

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def buckets_of(values: list[float], bounds: tuple[float, ...] = BOUNDS) -> list[int]:
    out = [0] * (len(bounds) + 1)
    for v in values:
        out[bisect.bisect_left(bounds, v)] += 1  # v <= bound: that bucket
    return out


def test_quantile_interpolates_within_the_bucket() -> None:
    # 10 observations in (0.01, 0.1]: the median is half way through that bucket.
    assert quantile(0.5, [0, 0, 10, 0, 0], BOUNDS) == pytest.approx(0.055)
    # 1 in the first bucket, 3 in the second: rank 2 of 4 is 1/3 into the second.
    assert quantile(0.5, [1, 3, 0, 0, 0], BOUNDS) == pytest.approx(0.001 + 0.009 / 3)
    # The first bucket starts at 0.
    assert quantile(0.5, [4, 0, 0, 0, 0], BOUNDS) == pytest.approx(0.0005)
    # In the +Inf bucket: the highest finite bound, as histogram_quantile does.
    assert quantile(0.99, [0, 0, 0, 1, 99], BOUNDS) == 1.0
    assert quantile(0.5, [0, 0, 0, 0, 0], BOUNDS) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200),
       st.sampled_from([0.5, 0.9, 0.95, 0.99, 1.0]))
def test_quantile_lies_in_the_bucket_of_the_true_quantile(values: list[float],
                                                           q: float) -> None:
    """Model: sort the observations, take the one at rank ceil(q*n); the estimate
    lies within that observation's bucket (capped at the highest bound)."""
    counts = buckets_of(values)
    estimate = quantile(q, counts, BOUNDS)
    assert estimate is not None
    ordered = sorted(values)
    rank = max(1, -(-q * len(values) // 1))
    true = ordered[int(rank) - 1]
    k = bisect.bisect_left(BOUNDS, true)
    lower = 0.0 if k == 0 else BOUNDS[k - 1]
    upper = BOUNDS[k] if k < len(BOUNDS) else BOUNDS[-1]
    if k == len(BOUNDS):
        lower = BOUNDS[-1]
    assert lower - 1e-12 <= estimate <= upper + 1e-12, (values, q, estimate, true)


def make(routes: tuple[str, ...] = ("api", "web"), upstreams: tuple[str, ...] = ("app",),
         caches: tuple[str, ...] = ("c",)) -> tuple[Stats, metrics.Layout]:
    """Real shared counters and a layout made the way metrics.Layout.of makes one."""
    registry = metrics.Registry(4096, BOUNDS)
    hist = len(BOUNDS) + 3
    layout = metrics.Layout(buckets=BOUNDS, histogram=hist)
    layout.instance = registry.series(("instance",), len(metrics.INSTANCE))
    for r in routes:
        layout.routes[r] = registry.series(("route", r), metrics.ROUTE_COUNTS + hist)
    for u in upstreams:
        layout.upstreams[u] = registry.series(("upstream", u), metrics.UPSTREAM_COUNTS + hist)
        layout.servers[(u, "127.0.0.1:1")] = registry.series(("server", u), 3)
    for c in caches:
        layout.caches[c] = registry.series(("cache", c), len(metrics.CACHE_RESULTS))
    stats = Stats(4096, 3, metrics.bounds_us(BOUNDS))
    return stats, layout


def request(stats: Stats, layout: metrics.Layout, route: str, method: int, cls: int,
            seconds: float, sent: int) -> None:
    base = layout.routes[route]
    stats.add(base + method * 5 + cls)
    stats.observe_us(base + metrics.ROUTE_COUNTS, round(seconds * 1e6))
    stats.add(layout.instance + metrics.INSTANCE.index("bytes_sent"), sent)


def test_sampler_records_per_second_differences_of_the_counters() -> None:
    stats, layout = make()
    stats.use_block(1)
    sampler = Sampler(layout)
    assert sampler.sample(stats.totals(), now=1000.0) is None  # the starting point
    rng = random.Random(7)
    model: list[dict[str, Any]] = []
    for second in range(1, 121):
        sent = {"2xx": 0, "4xx": 0, "5xx": 0, "bytes": 0, "api": 0, "hit": 0, "miss": 0}
        for _ in range(rng.randrange(0, 20)):
            cls = rng.choice([1, 1, 1, 3, 4])
            route = rng.choice(["api", "web"])
            request(stats, layout, route, rng.randrange(8), cls, rng.uniform(0.0001, 0.5), 10)
            sent[metrics.CLASSES[cls]] += 1
            sent["bytes"] += 10
            sent["api"] += route == "api"
            hit = rng.random() < 0.7
            stats.add(layout.caches["c"] + (0 if hit else 1))
            sent["hit" if hit else "miss"] += 1
        limited = rng.randrange(3)
        stats.add(layout.instance + metrics.INSTANCE.index("rate_limited"), limited)
        sent["limited"] = limited
        sample = sampler.sample(stats.totals(), now=1000.0 + second)
        assert sample is not None
        assert sample.classes == [0, sent["2xx"], 0, sent["4xx"], sent["5xx"]]
        assert sample.bytes_out == sent["bytes"] and sample.limited == limited
        assert sum(sample.routes.get("api", [0])) == sent["api"]
        assert sum(sample.latency) == sum(sample.classes)
        model.append(sent)

    for window in (60, 100, 300):
        doc = sampler.report(window, now=1120.0)
        recent = model[-min(window, 120):]
        tot = doc["totals"]
        assert tot["requests"] == sum(m["2xx"] + m["4xx"] + m["5xx"] for m in recent)
        assert tot["by_class"]["2xx"] == sum(m["2xx"] for m in recent)
        assert tot["by_class"]["5xx"] == sum(m["5xx"] for m in recent)
        assert tot["bytes_out"] == sum(m["bytes"] for m in recent)
        assert tot["rate_limited"] == sum(m["limited"] for m in recent)
        hits, misses = sum(m["hit"] for m in recent), sum(m["miss"] for m in recent)
        assert tot["cache"]["hit"] == hits and tot["cache"]["miss"] == misses
        assert tot["cache"]["hit_ratio"] == round(hits / (hits + misses), 4)
        assert doc["covered"] == pytest.approx(min(window, 120))
        series = doc["series"]
        # Per-second rates times the step give back the counts.
        summed = sum(v * doc["step"] for v in series["requests_per_second"]["2xx"])
        assert summed == pytest.approx(tot["by_class"]["2xx"])
        assert len(series["t"]) <= MAX_POINTS
        assert {r["route"] for r in doc["routes"]} <= {"api", "web"}
        assert sum(r["requests"] for r in doc["routes"]) == tot["requests"]


def test_long_windows_are_summed_in_steps() -> None:
    stats, layout = make()
    stats.use_block(1)
    sampler = Sampler(layout)
    sampler.sample(stats.totals(), now=0.0)
    for second in range(1, 3601):
        request(stats, layout, "api", 0, 1, 0.005, 100)
        sampler.sample(stats.totals(), now=float(second))
    assert len(sampler.ring) == 3600
    doc = sampler.report(3600, now=3600.0)
    assert doc["step"] == 12 and len(doc["series"]["t"]) == 300
    assert doc["totals"]["requests"] == 3600
    assert all(v == pytest.approx(1.0) for v in doc["series"]["requests_per_second"]["2xx"])
    assert all(v == pytest.approx(100.0) for v in doc["series"]["bytes_out_per_second"])
    # All observations are 5 ms, in the (1 ms, 10 ms] bucket.
    p50 = doc["totals"]["latency_ms"]["p50"]
    assert 1.0 <= p50 <= 10.0
    # The ring forgets what is older than an hour.
    request(stats, layout, "api", 0, 1, 0.005, 100)
    sampler.sample(stats.totals(), now=3601.0)
    assert len(sampler.ring) == 3600 and sampler.ring[0].t == 2.0


def test_dead_worker_folded_into_block_zero_changes_nothing() -> None:
    """The master folds a dead worker's block into block 0: totals do not move,
    so the sampler sees no traffic that was not there (and never a negative)."""
    stats, layout = make()
    stats.use_block(2)
    sampler = Sampler(layout)
    request(stats, layout, "api", 0, 1, 0.005, 100)
    sampler.sample(stats.totals(), now=0.0)
    stats.retire(2, bytes(metrics.Registry(4096).gauges))
    sample = sampler.sample(stats.totals(), now=1.0)
    assert sample is not None and sum(sample.classes) == 0 and not sample.routes


def test_upstream_latency_and_servers_in_the_report() -> None:
    stats, layout = make()
    stats.use_block(1)
    sampler = Sampler(layout)
    sampler.sample(stats.totals(), now=0.0)
    base = layout.upstreams["app"]
    for ms in (2, 2, 2, 50):
        stats.add(base + 1)  # a 2xx response
        stats.observe_us(base + metrics.UPSTREAM_COUNTS, ms * 1000)
    stats.add(base + metrics.CLASSES.__len__())  # one failure
    server = layout.servers[("app", "127.0.0.1:1")]
    stats.add(server, 5)
    stats.add(server + 1, 1)
    stats.add(server + 2, 3)  # in flight (a gauge)
    sampler.sample(stats.totals(), now=1.0)
    doc = sampler.report(60, [{"name": "app", "servers": [
        {"address": "127.0.0.1:1", "health": "up", "admin": "enabled"}]}], now=1.0)
    [up] = doc["upstreams"]
    assert up["responses"] == 4 and up["failures"] == 1
    assert 1.0 <= up["latency_ms"]["p50"] <= 10.0
    assert 10.0 <= up["latency_ms"]["p99"] <= 100.0
    assert up["servers"] == [{"address": "127.0.0.1:1", "health": "up", "admin": "enabled",
                              "requests": 5, "failures": 1, "in_flight": 3}]
    assert doc["top"]["available"] is False


@pytest.mark.parametrize("query, seconds", [("", 300), ("window=60", 60),
                                            ("window=3600", 3600), ("window=10", 10)])
def test_window_parameter(query: str, seconds: int) -> None:
    assert parse_window(query) == seconds


@pytest.mark.parametrize("query, reason", [
    ("window=abc", "whole number"), ("window=-5", "whole number"), ("window=9", "between"),
    ("window=3601", "between"), ("window=60&window=300", "once"),
    ("span=60", "unknown parameter"), ("window=99999999999", "whole number")])
def test_bad_window_parameter(query: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_window(query)
