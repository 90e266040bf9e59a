from libc.stdint cimport int64_t


cdef class TopK:
    cdef Py_ssize_t k
    cdef Py_ssize_t n
    cdef int64_t* counts
    cdef int64_t* errors
    cdef list keys
    cdef dict index

    cdef int add(self, object key) except -1


cdef class Analytics:
    cdef readonly TopK paths
    cdef readonly TopK clients
    cdef readonly TopK agents

    cdef int note(self, bytes path, bytes client, bytes agent) except -1
