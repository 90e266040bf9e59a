"""Upstream groups: a named upstream's servers and the balancer choosing among them.

Each server is a `ServerPool` (compiled, in `_proxy.pyx`) holding its idle
keep-alive connections and reuse counters; the connections themselves are
`_proxy.UpstreamConnection`. The balancer is one of the compiled algorithms
(`_balance`, `_hashring`), chosen by the upstream's `balance` key.
"""

from __future__ import annotations

from typing import Any

from fastproxy._actions import Template
from fastproxy._balance import Balancer, RoundRobin
from fastproxy._proxy import Core, ServerPool
from fastproxy.config import Upstream


def make_balancer(config: Upstream, peers: list[Any]) -> Balancer:
    """The balancer of `config`'s algorithm over `peers` (one per server, in order)."""
    weights = [s.weight for s in config.servers]
    algorithm = config.balance
    if algorithm in ("round_robin", "weighted"):
        return RoundRobin(peers, weights)
    if algorithm in ("ring", "maglev"):
        from fastproxy import _hashring

        # Servers are placed by address, so adding or removing one moves only
        # its share of keys, and every worker (and a restart) agrees.
        names = [s.address for s in config.servers]
        cls = _hashring.Ring if algorithm == "ring" else _hashring.Maglev
        return cls(peers, weights, names=names, factor=config.balance_factor)
    from fastproxy import _balance

    classes = {"least_conn": "LeastConn", "random": "Random", "p2c": "P2C", "ewma": "Ewma"}
    return getattr(_balance, classes[algorithm])(peers, weights)  # type: ignore[no-any-return]


class UpstreamGroup:
    """A named upstream: its servers, the balancer choosing among them and, for
    the hashing algorithms, the template of the key that is hashed."""

    __slots__ = ("config", "pools", "balancer", "name", "hash_key")

    def __init__(self, config: Upstream, core: Core) -> None:
        self.config = config
        self.name = config.name
        self.pools = [ServerPool(config, s.host, s.port, s.weight, core) for s in config.servers]
        self.balancer = make_balancer(config, self.pools)
        self.hash_key = Template(config.hash_key) if config.hash_key is not None else None
