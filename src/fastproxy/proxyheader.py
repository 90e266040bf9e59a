"""The PROXY protocol (v1 and v2) on listeners that set `proxy_protocol = true`.

A load balancer in front (an AWS NLB, HAProxy with `send-proxy`, a TCP
balancer) starts each connection with a PROXY header that names the client it
accepted. On such a listener, :class:`ProxyHeaderGate` is the connection's
first protocol: it reads the header (parsed by `_proxyproto`, in C), then hands
the connection to the proxy's own client protocol with the client address the
header gave (a LOCAL or UNKNOWN header keeps the balancer's own address, as the
specification says: those are its health checks). On a TLS listener the
handshake starts only after the header, which comes before the ClientHello.

A connection whose first bytes are not a valid header is closed at once, with
nothing written: the peer is not an HTTP client we could answer, and nothing
it sent is read as a request (as HAProxy's `accept-proxy` and nginx's
`listen ... proxy_protocol` do). The header must arrive within the listener's
header timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from fastproxy._proxyproto import ProxyProtocolError, parse
from fastproxy._tls import TlsServer

log = logging.getLogger("fastproxy.client")

# What a PROXY header says of the client: its address and port, and the address and
# port it connected to (kept for the PROXY headers sent to upstreams).
Peer = tuple[bytes, int, bytes | None, int]


class ProxyHeaderGate(asyncio.Protocol):
    """Reads the PROXY header of one connection, then passes the connection on."""

    __slots__ = ("_factory", "_context", "_handshake_timeout", "_timeout", "_stats",
                 "_transport", "_buf", "_timer", "_done")

    def __init__(self, factory: Callable[[], Any], context: ssl.SSLContext | TlsServer | None,
                 handshake_timeout: float, timeout: float, stats: dict[str, int]) -> None:
        self._factory = factory
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._timeout = timeout
        self._stats = stats  # the worker's counters: "refused"
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._buf += data
        try:
            header = parse(self._buf)
        except ProxyProtocolError as e:
            self._refuse(str(e))
            return
        if header is None:
            return  # more to come
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        consumed, src_ip = header[0], header[1]
        rest = self._buf[consumed:]
        self._buf = b""
        peer = (src_ip, header[2], header[3], header[4]) if src_ip is not None else None
        if self._context is None:
            self._hand_over(self._transport, peer, rest)
        elif isinstance(self._context, TlsServer):
            self._start_openssl(peer, rest)
        else:
            self._start_tls(peer, rest)

    def eof_received(self) -> bool:
        if not self._done:
            self._refuse("closed before the end of the PROXY header")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._done = True

    def _expired(self) -> None:
        if not self._done:
            self._refuse("no PROXY header in time")

    def _refuse(self, reason: str) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        self._stats["refused"] = self._stats.get("refused", 0) + 1
        transport = self._transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        log.info("client %s: %s; connection closed", peer[0] if peer else "-", reason)
        if transport is not None:
            transport.abort()

    def _hand_over(self, transport: Any, peer: Peer | None, rest: bytes) -> None:
        client = self._factory()
        if peer is not None:
            client.set_peer(*peer)
        transport.set_protocol(client)
        client.connection_made(transport)
        if rest:
            client.data_received(rest)

    def _start_openssl(self, peer: Peer | None, rest: bytes) -> None:
        """TLS from here on, with fastproxy._tls (engine "openssl"): its connection
        becomes the transport's protocol and is handed the bytes read so far."""
        transport = self._transport
        assert transport is not None and isinstance(self._context, TlsServer)
        tls = self._context()
        if peer is not None:
            tls.app.set_peer(*peer)
        transport.set_protocol(tls)
        tls.connection_made(transport)
        _feed(tls, rest)

    def _start_tls(self, peer: Peer | None, rest: bytes) -> None:
        """TLS from here on. The handshake's first bytes may have come in the same
        read as the header, so the TLS layer is asyncio's own SSLProtocol, which
        can be handed them (loop.start_tls could not). It calls the client's
        connection_made once the handshake is done; a client never made counts
        as a failed handshake, as on a TLS listener without the PROXY protocol."""
        transport = self._transport
        assert transport is not None and self._context is not None
        client = self._factory()
        if peer is not None:
            client.set_peer(*peer)
        loop = asyncio.get_running_loop()
        tls = sslproto.SSLProtocol(
            loop, client, self._context, None,  # type: ignore[arg-type]  # no waiter
            server_side=True,
            ssl_handshake_timeout=self._handshake_timeout)  # type: ignore[arg-type]
        transport.set_protocol(tls)
        tls.connection_made(transport)
        _feed(tls, rest)


def _feed(protocol: Any, data: bytes) -> None:
    """Hand ``data`` to a buffered protocol as if the transport had read it."""
    view = memoryview(data)
    while view:
        buf = protocol.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]
