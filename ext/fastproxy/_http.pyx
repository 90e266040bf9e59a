# cython: freethreading_compatible = False
"""Incremental HTTP/1.x request and response parsers on llhttp.

One `MessageHead` per message: header names and values live in one bytes
object with a C offset table, so no Python object is made per header. Bodies
are handed to the owner as they arrive, without copying large spans. The
parser pauses after every complete message, so a caller decides when the next
pipelined message may start; `feed` returns how many bytes it consumed.

Strict: no llhttp lenient flag is set, and on top of llhttp we refuse what a
proxy must not forward ambiguously (RFC 9112 §3.2, §6.1, §6.3).
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memchr, memcpy

from fastproxy.ascii cimport is_lower_literal, lower
from fastproxy.llhttp cimport *


# MessageHead.body_kind values, for Python callers.
BODY_NONE = K_NONE
BODY_LENGTH = K_LENGTH
BODY_CHUNKED = K_CHUNKED
BODY_UNTIL_CLOSE = K_UNTIL_CLOSE


class HttpParseError(Exception):
    """A message that must be refused; `status` is the HTTP status to answer."""

    def __init__(self, int status, str reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


cdef enum:
    SPAN_IDLE = 0
    SPAN_FIELD = 1
    SPAN_AFTER_FIELD = 2
    SPAN_VALUE = 3

# Interned method names: llhttp gives a small integer, we hand out one object.
cdef list _METHOD_NAMES = [None] * 64


cdef _load_method_names():
    cdef int i
    cdef const char* name
    for i in range(47):  # llhttp's method map is 0..46 (DELETE .. QUERY)
        name = llhttp_method_name(<unsigned char>i)
        _METHOD_NAMES[i] = <bytes>name


_load_method_names()


cdef inline bint _valid_host(const char* v, size_t n) noexcept nogil:
    """uri-host [":" port] characters only (RFC 3986 reg-name, IP literals)."""
    cdef size_t i
    cdef char c
    for i in range(n):
        c = v[i]
        if not ((c >= b'a' and c <= b'z') or (c >= b'A' and c <= b'Z') or (c >= b'0' and c <= b'9')
                or c == b'.' or c == b'-' or c == b':' or c == b'[' or c == b']' or c == b'_'
                or c == b'~' or c == b'%' or c == b'!' or c == b'$' or c == b'&' or c == b"'"
                or c == b'(' or c == b')' or c == b'*' or c == b'+' or c == b',' or c == b';'
                or c == b'='):
            return False
    return True


@cython.freelist(64)
@cython.final
cdef class MessageHead:
    """The start line and header section of one HTTP message."""

    cdef inline const uint32_t* offsets(self):
        return <const uint32_t*>PyBytes_AS_STRING(self._offs)

    @property
    def version(self) -> bytes:
        return b"HTTP/1.1" if self.http_minor == 1 else b"HTTP/1.0"

    cpdef bytes get(self, bytes name):
        """First value of header `name` (give it lower-case), or None."""
        if name is None:
            raise TypeError("header name must be bytes")
        cdef const uint32_t* o = self.offsets()
        cdef const char* raw = PyBytes_AS_STRING(self.raw)
        cdef const char* want = PyBytes_AS_STRING(name)
        cdef size_t wl = PyBytes_GET_SIZE(name)
        cdef int i
        for i in range(self.header_count):
            if is_lower_literal(raw + o[4 * i], o[4 * i + 1], want, wl):
                return raw[o[4 * i + 2]:o[4 * i + 2] + o[4 * i + 3]]
        return None

    def get_all(self, bytes name not None) -> list:
        """Every value of header `name` (lower-case), in order."""
        cdef const uint32_t* o = self.offsets()
        cdef const char* raw = PyBytes_AS_STRING(self.raw)
        cdef const char* want = PyBytes_AS_STRING(name)
        cdef size_t wl = PyBytes_GET_SIZE(name)
        cdef int i
        out = []
        for i in range(self.header_count):
            if is_lower_literal(raw + o[4 * i], o[4 * i + 1], want, wl):
                out.append(raw[o[4 * i + 2]:o[4 * i + 2] + o[4 * i + 3]])
        return out

    def headers(self) -> list:
        """All headers as (name, value) pairs, names as received. Not for the hot path."""
        cdef const uint32_t* o = self.offsets()
        cdef const char* raw = PyBytes_AS_STRING(self.raw)
        cdef int i
        return [
            (raw[o[4 * i]:o[4 * i] + o[4 * i + 1]], raw[o[4 * i + 2]:o[4 * i + 2] + o[4 * i + 3]])
            for i in range(self.header_count)
        ]

    def __repr__(self):
        if self.is_request:
            return f"<MessageHead {self.method!r} {self.target!r} HTTP/1.{self.http_minor}>"
        return f"<MessageHead {self.status} HTTP/1.{self.http_minor}>"


# llhttp callbacks: they run inside llhttp_execute. Each stores a Python
# exception on the parser and returns an error code instead of raising.

cdef int cb_message_begin(llhttp_t* p) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    self._len = 0
    self._n = 0
    self._url_len = 0
    self._trailer_len = 0
    self._trailer_start = 0
    self.trailers = None
    self._line_len = 0
    self._proto_len = 0
    self._span_state = SPAN_IDLE
    self._in_head = True
    self._mid_message = True
    return 0


cdef int cb_method(llhttp_t* p, const char* at, size_t length) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    self._line_len += length
    return 0


cdef int cb_url(llhttp_t* p, const char* at, size_t length) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    if self._url_len == 0 and self._two_back(at) == b' ':
        # llhttp skips any number of spaces before the target; RFC 9112 allows one.
        self._error = HttpParseError(400, "more than one space in the request line")
        return -1
    self._url_len += length
    # The request line: method SP target SP HTTP/1.x (the 10 bytes of " HTTP/1.1" and a space).
    if self._line_len + self._url_len + 10 > self._max_line:
        self._error = HttpParseError(414, "request target too long")
        return -1
    return self._append(at, length)


cdef int cb_protocol(llhttp_t* p, const char* at, size_t length) noexcept:
    # llhttp also accepts RTSP/ and ICE/ request lines; a proxy takes HTTP only.
    cdef HttpParser self = <HttpParser>p.data
    cdef size_t i
    if self._proto_len == 0 and self._is_request and self._two_back(at) == b' ':
        self._error = HttpParseError(400, "more than one space in the request line")
        return -1
    for i in range(length):
        if self._proto_len >= 4 or at[i] != b"HTTP"[self._proto_len]:
            self._error = HttpParseError(400 if self._is_request else 502, "protocol is not HTTP")
            return -1
        self._proto_len += 1
    return 0


cdef int cb_status(llhttp_t* p, const char* at, size_t length) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    self._url_len += length
    return self._append(at, length)


cdef int cb_header_field(llhttp_t* p, const char* at, size_t length) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    cdef uint32_t* grown
    if not self._in_head:
        if self._trailer(length) < 0:
            return -1
        self._span_state = SPAN_FIELD
        return self._append(at, length)
    if self._span_state != SPAN_FIELD:
        if self._n >= self._max_count:
            self._error = HttpParseError(431, "too many header fields")
            return -1
        if self._n >= self._offs_cap:
            grown = <uint32_t*>PyMem_Realloc(self._offs, self._offs_cap * 8 * sizeof(uint32_t))
            if grown == NULL:
                self._error = MemoryError()  # the old table stays valid (and is freed later)
                return -1
            self._offs = grown
            self._offs_cap *= 2
        self._offs[4 * self._n] = <uint32_t>self._len
        self._n += 1
        self._span_state = SPAN_FIELD
    return self._append(at, length)


cdef int cb_header_field_complete(llhttp_t* p) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    cdef uint32_t* o
    if not self._in_head:
        self._span_state = SPAN_AFTER_FIELD
        return self._append(b": ", 2)
    o = self._offs + 4 * (self._n - 1)
    o[1] = <uint32_t>(self._len - o[0])
    o[2] = <uint32_t>self._len
    self._span_state = SPAN_AFTER_FIELD
    return 0


cdef int cb_header_value(llhttp_t* p, const char* at, size_t length) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    if not self._in_head:
        if self._trailer(length) < 0:
            return -1
        return self._append(at, length)
    self._span_state = SPAN_VALUE
    return self._append(at, length)


cdef int cb_header_value_complete(llhttp_t* p) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    cdef uint32_t* o
    if not self._in_head:
        # A trailer field: kept as one "name: value" line (trailing OWS dropped).
        while self._len > self._trailer_start and (
                self._buf[self._len - 1] == b' ' or self._buf[self._len - 1] == b'\t'):
            self._len -= 1
        self._span_state = SPAN_IDLE
        return self._append(b"\r\n", 2)
    o = self._offs + 4 * (self._n - 1)
    # llhttp drops leading whitespace of a value; trailing OWS is ours to drop.
    while self._len > o[2] and (self._buf[self._len - 1] == b' ' or self._buf[self._len - 1] == b'\t'):
        self._len -= 1
    o[3] = <uint32_t>(self._len - o[2])
    self._span_state = SPAN_IDLE
    return 0


cdef int cb_headers_complete(llhttp_t* p) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    try:
        return self._headers_complete()
    except BaseException as e:
        self._error = e
        return -1


cdef int cb_body(llhttp_t* p, const char* at, size_t length) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    cdef size_t off = at - self._data_ptr
    try:
        if off == 0 and length == self._data_len:
            chunk = self._data
        elif length >= 8192:
            chunk = memoryview(self._data)[off:off + length]
        else:
            chunk = PyBytes_FromStringAndSize(at, length)
        self._handler.on_body(chunk)
    except BaseException as e:
        self._error = e
        return -1
    return 0


cdef int cb_message_complete(llhttp_t* p) noexcept:
    cdef HttpParser self = <HttpParser>p.data
    self._in_head = True
    self._head_raw = 0
    self._message_done = True
    self._mid_message = False
    try:
        if self._len > self._trailer_start:
            self.trailers = PyBytes_FromStringAndSize(self._buf + self._trailer_start,
                                                      self._len - self._trailer_start)
            # llhttp reads a Connection field among the trailers too: after "close"
            # it takes no more bytes on the connection (HPE_CLOSED_CONNECTION), so
            # the message must not count as keep-alive.
            if self.head is not None and self.head.keep_alive \
                    and not llhttp_should_keep_alive(p):
                self.head.keep_alive = False
        self._handler.on_message_complete()
    except BaseException as e:
        self._error = e
        return -1
    # Stop here: the owner decides when the next (pipelined) message starts.
    return HPE_PAUSED


cdef class ParserHandler:
    """Receives what a parser finds; the C-level interface of a parser's owner."""

    cdef int on_head(self, MessageHead head) except -1:
        raise NotImplementedError

    cdef int on_body(self, object data) except -1:
        raise NotImplementedError

    cdef int on_message_complete(self) except -1:
        raise NotImplementedError


