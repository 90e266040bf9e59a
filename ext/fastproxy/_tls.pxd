# The part of fastproxy._tls that other compiled modules call in C.


cdef class TlsPipe:
    """What the request path (`_proxy.send_via_transport`) calls on a TLS connection as
    C methods rather than Python ones: `put` is `write`, `put_parts` is `writelines`.
    TlsConnection and PlainConnection (plain HTTP on our own sockets) implement it."""

    cdef int put(self, object data) except -1
    cdef int put_parts(self, object parts) except -1
    cdef int cut(self) except -1   # abort with a TCP reset (SO_LINGER 0)
