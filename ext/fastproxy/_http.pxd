cimport cython
from libc.stdint cimport uint32_t
from fastproxy.llhttp cimport llhttp_t, llhttp_settings_t

# How a message body is delimited (RFC 9112 §6.3).
cdef enum BodyKind:
    K_NONE = 0
    K_LENGTH = 1
    K_CHUNKED = 2
    K_UNTIL_CLOSE = 3


cdef class MessageHead:
    # All header names and values, back to back; `_offs` holds 4 uint32 per
    # header (name offset, name length, value offset, value length) into it.
    cdef readonly bytes raw
    cdef bytes _offs
    cdef readonly int header_count
    cdef readonly bint is_request
    cdef readonly bytes method
    cdef readonly bytes target
    cdef readonly int status
    cdef readonly bytes reason
    cdef readonly int http_minor
    cdef readonly bint keep_alive
    cdef readonly int body_kind
    cdef readonly long long content_length
    cdef readonly bytes host
    cdef readonly bint expect_continue
    cdef readonly bint has_connection_header
    cdef readonly bint is_head_request
    # A request asking to switch protocols (HTTP/1.1, Upgrade and a Connection
    # listing "upgrade"), or a 101 response: the Upgrade value. None otherwise.
    cdef readonly bytes upgrade

    cdef inline const uint32_t* offsets(self)
    cpdef bytes get(self, bytes name)


# What a parser reports to. Compiled owners (the connection protocols in
# _proxy.pyx) subclass it and are called as C methods; any other object with
# on_head/on_body/on_message_complete is wrapped in a forwarding subclass.
cdef class ParserHandler:
    cdef int on_head(self, MessageHead head) except -1
    cdef int on_body(self, object data) except -1
    cdef int on_message_complete(self) except -1


cdef class HttpParser:
    cdef llhttp_t _p
    cdef llhttp_settings_t _settings
    cdef bint _is_request
    cdef ParserHandler _handler
    # head accumulation
    cdef char* _buf
    cdef size_t _len
    cdef size_t _cap
    cdef uint32_t* _offs
    cdef int _n
    cdef int _offs_cap
    cdef int _span_state
    cdef size_t _url_len
    cdef size_t _trailer_len
    cdef size_t _trailer_start  # where the trailer fields begin in _buf (after the head)
    cdef char _tail[2]
    cdef size_t _line_len
    cdef size_t _proto_len
    cdef size_t _head_raw
    cdef bint _in_head
    cdef bint _message_done
    cdef bint _mid_message
    # limits
    cdef size_t _max_line
    cdef size_t _max_head
    cdef int _max_count
    # per-feed state
    cdef object _data
    cdef const char* _data_ptr
    cdef size_t _data_len
    cdef object _error
    cdef bint _skip_body
    cdef public bint upgrade_asked  # responses: the request asked to switch protocols
    cdef readonly MessageHead head
    # The trailer section of the last complete chunked message, as "name: value\r\n"
    # lines (validated by llhttp, OWS trimmed); None when it had none.
    cdef readonly bytes trailers

    cdef _setup(self, handler, size_t max_line, size_t max_head, int max_count)
    cdef int _append(self, const char* at, size_t length) noexcept
    cdef char _two_back(self, const char* at) noexcept
    cdef int _trailer(self, size_t length) noexcept
    cdef int _fail(self, int status, str reason) except -1
    cdef int _headers_complete(self) except -1
    cdef bint _has_header(self, const char* lit, size_t ln) noexcept
    cdef int _validate_request(self, MessageHead head) except -1
    cpdef Py_ssize_t feed(self, object data) except -1


@cython.final
cdef class RequestParser(HttpParser):
    pass


@cython.final
cdef class ResponseParser(HttpParser):
    pass
