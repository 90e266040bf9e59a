"""Metrics: which shared counter (`_stats.Stats`) is which, and the Prometheus text
exposition the admin API serves at /metrics.

The master keeps one `Registry` for its whole life: a series (a route's
requests, an upstream's latency histogram, a server's in-flight gauge...) keeps
its counters across reloads as long as its key (the route's name, the
upstream's name, the server's address...) stays, so counters only go down when
the proxy restarts. `Layout` is one config's view of it: the first counter of
each route, upstream, server and cache, as the worker's hot path needs them.

What a worker counts, and where:

* per route (`route` label: the route's name, or ``routes[i]``): requests by
  method and status class, and the time from the request head to the end of
  the response (a histogram);
* per upstream: responses by status class, failures (no response), and the
  time to the response head of each try (a histogram); per server: requests,
  failures, requests in flight (a gauge);
* per cache: hits, misses, stale (revalidated or served stale), bypass;
* the instance: connections accepted, closed and open, bytes received and
  sent, WAF blocks, rate-limit refusals, TLS handshake failures.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastproxy._stats import Stats
from fastproxy.config import Config

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# The instance's own counters, in this order from Layout.instance.
INSTANCE = ("connections_accepted", "connections_closed", "connections_open",
            "bytes_received", "bytes_sent", "waf_blocked", "rate_limited",
            "tls_handshake_failures", "tls_handshakes", "access_denied")
INSTANCE_GAUGES = ("connections_open",)
CACHE_RESULTS = ("hit", "miss", "stale", "bypass")
SERVER = ("requests", "failures", "in_flight")
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

NOTE_SIZE = 64 * 1024  # bytes of each worker's published top lists (the dashboard's)
ROUTE_COUNTS = len(METHODS) * len(CLASSES)
UPSTREAM_COUNTS = len(CLASSES) + 1  # + failures


class Registry:
    """Series keys -> their first counter, for the master's life. Full: a series
    that does not fit is not counted (-1), and the log says so once."""

    def __init__(self, capacity: int, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.capacity = capacity
        self.buckets = buckets  # of every histogram (the table's bounds are fixed)
        self.used = 0
        self.bases: dict[tuple[Any, ...], int] = {}
        self.gauges = bytearray(capacity)
        self.full = False

    def series(self, key: tuple[Any, ...], size: int, gauges: Iterable[int] = ()) -> int:
        base = self.bases.get(key)
        if base is not None:
            return base
        if self.used + size > self.capacity:
            self.full = True
            return -1
        base = self.used
        self.used += size
        self.bases[key] = base
        for offset in gauges:
            self.gauges[base + offset] = 1
        return base


def route_label(route: Any) -> str:
    return route.name if route.name is not None else f"routes[{route.index}]"


def need(config: Config, histogram: int) -> int:
    """The counters one config takes."""
    servers = sum(len(u.servers) for u in config.upstreams.values())
    return (len(INSTANCE) + (len(config.routes) + 1 + len(config.listeners))
            * (ROUTE_COUNTS + histogram)
            + len(config.upstreams) * (UPSTREAM_COUNTS + histogram)
            + servers * len(SERVER) + len(config.caches) * len(CACHE_RESULTS))


@dataclass
class Layout:
    """One config's series: first counters, by what the worker knows them by."""

    buckets: tuple[float, ...]
    histogram: int  # counters per histogram
    instance: int = -1
    routes: dict[str, int] = field(default_factory=dict)  # route label -> base
    upstreams: dict[str, int] = field(default_factory=dict)
    servers: dict[tuple[str, str], int] = field(default_factory=dict)  # (upstream, address)
    caches: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Config, registry: Registry, routes: Iterable[Any]) -> Layout:
        buckets = registry.buckets
        hist = len(buckets) + 3
        layout = cls(buckets=buckets, histogram=hist)
        layout.instance = registry.series(("instance",), len(INSTANCE),
                                          [INSTANCE.index(g) for g in INSTANCE_GAUGES])
        for route in routes:
            label = route_label(route)
            layout.routes[label] = registry.series(("route", label), ROUTE_COUNTS + hist)
        layout.routes["-"] = registry.series(("route", "-"), ROUTE_COUNTS + hist)
        for name, upstream in config.upstreams.items():
            layout.upstreams[name] = registry.series(("upstream", name),
                                                     UPSTREAM_COUNTS + hist)
            for server in upstream.servers:
                layout.servers[(name, server.address)] = registry.series(
                    ("server", name, server.address), len(SERVER), [SERVER.index("in_flight")])
        for name in config.caches:
            layout.caches[name] = registry.series(("cache", name), len(CACHE_RESULTS))
        return layout


