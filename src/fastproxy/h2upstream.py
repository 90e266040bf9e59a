"""HTTP/2 to upstream servers (h2c:// prior knowledge, or TLS with ALPN "h2").

The exchange keeps speaking HTTP/1.1: each request gets an `H2Stream`, which is
the transport of an ordinary `_proxy.UpstreamConnection`. What the exchange
writes to it (the head from `_rewrite.request_head`, then the body, framed by
Content-Length or chunked) is parsed here and sent as HEADERS and DATA on a new
stream of a shared `H2Session`; the stream's response (HEADERS, DATA, trailing
HEADERS) is written back to the connection's `data_received` as an HTTP/1.1
response, chunked with a trailer section when it has no Content-Length. So the
response parser, the balancer, timeouts, retries, compression and the access log
work as for HTTP/1.1, and a gRPC call passes through with its trailers.

One `H2Upstream` per server and worker holds that server's sessions: a stream
goes on the first session with room under the server's
SETTINGS_MAX_CONCURRENT_STREAMS; a new session is opened when none has room.

Flow control both ways: response DATA is acknowledged (the stream's window
reopened) only once the UpstreamConnection took it, so a slow client, which
pauses the connection's reading, stops the server within one window
(`STREAM_WINDOW`); request DATA waits for the server's window, and a stream
holding more than `SEND_HIGH` unsent bytes pauses the exchange's writing (and
so the client's reading) until it drains, as a full socket buffer would.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from fastproxy._h2 import (
    CANCEL,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ClientConnection,
    H2ProtocolError,
    H2StreamClosed,
    error_name,
)
from fastproxy.responses import reason_phrase

log = logging.getLogger("fastproxy.proxy")

STREAM_WINDOW = 256 * 1024  # response bytes a server may send a stream ahead of the client
CONNECTION_WINDOW = 16 * 1024 * 1024  # ... and all streams of a session together
SEND_HIGH = 64 * 1024  # unsent request bytes of a stream that pause the exchange's writing
SEND_LOW = 16 * 1024  # ... and resume it
HEAD_LIMIT = 64 * 1024  # the request head we parse back is ours: this only guards a bug
HEADER_LIST = 64 * 1024  # a response's (or trailers') header list, as we announce it
REPLAY_LIMIT = 64 * 1024  # request body kept until the response begins, for a refused stream

# Request fields that are HTTP/1.1 connection business, never sent on a stream
# (RFC 9113 §8.2.2); Host becomes :authority; TE is ours ("trailers").
_REQUEST_DROP = frozenset([
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
    b"host", b"te", b"expect", b"http2-settings"])
_RESPONSE_DROP = frozenset([
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"])

# The response body of the HTTP/1.1 form: none, as long as Content-Length, chunked.
_NONE, _LENGTH, _CHUNKED = 0, 1, 2
# Request body parsing (what the exchange writes).
_HEAD, _BODY_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _DONE = range(7)


# tchar (RFC 9110 §5.6.2) in lower case: what a field name from a server may hold
# (RFC 9113 §8.2.1); ":" leads the pseudo-headers.
_NAME_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"


def _clean(value: bytes) -> bool:
    """No byte that could split an HTTP/1.1 line."""
    return b"\r" not in value and b"\n" not in value and b"\0" not in value


def _good_name(name: bytes) -> bool:
    """A lower-case token, or a pseudo-header (the connection layer passes names as
    they came: an upper-case Transfer-Encoding must not slip past _RESPONSE_DROP)."""
    if name[:1] == b":":
        name = name[1:]
    return bool(name) and not name.translate(None, _NAME_CHARS)


class StreamError(ConnectionResetError):
    """The stream ended without a complete response (reset, GOAWAY, session lost)."""


class StreamRefused(StreamError):
    """The server refused the stream before acting on it: RST_STREAM REFUSED_STREAM,
    a stream above a GOAWAY's last stream id, or a session that went away before the
    request's HEADERS were sent (RFC 9113 §8.7). The exchange may send it again
    (once) when `replay` holds the whole request body written so far (HTTP/1.1
    framing, as the exchange wrote it; it grows until the exchange hears of the
    refusal), or None when it was over REPLAY_LIMIT."""

    refused = True

    def __init__(self, reason: str, replay: list[bytes] | None) -> None:
        super().__init__(reason)
        self.replay = replay
        self.replay_size = sum(len(part) for part in replay) if replay is not None else 0


class H2Stream:
    """One request on an `H2Session`, seen by its UpstreamConnection as a transport."""

    def __init__(self, session: H2Session, protocol: Any) -> None:
        self.session = session
        self.protocol = protocol
        self.stream_id = 0  # given when the head is sent
        self.closed = False  # our side is done with it (closed or aborted)
        self.ended = False  # the response is complete (or the stream is gone)
        # request: the HTTP/1.1 bytes the exchange writes, parsed back
        self._state = _HEAD
        self._buf = bytearray()
        self._left = 0
        self._trailer_lines: list[bytes] = []
        self._trailer_fields: list[tuple[bytes, bytes]] | None = None
        self._unsent: list[bytes] = []
        self._unsent_size = 0
        self._end_pending = False  # END_STREAM goes with the last unsent byte
        self._request_ended = False
        self._own_paused = False
        self._told_paused = False
        self._head_request = False
        # response: HTTP/1.1 bytes for the protocol, held while its reading is paused
        self._body = _NONE
        self._trailers = b""
        self._reading_paused = False
        self._inbox: list[tuple[bytes, int]] = []
        self._delivering = False
        self._batch: list[bytes] = []  # see _push
        self._batch_flow = 0
        # The request as written, until the response begins (see StreamRefused).
        self._written: list[bytes] | None = []
        self._written_size = 0
        self._head_size = 0
        self._refused: StreamRefused | None = None

    # -- the transport the UpstreamConnection writes to ---------------------------
    def write(self, data: bytes) -> None:
        if self.closed or self._state == _DONE:
            refused = self._refused
            if refused is not None and refused.replay is not None and data:
                # Refused, and the exchange does not know yet: the body goes on into
                # what it will send again.
                refused.replay_size += len(data)
                if refused.replay_size > REPLAY_LIMIT:
                    refused.replay = None
                else:
                    refused.replay.append(bytes(data))
            return
        written = self._written
        if written is not None:
            self._written_size += len(data)
            if self._written_size - self._head_size > REPLAY_LIMIT and self._state != _HEAD:
                self._written = None
            else:
                written.append(bytes(data))
        self._buf += data
        try:
            self._parse()
        except H2StreamClosed as exc:
            if self.stream_id:
                # The stream was closed by the server meanwhile (its reset is coming).
                return
            # The session went away (GOAWAY, closed) between the stream's reservation
            # and its HEADERS: nothing was sent, so it is refused, not failed.
            self.on_reset(REFUSED_STREAM, f"not sent: {exc}")
            return
        except ValueError as exc:
            # Our own bytes that do not parse (a bug), or fields HPACK cannot encode:
            # this try fails as a reset before the response would.
            log.warning("upstream %s: cannot send the request over HTTP/2: %s",
                        self.session.upstream.label, exc or type(exc).__name__)
            self.on_reset(None, f"request not sent over HTTP/2: {exc}")
            return
        self.session.flush_soon()

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.session.transport.get_extra_info(name, default) \
            if self.session.transport is not None else default

    def get_write_buffer_size(self) -> int:
        return self._unsent_size

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self._inbox:
                self.session.loop.call_soon(self._deliver_held)

    def close(self) -> None:
        """The exchange is done with the stream: a request still going is cancelled
        (NO_ERROR once the response is complete, as a server does)."""
        self._finish(NO_ERROR if self.ended else CANCEL)

    def abort(self) -> None:
        self._finish(CANCEL)

    def _finish(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self._unsent.clear()
        self._inbox.clear()
        self._written = None
        session = self.session
        if self.stream_id and not (self.ended and self._request_ended):
            session.reset(self.stream_id, code)
        session.stream_done(self)
        session.loop.call_soon(self.protocol.connection_lost, None)

    # -- request: HTTP/1.1 -> HEADERS and DATA ---------------------------------------
    def _parse(self) -> None:
        buf = self._buf
        while buf and self._state != _DONE:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > HEAD_LIMIT:
                        raise ValueError("request head too long")
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._head_size = end + 4
                self._send_head(head)
            elif state == _BODY_LENGTH:
                n = min(len(buf), self._left)
                self._left -= n
                self._send_data(bytes(buf[:n]), self._left == 0)
                del buf[:n]
                if self._left == 0:
                    self._state = _DONE
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).partition(b";")[0], 16)
                del buf[:end + 2]
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._left = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                n = min(len(buf), self._left)
                self._left -= n
                self._send_data(bytes(buf[:n]), False)
                del buf[:n]
                if self._left == 0:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[:end + 2]
                if line:
                    self._trailer_lines.append(line)
                    continue
                self._state = _DONE
                if self._trailer_lines:
                    self._send_trailers()
                else:
                    self._send_data(b"", True)

    def _send_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        session = self.session
        authority = None
        length = -1
        chunked = False
        fields: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"host":
                authority = value
            elif name == b"content-length":
                length = int(value)
                fields.append((name, value))
            elif name == b"transfer-encoding":
                chunked = True
            elif name not in _REQUEST_DROP:
                fields.append((name, value))
        if target[:1] != b"/" and target != b"*":  # absolute-form: the path part only
            rest = target.partition(b"://")[2]
            target = b"/" + rest.partition(b"/")[2]
        self._head_request = method == b"HEAD"
        headers = [(b":method", method), (b":scheme", session.upstream.scheme),
                   (b":authority", authority or session.upstream.authority),
                   (b":path", target), *fields, (b"te", b"trailers")]
        end = not chunked and length <= 0
        self.stream_id = session.open_stream(self, headers, end)
        if end:
            self._request_ended = True
            self._state = _DONE
        elif chunked:
            self._state = _CHUNK_SIZE
        else:
            self._left = length
            self._state = _BODY_LENGTH

    def _send_data(self, data: bytes, end: bool) -> None:
        if data:
            self._unsent.append(data)
            self._unsent_size += len(data)
        if end:
            self._end_pending = True
        self.send_ready()
        if self._unsent_size > SEND_HIGH:
            self._own_paused = True
            self.update_paused()

    def _send_trailers(self) -> None:
        fields = []
        for line in self._trailer_lines:
            name, _, value = line.partition(b":")
            fields.append((name.strip().lower(), value.strip()))
        self._trailer_lines = []
        self._end_pending = True
        self._trailer_fields = fields
        self.send_ready()

    def send_ready(self) -> None:
        """Send what the server's windows allow (called again on WINDOW_UPDATE)."""
        if self.closed or not self.stream_id or self._request_ended:
            return
        conn = self.session.conn
        sid = self.stream_id
        try:
            while self._unsent:
                window = min(conn.send_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                data = self._unsent[0]
                if len(data) > window:
                    self._unsent[0] = data[window:]
                    data = data[:window]
                else:
                    self._unsent.pop(0)
                self._unsent_size -= len(data)
                last = self._end_pending and not self._unsent and self._trailer_fields is None
                conn.send_data(sid, data, end_stream=last)
                if last:
                    self._request_ended = True
            if self._end_pending and not self._unsent and not self._request_ended:
                if self._trailer_fields is not None:
                    conn.send_headers(sid, self._trailer_fields, end_stream=True)
                else:
                    conn.end_stream(sid)
                self._request_ended = True
        except (H2StreamClosed, ValueError):
            # The stream was closed by the server meanwhile (its reset is on the way).
            self._unsent.clear()
            self._unsent_size = 0
            self._request_ended = True
        if self._own_paused and self._unsent_size <= SEND_LOW:
            self._own_paused = False
            self.update_paused()

    def update_paused(self) -> None:
        """Tell the protocol to stop or go on writing: this stream's unsent bytes
        or the session's socket."""
        paused = self._own_paused or self.session.write_paused
        if paused != self._told_paused and not self.closed:
            self._told_paused = paused
            if paused:
                self.protocol.pause_writing()
            else:
                self.protocol.resume_writing()

    # -- response: HEADERS, DATA, trailers -> HTTP/1.1 ---------------------------------
    def on_response(self, headers: list[tuple[bytes, bytes]], ended: bool = False) -> None:
        """The response's HEADERS; `ended`: they carried END_STREAM (no body, no
        trailers: gRPC's trailers-only form), which goes on as `content-length: 0` so
        that an HTTP/2 client gets it as one HEADERS frame again."""
        self._written = None  # answered: never refused now
        status = 0
        lines = []
        length = None
        for name, value in headers:
            if not (_good_name(name) and _clean(value)):
                self.on_reset(None, "a header field with a bad name or CR, LF or NUL")
                return
            if name == b":status":
                status = int(value)
            elif name[:1] == b":":
                continue
            elif name == b"content-length":
                length = value
            elif name not in _RESPONSE_DROP:
                lines.append(b"%s: %s\r\n" % (name, value))
        if status < 200 or status > 999:
            self.on_reset(None, f"invalid :status {status}")
            return
        if self._head_request or status in (204, 304):
            self._body = _NONE
            if length is not None:
                lines.append(b"content-length: %s\r\n" % length)
        elif length is not None or ended:
            self._body = _LENGTH
            lines.append(b"content-length: %s\r\n" % (length if length is not None else b"0"))
        else:
            self._body = _CHUNKED
            lines.append(b"transfer-encoding: chunked\r\n")
        phrase = reason_phrase(status).encode()
        head = b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, phrase, b"".join(lines))
        self._push(head, 0)

    def on_data(self, data: bytes, flow: int) -> None:
        if self._body == _CHUNKED:
            if data:
                self._push(b"%x\r\n%s\r\n" % (len(data), data), flow)
            elif flow:
                self.session.acknowledge(self.stream_id, flow)
        elif self._body == _LENGTH:
            self._push(data, flow)
        elif flow:
            self.session.acknowledge(self.stream_id, flow)

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        lines = []
        for name, value in headers:
            if not (_good_name(name) and _clean(value)):
                self.on_reset(None, "a trailer field with a bad name or CR, LF or NUL")
                return
            if name[:1] != b":":
                lines.append(b"%s: %s\r\n" % (name, value))
        self._trailers = b"".join(lines)

    def on_end(self) -> None:
        self.ended = True
        if self._body == _CHUNKED:
            self._push(b"0\r\n" + self._trailers + b"\r\n", 0)

    def on_reset(self, code: int | None, reason: str = "") -> None:
        """The server reset the stream (`code`; REFUSED_STREAM also for a stream a
        GOAWAY refused), the session ended, or its response is bad (None: we
        reset it with PROTOCOL_ERROR, unless `reason` says it was reset already)."""
        if self.closed:
            return
        if code is None and self.stream_id:
            self.session.reset(self.stream_id, PROTOCOL_ERROR)
        self.closed = True
        self.ended = True
        self._inbox.clear()
        self.session.stream_done(self)
        exc: StreamError
        if code == REFUSED_STREAM and self._written is not None \
                and self._written_size - self._head_size <= REPLAY_LIMIT:
            if not reason:
                reason = "stream refused by the server (REFUSED_STREAM)"
            written = b"".join(self._written)[self._head_size:]
            self._refused = exc = StreamRefused(reason, [written] if written else [])
        else:
            if code is not None and not reason:
                reason = f"stream reset by the server ({error_name(code)})"
            exc = StreamError(reason)
        self._written = None
        self.session.loop.call_soon(self.protocol.connection_lost, exc)

    def _push(self, data: bytes, flow: int) -> None:
        if self._reading_paused or self._inbox or self._delivering:
            self._inbox.append((data, flow))
            return
        session = self.session
        if session.reading:
            # Within one read of the session: what this stream got is handed over
            # once, joined, after the read (one parse, one write to the client).
            if not self._batch:
                session.touched.append(self)
            self._batch.append(data)
            self._batch_flow += flow
            return
        self._give(data, flow)

    def deliver_batch(self) -> None:
        data = self._batch[0] if len(self._batch) == 1 else b"".join(self._batch)
        flow = self._batch_flow
        self._batch = []
        self._batch_flow = 0
        if self.closed:
            return
        if self._reading_paused or self._inbox:
            self._inbox.append((data, flow))
        else:
            self._give(data, flow)

    def _give(self, data: bytes, flow: int) -> None:
        if self.closed:
            return
        self._delivering = True
        try:
            self.protocol.data_received(data)
        finally:
            self._delivering = False
        if flow and not self.closed:
            self.session.acknowledge(self.stream_id, flow)

    def _deliver_held(self) -> None:
        while self._inbox and not self._reading_paused and not self.closed:
            data, flow = self._inbox.pop(0)
            self._give(data, flow)
        self.session.flush_soon()


