# One network of an IpSet: a 16-byte address (IPv4 as ::ffff:a.b.c.d) and the
# number of leading bits that must match (IPv4 prefixes + 96).
cdef struct IpNetwork:
    unsigned char addr[16]
    int prefix


cpdef bytes normalize_path(bytes path, bint merge_slashes=*)
cpdef bytes normalize_host(bytes host)
cpdef object query_get(bytes query, bytes name)
cpdef bytes query_edit(bytes query, tuple remove, tuple set_pairs)


cdef class IpSet:
    cdef IpNetwork* _nets
    cdef Py_ssize_t _n

    cpdef bint contains(self, bytes ip)