@cython.final
cdef class _MethodHandler(ParserHandler):
    """Forwards to the bound methods of a plain Python handler object."""
    cdef object _head, _body, _complete

    def __cinit__(self, handler):
        self._head = handler.on_head
        self._body = handler.on_body
        self._complete = handler.on_message_complete

    cdef int on_head(self, MessageHead head) except -1:
        self._head(head)
        return 0

    cdef int on_body(self, object data) except -1:
        self._body(data)
        return 0

    cdef int on_message_complete(self) except -1:
        self._complete()
        return 0


cdef class HttpParser:
    """Base of RequestParser and ResponseParser.

    `handler` must provide on_head(MessageHead), on_body(bytes-like) and
    on_message_complete(); they are called from inside `feed`.
    """

    def __cinit__(self):
        self._cap = 512  # a typical request head fits; grows by doubling
        self._buf = <char*>PyMem_Malloc(self._cap)
        self._offs_cap = 16
        self._offs = <uint32_t*>PyMem_Malloc(self._offs_cap * 4 * sizeof(uint32_t))
        if self._buf == NULL or self._offs == NULL:
            raise MemoryError()
        llhttp_settings_init(&self._settings)
        self._settings.on_message_begin = cb_message_begin
        self._settings.on_header_field = cb_header_field
        self._settings.on_header_field_complete = cb_header_field_complete
        self._settings.on_header_value = cb_header_value
        self._settings.on_header_value_complete = cb_header_value_complete
        self._settings.on_headers_complete = cb_headers_complete
        self._settings.on_body = cb_body
        self._settings.on_message_complete = cb_message_complete
        self._in_head = True

    def __dealloc__(self):
        PyMem_Free(self._buf)
        PyMem_Free(self._offs)

    cdef _setup(self, handler, size_t max_line, size_t max_head, int max_count):
        if max_head < 64 or max_count < 1 or max_line < 1:
            raise ValueError("parser limits must be positive")
        if isinstance(handler, ParserHandler):
            self._handler = <ParserHandler>handler
        else:
            self._handler = _MethodHandler(handler)
        self._max_line = max_line
        self._max_head = max_head
        self._max_count = max_count
        self._p.data = <void*>self

    cdef int _append(self, const char* at, size_t length) noexcept:
        """Copy a span of the head into the buffer; -1 (with _error set) if out of memory.

        No exception handling here or in the callbacks that call it: they run
        once per header name and value, and a try block costs more than the copy.
        """
        cdef size_t need = self._len + length
        cdef size_t cap = self._cap
        cdef char* nb
        if need > cap:
            while cap < need:
                cap *= 2
            nb = <char*>PyMem_Realloc(self._buf, cap)
            if nb == NULL:
                self._error = MemoryError()
                return -1
            self._buf = nb
            self._cap = cap
        memcpy(self._buf + self._len, at, length)
        self._len = need
        return 0

    cdef char _two_back(self, const char* at) noexcept:
        """The byte two before `at`, looking back into the previous feed if needed."""
        cdef size_t back = at - self._data_ptr
        return (at - 2)[0] if back >= 2 else self._tail[back]

    cdef int _trailer(self, size_t length) noexcept:
        """Trailer fields count against the head limit (they are kept: `trailers`)."""
        self._trailer_len += length + 4
        if self._trailer_len > self._max_head:
            self._error = HttpParseError(431 if self._is_request else 502, "trailer section too large")
            return -1
        return 0

    cdef int _fail(self, int status, str reason) except -1:
        raise HttpParseError(status, reason)

    cdef int _headers_complete(self) except -1:
        cdef MessageHead head = MessageHead.__new__(MessageHead)
        cdef llhttp_t* p = &self._p
        cdef size_t start = self._url_len
        cdef int rc = 0
        self._in_head = False
        self._trailer_start = self._len  # trailer fields, if any, are collected after it
        head.raw = PyBytes_FromStringAndSize(self._buf, self._len)
        head.header_count = self._n
        # Offsets in `raw` are relative to the buffer start; the URL/reason
        # occupies [0, start) and the headers follow.
        head._offs = PyBytes_FromStringAndSize(<char*>self._offs, self._n * 4 * sizeof(uint32_t))
        head.http_minor = p.http_minor
        head.is_request = self._is_request
        head.content_length = -1
        if self._is_request:
            if p.http_major == 0:
                self._fail(400, "HTTP/0.9 is not supported")
            if p.http_major != 1:
                self._fail(505, "HTTP version not supported")
            head.method = <bytes>_METHOD_NAMES[p.method] if p.method < 64 else None
            head.target = PyBytes_FromStringAndSize(self._buf, start)
            if head.method is None:
                self._fail(501, "method not implemented")
            self._validate_request(head)
            if p.upgrade:
                # Parsed as a plain request (its body, if any, is read as one): the
                # switch happens after it, when the upstream answers 101 (RFC 9110 §7.8).
                p.upgrade = 0
                if p.http_minor == 1:
                    head.upgrade = head.get(b"upgrade")
        else:
            if p.http_major != 1:
                self._fail(502, "upstream answered with an unsupported HTTP version")
            if p.status_code < 100:
                self._fail(502, "upstream sent an invalid status code")
            head.status = p.status_code
            head.reason = PyBytes_FromStringAndSize(self._buf, start)
            head.has_connection_header = self._has_header(b"connection", 10)
            if self._skip_body or p.status_code < 200:
                rc = 1  # HEAD answers and interim (1xx) responses never have a body
            if p.upgrade or p.status_code == 101:
                if not self.upgrade_asked:
                    self._fail(502, "upstream switched protocols without a request for it")
                if not p.upgrade:
                    self._fail(502, "upstream answered 101 without Upgrade and Connection: upgrade")
                head.upgrade = head.get(b"upgrade")
        if (p.flags & F_CONTENT_LENGTH) and p.content_length > <uint64_t>0x7fffffffffffffff:
            self._fail(400 if self._is_request else 502, "Content-Length too large")
        if rc == 1 or (p.flags & F_SKIPBODY) or (not self._is_request and (
                p.status_code < 200 or p.status_code == 204 or p.status_code == 304)):
            head.body_kind = K_NONE
        elif p.flags & F_CHUNKED:
            head.body_kind = K_CHUNKED
        elif p.flags & F_CONTENT_LENGTH:
            head.body_kind = K_LENGTH
            head.content_length = p.content_length
        elif self._is_request:
            head.body_kind = K_NONE
        else:
            head.body_kind = K_UNTIL_CLOSE
        # llhttp ignores "close" next to "keep-alive" in HTTP/1.0; close wins.
        head.keep_alive = (llhttp_should_keep_alive(p) and not (p.flags & F_CONNECTION_CLOSE)
                           and head.body_kind != K_UNTIL_CLOSE)
        self.head = head
        self._handler.on_head(head)
        return rc

    cdef bint _has_header(self, const char* lit, size_t ln) noexcept:
        cdef int i
        for i in range(self._n):
            if is_lower_literal(self._buf + self._offs[4 * i], self._offs[4 * i + 1], lit, ln):
                return True
        return False

    cdef int _validate_request(self, MessageHead head) except -1:
        cdef const uint32_t* o = <const uint32_t*>self._offs
        cdef const char* raw = PyBytes_AS_STRING(head.raw)
        cdef const char* name
        cdef const char* value
        cdef size_t nl, vl
        cdef int i, hosts = 0, tes = 0
        cdef char c
        cdef const char* t = raw
        cdef size_t tl = self._url_len
        if self._p.method == HTTP_CONNECT:
            self._fail(405, "CONNECT is not supported")
        # Request target forms (RFC 9112 §3.2): origin, absolute, asterisk.
        if tl == 0:
            self._fail(400, "empty request target")
        if t[0] != b'/':
            if tl == 1 and t[0] == b'*':
                if head.method != b"OPTIONS":
                    self._fail(400, "asterisk-form target is only for OPTIONS")
            elif not (tl > 7 and (is_lower_literal(t, 7, b"http://", 7) or (tl > 8 and is_lower_literal(t, 8, b"https://", 8)))):
                self._fail(400, "malformed request target")
        if memchr(t, b'#', tl) != NULL:
            self._fail(400, "fragment in request target")
        for i in range(self._n):
            name = raw + o[4 * i]
            nl = o[4 * i + 1]
            value = raw + o[4 * i + 2]
            vl = o[4 * i + 3]
            if nl == 0:
                self._fail(400, "empty header name")
            c = lower(name[0])
            if c == b'h' and is_lower_literal(name, nl, b"host", 4):
                hosts += 1
                if not _valid_host(value, vl):
                    self._fail(400, "invalid Host header")
                head.host = value[:vl]
            elif c == b't' and is_lower_literal(name, nl, b"transfer-encoding", 17):
                tes += 1
                if not is_lower_literal(value, vl, b"chunked", 7):
                    if vl > 7 and is_lower_literal(value + vl - 7, 7, b"chunked", 7):
                        self._fail(501, "unsupported transfer coding")
                    self._fail(400, "a request body must be chunked last (RFC 9112 6.3)")
            elif c == b'e' and is_lower_literal(name, nl, b"expect", 6):
                if is_lower_literal(value, vl, b"100-continue", 12):
                    head.expect_continue = True
                else:
                    self._fail(417, "unsupported expectation")
            elif c == b'c' and is_lower_literal(name, nl, b"connection", 10):
                head.has_connection_header = True
        if hosts > 1:
            self._fail(400, "more than one Host header")
        if hosts == 0 and self._p.http_minor == 1:
            self._fail(400, "missing Host header")
        if tes > 1:
            self._fail(400, "more than one Transfer-Encoding header")
        if tes and self._p.http_minor == 0:
            self._fail(400, "Transfer-Encoding in an HTTP/1.0 request")
        head.is_head_request = self._p.method == HTTP_HEAD
        return 0

    cpdef Py_ssize_t feed(self, object data) except -1:
        """Parse `data`; return how many bytes were consumed.

        Fewer than len(data) means a message completed and the rest belongs to
        the next one: feed it again when ready. Raises HttpParseError.
        """
        cdef const char* base
        cdef size_t n, pos = 0, chunk, allow
        cdef llhttp_errno_t err
        if type(data) is not bytes:
            data = bytes(data)
        base = PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
        self._data = data
        self._data_ptr = base
        self._data_len = n
        self._message_done = False
        try:
            while pos < n:
                chunk = n - pos
                if self._in_head:
                    # The raw head limit counts every byte (whitespace too).
                    if self._head_raw >= self._max_head:
                        raise HttpParseError(431, "request header section too large"
                                             if self._is_request else "response head too large")
                    allow = self._max_head - self._head_raw
                    if chunk > allow:
                        chunk = allow
                err = llhttp_execute(&self._p, base + pos, chunk)
                if err == HPE_OK:
                    if self._in_head and not self._message_done:
                        self._head_raw += chunk
                    pos += chunk
                    continue
                if self._error is not None:
                    e = self._error
                    self._error = None
                    raise e
                if err == HPE_PAUSED and self._message_done:
                    pos = llhttp_get_error_pos(&self._p) - base
                    llhttp_resume(&self._p)
                    return pos
                if err == HPE_PAUSED_UPGRADE and self._message_done:
                    # A 101 head: what follows is the new protocol's, not ours.
                    return llhttp_get_error_pos(&self._p) - base
                reason = llhttp_get_error_reason(&self._p)
                raise HttpParseError(400 if self._is_request else 502,
                                     (<bytes>reason).decode("ascii", "replace") if reason != NULL
                                     else "malformed message")
            return pos
        finally:
            self._data = None
            # The last two bytes seen, for a look back across feeds.
            if n >= 2:
                self._tail[0] = base[n - 2]
                self._tail[1] = base[n - 1]
            elif n == 1:
                self._tail[0] = self._tail[1]
                self._tail[1] = base[0]

    def feed_eof(self):
        """The peer closed: end a close-delimited body, or raise if a message was cut."""
        cdef llhttp_errno_t err
        if not self._mid_message:
            return  # between messages: a clean close
        err = llhttp_finish(&self._p)
        if self._error is not None:
            e = self._error
            self._error = None
            raise e
        if err != HPE_OK and err != HPE_PAUSED:
            raise HttpParseError(502, "connection closed in the middle of a message")

    @property
    def mid_message(self) -> bool:
        """True once a message has begun and until it completes."""
        return self._mid_message

    @property
    def message_needs_eof(self) -> bool:
        return bool(llhttp_message_needs_eof(&self._p))


