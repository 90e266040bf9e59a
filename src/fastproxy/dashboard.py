"""The live dashboard's data: a sampler in the admin process that reads the shared
counters (`_stats.Stats.totals`) once a second and keeps the last hour of
per-second differences, and the JSON that ``GET /api/stats?window=SECONDS`` serves
from it.

Nothing here runs in a worker: the workers count for /metrics as they always do,
and a second's sample is what changed in the counters during that second. The
ring keeps only the series the dashboard shows (requests by status class, bytes,
cache results, WAF blocks, rate-limit refusals, requests per route, and the
latency histograms' bucket differences, by route summed and by upstream), so an
hour of samples is a few megabytes at most for a config of a few dozen routes.

Percentiles come from histogram buckets as Prometheus' histogram_quantile
computes them: find the bucket that holds the rank, interpolate linearly between
its bounds; a rank that falls in the last (+Inf) bucket is reported as the
highest finite bound.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastproxy.metrics import (
    CACHE_RESULTS,
    CLASSES,
    INSTANCE,
    METHODS,
    ROUTE_COUNTS,
    SERVER,
    Layout,
)

HISTORY = 3600  # seconds kept
WINDOWS = (60, 300, 3600)  # what the page offers; /api/stats takes any 10..HISTORY
MAX_POINTS = 300  # points per series in one answer: longer windows are summed in steps
TOP = 10  # routes, upstreams' entries... listed per answer

_BYTES_IN = INSTANCE.index("bytes_received")
_BYTES_OUT = INSTANCE.index("bytes_sent")
_WAF = INSTANCE.index("waf_blocked")
_LIMITED = INSTANCE.index("rate_limited")
_OPEN = INSTANCE.index("connections_open")
_IN_FLIGHT = SERVER.index("in_flight")


def quantile(q: float, buckets: Sequence[int], bounds: Sequence[float]) -> float | None:
    """The q-quantile (0..1) of a histogram: `buckets` are counts (not cumulative)
    of observations <= bounds[0], (bounds[0], bounds[1]], ..., > bounds[-1]
    (len(bounds) + 1 of them). None when it is empty."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for k, count in enumerate(buckets):
        if count and seen + count >= rank:
            if k >= len(bounds):
                return float(bounds[-1])
            lower = 0.0 if k == 0 else float(bounds[k - 1])
            return lower + (float(bounds[k]) - lower) * max(0.0, rank - seen) / count
        seen += count
    return float(bounds[-1])  # rank 0 after only empty buckets cannot happen; be safe


@dataclass(slots=True)
class Sample:
    """What changed during one second (or a sum of seconds)."""

    t: float
    seconds: float
    classes: list[int]  # requests by status class
    bytes_in: int
    bytes_out: int
    cache: list[int]  # by CACHE_RESULTS
    waf: int
    limited: int
    routes: dict[str, list[int]]  # route -> requests by status class (only routes with some)
    latency: list[int]  # request-duration buckets, all routes
    upstreams: dict[str, list[int]]  # upstream -> [2xx.., failures] + its duration buckets
    servers: dict[tuple[str, str], list[int]]  # (upstream, address) -> requests, failures

    @classmethod
    def empty(cls, t: float, nbuckets: int) -> Sample:
        return cls(t, 0.0, [0] * len(CLASSES), 0, 0, [0] * len(CACHE_RESULTS), 0, 0, {},
                   [0] * nbuckets, {}, {})

    def add(self, other: Sample) -> None:
        self.seconds += other.seconds
        self.t = max(self.t, other.t)
        _add(self.classes, other.classes)
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        _add(self.cache, other.cache)
        self.waf += other.waf
        self.limited += other.limited
        _add(self.latency, other.latency)
        _merge(self.routes, other.routes)
        _merge(self.upstreams, other.upstreams)
        _merge(self.servers, other.servers)


def _merge(into: dict[Any, list[int]], source: Mapping[Any, list[int]]) -> None:
    for key, values in source.items():
        mine = into.get(key)
        if mine is None:
            into[key] = list(values)
        else:
            _add(mine, values)


def _add(into: list[int], values: Sequence[int]) -> None:
    for i, v in enumerate(values):
        into[i] += v


