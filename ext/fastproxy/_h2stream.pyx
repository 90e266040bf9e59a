"""HTTP/2 to clients above the connection layer: the session of one connection and
its streams, served by the HTTP/1.1 machinery (compiled because it runs for every
request: about a third of an HTTP/2 worker's time went to it in Python).

`H2Session` is the handler `_h2.ServerConnection` calls back for what the frames
mean (`h2_request`, `h2_data`, ...), the owner of the streams, and where the
limits on resets and control frames, GOAWAY and draining are kept; the outer
`ClientConnection` (the socket) hands it the bytes it reads. h2server.py keeps the
per-listener limits and the factory.

An `H2Stream` is two things at once. To its `ClientConnection` (the same routing,
filters, cache, balancing and logging as an HTTP/1.1 request) it is the transport:
the stream's request is written into that connection as HTTP/1.1 bytes, and what
the connection answers arrives in `write()`. To the `ResponseParser` that reads
that answer it is the handler, called as C methods (`on_head`, `on_body`,
`on_message_complete`), which turn the answer into HEADERS and DATA frames on the
session's `ServerConnection`.

Back-pressure: the stream's DATA is acknowledged (the client's window reopened)
only as its ClientConnection takes it; a response the client's windows hold back
past OUT_HIGH bytes pauses the exchange (`pause_writing`) until it drains to
OUT_LOW.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp

from fastproxy._h2 cimport ServerConnection
from fastproxy.ascii cimport is_lower_literal, lower
from fastproxy._http cimport K_LENGTH, MessageHead, ParserHandler, ResponseParser
from fastproxy.xxhash cimport XXH3_64bits, XXH3_64bits_withSeed

import asyncio
import logging
from collections import deque

from fastproxy._h2 import (
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2ProtocolError,
    H2StreamClosed,
    Malformed,
    error_name,
    request_head,
)
from fastproxy._hpack import STATIC_TABLE
from fastproxy._http import HttpParseError
from fastproxy._proxy import ClientConnection, trailer_fields

log = logging.getLogger("fastproxy.h2")

STREAM_WINDOW = 256 * 1024  # a stream's receive window (request bodies)
CONN_WINDOW = 1024 * 1024  # the connection's: all unacknowledged request bytes at once
RESET_WINDOW = 10.0  # seconds over which client resets are counted
OUT_HIGH = 64 * 1024  # response bytes a stream holds before its exchange pauses
OUT_LOW = 16 * 1024  # ... and resumes
cdef Py_ssize_t C_OUT_HIGH = OUT_HIGH
cdef Py_ssize_t C_OUT_LOW = OUT_LOW

# Response fields that HTTP/2 forbids (RFC 9113 8.2.2): the connection's business.
HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                 b"upgrade", b"te"))


cdef bytes lower_bytes(const char* p, Py_ssize_t n):
    """A lower-cased copy (HTTP/2 field names are lower case, RFC 9113 8.2.1)."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char* q = PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    for i in range(n):
        q[i] = lower(p[i])
    return out


# The fields of recent response heads, by an xxh3 of the name and value as received:
# the same upstream sends the same fields over and over, and a field taken from here
# is the same tuple of the same bytes objects each time, whose hashes Python keeps,
# so HPACK's table lookups (by_field, keyed by the tuple) cost no string hashing.
# Bounded: FIELD_SLOTS entries of at most FIELD_MAX bytes; Set-Cookie never kept.
cdef enum:
    FIELD_SLOTS = 1024  # a power of two
    FIELD_MAX = 256

cdef struct FieldSlot:
    uint64_t hash
    PyObject* field  # a (name lower-cased, value) tuple, owned; NULL: empty
    bint hop  # a connection-specific field: dropped

cdef FieldSlot FIELD_CACHE[FIELD_SLOTS]
# Names as the HPACK static table has them: a cached field uses the same object, so
# the encoder's lookups by name compare identities.
cdef dict STATIC_NAMES = {name: name for name, _ in STATIC_TABLE}
cdef list STATUS_FIELDS = [None] * 1000  # (":status", b"NNN") by status


