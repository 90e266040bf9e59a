"""Upstream groups: a named upstream's servers and the balancer choosing among them.

Each server is a `ServerPool` (compiled, in `_proxy.pyx`) holding its idle
keep-alive connections and reuse counters; the connections themselves are
`_proxy.UpstreamConnection`. The balancer is one of the compiled algorithms
(`_balance`, `_hashring`), chosen by the upstream's `balance` key.
"""

from __future__ import annotations

from typing import Any

from fastproxy._actions import Template
from fastproxy._balance import P2C, Balancer, Ewma, LeastConn, Random, RoundRobin, key_hash
from fastproxy._hashring import Maglev, Ring
from fastproxy._proxy import Core, ServerPool
from fastproxy.config import Upstream


def make_balancer(config: Upstream, peers: list[Any]) -> Balancer:
    """The balancer of `config`'s algorithm over `peers` (one per server, in order)."""
    weights = [s.weight for s in config.servers]
    algorithm = config.balance
    if algorithm in ("ring", "maglev"):
        # Servers are placed by address, so adding or removing one moves only
        # its share of keys, and every worker (and a restart) agrees.
        names = [s.address for s in config.servers]
        cls = Ring if algorithm == "ring" else Maglev
        return cls(peers, weights, names=names, factor=config.balance_factor)
    return _UNKEYED[algorithm](peers, weights)


_UNKEYED: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin, "weighted": RoundRobin, "least_conn": LeastConn,
    "random": Random, "p2c": P2C, "ewma": Ewma,
}


def sticky_value(address: str) -> bytes:
    """The sticky-cookie value naming a server: stable (the same in every worker
    and after a restart) and not its address."""
    return b"%016x" % key_hash(address.encode())


class UpstreamGroup:
    """A named upstream: its servers, the balancer choosing among them, for the
    hashing algorithms the template of the key that is hashed, and for sticky
    sessions the cookie and each server's value and Set-Cookie line."""

    __slots__ = ("config", "pools", "balancer", "name", "hash_key", "sticky_cookie",
                 "sticky_values", "sticky_peers", "sticky_lines")

    def __init__(self, config: Upstream, core: Core) -> None:
        self.config = config
        self.name = config.name
        self.pools = [ServerPool(config, s.host, s.port, s.weight, core) for s in config.servers]
        self.balancer = make_balancer(config, self.pools)
        self.hash_key = Template(config.hash_key) if config.hash_key is not None else None
        sticky = config.sticky
        self.sticky_cookie = sticky.cookie.encode() if sticky is not None else None
        values = [sticky_value(s.address) for s in config.servers]
        self.sticky_values = tuple(values)
        self.sticky_peers = {v: i for i, v in enumerate(values)}
        attributes = "; Path=/; HttpOnly; SameSite=Lax"
        if sticky is not None:
            if sticky.max_age:
                attributes += f"; Max-Age={int(sticky.max_age)}"
            if sticky.secure:
                attributes += "; Secure"
        self.sticky_lines = tuple(
            b"Set-Cookie: %s=%s%s\r\n" % (self.sticky_cookie or b"", v, attributes.encode())
            for v in values)
