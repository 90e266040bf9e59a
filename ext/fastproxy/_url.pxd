from libc.stdint cimport uint32_t, uint64_t

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
    # Merged, sorted address ranges, searched by bisection: IPv4 as 32-bit
    # numbers, IPv6 as (high, low) 64-bit halves.
    cdef uint32_t* _v4_lo
    cdef uint32_t* _v4_hi
    cdef Py_ssize_t _n4
    cdef uint64_t* _v6_lo       # 2 per range: high half, low half
    cdef uint64_t* _v6_hi
    cdef Py_ssize_t _n6
    cdef readonly Py_ssize_t networks

    cdef void _free(self)

    cpdef bint contains(self, bytes ip)


cpdef bint is_ip(bytes text)
cpdef bytes real_client(bytes peer, bytes header, int kind, IpSet trusted)