class Sampler:
    """Per-second differences of the shared counters, for the last `history`
    seconds. `sample(totals)` is called once a second with `Stats.totals()`."""

    def __init__(self, layout: Layout, history: int = HISTORY) -> None:
        self.layout = layout
        self.bounds = tuple(layout.buckets)
        self.nbuckets = len(self.bounds) + 1
        self.ring: deque[Sample] = deque(maxlen=history)
        self.last: list[int] | None = None
        self.last_t = 0.0
        self.current: list[int] = []  # the newest totals (gauges are read from them)
        self.started = time.time()

    def sample(self, totals: list[int], now: float | None = None) -> Sample | None:
        """Record what changed since the previous call; the first call only sets
        the starting point. Returns the new sample (None on the first call)."""
        now = time.time() if now is None else now
        prev, self.last = self.last, totals
        prev_t, self.last_t = self.last_t, now
        self.current = totals
        if prev is None:
            return None

        def d(i: int) -> int:
            return max(0, totals[i] - prev[i]) if 0 <= i < len(totals) else 0

        layout = self.layout
        s = Sample.empty(now, self.nbuckets)
        s.seconds = max(0.001, now - prev_t)
        inst = layout.instance
        if inst >= 0:
            s.bytes_in, s.bytes_out = d(inst + _BYTES_IN), d(inst + _BYTES_OUT)
            s.waf, s.limited = d(inst + _WAF), d(inst + _LIMITED)
        ncls = len(CLASSES)
        for label, base in layout.routes.items():
            if base < 0:
                continue
            by_class = [sum(d(base + m * ncls + c) for m in range(len(METHODS)))
                        for c in range(ncls)]
            if any(by_class):
                s.routes[label] = by_class
                _add(s.classes, by_class)
                hist = base + ROUTE_COUNTS
                _add(s.latency, [d(hist + k) for k in range(self.nbuckets)])
        for name, base in layout.upstreams.items():
            if base < 0:
                continue
            values = [d(base + i) for i in range(ncls + 1 + self.nbuckets)]
            if any(values):
                s.upstreams[name] = values
        for key, base in layout.servers.items():
            if base >= 0:
                values = [d(base + SERVER.index("requests")), d(base + SERVER.index("failures"))]
                if any(values):
                    s.servers[key] = values
        for base in layout.caches.values():
            if base >= 0:
                _add(s.cache, [d(base + i) for i in range(len(CACHE_RESULTS))])
        self.ring.append(s)
        return s

    def gauge(self, index: int) -> int:
        return self.current[index] if 0 <= index < len(self.current) else 0

    # -- the answer ----------------------------------------------------------------

    def window(self, seconds: int, now: float | None = None) -> tuple[list[Sample], int]:
        """The samples of the last `seconds`, summed in steps so that there are at
        most MAX_POINTS of them: (points, step in seconds)."""
        now = time.time() if now is None else now
        step = max(1, -(-seconds // MAX_POINTS))
        start = now - seconds
        recent = [s for s in self.ring if s.t > start]
        points: list[Sample] = []
        last = -1
        for s in recent:
            # Step k holds the samples that end in (start + k*step, start + (k+1)*step].
            slot = math.ceil((s.t - start) / step) - 1
            if points and slot == last:
                points[-1].add(s)
            else:
                p = Sample.empty(s.t, self.nbuckets)
                p.add(s)
                points.append(p)
                last = slot
        return points, step

    def report(self, seconds: int, upstreams: Sequence[Mapping[str, Any]] = (),
               tops: Mapping[str, Any] | None = None, now: float | None = None
               ) -> dict[str, Any]:
        """The JSON document of /api/stats for the last `seconds`."""
        now = time.time() if now is None else now
        points, step = self.window(seconds, now)
        total = Sample.empty(now, self.nbuckets)
        for p in points:
            total.add(p)

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        def rate(value: int, p: Sample) -> float:
            return round(value / p.seconds, 3) if p.seconds else 0.0

        def pct(buckets: Sequence[int]) -> dict[str, float | None]:
            return {name: ms(quantile(q, buckets, self.bounds))
                    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}

        latencies = [pct(p.latency) for p in points]
        series: dict[str, Any] = {
            "t": [round(p.t, 3) for p in points],
            "requests_per_second": {c: [rate(p.classes[i], p) for p in points]
                                    for i, c in enumerate(CLASSES)},
            "bytes_in_per_second": [rate(p.bytes_in, p) for p in points],
            "bytes_out_per_second": [rate(p.bytes_out, p) for p in points],
            "latency_ms": {name: [lat[name] for lat in latencies]
                           for name in ("p50", "p95", "p99")},
            "cache_hit_ratio": [_ratio(p.cache) for p in points],
            "waf_blocked_per_second": [rate(p.waf, p) for p in points],
            "rate_limited_per_second": [rate(p.limited, p) for p in points],
        }
        ncls = len(CLASSES)
        routes = sorted(total.routes.items(), key=lambda item: (-sum(item[1]), item[0]))
        inst = self.layout.instance
        covered = round(sum(p.seconds for p in points), 3)
        requests = sum(total.classes)
        doc: dict[str, Any] = {
            "window": seconds,
            "step": step,
            "now": round(now, 3),
            "covered": covered,  # seconds of samples in the window (less after a start)
            "series": series,
            "totals": {
                "requests": requests,
                "requests_per_second": round(requests / covered, 3) if covered else 0.0,
                "by_class": dict(zip(CLASSES, total.classes, strict=True)),
                "bytes_in": total.bytes_in,
                "bytes_out": total.bytes_out,
                "cache": {**dict(zip(CACHE_RESULTS, total.cache, strict=True)),
                          "hit_ratio": _ratio(total.cache)},
                "waf_blocked": total.waf,
                "rate_limited": total.limited,
                "latency_ms": pct(total.latency),
                "connections_open": self.gauge(inst + _OPEN) if inst >= 0 else 0,
            },
            "routes": [{"route": label, "requests": sum(counts),
                        "by_class": dict(zip(CLASSES, counts, strict=True))}
                       for label, counts in routes[:TOP]],
        }
        out_upstreams = []
        for up in upstreams:
            name = up["name"]
            values = total.upstreams.get(name, [0] * (ncls + 1 + self.nbuckets))
            servers = []
            for server in up.get("servers", ()):
                counts = total.servers.get((name, server["address"]), [0, 0])
                base = self.layout.servers.get((name, server["address"]), -1)
                servers.append({**server, "requests": counts[0], "failures": counts[1],
                                "in_flight": self.gauge(base + _IN_FLIGHT) if base >= 0 else 0})
            out_upstreams.append({"name": name, "responses": sum(values[:ncls]),
                                  "failures": values[ncls],
                                  "latency_ms": pct(values[ncls + 1:]),
                                  "servers": servers})
        doc["upstreams"] = out_upstreams
        doc["top"] = dict(tops) if tops is not None else {
            "available": False, "paths": [], "clients": [], "user_agents": []}
        return doc


DIMENSIONS = ("paths", "clients", "user_agents")
TOPS_EVERY = 10.0  # seconds between the snapshots of the top lists that windows start at


def merge_notes(notes: Sequence[bytes]) -> dict[str, dict[str, int]]:
    """The workers' published top lists summed: {dimension: {key: count}}. A note
    that is not what a worker writes is skipped."""
    import json

    out: dict[str, dict[str, int]] = {d: {} for d in DIMENSIONS}
    for note in notes:
        if not note:
            continue
        try:
            doc = json.loads(note)
            for dim in DIMENSIONS:
                into = out[dim]
                for key, count, _error in doc.get(dim, ()):
                    into[key] = into.get(key, 0) + int(count)
        except (ValueError, TypeError, AttributeError):
            continue
    return out


class TopLists:
    """Windows over the workers' cumulative top lists: a snapshot every
    TOPS_EVERY seconds for the last hour; a window's counts are now's minus those
    of the newest snapshot at least that old (or, younger than the window, since
    the start). A worker that restarts starts its counts again: its keys' counts
    go down, which is counted as nothing, never as a negative."""

    def __init__(self, history: int = HISTORY) -> None:
        self.snapshots: deque[tuple[float, dict[str, dict[str, int]]]] = deque(
            maxlen=int(history / TOPS_EVERY) + 2)
        self.current: dict[str, dict[str, int]] = {d: {} for d in DIMENSIONS}
        self.seen = False

    def update(self, notes: Sequence[bytes], now: float) -> None:
        self.current = merge_notes(notes)
        self.seen = self.seen or any(notes)
        if not self.snapshots or now - self.snapshots[-1][0] >= TOPS_EVERY:
            self.snapshots.append((now, self.current))

    def window(self, seconds: int, now: float, top: int = TOP) -> dict[str, Any]:
        base: dict[str, dict[str, int]] = {d: {} for d in DIMENSIONS}
        for t, snap in self.snapshots:
            if t <= now - seconds:
                base = snap
            else:
                break
        out: dict[str, Any] = {"available": self.seen}
        for dim in DIMENSIONS:
            before = base[dim]
            counts = [(key, count - before.get(key, 0)) for key, count in self.current[dim].items()]
            counts = [c for c in counts if c[1] > 0]
            counts.sort(key=lambda c: (-c[1], c[0]))
            out[dim] = [{"key": key, "count": count} for key, count in counts[:top]]
        return out


def _ratio(cache: Sequence[int]) -> float | None:
    """Hits (fresh or stale served) over lookups that could hit; None when none."""
    hit, miss, stale = cache[0], cache[1], cache[2]
    looked = hit + miss + stale
    return round((hit + stale) / looked, 4) if looked else None


def parse_window(query: str) -> int:
    """The window in seconds from a query string ("window=300"); ValueError with
    the reason when it is not one."""
    import urllib.parse

    try:
        values = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=False,
                                       max_num_fields=10)
    except ValueError as e:
        raise ValueError(f"bad query string: {e}") from None
    unknown = sorted(set(values) - {"window"})
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}: use window=SECONDS")
    raw = values.get("window", ["300"])
    if len(raw) != 1:
        raise ValueError("give window once")
    text = raw[0].strip()
    if not text.isdigit() or len(text) > 6:
        raise ValueError(f"window must be a whole number of seconds, found {raw[0]!r}")
    seconds = int(text)
    if not 10 <= seconds <= HISTORY:
        raise ValueError(f"window must be between 10 and {HISTORY} seconds, found {seconds}")
    return seconds


@functools.cache
def page() -> bytes:
    """The dashboard's HTML (one file: its script and style inline)."""
    from importlib import resources

    return resources.files("fastproxy").joinpath("data", "dashboard.html").read_bytes()