cdef bint same_field(tuple field, const char* name, Py_ssize_t nl, const char* value,
                     Py_ssize_t vl) noexcept:
    """Whether `field` is this name (in any case) and value."""
    cdef bytes fname = <bytes>field[0], fvalue = <bytes>field[1]
    if PyBytes_GET_SIZE(fvalue) != vl or memcmp(PyBytes_AS_STRING(fvalue), value, vl) != 0:
        return False
    return is_lower_literal(name, nl, PyBytes_AS_STRING(fname), PyBytes_GET_SIZE(fname))


cdef tuple status_field(int status):
    cdef object field
    if status < 100 or status > 999:
        return (b":status", b"%d" % status)
    field = STATUS_FIELDS[status]
    if field is None:
        field = (b":status", b"%d" % status)
        STATUS_FIELDS[status] = field
    return <tuple>field


cpdef list response_fields(MessageHead head):
    """The HEADERS of a response head: `:status`, then its fields with lower-case
    names, minus the connection-specific ones."""
    cdef list fields = [status_field(head.status)]
    cdef const uint32_t* o = head.offsets()
    cdef const char* raw = PyBytes_AS_STRING(head.raw)
    cdef const char* name
    cdef const char* value
    cdef Py_ssize_t nl, vl
    cdef int i
    cdef uint64_t h
    cdef FieldSlot* slot
    cdef bytes lname
    cdef tuple field
    cdef bint hop
    for i in range(head.header_count):
        name = raw + o[4 * i]
        nl = o[4 * i + 1]
        value = raw + o[4 * i + 2]
        vl = o[4 * i + 3]
        slot = NULL
        if nl + vl <= FIELD_MAX:
            h = XXH3_64bits_withSeed(value, vl, XXH3_64bits(name, nl))
            slot = &FIELD_CACHE[h & (FIELD_SLOTS - 1)]
            if slot.field != NULL and slot.hash == h and \
                    same_field(<tuple>slot.field, name, nl, value, vl):
                if not slot.hop:
                    fields.append(<tuple>slot.field)
                continue
        lname = lower_bytes(name, nl)
        lname = STATIC_NAMES.get(lname, lname)
        hop = lname in HOP
        field = (lname, PyBytes_FromStringAndSize(value, vl))
        if slot != NULL and lname != b"set-cookie":
            Py_XDECREF(slot.field)
            Py_INCREF(field)
            slot.field = <PyObject*>field
            slot.hash = h
            slot.hop = hop
        if not hop:
            fields.append(field)
    return fields


cdef class H2Stream