def bounds_us(buckets: Iterable[float]) -> list[int]:
    return [round(b * 1e6) for b in buckets]


def new_stats(config: Config, workers: int) -> tuple[Stats, Registry]:
    """The master's table and registry: room for this config four times over
    (reloads that rename things); blocks for two generations of at least 16
    workers each (and three of this config's), so that a reload that adds workers
    does not make two processes share a block (then counts can be lost)."""
    hist = len(config.metrics.buckets) + 3
    capacity = max(16384, 4 * need(config, hist))
    blocks = max(2 * max(workers, 16), 3 * workers) + 2
    stats = Stats(capacity, blocks, bounds_us(config.metrics.buckets),
                  note_size=NOTE_SIZE)
    return stats, Registry(capacity, config.metrics.buckets)


# -- the exposition ----------------------------------------------------------------------

def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.declared: set[str] = set()

    def family(self, name: str, kind: str, help_text: str) -> None:
        if name not in self.declared:
            self.declared.add(name)
            self.lines.append(f"# HELP {name} {help_text}")
            self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: str, value: float) -> None:
        self.lines.append(f"{name}{labels} {_number(value)}")

    def histogram(self, name: str, help_text: str, totals: list[int], base: int,
                  buckets: tuple[float, ...], **labels: str) -> None:
        self.family(name, "histogram", help_text)
        running = 0
        for k, bound in enumerate(buckets):
            running += totals[base + k]
            self.sample(f"{name}_bucket", _labels(**labels, le=repr(float(bound))), running)
        running += totals[base + len(buckets)]
        self.sample(f"{name}_bucket", _labels(**labels, le="+Inf"), running)
        self.sample(f"{name}_sum", _labels(**labels),
                    totals[base + len(buckets) + 1] / 1e6)
        self.sample(f"{name}_count", _labels(**labels), totals[base + len(buckets) + 2])


