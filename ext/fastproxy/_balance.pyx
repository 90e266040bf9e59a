"""Load-balancing selection: the `Balancer` contract and the unkeyed algorithms.

Every algorithm picks an index into `peers` in O(1) or O(log n) (a few scan
O(n) over small C arrays) and allocates nothing per pick. The proxy reports
each request's start and end (`started`/`finished`), which is what
least-connections, power-of-two-choices and peak-EWMA decide on. The hashing
family (ring, Maglev) lives in `_hashring`.
"""
import os

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport exp
from libc.stdint cimport uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastproxy.xxhash cimport XXH3_64bits


cdef uint64_t hash_bytes(const char* data, Py_ssize_t n) noexcept nogil:
    """The key hash of every keyed algorithm: xxh3-64, seed 0 (the same in
    every worker and across restarts)."""
    return XXH3_64bits(data, <size_t>n)


cdef class Balancer:
    """Chooses one of `peers` per request (see _balance.pxd for the contract)."""

    def __cinit__(self, peers, weights=None, *args, **kwargs):
        cdef Py_ssize_t i, n = len(peers)
        if n == 0:
            raise ValueError("need at least one peer")
        if weights is None:
            weights = [1] * n
        if len(weights) != n:
            raise ValueError("need one weight per peer")
        self.peers = list(peers)
        self.n = n
        self.weights = <long long*>PyMem_Malloc(n * sizeof(long long))
        self.active = <long long*>PyMem_Malloc(n * sizeof(long long))
        if self.weights == NULL or self.active == NULL:
            raise MemoryError()
        self.total_weight = 0
        for i in range(n):
            if weights[i] < 1:
                raise ValueError("weights must be positive")
            self.weights[i] = weights[i]
            self.active[i] = 0
            self.total_weight += weights[i]

    def __dealloc__(self):
        PyMem_Free(self.weights)
        PyMem_Free(self.active)

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        raise NotImplementedError

    cdef void started(self, Py_ssize_t i) noexcept:
        self.active[i] += 1

    cdef void finished(self, Py_ssize_t i, double seconds) noexcept:
        if self.active[i] > 0:
            self.active[i] -= 1

    cpdef object pick(self):
        """The next peer for a request without a key."""
        return self.peers[self.select(0)]

    cpdef object pick_key(self, bytes key):
        """The peer for a request whose hash_key is `key`."""
        return self.peers[self.select(hash_bytes(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)))]

    # For tests and tools: the proxy calls the C methods.
    def select_index(self, uint64_t key=0):
        return self.select(key)

    def start(self, Py_ssize_t i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.started(i)

    def finish(self, Py_ssize_t i, double seconds=0.0):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.finished(i, seconds)

    def in_flight(self):
        return [self.active[i] for i in range(self.n)]


def key_hash(bytes key not None):
    """hash_bytes for Python (tests compare it with the xxhash package's xxh3_64)."""
    return hash_bytes(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))


@cython.final
cdef class RoundRobin(Balancer):
    """Smooth weighted round robin, as nginx: peers in proportion to their
    weights, interleaved (a, a, b, a, c, a, a for 5:1:1). With equal weights it
    is plain round robin."""

    def __cinit__(self, peers, weights=None, *args, **kwargs):
        cdef Py_ssize_t i
        self._current = <long long*>PyMem_Malloc(self.n * sizeof(long long))
        if self._current == NULL:
            raise MemoryError()
        for i in range(self.n):
            self._current[i] = 0

    def __dealloc__(self):
        PyMem_Free(self._current)

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t i, best = 0
        cdef long long* current = self._current
        if self.n == 1:
            return 0
        for i in range(self.n):
            current[i] += self.weights[i]
            if current[i] > current[best]:
                best = i
        current[best] -= self.total_weight
        return best


@cython.final
cdef class LeastConn(Balancer):
    """The peer with the fewest requests in flight per unit of weight (least
    active[i]/weights[i], compared as cross products: no floats). Each scan
    starts just after the previous pick, so peers that tie take turns."""

    def __cinit__(self, peers, weights=None, *args, **kwargs):
        self._start = 0

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t start = self._start
        cdef Py_ssize_t best = start
        if self.active[start] != 0:  # nothing beats an idle peer
            # Scan start+1 .. n-1, then 0 .. start-1: the first of equals wins.
            best = _least(self.active, self.weights, start + 1, self.n, start)
            if self.active[best] != 0:
                best = _least(self.active, self.weights, 0, start, best)
        self._start = best + 1 if best + 1 < self.n else 0
        return best


