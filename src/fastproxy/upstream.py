"""Upstream groups: a named upstream's servers and the balancer choosing among them.

Each server is a `ServerPool` (compiled, in `_proxy.pyx`) holding its idle
keep-alive connections and reuse counters; the connections themselves are
`_proxy.UpstreamConnection`.
"""

from __future__ import annotations

from fastproxy._balance import RoundRobin
from fastproxy._proxy import Core, ServerPool
from fastproxy.config import Upstream


class UpstreamGroup:
    """A named upstream: its servers and the balancer choosing among them."""

    __slots__ = ("config", "pools", "balancer", "name")

    def __init__(self, config: Upstream, core: Core) -> None:
        self.config = config
        self.name = config.name
        self.pools = [ServerPool(config, s.host, s.port, s.weight, core) for s in config.servers]
        self.balancer = RoundRobin(self.pools, [s.weight for s in config.servers])
