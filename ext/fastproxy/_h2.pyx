"""The HTTP/2 connection layer of a server (RFC 9113), in C: frames in and out,
the connection's rules, stream states and flow control. HPACK is _hpack's.

`ServerConnection.receive(data)` parses frames straight from the bytes read
(what is left of a frame waits for the next read) and tells its handler what
they mean through a few methods (`h2_request`, `h2_data`, `h2_end`, `h2_reset`,
`h2_window`, `h2_ping`, `h2_settings`, `h2_goaway`, and `h2_flood_frame` if it has
it), with no event objects. The
frames we send are written into one buffer that `data_to_send()` empties.

Checked as the bytes arrive, so that nothing is buffered that will be refused:
the client preface (a mismatch at the first byte that differs), a frame's
length against our maximum frame size as soon as its 9-byte header is in, and
a header block (HEADERS + CONTINUATION) against the header list bound while it
grows. A connection error (RFC 9113 5.4.1) queues GOAWAY with its code and
raises H2ProtocolError; a stream error (5.4.2) queues RST_STREAM and tells the
handler (`h2_reset(sid, code, False)`). Every length, pad and index from the
wire is checked before it is used.

Stream states (5.1), as a server that never pushes: a client stream is idle
until its HEADERS (odd ids, each above the last), open, half-closed (remote)
after its END_STREAM, half-closed (local) after ours, closed after both or a
RST_STREAM. Closed streams are forgotten except the ones we reset while the
client could still be sending: their late frames are ignored (5.4.2), the rest
on a closed stream get STREAM_CLOSED. Header blocks are always decoded, even
for a stream that is refused or reset, so that both HPACK tables stay in step.

Flow control (5.2, 6.9): what the client sends is counted against the
connection's and the stream's receive windows (padding included) and a frame
over either is a FLOW_CONTROL_ERROR; `acknowledge(sid, size)` hands bytes back,
and WINDOW_UPDATEs go out once half a window is owed. What we send is bounded
by the client's windows (`send_window(sid)`), whose updates and
SETTINGS_INITIAL_WINDOW_SIZE changes are checked for overflow past 2**31 - 1.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.string cimport memcmp, memcpy

from fastproxy._hpack cimport HpackDecoder, HpackEncoder

from fastproxy._hpack import HeaderListTooLarge, HpackError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
cdef const char* C_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Error codes (RFC 9113 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xa
ENHANCE_YOUR_CALM = 0xb
INADEQUATE_SECURITY = 0xc
HTTP_1_1_REQUIRED = 0xd

ERROR_NAMES = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR", 0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR", 0xa: "CONNECT_ERROR", 0xb: "ENHANCE_YOUR_CALM",
    0xc: "INADEQUATE_SECURITY", 0xd: "HTTP_1_1_REQUIRED",
}


def error_name(code):
    """The name of an error code (RFC 9113 7), or its number in hex."""
    return ERROR_NAMES.get(code, f"0x{code:x}")


class H2ProtocolError(Exception):
    """A connection error: GOAWAY with `code` is queued; the connection is over."""

    def __init__(self, int code, str reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class H2StreamClosed(Exception):
    """A frame for a stream that is closed (or closed for sending) was asked for."""


cdef enum:
    HEAD = 9
    T_DATA = 0x0
    T_HEADERS = 0x1
    T_PRIORITY = 0x2
    T_RST_STREAM = 0x3
    T_SETTINGS = 0x4
    T_PUSH_PROMISE = 0x5
    T_PING = 0x6
    T_GOAWAY = 0x7
    T_WINDOW_UPDATE = 0x8
    T_CONTINUATION = 0x9
    F_END_STREAM = 0x1
    F_ACK = 0x1
    F_END_HEADERS = 0x4
    F_PADDED = 0x8
    F_PRIORITY = 0x20
    S_HEADER_TABLE_SIZE = 0x1
    S_ENABLE_PUSH = 0x2
    S_MAX_CONCURRENT_STREAMS = 0x3
    S_INITIAL_WINDOW_SIZE = 0x4
    S_MAX_FRAME_SIZE = 0x5
    S_MAX_HEADER_LIST_SIZE = 0x6
    DEFAULT_WINDOW = 65535
    DEFAULT_FRAME = 16384
    MAX_FRAME_LIMIT = 16777215
    MAX_CONTINUATIONS = 512  # frames in one header block (empty ones cost no bytes)
    IGNORED_KEEP = 256  # streams we reset whose late frames are still ignored
    INITIAL_STREAMS = 100  # (client) streams opened before the server's SETTINGS

cdef int64_t MAX_WINDOW = 2147483647


cdef inline uint32_t get32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline int _setting(uint8_t* s, int i, int ident, uint32_t value) noexcept:
    s[i] = <uint8_t>(ident >> 8)
    s[i + 1] = <uint8_t>ident
    s[i + 2] = <uint8_t>(value >> 24)
    s[i + 3] = <uint8_t>(value >> 16)
    s[i + 4] = <uint8_t>(value >> 8)
    s[i + 5] = <uint8_t>value
    return i + 6


@cython.freelist(64)
cdef class _Stream:
    """One stream's state (its fields are declared in _h2.pxd)."""


