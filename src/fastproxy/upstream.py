"""Upstream groups: a named upstream's servers and the balancers choosing among them.

Each server is a `ServerPool` (compiled, in `_proxy.pyx`) holding its idle
keep-alive connections and reuse counters; the connections themselves are
`_proxy.UpstreamConnection`. The balancer is one of the compiled algorithms
(`_balance`, `_hashring`), chosen by the upstream's `balance` key; backup
servers have a balancer of their own (same algorithm), asked only when the
primaries' has no usable server. Both read the servers' shared state (down,
ejected, slow start) from the instance's `PeerTable`.
"""

from __future__ import annotations

from typing import Any

from fastproxy._actions import Template
from fastproxy._balance import (
    P2C,
    Balancer,
    Ewma,
    LeastConn,
    Random,
    RetryBudget,
    RoundRobin,
    key_hash,
)
from fastproxy._hashring import Maglev, Ring
from fastproxy._peers import PeerTable
from fastproxy._proxy import Core, GroupBase, ServerPool
from fastproxy.config import ServerAddress, Upstream


def make_balancer(config: Upstream, peers: list[Any], servers: list[ServerAddress] | None = None,
                  table: PeerTable | None = None, slots: list[int] | None = None) -> Balancer:
    """The balancer of `config`'s algorithm over `peers`, one per server of
    `servers` (default: all of config's), whose shared state is `slots` of `table`."""
    if servers is None:
        servers = list(config.servers)
    options: dict[str, Any] = {
        "table": table,
        "slots": slots,
        "max_conns": [s.max_conns for s in servers],
        "slow_start": config.slow_start,
        "eject": (config.eject.failures, config.eject.time, config.eject.max_time),
    }
    weights = [s.weight for s in servers]
    algorithm = config.balance
    if algorithm in ("ring", "maglev"):
        # Servers are placed by address, so adding or removing one moves only
        # its share of keys, and every worker (and a restart) agrees.
        names = [s.address for s in servers]
        cls = Ring if algorithm == "ring" else Maglev
        return cls(peers, weights, names=names, factor=config.balance_factor, **options)
    return _UNKEYED[algorithm](peers, weights, **options)


_UNKEYED: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin, "weighted": RoundRobin, "least_conn": LeastConn,
    "random": Random, "p2c": P2C, "ewma": Ewma,
}


def sticky_value(address: str) -> bytes:
    """The sticky-cookie value naming a server: stable (the same in every worker
    and after a restart) and not its address."""
    return b"%016x" % key_hash(address.encode())


class UpstreamGroup(GroupBase):
    """A named upstream: its servers, the balancers choosing among them, for the
    hashing algorithms the template of the key that is hashed, for sticky
    sessions the cookie and each primary's value and Set-Cookie line, and the
    retry policy with its budget and the queue of requests waiting for room.
    What requests read of it are the compiled base's fields (`_proxy.GroupBase`)."""

    __slots__ = ("config", "pools", "name")

    def __init__(self, config: Upstream, core: Core, table: PeerTable | None = None,
                 first_slot: int = 0) -> None:
        self.config = config
        self.name = config.name
        self.stats_base = -1  # the upstream's first counter in _stats (metrics; -1: none)
        if table is None:
            table, first_slot = PeerTable(len(config.servers)), 0
        primaries = [i for i, s in enumerate(config.servers) if not s.backup]
        backups = [i for i, s in enumerate(config.servers) if s.backup]
        self.pools = [ServerPool(config, s.host, s.port, s.weight, core) for s in config.servers]
        for server, pool in zip(config.servers, self.pools, strict=True):
            pool.set_proxy_protocol(config.server_proxy_protocol(server))
        self.balancer = self._balancer(primaries, table, first_slot)
        self.backup = self._balancer(backups, table, first_slot) if backups else None
        self.hash_key = Template(config.hash_key) if config.hash_key is not None else None
        sticky = config.sticky
        self.sticky_cookie = sticky.cookie.encode() if sticky is not None else None
        values = [sticky_value(config.servers[i].address) for i in primaries]
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
        retry = config.retry
        self.retries = retry.retries
        self.retry_on = frozenset(retry.on) if retry.retries else frozenset()
        self.retry_reset = "reset" in self.retry_on
        self.retry_timeout = "timeout" in self.retry_on
        self.retry_statuses = frozenset(int(c) for c in self.retry_on if c.isdigit())
        self.retry_buffer = retry.buffer
        self.budget = RetryBudget(retry.budget)
        capped = any(s.max_conns for s in config.servers)
        self.waiting = (core.new_queue(config.queue, config.queue_timeout)
                        if capped and config.queue else None)
        self.busy = (f'every server of upstream "{self.name}" is at its max_conns '
                     "and the queue is full or timed out\n").encode()
        self.unavailable = (f'no server of upstream "{self.name}" is available '
                            "(all are down or ejected)\n").encode()

    def _balancer(self, indexes: list[int], table: PeerTable, first_slot: int) -> Balancer:
        servers = [self.config.servers[i] for i in indexes]
        return make_balancer(self.config, [self.pools[i] for i in indexes], servers, table,
                             [first_slot + i for i in indexes])