def render(stats: Stats, layout: Layout, config: Config, table: Any | None = None,
           first_slot: Mapping[str, int] | None = None,
           board: Mapping[str, Any] | None = None, version: str = "") -> str:
    """The Prometheus text exposition (version 0.0.4) of the instance."""
    totals = stats.totals()
    out = _Out()
    hist = layout.buckets
    board = board or {}

    out.family("fastproxy_info", "gauge", "Version of the running proxy.")
    out.sample("fastproxy_info", _labels(version=version), 1)
    if "started" in board:
        out.family("fastproxy_start_time_seconds", "gauge",
                   "When the master started (Unix time).")
        out.sample("fastproxy_start_time_seconds", "", round(board["started"], 3))
        out.family("fastproxy_uptime_seconds", "gauge", "Seconds since the master started.")
        out.sample("fastproxy_uptime_seconds", "", round(time.time() - board["started"], 3))
    if "workers" in board:
        out.family("fastproxy_processes", "gauge", "Child processes of the master, by role.")
        roles: dict[str, int] = {}
        for w in board["workers"]:
            role = "worker" if isinstance(w["slot"], int) else str(w["slot"])
            roles[role] = roles.get(role, 0) + 1
        for role, n in sorted(roles.items()):
            out.sample("fastproxy_processes", _labels(role=role), n)
    if "child_deaths" in board:
        out.family("fastproxy_child_deaths_total", "counter",
                   "Workers (and other children) that died and were started again.")
        out.sample("fastproxy_child_deaths_total", "", board["child_deaths"])
    if "reloads" in board:
        out.family("fastproxy_reloads_total", "counter", "Config reloads asked for.")
        out.sample("fastproxy_reloads_total", "", board["reloads"])
        out.family("fastproxy_generation", "gauge", "The config generation in service.")
        out.sample("fastproxy_generation", "", board.get("generation", 0))

    base = layout.instance
    if base >= 0:
        helps = {
            "connections_accepted": ("counter", "Client connections accepted."),
            "connections_closed": ("counter", "Client connections closed."),
            "connections_open": ("gauge", "Client connections open now."),
            "bytes_received": ("counter", "Request bytes received from clients (bodies)."),
            "bytes_sent": ("counter", "Response body bytes sent to clients."),
            "waf_blocked": ("counter", "Requests the WAF blocked."),
            "rate_limited": ("counter", "Requests a rate limit refused (429)."),
            "tls_handshake_failures": ("counter", "TLS handshakes that failed or timed out."),
            "tls_handshakes": ("counter", "TLS handshakes that completed."),
            "access_denied": ("counter", "Requests refused by an access list or a ban (403)."),
        }
        for i, name in enumerate(INSTANCE):
            kind, text = helps[name]
            metric = f"fastproxy_{name}" + ("_total" if kind == "counter" else "")
            out.family(metric, kind, text)
            out.sample(metric, "", totals[base + i])

    out.family("fastproxy_http_requests_total", "counter",
               "Requests answered, by route, method and status class.")
    for label, base in layout.routes.items():
        if base < 0:
            continue
        for m, method in enumerate(METHODS):
            for c, status in enumerate(CLASSES):
                value = totals[base + m * len(CLASSES) + c]
                if value:
                    out.sample("fastproxy_http_requests_total",
                               _labels(route=label, method=method, status_class=status), value)
    for label, base in layout.routes.items():
        if base >= 0 and totals[base + ROUTE_COUNTS + len(hist) + 2]:
            out.histogram("fastproxy_http_request_duration_seconds",
                          "Time from the request head to the end of the response, by route.",
                          totals, base + ROUTE_COUNTS, hist, route=label)

    out.family("fastproxy_upstream_responses_total", "counter",
               "Responses from upstream servers, by upstream and status class.")
    out.family("fastproxy_upstream_failures_total", "counter",
               "Tries that got no response (connect errors, resets, timeouts).")
    for name, base in layout.upstreams.items():
        if base < 0:
            continue
        for c, status in enumerate(CLASSES):
            out.sample("fastproxy_upstream_responses_total",
                       _labels(upstream=name, status_class=status), totals[base + c])
        out.sample("fastproxy_upstream_failures_total", _labels(upstream=name),
                   totals[base + len(CLASSES)])
    for name, base in layout.upstreams.items():
        if base >= 0:
            out.histogram("fastproxy_upstream_response_duration_seconds",
                          "Time from sending a request to a server to the end of its response.",
                          totals, base + UPSTREAM_COUNTS, hist, upstream=name)

    names = {"requests": ("counter", "Tries sent to the server."),
             "failures": ("counter", "Tries to the server that got no response."),
             "in_flight": ("gauge", "Requests at the server now.")}
    for i, what in enumerate(SERVER):
        kind, text = names[what]
        metric = f"fastproxy_upstream_server_{what}" + ("_total" if kind == "counter" else "")
        out.family(metric, kind, text)
        for (group, address), base in layout.servers.items():
            if base >= 0:
                out.sample(metric, _labels(upstream=group, server=address),
                           totals[base + i])
    if table is not None and first_slot is not None:
        out.family("fastproxy_upstream_server_up", "gauge",
                   "1 when the server may take requests: healthy, not ejected, enabled.")
        for name, upstream in config.upstreams.items():
            for i, server in enumerate(upstream.servers):
                state = table.state(first_slot[name] + i)
                usable = state["up"] and not state["ejected_for"] and state["admin"] == "enabled"
                out.sample("fastproxy_upstream_server_up",
                           _labels(upstream=name, server=server.address), int(usable))

    out.family("fastproxy_cache_requests_total", "counter",
               "Requests on cached routes, by cache and result.")
    for name, base in layout.caches.items():
        if base >= 0:
            for i, result in enumerate(CACHE_RESULTS):
                out.sample("fastproxy_cache_requests_total", _labels(cache=name, result=result),
                           totals[base + i])
    return "\n".join(out.lines) + "\n"


def apply(layout: Layout, core: Any, router: Any, groups: Mapping[str, Any],
          caches: Mapping[str, Any], stats: Stats) -> None:
    """(Worker) Give the hot path its first counters: the core, each route's rule,
    upstream group and server pool, each cache."""
    core.stats = stats
    core.stats_instance = layout.instance
    core.stats_noroute = layout.routes.get("-", -1)
    for rule in router.rules:
        rule.stats_base = layout.routes.get(route_label(rule.route), -1)
    for name, group in groups.items():
        group.stats_base = layout.upstreams.get(name, -1)
        for server, pool in zip(group.config.servers, group.pools, strict=True):
            pool.stats_base = layout.servers.get((name, server.address), -1)
    for name, cache in caches.items():
        cache.stats_base = layout.caches.get(name, -1)
