"""One HTTP/2 stream to a client, served by the HTTP/1.1 machinery (h2server.py's
`H2Session` owns the connection; this is the per-stream part, compiled because it
runs for every request: about a third of an HTTP/2 worker's time went to it in
Python).

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

from fastproxy._http cimport K_LENGTH, MessageHead, ParserHandler, ResponseParser
from fastproxy.xxhash cimport XXH3_64bits, XXH3_64bits_withSeed

import logging
from collections import deque

from fastproxy._h2 import INTERNAL_ERROR, NO_ERROR, PROTOCOL_ERROR, H2StreamClosed
from fastproxy._http import HttpParseError
from fastproxy._proxy import ClientConnection

log = logging.getLogger("fastproxy.h2")

OUT_HIGH = 64 * 1024  # response bytes a stream holds before its exchange pauses
OUT_LOW = 16 * 1024  # ... and resumes
cdef Py_ssize_t C_OUT_HIGH = OUT_HIGH
cdef Py_ssize_t C_OUT_LOW = OUT_LOW

# Response fields that HTTP/2 forbids (RFC 9113 8.2.2): the connection's business.
HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                 b"upgrade", b"te"))
# Fields that do not belong in a trailer section (RFC 9110 6.5.1): framing, routing,
# and what the proxy answers for; the HTTP/1.1 path drops them too.
NOT_TRAILERS = frozenset((b"content-length", b"content-type", b"content-encoding", b"host",
                          b"authorization", b"set-cookie", b"trailer", b"te"))


cdef bytes lower_bytes(const char* p, Py_ssize_t n):
    """A lower-cased copy (HTTP/2 field names are lower case, RFC 9113 8.2.1)."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char* q = PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    cdef char c
    for i in range(n):
        c = p[i]
        q[i] = c + 32 if b'A' <= c <= b'Z' else c
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
cdef list STATUS_FIELDS = [None] * 1000  # (":status", b"NNN") by status


cdef bint same_field(tuple field, const char* name, Py_ssize_t nl, const char* value,
                     Py_ssize_t vl) noexcept:
    """Whether `field` is this name (in any case) and value."""
    cdef bytes fname = <bytes>field[0], fvalue = <bytes>field[1]
    cdef const char* q
    cdef Py_ssize_t i
    cdef char c
    if PyBytes_GET_SIZE(fname) != nl or PyBytes_GET_SIZE(fvalue) != vl:
        return False
    if memcmp(PyBytes_AS_STRING(fvalue), value, vl) != 0:
        return False
    q = PyBytes_AS_STRING(fname)
    for i in range(nl):
        c = name[i]
        if b'A' <= c <= b'Z':
            c = c + 32
        if c != q[i]:
            return False
    return True


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


cpdef list trailer_fields(bytes raw):
    """The fields of a trailer section ("name: value\\r\\n" lines, as the parser keeps
    them) that may go to an HTTP/2 client, names lower-cased."""
    cdef list fields = []
    cdef bytes line, name, value
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if sep and name and name not in HOP and name not in NOT_TRAILERS:
            fields.append((name, value.strip()))
    return fields


@cython.final
cdef class H2Stream(ParserHandler):
    """One stream: the transport of its `ClientConnection` and the handler of the
    parser that reads what that connection answers."""

    cdef readonly object session
    cdef object conn  # the session's ServerConnection
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

    def __init__(self, session, int sid, bint chunked, long long length):
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
    def start(self, bytes head not None):
        session = self.session
        self.parser.expect_no_body(head.startswith(b"HEAD "))
        outer = session.outer
        client = ClientConnection(session.core, outer.listener)
        client.set_stream(outer.ip, outer)
        self.client = client
        client.connection_made(self)
        if not self.gone:
            client.data_received(head)

    def request_data(self, bytes data not None, Py_ssize_t size):
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

    def request_ended(self):
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

    def request_trailers(self, list headers):
        # Request trailers are dropped (as most HTTP/1.1 origins would ignore them);
        # the body ends here.
        self.request_ended()

    cdef _feed(self, bytes data, Py_ssize_t size):
        client = self.client
        if data and not self.gone:
            client.data_received(data)
        if size and not self.session.closed:
            self.conn.acknowledge(self.sid, size)

    def lost(self):
        """The client reset the stream or the connection is gone."""
        self.ended = True
        self.out.clear()
        self.out_size = 0
        self._let_go()

    def check_paused(self):
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
            # frame with END_STREAM after the last DATA (RFC 9113 8.1).
            self.trailers = trailer_fields(raw) or None
        if not self.headers_sent:
            self._send_headers(self.pending_headers, True)
            self._finished()
        # else: the rest goes out when the write that brought it is parsed
        return 0

    # -- internals ----------------------------------------------------------------------
    cdef _send_headers(self, list headers, bint end):
        session = self.session
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

    def send(self):
        """Send what the client's windows allow."""
        session = self.session
        if self.ended or session.closed or session.socket_paused:
            return
        if not self.headers_sent:
            self._maybe_resume()
            return
        conn = self.conn
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
        session = self.session
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
        session = self.session
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
