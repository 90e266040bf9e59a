"""HTTP/2 to clients (RFC 9113), on TLS listeners by ALPN "h2" and on h2c listeners
with prior knowledge: the per-listener limits and the factory the worker gives
the compiled core (`Core.h2_factory`).

The rest is compiled. `_h2.ServerConnection` (with `_hpack`) does the framing,
HPACK, stream states and flow-control bookkeeping and calls its session back for
what the frames mean (`h2_request`, `h2_data`, ...). The session and its streams
are `_h2stream.H2Session` and `_h2stream.H2Stream`: the bridge to the HTTP/1.1
machinery. Every stream is served by its own `ClientConnection` (the same
routing, filters, WAF, cache, compression, balancing and logging as an HTTP/1.1
request), whose transport is the stream itself: the stream's request is written
into it as HTTP/1.1 bytes, and what it answers is parsed back by a
`ResponseParser` into HEADERS and DATA frames. Back-pressure runs both ways: a
stream's DATA is acknowledged (the client's window reopened) only as its
`ClientConnection` takes it, and a stream whose client window is shut, or a
socket the client does not read, pauses the exchange's upstream reads through
`pause_writing`.

The outer `ClientConnection` (the real socket) keeps doing what it does for every
connection (accept and per-address accounting, TLS facts, the send timeout and
the worker's shutdown) and hands the bytes to the `H2Session`.

Defences: at most `h2_max_concurrent_streams` streams (one more is refused with
REFUSED_STREAM), the header list bounded by the listener's header limits (HPACK
bombs included), header blocks bounded while they arrive (CONTINUATION floods),
client stream resets per 10 s (rapid reset) and control frames per second bounded
(GOAWAY ENHANCE_YOUR_CALM): PING and SETTINGS, also while their answers queue
because the client does not read, and with them the frames that ask nothing but
cost work — empty DATA frames without END_STREAM (CVE-2019-9518) and WINDOW_UPDATEs
beyond what the DATA sent to the client explains (the connection layer tells which).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastproxy._h2stream import H2Session

__all__ = ["H2Limits", "session_factory"]


class H2Limits:
    """What the sessions of one listener need to know (built once per worker)."""

    __slots__ = ("max_streams", "max_resets", "max_control", "header_list", "decode_list",
                 "keepalive", "header_timeout", "max_requests")

    def __init__(self, config: Any, listener: Any) -> None:
        limits = config.limits
        head = listener.size(limits, "max_header_bytes")
        count = listener.size(limits, "max_header_count")
        self.max_streams = limits.h2_max_concurrent_streams
        self.max_resets = limits.h2_max_resets
        self.max_control = limits.h2_max_control_frames
        # Advertised: the HTTP/1.1 head limit. Enforced while decoding: the same in
        # RFC 7541 terms (32 bytes per field); a head between the two reaches the
        # request parser, which answers 431 as for HTTP/1.1.
        self.header_list = head
        self.decode_list = head + 32 * count
        self.keepalive = config.timeouts.keepalive
        # Streams per connection, then GOAWAY (as nginx's keepalive_requests does for h2).
        self.max_requests = limits.max_requests_per_connection
        self.header_timeout = config.timeouts.header


def session_factory(core: Any, config: Any) -> Callable[[Any, Any, bytes | None], H2Session]:
    """Core.h2_factory: a session for a connection that speaks HTTP/2."""
    per_listener = [H2Limits(config, listener) for listener in config.listeners]

    def make(outer: Any, transport: Any, first: bytes | None) -> H2Session:
        return H2Session(core, outer, transport, per_listener[outer.listener], first)

    return make
