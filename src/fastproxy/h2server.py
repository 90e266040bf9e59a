"""HTTP/2 to clients (RFC 9113), on TLS listeners by ALPN "h2" and on h2c listeners
with prior knowledge.

The framing, HPACK, stream states and flow-control bookkeeping are compiled
(`_h2.ServerConnection`, with `_hpack`): it calls this module's session back for
what the frames mean (`h2_request`, `h2_data`, ...). What this module adds is the
bridge to the HTTP/1.1 machinery: every stream is served by its
own `ClientConnection` (the same routing, filters, WAF, cache, compression,
balancing and logging as an HTTP/1.1 request), whose transport is the stream
itself (`H2Stream`): the stream's request is written into it as HTTP/1.1 bytes,
and what it answers is parsed back by a `ResponseParser` into HEADERS and DATA
frames. Back-pressure runs both ways: a stream's DATA is acknowledged (the
client's window reopened) only as its `ClientConnection` takes it, and a stream
whose client window is shut, or a socket the client does not read, pauses the
exchange's upstream reads through `pause_writing`.

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

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from fastproxy._h2 import (
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2ProtocolError,
    H2StreamClosed,
    Malformed,
    ServerConnection,
    error_name,
    request_head,
)
from fastproxy._http import BODY_LENGTH, HttpParseError, ResponseParser
from fastproxy._proxy import ClientConnection, trailer_fields

log = logging.getLogger("fastproxy.h2")

STREAM_WINDOW = 256 * 1024  # a stream's receive window (request bodies)
CONN_WINDOW = 1024 * 1024  # the connection's: all unacknowledged request bytes at once
OUT_HIGH = 64 * 1024  # response bytes a stream holds before its exchange pauses
OUT_LOW = 16 * 1024  # ... and resumes
RESET_WINDOW = 10.0  # seconds over which client resets are counted
# Response fields that HTTP/2 forbids (RFC 9113 8.2.2): the connection's business.
_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                  b"upgrade", b"te"))
# Request fields are checked by _h2.request_head (RFC 9113 8.2 and 8.3) in one C
# pass, which also writes the HTTP/1.1 head; the connection layer checks the frames.
__all__ = ["H2Limits", "H2Session", "H2Stream", "Malformed", "request_head", "session_factory"]


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


class H2Session:
    """One client connection that speaks HTTP/2."""

    def __init__(self, core: Any, outer: Any, transport: Any, limits: H2Limits,
                 first: bytes | None) -> None:
        self.core = core
        self.outer = outer
        self.transport = transport
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.streams: dict[int, H2Stream] = {}
        self.socket_paused = False  # the client does not read what we send
        self.draining = False  # GOAWAY sent: no new streams; close when the last ends
        self.last_stream = 0  # ... above this one
        self.closed = False
        self.flush_soon = False
        self.resets = 0
        self.resets_since = 0.0
        self.requests = 0
        self.control = 0
        self.control_since = 0.0
        self.queued_control = 0  # control frames answered while the socket is paused
        # Our SETTINGS advertise the HTTP/1.1 head limit as the header list size; HPACK
        # decoding stops at the same in RFC 7541 terms (decode_list), and so does a
        # header block while it grows (CONTINUATION floods).
        self.conn = ServerConnection(self, limits.max_streams, limits.header_list,
                                     limits.decode_list, STREAM_WINDOW, CONN_WINDOW)
        self.flush()
        outer.h2_wait(limits.header_timeout)  # the preface and a first request
        if first:
            self.data_received(first)

    # -- from the outer ClientConnection ---------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.conn.receive(data)
        except H2ProtocolError as e:
            # The connection layer queued a GOAWAY with the error's code.
            log.info("client %s: HTTP/2 connection error: %s (%s)", self.outer.ip.decode(),
                     e.reason, error_name(e.code))
            self.close(False)
            return
        self.flush()

    # -- from the connection layer (inside receive) -------------------------------------
    def h2_request(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if not self.closed:
            self._request(sid, headers, ended)

    def h2_data(self, sid: int, data: bytes, size: int) -> None:
        if self.closed:
            return
        stream = self.streams.get(sid)
        if stream is None:
            # A stream we reset or finished: its bytes count for the connection only.
            self.conn.acknowledge(sid, size)
            return
        stream.request_data(data, size)

    def h2_end(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None and not self.closed:
            stream.request_ended()

    def h2_reset(self, sid: int, code: int, remote: bool) -> None:
        if not self.closed:
            self._reset(sid, remote)

    def h2_window(self, sid: int) -> None:
        self._window(sid)

    def h2_ping(self) -> None:
        self._control_frame()

    def h2_settings(self) -> None:
        if self._control_frame():
            self._window(0)

    def h2_flood_frame(self, kind: str) -> None:
        self._control_frame(kind, answered=False)

    def h2_goaway(self, code: int, last_stream_id: int) -> None:
        if self.closed:
            return
        if code != NO_ERROR or not self.streams:
            self.close(False)
            return
        # The client's graceful GOAWAY: it opens no more streams but waits for the
        # answers to those it opened; the socket closes after the last.
        self.draining = True
        self.last_stream = self.conn.highest_inbound

    def eof_received(self) -> bool:
        self.close(False)
        return False

    def connection_lost(self, exc: object) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.lost()
        self.streams.clear()
        # The connection layer holds our bound methods: let them go (a cycle otherwise,
        # freed only by the cyclic GC, long after).
        self.conn.stop()

    def pause_writing(self) -> None:
        # The client does not read: nothing more is made for it. Reading goes on (a
        # client may not read while it writes a body: stopping would deadlock both),
        # but the answers its frames need (PING and SETTINGS acks) are counted while
        # they queue (_control_frame).
        self.socket_paused = True
        self.queued_control = 0
        for stream in list(self.streams.values()):
            stream.check_paused()

    def resume_writing(self) -> None:
        self.socket_paused = False
        self._window(0)
        self._idle_check()

    def timed_out(self) -> None:
        if self.streams and not self.draining:
            return
        # Idle past the keep-alive timeout, or draining too long: say so and close.
        self.goaway(NO_ERROR)
        self.close(False)

    def shutdown(self) -> None:
        """Graceful stop: GOAWAY; the streams in flight finish, then the socket closes."""
        if self.closed or self.draining:
            return
        self.goaway(NO_ERROR)
        if not self.streams:
            self.close(False)

    # -- internals ----------------------------------------------------------------------
    def goaway(self, code: int) -> None:
        """A GOAWAY after which the streams in flight still finish."""
        if self.draining or self.closed:
            return
        self.draining = True
        self.last_stream = self.conn.highest_inbound
        self.conn.goaway(code, self.last_stream)
        self.flush()

    def fail(self, code: int, why: str) -> None:
        """A connection error: GOAWAY with `code`, then close."""
        log.info("client %s: HTTP/2 %s: %s", self.outer.ip.decode(), error_name(code), why)
        if not self.closed:
            self.conn.goaway(code)
        self.close(False)

    def close(self, abort: bool) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        for stream in list(self.streams.values()):
            stream.lost()
        self.streams.clear()
        self.conn.stop()
        self.outer.h2_close(abort)

    def flush(self) -> None:
        self.flush_soon = False
        if self.closed:
            return
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def flush_later(self) -> None:
        """Frames made outside data_received (an upstream's bytes): one write per
        loop iteration for all the streams."""
        if not self.flush_soon:
            self.flush_soon = True
            self.loop.call_soon(self.flush)

    def _control_frame(self, kind: str = "PING/SETTINGS", answered: bool = True) -> bool:
        """Count a control frame (`answered`: one we queue an answer to); False when
        that is one too many and the connection is failed."""
        now = self.loop.time()
        if now - self.control_since >= 1.0:
            self.control_since = now
            self.control = 0
        self.control += 1
        if self.socket_paused and answered:
            self.queued_control += 1
        if self.control > self.limits.max_control or self.queued_control > self.limits.max_control:
            self.fail(ENHANCE_YOUR_CALM, f"too many {kind} frames")
            return False
        return True

    def _request(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        conn = self.conn
        if self.draining and sid > self.last_stream:
            conn.reset_stream(sid, REFUSED_STREAM)
            return
        if len(self.streams) >= self.limits.max_streams:
            conn.reset_stream(sid, REFUSED_STREAM)
            return
        try:
            head, chunked, length = request_head(headers, not ended)
        except Malformed as e:
            log.info("client %s: HTTP/2 stream %d: malformed request: %s",
                     self.outer.ip.decode(), sid, e)
            conn.reset_stream(sid, PROTOCOL_ERROR)
            return
        stream = H2Stream(self, sid, chunked, length)
        self.streams[sid] = stream
        self.outer.h2_wait(0)
        self.requests += 1
        if self.limits.max_requests and self.requests >= self.limits.max_requests:
            self.goaway(NO_ERROR)  # this one is served; the client opens anew
        stream.start(head)

    def _reset(self, sid: int, remote: bool) -> None:
        stream = self.streams.pop(sid, None)
        if remote:
            now = self.loop.time()
            if now - self.resets_since >= RESET_WINDOW:
                self.resets_since = now
                self.resets = 0
            self.resets += 1
            if self.resets > self.limits.max_resets:
                if stream is not None:
                    stream.lost()
                self.fail(ENHANCE_YOUR_CALM, "too many stream resets (rapid reset)")
                return
        if stream is not None:
            stream.lost()
        self._idle_check()

    def _window(self, sid: int) -> None:
        if self.socket_paused or self.closed:
            return
        if sid:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.send()
        else:
            for stream in list(self.streams.values()):
                stream.send()

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
        self._idle_check()

    def _idle_check(self) -> None:
        if self.closed or self.streams:
            return
        if self.draining:
            self.flush()
            self.close(False)
        else:
            self.outer.h2_wait(self.limits.keepalive)


class H2Stream:
    """One stream: the transport of its `ClientConnection` and the handler of the
    parser that reads what that connection answers."""

    def __init__(self, session: H2Session, sid: int, chunked: bool, length: int) -> None:
        self.session = session
        self.sid = sid
        self.chunked = chunked  # the request body goes in chunks (no content-length)
        # What the content-length leaves of the body (-1: none): DATA must match it
        # exactly (RFC 9113 8.1.1), so the HTTP/1.1 framing can never disagree.
        self.remaining = length
        self.client: Any = None
        self.parser: Any = ResponseParser(self, max_header_bytes=1 << 20,
                                          max_header_count=10000)
        self.in_paused = False  # the ClientConnection holds its reading
        self.held: deque[tuple[bytes, int]] = deque()  # request data while it does
        self.drain_soon = False
        self.req_ended = False
        self.out: deque[bytes] = deque()
        self.out_size = 0
        self.app_paused = False  # the ClientConnection was told to pause writing
        self.headers_sent = False
        self.resp_done = False  # the whole response is parsed
        self.ended = False  # END_STREAM or RST_STREAM went out
        self.gone = False  # the ClientConnection is let go
        self.head_request = False
        self.end_sent = False
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent after the last DATA
        self.pending_headers: list[tuple[bytes, bytes]] = []

    # -- started by the session ----------------------------------------------------------
    def start(self, head: bytes) -> None:
        session = self.session
        self.head_request = head.startswith(b"HEAD ")
        self.parser.expect_no_body(self.head_request)
        client = ClientConnection(session.core, session.outer.listener)
        client.set_stream(session.outer.ip, session.outer)
        self.client = client
        client.connection_made(self)  # type: ignore[arg-type]  # (a transport in all but name)
        if not self.gone:
            client.data_received(head)

    def request_data(self, data: bytes, size: int) -> None:
        if self.gone or self.req_ended:
            if size:
                self.session.conn.acknowledge(self.sid, size)
            return
        if self.remaining >= 0:
            self.remaining -= len(data)
            if self.remaining < 0:
                self._malformed()
                return
        if self.chunked and data:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if self.in_paused or self.held:
            self.held.append((data, size))
            return
        self._feed(data, size)

    def request_ended(self) -> None:
        if self.req_ended:
            return
        if self.remaining > 0:
            self._malformed()
            return
        self.req_ended = True
        if self.chunked:
            if self.in_paused or self.held:
                self.held.append((b"0\r\n\r\n", 0))
            else:
                self._feed(b"0\r\n\r\n", 0)

    def request_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        # Request trailers are dropped (as most HTTP/1.1 origins would ignore them);
        # the body ends here.
        self.request_ended()

    def _feed(self, data: bytes, size: int) -> None:
        if data and not self.gone:
            self.client.data_received(data)
        if size and not self.session.closed:
            self.session.conn.acknowledge(self.sid, size)

    def lost(self) -> None:
        """The client reset the stream or the connection is gone."""
        self.ended = True
        self.out.clear()
        self.out_size = 0
        self._let_go()

    def check_paused(self) -> None:
        if not self.app_paused and self.client is not None and not self.gone:
            self.app_paused = True
            self.client.pause_writing()

    # -- the ClientConnection's transport ------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.ended or self.resp_done or self.gone:
            return
        try:
            self.parser.feed(data)
        except HttpParseError as e:
            log.warning("h2 stream %d: unreadable response from the exchange: %s", self.sid,
                        e.reason)
            self._reset(INTERNAL_ERROR)

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def write_eof(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if not self.resp_done and not self.ended and not self.gone:
            if self.parser.message_needs_eof:
                try:
                    self.parser.feed_eof()  # a close-delimited body ends here
                except HttpParseError:
                    pass
            if not self.resp_done:
                self._reset(INTERNAL_ERROR)  # a cut answer: never a complete one
        if self.ended:
            self._schedule_let_go()
        # else: the answer is complete and waits for the client's window; the stream
        # ends (and lets its connection go) once it is out.

    def abort(self) -> None:
        if not self.ended:
            self._reset(INTERNAL_ERROR)
        self._schedule_let_go()

    def is_closing(self) -> bool:
        return self.gone or self.ended

    def pause_reading(self) -> None:
        self.in_paused = True

    def resume_reading(self) -> None:
        self.in_paused = False
        if self.held and not self.drain_soon:
            # From the loop, never from inside the caller (as a socket transport does).
            self.drain_soon = True
            self.session.loop.call_soon(self._drain_held)

    def _drain_held(self) -> None:
        self.drain_soon = False
        while self.held and not self.in_paused and not self.gone:
            data, size = self.held.popleft()
            self._feed(data, size)
        self.session.flush()

    def get_write_buffer_size(self) -> int:
        return self.out_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return default  # not ours to write to
        return self.session.transport.get_extra_info(name, default)

    # -- the response parser's handler -------------------------------------------------
    def on_head(self, head: Any) -> None:
        status = head.status
        headers = [(b":status", b"%d" % status)]
        for name, value in head.headers():
            name = name.lower()
            if name not in _HOP:
                headers.append((name, value))
        if status < 200:
            if status != 101:
                self._send_headers(headers, False)  # informational; the answer follows
            return
        self.pending_headers = headers
        if head.body_kind and not (head.body_kind == BODY_LENGTH and head.content_length == 0):
            self._send_headers(headers, False)
        # else (no body at all): one HEADERS frame with END_STREAM once the message is
        # complete; that is also gRPC's trailers-only answer (grpc-status in it).

    def on_body(self, chunk: Any) -> None:
        data = bytes(chunk)
        if not data:
            return
        self.out.append(data)
        self.out_size += len(data)
        self.send()
        if self.out_size > OUT_HIGH:
            self.check_paused()

    def on_message_complete(self) -> None:
        if self.parser.head is not None and self.parser.head.status < 200:
            return
        self.resp_done = True
        raw = self.parser.trailers
        if raw:
            # The response's trailer section (gRPC's grpc-status above all): a HEADERS
            # frame with END_STREAM after the last DATA (RFC 9113 8.1). The fields are
            # those an HTTP/1.1 client gets (trailer_fields drops the same as
            # last_chunk, the connection-level ones HTTP/2 forbids among them).
            self.trailers = trailer_fields(raw) or None
        if not self.headers_sent:
            self._send_headers(self.pending_headers, True)
            self._finished()
        else:
            self.send()

    # -- internals ----------------------------------------------------------------------
    def _send_headers(self, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        session = self.session
        if session.closed or self.ended:
            return
        try:
            session.conn.send_headers(self.sid, headers, end_stream=end)
        except H2StreamClosed:
            self._reset(INTERNAL_ERROR)
            return
        if headers[0][1][:1] != b"1":
            self.headers_sent = True
        session.flush_later()

    def send(self) -> None:
        """Send what the client's windows allow."""
        session = self.session
        if self.ended or session.closed or session.socket_paused:
            return
        if not self.headers_sent:
            self._maybe_resume()
            return
        conn = session.conn
        out = self.out
        try:
            while out:
                window = min(conn.send_window(self.sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                data = out[0]
                if len(data) > window:
                    out[0] = data[window:]
                    data = data[:window]
                else:
                    out.popleft()
                self.out_size -= len(data)
                last = self.resp_done and not out and self.trailers is None
                conn.send_data(self.sid, data, end_stream=last)
                self.end_sent = last
            if self.resp_done and not out and not self.end_sent:
                if self.trailers is not None:
                    conn.send_headers(self.sid, self.trailers, end_stream=True)
                else:
                    conn.end_stream(self.sid)  # an empty DATA frame with END_STREAM
                self.end_sent = True
        except H2StreamClosed:
            self._reset(INTERNAL_ERROR)
            return
        session.flush_later()
        self._maybe_resume()
        if self.end_sent:
            self._finished()

    def _maybe_resume(self) -> None:
        if self.app_paused and self.out_size <= OUT_LOW and not self.gone:
            self.app_paused = False
            self.client.resume_writing()

    def _finished(self) -> None:
        self.ended = True
        if not self.req_ended and not self.session.closed:
            # The answer is complete before the request: the rest is not wanted
            # (RFC 9113 8.1).
            self.session.conn.reset_stream(self.sid, NO_ERROR)
        self.session.flush_later()
        self._schedule_let_go()

    def _malformed(self) -> None:
        log.info("client %s: HTTP/2 stream %d: body length differs from content-length",
                 self.session.outer.ip.decode(), self.sid)
        self.req_ended = True
        self.held.clear()
        self._reset(PROTOCOL_ERROR)

    def _reset(self, code: int) -> None:
        session = self.session
        if not self.ended and not session.closed:
            self.ended = True
            session.conn.reset_stream(self.sid, code)
            session.flush_later()
        self.ended = True
        self.out.clear()
        self.out_size = 0
        self._schedule_let_go()

    def _schedule_let_go(self) -> None:
        # Not from inside the ClientConnection's own call (an exchange may be ending).
        if not self.gone:
            self.session.loop.call_soon(self._let_go)

    def _let_go(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.held.clear()
        self.session.stream_done(self)
        client = self.client
        # The stream, its parser and its connection refer to each other: break the
        # cycles so that reference counting frees them (not the cyclic GC).
        self.client = None
        self.parser = None
        if client is not None:
            client.connection_lost(None)