@cython.final
cdef class H2Session:
    """One client connection that speaks HTTP/2: the session the connection layer
    (`_h2.ServerConnection`) calls back, and the streams it serves."""

    cdef readonly object core
    cdef readonly object outer  # the socket's ClientConnection
    cdef readonly object transport
    cdef readonly object loop
    cdef readonly ServerConnection conn
    cdef readonly dict streams
    cdef readonly bint socket_paused  # the client does not read what we send
    cdef readonly bint draining  # GOAWAY sent: no new streams; close when the last ends
    cdef int last_stream  # ... above this one
    cdef readonly bint closed
    cdef bint flush_soon
    cdef int resets
    cdef double resets_since
    cdef long long requests
    cdef int control
    cdef double control_since
    cdef int queued_control  # control frames answered while the socket is paused
    # the listener's limits (h2server.H2Limits)
    cdef int max_streams, max_resets, max_control
    cdef long long max_requests
    cdef double keepalive

    def __init__(self, core, outer, transport, limits, first):
        self.core = core
        self.outer = outer
        self.transport = transport
        self.max_streams = limits.max_streams
        self.max_resets = limits.max_resets
        self.max_control = limits.max_control
        self.max_requests = limits.max_requests or 0
        self.keepalive = limits.keepalive
        self.loop = asyncio.get_running_loop()
        self.streams = {}
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
    def data_received(self, data):
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
    def h2_request(self, int sid, list headers, bint ended):
        if not self.closed:
            self._request(sid, headers, ended)

    def h2_data(self, int sid, bytes data, Py_ssize_t size):
        if self.closed:
            return
        stream = self.streams.get(sid)
        if stream is None:
            # A stream we reset or finished: its bytes count for the connection only.
            self.conn.acknowledge(sid, size)
            return
        (<H2Stream>stream).request_data(data, size)

    def h2_end(self, int sid):
        stream = self.streams.get(sid)
        if stream is not None and not self.closed:
            (<H2Stream>stream).request_ended()

    # Error codes are 32-bit and unknown ones legal (RFC 9113 7): not C ints.
    def h2_reset(self, int sid, code, bint remote):
        if not self.closed:
            self._reset(sid, remote)

    def h2_window(self, int sid):
        self._window(sid)

    def h2_ping(self):
        self._control_frame()

    def h2_settings(self):
        if self._control_frame():
            self._window(0)

    def h2_flood_frame(self, str kind):
        self._control_frame(kind, False)

    def h2_goaway(self, code, int last_stream_id):
        if self.closed:
            return
        if code != NO_ERROR or not self.streams:
            self.close(False)
            return
        # The client's graceful GOAWAY: it opens no more streams but waits for the
        # answers to those it opened; the socket closes after the last.
        self.draining = True
        self.last_stream = self.conn.highest_inbound

    def eof_received(self):
        self.close(False)
        return False

    def connection_lost(self, exc):
        self.closed = True
        for stream in list(self.streams.values()):
            (<H2Stream>stream).lost()
        self.streams.clear()
        # The connection layer holds our bound methods: let them go (a cycle otherwise,
        # freed only by the cyclic GC, long after).
        self.conn.stop()

    def pause_writing(self):
        # The client does not read: nothing more is made for it. Reading goes on (a
        # client may not read while it writes a body: stopping would deadlock both),
        # but the answers its frames need (PING and SETTINGS acks) are counted while
        # they queue (_control_frame).
        self.socket_paused = True
        self.queued_control = 0
        for stream in list(self.streams.values()):
            (<H2Stream>stream).check_paused()

    def resume_writing(self):
        self.socket_paused = False
        self._window(0)
        self._idle_check()

    def timed_out(self):
        if self.streams and not self.draining:
            return
        # Idle past the keep-alive timeout, or draining too long: say so and close.
        self.goaway(NO_ERROR)
        self.close(False)

    def shutdown(self):
        """Graceful stop: GOAWAY; the streams in flight finish, then the socket closes."""
        if self.closed or self.draining:
            return
        self.goaway(NO_ERROR)
        if not self.streams:
            self.close(False)

    # -- internals ----------------------------------------------------------------------
    def goaway(self, int code):
        """A GOAWAY after which the streams in flight still finish."""
        if self.draining or self.closed:
            return
        self.draining = True
        self.last_stream = self.conn.highest_inbound
        self.conn.goaway(code, self.last_stream)
        self.flush()

    def fail(self, int code, str why):
        """A connection error: GOAWAY with `code`, then close."""
        log.info("client %s: HTTP/2 %s: %s", self.outer.ip.decode(), error_name(code), why)
        if not self.closed:
            self.conn.goaway(code)
        self.close(False)

    def close(self, bint abort):
        if self.closed:
            return
        self.flush()
        self.closed = True
        for stream in list(self.streams.values()):
            (<H2Stream>stream).lost()
        self.streams.clear()
        self.conn.stop()
        self.outer.h2_close(abort)

    def flush(self):
        self.flush_soon = False
        if self.closed:
            return
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    cdef flush_later(self):
        """Frames made outside data_received (an upstream's bytes): one write per
        loop iteration for all the streams."""
        if not self.flush_soon:
            self.flush_soon = True
            self.loop.call_soon(self.flush)

    cdef bint _control_frame(self, str kind="PING/SETTINGS", bint answered=True) except -1:
        """Count a control frame (`answered`: one we queue an answer to); False when
        that is one too many and the connection is failed."""
        cdef double now = self.loop.time()
        if now - self.control_since >= 1.0:
            self.control_since = now
            self.control = 0
        self.control += 1
        if self.socket_paused and answered:
            self.queued_control += 1
        if self.control > self.max_control or self.queued_control > self.max_control:
            self.fail(ENHANCE_YOUR_CALM, f"too many {kind} frames")
            return False
        return True

    cdef _request(self, int sid, list headers, bint ended):
        cdef ServerConnection conn = self.conn
        if self.draining and sid > self.last_stream:
            conn.reset_stream(sid, REFUSED_STREAM)
            return
        if len(self.streams) >= self.max_streams:
            conn.reset_stream(sid, REFUSED_STREAM)
            return
        try:
            head, chunked, length = request_head(headers, not ended)
        except Malformed as e:
            log.info("client %s: HTTP/2 stream %d: malformed request: %s",
                     self.outer.ip.decode(), sid, e)
            conn.reset_stream(sid, PROTOCOL_ERROR)
            return
        cdef H2Stream stream = H2Stream(self, sid, chunked, length)
        self.streams[sid] = stream
        self.outer.h2_wait(0)
        self.requests += 1
        if self.max_requests and self.requests >= self.max_requests:
            self.goaway(NO_ERROR)  # this one is served; the client opens anew
        stream.start(head)

    cdef _reset(self, int sid, bint remote):
        stream = self.streams.pop(sid, None)
        cdef double now
        if remote:
            now = self.loop.time()
            if now - self.resets_since >= RESET_WINDOW:
                self.resets_since = now
                self.resets = 0
            self.resets += 1
            if self.resets > self.max_resets:
                if stream is not None:
                    (<H2Stream>stream).lost()
                self.fail(ENHANCE_YOUR_CALM, "too many stream resets (rapid reset)")
                return
        if stream is not None:
            (<H2Stream>stream).lost()
        self._idle_check()

    cdef _window(self, int sid):
        if self.socket_paused or self.closed:
            return
        if sid:
            stream = self.streams.get(sid)
            if stream is not None:
                (<H2Stream>stream).send()
        else:
            for stream in list(self.streams.values()):
                (<H2Stream>stream).send()

    cdef stream_done(self, H2Stream stream):
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
        self._idle_check()

    cdef _idle_check(self):
        if self.closed or self.streams:
            return
        if self.draining:
            self.flush()
            self.close(False)
        else:
            self.outer.h2_wait(self.keepalive)


