"""Re-resolution of upstream servers given by host name.

Each worker resolves the names itself (one `getaddrinfo` per name and
interval, on the loop's executor) and hands the addresses to the server's
pool, whose new connections rotate over them. A failed or empty resolution
keeps the last good addresses, so a DNS outage does not take the upstream
down with it; until the first success, connections name the host and the
loop resolves it per connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger("fastproxy.resolver")

# (host, port) -> the addresses, as the loop's getaddrinfo gives them.
Lookup = Callable[[str, int], Awaitable[list[Any]]]


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def unique_addresses(infos: Iterable[Any]) -> list[str]:
    """The IPs of getaddrinfo results, in order, each once."""
    seen: list[str] = []
    for info in infos:
        ip = info[4][0]
        if ip not in seen:
            seen.append(ip)
    return seen


class Resolver:
    """Keeps the `set_addresses` of each pool whose host is a name up to date,
    every `interval` seconds (its upstream's resolve_interval)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lookup: Lookup | None = None) -> None:
        self.loop = loop
        self.lookup = lookup or self._getaddrinfo
        self.tasks: list[asyncio.Task[None]] = []

    async def _getaddrinfo(self, host: str, port: int) -> list[Any]:
        return await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)

    def watch(self, pool: Any, interval: float) -> bool:
        """Start re-resolving `pool.host` (False: an IP address, nothing to do)."""
        if is_ip_literal(pool.host):
            return False
        self.tasks.append(self.loop.create_task(self._run(pool, interval)))
        return True

    async def refresh(self, pool: Any) -> bool:
        """Resolve once; True when the pool got addresses."""
        try:
            addresses = unique_addresses(await self.lookup(pool.host, pool.port))
        except (OSError, UnicodeError) as e:
            reason = str(e) or type(e).__name__
        else:
            if addresses:
                if list(pool.addresses) != addresses:
                    log.info("server %s resolves to %s", pool.label, ", ".join(addresses))
                    pool.set_addresses(addresses)
                return True
            reason = "no addresses"
        kept = ", ".join(pool.addresses) if pool.addresses else "none yet"
        log.warning("cannot resolve %s: %s; keeping the last good addresses (%s)",
                    pool.label, reason, kept)
        return False

    async def _run(self, pool: Any, interval: float) -> None:
        while True:
            await self.refresh(pool)
            await asyncio.sleep(interval)

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
