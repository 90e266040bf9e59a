cdef class Balancer:
    cdef readonly list peers

    cpdef object pick(self)


cdef class RoundRobin(Balancer):
    cdef long long* _weights
    cdef long long* _current
    cdef long long _total
    cdef Py_ssize_t _n
