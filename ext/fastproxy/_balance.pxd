from libc.stdint cimport int64_t, uint64_t

from fastproxy._peers cimport PeerSlot, PeerTable


cdef enum:
    NO_PEER = -1        # choose(): no peer is usable (all down or ejected)
    ALL_BUSY = -3       # choose(): every usable peer is at its max_conns


cdef class Balancer:
    # The contract every balancing algorithm keeps (see _balance.pyx):
    # - `peers` are opaque objects (the proxy's ServerPools), chosen by index;
    # - `select` returns the index of the chosen peer; keyed algorithms use
    #   `key` (an xxh3 hash of the request's hash_key), the others ignore it;
    # - the proxy calls `started(i)` when a request goes to peer i and
    #   `finished(i, seconds)` when it ends (seconds < 0: it failed; NaN: it
    #   ended without telling anything about the server, e.g. the client left), so
    #   `active[i]` is the number of requests in flight on peer i.
    # - the proxy calls `choose`, which first brings the weights up to date with
    #   the shared server state (down, ejected, slow start) and then calls the
    #   algorithm's `select`, which sees only peers with weights[i] > 0 (at
    #   least one); `report(i, ok)` feeds the passive checks.
    # Nothing here allocates per call.
    cdef readonly list peers
    cdef Py_ssize_t n
    cdef long long* weights     # current: 0 = not usable now, else >= 1
    cdef long long total_weight # of the current weights
    cdef long long* active      # requests in flight per peer
    cdef long long* base        # configured weights (x RAMP_SCALE when ramping)
    cdef Py_ssize_t* live_idx   # the peers with weights[i] > 0, in order
    cdef readonly Py_ssize_t live
    cdef long long* max_conns   # per peer, 0 = no limit
    cdef bint capped            # some peer has a max_conns
    cdef readonly PeerTable table
    cdef Py_ssize_t* slot_of    # each peer's slot in the table
    cdef uint64_t seen          # the table version the weights reflect
    cdef int64_t recheck        # ns: rebuild at this time too (ramps, ejections); 0 = no
    cdef bint ramps             # slow start applies
    cdef int64_t ramp_ns
    cdef int* fails             # passive checks: failures in a row per peer
    cdef int eject_after        # 0 = off
    cdef int64_t eject_ns, eject_max_ns

    cdef int refresh(self) except -1
    cdef bint usable(self, Py_ssize_t i) except -1
    cdef Py_ssize_t choose(self, uint64_t key) except -2
    cdef Py_ssize_t choose_other(self, uint64_t key, list tried) except -2
    cdef int rebuild(self) except -1
    cdef int reweighted(self) except -1
    cdef Py_ssize_t select(self, uint64_t key) except -1
    cdef void started(self, Py_ssize_t i) noexcept
    cdef void finished(self, Py_ssize_t i, double seconds) noexcept
    cdef void report(self, Py_ssize_t i, bint ok) noexcept
    cpdef object pick(self)
    cpdef object pick_key(self, bytes key)


cdef class RetryBudget:
    cdef readonly double ratio, capacity, tokens

    cdef void deposit(self) noexcept
    cdef bint withdraw(self) noexcept


cdef uint64_t hash_bytes(const char* data, Py_ssize_t n) noexcept nogil


cdef class RoundRobin(Balancer):
    cdef long long* _current


cdef class LeastConn(Balancer):
    cdef Py_ssize_t _start         # where the next scan begins (ties take turns)

    cdef Py_ssize_t _least_live(self, Py_ssize_t start) noexcept


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
