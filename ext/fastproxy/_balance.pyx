"""Load-balancing selection. For now smooth weighted round robin (as nginx does it)."""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc


cdef class Balancer:
    """Chooses one of `peers` per request."""

    cpdef object pick(self):
        raise NotImplementedError


@cython.final
cdef class RoundRobin(Balancer):
    """Picks peers in proportion to their weights, interleaved (a,b,a,c,a,b...)."""

    def __cinit__(self, peers, weights):
        cdef Py_ssize_t i, n = len(peers)
        if n == 0 or n != len(weights):
            raise ValueError("need one weight per peer")
        self.peers = list(peers)
        self._n = n
        self._weights = <long long*>PyMem_Malloc(n * sizeof(long long))
        self._current = <long long*>PyMem_Malloc(n * sizeof(long long))
        if self._weights == NULL or self._current == NULL:
            raise MemoryError()
        self._total = 0
        for i in range(n):
            if weights[i] < 1:
                raise ValueError("weights must be positive")
            self._weights[i] = weights[i]
            self._current[i] = 0
            self._total += weights[i]

    def __dealloc__(self):
        PyMem_Free(self._weights)
        PyMem_Free(self._current)

    cpdef object pick(self):
        cdef Py_ssize_t i, best = 0
        cdef long long* current = self._current
        if self._n == 1:
            return self.peers[0]
        for i in range(self._n):
            current[i] += self._weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return self.peers[best]