cdef inline Py_ssize_t _least(const long long* active, const long long* weights, Py_ssize_t lo,
                              Py_ssize_t hi, Py_ssize_t best) noexcept nogil:
    """The peer in {best} and lo..hi-1 with the least active/weight, `best` on a tie,
    stopping at the first idle one."""
    cdef Py_ssize_t i
    cdef long long a = active[best], w = weights[best]
    for i in range(lo, hi):
        if active[i] * w < a * weights[i]:
            best, a, w = i, active[i], weights[i]
            if a == 0:
                break
    return best


# -- randomness ----------------------------------------------------------------------------
# splitmix64 (Steele, Lea, Flood 2014): one add and two multiplies per draw, passes
# BigCrush, any 64-bit state is a good seed. Each balancer seeds its own state from
# os.urandom; a forked child mixes a fresh salt into every state on its next draw,
# so workers forked after construction do not make the same choices.

cdef uint64_t _fork_salt = 0
cdef unsigned long _fork_generation = 0


def _reseed_after_fork():
    global _fork_salt, _fork_generation
    _fork_salt = int.from_bytes(os.urandom(8), "little")
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


cdef uint64_t _seed(seed) except? 0:
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    return seed & 0xFFFFFFFFFFFFFFFF


cdef inline uint64_t _next_random(uint64_t* state, unsigned long* generation) noexcept:
    cdef uint64_t z
    if generation[0] != _fork_generation:
        generation[0] = _fork_generation
        state[0] ^= _fork_salt
    state[0] += 0x9E3779B97F4A7C15ULL
    z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef long long* _prefix_sums(long long* weights, Py_ssize_t n) except NULL:
    cdef Py_ssize_t i
    cdef long long* prefix = <long long*>PyMem_Malloc(n * sizeof(long long))
    if prefix == NULL:
        raise MemoryError()
    prefix[0] = weights[0]
    for i in range(1, n):
        prefix[i] = prefix[i - 1] + weights[i]
    return prefix


cdef inline Py_ssize_t _search(const long long* prefix, Py_ssize_t n, long long r) noexcept:
    """The first i with prefix[i] > r (0 <= r < prefix[n-1])."""
    cdef Py_ssize_t mid, lo = 0, hi = n - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if prefix[mid] > r:
            hi = mid
        else:
            lo = mid + 1
    return lo


# The modulo's bias is total/2**64: nil for any real sum of weights.

cdef inline Py_ssize_t _draw(uint64_t x, const long long* prefix, Py_ssize_t n,
                             long long total) noexcept:
    """Peer i with probability weights[i]/total."""
    return _search(prefix, n, <long long>(x % <uint64_t>total))


cdef inline Py_ssize_t _draw_other(uint64_t x, const long long* prefix, const long long* weights,
                                   Py_ssize_t n, long long total, Py_ssize_t a) noexcept:
    """Peer i != a with probability weights[i]/(total - weights[a]): draw over the
    other peers' weight and skip a's slice of the line (no retry loop)."""
    cdef long long r = <long long>(x % <uint64_t>(total - weights[a]))
    if r >= prefix[a] - weights[a]:
        r += weights[a]
    return _search(prefix, n, r)


cdef class WeightedDraw(Balancer):
    """The base of Random and P2C: prefix sums of the weights and the PRNG state.
    `seed` is for tests; by default os.urandom."""

    def __cinit__(self, peers, weights=None, *args, seed=None, **kwargs):
        self._prefix = _prefix_sums(self.weights, self.n)
        self._rng = _seed(seed)
        self._fork_gen = _fork_generation

    def __dealloc__(self):
        PyMem_Free(self._prefix)


@cython.final
cdef class Random(WeightedDraw):
    """Weighted random: peer i with probability weights[i]/total, by binary search
    over the prefix sums (O(log n))."""

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        return _draw(_next_random(&self._rng, &self._fork_gen), self._prefix, self.n,
                     self.total_weight)


@cython.final
cdef class P2C(WeightedDraw):
    """Power of two choices: two distinct peers drawn as Random draws them, the one
    with fewer requests in flight per unit of weight wins (a tie: the first drawn)."""

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t a, b
        if self.n == 1:
            return 0
        a = _draw(_next_random(&self._rng, &self._fork_gen), self._prefix, self.n,
                  self.total_weight)
        b = _draw_other(_next_random(&self._rng, &self._fork_gen), self._prefix, self.weights,
                        self.n, self.total_weight, a)
        if self.active[b] * self.weights[a] < self.active[a] * self.weights[b]:
            return b
        return a


