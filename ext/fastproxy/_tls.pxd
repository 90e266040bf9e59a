# The part of fastproxy._tls that other compiled modules call in C.


cdef class TlsPipe:
    """What the request path (`_proxy.send_via_transport`) calls on a TLS connection as
    C methods rather than Python ones: `put` is `write`, `put_parts` is `writelines`.
    TlsConnection is the one implementation."""

    cdef int put(self, object data) except -1
    cdef int put_parts(self, object parts) except -1
