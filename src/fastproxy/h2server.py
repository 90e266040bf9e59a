"""HTTP/2 to clients (RFC 9113), on TLS listeners by ALPN "h2" and on h2c listeners
with prior knowledge.

The framing, HPACK and flow-control bookkeeping are the `h2` library's. What this
module adds is the bridge to the HTTP/1.1 machinery: every stream is served by its
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
client stream resets per 10 s (rapid reset) and PING/SETTINGS frames per second
bounded (GOAWAY ENHANCE_YOUR_CALM), also while their answers queue because the
client does not read.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from fastproxy._http import BODY_LENGTH, HttpParseError, ResponseParser
from fastproxy._proxy import ClientConnection

log = logging.getLogger("fastproxy.h2")

STREAM_WINDOW = 256 * 1024  # a stream's receive window (request bodies)
CONN_WINDOW = 1024 * 1024  # the connection's: all unacknowledged request bytes at once
OUT_HIGH = 64 * 1024  # response bytes a stream holds before its exchange pauses
OUT_LOW = 16 * 1024  # ... and resumes
RESET_WINDOW = 10.0  # seconds over which client resets are counted
# Response fields that HTTP/2 forbids (RFC 9113 8.2.2): the connection's business.
# Fields that do not belong in a trailer section (RFC 9110 6.5.1): framing, routing,
# and what the proxy answers for; the HTTP/1.1 path drops them too.
_NOT_TRAILERS = frozenset((b"content-length", b"content-type", b"content-encoding", b"host",
                           b"authorization", b"set-cookie", b"trailer", b"te"))
_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                  b"upgrade", b"te"))
# Request fields that HTTP/2 forbids (te is allowed as "trailers" only).
_FORBIDDEN = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade"))
_PSEUDO = frozenset((b":method", b":path", b":scheme", b":authority"))
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")  # a token in lower case (RFC 9113 8.2.1)
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_VISIBLE = re.compile(rb"[\x21-\x7e]+")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# h2's own checks of request fields are a chain of generators per field (a fifth of
# the time of a request in the profile): request_head makes the same checks (RFC
# 9113 8.2 and 8.3) in one pass, and joins cookies. Outbound, our fields are clean.
_CONFIG = H2Configuration(client_side=False, header_encoding=None,
                          validate_inbound_headers=False, normalize_inbound_headers=False,
                          validate_outbound_headers=False, normalize_outbound_headers=False)


class _Connection(H2Connection):
    """h2's connection, but a stream over the advertised limit is left to the session
    (REFUSED_STREAM, a stream error, as RFC 9113 5.1.2 asks): h2 itself would end the
    connection. Its own check still ends a client that goes on far past it."""

    @property
    def open_inbound_streams(self) -> int:
        return int(super().open_inbound_streams) // 2

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        """A client's graceful GOAWAY (NO_ERROR) opens no more streams but waits for
        the answers to those it opened (RFC 9113 6.8). h2 would close its state (the
        client's later frames, a SETTINGS ACK that crossed the GOAWAY in the same
        read, would then be protocol errors) and drop what is queued to send: the
        state stays open and the queue is kept; the session drains (see
        data_received). Any other GOAWAY is h2's."""
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)  # type: ignore[no-any-return]
        event = ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


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
        conn = _Connection(config=_CONFIG)
        conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.header_list,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        })
        conn.decoder.max_header_list_size = limits.decode_list
        conn.initiate_connection()
        conn.increment_flow_control_window(CONN_WINDOW - 65535)
        self.conn = conn
        self.flush()
        outer.h2_wait(limits.header_timeout)  # the preface and a first request
        if first:
            self.data_received(first)

    # -- from the outer ClientConnection ---------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            # h2 queued a GOAWAY with the error's code.
            log.info("client %s: HTTP/2 connection error: %s", self.outer.ip.decode(), e)
            self.close(False)
            return
        if self._frame_too_big():
            self.fail(ErrorCodes.FRAME_SIZE_ERROR, "frame over the maximum frame size")
            return
        if self._header_block_too_big():
            self.fail(ErrorCodes.ENHANCE_YOUR_CALM, "header block over the header list size")
            return
        for event in events:
            if self.closed:
                return
            kind = type(event)
            if kind is RequestReceived:
                self._request(event)
            elif kind is DataReceived:
                self._data(event)
            elif kind is StreamEnded:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.request_ended()
            elif kind is StreamReset:
                self._reset(event)
            elif kind is WindowUpdated:
                self._window(event.stream_id)
            elif kind is PingReceived or kind is RemoteSettingsChanged:
                if not self._control_frame():
                    return
                if kind is RemoteSettingsChanged:
                    self._window(0)
            elif kind is TrailersReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.request_trailers(event.headers)
            elif kind is ConnectionTerminated:
                if event.error_code != ErrorCodes.NO_ERROR or not self.streams:
                    self.close(False)
                    return
                # The client's graceful GOAWAY (h2's state stays open: _Connection):
                # the streams it opened are answered, then the socket closes.
                self.draining = True
                self.last_stream = self.conn.highest_inbound_stream_id
        self.flush()

    def eof_received(self) -> bool:
        self.close(False)
        return False

    def connection_lost(self, exc: object) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.lost()
        self.streams.clear()
        # h2's connection refers to itself (its frame dispatch table of bound methods)
        # and keeps every closed stream's id: a cycle that only a full collection of
        # the cyclic GC would free, long after (it lived long enough to be old).
        # Nothing uses it once closed.
        self.conn.__dict__.clear()

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
        self.goaway(ErrorCodes.NO_ERROR)
        self.close(False)

    def shutdown(self) -> None:
        """Graceful stop: GOAWAY; the streams in flight finish, then the socket closes."""
        if self.closed or self.draining:
            return
        self.goaway(ErrorCodes.NO_ERROR)
        if not self.streams:
            self.close(False)

    # -- internals ----------------------------------------------------------------------
    def goaway(self, code: int) -> None:
        """A GOAWAY that leaves h2's state open, so that the streams in flight can
        finish (h2's close_connection would end them all)."""
        if self.draining or self.closed:
            return
        self.draining = True
        self.last_stream = self.conn.highest_inbound_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream
        frame.error_code = code
        self.flush()
        self.transport.write(frame.serialize())

    def fail(self, code: int, why: str) -> None:
        """A connection error: GOAWAY with `code`, then close."""
        log.info("client %s: HTTP/2 %s: %s", self.outer.ip.decode(), code.name
                 if isinstance(code, ErrorCodes) else code, why)
        if not self.closed:
            try:
                self.conn.close_connection(code)
            except ProtocolError:
                pass
        self.close(False)

    def close(self, abort: bool) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        for stream in list(self.streams.values()):
            stream.lost()
        self.streams.clear()
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

    def _frame_too_big(self) -> bool:
        # h2 checks a frame's length only once all of it is buffered: a client could
        # make it hold 16 MB. What h2 left unparsed is the start of one frame; its
        # header says how long it will be.
        rest = getattr(self.conn.incoming_buffer, "_data", b"")
        if len(rest) < 9:
            return False
        length = (rest[0] << 16) | (rest[1] << 8) | rest[2]
        return bool(length > self.conn.max_inbound_frame_size)

    def _header_block_too_big(self) -> bool:
        # h2 gathers HEADERS + CONTINUATION until END_HEADERS and only then decodes
        # (and checks the list size); meanwhile the block is bounded here. An HPACK
        # block is not larger than the list it decodes to (RFC 7541 counts 32 bytes
        # per field), so a block over the decode limit can only be refused.
        pending = getattr(self.conn.incoming_buffer, "_headers_buffer", None)
        if not pending:
            return False
        return bool(sum(len(frame.data) for frame in pending) > self.limits.decode_list)

    def _control_frame(self) -> bool:
        now = self.loop.time()
        if now - self.control_since >= 1.0:
            self.control_since = now
            self.control = 0
        self.control += 1
        if self.socket_paused:
            self.queued_control += 1
        if self.control > self.limits.max_control or self.queued_control > self.limits.max_control:
            self.fail(ErrorCodes.ENHANCE_YOUR_CALM, "too many PING/SETTINGS frames")
            return False
        return True

    def _request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        conn = self.conn
        if self.draining and sid > self.last_stream:
            conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self.limits.max_streams:
            conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        try:
            head, chunked, length = request_head(event.headers, event.stream_ended is None)
        except Malformed as e:
            log.info("client %s: HTTP/2 stream %d: malformed request: %s",
                     self.outer.ip.decode(), sid, e)
            conn.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        stream = H2Stream(self, sid, chunked, length)
        self.streams[sid] = stream
        self.outer.h2_wait(0)
        self.requests += 1
        if self.limits.max_requests and self.requests >= self.limits.max_requests:
            self.goaway(ErrorCodes.NO_ERROR)  # this one is served; the client opens anew
        stream.start(head)

    def _data(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        size = event.flow_controlled_length
        if stream is None:
            # A stream we reset or finished: its bytes count for the connection only.
            if size:
                self.conn.acknowledge_received_data(size, event.stream_id)
            return
        stream.request_data(event.data, size)

    def _reset(self, event: StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if event.remote_reset:
            now = self.loop.time()
            if now - self.resets_since >= RESET_WINDOW:
                self.resets_since = now
                self.resets = 0
            self.resets += 1
            if self.resets > self.limits.max_resets:
                if stream is not None:
                    stream.lost()
                self.fail(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets (rapid reset)")
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


class Malformed(Exception):
    """A request HTTP/2 calls malformed (RFC 9113 8.1.1): a stream error."""


def request_head(headers: list[tuple[bytes, bytes]], has_body: bool
                 ) -> tuple[bytes, bool, int]:
    """A stream's request as an HTTP/1.1 head: (head, body chunked, content length or
    -1). Raises Malformed for what RFC 9113 8.2 and 8.3 forbid."""
    method = path = authority = scheme = host = None
    lines = []
    cookies = []
    length = -1
    regular = False
    for name, value in headers:
        if _BAD_VALUE.search(value) is not None:
            raise Malformed(f"bad value of {name!r}")
        if name[:1] == b":":
            if regular or name not in _PSEUDO:
                raise Malformed(f"pseudo-header {name!r} misplaced or unknown")
            if name == b":method":
                if method is not None:
                    raise Malformed("two :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise Malformed("two :path")
                path = value
            elif name == b":authority":
                if authority is not None:
                    raise Malformed("two :authority")
                authority = value
            else:
                if scheme is not None:
                    raise Malformed("two :scheme")
                scheme = value
            continue
        regular = True
        if _NAME.fullmatch(name) is None:
            raise Malformed(f"bad field name {name!r}")
        if name in _FORBIDDEN or (name == b"te" and value != b"trailers"):
            raise Malformed(f"connection-specific field {name.decode()}")
        if name == b"cookie":
            cookies.append(value)  # split by the client (RFC 9113 8.2.3): joined again
            continue
        if name == b"host":
            if host is not None:
                raise Malformed("two host fields")
            host = value
            continue
        if name == b"content-length":
            if _DIGITS.fullmatch(value) is None or (length >= 0 and int(value) != length):
                raise Malformed("bad content-length")
            length = int(value)
        lines.append(b"%s: %s\r\n" % (name, value))
    if method is None or _TOKEN.fullmatch(method) is None:
        raise Malformed("no valid :method")
    if authority is not None and host is not None and authority != host:
        raise Malformed(":authority and host differ")
    authority = authority if authority is not None else host
    if method == b"CONNECT":
        if path is not None or scheme is not None or authority is None:
            raise Malformed("CONNECT takes :authority only")
        path = authority
    elif path is None or scheme is None or _VISIBLE.fullmatch(path) is None:
        raise Malformed("no valid :path and :scheme")
    if authority is not None and _VISIBLE.fullmatch(authority) is None:
        raise Malformed("bad :authority")
    if cookies:
        lines.append(b"cookie: %s\r\n" % b"; ".join(cookies))
    chunked = has_body and length < 0
    start = b"%s %s HTTP/1.1\r\n" % (method, path)
    host_line = b"Host: %s\r\n" % authority if authority is not None else b""
    tail = b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n"
    return b"".join((start, host_line, *lines, tail)), chunked, length


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
                self.session.conn.acknowledge_received_data(size, self.sid)
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
            try:
                self.session.conn.acknowledge_received_data(size, self.sid)
            except ProtocolError:
                pass

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
            self._reset(ErrorCodes.INTERNAL_ERROR)

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
                self._reset(ErrorCodes.INTERNAL_ERROR)  # a cut answer: never a complete one
        if self.ended:
            self._schedule_let_go()
        # else: the answer is complete and waits for the client's window; the stream
        # ends (and lets its connection go) once it is out.

    def abort(self) -> None:
        if not self.ended:
            self._reset(ErrorCodes.INTERNAL_ERROR)
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
            # frame with END_STREAM after the last DATA (RFC 9113 8.1).
            fields = []
            for line in raw.split(b"\r\n"):
                name, sep, value = line.partition(b":")
                name = name.strip().lower()
                if sep and name and name not in _HOP and name not in _NOT_TRAILERS:
                    fields.append((name, value.strip()))
            self.trailers = fields or None
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
        except ProtocolError:
            self._reset(ErrorCodes.INTERNAL_ERROR)
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
                window = min(conn.local_flow_control_window(self.sid),
                             conn.max_outbound_frame_size)
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
        except ProtocolError:
            self._reset(ErrorCodes.INTERNAL_ERROR)
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
            try:
                self.session.conn.reset_stream(self.sid, ErrorCodes.NO_ERROR)
            except ProtocolError:
                pass
        self.session.flush_later()
        self._schedule_let_go()

    def _malformed(self) -> None:
        log.info("client %s: HTTP/2 stream %d: body length differs from content-length",
                 self.session.outer.ip.decode(), self.sid)
        self.req_ended = True
        self.held.clear()
        self._reset(ErrorCodes.PROTOCOL_ERROR)

    def _reset(self, code: int) -> None:
        session = self.session
        if not self.ended and not session.closed:
            self.ended = True
            try:
                session.conn.reset_stream(self.sid, code)
            except ProtocolError:
                pass
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
