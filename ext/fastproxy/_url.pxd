# One network of an IpSet: a 16-byte address (IPv4 as ::ffff:a.b.c.d) and the
# number of leading bits that must match (IPv4 prefixes + 96).
cdef struct IpNetwork:
    unsigned char addr[16]
    int prefix
    bint v4         # an IPv4 network (IPv4 clients match only these)


cdef inline bint path_char(unsigned char c) noexcept nogil:
    """May `c` stand as is in a normalized path? RFC 3986 pchar (unreserved,
    sub-delims, ":", "@"), the "/" separator, and the "%" of escapes."""
    return ((c >= b'a' and c <= b'z') or (c >= b'A' and c <= b'Z') or (c >= b'0' and c <= b'9')
            or c == b'-' or c == b'.' or c == b'_' or c == b'~' or c == b'!' or c == b'$'
            or c == b'&' or c == b"'" or c == b'(' or c == b')' or c == b'*' or c == b'+'
            or c == b',' or c == b';' or c == b'=' or c == b':' or c == b'@' or c == b'/'
            or c == b'%')



cpdef bytes normalize_path(bytes path, bint merge_slashes=*)
cpdef bytes escape_path(bytes path, bint segment=*)
cpdef bint has_dot_segment(bytes path)
cpdef bytes normalize_host(bytes host)
cpdef object query_get(bytes query, bytes name)
cpdef bytes cookie_get(bytes header, bytes name)
cpdef bytes query_edit(bytes query, tuple remove, tuple set_pairs)


cdef class IpSet:
    cdef IpNetwork* _nets
    cdef Py_ssize_t _n

    cpdef bint contains(self, bytes ip)
