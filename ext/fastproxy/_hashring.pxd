from libc.stdint cimport int32_t, uint64_t

from fastproxy._balance cimport Balancer


cdef class HashBalancer(Balancer):
    # What the keyed algorithms share: peer names (the hashed identity of a
    # peer, so adding or removing one does not move the others) and the
    # bounded-load bookkeeping (factor 0: off).
    cdef readonly tuple names
    cdef readonly double factor
    cdef readonly long long total_active    # sum of active[i]
    cdef double* _share             # factor * weights[i] / total_weight


cdef class Ring(HashBalancer):
    cdef readonly Py_ssize_t vnodes
    cdef Py_ssize_t _npoints
    cdef uint64_t* _hashes          # sorted ascending
    cdef int32_t* _owners           # _owners[k]: the peer of point _hashes[k]


cdef class Maglev(HashBalancer):
    cdef readonly Py_ssize_t table_size
    cdef int32_t* _table