@cython.final
cdef class Ewma(Balancer):
    """Peak-EWMA, as Finagle and Linkerd: each peer has a latency estimate; a sample
    above it replaces it at once (peak), one below pulls it down with weight
    1 - exp(-elapsed/decay), elapsed being the time since that peer's last update.
    A failed request (seconds < 0) counts as a sample of `penalty` seconds (default
    1 s: far above a healthy latency, so a failing peer is avoided at once, yet it
    decays like any sample). Between samples an estimate decays towards 0 (as
    tower's PeakEwma does when it reads the load), so a peer that was slow or failed
    once is retried after a while instead of being shunned for ever; peers start at
    `initial` seconds (small: new peers get tried).
    cost(i) = estimate(i) * (active[i] + 1) / weights[i]; a pick draws two distinct
    peers uniformly (the weight is already in the cost) and takes the cheaper one
    (a tie: the first drawn)."""

    def __cinit__(self, peers, weights=None, *args, decay=10.0, penalty=1.0, initial=0.01,
                  seed=None, **kwargs):
        cdef Py_ssize_t i
        cdef double now
        if not decay > 0 or not penalty >= 0 or not initial > 0:
            raise ValueError("need decay > 0, penalty >= 0 and initial > 0")
        self._decay = decay
        self._penalty = penalty
        self._frozen_now = -1.0
        self._rng = _seed(seed)
        self._fork_gen = _fork_generation
        self._estimate = <double*>PyMem_Malloc(self.n * sizeof(double))
        self._stamp = <double*>PyMem_Malloc(self.n * sizeof(double))
        if self._estimate == NULL or self._stamp == NULL:
            raise MemoryError()
        now = self._now()
        for i in range(self.n):
            self._estimate[i] = initial
            self._stamp[i] = now

    def __dealloc__(self):
        PyMem_Free(self._estimate)
        PyMem_Free(self._stamp)

    cdef double _now(self) noexcept:
        cdef timespec ts
        if self._frozen_now >= 0:
            return self._frozen_now
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9

    cdef double _cost(self, Py_ssize_t i, double now) noexcept:
        cdef double elapsed = now - self._stamp[i]
        cdef double estimate = self._estimate[i]
        if elapsed > 0:
            estimate *= exp(-elapsed / self._decay)
        return estimate * <double>(self.active[i] + 1) / <double>self.weights[i]

    cdef Py_ssize_t select(self, uint64_t key) except -1:
        cdef Py_ssize_t a, b, n = self.n
        cdef double now
        if n == 1:
            return 0
        a = <Py_ssize_t>(_next_random(&self._rng, &self._fork_gen) % <uint64_t>n)
        b = <Py_ssize_t>(_next_random(&self._rng, &self._fork_gen) % <uint64_t>(n - 1))
        if b >= a:
            b += 1
        now = self._now()
        if self._cost(b, now) < self._cost(a, now):
            return b
        return a

    cdef void finished(self, Py_ssize_t i, double seconds) noexcept:
        cdef double now, elapsed, w
        cdef double sample = seconds if seconds >= 0 else self._penalty
        Balancer.finished(self, i, seconds)
        if seconds != seconds:
            return  # NaN: ended without saying anything about the server
        now = self._now()
        if sample > self._estimate[i]:
            self._estimate[i] = sample
        else:
            elapsed = now - self._stamp[i]
            w = exp(-elapsed / self._decay) if elapsed > 0 else 1.0
            self._estimate[i] = self._estimate[i] * w + sample * (1.0 - w)
        self._stamp[i] = now

    # For tests and tools.
    def freeze_clock(self, now=None):
        """Use `now` (monotonic seconds, >= 0) as the time from here on; None: the clock."""
        if now is not None and not now >= 0:
            raise ValueError("now must be >= 0")
        self._frozen_now = -1.0 if now is None else now

    def estimates(self):
        """Each peer's estimate (seconds) as of its last update, before idle decay."""
        return [self._estimate[i] for i in range(self.n)]

    def costs(self):
        """Each peer's cost now (what a pick compares)."""
        cdef double now = self._now()
        return [self._cost(i, now) for i in range(self.n)]