@cython.final
cdef class H2Stream(ParserHandler):
    """One stream: the transport of its `ClientConnection` and the handler of the
    parser that reads what that connection answers."""

    cdef readonly H2Session session
    cdef ServerConnection conn  # the session's
    cdef object loop
    cdef readonly int sid
    cdef bint chunked  # the request body goes in chunks (no content-length)
    # What the content-length leaves of the body (-1: none): DATA must match it
    # exactly (RFC 9113 8.1.1), so the HTTP/1.1 framing can never disagree.
    cdef long long remaining
    cdef object client
    cdef ResponseParser parser
    cdef bint in_paused  # the ClientConnection holds its reading
    cdef object held  # request data (bytes, flow-controlled size) while it does
    cdef bint drain_soon
    cdef bint req_ended
    cdef object out  # response bytes the client's windows hold back
    cdef Py_ssize_t out_size
    cdef bint app_paused  # the ClientConnection was told to pause writing
    cdef bint headers_sent
    cdef bint resp_done  # the whole response is parsed
    cdef bint ended  # END_STREAM or RST_STREAM went out
    cdef bint gone  # the ClientConnection is let go
    cdef bint end_sent
    cdef object trailers  # sent after the last DATA; None: none
    cdef list pending_headers

    def __init__(self, H2Session session not None, int sid, bint chunked, long long length):
        self.session = session
        self.conn = session.conn
        self.loop = session.loop
        self.sid = sid
        self.chunked = chunked
        self.remaining = length
        self.parser = ResponseParser(self, max_header_bytes=1 << 20, max_header_count=10000)
        self.held = deque()
        self.out = deque()
        self.pending_headers = []

    # -- started by the session ----------------------------------------------------------
    cpdef start(self, bytes head):
        cdef H2Session session = self.session
        self.parser.expect_no_body(head.startswith(b"HEAD "))
        outer = session.outer
        client = ClientConnection(session.core, outer.listener)
        client.set_stream(outer.ip, outer)
        self.client = client
        client.connection_made(self)
        if not self.gone:
            client.data_received(head)

    cpdef request_data(self, bytes data, Py_ssize_t size):
        if self.gone or self.req_ended:
            if size:
                self.conn.acknowledge(self.sid, size)
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

    cpdef request_ended(self):
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

    cpdef request_trailers(self, list headers):
        # Request trailers are dropped (as most HTTP/1.1 origins would ignore them);
        # the body ends here.
        self.request_ended()

    cdef _feed(self, bytes data, Py_ssize_t size):
        client = self.client
        if data and not self.gone:
            client.data_received(data)
        if size and not self.session.closed:
            self.conn.acknowledge(self.sid, size)

    cpdef lost(self):
        """The client reset the stream or the connection is gone."""
        self.ended = True
        self.out.clear()
        self.out_size = 0
        self._let_go()

    cpdef check_paused(self):
        if not self.app_paused and self.client is not None and not self.gone:
            self.app_paused = True
            self.client.pause_writing()

    # -- the ClientConnection's transport ------------------------------------------------
    def write(self, data):
        if self.ended or self.resp_done or self.gone:
            return
        cdef ResponseParser parser = self.parser  # held: the stream may let it go
        try:
            parser.feed(data)
        except HttpParseError as e:
            log.warning("h2 stream %d: unreadable response from the exchange: %s", self.sid,
                        e.reason)
            self._reset(INTERNAL_ERROR)
            return
        self._sent_what_came()

    cdef _sent_what_came(self):
        # Once per write, not per body piece: a body that ends in this write goes
        # out with END_STREAM on its last DATA frame.
        if self.ended or not (self.out or self.resp_done):
            return
        self.send()
        if self.out_size > C_OUT_HIGH:
            self.check_paused()

    def writelines(self, parts):
        for part in parts:
            self.write(part)

    def write_eof(self):
        self.close()

    def can_write_eof(self):
        return True

    def close(self):
        cdef ResponseParser parser
        if not self.resp_done and not self.ended and not self.gone:
            parser = self.parser
            if parser.message_needs_eof:
                try:
                    parser.feed_eof()  # a close-delimited body ends here
                except HttpParseError:
                    pass
                else:
                    self._sent_what_came()
            if not self.resp_done:
                self._reset(INTERNAL_ERROR)  # a cut answer: never a complete one
        if self.ended:
            self._schedule_let_go()
        # else: the answer is complete and waits for the client's window; the stream
        # ends (and lets its connection go) once it is out.

    def abort(self):
        if not self.ended:
            self._reset(INTERNAL_ERROR)
        self._schedule_let_go()

    def is_closing(self):
        return self.gone or self.ended

    def pause_reading(self):
        self.in_paused = True

    def resume_reading(self):
        self.in_paused = False
        if self.held and not self.drain_soon:
            # From the loop, never from inside the caller (as a socket transport does).
            self.drain_soon = True
            self.loop.call_soon(self._drain_held)

    def _drain_held(self):
        self.drain_soon = False
        while self.held and not self.in_paused and not self.gone:
            data, size = self.held.popleft()
            self._feed(data, size)
        self.session.flush()

    def get_write_buffer_size(self):
        return self.out_size

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_extra_info(self, name, default=None):
        if name == "socket":
            return default  # not ours to write to
        return self.session.transport.get_extra_info(name, default)

    # -- the response parser's handler (C calls from inside parser.feed) ----------------
    cdef int on_head(self, MessageHead head) except -1:
        cdef int status = head.status
        cdef list headers = response_fields(head)
        if status < 200:
            if status != 101:
                self._send_headers(headers, False)  # informational; the answer follows
            return 0
        self.pending_headers = headers
        if head.body_kind and not (head.body_kind == K_LENGTH and head.content_length == 0):
            self._send_headers(headers, False)
        # else (no body at all): one HEADERS frame with END_STREAM once the message is
        # complete; that is also gRPC's trailers-only answer (grpc-status in it).
        return 0

    cdef int on_body(self, object chunk) except -1:
        cdef bytes data = bytes(chunk)
        if not data:
            return 0
        self.out.append(data)
        self.out_size += len(data)  # sent when the write that brought it is parsed
        return 0

    cdef int on_message_complete(self) except -1:
        cdef ResponseParser parser = self.parser
        if parser is None:
            return 0
        if parser.head is not None and parser.head.status < 200:
            return 0
        self.resp_done = True
        raw = parser.trailers
        if raw:
            # The response's trailer section (gRPC's grpc-status above all): a HEADERS
            # frame with END_STREAM after the last DATA (RFC 9113 8.1). The fields are
            # those an HTTP/1.1 client gets (trailer_fields drops the same as
            # last_chunk, the connection-level ones HTTP/2 forbids among them).
            self.trailers = trailer_fields(raw) or None
        if not self.headers_sent:
            self._send_headers(self.pending_headers, True)
            self._finished()
        # else: the rest goes out when the write that brought it is parsed
        return 0

    # -- internals ----------------------------------------------------------------------
    cdef _send_headers(self, list headers, bint end):
        cdef H2Session session = self.session
        if session.closed or self.ended:
            return
        try:
            self.conn.send_headers(self.sid, headers, end)
        except H2StreamClosed:
            self._reset(INTERNAL_ERROR)
            return
        if (<bytes>headers[0][1])[:1] != b"1":
            self.headers_sent = True
        session.flush_later()

    cpdef send(self):
        """Send what the client's windows allow."""
        cdef H2Session session = self.session
        if self.ended or session.closed or session.socket_paused:
            return
        if not self.headers_sent:
            self._maybe_resume()
            return
        cdef ServerConnection conn = self.conn
        out = self.out
        cdef Py_ssize_t window, n
        cdef bint last
        cdef bytes data
        try:
            while out:
                window = min(<Py_ssize_t>conn.send_window(self.sid),
                             <Py_ssize_t>conn.max_outbound_frame_size)
                if window <= 0:
                    break
                data = out[0]
                n = len(data)
                if n > window:
                    out[0] = data[window:]
                    data = data[:window]
                    n = window
                else:
                    out.popleft()
                self.out_size -= n
                last = self.resp_done and not out and self.trailers is None
                conn.send_data(self.sid, data, last)
                self.end_sent = last
            if self.resp_done and not out and not self.end_sent:
                if self.trailers is not None:
                    conn.send_headers(self.sid, self.trailers, True)
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

    cdef _maybe_resume(self):
        if self.app_paused and self.out_size <= C_OUT_LOW and not self.gone:
            self.app_paused = False
            self.client.resume_writing()

    cdef _finished(self):
        self.ended = True
        cdef H2Session session = self.session
        if not self.req_ended and not session.closed:
            # The answer is complete before the request: the rest is not wanted
            # (RFC 9113 8.1).
            self.conn.reset_stream(self.sid, NO_ERROR)
        session.flush_later()
        self._schedule_let_go()

    cdef _malformed(self):
        log.info("client %s: HTTP/2 stream %d: body length differs from content-length",
                 self.session.outer.ip.decode(), self.sid)
        self.req_ended = True
        self.held.clear()
        self._reset(PROTOCOL_ERROR)

    cdef _reset(self, int code):
        cdef H2Session session = self.session
        if not self.ended and not session.closed:
            self.ended = True
            self.conn.reset_stream(self.sid, code)
            session.flush_later()
        self.ended = True
        self.out.clear()
        self.out_size = 0
        self._schedule_let_go()

    cdef _schedule_let_go(self):
        # Not from inside the ClientConnection's own call (an exchange may be ending).
        if not self.gone:
            self.loop.call_soon(self._let_go)

    def _let_go(self):
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
