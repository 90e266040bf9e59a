from libc.stdint cimport uint64_t


cdef class Balancer:
    # The contract every balancing algorithm keeps (see _balance.pyx):
    # - `peers` are opaque objects (the proxy's ServerPools), chosen by index;
    # - `select` returns the index of the chosen peer; keyed algorithms use
    #   `key` (an xxh3 hash of the request's hash_key), the others ignore it;
    # - the proxy calls `started(i)` when a request goes to peer i and
    #   `finished(i, seconds)` when it ends (seconds < 0: it failed; NaN: it
    #   ended without telling anything about the server, e.g. the client left), so
    #   `active[i]` is the number of requests in flight on peer i.
    # Nothing here allocates per call.
    cdef readonly list peers
    cdef Py_ssize_t n
    cdef long long* weights     # >= 1 each
    cdef long long total_weight
    cdef long long* active      # requests in flight per peer

    cdef Py_ssize_t select(self, uint64_t key) except -1
    cdef void started(self, Py_ssize_t i) noexcept
    cdef void finished(self, Py_ssize_t i, double seconds) noexcept
    cpdef object pick(self)
    cpdef object pick_key(self, bytes key)


cdef uint64_t hash_bytes(const char* data, Py_ssize_t n) noexcept nogil


cdef class RoundRobin(Balancer):
    cdef long long* _current


cdef class LeastConn(Balancer):
    cdef Py_ssize_t _start         # where the next scan begins (ties take turns)


cdef class WeightedDraw(Balancer):
    # What Random and P2C share: weighted draws by prefix sums.
    cdef long long* _prefix        # _prefix[i] = weights[0] + ... + weights[i]
    cdef uint64_t _rng
    cdef unsigned long _fork_gen


cdef class Random(WeightedDraw):
    pass


cdef class P2C(WeightedDraw):
    pass


cdef class Ewma(Balancer):
    cdef double* _estimate         # seconds, per peer
    cdef double* _stamp            # monotonic seconds of each peer's last update
    cdef double _decay             # tau, seconds
    cdef double _penalty           # the sample a failed request counts as, seconds
    cdef double _frozen_now        # < 0: read the clock (tests freeze it)
    cdef uint64_t _rng
    cdef unsigned long _fork_gen

    cdef double _now(self) noexcept
    cdef double _cost(self, Py_ssize_t i, double now) noexcept