class H2Session(asyncio.Protocol):
    """One HTTP/2 connection to a server, carrying many streams: the handler of its
    `_h2.ClientConnection`, whose h2_* methods below are called from within
    `receive` (as h2server's are by a ServerConnection)."""

    def __init__(self, upstream: H2Upstream) -> None:
        self.upstream = upstream
        self.loop = upstream.loop
        # The preface, our SETTINGS (no push, STREAM_WINDOW) and the connection's
        # window past the default are queued here; connection_made sends them.
        self.conn = ClientConnection(self, HEADER_LIST, HEADER_LIST, STREAM_WINDOW,
                                     CONNECTION_WINDOW)
        self.transport: Any = None
        self.streams: dict[int, H2Stream] = {}
        self.reserved = 0  # streams handed out whose head is not sent yet
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ready.add_done_callback(_retrieved)
        self.write_paused = False
        self.closed = False
        self.goaway = False
        self.reading = False  # inside data_received: streams batch, one flush at the end
        self._flush_due = False
        self.touched: list[H2Stream] = []
        self._idle: asyncio.TimerHandle | None = None

    @property
    def load(self) -> int:
        return len(self.streams) + self.reserved

    def has_room(self) -> bool:
        """Up (the server's SETTINGS came), not going away, and under the server's
        SETTINGS_MAX_CONCURRENT_STREAMS with the streams handed out."""
        return (self.ready.done() and not self.ready.cancelled()
                and not self.ready.exception() and not self.closed
                and not self.goaway
                and self.conn.stream_room > self.reserved)

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.flush()

    def data_received(self, data: bytes) -> None:
        if not self.ready.done() and data[:5] == b"HTTP/":
            # An HTTP/1.x server answering our preface (the first frame must be
            # SETTINGS: this says why it is not).
            self.lost(ConnectionError("the server answered in HTTP/1.x: not an HTTP/2 server"))
            self.transport.abort()
            return
        self.reading = True
        try:
            self.conn.receive(data)
        except H2ProtocolError as exc:
            # The connection layer queued GOAWAY with the error's code.
            log.warning("upstream %s: HTTP/2 protocol error: %s (%s)", self.upstream.label,
                        exc.reason, error_name(exc.code))
            self.reading = False
            self.flush()
            self.lost(exc)
            self.transport.close()
            return
        finally:
            self.reading = False
        touched = self.touched
        self.touched = []
        for stream in touched:
            stream.deliver_batch()
        self.flush_soon()
        if self.goaway and not self.streams and not self.reserved:
            self.close()

    # -- the connection layer's handler (called inside conn.receive) ---------------------
    def h2_response(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.on_response(headers, ended)

    def h2_trailers(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.on_trailers(headers)

    def h2_data(self, sid: int, data: bytes, size: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.on_data(data, size)
        elif size:
            self.conn.acknowledge(sid, size)  # a stream we are done with

    def h2_end(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.on_end()

    def h2_reset(self, sid: int, code: int, remote: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        if not remote:
            # Our connection layer found the server's frames on it malformed and
            # reset it already.
            stream.on_reset(code, f"malformed response on the stream ({error_name(code)})")
        elif code == REFUSED_STREAM and sid > self.conn.goaway_last:
            stream.on_reset(code, "the server is going away (GOAWAY) and did not "
                                  "process the stream")
        else:
            stream.on_reset(code)

    def h2_window(self, sid: int) -> None:
        if sid:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.send_ready()
        else:
            for each in list(self.streams.values()):
                each.send_ready()

    def h2_ping(self) -> None:
        """Answered by the connection layer."""

    def h2_settings(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
            if not self.streams and not self.reserved and self._idle is None:
                # Closed after idle_timeout unless a stream comes (reserve).
                self._idle = self.loop.call_later(self.upstream.idle_timeout, self.close)
        for each in list(self.streams.values()):
            each.send_ready()  # the initial window may have grown

    def h2_goaway(self, code: int, last_stream_id: int) -> None:
        """No new streams here; those above `last_stream_id` are refused next
        (h2_reset REFUSED_STREAM, from the connection layer); the others finish,
        and the session closes after the last (RFC 9113 §6.8)."""
        self.goaway = True
        if code != NO_ERROR:
            log.warning("upstream %s: the server sent GOAWAY (%s)", self.upstream.label,
                        error_name(code))
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(
                f"the server refused the HTTP/2 connection (GOAWAY {error_name(code)})"))
        self.upstream.forget(self)  # no new streams: not offered any more

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream.update_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.update_paused()

    # -- used by the streams -------------------------------------------------------------
    def open_stream(self, stream: H2Stream, headers: list[tuple[bytes, bytes]], end: bool) -> int:
        """A new stream for `stream` (H2StreamClosed: the session cannot take it)."""
        if self.closed:
            raise H2StreamClosed("the HTTP/2 connection closed before the request was sent")
        sid: int = self.conn.open_stream(headers, end)  # may raise: still reserved
        self.reserved -= 1
        self.streams[sid] = stream
        if self.write_paused:
            stream.update_paused()
        return sid

    def stream_done(self, stream: H2Stream) -> None:
        if stream.stream_id:
            self.streams.pop(stream.stream_id, None)
        else:
            self.reserved -= 1  # closed before its head was sent
        self.flush_soon()
        if not self.streams and not self.reserved:
            if self.goaway or self.upstream.closing:
                self.close()
            elif not self.closed:
                self._idle = self.loop.call_later(self.upstream.idle_timeout, self.close)
        self.upstream.room()

    def reserve(self) -> None:
        self.reserved += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def acknowledge(self, sid: int, flow: int) -> None:
        self.conn.acknowledge(sid, flow)
        if not self.reading:
            self.flush_soon()

    def reset(self, sid: int, code: int) -> None:
        self.conn.reset_stream(sid, code)  # (nothing if it is closed already)
        self.flush_soon()

    def flush(self) -> None:
        """Send now what the connection layer has for the socket (see `flush_soon`)."""
        self._flush_due = False
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Send what the connection layer has once this loop iteration's callbacks
        ran: a request's HEADERS and DATA (written separately by the exchange), and
        the frames of the streams handled in one iteration, leave in one write (each
        write to a socket costs a system call, and on loopback the receiver's work too)."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self.flush)

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.closed:
            return
        self.closed = True
        self.upstream.forget(self)
        if self.transport is not None:
            self.conn.goaway(NO_ERROR, 0)
            self.flush()
            self.transport.close()

    def lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.upstream.forget(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self.ready.done():
            # An OSError, as a failed connect is (the exchange tries the next server).
            self.ready.set_exception(
                exc if isinstance(exc, OSError) else ConnectionError(
                    f"HTTP/2 connection failed: {exc}" if exc
                    else "the server closed the connection before its HTTP/2 SETTINGS"))
        for stream in list(self.streams.values()):
            stream.on_reset(None, f"connection to the server lost{f': {exc}' if exc else ''}")
        # The connection layer holds our bound methods: let them go (not inside
        # receive: this runs from connection_lost or after receive raised).
        self.conn.stop()


class H2Upstream:
    """The HTTP/2 sessions of one server in one worker (see the module's text)."""

    def __init__(self, core: Any, port: int, label: str, context: ssl.SSLContext | None,
                 server_hostname: str | None, connect_timeout: float,
                 idle_timeout: float) -> None:
        self.core = core  # _proxy.Core: its loop, set once the worker runs
        self.connect_timeout = connect_timeout
        self.port = port
        self.label = label
        self.context = context
        self.server_hostname = server_hostname
        self.idle_timeout = idle_timeout
        self.scheme = b"https" if context is not None else b"http"
        self.authority = label.encode()
        self.sessions: list[H2Session] = []
        self.connecting: asyncio.Future[H2Session] | None = None
        self.closing = False
        self.connects = 0  # sessions opened (for the tests and the logs)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop = self.core.loop
        return loop

    def take(self, factory: Callable[[], Any]) -> Any:
        """A new UpstreamConnection on a stream of a session with room, or None
        (then `open`): no task and no wait when a session is up."""
        for session in self.sessions:
            if session.has_room():
                session.reserve()
                protocol = factory()
                protocol.connection_made(H2Stream(session, protocol))
                return protocol
        return None

    async def open(self, factory: Callable[[], Any], host: str) -> Any:
        """A new UpstreamConnection (from `factory`) on a stream of a session with
        room, opening a session to `host` (the address to connect to) if none has."""
        for _ in range(4):
            protocol = self.take(factory)
            if protocol is not None:
                return protocol
            if self.connecting is None:
                self.connecting = self.loop.create_future()
                task = self.loop.create_task(self._connect(host))
                task.add_done_callback(_quiet)
            # Shielded: a waiter that times out does not cancel the others' connect.
            await asyncio.shield(self.connecting)
        raise ConnectionError("no HTTP/2 stream available (the new connections are full)")

    async def _connect(self, host: str) -> None:
        waiting = self.connecting
        assert waiting is not None
        session: H2Session | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                session = await self._session(host)
                await session.ready  # the server's SETTINGS: it speaks HTTP/2
                if session.conn.stream_room == 0 and not session.load:
                    raise ConnectionError("the server allows no HTTP/2 streams "
                                          "(SETTINGS_MAX_CONCURRENT_STREAMS 0)")
        except BaseException as exc:
            self.connecting = None
            if session is not None and not session.closed:
                # Connected, but no SETTINGS in time (a server that says nothing), or
                # no stream allowed: the socket is not kept, nor the session.
                session.closed = True
                self.forget(session)
                session.transport.abort()
            if not waiting.done():
                waiting.set_exception(exc)
            raise
        self.connecting = None
        waiting.set_result(session)

    async def _session(self, host: str) -> H2Session:
        session: H2Session
        if self.context is None:
            _, session = await self.loop.create_connection(
                lambda: H2Session(self), host, self.port)
        else:
            _, session = await self.loop.create_connection(
                lambda: H2Session(self), host, self.port, ssl=self.context,
                server_hostname=self.server_hostname)
            ssl_object = session.transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                session.transport.abort()
                raise ConnectionError("the server did not agree to HTTP/2 (ALPN h2)")
        self.connects += 1
        self.sessions.append(session)
        return session

    def room(self) -> None:
        """A stream ended: nothing waits for room (new sessions are opened instead)."""

    def forget(self, session: H2Session) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def close_idle(self) -> None:
        """Shutdown: close the sessions without streams; the others close after
        their last stream."""
        self.closing = True
        for session in list(self.sessions):
            if not session.streams and not session.reserved:
                session.close()


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # looked at: its waiters, if any, got it


def _quiet(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: the waiters got it
