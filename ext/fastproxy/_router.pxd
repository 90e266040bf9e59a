cpdef bytes normalize_host(bytes host)


cdef class Router:
    cdef tuple _hosts       # per route: bytes (lower-case host) or None for any host
    cdef tuple _prefixes    # per route: bytes
    cdef tuple _targets
    cdef Py_ssize_t _n
    cdef readonly bint by_host

    cpdef object route(self, bytes host_header, bytes path)
    cpdef object match(self, bytes host, bytes path)