cdef class _Connection:
    """One HTTP/2 connection's state: ServerConnection and ClientConnection below
    differ in how they start, who opens streams and what HEADERS mean. The fields
    and C methods are declared in _h2.pxd."""

    def __cinit__(self):
        self.out = NULL

    cdef int _setup(self, handler, bint client, int max_streams, Py_ssize_t header_list,
                    Py_ssize_t decode_list, int stream_window, int conn_window) except -1:
        cdef uint8_t s[18]
        cdef int i = 0
        self.client = client
        self.on_request = handler.h2_response if client else handler.h2_request
        self.on_trailers = getattr(handler, "h2_trailers", None)
        self.on_flood = getattr(handler, "h2_flood_frame", None)
        self.peer_max_streams = None  # unlimited until the peer's SETTINGS say
        self.next_stream_id = 1
        self.on_data = handler.h2_data
        self.on_end = handler.h2_end
        self.on_reset = handler.h2_reset
        self.on_window = handler.h2_window
        self.on_ping = handler.h2_ping
        self.on_settings = handler.h2_settings
        self.on_goaway = handler.h2_goaway
        self.decoder = HpackDecoder(4096, decode_list)
        self.encoder = HpackEncoder(4096)
        self.streams = {}
        self.ignored = {}
        self.inbuf = bytearray()
        self.out = <uint8_t*>PyMem_Malloc(4096)
        if self.out == NULL:
            raise MemoryError()
        self.out_cap = 4096
        self.out_len = 0
        self.conn_send = DEFAULT_WINDOW
        self.conn_recv = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.local_stream_window = stream_window
        self.local_conn_window = max(conn_window, DEFAULT_WINDOW)
        self.max_outbound_frame_size = DEFAULT_FRAME
        self.max_inbound_frame_size = DEFAULT_FRAME
        self.block_limit = decode_list
        self.block = bytearray()
        # (client) the preface; our SETTINGS; the connection's window past the default.
        if client:
            self.preface_done = True  # the server sends none: its SETTINGS come first
            self._reserve(24)
            memcpy(self.out, C_PREFACE, 24)
            self.out_len = 24
            i = _setting(s, i, S_ENABLE_PUSH, 0)
        else:
            i = _setting(s, i, S_MAX_CONCURRENT_STREAMS, max_streams)
        i = _setting(s, i, S_MAX_HEADER_LIST_SIZE, <uint32_t>min(header_list, 0xffffffff))
        i = _setting(s, i, S_INITIAL_WINDOW_SIZE, stream_window)
        self._frame(T_SETTINGS, 0, 0, s, i)
        if self.local_conn_window > DEFAULT_WINDOW:
            self._window_update(0, self.local_conn_window - DEFAULT_WINDOW)
            self.conn_recv = self.local_conn_window
        return 0

    def __dealloc__(self):
        PyMem_Free(self.out)

    def stop(self):
        """Nothing more is read or made; the handler is let go (it refers to us)."""
        self.stopped = True
        self.on_request = self.on_data = self.on_end = self.on_reset = None
        self.on_window = self.on_ping = self.on_settings = self.on_goaway = None
        self.on_trailers = self.on_flood = None
        self.streams.clear()
        self.inbuf = bytearray()

    # -- output ------------------------------------------------------------------------
    cdef int _reserve(self, Py_ssize_t more) except -1:
        cdef Py_ssize_t cap
        cdef uint8_t* grown
        if self.out_len + more <= self.out_cap:
            return 0
        cap = self.out_cap * 2
        if cap < self.out_len + more:
            cap = self.out_len + more
        grown = <uint8_t*>PyMem_Realloc(self.out, cap)
        if grown == NULL:
            raise MemoryError()
        self.out = grown
        self.out_cap = cap
        return 0

    cdef int _frame(self, int kind, int flags, uint32_t sid, const uint8_t* payload,
                    Py_ssize_t length) except -1:
        cdef uint8_t* h
        self._reserve(HEAD + length)
        h = self.out + self.out_len
        h[0] = <uint8_t>(length >> 16)
        h[1] = <uint8_t>(length >> 8)
        h[2] = <uint8_t>length
        h[3] = <uint8_t>kind
        h[4] = <uint8_t>flags
        h[5] = <uint8_t>((sid >> 24) & 0x7f)
        h[6] = <uint8_t>(sid >> 16)
        h[7] = <uint8_t>(sid >> 8)
        h[8] = <uint8_t>sid
        if length:
            memcpy(h + HEAD, payload, length)
        self.out_len += HEAD + length
        return 0

    cdef int _u32_frame(self, int kind, uint32_t sid, uint32_t value) except -1:
        cdef uint8_t v[4]
        v[0] = <uint8_t>(value >> 24)
        v[1] = <uint8_t>(value >> 16)
        v[2] = <uint8_t>(value >> 8)
        v[3] = <uint8_t>value
        return self._frame(kind, 0, sid, v, 4)

    cdef int _window_update(self, uint32_t sid, int64_t increment) except -1:
        return self._u32_frame(T_WINDOW_UPDATE, sid, <uint32_t>increment)

    cpdef bytes data_to_send(self):
        """The frames made since the last call."""
        cdef bytes data
        if not self.out_len:
            return b""
        data = PyBytes_FromStringAndSize(<char*>self.out, self.out_len)
        self.out_len = 0
        return data

    cpdef goaway(self, int code, int last_stream_id=-1):
        """Queue GOAWAY (last stream: the highest the client opened, by default)."""
        cdef uint8_t p[8]
        cdef uint32_t last = self.highest_inbound if last_stream_id < 0 else last_stream_id
        p[0] = <uint8_t>((last >> 24) & 0x7f)
        p[1] = <uint8_t>(last >> 16)
        p[2] = <uint8_t>(last >> 8)
        p[3] = <uint8_t>last
        p[4] = <uint8_t>(<uint32_t>code >> 24)
        p[5] = <uint8_t>(<uint32_t>code >> 16)
        p[6] = <uint8_t>(<uint32_t>code >> 8)
        p[7] = <uint8_t>code
        self._frame(T_GOAWAY, 0, 0, p, 8)

    cdef _Stream _sending(self, int sid):
        cdef object found = self.streams.get(sid)
        cdef _Stream s
        if found is None:
            raise H2StreamClosed(f"stream {sid} is closed")
        s = <_Stream>found
        if s.local_closed:
            raise H2StreamClosed(f"stream {sid} is closed for sending")
        return s

    cdef int _close_local(self, _Stream s) except -1:
        s.local_closed = True
        if s.remote_closed:
            del self.streams[s.sid]
        return 0

    cpdef send_headers(self, int sid, list headers, bint end_stream=False):
        """HEADERS (and CONTINUATIONs past the client's frame size) for `headers`."""
        cdef _Stream s = self._sending(sid)
        cdef bytes block = self.encoder.encode_list(headers)
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(block)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(block), step = self.max_outbound_frame_size
        cdef Py_ssize_t part = n if n <= step else step
        cdef int flags = (F_END_STREAM if end_stream else 0) | (F_END_HEADERS if n <= step else 0)
        self._frame(T_HEADERS, flags, sid, p, part)
        while part < n:
            step = min(self.max_outbound_frame_size, n - part)
            self._frame(T_CONTINUATION, F_END_HEADERS if part + step == n else 0, sid,
                        p + part, step)
            part += step
        if end_stream:
            self._close_local(s)

    cpdef send_data(self, int sid, data, bint end_stream=False):
        """One DATA frame; it must fit `send_window(sid)` and the frame size."""
        cdef _Stream s = self._sending(sid)
        cdef const uint8_t[::1] view = data
        cdef Py_ssize_t n = view.shape[0]
        if n > s.send_window or n > self.conn_send or n > self.max_outbound_frame_size:
            raise ValueError(f"DATA of {n} bytes over the flow-control window or frame size")
        self._frame(T_DATA, F_END_STREAM if end_stream else 0, sid,
                    &view[0] if n else NULL, n)
        s.send_window -= n
        self.conn_send -= n
        self.update_credit += 2 + 2 * ((n + 4095) >> 12)
        if end_stream:
            self._close_local(s)

    cpdef end_stream(self, int sid):
        """An empty DATA frame with END_STREAM."""
        cdef _Stream s = self._sending(sid)
        self._frame(T_DATA, F_END_STREAM, sid, NULL, 0)
        self._close_local(s)

    cpdef reset_stream(self, int sid, int code):
        """RST_STREAM: the stream is closed; frames the client sent meanwhile are dropped."""
        cdef object found = self.streams.pop(sid, None)
        if found is None:
            return
        if not (<_Stream>found).remote_closed:
            self._ignore(sid)
        self._u32_frame(T_RST_STREAM, sid, <uint32_t>code)

    cdef int _ignore(self, int sid) except -1:
        self.ignored[sid] = None
        if len(self.ignored) > IGNORED_KEEP:
            del self.ignored[next(iter(self.ignored))]
        return 0

    cpdef Py_ssize_t send_window(self, int sid) except -1:
        """How much DATA the client's windows let us send on the stream now."""
        cdef object found = self.streams.get(sid)
        if found is None or (<_Stream>found).local_closed:
            return 0
        return max(0, min((<_Stream>found).send_window, self.conn_send))

    cpdef acknowledge(self, int sid, Py_ssize_t size):
        """`size` bytes of DATA are taken: the client may send them again."""
        cdef object found
        cdef _Stream s
        if size <= 0 or self.stopped:
            return
        self.conn_owed += size
        if self.conn_owed >= self.local_conn_window // 2:
            self._window_update(0, self.conn_owed)
            self.conn_recv += self.conn_owed
            self.conn_owed = 0
        found = self.streams.get(sid)
        if found is None:
            return
        s = <_Stream>found
        if s.remote_closed:
            return  # nothing more comes on it
        s.owed += size
        if s.owed >= self.local_stream_window // 2:
            self._window_update(sid, s.owed)
            s.recv_window += s.owed
            s.owed = 0

    @property
    def open_streams(self):
        return len(self.streams)

    # -- input -------------------------------------------------------------------------
    cpdef receive(self, data):
        """Handle what the client sent; H2ProtocolError for a connection error."""
        cdef bytes buf
        cdef const uint8_t* p
        cdef Py_ssize_t n, pos = 0, length, need
        cdef uint32_t sid
        if self.stopped:
            return
        if self.inbuf:
            self.inbuf += data
            buf = bytes(self.inbuf)
            self.inbuf = bytearray()
        else:
            buf = data if type(data) is bytes else bytes(data)
        p = <const uint8_t*>PyBytes_AS_STRING(buf)
        n = PyBytes_GET_SIZE(buf)
        if not self.preface_done:
            need = 24 - self.preface_got
            if n < need:
                if memcmp(p, C_PREFACE + self.preface_got, n) != 0:
                    self._fail(PROTOCOL_ERROR, "not the HTTP/2 client preface")
                self.preface_got += n
                return
            if memcmp(p, C_PREFACE + self.preface_got, need) != 0:
                self._fail(PROTOCOL_ERROR, "not the HTTP/2 client preface")
            self.preface_done = True
            pos = need
        while n - pos >= HEAD:
            length = (<Py_ssize_t>p[pos] << 16) | (<Py_ssize_t>p[pos + 1] << 8) | p[pos + 2]
            if length > self.max_inbound_frame_size:
                self._fail(FRAME_SIZE_ERROR, "frame over the maximum frame size")
            if n - pos - HEAD < length:
                break
            sid = get32(p + pos + 5) & 0x7fffffff
            self._handle(p[pos + 3], p[pos + 4], sid, p + pos + HEAD, length)
            pos += HEAD + length
            if self.stopped:
                return
        if pos < n:
            self.inbuf = bytearray(buf[pos:])

    cdef int _fail(self, int code, str reason) except -1:
        self.goaway(code)
        self.stopped = True
        raise H2ProtocolError(code, reason)

    cdef int _stream_error(self, int sid, int code) except -1:
        cdef object found = self.streams.pop(sid, None)
        self._ignore(sid)
        self._u32_frame(T_RST_STREAM, sid, <uint32_t>code)
        if found is not None:
            self.on_reset(sid, code, False)
        return 0

    cdef int _handle(self, int kind, int flags, uint32_t sid, const uint8_t* p,
                     Py_ssize_t n) except -1:
        if self.in_block and kind != T_CONTINUATION:
            self._fail(PROTOCOL_ERROR, "frame inside a header block")
        if not self.settings_seen:
            if kind != T_SETTINGS or flags & F_ACK:
                self._fail(PROTOCOL_ERROR, "the first frame is not SETTINGS")
            self.settings_seen = True
        if kind == T_DATA:
            return self._data(flags, sid, p, n)
        if kind == T_HEADERS:
            return self._headers(flags, sid, p, n)
        if kind == T_CONTINUATION:
            return self._continuation(flags, sid, p, n)
        if kind == T_WINDOW_UPDATE:
            return self._window(sid, p, n)
        if kind == T_RST_STREAM:
            return self._rst(sid, p, n)
        if kind == T_SETTINGS:
            return self._settings(flags, sid, p, n)
        if kind == T_PING:
            if sid:
                self._fail(PROTOCOL_ERROR, "PING on a stream")
            if n != 8:
                self._fail(FRAME_SIZE_ERROR, "PING of the wrong length")
            if not flags & F_ACK:
                self._frame(T_PING, F_ACK, 0, p, 8)
                self.on_ping()
            return 0
        if kind == T_PRIORITY:
            if not sid:
                self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if n != 5:
                self._stream_error(sid, FRAME_SIZE_ERROR)
            elif (get32(p) & 0x7fffffff) == sid:
                self._stream_error(sid, PROTOCOL_ERROR)  # depends on itself (5.3.1)
            return 0
        if kind == T_GOAWAY:
            if sid:
                self._fail(PROTOCOL_ERROR, "GOAWAY on a stream")
            if n < 8:
                self._fail(FRAME_SIZE_ERROR, "GOAWAY too short")
            self.on_goaway(get32(p + 4), get32(p) & 0x7fffffff)
            return 0
        if kind == T_PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        return 0  # unknown frame types are ignored (5.5)

    cdef int _idle(self, uint32_t sid) noexcept:
        if self.client:  # only our own (odd) streams exist
            return not sid & 1 or sid >= <uint32_t>self.next_stream_id
        return sid > <uint32_t>self.highest_inbound or not sid & 1

    cdef int _data(self, int flags, uint32_t sid, const uint8_t* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t pad = 0, off = 0
        cdef object found
        cdef _Stream s
        if not sid:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
        if flags & F_PADDED:
            if n < 1:
                self._fail(FRAME_SIZE_ERROR, "padded DATA without its pad length")
            pad = p[0]
            off = 1
            if pad > n - 1:
                self._fail(PROTOCOL_ERROR, "DATA padding longer than the frame")
        if n - off - pad == 0 and not flags & F_END_STREAM and self.on_flood is not None:
            self.on_flood("empty DATA")
            if self.stopped:
                return 0
        if n > self.conn_recv:
            self._fail(FLOW_CONTROL_ERROR, "DATA over the connection's window")
        self.conn_recv -= n
        found = self.streams.get(sid)
        if found is None:
            if self._idle(sid):
                self._fail(PROTOCOL_ERROR, "DATA on an idle stream")
            self.acknowledge(sid, n)  # counted for the connection, then dropped
            if sid not in self.ignored:
                self._stream_error(sid, STREAM_CLOSED)
            return 0
        s = <_Stream>found
        if s.remote_closed:
            self.acknowledge(sid, n)
            self._stream_error(sid, STREAM_CLOSED)
            return 0
        if self.client and not s.got_response:
            self.acknowledge(sid, n)
            self._stream_error(sid, PROTOCOL_ERROR)  # DATA before the response (8.1)
            return 0
        if n > s.recv_window:
            self.acknowledge(sid, n)
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return 0
        s.recv_window -= n
        if flags & F_END_STREAM:
            s.remote_closed = True
        self.on_data(sid, PyBytes_FromStringAndSize(<const char*>p + off, n - off - pad), n)
        if flags & F_END_STREAM and not self.stopped and self.streams.get(sid) is s:
            if s.local_closed:
                del self.streams[sid]
            self.on_end(sid)  # (not if the handler reset the stream meanwhile)
        return 0

    cdef int _headers(self, int flags, uint32_t sid, const uint8_t* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t off = 0, pad = 0
        cdef bint bad_priority = False
        if not sid:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0")
        if not sid & 1:
            self._fail(PROTOCOL_ERROR, "HEADERS on an even stream id")
        if flags & F_PADDED:
            if n < 1:
                self._fail(FRAME_SIZE_ERROR, "padded HEADERS without its pad length")
            pad = p[0]
            off = 1
        if flags & F_PRIORITY:
            if n - off < 5:
                self._fail(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            bad_priority = (get32(p + off) & 0x7fffffff) == sid
            off += 5
        if pad > n - off:
            self._fail(PROTOCOL_ERROR, "HEADERS padding longer than the frame")
        if n - off - pad > self.block_limit:
            self._fail(ENHANCE_YOUR_CALM, "header block over the header list size")
        self.block_sid = sid
        self.block_end_stream = flags & F_END_STREAM
        if flags & F_END_HEADERS:  # the whole block: decoded where it lies
            return self._block_done(p + off, n - off - pad, bad_priority)
        self.block = bytearray(<bytes>PyBytes_FromStringAndSize(<const char*>p + off, n - off - pad))
        self.block_frames = 1
        self.block_bad_priority = bad_priority
        self.in_block = True
        return 0

    cdef int _continuation(self, int flags, uint32_t sid, const uint8_t* p,
                           Py_ssize_t n) except -1:
        if not self.in_block or sid != <uint32_t>self.block_sid:
            self._fail(PROTOCOL_ERROR, "CONTINUATION out of a header block")
        self.block_frames += 1
        if len(self.block) + n > self.block_limit:
            self._fail(ENHANCE_YOUR_CALM, "header block over the header list size")
        if self.block_frames > MAX_CONTINUATIONS:
            self._fail(ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        self.block += PyBytes_FromStringAndSize(<const char*>p, n)
        cdef bytes block
        if flags & F_END_HEADERS:
            self.in_block = False
            block = bytes(self.block)
            self.block = bytearray()
            return self._block_done(<const uint8_t*>PyBytes_AS_STRING(block),
                                    PyBytes_GET_SIZE(block), self.block_bad_priority)
        return 0

    cdef int _block_done(self, const uint8_t* p, Py_ssize_t n, bint bad_priority) except -1:
        cdef int sid = self.block_sid
        cdef bint end = self.block_end_stream
        cdef list headers
        cdef object found
        cdef _Stream s
        try:
            headers = self.decoder.decode_ptr(p, n)
        except HeaderListTooLarge:
            self._fail(ENHANCE_YOUR_CALM, "header list over the limit (HPACK)")
        except HpackError as e:
            self._fail(COMPRESSION_ERROR, f"HPACK: {e}")
        found = self.streams.get(sid)
        if found is not None and self.client and not (<_Stream>found).got_response \
                and not (<_Stream>found).remote_closed:
            return self._response(<_Stream>found, headers, end)
        if found is not None:  # a second header block: trailers
            s = <_Stream>found
            if s.remote_closed:
                self._stream_error(sid, STREAM_CLOSED)
            elif not end:
                self._stream_error(sid, PROTOCOL_ERROR)  # trailers end the stream (8.1)
            else:
                s.remote_closed = True
                if s.local_closed:
                    del self.streams[sid]
                if self.on_trailers is not None:
                    self.on_trailers(sid, headers)
                if not self.stopped and (s.local_closed or self.streams.get(sid) is s):
                    self.on_end(sid)  # (not if the handler reset the stream meanwhile)
            return 0
        if self.client:
            if self._idle(sid):
                self._fail(PROTOCOL_ERROR, "HEADERS on a stream we did not open")
            if sid not in self.ignored:
                self._stream_error(sid, STREAM_CLOSED)
            return 0
        if sid <= self.highest_inbound:
            if sid not in self.ignored:
                self._stream_error(sid, STREAM_CLOSED)
            return 0
        self.highest_inbound = sid
        s = _Stream.__new__(_Stream)
        s.sid = sid
        s.send_window = self.peer_initial_window
        s.recv_window = self.local_stream_window
        s.remote_closed = end
        self.streams[sid] = s
        if bad_priority:
            self._stream_error(sid, PROTOCOL_ERROR)
            return 0
        self.on_request(sid, headers, end)
        if end and not self.stopped and self.streams.get(sid) is s:
            self.on_end(sid)
        return 0

    cdef int _response(self, _Stream s, list headers, bint end) except -1:
        """(client) a response's HEADERS: informational ones (1xx) are passed over."""
        cdef object status = None
        cdef object item
        for item in headers:
            if (<tuple>item)[0] == b":status":
                status = (<tuple>item)[1]
                break
        if status is None or len(status) != 3 or not (<bytes>status).isdigit():
            self._stream_error(s.sid, PROTOCOL_ERROR)  # no valid :status (8.3.2)
            return 0
        if (<bytes>status)[0] == 49:  # "1": informational
            if end:
                self._stream_error(s.sid, PROTOCOL_ERROR)
            return 0
        s.got_response = True
        if end:
            s.remote_closed = True
            if s.local_closed:
                del self.streams[s.sid]
        self.on_request(s.sid, headers, end)
        if end and not self.stopped:
            self.on_end(s.sid)
        return 0

    cdef int _window(self, uint32_t sid, const uint8_t* p, Py_ssize_t n) except -1:
        cdef int64_t inc
        cdef object found
        cdef _Stream s
        if n != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong length")
        if self.update_credit > 0:
            self.update_credit -= 1
        elif self.on_flood is not None:
            self.on_flood("WINDOW_UPDATE")
            if self.stopped:
                return 0
        inc = get32(p) & 0x7fffffff
        if not sid:
            if not inc:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 for the connection")
            if self.conn_send + inc > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "connection window over 2**31-1")
            self.conn_send += inc
            self.on_window(0)
            return 0
        found = self.streams.get(sid)
        if found is None:
            if self._idle(sid):
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return 0
        s = <_Stream>found
        if not inc:
            self._stream_error(sid, PROTOCOL_ERROR)
            return 0
        if s.send_window + inc > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return 0
        s.send_window += inc
        self.on_window(sid)
        return 0

    cdef int _rst(self, uint32_t sid, const uint8_t* p, Py_ssize_t n) except -1:
        cdef object found
        if not sid:
            self._fail(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if n != 4:
            self._fail(FRAME_SIZE_ERROR, "RST_STREAM of the wrong length")
        found = self.streams.pop(sid, None)
        if found is None:
            if self._idle(sid):
                self._fail(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return 0
        self.on_reset(sid, get32(p), True)
        return 0

    cdef int _settings(self, int flags, uint32_t sid, const uint8_t* p,
                       Py_ssize_t n) except -1:
        cdef Py_ssize_t i
        cdef int ident
        cdef uint32_t value
        cdef int64_t delta
        cdef _Stream s
        cdef object item
        if sid:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & F_ACK:
            if n:
                self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return 0
        if n % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        i = 0
        while i < n:
            ident = (p[i] << 8) | p[i + 1]
            value = get32(p + i + 2)
            i += 6
            if ident == S_HEADER_TABLE_SIZE:
                self.encoder.set_max_table_size(value)
            elif ident == S_ENABLE_PUSH:
                if value > 1 or (self.client and value):
                    self._fail(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")
            elif ident == S_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif ident == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2**31-1")
                delta = <int64_t>value - self.peer_initial_window
                self.peer_initial_window = value
                for item in self.streams.values():
                    s = <_Stream>item
                    if s.send_window + delta > MAX_WINDOW:
                        self._fail(FLOW_CONTROL_ERROR, "a stream's window over 2**31-1")
                    s.send_window += delta
            elif ident == S_MAX_FRAME_SIZE:
                if value < DEFAULT_FRAME or value > MAX_FRAME_LIMIT:
                    self._fail(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.max_outbound_frame_size = value
        self._frame(T_SETTINGS, F_ACK, 0, NULL, 0)
        self.on_settings()
        return 0


cdef class ServerConnection(_Connection):
    """One client connection's HTTP/2 state, server side. The handler's methods:
    h2_request(sid, headers, ended), h2_data(sid, data, size), h2_end(sid),
    h2_reset(sid, code, remote), h2_window(sid), h2_ping(), h2_settings(),
    h2_goaway(code, last_stream_id), and h2_trailers(sid, headers) if it has one."""

    def __init__(self, handler, int max_streams, Py_ssize_t header_list,
                 Py_ssize_t decode_list, int stream_window=DEFAULT_WINDOW,
                 int conn_window=DEFAULT_WINDOW):
        self._setup(handler, False, max_streams, header_list, decode_list, stream_window,
                    conn_window)


cdef class ClientConnection(_Connection):
    """One HTTP/2 connection to a server, client side: the preface and our SETTINGS
    (no push) go first; streams are opened with open_stream. The handler's methods
    are a server's but h2_response(sid, headers, ended) for h2_request: the final
    response's HEADERS (1xx ones are passed over); h2_trailers(sid, headers) for a
    trailing block, if it has one; DATA before the response is a stream error.

    GOAWAY (RFC 9113 6.8): the handler hears h2_goaway(code, last_stream_id) first;
    then every stream we opened above last_stream_id, which the server says it never
    processed, is closed here and reported as h2_reset(sid, REFUSED_STREAM, True)
    (safe to retry elsewhere, as a REFUSED_STREAM reset is, 8.7); `going_away` is
    set and open_stream refuses from then on. The streams at or below it go on.

    Stream limit (5.1.2): `stream_room` is how many more streams may be opened now:
    the server's SETTINGS_MAX_CONCURRENT_STREAMS less the streams open, and before
    the server's first SETTINGS, INITIAL_STREAMS (the RFC's recommended minimum)
    at most; open_stream refuses past it."""

    def __init__(self, handler, Py_ssize_t header_list, Py_ssize_t decode_list,
                 int stream_window=DEFAULT_WINDOW, int conn_window=DEFAULT_WINDOW):
        self._setup(handler, True, 0, header_list, decode_list, stream_window, conn_window)
        self.goaway_last = 0x7fffffff
        self.handler_goaway = self.on_goaway
        self.on_goaway = self._goaway_received

    def stop(self):
        _Connection.stop(self)
        self.handler_goaway = None

    @property
    def settings_received(self):
        """The server's first SETTINGS came (its first frame must be one)."""
        return self.settings_seen

    @property
    def stream_room(self):
        cdef object limit
        if self.going_away or self.stopped:
            return 0
        if not self.settings_seen:
            limit = INITIAL_STREAMS
        else:
            limit = self.peer_max_streams
            if limit is None:
                return 0x7fffffff  # no limit announced
        return max(0, <Py_ssize_t>limit - len(self.streams))

    def _goaway_received(self, code, int last):  # code: any 32-bit value (7)
        cdef list refused
        cdef object sid
        self.going_away = True
        if last < self.goaway_last:
            self.goaway_last = last
        refused = sorted([sid for sid in self.streams if <int>sid > last])
        for sid in refused:
            del self.streams[sid]
            self._ignore(sid)  # late frames on it (there should be none) are dropped
        if self.handler_goaway is not None:
            self.handler_goaway(code, last)
        for sid in refused:
            if self.stopped:
                break
            self.on_reset(sid, REFUSED_STREAM, True)

    def open_stream(self, list headers, bint end_stream=False):
        """A new stream with HEADERS for `headers`: its id."""
        cdef int sid = self.next_stream_id
        cdef _Stream s
        if self.stopped:
            raise H2StreamClosed("the connection is closed")
        if self.going_away:
            raise H2StreamClosed("the server is going away (GOAWAY): no new streams")
        if self.stream_room <= 0:
            raise H2StreamClosed("the server's SETTINGS_MAX_CONCURRENT_STREAMS is reached")
        if sid > 0x7fffffff - 2 or sid < 1:
            raise H2StreamClosed("no stream ids left on this connection")
        self.next_stream_id = sid + 2
        s = _Stream.__new__(_Stream)
        s.sid = sid
        s.send_window = self.peer_initial_window
        s.recv_window = self.local_stream_window
        self.streams[sid] = s
        self.send_headers(sid, headers, end_stream)
        return sid


# -- a stream's request as HTTP/1.1 --------------------------------------------------

class Malformed(ValueError):
    """A request HTTP/2 calls malformed (RFC 9113 8.1.1): a stream error."""


cdef uint8_t NAME_CHARS[256]  # a token in lower case (RFC 9113 8.2.1)
cdef uint8_t TOKEN_CHARS[256]  # tchar (RFC 9110 5.6.2)
cdef uint8_t VALUE_BAD[256]  # NUL, CR, LF: never in a value (RFC 9113 8.2.1)


cdef void _build_tables() noexcept:
    cdef int c
    cdef const char* extra = b"!#$%&'*+.^_`|~-"
    cdef int i = 0
    for c in range(256):
        NAME_CHARS[c] = (48 <= c <= 57) or (97 <= c <= 122)
        TOKEN_CHARS[c] = NAME_CHARS[c] or (65 <= c <= 90)
        VALUE_BAD[c] = c == 0 or c == 13 or c == 10
    while extra[i]:
        NAME_CHARS[<uint8_t>extra[i]] = 1
        TOKEN_CHARS[<uint8_t>extra[i]] = 1
        i += 1


_build_tables()


cdef inline bint _all_in(const uint8_t* table, bytes s) noexcept:
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(s)
    if n == 0:
        return False
    for i in range(n):
        if not table[p[i]]:
            return False
    return True


cdef inline bint _visible(bytes s) noexcept:
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(s)
    if n == 0:
        return False
    for i in range(n):
        if p[i] < 0x21 or p[i] > 0x7e:
            return False
    return True


cdef inline bint _bad_value(bytes s) noexcept:
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(s)
    if n == 0:
        return False
    if p[0] == 32 or p[0] == 9 or p[n - 1] == 32 or p[n - 1] == 9:
        return True
    for i in range(n):
        if VALUE_BAD[p[i]]:
            return True
    return False


cdef inline int64_t _digits(bytes s) noexcept:
    """1 to 18 ASCII digits as a number, else -1."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(s)
    cdef int64_t v = 0
    if n < 1 or n > 18:
        return -1
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return -1
        v = v * 10 + (p[i] - 48)
    return v


cdef inline bint _is(bytes s, const char* lit, Py_ssize_t n) noexcept:
    return PyBytes_GET_SIZE(s) == n and memcmp(PyBytes_AS_STRING(s), lit, n) == 0


cpdef tuple request_head(list headers, bint has_body):
    """A stream's request as an HTTP/1.1 head: (head, body chunked, content length or
    -1). Raises Malformed for what RFC 9113 8.2 and 8.3 forbid: pseudo-headers after
    regular fields, unknown or repeated; field names not lower-case tokens; NUL, CR or
    LF in a value, or blanks around it; connection-specific fields (te other than
    "trailers"); :authority and host that differ; a content-length that is not 1 to
    18 digits or that differs from an earlier one; no valid :method, or :path and
    :scheme (CONNECT: :authority only). Cookies split by the client are joined."""
    cdef object method = None, path = None, authority = None, scheme = None, host = None
    cdef list lines = []
    cdef list cookies = []
    cdef int64_t length = -1, value_length
    cdef bint regular = False, chunked
    cdef object item
    cdef tuple field
    cdef bytes name, value
    cdef Py_ssize_t n
    cdef const char* p
    for item in headers:
        field = <tuple?>item
        name = <bytes?>field[0]
        value = <bytes?>field[1]
        if _bad_value(value):
            raise Malformed(f"bad value of {name!r}")
        n = PyBytes_GET_SIZE(name)
        p = PyBytes_AS_STRING(name)
        if n and p[0] == 58:  # ":"
            if regular:
                raise Malformed(f"pseudo-header {name!r} misplaced or unknown")
            if _is(name, b":method", 7):
                if method is not None:
                    raise Malformed("two :method")
                method = value
            elif _is(name, b":path", 5):
                if path is not None:
                    raise Malformed("two :path")
                path = value
            elif _is(name, b":authority", 10):
                if authority is not None:
                    raise Malformed("two :authority")
                authority = value
            elif _is(name, b":scheme", 7):
                if scheme is not None:
                    raise Malformed("two :scheme")
                scheme = value
            else:
                raise Malformed(f"pseudo-header {name!r} misplaced or unknown")
            continue
        regular = True
        if not _all_in(NAME_CHARS, name):
            raise Malformed(f"bad field name {name!r}")
        if (_is(name, b"connection", 10) or _is(name, b"keep-alive", 10)
                or _is(name, b"proxy-connection", 16) or _is(name, b"transfer-encoding", 17)
                or _is(name, b"upgrade", 7)
                or (_is(name, b"te", 2) and not _is(value, b"trailers", 8))):
            raise Malformed(f"connection-specific field {name.decode()}")
        if _is(name, b"cookie", 6):
            cookies.append(value)  # split by the client (RFC 9113 8.2.3): joined again
            continue
        if _is(name, b"host", 4):
            if host is not None:
                raise Malformed("two host fields")
            host = value
            continue
        if _is(name, b"content-length", 14):
            value_length = _digits(value)
            if value_length < 0 or (length >= 0 and value_length != length):
                raise Malformed("bad content-length")
            length = value_length
        lines += (name, b": ", value, b"\r\n")  # joined once at the end
    if method is None or not _all_in(TOKEN_CHARS, <bytes>method):
        raise Malformed("no valid :method")
    if authority is not None and host is not None and authority != host:
        raise Malformed(":authority and host differ")
    if authority is None:
        authority = host
    if _is(<bytes>method, b"CONNECT", 7):
        if path is not None or scheme is not None or authority is None:
            raise Malformed("CONNECT takes :authority only")
        path = authority
    elif path is None or scheme is None or not _visible(<bytes>path):
        raise Malformed("no valid :path and :scheme")
    if authority is not None and not _visible(<bytes>authority):
        raise Malformed("bad :authority")
    if cookies:
        lines += (b"cookie: ", b"; ".join(cookies), b"\r\n")
    chunked = has_body and length < 0
    lines.append(b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")
    if authority is not None:
        start = [method, b" ", path, b" HTTP/1.1\r\nHost: ", authority, b"\r\n"]
    else:
        start = [method, b" ", path, b" HTTP/1.1\r\n"]
    return b"".join(start + lines), chunked, length