@cython.final
cdef class RequestParser(HttpParser):
    def __init__(self, handler, *, size_t max_line_bytes=8192, size_t max_header_bytes=32768,
                 int max_header_count=100):
        self._is_request = True
        llhttp_init(&self._p, HTTP_REQUEST, &self._settings)
        self._setup(handler, max_line_bytes, max_header_bytes, max_header_count)
        self._settings.on_url = cb_url
        self._settings.on_method = cb_method
        self._settings.on_protocol = cb_protocol


@cython.final
cdef class ResponseParser(HttpParser):
    def __init__(self, handler, *, size_t max_header_bytes=65536, int max_header_count=256):
        self._is_request = False
        llhttp_init(&self._p, HTTP_RESPONSE, &self._settings)
        self._setup(handler, max_header_bytes, max_header_bytes, max_header_count)
        self._settings.on_status = cb_status
        self._settings.on_protocol = cb_protocol

    def expect_no_body(self, bint skip):
        """Call before each response: True when it answers a HEAD request."""
        self._skip_body = skip

    def reset(self):
        """Start over for a new response on the same connection."""
        llhttp_init(&self._p, HTTP_RESPONSE, &self._settings)
        self._p.data = <void*>self
        self._in_head = True
        self._head_raw = 0
        self._error = None


def llhttp_version():
    """The version of the llhttp C sources compiled into this module."""
    return f"{LLHTTP_VERSION_MAJOR}.{LLHTTP_VERSION_MINOR}.{LLHTTP_VERSION_PATCH}"
